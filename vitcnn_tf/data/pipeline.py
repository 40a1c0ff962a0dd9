"""``load_dataset``: one entry point from a dataset name to a batched, prefetched ``tf.data`` pipeline."""

import itertools

import numpy as np
import tensorflow as tf

from vitcnn_tf import runtime
from vitcnn_tf.data import preprocessing
from vitcnn_tf.data.sources import open_source
from vitcnn_tf.data.subsets import stratified_subset_indices

DEFAULT_DATASET = "shapes10"
AUGMENTATIONS = (None, "translate", "translate_flip")
DEFAULT_EVALUATION_SPLIT = "test"
# Datasets whose labelled held-out split is not "test": tfds imagenet2012 has train and validation (its optional
# test split is unlabelled, every label -1).
EVALUATION_SPLITS = {"imagenet2012": "validation"}


def load_dataset(name=DEFAULT_DATASET, split="train", *, batch_size=128, image_size=32, seed=0, shuffle=None,
                 augment=None, fraction=None, num_examples=None, subset_seed=0, data_dir=None, download=False,
                 cache_dir=None, drop_remainder=False, shuffle_buffer=50_000, examples_per_class=None):
    """Batches ``(images float32 [b, image_size, image_size, 3] in [-1, 1], labels int64 [b])`` of one split.

    Args:
      name: ``"shapes10"`` (embedded, generated), ``"digits"`` (scikit-learn's 8x8 digits, upsampled),
        ``"image_folder"`` (``data_dir`` = root of ``root/split/label/image.png``) or any tensorflow-datasets name
        (``"cifar10"``, ``"imagenet2012"``, ...).
      split: ``"train"`` / ``"test"`` (tfds names and slicing such as ``"train[:80%]"`` pass through).
      batch_size, image_size: batch size; images are resized to ``image_size`` squared (the model's input).
      seed: shuffle order and augmentation. Every pass over the returned dataset (every Keras epoch) takes the
        next order of a sequence fixed by ``seed``: a fresh ``load_dataset`` call with the same seed replays the
        same batches. For tensorflow-datasets sources the shuffle buffer's order also depends on TensorFlow's
        global seed (``keras.utils.set_random_seed``) at the time of the call; the embedded sets do not.
      shuffle: reshuffle every epoch; default ``None`` shuffles splits whose name starts with ``"train"``.
      augment: ``None``, ``"translate"`` (reflect-pad by size/8, random crop) or ``"translate_flip"`` (and random
        horizontal flips); for training only.
      fraction / num_examples / examples_per_class: keep a stratified subset of the split (at most one; see
        :mod:`vitcnn_tf.data.subsets`; ``examples_per_class`` gives every class exactly that many); subsets with
        the same ``subset_seed`` are nested. The labels are checked first: a label outside ``[0, num_classes)``
        (tfds marks unlabelled examples -1) is an error naming the dataset and split.
      data_dir, download: passed to tensorflow-datasets (``download=False`` never touches the network).
      cache_dir: where generated data and label scans are cached (default :func:`default_cache_dir`).
      drop_remainder: drop a last partial batch.
      shuffle_buffer: shuffle buffer size for tfds sources (in-memory sets shuffle fully).

    Returns: a ``tf.data.Dataset`` with known cardinality (``len(ds)`` batches), with
    :func:`vitcnn_tf.runtime.dataset_options` (no autotuning in a thread-limited worker process).
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("image_size", image_size)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    source = open_source(name, data_dir=data_dir, download=download, cache_dir=cache_dir)
    indices = _subset_indices(source, name, split, fraction, num_examples, subset_seed, examples_per_class)
    if shuffle is None:
        shuffle = split.startswith("train")
    if source.in_memory:
        ds = _in_memory_examples(source, split, indices, seed, shuffle)
    else:
        ds = _streamed_examples(source, split, indices, seed, shuffle, shuffle_buffer)
    ds = ds.map(lambda image, label, index, epoch: (preprocessing.to_model_input(image, image_size), label,
                                                    index, epoch),
                num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        flip = augment == "translate_flip"
        ds = ds.map(lambda image, label, index, epoch: (
            preprocessing.augment(image, _element_seed(seed, epoch, index), flip=flip), label, index, epoch),
            num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda image, label, index, epoch: (image, label))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(runtime.dataset_options())


def split_size(name=DEFAULT_DATASET, split="train", *, fraction=None, num_examples=None, subset_seed=0,
               data_dir=None, download=False, cache_dir=None, examples_per_class=None):
    """Number of examples :func:`load_dataset` yields for these arguments (the subset size if one is asked)."""
    source = open_source(name, data_dir=data_dir, download=download, cache_dir=cache_dir)
    indices = _subset_indices(source, name, split, fraction, num_examples, subset_seed, examples_per_class)
    return source.num_examples(split) if indices is None else int(indices.size)


def evaluation_split(name):
    """The labelled held-out split the experiments evaluate on: ``"validation"`` for ``imagenet2012`` (also
    ``"imagenet2012/<config>"``), ``"test"`` for every other dataset (``EVALUATION_SPLITS``)."""
    return EVALUATION_SPLITS.get(str(name).split("/")[0].split(":")[0], DEFAULT_EVALUATION_SPLIT)


def check_split(name=DEFAULT_DATASET, split="test", *, data_dir=None, download=False, cache_dir=None):
    """Checks that dataset ``name`` exists, has ``split`` and that every label of the split is a class index in
    ``[0, num_classes)`` (labels are read without decoding images, and cached); returns its
    :class:`~vitcnn_tf.data.DatasetInfo`. Raises ValueError / FileNotFoundError naming the dataset and the split."""
    source = open_source(name, data_dir=data_dir, download=download, cache_dir=cache_dir)
    source.num_examples(split)
    _checked_labels(source, name, split)
    return source.info


def dataset_info(name=DEFAULT_DATASET, *, data_dir=None, download=False, cache_dir=None):
    """:class:`vitcnn_tf.data.DatasetInfo` (classes, split sizes, native image shape) without building a pipeline."""
    return open_source(name, data_dir=data_dir, download=download, cache_dir=cache_dir).info


def _check_positive_int(argument, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}")


def _subset_indices(source, name, split, fraction, num_examples, subset_seed, examples_per_class=None):
    """Indices of the stratified subset, or ``None`` for the whole split (its labels checked all the same)."""
    split_size = source.num_examples(split)
    if fraction is None and num_examples is None and examples_per_class is None:
        if not source.in_memory:
            _checked_labels(source, name, split)
        return None
    if isinstance(num_examples, (int, np.integer)) and not isinstance(num_examples, bool) \
            and num_examples > split_size:
        raise ValueError(f"num_examples={num_examples} is larger than split {split!r} of {name!r} "
                         f"({split_size} examples)")
    return stratified_subset_indices(_checked_labels(source, name, split), fraction=fraction,
                                     num_examples=num_examples, subset_seed=subset_seed,
                                     examples_per_class=examples_per_class)


def _checked_labels(source, name, split):
    """The labels ``[n]`` of ``split``; ValueError naming the dataset and split when one is outside
    ``[0, num_classes)`` (tfds marks unlabelled examples with -1, e.g. imagenet2012's test split)."""
    labels = np.asarray(source.labels(split))
    num_classes = source.info.num_classes
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"dataset {name!r} split {split!r}: {bad.size} of {labels.size} labels are not class indices in "
            f"[0, {num_classes}) (first: example {bad[0]} has label {labels[bad[0]]}); a split labelled -1 is "
            f"unlabelled: evaluate on a labelled split (for imagenet2012: 'validation')")
    return labels


def _in_memory_examples(source, split, indices, seed, shuffle):
    """(image, label, index, epoch) in a fresh order every pass: pass ``e`` uses the permutation of
    ``np.random.default_rng([seed, e])``, so the order depends on ``seed`` only (not on TF's global seed)."""
    images, labels = source.arrays(split)
    if indices is not None:
        images, labels = images[indices], labels[indices]
    images, labels = tf.constant(images), tf.constant(labels)
    count = int(labels.shape[0])
    passes = itertools.count()

    def order():
        epoch = next(passes)
        permutation = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
        yield permutation.astype(np.int64), np.int64(epoch)

    ds = tf.data.Dataset.from_generator(order, output_signature=(tf.TensorSpec([count], tf.int64),
                                                                 tf.TensorSpec([], tf.int64)))
    ds = ds.flat_map(lambda permutation, epoch: tf.data.Dataset.zip(
        (tf.data.Dataset.from_tensor_slices(permutation), tf.data.Dataset.from_tensors(epoch).repeat())))
    ds = ds.map(lambda index, epoch: (tf.gather(images, index), tf.gather(labels, index), index, epoch),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(count))


def _streamed_examples(source, split, indices, seed, shuffle, shuffle_buffer):
    """(image, label, index, epoch) from a tfds source, through a seeded shuffle buffer.

    The buffer is tf.data's ``shuffle(seed=seed)``, whose order also depends on TensorFlow's global seed at the
    time of the call (``keras.utils.set_random_seed``)."""
    ds = source.dataset(split, indices)
    count = source.num_examples(split) if indices is None else int(indices.size)
    passes = itertools.count()

    def epoch_number():
        yield np.int64(next(passes))

    epochs = tf.data.Dataset.from_generator(epoch_number, output_signature=tf.TensorSpec([], tf.int64))
    epochs = epochs.flat_map(lambda epoch: tf.data.Dataset.from_tensors(epoch).repeat())
    ds = tf.data.Dataset.zip((ds.enumerate(), epochs)).map(
        lambda numbered, epoch: (numbered[1][0], numbered[1][1], numbered[0], epoch))
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle:
        ds = ds.shuffle(min(count, shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    return ds


def _element_seed(seed, epoch, index):
    """A stateless-op seed [2] unique to (seed, epoch, example index)."""
    return tf.stack([tf.constant(seed, tf.int64) * 1_000_003 + epoch, tf.cast(index, tf.int64)])
