"""MLP-Mixer (Tolstikhin et al. 2021) as a Keras functional model with every representation tapped.

Architecture and variable shapes follow the vit_jax release (``models_mixer.py``), so its ``.npz`` checkpoints
load by name. Pre-LN blocks on tokens ``x [n, T, D]``::

    x = x + transpose(Mlp_tokens(transpose(LayerNorm(x))))     # token mixing, Dense over the T axis
    x = x + Mlp_channels(LayerNorm(x))                          # channel mixing, Dense over the D axis

then LayerNorm, global average pooling over tokens and the linear head.

Taps (``model.taps``, forward order):

    stem                            [n, T, D]    patch embedding, the tokens entering block00
    blockNN/ln1                     [n, T, D]
    blockNN/token_mixing_hidden     [n, D, tokens_mlp_dim]  after GELU (channels-major, as computed)
    blockNN/token_mixing            [n, T, D]    token-mixing branch output
    blockNN/+token_mixing           [n, T, D]    residual sum
    blockNN/ln2                     [n, T, D]
    blockNN/channel_mixing_hidden   [n, T, channels_mlp_dim]  after GELU
    blockNN/channel_mixing          [n, T, D]    channel-mixing branch output
    blockNN/+channel_mixing         [n, T, D]    residual sum, the block output
    encoder_norm                    [n, T, D]    the release's ``pre_head_layer_norm``
    pre_logits                      [n, D]       mean over tokens
    logits                          [n, num_classes]
"""

import dataclasses

import keras

from vitcnn_tf.models import base, checkpoint_keys
from vitcnn_tf.models import config as config_lib
from vitcnn_tf.models import layers as vit_layers

_LAYER_NORM_EPSILON = 1e-6

# Paper-scale presets as the vit_jax configs (224x224 inputs, 1000 classes unless overridden), plus the
# CPU-scale preset for 32x32 inputs and 10 classes.
MIXER_PRESETS = {
    "Mixer-B/16": dict(patch_size=16, hidden_dim=768, num_blocks=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
    "Mixer-B/32": dict(patch_size=32, hidden_dim=768, num_blocks=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
    "Mixer-CPU/4": dict(patch_size=4, hidden_dim=64, num_blocks=6, tokens_mlp_dim=32, channels_mlp_dim=256,
                        image_size=32, num_classes=10),
}


@dataclasses.dataclass(frozen=True)
class MixerConfig:
    """MLP-Mixer hyper-parameters; validated on construction (a bad value raises ``ValueError`` naming it)."""

    patch_size: int
    hidden_dim: int
    num_blocks: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    image_size: int = 224
    num_classes: int = 1000

    def __post_init__(self):
        for field in dataclasses.fields(self):
            config_lib.require_positive_int("MixerConfig", field.name, getattr(self, field.name))
        if self.image_size % self.patch_size:
            raise ValueError(f"MixerConfig: image_size={self.image_size} is not divisible by "
                             f"patch_size={self.patch_size}")

    @classmethod
    def from_name(cls, name, **overrides):
        """The preset ``name`` (one of ``MIXER_PRESETS``) with fields replaced by ``overrides``."""
        return config_lib.config_from_preset(cls, MIXER_PRESETS, name, overrides)

    @property
    def num_tokens(self):
        """``T``: patches per image."""
        return (self.image_size // self.patch_size) ** 2


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class Mixer(base.TappedModel):
    """MLP-Mixer; ``model(images [n, S, S, 3] in [-1, 1]) -> logits [n, num_classes]``.

    ``config`` is a ``MixerConfig`` (or its dict). See the module docstring for ``model.taps``.
    """

    config_class = MixerConfig

    def __init__(self, config, name="mixer", **kwargs):
        config = self.coerce_config(config)
        images = keras.Input(shape=(config.image_size, config.image_size, 3), name="images")
        super().__init__(config, images, _build_graph(images, config), name=name, **kwargs)

    @property
    def residual_taps(self):
        """``[(skip input tap, branch tap, sum tap)]`` of every residual connection."""
        units = []
        previous = "stem"
        for block in range(self.config.num_blocks):
            prefix = f"block{block:02d}"
            units.append((previous, f"{prefix}/token_mixing", f"{prefix}/+token_mixing"))
            units.append((f"{prefix}/+token_mixing", f"{prefix}/channel_mixing", f"{prefix}/+channel_mixing"))
            previous = f"{prefix}/+channel_mixing"
        return units

    def checkpoint_layout(self):
        """The Mixer release table: ``[(.npz key, layer name, weight attribute)]``."""
        rows = checkpoint_keys.dense_keys("stem", "stem")
        for block in range(self.config.num_blocks):
            key = f"MixerBlock_{block}"
            name = f"block{block:02d}"
            rows += checkpoint_keys.layer_norm_keys(f"{key}/LayerNorm_0", f"{name}_ln1")
            rows += checkpoint_keys.layer_norm_keys(f"{key}/LayerNorm_1", f"{name}_ln2")
            for branch in ("token_mixing", "channel_mixing"):
                for index in (0, 1):
                    rows += checkpoint_keys.dense_keys(f"{key}/{branch}/Dense_{index}", f"{name}_{branch}_dense{index}")
        rows += checkpoint_keys.layer_norm_keys("pre_head_layer_norm", "encoder_norm")
        rows += checkpoint_keys.dense_keys("head", "head")
        return rows


def _build_graph(images, config):
    """Builds the functional graph on ``images``; returns the ordered taps."""
    taps = {}
    x = keras.layers.Conv2D(config.hidden_dim, config.patch_size, strides=config.patch_size, padding="valid",
                            kernel_initializer="lecun_normal", name="stem")(images)
    x = keras.layers.Reshape((config.num_tokens, config.hidden_dim), name="stem_tokens")(x)
    taps["stem"] = x
    for block in range(config.num_blocks):
        x = _mixer_block(x, config, block, taps)
    x = keras.layers.LayerNormalization(epsilon=_LAYER_NORM_EPSILON, name="encoder_norm")(x)
    taps["encoder_norm"] = x
    taps["pre_logits"] = vit_layers.PoolTokens("gap", name="pre_logits")(x)
    taps["logits"] = keras.layers.Dense(config.num_classes, kernel_initializer="zeros", name="head")(
        taps["pre_logits"])
    return taps


def _mixer_block(x, config, block, taps):
    """One Mixer block on ``x [n, T, D]``; records its taps and returns its output."""
    name = f"block{block:02d}"
    y = keras.layers.LayerNormalization(epsilon=_LAYER_NORM_EPSILON, name=f"{name}_ln1")(x)
    taps[f"{name}/ln1"] = y
    y = keras.layers.Permute((2, 1), name=f"{name}_to_channels_major")(y)
    hidden, y = vit_layers.mlp_block(y, config.tokens_mlp_dim, f"{name}_token_mixing",
                                     kernel_initializer="lecun_normal")
    y = keras.layers.Permute((2, 1), name=f"{name}_to_tokens_major")(y)
    taps[f"{name}/token_mixing_hidden"] = hidden
    taps[f"{name}/token_mixing"] = y
    x = vit_layers.residual(x, y, f"{name}_token_mixing")
    taps[f"{name}/+token_mixing"] = x
    y = keras.layers.LayerNormalization(epsilon=_LAYER_NORM_EPSILON, name=f"{name}_ln2")(x)
    taps[f"{name}/ln2"] = y
    hidden, y = vit_layers.mlp_block(y, config.channels_mlp_dim, f"{name}_channel_mixing",
                                     kernel_initializer="lecun_normal")
    taps[f"{name}/channel_mixing_hidden"] = hidden
    taps[f"{name}/channel_mixing"] = y
    x = vit_layers.residual(x, y, f"{name}_channel_mixing")
    taps[f"{name}/+channel_mixing"] = x
    return x
