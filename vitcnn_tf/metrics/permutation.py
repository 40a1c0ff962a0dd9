"""Permutation null of a similarity measure on tensors: ``reference.permutation_null`` for TensorFlow measures.

The permutations are ``reference.permutations(n, num_permutations, seed)``, the very pairings the reference uses,
so the two agree to the precision of the measure. ``y`` is reordered with ``tf.gather`` on its device, and the
measure (e.g. ``vitcnn_tf.metrics.procrustes_similarity``, ``linear_cka`` or ``mutual_knn``) runs once per
permutation.
"""

import numpy as np
import tensorflow as tf

from vitcnn_tf.metrics import checks, reference
from vitcnn_tf.metrics.precision import full_float32_precision


@full_float32_precision()
def permutation_null(measure, x, y, num_permutations=100, seed=0):
    """Null distribution of ``measure(x, y)`` (a scalar) over shuffled example pairings ``measure(x, y[pi])``.

    ``x``, ``y``: tensors ``[n, ...]`` of the same ``n`` examples. Returns the dict of
    ``reference.null_summary`` (``value``, ``null_mean``, ``null_std``, ``null_q95``, ``p_value`` with the +1
    correction, ``num_permutations``) plus ``null``, the ``[P]`` float64 null values.
    """
    if not callable(measure):
        raise ValueError(f"permutation_null: measure must be a callable measure(x, y) -> scalar, got "
                         f"{type(measure).__name__}")
    x = checks.representation(x, "x", "permutation_null")
    y = checks.representation(y, "y", "permutation_null")
    if x.shape[0] is None or x.shape[0] != y.shape[0]:
        raise ValueError(f"permutation_null: x and y must hold the same known number of examples, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    orders = reference.permutations(int(x.shape[0]), num_permutations, seed)
    null = np.array([float(measure(x, tf.gather(y, order))) for order in orders])
    return {**reference.null_summary(float(measure(x, y)), null), "null": null}
