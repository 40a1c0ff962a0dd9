"""The compiled TensorFlow CKA / HSIC functions against the NumPy reference, their invariances and bad-input errors."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from helpers import random_pair
from vitcnn_tf.metrics import cka, ops, reference

seeds = st.integers(0, 2**32 - 1)
# The promised agreement with the reference: float64 input within 1e-6 of the reference, float32 within 1e-4.
TOLERANCE = {np.float64: 1e-6, np.float32: 1e-4}


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def as_dtype(array, dtype):
    """The array rounded to ``dtype`` and the float64 copy of those rounded values (what the reference sees)."""
    rounded = array.astype(dtype)
    return rounded, rounded.astype(np.float64)


@given(seeds, st.integers(4, 10), st.sampled_from([np.float64, np.float32]), st.booleans())
def test_tf_functions_equal_reference(seed, n, dtype, unbiased):
    x, y = random_pair(seed, n, 4, 6)
    (x_in, x64), (y_in, y64) = as_dtype(x, dtype), as_dtype(y, dtype)
    tol = TOLERANCE[dtype]
    k64, l64 = reference.gram_linear(x64), reference.gram_linear(y64)
    k_tf = cka.gram_linear(x_in)
    assert k_tf.dtype == tf.float64
    np.testing.assert_allclose(k_tf.numpy(), k64, rtol=tol, atol=tol * np.abs(k64).max())
    np.testing.assert_allclose(cka.gram_rbf(x_in, threshold=0.8).numpy(), reference.gram_rbf(x64, threshold=0.8),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(cka.center_gram(k64, unbiased).numpy(), reference.center_gram(k64, unbiased),
                               atol=1e-9 * np.abs(k64).max())
    np.testing.assert_allclose(cka.hsic(k64, l64, unbiased).numpy(), reference.hsic(k64, l64, unbiased), rtol=1e-9,
                               atol=1e-9 * np.abs(k64).max() * np.abs(l64).max())
    expected = reference.linear_cka(x64, y64, unbiased)
    np.testing.assert_allclose(cka.cka(k_tf, cka.gram_linear(y_in), unbiased).numpy(), expected, atol=tol)
    np.testing.assert_allclose(cka.linear_cka(x_in, y_in, unbiased).numpy(), expected, atol=tol)
    np.testing.assert_allclose(ops.linear_cka_features(x_in, y_in, unbiased).numpy(), expected, atol=tol)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_tf_functions_accept_all_float_dtypes(dtype):
    x, y = random_pair(0, 12, 5, 3)
    x_in, y_in = tf.cast(x, dtype), tf.cast(y, dtype)
    x64, y64 = tf.cast(x_in, tf.float64).numpy(), tf.cast(y_in, tf.float64).numpy()  # the values TF actually sees
    for unbiased in (False, True):
        expected = reference.linear_cka(x64, y64, unbiased)
        assert cka.linear_cka(x_in, y_in, unbiased).dtype == tf.float64
        np.testing.assert_allclose(cka.linear_cka(x_in, y_in, unbiased).numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(cka.cka(cka.gram_linear(x_in), cka.gram_rbf(y_in), unbiased).numpy(),
                                   reference.cka(reference.gram_linear(x64), reference.gram_rbf(y64), unbiased),
                                   atol=1e-4)


def test_tf_functions_work_inside_tf_function_with_unknown_shapes():
    x, y = random_pair(1, 9, 4, 6)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float64)] * 2)
    def both(a, b):
        return cka.linear_cka(a, b, unbiased=True), cka.hsic(cka.gram_linear(a), cka.gram_rbf(b), unbiased=True)

    value, hsic = both(x, y)
    np.testing.assert_allclose(value.numpy(), reference.linear_cka(x, y, unbiased=True), atol=1e-9)
    np.testing.assert_allclose(hsic.numpy(), reference.hsic(reference.gram_linear(x), reference.gram_rbf(y),
                                                            unbiased=True), rtol=1e-9)
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs n >= 4 examples in x"):
        both(x[:3], y[:3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="x and y must hold the same examples"):
        both(x, y[:5])


@given(seeds, st.integers(5, 10), st.booleans(), st.floats(1e-2, 1e2))
def test_tf_cka_invariances(seed, n, unbiased, scale):
    x, y = random_pair(seed, n, 4, 6)
    rng = np.random.default_rng(seed)
    value = cka.linear_cka(x, y, unbiased).numpy()
    for x2, y2 in ((x @ random_orthogonal(rng, 4), y), (x, y @ random_orthogonal(rng, 6)),
                   (scale * x, y), (x, scale * y)):
        np.testing.assert_allclose(cka.linear_cka(x2, y2, unbiased).numpy(), value, atol=1e-9)
    order = rng.permutation(n)
    np.testing.assert_allclose(cka.linear_cka(x[order], y[order], unbiased).numpy(), value, atol=1e-9)
    np.testing.assert_allclose(cka.linear_cka(y, x, unbiased).numpy(), value, atol=1e-12)
    np.testing.assert_allclose(cka.linear_cka(x, x, unbiased).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(ops.linear_cka_features(x, y, unbiased).numpy(), value, atol=1e-9)
    if not unbiased:
        assert -1e-12 <= value <= 1 + 1e-12


@given(seeds, st.integers(16, 32), st.booleans())
def test_tf_cka_changes_under_generic_invertible_linear_map(seed, n, unbiased):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    y = x[:, :1] + 0.1 * rng.standard_normal((n, 1))
    invertible = np.diag([30.0, 1.0, 1.0, 1.0]) @ random_orthogonal(rng, 4)
    assert abs(cka.linear_cka(x @ invertible, y, unbiased).numpy() - cka.linear_cka(x, y, unbiased).numpy()) > 0.02


def test_constant_representation_gives_nan_and_warning():
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    constant = np.full((8, 5), 0.3, np.float32)
    with pytest.warns(RuntimeWarning, match="second representation is constant"):
        assert np.isnan(cka.linear_cka(x, constant, unbiased=True).numpy())
    with pytest.warns(RuntimeWarning, match="first representation is constant"):
        assert np.isnan(cka.cka(cka.gram_linear(constant), cka.gram_linear(x)).numpy())
    with pytest.warns(RuntimeWarning, match="first representation is constant"):
        assert np.isnan(ops.linear_cka_features(constant, x).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(cka.linear_cka(x, x + 1.0).numpy())


def test_unbiased_hsic_with_fewer_than_four_examples_raises():
    k = np.eye(3)
    with pytest.raises(ValueError, match=r"hsic: the unbiased HSIC estimator needs n >= 4 examples in k, got n=3"):
        cka.hsic(k, k, unbiased=True)
    with pytest.raises(ValueError, match=r"linear_cka: the unbiased HSIC estimator needs n >= 4 examples in x"):
        cka.linear_cka(np.ones((3, 2)), np.ones((3, 2)), unbiased=True)


def test_example_count_mismatch_raises():
    with pytest.raises(ValueError, match=r"linear_cka: x and y must hold the same examples \(equal n\), got n=6 and "
                                         r"n=5"):
        cka.linear_cka(np.ones((6, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"cka: k and l must be Gram matrices of the same examples"):
        cka.cka(np.eye(6), np.eye(5))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_representation_raises(bad):
    x = np.random.default_rng(0).standard_normal((6, 3))
    x[4, 0] = bad
    with pytest.raises(ValueError, match=r"linear_cka: y must be finite, found NaN or Inf"):
        cka.linear_cka(np.ones((6, 2)), x)
    with pytest.raises(ValueError, match=r"hsic: k must be finite"):
        cka.hsic(np.outer(x[:, 0], x[:, 0]), np.eye(6))

    @tf.function
    def in_graph(a):
        return cka.linear_cka(a, a)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"linear_cka: x must be finite, found NaN or Inf"):
        in_graph(x)


def test_empty_scalar_wrong_dtype_and_non_square_input_raise():
    with pytest.raises(ValueError, match=r"gram_linear: x must be a tensor \[n, \.\.\.\] of examples, got a scalar"):
        cka.gram_linear(tf.constant(2.0))
    with pytest.raises(ValueError, match=r"gram_linear: x must be non-empty \[n, \.\.\.\], got shape \(0, 3\)"):
        cka.gram_linear(tf.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"x must be float16, bfloat16, float32 or float64, got int32"):
        cka.gram_linear(tf.ones((4, 3), tf.int32))
    with pytest.raises(ValueError, match=r"center_gram: k must be a square Gram matrix \[n, n\], got shape \(4, 5\)"):
        cka.center_gram(tf.ones((4, 5)))
    with pytest.raises(ValueError, match=r"cka: k must be a symmetric Gram matrix"):
        cka.cka(np.triu(np.ones((5, 5))), np.eye(5))
    with pytest.raises(ValueError, match=r"gram_rbf: the median squared distance"):
        cka.gram_rbf(np.ones((5, 2)))
