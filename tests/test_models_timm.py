"""timm ``.safetensors`` weights in our models: logits and taps against timm's own forward (fixtures written by
``tests/make_timm_fixtures.py`` with timm; no torch needed here), the position-embedding resampling, the table
against each family's release layout, the Section 7 localization on a timm GAP ViT, and every error."""

import json
import pathlib
import struct

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

from vitcnn_tf.analysis import localization as localization_lib
from vitcnn_tf.models import Mixer, MixerConfig, ResNetV2, ResNetV2Config, ViT, ViTConfig, get_model, load_timm
from vitcnn_tf.models import timm as timm_lib
from vitcnn_tf.models.vit import resample_position_embedding
from vitcnn_tf.paper import localization

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "timm"
TOLERANCE = 1e-4  # absolute, plus relative for the large activations of weight-standardised convs

# Our configs of the fixture models (their timm arguments are in make_timm_fixtures.py).
VIT_CLS = ViTConfig(patch_size=8, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2, image_size=32, num_classes=5)
CONFIGS = {
    "vit_cls": VIT_CLS,
    "vit_cls_prelogits": ViTConfig(patch_size=4, hidden_size=24, mlp_dim=48, num_heads=3, num_layers=1, image_size=16,
                                   num_classes=5, representation_size=16),
    "vit_gap": ViTConfig(patch_size=8, hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2, image_size=32,
                         num_classes=5, classifier="gap"),
    "resnet_bit": ResNetV2Config(block_counts=(2, 1, 1), width_factor=0.125, stem="bit", image_size=32, num_classes=5,
                                 num_groups=4),
    "mixer": MixerConfig(patch_size=8, hidden_dim=32, num_blocks=2, tokens_mlp_dim=16, channels_mlp_dim=64,
                         image_size=32, num_classes=5),
}
MODEL_CLASSES = {ViTConfig: ViT, ResNetV2Config: ResNetV2, MixerConfig: Mixer}


def build(name, **overrides):
    config = CONFIGS[name]
    return MODEL_CLASSES[type(config)](type(config)(**{**config.__dict__, **overrides}))


def fixture(name):
    return str(FIXTURES / f"{name}.safetensors")


def rewritten(tmp_path, name, change):
    """A copy of fixture ``name`` in ``tmp_path`` with its arrays dict passed through ``change``."""
    arrays = change(load_file(fixture(name)))
    path = tmp_path / f"{name}.safetensors"
    save_file(arrays, str(path))
    return str(path)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_taps_match_timm(name):
    model = load_timm(build(name), fixture(name))
    expected = dict(np.load(FIXTURES / f"{name}.npz"))
    images = expected.pop("images")
    assert set(expected) <= set(model.taps) and len(expected) >= 6
    outputs = keras.Model(model.inputs[0], {tap: model.taps[tap] for tap in expected})(images)
    for tap, value in expected.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs[tap]), value, rtol=TOLERANCE, atol=TOLERANCE,
                                   err_msg=f"{name}: {tap}")
    assert np.abs(expected["logits"]).max() > 0.1  # the head is not degenerate


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_table_covers_the_release_layout_once(name):
    model = build(name)
    targets = [target for row in timm_lib.timm_layout(model) for target in row.targets]
    assert sorted(targets) == sorted(model.checkpoint_variables())
    assert set(load_file(fixture(name))) == {row.key for row in timm_lib.timm_layout(model)}
    assert timm_lib.check_timm(model, fixture(name)) == []


def test_qkv_split_against_a_hand_computation():
    arrays = load_file(fixture("vit_cls"))
    model = load_timm(build("vit_cls"), fixture("vit_cls"))
    variables = model.checkpoint_variables()
    qkv, proj = arrays["blocks.1.attn.qkv.weight"], arrays["blocks.1.attn.proj.weight"]  # [96, 32], [32, 32]
    prefix = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1"
    for index, part in enumerate(("query", "key", "value")):
        for head in range(2):  # rows of head h of part i: i * 32 + h * 16 ... + 16
            rows = qkv[index * 32 + head * 16: index * 32 + (head + 1) * 16]
            np.testing.assert_array_equal(variables[f"{prefix}/{part}/kernel"].numpy()[:, head, :], rows.T)
    np.testing.assert_array_equal(variables[f"{prefix}/out/kernel"].numpy()[1, 3, :], proj[:, 16 + 3])


def test_position_embedding_is_resampled_to_another_image_size():
    model = load_timm(build("vit_cls", image_size=48), fixture("vit_cls"))
    posemb = load_file(fixture("vit_cls"))["pos_embed"]  # [1, 1 + 4 * 4, 32]
    loaded = model.checkpoint_variables()["Transformer/posembed_input/pos_embedding"].numpy()
    assert loaded.shape == (1, 1 + 6 * 6, 32)
    np.testing.assert_array_equal(loaded, resample_position_embedding(posemb, 37, 1))
    np.testing.assert_array_equal(loaded[0, 1], posemb[0, 1])  # corner-aligned: the corners stay
    assert timm_lib.check_timm(build("vit_cls", image_size=48), fixture("vit_cls")) == []


def test_registry_and_specs_take_safetensors():
    model = get_model("ViT-CPU/4", fixture("vit_gap"), patch_size=8, hidden_size=32, mlp_dim=64, num_heads=4,
                      num_layers=2, num_classes=5, classifier="gap")
    reference = load_timm(build("vit_gap"), fixture("vit_gap"))
    images = np.load(FIXTURES / "vit_gap.npz")["images"]
    np.testing.assert_array_equal(model(images), reference(images))


def test_a_head_of_another_class_count_is_kept_fresh_with_a_warning():
    with pytest.warns(UserWarning, match=r"'head.weight': checkpoint \(5, 32\) vs model \(7, 32\)"):
        model = load_timm(build("vit_cls", num_classes=7), fixture("vit_cls"))
    assert not model.get_layer("head").kernel.numpy().any()  # zero-initialised head
    np.testing.assert_array_equal(model.get_layer("encoder_norm").gamma.numpy(),
                                  load_file(fixture("vit_cls"))["norm.weight"])


def test_a_file_without_a_head_keeps_the_fresh_head_with_a_warning(tmp_path):
    path = rewritten(tmp_path, "vit_gap", lambda arrays: {key: value for key, value in arrays.items()
                                                          if not key.startswith("head.")})
    with pytest.warns(UserWarning, match="has no classifier head \\(a timm model with num_classes=0\\)"):
        model = load_timm(build("vit_gap"), path)
    assert not model.get_layer("head").kernel.numpy().any()
    expected = np.load(FIXTURES / "vit_gap.npz")
    pre_logits = keras.Model(model.inputs[0], model.taps["pre_logits"])(expected["images"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pre_logits), expected["pre_logits"], rtol=TOLERANCE,
                               atol=TOLERANCE)
    assert timm_lib.check_timm(build("vit_gap"), path) == []


def test_timm_gap_vit_runs_the_section_7_localization():
    cls_vit = load_timm(build("vit_cls"), fixture("vit_cls"))
    gap_vit = load_timm(build("vit_gap"), fixture("vit_gap"))
    resnet = load_timm(build("resnet_bit"), fixture("resnet_bit"))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, (16, 32, 32, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((images, np.arange(16) % 4)).batch(8)
    result = localization.run(("cls", cls_vit), ("gap", gap_vit), ("res", resnet), data=data, bootstrap_resamples=2,
                              seed=0)
    tokens = keras.Model(gap_vit.inputs[0], gap_vit.taps["block01/+mlp"])(images)
    expected = localization_lib.token_patch_cka(keras.ops.convert_to_numpy(tokens), images, 8, num_prefix_tokens=0)
    np.testing.assert_allclose(result.arrays["token_patch_cka"]["gap/cka_map"], expected, rtol=1e-5, atol=1e-7)
    assert {item.key for item in result.findings} == {"cls_vit_tokens_localize", "gap_vit_localizes_less"}


# ---------------------------------------------------------------------------------------------------------
# Errors


def test_wrong_shape_names_the_file_the_key_and_both_shapes():
    with pytest.raises(ValueError) as error:
        load_timm(build("vit_cls", mlp_dim=48), fixture("vit_cls"))
    message = str(error.value)
    assert "vit_cls.safetensors does not fit the ViT 'vit' (patch_size=8" in message
    assert "'blocks.0.mlp.fc1.weight': checkpoint shape (64, 32), model expects (48, 32)" in message
    assert "'blocks.1.mlp.fc2.weight': checkpoint shape (32, 64), model expects (32, 48)" in message
    problems = timm_lib.check_timm(build("vit_cls", mlp_dim=48), fixture("vit_cls"))
    assert f"{fixture('vit_cls')}: key 'blocks.0.mlp.fc1.bias' has shape (64,), the model expects (48,)" in problems


def test_missing_and_unknown_keys_are_named(tmp_path):
    def change(arrays):
        del arrays["blocks.1.attn.qkv.bias"]
        arrays["blocks.1.attn.extra"] = np.zeros((3, 2), np.float32)
        return arrays

    path = rewritten(tmp_path, "vit_cls", change)
    with pytest.raises(ValueError, match=r"1 missing from the checkpoint:\n    'blocks.1.attn.qkv.bias' \(96,\)\n"
                                         r"  1 unexpected in the checkpoint:\n    'blocks.1.attn.extra' \(3, 2\)"):
        load_timm(build("vit_cls"), path)
    assert timm_lib.check_timm(build("vit_cls"), path) == [
        f"{path}: key 'blocks.1.attn.qkv.bias' is missing (the model expects shape (96,))",
        f"{path}: key 'blocks.1.attn.extra' (3, 2) is not in the ViT"]


def test_a_cls_token_file_in_a_gap_vit_says_which_classifier():
    with pytest.raises(ValueError, match="(?s)'cls_token' \\(1, 1, 32\\).*build the ViT with classifier='token'"):
        load_timm(build("vit_gap"), fixture("vit_cls"))
    with pytest.raises(ValueError, match="(?s)'cls_token' \\(1, 1, 32\\).*build the ViT with classifier='gap'"):
        load_timm(build("vit_cls", num_heads=4), fixture("vit_gap"))


@pytest.mark.parametrize("name, key, reason", [
    ("deit_distilled", "'dist_token'", "DeiT's distillation token"),
    ("vit_gap_fc_norm", "'fc_norm.weight'", "a LayerNorm after pooling"),
])
def test_architectures_without_a_twin_are_refused(name, key, reason):
    model = ViT(ViTConfig(patch_size=8, hidden_size=16, mlp_dim=64, num_heads=2, num_layers=1, image_size=16,
                          num_classes=5, classifier="gap" if "gap" in name else "token"))
    with pytest.raises(ValueError, match=f"{name}.safetensors is a timm architecture with no twin in our ViT:\n"
                                         f"  {reason}.*{key}"):
        load_timm(model, fixture(name))
    assert any(key in problem and "no twin" in problem for problem in timm_lib.check_timm(model, fixture(name)))


def test_batch_norm_resnet_is_refused(tmp_path):
    path = rewritten(tmp_path, "resnet_bit", lambda arrays: {
        **arrays, "stages.0.blocks.0.norm1.running_mean": np.zeros(8, np.float32)})
    with pytest.raises(ValueError, match="BatchNorm.*'stages.0.blocks.0.norm1.running_mean'"):
        load_timm(build("resnet_bit"), path)


def test_bfloat16_arrays_are_read_exactly(tmp_path):
    arrays = load_file(fixture("mixer"))
    rounded = {key: value.astype(ml_dtypes.bfloat16) for key, value in arrays.items()}
    path = str(tmp_path / "mixer_bf16.safetensors")
    # The safetensors layout: an 8-byte little-endian header size, a JSON header, then the raw data.
    header, offset = {}, 0
    for key, value in rounded.items():
        header[key] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    encoded = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(v.tobytes() for v in rounded.values()))
    model = load_timm(build("mixer"), path)
    np.testing.assert_array_equal(model.checkpoint_variables()["MixerBlock_1/channel_mixing/Dense_0/kernel"].numpy(),
                                  rounded["blocks.1.mlp_channels.fc1.weight"].astype(np.float32).T)
    assert timm_lib.check_timm(build("mixer"), path) == []


def test_not_a_safetensors_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"PK\x03\x04 this is a zip archive, not safetensors")
    with pytest.raises(ValueError, match=f"load_timm: {path} is not a readable safetensors file"):
        load_timm(build("mixer"), path)
    assert timm_lib.check_timm(build("mixer"), path)[0].startswith(f"load_timm: {path} is not a readable safetensors")
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_timm(build("mixer"), tmp_path / "absent.safetensors")


def test_other_models_have_no_table():
    inputs = keras.Input((4,))
    with pytest.raises(TypeError, match="'plain' of type Functional has no timm table; expected a ViT, ResNetV2"):
        load_timm(keras.Model(inputs, keras.layers.Dense(2)(inputs), name="plain"), fixture("vit_cls"))
