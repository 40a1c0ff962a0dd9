"""Section 8 (Figures 12 and 13): how the amount of pre-training data shapes the representations.

The command line of :mod:`vitcnn_tf.paper.data_scale` (see it for the statistics and the finding). ``--models``
holds, per architecture, one large-data model (fraction 1, the reference) and small-data models (default: the
zoo's ``vit_data3``, ``vit_data10``, ``vit_data30`` and ``vit``); models are grouped by architecture from their
config. The fraction of the largest training set each saw comes from the zoo recipe (no
fraction = 1); for other specs give ``--fractions`` in the order of ``--models`` (e.g. an ImageNet-21k ViT-B/16
and its ImageNet-1k twin: ``--fractions 1 0.09``) and optionally ``--data-names`` for the legends. The CKA and
the probes' test set are ``--num-examples`` stratified examples of the evaluation split; the few-shot sets are
drawn from ``--train-pool`` examples of the ``train`` split.

Outputs in ``--out``:
  data_scale_cka.npz          per group ``<arch>/<label>/cka`` [L, L] (reference blocks x model blocks) and
                              ``<arch>/blocks``
  data_scale_cka_<arch>.png   Figure 12: CKA to the reference at each block, one line per fraction
  data_scale_probes_<arch>.png  Figure 13: GAP-feature probe accuracy by normalised depth, one line per fraction
  data_scale_probes.npz       per model ``<label>/gap`` [L, S] accuracies, ``<label>/depth`` and ``<label>/layers``
  summary.json                per-block CKA with intervals, probe accuracies, test accuracies, the finding

    python -m experiments.sec8_data_scale
    python -m experiments.sec8_data_scale --models v3.keras v100.keras r3.keras r100.keras --fractions .03 1 .03 1
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf import data as data_lib
from vitcnn_tf import model_specs
from vitcnn_tf.paper import data_scale

DEFAULT_MODELS = ("vit_data3", "vit_data10", "vit_data30", "vit")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec8_data_scale")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=512, default_batch_size=64,
                                default_out=os.path.join("results", "sec8_data_scale"))
    parser.add_argument("--fractions", type=float, nargs="+", default=None, metavar="F",
                        help="fraction of the largest training set each model of --models saw, in order (1: the "
                             "large-data reference of its architecture; default: from the zoo recipes, required for "
                             "other specs)")
    parser.add_argument("--data-names", nargs="+", default=None, metavar="NAME",
                        help="name of each model's pre-training data for the legends, in the order of --models "
                             "(default: '<fraction>%% of the data')")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000,
                        help="bootstrap resamples over minibatches (default: %(default)s)")
    common.add_probe_arguments(parser)
    common.add_check_arguments(parser)
    return parser


def check_options(options):
    """Every model has a fraction, and some model saw all the data (1) and some less (before any model is loaded)."""
    try:
        fractions = model_fractions(options)
    except ValueError as error:
        raise common.UserError(str(error)) from None
    if not any(fraction == 1 for fraction in fractions) or all(fraction == 1 for fraction in fractions):
        raise common.UserError(f"--models {' '.join(options.models)}: expected a large-data model (fraction 1) and "
                               f"at least one small-data model (fraction < 1), got fractions {fractions}")


def model_fractions(options):
    """The training-data fraction of every spec of ``--models``."""
    if options.fractions is not None:
        if len(options.fractions) != len(options.models):
            raise ValueError(f"--fractions: {len(options.fractions)} values for {len(options.models)} --models")
        return list(options.fractions)
    from vitcnn_tf import zoo

    recipes = [model_specs.recipe_name(spec) for spec in options.models]
    unknown = [spec for spec, recipe in zip(options.models, recipes) if recipe is None]
    if unknown:
        raise ValueError(f"--fractions is required when --models are not zoo recipes ({unknown})")
    return [zoo.RECIPES[recipe].fraction or 1.0 for recipe in recipes]


def run(options):
    """Loads the models and the data, runs the analysis and writes the files listed in the module docstring."""
    started = time.perf_counter()
    fractions = model_fractions(options)
    if options.data_names is not None and len(options.data_names) != len(options.models):
        raise ValueError(f"--data-names: {len(options.data_names)} names for {len(options.models)} --models")
    models = common.load_models(options.models, options)
    spec_of = dict(zip(models, options.models))
    known = {label: accuracy for label in models
             if (accuracy := common.zoo_test_accuracy(spec_of[label], options)) is not None}
    size = common.image_size(models)
    result = data_scale.run(
        models, dict(zip(models, fractions)), data=common.evaluation_data(options, size),
        probe_train_data=common.evaluation_data(options, size, split="train", num_examples=options.train_pool,
                                          full_batches=False),
        num_classes=data_lib.dataset_info(options.dataset, data_dir=options.data_dir).num_classes,
        data_names=None if options.data_names is None else dict(zip(models, options.data_names)),
        known_accuracies=known, shots=options.shots, probe_seeds=options.probe_seeds, l2_reg=options.l2_reg,
        max_feature_bytes=int(options.max_feature_gb * 2**30), bootstrap_resamples=options.bootstrap_resamples,
        seed=options.seed, progress=options.progress, strategy=common.distribution_strategy(options),
        context={"dataset": options.dataset},
        check_examples=options.check_examples, null_permutations=options.null_permutations)
    return common.write_result(options, result, models=spec_of, started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
