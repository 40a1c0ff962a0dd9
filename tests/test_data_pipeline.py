"""load_dataset on the embedded sets: shapes, dtypes, value ranges, determinism, subsets, caching, errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf.data import dataset_info, generate_shapes10, load_dataset, pipeline, shapes, split_size, to_model_input
from vitcnn_tf.data import sources


@pytest.fixture(autouse=True)
def small_shapes10(monkeypatch):
    """A small shapes10 (600 train / 200 test) so that the tests stay fast; the generator is the real one."""
    monkeypatch.setattr(sources, "SHAPES10_SPLITS", {"train": (600, 0), "test": (200, 1)})


def _collect(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def test_generator_is_deterministic_balanced_and_varied():
    images, labels = generate_shapes10(250, seed=3)
    again, again_labels = generate_shapes10(250, seed=3)
    other, _ = generate_shapes10(250, seed=4)
    assert images.shape == (250, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other)
    assert np.bincount(labels, minlength=10).tolist() == [25] * 10
    assert len({image.tobytes() for image in images}) == 250
    # colour carries no class information: the mean colour of an image is a poor class cue
    means = images.reshape(250, -1, 3).mean(axis=1)
    per_class = np.stack([means[labels == c].mean(axis=0) for c in range(10)])
    assert np.ptp(per_class, axis=0).max() < 40


def test_generator_objects_vary_in_position_and_scale():
    """The object (foreground pixels are brighter than any background pixel minus noise) moves and scales."""
    images, _ = generate_shapes10(200, seed=0)
    bright = images.astype(np.float32).min(axis=-1) > 0.6 * 255  # foreground colours are >= 0.55 in every channel
    rows, cols = np.indices((32, 32))
    areas = bright.sum(axis=(1, 2))
    has_object = areas > 10
    centres_x = (bright * cols).sum(axis=(1, 2))[has_object] / areas[has_object]
    centres_y = (bright * rows).sum(axis=(1, 2))[has_object] / areas[has_object]
    assert has_object.mean() > 0.8
    assert centres_x.std() > 3 and centres_y.std() > 3
    assert areas[has_object].max() > 4 * np.percentile(areas[has_object], 10)


def test_shapes10_pipeline_shapes_dtypes_ranges(tmp_path):
    ds = load_dataset("shapes10", "train", batch_size=64, image_size=32, cache_dir=tmp_path)
    assert len(ds) == 10  # 600 / 64 rounded up; cardinality is known
    images, labels = _collect(ds)
    assert images.shape == (600, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.9 and images.max() > 0.9


def test_images_equal_the_generator_output_scaled(tmp_path):
    raw, raw_labels = generate_shapes10(200, seed=1)
    images, labels = _collect(load_dataset("shapes10", "test", batch_size=50, cache_dir=tmp_path))
    np.testing.assert_array_equal(labels, raw_labels)  # the test split is not shuffled by default
    np.testing.assert_allclose(images, raw.astype(np.float64) / 127.5 - 1.0, atol=1e-6)


def test_resizing_to_the_model_size(tmp_path):
    images, _ = _collect(load_dataset("shapes10", "test", batch_size=100, image_size=48, cache_dir=tmp_path))
    assert images.shape == (200, 48, 48, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_same_seed_same_batches_other_seed_other_order(tmp_path):
    def first_epochs(seed, global_seed=None):
        if global_seed is not None:
            keras.utils.set_random_seed(global_seed)  # must not matter for the embedded sets
        ds = load_dataset("shapes10", "train", batch_size=100, seed=seed, cache_dir=tmp_path)
        return [_collect(ds) for _ in range(2)]

    (a1, l1), (a2, l2) = first_epochs(0, global_seed=1)
    (b1, m1), (b2, m2) = first_epochs(0, global_seed=2)
    (c1, n1), _ = first_epochs(1)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(l2, m2)
    assert not np.array_equal(l1, l2)  # reshuffled every epoch
    assert not np.array_equal(l1, n1)  # another seed, another order
    assert sorted(l1.tolist()) == sorted(n1.tolist())  # of the same examples


def test_fraction_subsets_through_the_pipeline_are_nested_and_stratified(tmp_path):
    def images_of(fraction):
        images, labels = _collect(load_dataset("shapes10", "train", batch_size=256, shuffle=False,
                                               fraction=fraction, cache_dir=tmp_path))
        return {image.tobytes() for image in images}, labels

    small, small_labels = images_of(0.1)
    large, large_labels = images_of(0.3)
    everything, all_labels = images_of(1.0)
    assert len(small) == 60 and len(large) == 180 and len(everything) == 600
    assert small < large < everything
    assert np.bincount(small_labels).tolist() == [6] * 10
    assert np.bincount(large_labels).tolist() == [18] * 10
    assert split_size("shapes10", "train", fraction=0.3, cache_dir=tmp_path) == 180


def test_num_examples_subset(tmp_path):
    ds = load_dataset("shapes10", "train", batch_size=32, num_examples=45, cache_dir=tmp_path)
    images, labels = _collect(ds)
    assert images.shape[0] == 45 and len(ds) == 2
    assert np.bincount(labels, minlength=10).max() - np.bincount(labels, minlength=10).min() <= 1


def test_generated_data_is_cached_and_a_corrupted_cache_is_regenerated(tmp_path, monkeypatch):
    load_dataset("shapes10", "test", cache_dir=tmp_path)
    path = os.path.join(tmp_path, "shapes10", f"v{shapes.GENERATOR_VERSION}_n200_seed1.npz")
    assert os.path.exists(path)
    calls = []
    real_generate = shapes.generate_shapes10
    monkeypatch.setattr(shapes, "generate_shapes10", lambda *a, **k: calls.append(a) or real_generate(*a, **k))
    first, _ = _collect(load_dataset("shapes10", "test", cache_dir=tmp_path))
    assert calls == []  # reused
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    second, _ = _collect(load_dataset("shapes10", "test", cache_dir=tmp_path))
    assert len(calls) == 1  # regenerated
    np.testing.assert_array_equal(first, second)


def test_augmentation_is_deterministic_and_changes_training_images(tmp_path):
    def batches(augment, seed=0):
        return _collect(load_dataset("shapes10", "train", batch_size=200, augment=augment, seed=seed,
                                     num_examples=200, cache_dir=tmp_path))

    plain, plain_labels = batches(None)
    moved, moved_labels = batches("translate_flip")
    again, _ = batches("translate_flip")
    np.testing.assert_array_equal(plain_labels, moved_labels)  # same order: augmentation does not consume seeds
    np.testing.assert_array_equal(moved, again)
    assert np.mean(np.any(moved != plain, axis=(1, 2, 3))) > 0.9
    assert moved.min() >= -1.0 and moved.max() <= 1.0


def test_digits():
    info = dataset_info("digits")
    assert info.num_classes == 10 and info.splits == {"train": 1433, "test": 364}
    train_images, train_labels = _collect(load_dataset("digits", "train", batch_size=512, image_size=16))
    test_images, test_labels = _collect(load_dataset("digits", "test", batch_size=512, image_size=16))
    assert train_images.shape == (1433, 16, 16, 3) and test_images.shape == (364, 16, 16, 3)
    np.testing.assert_array_equal(train_images[..., 0], train_images[..., 2])  # grey repeated to RGB
    assert train_images.min() >= -1 and train_images.max() <= 1 and train_images.max() > 0.9
    # stratified fixed split: every class in the test set in proportion
    np.testing.assert_allclose(np.bincount(test_labels) / 364, np.bincount(train_labels) / 1433, atol=0.01)
    # the split is disjoint: no test image appears in the training set
    train_set = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_set for image in test_images)


def test_to_model_input_matches_a_numpy_reference():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    out = to_model_input(tf.constant(image), 8).numpy()
    np.testing.assert_allclose(out, np.repeat(image / 127.5 - 1.0, 3, axis=-1), atol=1e-6)
    doubled = to_model_input(tf.constant(image), 16).numpy()
    assert doubled.shape == (16, 16, 3)
    np.testing.assert_allclose(doubled.mean(), out.mean(), atol=0.05)  # resizing preserves the mean intensity


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(name="no_such_dataset_xyz"), ValueError, "unknown dataset name 'no_such_dataset_xyz'.*shapes10"),
    (dict(fraction=0.0), ValueError, "fraction must be in"),
    (dict(fraction=1.01), ValueError, "fraction must be in"),
    (dict(num_examples=601), ValueError, "num_examples=601 is larger than split 'train'"),
    (dict(split="validation"), ValueError, "no split 'validation'.*test.*train"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    (dict(image_size=-3), ValueError, "image_size must be a positive integer"),
    (dict(augment="rotate"), ValueError, "augment must be one of"),
    (dict(name="image_folder"), ValueError, "needs data_dir"),
])
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, error, message):
    kwargs = {"name": "shapes10", **kwargs}
    with pytest.raises(error, match=message):
        load_dataset(cache_dir=tmp_path, **kwargs)


def test_default_dataset_is_shapes10():
    assert pipeline.DEFAULT_DATASET == "shapes10"
    assert dataset_info().class_names == shapes.CLASS_NAMES


def test_to_model_input_downsamples_as_the_releases_do():
    """vit_jax / BiT evaluation: tf.image.resize bilinear without anti-aliasing, then (x - 127.5) / 127.5. Halving
    the side samples between 2x2 pixel blocks, so each output is the mean of its block (anti-aliasing would
    spread the filter over the neighbouring blocks)."""
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = to_model_input(tf.constant(image), 4).numpy()
    blocks = image.astype(np.float64).reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, (blocks - 127.5) / 127.5, atol=1e-5)
