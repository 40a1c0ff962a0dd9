"""cka_bootstrap_interval / cka_from_batch_terms: bootstrap intervals of CKA statistics over minibatches."""

import numpy as np
import pytest

from vitcnn_tf.analysis import bootstrap


def one_pair_terms(cross_values):
    """Terms of one layer pair with unit self terms: the CKA of any set of batches is the mean of its cross."""
    cross_values = np.asarray(cross_values, dtype=np.float64)
    ones = np.ones((len(cross_values), 1))
    return {"cross": cross_values[:, None, None], "self_x": ones, "self_y": ones}


def random_terms(num_batches, lx, ly, seed):
    rng = np.random.default_rng(seed)
    return {"cross": rng.normal(size=(num_batches, lx, ly)), "self_x": rng.uniform(1, 2, size=(num_batches, lx)),
            "self_y": rng.uniform(1, 2, size=(num_batches, ly))}


def test_cka_from_batch_terms_is_the_ratio_of_sums_with_repeats():
    terms = random_terms(4, 2, 3, seed=0)
    indices = np.array([0, 0, 3])
    cross = terms["cross"][indices].sum(0)
    expected = cross / np.sqrt(np.outer(terms["self_x"][indices].sum(0), terms["self_y"][indices].sum(0)))
    np.testing.assert_allclose(bootstrap.cka_from_batch_terms(terms, indices), expected, rtol=1e-14)


def test_two_batches_give_the_three_point_distribution_of_their_mean():
    # Resampled means of {0, 1} are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1].
    estimate, low, high = bootstrap.cka_bootstrap_interval(one_pair_terms([0.0, 1.0]), lambda m: m[0, 0],
                                                           num_resamples=2000, seed=1)
    assert (estimate, low, high) == (0.5, 0.0, 1.0)
    estimate, low, high = bootstrap.cka_bootstrap_interval(one_pair_terms([0.3, 0.3, 0.3]), lambda m: m[0, 0])
    assert estimate == pytest.approx(0.3) and low == pytest.approx(0.3) and high == pytest.approx(0.3)


def test_mean_case_equals_the_example_bootstrap_with_the_same_draws():
    values = np.random.default_rng(2).uniform(size=15)
    got = bootstrap.cka_bootstrap_interval(one_pair_terms(values), lambda m: m[0, 0], num_resamples=300, seed=7)
    want = bootstrap.bootstrap_interval(np.mean, values, num_resamples=300, seed=7)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_estimate_is_the_statistic_of_the_full_sample():
    terms = random_terms(6, 3, 2, seed=3)
    statistic = lambda matrix: float(matrix[:2].mean() - matrix[2].max())  # noqa: E731
    estimate, low, high = bootstrap.cka_bootstrap_interval(terms, statistic, num_resamples=200)
    assert estimate == statistic(bootstrap.cka_from_batch_terms(terms))
    assert low <= high


def test_joint_resampling_uses_the_same_batches_for_every_entry():
    terms = random_terms(8, 2, 2, seed=4)
    difference = lambda m: float(m["a"][0, 1] - m["b"][0, 1])  # noqa: E731
    estimate, low, high = bootstrap.cka_bootstrap_interval({"a": terms, "b": dict(terms)}, difference)
    assert estimate == low == high == 0.0
    with pytest.raises(ValueError, match="same number of batches"):
        bootstrap.cka_bootstrap_interval({"a": terms, "b": random_terms(5, 2, 2, seed=0)}, difference)


def test_repeated_passes_with_one_pass_worth_of_draws_keep_the_interval_width():
    values = np.random.default_rng(5).uniform(size=20)
    single = bootstrap.cka_bootstrap_interval(one_pair_terms(values), lambda m: m[0, 0], num_resamples=3000)
    tripled = bootstrap.cka_bootstrap_interval(one_pair_terms(np.tile(values, 3)), lambda m: m[0, 0],
                                               num_resamples=3000, batches_per_resample=20)
    naive = bootstrap.cka_bootstrap_interval(one_pair_terms(np.tile(values, 3)), lambda m: m[0, 0],
                                             num_resamples=3000)
    width = lambda interval: interval[2] - interval[1]  # noqa: E731
    assert width(tripled) == pytest.approx(width(single), rel=0.15)
    assert width(naive) == pytest.approx(width(single) / np.sqrt(3), rel=0.15)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="self_x"):
        bootstrap.cka_bootstrap_interval({"cross": np.ones((3, 2, 2)), "self_x": np.ones((3, 3)),
                                          "self_y": np.ones((3, 2))}, lambda m: 0.0)
    with pytest.raises(ValueError, match="at least 2 minibatches"):
        bootstrap.cka_bootstrap_interval(one_pair_terms([0.5]), lambda m: m[0, 0])
    with pytest.raises(ValueError, match="statistic_fn"):
        bootstrap.cka_bootstrap_interval(one_pair_terms([0.5, 0.6]), lambda m: m)
    with pytest.raises(ValueError, match="not finite"):
        zero = {"cross": np.zeros((2, 1, 1)), "self_x": np.zeros((2, 1)), "self_y": np.ones((2, 1))}
        bootstrap.cka_bootstrap_interval(zero, lambda m: m[0, 0])


def test_two_seeds_with_batch_independent_statistics_give_the_three_point_distribution_of_seeds():
    # Seed statistics 0.2 and 0.6, whatever the batches: resampled seed means are 0.2, 0.4, 0.6 with probabilities
    # 1/4, 1/2, 1/4, so the 95% interval is [0.2, 0.6] around the estimate 0.4.
    terms = random_terms(6, 2, 2, seed=3)
    estimate, low, high = bootstrap.cka_bootstrap_interval_over_seeds(terms, [lambda m: 0.2, lambda m: 0.6],
                                                                      num_resamples=2000, seed=1)
    assert estimate == pytest.approx(0.4) and low == pytest.approx(0.2) and high == pytest.approx(0.6)


def test_identical_seeds_reduce_to_the_minibatch_bootstrap_and_seeds_widen_the_interval():
    terms = one_pair_terms(np.random.default_rng(4).uniform(size=20))
    single = bootstrap.cka_bootstrap_interval(terms, lambda m: m[0, 0], num_resamples=500)
    same = bootstrap.cka_bootstrap_interval_over_seeds(terms, [lambda m: m[0, 0]] * 2, num_resamples=500)
    assert same[0] == pytest.approx(single[0])
    assert same[2] - same[1] == pytest.approx(single[2] - single[1], rel=0.25)
    shifted = bootstrap.cka_bootstrap_interval_over_seeds(terms, [lambda m: m[0, 0] - 0.3, lambda m: m[0, 0] + 0.3],
                                                          num_resamples=500)
    assert shifted[0] == pytest.approx(single[0]) and shifted[2] - shifted[1] > 2 * (single[2] - single[1])
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap.cka_bootstrap_interval_over_seeds(terms, [lambda m: m[0, 0]])
