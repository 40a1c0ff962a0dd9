"""Orthogonal Procrustes similarity as compiled TensorFlow ops: ``reference.procrustes_similarity`` on tensors, for
one pair or for every pair of two lists of layers.

Shapes: ``n`` examples, ``d`` features (``[n, ...]`` flattened per example), ``L`` layers. Each representation is
centred over the examples, scaled to unit Frobenius norm and reduced to a factor ``F`` ``[n, r]`` with
``F F^T = X X^T``: ``X`` itself when ``d <= n``, else ``U sqrt(S)`` from the eigendecomposition of the ``[n, n]``
Gram matrix (``r = n``), so no ``d x d`` matrix is ever formed; eigenvalues below ``n eps max`` (``eps`` of the
dtype the features were centred in) count as zero, since centring always leaves one within rounding of zero. The
similarity of a pair is the sum of the singular values of ``F_x^T F_y`` ``[r_x, r_y]``.

Precision: centring, scaling and the Gram matrix run in float32 for float16 / bfloat16 / float32 input and in
float64 for float64 input, with TensorFloat-32 off (``vitcnn_tf.metrics.precision``); the eigendecompositions and
singular values are float64. Cost per pair ``O(n r^2)`` for the product and ``O(r^3)`` for the singular values;
memory ``L n r`` floats for the factors.
"""

import numpy as np
import tensorflow as tf

from vitcnn_tf.metrics import checks, reference
from vitcnn_tf.metrics.ops import gram_dtype
from vitcnn_tf.metrics.precision import full_float32_precision

_CONSTANT = "are constant over the examples; their Procrustes similarity is undefined (NaN)"
# Pairs whose [r, r] products are formed and decomposed at once by procrustes_matrix (bounds the memory).
_PAIRS_PER_CHUNK = 64


@full_float32_precision()
def procrustes_similarity(x, y):
    """Procrustes similarity of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` -> float64 scalar in [0, 1] (NaN, with a
    warning when eager, if either is constant over the examples)."""
    x, y = checks.feature_pair(x, y, False, "procrustes_similarity")
    x, = checks.require(checks.num_examples(x) >= 2, "procrustes_similarity: x needs at least 2 examples", x)
    factor_x, degenerate_x = _factor_op(x)
    factor_y, degenerate_y = _factor_op(y)
    checks.warn_flagged_layers("procrustes_similarity", [degenerate_x], [degenerate_y], _CONSTANT)
    return _pair_op(factor_x, factor_y, degenerate_x | degenerate_y)


@full_float32_precision()
def procrustes_factors(layers, name="layers", caller="procrustes_factors"):
    """Unit-norm centred factors of a list of ``L`` representations ``[n, ...]`` (the same ``n``): ``(factors
    [L, n, r] float64, degenerate [L] bool)`` with ``r`` the largest ``min(n, d)``; narrower factors are padded with
    zero columns, which leaves every similarity unchanged."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"{caller}: {name} must be a non-empty list of tensors [n, ...], got {type(layers).__name__}")
    tensors = [checks.features(layer, f"{name}[{i}]", caller) for i, layer in enumerate(layers)]
    n = checks.num_examples(tensors[0])
    for i, tensor in enumerate(tensors[1:], start=1):
        if checks.num_examples(tensor) != n:
            raise ValueError(f"{caller}: {name}[{i}] has {checks.num_examples(tensor)} examples, expected {n} "
                             f"(as {name}[0])")
    if isinstance(n, int) and n < 2:
        raise ValueError(f"{caller}: {name} need at least 2 examples, got n={n}")
    factors, degenerate = zip(*(_factor_op(tensor) for tensor in tensors))
    width = max(int(factor.shape[1]) for factor in factors)
    factors = [tf.pad(factor, [[0, 0], [0, width - int(factor.shape[1])]]) for factor in factors]
    return tf.stack(factors), tf.stack(degenerate)


@full_float32_precision()
def procrustes_matrix(xs, ys=None):
    """``[Lx, Ly]`` float64 Procrustes similarity between every layer of ``xs`` and every layer of ``ys`` (lists of
    tensors ``[n, ...]`` of the same ``n`` examples; ``ys=None``: ``xs`` with itself, symmetric, ones on the
    diagonal). Rows / columns of constant layers are NaN (with a warning when eager)."""
    factors_x, degenerate_x = procrustes_factors(xs, "xs", "procrustes_matrix")
    if ys is None:
        matrix = procrustes_from_factors(factors_x, factors_x, symmetric=True)
        factors_y, degenerate_y = factors_x, degenerate_x
    else:
        factors_y, degenerate_y = procrustes_factors(ys, "ys", "procrustes_matrix")
        if factors_y.shape[1] != factors_x.shape[1]:
            raise ValueError(f"procrustes_matrix: ys hold {factors_y.shape[1]} examples, xs {factors_x.shape[1]}")
        matrix = procrustes_from_factors(factors_x, factors_y)
    flags_x, flags_y = np.asarray(degenerate_x), np.asarray(degenerate_y)
    matrix[flags_x, :] = np.nan
    matrix[:, flags_y] = np.nan
    checks.warn_flagged_layers("procrustes_matrix", flags_x, [] if ys is None else flags_y, _CONSTANT)
    return tf.constant(matrix)


@full_float32_precision()
def procrustes_from_factors(factors_x, factors_y, symmetric=False):
    """``[Lx, Ly]`` float64 NumPy Procrustes similarities of factors ``[Lx, n, r]`` and ``[Ly, n, r']`` (from
    ``procrustes_factors``), in chunks of 64 batched singular value decompositions of ``[r, r']`` matrices;
    ``symmetric``: the two are the same, only ``j >= i`` is computed."""
    num_x, num_y = int(factors_x.shape[0]), int(factors_y.shape[0])
    pairs = [(i, j) for i in range(num_x) for j in range(num_y) if not symmetric or j >= i]
    values = np.empty(len(pairs))
    for start in range(0, len(pairs), _PAIRS_PER_CHUNK):
        chunk = np.array(pairs[start:start + _PAIRS_PER_CHUNK])
        values[start:start + len(chunk)] = _nuclear_norms_op(tf.gather(factors_x, chunk[:, 0]),
                                                             tf.gather(factors_y, chunk[:, 1])).numpy()
    matrix = np.empty((num_x, num_y))
    rows, cols = np.array(pairs).T
    matrix[rows, cols] = values
    if symmetric:
        matrix[cols, rows] = values
    return matrix


def _factor_op(x):
    """(unit-norm centred factor ``[n, min(n, d)]`` float64, degenerate flag) of features ``x`` ``[n, d]``: the
    features when ``d <= n`` is known statically, else the Gram route."""
    n, d = x.shape
    return _factor_of_features(x, use_gram=not (n is not None and d is not None and d <= n))


@tf.function(autograph=False, reduce_retracing=True)
def _factor_of_features(x, use_gram):
    dtype = gram_dtype(x.dtype)
    x = tf.cast(x, dtype)
    centred = x - tf.reduce_mean(x, axis=0, keepdims=True)
    squared_norm = tf.reduce_sum(tf.square(centred))
    degenerate = squared_norm <= reference.degeneracy_rtol(dtype.as_numpy_dtype) * tf.reduce_sum(tf.square(x))
    centred = centred / tf.sqrt(tf.where(degenerate, tf.ones_like(squared_norm), squared_norm))
    if not use_gram:
        return tf.cast(centred, tf.float64), degenerate
    gram = tf.cast(tf.matmul(centred, centred, transpose_b=True), tf.float64)
    eigenvalues, eigenvectors = tf.linalg.eigh(gram)
    # Eigenvalues within rounding of zero (centring leaves at least one) would add sqrt(rounding) each.
    floor = tf.cast(tf.shape(gram)[0], tf.float64) * np.finfo(dtype.as_numpy_dtype).eps * eigenvalues[-1]
    return eigenvectors * tf.sqrt(tf.where(eigenvalues > floor, eigenvalues, 0.0))[None, :], degenerate


@tf.function(autograph=False, reduce_retracing=True)
def _pair_op(factor_x, factor_y, degenerate):
    value = tf.reduce_sum(tf.linalg.svd(tf.matmul(factor_x, factor_y, transpose_a=True), compute_uv=False))
    return tf.where(degenerate, tf.constant(np.nan, tf.float64), value)


@tf.function(autograph=False, reduce_retracing=True)
def _nuclear_norms_op(factors_x, factors_y):
    """``[P]`` nuclear norms of ``F_x^T F_y`` for ``[P, n, r]`` factor pairs."""
    return tf.reduce_sum(tf.linalg.svd(tf.matmul(factors_x, factors_y, transpose_a=True), compute_uv=False), axis=-1)
