"""Section 5, Figure 6 (and Appendix C): effective receptive fields of ViT and ResNet layers by depth.

The effective receptive field (ERF, Luo et al. 2016) of a layer is the mean over images and channels of
``|d a_c(centre) / d input|`` (``analysis.receptive_field``), for ``--num-examples`` images (default 32, as the
paper) of the test split and a random subset of ``--max-channels`` channels per layer (default 16; ``0`` = all).
Layers: ViT block outputs after the residual connections (``blockNN/+sa``, ``blockNN/+mlp``) and the attention
sublayer before its residual (``blockNN/sa``, Appendix C); the ResNet's stage outputs (last ``+res`` of each
stage); for a Mixer, its residual sums. A map's extent is the side (pixels) of the smallest square around its
centre of mass holding 50% of its mass (``erf_extent``); depth is the tap's position among the model's taps, 0..1.
Intervals bootstrap the images (each image's own ERF map is kept; paired across models).

Outputs in ``--out`` (default ``results/sec5_receptive_fields``), written atomically:

  erf_maps.npz            per model: ``<model>.maps [K, H, W]`` mean maps, ``<model>.taps``, ``<model>.extent``,
                          ``<model>.depth``
  erf_maps_<model>.png    Figure 6: grid of the ERF maps by depth (titles give the extent)
  erf_extent.png          extent against normalised depth for every model (95% bands), ViT ``sa`` separately
  receptive_fields.json   per tap: extent with interval, depth, mass of the central patch
  summary.json            settings and the finding

Finding ``vit_erf_larger_in_lower_layers``: extent of the lowest ViT block output (``block00/+mlp``) minus that of
the lowest ResNet stage output; claim > 0.

    python -m experiments.sec5_receptive_fields
    python -m experiments.sec5_receptive_fields --num-examples 64 --max-channels 0
"""

import contextlib
import logging
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from experiments import common
from experiments.sec4_representation_structure import first_of_family, load_models, model_family
from vitcnn_tf import atomic_io, findings, plotting, representations
from vitcnn_tf.analysis import bootstrap, receptive_field

DEFAULT_MODELS = ("vit", "resnet")
DEFAULT_OUT = os.path.join("results", "sec5_receptive_fields")
BAND_RESAMPLES = 200  # resamples of the per-tap bands in the figure (the finding uses --num-resamples)


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec5_receptive_fields")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=32,
                                default_batch_size=32, default_out=DEFAULT_OUT)
    parser.add_argument("--max-channels", type=int, default=16,
                        help="random channels per layer whose gradients are averaged (0: all; default: %(default)s)")
    parser.add_argument("--mass", type=float, default=0.5,
                        help="mass fraction inside the square that defines the extent (default: %(default)s)")
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the finding's interval (default: %(default)s)")
    return parser


def run(options):
    started = time.time()
    if options.max_channels < 0:
        raise ValueError(f"--max-channels must be >= 0 (0: all channels), got {options.max_channels}")
    models = load_models(options.models, options)
    images = evaluation_images(options, {common.image_size(model) for model in models.values()})
    results = {}
    for label, model in models.items():
        taps = erf_taps(model)
        print(f"ERF of {len(taps)} taps of {label!r} over {len(images)} images", flush=True)
        results[label] = model_receptive_fields(model, taps, images, options)
    found = erf_findings(models, results, options)
    write_outputs(options.out, models, results, options.mass)
    summary = {
        "experiment": "sec5_receptive_fields",
        "models": dict(zip(models, options.models)),
        "num_images": int(len(images)),
        "max_channels": options.max_channels or None,
        "mass": options.mass,
        "extent": {label: dict(zip(result["taps"], map(int, result["extent"]))) for label, result in results.items()},
        "findings": [finding.to_dict() for finding in found],
        "seconds": round(time.time() - started, 1),
    }
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


def evaluation_images(options, sizes):
    """The ``--num-examples`` evaluation images ``[n, S, S, 3]`` (one input size shared by all models)."""
    if len(sizes) != 1:
        raise ValueError(f"--models: the models must share one input size, got {sorted(sizes)}")
    data = common.evaluation_data(options, sizes.pop())
    return np.concatenate([np.asarray(images) for images, _ in data])


def erf_taps(model):
    """The taps whose ERF is computed, in forward order (see the module docstring)."""
    names = representations.layer_names(model)
    family = model_family(model)
    if family == "vit":
        return [name for name in names if name.endswith(("/sa", "/+sa", "/+mlp"))]
    if family == "resnet":
        units = [name for name in names if name.endswith("/+res")]
        return [name for index, name in enumerate(units)
                if index + 1 == len(units) or units[index + 1].split("/")[0] != name.split("/")[0]]
    if family == "mixer":
        return [name for name in names if name.endswith(("/+token_mixing", "/+channel_mixing"))]
    raise ValueError(f"model {model.name!r}: ERF taps are defined for ViT, ResNetV2 and Mixer models")


def model_receptive_fields(model, taps, images, options):
    """Per-image maps ``[K, n, H, W]``, mean maps, extents with bands, depths and central-patch masses."""
    all_names = representations.layer_names(model)
    progress = keras.utils.Progbar(len(taps)) if options.progress else None
    per_image = []
    with quiet_retracing_warnings():
        for step, tap in enumerate(taps, start=1):
            per_image.append(receptive_field.per_image_effective_receptive_field(
                model, images, tap, batch_size=options.batch_size, max_channels=options.max_channels or None,
                seed=options.seed))
            if progress is not None:
                progress.update(step)
    per_image = np.stack(per_image)
    means = per_image.mean(axis=1)
    bands = [bootstrap.bootstrap_interval(lambda maps: receptive_field.erf_extent(maps.mean(axis=0), options.mass),
                                          maps, num_resamples=BAND_RESAMPLES, seed=options.seed)
             for maps in per_image]
    patch = getattr(model.config, "patch_size", None)
    return {
        "taps": taps,
        "per_image": per_image,
        "maps": means,
        "extent": np.array([receptive_field.erf_extent(m, options.mass) for m in means], dtype=np.float64),
        "low": np.array([band[1] for band in bands]),
        "high": np.array([band[2] for band in bands]),
        "depth": np.array([all_names.index(tap) / (len(all_names) - 1) for tap in taps]),
        "centre_patch_mass": [central_patch_mass(m, patch) if patch else None for m in means],
    }


@contextlib.contextmanager
def quiet_retracing_warnings():
    """Silence TensorFlow's retracing warnings: each tap's ERF compiles its own gradient function, by design."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def central_patch_mass(erf_map, patch_size):
    """Fraction of the map's mass inside the input patch of the centre token (grid position ``(g // 2, g // 2)``)."""
    side = erf_map.shape[0] // patch_size
    start = (side // 2) * patch_size
    return float(erf_map[start:start + patch_size, start:start + patch_size].sum() / erf_map.sum())


def erf_findings(models, results, options):
    vit, resnet = first_of_family(models, "vit"), first_of_family(models, "resnet")
    if vit is None or resnet is None:
        print("no ViT and ResNet pair among the models: the ERF finding is skipped", flush=True)
        return []
    vit_index = next(i for i, tap in enumerate(results[vit]["taps"]) if tap.endswith("/+mlp"))
    resnet_index = 0
    vit_maps, resnet_maps = results[vit]["per_image"][vit_index], results[resnet]["per_image"][resnet_index]

    def difference(vit_images, resnet_images):
        return (receptive_field.erf_extent(vit_images.mean(axis=0), options.mass)
                - receptive_field.erf_extent(resnet_images.mean(axis=0), options.mass))

    value, low, high = bootstrap.bootstrap_interval(difference, vit_maps, resnet_maps,
                                                    num_resamples=options.num_resamples, seed=options.seed)
    vit_tap, resnet_tap = results[vit]["taps"][vit_index], results[resnet]["taps"][resnet_index]
    return [findings.Finding(
        key="vit_erf_larger_in_lower_layers", section="5",
        claim="Lower-layer effective receptive fields are larger in ViT than in ResNet",
        quantity=f"ERF extent (side in pixels of the centred square holding {options.mass:.0%} of the mass) of "
                 f"{vit} {vit_tap} minus {resnet} {resnet_tap}",
        value=value, low=low, high=high, threshold=0.0, direction="greater",
        detail={"vit": vit, "resnet": resnet, "vit_tap": vit_tap, "resnet_tap": resnet_tap,
                "vit_extent": float(results[vit]["extent"][vit_index]),
                "resnet_extent": float(results[resnet]["extent"][resnet_index]),
                "num_images": int(vit_maps.shape[0]), "max_channels": options.max_channels or None,
                "interval": "paired bootstrap over images"})]


def write_outputs(folder, models, results, mass):
    arrays, report = {}, {}
    extent_series = {}
    for label, result in results.items():
        arrays.update({f"{label}.maps": result["maps"], f"{label}.taps": np.array(result["taps"]),
                       f"{label}.extent": result["extent"], f"{label}.depth": result["depth"]})
        report[label] = [{"tap": tap, "depth": float(depth), "extent": float(extent), "extent_interval": [low, high],
                          "centre_patch_mass": mass}
                         for tap, depth, extent, low, high, mass in zip(
                             result["taps"], result["depth"], result["extent"], result["low"], result["high"],
                             result["centre_patch_mass"])]
        titles = [f"{tap} ({int(extent)}px)" for tap, extent in zip(result["taps"], result["extent"])]
        ncols = 3 if model_family(models[label]) == "vit" else 4
        figure = plotting.image_grid(result["maps"], titles, ncols=ncols,
                                     title=f"{label}: effective receptive fields by depth")
        atomic_io.save_figure(figure, os.path.join(folder, f"erf_maps_{label}.png"), dpi=110)
        before = np.array([tap.endswith("/sa") for tap in result["taps"]])
        for name, mask in ((label, ~before), (f"{label} sa (before residual)", before)):
            if mask.any():
                extent_series[name] = (result["depth"][mask], result["extent"][mask], result["low"][mask],
                                       result["high"][mask])
    atomic_io.save_npz(os.path.join(folder, "erf_maps.npz"), **arrays)
    atomic_io.write_json(os.path.join(folder, "receptive_fields.json"), report)
    figure = plotting.line_plot(extent_series, title="Effective receptive field extent by depth",
                                xlabel="normalised depth", ylabel=f"ERF extent (pixels, {mass:.0%} of the mass)")
    atomic_io.save_figure(figure, os.path.join(folder, "erf_extent.png"), dpi=120)


if __name__ == "__main__":
    sys.exit(main())
