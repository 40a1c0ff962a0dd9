"""Model-matched preprocessing: the published releases' evaluation preprocessing, plus an optional light training
augmentation.

The three released families are evaluated the same way: vit_jax (ViT and MLP-Mixer, ``vit_jax/input_pipeline.py``)
and big_transfer (BiT, ``input_pipeline_tf2_or_jax.py``) both resize the whole image to the model's input side with
``tf.image.resize(image, [S, S])`` (bilinear, no anti-aliasing, aspect ratio not preserved, no crop) and scale with
``(image - 127.5) / 127.5`` to [-1, 1]. :func:`to_model_input` does the same for every family, scaling as
``image / 127.5 - 1`` (equal up to float32 rounding, at most 6e-8; the CPU zoo was trained on this form).
"""

import tensorflow as tf


def to_model_input(image, image_size):
    """One image ``[h, w, c]`` (``c`` 1 or 3; uint8 in [0, 255] or float in [0, 255]) -> float32
    ``[image_size, image_size, 3]`` in [-1, 1].

    Grey images are repeated to 3 channels; other sizes are resized bilinearly without anti-aliasing (the whole
    image, aspect ratio not preserved), then scaled to [-1, 1], as the vit_jax and BiT evaluation pipelines do.
    """
    image = tf.cast(image, tf.float32)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels != 3:
        raise ValueError(f"to_model_input: images must have 1 or 3 channels, got shape {image.shape}")
    if tuple(image.shape[-3:-1]) != (image_size, image_size):
        image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=False)
    return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)


def augment(image, seed, flip=True):
    """Random translation (reflect-pad by ``size // 8`` pixels, random crop back) and, with ``flip``, a random
    horizontal flip, for one image ``[s, s, 3]``. ``seed`` is an int64 ``[2]`` tensor (stateless ops, so the
    result is a pure function of image and seed)."""
    size = image.shape[0]
    pad = max(size // 8, 1)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(padded, size=tf.shape(image), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image
