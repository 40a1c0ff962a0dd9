"""MLP-Mixer: configs and presets, exact parameter counts, taps, NumPy float64 forward, serialization."""

import keras
import numpy as np
import pytest

import helpers
import numpy_forward
from vitcnn_tf.models import Mixer, MixerConfig
from vitcnn_tf.models.mixer import MIXER_PRESETS

# Parameter counts with 1000 classes. Paper presets: the vit_jax release's models_test.py. CPU preset, by hand:
# stem 4*4*3*64 + 64, 6 blocks * (2 LayerNorms 4*64 + token MLP 64*32 + 32 + 32*64 + 64
# + channel MLP 64*256 + 256 + 256*64 + 64), pre-head norm 2*64, head 64*1000 + 1000.
MIXER_PARAMETER_COUNTS = {
    "Mixer-B/16": 59_880_472,
    "Mixer-B/32": 60_293_428,
    "Mixer-CPU/4": 3136 + 6 * (256 + 4192 + 33088) + 128 + 65000,
}

TINY = dict(patch_size=4, hidden_dim=12, num_blocks=2, tokens_mlp_dim=6, channels_mlp_dim=20, image_size=16,
            num_classes=5)


def tiny_config(**overrides):
    return MixerConfig(**{**TINY, **overrides})


def test_every_preset_has_a_parameter_count():
    assert set(MIXER_PRESETS) == set(MIXER_PARAMETER_COUNTS)


@pytest.mark.parametrize("name", sorted(MIXER_PARAMETER_COUNTS))
def test_parameter_count(name):
    count = helpers.parameter_count(lambda: Mixer(MixerConfig.from_name(name, num_classes=1000)))
    assert count == MIXER_PARAMETER_COUNTS[name]


def test_checkpoint_keys_and_shapes_are_the_release_ones():
    model = Mixer(tiny_config())
    shapes = {key: tuple(v.shape) for key, v in model.checkpoint_variables().items()}
    assert shapes["stem/kernel"] == (4, 4, 3, 12) and shapes["stem/bias"] == (12,)
    assert shapes["MixerBlock_1/LayerNorm_0/scale"] == (12,)
    assert shapes["MixerBlock_1/token_mixing/Dense_0/kernel"] == (16, 6)
    assert shapes["MixerBlock_1/token_mixing/Dense_1/bias"] == (16,)
    assert shapes["MixerBlock_0/channel_mixing/Dense_0/kernel"] == (12, 20)
    assert shapes["MixerBlock_0/channel_mixing/Dense_1/bias"] == (12,)
    assert shapes["pre_head_layer_norm/scale"] == (12,)
    assert shapes["head/kernel"] == (12, 5)
    assert len(shapes) == 2 + 2 * (4 + 8) + 2 + 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=18), "image_size=18 is not divisible by patch_size=4"),
        (dict(tokens_mlp_dim=0), "tokens_mlp_dim must be a positive integer"),
        (dict(num_classes=2.5), "num_classes must be a positive integer"),
    ],
)
def test_invalid_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'Mixer-L/16'.*'Mixer-B/16'.*'Mixer-CPU/4'"):
        MixerConfig.from_name("Mixer-L/16")


def test_tap_names_and_shapes():
    model = Mixer(tiny_config())
    block = ["ln1", "token_mixing_hidden", "token_mixing", "+token_mixing", "ln2", "channel_mixing_hidden",
             "channel_mixing", "+channel_mixing"]
    expected = ["stem"] + [f"block{b:02d}/{t}" for b in range(2) for t in block]
    assert list(model.taps) == expected + ["encoder_norm", "pre_logits", "logits"]
    shapes = {name: tuple(tensor.shape[1:]) for name, tensor in model.taps.items()}
    assert shapes["stem"] == (16, 12)
    assert shapes["block00/token_mixing_hidden"] == (12, 6)
    assert shapes["block00/token_mixing"] == (16, 12)
    assert shapes["block01/channel_mixing_hidden"] == (16, 20)
    assert shapes["pre_logits"] == (12,) and shapes["logits"] == (5,)
    assert model.residual_taps[:3] == [
        ("stem", "block00/token_mixing", "block00/+token_mixing"),
        ("block00/+token_mixing", "block00/channel_mixing", "block00/+channel_mixing"),
        ("block00/+channel_mixing", "block01/token_mixing", "block01/+token_mixing"),
    ]


def test_matches_numpy_forward(tmp_path):
    config = tiny_config()
    model = Mixer(config)
    params = numpy_forward.load_random_checkpoint(model, tmp_path)
    images = numpy_forward.random_images(4, config.image_size)
    expected = numpy_forward.mixer_forward(params, images)
    actual = keras.Model(model.inputs[0], model.taps)(images)
    assert list(actual) == list(expected)
    for name in expected:
        np.testing.assert_allclose(np.asarray(actual[name]), expected[name], atol=1e-4, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(np.asarray(model(images)), expected["logits"], atol=1e-4, rtol=1e-4)


def test_keras_file_and_config_round_trips(tmp_path):
    model = Mixer(tiny_config())
    numpy_forward.load_random_checkpoint(model, tmp_path)
    images = numpy_forward.random_images(2, 16)
    clone = Mixer.from_config(model.get_config())
    assert clone.config == model.config
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(images)), np.asarray(model(images)))
    helpers.assert_saving_round_trip(model, tmp_path, images)
