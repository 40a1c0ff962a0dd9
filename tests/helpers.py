"""Helpers shared by the test modules: one tiny model per family, parameter counts without allocation, random
representation pairs, and the saving round-trip and forward-equivalence checks."""

import contextlib

import keras
import numpy as np
from keras.src.backend.common import global_state

from vitcnn_tf.models import Mixer, MixerConfig, ResNetV2, ResNetV2Config, ViT, ViTConfig

TINY_VIT = dict(patch_size=4, hidden_size=16, mlp_dim=24, num_heads=2, num_layers=3, image_size=16, num_classes=5)
TINY_RESNET = dict(block_counts=(1, 1), width_factor=0.125, stem="small", image_size=16, num_classes=5, num_groups=2)
TINY_MIXER = dict(patch_size=4, hidden_dim=16, num_blocks=2, tokens_mlp_dim=8, channels_mlp_dim=24, image_size=16,
                  num_classes=5)


def tiny_vit(**overrides):
    """A tiny ViT: 16x16 input, 4x4 patches, 3 blocks of width 16 with 2 heads, 5 classes (``overrides`` replace
    config fields)."""
    return ViT(ViTConfig(**{**TINY_VIT, **overrides}))


def tiny_resnet(**overrides):
    """A tiny BiT ResNetV2: 16x16 input, small stem, two stages of one unit, GroupNorm with 2 groups, 5 classes."""
    return ResNetV2(ResNetV2Config(**{**TINY_RESNET, **overrides}))


def tiny_mixer(**overrides):
    """A tiny MLP-Mixer: 16x16 input, 4x4 patches, 2 blocks of width 16, 5 classes."""
    return Mixer(MixerConfig(**{**TINY_MIXER, **overrides}))


def random_images(n, size, seed=0):
    """``[n, size, size, 3]`` float32 images uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, size, size, 3)).astype(np.float32)


def random_pair(seed, n, dx, dy, shared=2):
    """Two representations ``[n, dx]``, ``[n, dy]`` sharing ``shared`` latent directions (so CKA is neither 0 nor
    1); the second has a large mean (3.0) to exercise centring."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, shared))
    x = latent @ rng.standard_normal((shared, dx)) + 0.5 * rng.standard_normal((n, dx))
    y = latent @ rng.standard_normal((shared, dy)) + 0.5 * rng.standard_normal((n, dy)) + 3.0
    return x, y


@contextlib.contextmanager
def deferred_variables():
    """Builds models whose variables have shapes but no values: no memory, for counting parameters.

    Inside, Keras defers variable initialisation (``keras.StatelessScope``); on exit the deferred variables are
    dropped from Keras' list of pending initialisations, so they are never allocated. A model built inside has
    correct ``weights`` shapes (``count_params()``) but cannot be run or loaded.
    """
    pending = list(global_state.get_global_attribute("uninitialized_variables", []) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute("uninitialized_variables", pending)


def parameter_count(build):
    """Parameters of the model ``build()`` returns, built under :func:`deferred_variables` (nothing allocated);
    asserts that its ``checkpoint_variables()`` cover every weight exactly once."""
    with deferred_variables():
        model = build()
        weights = model.weights
        checkpoint_ids = sorted(id(v) for v in model.checkpoint_variables().values())
    assert checkpoint_ids == sorted(id(w) for w in weights), "checkpoint_variables must cover every weight once"
    return sum(int(np.prod(w.shape)) for w in weights)


def randomize_weights(model, seed=0, scale=0.3):
    """Assigns normal random values (std ``scale``) to every weight of ``model``, so that zero-initialised heads
    and unit norm scales do not hide a mistake; returns ``model``."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(scale * rng.standard_normal(tuple(variable.shape)).astype(variable.dtype))
    return model


def assert_same_forward(model_a, model_b, images, taps=True, rtol=0.0, atol=0.0):
    """Asserts that both models give the same logits on ``images`` (and, with ``taps``, the same tap names and
    values), within ``rtol`` / ``atol`` (exact by default)."""
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model_a(images)),
                               keras.ops.convert_to_numpy(model_b(images)), rtol=rtol, atol=atol)
    if taps:
        assert list(model_a.taps) == list(model_b.taps)
        outputs_a = keras.Model(model_a.inputs[0], model_a.taps)(images)
        outputs_b = keras.Model(model_b.inputs[0], model_b.taps)(images)
        for name in model_a.taps:
            np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs_a[name]),
                                       keras.ops.convert_to_numpy(outputs_b[name]), rtol=rtol, atol=atol,
                                       err_msg=name)


def assert_saving_round_trip(model, folder, images):
    """Saves ``model`` as a ``.keras`` file in ``folder``, loads it back and checks the class, the config and an
    identical forward pass (logits and taps); returns the restored model."""
    path = folder / f"{model.name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model) and restored.config == model.config
    assert_same_forward(restored, model, images)
    return restored
