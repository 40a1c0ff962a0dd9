import keras
import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf.analysis import receptive_field
from vitcnn_tf.models import ViT, ViTConfig
from vitcnn_tf.models.resnet_v2 import ResNetV2, ResNetV2Config

POSITIVE = keras.initializers.RandomUniform(0.1, 1.0, seed=0)


def conv_stack(kernel_size, num_layers, size=15, channels=2):
    """Linear 'same' convolutions with positive kernels (so no gradient entry cancels to zero)."""
    images = keras.Input((size, size, channels))
    x = images
    for index in range(num_layers):
        x = keras.layers.Conv2D(3 + index, kernel_size, padding="same", kernel_initializer=POSITIVE,
                                name=f"conv{index}")(x)
    return keras.Model(images, x)


def images_for(model, count=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(count, *model.input_shape[1:])).astype(np.float32)


def support(erf_map):
    rows, cols = np.nonzero(erf_map)
    return rows.min(), rows.max(), cols.min(), cols.max(), len(rows)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_single_convolution_is_the_mean_absolute_kernel_at_the_centre(kernel_size):
    model = conv_stack(kernel_size, 1)
    erf = receptive_field.effective_receptive_field(model, images_for(model), "conv0")
    assert erf.shape == (15, 15)
    half = kernel_size // 2
    assert support(erf) == (7 - half, 7 + half, 7 - half, 7 + half, kernel_size**2)
    # d a_c(7, 7) / d x(7 + i, 7 + j, ch) = kernel[half + i, half + j, ch, c]: mean over ch and c of |kernel|.
    kernel = model.get_layer("conv0").kernel.numpy()
    expected = np.abs(kernel).mean(axis=(2, 3))
    np.testing.assert_allclose(erf[7 - half : 8 + half, 7 - half : 8 + half], expected, rtol=1e-5)
    assert receptive_field.erf_extent(erf, mass=1.0) == kernel_size


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_two_stacked_convolutions_have_support_2k_minus_1(kernel_size):
    model = conv_stack(kernel_size, 2)
    erf = receptive_field.effective_receptive_field(model, images_for(model), "conv1")
    side = 2 * kernel_size - 1
    assert support(erf) == (7 - side // 2, 7 + side // 2, 7 - side // 2, 7 + side // 2, side**2)


def test_image_batches_do_not_change_the_result_and_a_channel_subset_is_their_mean():
    model = conv_stack(3, 2)  # conv1 has 4 channels
    images = images_for(model, count=5)
    whole = receptive_field.effective_receptive_field(model, images, "conv1")
    batched = receptive_field.effective_receptive_field(model, images, "conv1", batch_size=2)
    np.testing.assert_allclose(batched, whole, rtol=1e-5)
    # Independent per-image, per-channel maps: eager gradient of each channel at the centre pixel (7, 7).
    inputs = tf.constant(images)
    per_channel = []
    for channel in range(4):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            activation = model(inputs)[:, 7, 7, channel]
        per_channel.append(np.abs(tape.gradient(activation, inputs).numpy()).mean(axis=3))  # [n, 15, 15]
    per_channel = np.stack(per_channel, axis=1)  # [n, 4, 15, 15]
    np.testing.assert_allclose(per_channel.mean(axis=(0, 1)), whole, rtol=1e-5)
    subset = receptive_field.per_image_effective_receptive_field(model, images, "conv1", max_channels=2, seed=1,
                                                                 batch_size=2)
    chosen = receptive_field.sampled_channels(len(images), 4, max_channels=2, seed=1)
    expected = np.stack([per_channel[i, chosen[i]].mean(axis=0) for i in range(len(images))])
    np.testing.assert_allclose(subset, expected, rtol=1e-5)


def test_a_models_gradients_are_compiled_once_per_tap():
    model = conv_stack(3, 2)
    first = receptive_field.per_image_effective_receptive_field(model, images_for(model, count=4), "conv1")
    again = receptive_field.per_image_effective_receptive_field(model, images_for(model, count=4), "conv1")
    np.testing.assert_array_equal(again, first)
    gradients, shape = receptive_field._gradient_function(model, "conv1", None)
    assert gradients.experimental_get_tracing_count() == 1 and shape == (None, 15, 15, 4)


def test_sampled_channels_are_drawn_per_image_without_replacement():
    every = receptive_field.sampled_channels(3, 5)
    np.testing.assert_array_equal(every, np.tile(np.arange(5), (3, 1)))
    np.testing.assert_array_equal(receptive_field.sampled_channels(3, 5, max_channels=9), every)
    drawn = receptive_field.sampled_channels(200, 64, max_channels=4, seed=7)
    assert drawn.shape == (200, 4) and drawn.dtype == np.int32
    assert all(len(set(row)) == 4 for row in drawn) and drawn.min() >= 0 and drawn.max() < 64
    assert len({tuple(row) for row in drawn}) > 190  # images draw their channels independently
    np.testing.assert_array_equal(receptive_field.sampled_channels(50, 64, max_channels=4, seed=7), drawn[:50])
    # Every channel is equally likely: 800 draws of 64 channels, each expected 12.5 times.
    counts = np.bincount(drawn.ravel(), minlength=64)
    assert counts.min() >= 2 and counts.max() <= 30
    with pytest.raises(ValueError, match="max_channels"):
        receptive_field.sampled_channels(3, 5, max_channels=0)


def test_even_sized_map_uses_the_lower_right_centre_pixel():
    model = conv_stack(1, 1, size=8)
    erf = receptive_field.effective_receptive_field(model, images_for(model), "conv0")
    assert support(erf) == (4, 4, 4, 4, 1)


def tiny_vit(classifier):
    config = ViTConfig(patch_size=4, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1, image_size=20,
                       num_classes=3, classifier=classifier)
    return ViT(config)


@pytest.fixture(scope="module")
def cls_vit():
    return tiny_vit("token")


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_vit_embedding_sees_only_the_centre_patch(classifier):
    model = tiny_vit(classifier)
    # 5x5 grid of 4x4 patches: the centre token (after the CLS token, if any) is patch (2, 2) = pixels 8..11.
    embedding = receptive_field.effective_receptive_field(model, images_for(model, count=2), "embedding")
    assert support(embedding) == (8, 11, 8, 11, 16)


def test_a_vit_block_is_not_local(cls_vit):
    images = images_for(cls_vit, count=2)
    attention_branch = receptive_field.effective_receptive_field(cls_vit, images, "block00/sa")
    after_block = receptive_field.effective_receptive_field(cls_vit, images, "block00/+mlp")
    for erf in (attention_branch, after_block):
        assert np.count_nonzero(erf) == 20 * 20  # every pixel, including the far corners, has an influence
        assert erf[0:4, 0:4].mean() > 1e-3 * erf[8:12, 8:12].mean()
    # The residual connection keeps the centre patch dominant after the block, but not in the attention branch.
    centre_share = lambda erf: erf[8:12, 8:12].sum() / erf.sum()  # noqa: E731
    assert centre_share(after_block) > centre_share(attention_branch)


def test_per_head_attention_output_is_taken_as_tokens_and_is_not_local(cls_vit):
    heads = receptive_field.effective_receptive_field(cls_vit, images_for(cls_vit, count=2), "block00/attn_heads")
    assert np.count_nonzero(heads) == 20 * 20


def test_resnet_first_unit_is_local_up_to_its_group_norm():
    model = ResNetV2(ResNetV2Config(block_counts=(1, 1), width_factor=0.125, stem="small", image_size=12,
                                    num_classes=3, num_groups=4))
    # Small stem: one 3x3 convolution; the unit adds one 3x3 (between 1x1s): a 5x5 window around pixel (6, 6).
    # GroupNorm statistics are taken over the whole map, so every pixel has a small, roughly uniform influence.
    erf = receptive_field.effective_receptive_field(model, images_for(model, count=2), "block1/unit01/+res")
    window = np.zeros_like(erf, dtype=bool)
    window[4:9, 4:9] = True
    assert erf[~window].max() < 0.1 * erf.max()
    assert erf[window].sum() > 0.6 * erf.sum()
    assert np.all(erf[~window] > 0)


def test_centre_index():
    assert receptive_field.centre_index((None, 7, 8, 3), 0) == (3, 4)
    assert receptive_field.centre_index((None, 1 + 16, 5), 1) == (1 + 2 * 4 + 2,)  # grid (2, 2) of 4x4 after CLS
    assert receptive_field.centre_index((None, 9, 5), 0) == (4,)


def test_erf_extent():
    delta = np.zeros((9, 9))
    delta[4, 4] = 1.0
    assert receptive_field.erf_extent(delta) == 1
    uniform = np.ones((10, 10))
    assert receptive_field.erf_extent(uniform, mass=0.5) == 8  # 7 * 7 = 49 < 50 <= 64
    assert receptive_field.erf_extent(uniform, mass=1.0) == 10
    corner = np.zeros((10, 10))
    corner[0:2, 0:2] = 1.0
    assert receptive_field.erf_extent(corner, mass=1.0) == 2  # centred on the centre of mass (1, 1)
    assert receptive_field.erf_extent(corner, mass=1.0, center=(5.0, 5.0)) == 10
    with pytest.raises(ValueError, match="zero everywhere"):
        receptive_field.erf_extent(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="mass"):
        receptive_field.erf_extent(uniform, mass=0.0)


def test_bad_layers_and_inputs_raise_clear_errors(cls_vit):
    images = images_for(cls_vit, count=1)
    with pytest.raises(ValueError, match="unknown taps.*'nope'"):
        receptive_field.effective_receptive_field(cls_vit, images, "nope")
    with pytest.raises(ValueError, match="attention probabilities"):
        receptive_field.effective_receptive_field(cls_vit, images, "block00/attn")
    with pytest.raises(ValueError, match="pre_logits.*token sequence"):
        receptive_field.effective_receptive_field(cls_vit, images, "pre_logits")
    with pytest.raises(ValueError, match="square grid"):  # 26 tokens without the CLS prefix removed
        receptive_field.effective_receptive_field(cls_vit, images, "embedding", num_prefix_tokens=0)
    with pytest.raises(ValueError, match=r"images: expected a non-empty \[n, H, W, C\]"):
        receptive_field.effective_receptive_field(cls_vit, images[0], "embedding")


def test_per_image_erf_maps_average_to_the_erf_and_are_each_images_own():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((9, 9, 2))
    hidden = keras.layers.Conv2D(3, 3, padding="same", activation="tanh", name="conv0")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same", name="conv1")(hidden))
    images = np.random.default_rng(0).uniform(-1, 1, size=(5, 9, 9, 2)).astype(np.float32)
    # float32 gradients computed in batches of 2 and of 5: equal to float32 rounding (oneDNN picks its kernels
    # by batch size), hence rtol 1e-5.
    per_image = receptive_field.per_image_effective_receptive_field(model, images, "conv1", batch_size=2)
    assert per_image.shape == (5, 9, 9)
    np.testing.assert_allclose(per_image.mean(axis=0),
                               receptive_field.effective_receptive_field(model, images, "conv1"), rtol=1e-5)
    np.testing.assert_allclose(per_image[3], receptive_field.effective_receptive_field(model, images[3:4], "conv1"),
                               rtol=1e-6)
    assert not np.allclose(per_image[0], per_image[1])  # tanh: the gradient depends on the image
