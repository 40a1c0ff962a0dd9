"""BiT ``.npz`` checkpoints with ResNetV2: save / load round trip, the release key layout, and bad-file errors."""

import dataclasses

import keras
import numpy as np
import pytest

from numpy_forward_resnet import expected_release_shapes, random_release_arrays, resnet_v2_forward
from vitcnn_tf.models.checkpoint import load_npz, save_npz
from vitcnn_tf.models.resnet_v2 import ResNetV2, ResNetV2Config

CONFIG = ResNetV2Config(block_counts=(1, 2), width_factor=0.125, stem="bit", image_size=24, num_classes=4,
                        num_groups=4)


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _randomized(config, seed):
    model = ResNetV2(config)
    arrays = random_release_arrays(expected_release_shapes(config), seed)
    for key, variable in model.checkpoint_variables().items():
        variable.assign(arrays[key])
    return model


def _images(config, n=2):
    return np.random.default_rng(1).uniform(-1, 1, (n, config.image_size, config.image_size, 3)).astype("float32")


def test_save_then_load_round_trip(tmp_path):
    source = _randomized(CONFIG, seed=3)
    path = tmp_path / "bit.npz"
    save_npz(source, path)
    with np.load(path, allow_pickle=False) as archive:
        assert {key: archive[key].shape for key in archive.files} == expected_release_shapes(CONFIG)
    target = ResNetV2(CONFIG)
    assert load_npz(target, path) is target
    for key, variable in target.checkpoint_variables().items():
        np.testing.assert_array_equal(_numpy(variable), _numpy(source.checkpoint_variables()[key]), err_msg=key)
    x = _images(CONFIG)
    np.testing.assert_array_equal(_numpy(target(x)), _numpy(source(x)))


def test_a_release_style_file_loads_and_runs_as_the_numpy_reference(tmp_path):
    """An ``.npz`` written directly from ``{release key: array}`` (no Keras involved) gives the reference logits."""
    arrays = random_release_arrays(expected_release_shapes(CONFIG), seed=7)
    path = tmp_path / "release.npz"
    np.savez(path, **arrays)
    model = load_npz(ResNetV2(CONFIG), path)
    x = _images(CONFIG)
    reference = resnet_v2_forward(arrays, x, stem=CONFIG.stem, num_groups=CONFIG.num_groups)
    np.testing.assert_allclose(_numpy(model(x)), reference["logits"], rtol=1e-4, atol=1e-4)


def test_wrong_shape_error_names_the_key_and_both_shapes(tmp_path):
    arrays = {key: np.zeros(shape, "float32") for key, shape in expected_release_shapes(CONFIG).items()}
    key = "resnet/block2/unit01/b/standardized_conv2d/kernel"
    arrays[key] = np.zeros((3, 3, 16, 8), "float32")
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    expected_message = r"block2/unit01/b/standardized_conv2d/kernel.*\(3, 3, 16, 8\).*\(3, 3, 16, 16\)"
    with pytest.raises(ValueError, match=expected_message):
        load_npz(ResNetV2(CONFIG), path)


def test_missing_projection_is_an_error_naming_it(tmp_path):
    arrays = {key: np.zeros(shape, "float32") for key, shape in expected_release_shapes(CONFIG).items()}
    del arrays["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"]
    path = tmp_path / "missing.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"missing from the checkpoint:\n    'resnet/block2/unit01/a/proj/"):
        load_npz(ResNetV2(CONFIG), path)


def test_other_class_count_keeps_the_fresh_head_with_a_warning(tmp_path):
    """A BiT-M file has a 21843-class head; loading it into a model with another class count keeps the body."""
    source = _randomized(dataclasses.replace(CONFIG, num_classes=7), seed=5)
    path = tmp_path / "other_head.npz"
    save_npz(source, path)
    target = ResNetV2(CONFIG)
    with pytest.warns(UserWarning, match="head"):
        load_npz(target, path)
    np.testing.assert_array_equal(_numpy(target.checkpoint_variables()["resnet/head/conv2d/kernel"]), 0.0)
    np.testing.assert_array_equal(_numpy(target.checkpoint_variables()["resnet/group_norm/gamma"]),
                                  _numpy(source.checkpoint_variables()["resnet/group_norm/gamma"]))
