"""Mean attention distance of self-attention heads (Section 5, Figures 3 and 4; Dosovitskiy et al. 2021, Fig. 7).

For every query patch, the pixel distances to the key patches are weighted by the attention probabilities; the
result is averaged over queries and examples, per head. Prefix (CLS) rows and columns are dropped, so only
patch-to-patch attention counts. A local head has a small mean distance, a global head a large one.

Attention entropy, the usual companion of the distance: the entropy (nats) of each query patch's attention over
the patch keys (renormalised over them), averaged over queries and examples, per head. It is 0 for a head that
attends to one patch and ``log P`` for one attending uniformly to all ``P`` patches.
"""

import numpy as np

from vitcnn_tf import grids
from vitcnn_tf.analysis import tokens as token_layout

# Examples converted to float64 at a time (bounds the temporary copy; ViT-B/16: 12 x 196 x 196 floats each).
_EXAMPLES_PER_CHUNK = 32


def patch_distance_matrix(grid_size, patch_size):
    """``[P, P]`` pixel distances ``patch_size * ||(r_q, c_q) - (r_k, c_k)||`` between the patches of a
    ``grid_size x grid_size`` grid, patches numbered row-major (``P = grid_size ** 2``)."""
    rows, cols = np.divmod(np.arange(grid_size * grid_size), grid_size)
    delta_rows = rows[:, None] - rows[None, :]
    delta_cols = cols[:, None] - cols[None, :]
    return float(patch_size) * np.hypot(delta_rows, delta_cols)


def _check_attention(attention, patch_size, num_prefix_tokens):
    """Validate and return ``(attention [n, H, T, T] float64, grid side)``."""
    attention = token_layout.as_float64(attention, "attention")
    if attention.ndim != 4:
        raise ValueError(f"attention: expected rank 4 [n, heads, T, T], got shape {attention.shape}")
    n, heads, num_queries, num_keys = attention.shape
    if num_queries != num_keys:
        raise ValueError(
            f"attention: expected square [T, T] attention maps (self-attention), got shape {attention.shape}"
        )
    if n == 0 or heads == 0:
        raise ValueError(f"attention: empty array of shape {attention.shape}")
    if not np.isscalar(patch_size) or not patch_size > 0:
        raise ValueError(f"patch_size: expected a positive number, got {patch_size!r}")
    prefix = token_layout.check_num_prefix_tokens(num_prefix_tokens, num_queries, "attention")
    side = grids.square_side(num_queries - prefix,
                             f"attention of shape {attention.shape} without its {prefix} prefix tokens")
    token_layout.check_finite(attention, "attention")
    if np.any(attention < 0):
        raise ValueError(f"attention: negative weights (min {attention.min():.3g}); expected probabilities >= 0")
    return attention, prefix, side


def per_example_attention_distance(attention, patch_size, num_prefix_tokens=1, renormalize=True):
    """``[n, H]`` mean attention distance of each head for each example (averaged over the query patches).

    ``attention``: ``[n, H, T, T]`` probabilities (NumPy or TF), queries on axis 2 and keys on axis 3, with
    ``T = num_prefix_tokens + g * g``. The first ``num_prefix_tokens`` rows and columns are dropped. With
    ``renormalize=True`` each query's weights over the patch keys are rescaled to sum to one (the mass a query
    puts on the CLS key is ignored); with ``False`` they are used as they are, so that mass counts as distance 0.
    """
    attention, prefix, side = _check_attention(attention, patch_size, num_prefix_tokens)
    distances = patch_distance_matrix(side, patch_size)
    patch_attention = attention[:, :, prefix:, prefix:]
    per_query = np.einsum("nhqk,qk->nhq", patch_attention, distances)
    if renormalize:  # the distance is linear in the weights: divide the sums, not the weights, by the mass
        mass = patch_attention.sum(axis=-1)
        if np.any(mass <= 0):
            raise ValueError(
                f"attention: {int(np.sum(mass <= 0))} query row(s) put no weight on any patch key, so they cannot "
                "be renormalized over the patches; use renormalize=False"
            )
        per_query = per_query / mass
    return per_query.mean(axis=-1)


def mean_attention_distance(attention, patch_size, num_prefix_tokens=1, renormalize=True):
    """``[H]`` mean attention distance per head in pixels, averaged over query patches and examples.

    See ``per_example_attention_distance`` for the arguments. The distances are ``patch_size`` times the Euclidean
    distance between query and key patch on the square patch grid.
    """
    accumulator = MeanAttentionDistance(patch_size, num_prefix_tokens, renormalize)
    accumulator.update(attention)
    return accumulator.result()


class PerHeadAccumulator:
    """Streaming per-head statistic over a dataset: ``update`` with each ``[n_b, H, T, T]`` batch, then
    ``result() -> [H]`` (the mean over every example seen); ``per_example()`` returns the ``[N, H]`` values, e.g. for
    bootstrap intervals over examples. Subclasses give ``_per_example_values(attention) -> [n, H]``."""

    def reset(self):
        self._per_example = []

    def update(self, attention):
        """Add the ``[n_b, H, T, T]`` attention probabilities of one batch (converted to float64 in chunks)."""
        attention = token_layout.as_array(attention)
        if attention.ndim != 4:
            raise ValueError(f"attention: expected rank 4 [n, heads, T, T], got shape {attention.shape}")
        if self._per_example and attention.shape[1] != self._per_example[0].shape[1]:
            raise ValueError(
                f"attention: batch has {attention.shape[1]} heads, earlier batches had {self._per_example[0].shape[1]}"
            )
        for start in range(0, max(len(attention), 1), _EXAMPLES_PER_CHUNK):
            self._per_example.append(self._per_example_values(attention[start : start + _EXAMPLES_PER_CHUNK]))

    def per_example(self):
        """``[N, H]`` per-example values of all examples seen so far."""
        if not self._per_example:
            raise ValueError(f"{type(self).__name__}: no attention maps added yet (call update first)")
        return np.concatenate(self._per_example, axis=0)

    def result(self):
        """``[H]`` mean per head over all examples seen so far."""
        return self.per_example().mean(axis=0)


class MeanAttentionDistance(PerHeadAccumulator):
    """Streaming mean attention distance (the same as ``mean_attention_distance`` on the concatenation)."""

    def __init__(self, patch_size, num_prefix_tokens=1, renormalize=True):
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        self.renormalize = renormalize
        self.reset()

    def _per_example_values(self, attention):
        return per_example_attention_distance(attention, self.patch_size, self.num_prefix_tokens, self.renormalize)


def per_example_attention_entropy(attention, num_prefix_tokens=1):
    """``[n, H]`` mean entropy (nats) of each head's attention rows over the patch keys for each example.

    ``attention``: ``[n, H, T, T]`` probabilities (NumPy or TF), queries on axis 2 and keys on axis 3; the first
    ``num_prefix_tokens`` rows and columns are dropped and every query row is renormalised over the patch keys
    (``0 log 0 = 0``). Unlike the distance it needs no square patch grid.
    """
    attention = token_layout.as_float64(attention, "attention")
    if attention.ndim != 4 or attention.shape[2] != attention.shape[3] or 0 in attention.shape[:2]:
        raise ValueError(f"attention: expected non-empty square attention maps [n, heads, T, T], got shape "
                         f"{attention.shape}")
    prefix = token_layout.check_num_prefix_tokens(num_prefix_tokens, attention.shape[2], "attention")
    token_layout.check_finite(attention, "attention")
    if np.any(attention < 0):
        raise ValueError(f"attention: negative weights (min {attention.min():.3g}); expected probabilities >= 0")
    patch_attention = attention[:, :, prefix:, prefix:]
    mass = patch_attention.sum(axis=-1)
    if np.any(mass <= 0):
        raise ValueError(f"attention: {int(np.sum(mass <= 0))} query row(s) put no weight on any patch key; their "
                         "entropy over the patches is undefined")
    # -sum_k (a_k / m) log(a_k / m) = log m - sum_k a_k log a_k / m for the weights a_k (m: their sum), 0 log 0 = 0
    logs = np.log(patch_attention, out=np.zeros_like(patch_attention), where=patch_attention > 0)
    entropy = np.log(mass) - np.einsum("nhqk,nhqk->nhq", patch_attention, logs) / mass
    return entropy.mean(axis=-1)


def attention_entropy(attention, num_prefix_tokens=1):
    """``[H]`` mean entropy (nats) of the attention rows over the patch keys, per head, averaged over the query
    patches and examples (see ``per_example_attention_entropy``)."""
    accumulator = AttentionEntropy(num_prefix_tokens)
    accumulator.update(attention)
    return accumulator.result()


class AttentionEntropy(PerHeadAccumulator):
    """Streaming attention entropy (equal to ``attention_entropy`` on the concatenation)."""

    def __init__(self, num_prefix_tokens=1):
        self.num_prefix_tokens = num_prefix_tokens
        self.reset()

    def _per_example_values(self, attention):
        return per_example_attention_entropy(attention, self.num_prefix_tokens)


def head_distance_spread(head_distances):
    """Spread ``max - min`` of the heads' mean distances: ``[H] -> float`` or ``[L, H] -> [L]`` (per block)."""
    head_distances = token_layout.as_float64(head_distances, "head_distances")
    if head_distances.ndim not in (1, 2) or head_distances.shape[-1] == 0:
        raise ValueError(f"head_distances: expected [H] or [L, H] with H >= 1, got shape {head_distances.shape}")
    token_layout.check_finite(head_distances, "head_distances")
    spread = head_distances.max(axis=-1) - head_distances.min(axis=-1)
    return float(spread) if spread.ndim == 0 else spread
