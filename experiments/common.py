"""Plumbing shared by the experiment modules: common options, models by name, evaluation data, the entry point.

Every experiment module ``experiments.<name>`` provides::

    build_parser() -> argparse.ArgumentParser   # add_common_arguments(...) plus its own options
    run(options) -> dict                        # writes its files into options.out (atomically) and returns a
                                                # JSON-able summary with a "findings" list of Finding.to_dict()
    main(argv=None) -> int                      # = common.main(sys.modules[__name__], argv)

A model is named by a *model spec* (``vitcnn_tf.model_specs``): a zoo recipe (``vit``, ``resnet``, ... see
``python -m experiments.train --list``), trained on first use and cached under ``--zoo-dir``; a saved Keras model
``path/to/model.keras``; ``PRESET[:key=value,...]=file.npz`` for a published checkpoint
(``ViT-B/16:representation_size=768,num_classes=21843=ckpt/ViT-B_16.npz``); or a bare ``PRESET[:key=value,...]``
for a randomly initialised model.
"""

import argparse
import os
import sys
import time

from vitcnn_tf import atomic_io  # noqa: E402
from vitcnn_tf import data as data_lib  # noqa: E402
from vitcnn_tf import findings as findings_lib  # noqa: E402
from vitcnn_tf import model_specs as model_spec_lib  # noqa: E402
from vitcnn_tf.atomic_io import json_safe  # noqa: E402

DEFAULT_ZOO_DIR = os.path.join("results", "zoo")
STRATEGIES = ("none", "mirrored", "tpu", "multiworker")
SUMMARY_FILE = "summary.json"


def add_common_arguments(parser, *, default_models, default_num_examples=1024, default_batch_size=128,
                         default_out):
    """Adds ``--models --dataset --data-dir --split --num-examples --batch-size --out --zoo-dir --seed
    --no-progress --strategy``."""
    parser.add_argument("--models", nargs="+", default=list(default_models), metavar="SPEC",
                        help="model specs: zoo recipes, .keras files or PRESET=checkpoint.npz "
                             "(default: %(default)s)")
    parser.add_argument("--dataset", default=data_lib.DEFAULT_DATASET,
                        help="evaluation dataset: shapes10, digits, image_folder or a tfds name (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir / image folder root")
    parser.add_argument("--split", default=None,
                        help="evaluation split (default: 'validation' for imagenet2012, else 'test'; tfds slicing "
                             "such as 'validation[:10%%]' is allowed)")
    parser.add_argument("--num-examples", type=_positive_int, default=default_num_examples,
                        help="evaluation examples, a class-balanced (stratified) subset of the evaluation split "
                             "(default: %(default)s)")
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


def add_probe_arguments(parser):
    """Adds the few-shot linear probe options ``--shots --probe-seeds --train-pool --l2-reg --max-feature-gb``
    (``vitcnn_tf.paper.linear_probes``)."""
    from vitcnn_tf.analysis import probes
    from vitcnn_tf.paper import linear_probes

    parser.add_argument("--shots", type=int, default=10, help="training examples per class (default: %(default)s)")
    parser.add_argument("--probe-seeds", type=int, nargs="+", default=list(range(10)), metavar="SEED",
                        help="one few-shot draw per seed (default: 0 .. 9)")
    parser.add_argument("--train-pool", type=int, default=512,
                        help="stratified train-split examples the few-shot sets are drawn from (default: %(default)s)")
    parser.add_argument("--l2-reg", type=float, default=probes.DEFAULT_L2_REG,
                        help="ridge penalty (default: 2**10, big_vision's)")
    parser.add_argument("--max-feature-gb", type=float, default=linear_probes.DEFAULT_MAX_FEATURE_BYTES / 2**30,
                        help="GiB of train and test probe features held at once; layers are extracted in chunks "
                             "that fit (default: %(default)s)")


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
    """Every model spec ``options`` uses: ``--models``, the replicates of ``--seed-replicates``, then
    ``--little-data-models``."""
    specs = list(getattr(options, "models", []))
    extra = [spec for replicates in seed_replicates(options).values() for spec in replicates]
    extra += list(getattr(options, "little_data_models", None) or [])
    specs += [spec for spec in dict.fromkeys(extra) if spec not in specs]
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


def load_models(specs, options):
    """``{label: keras.Model}`` for the model specs, in order (``vitcnn_tf.model_specs.load_models``), with the zoo
    folder, data folder and progress of ``options``."""
    return model_spec_lib.load_models(specs, zoo_dir=options.zoo_dir, data_dir=getattr(options, "data_dir", None),
                                      verbose="auto" if getattr(options, "progress", True) else 0)


def zoo_test_accuracy(spec, options):
    """The test accuracy in the zoo record of recipe ``spec`` (full test split), or None for other specs."""
    from vitcnn_tf import zoo

    if spec not in zoo.RECIPES:
        return None
    record = zoo.cached_record(spec, options.zoo_dir)
    return None if record is None else record.get("test_accuracy")


def image_size(models):
    """The input side ``S`` shared by ``models`` (``{label: model}`` with inputs ``[n, S, S, C]``;
    ``vitcnn_tf.paper.common.shared_image_size``): an error names the labels and sizes."""
    from vitcnn_tf.paper import common as paper_common

    return paper_common.shared_image_size(models)


def evaluation_split(options):
    """The split the experiments evaluate on: ``--split``, else the dataset's labelled held-out split
    (:func:`vitcnn_tf.data.evaluation_split`: ``validation`` for imagenet2012, else ``test``)."""
    return getattr(options, "split", None) or data_lib.evaluation_split(options.dataset)


def evaluation_data(options, size, *, split=None, num_examples=None, shuffle_seed=None, full_batches=True):
    """Batches ``(images [b, size, size, 3], labels [b])`` of a class-balanced (stratified) subset of ``split``
    (default :func:`evaluation_split`), whose labels are checked first (an unlabelled split is an error naming it).

    With ``full_batches`` (for minibatch CKA and its resampling) a last partial batch is dropped, so every minibatch
    has ``--batch-size`` examples; without it (a probe's training pool) every example is kept. ``shuffle_seed``
    reshuffles the order (for Nguyen et al.'s repeated shuffled passes), None keeps the stored order.
    """
    split = evaluation_split(options) if split is None else split
    num_examples = options.num_examples if num_examples is None else num_examples
    if full_batches and num_examples < options.batch_size:
        raise ValueError(f"--num-examples={num_examples} is smaller than --batch-size={options.batch_size}: "
                         "no full minibatch")
    data_lib.check_split(options.dataset, split, data_dir=options.data_dir)
    split_size = data_lib.split_size(options.dataset, split, data_dir=options.data_dir)
    subset = dict(num_examples=num_examples) if num_examples < split_size else {}
    return data_lib.load_dataset(options.dataset, split, batch_size=options.batch_size, image_size=size,
                                 seed=0 if shuffle_seed is None else shuffle_seed, shuffle=shuffle_seed is not None,
                                 subset_seed=options.seed, data_dir=options.data_dir, drop_remainder=full_batches, **subset)


def main(module, argv=None):
    """Entry point of an experiment module: parse, ``run``, print the findings table and the output folder."""
    options = module.build_parser().parse_args(argv)
    summary = module.run(options)
    found = [findings_lib.Finding.from_dict(item) for item in summary.get("findings", [])]
    if found:
        print(findings_lib.findings_table(found))
    print(f"outputs in {os.path.abspath(options.out)}")
    return 0


def write_summary(options, summary):
    """Write ``summary`` as ``<out>/summary.json`` (atomically, valid JSON: ``vitcnn_tf.atomic_io.write_json``
    notes replaced non-finite numbers) and return the JSON-safe dict that was written."""
    return atomic_io.write_json(os.path.join(options.out, SUMMARY_FILE), summary)


def write_result(options, result, *, models=None, started=None, dpi=120):
    """Write a :class:`vitcnn_tf.paper.result.SectionResult` into ``options.out``, atomically: one ``<stem>.npz``
    per array group, one ``<stem>.json`` per table, every figure as drawn, and ``summary.json`` last (see
    :func:`write_summary`); returns the JSON-safe summary.

    ``models`` (``{label: model spec}``) is recorded first in the summary, and the seconds since ``started`` (a
    ``time.perf_counter()`` value, rounded to 0.1 s) last."""
    import matplotlib.pyplot as plt

    if models is not None:
        result.summary = {"models": dict(models), **result.summary}
    if started is not None:
        result.summary["seconds"] = round(time.perf_counter() - started, 1)
    for stem, arrays in result.arrays.items():
        atomic_io.save_npz(os.path.join(options.out, f"{stem}.npz"), **arrays)
    for stem, table in result.tables.items():
        atomic_io.write_json(os.path.join(options.out, f"{stem}.json"), json_safe(table)[0])
    for figure_spec in result.figures:
        figure = figure_spec.draw()
        atomic_io.save_figure(figure, os.path.join(options.out, figure_spec.file), dpi=dpi)
        plt.close(figure)
    return write_summary(options, result.to_summary())


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
