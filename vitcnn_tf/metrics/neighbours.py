"""Mutual k-nearest-neighbour alignment as compiled TensorFlow ops: ``reference.mutual_knn`` on tensors, for one
pair or for every pair of two lists of layers.

Shapes: ``n`` examples, ``d`` features (``[n, ...]`` flattened per example), ``L`` layers, ``k`` neighbours. Each
example's features are L2-normalised; its ``k`` nearest neighbours are the other examples of largest cosine
similarity (``tf.math.top_k``, ties to the lower index, as the reference). A layer is reduced to its ``[n, k]``
neighbour indices; a pair's shared neighbours are counted by looking the ``y`` neighbours up in the ``[n, n]``
neighbour indicator matrix of ``x``, one ``x`` layer at a time against every ``y`` layer. Similarities are float32
for float16 / bfloat16 / float32 input and float64 for float64 input, with TensorFloat-32 off
(``vitcnn_tf.metrics.precision``); near-ties closer than that precision may order differently from the float64
reference. Memory: one ``[n, n]`` similarity or indicator matrix at a time and ``L n k`` indices.
"""

import numpy as np
import tensorflow as tf

from vitcnn_tf.metrics import checks, reference
from vitcnn_tf.metrics.ops import gram_dtype
from vitcnn_tf.metrics.precision import full_float32_precision

_ZERO_ROWS = "have an all-zero example; cosine similarity is undefined, their mutual k-NN alignment is NaN"


@full_float32_precision()
def nearest_neighbours(x, k=10, name="x", caller="nearest_neighbours"):
    """``([n, k] int32 indices of each example's k nearest other examples by cosine similarity, zero-row flag)``
    of ``x`` ``[n, ...]``; the flag is True when some example is all zero (cosine similarity undefined)."""
    x = checks.features(x, name, caller)
    n = checks.num_examples(x)
    if not isinstance(n, int):
        raise ValueError(f"{caller}: {name} needs a known number of examples, got shape {tuple(x.shape)}")
    reference._check_num_neighbours(k, n, caller)
    return _neighbours_op(x, k)


@full_float32_precision()
def mutual_knn(x, y, k=10):
    """Mutual k-NN alignment of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` -> float64 scalar in [0, 1] (NaN, with a
    warning, when an example of either is all zero)."""
    x, y = checks.feature_pair(x, y, False, "mutual_knn")
    (neighbours_x, zero_x), (neighbours_y, zero_y) = (nearest_neighbours(x, k, "x", "mutual_knn"),
                                                      nearest_neighbours(y, k, "y", "mutual_knn"))
    checks.warn_flagged_layers("mutual_knn", [zero_x], [zero_y], _ZERO_ROWS)
    value = _overlaps_op(neighbours_x, neighbours_y[None])[0]
    return tf.where(zero_x | zero_y, tf.constant(np.nan, tf.float64), value)


@full_float32_precision()
def mutual_knn_matrix(xs, ys=None, k=10):
    """``[Lx, Ly]`` float64 mutual k-NN alignment between every layer of ``xs`` and every layer of ``ys`` (lists of
    tensors ``[n, ...]`` of the same ``n`` examples; ``ys=None``: ``xs`` with itself). Rows / columns of layers
    with an all-zero example are NaN (with a warning)."""
    neighbours_x, zero_x = layer_neighbours(xs, k, "xs")
    neighbours_y, zero_y = (neighbours_x, zero_x) if ys is None else layer_neighbours(ys, k, "ys")
    if neighbours_y.shape[1] != neighbours_x.shape[1]:
        raise ValueError(f"mutual_knn_matrix: ys hold {neighbours_y.shape[1]} examples, xs {neighbours_x.shape[1]}")
    matrix = mutual_knn_from_neighbours(neighbours_x, neighbours_y)
    matrix[zero_x, :] = np.nan
    matrix[:, zero_y] = np.nan
    checks.warn_flagged_layers("mutual_knn_matrix", zero_x, [] if ys is None else zero_y, _ZERO_ROWS)
    return tf.constant(matrix)


def mutual_knn_from_neighbours(neighbours_x, neighbours_y):
    """``[Lx, Ly]`` float64 NumPy mutual k-NN alignment from neighbour indices ``[Lx, n, k]`` and ``[Ly, n, k]``
    (``layer_neighbours``), one ``x`` layer at a time."""
    return np.stack([_overlaps_op(neighbours, neighbours_y).numpy() for neighbours in neighbours_x])


def layer_neighbours(layers, k=10, name="layers"):
    """``([L, n, k] int32 neighbour indices, [L] bool all-zero-example flags)`` of a list of ``[n, ...]`` layers."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"mutual_knn_matrix: {name} must be a non-empty list of tensors [n, ...], got "
                         f"{type(layers).__name__}")
    found = [nearest_neighbours(layer, k, f"{name}[{i}]", "mutual_knn_matrix") for i, layer in enumerate(layers)]
    sizes = [int(indices.shape[0]) for indices, _ in found]
    if len(set(sizes)) != 1:
        raise ValueError(f"mutual_knn_matrix: every layer of {name} must hold the same examples, got n={sizes}")
    return tf.stack([indices for indices, _ in found]), np.array([bool(zero) for _, zero in found])


@tf.function(autograph=False, reduce_retracing=True)
def _neighbours_op(x, k):
    x = tf.cast(x, gram_dtype(x.dtype))
    norms = tf.norm(x, axis=1)
    zero_rows = tf.reduce_any(norms == 0)
    unit = x / tf.where(norms == 0, tf.ones_like(norms), norms)[:, None]
    similarity = tf.matmul(unit, unit, transpose_b=True)
    similarity = tf.linalg.set_diag(similarity, tf.fill(tf.shape(norms), tf.constant(-np.inf, similarity.dtype)))
    return tf.math.top_k(similarity, k=k, sorted=True).indices, zero_rows


@tf.function(autograph=False, reduce_retracing=True)
def _overlaps_op(neighbours_x, neighbours_ys):
    """``[L]`` mean shared-neighbour fraction of ``[n, k]`` neighbours of x with each of ``[L, n, k]`` of y."""
    n, k = tf.shape(neighbours_x)[0], tf.shape(neighbours_x)[1]
    indicator = tf.reduce_sum(tf.one_hot(neighbours_x, n, dtype=tf.float64), axis=1)  # [n, n]
    shared = tf.gather(indicator, tf.transpose(neighbours_ys, [1, 0, 2]), axis=1, batch_dims=1)  # [n, L, k]
    return tf.reduce_sum(shared, axis=[0, 2]) / tf.cast(n * k, tf.float64)
