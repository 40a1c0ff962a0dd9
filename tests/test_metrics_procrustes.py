"""Orthogonal Procrustes similarity: the NumPy reference against brute-force formulas and closed forms, its
invariances and bounds, and the compiled TensorFlow ops against the reference."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from helpers import random_pair
from vitcnn_tf import metrics
from vitcnn_tf.metrics import reference

seeds = st.integers(0, 2**32 - 1)
TOLERANCE = {np.float64: 1e-6, np.float32: 1e-4}


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def brute_force_procrustes(x, y):
    """Feature space, no Gram matrices: centre, scale, nuclear norm of X^T Y as the sum of its singular values."""
    x, y = (a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=0) for a in (x, y))
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    return np.linalg.norm(x.T @ y, ord="nuc")


def optimal_rotation_value(x, y):
    """max_Q <X Q, Y> by the closed-form orthogonal Procrustes solution Q = U V^T of X^T Y = U S V^T (d_x = d_y)."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    u, _, vt = np.linalg.svd(x.T @ y)
    return float(np.sum((x @ (u @ vt)) * y))


@given(seeds, st.integers(2, 12), st.integers(1, 30), st.integers(1, 30))
def test_reference_equals_feature_space_nuclear_norm_in_both_routes(seed, n, dx, dy):
    # d > n takes the Gram route (eigendecomposition of X X^T), d <= n the feature route.
    x, y = random_pair(seed, n, dx, dy, shared=1)
    assert reference.procrustes_similarity(x, y) == pytest.approx(brute_force_procrustes(x, y), abs=1e-9)


@given(seeds, st.integers(3, 12), st.integers(1, 8))
def test_reference_equals_the_optimal_rotation_and_half_the_procrustes_distance(seed, n, d):
    x, y = random_pair(seed, n, d, d, shared=1)
    value = reference.procrustes_similarity(x, y)
    assert value == pytest.approx(optimal_rotation_value(x, y), abs=1e-9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    u, _, vt = np.linalg.svd(xc.T @ yc)
    assert np.sum((xc @ (u @ vt) - yc) ** 2) == pytest.approx(2 * (1 - value), abs=1e-9)


@given(seeds, st.integers(3, 12), st.integers(1, 20), st.integers(1, 20))
def test_bounds_symmetry_and_identity(seed, n, dx, dy):
    x, y = random_pair(seed, n, dx, dy)
    value = reference.procrustes_similarity(x, y)
    assert -1e-12 <= value <= 1 + 1e-12
    assert value == pytest.approx(reference.procrustes_similarity(y, x), abs=1e-12)
    assert reference.procrustes_similarity(x, x) == pytest.approx(1.0, abs=1e-12)


@given(seeds, st.integers(3, 12), st.integers(1, 20), st.floats(0.01, 100.0))
def test_invariant_to_orthogonal_transforms_isotropic_scaling_and_translation(seed, n, d, scale):
    rng = np.random.default_rng(seed)
    x, y = random_pair(seed, n, d, d + 2)
    value = reference.procrustes_similarity(x, y)
    transformed = scale * x @ random_orthogonal(rng, d) + rng.standard_normal(d)
    assert reference.procrustes_similarity(transformed, y) == pytest.approx(value, abs=1e-9)
    # y an orthogonal transform of x up to scale (and a wider embedding): exactly 1
    embedded = np.concatenate([x, np.zeros((n, 3))], axis=1) @ random_orthogonal(rng, d + 3) * scale
    assert reference.procrustes_similarity(x, embedded) == pytest.approx(1.0, abs=1e-9)


def test_closed_forms():
    # One feature each: |correlation| of the two columns.
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(20), rng.standard_normal(20)
    assert reference.procrustes_similarity(a[:, None], b[:, None]) == pytest.approx(abs(np.corrcoef(a, b)[0, 1]))
    # Orthogonal centred columns in x; y keeps the first column only: ||X^T Y||_* = s1 / sqrt(s1^2 + s2^2).
    x = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * [3.0, 4.0]
    assert reference.procrustes_similarity(x, x[:, :1]) == pytest.approx(3.0 / 5.0)
    # Orthogonal columns with norms s and t: the cosine of the norm vectors, (3*12 + 4*12) / (5 * 12 sqrt(2)); not
    # invariant to anisotropic scaling (unlike CCA).
    assert reference.procrustes_similarity(x, x * [4.0, 3.0]) == pytest.approx(84.0 / (60.0 * np.sqrt(2.0)))


def test_reference_errors_and_degenerate_input():
    with pytest.raises(ValueError, match="procrustes_similarity: x and y must hold the same examples"):
        reference.procrustes_similarity(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="procrustes_similarity: x needs at least 2 examples"):
        reference.procrustes_similarity(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="procrustes_similarity: y must be finite"):
        reference.procrustes_similarity(np.ones((4, 2)), np.full((4, 2), np.nan))
    with pytest.warns(RuntimeWarning, match="first representation is constant"):
        assert np.isnan(reference.procrustes_similarity(np.ones((5, 3)), np.arange(10.0).reshape(5, 2)))


@given(seeds, st.integers(3, 12), st.integers(1, 30), st.integers(1, 30), st.sampled_from([np.float64, np.float32]))
def test_tf_equals_reference(seed, n, dx, dy, dtype):
    x, y = random_pair(seed, n, dx, dy)
    x_in, y_in = x.astype(dtype), y.astype(dtype)
    expected = reference.procrustes_similarity(x_in.astype(np.float64), y_in.astype(np.float64))
    value = metrics.procrustes_similarity(x_in, y_in)
    assert value.dtype == tf.float64
    np.testing.assert_allclose(value.numpy(), expected, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tf_matrix_equals_reference_pairs(dtype):
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((9, d)).astype(dtype) for d in (2, 5, 30)]
    ys = [rng.standard_normal((9, 4, 3)).astype(dtype), xs[1] @ random_orthogonal(rng, 5).astype(dtype)]
    expected = np.array([[reference.procrustes_similarity(a.astype(np.float64), b.astype(np.float64)) for b in ys]
                         for a in xs])
    np.testing.assert_allclose(metrics.procrustes_matrix(xs, ys).numpy(), expected, atol=TOLERANCE[dtype])
    within = metrics.procrustes_matrix(xs).numpy()
    np.testing.assert_allclose(within, within.T)
    np.testing.assert_allclose(np.diag(within), 1.0, atol=TOLERANCE[dtype])
    np.testing.assert_allclose(within[0, 2], reference.procrustes_similarity(xs[0].astype(np.float64),
                                                                             xs[2].astype(np.float64)),
                               atol=TOLERANCE[dtype])


def test_tf_constant_layers_are_nan_and_bad_input_is_named():
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((6, 3)), np.ones((6, 4))]
    with pytest.warns(RuntimeWarning, match=r"layers of x \[1\] are constant"):
        matrix = metrics.procrustes_matrix(xs).numpy()
    assert np.isnan(matrix[1]).all() and np.isnan(matrix[:, 1]).all() and matrix[0, 0] == pytest.approx(1.0)
    with pytest.warns(RuntimeWarning, match="constant over the examples"):
        assert np.isnan(metrics.procrustes_similarity(xs[1], xs[0]).numpy())
    with pytest.raises(ValueError, match="procrustes_matrix: xs\\[1\\] has 5 examples, expected 6"):
        metrics.procrustes_matrix([xs[0], xs[0][:5]])
    with pytest.raises(ValueError, match="procrustes_similarity: x and y must hold the same examples"):
        metrics.procrustes_similarity(xs[0], xs[0][:5])
    with pytest.raises(ValueError, match="float16, bfloat16, float32 or float64"):
        metrics.procrustes_similarity(np.ones((4, 2), np.int32), xs[0][:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.procrustes_similarity(xs[0], xs[0])
