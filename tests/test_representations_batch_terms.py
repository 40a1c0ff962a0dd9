"""accumulate_cka(..., return_batch_terms=True): each minibatch's own HSIC_1 terms."""

import keras
import numpy as np
import tensorflow as tf

from vitcnn_tf import representations
from vitcnn_tf.metrics import reference


def small_model(seed):
    """A functional model ``[n, 6, 6, 3] -> ...`` with three dense taps ``a``, ``b``, ``c``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    flat = keras.layers.Flatten(name="flat")(inputs)
    a = keras.layers.Dense(7, activation="tanh", name="a")(flat)
    b = keras.layers.Dense(5, activation="relu", name="b")(a)
    c = keras.layers.Dense(3, name="c")(b)
    return keras.Model(inputs, c)


def image_batches(num_batches, batch_size, seed=0):
    images = np.random.default_rng(seed).uniform(-1, 1, size=(num_batches * batch_size, 6, 6, 3)).astype(np.float32)
    return images, tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


def reference_terms(features_x, features_y):
    """[Lx, Ly] cross, [Lx], [Ly] self HSIC_1 of one batch, NumPy float64."""
    grams_x = [reference.gram_linear(f.astype(np.float64)) for f in features_x]
    grams_y = [reference.gram_linear(f.astype(np.float64)) for f in features_y]
    cross = np.array([[reference.hsic(k, l, unbiased=True) for l in grams_y] for k in grams_x])
    return (cross, np.array([reference.hsic(k, k, unbiased=True) for k in grams_x]),
            np.array([reference.hsic(l, l, unbiased=True) for l in grams_y]))


def test_within_model_batch_terms_match_the_reference_and_sum_to_the_result():
    model = small_model(0)
    images, dataset = image_batches(3, 8)
    metric, names_x, names_y, terms = representations.accumulate_cka(
        model, dataset, ["a", "b", "c"], progress=False, return_batch_terms=True)
    assert names_x == names_y == ["a", "b", "c"]
    assert terms["cross"].shape == (3, 3, 3) and terms["self_x"].shape == terms["self_y"].shape == (3, 3)
    for b in range(3):
        features = list(representations.extract(model, images[8 * b:8 * b + 8], names_x).values())
        cross, self_x, self_y = reference_terms(features, features)
        np.testing.assert_allclose(terms["cross"][b], cross, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(terms["self_x"][b], self_x, rtol=1e-5)
        np.testing.assert_allclose(terms["self_y"][b], self_y, rtol=1e-5)
    summed = terms["cross"].sum(0) / np.sqrt(terms["self_x"].sum(0)[:, None] * terms["self_y"].sum(0)[None, :])
    np.testing.assert_allclose(summed, metric.result().numpy(), rtol=1e-12)


def test_cross_model_batch_terms_sum_to_the_metric_state_across_calls():
    model_x, model_y = small_model(1), small_model(2)
    images, dataset = image_batches(4, 6, seed=3)
    first = dataset.take(2)
    metric, _, _, terms_1 = representations.accumulate_cka(model_x, first, ["a", "b"], model_y, ["c"],
                                                           progress=False, return_batch_terms=True)
    # Accumulating into the same metric: the terms are this call's share only.
    metric, _, _, terms_2 = representations.accumulate_cka(model_x, dataset.skip(2), ["a", "b"], model_y, ["c"],
                                                           metric=metric, progress=False, return_batch_terms=True)
    assert terms_2["cross"].shape == (2, 2, 1) and terms_2["self_y"].shape == (2, 1)
    cross = np.concatenate([terms_1["cross"], terms_2["cross"]])
    self_x = np.concatenate([terms_1["self_x"], terms_2["self_x"]])
    self_y = np.concatenate([terms_1["self_y"], terms_2["self_y"]])
    np.testing.assert_allclose(cross.sum(0), metric.cross_hsic.numpy(), rtol=1e-12)
    np.testing.assert_allclose(self_x.sum(0), metric.self_hsic_x.numpy(), rtol=1e-12)
    np.testing.assert_allclose(self_y.sum(0), metric.self_hsic_y.numpy(), rtol=1e-12)
    features_x = list(representations.extract(model_x, images[18:24], ["a", "b"]).values())
    features_y = list(representations.extract(model_y, images[18:24], ["c"]).values())
    expected = reference_terms(features_x, features_y)
    for got, want in zip((terms_2["cross"][1], terms_2["self_x"][1], terms_2["self_y"][1]), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_without_the_flag_the_return_value_is_unchanged():
    _, dataset = image_batches(1, 5)
    result = representations.accumulate_cka(small_model(0), dataset, ["a", "b"], progress=False)
    assert len(result) == 3
