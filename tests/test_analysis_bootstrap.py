import numpy as np
import pytest

from vitcnn_tf.analysis import bootstrap


def test_interval_of_the_mean_covers_at_the_nominal_rate_with_the_normal_width():
    rng = np.random.default_rng(0)
    true_mean, sigma, n, repetitions = 2.0, 3.0, 100, 500
    covered, widths = 0, []
    for repetition in range(repetitions):
        samples = rng.normal(true_mean, sigma, size=n)
        estimate, low, high = bootstrap.bootstrap_interval(
            lambda x: x.mean(axis=1), samples, num_resamples=500, seed=repetition, vectorized=True
        )
        assert estimate == pytest.approx(samples.mean())
        assert low < estimate < high
        covered += low <= true_mean <= high
        widths.append(high - low)
    # 95% nominal (the percentile interval of a mean at n = 100 is known to cover slightly less, ~94%); the
    # binomial standard deviation over 500 repetitions is 1.1 points.
    assert 0.91 <= covered / repetitions <= 0.975
    # Normal theory: 2 * 1.96 * sigma / sqrt(n), times sqrt((n - 1) / n) for the bootstrap's plug-in variance.
    expected_width = 2 * 1.96 * sigma / np.sqrt(n) * np.sqrt((n - 1) / n)
    assert np.mean(widths) == pytest.approx(expected_width, rel=0.03)


def test_loop_and_vectorized_modes_draw_the_same_resamples():
    samples = np.random.default_rng(5).normal(size=(60, 3))
    looped = bootstrap.bootstrap_interval(lambda x: x.mean(axis=0), samples, num_resamples=250, seed=4)
    vectorized = bootstrap.bootstrap_interval(
        lambda x: x.mean(axis=1), samples, num_resamples=250, seed=4, vectorized=True, resamples_per_call=60
    )
    for a, b in zip(looped, vectorized):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError, match="vectorized=True"):
        bootstrap.bootstrap_interval(np.mean, samples, vectorized=True)


def test_paired_arrays_are_resampled_together_and_array_statistics_work():
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    y = x + 0.01 * rng.normal(size=500)
    # A paired difference is tiny; if x and y were resampled independently it would not be.
    estimate, low, high = bootstrap.bootstrap_interval(lambda a, b: np.mean(a - b), x, y, num_resamples=200)
    assert high - low < 0.005
    means, lows, highs = bootstrap.bootstrap_interval(
        lambda a: a.mean(axis=0), np.stack([x, 10 + x], axis=1), num_resamples=200
    )
    assert means.shape == lows.shape == highs.shape == (2,)
    np.testing.assert_allclose(highs - lows, (highs - lows)[0])
    np.testing.assert_allclose(means - [x.mean(), 10 + x.mean()], 0, atol=1e-12)


def test_same_seed_same_interval_and_confidence_orders_widths():
    samples = np.random.default_rng(2).exponential(size=80)
    first = bootstrap.bootstrap_interval(np.median, samples, num_resamples=300, seed=7)
    assert first == bootstrap.bootstrap_interval(np.median, samples, num_resamples=300, seed=7)
    narrow = bootstrap.bootstrap_interval(np.median, samples, num_resamples=300, seed=7, confidence=0.5)
    assert first[1] <= narrow[1] <= narrow[2] <= first[2]


def test_over_seeds_adds_the_between_seed_variation():
    rng = np.random.default_rng(3)
    # Five "seeds" whose means differ by much more than the within-seed sampling error.
    seed_offsets = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    per_seed = [(offset + 0.01 * rng.normal(size=200),) for offset in seed_offsets]
    estimate, low, high = bootstrap.bootstrap_interval_over_seeds(np.mean, per_seed, num_resamples=500)
    assert estimate == pytest.approx(np.mean([values.mean() for (values,) in per_seed]))
    # The spread of the mean of 5 seeds drawn with replacement from the offsets: std ~ 0.71 / sqrt(5) = 0.32.
    assert 0.8 < high - low < 1.6
    within_one_seed = bootstrap.bootstrap_interval(np.mean, *per_seed[2], num_resamples=500)
    assert within_one_seed[2] - within_one_seed[1] < 0.01


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bootstrap.bootstrap_interval(np.mean, np.ones(5), np.ones(4)), "same first"),
        (lambda: bootstrap.bootstrap_interval(np.mean, np.ones(1)), "at least 2 examples"),
        (lambda: bootstrap.bootstrap_interval(np.mean), "at least one array"),
        (lambda: bootstrap.bootstrap_interval(np.mean, np.ones(5), confidence=1.0), "confidence"),
        (lambda: bootstrap.bootstrap_interval(np.mean, np.ones(5), num_resamples=1), "num_resamples"),
        (lambda: bootstrap.bootstrap_interval(lambda a: np.nan, np.ones(5)), "non-finite"),
        (lambda: bootstrap.bootstrap_interval_over_seeds(np.mean, [(np.ones(5),)]), "at least 2 seeds"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
