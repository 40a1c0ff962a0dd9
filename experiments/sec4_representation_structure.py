"""Section 4, Figures 1 and 2: CKA heatmaps between all layers within each model and across models.

The command line of :mod:`vitcnn_tf.paper.representation_structure` (see it for the method, the taps, the memory
and the findings): the models of ``--models`` (default the CPU zoo's ``vit resnet mixer``) and their
``--seed-replicates`` run side by side over a stratified subset of the test split, in ``--passes`` shuffled passes.
``--taps all`` (default) keeps every tap but those matching ``--exclude`` (default the attention probabilities
``*/attn`` and the ``logits``); ``--taps blocks`` keeps the block sublayers and the residual stream, as the paper's
heatmaps (use it, with ``--batch-size 32``, for the 224 px paper models: it fits in 16 GB of host memory).
``--measure procrustes`` or ``mutual_knn`` draws the maps with that measure on ``--check-examples`` evenly spaced
examples (default 256; both need every example of a tap at once, see ``docs/metrics.md``); the findings stay CKA's,
each with its Procrustes value and permutation null (``--null-permutations``, default 100).

Outputs in ``--out`` (default ``results/sec4_representation_structure``), written atomically:

  within_<model>.npz / .png / .json    Figure 1: ``matrix [L, L]``, ``row_names``, ``col_names``; heatmap; summary
  cross_<a>_<b>.npz / .png / .json     Figure 2: ``matrix [La, Lb]`` (rows: model a) for every pair of models
  seeds_<a>_<b>.npz / .png / .json     CKA between two trained seeds of a model (with --seed-replicates)
  summary.json                         settings, per-map summaries, the findings and the figures

Seeds: ``--seeds`` (default 0 1 2) runs the whole analysis once per trained seed and pools the findings (see
``experiments.common.run_experiment``). ``--seed-replicates MODEL=SPEC`` instead puts another seed of a model into
the same heatmaps (``seeds_<a>_<b>``); the findings then become means over the seed pairs.

    python -m experiments.sec4_representation_structure
    python -m experiments.sec4_representation_structure --models vit resnet --num-examples 1024 --passes 2
    python -m experiments.sec4_representation_structure --taps blocks --batch-size 32 --models \\
        ViT-B/16=ViT-B_16.npz BiT-R50x1=BiT-M-R50x1.npz --dataset imagenet2012
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf.paper import representation_structure

DEFAULT_MODELS = ("vit", "resnet", "mixer")
DEFAULT_EXCLUDE = representation_structure.DEFAULT_EXCLUDE
DEFAULT_OUT = os.path.join("results", "sec4_representation_structure")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec4_representation_structure")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=750,
                                default_batch_size=125, default_out=DEFAULT_OUT)
    parser.add_argument("--passes", type=common._positive_int, default=1,
                        help="shuffled passes over the examples (Nguyen et al.; default: %(default)s)")
    parser.add_argument("--taps", choices=representation_structure.TAP_CHOICES, default="all",
                        help="'all' taps, or the block sublayers and residual stream ('blocks', the paper's "
                             "heatmaps; use it for 224 px models) (default: %(default)s)")
    parser.add_argument("--exclude", default=DEFAULT_EXCLUDE,
                        help="regular expression of tap names to leave out ('' keeps every tap; "
                             "default: %(default)s)")
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the findings' intervals (default: %(default)s)")
    common.add_seed_replicates_argument(parser, ())
    parser.add_argument("--measure", choices=tuple(representation_structure.MEASURES), default="cka",
                        help="similarity measure of the maps; procrustes and mutual_knn (k = 10) use the "
                             "--check-examples subset (default: %(default)s)")
    common.add_check_arguments(parser)
    return parser


def run(options):
    started = time.perf_counter()
    specs = common.model_specs(options)  # --models, then the seed replicates
    labelled = common.load_models(specs, options)
    label_of = {}
    for spec, label in zip(specs, labelled):
        label_of.setdefault(spec, label)
    labels = list(labelled)[:len(options.models)]
    models = {label: labelled[label] for label in labels}
    replicates = {label_of[spec]: {label_of[other]: labelled[label_of[other]] for other in others}
                  for spec, others in common.seed_replicates(options).items()}
    size = common.image_size(labelled)

    def make_data(index):
        shuffle_seed = None if options.passes == 1 else options.seed * 1000 + index
        return common.evaluation_data(options, size, shuffle_seed=shuffle_seed)

    result = representation_structure.run(
        models, make_data, passes=options.passes, seed_replicates=replicates, taps=options.taps,
        exclude=options.exclude, num_resamples=options.num_resamples, seed=options.seed,
        strategy=common.distribution_strategy(options), progress=options.progress, measure=options.measure,
        check_examples=options.check_examples, null_permutations=options.null_permutations)
    return common.write_result(options, result, models=dict(zip(labels, options.models)), started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
