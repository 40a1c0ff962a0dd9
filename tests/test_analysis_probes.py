import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import Ridge

from vitcnn_tf.analysis import probes


def sklearn_probe(train_x, train_y, test_x, num_classes, l2_reg):
    """Independent computation: whitening + bias column 100 by hand, scikit-learn ridge on +-1 one-hot targets."""
    train_x = train_x.reshape(len(train_x), -1)
    test_x = test_x.reshape(len(test_x), -1)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-5

    def design(x):
        return np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])

    targets = np.where(np.arange(num_classes)[None, :] == train_y[:, None], 1.0, -1.0)
    ridge = Ridge(alpha=l2_reg, fit_intercept=False, solver="cholesky").fit(design(train_x), targets)
    return ridge.coef_.T, ridge.predict(design(test_x)).argmax(axis=1)


@pytest.mark.parametrize(
    "num_train, feature_shape, l2_reg",
    [(60, (10,), 2.0**10), (60, (2, 3), 1.0), (20, (50,), 2.0**10), (12, (4, 5, 3), 0.5)],
    ids=["N>=D", "N>=D-small-l2", "N<D", "N<D-small-l2"],
)
def test_matches_sklearn_ridge_on_both_branches(num_train, feature_shape, l2_reg):
    rng = np.random.default_rng(num_train)
    num_classes = 4
    train_x = rng.normal(size=(num_train, *feature_shape)) * rng.uniform(0.1, 5, size=feature_shape) + 3
    test_x = rng.normal(size=(40, *feature_shape)) * 2 + 3
    train_y = np.arange(num_train) % num_classes
    test_y = rng.integers(0, num_classes, size=40)

    probe = probes.fit_ridge_probe(train_x, train_y, num_classes, l2_reg)
    expected_weights, expected_predictions = sklearn_probe(train_x, train_y, test_x, num_classes, l2_reg)
    np.testing.assert_allclose(probe.weights, expected_weights, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(probe.predict(test_x), expected_predictions)
    np.testing.assert_allclose(probe.scores(test_x), probe.design_matrix(test_x) @ probe.weights, rtol=1e-10,
                               atol=1e-9)
    accuracy = probes.fewshot_linear_probe(train_x, train_y, test_x, test_y, num_classes, l2_reg)
    assert accuracy == np.mean(expected_predictions == test_y)


def test_linearly_separable_data_gives_accuracy_one():
    rng = np.random.default_rng(0)
    num_classes, dim = 5, 32
    centres = rng.normal(size=(num_classes, dim)) * 10

    def sample(count):
        labels = rng.integers(0, num_classes, size=count)
        return centres[labels] + rng.normal(size=(count, dim)), labels

    train_x, train_y = sample(50)
    test_x, test_y = sample(200)
    assert probes.fewshot_linear_probe(train_x, train_y, test_x, test_y, num_classes) == 1.0
    # Float32 TensorFlow input and a 1-shot N < D fit work as well.
    chosen = probes.fewshot_sample(train_y, shots=1, seed=0, num_classes=num_classes)
    accuracy = probes.fewshot_linear_probe(
        tf.constant(train_x[chosen], tf.float32), tf.constant(train_y[chosen]), test_x, test_y, num_classes
    )
    assert accuracy == 1.0


def test_uninformative_features_give_chance_accuracy():
    rng = np.random.default_rng(1)
    train_x, test_x = rng.normal(size=(200, 8)), rng.normal(size=(4000, 8))
    train_y, test_y = rng.integers(0, 4, size=200), rng.integers(0, 4, size=4000)
    accuracy = probes.fewshot_linear_probe(train_x, train_y, test_x, test_y, 4)
    assert 0.2 < accuracy < 0.3


def test_fewshot_sample_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(3), [10, 7, 12])
    np.random.default_rng(0).shuffle(labels)
    chosen = probes.fewshot_sample(labels, shots=5, seed=3)
    np.testing.assert_array_equal(chosen, probes.fewshot_sample(labels, shots=5, seed=3))
    assert len(set(chosen.tolist())) == 15
    np.testing.assert_array_equal(labels[chosen], np.repeat(np.arange(3), 5))
    assert not np.array_equal(np.sort(chosen), np.sort(probes.fewshot_sample(labels, shots=5, seed=4)))
    with pytest.raises(ValueError, match="class 1 has 7"):
        probes.fewshot_sample(labels, shots=8, seed=0)
    with pytest.raises(ValueError, match="class 3 has 0"):
        probes.fewshot_sample(labels, shots=1, seed=0, num_classes=4)
    with pytest.raises(ValueError, match="shots"):
        probes.fewshot_sample(labels, shots=0, seed=0)


def test_sweep_over_shots_and_seeds_matches_individual_probes():
    rng = np.random.default_rng(2)
    train_x, train_y = rng.normal(size=(90, 6)), np.arange(90) % 3
    train_x[:, 0] += train_y * 1.5
    test_x, test_y = rng.normal(size=(60, 6)), np.arange(60) % 3
    test_x[:, 0] += test_y * 1.5
    results = probes.fewshot_probe_sweep(train_x, train_y, test_x, test_y, 3, shots=(2, 10), seeds=(0, 5))
    assert sorted(results) == [2, 10]
    for shots, entry in results.items():
        expected = [
            probes.fewshot_linear_probe(
                train_x[idx], train_y[idx], test_x, test_y, 3
            )
            for idx in (probes.fewshot_sample(train_y, shots, seed, 3) for seed in (0, 5))
        ]
        assert entry["per_seed"] == expected
        assert entry["mean"] == pytest.approx(np.mean(expected))
        assert entry["seeds"] == [0, 5]


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"train_y": np.array([0, 1, 2, 3])}, ValueError, r"train_y: 1 label\(s\) outside \[0, 3\)"),
        ({"test_y": np.array([0, -1, 1])}, ValueError, r"test_y: 1 label\(s\) outside"),
        ({"train_y": np.array([0, 1, 2])}, ValueError, "train_y: 3 labels for 4 feature rows"),
        ({"test_y": np.array([0, 1])}, ValueError, "test_y: 2 labels for 3 feature rows"),
        ({"train_x": np.zeros((0, 5)), "train_y": np.zeros(0, int)}, ValueError, "train_x: empty"),
        ({"test_x": np.zeros((0, 5)), "test_y": np.zeros(0, int)}, ValueError, "test_x: empty"),
        ({"train_x": np.full((4, 5), np.inf)}, ValueError, "train_x: 20 non-finite"),
        ({"test_x": np.full((3, 4), 1.0)}, ValueError, "4 features per example, the probe was fitted on 5"),
        ({"train_x": np.arange(4.0)}, ValueError, "at least 2 axes"),
        ({"train_y": np.array([0.5, 1, 2, 0])}, TypeError, "integer class labels"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"l2_reg": 0.0}, ValueError, "l2_reg"),
    ],
)
def test_bad_input_raises_clear_errors(change, error, message):
    arguments = {
        "train_x": np.random.default_rng(0).normal(size=(4, 5)),
        "train_y": np.array([0, 1, 2, 0]),
        "test_x": np.ones((3, 5)),
        "test_y": np.array([0, 1, 2]),
        "num_classes": 3,
        "l2_reg": 1.0,
        **change,
    }
    with pytest.raises(error, match=message):
        probes.fewshot_linear_probe(**arguments)
