"""vitcnn_tf.training: schedule, optimizer, a short real training run, record and files."""

import json
import math
import os

import keras
import numpy as np
import pytest

from vitcnn_tf import atomic_io, training
from vitcnn_tf.data import load_dataset


def _tiny_cnn(num_classes=10, image_size=16):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((image_size, image_size, 3))
    hidden = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(hidden))


def test_schedule_is_linear_warmup_then_cosine():
    config = training.TrainConfig(epochs=1, learning_rate=0.01, warmup_fraction=0.2, final_learning_rate_ratio=0.1)
    schedule = training.learning_rate_schedule(config, total_steps=100)
    for step in (0, 5, 10, 20, 30, 60, 100):
        if step < 20:
            expected = 0.01 * step / 20
        else:
            progress = (step - 20) / 80
            expected = 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_schedule_without_warmup_starts_at_the_peak():
    schedule = training.learning_rate_schedule(training.TrainConfig(learning_rate=0.01, warmup_fraction=0.0), 10)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_skips_vectors():
    model = _tiny_cnn()
    optimizer = training.make_optimizer(model, training.TrainConfig(weight_decay=0.1), total_steps=10)
    optimizer.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed == {v.path for v in model.trainable_variables if len(v.shape) >= 2}
    assert decayed and len(decayed) < len(model.trainable_variables)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(learning_rate=0.0), "learning_rate must be > 0"),
    (dict(warmup_fraction=1.0), "warmup_fraction must be in"),
    (dict(label_smoothing=-0.1), "label_smoothing must be in"),
    (dict(global_clipnorm=0.0), "global_clipnorm must be > 0"),
    (dict(early_stopping_patience=0), "early_stopping_patience must be a positive integer"),
    (dict(early_stopping_min_delta=-0.1), "early_stopping_min_delta must be >= 0"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**kwargs)


@pytest.mark.slow
def test_short_training_run_beats_chance_and_writes_a_complete_record(tmp_path):
    train = load_dataset("digits", "train", batch_size=32, image_size=16, seed=0)
    test = load_dataset("digits", "test", batch_size=128, image_size=16)
    model = _tiny_cnn()
    config = training.TrainConfig(epochs=4, learning_rate=3e-3, weight_decay=1e-4, label_smoothing=0.1)
    record = training.fit(model, train, test, config, seed=0, output_dir=tmp_path, checkpoint_every=2,
                          record_extra={"data": {"dataset": "digits"}}, verbose=0)
    # held-out accuracy far above chance (0.1); recomputed independently from the saved model's predictions
    images, labels = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in test]))
    accuracy = np.mean(np.argmax(model.predict(images, verbose=0), axis=1) == labels)
    assert accuracy > 0.6
    assert record["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert record["epochs"] == 4 and record["steps_per_epoch"] == len(train) and record["seed"] == 0
    assert record["training"]["label_smoothing"] == 0.1 and record["data"] == {"dataset": "digits"}
    assert len(record["history"]["loss"]) == 4 and record["wall_time_seconds"] > 0
    on_disk = json.loads((tmp_path / training.RECORD_FILE).read_text())
    assert on_disk == record
    weights = tmp_path / record["weights_file"]
    assert record["weights_sha256"] == atomic_io.sha256_file(weights)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch_002.weights.h5", "epoch_004.weights.h5"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp") or name.startswith(".")]
    # the saved weights reproduce the model
    reloaded = training.load_weights(_tiny_cnn(), weights)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_same_seed_same_training_result():
    def run(data_seed):
        # a fresh pipeline per run: one tf.data object reshuffles on each pass, across fit calls too
        train = load_dataset("digits", "train", batch_size=64, image_size=16, num_examples=256, seed=data_seed)
        model = _tiny_cnn()
        training.fit(model, train, config=training.TrainConfig(epochs=1, learning_rate=1e-3), seed=5, verbose=0)
        return model.get_weights()

    first, second, other = run(1), run(1), run(2)
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert max(np.abs(a - c).max() for a, c in zip(first, other)) > 1e-4


def test_fit_rejects_unknown_cardinality_and_bad_format(tmp_path):
    train = load_dataset("digits", "train", batch_size=64, image_size=16, num_examples=64)
    with pytest.raises(ValueError, match="known cardinality"):
        training.fit(_tiny_cnn(), train.repeat(), verbose=0)
    with pytest.raises(ValueError, match="weights_format must be one of"):
        training.fit(_tiny_cnn(), train, output_dir=tmp_path, weights_format="pickle", verbose=0)
    with pytest.raises(ValueError, match="checkpoint_every needs an output_dir"):
        training.fit(_tiny_cnn(), train, checkpoint_every=1, verbose=0)
    with pytest.raises(ValueError, match="early_stopping_patience needs validation_data"):
        training.fit(_tiny_cnn(), train, config=training.TrainConfig(epochs=2, early_stopping_patience=1), verbose=0)


def test_early_stopping_stops_after_the_patience_and_keeps_the_best_epoch(tmp_path):
    train = load_dataset("digits", "train", batch_size=32, image_size=16, num_examples=256, seed=0)
    validation = load_dataset("digits", "test", batch_size=128, image_size=16, num_examples=128)
    model = _tiny_cnn()
    # No epoch can beat the first by more than 1.0 accuracy: training stops after 1 + patience epochs.
    config = training.TrainConfig(epochs=6, learning_rate=3e-3, early_stopping_patience=2,
                                  early_stopping_min_delta=1.0)
    record = training.fit(model, train, validation, config, validation_data=validation, output_dir=tmp_path,
                          checkpoint_every=1, verbose=0)
    assert record["epochs"] == 6 and record["epochs_run"] == 3
    assert record["stopping"]["stopped_early"] and record["stopping"]["best_epoch"] == 1
    assert len(record["history"]["val_accuracy"]) == 3
    # the weights kept are those saved after the first epoch
    first = training.load_weights(_tiny_cnn(), tmp_path / "checkpoints" / "epoch_001.weights.h5")
    for kept, saved in zip(model.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(kept, saved)
