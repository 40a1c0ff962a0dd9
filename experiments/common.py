"""Plumbing shared by the experiment modules: common options, models by name, evaluation data, the entry point.

Every experiment module ``experiments.<name>`` provides::

    build_parser() -> argparse.ArgumentParser   # add_common_arguments(...) plus its own options
    run(options) -> dict                        # writes its files into options.out (atomically) and returns a
                                                # JSON-able summary with a "findings" list of Finding.to_dict()
    main(argv=None) -> int                      # = common.main(sys.modules[__name__], argv)

A model is named by a *model spec*:

* a zoo recipe (``vit``, ``vit_gap``, ``resnet``, ``mixer``, ... see ``python -m experiments.train --list``),
  trained on first use and cached under ``--zoo-dir``;
* a saved Keras model, ``path/to/model.keras``;
* a preset with a published checkpoint, ``PRESET=path/to/file.npz`` (``ViT-B/16=ckpt/ViT-B_16.npz``,
  ``BiT-R50x1=ckpt/BiT-M-R50x1.npz``); ``PRESET:key=value,...=file.npz`` overrides config fields
  (``ViT-B/16:representation_size=768,num_classes=21843=ckpt/ViT-B_16.npz``).
"""

import argparse
import ast
import math
import os
import sys

import numpy as np  # noqa: E402

from vitcnn_tf import atomic_io  # noqa: E402
from vitcnn_tf import data as data_lib  # noqa: E402
from vitcnn_tf import findings as findings_lib  # noqa: E402

DEFAULT_ZOO_DIR = os.path.join("results", "zoo")
STRATEGIES = ("none", "mirrored", "tpu", "multiworker")
SUMMARY_FILE = "summary.json"
NON_FINITE_NOTE = ("non-finite numbers (NaN, inf) are not valid JSON and were written as null; "
                   "'non_finite_paths' lists where")


def add_common_arguments(parser, *, default_models, default_num_examples=1024, default_batch_size=128,
                         default_out):
    """Adds ``--models --dataset --data-dir --num-examples --batch-size --out --zoo-dir --seed --no-progress
    --strategy``."""
    parser.add_argument("--models", nargs="+", default=list(default_models), metavar="SPEC",
                        help="model specs: zoo recipes, .keras files or PRESET=checkpoint.npz "
                             "(default: %(default)s)")
    parser.add_argument("--dataset", default=data_lib.DEFAULT_DATASET,
                        help="evaluation dataset: shapes10, digits, image_folder or a tfds name (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir / image folder root")
    parser.add_argument("--num-examples", type=_positive_int, default=default_num_examples,
                        help="evaluation examples, a stratified subset of the test split (default: %(default)s)")
    parser.add_argument("--batch-size", type=_batch_size, default=default_batch_size,
                        help="examples per minibatch, >= 4 for unbiased HSIC (default: %(default)s)")
    parser.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    parser.add_argument("--zoo-dir", default=DEFAULT_ZOO_DIR,
                        help="cache of trained zoo models (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets, shuffles and resamples")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--strategy", choices=STRATEGIES, default="none",
                        help="tf.distribute strategy for extraction and CKA accumulation (default: none)")
    return parser


def add_seed_replicates_argument(parser, default):
    """Adds ``--seed-replicates MODEL=SPEC ...``: models trained like ``MODEL`` (a spec of ``--models``) with another
    seed, used for intervals over seeds; entries whose ``MODEL`` is not in ``--models`` are ignored."""
    parser.add_argument("--seed-replicates", nargs="*", default=list(default), metavar="MODEL=SPEC",
                        help="another trained seed of a model of --models, for intervals over seeds (repeat a "
                             "MODEL for more seeds; '--seed-replicates' alone: none; default: %(default)s)")


def seed_replicates(options):
    """``{spec of --models: [replicate specs]}`` from ``--seed-replicates`` (models without replicates left out)."""
    replicates = {}
    for entry in getattr(options, "seed_replicates", None) or []:
        model, separator, replicate = entry.partition("=")
        if not separator or not model or not replicate:
            raise ValueError(f"--seed-replicates: expected MODEL=SPEC, got {entry!r}")
        if model in options.models:
            replicates.setdefault(model, []).append(replicate)
    return replicates


def model_specs(options):
    """Every model spec ``options`` uses: ``--models`` then the replicates of ``--seed-replicates``."""
    specs = list(getattr(options, "models", []))
    for replicates in seed_replicates(options).values():
        specs += [spec for spec in replicates if spec not in specs]
    return specs


def distribution_strategy(options):
    """The ``tf.distribute.Strategy`` named by ``--strategy`` (None for ``none``).

    ``mirrored``: every local GPU, or every logical CPU device when there is no GPU; ``tpu``: the TPU found by
    ``TPUClusterResolver`` (a Cloud TPU VM or ``--tpu`` address in ``TPU_NAME``); ``multiworker``: the cluster
    in ``TF_CONFIG``.
    """
    import tensorflow as tf

    name = getattr(options, "strategy", "none")
    if name == "none":
        return None
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


def new_parser(module_doc, prog):
    """An ``ArgumentParser`` whose help text is the module docstring."""
    return argparse.ArgumentParser(prog=prog, description=module_doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def load_model(spec, options):
    """The ``keras.Model`` named by ``spec`` (see the module docstring)."""
    if "=" in spec and spec.rsplit("=", 1)[1].endswith(".npz"):
        return _model_from_checkpoint(*spec.rsplit("=", 1))
    if spec.endswith(".keras"):
        import keras

        import vitcnn_tf.models  # noqa: F401  (registers the custom layers for deserialisation)

        if not os.path.exists(spec):
            raise FileNotFoundError(f"--models: no Keras model file {spec!r}")
        return keras.saving.load_model(spec)
    from vitcnn_tf import zoo

    if spec not in zoo.RECIPES:
        raise ValueError(f"--models: {spec!r} is not a zoo recipe ({', '.join(zoo.RECIPES)}), a .keras file or "
                         "PRESET=checkpoint.npz")
    return zoo.get_model(spec, options.zoo_dir, data_dir=options.data_dir,
                         verbose="auto" if getattr(options, "progress", True) else 0)


def image_size(model):
    """Input side length of an image model with input ``[n, S, S, C]``."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None:
        raise ValueError(f"model {model.name!r}: expected a square image input [n, S, S, C], got {shape}")
    return int(shape[1])


def evaluation_data(options, size, *, split="test", num_examples=None, shuffle_seed=None):
    """Batches ``(images [b, size, size, 3], labels [b])`` of a stratified subset of ``split``.

    Full batches only (``drop_remainder``), so every minibatch has ``--batch-size`` examples; ``shuffle_seed``
    reshuffles the order (for Nguyen et al.'s repeated shuffled passes), None keeps the stored order.
    """
    num_examples = options.num_examples if num_examples is None else num_examples
    if num_examples < options.batch_size:
        raise ValueError(f"--num-examples={num_examples} is smaller than --batch-size={options.batch_size}: "
                         "no full minibatch")
    split_size = data_lib.dataset_info(options.dataset, data_dir=options.data_dir).splits[split]
    subset = dict(num_examples=num_examples) if num_examples < split_size else {}
    return data_lib.load_dataset(options.dataset, split, batch_size=options.batch_size, image_size=size,
                                 seed=0 if shuffle_seed is None else shuffle_seed, shuffle=shuffle_seed is not None,
                                 subset_seed=options.seed, data_dir=options.data_dir, drop_remainder=True, **subset)


def main(module, argv=None):
    """Entry point of an experiment module: parse, ``run``, print the findings table and the output folder."""
    options = module.build_parser().parse_args(argv)
    summary = module.run(options)
    found = [findings_lib.Finding.from_dict(item) for item in summary.get("findings", [])]
    if found:
        print(findings_lib.findings_table(found))
    print(f"outputs in {os.path.abspath(options.out)}")
    return 0


def json_safe(value, path="$"):
    """``(value with NaN / inf floats replaced by None, [JSON paths of the replaced numbers])``; NumPy scalars
    and arrays become Python numbers and lists."""
    if isinstance(value, dict):
        cleaned, paths = {}, []
        for key, item in value.items():
            cleaned[str(key)], sub_paths = json_safe(item, f"{path}.{key}")
            paths += sub_paths
        return cleaned, paths
    if isinstance(value, (list, tuple)):
        cleaned, paths = [], []
        for index, item in enumerate(value):
            item, sub_paths = json_safe(item, f"{path}[{index}]")
            cleaned.append(item)
            paths += sub_paths
        return cleaned, paths
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist(), path)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path]
    return value, []


def write_summary(options, summary):
    """Write ``summary`` as ``<out>/summary.json`` (atomically, valid JSON: see ``json_safe``) and return the
    JSON-safe dict (with ``non_finite_note`` / ``non_finite_paths`` when numbers were replaced)."""
    cleaned, paths = json_safe(summary)
    if paths:
        cleaned["non_finite_note"] = NON_FINITE_NOTE
        cleaned["non_finite_paths"] = paths
    atomic_io.write_json(os.path.join(options.out, SUMMARY_FILE), cleaned)
    return cleaned


def _model_from_checkpoint(preset_spec, path):
    from vitcnn_tf import models

    preset, _, override_text = preset_spec.partition(":")
    overrides = {}
    for item in filter(None, override_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--models: override {item!r} in {preset_spec!r} must be key=value")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    from vitcnn_tf.models import mixer, resnet_v2, vit

    families = ((vit.VIT_PRESETS, models.ViTConfig, models.ViT),
                (resnet_v2.RESNET_V2_PRESETS, models.ResNetV2Config, models.ResNetV2),
                (mixer.MIXER_PRESETS, models.MixerConfig, models.Mixer))
    for presets, config_class, model_class in families:
        if preset in presets:
            model = model_class(config_class.from_name(preset, **overrides))
            models.load_npz(model, path)
            return model
    known = [name for presets, _, _ in families for name in presets]
    raise ValueError(f"--models: {preset!r} is not a model preset; known: {', '.join(known)}")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _batch_size(text):
    value = int(text)
    if value < 4:
        raise argparse.ArgumentTypeError(f"expected a batch size >= 4 (unbiased HSIC needs 4 examples), got {text}")
    return value


if __name__ == "__main__":
    sys.exit("experiments.common is a library module; run e.g. python -m experiments.sec4_representation_structure")
