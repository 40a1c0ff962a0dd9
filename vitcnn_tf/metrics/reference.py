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
    shape_x = tuple(np.shape(x))
    x, y = _features(x, "x", caller), _features(y, "y", caller)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{caller}: x and y must hold the same examples, got n={x.shape[0]} in x and "
                         f"n={y.shape[0]} in y")
    if x.shape[0] < 2:  # CKA of one example is 0 / 0
        raise ValueError(f"{caller}: x needs at least 2 examples, got shape {shape_x}")
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
    if k.shape[0] < 2:
        raise ValueError(f"{caller}: k must be a Gram matrix of at least 2 examples, got shape {k.shape}")
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
    if not np.all(np.isfinite([cross, self_x, self_y])):
        raise ValueError(f"{caller}: the HSIC terms overflow float64 (the features or Gram entries are too large in "
                         f"magnitude); rescale the inputs, CKA is scale-invariant")
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


# ---------------------------------------------------------------------------------------------------------------
# Beyond CKA: orthogonal Procrustes, mutual nearest neighbours, a permutation null


def procrustes_similarity(x, y):
    """Orthogonal Procrustes similarity of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` -> float in [0, 1].

    Both are centred over the examples and scaled to unit Frobenius norm; the value is the nuclear norm
    ``||X^T Y||_*`` (the sum of its singular values), i.e. ``max_Q <X Q, Y>`` over orthogonal ``Q``, so that
    ``1 - value`` is half the squared Procrustes distance ``min_Q ||X Q - Y||_F^2``. It is 1 iff ``y`` is an
    orthogonal transform of ``x`` up to scale. When ``d > n`` for either side it is computed through the Gram
    matrices: ``||X^T Y||_* = ||F_x^T F_y||_*`` for any factors ``F F^T = X X^T`` (from an eigendecomposition).
    A representation constant over the examples (``||X_c||_F <= 100 eps ||X||_F``) gives NaN with a warning.
    """
    x, y = _feature_pair(x, y, False, "procrustes_similarity")
    if x.shape[0] < 2:
        raise ValueError(f"procrustes_similarity: x needs at least 2 examples, got shape {x.shape}")
    factors = []
    for name, features in (("first", x), ("second", y)):
        centred = _center_features(features)
        norm = np.linalg.norm(centred)
        if norm**2 <= degeneracy_rtol(np.float64) * np.sum(features**2):
            warnings.warn(f"procrustes_similarity: the {name} representation is constant over the examples; the "
                          "Procrustes similarity is undefined, returning NaN", RuntimeWarning, stacklevel=2)
            return float("nan")
        factors.append(_gram_factor(centred / norm))
    return float(np.sum(np.linalg.svd(factors[0].T @ factors[1], compute_uv=False)))


def _gram_factor(x):
    """``x`` ``[n, d]`` itself when ``d <= n``, else ``F`` ``[n, n]`` with ``F F^T = x x^T`` (eigendecomposition;
    eigenvalues below ``n eps max`` count as zero)."""
    if x.shape[1] <= x.shape[0]:
        return x
    eigenvalues, eigenvectors = np.linalg.eigh(x @ x.T)
    # Eigenvalues within rounding of zero (centring leaves at least one) would add sqrt(rounding) each.
    floor = x.shape[0] * np.finfo(np.float64).eps * eigenvalues[-1]
    return eigenvectors * np.sqrt(np.where(eigenvalues > floor, eigenvalues, 0.0))


def mutual_knn(x, y, k=10):
    """Mutual k-nearest-neighbour alignment of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` -> float in [0, 1].

    Each example's features are L2-normalised; ``N_x(i)`` are the ``k`` examples with the largest cosine
    similarity to example ``i`` in ``x``, ``i`` itself excluded (ties go to the lower index). The value is the
    mean over examples of ``|N_x(i) ∩ N_y(i)| / k`` (Huh et al. 2024). Needs ``1 <= k <= n - 1``. An example whose
    features are all zero has no cosine similarity: the value is NaN with a warning.
    """
    x, y = _feature_pair(x, y, False, "mutual_knn")
    _check_num_neighbours(k, x.shape[0], "mutual_knn")
    sets = []
    for name, features in (("x", x), ("y", y)):
        norms = np.linalg.norm(features, axis=1)
        if np.any(norms == 0):
            warnings.warn(f"mutual_knn: examples {np.flatnonzero(norms == 0).tolist()} of {name} are all zero; "
                          "their cosine similarity is undefined, returning NaN", RuntimeWarning, stacklevel=2)
            return float("nan")
        sets.append(_nearest_neighbours(features / norms[:, None], k))
    overlaps = [len(set(a) & set(b)) for a, b in zip(*sets)]
    return float(np.mean(overlaps) / k)


def _check_num_neighbours(k, n, caller):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise ValueError(f"{caller}: k must be an integer in [1, n - 1] = [1, {n - 1}] for n={n} examples, got {k!r}")


def _nearest_neighbours(unit_rows, k):
    """``[n, k]`` indices of each row's ``k`` most cosine-similar other rows (ties: lower index first)."""
    similarity = unit_rows @ unit_rows.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def permutations(num_examples, num_permutations=100, seed=0):
    """``[num_permutations, num_examples]`` random permutations of the examples (``numpy.random.default_rng(seed)``,
    one ``permutation`` call each): the shuffled pairings of ``permutation_null``."""
    for name, value, low in (("num_examples", num_examples, 2), ("num_permutations", num_permutations, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"permutation_null: {name} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(num_examples) for _ in range(num_permutations)])


def null_summary(value, null):
    """``{"value", "null_mean", "null_std", "null_q95", "p_value", "num_permutations"}`` of an observed ``value``
    and its ``[P]`` null values: ``null_q95`` their 95th percentile (linear interpolation),
    ``p_value = (1 + #{null >= value}) / (1 + P)``."""
    null = np.asarray(null, dtype=np.float64)
    if null.ndim != 1 or null.size == 0:
        raise ValueError(f"null_summary: null must be a non-empty 1-D array of null values, got shape {null.shape}")
    if not np.isfinite(value) or not np.all(np.isfinite(null)):
        raise ValueError("null_summary: the measure returned a non-finite value (NaN or Inf); a constant "
                         "representation has no defined similarity")
    return {"value": float(value), "null_mean": float(null.mean()), "null_std": float(null.std()),
            "null_q95": float(np.quantile(null, 0.95)), "p_value": float((1 + np.sum(null >= value)) / (1 + len(null))),
            "num_permutations": int(len(null))}


def permutation_null(measure, x, y, num_permutations=100, seed=0):
    """Permutation null of a similarity ``measure(x, y) -> float`` between ``x`` ``[n, ...]`` and ``y`` ``[n, ...]``.

    The null values are ``measure(x, y[pi])`` for ``num_permutations`` random permutations ``pi`` of the examples
    (``permutations``), which break the pairing of the examples. Returns ``null_summary``'s dict: ``value`` (the
    observed ``measure(x, y)``), ``null_mean``, ``null_std``, ``null_q95`` and ``p_value`` with the +1 correction,
    plus ``null`` (the ``[P]`` null values).
    """
    if not callable(measure):
        raise ValueError(f"permutation_null: measure must be a callable measure(x, y) -> float, got "
                         f"{type(measure).__name__}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"permutation_null: x and y must be arrays [n, ...] of the same n examples, got shapes "
                         f"{x.shape} and {y.shape}")
    orders = permutations(x.shape[0], num_permutations, seed)
    null = np.array([float(measure(x, y[order])) for order in orders])
    return {**null_summary(float(measure(x, y)), null), "null": null}
