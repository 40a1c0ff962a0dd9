"""Section 5, Figures 3 and 4: mean attention distance of every head in every block, with full and little data.

The command line of :mod:`vitcnn_tf.paper.attention_distance` (see it for the method, the memory and the findings),
over a stratified subset of the test split.

Models: ``--models FULL [LITTLE]`` (default the CPU zoo's ``vit`` and ``vit_data3``, the same recipe trained on 3%
of the training data): the first is the full-data ViT (Figure 3), a second one its little-data twin (Figure 4).
With ``--little-data-models``, every model of ``--models`` is a full-data ViT (e.g. ViT-B/16 and ViT-L/16 on
ImageNet-21k, of any depths and head counts) and the ``i``-th little-data model is the twin of the ``i``-th (e.g.
their ImageNet-1k versions).

Outputs in ``--out`` (default ``results/sec5_attention_distance``), written atomically:

  attention_distances.npz              per model: ``<model>.per_example [N, L, H]`` and ``<model>.mean [L, H]``
  attention_distances.json             per model: head means, spreads and their intervals
  attention_distances.png              Figure 3: every head's mean distance per block, full-data models
  attention_distances_less_data.png    Figure 4: the little-data models beside their twins
  attention_heads_<model>.png          heads sorted by distance, one line per block (the paper's Figure 3 layout)
  attention_spread.png                 spread (max - min) per block for each model
  summary.json                         settings, the uniform-attention reference distance, findings and figures

    python -m experiments.sec5_attention_distance
    python -m experiments.sec5_attention_distance --models vit vit_data10 --num-examples 1024
    python -m experiments.sec5_attention_distance --batch-size 32 --models ViT-B/16=B16-i21k.npz \\
        ViT-L/16=L16-i21k.npz --little-data-models ViT-B/16=B16-i1k.npz ViT-L/16=L16-i1k.npz
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf.paper import attention_distance

DEFAULT_MODELS = ("vit", "vit_data3")
DEFAULT_OUT = os.path.join("results", "sec5_attention_distance")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec5_attention_distance")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=1000,
                                default_batch_size=250, default_out=DEFAULT_OUT)
    parser.add_argument("--little-data-models", nargs="+", default=None, metavar="SPEC",
                        help="ViTs trained with less data, the i-th the twin of the i-th of --models (default: "
                             "the second of two --models)")
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the intervals (default: %(default)s)")
    return parser


def check_options(options):
    """Every model of --models and --little-data-models is a ViT (before any model is loaded or trained)."""
    common.check_model_families(options, "models", "little_data_models", allowed=("vit",))


def run(options):
    started = time.perf_counter()
    little_specs = list(options.little_data_models or [])
    full_specs = list(options.models)
    if not little_specs and len(full_specs) == 2:
        full_specs, little_specs = full_specs[:1], full_specs[1:]
    labelled = common.load_models(full_specs + little_specs, options)
    labels = list(labelled)
    models = {label: labelled[label] for label in labels[:len(full_specs)]}
    little = {label: labelled[label] for label in labels[len(full_specs):]}
    data = common.evaluation_data(options, common.image_size(labelled))
    result = attention_distance.run(models, data, little_data_models=little, num_resamples=options.num_resamples,
                                    seed=options.seed, progress=options.progress)
    return common.write_result(options, result, models=dict(zip(labels, full_specs + little_specs)), started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
