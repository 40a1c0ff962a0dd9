"""CKA and HSIC as compiled TensorFlow ops: the functions of ``vitcnn_tf.metrics.reference`` on tensors.

Same names, arguments and definitions as the reference (see its docstring for the formulas and for how
degenerate, i.e. constant, representations are handled); inputs are tensors or arrays of float16, bfloat16,
float32 or float64. Shapes: ``n`` examples, ``d`` features.

Precision. Linear-kernel Gram matrices are computed in float32 for float16 / bfloat16 / float32 input and in
float64 for float64 input, with TensorFloat-32 off (``vitcnn_tf.metrics.precision``); everything after the Gram
matrix (centring, HSIC, CKA) is float64. ``linear_cka`` centres the features over the examples before the Gram
matrix (this leaves the centred Gram matrices unchanged), so a float32 Gram matrix loses no precision to large
feature means. ``gram_linear`` returns the raw ``x x^T``: centring a float32 one afterwards
(``cka(gram_linear(x), ...)``) is less precise. Input checks: ``vitcnn_tf.metrics.checks``.

Extreme scales. CKA is scale-invariant, so ``linear_cka`` and ``linear_cka_features`` divide each representation
by a power of two near its largest magnitude (``normalised_by_power_of_two``) before anything else: features of
any finite magnitude (float32 at 1e-20 or 1e19, float64 at 1e200) neither underflow nor overflow in the Gram
matrix, and degeneracy is judged at the data's own scale. Dividing by a power of two is exact, so results at
ordinary scales are unchanged to the last bit.
"""

import warnings

import numpy as np
import tensorflow as tf

from vitcnn_tf.metrics import checks, reference
from vitcnn_tf.metrics.precision import full_float32_precision


def gram_dtype(dtype):
    """The dtype a linear Gram matrix is computed in for features of ``dtype``: float64 or else float32."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


@full_float32_precision()
def gram_linear(x):
    """Linear kernel ``x x^T``: ``x`` ``[n, ...]`` (flattened per example) -> float64 ``[n, n]``."""
    return _gram_linear_op(checks.features(x, "x", "gram_linear"))


@full_float32_precision()
def gram_rbf(x, threshold=1.0, median="all"):
    """RBF kernel ``exp(-D / (2 * threshold**2 * median(D)))``: ``x`` ``[n, ...]`` -> float64 ``[n, n]``.

    ``D`` holds the squared distances between examples; the median is over all ``n * n`` entries of ``D``
    (``median="all"``, the canonical convention, zero diagonal included) or over its off-diagonal entries
    (``median="off_diagonal"``).
    """
    if median not in reference.MEDIANS:
        raise ValueError(f"gram_rbf: median must be one of {reference.MEDIANS}, got {median!r}")
    x = checks.features(x, "x", "gram_rbf")
    x, = checks.require(checks.num_examples(x) >= 2, "gram_rbf: x needs at least 2 examples for a median distance", x)
    threshold = tf.cast(threshold, tf.float64)
    threshold, = checks.require(threshold > 0, "gram_rbf: threshold must be a positive number", threshold)
    gram, median_distance = _gram_rbf_op(x, threshold, median == "all")
    gram, = checks.require(median_distance > 0, "gram_rbf: the median squared distance between examples of x is 0 (most "
                                       "examples are identical); expected distinct examples", gram)
    return gram


@full_float32_precision()
def center_gram(k, unbiased=False):
    """Centre a Gram matrix ``k`` ``[n, n]`` -> float64 ``[n, n]``: ``H K H``, or U-centring (``n >= 3``)."""
    k = checks.gram(k, "k", "center_gram")
    if unbiased:
        k, = checks.require(checks.num_examples(k) >= 3, "center_gram: unbiased centring needs n >= 3 examples in k", k)
    return _center_op(k, unbiased=bool(unbiased))


@full_float32_precision()
def hsic(k, l, unbiased=False):  # noqa: E741 (the paper's name for the second Gram matrix)
    """HSIC of Gram matrices ``k``, ``l`` ``[n, n]`` -> float64 scalar.

    Biased: ``trace(K H L H) / (n - 1)**2``; unbiased: HSIC_1 of Song et al. (2012), ``n >= 4``.
    """
    k, l = checks.gram_pair(k, l, unbiased, "hsic")
    return _hsic_op(k, l, unbiased=bool(unbiased))


@full_float32_precision()
def cka(k, l, unbiased=False):  # noqa: E741
    """CKA of Gram matrices ``k``, ``l`` ``[n, n]`` -> float64 scalar ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    NaN for a degenerate (constant) representation; called eagerly, it also warns.
    """
    rtols = tuple(reference.degeneracy_rtol(gram_dtype(checks.float_tensor(g, name, "cka").dtype).as_numpy_dtype)
                  for g, name in ((k, "k"), (l, "l")))
    k, l = checks.gram_pair(k, l, unbiased, "cka")
    value, degenerate = _cka_op(k, l, unbiased=bool(unbiased), rtols=rtols)
    _warn_degenerate_pair("cka", degenerate)
    return value


@full_float32_precision()
def linear_cka(x, y, unbiased=False):
    """Linear CKA of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` -> float64 scalar, through centred-feature Grams."""
    x, y = checks.feature_pair(x, y, unbiased, "linear_cka")
    value, degenerate = _linear_cka_op(x, y, unbiased=bool(unbiased))
    _warn_degenerate_pair("linear_cka", degenerate)
    return value


@full_float32_precision()
def linear_cka_features(x, y, unbiased=False):
    """Linear CKA of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` in feature space (cheaper when ``d < n``).

    Same value as ``linear_cka``; the formulas are in ``reference.linear_cka_features``. Computed in float64.
    """
    x, y = checks.feature_pair(x, y, unbiased, "linear_cka_features")
    value, degenerate = _linear_cka_features_op(x, y, unbiased=bool(unbiased))
    _warn_degenerate_pair("linear_cka_features", degenerate)
    return value



# The compiled computations behind the public functions; their inputs are validated tensors.


@tf.function(autograph=False, reduce_retracing=True)
def _gram_linear_op(x):
    x = tf.cast(x, gram_dtype(x.dtype))
    return tf.cast(tf.matmul(x, x, transpose_b=True), tf.float64)


@tf.function(autograph=False, reduce_retracing=True)
def _gram_rbf_op(x, threshold, include_diagonal):
    """(RBF Gram matrix ``[n, n]``, median squared distance) of ``x`` ``[n, d]``; the median over all ``n * n``
    distances or, without ``include_diagonal``, over the off-diagonal ones."""
    x = tf.cast(x, tf.float64)
    squared_norms = tf.reduce_sum(x * x, axis=1)
    distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
    distances = tf.linalg.set_diag(tf.maximum(distances, 0.0), tf.zeros_like(squared_norms))
    entries = (tf.reshape(distances, [-1]) if include_diagonal
               else tf.boolean_mask(distances, ~tf.eye(tf.shape(x)[0], dtype=tf.bool)))
    entries = tf.sort(entries)
    size = tf.size(entries)
    median = (entries[(size - 1) // 2] + entries[size // 2]) / 2.0  # the middle value, or the mean of the two
    return tf.exp(-distances / (2.0 * threshold**2 * median)), median


@tf.function(autograph=False, reduce_retracing=True)
def _center_op(k, unbiased):
    return centered(k, unbiased)


@tf.function(autograph=False, reduce_retracing=True)
def _hsic_op(k, l, unbiased):  # noqa: E741
    return _hsic_centred(centered(k, unbiased), centered(l, unbiased), unbiased)


@tf.function(autograph=False, reduce_retracing=True)
def _cka_op(k, l, unbiased, rtols):  # noqa: E741
    return _cka_of_grams(k, l, unbiased, rtols)


@tf.function(autograph=False, reduce_retracing=True)
def _linear_cka_op(x, y, unbiased):
    grams, rtols = [], []
    for features in (x, y):
        features, _ = normalised_by_power_of_two(tf.cast(features, gram_dtype(features.dtype)))
        features = features - tf.reduce_mean(features, axis=0, keepdims=True)
        grams.append(tf.cast(tf.matmul(features, features, transpose_b=True), tf.float64))
        rtols.append(reference.degeneracy_rtol(features.dtype.as_numpy_dtype))
    return _cka_of_grams(grams[0], grams[1], unbiased, rtols)


@tf.function(autograph=False, reduce_retracing=True)
def _linear_cka_features_op(x, y, unbiased):
    x, y = (normalised_by_power_of_two(tf.cast(f, tf.float64))[0] for f in (x, y))
    x, y = (f - tf.reduce_mean(f, axis=0, keepdims=True) for f in (x, y))
    n = tf.cast(tf.shape(x)[0], tf.float64)

    def scaled_hsic(a, b):
        cross = tf.reduce_sum(tf.square(tf.matmul(a, b, transpose_a=True)))
        if not unbiased:
            return cross
        norms_a, norms_b = tf.reduce_sum(a * a, axis=1), tf.reduce_sum(b * b, axis=1)
        return (cross - n / (n - 2.0) * tf.reduce_sum(norms_a * norms_b)
                + tf.reduce_sum(norms_a) * tf.reduce_sum(norms_b) / ((n - 1.0) * (n - 2.0)))

    self_x, self_y = scaled_hsic(x, x), scaled_hsic(y, y)
    rtol = reference.degeneracy_rtol(np.float64)
    # The degeneracy scale ||K_c||_F^2 of the centred Gram matrix K_c = X X^T equals ||X^T X||_F^2.
    degenerate = tf.stack([self_x <= rtol * tf.reduce_sum(tf.square(tf.matmul(x, x, transpose_a=True))),
                           self_y <= rtol * tf.reduce_sum(tf.square(tf.matmul(y, y, transpose_a=True)))])
    return _masked_ratio(scaled_hsic(x, y), self_x, self_y, degenerate), degenerate


def _cka_of_grams(k, l, unbiased, rtols):  # noqa: E741
    """(CKA, [2] degenerate flags) of float64 Gram matrices ``k``, ``l`` ``[n, n]``."""
    k_centred, l_centred = centered(k, unbiased), centered(l, unbiased)
    self_k = _hsic_centred(k_centred, k_centred, unbiased)
    self_l = _hsic_centred(l_centred, l_centred, unbiased)
    n = tf.cast(checks.num_examples(k), tf.float64)
    normaliser = n * (n - 3.0) if unbiased else (n - 1.0) ** 2
    degenerate = tf.stack([self_k <= rtols[0] * tf.reduce_sum(tf.square(k)) / normaliser,
                           self_l <= rtols[1] * tf.reduce_sum(tf.square(l)) / normaliser])
    return _masked_ratio(_hsic_centred(k_centred, l_centred, unbiased), self_k, self_l, degenerate), degenerate


def _masked_ratio(cross, self_x, self_y, degenerate):
    denominator = tf.sqrt(tf.where(tf.reduce_any(degenerate), tf.constant(np.nan, tf.float64), self_x * self_y))
    return cross / denominator


def _warn_degenerate_pair(caller, degenerate):
    if tf.executing_eagerly() and np.any(degenerate.numpy()):
        names = " and ".join(name for name, flag in zip(("first", "second"), degenerate.numpy()) if flag)
        warnings.warn(f"{caller}: the {names} representation is constant over the examples (zero centred Gram "
                      f"matrix); CKA is undefined, returning NaN", RuntimeWarning,
                      stacklevel=4)  # this function, the public op, the precision guard, the caller


def normalised_by_power_of_two(x):
    """``x`` (float32 or float64) divided by ``2**e``, ``e`` about ``log2(max |x|)`` -> (``x / 2**e``, float64 ``e``).

    The division is exact (``x == result * 2**e``) and brings the largest magnitude near 1 (``e = 0`` for a zero
    ``x``, and for NaN / Inf, which are left to the finiteness checks). ``e`` is clipped so that ``2**e`` and
    ``2**-e`` are normal numbers of the dtype: subnormals, flushed to zero by TensorFlow on CPUs, never arise.
    """
    info = np.finfo(x.dtype.as_numpy_dtype)
    largest = tf.cast(tf.reduce_max(tf.abs(x)), tf.float64)
    exponent = tf.where(tf.math.is_finite(largest) & (largest > 0), tf.floor(tf.math.log(largest) / np.log(2.0)), 0.0)
    exponent = tf.clip_by_value(exponent, float(info.minexp), float(-info.minexp))
    return x * tf.cast(tf.pow(tf.constant(2.0, tf.float64), -exponent), x.dtype), exponent


def centered(k, unbiased):
    """Centre float Gram matrices ``[..., n, n]``: biased ``H K H`` or Song et al.'s U-centring."""
    n = tf.cast(tf.shape(k)[-1], k.dtype)
    if not unbiased:
        means = tf.reduce_mean(k, axis=-1)
        grand_mean = tf.reduce_mean(means, axis=-1)[..., None, None]
        return k - means[..., :, None] - means[..., None, :] + grand_mean
    zero_diagonal = tf.zeros_like(tf.linalg.diag_part(k))
    k = tf.linalg.set_diag(k, zero_diagonal)
    means = tf.reduce_sum(k, axis=-1) / (n - 2.0)
    means -= tf.reduce_sum(means, axis=-1, keepdims=True) / (2.0 * (n - 1.0))
    return tf.linalg.set_diag(k - means[..., :, None] - means[..., None, :], zero_diagonal)


def _hsic_centred(k_centred, l_centred, unbiased):
    n = tf.cast(checks.num_examples(k_centred), tf.float64)
    normaliser = n * (n - 3.0) if unbiased else (n - 1.0) ** 2
    return tf.reduce_sum(k_centred * l_centred) / normaliser

