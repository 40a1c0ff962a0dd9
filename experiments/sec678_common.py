"""Helpers shared by the Section 6-8 experiment modules (``sec6_skip_connections``, ``sec7_localization``,
``sec7_linear_probes``, ``sec8_data_scale``): model labels and families, the layers each analysis reads,
evaluation arrays, zoo accuracies, and the JSON summary (non-finite numbers written as ``null`` with a note).
"""

import functools
import os

import keras
import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from experiments import common
from vitcnn_tf import representations


def single_threaded_blas(function):
    """Decorator: run ``function`` with NumPy's BLAS limited to one thread.

    The analyses' BLAS work is many small and medium products (probe eigendecompositions of at most 100 x 100,
    token-patch cross-covariances). On the shared 2-core machine, OpenBLAS threads spin against the other
    processes: measured at load ~9, ``np.linalg.eigh`` of 100 x 100 took 59 ms with the default threads and 2.8 ms
    with one, and a ViT-CPU token-patch CKA map over 512 images 14.2 s and 1.7 s. TensorFlow's own thread pools are
    not affected.
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


def model_label(spec):
    """A short label of a model spec: the zoo recipe name, a ``.keras`` file's stem, or a checkpoint's preset."""
    if "=" in spec and spec.rsplit("=", 1)[1].endswith(".npz"):
        return spec.rsplit("=", 1)[0].partition(":")[0]
    if spec.endswith(".keras"):
        return os.path.splitext(os.path.basename(spec))[0]
    return spec


def load_models(specs, options):
    """``{label: keras.Model}`` for ``specs`` in order (labels made unique with a ``#k`` suffix)."""
    models = {}
    for spec in specs:
        label = model_label(spec)
        if label in models:
            label = f"{label}#{sum(existing.split('#')[0] == label for existing in models) + 1}"
        models[label] = common.load_model(spec, options)
    return models


def model_family(model):
    """``"vit"``, ``"resnet"`` or ``"mixer"`` from the model's config class; ValueError for other models."""
    name = type(getattr(model, "config", None)).__name__
    families = {"ViTConfig": "vit", "ResNetV2Config": "resnet", "MixerConfig": "mixer"}
    if name not in families:
        raise ValueError(f"model {model.name!r}: expected a vitcnn_tf ViT, ResNetV2 or Mixer (with a config), "
                         f"got config type {name}")
    return families[name]


def is_cls_vit(model):
    return model_family(model) == "vit" and model.config.classifier == "token"


def is_gap_vit(model):
    return model_family(model) == "vit" and model.config.classifier == "gap"


def num_prefix_tokens(model):
    """CLS tokens in the token taps of ``model`` (1 for a CLS ViT, else 0)."""
    return int(getattr(model.config, "num_prefix_tokens", 0))


def residual_stream_layers(model):
    """The representations between residual units, in forward order: ViT ``embedding`` and every
    ``blockNN/+sa``, ``blockNN/+mlp``; Mixer ``stem`` and every ``+token_mixing``, ``+channel_mixing``;
    ResNetV2 the root output and every unit output ``blockB/unitUU/+res``."""
    family = model_family(model)
    if family == "vit":
        return representations.select_layers(model, r"embedding|block\d+/\+(sa|mlp)")
    if family == "mixer":
        return representations.select_layers(model, r"stem|block\d+/\+(token|channel)_mixing")
    names = representations.layer_names(model)
    root = "root/pool" if "root/pool" in names else "root/conv"
    return [root] + representations.select_layers(model, r"block\d+/unit\d+/\+res")


def block_output_layers(model):
    """The output of every block: ViT ``blockNN/+mlp``, Mixer ``blockNN/+channel_mixing``, ResNetV2 every unit's
    ``blockB/unitUU/+res``."""
    pattern = {"vit": r"block\d+/\+mlp", "mixer": r"block\d+/\+channel_mixing",
               "resnet": r"block\d+/unit\d+/\+res"}[model_family(model)]
    return representations.select_layers(model, pattern)


def normalized_depth(count):
    """``[count]`` positions ``0 .. 1`` of ``count`` layers in forward order (``[0.]`` for one layer)."""
    return np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)


def load_arrays(options, size, *, split="test", num_examples=None):
    """``(images float32 [n, size, size, 3], labels int64 [n])`` of ``common.evaluation_data`` (full batches only,
    so ``n`` is ``num_examples`` rounded down to a multiple of ``--batch-size``)."""
    images, labels = [], []
    for batch_images, batch_labels in common.evaluation_data(options, size, split=split, num_examples=num_examples):
        images.append(np.asarray(batch_images))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def cka_dataset(images, options):
    """``images [n, H, W, C]`` as a ``tf.data.Dataset`` of ``--batch-size`` batches (the stored order), for
    ``representations.accumulate_cka`` (which needs a dataset to run under ``--strategy``)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(images).batch(options.batch_size)


def predict_accuracy(model, images, labels, batch_size=256):
    """Fraction of ``labels [n]`` that ``model`` classifies correctly on ``images [n, H, W, C]`` (its ``logits``
    tap, compiled and cached by ``representations.extract``)."""
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = representations.extract(model, images[start:start + batch_size], ["logits"])["logits"]
        correct += int(np.sum(np.argmax(logits, axis=-1) == labels[start:start + batch_size]))
    return correct / len(images)


def accuracies(spec, model, images, labels, options):
    """``{"test_accuracy": zoo record's (full test split) or None, "eval_subset_accuracy": on images, computed
    only when there is no zoo record (else None), "eval_subset_examples": n}``."""
    test_accuracy = zoo_test_accuracy(spec, options)
    subset = predict_accuracy(model, images, labels) if test_accuracy is None else None
    return {"test_accuracy": test_accuracy, "eval_subset_accuracy": subset, "eval_subset_examples": int(len(labels))}


def zoo_test_accuracy(spec, options):
    """The test accuracy in the zoo record of recipe ``spec`` (full test split), or None for other specs."""
    if spec.endswith((".keras", ".npz")):
        return None
    from vitcnn_tf import zoo

    if spec not in zoo.RECIPES:
        return None
    record = zoo.cached_record(spec, options.zoo_dir)
    return None if record is None else record.get("test_accuracy")


def progress_bar(total, options, unit_name="step"):
    """A ``keras.utils.Progbar`` when ``--no-progress`` was not given, else None."""
    return keras.utils.Progbar(total, unit_name=unit_name) if getattr(options, "progress", True) else None


def interval(estimate, low, high):
    """``{"value", "low", "high"}`` floats of an ``(estimate, low, high)`` triple."""
    return {"value": float(estimate), "low": float(low), "high": float(high)}


def common_detail(options, **extra):
    """Detail fields every finding records: dataset, example count, batch size, seed, plus ``extra``."""
    return {"dataset": options.dataset, "num_examples": options.num_examples, "batch_size": options.batch_size,
            "seed": options.seed, **extra}
