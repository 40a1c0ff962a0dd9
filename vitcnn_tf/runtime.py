"""TensorFlow runtime settings for CPU runs: environment defaults and per-process thread limits.

TensorFlow reads its environment once, when it is imported, so :func:`set_environment_defaults` must run before
``import tensorflow`` (the ``experiments`` package and the test suite call it first thing). The defaults:

* ``TF_CPP_MIN_LOG_LEVEL=2``: no C++ info / warning lines;
* ``TF_ENABLE_ONEDNN_OPTS=1``: oneDNN kernels for matmuls and convolutions. TensorFlow enables them by default on
  some CPUs only (not on AMD CPUs, for one), and they speed up the training steps of the CPU zoo.

A variable the user has already set is left as it is.
"""

import os

ENVIRONMENT_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}


def set_environment_defaults():
    """Sets every variable of :data:`ENVIRONMENT_DEFAULTS` that is not set yet."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def limit_threads(num_threads):
    """Runs TensorFlow ops and NumPy / SciPy BLAS with ``num_threads`` threads in this process.

    Call it before TensorFlow executes its first op (TensorFlow's thread pools are fixed from then on); it raises
    ``RuntimeError`` otherwise. Used by the worker processes of :mod:`vitcnn_tf.parallel`: on a small machine,
    ``k`` single-threaded processes do more work than one process with ``k`` threads.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"limit_threads: num_threads must be a positive int, got {num_threads!r}")
    import tensorflow as tf
    from threadpoolctl import threadpool_limits

    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    threadpool_limits(num_threads)
