"""Section 6 (Figures 7 and 8): representation propagation through skip connections.

The command line of :mod:`vitcnn_tf.paper.skip_connections` (see it for the statistics and findings).
Roles of ``--models`` (default ``vit resnet mixer vit_noskip_early vit_noskip_mid vit_noskip_late``), from each
model's config: ViTs with removed skip connections (``skip_blocks_removed``) are the no-skip models of Figure 8;
of the other models, the ViT (with a CLS token for the CLS / spatial split) is the ``vit`` role, a ResNet the
``resnet`` role and a Mixer the ``mixer`` role (at most one of each). Without no-skip models
Figure 8 is skipped: models trained without skip connections have no public checkpoints (CPU preset only).
Accuracies of zoo models come from their training record (full test split), the others' from the evaluation
subset.

Outputs in ``--out``:
  norm_ratios.npz          per model ``<label>/ratio``, ``log10_ratio_low``, ``log10_ratio_high`` [U],
                           ``ratio_per_token`` [U, T] (token models), ``ratio_cls`` / ``ratio_spatial`` [U] (CLS
                           ViT), ``units``
  norm_ratio_tokens.png    Figure 7 left: log10 ratio per token (rows, token 0 = CLS) x residual unit (columns)
  norm_ratio_layers.png    Figure 7 right: log10 ratio by normalised depth: ViT CLS token, ViT spatial tokens,
                           ResNet, Mixer (95% bootstrap bands over examples)
  skip_removal_cka.npz     ``<label>/cka`` [L, L] per model and the shared ``layers``
  skip_removal_cka.png     Figure 8: the heatmaps side by side, removed block marked, accuracies in the titles
  summary.json             every number above with its interval, the accuracies, the findings and the figures

    python -m experiments.sec6_skip_connections
    python -m experiments.sec6_skip_connections --models vit.keras resnet.keras noskip2.keras --num-examples 256
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf.models import model_family
from vitcnn_tf.paper import skip_connections

DEFAULT_MODELS = ("vit", "resnet", "mixer", "vit_noskip_early", "vit_noskip_mid", "vit_noskip_late")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec6_skip_connections")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=512, default_batch_size=64,
                                default_out=os.path.join("results", "sec6_skip_connections"))
    parser.add_argument("--bootstrap-resamples", type=int, default=1000,
                        help="bootstrap resamples of every interval (default: %(default)s)")
    common.add_check_arguments(parser)
    return parser


def split_roles(models):
    """``{"vit", "resnet", "mixer": label or None, "no_skip_models": [labels]}`` of ``{label: model}`` (see the
    module docstring)."""
    roles = {"vit": None, "resnet": None, "mixer": None, "no_skip_models": []}
    for label, model in models.items():
        family = model_family(model)
        if family == "vit" and tuple(model.config.skip_blocks_removed):
            roles["no_skip_models"].append(label)
            continue
        if roles[family] is None:
            roles[family] = label
        else:
            raise ValueError(f"--models: {label!r} is a second {family} with all its skip connections; give one "
                             "ViT, one ResNet and one Mixer at most (plus no-skip ViTs)")
    if roles["vit"] is None:
        raise ValueError(f"--models: need a ViT with all its skip connections, got {list(models)}")
    return roles


def check_options(options):
    """A ViT among the models, the others ViTs, ResNets or Mixers (before any model is loaded or trained)."""
    common.check_model_families(options, "models", allowed=("vit", "resnet", "mixer"), required=("vit",))


def run(options):
    """Loads the models and the data, runs the analysis and writes the files listed in the module docstring."""
    started = time.perf_counter()
    models = common.load_models(options.models, options)
    roles = split_roles(models)
    data = common.evaluation_data(options, common.image_size(models))
    spec_of = dict(zip(models, options.models))
    known = {label: accuracy for label in [roles["vit"], *roles["no_skip_models"]]
             if (accuracy := common.zoo_test_accuracy(spec_of[label], options)) is not None}
    result = skip_connections.run(
        (roles["vit"], models[roles["vit"]]),
        resnet=None if roles["resnet"] is None else (roles["resnet"], models[roles["resnet"]]),
        mixer=None if roles["mixer"] is None else (roles["mixer"], models[roles["mixer"]]),
        no_skip_models={label: models[label] for label in roles["no_skip_models"]}, data=data,
        known_accuracies=known, bootstrap_resamples=options.bootstrap_resamples, seed=options.seed,
        progress=options.progress, strategy=common.distribution_strategy(options),
        context={"dataset": options.dataset},
        check_examples=options.check_examples, null_permutations=options.null_permutations)
    return common.write_result(options, result, models=spec_of, started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
