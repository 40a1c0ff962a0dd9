"""Module-level task functions for tests/test_parallel.py (worker processes import them by name)."""

import os

IMPORTED_IN = os.getpid()  # the process that imported this module: a worker, or the worker server that preloads it


def where_imported():
    """(pid of the process that imported this module, this process's pid, its parent's pid)."""
    return IMPORTED_IN, os.getpid(), os.getppid()


def square(value):
    return value * value


def process_id_and_threads():
    """This process's id and TensorFlow's intra-op thread setting."""
    import tensorflow as tf

    return os.getpid(), tf.config.threading.get_intra_op_parallelism_threads()


def environment_variable(name):
    return os.environ.get(name)


def fail(message):
    raise RuntimeError(message)


def die():
    """Ends this worker process abruptly, as the kernel's out-of-memory killer would."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def sleep_then_process_id(seconds):
    import time

    time.sleep(seconds)
    return os.getpid()


def unpicklable_result():
    return lambda: None
