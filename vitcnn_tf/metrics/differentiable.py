"""Linear CKA as a plain differentiable TensorFlow function: the core of ``CKALoss`` and ``CKARegularization``.

Unlike ``vitcnn_tf.metrics.cka.linear_cka`` (a compiled op that returns NaN for a constant representation and
checks its input for NaN / Inf), this function is meant to sit inside a training step: it is not a ``tf.function``
of its own, it computes in one chosen dtype, and a representation that is constant over the examples gives CKA 0
with a zero (not NaN) gradient, so that one degenerate minibatch does not poison the weights.
"""

import tensorflow as tf

from vitcnn_tf.metrics import checks, ops, reference


def linear_cka(x, y, unbiased=False, dtype=None, caller="linear_cka"):
    """Linear CKA of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` (flattened per example) -> scalar in ``dtype``.

    The features are centred over the examples, their Gram matrices ``[n, n]`` computed in ``dtype`` (default:
    float64 for float64 ``x``, else float32) and centred again (biased: ``H K H``; ``unbiased=True``: Song et
    al.'s U-centring, ``n >= 4``); CKA is ``<K_c, L_c> / sqrt(<K_c, K_c> <L_c, L_c>)``, equal to
    ``reference.linear_cka``. Differentiable with respect to ``x`` and ``y``. A representation whose self-HSIC is
    at most ``reference.degeneracy_rtol(dtype)`` times its squared Gram norm (constant over the examples) gives 0.
    ``caller`` names the function or class in error messages.
    """
    x = checks.representation(x, "x", caller)
    y = checks.representation(y, "y", caller)
    dtype = ops.gram_dtype(x.dtype) if dtype is None else tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.float64):
        raise ValueError(f"{caller}: dtype must be float32 or float64, got {dtype.name}")
    x, y = checks.require_equal_examples(x, y, f"{caller}: x and y must hold the same examples (equal n)")
    if unbiased:
        x, y = checks.require_unbiased_examples(x, f"{caller}: the unbiased HSIC estimator needs n >= 4 examples", x, y)
    grams = []
    for features in (x, y):
        features = tf.cast(tf.reshape(features, [tf.shape(features)[0], -1]), dtype)
        features = features - tf.reduce_mean(features, axis=0, keepdims=True)
        grams.append(tf.matmul(features, features, transpose_b=True))
    centred = [ops.centered(gram, unbiased) for gram in grams]
    self_x, self_y = (tf.reduce_sum(tf.square(k)) for k in centred)
    rtol = reference.degeneracy_rtol(dtype.as_numpy_dtype)
    degenerate = ((self_x <= rtol * tf.reduce_sum(tf.square(grams[0])))
                  | (self_y <= rtol * tf.reduce_sum(tf.square(grams[1]))))
    # The second tf.where keeps the square root away from 0, so the unused branch has a finite gradient.
    denominator = tf.sqrt(tf.where(degenerate, tf.ones_like(self_x), self_x * self_y))
    value = tf.reduce_sum(centred[0] * centred[1]) / denominator
    return tf.where(degenerate, tf.zeros_like(value), value)
