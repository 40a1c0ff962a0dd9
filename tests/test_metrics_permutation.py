"""The permutation null: its p-value and percentile against explicit counts, its calibration on independent data,
and the TensorFlow version against the reference."""

import numpy as np
import pytest

from vitcnn_tf import metrics
from vitcnn_tf.metrics import reference


def test_summary_against_explicit_counts():
    null = np.array([0.1, 0.5, 0.2, 0.5, 0.3])
    summary = reference.null_summary(0.5, null)
    assert summary["p_value"] == pytest.approx((1 + 2) / 6)  # two null values >= 0.5, with the +1 correction
    assert summary["null_mean"] == pytest.approx(0.32)
    assert summary["null_q95"] == pytest.approx(np.sort(null)[3] + 0.8 * (np.sort(null)[4] - np.sort(null)[3]))
    assert reference.null_summary(0.6, null)["p_value"] == pytest.approx(1 / 6)


def test_null_values_are_the_measure_on_the_drawn_permutations():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 5))
    result = reference.permutation_null(reference.linear_cka, x, y, num_permutations=7, seed=3)
    orders = reference.permutations(12, 7, seed=3)
    assert all(sorted(order) == list(range(12)) for order in orders)
    np.testing.assert_allclose(result["null"], [reference.linear_cka(x, y[order]) for order in orders])
    assert result["value"] == reference.linear_cka(x, y)
    np.testing.assert_array_equal(reference.permutations(12, 7, seed=3), orders)


def test_calibration_dependent_pairs_are_significant_independent_ones_are_not():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4))
    dependent = reference.permutation_null(reference.procrustes_similarity, x, x @ rng.standard_normal((4, 4)),
                                           num_permutations=99)
    assert dependent["p_value"] == pytest.approx(0.01) and dependent["value"] > dependent["null_q95"]
    # p-values of independent pairs are roughly uniform: about 5% below 0.05
    p_values = [reference.permutation_null(reference.linear_cka, rng.standard_normal((15, 2)),
                                           rng.standard_normal((15, 2)), num_permutations=19, seed=s)["p_value"]
                for s in range(200)]
    assert 0.01 <= np.mean(np.array(p_values) <= 0.05) <= 0.12
    assert 0.4 <= np.mean(p_values) <= 0.6


def test_errors():
    x = np.ones((5, 2))
    with pytest.raises(ValueError, match="permutation_null: measure must be a callable"):
        reference.permutation_null("cka", x, x)
    with pytest.raises(ValueError, match=r"permutation_null: x and y must be arrays \[n, ...\] of the same n"):
        reference.permutation_null(reference.linear_cka, x, x[:4])
    with pytest.raises(ValueError, match="permutation_null: num_permutations must be an integer >= 1"):
        reference.permutation_null(reference.linear_cka, x, x, num_permutations=0)
    with pytest.raises(ValueError, match="non-finite value"):
        reference.permutation_null(lambda a, b: np.nan, x, x, num_permutations=2)
    with pytest.raises(ValueError, match="permutation_null: x and y must hold the same known number of examples"):
        metrics.permutation_null(metrics.procrustes_similarity, x, x[:4])


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-6), (np.float32, 1e-4)])
def test_tf_equals_reference(dtype, tolerance):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((10, 6)).astype(dtype), rng.standard_normal((10, 12)).astype(dtype)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    for tf_measure, measure in ((metrics.procrustes_similarity, reference.procrustes_similarity),
                                (lambda a, b: metrics.mutual_knn(a, b, k=3),
                                 lambda a, b: reference.mutual_knn(a, b, 3)),
                                (metrics.cka.linear_cka, reference.linear_cka)):
        found = metrics.permutation_null(tf_measure, x, y, num_permutations=9, seed=5)
        expected = reference.permutation_null(measure, x64, y64, num_permutations=9, seed=5)
        np.testing.assert_allclose(found["null"], expected["null"], atol=tolerance)
        for key in ("value", "null_mean", "null_q95"):
            assert found[key] == pytest.approx(expected[key], abs=tolerance)
        assert found["p_value"] == expected["p_value"]
