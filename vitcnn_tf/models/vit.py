"""Vision Transformer (Dosovitskiy et al. 2021) as a Keras functional model with every representation tapped.

The architecture and variable shapes follow the vit_jax release, so its ``.npz`` checkpoints load by name
(``vitcnn_tf.models.checkpoint.load_npz``). Pre-LN encoder blocks::

    x = x + SelfAttention(LayerNorm(x))      # skip removed in the blocks of ``skip_blocks_removed``
    x = x + Mlp(LayerNorm(x))                # Dense -> exact GELU -> Dense

Taps (``model.taps``, forward order), ``n`` examples, ``T`` tokens (patches, plus one CLS token with
``classifier="token"``), ``D`` hidden size, ``H`` heads, ``dh = D / H``:

    embedding             [n, T, D]     tokens entering block00 (patch embedding, CLS, position embedding)
    blockNN/ln1           [n, T, D]
    blockNN/attn          [n, H, T, T]  attention probabilities
    blockNN/attn_heads    [n, T, H, dh] per-head attention outputs before the output projection
    blockNN/sa            [n, T, D]     self-attention branch output
    blockNN/+sa           [n, T, D]     residual sum (the branch alone if the block's skips are removed)
    blockNN/ln2           [n, T, D]
    blockNN/mlp_hidden    [n, T, mlp_dim] after GELU
    blockNN/mlp           [n, T, D]     MLP branch output
    blockNN/+mlp          [n, T, D]     residual sum, the block output
    encoder_norm          [n, T, D]
    pre_logits            [n, D] or [n, representation_size]
    logits                [n, num_classes]
"""

import dataclasses

import keras
import numpy as np

from vitcnn_tf import grids
from vitcnn_tf.models import base, checkpoint_keys
from vitcnn_tf.models import config as config_lib
from vitcnn_tf.models import layers as vit_layers

_LAYER_NORM_EPSILON = 1e-6
_POSEMB_KEY = "Transformer/posembed_input/pos_embedding"

# Paper-scale presets as the vit_jax configs (224x224 inputs, 1000 classes unless overridden), plus the
# CPU-scale preset for 32x32 inputs and 10 classes.
VIT_PRESETS = {
    "ViT-Ti/16": dict(patch_size=16, hidden_size=192, mlp_dim=768, num_heads=3, num_layers=12),
    "ViT-S/16": dict(patch_size=16, hidden_size=384, mlp_dim=1536, num_heads=6, num_layers=12),
    "ViT-B/32": dict(patch_size=32, hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    "ViT-B/16": dict(patch_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    "ViT-L/16": dict(patch_size=16, hidden_size=1024, mlp_dim=4096, num_heads=16, num_layers=24,
                     dropout_rate=0.1),
    "ViT-H/14": dict(patch_size=14, hidden_size=1280, mlp_dim=5120, num_heads=16, num_layers=32,
                     dropout_rate=0.1),
    "ViT-CPU/4": dict(patch_size=4, hidden_size=64, mlp_dim=128, num_heads=4, num_layers=6,
                      image_size=32, num_classes=10),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT hyper-parameters; validated on construction (a bad value raises ``ValueError`` naming it)."""

    patch_size: int
    hidden_size: int
    mlp_dim: int
    num_heads: int
    num_layers: int
    image_size: int = 224
    num_classes: int = 1000
    classifier: str = "token"  # "token" (CLS token) or "gap" (global average pooling of the tokens)
    representation_size: int | None = None  # size of the tanh pre-logits layer, None for none
    skip_blocks_removed: tuple = ()  # blocks whose two residual connections are removed (Section 6)
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0

    CLASSIFIERS = ("token", "gap")

    def __post_init__(self):
        for field in ("patch_size", "hidden_size", "mlp_dim", "num_heads", "num_layers", "image_size",
                      "num_classes"):
            config_lib.require_positive_int("ViTConfig", field, getattr(self, field))
        if self.representation_size is not None:
            config_lib.require_positive_int("ViTConfig", "representation_size", self.representation_size)
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig: image_size={self.image_size} is not divisible by "
                             f"patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ViTConfig: hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.classifier not in self.CLASSIFIERS:
            raise ValueError(f"ViTConfig: classifier must be one of {self.CLASSIFIERS}, got {self.classifier!r}")
        for field in ("dropout_rate", "attention_dropout_rate"):
            config_lib.require_rate("ViTConfig", field, getattr(self, field))
        object.__setattr__(self, "skip_blocks_removed", config_lib.index_tuple(
            "ViTConfig", "skip_blocks_removed", self.skip_blocks_removed, self.num_layers, "block", "num_layers"))

    @classmethod
    def from_name(cls, name, **overrides):
        """The preset ``name`` (one of ``VIT_PRESETS``) with fields replaced by ``overrides``."""
        return config_lib.config_from_preset(cls, VIT_PRESETS, name, overrides)

    @property
    def grid_size(self):
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_prefix_tokens(self):
        """Tokens before the patch tokens: 1 (CLS) with ``classifier="token"``, else 0."""
        return 1 if self.classifier == "token" else 0

    @property
    def num_tokens(self):
        """``T``: patch tokens plus prefix tokens."""
        return self.grid_size**2 + self.num_prefix_tokens


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class ViT(base.TappedModel):
    """Vision Transformer; ``model(images [n, S, S, 3] in [-1, 1]) -> logits [n, num_classes]``.

    ``config`` is a ``ViTConfig`` (or its dict). See the module docstring for ``model.taps``.
    """

    config_class = ViTConfig

    def __init__(self, config, name="vit", **kwargs):
        config = self.coerce_config(config)
        images = keras.Input(shape=(config.image_size, config.image_size, 3), name="images")
        super().__init__(config, images, _build_graph(images, config), name=name, **kwargs)

    @property
    def residual_taps(self):
        """``[(skip input tap, branch tap, sum tap)]`` of every residual connection (removed ones excluded)."""
        units = []
        previous = "embedding"
        for block in range(self.config.num_layers):
            prefix = f"block{block:02d}"
            if block not in self.config.skip_blocks_removed:
                units.append((previous, f"{prefix}/sa", f"{prefix}/+sa"))
                units.append((f"{prefix}/+sa", f"{prefix}/mlp", f"{prefix}/+mlp"))
            previous = f"{prefix}/+mlp"
        return units

    def checkpoint_layout(self):
        """The vit_jax release table: ``[(.npz key, layer name, weight attribute)]``."""
        config = self.config
        rows = checkpoint_keys.dense_keys("embedding", "embedding")
        if config.classifier == "token":
            rows.append(("cls", "cls", "cls"))
        rows.append((_POSEMB_KEY, "posembed_input", "pos_embedding"))
        for block in range(config.num_layers):
            key = f"Transformer/encoderblock_{block}"
            name = f"block{block:02d}"
            rows += checkpoint_keys.layer_norm_keys(f"{key}/LayerNorm_0", f"{name}_ln1")
            for part in ("query", "key", "value", "out"):
                prefix = f"{key}/MultiHeadDotProductAttention_1/{part}"
                rows += [(f"{prefix}/kernel", f"{name}_attention", f"{part}_kernel"),
                         (f"{prefix}/bias", f"{name}_attention", f"{part}_bias")]
            rows += checkpoint_keys.layer_norm_keys(f"{key}/LayerNorm_2", f"{name}_ln2")
            for index in (0, 1):
                rows += checkpoint_keys.dense_keys(f"{key}/MlpBlock_3/Dense_{index}", f"{name}_mlp_dense{index}")
        rows += checkpoint_keys.layer_norm_keys("Transformer/encoder_norm", "encoder_norm")
        if config.representation_size is not None:
            rows += checkpoint_keys.dense_keys("pre_logits", "pre_logits")
        rows += checkpoint_keys.dense_keys("head", "head")
        return rows

    def adapt_checkpoint_array(self, key, array):
        """Resamples a position embedding of another grid size to this model's grid (CLS kept); else identity."""
        expected = (1, self.config.num_tokens, self.config.hidden_size)
        if key != _POSEMB_KEY or array.shape == expected or array.ndim != 3 or array.shape[2] != expected[2]:
            return array
        return resample_position_embedding(array, self.config.num_tokens, self.config.num_prefix_tokens)


def resample_position_embedding(posemb, num_tokens, num_prefix_tokens):
    """Bilinear resampling of a ``[1, T_old, D]`` position embedding to ``[1, num_tokens, D]``.

    The first ``num_prefix_tokens`` embeddings (CLS) are kept; the others form a square grid, resampled with
    corner-aligned bilinear interpolation (as ``scipy.ndimage.zoom(order=1)`` in the vit_jax release).
    """
    posemb = np.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"resample_position_embedding: expected shape [1, T, D], got {posemb.shape}")
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    old_side = grids.square_side(grid.shape[0], f"resample_position_embedding: position embedding {posemb.shape} "
                                                f"minus {num_prefix_tokens} prefix")
    new_side = grids.square_side(num_tokens - num_prefix_tokens, f"resample_position_embedding: target of "
                                 f"{num_tokens} tokens minus {num_prefix_tokens} prefix")
    grid = grid.reshape(old_side, old_side, -1).astype(np.float64)
    grid = _linear_resize(_linear_resize(grid, new_side, axis=0), new_side, axis=1)
    grid = grid.reshape(1, new_side * new_side, -1).astype(posemb.dtype)
    return np.concatenate([prefix, grid], axis=1)


def _build_graph(images, config):
    """Builds the functional graph on ``images``; returns the ordered taps."""
    taps = {}
    x = keras.layers.Conv2D(config.hidden_size, config.patch_size, strides=config.patch_size, padding="valid",
                            kernel_initializer="lecun_normal", name="embedding")(images)
    x = keras.layers.Reshape((config.grid_size**2, config.hidden_size), name="patch_tokens")(x)
    if config.classifier == "token":
        x = vit_layers.ClassToken(name="cls")(x)
    x = vit_layers.AddPositionEmbedding(name="posembed_input")(x)
    if config.dropout_rate > 0:
        x = keras.layers.Dropout(config.dropout_rate, name="embedding_dropout")(x)
    taps["embedding"] = x
    for block in range(config.num_layers):
        x = _encoder_block(x, config, block, taps)
    x = keras.layers.LayerNormalization(epsilon=_LAYER_NORM_EPSILON, name="encoder_norm")(x)
    taps["encoder_norm"] = x
    x = vit_layers.PoolTokens(config.classifier, name="pool")(x)
    if config.representation_size is not None:
        x = keras.layers.Dense(config.representation_size, activation="tanh", kernel_initializer="lecun_normal",
                               name="pre_logits")(x)
    else:
        x = keras.layers.Identity(name="pre_logits")(x)
    taps["pre_logits"] = x
    taps["logits"] = keras.layers.Dense(config.num_classes, kernel_initializer="zeros", name="head")(x)
    return taps


def _encoder_block(x, config, block, taps):
    """One pre-LN encoder block on ``x [n, T, D]``; records its taps and returns its output."""
    name = f"block{block:02d}"
    keep_skip = block not in config.skip_blocks_removed
    y = keras.layers.LayerNormalization(epsilon=_LAYER_NORM_EPSILON, name=f"{name}_ln1")(x)
    taps[f"{name}/ln1"] = y
    y, probabilities, heads = vit_layers.MultiHeadSelfAttention(
        config.num_heads, config.attention_dropout_rate, name=f"{name}_attention")(y)
    if config.dropout_rate > 0:
        y = keras.layers.Dropout(config.dropout_rate, name=f"{name}_attention_dropout")(y)
    taps[f"{name}/attn"] = probabilities
    taps[f"{name}/attn_heads"] = heads
    taps[f"{name}/sa"] = y
    x = vit_layers.residual(x, y, f"{name}_sa", keep_skip)
    taps[f"{name}/+sa"] = x
    y = keras.layers.LayerNormalization(epsilon=_LAYER_NORM_EPSILON, name=f"{name}_ln2")(x)
    taps[f"{name}/ln2"] = y
    hidden, y = vit_layers.mlp_block(y, config.mlp_dim, f"{name}_mlp", config.dropout_rate,
                                     bias_initializer=keras.initializers.RandomNormal(stddev=1e-6))
    taps[f"{name}/mlp_hidden"] = hidden
    taps[f"{name}/mlp"] = y
    x = vit_layers.residual(x, y, f"{name}_mlp", keep_skip)
    taps[f"{name}/+mlp"] = x
    return x


def _linear_resize(x, size, axis):
    """Corner-aligned linear interpolation of ``x`` to ``size`` entries along ``axis``."""
    old = x.shape[axis]
    coords = np.linspace(0.0, old - 1, size) if size > 1 else np.zeros(1)
    lower = np.floor(coords).astype(int)
    upper = np.minimum(lower + 1, old - 1)
    weight_shape = [1] * x.ndim
    weight_shape[axis] = size
    weight = (coords - lower).reshape(weight_shape)
    return np.take(x, lower, axis=axis) * (1.0 - weight) + np.take(x, upper, axis=axis) * weight
