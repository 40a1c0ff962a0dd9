"""TensorFlow runtime settings for CPU runs: environment defaults, a quiet import, thread limits, process lifetime.

TensorFlow reads its environment once, when it is imported, so :func:`set_environment_defaults` must run before
``import tensorflow`` (the ``experiments`` package, the worker processes and the test suite call it first thing).
The defaults:

* ``TF_CPP_MIN_LOG_LEVEL=3``: no C++ log lines once TensorFlow is loaded (at level 2 a CPU-only machine still
  prints ``E0000 ... failed call to cuInit``, a false alarm; real errors reach Python as exceptions);
* ``TF_ENABLE_ONEDNN_OPTS=1``: oneDNN kernels for matmuls and convolutions. TensorFlow enables them by default on
  some CPUs only (not on AMD CPUs, for one), and they speed up the training steps of the CPU zoo.

A variable the user has already set is left as it is.

While its shared libraries load, TensorFlow 2.21 logs through absl before absl's logging is initialised, and those
lines (``WARNING: All log messages before absl::InitializeLog() is called ...``, ``I0000 ... oneDNN custom
operations are on``, ``I0000 ... cudart_stub.cc ... Could not find cuda drivers``) ignore ``TF_CPP_MIN_LOG_LEVEL``
and every other environment variable. :func:`import_tensorflow` therefore imports TensorFlow with file descriptor 2
sent to a temporary file, and writes back to stderr every captured line except those absl info / warning lines.

TensorFlow allocates and frees the tensors of every op with ``malloc``. With glibc's defaults, blocks of a few
megabytes (activations of a minibatch) are served by fresh ``mmap`` pages and handed back on ``free``, so each
minibatch faults its memory in anew. :func:`keep_freed_memory` (called by :func:`import_tensorflow`) makes glibc
keep freed memory for reuse (its effect on a stage: docs/reproduction.md).

In a process limited to a few threads (:func:`limit_threads`), :func:`dataset_options` turns tf.data's autotuning
off: with one thread there is nothing to share out, and deleting an iterator waits for the autotuning thread's
current sleep (its optimisation period doubles up to a minute), which stalled the analysis stages' worker processes
for 2 to 20 s at a time with no CPU use (docs/reproduction.md).
"""

import ctypes
import os
import re
import signal
import sys
import tempfile
import threading

ENVIRONMENT_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}
_ABSL_PRE_INIT_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_ABSL_INFO_OR_WARNING = re.compile(r"^[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")  # absl's line prefix
# mallopt parameters of glibc's <malloc.h> and their values: blocks up to 32 MiB (glibc's largest mmap threshold)
# come from the heap, whose free top is handed back to the kernel only beyond 1 GiB
_MALLOC_SETTINGS = {"M_TRIM_THRESHOLD": (-1, 2**30), "M_TOP_PAD": (-2, 64 * 2**20), "M_MMAP_THRESHOLD": (-3, 2**25)}
_thread_limit = None  # set by limit_threads


def set_environment_defaults():
    """Sets every variable of :data:`ENVIRONMENT_DEFAULTS` that is not set yet."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def import_tensorflow():
    """``import tensorflow`` (after :func:`set_environment_defaults`) without the C++ log lines it prints while its
    libraries load; other output of the import still reaches stderr. Returns the module. A no-op import when
    TensorFlow is loaded already."""
    set_environment_defaults()
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    keep_freed_memory()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_tensorflow_log_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
    return tensorflow


def keep_freed_memory():
    """Makes glibc's ``malloc`` in this process keep freed memory for reuse rather than return it to the kernel
    (:data:`_MALLOC_SETTINGS`, through ``mallopt``). Returns True when set, False where the C library has no
    ``mallopt`` (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in _MALLOC_SETTINGS.values())


def is_tensorflow_log_noise(line):
    """True for the absl pre-initialisation banner and for absl info / warning lines (``I0000 ...``,
    ``W0000 ...``); error lines (``E...``) and anything else are kept."""
    return line.startswith(_ABSL_PRE_INIT_BANNER) or bool(_ABSL_INFO_OR_WARNING.match(line))


def limit_threads(num_threads):
    """Runs TensorFlow ops and NumPy / SciPy BLAS with ``num_threads`` threads in this process.

    Call it before TensorFlow executes its first op (TensorFlow's thread pools are fixed from then on); it raises
    ``RuntimeError`` otherwise. Used by the worker processes of :mod:`vitcnn_tf.parallel`: on a small machine,
    ``k`` single-threaded processes do more work than one process with ``k`` threads.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"limit_threads: num_threads must be a positive int, got {num_threads!r}")
    tf = import_tensorflow()
    from threadpoolctl import threadpool_limits

    global _thread_limit
    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    threadpool_limits(num_threads)
    _thread_limit = num_threads


def thread_limit():
    """The thread count :func:`limit_threads` set in this process, or None."""
    return _thread_limit


def dataset_options():
    """``tf.data.Options`` for the pipelines of this process: TensorFlow's defaults, except in a process limited to
    ``k`` threads (:func:`limit_threads`), whose pipelines run on a private pool of ``k`` threads without autotuning
    (module docstring)."""
    tf = import_tensorflow()
    options = tf.data.Options()
    if _thread_limit is not None:
        options.autotune.enabled = False
        options.threading.private_threadpool_size = _thread_limit
        options.threading.max_intra_op_parallelism = 1
    return options


def exit_without_teardown(status):
    """Ends this process with exit ``status`` (an int) once stdout and stderr are flushed, skipping the interpreter's
    teardown, which frees TensorFlow's thousands of modules and objects one by one (about 1.5 s on a 2-core Intel
    Xeon). For a command whose every output file is written and closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def die_with_creator():
    """Makes this ``multiprocessing`` child end (``SIGKILL``) as soon as the process that started it ends, even by
    ``kill -9``; at once if that process is gone already.

    A daemon thread waits on ``multiprocessing.parent_process().sentinel``, the end of a pipe whose other end only
    the starting process holds: the kernel closes it when that process dies. Unlike a parent-death signal this
    follows the starting process, not the parent: a child forked by a ``forkserver`` has the server as its parent,
    and the server lives on while its children hold its pipe. Returns the thread; ``RuntimeError`` outside a
    ``multiprocessing`` child.
    """
    import multiprocessing
    import multiprocessing.connection

    creator = multiprocessing.parent_process()
    if creator is None:
        raise RuntimeError("die_with_creator: this process was not started by multiprocessing")

    def watch():
        multiprocessing.connection.wait([creator.sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="die-with-creator", daemon=True)
    thread.start()
    return thread
