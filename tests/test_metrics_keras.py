"""The Keras face of CKA: ``CKAMonitor`` (callback), ``CKALoss`` and ``CKARegularization`` (layer) against the
NumPy float64 reference, their gradients against central finite differences of it, inside ``model.fit``, and
their serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import random_images, random_pair, tiny_vit
from vitcnn_tf import representations
from vitcnn_tf.metrics import CKALoss, CKAMonitor, CKARegularization, differentiable, reference


def central_differences(function, x, step=1e-6):
    """Gradient of the scalar ``function(x)`` by central differences in float64, one coordinate at a time."""
    x = np.array(x, dtype=np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        h = step * max(1.0, abs(x[index]))
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        gradient[index] = (function(plus) - function(minus)) / (2.0 * h)
    return gradient


def tf_gradients(function, *arrays, dtype=tf.float64):
    """``(value, [gradient of function(*variables) with respect to each array])``."""
    variables = [tf.Variable(np.asarray(a), dtype=dtype) for a in arrays]
    with tf.GradientTape() as tape:
        value = function(*variables)
    return float(value), [g.numpy() for g in tape.gradient(value, variables)]


@settings(max_examples=15)
@given(st.integers(0, 2**31 - 1), st.integers(4, 12), st.integers(1, 9), st.integers(1, 9), st.booleans())
def test_differentiable_linear_cka_equals_reference(seed, n, dx, dy, unbiased):
    x, y = random_pair(seed, n, dx, dy)
    expected = reference.linear_cka(x, y, unbiased=unbiased)
    value = differentiable.linear_cka(tf.constant(x), tf.constant(y), unbiased)
    assert value.dtype == tf.float64
    np.testing.assert_allclose(float(value), expected, rtol=1e-9, atol=1e-12)
    value32 = differentiable.linear_cka(tf.constant(x, tf.float32), tf.constant(y, tf.float32), unbiased)
    assert value32.dtype == tf.float32
    np.testing.assert_allclose(float(value32), reference.linear_cka(x.astype(np.float32), y.astype(np.float32),
                                                                    unbiased=unbiased), atol=1e-5)


@pytest.mark.parametrize("unbiased", [False, True])
def test_loss_gradient_matches_central_differences_of_reference(unbiased):
    x, y = random_pair(3, 9, 4, 3)
    y = y.reshape(9, 3, 1)  # a representation with extra axes, flattened per example
    loss = CKALoss(unbiased=unbiased, dtype="float64")
    value, (grad_true, grad_pred) = tf_gradients(loss, x, y)
    np.testing.assert_allclose(value, 1.0 - reference.linear_cka(x, y, unbiased=unbiased), rtol=1e-12)
    expected_true = central_differences(lambda a: 1.0 - reference.linear_cka(a, y, unbiased=unbiased), x)
    expected_pred = central_differences(lambda b: 1.0 - reference.linear_cka(x, b, unbiased=unbiased), y)
    assert np.max(np.abs(expected_pred)) > 1e-3  # not a flat point
    np.testing.assert_allclose(grad_true, expected_true, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(grad_pred, expected_pred, rtol=1e-5, atol=1e-8)
    # The float32 loss (the Keras default) follows the same gradient to float32 accuracy.
    _, (_, grad_pred32) = tf_gradients(CKALoss(unbiased=unbiased), x, y, dtype=tf.float32)
    np.testing.assert_allclose(grad_pred32, expected_pred, atol=1e-4 * np.max(np.abs(expected_pred)))


@pytest.mark.parametrize("objective, sign", [("similarity", -1.0), ("dissimilarity", 1.0)])
def test_layer_adds_weighted_cka_penalty_with_the_reference_gradient(objective, sign):
    x, y = random_pair(5, 10, 6, 4)
    layer = CKARegularization(weight=0.7, objective=objective, dtype="float64")
    outputs = []

    def added_loss(a, b):
        outputs.append(layer([a, b]))
        assert len(layer.losses) == 1
        return layer.losses[0]

    value, (grad_x, _) = tf_gradients(added_loss, x, y)
    cka = reference.linear_cka(x, y)
    np.testing.assert_allclose(value, 0.7 * ((1.0 - cka) if objective == "similarity" else cka), rtol=1e-12)
    np.testing.assert_allclose(float(layer.last_cka.numpy()), cka, rtol=1e-12)
    np.testing.assert_array_equal(outputs[0].numpy(), x)  # a pass-through
    expected = central_differences(lambda a: sign * 0.7 * reference.linear_cka(a, y), x)
    np.testing.assert_allclose(grad_x, expected, rtol=1e-5, atol=1e-8)


def test_a_constant_representation_gives_loss_one_and_a_zero_gradient():
    x = np.full((8, 3), 2.5)
    _, y = random_pair(0, 8, 3, 5)
    value, gradients = tf_gradients(CKALoss(dtype="float64"), x, y)
    assert value == 1.0
    for gradient in gradients:
        np.testing.assert_array_equal(gradient, 0.0)


def test_loss_and_layer_refuse_bad_input():
    x, y = random_pair(0, 8, 3, 5)
    with pytest.raises(ValueError, match="x and y must hold the same examples"):
        CKALoss()(x, y[:6])
    with pytest.raises(ValueError, match="needs n >= 4"):
        CKALoss(unbiased=True)(x[:3], y[:3])
    with pytest.raises(ValueError, match="sample_weight is not supported"):
        CKALoss()(x, y, sample_weight=np.ones(8))
    with pytest.raises(ValueError, match="objective must be one of"):
        CKARegularization(objective="closer")
    with pytest.raises(ValueError, match="weight must be a non-negative number"):
        CKARegularization(weight=-1.0)
    with pytest.raises(ValueError, match=r"call it on \[x, y\]"):
        CKARegularization()(tf.constant(x))


def test_loss_trains_a_model_to_match_a_target_representation_inside_fit():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((64, 6)).astype(np.float32)
    targets = np.tanh(inputs @ rng.standard_normal((6, 5))).astype(np.float32) + 100.0  # a large offset too
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=CKALoss())
    before = 1.0 - reference.linear_cka(targets, model.predict(inputs, verbose=0).astype(np.float64))
    history = model.fit(inputs, targets, batch_size=64, epochs=15, shuffle=False, verbose=0)
    after = 1.0 - reference.linear_cka(targets, model.predict(inputs, verbose=0).astype(np.float64))
    assert after < 0.5 * before
    np.testing.assert_allclose(model.evaluate(inputs, targets, batch_size=64, verbose=0), after, atol=1e-5)
    assert history.history["loss"][-1] < history.history["loss"][0]


def distillation_model(weight, unbiased=False):
    """Student: Dense layers; teacher: a frozen Dense layer; the CKA layer pulls the student's hidden layer
    towards the teacher's. Returns (model, hidden-layer-and-teacher model)."""
    images = keras.Input((6,))
    hidden = keras.layers.Dense(7, activation="relu", name="hidden")(images)
    teacher = keras.layers.Dense(5, activation="tanh", name="teacher", trainable=False)(images)
    hidden = CKARegularization(weight=weight, unbiased=unbiased, name="cka_reg")([hidden, teacher])
    logits = keras.layers.Dense(3, name="logits")(hidden)
    return keras.Model(images, logits), keras.Model(images, [hidden, teacher])


def test_layer_trains_inside_fit_and_its_loss_reaches_the_model():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((32, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 32)
    model, taps = distillation_model(weight=2.0)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model(inputs)
    hidden, teacher = (np.asarray(t, np.float64) for t in taps(inputs))
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), 2.0 * (1.0 - reference.linear_cka(hidden, teacher)),
                               atol=1e-5)
    teacher_weights = model.get_layer("teacher").get_weights()
    before = 1.0 - reference.linear_cka(hidden, teacher)
    model.fit(inputs, labels, batch_size=32, epochs=20, verbose=0)
    hidden, teacher = (np.asarray(t, np.float64) for t in taps(inputs))
    assert 1.0 - reference.linear_cka(hidden, teacher) < 0.7 * before
    np.testing.assert_allclose(float(model.get_layer("cka_reg").last_cka.numpy()),
                               reference.linear_cka(hidden, teacher), atol=0.05)  # last batch, before the update
    for kept, now in zip(teacher_weights, model.get_layer("teacher").get_weights()):
        np.testing.assert_array_equal(kept, now)


class LogsSeen(keras.callbacks.Callback):
    """Records the logs every epoch ends with (as a TensorBoard callback placed after ``CKAMonitor`` sees them)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))


def probe_activations(model, names, probe, batch_size):
    return [[representations.extract(model, probe[s:s + batch_size], names)[name] for name in names]
            for s in range(0, len(probe), batch_size)]


def test_callback_logs_minibatch_cka_against_the_starting_weights_inside_fit():
    keras.utils.set_random_seed(2)
    model = tiny_vit()
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, probe = random_images(32, 16, seed=1), random_images(16, 16, seed=2)
    labels = np.random.default_rng(0).integers(0, 5, 32)
    names = ["block00/+sa", "block02/+mlp"]
    initial = probe_activations(model, names, probe, 8)
    monitor, seen = CKAMonitor(probe, layers=names, every=2, batch_size=8), LogsSeen()
    history = model.fit(images, labels, batch_size=8, epochs=4, verbose=0, callbacks=[monitor, seen])
    assert monitor.keys == ["cka/block00/+sa", "cka/block02/+mlp"] and monitor.epochs == [1, 3]
    assert [sorted(k for k in logs if k.startswith("cka/")) for logs in seen.logs] == [[], monitor.keys, [],
                                                                                       monitor.keys]
    expected = np.diagonal(reference.minibatch_cka(probe_activations(model, names, probe, 8), initial))
    for key, value in zip(monitor.keys, expected):
        assert len(history.history[key]) == 2
        np.testing.assert_allclose(history.history[key][-1], value, atol=1e-5)
        assert history.history[key] == monitor.history[key]
    assert np.all(expected < 0.999)  # the weights moved: a copy of the current model would give 1


def test_callback_against_another_model_pairs_taps_one_to_one():
    keras.utils.set_random_seed(3)
    model, other = tiny_vit(), tiny_vit(num_layers=2)
    probe = random_images(12, 16, seed=4)
    monitor = CKAMonitor(probe, layers=r"block0[01]/\+mlp", reference=other,
                         reference_layers=["block01/+sa", "block00/+mlp"], batch_size=6)
    monitor.set_model(model)
    monitor.on_train_begin()
    values = monitor.measure()
    assert list(values) == ["cka/block00/+mlp~block01/+sa", "cka/block01/+mlp~block00/+mlp"]
    expected = reference.minibatch_cka(probe_activations(model, ["block00/+mlp", "block01/+mlp"], probe, 6),
                                       probe_activations(other, ["block01/+sa", "block00/+mlp"], probe, 6))
    np.testing.assert_allclose(list(values.values()), np.diagonal(expected), atol=1e-5)


def test_callback_refuses_bad_arguments():
    probe = random_images(10, 16)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        CKAMonitor(probe, every=0)
    with pytest.raises(ValueError, match="at least 4 examples"):
        CKAMonitor(probe[:3])
    with pytest.raises(ValueError, match="last probe minibatch would hold 2"):
        CKAMonitor(probe, batch_size=4)
    with pytest.raises(ValueError, match="reference must be None"):
        CKAMonitor(probe, reference="initial")
    monitor = CKAMonitor(probe, layers=["block00/+sa", "block01/+sa"], reference_layers=["block00/+sa"])
    monitor.set_model(tiny_vit())
    with pytest.raises(ValueError, match="paired one to one"):
        monitor.on_train_begin()
    monitor = CKAMonitor(probe, layers=["block09/+sa"])
    monitor.set_model(tiny_vit())
    with pytest.raises(ValueError, match="unknown taps"):
        monitor.on_train_begin()


def test_loss_and_layer_round_trip_through_serialisation(tmp_path):
    loss = CKALoss(unbiased=True, name="distill", dtype="float64")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, CKALoss) and restored.get_config() == loss.get_config()
    assert restored.unbiased and restored.dtype == "float64" and restored.name == "distill"
    x, y = random_pair(2, 8, 3, 4)
    assert float(restored(x, y)) == float(loss(x, y))

    keras.utils.set_random_seed(4)
    model, _ = distillation_model(weight=0.3, unbiased=True)
    inputs = np.random.default_rng(4).standard_normal((8, 6)).astype(np.float32)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("cka_reg")
    assert isinstance(layer, CKARegularization)
    assert (layer.weight, layer.objective, layer.unbiased) == (0.3, "similarity", True)
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())
    np.testing.assert_allclose(float(loaded.losses[0]), float(model.losses[0]), rtol=1e-6)
