"""The tensorflow-datasets and ImageFolder paths, on small datasets the tests write themselves (no network)."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vitcnn_tf.data import check_split, dataset_info, evaluation_split, load_dataset, split_size

NUM_CLASSES = 3


def _examples(count, seed, size=12):
    """Images whose mean brightness encodes the label, so that content and label can be cross-checked."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % NUM_CLASSES
    images = np.stack([np.full((size, size, 3), 40 + 80 * label, np.uint8) for label in labels])
    images = np.clip(images + rng.integers(-10, 11, images.shape), 0, 255).astype(np.uint8)
    return images, labels


def _label_from_image(images):
    return np.rint((images.mean(axis=(1, 2, 3)) + 1.0) * 127.5 - 40.0) / 80.0


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
    """A tiny prepared tfds dataset 'vitcnn_tiny_test' (train 30, test 9) in its own data_dir.

    Written as tfds writes a prepared dataset (TFRecord shards of serialized examples + dataset_info.json via
    ``tfds.folder_dataset.write_metadata``), so that ``tfds.builder(name, data_dir=...)`` reads it like any
    downloaded dataset.
    """
    data_dir = tmp_path_factory.mktemp("tfds")
    version_dir = data_dir / "vitcnn_tiny_test" / "1.0.0"
    version_dir.mkdir(parents=True)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(12, 12, 3)),
        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
    })
    template = tfds.core.ShardedFileTemplate(
        data_dir=str(version_dir), template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name="vitcnn_tiny_test", filetype_suffix="tfrecord")
    split_infos = []
    for split, (count, seed) in {"train": (30, 0), "test": (9, 1)}.items():
        path = os.fspath(dataclasses.replace(template, split=split).sharded_filepath(shard_index=0, num_shards=1))
        images, labels = _examples(count, seed)
        with tf.io.TFRecordWriter(path) as writer:
            for image, label in zip(images, labels):
                writer.write(features.serialize_example({"image": image, "label": int(label)}))
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=os.path.getsize(path),
                                               filename_template=template))
    tfds.folder_dataset.write_metadata(data_dir=str(version_dir), features=features, split_infos=split_infos,
                                       filename_template=template, supervised_keys=("image", "label"))
    return str(data_dir)


def test_tfds_dataset_loads_from_data_dir_without_download(prepared_tfds, tmp_path):
    info = dataset_info("vitcnn_tiny_test", data_dir=prepared_tfds, cache_dir=tmp_path)
    assert info.num_classes == NUM_CLASSES and info.splits == {"train": 30, "test": 9}
    ds = load_dataset("vitcnn_tiny_test", "train", batch_size=8, image_size=16, data_dir=prepared_tfds,
                      cache_dir=tmp_path)
    assert len(ds) == 4
    images, labels = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
    assert images.shape == (30, 16, 16, 3) and images.dtype == np.float32 and labels.dtype == np.int64
    assert images.min() >= -1 and images.max() <= 1
    np.testing.assert_allclose(_label_from_image(images), labels, atol=0.2)  # images stay with their labels


def test_tfds_fraction_is_stratified_nested_and_reuses_the_label_scan(prepared_tfds, tmp_path):
    def labels_of(fraction):
        ds = load_dataset("vitcnn_tiny_test", "train", batch_size=64, shuffle=False, fraction=fraction,
                          data_dir=prepared_tfds, cache_dir=tmp_path)
        images, labels = next(iter(ds))
        return {image.tobytes() for image in images.numpy()}, labels.numpy()

    small, small_labels = labels_of(0.2)
    large, large_labels = labels_of(0.5)
    assert np.bincount(small_labels).tolist() == [2, 2, 2]
    assert np.bincount(large_labels).tolist() == [5, 5, 5]
    assert small < large
    assert split_size("vitcnn_tiny_test", "train", fraction=0.5, data_dir=prepared_tfds, cache_dir=tmp_path) == 15
    assert len(os.listdir(os.path.join(tmp_path, "tfds_labels"))) == 1


def test_tfds_shuffling_is_seeded(prepared_tfds, tmp_path):
    def order(seed):
        ds = load_dataset("vitcnn_tiny_test", "train", batch_size=30, seed=seed, data_dir=prepared_tfds,
                          cache_dir=tmp_path)
        return next(iter(ds))[0].numpy().mean(axis=(1, 2, 3))

    np.testing.assert_array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))


def test_tfds_not_prepared_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="'mnist' is not prepared.*download=True"):
        load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path)


def test_unknown_tfds_split_is_a_clear_error(prepared_tfds, tmp_path):
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_dataset("vitcnn_tiny_test", "validation", data_dir=prepared_tfds, cache_dir=tmp_path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """root/split/label/*.png with real PNG files of two sizes (resizing must handle both)."""
    root = tmp_path_factory.mktemp("folder")
    names = ["cat", "dog", "eel"]
    for split, (count, seed) in {"train": (15, 2), "test": (6, 3)}.items():
        images, labels = _examples(count, seed, size=10)
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            if index % 2:
                image = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # 20x20
            tf.io.write_file(str(folder / f"{index:03d}.png"), tf.io.encode_png(image))
    return str(root)


def test_image_folder(image_folder, tmp_path):
    info = dataset_info("image_folder", data_dir=image_folder, cache_dir=tmp_path)
    assert info.class_names == ("cat", "dog", "eel") and info.splits == {"train": 15, "test": 6}
    ds = load_dataset("image_folder", "train", batch_size=4, image_size=8, data_dir=image_folder,
                      cache_dir=tmp_path)
    images, labels = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
    assert images.shape == (15, 8, 8, 3) and np.bincount(labels).tolist() == [5, 5, 5]
    np.testing.assert_allclose(_label_from_image(images), labels, atol=0.2)
    subset = load_dataset("image_folder", "train", batch_size=16, num_examples=6, shuffle=False,
                          data_dir=image_folder, cache_dir=tmp_path)
    assert np.bincount(next(iter(subset))[1].numpy()).tolist() == [2, 2, 2]


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """tests/tiny_tfds.py prepared by tfds' own download_and_prepare (which needs importlib_resources)."""
    import tiny_tfds

    return tiny_tfds.prepare(tmp_path_factory.mktemp("imagenet_like"))


def test_tfds_prepare_gives_train_validation_and_an_unlabelled_test(imagenet_like, tmp_path):
    import tiny_tfds

    info = check_split(tiny_tfds.NAME, "validation", data_dir=imagenet_like, cache_dir=tmp_path)
    assert info.splits == {"train": 60, "validation": 24, "test": 6}
    ds = load_dataset(tiny_tfds.NAME, "validation", batch_size=24, image_size=16, data_dir=imagenet_like,
                      cache_dir=tmp_path)
    images, labels = (tensor.numpy() for tensor in next(iter(ds)))
    np.testing.assert_allclose(_label_from_image(images), labels, atol=0.2)
    assert np.bincount(labels).tolist() == [8, 8, 8]


@pytest.mark.parametrize("kwargs", [{}, {"num_examples": 3}, {"fraction": 0.5}])
def test_negative_labels_are_an_error_naming_the_dataset_and_split(imagenet_like, tmp_path, kwargs):
    import tiny_tfds

    message = f"dataset '{tiny_tfds.NAME}' split 'test': 6 of 6 labels are not class indices in \\[0, 3\\)"
    with pytest.raises(ValueError, match=message):
        check_split(tiny_tfds.NAME, "test", data_dir=imagenet_like, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=message):
        load_dataset(tiny_tfds.NAME, "test", batch_size=2, data_dir=imagenet_like, cache_dir=tmp_path, **kwargs)


def test_evaluation_split_is_validation_for_imagenet_only():
    assert evaluation_split("imagenet2012") == "validation"
    assert evaluation_split("imagenet2012/subset:5.1.0") == "validation"
    assert [evaluation_split(name) for name in ("shapes10", "cifar10", "image_folder")] == ["test"] * 3


def test_examples_per_class_from_tfds_gives_every_class_the_same_count(imagenet_like, tmp_path):
    import tiny_tfds

    ds = load_dataset(tiny_tfds.NAME, "train", batch_size=64, examples_per_class=4, shuffle=False,
                      data_dir=imagenet_like, cache_dir=tmp_path)
    assert np.bincount(next(iter(ds))[1].numpy()).tolist() == [4, 4, 4]
