"""BiT ResNetV2: presets, parameter counts, checkpoint layout, taps, serialization, and an independent NumPy forward."""

import keras
import numpy as np
import pytest

import helpers
from numpy_forward_resnet import (expected_release_shapes, group_norm, random_release_arrays, resnet_v2_forward,
                                  standardize_kernel)
from vitcnn_tf.models.resnet_v2 import ChannelSumGroupNormalization, ResNetV2, ResNetV2Config, StandardizedConv2D

# Reference counts with a 1000-class head (the BiT release); the CPU preset's count is the closed form below.
PAPER_PRESET_PARAMS = {"BiT-R50x1": 25_549_352, "BiT-R152x2": 236_335_208}
CPU_PRESETS = ("ResNetV2-CPU",)

BIT_STEM_CONFIG = ResNetV2Config(block_counts=(1, 2), width_factor=0.125, stem="bit", image_size=30,
                                 num_classes=5, num_groups=4)
SMALL_STEM_CONFIG = ResNetV2Config(block_counts=(1, 2, 1), width_factor=0.125, stem="small", image_size=15,
                                   num_classes=3, num_groups=4)


def closed_form_param_count(config):
    return sum(int(np.prod(shape)) for shape in expected_release_shapes(config).values())


def randomize(model, seed=0):
    """Assigns random release arrays to every checkpoint variable (GN affine and head included); returns them."""
    arrays = random_release_arrays(expected_release_shapes(model.config), seed)
    for key, variable in model.checkpoint_variables().items():
        variable.assign(arrays[key])
    return arrays


def images(config, n=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, config.image_size, config.image_size, 3)).astype("float32")


# ---------------------------------------------------------------- presets and configuration errors


@pytest.mark.parametrize("name", sorted(PAPER_PRESET_PARAMS) + list(CPU_PRESETS))
def test_preset_parameter_counts(name):
    config = ResNetV2Config.from_name(name, num_classes=1000)
    with helpers.deferred_variables():  # shapes without values: R152x2 allocates nothing
        model = ResNetV2(config)
    expected = PAPER_PRESET_PARAMS.get(name, closed_form_param_count(config))
    assert closed_form_param_count(config) == expected
    assert model.count_params() == expected
    assert {k: tuple(v.shape) for k, v in model.checkpoint_variables().items()} == expected_release_shapes(config)


def test_every_preset_is_covered():
    assert set(ResNetV2Config.preset_names()) == set(PAPER_PRESET_PARAMS) | set(CPU_PRESETS)


def test_preset_values():
    r50 = ResNetV2Config.from_name("BiT-R50x1")
    assert (r50.block_counts, r50.width_factor, r50.stem, r50.num_groups) == ((3, 4, 6, 3), 1, "bit", 32)
    r152 = ResNetV2Config.from_name("BiT-R152x2", num_classes=21843, image_size=384)
    assert (r152.block_counts, r152.width_factor, r152.num_classes, r152.image_size) == ((3, 8, 36, 3), 2, 21843, 384)
    assert r152.root_channels == 128 and r152.bottleneck_channels == (128, 256, 512, 1024)
    assert r152.output_channels == (512, 1024, 2048, 4096)
    cpu = ResNetV2Config.from_name("ResNetV2-CPU")
    assert (cpu.image_size, cpu.num_classes, cpu.stem) == (32, 10, "small")


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError, match="BiT-R50x1.*BiT-R152x2.*ResNetV2-CPU"):
        ResNetV2Config.from_name("BiT-R18x1")


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(width_factor=0.3), "width_factor=0.3.*non-integer root width"),
        (dict(width_factor=0.25, num_groups=32), "num_groups=32.*root width is 16"),
        (dict(width_factor=1.5, num_groups=64), "num_groups=64.*root width is 96"),
        (dict(width_factor=0), "width_factor must be a positive number"),
        (dict(stem="resnet"), "stem must be one of"),
        (dict(block_counts=()), "block_counts"),
        (dict(block_counts=(3, 0)), "block_counts"),
        (dict(image_size=0), "image_size"),
        (dict(num_classes=2.5), "num_classes"),
    ],
)
def test_invalid_config_is_rejected_with_the_field_named(fields, match):
    with pytest.raises(ValueError, match=match):
        ResNetV2Config(**fields)


def test_unknown_override_is_rejected():
    with pytest.raises(TypeError, match="unknown config fields.*depth"):
        ResNetV2Config.from_name("BiT-R50x1", depth=50)


def test_block_counts_from_a_list_become_a_tuple():
    assert ResNetV2Config(block_counts=[1, 1], width_factor=0.125, num_groups=8).block_counts == (1, 1)


def test_model_rejects_a_foreign_config():
    with pytest.raises(TypeError, match="ResNetV2Config"):
        ResNetV2("BiT-R50x1")


# ---------------------------------------------------------------- weight standardization


def test_weight_standardization_has_zero_mean_unit_variance_per_output_channel():
    layer = StandardizedConv2D(5, 3, padding="valid", use_bias=False)
    layer.build((None, 6, 6, 4))
    rng = np.random.default_rng(0)
    raw = rng.normal(2.0, 3.0, (3, 3, 4, 5)).astype("float32")
    layer.kernel.assign(raw)
    standardized = keras.ops.convert_to_numpy(layer.standardized_kernel())
    np.testing.assert_allclose(standardized.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardized.var(axis=(0, 1, 2)), 1.0, atol=1e-4)
    np.testing.assert_allclose(standardized, standardize_kernel(raw), atol=1e-5)
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    plain = keras.layers.Conv2D(5, 3, padding="valid", use_bias=False)
    plain.build((None, 6, 6, 4))
    plain.kernel.assign(standardize_kernel(raw).astype("float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(plain(x)),
                               atol=1e-4)


def test_standardized_conv_config_round_trip():
    layer = StandardizedConv2D(7, 3, strides=2, epsilon=1e-8, use_bias=False, name="c")
    clone = StandardizedConv2D.from_config(layer.get_config())
    assert (clone.filters, clone.kernel_size, clone.strides, clone.epsilon) == (7, (3, 3), (2, 2), 1e-8)


# ---------------------------------------------------------------- group normalisation


@pytest.mark.parametrize("offset", [0.0, 50.0], ids=["centred", "large-mean"])
def test_channel_sum_group_norm_is_keras_group_norm_and_the_float64_closed_form(offset):
    rng = np.random.default_rng(4)
    x = (offset + rng.normal(size=(3, 5, 6, 8))).astype("float32")
    gamma, beta = rng.normal(size=8).astype("float32"), rng.normal(size=8).astype("float32")
    ours = ChannelSumGroupNormalization(groups=4, epsilon=1e-5)
    theirs = keras.layers.GroupNormalization(groups=4, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    found = keras.ops.convert_to_numpy(ours(x))
    np.testing.assert_allclose(found, group_norm(x.astype(np.float64), gamma, beta, 4), atol=2e-5)
    np.testing.assert_allclose(found, keras.ops.convert_to_numpy(theirs(x)), atol=1e-4)


def test_channel_sum_group_norm_keeps_keras_weights_and_config():
    layer = ChannelSumGroupNormalization(groups=2, epsilon=1e-3, name="norm")
    layer.build((None, 4, 4, 6))
    assert [tuple(weight.shape) for weight in layer.weights] == [(6,), (6,)]
    clone = ChannelSumGroupNormalization.from_config(layer.get_config())
    assert (clone.groups, clone.epsilon, clone.name) == (2, 1e-3, "norm")
    tokens = np.random.default_rng(5).normal(size=(2, 7, 6)).astype("float32")  # rank 3: Keras' computation
    reference = keras.layers.GroupNormalization(groups=2, epsilon=1e-3)
    reference.build(tokens.shape)
    layer_3d = ChannelSumGroupNormalization(groups=2, epsilon=1e-3)
    layer_3d.build(tokens.shape)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer_3d(tokens)),
                               keras.ops.convert_to_numpy(reference(tokens)), atol=1e-6)


# ---------------------------------------------------------------- checkpoint layout and taps


@pytest.mark.parametrize("config", [BIT_STEM_CONFIG, SMALL_STEM_CONFIG], ids=["bit", "small"])
def test_checkpoint_variables_cover_every_trainable_variable_once(config):
    model = ResNetV2(config)
    variables = model.checkpoint_variables()
    assert {k: tuple(v.shape) for k, v in variables.items()} == expected_release_shapes(config)
    ids = [id(v) for v in variables.values()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(v) for v in model.trainable_variables}
    assert len(model.trainable_variables) == len(model.weights)
    assert set(model.checkpoint_head_keys) == {"resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"}
    array = np.ones((2, 3))
    assert model.adapt_checkpoint_array("resnet/group_norm/gamma", array) is array


def test_head_is_zero_initialised_as_in_bit():
    model = ResNetV2(SMALL_STEM_CONFIG)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images(SMALL_STEM_CONFIG))), 0.0)


def test_tap_names_are_in_forward_order():
    model = ResNetV2(BIT_STEM_CONFIG)
    unit_taps = ("preact", "skip", "conv1", "conv2", "branch", "+res")
    expected = ["root/conv", "root/pool"]
    for unit in ("block1/unit01", "block2/unit01", "block2/unit02"):
        expected += [f"{unit}/{tap}" for tap in unit_taps]
    expected += ["pre_head_norm", "pre_logits", "logits"]
    assert list(model.taps) == expected
    assert list(ResNetV2(SMALL_STEM_CONFIG).taps)[:2] == ["root/conv", "block1/unit01/preact"]
    assert model.residual_taps == [(f"{unit}/skip", f"{unit}/branch", f"{unit}/+res")
                                   for unit in ("block1/unit01", "block2/unit01", "block2/unit02")]


def test_tap_shapes():
    taps = ResNetV2(BIT_STEM_CONFIG).taps  # 30 -> conv 15 -> pool 8 -> block2 4; widths 8, (8, 32), (16, 64)
    shapes = {name: tuple(tensor.shape[1:]) for name, tensor in taps.items()}
    assert shapes["root/conv"] == (15, 15, 8)
    assert shapes["root/pool"] == (8, 8, 8)
    assert shapes["block1/unit01/preact"] == (8, 8, 8)
    assert shapes["block1/unit01/skip"] == (8, 8, 32)
    assert shapes["block2/unit01/conv1"] == (8, 8, 16)
    assert shapes["block2/unit01/conv2"] == (4, 4, 16)
    assert shapes["block2/unit01/+res"] == (4, 4, 64)
    assert shapes["pre_logits"] == (64,)
    assert shapes["logits"] == (5,)


# ---------------------------------------------------------------- independent NumPy forward


@pytest.mark.parametrize("config", [BIT_STEM_CONFIG, SMALL_STEM_CONFIG], ids=["bit", "small"])
def test_matches_independent_numpy_forward(config):
    model = ResNetV2(config)
    arrays = randomize(model)
    x = images(config)
    reference = resnet_v2_forward(arrays, x, stem=config.stem, num_groups=config.num_groups)
    assert list(reference) == list(model.taps)
    keras_taps = keras.Model(model.input, list(model.taps.values()))(x)
    for name, value in zip(model.taps, keras_taps):
        value = keras.ops.convert_to_numpy(value)
        assert value.shape == reference[name].shape, name
        np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-4, err_msg=name)
    logits = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(logits, reference["logits"], rtol=1e-4, atol=1e-4)
    assert np.abs(reference["logits"]).max() > 0.1  # the comparison is not between zeros
    identity = reference["block2/unit02/skip"]
    np.testing.assert_array_equal(identity, reference["block2/unit01/+res"])


# ---------------------------------------------------------------- serialization


def test_get_config_from_config_round_trip():
    model = ResNetV2(SMALL_STEM_CONFIG)
    randomize(model)
    config = model.get_config()
    assert config["config"] == dict(block_counts=(1, 2, 1), width_factor=0.125, stem="small", image_size=15,
                                    num_classes=3, num_groups=4)
    clone = ResNetV2.from_config(config)
    assert clone.name == model.name
    assert clone.config == model.config and list(clone.taps) == list(model.taps)
    clone.set_weights(model.get_weights())
    x = images(SMALL_STEM_CONFIG)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(model(x)))


def test_keras_file_round_trip(tmp_path):
    model = ResNetV2(BIT_STEM_CONFIG)
    randomize(model)
    loaded = helpers.assert_saving_round_trip(model, tmp_path, images(BIT_STEM_CONFIG))
    for key, variable in loaded.checkpoint_variables().items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable),
                                      keras.ops.convert_to_numpy(model.checkpoint_variables()[key]), err_msg=key)
