"""Section 7 (Figures 9 and 10): do final-layer tokens keep the spatial location of their input patch?

The command line of :mod:`vitcnn_tf.paper.localization` (see it for the scores, intervals and findings). Roles of
``--models`` (default ``vit vit_gap resnet``), from each model's config: the CLS-token ViT (required), the GAP ViT
(optional: without it its maps and ``gap_vit_localizes_less`` are skipped, "no GAP ViT given") and the ResNet
(optional, Figure 10); at most one of each. The images are a stratified subset of the evaluation split.

Outputs in ``--out``:
  token_patch_cka.npz       per model ``<label>/cka_map`` [T, P], ``own_patches`` [T, P], ``token_grid``
  localization_maps.png     Figures 9 / 10: CKA of a corner, an edge and two interior tokens (rows: models) with
                            every input patch, own patch(es) boxed in red
  localization_scores.png   own-patch share and top-1 fraction per model, 95% intervals, no-information level
  summary.json              scores, intervals, chance levels, findings, figures

    python -m experiments.sec7_localization
    python -m experiments.sec7_localization --models vit.keras gap.keras resnet.keras --num-examples 256
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf.paper import common as common_paper
from vitcnn_tf.paper import localization

DEFAULT_MODELS = ("vit", "vit_gap", "resnet")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec7_localization")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=256,
                                default_out=os.path.join("results", "sec7_localization"))
    parser.add_argument("--patch-size", type=int, default=None,
                        help="input patch side in pixels (default: the CLS ViT's patch size)")
    parser.add_argument("--bootstrap-resamples", type=int, default=20,
                        help="bootstrap resamples; each recomputes every CKA map (default: %(default)s)")
    parser.add_argument("--bootstrap-all", action="store_true",
                        help="bootstrap every model's scores, not only those of the CLS and GAP ViTs (the findings)")
    common.add_check_arguments(parser)
    return parser


def check_options(options):
    """One CLS-token ViT, at most one GAP ViT and one ResNet among the models (before any is loaded or trained)."""
    common.check_token_roles(options)


def run(options):
    """Loads the models and the data, runs the analysis and writes the files listed in the module docstring."""
    started = time.perf_counter()
    models = common.load_models(options.models, options)
    data = common.evaluation_data(options, common.image_size(models))
    result = localization.run(
        *common_paper.token_role_pairs(models, "--models"),
        data=data, patch_size=options.patch_size, bootstrap_resamples=options.bootstrap_resamples,
        bootstrap_all=options.bootstrap_all, seed=options.seed, progress=options.progress,
        context={"dataset": options.dataset},
        check_examples=options.check_examples, null_permutations=options.null_permutations)
    return common.write_result(options, result, models=dict(zip(models, options.models)), started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
