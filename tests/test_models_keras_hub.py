"""``from_keras_hub``: our ViT against randomly initialised small keras-hub ViTs (hidden states block by block,
through keras-hub's own layers, and logits), with and without the class token, pre-logits and biases; errors."""

import keras
import keras_hub
import numpy as np
import pytest

import helpers
from vitcnn_tf.models import ViT, from_keras_hub

TOLERANCE = 1e-5
SMALL = dict(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=12)


def backbone(seed=0, **overrides):
    """A small keras-hub ViTBackbone with normal random weights (std 0.3), biases and norms included."""
    return helpers.randomize_weights(keras_hub.models.ViTBackbone(**{**SMALL, **overrides}), seed=seed)


def classifier(hub_backbone, seed=1, **kwargs):
    head = keras_hub.models.ViTImageClassifier(backbone=hub_backbone, num_classes=3, **kwargs)
    rng = np.random.default_rng(seed)
    for variable in head.weights:
        if not variable.path.startswith("vit_"):  # the head's own layers; the backbone is already random
            variable.assign(0.3 * rng.standard_normal(tuple(variable.shape)).astype(variable.dtype))
    return head


def keras_hub_hidden_states(hub_backbone, images):
    """The embedding and each block's output, run through keras-hub's own layers."""
    states = [hub_backbone.get_layer("vit_patching_and_embedding")(images)]
    for block in hub_backbone.get_layer("vit_encoder").encoder_layers:
        states.append(block(states[-1]))
    return [keras.ops.convert_to_numpy(state) for state in states]


def assert_same_hidden_states(ours, hub_backbone, images):
    taps = keras.Model(ours.inputs[0], ours.taps)(images)
    names = ["embedding"] + [f"block{index:02d}/+mlp" for index in range(ours.config.num_layers)]
    for name, expected in zip(names, keras_hub_hidden_states(hub_backbone, images), strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(taps[name]), expected, rtol=0, atol=TOLERANCE,
                                   err_msg=name)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(taps["encoder_norm"]),
                               keras.ops.convert_to_numpy(hub_backbone(images)), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("use_class_token, pooling, intermediate_dim", [(True, "token", 5), (False, "gap", None)])
def test_classifier_logits_and_hidden_states_match(use_class_token, pooling, intermediate_dim):
    hub_backbone = backbone(use_class_token=use_class_token)
    hub = classifier(hub_backbone, pooling=pooling, intermediate_dim=intermediate_dim)
    ours = from_keras_hub(hub)
    assert isinstance(ours, ViT)
    assert (ours.config.classifier, ours.config.representation_size, ours.config.num_classes) == \
        ("token" if use_class_token else "gap", intermediate_dim, 3)
    images = helpers.random_images(3, 16, seed=4)
    assert_same_hidden_states(ours, hub_backbone, images)
    expected = keras.ops.convert_to_numpy(hub(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(images)), expected, rtol=0, atol=TOLERANCE)
    assert np.abs(expected).max() > 0.1


def test_backbone_without_biases_gets_zero_biases_and_a_fresh_head():
    hub_backbone = backbone(use_mha_bias=False, use_mlp_bias=False, use_patch_bias=False, seed=2)
    ours = from_keras_hub(hub_backbone, num_classes=4)
    assert ours.output_shape == (None, 4) and not ours.get_layer("head").kernel.numpy().any()
    assert not ours.get_layer("block01_attention").query_bias.numpy().any()
    assert_same_hidden_states(ours, hub_backbone, helpers.random_images(2, 16, seed=5))


@pytest.mark.parametrize("overrides, message", [
    (dict(layer_norm_epsilon=1e-5), "layer_norm_epsilon=1e-05; our ViT's layer norms use 1e-6"),
    (dict(image_shape=(16, 8, 3)), r"image_shape \(16, 8, 3\) and patch_size \(4, 4\) must be square"),
])
def test_settings_without_a_twin_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_keras_hub(keras_hub.models.ViTBackbone(**{**SMALL, **overrides}))


def test_gap_pooling_over_a_class_token_and_other_models_are_refused():
    hub = keras_hub.models.ViTImageClassifier(backbone=keras_hub.models.ViTBackbone(**SMALL), num_classes=3,
                                              pooling="gap")
    with pytest.raises(ValueError, match="pools with 'gap' over a backbone with use_class_token=True"):
        from_keras_hub(hub)
    with pytest.raises(TypeError, match="expected a keras_hub.models.ViTBackbone or ViTImageClassifier, got ViT"):
        from_keras_hub(helpers.tiny_vit())
