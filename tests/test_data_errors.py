"""Image folders with an empty class folder or an unreadable image: errors that name the folder or the file."""

import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf.data import dataset_info, load_dataset
from vitcnn_tf.data.sources import checked_image_file


def _write_folder(root, classes=("cat", "dog"), per_class=3, splits=("train", "test")):
    """root/split/class/NNN.png, 6x6 RGB PNGs whose colour encodes the class."""
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                image = np.full((6, 6, 3), 40 * label + index, np.uint8)
                tf.io.write_file(str(folder / f"{index:03d}.png"), tf.io.encode_png(image))
    return root


def _load(root, tmp_path, split="train"):
    return load_dataset("image_folder", split, batch_size=4, image_size=6, shuffle=False, data_dir=str(root),
                        cache_dir=tmp_path / "cache")


def test_a_split_whose_only_class_folder_is_empty_names_the_folder(tmp_path):
    """It used to raise ``TypeError: Input 'filename' of 'ReadFile' Op has type float32``."""
    root = _write_folder(tmp_path / "data", classes=("cat",), splits=("train",))
    (root / "test" / "cat").mkdir(parents=True)
    empty = str(root / "test" / "cat")
    with pytest.raises(ValueError, match=rf"class folder '{empty}' \(class 'cat' of split 'test'\) holds no image "
                                         r"file \(\.jpg, \.jpeg, \.png\): it is empty"):
        _load(root, tmp_path, "test")


def test_an_empty_class_folder_beside_full_ones_names_the_folder(tmp_path):
    """It used to give a class without examples, silently."""
    root = _write_folder(tmp_path / "data")
    (root / "train" / "eel").mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*train/eel' \(class 'eel' of split 'train'\)"):
        dataset_info("image_folder", data_dir=str(root), cache_dir=tmp_path / "cache")


def test_a_class_folder_of_non_image_files_lists_them(tmp_path):
    root = _write_folder(tmp_path / "data")
    (root / "train" / "eel").mkdir()
    (root / "train" / "eel" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"its 1 files \(e\.g\. \['notes\.txt'\]\) are not images"):
        _load(root, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage-after-signature", "text"])
def test_a_corrupt_png_names_the_file(tmp_path, damage):
    """A corrupt PNG used to fail during iteration with "Invalid PNG data" and no file name."""
    root = _write_folder(tmp_path / "data")
    path = root / "train" / "dog" / "001.png"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2],
                      "garbage-after-signature": data[:8] + b"garbage" * 10,
                      "text": b"<html>not found</html>"}[damage])
    ds = _load(root, tmp_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"unreadable image file \(not a complete PNG.*"
                                                             r"truncated or corrupt\).*train/dog/001\.png"):
        list(ds)


def test_an_intact_folder_still_loads_every_image(tmp_path):
    root = _write_folder(tmp_path / "data")
    images, labels = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in _load(root, tmp_path)]))
    assert images.shape == (6, 6, 6, 3) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # Colour 40 * label + index in [0, 255] is scaled to [-1, 1].
    colours = np.rint((images[:, 0, 0, 0] + 1.0) * 127.5).astype(int)
    assert sorted(colours.tolist()) == [0, 1, 2, 40, 41, 42]
    np.testing.assert_array_equal(colours // 40, labels)


@pytest.mark.parametrize("encode", [lambda x: tf.io.encode_png(x), lambda x: tf.io.encode_jpeg(x)],
                         ids=["png", "jpeg"])
def test_checked_image_file_passes_complete_files_through(encode):
    encoded = encode(np.zeros((4, 4, 3), np.uint8))
    assert checked_image_file(encoded, tf.constant("x")).numpy() == encoded.numpy()
