"""Section 5, Figure 6 and Appendix C: effective receptive fields of ViT and ResNet layers by depth.

The effective receptive field (ERF, Luo et al. 2016) of a layer is the mean over images and channels of
``|d a_c(centre) / d input|`` (``analysis.receptive_field``), over ``num_images`` images (default 32, as the paper)
and a random subset of ``max_channels`` channels per image and layer (default 16; None = all). Taps: a ViT's block
outputs after the residual connections (``blockNN/+mlp``, Figure 6) and its attention sublayers before their
residual (``blockNN/sa``, Appendix C); a ResNet's stage outputs (the last ``+res`` of each stage); a Mixer's block
outputs (``blockNN/+channel_mixing``). ``num_blocks`` limits a ViT or Mixer to that many evenly spaced blocks, the
first and the last included, as the paper's figure shows a few layers per model. A map's extent is the side
(pixels) of the smallest square around its centre of mass holding ``mass`` (default 50%) of its mass
(``erf_extent``); depth is the tap's position among the model's taps, 0..1.
Intervals bootstrap the images (each image's own ERF map is kept; paired across models).

Cost per tap: ``ceil(num_images / batch_size)`` forward passes and ``max_channels`` times as many backward passes
of the model up to the tap, whatever the layer's width, plus one trace of the gradient function: 2 taps per ViT
block, one per stage (4) for a ResNet. On a 2-core CPU a ViT-B/16 tap costs seconds to minutes
(docs/reproduction.md); the paper preset takes 6 blocks and 4 channels per image.

Finding ``vit_erf_larger_in_lower_layers``: extent of the lowest ViT block output (``block00/+mlp``) divided by
that of the lowest ResNet stage output (an extent is at least 1 pixel, and ``erf_extent`` refuses an all-zero map,
so the ratio is always defined); claim > 1.5 (``vitcnn_tf.claims``).
"""

import numpy as np

from vitcnn_tf import claims, findings, plotting, representations
from vitcnn_tf.analysis import bootstrap, receptive_field
from vitcnn_tf.paper import common, evaluation
from vitcnn_tf.paper.result import FigureSpec, SectionResult

BAND_RESAMPLES = 200  # resamples of the per-tap bands in the figure (the finding uses num_resamples)
BEFORE_RESIDUAL_SUFFIX = "/sa"


def erf_taps(model, num_blocks=None):
    """The taps whose ERF is computed, in forward order (see the module docstring); ``num_blocks`` (ViT, Mixer):
    that many evenly spaced blocks, the first and the last included (None: every block)."""
    names = representations.layer_names(model)
    family = common.family(model)
    if family == "resnet":
        units = [name for name in names if name.endswith("/+res")]
        return [name for index, name in enumerate(units)
                if index + 1 == len(units) or units[index + 1].split("/")[0] != name.split("/")[0]]
    suffixes = {"vit": (BEFORE_RESIDUAL_SUFFIX, "/+mlp"), "mixer": ("/+channel_mixing",)}.get(family)
    if suffixes is None:
        raise ValueError(f"model {model.name!r}: ERF taps are defined for ViT, ResNetV2 and Mixer models")
    taps = [name for name in names if name.endswith(suffixes)]
    blocks = list(dict.fromkeys(tap.split("/")[0] for tap in taps))
    chosen = set(blocks if num_blocks is None else evenly_spaced(blocks, num_blocks))
    return [tap for tap in taps if tap.split("/")[0] in chosen]


def evenly_spaced(items, count):
    """``count`` items of ``items`` at evenly spaced positions, the first and the last included (all if fewer)."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"num_blocks: expected None or an int >= 1, got {count!r}")
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[int(round(position))] for position in np.linspace(0, len(items) - 1, count)]


def central_patch_mass(erf_map, patch_size):
    """Fraction of the ``[S, S]`` map's mass inside the input patch of the centre token (grid position
    ``(g // 2, g // 2)``)."""
    side = erf_map.shape[0] // patch_size
    start = (side // 2) * patch_size
    return float(erf_map[start:start + patch_size, start:start + patch_size].sum() / erf_map.sum())


def model_receptive_fields(model, taps, images, *, batch_size=32, max_channels=16, mass=0.5, seed=0,
                           progress=False):
    """ERFs of ``taps`` of ``model`` over ``images [n, S, S, 3]``: a dict of ``taps``, ``per_image [K, n, S, S]``,
    ``maps [K, S, S]`` (mean over images), ``extent [K]`` with ``low`` / ``high`` bands, ``depth [K]`` and
    ``centre_patch_mass`` (per tap, None without patches)."""
    all_names = representations.layer_names(model)
    bar = evaluation.progress_bar(len(taps), progress)
    per_image = []
    with evaluation.quiet_retracing_warnings():
        for step, tap in enumerate(taps, start=1):
            per_image.append(receptive_field.per_image_effective_receptive_field(
                model, images, tap, batch_size=batch_size, max_channels=max_channels, seed=seed))
            if bar is not None:
                bar.update(step)
    per_image = np.stack(per_image)
    means = per_image.mean(axis=1)
    bands = [bootstrap.bootstrap_interval(lambda maps: receptive_field.erf_extent(maps.mean(axis=0), mass),
                                          maps, num_resamples=BAND_RESAMPLES, seed=seed)
             for maps in per_image]
    patch = getattr(model.config, "patch_size", None)
    return {
        "taps": list(taps),
        "per_image": per_image,
        "maps": means,
        "extent": np.array([receptive_field.erf_extent(m, mass) for m in means], dtype=np.float64),
        "low": np.array([band[1] for band in bands]),
        "high": np.array([band[2] for band in bands]),
        "depth": np.array([all_names.index(tap) / (len(all_names) - 1) for tap in taps]),
        "centre_patch_mass": [central_patch_mass(m, patch) if patch else None for m in means],
    }


def extent_ratio(vit_maps, resnet_maps, mass=0.5):
    """ERF extent of the mean of ``vit_maps [n, S, S]`` divided by that of the mean of ``resnet_maps [n, S, S]``
    (each extent at least 1 pixel: the ratio is always defined)."""
    return (receptive_field.erf_extent(vit_maps.mean(axis=0), mass)
            / receptive_field.erf_extent(resnet_maps.mean(axis=0), mass))


def erf_finding(models, results, *, mass=0.5, max_channels=16, num_resamples=1000, seed=0):
    """``vit_erf_larger_in_lower_layers`` from ``model_receptive_fields`` results ``{label: result}`` (None without
    a ViT and a ResNet among ``models``)."""
    vit, resnet = common.first_of_family(models, "vit"), common.first_of_family(models, "resnet")
    if vit is None or resnet is None:
        return None
    vit_index = next(i for i, tap in enumerate(results[vit]["taps"]) if tap.endswith("/+mlp"))
    resnet_index = 0
    vit_maps, resnet_maps = results[vit]["per_image"][vit_index], results[resnet]["per_image"][resnet_index]

    value, low, high = bootstrap.bootstrap_interval(lambda a, b: extent_ratio(a, b, mass), vit_maps, resnet_maps,
                                                    num_resamples=num_resamples, seed=seed)
    vit_tap, resnet_tap = results[vit]["taps"][vit_index], results[resnet]["taps"][resnet_index]
    key = "vit_erf_larger_in_lower_layers"
    threshold, direction = claims.threshold(key)
    return findings.Finding(
        key=key, section="5",
        claim="Lower-layer effective receptive fields are larger in ViT than in ResNet",
        quantity=f"ERF extent (side in pixels of the centred square holding {mass:.0%} of the mass) of "
                 f"{vit} {vit_tap} divided by that of {resnet} {resnet_tap}",
        value=value, low=low, high=high, threshold=threshold, direction=direction,
        detail={"vit": vit, "resnet": resnet, "vit_tap": vit_tap, "resnet_tap": resnet_tap,
                "vit_extent": float(results[vit]["extent"][vit_index]),
                "resnet_extent": float(results[resnet]["extent"][resnet_index]),
                "num_images": int(vit_maps.shape[0]), "max_channels": max_channels,
                "interval": "paired bootstrap over images"})


def run(models, data, *, num_images=32, batch_size=32, max_channels=16, num_blocks=None, mass=0.5,
        num_resamples=1000, seed=0, progress=False):
    """Figure 6 and Appendix C: effective receptive fields of every model's taps (``erf_taps``).

    Args:
      models: ``{label: keras.Model}`` sharing one input size; the finding uses the first ViT and the first ResNet.
      data: a ``tf.data`` dataset (or iterable) of ``(images [b, S, S, 3], labels [b])`` batches; its first
        ``num_images`` images are used (None: all of them).
      batch_size: images per gradient call; max_channels: channels sampled per image and tap (None: all; the cost
        is ``max_channels * ceil(num_images / batch_size)`` backward passes per tap); num_blocks: evenly spaced
        blocks of a ViT or Mixer (None: all); mass: the extent's mass fraction.
      num_resamples, seed: the finding's bootstrap over images; ``seed`` also draws the channels.

    Returns a :class:`SectionResult` with arrays ``erf_maps {<label>.maps [K, S, S], <label>.taps, <label>.extent
    [K], <label>.depth [K]}``, the table ``receptive_fields`` (per tap: extent with interval, depth, central-patch
    mass), the finding and the figures (per model the maps after the residual connections, per ViT those before,
    and the extents by depth).
    """
    common.check_models(models)
    if max_channels is not None and max_channels < 1:
        raise ValueError(f"max_channels: expected None (all channels) or an int >= 1, got {max_channels!r}")
    if not 0 < mass <= 1:
        raise ValueError(f"mass: expected a fraction in (0, 1], got {mass!r}")
    common.shared_image_size(models)
    images = evaluation.stack_images(data, num_images)
    results = {}
    for label, model in models.items():
        taps = erf_taps(model, num_blocks)
        if progress:
            print(f"ERF of {len(taps)} taps of {label!r} over {len(images)} images", flush=True)
        results[label] = model_receptive_fields(model, taps, images, batch_size=batch_size,
                                                max_channels=max_channels, mass=mass, seed=seed, progress=progress)
    finding = erf_finding(models, results, mass=mass, max_channels=max_channels, num_resamples=num_resamples,
                          seed=seed)
    arrays = {"erf_maps": {name: value for label, result in results.items() for name, value in (
        (f"{label}.maps", result["maps"]), (f"{label}.taps", np.array(result["taps"])),
        (f"{label}.extent", result["extent"]), (f"{label}.depth", result["depth"]))}}
    tables = {"receptive_fields": {
        label: [{"tap": tap, "depth": float(depth), "extent": float(extent), "extent_interval": [low, high],
                 "centre_patch_mass": centre}
                for tap, depth, extent, low, high, centre in zip(result["taps"], result["depth"], result["extent"],
                                                                 result["low"], result["high"],
                                                                 result["centre_patch_mass"])]
        for label, result in results.items()}}
    summary = {"num_images": int(len(images)), "max_channels": max_channels, "num_blocks": num_blocks, "mass": mass,
               "extent": {label: dict(zip(result["taps"], map(int, result["extent"])))
                          for label, result in results.items()}}
    if finding is None:
        summary["findings_skipped"] = "no ViT and ResNet pair among the models"
    figures = [_maps_figure(label, result, common.family(models[label]), before_residual=False)
               for label, result in results.items()]
    figures += [_maps_figure(label, result, "vit", before_residual=True) for label, result in results.items()
                if common.family(models[label]) == "vit"]
    figures.append(_extent_figure(results, mass))
    return SectionResult(experiment="receptive_fields", arrays=arrays, tables=tables,
                         findings=[finding] if finding is not None else [], summary=summary, figures=figures)


def _maps_figure(label, result, family, before_residual):
    chosen = [index for index, tap in enumerate(result["taps"])
              if tap.endswith(BEFORE_RESIDUAL_SUFFIX) == before_residual]

    def draw():
        titles = [f"{result['taps'][i]} ({int(result['extent'][i])}px)" for i in chosen]
        ncols = 2 if family == "vit" and not before_residual else 4
        ncols = max(ncols, -(-len(chosen) // 12))  # at most 12 rows (ViT-L/16: 48 maps after the residuals)
        what = "before the residual connection" if before_residual else "by depth"
        return plotting.image_grid(result["maps"][chosen], titles, ncols=ncols,
                                   title=f"{label}: effective receptive fields {what}")

    if before_residual:
        return FigureSpec(
            file=f"erf_maps_{label}_before_residual.png", paper_figure="C",
            caption=(f"{label}: effective receptive fields of the attention sublayers taken before the residual "
                     "connection (blockNN/sa), by depth; titles give the extent."),
            look_for=("Taken before the residual connection, the attention sublayers' receptive fields depend far "
                      "less on the centre patch than the block outputs after it."), draw=draw)
    return FigureSpec(
        file=f"erf_maps_{label}.png", paper_figure="6",
        caption=(f"{label}: effective receptive fields (mean |gradient| of the centre location with respect to the "
                 "input) of the layers after the residual connections, by depth; titles give the extent."),
        look_for=("ResNet receptive fields are highly local and grow gradually; ViT receptive fields are larger in "
                  "the lower layers, become global midway through the network, and keep a strong dependence on "
                  "the centre patch."), draw=draw)


def _extent_figure(results, mass):
    def draw():
        series = {}
        for label, result in results.items():
            before = np.array([tap.endswith(BEFORE_RESIDUAL_SUFFIX) for tap in result["taps"]])
            for name, mask in ((label, ~before), (f"{label} sa (before residual)", before)):
                if mask.any():
                    series[name] = (result["depth"][mask], result["extent"][mask], result["low"][mask],
                                    result["high"][mask])
        return plotting.line_plot(series, title="Effective receptive field extent by depth",
                                  xlabel="normalised depth", ylabel=f"ERF extent (pixels, {mass:.0%} of the mass)")

    return FigureSpec(
        file="erf_extent.png", paper_figure="",
        caption=f"ERF extent (side of the centred square holding {mass:.0%} of the mass) against normalised depth, "
                "every model with 95% bands over images; ViT attention sublayers before the residual separately.",
        look_for="The ViT's extent starts above the ResNet's in the lowest layers and reaches the whole image midway "
                 "(ours: the statistic of the finding vit_erf_larger_in_lower_layers).", draw=draw)
