"""ViT: configs and presets, exact parameter counts, taps, skip removal, NumPy float64 forward, serialization."""

import keras
import numpy as np
import pytest

import helpers
import numpy_forward
from vitcnn_tf.models import ViT, ViTConfig
from vitcnn_tf.models.vit import VIT_PRESETS

# Parameter counts with 1000 classes. Paper presets: the vit_jax release's models_test.py. CPU preset, by hand:
# embedding 4*4*3*64 + 64, cls 64, posemb 65*64, 6 blocks * (2 LayerNorms 4*64 + attention 4*(64*64 + 64)
# + MLP 64*128 + 128 + 128*64 + 64), encoder norm 2*64, head 64*1000 + 1000.
VIT_PARAMETER_COUNTS = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-B/32": 88_224_232,
    "ViT-B/16": 86_567_656,
    "ViT-L/16": 304_326_632,
    "ViT-H/14": 632_045_800,
    "ViT-CPU/4": 3136 + 64 + 4160 + 6 * (256 + 16640 + 16576) + 128 + 65000,
}
# vit_jax's "-gap-norep" variants (classifier="gap": no CLS token, one position embedding fewer).
VIT_GAP_PARAMETER_COUNTS = {"ViT-S/16": 22_049_896, "ViT-B/16": 86_566_120, "ViT-B/32": 88_222_696}

def tiny_config(**overrides):
    return ViTConfig(**{**helpers.TINY_VIT, **overrides})


def all_taps(model, images):
    outputs = keras.Model(model.inputs[0], model.taps)(images)
    return {name: np.asarray(value) for name, value in outputs.items()}


def parameter_count(config):
    return helpers.parameter_count(lambda: ViT(config))


# --- presets and parameter counts -------------------------------------------------------------------------------


def test_every_preset_has_a_parameter_count():
    assert set(VIT_PRESETS) == set(VIT_PARAMETER_COUNTS)


@pytest.mark.parametrize("name", sorted(VIT_PARAMETER_COUNTS))
def test_parameter_count(name):
    assert parameter_count(ViTConfig.from_name(name, num_classes=1000)) == VIT_PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", sorted(VIT_GAP_PARAMETER_COUNTS))
def test_gap_parameter_count(name):
    config = ViTConfig.from_name(name, classifier="gap")
    assert parameter_count(config) == VIT_GAP_PARAMETER_COUNTS[name]


def test_vit_jax_testing_config_parameter_count():
    # vit_jax's "testing" config: 21,390 parameters with 1000 classes.
    config = ViTConfig(patch_size=16, hidden_size=10, mlp_dim=10, num_heads=2, num_layers=1)
    assert parameter_count(config) == 21_390


def test_representation_size_adds_a_pre_logits_layer():
    base = ViTConfig.from_name("ViT-B/16")
    with_rep = ViTConfig.from_name("ViT-B/16", representation_size=512)
    # pre_logits 768*512 + 512; head input shrinks from 768 to 512.
    assert parameter_count(with_rep) - parameter_count(base) == 768 * 512 + 512 + (512 - 768) * 1000


def test_presets_match_vit_jax_configs():
    b16 = ViTConfig.from_name("ViT-B/16")
    assert (b16.patch_size, b16.hidden_size, b16.mlp_dim, b16.num_heads, b16.num_layers) == (16, 768, 3072, 12, 12)
    assert (b16.image_size, b16.num_classes, b16.classifier, b16.representation_size) == (224, 1000, "token", None)
    h14 = ViTConfig.from_name("ViT-H/14")
    assert (h14.patch_size, h14.hidden_size, h14.num_layers, h14.num_tokens) == (14, 1280, 32, 257)
    cpu = ViTConfig.from_name("ViT-CPU/4")
    assert (cpu.image_size, cpu.num_classes, cpu.num_tokens) == (32, 10, 65)


def test_from_name_overrides():
    config = ViTConfig.from_name("ViT-CPU/4", classifier="gap", skip_blocks_removed=[3, 1])
    assert config.classifier == "gap" and config.skip_blocks_removed == (1, 3) and config.num_tokens == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=18), "image_size=18 is not divisible by patch_size=4"),
        (dict(hidden_size=15), "hidden_size=15 is not divisible by num_heads=2"),
        (dict(classifier="cls"), "classifier must be one of"),
        (dict(skip_blocks_removed=(3,)), r"invalid block indices \[3\]; blocks are numbered 0..2"),
        (dict(skip_blocks_removed=(-1,)), r"invalid block indices \[-1\]"),
        (dict(num_layers=0), "num_layers must be a positive integer"),
        (dict(representation_size=0), "representation_size must be a positive integer"),
        (dict(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\)"),
    ],
)
def test_invalid_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_skip_blocks_removed_must_be_a_sequence():
    with pytest.raises(TypeError, match=r"write \(1,\)"):
        tiny_config(skip_blocks_removed=1)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'ViT-B/8'.*'ViT-Ti/16'.*'ViT-CPU/4'"):
        ViTConfig.from_name("ViT-B/8")


def test_unknown_override_field():
    with pytest.raises(TypeError, match=r"unknown config fields \['hidden_dim'\]"):
        ViTConfig.from_name("ViT-CPU/4", hidden_dim=32)


# --- taps -------------------------------------------------------------------------------------------------------


def test_tap_names_and_shapes():
    config = tiny_config(representation_size=12)
    model = ViT(config)
    block = ["ln1", "attn", "attn_heads", "sa", "+sa", "ln2", "mlp_hidden", "mlp", "+mlp"]
    expected = ["embedding"] + [f"block{b:02d}/{t}" for b in range(3) for t in block]
    assert list(model.taps) == expected + ["encoder_norm", "pre_logits", "logits"]
    shapes = {name: tuple(tensor.shape[1:]) for name, tensor in model.taps.items()}
    assert shapes["embedding"] == (17, 16)
    assert shapes["block01/attn"] == (2, 17, 17)
    assert shapes["block01/attn_heads"] == (17, 2, 8)
    assert shapes["block02/mlp_hidden"] == (17, 24)
    assert shapes["pre_logits"] == (12,) and shapes["logits"] == (5,)
    assert model.taps["logits"] is model.outputs[0]


def test_residual_taps_skip_removed_blocks():
    model = ViT(tiny_config(skip_blocks_removed=(1,)))
    assert model.residual_taps == [
        ("embedding", "block00/sa", "block00/+sa"),
        ("block00/+sa", "block00/mlp", "block00/+mlp"),
        ("block01/+mlp", "block02/sa", "block02/+sa"),
        ("block02/+sa", "block02/mlp", "block02/+mlp"),
    ]


# --- NumPy float64 reference forward pass -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(classifier="gap", representation_size=12), dict(skip_blocks_removed=(1,))],
    ids=["token", "gap-representation", "skip-removed"],
)
def test_matches_numpy_forward(overrides, tmp_path):
    config = tiny_config(**overrides)
    model = ViT(config)
    params = numpy_forward.load_random_checkpoint(model, tmp_path)
    images = numpy_forward.random_images(4, config.image_size)
    expected = numpy_forward.vit_forward(params, images, config.classifier, config.skip_blocks_removed)
    actual = all_taps(model, images)
    assert list(actual) == list(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-4, rtol=1e-4, err_msg=name)
    # The attention probabilities are distributions over keys and not uniform (a meaningful comparison).
    np.testing.assert_allclose(actual["block00/attn"].sum(-1), 1.0, atol=1e-5)
    assert actual["block00/attn"].std() > 1e-2
    np.testing.assert_allclose(np.asarray(model(images)), expected["logits"], atol=1e-4, rtol=1e-4)


def test_skip_removal_changes_exactly_the_named_block(tmp_path):
    removed = 1
    normal, no_skip = ViT(tiny_config()), ViT(tiny_config(skip_blocks_removed=(removed,)))
    numpy_forward.load_random_checkpoint(normal, tmp_path)
    numpy_forward.load_random_checkpoint(no_skip, tmp_path)
    images = numpy_forward.random_images(3, 16)
    taps_normal, taps_no_skip = all_taps(normal, images), all_taps(no_skip, images)
    names = list(taps_normal)
    first_changed = names.index(f"block{removed:02d}/+sa")
    for name in names[:first_changed]:
        np.testing.assert_array_equal(taps_no_skip[name], taps_normal[name], err_msg=name)
    for name in names[first_changed:]:
        assert np.abs(taps_no_skip[name] - taps_normal[name]).max() > 1e-3, name
    # Without skips the block's sums are its branches alone.
    np.testing.assert_array_equal(taps_no_skip["block01/+sa"], taps_no_skip["block01/sa"])
    np.testing.assert_array_equal(taps_no_skip["block01/+mlp"], taps_no_skip["block01/mlp"])


def test_mlp_uses_exact_gelu_and_layer_norm_epsilon_1e6():
    model = ViT(tiny_config())
    layer_norm = model.get_layer("block00_ln1")
    assert layer_norm.epsilon == 1e-6
    dense = model.get_layer("block00_mlp_dense0")
    x = np.linspace(-3, 3, 7).astype(np.float32)
    np.testing.assert_allclose(np.asarray(dense.activation(x)), numpy_forward.gelu(x.astype(np.float64)),
                               atol=1e-6)


# --- serialization ----------------------------------------------------------------------------------------------


def test_get_config_from_config_round_trip(tmp_path):
    model = ViT(tiny_config(classifier="gap", skip_blocks_removed=(0, 2)))
    numpy_forward.load_random_checkpoint(model, tmp_path)
    clone = ViT.from_config(model.get_config())
    assert clone.config == model.config
    assert list(clone.taps) == list(model.taps)
    clone.set_weights(model.get_weights())
    images = numpy_forward.random_images(2, 16)
    np.testing.assert_array_equal(np.asarray(clone(images)), np.asarray(model(images)))


def test_keras_file_round_trip(tmp_path):
    model = ViT(tiny_config(representation_size=8, skip_blocks_removed=(1,), dropout_rate=0.1))
    numpy_forward.load_random_checkpoint(model, tmp_path)
    helpers.assert_saving_round_trip(model, tmp_path, numpy_forward.random_images(2, 16))


def test_config_must_be_a_vit_config():
    with pytest.raises(TypeError, match="ViT: config must be a ViTConfig"):
        ViT("ViT-B/16")
