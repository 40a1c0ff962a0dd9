"""CKA and HSIC in NumPy float64: the ground truth the TensorFlow ops are tested against.

Shapes: ``n`` examples, ``d`` features, ``L`` layers. A representation ``x`` is ``[n, ...]`` and is flattened per
example to ``[n, d]``; a Gram matrix ``k`` is ``[n, n]``.

* Biased HSIC (Gretton et al. 2005): ``trace(K H L H) / (n - 1)**2`` with ``H = I - 11^T / n``.
* Unbiased HSIC_1 (Song et al. 2012), ``n >= 4``: with ``K~``, ``L~`` the Gram matrices with zeroed diagonals,
  ``[tr(K~ L~) + 1^T K~ 1 * 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) * 1^T K~ L~ 1] / (n (n-3))``.
  It equals ``<U(K), U(L)> / (n (n-3))`` with ``U`` the "unbiased centring" of ``center_gram(k, unbiased=True)``,
  which is how it is computed here (the explicit sum formula is used in the tests as an independent check).
* CKA (Kornblith et al. 2019): ``HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))``.
* Minibatch CKA (Nguyen, Raghu & Kornblith 2020): unbiased HSIC summed over minibatches before the ratio.

Degenerate representations. A representation that is constant over the examples (a dead ReLU layer) has a centred
Gram matrix that is zero up to rounding, and its CKA is 0/0. Such a representation is detected as
``HSIC(K, K) <= (100 * eps)**2 * ||K||_F**2`` (both sides normalised alike; ``eps`` is the machine epsilon of the
dtype the Gram matrix was computed in, ``K`` the Gram matrix as given, or of the column-centred features for
``linear_cka`` / ``minibatch_cka``), which also covers a non-positive self-HSIC. Its CKA is NaN and a
``RuntimeWarning`` names it; no square root of a non-positive number is ever taken. (Computed as
``<U(K), U(K)>``, the unbiased self-HSIC is a sum of squares and never negative, unlike a direct evaluation of the
sum formula, whose rounding can make it slightly negative for near-constant data.)
"""

import warnings

import numpy as np

DEGENERACY_EPS_FACTOR = 100.0


def degeneracy_rtol(dtype):
    """Relative threshold ``(100 * eps(dtype))**2`` on ``HSIC(K, K) / ||K||_F**2`` below which ``K`` is degenerate.

    ``dtype`` is the dtype the Gram matrix was computed in (promoted to at least float32).
    """
    dtype = np.promote_types(np.dtype(dtype), np.float32)
    return float((DEGENERACY_EPS_FACTOR * np.finfo(dtype).eps) ** 2)


def gram_linear(x):
    """Linear kernel ``x x^T``: ``x`` ``[n, ...]`` (flattened to ``[n, d]``) -> ``[n, n]``."""
    x = _features(x, "x", "gram_linear")
    return x @ x.T


MEDIANS = ("all", "off_diagonal")


def gram_rbf(x, threshold=1.0, median="all"):
    """RBF kernel ``exp(-D / (2 * threshold**2 * median(D)))``: ``x`` ``[n, ...]`` -> ``[n, n]``.

    ``D`` holds the squared Euclidean distances between examples. ``median="all"`` takes the median over all
    ``n * n`` entries of ``D``, its zero diagonal included: the convention of Kornblith et al.'s canonical
    implementation. ``median="off_diagonal"`` leaves the diagonal out.
    """
    if median not in MEDIANS:
        raise ValueError(f"gram_rbf: median must be one of {MEDIANS}, got {median!r}")
    x = _features(x, "x", "gram_rbf")
    if x.shape[0] < 2:
        raise ValueError(f"gram_rbf: x needs at least 2 examples for a median distance, got shape {x.shape}")
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"gram_rbf: threshold must be a positive number, got {threshold!r}")
    distances = _squared_distances(x)
    entries = distances if median == "all" else distances[~np.eye(x.shape[0], dtype=bool)]
    median = np.median(entries)
    if median <= 0:
        raise ValueError("gram_rbf: the median squared distance between examples of x is 0 (most examples are "
                         "identical); expected distinct examples")
    return np.exp(-distances / (2.0 * threshold**2 * median))


def center_gram(k, unbiased=False):
    """Centre a Gram matrix ``k`` ``[n, n]`` -> ``[n, n]``.

    Biased: ``H K H``. Unbiased (``n >= 3``, Szekely & Rizzo's U-centring as used by Kornblith et al.): with ``K~``
    the matrix with zeroed diagonal and ``m_i = sum_j K~_ij / (n-2) - sum_ij K~_ij / (2 (n-1)(n-2))``,
    ``U_ij = K~_ij - m_i - m_j`` off the diagonal and ``U_ii = 0``.
    """
    k = _gram(k, "k", "center_gram")
    return _center(k, unbiased)


def hsic(k, l, unbiased=False):  # noqa: E741 (the paper's name for the second Gram matrix)
    """HSIC of Gram matrices ``k``, ``l`` ``[n, n]`` -> float.

    Biased: ``trace(K H L H) / (n - 1)**2``. Unbiased: HSIC_1 of Song et al. (2012), needs ``n >= 4``.
    """
    k, l = _gram_pair(k, l, unbiased, "hsic")
    return _hsic_centred(_center(k, unbiased), _center(l, unbiased), unbiased)


def cka(k, l, unbiased=False):  # noqa: E741
    """CKA of Gram matrices ``k``, ``l`` ``[n, n]`` -> float: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    NaN (with a ``RuntimeWarning``) when ``k`` or ``l`` is degenerate (see the module docstring).
    """
    dtypes = (np.asarray(k).dtype, np.asarray(l).dtype)
    k, l = _gram_pair(k, l, unbiased, "cka")
    return _cka_of_grams(k, l, unbiased, dtypes, "cka")


def linear_cka(x, y, unbiased=False):
    """Linear CKA of representations ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` -> float, through Gram matrices.

    The features are centred over the examples first; this leaves the centred Gram matrices (biased and unbiased)
    unchanged and avoids cancellation when features have large means.
    """
    x, y = _feature_pair(x, y, unbiased, "linear_cka")
    k, l = gram_linear(_center_features(x)), gram_linear(_center_features(y))
    return _cka_of_grams(k, l, unbiased, (np.float64, np.float64), "linear_cka")


def linear_cka_features(x, y, unbiased=False):
    """Linear CKA of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` in feature space (cheaper when ``d < n``) -> float.

    With centred features ``X``, ``Y``: biased ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``; unbiased uses
    ``n (n-3) HSIC_1 = ||Y^T X||_F^2 - n/(n-2) a^T b + |a| |b| / ((n-1)(n-2))``, ``a_i = ||X_i||^2``,
    ``|a| = sum_i a_i`` (Song et al.'s formula with ``1^T K = 0``).
    """
    x, y = _feature_pair(x, y, unbiased, "linear_cka_features")
    x, y = _center_features(x), _center_features(y)
    n = x.shape[0]

    def scaled_hsic(a, b):
        cross = np.sum((a.T @ b) ** 2)
        if not unbiased:
            return cross
        norms_a, norms_b = np.sum(a * a, axis=1), np.sum(b * b, axis=1)
        return cross - n / (n - 2) * norms_a @ norms_b + norms_a.sum() * norms_b.sum() / ((n - 1) * (n - 2))

    self_x, self_y = scaled_hsic(x, x), scaled_hsic(y, y)
    # The degeneracy scale ||K_c||_F^2 of the centred Gram matrix K_c = X X^T equals ||X^T X||_F^2.
    degenerate = [s <= degeneracy_rtol(np.float64) * np.sum((a.T @ a) ** 2) for s, a in ((self_x, x), (self_y, y))]
    return _ratio(scaled_hsic(x, y), self_x, self_y, degenerate, "linear_cka_features", stacklevel=3)


def minibatch_cka(batches_x, batches_y=None):
    """Minibatch CKA (Nguyen et al. 2020) -> ``[Lx, Ly]``.

    ``batches_x`` is a sequence over minibatches of sequences over ``Lx`` layers of ``[n_b, ...]`` arrays (the same
    ``n_b`` for every layer of a minibatch, ``n_b >= 4``); ``batches_y`` likewise with ``Ly`` layers and the same
    ``n_b`` per minibatch, or None to compare the layers of ``batches_x`` with each other.
    ``CKA_ij = sum_b HSIC_1(K_bi, L_bj) / sqrt(sum_b HSIC_1(K_bi, K_bi) * sum_b HSIC_1(L_bj, L_bj))``.
    Rows / columns of degenerate layers are NaN (with a ``RuntimeWarning`` naming them).
    """
    batches_x = _check_batches(batches_x, "batches_x")
    if batches_y is not None:
        batches_y = _check_batches(batches_y, "batches_y")
        if len(batches_y) != len(batches_x):
            raise ValueError(f"minibatch_cka: batches_y has {len(batches_y)} minibatches, expected "
                             f"{len(batches_x)} (as batches_x)")
    num_x = len(batches_x[0])
    num_y = num_x if batches_y is None else len(batches_y[0])
    cross = np.zeros((num_x, num_y))
    self_x, self_y = np.zeros(num_x), np.zeros(num_y)
    scale_x, scale_y = np.zeros(num_x), np.zeros(num_y)
    for b, layers_x in enumerate(batches_x):
        grams_x = [_centred_feature_gram(x) for x in layers_x]
        grams_y = grams_x if batches_y is None else [_centred_feature_gram(y) for y in batches_y[b]]
        if grams_y[0].shape[0] != grams_x[0].shape[0]:
            raise ValueError(f"minibatch_cka: minibatch {b} has {grams_y[0].shape[0]} examples in batches_y, "
                             f"expected {grams_x[0].shape[0]} (as in batches_x)")
        u_x = [_center(k, unbiased=True) for k in grams_x]
        u_y = u_x if batches_y is None else [_center(k, unbiased=True) for k in grams_y]
        for i in range(num_x):
            for j in range(num_y):
                cross[i, j] += _hsic_centred(u_x[i], u_y[j], unbiased=True)
        n = grams_x[0].shape[0]
        self_x += [_hsic_centred(u, u, unbiased=True) for u in u_x]
        self_y += [_hsic_centred(u, u, unbiased=True) for u in u_y]
        scale_x += [np.sum(k * k) / (n * (n - 3)) for k in grams_x]
        scale_y += [np.sum(k * k) / (n * (n - 3)) for k in grams_y]
    value, degenerate_x, degenerate_y = cka_from_hsic(cross, self_x, self_y, scale_x, scale_y)
    _warn_degenerate("minibatch_cka", degenerate_x, degenerate_y, batches_y is None)
    return value


def cka_from_hsic(cross, self_x, self_y, scale_x, scale_y):
    """CKA of every pair from HSIC terms -> ``(cka [Lx, Ly], degenerate_x [Lx], degenerate_y [Ly])``.

    ``cross[i, j] = HSIC(K_i, L_j)``, ``self_x[i] = HSIC(K_i, K_i)``, ``self_y[j] = HSIC(L_j, L_j)``, and
    ``scale_x`` / ``scale_y`` the squared Frobenius norms of the Gram matrices of the centred features, on the
    same normalisation. A representation is degenerate (constant over the examples) when its self-HSIC is at most
    ``degeneracy_rtol(float64)`` times its scale; its row / column is NaN. ``cka = cross / sqrt(self_x self_y)``.
    """
    cross, self_x, self_y, scale_x, scale_y = (np.asarray(a, np.float64)
                                               for a in (cross, self_x, self_y, scale_x, scale_y))
    rtol = degeneracy_rtol(np.float64)
    degenerate_x, degenerate_y = self_x <= rtol * scale_x, self_y <= rtol * scale_y
    with np.errstate(invalid="ignore"):
        denominator = np.sqrt(np.where(degenerate_x, np.nan, self_x)[:, None]
                              * np.where(degenerate_y, np.nan, self_y)[None, :])
    return cross / denominator, degenerate_x, degenerate_y


def _features(x, name, caller):
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{caller}: {name} must be an array [n, ...] of examples, got a scalar")
    if x.size == 0:
        raise ValueError(f"{caller}: {name} must be non-empty [n, ...], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{caller}: {name} must hold real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64).reshape(x.shape[0], -1)
    _check_finite(x, name, caller)
    return x


def _feature_pair(x, y, unbiased, caller):
    x, y = _features(x, "x", caller), _features(y, "y", caller)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{caller}: x and y must hold the same examples, got n={x.shape[0]} in x and "
                         f"n={y.shape[0]} in y")
    _check_enough_examples(x.shape[0], unbiased, "x", caller)
    return x, y


def _gram(k, name, caller):
    k = np.asarray(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.size == 0:
        raise ValueError(f"{caller}: {name} must be a square Gram matrix [n, n], got shape {k.shape}")
    k = k.astype(np.float64)
    _check_finite(k, name, caller)
    if np.max(np.abs(k - k.T)) > 1e-6 * np.max(np.abs(k)):
        raise ValueError(f"{caller}: {name} must be a symmetric Gram matrix, got an asymmetric one")
    return k


def _gram_pair(k, l, unbiased, caller):  # noqa: E741
    k, l = _gram(k, "k", caller), _gram(l, "l", caller)
    if k.shape != l.shape:
        raise ValueError(f"{caller}: k and l must be Gram matrices of the same examples, got shapes {k.shape} "
                         f"and {l.shape}")
    _check_enough_examples(k.shape[0], unbiased, "k", caller)
    return k, l


def _check_enough_examples(n, unbiased, name, caller):
    if unbiased and n < 4:
        raise ValueError(f"{caller}: the unbiased HSIC estimator needs n >= 4 examples, got n={n} in {name}")


def _check_finite(array, name, caller):
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{caller}: {name} must be finite, found NaN or Inf")


def _check_batches(batches, name):
    if isinstance(batches, np.ndarray) or not hasattr(batches, "__len__") or len(batches) == 0:
        raise ValueError(f"minibatch_cka: {name} must be a non-empty sequence over minibatches of sequences over "
                         f"layers of [n, ...] arrays")
    checked = []
    for b, layers in enumerate(batches):
        if isinstance(layers, np.ndarray) or not hasattr(layers, "__len__") or len(layers) == 0:
            raise ValueError(f"minibatch_cka: {name}[{b}] must be a non-empty sequence over layers of [n, ...] arrays")
        if len(layers) != len(batches[0]):
            raise ValueError(f"minibatch_cka: {name}[{b}] has {len(layers)} layers, expected {len(batches[0])} "
                             f"(as {name}[0])")
        layers = [_features(x, f"{name}[{b}][{i}]", "minibatch_cka") for i, x in enumerate(layers)]
        for i, x in enumerate(layers):
            if x.shape[0] != layers[0].shape[0]:
                raise ValueError(f"minibatch_cka: {name}[{b}][{i}] has {x.shape[0]} examples, expected "
                                 f"{layers[0].shape[0]} (as {name}[{b}][0])")
        _check_enough_examples(layers[0].shape[0], True, f"{name}[{b}]", "minibatch_cka")
        checked.append(layers)
    return checked


def _squared_distances(x):
    squared_norms = np.sum(x * x, axis=1)
    distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (x @ x.T)
    distances = np.maximum(distances, 0.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def _center_features(x):
    return x - x.mean(axis=0, keepdims=True)


def _centred_feature_gram(x):
    return gram_linear(_center_features(x))


def _center(k, unbiased):
    n = k.shape[0]
    if not unbiased:
        row_means = k.mean(axis=0)
        return k - row_means[:, None] - row_means[None, :] + row_means.mean()
    if n < 3:
        raise ValueError(f"center_gram: unbiased centring needs n >= 3 examples, got n={n}")
    k = k.copy()
    np.fill_diagonal(k, 0.0)
    means = k.sum(axis=0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None] + means[None, :]
    np.fill_diagonal(k, 0.0)
    return k


def _hsic_centred(k_centred, l_centred, unbiased):
    n = k_centred.shape[0]
    normaliser = n * (n - 3) if unbiased else (n - 1) ** 2
    return float(np.sum(k_centred * l_centred) / normaliser)


def _cka_of_grams(k, l, unbiased, dtypes, caller):  # noqa: E741
    k_centred, l_centred = _center(k, unbiased), _center(l, unbiased)
    self_k, self_l = _hsic_centred(k_centred, k_centred, unbiased), _hsic_centred(l_centred, l_centred, unbiased)
    normaliser = k.shape[0] * (k.shape[0] - 3) if unbiased else (k.shape[0] - 1) ** 2
    degenerate = [s <= degeneracy_rtol(dtype) * np.sum(g * g) / normaliser
                  for s, g, dtype in ((self_k, k, dtypes[0]), (self_l, l, dtypes[1]))]
    return _ratio(_hsic_centred(k_centred, l_centred, unbiased), self_k, self_l, degenerate, caller, stacklevel=4)


def _ratio(cross, self_x, self_y, degenerate, caller, stacklevel):
    if any(degenerate):
        names = " and ".join(name for name, flag in zip(("first", "second"), degenerate) if flag)
        warnings.warn(f"{caller}: the {names} representation is constant over the examples (zero centred Gram "
                      f"matrix); CKA is undefined, returning NaN", RuntimeWarning, stacklevel=stacklevel)
        return float("nan")
    return float(cross / np.sqrt(self_x * self_y))


def _warn_degenerate(caller, degenerate_x, degenerate_y, within):
    parts = []
    if np.any(degenerate_x):
        parts.append(f"layers {np.flatnonzero(degenerate_x).tolist()} of {'the model' if within else 'x'}")
    if not within and np.any(degenerate_y):
        parts.append(f"layers {np.flatnonzero(degenerate_y).tolist()} of y")
    if parts:
        warnings.warn(f"{caller}: {' and '.join(parts)} are constant over the examples (zero centred Gram "
                      f"matrix, e.g. a dead ReLU layer); their rows/columns of the CKA matrix are NaN",
                      RuntimeWarning, stacklevel=3)
