"""joint_tap_model / split_tap_name / model_with_taps against per-model extract and a NumPy CKA reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from vitcnn_tf import representations
from vitcnn_tf.metrics import reference


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    return {"vit": helpers.randomize_weights(helpers.tiny_vit(num_layers=1), seed=1),
            "resnet": helpers.randomize_weights(helpers.tiny_resnet(), seed=2),
            "mixer": helpers.randomize_weights(helpers.tiny_mixer(num_blocks=1), seed=3)}


def test_joint_taps_equal_each_models_own_taps(models):
    images = helpers.random_images(6, 16, seed=4)
    joint = representations.joint_tap_model(models)
    joint_values = representations.extract(joint, images)
    expected_names = [f"{key}:{tap}" for key, model in models.items() for tap in representations.layer_names(model)]
    assert list(joint_values) == expected_names
    for key, model in models.items():
        own = representations.extract(model, images)
        for tap, value in own.items():
            np.testing.assert_allclose(joint_values[f"{key}:{tap}"], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{key}:{tap}")


def test_layer_selection_per_model_and_split_tap_name(models):
    joint = representations.joint_tap_model(models, layers={"vit": r"block00/\+mlp", "resnet": ["pre_logits"]})
    names = representations.layer_names(joint)
    assert names[:2] == ["vit:block00/+mlp", "resnet:pre_logits"]
    assert names[2:] == [f"mixer:{tap}" for tap in representations.layer_names(models["mixer"])]
    assert [representations.split_tap_name(name) for name in names[:2]] == [("vit", "block00/+mlp"),
                                                                             ("resnet", "pre_logits")]
    with pytest.raises(ValueError, match="not a joint tap name"):
        representations.split_tap_name("pre_logits")


def test_the_same_models_selections_and_keys_give_the_same_joint_model(models):
    layers = {"vit": r"block00/\+mlp", "resnet": ["pre_logits"]}
    pair = {"vit": models["vit"], "resnet": models["resnet"]}
    joint = representations.joint_tap_model(pair, layers)
    assert representations.joint_tap_model(dict(pair), dict(layers)) is joint
    assert representations.joint_tap_model({"vit": models["vit"], "resnet": models["mixer"]},
                                           {"vit": layers["vit"]}) is not joint
    assert representations.joint_tap_model(pair, {"vit": layers["vit"]}) is not joint
    renamed = representations.joint_tap_model({"a": models["vit"], "resnet": models["resnet"]},
                                               {"a": layers["vit"], "resnet": layers["resnet"]})
    assert renamed is not joint and representations.layer_names(renamed)[0] == "a:block00/+mlp"


def test_joint_accumulation_equals_the_reference_minibatch_cka(models):
    """One pass of the joint model gives every cross-model pair, as reference.minibatch_cka on per-model taps."""
    pair = {key: models[key] for key in ("vit", "resnet")}
    layers = {"vit": ["block00/+sa", "pre_logits"], "resnet": ["block1/unit01/+res", "pre_logits"]}
    joint = representations.joint_tap_model(pair, layers=layers)
    batches = [helpers.random_images(8, 16, seed=10 + b) for b in range(3)]
    metric, names, _ = representations.accumulate_cka(joint, tf.data.Dataset.from_tensor_slices(
        np.concatenate(batches)).batch(8), progress=False)
    per_batch = []
    for images in batches:
        values = {**{f"vit:{t}": v for t, v in representations.extract(pair["vit"], images, layers["vit"]).items()},
                  **{f"resnet:{t}": v for t, v in representations.extract(pair["resnet"], images,
                                                                           layers["resnet"]).items()}}
        per_batch.append([values[name] for name in names])
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(per_batch), rtol=1e-4, atol=1e-6)


def test_joint_model_errors(models):
    with pytest.raises(ValueError, match="empty"):
        representations.joint_tap_model({})
    with pytest.raises(ValueError, match="not in models"):
        representations.joint_tap_model(models, layers={"other": None})
    with pytest.raises(ValueError, match="must not contain ':'"):
        representations.joint_tap_model({"a:b": models["vit"]})
    with pytest.raises(ValueError, match="share one input shape"):
        representations.joint_tap_model({"vit": models["vit"], "big": helpers.tiny_vit(image_size=32)})


def test_model_with_taps_exposes_the_given_names():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="d")(inputs)
    model = representations.model_with_taps(inputs, {"first": hidden, "second": keras.layers.ReLU()(hidden)})
    values = representations.extract(model, np.arange(8, dtype=np.float32).reshape(2, 4) - 3.0)
    assert list(values) == ["first", "second"]
    np.testing.assert_allclose(values["second"], np.maximum(values["first"], 0.0))
    with pytest.raises(ValueError, match="taps is empty"):
        representations.model_with_taps(inputs, {})
