"""layer_names / extract on our models and on plain Keras models; streaming a dataset into MinibatchCKA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_forward
from vitcnn_tf import representations
from vitcnn_tf.metrics import reference
from vitcnn_tf.models import Mixer, MixerConfig, ViT, ViTConfig

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def vit():
    keras.utils.set_random_seed(0)
    model = ViT(ViTConfig(patch_size=4, hidden_size=16, mlp_dim=24, num_heads=2, num_layers=2,
                          image_size=IMAGE_SIZE, num_classes=5))
    head = model.get_layer("head")  # the release initialises the head to zero; make the logits informative
    head.kernel.assign(np.random.default_rng(0).normal(size=head.kernel.shape))
    return model


@pytest.fixture(scope="module")
def mixer():
    keras.utils.set_random_seed(1)
    return Mixer(MixerConfig(patch_size=4, hidden_dim=12, num_blocks=2, tokens_mlp_dim=6, channels_mlp_dim=20,
                             image_size=IMAGE_SIZE, num_classes=5))


def random_images(n, seed=0):
    return numpy_forward.random_images(n, IMAGE_SIZE, seed)


# --- our models -------------------------------------------------------------------------------------------------


def test_layer_names_are_the_taps_in_forward_order(vit):
    names = representations.layer_names(vit)
    assert names == list(vit.taps)
    assert names[:4] == ["embedding", "block00/ln1", "block00/attn", "block00/attn_heads"]
    assert names[-3:] == ["encoder_norm", "pre_logits", "logits"]


def test_extract_selected_taps_in_the_given_order(vit):
    images = random_images(3)
    out = representations.extract(vit, images, ["logits", "block01/attn", "block00/mlp_hidden"])
    assert list(out) == ["logits", "block01/attn", "block00/mlp_hidden"]
    assert out["block01/attn"].shape == (3, 2, 17, 17) and out["block00/mlp_hidden"].shape == (3, 17, 24)
    np.testing.assert_allclose(out["logits"], np.asarray(vit(images)), atol=1e-6)
    everything = representations.extract(vit, images)
    assert list(everything) == list(vit.taps)
    np.testing.assert_allclose(everything["block01/attn"], out["block01/attn"], atol=1e-6)


def test_tap_shapes_are_those_of_the_extracted_values(vit):
    names = ["logits", "block01/attn", "block00/mlp_hidden", "embedding"]
    shapes = representations.tap_shapes(vit, names)
    assert list(shapes) == names
    assert shapes == {name: value.shape[1:] for name, value in representations.extract(vit, random_images(2),
                                                                                        names).items()}
    assert list(representations.tap_shapes(vit)) == list(vit.taps)


def test_extract_by_regex_and_by_exact_name(vit):
    images = random_images(2)
    assert list(representations.extract(vit, images, r"block\d+/\+mlp")) == ["block00/+mlp", "block01/+mlp"]
    assert list(representations.extract(vit, images, r"block01/(ln1|ln2)")) == ["block01/ln1", "block01/ln2"]
    # "+" makes "block01/+sa" a different regular expression: an exact tap name is taken literally.
    assert list(representations.extract(vit, images, "block01/+sa")) == ["block01/+sa"]


def test_unknown_tap_names_suggest_close_matches(vit):
    with pytest.raises(ValueError, match=r"'block00/atn': close matches \['block00/attn'"):
        representations.extract(vit, random_images(2), ["block00/atn"])
    with pytest.raises(ValueError, match="matches no tap"):
        representations.extract(vit, random_images(2), r"block9\d/attn")
    with pytest.raises(TypeError, match="layers must be None, a string or a list"):
        representations.extract(vit, random_images(2), 3)


def test_images_of_the_wrong_shape_are_refused(vit):
    expected = r"images must have shape \[n, 16, 16, 3\] for model 'vit', got \[2, 8, 8, 3\]"
    with pytest.raises(ValueError, match=expected):
        representations.extract(vit, np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        representations.extract(vit, np.zeros((2, 16, 16, 3), np.uint8))


def test_compiled_extraction_is_cached_per_model_and_selection(vit, mixer):
    names = ["block00/ln1", "logits"]
    first = representations._extractor(vit, names)
    assert representations._extractor(vit, names) is first
    assert representations._extractor(vit, ["logits"]) is not first
    assert representations._extractor(mixer, ["logits"]) is not representations._extractor(vit, ["logits"])


# --- any Keras model --------------------------------------------------------------------------------------------


def test_sequential_model_taps_match_numpy():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="relu", name="hidden"),
                              keras.layers.Dense(3, name="out")])
    assert representations.layer_names(model) == ["hidden", "out"]
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    # Sequential input is [n, 5], not an image: extract accepts any input matching the model's input shape.
    out = representations.extract(model, x)
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in model.get_weights())
    hidden = np.maximum(x @ w1 + b1, 0.0)
    np.testing.assert_allclose(out["hidden"], hidden, atol=1e-5)
    np.testing.assert_allclose(out["out"], hidden @ w2 + b2, atol=1e-5)


def test_functional_cnn_taps_match_numpy():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, outputs)
    assert representations.layer_names(model) == ["conv", "gap", "logits"]
    images = np.random.default_rng(1).uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
    out = representations.extract(model, images, r"conv|logits")
    assert list(out) == ["conv", "logits"]
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("conv").get_weights())
    padded = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(padded[:, i:i + 8, j:j + 8, :] @ kernel[i, j] for i in range(3) for j in range(3)) + bias
    np.testing.assert_allclose(out["conv"], np.maximum(conv, 0.0), atol=1e-5)
    dense_kernel, dense_bias = model.get_layer("logits").get_weights()
    np.testing.assert_allclose(out["logits"], np.maximum(conv, 0).mean(axis=(1, 2)) @ dense_kernel + dense_bias,
                               atol=1e-5)


def test_unbuilt_sequential_model_is_refused():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="has no symbolic inputs"):
        representations.layer_names(model)


# --- streaming CKA ----------------------------------------------------------------------------------------------


def batches_of(images, batch_size, labels=False):
    ds = tf.data.Dataset.from_tensor_slices(images)
    if labels:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.range(len(images))))
    return ds.batch(batch_size)


def extracted_batches(model, images, batch_size, layers):
    return [list(representations.extract(model, images[start:start + batch_size], layers).values())
            for start in range(0, len(images), batch_size)]


def test_streaming_cka_within_one_model_equals_the_reference(vit):
    images = random_images(20, seed=4)  # batches of 8, 8 and 4
    layers = ["embedding", "block00/attn", "block00/+mlp", "block01/mlp_hidden", "pre_logits", "logits"]
    metric, names_x, names_y = representations.accumulate_cka(vit, batches_of(images, 8, labels=True), layers,
                                                              progress=False)
    assert names_x == names_y == layers
    expected = reference.minibatch_cka(extracted_batches(vit, images, 8, layers))
    np.testing.assert_allclose(np.asarray(metric.result()), expected, atol=1e-5)
    assert float(np.asarray(metric.num_batches)) == 3


def test_streaming_cka_across_two_models_equals_the_reference(vit, mixer):
    images = random_images(16, seed=5)
    metric, names_x, names_y = representations.accumulate_cka(vit, batches_of(images, 8), r"block\d+/\+mlp",
                                                              model_y=mixer, layers_y=r"block\d+/\+channel_mixing",
                                                              progress=False)
    assert names_x == ["block00/+mlp", "block01/+mlp"]
    assert names_y == ["block00/+channel_mixing", "block01/+channel_mixing"]
    expected = reference.minibatch_cka(extracted_batches(vit, images, 8, names_x),
                                       extracted_batches(mixer, images, 8, names_y))
    result = np.asarray(metric.result())
    assert result.shape == (2, 2)
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_streaming_cka_between_layer_sets_of_one_model_and_continued_accumulation(vit):
    images = random_images(16, seed=6)
    layers_x, layers_y = ["block00/ln1", "block01/+sa"], ["block01/+sa", "logits", "pre_logits"]
    metric, _, _ = representations.accumulate_cka(vit, batches_of(images[:8], 8), layers_x, layers_y=layers_y,
                                                  progress=False)
    representations.accumulate_cka(vit, batches_of(images[8:], 8), layers_x, layers_y=layers_y, metric=metric,
                                   progress=False)
    expected = reference.minibatch_cka(extracted_batches(vit, images, 8, layers_x),
                                       extracted_batches(vit, images, 8, layers_y))
    np.testing.assert_allclose(np.asarray(metric.result()), expected, atol=1e-5)
    with pytest.raises(ValueError, match="metric has num_layers_x=2, num_layers_y=3"):
        representations.accumulate_cka(vit, batches_of(images, 8), layers_x, metric=metric, progress=False)
