"""Independent NumPy float64 forward passes of ViT and MLP-Mixer, written from the release checkpoint arrays.

The forward passes use only the ``.npz`` key names and shapes of the vit_jax release (no vitcnn_tf code):
``params`` is the dict of arrays that ``np.load(checkpoint)`` gives. Each returns {tap name -> array}, with the
tap names of ``vitcnn_tf.models``. Test plumbing: ``random_images``, and ``load_random_checkpoint`` which gives a
model a random checkpoint of its own key shapes through ``load_npz``.
"""

import math
import re

import numpy as np

_ERF = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    """Exact GELU ``0.5 x (1 + erf(x / sqrt(2)))``."""
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x, params, key, epsilon=1e-6):
    """LayerNorm over the last axis with ``key/scale`` and ``key/bias``."""
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * params[f"{key}/scale"] + params[f"{key}/bias"]


def dense(x, params, key):
    """``x @ key/kernel + key/bias`` over the last axis of ``x``."""
    return x @ params[f"{key}/kernel"] + params[f"{key}/bias"]


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def patchify(images, params, key):
    """Non-overlapping patch embedding: ``[n, S, S, C] -> [n, (S / p)^2, D]`` with ``key/kernel [p, p, C, D]``."""
    kernel = params[f"{key}/kernel"]
    patch, _, channels, hidden = kernel.shape
    n, size = images.shape[0], images.shape[1]
    grid = size // patch
    patches = images.reshape(n, grid, patch, grid, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, grid * grid, patch * patch * channels)
    return patches @ kernel.reshape(patch * patch * channels, hidden) + params[f"{key}/bias"]


def vit_forward(params, images, classifier="token", skip_blocks_removed=()):
    """ViT taps for ``images [n, S, S, 3]``; the number of blocks and heads are read from the array shapes."""
    params = {key: np.asarray(value, np.float64) for key, value in params.items()}
    taps = {}
    x = patchify(np.asarray(images, np.float64), params, "embedding")
    if classifier == "token":
        cls = np.broadcast_to(params["cls"], (x.shape[0], 1, x.shape[2]))
        x = np.concatenate([cls, x], axis=1)
    x = x + params["Transformer/posembed_input/pos_embedding"]
    taps["embedding"] = x
    num_blocks = len({m.group(1) for key in params if (m := re.match(r"Transformer/encoderblock_(\d+)/", key))})
    for block in range(num_blocks):
        key = f"Transformer/encoderblock_{block}"
        name = f"block{block:02d}"
        keep_skip = block not in skip_blocks_removed
        y = layer_norm(x, params, f"{key}/LayerNorm_0")
        taps[f"{name}/ln1"] = y
        attention = f"{key}/MultiHeadDotProductAttention_1"
        query, keys, values = (np.einsum("ntd,dhk->nthk", y, params[f"{attention}/{part}/kernel"])
                               + params[f"{attention}/{part}/bias"] for part in ("query", "key", "value"))
        head_dim = query.shape[-1]
        probabilities = softmax(np.einsum("nqhk,nmhk->nhqm", query, keys) / math.sqrt(head_dim))
        heads = np.einsum("nhqm,nmhk->nqhk", probabilities, values)
        y = np.einsum("nqhk,hkd->nqd", heads, params[f"{attention}/out/kernel"]) + params[f"{attention}/out/bias"]
        taps[f"{name}/attn"], taps[f"{name}/attn_heads"], taps[f"{name}/sa"] = probabilities, heads, y
        x = x + y if keep_skip else y
        taps[f"{name}/+sa"] = x
        y = layer_norm(x, params, f"{key}/LayerNorm_2")
        taps[f"{name}/ln2"] = y
        hidden = gelu(dense(y, params, f"{key}/MlpBlock_3/Dense_0"))
        y = dense(hidden, params, f"{key}/MlpBlock_3/Dense_1")
        taps[f"{name}/mlp_hidden"], taps[f"{name}/mlp"] = hidden, y
        x = x + y if keep_skip else y
        taps[f"{name}/+mlp"] = x
    x = layer_norm(x, params, "Transformer/encoder_norm")
    taps["encoder_norm"] = x
    x = x[:, 0] if classifier == "token" else x.mean(axis=1)
    if "pre_logits/kernel" in params:
        x = np.tanh(dense(x, params, "pre_logits"))
    taps["pre_logits"] = x
    taps["logits"] = dense(x, params, "head")
    return taps


def mixer_forward(params, images):
    """MLP-Mixer taps for ``images [n, S, S, 3]``; the number of blocks is read from the keys."""
    params = {key: np.asarray(value, np.float64) for key, value in params.items()}
    taps = {}
    x = patchify(np.asarray(images, np.float64), params, "stem")
    taps["stem"] = x
    num_blocks = len({m.group(1) for key in params if (m := re.match(r"MixerBlock_(\d+)/", key))})
    for block in range(num_blocks):
        key = f"MixerBlock_{block}"
        name = f"block{block:02d}"
        y = layer_norm(x, params, f"{key}/LayerNorm_0")
        taps[f"{name}/ln1"] = y
        hidden = gelu(dense(y.transpose(0, 2, 1), params, f"{key}/token_mixing/Dense_0"))
        y = dense(hidden, params, f"{key}/token_mixing/Dense_1").transpose(0, 2, 1)
        taps[f"{name}/token_mixing_hidden"], taps[f"{name}/token_mixing"] = hidden, y
        x = x + y
        taps[f"{name}/+token_mixing"] = x
        y = layer_norm(x, params, f"{key}/LayerNorm_1")
        taps[f"{name}/ln2"] = y
        hidden = gelu(dense(y, params, f"{key}/channel_mixing/Dense_0"))
        y = dense(hidden, params, f"{key}/channel_mixing/Dense_1")
        taps[f"{name}/channel_mixing_hidden"], taps[f"{name}/channel_mixing"] = hidden, y
        x = x + y
        taps[f"{name}/+channel_mixing"] = x
    x = layer_norm(x, params, "pre_head_layer_norm")
    taps["encoder_norm"] = x
    taps["pre_logits"] = x.mean(axis=1)
    taps["logits"] = dense(taps["pre_logits"], params, "head")
    return taps


def random_images(n, size, seed=0):
    """``[n, size, size, 3]`` float32 uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, size, size, 3)).astype(np.float32)


def random_checkpoint(model, seed=0, scale=0.3):
    """A random float32 checkpoint {key -> array} with ``model``'s checkpoint key shapes.

    LayerNorm scales are drawn near 1, all other arrays from N(0, scale).
    """
    rng = np.random.default_rng(seed)
    params = {}
    for key, variable in model.checkpoint_variables().items():
        values = rng.normal(0.0, scale, size=tuple(variable.shape))
        if key.endswith("/scale"):
            values = 1.0 + values
        params[key] = values.astype(np.float32)
    return params


def load_random_checkpoint(model, folder, seed=0):
    """Saves ``random_checkpoint(model, seed)`` under ``folder``, loads it with ``load_npz``; returns the arrays."""
    from vitcnn_tf.models import load_npz

    params = random_checkpoint(model, seed)
    path = folder / f"random_{seed}.npz"
    np.savez(path, **params)
    load_npz(model, path)
    return params
