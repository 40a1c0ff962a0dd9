"""Mutual k-nearest neighbours: the NumPy reference against explicit neighbour sets built by loops, its
invariances, bounds and closed forms, and the compiled TensorFlow ops against the reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitcnn_tf import metrics
from vitcnn_tf.metrics import reference

seeds = st.integers(0, 2**32 - 1)


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def loop_mutual_knn(x, y, k):
    """Explicit loops: cosine similarities one pair at a time, each neighbour set grown by repeated maximum."""
    def neighbour_sets(features):
        features = features.reshape(len(features), -1)
        sets = []
        for i in range(len(features)):
            similarity = {j: features[i] @ features[j] / (np.linalg.norm(features[i]) * np.linalg.norm(features[j]))
                          for j in range(len(features)) if j != i}
            chosen = set()
            for _ in range(k):
                best = max((j for j in similarity if j not in chosen), key=lambda j: (similarity[j], -j))
                chosen.add(best)
            sets.append(chosen)
        return sets

    return np.mean([len(a & b) / k for a, b in zip(neighbour_sets(x), neighbour_sets(y))])


def data(seed, n, dx, dy):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 2))
    return (np.concatenate([shared, rng.standard_normal((n, dx))], axis=1),
            np.concatenate([shared @ rng.standard_normal((2, 2)), rng.standard_normal((n, dy))], axis=1))


@given(seeds, st.integers(3, 12), st.integers(1, 6), st.integers(1, 6), st.data())
def test_reference_equals_loops(seed, n, dx, dy, draw):
    x, y = data(seed, n, dx, dy)
    k = draw.draw(st.integers(1, n - 1))
    assert reference.mutual_knn(x, y, k) == pytest.approx(loop_mutual_knn(x, y, k), abs=1e-12)


@given(seeds, st.integers(3, 12), st.integers(1, 6), st.data())
def test_bounds_symmetry_identity_and_invariances(seed, n, d, draw):
    rng = np.random.default_rng(seed)
    x, y = data(seed, n, d, d + 1)
    k = draw.draw(st.integers(1, n - 1))
    value = reference.mutual_knn(x, y, k)
    assert 0.0 <= value <= 1.0 and value * n * k == pytest.approx(round(value * n * k))
    assert value == reference.mutual_knn(y, x, k)
    assert reference.mutual_knn(x, x, k) == 1.0
    rotated = 3.0 * x @ random_orthogonal(rng, x.shape[1])
    per_example = x * rng.uniform(0.1, 10.0, size=(n, 1))
    assert reference.mutual_knn(rotated, y, k) == value
    assert reference.mutual_knn(per_example, y, k) == value


def test_closed_forms():
    # Points on a circle at angles 0, 10, 20, ... degrees: each point's nearest is an adjacent one.
    angles = np.deg2rad([0.0, 10.0, 25.0, 45.0, 70.0, 100.0])
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    # the reversed order of the gaps: nearest neighbours of the mirrored layout
    reversed_angles = np.deg2rad([0.0, 30.0, 55.0, 75.0, 90.0, 100.0])
    mirrored = np.stack([np.cos(reversed_angles), np.sin(reversed_angles)], axis=1)
    # k=1 neighbours: circle 1,0,1,2,3,4 ; mirrored 1,2,3,4,5,4 -> shared for examples 0, 5: 2 / 6
    assert reference.mutual_knn(circle, mirrored, 1) == pytest.approx(2 / 6)
    # k = n - 1: every other example is a neighbour
    assert reference.mutual_knn(circle, mirrored, 5) == 1.0


def test_errors_and_zero_examples():
    x = np.random.default_rng(0).standard_normal((5, 3))
    for k in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"mutual_knn: k must be an integer in \[1, n - 1\] = \[1, 4\]"):
            reference.mutual_knn(x, x, k)
    with pytest.raises(ValueError, match="mutual_knn: x and y must hold the same examples"):
        reference.mutual_knn(x, x[:4], 2)
    zero = x.copy()
    zero[2] = 0
    with pytest.warns(RuntimeWarning, match=r"examples \[2\] of y are all zero"):
        assert np.isnan(reference.mutual_knn(x, zero, 2))


@given(seeds, st.integers(3, 14), st.integers(1, 8), st.sampled_from([np.float64, np.float32]), st.data())
def test_tf_equals_reference(seed, n, d, dtype, draw):
    x, y = data(seed, n, d, d + 2)
    k = draw.draw(st.integers(1, n - 1))
    x_in, y_in = x.astype(dtype), y.astype(dtype)
    expected = reference.mutual_knn(x_in.astype(np.float64), y_in.astype(np.float64), k)
    assert metrics.mutual_knn(x_in, y_in, k).numpy() == pytest.approx(expected, abs=1e-12)


def test_tf_matrix_equals_reference_pairs_and_nan_for_zero_examples():
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((10, d)) for d in (2, 5)] + [rng.standard_normal((10, 3, 2))]
    ys = [rng.standard_normal((10, 4)).astype(np.float32)]
    expected = np.array([[reference.mutual_knn(a, b.astype(np.float64), 3) for b in ys] for a in xs])
    np.testing.assert_allclose(metrics.mutual_knn_matrix(xs, ys, k=3).numpy(), expected, atol=1e-12)
    within = metrics.mutual_knn_matrix(xs, k=4).numpy()
    expected = np.array([[reference.mutual_knn(a, b, 4) for b in xs] for a in xs])
    np.testing.assert_allclose(within, expected, atol=1e-12)
    zero = xs[1].copy()
    zero[0] = 0
    with pytest.warns(RuntimeWarning, match=r"layers of x \[1\] have an all-zero example"):
        matrix = metrics.mutual_knn_matrix([xs[0], zero], k=2).numpy()
    assert np.isnan(matrix[1]).all() and matrix[0, 0] == 1.0
    with pytest.raises(ValueError, match=r"mutual_knn_matrix: k must be an integer in \[1, n - 1\]"):
        metrics.mutual_knn_matrix(xs, k=10)
    with pytest.raises(ValueError, match="mutual_knn_matrix: every layer of xs must hold the same examples"):
        metrics.mutual_knn_matrix([xs[0], xs[1][:5]], k=2)
