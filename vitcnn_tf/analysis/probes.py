"""Closed-form few-shot linear probes (Section 7 Figure 11, Section 8 Figure 13; the big_vision few-shot recipe).

Recipe (as big_vision's few-shot evaluator, reimplemented): features are flattened per example and whitened per
feature with the training mean and standard deviation (+1e-5); a constant bias column of 100 is appended (large,
so the ridge penalty on the bias is negligible); targets are ``2 * onehot - 1``; the ridge problem
``min_W ||X W - Y||^2 + l2_reg ||W||^2`` is solved in closed form, ``W = (X^T X + l2_reg I)^-1 X^T Y`` (``N >= D``)
or ``W = X^T (X X^T + l2_reg I)^-1 Y`` (``N < D``), whichever system is smaller, by a linear solve (big_vision's
eigendecomposition serves several penalties at once; for one, a solve is about 10 times faster and agrees to 1e-14);
prediction is the argmax over classes. Float64.
"""

import dataclasses

import numpy as np

from vitcnn_tf.analysis import tokens as token_layout

BIAS_CONSTANT = 100.0
WHITENING_EPSILON = 1e-5
DEFAULT_L2_REG = 2.0**10


def _check_features(features, name):
    """``[n, ...]`` features as a finite float64 ``[n, D]`` matrix."""
    features = token_layout.as_float64(features, name)
    if features.ndim < 2:
        raise ValueError(f"{name}: expected [n, ...] features with at least 2 axes, got shape {features.shape}")
    if features.shape[0] == 0:
        raise ValueError(f"{name}: empty set (0 examples)")
    features = features.reshape(features.shape[0], -1)
    if features.shape[1] == 0:
        raise ValueError(f"{name}: examples have 0 features, shape {features.shape}")
    token_layout.check_finite(features, name)
    return features


def _check_labels(labels, num_examples, num_classes, name):
    """``[n]`` integer labels in ``[0, num_classes)``."""
    labels = token_layout.as_array(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name}: expected [n] integer labels, got shape {labels.shape}")
    if len(labels) != num_examples:
        raise ValueError(f"{name}: {len(labels)} labels for {num_examples} feature rows; lengths must match")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise TypeError(f"{name}: expected integer class labels, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    outside = (labels < 0) | (labels >= num_classes)
    if np.any(outside):
        raise ValueError(
            f"{name}: {int(outside.sum())} label(s) outside [0, {num_classes}) (e.g. {labels[outside][0]})"
        )
    return labels.astype(np.int64)


def _whiten_and_augment(features, mean, std):
    """``[n, D]`` -> ``[n, D + 1]``: ``(features - mean) / std`` with the constant bias column appended."""
    whitened = (features - mean) / std
    return np.concatenate([whitened, np.full((len(whitened), 1), BIAS_CONSTANT)], axis=1)


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
    return int(num_classes)


@dataclasses.dataclass(frozen=True)
class RidgeProbe:
    """A fitted probe: ``mean``/``std`` ``[D]`` whitening statistics, ``weights`` ``[D + 1, C]`` (last row: the
    weights of the bias column)."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    def design_matrix(self, features):
        """``[n, ...]`` features -> ``[n, D + 1]`` whitened features with the bias column appended."""
        return _whiten_and_augment(self._checked(features), self.mean, self.std)

    def scores(self, features):
        """``[n, C]`` regression outputs (one per class): ``design_matrix(features) @ weights``, computed as
        ``features @ (weights / std) + offset`` without the whitened copy of the features."""
        scaled = self.weights[:-1] / self.std[:, None]
        return self._checked(features) @ scaled + (BIAS_CONSTANT * self.weights[-1] - self.mean @ scaled)

    def _checked(self, features):
        """``[n, ...]`` features as a checked float64 ``[n, D]`` matrix of the fitted width."""
        features = _check_features(features, "features")
        if features.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"features: {features.shape[1]} features per example, the probe was fitted on {self.mean.shape[0]}"
            )
        return features

    def predict(self, features):
        """``[n]`` predicted classes (argmax of the scores)."""
        return np.argmax(self.scores(features), axis=1)

    def accuracy(self, features, labels):
        """Fraction of ``labels`` predicted correctly."""
        labels = _check_labels(labels, len(features), self.weights.shape[1], "labels")
        return float(np.mean(self.predict(features) == labels))


def fit_ridge_probe(train_x, train_y, num_classes, l2_reg=DEFAULT_L2_REG):
    """Fit the closed-form ridge probe on ``train_x [N, ...]``, ``train_y [N]`` (see the module docstring)."""
    num_classes = _check_num_classes(num_classes)
    if not np.isscalar(l2_reg) or not l2_reg > 0 or not np.isfinite(l2_reg):
        raise ValueError(f"l2_reg: expected a finite number > 0, got {l2_reg!r}")
    features = _check_features(train_x, "train_x")
    labels = _check_labels(train_y, len(features), num_classes, "train_y")

    mean = features.mean(axis=0)
    std = features.std(axis=0) + WHITENING_EPSILON
    design = _whiten_and_augment(features, mean, std)
    targets = 2.0 * np.eye(num_classes)[labels] - 1.0

    num_points, dim = design.shape
    if num_points >= dim:
        weights = np.linalg.solve(design.T @ design + l2_reg * np.eye(dim), design.T @ targets)
    else:
        weights = design.T @ np.linalg.solve(design @ design.T + l2_reg * np.eye(num_points), targets)
    return RidgeProbe(mean=mean, std=std, weights=weights)


def fewshot_linear_probe(train_x, train_y, test_x, test_y, num_classes, l2_reg=DEFAULT_L2_REG):
    """Test accuracy of the closed-form ridge probe fitted on ``(train_x [N, ...], train_y [N])`` and evaluated on
    ``(test_x [M, ...], test_y [M])``; labels are ints in ``[0, num_classes)``."""
    probe = fit_ridge_probe(train_x, train_y, num_classes, l2_reg)
    test_features = _check_features(test_x, "test_x")
    _check_labels(test_y, len(test_features), num_classes, "test_y")
    return probe.accuracy(test_features, test_y)


def fewshot_sample(labels, shots, seed, num_classes=None):
    """``[num_classes * shots]`` indices into ``labels``: ``shots`` examples of each class ``0..num_classes-1``
    (default ``max(labels) + 1``), drawn without replacement by a NumPy generator seeded with ``seed`` (one
    permutation of each class's indices, its first ``shots`` kept; grouped by class). A class with fewer than
    ``shots`` examples is an error."""
    labels = token_layout.as_array(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels: expected a non-empty [n] array, got shape {labels.shape}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    labels = _check_labels(labels, len(labels), _check_num_classes(num_classes), "labels")
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots: expected an int >= 1, got {shots!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise ValueError(f"labels: class {label} has {len(members)} example(s), fewer than shots={shots}")
        chosen.append(rng.permutation(members)[:shots])
    return np.concatenate(chosen)


def fewshot_probe_sweep(
    train_x, train_y, test_x, test_y, num_classes, shots=(1, 5, 10, 25), seeds=(0, 1, 2), l2_reg=DEFAULT_L2_REG
):
    """Few-shot probes for every shot count and seed: ``shots`` examples per class are drawn from the training pool
    ``(train_x, train_y)`` with ``fewshot_sample`` and the probe is evaluated on the whole test set.

    Returns ``{shots: {"mean": float, "per_seed": [float, ...] (in the order of seeds), "seeds": [...]}}``.
    """
    train_features = _check_features(train_x, "train_x")
    test_features = _check_features(test_x, "test_x")
    num_classes = _check_num_classes(num_classes)
    train_labels = _check_labels(train_y, len(train_features), num_classes, "train_y")
    test_labels = _check_labels(test_y, len(test_features), num_classes, "test_y")
    seeds = list(seeds)
    if not seeds or not list(shots):
        raise ValueError(f"shots and seeds must be non-empty, got shots={shots!r}, seeds={seeds!r}")
    results = {}
    for shot_count in shots:
        accuracies = []
        for seed in seeds:
            chosen = fewshot_sample(train_labels, shot_count, seed, num_classes)
            accuracies.append(
                fewshot_linear_probe(
                    train_features[chosen], train_labels[chosen], test_features, test_labels, num_classes, l2_reg
                )
            )
        results[int(shot_count)] = {"mean": float(np.mean(accuracies)), "per_seed": accuracies, "seeds": seeds}
    return results
