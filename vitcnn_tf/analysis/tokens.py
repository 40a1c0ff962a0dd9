"""Token layout shared by the analyses: array conversion, prefix (CLS) tokens and the square patch grid.

A token sequence ``[n, T, d]`` holds ``num_prefix_tokens`` prefix tokens (the CLS token of a ``"token"``
classifier ViT) followed by ``P = g * g`` patch tokens in row-major order on a ``g x g`` grid (its side:
``vitcnn_tf.grids.square_side``).
"""

import numpy as np
import tensorflow as tf

from vitcnn_tf import grids


def as_array(array):
    """``array`` (NumPy, eager TF tensor or nested lists) as an ndarray, dtype unchanged."""
    if isinstance(array, (np.ndarray, np.generic, float, int)):
        return np.asarray(array)
    if tf.is_tensor(array):
        array = array.numpy()
    return np.asarray(array)


def as_float64(array, name):
    """``array`` (NumPy, TF tensor or nested lists) as a float64 ndarray; ``name`` is used in errors."""
    array = as_array(array)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def check_finite(array, name):
    """Raise ``ValueError`` naming ``name`` if ``array`` holds NaN or inf."""
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name}: {bad} non-finite value(s) (NaN or inf) in an array of shape {array.shape}")


def check_num_prefix_tokens(num_prefix_tokens, num_tokens, name):
    """Validate ``0 <= num_prefix_tokens < num_tokens`` (an int)."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, (int, np.integer)):
        raise TypeError(f"{name}: num_prefix_tokens must be an int, got {num_prefix_tokens!r}")
    if not 0 <= num_prefix_tokens < num_tokens:
        raise ValueError(
            f"{name}: num_prefix_tokens={num_prefix_tokens} must be in [0, {num_tokens}) for {num_tokens} tokens"
        )
    return int(num_prefix_tokens)


def infer_num_prefix_tokens(model, num_tokens=None):
    """Number of prefix tokens in a ``[n, num_tokens, d]`` tap of ``model``.

    ``model.config.num_prefix_tokens`` is used when present (our ViT: 1 with the CLS token, 0 for GAP); a model with
    another ``config`` (Mixer, ResNetV2) has none. Otherwise the count is 0 if ``num_tokens`` is a perfect square and
    1 if ``num_tokens - 1`` is; anything else (or no ``num_tokens``) raises and asks for ``num_prefix_tokens``
    explicitly.
    """
    config = getattr(model, "config", None)
    if config is not None:
        return int(getattr(config, "num_prefix_tokens", 0))
    for candidate in (0, 1) if num_tokens is not None else ():
        if grids.is_square(num_tokens - candidate):
            return candidate
    raise ValueError(
        f"cannot infer the number of prefix tokens of a {num_tokens}-token representation of model "
        f"{getattr(model, 'name', model)!r}; pass num_prefix_tokens explicitly"
    )
