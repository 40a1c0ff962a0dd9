"""Token localization (Section 7, Figures 9 and 10): linear CKA between token representations and input patches.

For each token ``t`` (its ``[n, d]`` representation over ``n`` images) and each non-overlapping input patch ``p``
(its ``[n, patch_size * patch_size * C]`` pixels), ``CKA[t, p]`` is the linear CKA over the examples (biased
HSIC, as ``vitcnn_tf.metrics.reference.linear_cka``, whose degeneracy rule ``reference.cka_from_hsic`` applies to
every pair). A well-localized token is most similar to its own patch.

A ResNet "token" is all the channels at one spatial position of a stage output ``[n, h, w, c]``; pass the map
as it is (positions are taken row-major) and use ``region_mask`` to map each position to the input patches its
cell of the image covers.
"""

import warnings

import numpy as np

from vitcnn_tf.analysis import tokens as token_layout
from vitcnn_tf.metrics import reference

# Upper bound on the bytes of the float64 intermediate blocks held at once (cross-covariances or Gram matrices).
DEFAULT_MAX_BYTES = 2**28
METHODS = ("auto", "features", "gram")


def image_patches(images, patch_size):
    """``[n, H, W, C]`` -> ``[n, P, patch_size * patch_size * C]`` non-overlapping patches, row-major on the
    ``(H / patch_size) x (W / patch_size)`` grid, each flattened in (row, column, channel) order. Float64."""
    images = token_layout.as_float64(images, "images")
    if images.ndim != 4:
        raise ValueError(f"images: expected [n, H, W, C], got shape {images.shape}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ValueError(f"patch_size: expected a positive int, got {patch_size!r}")
    n, height, width, channels = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"images: height and width {height}x{width} are not multiples of patch_size={patch_size}")
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = images.reshape(n, grid_h, patch_size, grid_w, patch_size, channels).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(n, grid_h * grid_w, patch_size * patch_size * channels)


def _self_norms(centered):
    """``[n, k, f]`` centred -> ``[k]`` Frobenius norms ``||X_k^T X_k||_F`` (= ``||X_k X_k^T||_F``)."""
    per_item = np.ascontiguousarray(centered.transpose(1, 2, 0))  # [k, f, n]
    return np.linalg.norm(np.matmul(per_item, per_item.transpose(0, 2, 1)), axis=(1, 2))


def _cka_features(tokens, patches, max_bytes):
    """Feature-space linear CKA ``||Y_p^T X_t||_F^2 / (||X_t^T X_t||_F ||Y_p^T Y_p||_F)`` for all pairs: one
    ``[k * d, P * q]`` cross-covariance GEMM per chunk of ``k`` tokens."""
    n, num_tokens, dim = tokens.shape
    _, num_patches, patch_dim = patches.shape
    flat_patches = patches.reshape(n, num_patches * patch_dim)
    per_chunk = max(1, int(max_bytes // (8 * dim * num_patches * patch_dim)))
    cross = np.empty((num_tokens, num_patches))
    for start in range(0, num_tokens, per_chunk):
        chunk = tokens[:, start : start + per_chunk]
        block = chunk.reshape(n, -1).T @ flat_patches  # [k * d, P * q]
        cross[start : start + per_chunk] = np.square(block).reshape(-1, dim, num_patches, patch_dim).sum(axis=(1, 3))
    return cross, _self_norms(tokens), _self_norms(patches)


def _grams(centered):
    """``[n, k, f]`` centred -> ``[k, n * n]`` linear Gram matrices."""
    per_item = np.ascontiguousarray(centered.transpose(1, 0, 2))  # [k, n, f]
    return np.matmul(per_item, per_item.transpose(0, 2, 1)).reshape(len(per_item), -1)


def _cka_grams(tokens, patches, max_bytes):
    """Gram-space linear CKA ``<K_t, L_p> / (||K_t|| ||L_p||)`` for all pairs, in chunks of Gram matrices (the
    patch Grams are kept if they fit, else recomputed for every chunk of tokens)."""
    n, num_tokens, _ = tokens.shape
    num_patches = patches.shape[1]
    per_chunk = max(1, int(max_bytes // (2 * 8 * n * n)))
    cached_patch_grams = _grams(patches) if num_patches <= per_chunk else None
    cross = np.empty((num_tokens, num_patches))
    token_norms, patch_norms = np.empty(num_tokens), np.empty(num_patches)
    for token_start in range(0, num_tokens, per_chunk):
        token_grams = _grams(tokens[:, token_start : token_start + per_chunk])
        token_norms[token_start : token_start + per_chunk] = np.linalg.norm(token_grams, axis=1)
        for patch_start in range(0, num_patches, per_chunk):
            if cached_patch_grams is None:
                patch_grams = _grams(patches[:, patch_start : patch_start + per_chunk])
            else:
                patch_grams = cached_patch_grams[patch_start : patch_start + per_chunk]
            patch_norms[patch_start : patch_start + per_chunk] = np.linalg.norm(patch_grams, axis=1)
            cross[token_start : token_start + per_chunk, patch_start : patch_start + per_chunk] = (
                token_grams @ patch_grams.T
            )
    return cross, token_norms, patch_norms


def _cheaper_method(n, num_tokens, dim, num_patches, patch_dim, max_bytes):
    """``"features"`` or ``"gram"``, whichever needs fewer multiply-adds."""
    feature_cost = n * (num_tokens * dim * num_patches * patch_dim + num_tokens * dim**2 + num_patches * patch_dim**2)
    per_chunk = max(1, int(max_bytes // (2 * 8 * n * n)))
    patch_recomputations = 1 if num_patches <= per_chunk else -(-num_tokens // per_chunk)
    gram_cost = n * n * (num_tokens * dim + patch_recomputations * num_patches * patch_dim + num_tokens * num_patches)
    return "features" if feature_cost <= gram_cost else "gram"


def token_patch_cka(tokens, images, patch_size, num_prefix_tokens=0, method="auto", max_bytes=DEFAULT_MAX_BYTES):
    """``[T - num_prefix_tokens, P]`` linear CKA between every token and every input patch.

    ``tokens``: ``[n, T, d]`` (or a conv map ``[n, h, w, c]``, taken as ``h * w`` tokens row-major); the first
    ``num_prefix_tokens`` tokens (CLS) are dropped, so row ``i`` is the ``i``-th spatial token. ``images``:
    ``[n, H, W, C]``, split into ``P`` patches as ``image_patches``. Float64, features centred over the examples.

    ``method``: ``"features"`` (cross-covariances, cost ``~ n T d P q``), ``"gram"`` (``n x n`` Gram matrices,
    cost ``~ n^2 (T d + P q + T P)``) or ``"auto"`` (the cheaper); intermediate blocks stay within ``max_bytes``.
    A token or patch that is constant over the examples has no defined CKA: its entries are NaN and a
    ``RuntimeWarning`` names it (as ``vitcnn_tf.metrics.reference``).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    patches = image_patches(images, patch_size)
    tokens = _spatial_tokens(tokens, num_prefix_tokens, len(patches))
    n = tokens.shape[0]
    token_layout.check_finite(patches, "images")

    tokens = tokens - tokens.mean(axis=0, keepdims=True)
    patches = patches - patches.mean(axis=0, keepdims=True)
    if method == "auto":
        method = _cheaper_method(n, tokens.shape[1], tokens.shape[2], patches.shape[1], patches.shape[2], max_bytes)
    compute = _cka_features if method == "features" else _cka_grams
    cross, token_norms, patch_norms = compute(tokens, patches, max_bytes)
    # Biased HSIC up to the common factor 1 / (n - 1)^2: HSIC(K_t, K_t) = ||K_t||_F^2, which is also the scale of
    # the degeneracy rule since K_t is the Gram matrix of centred features.
    token_self, patch_self = np.square(token_norms), np.square(patch_norms)
    cka, constant_tokens, constant_patches = reference.cka_from_hsic(cross, token_self, patch_self, token_self,
                                                                     patch_self)
    if constant_tokens.any() or constant_patches.any():
        warnings.warn(
            f"token_patch_cka: tokens {np.flatnonzero(constant_tokens).tolist()} and patches "
            f"{np.flatnonzero(constant_patches).tolist()} are constant over the examples; their CKA is undefined "
            "(NaN)",
            RuntimeWarning,
            stacklevel=2,
        )
    return cka


def _spatial_tokens(tokens, num_prefix_tokens, num_images):
    """``[n, T, d]`` tokens (or a map ``[n, h, w, c]``) -> the finite float64 ``[n, T - prefix, d]`` spatial tokens
    of ``num_images`` paired examples (at least 2)."""
    tokens = token_layout.as_float64(tokens, "tokens")
    if tokens.ndim == 4:
        tokens = tokens.reshape(tokens.shape[0], tokens.shape[1] * tokens.shape[2], tokens.shape[3])
    if tokens.ndim != 3:
        raise ValueError(f"tokens: expected [n, T, d] or a map [n, h, w, c], got shape {tokens.shape}")
    prefix = token_layout.check_num_prefix_tokens(num_prefix_tokens, tokens.shape[1], "tokens")
    tokens = tokens[:, prefix:]
    n = tokens.shape[0]
    if num_images != n:
        raise ValueError(f"tokens ({n} examples) and images ({num_images} examples) must be paired")
    if n < 2:
        raise ValueError(f"tokens: CKA over examples needs at least 2 examples, got {n}")
    token_layout.check_finite(tokens, "tokens")
    return tokens


class ResampledTokenPatchCKA:
    """``token_patch_cka`` of several token sets paired with the same images, on resamples of their examples (a
    bootstrap): ``resampled(indices)`` is ``[token_patch_cka(tokens[indices], images[indices], ...) for each set]``
    for ``indices`` ``[m]`` (repeats allowed), equal to rounding.

    When the Gram matrices of every token and patch over the ``n`` examples fit in ``max_bytes``, they are computed
    once, and a resample's map follows from them: the Gram matrix of the features of examples ``indices``, centred
    over those examples, is ``H K[indices][:, indices] H`` (``K`` the Gram matrix of the features centred over all
    ``n``, ``H`` the centring matrix of size ``m``), computed on the distinct examples drawn with their counts as
    weights. Otherwise every resample recomputes the maps from the features.

    Args: ``token_sets``: ``[n, T_s, d_s]`` arrays (or maps ``[n, h, w, c]``); ``images`` ``[n, H, W, C]``;
    ``num_prefix_tokens``: one count per set; ``patch_size``, ``max_bytes``: as ``token_patch_cka``.
    """

    def __init__(self, token_sets, images, patch_size, num_prefix_tokens, max_bytes=DEFAULT_MAX_BYTES):
        if len(token_sets) != len(num_prefix_tokens):
            raise ValueError(f"num_prefix_tokens: expected one count per token set ({len(token_sets)}), got "
                             f"{len(num_prefix_tokens)}")
        self._token_sets, self._images, self._patch_size = token_sets, images, patch_size
        self._prefixes, self._max_bytes = list(num_prefix_tokens), max_bytes
        patches = image_patches(images, patch_size)
        token_layout.check_finite(patches, "images")
        spatial = [_spatial_tokens(tokens, prefix, len(patches))
                   for tokens, prefix in zip(token_sets, num_prefix_tokens)]
        n = len(patches)
        gram_bytes = 8 * n * n * (patches.shape[1] + sum(tokens.shape[1] for tokens in spatial))
        self._grams = None
        if gram_bytes <= max_bytes:
            self._grams = [_grams(features - features.mean(axis=0, keepdims=True)).reshape(-1, n, n)
                           for features in [patches] + spatial]

    def __call__(self, indices):
        """``[[T_s - prefix, P] CKA map of each set]`` on the examples ``indices``."""
        indices = np.asarray(indices)
        if self._grams is None:
            return [token_patch_cka(tokens[indices], self._images[indices], self._patch_size, num_prefix_tokens=prefix,
                                    max_bytes=self._max_bytes)
                    for tokens, prefix in zip(self._token_sets, self._prefixes)]
        patch_grams, *token_grams = [_resampled_centred_grams(grams, indices) for grams in self._grams]
        patch_self = np.square(np.linalg.norm(patch_grams, axis=1))
        maps = []
        for grams in token_grams:
            token_self = np.square(np.linalg.norm(grams, axis=1))
            maps.append(reference.cka_from_hsic(grams @ patch_grams.T, token_self, patch_self, token_self,
                                                patch_self)[0])
        return maps


def _resampled_centred_grams(grams, indices):
    """``[k, n, n]`` Gram matrices -> ``[k, u * u]``: those of the examples ``indices`` ``[m]`` centred over them,
    in the space of the ``u`` distinct examples drawn: entry ``(a, b)`` is the centred entry times
    ``sqrt(c_a c_b)``, ``c`` the number of draws of each, so that inner products and norms equal those of the
    ``[m, m]`` matrices."""
    drawn, counts = np.unique(indices, return_counts=True)
    share = counts / counts.sum()
    centred = grams.take(drawn, axis=1).take(drawn, axis=2)  # [k, u, u], a copy (two takes: faster than one)
    means = centred @ share  # [k, u]: the weighted mean of each row (= of each column)
    centred -= means[:, :, None]
    centred -= (means - (means @ share)[:, None])[:, None, :]
    root = np.sqrt(counts.astype(np.float64))
    centred *= root[:, None] * root[None, :]
    return centred.reshape(len(grams), -1)


def region_mask(token_grid, patch_grid):
    """``[h * w, gh * gw]`` boolean mask: token ``(i, j)`` of an ``h x w`` feature map owns every input patch of the
    ``gh x gw`` patch grid that overlaps its cell ``[i / h, (i + 1) / h) x [j / w, (j + 1) / w)`` of the image.

    With equal grids this is the identity; a coarser map (ResNet stage output) owns blocks of patches, a finer one
    shares patches between positions. The cell is the position's stride-aligned share of the image, not its
    (larger) receptive field.
    """
    (h, w), (gh, gw) = tuple(token_grid), tuple(patch_grid)
    if min(h, w, gh, gw) < 1:
        raise ValueError(f"token_grid {token_grid} and patch_grid {patch_grid} must be positive sizes")

    def overlaps(num_cells, num_patches):
        cell, patch = np.arange(num_cells)[:, None], np.arange(num_patches)[None, :]
        # Intervals [cell / num_cells, (cell + 1) / num_cells) and [patch / num_patches, ...) intersect.
        return (patch * num_cells < (cell + 1) * num_patches) & (cell * num_patches < (patch + 1) * num_cells)

    rows, cols = overlaps(h, gh), overlaps(w, gw)
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(h * w, gh * gw)


def localization_scores(cka_map, own_patches=None):
    """Localization summary of a ``[T, P]`` token-vs-patch CKA map.

    ``own_patches``: ``[T, P]`` boolean mask of each token's own patch(es) (``region_mask``); default the identity,
    which needs ``T == P``. Returns a dict with

    * ``top1_fraction``: fraction of tokens whose most similar patch is one of their own (ties counted fractionally);
    * ``mean_own_rank``: mean over tokens of the rank (1 = most similar) of their best own patch, tied patches
      sharing the mean of their ranks;
    * ``chance_top1_fraction`` / ``chance_mean_own_rank``: the same for a map with no spatial information
      (``k / P`` and ``(P + 1) / (k + 1)`` for ``k`` own patches, averaged over tokens);
    * ``num_tokens`` (scored), ``num_constant_tokens`` (all-NaN rows of constant tokens, left out), ``num_patches``.

    NaN entries other than whole rows (constant patches) are an error.
    """
    cka_map = token_layout.as_float64(cka_map, "cka_map")
    if cka_map.ndim != 2 or 0 in cka_map.shape:
        raise ValueError(f"cka_map: expected a non-empty [T, P] map, got shape {cka_map.shape}")
    num_tokens, num_patches = cka_map.shape
    if own_patches is None:
        if num_tokens != num_patches:
            raise ValueError(
                f"cka_map: {num_tokens} tokens but {num_patches} patches; pass own_patches (e.g. region_mask) to "
                "map tokens to patches"
            )
        own_patches = np.eye(num_tokens, dtype=bool)
    own_patches = np.asarray(own_patches, dtype=bool)
    if own_patches.shape != cka_map.shape or not own_patches.any(axis=1).all():
        raise ValueError(
            f"own_patches: expected a [T, P] = {cka_map.shape} mask with at least one patch per token, got shape "
            f"{own_patches.shape}"
        )
    constant_tokens = np.isnan(cka_map).all(axis=1)
    cka_map, own_patches = cka_map[~constant_tokens], own_patches[~constant_tokens]
    if not len(cka_map):
        raise ValueError("cka_map: every token row is NaN (constant tokens); nothing to score")
    token_layout.check_finite(cka_map, "cka_map (rows of non-constant tokens)")

    own_best = np.where(own_patches, cka_map, -np.inf).max(axis=1, keepdims=True)
    higher = (cka_map > own_best).sum(axis=1)
    tied = (cka_map == own_best).sum(axis=1)  # includes the best own patch itself
    own_rank = higher + (tied + 1) / 2.0
    at_max = cka_map == cka_map.max(axis=1, keepdims=True)
    top1 = (at_max & own_patches).sum(axis=1) / at_max.sum(axis=1)
    own_counts = own_patches.sum(axis=1)
    return {
        "top1_fraction": float(top1.mean()),
        "mean_own_rank": float(own_rank.mean()),
        "chance_top1_fraction": float(np.mean(own_counts / num_patches)),
        "chance_mean_own_rank": float(np.mean((num_patches + 1) / (own_counts + 1))),
        "num_tokens": int(len(cka_map)),
        "num_constant_tokens": int(constant_tokens.sum()),
        "num_patches": int(num_patches),
    }
