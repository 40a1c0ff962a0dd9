"""Keras layers and functional graph helpers shared by the ViT and MLP-Mixer models.

Every layer creates its variables with exactly the shapes of the published vit_jax checkpoints, so that a
checkpoint array can be assigned to its variable without reshaping. Shapes: ``n`` examples, ``T`` tokens,
``D`` hidden size, ``H`` heads, ``dh = D / H`` the head size.
"""

import math

import keras
from keras import ops

_PACKAGE = "vitcnn_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token: ``[n, T, D] -> [n, T + 1, D]``; variable ``cls`` of shape ``[1, 1, D]``."""

    def build(self, input_shape):
        self.cls = self.add_weight(name="cls", shape=(1, 1, input_shape[-1]), initializer="zeros")

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        cls = ops.broadcast_to(ops.cast(self.cls, tokens.dtype), (batch, 1, ops.shape(tokens)[-1]))
        return ops.concatenate([cls, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        num_tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], num_tokens, input_shape[2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AddPositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding: ``[n, T, D] -> [n, T, D]``; variable ``pos_embedding`` ``[1, T, D]``."""

    def build(self, input_shape):
        if input_shape[1] is None:
            raise ValueError(f"AddPositionEmbedding needs a known number of tokens, got input shape {input_shape}")
        self.pos_embedding = self.add_weight(
            name="pos_embedding",
            shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, tokens):
        return tokens + ops.cast(self.pos_embedding, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head dot-product self-attention with every intermediate exposed.

    ``call(x)`` with ``x`` ``[n, T, D]`` returns ``(output [n, T, D], probabilities [n, H, T, T],
    heads [n, T, H, dh])``: ``heads`` are the per-head attention outputs before the output projection,
    ``probabilities`` the softmax over keys (before attention dropout). Variables as vit_jax:
    ``{query,key,value}_kernel [D, H, dh]``, ``{query,key,value}_bias [H, dh]``, ``out_kernel [H, dh, D]``,
    ``out_bias [D]``. Queries are scaled by ``1 / sqrt(dh)``.
    """

    def __init__(self, num_heads, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dropout_rate = float(dropout_rate)
        self.dropout = keras.layers.Dropout(self.dropout_rate) if self.dropout_rate > 0 else None

    def build(self, input_shape):
        hidden = input_shape[-1]
        if hidden % self.num_heads:
            raise ValueError(
                f"MultiHeadSelfAttention: hidden size {hidden} is not divisible by num_heads={self.num_heads}"
            )
        head_dim = hidden // self.num_heads
        # Xavier-uniform over the flattened [D, H * dh] matrix, as flax's DenseGeneral.
        limit = math.sqrt(6.0 / (hidden + hidden))
        kernel_init = keras.initializers.RandomUniform(-limit, limit)
        for name in ("query", "key", "value"):
            kernel = self.add_weight(name=f"{name}_kernel", shape=(hidden, self.num_heads, head_dim),
                                     initializer=kernel_init)
            bias = self.add_weight(name=f"{name}_bias", shape=(self.num_heads, head_dim), initializer="zeros")
            setattr(self, f"{name}_kernel", kernel)
            setattr(self, f"{name}_bias", bias)
        self.out_kernel = self.add_weight(name="out_kernel", shape=(self.num_heads, head_dim, hidden),
                                          initializer=kernel_init)
        self.out_bias = self.add_weight(name="out_bias", shape=(hidden,), initializer="zeros")

    def _project(self, x, name):
        kernel = ops.cast(getattr(self, f"{name}_kernel"), x.dtype)
        bias = ops.cast(getattr(self, f"{name}_bias"), x.dtype)
        return ops.einsum("ntd,dhk->nthk", x, kernel) + bias

    def call(self, x, training=None):
        head_dim = self.query_kernel.shape[-1]
        query = self._project(x, "query") * (1.0 / math.sqrt(head_dim))
        key = self._project(x, "key")
        value = self._project(x, "value")
        logits = ops.einsum("nqhk,nmhk->nhqm", query, key)
        probabilities = ops.softmax(logits, axis=-1)
        attended = probabilities
        if self.dropout is not None:
            attended = self.dropout(probabilities, training=training)
        heads = ops.einsum("nhqm,nmhk->nqhk", attended, value)
        output = ops.einsum("nqhk,hkd->nqd", heads, ops.cast(self.out_kernel, x.dtype))
        output = output + ops.cast(self.out_bias, x.dtype)
        return output, probabilities, heads

    def compute_output_shape(self, input_shape):
        batch, tokens, hidden = input_shape
        head_dim = hidden // self.num_heads
        return (
            (batch, tokens, hidden),
            (batch, self.num_heads, tokens, tokens),
            (batch, tokens, self.num_heads, head_dim),
        )

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout_rate": self.dropout_rate}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PoolTokens(keras.layers.Layer):
    """Pools a token sequence ``[n, T, D] -> [n, D]``: ``"token"`` takes token 0 (CLS), ``"gap"`` the mean."""

    METHODS = ("token", "gap")

    def __init__(self, method, **kwargs):
        super().__init__(**kwargs)
        if method not in self.METHODS:
            raise ValueError(f"PoolTokens: method must be one of {self.METHODS}, got {method!r}")
        self.method = method

    def call(self, tokens):
        if self.method == "token":
            return tokens[:, 0]
        return ops.mean(tokens, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "method": self.method}


def mlp_block(x, hidden_dim, name, dropout_rate=0.0, kernel_initializer="glorot_uniform",
              bias_initializer="zeros"):
    """Functional two-layer MLP ``Dense(hidden_dim) -> exact GELU -> Dense(input width)``.

    ``x`` is ``[..., d]``; returns ``(hidden [..., hidden_dim], output [..., d])``. The Dense layers are named
    ``{name}_dense0`` and ``{name}_dense1``; with ``dropout_rate > 0`` dropout follows each of them (as vit_jax).
    Keras' ``"gelu"`` is the exact erf form, as ``flax.linen.gelu(approximate=False)``.
    """
    width = x.shape[-1]
    dense = dict(kernel_initializer=kernel_initializer, bias_initializer=bias_initializer)
    hidden = keras.layers.Dense(hidden_dim, activation="gelu", name=f"{name}_dense0", **dense)(x)
    if dropout_rate > 0:
        hidden = keras.layers.Dropout(dropout_rate, name=f"{name}_dropout0")(hidden)
    output = keras.layers.Dense(width, name=f"{name}_dense1", **dense)(hidden)
    if dropout_rate > 0:
        output = keras.layers.Dropout(dropout_rate, name=f"{name}_dropout1")(output)
    return hidden, output


def residual(skip, branch, name, keep_skip=True):
    """Functional residual connection ``skip + branch`` (layer ``{name}_add``).

    With ``keep_skip=False`` the skip connection is removed and the branch passes alone (an identity layer
    ``{name}_no_skip``), so the tap of the sum still exists.
    """
    if keep_skip:
        return keras.layers.Add(name=f"{name}_add")([skip, branch])
    return keras.layers.Identity(name=f"{name}_no_skip")(branch)
