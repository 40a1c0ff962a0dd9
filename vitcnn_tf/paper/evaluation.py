"""What the analyses of :mod:`vitcnn_tf.paper` read from their data: the passes over an evaluation set, its
batches and arrays, accuracies, progress bars and thread settings, and the detail every finding records.

Data are ``tf.data`` datasets (or any iterable) of ``(images [b, S, S, 3], labels [b])`` batches (a batch's
images: ``vitcnn_tf.data.elements.element_images``). The models' labels, roles, sizes and taps are in
:mod:`vitcnn_tf.paper.common`.
"""

import contextlib
import functools
import logging

import keras
import numpy as np
import tensorflow as tf
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from vitcnn_tf import representations, runtime
from vitcnn_tf.data.elements import element_images


def single_threaded_blas(function):
    """Decorator: run ``function`` with NumPy's BLAS limited to one thread.

    The analyses' BLAS work is many small and medium products (probe eigendecompositions of at most 100 x 100 on
    the CPU zoo, token-patch cross-covariances), for which extra BLAS threads only contend with TensorFlow's:
    measured on a 2-core AMD EPYC (AVX2) under load, ``np.linalg.eigh`` of 100 x 100 took 59 ms with the default
    threads and 2.8 ms with one. TensorFlow's own thread pools are not affected.
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def quiet_retracing_warnings():
    """Silence TensorFlow's retracing warnings (each tap compiles its own gradient function, by design)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def progress_bar(total, enabled, unit_name="step"):
    """A ``keras.utils.Progbar`` of ``total`` steps (None: unknown) when ``enabled`` is true, else None."""
    return keras.utils.Progbar(total, unit_name=unit_name) if enabled else None


def data_passes(data, passes=None):
    """The datasets of the passes over the evaluation set: ``data`` is one dataset (one pass), a list / tuple of
    datasets (one per pass), or a callable ``make_data(pass_index) -> dataset`` (``passes`` of them, default 1).
    Returns a list of zero-argument callables giving each pass's dataset (built only when called)."""
    if callable(data) and not hasattr(data, "__iter__"):
        count = 1 if passes is None else int(passes)
        if count < 1:
            raise ValueError(f"passes: expected a positive number of passes, got {passes!r}")
        return [lambda index=index: data(index) for index in range(count)]
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("data: an empty list of passes")
        if passes is not None and passes != len(data):
            raise ValueError(f"passes={passes} but data holds {len(data)} passes")
        return [lambda dataset=dataset: dataset for dataset in data]
    if passes not in (None, 1):
        raise ValueError(f"passes={passes}: give data as a callable make_data(pass_index) or a list of datasets "
                         "for several passes")
    return [lambda: data]


def batch_size_of(dataset):
    """The examples per batch of ``dataset``: its static batch dimension, else that of its first batch."""
    spec = getattr(dataset, "element_spec", None)
    spec = element_images(spec, "data") if spec is not None else None
    if spec is not None and spec.shape.rank and spec.shape[0] is not None:
        return int(spec.shape[0])
    for batch in dataset:
        return int(element_images(batch, "data").shape[0])
    raise ValueError("data: the dataset yielded no batches")


def stack_images(data, limit=None):
    """``[n, S, S, C]`` float32 NumPy images of every batch of ``data`` (the first ``limit`` when given);
    ValueError when ``data`` yields fewer than ``limit`` or no images."""
    parts, count = [], 0
    for batch in data:
        images = np.asarray(element_images(batch, "data"), dtype=np.float32)
        parts.append(images)
        count += len(images)
        if limit is not None and count >= limit:
            break
    if not parts:
        raise ValueError("data: the dataset yielded no images")
    images = np.concatenate(parts)
    if limit is not None:
        if len(images) < limit:
            raise ValueError(f"data: {len(images)} images, fewer than the {limit} asked for")
        images = images[:limit]
    return images


def dataset_arrays(data, name="data"):
    """``(images float32 [n, S, S, 3], labels int64 [n], batch size)`` of a ``tf.data`` dataset of
    ``(images [b, S, S, 3], labels [b])`` batches, in its order; the batch size is that of the first batch."""
    images, labels = [], []
    for element in data:
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise ValueError(f"{name}: expected (images [b, S, S, 3], labels [b]) batches, got {type(element)}")
        images.append(np.asarray(element[0], dtype=np.float32))
        labels.append(np.asarray(element[1]))
        if images[-1].ndim != 4 or labels[-1].shape != images[-1].shape[:1]:
            raise ValueError(f"{name}: expected (images [b, S, S, 3], labels [b]) batches, got shapes "
                             f"{images[-1].shape} and {labels[-1].shape}")
    if not images:
        raise ValueError(f"{name}: the dataset is empty")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), len(images[0])


def image_dataset(images, batch_size):
    """``images [n, H, W, C]`` as a ``tf.data.Dataset`` of ``batch_size`` batches in order (for
    ``representations.accumulate_cka``, which needs a dataset to run under a distribution strategy)."""
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size).with_options(runtime.dataset_options())


def predict_accuracy(model, images, labels, batch_size=256):
    """Fraction of ``labels [n]`` that ``model`` classifies correctly on ``images [n, H, W, C]`` (its ``logits``
    tap)."""
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = representations.extract(model, images[start:start + batch_size], ["logits"])["logits"]
        correct += int(np.sum(np.argmax(logits, axis=-1) == labels[start:start + batch_size]))
    return correct / len(images)


def accuracies(model, images, labels, known_accuracy=None):
    """``{"test_accuracy": known_accuracy (e.g. from a training record, full test split) or None,
    "eval_subset_accuracy": accuracy on images [n, S, S, 3] / labels [n], computed only without a known one
    (else None), "eval_subset_examples": n}``."""
    subset = predict_accuracy(model, images, labels) if known_accuracy is None else None
    return {"test_accuracy": known_accuracy, "eval_subset_accuracy": subset, "eval_subset_examples": int(len(labels))}


def interval(estimate, low, high):
    """``{"value", "low", "high"}`` floats of an ``(estimate, low, high)`` triple."""
    return {"value": float(estimate), "low": float(low), "high": float(high)}


def finding_detail(context, num_examples, batch_size, seed, **extra):
    """Detail fields every finding records: ``context`` (a dict from the caller, e.g. ``{"dataset": name}``),
    the example count, the batch size and the seed, plus ``extra``."""
    return {**(context or {}), "num_examples": int(num_examples), "batch_size": int(batch_size), "seed": seed,
            **extra}
