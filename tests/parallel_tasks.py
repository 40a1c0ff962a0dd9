"""Module-level task functions for tests/test_parallel.py (worker processes import them by name)."""

import os


def square(value):
    return value * value


def process_id_and_threads():
    """This process's id and TensorFlow's intra-op thread setting."""
    import tensorflow as tf

    return os.getpid(), tf.config.threading.get_intra_op_parallelism_threads()


def fail(message):
    raise RuntimeError(message)
