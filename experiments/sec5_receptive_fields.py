"""Section 5, Figure 6 (and Appendix C): effective receptive fields of ViT and ResNet layers by depth.

The command line of :mod:`vitcnn_tf.paper.receptive_fields` (see it for the method, the taps, the cost and the
finding): ``--num-examples`` images (default 32, as the paper) of the test split, a random subset of
``--max-channels`` channels per image and layer (default 8; ``0`` = all), ``--num-blocks`` evenly spaced blocks
of each ViT or Mixer (default all), ``--batch-size`` images per gradient call. The cost is
``max_channels * ceil(num_examples / batch_size)`` backward passes per layer whatever its width.

Outputs in ``--out`` (default ``results/sec5_receptive_fields``), written atomically:

  erf_maps.npz                          per model: ``<model>.maps [K, H, W]`` mean maps, ``<model>.taps``,
                                        ``<model>.extent``, ``<model>.depth``
  erf_maps_<model>.png                  Figure 6: the ERF maps after the residual connections, by depth
  erf_maps_<vit>_before_residual.png    Appendix C: a ViT's attention sublayers before the residual connection
  erf_extent.png                        extent against normalised depth for every model (95% bands)
  receptive_fields.json                 per tap: extent with interval, depth, mass of the central patch
  summary.json                          settings, the finding and the figures

    python -m experiments.sec5_receptive_fields
    python -m experiments.sec5_receptive_fields --num-examples 64 --max-channels 0
    python -m experiments.sec5_receptive_fields --models ViT-B/16=vit.npz BiT-R50x1=bit.npz --num-blocks 6 \
        --max-channels 4
"""

import os
import sys
import time

from experiments import common
from vitcnn_tf.paper import receptive_fields

DEFAULT_MODELS = ("vit", "resnet")
DEFAULT_OUT = os.path.join("results", "sec5_receptive_fields")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec5_receptive_fields")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=32,
                                default_batch_size=32, default_out=DEFAULT_OUT)
    parser.add_argument("--max-channels", type=int, default=8,
                        help="random channels per image and layer whose gradients are averaged (0: all; default: "
                             "%(default)s)")
    parser.add_argument("--num-blocks", type=common._positive_int, default=3,
                        help="evenly spaced blocks of each ViT or Mixer, the first and last included (default: "
                             "%(default)s)")
    parser.add_argument("--mass", type=float, default=0.5,
                        help="mass fraction inside the square that defines the extent (default: %(default)s)")
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the finding's interval (default: %(default)s)")
    return parser


def run(options):
    started = time.perf_counter()
    if options.max_channels < 0:
        raise ValueError(f"--max-channels must be >= 0 (0: all channels), got {options.max_channels}")
    models = common.load_models(options.models, options)
    data = common.evaluation_data(options, common.image_size(models))
    result = receptive_fields.run(models, data, num_images=None, batch_size=options.batch_size,
                                  max_channels=options.max_channels or None, num_blocks=options.num_blocks,
                                  mass=options.mass,
                                  num_resamples=options.num_resamples, seed=options.seed, progress=options.progress)
    return common.write_result(options, result, models=dict(zip(models, options.models)), started=started)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
