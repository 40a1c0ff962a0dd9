"""Section 7 (Figure 11): closed-form few-shot linear probes on single tokens and aggregated tokens, by depth.

The command line of :mod:`vitcnn_tf.paper.linear_probes` (see it for the features, the memory bound and the
finding). Roles of ``--models`` (default ``vit vit_gap resnet``), from each model's config: the CLS-token ViT
(required), the GAP ViT (optional: without it the finding is skipped, "no GAP ViT given") and the ResNet
(optional); at most one of each. The few-shot sets are drawn from ``--train-pool`` stratified examples of the
``train`` split; the probes are scored on ``--num-examples`` stratified examples of the evaluation split.

Outputs in ``--out``:
  probes.npz                    per model ``<label>/layers``, ``depth`` [L], ``per_token_mean`` [L, S] (mean
                                over the probed tokens, S seeds), ``per_token/<layer>`` [K, S] (K probed
                                tokens), ``<label>/<aggregation>`` [L, S]
  probes_per_token.png          Figure 11 left: mean per-token accuracy by normalised depth (95% bands over seeds)
  probes_aggregations.png       Figure 11 right: CLS / GAP / single-token accuracy by normalised depth
  summary.json                  accuracies (mean over seeds, intervals), chance level, finding, figures

    python -m experiments.sec7_linear_probes
    python -m experiments.sec7_linear_probes --models vit.keras gap.keras --shots 5 --probe-seeds 0 1 2
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf import data as data_lib
from vitcnn_tf.paper import common as common_paper
from vitcnn_tf.paper import linear_probes

DEFAULT_MODELS = ("vit", "vit_gap", "resnet")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec7_linear_probes")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=512,
                                default_out=os.path.join("results", "sec7_linear_probes"))
    common.add_probe_arguments(parser)
    parser.add_argument("--token-grid", type=int, default=4,
                        help="probe a k x k evenly spaced subset of the token positions (default: %(default)s)")
    return parser


def check_options(options):
    """One CLS-token ViT, at most one GAP ViT and one ResNet among the models (before any is loaded or trained)."""
    common.check_token_roles(options)


def run(options):
    """Loads the models and the data, runs the probes and writes the files listed in the module docstring."""
    started = time.perf_counter()
    models = common.load_models(options.models, options)
    size = common.image_size(models)
    result = linear_probes.run(
        *common_paper.token_role_pairs(models, "--models"),
        train_data=common.evaluation_data(options, size, split="train", num_examples=options.train_pool,
                                          full_batches=False),
        test_data=common.evaluation_data(options, size),
        num_classes=data_lib.dataset_info(options.dataset, data_dir=options.data_dir).num_classes,
        shots=options.shots, probe_seeds=options.probe_seeds, token_grid=options.token_grid, l2_reg=options.l2_reg,
        max_feature_bytes=int(options.max_feature_gb * 2**30), seed=options.seed, progress=options.progress,
        context={"dataset": options.dataset})
    return common.write_result(options, result, models=dict(zip(models, options.models)), started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
