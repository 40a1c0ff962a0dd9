"""Effective receptive fields (Luo et al. 2016; Section 5 Figure 6, Appendix C).

The ERF of a layer is the mean over images and channels of ``|d a_c(centre) / d x|``: the absolute gradient of
each channel ``c`` of the layer's activation at the centre location with respect to the input image, averaged over
the channels ``c`` (each channel's gradient is taken separately, before the absolute value), over the images, and
over the input's colour channels. The centre location is the pixel ``(h // 2, w // 2)`` of a feature map
``[n, h, w, c]``, or the patch token at grid position ``(g // 2, g // 2)`` of a token sequence ``[n, T, d]`` (prefix
/ CLS tokens excluded); for even sizes that is the lower-right of the four central positions.
"""

import weakref

import numpy as np
import tensorflow as tf

from vitcnn_tf import grids, representations
from vitcnn_tf.analysis import tokens as token_layout

# model -> {(tap, num_prefix_tokens) -> (compiled summed_abs_gradients, tap shape)}; entries go away with the model
_GRADIENT_FUNCTIONS = weakref.WeakKeyDictionary()


def centre_index(output_shape, num_prefix_tokens):
    """Index of the centre location into one example of a ``[n, h, w, c]`` map (``(h // 2, w // 2)``) or of a
    ``[n, T, d]`` token sequence (``(num_prefix_tokens + (g // 2) * g + g // 2,)`` on the ``g x g`` patch grid)."""
    if len(output_shape) == 4:
        return (output_shape[1] // 2, output_shape[2] // 2)
    side = grids.square_side(output_shape[1] - num_prefix_tokens,
                             f"tokens of shape {tuple(output_shape)} without {num_prefix_tokens} prefix tokens")
    return (num_prefix_tokens + (side // 2) * side + side // 2,)


def _layer_layout(model, layer, submodel, num_prefix_tokens):
    """Check the tap's rank and resolve the prefix-token count: ``(output rank-3/4 shape, num_prefix_tokens)``."""
    shape = tuple(submodel.output.shape)
    if layer.endswith("/attn"):
        raise ValueError(f"layer: {layer!r} holds attention probabilities, not features; use e.g. its '/sa' tap")
    if layer.endswith("/attn_heads") and len(shape) == 4:  # [n, T, H, dh] -> tokens with H * dh features
        shape = (shape[0], shape[1], shape[2] * shape[3])
    if len(shape) not in (3, 4):
        raise ValueError(
            f"layer: {layer!r} has output shape {shape}; the ERF needs a token sequence [n, T, d] or a feature map "
            "[n, h, w, c]"
        )
    if len(shape) == 4:
        return shape, 0
    if num_prefix_tokens is None:
        num_prefix_tokens = token_layout.infer_num_prefix_tokens(model, shape[1])
    return shape, token_layout.check_num_prefix_tokens(num_prefix_tokens, shape[1], f"layer {layer!r}")


def effective_receptive_field(model, images, layer, num_prefix_tokens=None, batch_size=32, max_channels=None, seed=0):
    """``[image_h, image_w]`` float64 ERF map of ``layer`` (a tap name of ``layer_names(model)``, or a layer name of
    any Keras functional model) over ``images [n, H, W, C]`` (see the module docstring for the definition).

    ``num_prefix_tokens`` (token taps only): default from ``model.config`` (1 for a CLS-token ViT, 0 for GAP ViT
    and Mixer) or, for other models, 0 or 1 from the token count. Images are processed ``batch_size`` at a time.

    Cost: one forward pass of the sub-model per batch, then one backward pass per channel (the exact mean over
    channels of the absolute gradients needs every channel's gradient separately). ``max_channels``: average each
    image over its own random subset of that many channels instead (``sampled_channels``), an unbiased estimate of
    the all-channel map at a cost of ``max_channels`` backward passes per batch, whatever the layer's width.
    """
    return per_image_effective_receptive_field(model, images, layer, num_prefix_tokens, batch_size, max_channels,
                                               seed).mean(axis=0)


def sampled_channels(num_images, num_channels, max_channels=None, seed=0):
    """``[n, k]`` int32 channel indices: every channel for every image (``k = num_channels``) when ``max_channels``
    is None or not smaller, else ``k = max_channels`` channels drawn without replacement for each image
    independently (image ``i``'s draw depends only on ``seed`` and ``i``, not on the batch size)."""
    if max_channels is not None and (isinstance(max_channels, bool) or not isinstance(max_channels, (int, np.integer))
                                     or max_channels < 1):
        raise ValueError(f"max_channels: expected None or an int >= 1, got {max_channels!r}")
    if max_channels is None or max_channels >= num_channels:
        return np.tile(np.arange(num_channels, dtype=np.int32), (num_images, 1))
    draws = [np.random.default_rng(child).choice(num_channels, size=max_channels, replace=False)
             for child in np.random.SeedSequence(seed).spawn(num_images)]
    return np.stack(draws).astype(np.int32)


def per_image_effective_receptive_field(model, images, layer, num_prefix_tokens=None, batch_size=32,
                                        max_channels=None, seed=0):
    """``[n, image_h, image_w]`` float64 ERF map of each image (mean over its channels only), for bootstrap
    intervals over images; its mean over the images is ``effective_receptive_field`` (same arguments)."""
    images = token_layout.as_array(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images: expected a non-empty [n, H, W, C] batch, got shape {images.shape}")
    token_layout.check_finite(images, "images")
    (layer,) = representations.select_layers(model, [layer])
    summed_abs_gradients, shape = _gradient_function(model, layer, num_prefix_tokens)
    channels = sampled_channels(len(images), shape[-1], max_channels, seed)
    total = np.zeros(images.shape, dtype=np.float64)
    for begin in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[begin : begin + batch_size], dtype=tf.float32)
        total[begin : begin + batch_size] = summed_abs_gradients(batch, channels[begin : begin + batch_size]).numpy()
    return total.mean(axis=-1) / channels.shape[1]


def _gradient_function(model, layer, num_prefix_tokens):
    """``(summed_abs_gradients, tap shape)`` of ``model``'s tap ``layer`` (cached per model, tap and prefix count,
    so a model's compiled gradients are reused)."""
    per_model = _GRADIENT_FUNCTIONS.setdefault(model, {})
    if (layer, num_prefix_tokens) not in per_model:
        per_model[layer, num_prefix_tokens] = _build_gradient_function(model, layer, num_prefix_tokens)
    return per_model[layer, num_prefix_tokens]


def _build_gradient_function(model, layer, num_prefix_tokens):
    """The compiled ``summed_abs_gradients(images [b, H, W, C], channels [b, k]) -> [b, H, W, C]`` of
    ``model``'s tap ``layer`` and the tap's shape (a token tap of heads ``[n, T, H, dh]`` as ``[n, T, H * dh]``)."""
    submodel = representations.tap_model(model, layer)
    shape, num_prefix_tokens = _layer_layout(model, layer, submodel, num_prefix_tokens)
    centre = centre_index(shape, num_prefix_tokens)
    flatten_heads = len(submodel.output.shape) == 4 and len(shape) == 3

    @tf.function(autograph=False, reduce_retracing=True)
    def summed_abs_gradients(batch, batch_channels):
        """``sum_j |d a_{c_ij}(centre) / d x_i|`` for images ``x_i`` ``[b, H, W, C]`` and their channels
        ``c_ij`` ``[b, k]``: one forward pass, then one backward pass per column ``j``, seeded with the one-hot
        column (images are independent, so the gradient of the sum over the batch holds each image's own)."""
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(batch)
            activation = submodel(batch, training=False)
            if flatten_heads:  # [b, T, H, dh] -> [b, T, H * dh]
                activation = tf.reshape(activation, (-1, shape[1], shape[2]))
            targets = tf.gather(activation[(slice(None),) + centre], batch_channels, batch_dims=1)  # [b, k]
        num_columns = tf.shape(targets)[1]

        def add_column(column, total):
            seed = tf.one_hot(tf.fill(tf.shape(targets)[:1], column), num_columns, dtype=targets.dtype)
            return column + 1, total + tf.abs(tape.gradient(targets, batch, output_gradients=seed))

        _, total = tf.while_loop(lambda column, _: column < num_columns, add_column,
                                 (tf.constant(0), tf.zeros_like(batch)), parallel_iterations=1)
        return total

    return summed_abs_gradients, shape


def erf_extent(erf_map, mass=0.5, center=None):
    """Side (pixels) of the smallest square window centred on ``center`` holding at least ``mass`` of the total.

    ``erf_map``: ``[H, W]`` non-negative map. ``center``: ``(row, col)`` in continuous pixel coordinates (pixel
    ``(i, j)`` spans ``[i, i + 1) x [j, j + 1)``), default the map's centre of mass. A window of side ``s`` covers
    the pixels ``[r0, r0 + s)`` with ``r0 = floor(row - s / 2 + 1 / 2)`` (``row - s / 2`` rounded half up; likewise for
    columns), shifted to lie inside the image.
    """
    erf_map = token_layout.as_float64(erf_map, "erf_map")
    if erf_map.ndim != 2 or 0 in erf_map.shape:
        raise ValueError(f"erf_map: expected a non-empty [H, W] map, got shape {erf_map.shape}")
    token_layout.check_finite(erf_map, "erf_map")
    if np.any(erf_map < 0):
        raise ValueError(f"erf_map: negative values (min {erf_map.min():.3g}); expected |gradient| values")
    total_mass = erf_map.sum()
    if not total_mass > 0:
        raise ValueError("erf_map: the map is zero everywhere; the extent is undefined")
    if not 0 < mass <= 1:
        raise ValueError(f"mass: expected a fraction in (0, 1], got {mass!r}")
    height, width = erf_map.shape
    if center is None:
        rows, cols = np.indices(erf_map.shape) + 0.5
        center = ((rows * erf_map).sum() / total_mass, (cols * erf_map).sum() / total_mass)
    center_row, center_col = center

    # Integral image: the window sums of every side at once.
    integral = np.zeros((height + 1, width + 1))
    integral[1:, 1:] = erf_map.cumsum(axis=0).cumsum(axis=1)

    sides = np.arange(1, max(height, width) + 1)

    def window_starts(centre_coordinate, size):
        return np.clip(np.floor(centre_coordinate - sides / 2.0 + 0.5), 0, np.maximum(size - sides, 0)).astype(int)

    top, left = window_starts(center_row, height), window_starts(center_col, width)
    bottom, right = np.minimum(top + sides, height), np.minimum(left + sides, width)
    windows = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
    enough = windows >= mass * total_mass * (1 - 1e-12)
    return int(sides[np.argmax(enough)]) if enough.any() else max(height, width)
