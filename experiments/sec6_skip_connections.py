"""Section 6 (Figures 7 and 8): representation propagation through skip connections.

``--models`` (default ``vit resnet mixer vit_noskip_early vit_noskip_mid vit_noskip_late``) is split by role:
ViTs with removed skip connections (``skip_blocks_removed``) are the no-skip models of part (b); every other model
gets norm ratios (part (a)); the first ViT with all its skips (a CLS-token one if any) is the reference of (b).

(a) Norm ratios ``||z|| / ||f(z)||`` of every residual unit (``z`` through the skip connection, ``f(z)`` through
the long branch: self-attention / MLP in ViT, token / channel mixing in Mixer, the bottleneck branch of a ResNetV2
unit) over ``--num-examples`` test images. Norms are per example and token; a ratio is the ratio of the mean
norms over the examples (``vitcnn_tf.analysis.skip``). The first CLS-token ViT gives the token x unit heatmap
(token 0 = CLS) and the CLS / spatial-token lines; the other models give one line each.

(b) Skip removal: within-model minibatch CKA heatmaps over the residual stream (``embedding``, every
``blockNN/+sa``, ``blockNN/+mlp``) of the ViTs trained without the two skip connections of block k beside the
reference ViT, their test accuracies (zoo record, full test split; for models without one, the accuracy on the
evaluation subset), and the partition scalar of each: the mean CKA between two layers on the same side of block
k ("within": the mean of the before-side and after-side means of the off-diagonal entries; a side with one layer
has no pairs and is left out) minus the mean CKA between a layer before block k and one after it ("across").
Before = ``embedding`` and blocks < k; after = block k's output (``blockKK/+mlp``) and everything later; the
inside of block k (``blockKK/+sa``) is on neither side.

Outputs in ``--out``:
  norm_ratios.npz          per model ``<label>/ratio``, ``log10_ratio_low``, ``log10_ratio_high`` [U],
                           ``ratio_per_token`` [U, T] (token models), ``ratio_cls`` / ``ratio_spatial`` [U] (CLS
                           ViT), ``units``
  norm_ratio_tokens.png    Figure 7 left: log10 ratio per token (rows, token 0 = CLS) x residual unit (columns)
  norm_ratio_layers.png    Figure 7 right: log10 ratio by normalised depth: ViT CLS token, ViT spatial tokens,
                           ResNet, Mixer (95% bootstrap bands over examples)
  skip_removal_cka.npz     ``<label>/cka`` [L, L] per model and the shared ``layers``
  skip_removal_cka.png     Figure 8: the heatmaps side by side, removed block marked, accuracies in the titles
  summary.json             every number above with its interval, the accuracies, and the findings

Findings (95% intervals; norm ratios: bootstrap over examples, paired across models; CKA: over minibatches):
  vit_skip_branch_dominates            mean log ratio of the ViT minus that of the ResNet, > 0
  cls_spatial_phase_change             mean over first-half units of log(CLS ratio / spatial ratio) minus the
                                       same over second-half units, > 0
  skip_removal_partitions_representation  partition scalar of the no-skip ViT whose removed block is most
                                       central minus that of the reference ViT at the same block, > 0

    python -m experiments.sec6_skip_connections
    python -m experiments.sec6_skip_connections --models vit.keras resnet.keras noskip2.keras --num-examples 256
"""

import os
import re
import sys
import time

import numpy as np
from matplotlib.figure import Figure

from experiments import common
from experiments import sec678_common as shared
from vitcnn_tf import atomic_io, plotting, representations
from vitcnn_tf.analysis import bootstrap, skip
from vitcnn_tf.findings import Finding

DEFAULT_MODELS = ("vit", "resnet", "mixer", "vit_noskip_early", "vit_noskip_mid", "vit_noskip_late")
REMOVAL_LAYERS = r"embedding|block\d+/\+(sa|mlp)"
BEFORE, EXCLUDED, AFTER = -1, 0, 1


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec6_skip_connections")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=1024, default_batch_size=64,
                                default_out=os.path.join("results", "sec6_skip_connections"))
    parser.add_argument("--bootstrap-resamples", type=int, default=1000,
                        help="bootstrap resamples of every interval (default: %(default)s)")
    return parser


# --------------------------------------------------------------------------------------------------------
# (a) norm ratios


def per_example_norms(units, taps, num_prefix_tokens):
    """Token-averaged norms of one batch: ``{"skip", "branch"}`` ``[n, U]`` over all tokens (or positions of a
    feature map), plus ``"skip_cls"``, ``"branch_cls"``, ``"skip_spatial"``, ``"branch_spatial"`` when
    ``num_prefix_tokens > 0`` (token taps ``[n, T, d]`` whose first tokens are CLS).

    ``units``: ``[(skip tap or None, branch tap, sum tap)]``; ``z`` is the skip tap, else ``sum - f(z)``.
    """
    keys = ("skip", "branch") + (("skip_cls", "branch_cls", "skip_spatial", "branch_spatial")
                                 if num_prefix_tokens else ())
    parts = {key: [] for key in keys}
    for skip_tap, branch_tap, sum_tap in units:
        branch = np.asarray(taps[branch_tap], dtype=np.float64)
        if skip_tap is not None:
            z = np.asarray(taps[skip_tap], dtype=np.float64)
        else:
            z = np.asarray(taps[sum_tap], dtype=np.float64) - branch
        for name, value in (("skip", z), ("branch", branch)):
            norms = np.linalg.norm(value.reshape(len(value), -1, value.shape[-1]), axis=-1)  # [n, tokens]
            parts[name].append(norms.mean(axis=1))
            if num_prefix_tokens:
                parts[f"{name}_cls"].append(norms[:, :num_prefix_tokens].mean(axis=1))
                parts[f"{name}_spatial"].append(norms[:, num_prefix_tokens:].mean(axis=1))
    return {key: np.stack(values, axis=1) for key, values in parts.items()}


def log_ratios(skip_norms, branch_norms):
    """``[..., n, U]`` per-example norms -> ``[..., U]`` natural log of the ratio of the mean norms."""
    return np.log(skip_norms.mean(axis=-2) / branch_norms.mean(axis=-2))


def log10_ratios(skip_norms, branch_norms):
    """``log_ratios`` in base 10 (the figures' scale)."""
    return log_ratios(skip_norms, branch_norms) / np.log(10.0)


def mean_log_ratio_difference(skip_a, branch_a, skip_b, branch_b):
    """Mean over units of model a's log ratios minus model b's (``[..., n, U]`` each -> ``[...]``)."""
    return log_ratios(skip_a, branch_a).mean(axis=-1) - log_ratios(skip_b, branch_b).mean(axis=-1)


def phase_change(skip_cls, branch_cls, skip_spatial, branch_spatial, first_half):
    """``D_u = log ratio_cls(u) - log ratio_spatial(u)``; returns mean D over ``first_half`` units minus mean D
    over the others (``[..., n, U]`` arrays, ``first_half`` a ``[U]`` bool mask -> ``[...]``)."""
    gap = log_ratios(skip_cls, branch_cls) - log_ratios(skip_spatial, branch_spatial)
    return gap[..., first_half].mean(axis=-1) - gap[..., ~first_half].mean(axis=-1)


def unit_block(sum_tap):
    """Block index of a residual sum tap (``block03/+sa`` -> 3, ``block2/unit01/+res`` -> 2)."""
    match = re.match(r"block(\d+)/", sum_tap)
    if not match:
        raise ValueError(f"residual unit {sum_tap!r}: expected a tap named blockNN/...")
    return int(match.group(1))


def collect_norm_ratios(models, batches, options):
    """One pass over ``batches`` (image arrays): per model, the ``NormRatioAccumulator`` result and the
    per-example token-averaged norms (``per_example_norms``, concatenated over batches)."""
    states = {}
    for label, model in models.items():
        units = skip.residual_units(model)
        prefix = shared.num_prefix_tokens(model)
        needed = list(dict.fromkeys(name for unit in units for name in unit if name is not None))
        states[label] = dict(units=units, prefix=prefix, needed=needed, per_example=[],
                             accumulator=skip.NormRatioAccumulator(units, prefix))
    bar = shared.progress_bar(len(batches) * len(models), options, unit_name="batch")
    step = 0
    for images in batches:
        for label, model in models.items():
            state = states[label]
            taps = representations.extract(model, images, state["needed"])
            state["accumulator"].update(taps)
            state["per_example"].append(per_example_norms(state["units"], taps, state["prefix"]))
            step += 1
            if bar is not None:
                bar.update(step)
    results = {}
    for label, state in states.items():
        per_example = {key: np.concatenate([part[key] for part in state["per_example"]])
                       for key in state["per_example"][0]}
        results[label] = dict(units=state["units"], ratios=state["accumulator"].result(), per_example=per_example)
    return results


def _bootstrap(statistic, arrays, options):
    """``bootstrap_interval`` (vectorized over resamples), or ``(estimate, nan, nan)`` when the estimate is not
    finite (a unit with a zero branch norm has an infinite ratio)."""
    estimate = np.asarray(statistic(*[array[None] for array in arrays]))[0]
    if not np.all(np.isfinite(estimate)):
        nan = np.full_like(estimate, np.nan)
        return estimate, nan, nan
    return bootstrap.bootstrap_interval(statistic, *arrays, num_resamples=options.bootstrap_resamples,
                                        seed=options.seed, vectorized=True, resamples_per_call=50)


def norm_ratio_analysis(models, batches, options):
    """Norm ratios of ``models``: ``(per-model summary, npz arrays, findings, figures {file: Figure})``."""
    collected = collect_norm_ratios(models, batches, options)
    summary, arrays, series = {}, {}, {}
    for label, entry in collected.items():
        model, per_example = models[label], entry["per_example"]
        sums = [unit[2] for unit in entry["units"]]
        depth = shared.normalized_depth(len(sums))
        value, low, high = _bootstrap(log10_ratios, (per_example["skip"], per_example["branch"]), options)
        ratios = entry["ratios"]
        item = {"family": shared.model_family(model), "units": sums,
                "kinds": [ratios[name]["kind"] for name in sums],
                "ratio": [ratios[name]["ratio"] for name in sums],
                "log10_ratio_low": low, "log10_ratio_high": high,
                "num_examples": int(len(per_example["skip"]))}
        arrays.update({f"{label}/units": np.array(sums), f"{label}/ratio": np.array(item["ratio"]),
                       f"{label}/log10_ratio_low": low, f"{label}/log10_ratio_high": high})
        per_token = [np.atleast_1d(ratios[name]["ratio_per_token"]) for name in sums]
        if len({values.shape for values in per_token}) == 1:  # token models (a ResNet's maps differ per stage)
            arrays[f"{label}/ratio_per_token"] = np.stack(per_token)
        if "skip_cls" in per_example:
            for part in ("cls", "spatial"):
                part_value, part_low, part_high = _bootstrap(
                    log10_ratios, (per_example[f"skip_{part}"], per_example[f"branch_{part}"]), options)
                item[f"ratio_{part}"] = [ratios[name][f"ratio_{part}"] for name in sums]
                item[f"log10_ratio_{part}_low"], item[f"log10_ratio_{part}_high"] = part_low, part_high
                arrays[f"{label}/ratio_{part}"] = np.array(item[f"ratio_{part}"])
                name = f"{label}: {'CLS token' if part == 'cls' else 'spatial tokens'}"
                series[name] = (depth, part_value, part_low, part_high)
        else:
            series[label] = (depth, value, low, high)
        summary[label] = item

    findings, figures = [], {}
    cls_vit = next((label for label, model in models.items() if shared.is_cls_vit(model)), None)
    resnet = next((label for label, model in models.items() if shared.model_family(model) == "resnet"), None)
    if cls_vit is not None and resnet is not None:
        a, b = collected[cls_vit]["per_example"], collected[resnet]["per_example"]
        estimate, low, high = _bootstrap(mean_log_ratio_difference,
                                         (a["skip"], a["branch"], b["skip"], b["branch"]), options)
        findings.append(Finding(
            key="vit_skip_branch_dominates", section="6",
            claim="Skip connections are much more influential in ViT than in ResNet (higher norm ratios "
                  "‖z‖/‖f(z)‖ throughout)",
            quantity=f"mean over residual units of ln(‖z‖/‖f(z)‖) of {cls_vit} minus that of {resnet} "
                     "(ratios of mean norms over examples, all tokens / positions)",
            value=estimate, low=low, high=high, threshold=0.0, direction="greater",
            detail=shared.common_detail(options, models=[cls_vit, resnet],
                                        interval="percentile bootstrap over examples, paired across models",
                                        resamples=options.bootstrap_resamples)))
    if cls_vit is not None:
        model, per_example = models[cls_vit], collected[cls_vit]["per_example"]
        sums = [unit[2] for unit in collected[cls_vit]["units"]]
        first_half = np.array([unit_block(name) < model.config.num_layers / 2 for name in sums])
        if first_half.any() and not first_half.all():
            estimate, low, high = _bootstrap(
                lambda *arrays: phase_change(*arrays, first_half),
                tuple(per_example[key] for key in ("skip_cls", "branch_cls", "skip_spatial", "branch_spatial")),
                options)
            findings.append(Finding(
                key="cls_spatial_phase_change", section="6",
                claim="ViT skip connections propagate the CLS token in the first half of the network (high CLS "
                      "ratio, low spatial ratio) and the spatial tokens in the second half (reversed)",
                quantity=f"{cls_vit}: mean over first-half residual units of ln(ratio_CLS / ratio_spatial) minus "
                         "the same mean over second-half units",
                value=estimate, low=low, high=high, threshold=0.0, direction="greater",
                detail=shared.common_detail(options, model=cls_vit, first_half_units=int(first_half.sum()),
                                            second_half_units=int((~first_half).sum()),
                                            interval="percentile bootstrap over examples",
                                            resamples=options.bootstrap_resamples)))
        per_token = arrays[f"{cls_vit}/ratio_per_token"]  # [U, T]
        with np.errstate(divide="ignore"):
            matrix = np.log10(per_token).T
        rows = ["0 CLS" if i == 0 else (str(i) if i % 8 == 0 else "") for i in range(matrix.shape[0])]
        figures["norm_ratio_tokens.png"] = plotting.heatmap(
            matrix, rows, sums, origin="upper", cmap="viridis", colorbar_label="log10 ||z|| / ||f(z)||",
            title=f"{cls_vit}: norm ratio per token and residual unit", xlabel="residual unit",
            ylabel="token", figsize=(7.0, 6.5))
    if series:
        figures["norm_ratio_layers.png"] = plotting.line_plot(
            series, title="Skip / long-branch norm ratio by depth (95% bootstrap band)",
            xlabel="normalised depth of the residual unit", ylabel="log10 ||z|| / ||f(z)||", hlines=(0.0,),
            figsize=(7.0, 4.5))
    return summary, arrays, findings, figures


# --------------------------------------------------------------------------------------------------------
# (b) skip removal


def removed_block(model, label):
    """The block whose skips the ViT ``model`` lacks (exactly one is expected)."""
    blocks = tuple(model.config.skip_blocks_removed)
    if len(blocks) != 1:
        raise ValueError(f"--models: {label!r} must have the skips of exactly one block removed "
                         f"(skip_blocks_removed), got {blocks}")
    return int(blocks[0])


def layer_sides(names, block):
    """``[L]`` ints: ``BEFORE`` (``embedding``, blocks < ``block``), ``AFTER`` (``blockKK/+mlp`` of ``block`` and
    all later layers) or ``EXCLUDED`` (the other layers of ``block``)."""
    sides = []
    for name in names:
        match = re.match(r"block(\d+)/(.*)", name)
        if match is None:
            sides.append(BEFORE if name == "embedding" else AFTER)
        elif int(match.group(1)) != block:
            sides.append(BEFORE if int(match.group(1)) < block else AFTER)
        else:
            sides.append(AFTER if match.group(2) == "+mlp" else EXCLUDED)
    return np.array(sides)


def partition_scalar(cka, names, block):
    """Within-side minus across-block mean CKA of a ``[L, L]`` matrix over layers ``names`` (module docstring):
    ``{"within_before", "within_after", "within", "across", "partition"}`` (NaN for an undefined side)."""
    cka = np.asarray(cka, dtype=np.float64)
    sides = layer_sides(names, block)
    if cka.shape != (len(names), len(names)):
        raise ValueError(f"cka: expected a [{len(names)}, {len(names)}] matrix for layers {names}, got {cka.shape}")
    before, after = np.flatnonzero(sides == BEFORE), np.flatnonzero(sides == AFTER)
    if not len(before) or not len(after):
        raise ValueError(f"block {block}: the layers {names} need at least one layer on each side of the block")

    def off_diagonal_mean(indices):
        if len(indices) < 2:
            return np.nan
        block_matrix = cka[np.ix_(indices, indices)]
        return float(block_matrix[~np.eye(len(indices), dtype=bool)].mean())

    within_before, within_after = off_diagonal_mean(before), off_diagonal_mean(after)
    defined = [value for value in (within_before, within_after) if np.isfinite(value)]
    within = float(np.mean(defined)) if defined else np.nan
    across = float(cka[np.ix_(before, after)].mean())
    return {"within_before": within_before, "within_after": within_after, "within": within, "across": across,
            "partition": within - across}


def removal_figure(matrices, names, blocks, titles):
    """Figure 8: the ``[L, L]`` CKA matrices side by side, with the removed block's layers outlined."""
    figure = Figure(figsize=(3.6 * len(matrices) + 0.8, 4.2), layout="constrained")
    panels = figure.subplots(1, len(matrices), squeeze=False)[0]
    groups = plotting.layer_groups(names)
    ticks = [start for _, start, _ in groups]
    labels = [group.replace("block", "b") for group, _, _ in groups]
    image = None
    for axes, (label, matrix) in zip(panels, matrices.items()):
        image = axes.imshow(matrix, origin="lower", cmap=plotting.DEFAULT_CMAP, vmin=0.0, vmax=1.0,
                            interpolation="nearest")
        axes.set_xticks(ticks, labels, rotation=90, fontsize=7)
        axes.set_yticks(ticks, labels, fontsize=7)
        if blocks.get(label) is not None:
            inside = np.flatnonzero(layer_sides(names, blocks[label]) == EXCLUDED)
            for position in (inside.min() - 0.5, inside.max() + 0.5):
                axes.axvline(position, color="cyan", linewidth=0.8)
                axes.axhline(position, color="cyan", linewidth=0.8)
        axes.set_title(titles[label], fontsize=8)
    figure.colorbar(image, ax=list(panels), shrink=0.8, label="CKA")
    figure.suptitle("Within-model CKA of the residual stream; cyan: the block without skip connections")
    return figure


def skip_removal_analysis(reference_label, reference, noskip, accuracies, images, options):
    """CKA heatmaps and partition scalars: ``(summary, npz arrays, findings, figures)``."""
    models = {reference_label: reference, **noskip}
    blocks = {reference_label: None, **{label: removed_block(model, label) for label, model in noskip.items()}}
    matrices, terms, names = {}, {}, None
    dataset, strategy = shared.cka_dataset(images, options), common.distribution_strategy(options)
    for label, model in models.items():
        metric, layer_names, _, batch_terms = representations.accumulate_cka(
            model, dataset, REMOVAL_LAYERS, progress=options.progress, return_batch_terms=True, strategy=strategy)
        if names is not None and layer_names != names:
            raise ValueError(f"{label!r} has layers {layer_names}, {reference_label!r} has {names}: the no-skip "
                             "models must have the reference ViT's depth")
        names, matrices[label], terms[label] = layer_names, metric.result().numpy(), batch_terms

    summary = {"layers": names, "models": {}}
    findings, titles = [], {}
    num_layers = reference.config.num_layers
    for label in models:
        entry = {"removed_block": blocks[label], **accuracies[label]}
        titles[label] = f"{label}" + (f" (no skip: block {blocks[label]})" if blocks[label] is not None else "")
        if accuracies[label].get("test_accuracy") is not None:
            titles[label] += f"\ntest accuracy {accuracies[label]['test_accuracy']:.3f}"
        else:
            titles[label] += f"\neval-subset accuracy {accuracies[label]['eval_subset_accuracy']:.3f}"
        if blocks[label] is not None:
            block = blocks[label]
            partition = partition_scalar(matrices[label], names, block)
            reference_partition = partition_scalar(matrices[reference_label], names, block)
            own = bootstrap.cka_bootstrap_interval(
                terms[label], lambda m, b=block: partition_scalar(m, names, b)["partition"],
                num_resamples=options.bootstrap_resamples, seed=options.seed)
            difference = bootstrap.cka_bootstrap_interval(
                {"noskip": terms[label], "reference": terms[reference_label]},
                lambda m, b=block: (partition_scalar(m["noskip"], names, b)["partition"]
                                    - partition_scalar(m["reference"], names, b)["partition"]),
                num_resamples=options.bootstrap_resamples, seed=options.seed)
            entry.update(partition=partition, partition_interval=shared.interval(*own),
                         reference_partition=reference_partition,
                         partition_minus_reference=shared.interval(*difference))
            titles[label] += f", partition {partition['partition']:.2f} (ref. {reference_partition['partition']:.2f})"
        summary["models"][label] = entry

    central = min(noskip, key=lambda label: abs(blocks[label] - (num_layers - 1) / 2), default=None)
    if central is not None:
        difference = summary["models"][central]["partition_minus_reference"]
        findings.append(Finding(
            key="skip_removal_partitions_representation", section="6",
            claim="Removing the skip connections of a (middle) block partitions the ViT representation: layers "
                  "before and after it have little similarity",
            quantity=f"partition scalar (mean within-side minus mean across-block CKA, residual stream) of {central} "
                     f"minus that of {reference_label} at the same block {blocks[central]}",
            value=difference["value"], low=difference["low"], high=difference["high"], threshold=0.0,
            direction="greater",
            detail=shared.common_detail(options, models=[central, reference_label], layers=names,
                                        interval="percentile bootstrap over minibatches, paired across models",
                                        resamples=options.bootstrap_resamples,
                                        accuracy=accuracies[central], reference_accuracy=accuracies[reference_label])))
    arrays = {"layers": np.array(names), **{f"{label}/cka": matrix for label, matrix in matrices.items()}}
    figures = {"skip_removal_cka.png": removal_figure(matrices, names, blocks, titles)}
    return summary, arrays, findings, figures


# --------------------------------------------------------------------------------------------------------


def split_roles(models):
    """``(norm-ratio models, no-skip models, reference label or None)`` of ``{label: model}``: ViTs with removed
    skips are the no-skip models, every other model gets norm ratios, and the first ViT with all its skips (a CLS
    ViT if there is one) is the reference of the no-skip models."""
    noskip = {label: model for label, model in models.items()
              if shared.model_family(model) == "vit" and tuple(model.config.skip_blocks_removed)}
    normal = {label: model for label, model in models.items() if label not in noskip}
    vits = [label for label, model in normal.items() if shared.model_family(model) == "vit"]
    reference = next((label for label in vits if shared.is_cls_vit(normal[label])), vits[0] if vits else None)
    return normal, noskip, reference


@shared.single_threaded_blas
def run(options):
    """Both parts; writes the files listed in the module docstring and returns the summary (with findings)."""
    started = time.perf_counter()
    os.makedirs(options.out, exist_ok=True)
    models = shared.load_models(options.models, options)
    spec_of = dict(zip(models, options.models))
    norm_models, noskip_models, reference = split_roles(models)
    sizes = {common.image_size(model) for model in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"--models must share one input size, got {sizes}")
    images, labels = shared.load_arrays(options, sizes.pop())
    batches = [images[start:start + options.batch_size] for start in range(0, len(images), options.batch_size)]

    summary = {"module": "sec6_skip_connections", "num_examples": int(len(images))}
    arrays = {}
    if norm_models:
        summary["norm_ratios"], arrays["norm_ratios.npz"], findings, figures = norm_ratio_analysis(
            norm_models, batches, options)
    else:
        findings, figures = [], {}
    if noskip_models and reference is not None:
        accuracies = {label: shared.accuracies(spec_of[label], models[label], images, labels, options)
                      for label in (reference, *noskip_models)}
        summary["skip_removal"], arrays["skip_removal_cka.npz"], removal_findings, removal_figures = \
            skip_removal_analysis(reference, models[reference], noskip_models, accuracies, images, options)
        findings += removal_findings
        figures.update(removal_figures)
    else:
        summary["skip_removal"] = None
        summary["skip_removal_note"] = ("not run: --models needs a ViT with removed skip connections and one with all "
                                        "of them")

    for name, values in arrays.items():
        atomic_io.save_npz(os.path.join(options.out, name), **values)
    for name, figure in figures.items():
        atomic_io.save_figure(figure, os.path.join(options.out, name), dpi=120)
    summary.update(findings=[finding.to_dict() for finding in findings],
                   files=sorted([*arrays, *figures, common.SUMMARY_FILE]), seconds=time.perf_counter() - started)
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
