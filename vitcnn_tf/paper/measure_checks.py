"""The checks of the paper's CKA findings beyond CKA (Sections 4, 6, 7 and 8): the same statistic under orthogonal
Procrustes similarity, and the permutation-null level of the CKA quantity the finding compares
(``vitcnn_tf.findings.Finding.second_measure`` / ``null``).

Both run on a capped subset of the evaluation examples, whose activations are reduced tap by tap:

* The subset: ``check_examples`` (default 256) examples evenly spaced through the evaluation order, rounded down to
  whole minibatches of the stage (at least one), so that the null uses the stage's own CKA estimator.
* Each tap ``[n, ...]`` becomes its unit-norm centred factor ``F`` ``[n, min(n, d)]`` with ``F F^T`` the
  normalised centred Gram matrix (``vitcnn_tf.metrics.procrustes.procrustes_factors``). Procrustes similarity of a
  pair is the nuclear norm of ``F_x^T F_y``; CKA, which ignores the scale, is computed from ``F F^T``.
* The null (``reference.permutations`` / ``null_summary``, default 100 permutations): the compared CKA quantity
  recomputed with the examples of one side shuffled; with minibatch CKA the shuffled examples are regrouped into
  the stage's minibatches (unbiased HSIC, null mean near 0), with linear CKA (Section 7, biased HSIC) the subset is
  one batch (null mean well above 0 at small n).

``check_examples=0`` skips both (the findings' fields are None): the runs of other seeds and of the untrained
control, whose checks the pooled findings do not use (``experiments.common.experiment_runs``).

Memory: the factors, ``8 n min(n, d)`` bytes per tap (0.5 MB at n = 256), and the float32 activations of the
subset for a group of taps at a time (at most ``max_feature_bytes``, default 256 MB, or one tap). Neither measure
streams: both need every example of a tap at once, hence the cap.
"""

import numpy as np

from vitcnn_tf import representations
from vitcnn_tf.data.elements import element_images
from vitcnn_tf.metrics import reference
from vitcnn_tf.metrics.procrustes import procrustes_factors
from vitcnn_tf.paper import evaluation

NO_CHECKS = {"second_measure": None, "null": None}  # the checks of a run with check_examples=0
DEFAULT_CHECK_EXAMPLES = 256
DEFAULT_NULL_PERMUTATIONS = 100
DEFAULT_MAX_FEATURE_BYTES = 2**28
SECOND_MEASURE = "procrustes"


def check_indices(num_examples, batch_size, cap=DEFAULT_CHECK_EXAMPLES):
    """``[m]`` ascending indices of the checked examples: ``m = batch_size * max(1, min(cap, N) // batch_size)``
    (at most ``N``) evenly spaced through ``N = num_examples``."""
    if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 4:
        raise ValueError(f"check_examples: expected an int >= 4, got {cap!r}")
    count = min(num_examples, batch_size * max(1, min(cap, num_examples) // batch_size))
    return np.round(np.linspace(0, num_examples - 1, count)).astype(np.int64)


def take_images(data, indices):
    """``[m, S, S, C]`` float32 images at ``indices`` (ascending) of the batches of ``data``, in one pass."""
    wanted, parts, offset = np.asarray(indices), [], 0
    for batch in data:
        images = np.asarray(element_images(batch, "data"), dtype=np.float32)
        chosen = wanted[(wanted >= offset) & (wanted < offset + len(images))] - offset
        parts.append(images[chosen])
        offset += len(images)
        if offset > wanted[-1]:
            break
    images = np.concatenate(parts)
    if len(images) != len(wanted):
        raise ValueError(f"data: {offset} examples, fewer than the {wanted[-1] + 1} the checks index")
    return images


def reduce_taps(model, images, taps, batch_size, reduce, max_feature_bytes=DEFAULT_MAX_FEATURE_BYTES):
    """``{tap: reduce(activations [n, ...] float32)}`` of ``model``'s ``taps`` on ``images [n, ...]``, extracted in
    minibatches of ``batch_size``, for groups of taps of at most ``max_feature_bytes`` activations at a time (one
    forward pass over the images per group)."""
    with evaluation.quiet_retracing_warnings():  # one compiled extractor per group of taps, by design
        return _reduce_taps(model, images, taps, batch_size, reduce, max_feature_bytes)


def _reduce_taps(model, images, taps, batch_size, reduce, max_feature_bytes):
    shapes = representations.tap_shapes(model, list(taps))
    if any(None in shape for shape in shapes.values()):  # a dynamic axis: sizes from one example's values
        shapes = {name: value.shape[1:] for name, value in
                  representations.extract(model, images[:1], list(taps)).items()}
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    groups, group, group_bytes = [], [], 0
    for name in taps:
        size = 4 * len(images) * sizes[name]
        if group and group_bytes + size > max_feature_bytes:
            groups.append(group)
            group, group_bytes = [], 0
        group.append(name)
        group_bytes += size
    groups.append(group)
    reduced = {}
    for group in groups:
        parts = [representations.extract(model, images[start:start + batch_size], group)
                 for start in range(0, len(images), batch_size)]
        for name in group:
            reduced[name] = reduce(np.concatenate([part[name] for part in parts]))
    return {name: reduced[name] for name in taps}


def tap_factors(model, images, taps, batch_size, max_feature_bytes=DEFAULT_MAX_FEATURE_BYTES):
    """``{tap: float64 factor [n, r]}`` (module docstring; None for a tap constant over the images) of ``model``'s
    ``taps`` on ``images``, as ``reduce_taps``."""
    def factor(activations):
        (found,), degenerate = procrustes_factors([activations])
        return None if bool(degenerate[0]) else found.numpy()

    return reduce_taps(model, images, taps, batch_size, factor, max_feature_bytes)


def array_factors(arrays):
    """Factors (as ``tap_factors``; None for a constant one) of a list of ``[n, ...]`` arrays."""
    factors, degenerate = procrustes_factors(list(arrays))
    return [None if flag else factor for factor, flag in zip(factors.numpy(), np.asarray(degenerate))]


def procrustes_pairs(rows, cols):
    """``[R, C]`` Procrustes similarity between factors ``rows`` and ``cols`` (lists; None: NaN): the nuclear norms
    of ``F_x^T F_y``, by NumPy's batched singular values (about 4 times faster than TensorFlow's on a CPU)."""
    matrix = np.full((len(rows), len(cols)), np.nan)
    good_rows = [i for i, factor in enumerate(rows) if factor is not None]
    good_cols = [j for j, factor in enumerate(cols) if factor is not None]
    if good_rows and good_cols:
        stacked_cols = _stacked([cols[j] for j in good_cols])
        for i, row in zip(good_rows, _stacked([rows[i] for i in good_rows])):
            matrix[i, good_cols] = np.linalg.svd(row.T @ stacked_cols, compute_uv=False).sum(axis=-1)
    return matrix


def grams(factors):
    """``[L, n, n]`` normalised centred Gram matrices ``F F^T`` of a list of factors (None: NaN)."""
    n = next(factor.shape[0] for factor in factors if factor is not None)
    return np.stack([np.full((n, n), np.nan) if factor is None else factor @ factor.T for factor in factors])


def minibatch_cka(rows, cols, batch_size):
    """``order -> [R, C]``: the minibatch CKA (unbiased HSIC summed over consecutive minibatches of ``batch_size``)
    between Gram matrices ``rows [R, n, n]`` and ``cols [C, n, n]``, the examples of ``cols`` reordered by ``order``
    (None: as they are). The rows' U-centred minibatch blocks and norms are computed once."""
    blocks = np.arange(rows.shape[1]).reshape(-1, batch_size)  # [B, b]
    row_blocks = _u_centred_blocks(rows, blocks).reshape(len(rows), -1)  # [R, B b b]
    self_rows = np.einsum("rk,rk->r", row_blocks, row_blocks)

    def cka(order=None):
        reordered = blocks if order is None else np.asarray(order)[blocks]
        col_blocks = _u_centred_blocks(cols, reordered).reshape(len(cols), -1)
        cross = row_blocks @ col_blocks.T  # the HSIC_1 sums over the minibatches, by a matrix product
        self_cols = np.einsum("ck,ck->c", col_blocks, col_blocks)
        with np.errstate(invalid="ignore", divide="ignore"):
            return cross / np.sqrt(self_rows[:, None] * self_cols[None, :])

    return cka


def paired_linear_cka(rows, cols):
    """``order -> [Q]``: the linear CKA (biased HSIC over all ``n`` examples) of the pairs of factors ``rows[q]``
    ``[n, a]`` and ``cols[q]`` ``[n, b]`` (as ``tap_factors``: centred, their Gram matrices ``F F^T``; None: NaN),
    the examples of ``cols`` reordered by ``order`` (None: as they are).

    Computed without ``n x n`` matrices: ``<F F^T, G G^T> = ||F^T G||_F^2``, so a reordering costs one
    ``[a, n] x [n, b]`` product per pair; the norms ``||F^T F||_F`` are computed once (a reordering keeps them)."""
    if len(rows) != len(cols):
        raise ValueError(f"paired_linear_cka: {len(rows)} row factors and {len(cols)} column factors; expected pairs")
    good = [q for q, (row, col) in enumerate(zip(rows, cols)) if row is not None and col is not None]
    left, right = (_stacked([factors[q] for q in good]) for factors in (rows, cols))  # [G, n, a], [G, n, b]
    if good:
        norms = (np.linalg.norm(np.matmul(left.transpose(0, 2, 1), left), axis=(1, 2))
                 * np.linalg.norm(np.matmul(right.transpose(0, 2, 1), right), axis=(1, 2)))

    def cka(order=None):
        values = np.full(len(rows), np.nan)
        if good:
            reordered = right if order is None else right[:, np.asarray(order)]
            values[good] = np.square(np.matmul(left.transpose(0, 2, 1), reordered)).sum(axis=(1, 2)) / norms
        return values

    return cka


def _stacked(factors):
    """``[G, n, w]`` stack of ``[n, w_g]`` factors, padded with zero columns to the widest (which leaves every inner
    product unchanged); ``[0, 0, 0]`` for none."""
    if not factors:
        return np.zeros((0, 0, 0))
    width = max(factor.shape[1] for factor in factors)
    return np.stack([np.pad(factor, [(0, 0), (0, width - factor.shape[1])]) for factor in factors])


def _u_centred_blocks(grams, blocks):
    """``[L, n, n]`` Gram matrices -> ``[L, B, b, b]``: the blocks of the examples ``blocks [B, b]``, each U-centred
    (Song et al.; ``reference.center_gram(unbiased=True)``). Gathered by two ``take`` s per block and centred in
    place, which is several times faster than NumPy's fancy indexing and temporaries."""
    k = np.stack([grams.take(block, axis=1).take(block, axis=2) for block in blocks], axis=1)
    b = k.shape[-1]
    diagonal = np.arange(b)
    k[..., diagonal, diagonal] = 0.0
    means = k.sum(axis=-1) / (b - 2)
    means -= means.sum(axis=-1, keepdims=True) / (2 * (b - 1))
    k -= means[..., :, None]
    k -= means[..., None, :]
    k[..., diagonal, diagonal] = 0.0
    return k


def null_check(statistic, num_examples, compared, estimator, num_permutations=DEFAULT_NULL_PERMUTATIONS, seed=0):
    """The ``null`` field of a finding: ``statistic(order) -> float`` is the compared CKA quantity with the examples
    of one side reordered by ``order`` (None: as they are); ``compared`` and ``estimator`` describe it."""
    orders = reference.permutations(num_examples, num_permutations, seed)
    summary = reference.null_summary(statistic(None), [statistic(order) for order in orders])
    return {"compared": compared, "estimator": estimator, **summary, "num_examples": int(num_examples)}


def second_measure(value, num_examples):
    """The ``second_measure`` field of a finding: the statistic under Procrustes on ``num_examples`` examples."""
    return {"measure": SECOND_MEASURE, "value": float(value), "num_examples": int(num_examples)}


def minibatch_estimator(batch_size):
    """Description of the minibatch CKA estimator for a null's ``estimator`` field."""
    return f"minibatch CKA (unbiased HSIC, minibatches of {batch_size}), shuffled examples regrouped"
