"""load_npz / save_npz: release key names and shapes, round trip, bad checkpoints, head swap, posemb resampling."""

import os
import pickle

import numpy as np
import pytest

import helpers
import numpy_forward
from vitcnn_tf.models import Mixer, MixerConfig, load_npz, save_npz
from vitcnn_tf.models.vit import resample_position_embedding

POSEMB = "Transformer/posembed_input/pos_embedding"


def tiny_vit(**overrides):
    """``helpers.tiny_vit`` of width 8, MLP width 12 and 2 blocks (the shapes the error messages below name)."""
    return helpers.tiny_vit(**{"hidden_size": 8, "mlp_dim": 12, "num_layers": 2, **overrides})


def values(model):
    return {key: v.numpy().copy() for key, v in model.checkpoint_variables().items()}


def test_vit_keys_and_shapes_are_the_vit_jax_ones():
    # Written from the vit_jax release layout: query/key/value kernels [D, H, dh], out kernel [H, dh, D].
    model = tiny_vit(num_layers=1, image_size=8, num_classes=3, representation_size=6)
    block = "Transformer/encoderblock_0"
    attention = f"{block}/MultiHeadDotProductAttention_1"
    expected = {
        "embedding/kernel": (4, 4, 3, 8), "embedding/bias": (8,), "cls": (1, 1, 8), POSEMB: (1, 5, 8),
        f"{block}/LayerNorm_0/scale": (8,), f"{block}/LayerNorm_0/bias": (8,),
        f"{attention}/query/kernel": (8, 2, 4), f"{attention}/query/bias": (2, 4),
        f"{attention}/key/kernel": (8, 2, 4), f"{attention}/key/bias": (2, 4),
        f"{attention}/value/kernel": (8, 2, 4), f"{attention}/value/bias": (2, 4),
        f"{attention}/out/kernel": (2, 4, 8), f"{attention}/out/bias": (8,),
        f"{block}/LayerNorm_2/scale": (8,), f"{block}/LayerNorm_2/bias": (8,),
        f"{block}/MlpBlock_3/Dense_0/kernel": (8, 12), f"{block}/MlpBlock_3/Dense_0/bias": (12,),
        f"{block}/MlpBlock_3/Dense_1/kernel": (12, 8), f"{block}/MlpBlock_3/Dense_1/bias": (8,),
        "Transformer/encoder_norm/scale": (8,), "Transformer/encoder_norm/bias": (8,),
        "pre_logits/kernel": (8, 6), "pre_logits/bias": (6,), "head/kernel": (6, 3), "head/bias": (3,),
    }
    assert {key: tuple(v.shape) for key, v in model.checkpoint_variables().items()} == expected
    assert model.checkpoint_head_keys == ("head/kernel", "head/bias")


def test_gap_vit_has_no_cls_key():
    keys = tiny_vit(classifier="gap").checkpoint_variables()
    assert "cls" not in keys and tuple(keys[POSEMB].shape) == (1, 16, 8)


@pytest.mark.parametrize("build", [lambda: tiny_vit(representation_size=4),
                                   lambda: Mixer(MixerConfig.from_name("Mixer-CPU/4", num_blocks=1))],
                         ids=["vit", "mixer"])
def test_save_load_round_trip(build, tmp_path):
    source, target = build(), build()
    params = numpy_forward.random_checkpoint(source, seed=1)
    for key, variable in source.checkpoint_variables().items():
        variable.assign(params[key])
    path = tmp_path / "model.npz"
    save_npz(source, path)
    assert os.listdir(tmp_path) == ["model.npz"]  # written atomically, no temporary file left
    with np.load(path) as archive:
        assert sorted(archive.files) == sorted(params)
        for key in archive.files:
            np.testing.assert_array_equal(archive[key], params[key])
    assert load_npz(target, path) is target
    for key, value in values(target).items():
        np.testing.assert_array_equal(value, params[key], err_msg=key)
    images = np.random.default_rng(0).uniform(-1, 1, (2, *source.inputs[0].shape[1:])).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(target(images)), np.asarray(source(images)))


def test_float64_arrays_are_cast_to_the_variable_dtype(tmp_path):
    model = tiny_vit()
    params = {key: value.astype(np.float64) for key, value in numpy_forward.random_checkpoint(model).items()}
    np.savez(tmp_path / "f64.npz", **params)
    load_npz(model, tmp_path / "f64.npz")
    embedding = model.checkpoint_variables()["embedding/kernel"]
    assert embedding.dtype == "float32"
    np.testing.assert_allclose(embedding.numpy(), params["embedding/kernel"], rtol=1e-6)


def _expect_error_and_no_change(model, path, *patterns):
    before = values(model)
    with pytest.raises(ValueError) as error:
        load_npz(model, path)
    for pattern in patterns:
        assert pattern in str(error.value), (pattern, str(error.value))
    for key, value in values(model).items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"{key} changed by a failed load")


def test_missing_key(tmp_path):
    model = tiny_vit()
    params = numpy_forward.random_checkpoint(model)
    del params["Transformer/encoderblock_1/LayerNorm_2/scale"]
    np.savez(tmp_path / "missing.npz", **params)
    _expect_error_and_no_change(model, tmp_path / "missing.npz", "missing.npz", "1 missing from the checkpoint",
                                "'Transformer/encoderblock_1/LayerNorm_2/scale' (8,)")


def test_unexpected_key(tmp_path):
    # A checkpoint with a pre-logits layer loaded into a model without one.
    model = tiny_vit()
    params = numpy_forward.random_checkpoint(tiny_vit(representation_size=8))
    np.savez(tmp_path / "extra.npz", **params)
    _expect_error_and_no_change(model, tmp_path / "extra.npz", "2 unexpected in the checkpoint",
                                "'pre_logits/bias' (8,)", "'pre_logits/kernel' (8, 8)")


def test_wrong_shape(tmp_path):
    model = tiny_vit()
    params = numpy_forward.random_checkpoint(model)
    params["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"] = np.zeros((8, 16), np.float32)
    np.savez(tmp_path / "shape.npz", **params)
    _expect_error_and_no_change(model, tmp_path / "shape.npz", "'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'",
                                "checkpoint shape (8, 16), model expects (8, 12)")


def test_mixer_checkpoint_of_another_image_size_is_refused(tmp_path):
    source = Mixer(MixerConfig.from_name("Mixer-CPU/4", num_blocks=1))
    save_npz(source, tmp_path / "mixer32.npz")
    target = Mixer(MixerConfig.from_name("Mixer-CPU/4", num_blocks=1, image_size=16))
    _expect_error_and_no_change(target, tmp_path / "mixer32.npz",
                                "'MixerBlock_0/token_mixing/Dense_0/kernel': checkpoint shape (64, 32), "
                                "model expects (16, 32)")


def test_pickled_object_array_is_refused(tmp_path):
    model = tiny_vit()
    params = dict(numpy_forward.random_checkpoint(model))
    params["embedding/bias"] = np.array([{"not": "numbers"}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **params)
    _expect_error_and_no_change(model, tmp_path / "pickled.npz", "pickled.npz", "'embedding/bias'",
                                "pickled (object) array")


def test_pickle_file_is_refused(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"embedding/kernel": np.zeros(3)}))
    _expect_error_and_no_change(tiny_vit(), path, "weights.pkl", "pickled data")


def test_non_numeric_array_is_refused(tmp_path):
    model = tiny_vit()
    params = dict(numpy_forward.random_checkpoint(model))
    params["cls"] = np.array([[["a"] * 8]])
    np.savez(tmp_path / "strings.npz", **params)
    _expect_error_and_no_change(model, tmp_path / "strings.npz", "'cls' has non-numeric dtype")


def test_head_with_another_class_count_is_skipped_with_a_warning(tmp_path):
    source, target = tiny_vit(num_classes=7), tiny_vit(num_classes=5)
    params = numpy_forward.random_checkpoint(source)
    np.savez(tmp_path / "seven.npz", **params)
    fresh_head = {key: target.checkpoint_variables()[key].numpy().copy() for key in target.checkpoint_head_keys}
    with pytest.warns(UserWarning, match=r"'head/kernel': checkpoint \(8, 7\) vs model \(8, 5\)"):
        load_npz(target, tmp_path / "seven.npz")
    loaded = values(target)
    for key in target.checkpoint_head_keys:
        np.testing.assert_array_equal(loaded[key], fresh_head[key])
    for key in loaded.keys() - set(target.checkpoint_head_keys):
        np.testing.assert_array_equal(loaded[key], params[key], err_msg=key)


# --- position embedding resampling ------------------------------------------------------------------------------


def test_loading_a_32px_checkpoint_into_a_48px_model_resamples_the_grid_and_keeps_cls(tmp_path):
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    source = tiny_vit(image_size=32)  # 8x8 patch grid
    target = tiny_vit(image_size=48)  # 12x12 patch grid
    params = numpy_forward.random_checkpoint(source)
    np.savez(tmp_path / "32px.npz", **params)
    load_npz(target, tmp_path / "32px.npz")
    posemb = target.checkpoint_variables()[POSEMB].numpy()
    assert posemb.shape == (1, 145, 8)
    np.testing.assert_array_equal(posemb[0, 0], params[POSEMB][0, 0])
    # vit_jax resamples with scipy.ndimage.zoom(order=1): an independent implementation of the same grid.
    grid = params[POSEMB][0, 1:].reshape(8, 8, 8).astype(np.float64)
    expected = scipy_ndimage.zoom(grid, (12 / 8, 12 / 8, 1), order=1).reshape(144, 8)
    np.testing.assert_allclose(posemb[0, 1:], expected, atol=1e-6)
    np.testing.assert_array_equal(target.checkpoint_variables()["embedding/kernel"].numpy(),
                                  params["embedding/kernel"])


def test_bilinear_resampling_by_hand():
    # 2x2 grid -> 3x3 with corners aligned: corners kept, edge midpoints are pair means, the centre the mean.
    grid = np.array([[0.0, 2.0], [4.0, 10.0]])
    posemb = np.concatenate([[[7.0]], grid.reshape(4, 1)]).reshape(1, 5, 1)
    resampled = resample_position_embedding(posemb, 10, num_prefix_tokens=1)
    assert resampled[0, 0, 0] == 7.0
    np.testing.assert_allclose(resampled[0, 1:, 0].reshape(3, 3),
                               [[0.0, 1.0, 2.0], [2.0, 4.0, 6.0], [4.0, 7.0, 10.0]])


def test_resampling_to_the_same_size_is_identity():
    posemb = np.random.default_rng(0).normal(size=(1, 17, 5)).astype(np.float32)
    np.testing.assert_array_equal(resample_position_embedding(posemb, 17, num_prefix_tokens=1), posemb)
    np.testing.assert_array_equal(resample_position_embedding(posemb[:, 1:], 16, num_prefix_tokens=0),
                                  posemb[:, 1:])


def test_gap_model_resamples_without_prefix(tmp_path):
    source, target = tiny_vit(classifier="gap", image_size=8), tiny_vit(classifier="gap", image_size=16)
    params = numpy_forward.random_checkpoint(source)
    np.savez(tmp_path / "gap.npz", **params)
    load_npz(target, tmp_path / "gap.npz")
    posemb = target.checkpoint_variables()[POSEMB].numpy()
    assert posemb.shape == (1, 16, 8)
    expected = resample_position_embedding(params[POSEMB], 16, num_prefix_tokens=0)
    np.testing.assert_array_equal(posemb, expected)
    np.testing.assert_array_equal(posemb[0, [0, 3, 12, 15]], params[POSEMB][0, [0, 1, 2, 3]])  # corners


def test_non_square_position_embedding_is_refused(tmp_path):
    model = tiny_vit()
    params = numpy_forward.random_checkpoint(model)
    params[POSEMB] = np.zeros((1, 13, 8), np.float32)  # CLS + 12 tokens: not a square grid
    np.savez(tmp_path / "odd.npz", **params)
    _expect_error_and_no_change(model, tmp_path / "odd.npz", "12 tokens do not form a non-empty square grid")


def test_wrong_model_under_the_right_file_name_names_file_keys_and_shapes_in_a_short_message(tmp_path):
    """A wider, deeper ViT's file loaded into a small ViT: every kind of mismatch is listed, capped per kind."""
    source = tiny_vit(hidden_size=16, num_layers=3)
    save_npz(source, tmp_path / "ViT-B_16.npz")
    model = tiny_vit()
    before = values(model)
    with pytest.raises(ValueError) as error:
        load_npz(model, tmp_path / "ViT-B_16.npz")
    message = str(error.value)
    assert str(tmp_path / "ViT-B_16.npz") in message and "hidden_size=8" in message
    assert "'embedding/bias': checkpoint shape (16,), model expects (8,)" in message
    assert "unexpected in the checkpoint" in message
    assert "'Transformer/encoderblock_2/LayerNorm_0/bias' (16,)" in message
    source_shapes = {key: tuple(v.shape) for key, v in source.checkpoint_variables().items()}
    mismatched = sum(1 for key, value in before.items()
                     if not key.startswith("head/") and value.shape != source_shapes[key])
    listed = [line for line in message.splitlines() if line.startswith("    '")]
    assert len(listed) <= 3 * 8 and f"... and {mismatched - 8} more" in message
    assert len(message) < 3000
    for key, value in values(model).items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"{key} changed by a failed load")
