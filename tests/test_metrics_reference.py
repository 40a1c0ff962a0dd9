"""The NumPy float64 reference against independent formulas, its invariances, and its bad-input errors."""

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import random_pair
from vitcnn_tf.metrics import reference

seeds = st.integers(0, 2**32 - 1)


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def song_unbiased_hsic(k, l):  # noqa: E741
    """Song et al. (2012) Eq. 5 with explicit zero-diagonal matrices K~, L~."""
    n = k.shape[0]
    k_tilde, l_tilde = k * (1 - np.eye(n)), l * (1 - np.eye(n))
    ones = np.ones(n)
    return (np.trace(k_tilde @ l_tilde) + (ones @ k_tilde @ ones) * (ones @ l_tilde @ ones) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * ones @ k_tilde @ l_tilde @ ones) / (n * (n - 3))


def u_statistic_hsic(k, l):  # noqa: E741
    """HSIC_1 as the U-statistic over ordered 4-tuples of distinct examples: K_ij L_ij + K_ij L_qr - 2 K_ij L_iq."""
    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2.0 * k[i, j] * l[i, q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


def explicit_biased_hsic(k, l):  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


# ---------------------------------------------------------------------------------------------------------------
# Against independent formulas


@given(seeds, st.integers(4, 12))
def test_unbiased_hsic_equals_song_formula_with_zero_diagonal_matrices(seed, n):
    x, y = random_pair(seed, n, 5, 3)
    k, l = reference.gram_linear(x), reference.gram_linear(y)  # noqa: E741
    np.testing.assert_allclose(reference.hsic(k, l, unbiased=True), song_unbiased_hsic(k, l), rtol=1e-9, atol=1e-9)


@given(seeds, st.integers(4, 6))
def test_unbiased_hsic_equals_u_statistic_over_four_tuples(seed, n):
    x, y = random_pair(seed, n, 3, 4)
    k, l = reference.gram_rbf(x), reference.gram_linear(y)  # noqa: E741
    np.testing.assert_allclose(reference.hsic(k, l, unbiased=True), u_statistic_hsic(k, l), rtol=1e-9, atol=1e-12)


@given(seeds, st.integers(2, 12))
def test_biased_hsic_and_centring_equal_explicit_centering_matrix(seed, n):
    x, y = random_pair(seed, n, 4, 6)
    k, l = reference.gram_linear(x), reference.gram_linear(y)  # noqa: E741
    h = np.eye(n) - np.ones((n, n)) / n
    np.testing.assert_allclose(reference.center_gram(k), h @ k @ h, atol=1e-10)
    np.testing.assert_allclose(reference.hsic(k, l), explicit_biased_hsic(k, l), rtol=1e-10)


def test_gram_linear_and_gram_rbf_equal_pairwise_loops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 2, 3))
    flat = x.reshape(7, -1)
    linear = np.array([[flat[i] @ flat[j] for j in range(7)] for i in range(7)])
    distances = np.array([[np.sum((flat[i] - flat[j]) ** 2) for j in range(7)] for i in range(7)])
    median = np.median([distances[i, j] for i in range(7) for j in range(7)])  # all 49 entries, zeros included
    np.testing.assert_allclose(reference.gram_linear(x), linear, rtol=1e-12)
    np.testing.assert_allclose(reference.gram_rbf(x, threshold=0.7), np.exp(-distances / (2 * 0.49 * median)),
                               rtol=1e-10, atol=1e-14)


@given(seeds, st.integers(1, 3), st.integers(4, 8))
def test_minibatch_cka_equals_explicit_sums_of_song_hsic(seed, num_batches, n):
    rng = np.random.default_rng(seed)
    widths_x, widths_y = [3, 5], [2, 4, 6]
    batches_x = [[rng.standard_normal((n, d)) for d in widths_x] for _ in range(num_batches)]
    batches_y = [[b[0][:, :1] @ rng.standard_normal((1, d)) + rng.standard_normal((n, d)) for d in widths_y]
                 for b in batches_x]
    cross = np.zeros((2, 3))
    self_x, self_y = np.zeros(2), np.zeros(3)
    for layers_x, layers_y in zip(batches_x, batches_y):
        grams_x = [reference.gram_linear(x) for x in layers_x]
        grams_y = [reference.gram_linear(y) for y in layers_y]
        cross += [[song_unbiased_hsic(k, l) for l in grams_y] for k in grams_x]  # noqa: E741
        self_x += [song_unbiased_hsic(k, k) for k in grams_x]
        self_y += [song_unbiased_hsic(l, l) for l in grams_y]  # noqa: E741
    expected = cross / np.sqrt(self_x[:, None] * self_y[None, :])
    np.testing.assert_allclose(reference.minibatch_cka(batches_x, batches_y), expected, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# Invariances and ranges (both estimators)


@given(seeds, st.integers(5, 12), st.booleans())
def test_cka_invariant_to_orthogonal_transform_of_either_argument(seed, n, unbiased):
    x, y = random_pair(seed, n, 4, 6)
    rng = np.random.default_rng(seed)
    value = reference.linear_cka(x, y, unbiased)
    np.testing.assert_allclose(reference.linear_cka(x @ random_orthogonal(rng, 4), y, unbiased), value, atol=1e-9)
    np.testing.assert_allclose(reference.linear_cka(x, y @ random_orthogonal(rng, 6), unbiased), value, atol=1e-9)


@given(seeds, st.integers(5, 12), st.booleans(), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_cka_invariant_to_isotropic_scaling_of_either_argument(seed, n, unbiased, scale_x, scale_y):
    x, y = random_pair(seed, n, 4, 6)
    value = reference.linear_cka(x, y, unbiased)
    np.testing.assert_allclose(reference.linear_cka(scale_x * x, y, unbiased), value, atol=1e-9)
    np.testing.assert_allclose(reference.linear_cka(x, scale_y * y, unbiased), value, atol=1e-9)


@given(seeds, st.integers(16, 32), st.booleans())
def test_cka_changes_under_generic_invertible_linear_map(seed, n, unbiased):
    """Sanity check that the invariance tests can fail: y follows x's first feature, which the map amplifies."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    y = x[:, :1] + 0.1 * rng.standard_normal((n, 1))
    invertible = np.diag([30.0, 1.0, 1.0, 1.0]) @ random_orthogonal(rng, 4)
    before = reference.linear_cka(x, y, unbiased)
    after = reference.linear_cka(x @ invertible, y, unbiased)
    assert abs(after - before) > 0.02, (before, after)


@given(seeds, st.integers(4, 12), st.booleans())
def test_cka_symmetric_and_cka_of_x_with_itself_is_one(seed, n, unbiased):
    x, y = random_pair(seed, n, 3, 5)
    k, l = reference.gram_linear(x), reference.gram_rbf(y)  # noqa: E741
    np.testing.assert_allclose(reference.cka(k, l, unbiased), reference.cka(l, k, unbiased), rtol=1e-12)
    np.testing.assert_allclose(reference.cka(k, k, unbiased), 1.0, rtol=1e-12)
    np.testing.assert_allclose(reference.linear_cka(x, x, unbiased), 1.0, rtol=1e-12)


@given(seeds, st.integers(2, 12))
def test_biased_cka_lies_in_zero_one(seed, n):
    x, y = random_pair(seed, n, 3, 5)
    for k, l in ((reference.gram_linear(x), reference.gram_linear(y)),  # noqa: E741
                 (reference.gram_rbf(x), reference.gram_linear(y))):
        assert -1e-12 <= reference.cka(k, l) <= 1.0 + 1e-12


@given(seeds, st.integers(4, 12), st.booleans())
def test_cka_invariant_to_permuting_examples(seed, n, unbiased):
    x, y = random_pair(seed, n, 3, 5)
    order = np.random.default_rng(seed).permutation(n)
    np.testing.assert_allclose(reference.linear_cka(x[order], y[order], unbiased),
                               reference.linear_cka(x, y, unbiased), atol=1e-10)
    batches = [[x, y], [y, x]]
    permuted = [[x[order], y[order]], [y, x]]
    np.testing.assert_allclose(reference.minibatch_cka(permuted), reference.minibatch_cka(batches), atol=1e-10)


@given(seeds, st.integers(4, 12), st.booleans())
def test_feature_space_and_gram_space_linear_cka_agree(seed, n, unbiased):
    x, y = random_pair(seed, n, 3, 7)
    gram_space = reference.cka(reference.gram_linear(x), reference.gram_linear(y), unbiased)
    np.testing.assert_allclose(reference.linear_cka(x, y, unbiased), gram_space, rtol=1e-9)
    np.testing.assert_allclose(reference.linear_cka_features(x, y, unbiased), gram_space, rtol=1e-9)


@given(seeds, st.integers(4, 8))
def test_unbiased_self_hsic_is_never_negative(seed, n):
    """U-centred self-HSIC is a sum of squares, so the denominator of CKA never needs sqrt of a negative number."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1)) * rng.uniform(1e-6, 1.0, (1, 1))
    k = reference.gram_linear(x)
    assert reference.hsic(k, k, unbiased=True) >= 0.0
    np.testing.assert_allclose(reference.hsic(k, k, unbiased=True), song_unbiased_hsic(k, k),
                               atol=1e-9 * np.abs(k).max() ** 2)


def test_independent_features_biased_cka_inflated_at_small_n_while_minibatch_unbiased_near_zero():
    rng = np.random.default_rng(0)
    n, d = 16, 64
    pairs = [(rng.standard_normal((n, d)), rng.standard_normal((n, d))) for _ in range(10)]
    biased = [reference.linear_cka(x, y) for x, y in pairs]
    unbiased = reference.minibatch_cka([[x] for x, _ in pairs], [[y] for _, y in pairs])[0, 0]
    assert min(biased) > 0.5
    assert abs(unbiased) < 0.1


# ---------------------------------------------------------------------------------------------------------------
# Degenerate representations


def test_constant_layer_gives_nan_row_and_column_with_warning_and_exact_other_entries():
    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal((6, 3)), np.full((6, 2), 0.1), rng.standard_normal((6, 4)), np.zeros((6, 5))]
               for _ in range(2)]
    with pytest.warns(RuntimeWarning, match=r"layers \[1, 3\] of the model are constant"):
        result = reference.minibatch_cka(batches)
    assert np.all(np.isnan(result[[1, 3]])) and np.all(np.isnan(result[:, [1, 3]]))
    live = [0, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = reference.minibatch_cka([[b[i] for i in live] for b in batches])
    np.testing.assert_allclose(result[np.ix_(live, live)], expected, rtol=1e-12)
    with pytest.warns(RuntimeWarning, match="second representation is constant"):
        assert np.isnan(reference.linear_cka(batches[0][0], batches[0][1], unbiased=True))
    with pytest.warns(RuntimeWarning, match="first representation is constant"):
        assert np.isnan(reference.cka(reference.gram_linear(batches[0][1]), reference.gram_linear(batches[0][0])))


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_unbiased_hsic_with_fewer_than_four_examples_raises():
    k = reference.gram_linear(np.random.default_rng(0).standard_normal((3, 2)))
    with pytest.raises(ValueError, match=r"needs n >= 4 examples, got n=3 in k"):
        reference.hsic(k, k, unbiased=True)
    with pytest.raises(ValueError, match=r"n >= 4 examples, got n=3 in batches_x\[0\]"):
        reference.minibatch_cka([[np.ones((3, 2))]])
    assert np.isfinite(reference.hsic(k, k))  # the biased estimator is defined


def test_example_count_mismatch_raises():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"batches_x\[0\]\[1\] has 5 examples, expected 6"):
        reference.minibatch_cka([[rng.standard_normal((6, 2)), rng.standard_normal((5, 2))]])
    with pytest.raises(ValueError, match=r"minibatch 0 has 5 examples in batches_y, expected 6"):
        reference.minibatch_cka([[rng.standard_normal((6, 2))]], [[rng.standard_normal((5, 2))]])
    with pytest.raises(ValueError, match=r"n=6 in x and n=5 in y"):
        reference.linear_cka(rng.standard_normal((6, 2)), rng.standard_normal((5, 2)))
    with pytest.raises(ValueError, match=r"k and l must be Gram matrices of the same examples"):
        reference.hsic(np.eye(6), np.eye(5))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_representation_raises(bad):
    x = np.random.default_rng(0).standard_normal((6, 3))
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"x must be finite, found NaN or Inf"):
        reference.linear_cka(x, x)
    with pytest.raises(ValueError, match=r"batches_x\[0\]\[1\] must be finite"):
        reference.minibatch_cka([[np.ones((6, 2)), x]])


def test_empty_or_scalar_input_raises():
    with pytest.raises(ValueError, match=r"x must be an array \[n, \.\.\.\] of examples, got a scalar"):
        reference.gram_linear(np.float64(3.0))
    with pytest.raises(ValueError, match=r"x must be non-empty \[n, \.\.\.\], got shape \(0, 4\)"):
        reference.gram_linear(np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"x must be non-empty"):
        reference.gram_linear(np.zeros((5, 0)))
    with pytest.raises(ValueError, match=r"batches_x must be a non-empty sequence"):
        reference.minibatch_cka([])


def test_wrong_number_of_layers_raises():
    with pytest.raises(ValueError, match=r"batches_x\[1\] has 1 layers, expected 2"):
        reference.minibatch_cka([[np.eye(5), np.eye(5)], [np.eye(5)]])
    with pytest.raises(ValueError, match=r"batches_y has 1 minibatches, expected 2"):
        reference.minibatch_cka([[np.eye(5)], [np.eye(5)]], [[np.eye(5)]])


def test_non_square_or_asymmetric_gram_and_bad_rbf_threshold_raise():
    with pytest.raises(ValueError, match=r"k must be a square Gram matrix \[n, n\], got shape \(4, 5\)"):
        reference.center_gram(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"k must be a symmetric Gram matrix"):
        reference.cka(np.triu(np.ones((5, 5))), np.eye(5))
    with pytest.raises(ValueError, match=r"threshold must be a positive number"):
        reference.gram_rbf(np.eye(4), threshold=0.0)
    with pytest.raises(ValueError, match=r"median squared distance .* is 0"):
        reference.gram_rbf(np.ones((5, 2)))
