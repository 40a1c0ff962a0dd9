"""Section 5, Figure 5: are the local attention heads of the first ViT block the most ResNet-like?

The command line of :mod:`vitcnn_tf.paper.local_global_heads` (see it for the method and the finding): the heads of
the ViT's block ``--block`` (default 0) sorted by mean attention distance, windows of ``--window-sizes``
consecutive sorted heads (default every size 1 .. H), and the CKA of every window's output with the lower half of
the ResNet's taps, over a stratified subset of the test split (``--models``, default the CPU zoo's ``vit resnet``).
The finding also reports its Procrustes value and the permutation null of the compared CKA on ``--check-examples``
evenly spaced examples (default 256) with ``--null-permutations`` shuffles (default 100).

Outputs in ``--out`` (default ``results/sec5_local_global_heads``), written atomically:

  head_subset_cka.npz    ``cka [S, R]``, ``subset_mean_distance [S]``, ``head_distance [H]``, ``subset_names``,
                         ``resnet_names``
  head_subset_cka.json   subsets (heads, mean distance, CKA with each lower ResNet layer, max CKA with interval)
  head_subset_cka.png    Figure 5: CKA against subset mean distance (max over lower ResNet layers with bootstrap
                         error bars, and the ResNet's unit outputs)
  summary.json           settings, the finding and the figure

    python -m experiments.sec5_local_global_heads
    python -m experiments.sec5_local_global_heads --models vit resnet --window-sizes 1 2
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf.paper import local_global_heads

DEFAULT_MODELS = ("vit", "resnet")
DEFAULT_OUT = os.path.join("results", "sec5_local_global_heads")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec5_local_global_heads")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=1000,
                                default_batch_size=125, default_out=DEFAULT_OUT)
    parser.add_argument("--block", type=int, default=0, help="ViT encoder block of the heads (default: %(default)s)")
    parser.add_argument("--window-sizes", type=common._positive_int, nargs="+", default=None, metavar="K",
                        help="sizes of the windows of consecutive sorted heads (default: every size 1 .. H)")
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the finding's interval (default: %(default)s)")
    common.add_check_arguments(parser)
    return parser


def check_options(options):
    """The models are ViTs and ResNets, at least one of each (before any model is loaded or trained)."""
    common.check_model_families(options, "models", allowed=("vit", "resnet"), required=("vit", "resnet"))


def run(options):
    started = time.perf_counter()
    models = common.load_models(options.models, options)
    data = common.evaluation_data(options, common.image_size(models))
    result = local_global_heads.run(models, data, block=options.block, window_sizes=options.window_sizes,
                                    num_resamples=options.num_resamples, seed=options.seed,
                                    strategy=common.distribution_strategy(options), progress=options.progress,
                                    check_examples=options.check_examples,
                                    null_permutations=options.null_permutations)
    return common.write_result(options, result, models=dict(zip(models, options.models)), started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
