"""Full float32 precision for the CKA matrix products on GPUs with TensorFloat-32 (A100, H100).

TensorFlow runs float32 matrix products in TensorFloat-32 (a 10-bit mantissa) on such GPUs unless told otherwise,
which would make Gram matrices lose most of their float32 precision. The setting is process-wide and TensorFlow
reads it when a kernel runs (and XLA when it compiles), so :func:`full_float32_precision` turns it off around the
whole call of an op, which covers its tracing and its execution alike.
"""

import contextlib

import tensorflow as tf


@contextlib.contextmanager
def full_float32_precision():
    """Context manager (and decorator) that turns TensorFloat-32 off inside and restores the previous setting.

    Ops built and run inside keep full float32 precision in their matrix products. A ``tf.function`` of the
    caller's that calls the CKA ops runs its kernels when it is called: wrap that call too.
    """
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(previous)
