"""Where examples come from: in-memory embedded sets (``shapes10``, ``digits``) and tensorflow-datasets
builders (any registered or prepared dataset, and ``tfds.folder_dataset.ImageFolder``).

Each source yields *raw* examples ``(image uint8 [h, w, c], label int64)``; resizing, scaling, subsets,
shuffling and batching are done by :func:`vitcnn_tf.data.load_dataset`.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitcnn_tf import atomic_io
from vitcnn_tf.data import shapes
from vitcnn_tf.data.subsets import stratified_subset_indices

# split -> (num_examples, generator seed). "train_large" and "validation" are the zoo's training and early-stopping
# sets; "train" (the few-shot probes' pool) and "test" (every evaluation) are held out from both.
SHAPES10_SPLITS = {"train": (10_000, 0), "test": (2_000, 1), "train_large": (30_000, 2), "validation": (2_000, 3)}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
EMBEDDED_DATASETS = ("shapes10", "digits")
IMAGE_FOLDER = "image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the files tfds.folder_dataset.ImageFolder reads


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds: ``splits`` maps each available split to its number of examples; ``image_shape`` is
    the native ``(h, w, c)`` or ``None`` when it varies between images."""

    name: str
    num_classes: int
    class_names: tuple
    splits: dict
    image_shape: tuple | None


def default_cache_dir():
    """``$VITCNN_TF_CACHE`` or ``~/.cache/vitcnn_tf``: generated data and label scans are cached there."""
    return os.environ.get("VITCNN_TF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vitcnn_tf")


class ArraySource:
    """An embedded dataset held in memory as NumPy arrays."""

    in_memory = True

    def __init__(self, info, load_split):
        self.info = info
        self._load_split = load_split

    def num_examples(self, split):
        _check_split(self.info, split)
        return self.info.splits[split]

    def labels(self, split):
        return self.arrays(split)[1]

    def arrays(self, split):
        """``(images uint8 [n, h, w, c], labels int64 [n])`` of ``split``."""
        _check_split(self.info, split)
        return self._load_split(split)


class TfdsSource:
    """A tensorflow-datasets builder (registered name, prepared files in ``data_dir``, or an ImageFolder)."""

    in_memory = False

    def __init__(self, builder, name, cache_dir):
        self.builder = builder
        self._cache_dir = cache_dir
        self._image_key, self._label_key = _supervised_keys(builder, name)
        features = builder.info.features
        label_feature = features[self._label_key]
        image_shape = features[self._image_key].shape
        self.info = DatasetInfo(
            name=name,
            num_classes=int(label_feature.num_classes),
            class_names=tuple(label_feature.names),
            splits={split: int(info.num_examples) for split, info in builder.info.splits.items()},
            image_shape=None if None in image_shape else tuple(image_shape),
        )

    def num_examples(self, split):
        """Size of ``split``, which may use the tfds slicing syntax (``"train[:80%]"``)."""
        try:
            return int(self.builder.info.splits[split].num_examples)
        except (KeyError, ValueError) as error:
            raise ValueError(f"dataset {self.info.name!r} has no split {split!r}; available: "
                             f"{sorted(self.info.splits)} (tfds slicing such as 'train[:80%]' is allowed)") from error

    def labels(self, split):
        """Labels of ``split`` in file order, read without decoding images; cached under ``cache_dir``."""
        count = self.num_examples(split)
        key = json.dumps([self.builder.info.full_name, os.path.abspath(os.fspath(self.builder.data_dir)), split,
                          count])
        path = os.path.join(self._cache_dir, "tfds_labels", hashlib.sha256(key.encode()).hexdigest() + ".npy")
        try:
            labels = np.load(path)
            if labels.shape == (count,):
                return labels
        except (OSError, ValueError, EOFError):
            pass
        ds = self.builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={self._image_key: tfds.decode.SkipDecoding()})
        ds = ds.map(lambda example: example[self._label_key]).batch(8192)
        labels = np.concatenate([batch for batch in ds.as_numpy_iterator()]).astype(np.int64)
        with atomic_io.atomic_open(path, "wb") as handle:
            np.save(handle, labels)
        return labels

    def dataset(self, split, indices):
        """Examples of ``split`` in file order; with ``indices`` (ascending) only those positions.

        Images are decoded after the selection. The files of an image folder are checked before decoding: one
        that is not a complete PNG, nor a JPEG, GIF, BMP or WebP file (a truncated or foreign file) stops the
        iteration with a ``tf.errors.InvalidArgumentError`` naming it.
        """
        image_feature = self.builder.info.features[self._image_key]
        ds = self.builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={self._image_key: tfds.decode.SkipDecoding()})
        if indices is not None:
            keep = np.zeros(self.num_examples(split), bool)
            keep[indices] = True
            keep = tf.constant(keep)
            ds = ds.enumerate().filter(lambda position, example: keep[position]).map(lambda position, ex: ex)
        check_files = isinstance(self.builder, tfds.folder_dataset.ImageFolder)

        def decode(example):
            encoded = example[self._image_key]
            if check_files:
                encoded = checked_image_file(encoded, example["image/filename"])
            return image_feature.decode_example(encoded), tf.cast(example[self._label_key], tf.int64)

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        if indices is not None:
            ds = ds.apply(tf.data.experimental.assert_cardinality(len(indices)))
        return ds


def open_source(name, data_dir=None, download=False, cache_dir=None):
    """The source for ``name``: ``"shapes10"``, ``"digits"``, ``"image_folder"`` (``data_dir`` = its root) or a
    tensorflow-datasets name (optionally ``"name/config:version"``)."""
    cache_dir = os.path.expanduser(os.fspath(cache_dir)) if cache_dir is not None else default_cache_dir()
    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if name == "shapes10":
        return _shapes10_source(cache_dir)
    if name == "digits":
        return _digits_source()
    if name == IMAGE_FOLDER:
        if data_dir is None or not os.path.isdir(data_dir):
            raise ValueError(f"dataset 'image_folder' needs data_dir = an existing folder laid out as "
                             f"root/split/label/image.png, got data_dir={data_dir!r}")
        check_image_folder(data_dir)
        return TfdsSource(tfds.folder_dataset.ImageFolder(os.fspath(data_dir)), name, cache_dir)
    return TfdsSource(_tfds_builder(name, data_dir, download), name, cache_dir)


def check_image_folder(root):
    """Raises ``ValueError`` naming the first class folder ``root/split/label`` that holds no image file.

    Image files are those ``tfds.folder_dataset.ImageFolder`` reads: names ending in one of ``IMAGE_EXTENSIONS``
    (any case). Without the check, such a folder is a class without examples, or, when it is the only one of its
    split, an obscure ``TypeError`` from ``ReadFile``.
    """
    for split in _subfolders(root):
        for label in _subfolders(os.path.join(root, split)):
            folder = os.path.join(root, split, label)
            names = sorted(entry.name for entry in os.scandir(folder) if not entry.is_dir())
            if not any(name.lower().endswith(IMAGE_EXTENSIONS) for name in names):
                found = (f"its {len(names)} files (e.g. {names[:3]}) are not images" if names else "it is empty")
                raise ValueError(f"image folder: class folder {folder!r} (class {label!r} of split {split!r}) holds "
                                 f"no image file ({', '.join(IMAGE_EXTENSIONS)}): {found}; add images or remove it")


def _subfolders(folder):
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


# The first bytes of the image formats tf.io.decode_image reads (WebP: "RIFF", 4 size bytes, "WEBP").
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of a complete PNG: the IEND chunk's type and CRC
_SIGNATURES = (b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def checked_image_file(encoded, filename):
    """``encoded`` (a scalar string tensor, the bytes of the image file ``filename``), checked to be a complete
    PNG (signature and final IEND chunk) or to start like a JPEG, GIF, BMP or WebP file; otherwise an assertion
    (``tf.errors.InvalidArgumentError`` when run) names the file."""
    size = tf.strings.length(encoded)
    png = (tf.strings.substr(encoded, 0, len(_PNG_SIGNATURE)) == _PNG_SIGNATURE) & (
        tf.strings.substr(encoded, tf.maximum(size - len(_PNG_END), 0), len(_PNG_END)) == _PNG_END)
    webp = (tf.strings.substr(encoded, 0, 4) == b"RIFF") & (
        tf.strings.substr(encoded, tf.minimum(size, 8), 4) == b"WEBP")
    readable = png | webp
    for signature in _SIGNATURES:
        readable |= tf.strings.substr(encoded, 0, len(signature)) == signature
    assertion = tf.debugging.Assert(readable, ["unreadable image file (not a complete PNG, JPEG, GIF, BMP or WebP "
                                               "file: truncated or corrupt):", filename])
    with tf.control_dependencies([assertion]):
        return tf.identity(encoded)


def _tfds_builder(name, data_dir, download):
    kwargs = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
    try:
        builder = tfds.builder(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"unknown dataset name {name!r}: expected one of the embedded datasets {list(EMBEDDED_DATASETS)}, "
            f"{IMAGE_FOLDER!r} (with data_dir=root of root/split/label/image.png), or a tensorflow-datasets name "
            f"such as 'cifar10' or 'imagenet2012' (tfds.list_builders() lists them; a dataset prepared in "
            f"data_dir={data_dir!r} is found by its name too)") from error
    if not builder.is_prepared():
        if not download:
            manual = (" (imagenet2012 is prepared from manual files: put ILSVRC2012_img_train.tar and "
                      "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual, then run tfds.builder('imagenet2012', "
                      "data_dir=<data_dir>).download_and_prepare())" if name.split("/")[0] == "imagenet2012" else "")
            raise FileNotFoundError(
                f"tensorflow-datasets dataset {name!r} is not prepared in data_dir={os.fspath(builder.data_dir)!r}; "
                f"pass download=True to download and prepare it (needs the network or manual files), or point "
                f"data_dir at a folder where it is prepared{manual}")
        builder.download_and_prepare()
    return builder


def _supervised_keys(builder, name):
    keys = builder.info.supervised_keys
    if keys is None:
        keys = ("image", "label")
    image_key, label_key = keys[0], keys[1]
    features = builder.info.features
    if not isinstance(image_key, str) or image_key not in features or label_key not in features:
        raise ValueError(f"dataset {name!r} is not an image-classification dataset with (image, label) features; "
                         f"features are {list(features.keys())}, supervised_keys {keys}")
    if not isinstance(features[label_key], tfds.features.ClassLabel):
        raise ValueError(f"dataset {name!r}: label feature {label_key!r} must be a ClassLabel, "
                         f"got {type(features[label_key]).__name__}")
    return image_key, label_key


def _check_split(info, split):
    if split not in info.splits:
        raise ValueError(f"dataset {info.name!r} has no split {split!r}; available: {sorted(info.splits)}")


def _shapes10_source(cache_dir):
    info = DatasetInfo(
        name="shapes10",
        num_classes=shapes.NUM_CLASSES,
        class_names=shapes.CLASS_NAMES,
        splits={split: size for split, (size, _) in SHAPES10_SPLITS.items()},
        image_shape=(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3),
    )

    def load_split(split):
        size, seed = SHAPES10_SPLITS[split]
        return shapes.load_shapes10(size, seed, cache_dir=cache_dir)

    return ArraySource(info, load_split)


def _digits_source():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
    labels = digits.target.astype(np.int64)
    test = stratified_subset_indices(labels, fraction=DIGITS_TEST_FRACTION, subset_seed=DIGITS_SPLIT_SEED)
    train = np.setdiff1d(np.arange(labels.size), test)
    split_indices = {"train": train, "test": test}
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        class_names=tuple(str(digit) for digit in range(10)),
        splits={split: int(indices.size) for split, indices in split_indices.items()},
        image_shape=(8, 8, 1),
    )
    return ArraySource(info, lambda split: (images[split_indices[split]], labels[split_indices[split]]))
