"""Rows of the release-key tables of the model families: ``(release .npz key, layer name, weight attribute)``.

Each family's ``checkpoint_layout()`` lists one row per release array (as timm's ``checkpoint_filter_fn`` maps
release keys to module weights); ``TappedModel.checkpoint_variables`` turns the table into variables.
"""


def dense_keys(key, layer):
    """Rows of a Dense or Conv2D layer ``layer`` stored under ``key``: ``key/kernel``, ``key/bias``."""
    return [(f"{key}/kernel", layer, "kernel"), (f"{key}/bias", layer, "bias")]


def layer_norm_keys(key, layer):
    """Rows of a LayerNormalization layer ``layer`` stored under ``key``: ``key/scale``, ``key/bias``."""
    return [(f"{key}/scale", layer, "gamma"), (f"{key}/bias", layer, "beta")]


def group_norm_keys(key, layer):
    """Rows of a GroupNormalization layer ``layer`` stored under ``key`` (BiT): ``key/gamma``, ``key/beta``."""
    return [(f"{key}/gamma", layer, "gamma"), (f"{key}/beta", layer, "beta")]


def standardized_conv_keys(key, layer):
    """Row of a bias-free weight-standardized conv ``layer`` stored under ``key`` (BiT)."""
    return [(f"{key}/standardized_conv2d/kernel", layer, "kernel")]
