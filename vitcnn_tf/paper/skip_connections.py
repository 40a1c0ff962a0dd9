"""Section 6 (Figures 7 and 8): representation propagation through skip connections.

Roles (:func:`run`): ``vit``, a ViT with all its skip connections (a CLS-token ViT for the CLS / spatial split
and both findings of part (a)); optionally ``resnet`` and ``mixer``; optionally ``no_skip_models``, ViTs of the
``vit``'s depth trained without the two skip connections of one block (``config.skip_blocks_removed``).

(a) Norm ratios ``||z|| / ||f(z)||`` of every residual unit (``z`` through the skip connection, ``f(z)`` through
the long branch: self-attention / MLP in ViT, token / channel mixing in Mixer, the bottleneck branch of a ResNetV2
unit) over the evaluation images. Norms are per example and token; a ratio is the ratio of the mean norms over
the examples (``vitcnn_tf.analysis.skip``). The CLS ViT gives the token x unit heatmap (token 0 = CLS) and the
CLS / spatial-token lines; the other models give one line each.

(b) Skip removal: within-model minibatch CKA heatmaps over the residual stream (``embedding``, every
``blockNN/+sa``, ``blockNN/+mlp``) of the no-skip ViTs beside ``vit``, their accuracies, and the partition
scalar of each: the mean CKA between two layers on the same side of block k ("within": the mean of the
before-side and after-side means of the off-diagonal entries; a side with one layer has no pairs and is left
out) minus the mean CKA between a layer before block k and one after it ("across"). Before = ``embedding`` and
blocks < k; after = block k's output (``blockKK/+mlp``) and everything later; the inside of block k
(``blockKK/+sa``) is on neither side. Models trained without skip connections have no public checkpoints, so
this part runs on the CPU zoo only.

Arrays: ``norm_ratios`` (per model ``<label>/units``, ``ratio``, ``log10_ratio_low``, ``log10_ratio_high`` [U],
``ratio_per_token`` [U, T] for token models, ``ratio_cls`` / ``ratio_spatial`` [U] for the CLS ViT) and
``skip_removal_cka`` (``<label>/cka`` [L, L] per model and the shared ``layers``).

Findings (95% intervals; norm ratios: bootstrap over examples, paired across models; CKA: over minibatches;
thresholds from ``vitcnn_tf.claims``):
  vit_skip_branch_dominates            mean ln ratio of the ViT minus that of the ResNet, > ln 2 (the ViT's
                                       geometric-mean ratio more than twice the ResNet's)
  cls_spatial_phase_change             mean over first-half units of ln(CLS ratio / spatial ratio) minus the
                                       same over second-half units, > ln 2
  skip_removal_partitions_representation  partition scalar of the no-skip ViT whose removed block is most
                                       central minus that of the reference ViT at the same block, > 0.1

The CKA finding ``skip_removal_partitions_representation`` also reports (``measure_checks``, on
``check_examples`` evenly spaced images, default 256) the same difference of partition scalars under orthogonal
Procrustes similarity, and the permutation null (``null_permutations`` shuffles, default 100) of the CKA it
compares: the no-skip ViT's mean within-side CKA, with the later layer of each pair shuffled.
"""

import re

import numpy as np
from matplotlib.figure import Figure

from vitcnn_tf import claims, plotting, representations
from vitcnn_tf.analysis import bootstrap, skip, tokens
from vitcnn_tf.findings import Finding
from vitcnn_tf.models import model_family
from vitcnn_tf.paper import common, evaluation, measure_checks
from vitcnn_tf.paper.result import FigureSpec, SectionResult

REMOVAL_LAYERS = r"embedding|block\d+/\+(sa|mlp)"
BEFORE, EXCLUDED, AFTER = -1, 0, 1
NO_SKIP_REASON = ("no no-skip models given: models trained without skip connections have no public checkpoints; "
                  "CPU preset only")
NO_CLS_VIT_REASON = "the ViT has no CLS token: no CLS / spatial split and no token heatmap"


# --------------------------------------------------------------------------------------------------------
# (a) norm ratios: statistics


def per_example_norms(units, token_norms, num_prefix_tokens):
    """Token-averaged norms of one batch: ``{"skip", "branch"}`` ``[n, U]`` over all tokens (or positions of a
    feature map), plus ``"skip_cls"``, ``"branch_cls"``, ``"skip_spatial"``, ``"branch_spatial"`` when
    ``num_prefix_tokens > 0`` (token taps ``[n, T, d]`` whose first tokens are CLS).

    ``units``: ``[(skip tap or None, branch tap, sum tap)]``; ``token_norms``: ``{sum tap: (norms of z, norms of
    f(z)), each [n, tokens]}`` (``skip.NormRatioAccumulator.update``).
    """
    keys = ("skip", "branch") + (("skip_cls", "branch_cls", "skip_spatial", "branch_spatial")
                                 if num_prefix_tokens else ())
    parts = {key: [] for key in keys}
    for _, _, sum_tap in units:
        for name, norms in zip(("skip", "branch"), token_norms[sum_tap]):
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


def collect_norm_ratios(models, data, progress=False):
    """One pass over the image batches of ``data`` (``(images [b, S, S, 3], labels [b])``): per model of
    ``{label: model}``, ``{"units", "ratios": NormRatioAccumulator result, "per_example": per_example_norms
    concatenated over batches}``; the number of examples; the size of the first batch."""
    states = {}
    for label, model in models.items():
        units = skip.residual_units(model)
        needed = list(dict.fromkeys(name for unit in units for name in unit if name is not None))
        states[label] = dict(units=units, prefix=tokens.infer_num_prefix_tokens(model), needed=needed,
                             per_example=[], accumulator=skip.NormRatioAccumulator(
                                 units, tokens.infer_num_prefix_tokens(model)))
    bar = evaluation.progress_bar(None, progress, unit_name="batch")
    num_examples, batch_size = 0, None
    for step, (images, _) in enumerate(data, start=1):
        images = np.asarray(images, dtype=np.float32)
        num_examples += len(images)
        batch_size = batch_size or len(images)
        for label, model in models.items():
            state = states[label]
            taps = representations.extract(model, images, state["needed"])
            token_norms = state["accumulator"].update(taps)
            state["per_example"].append(per_example_norms(state["units"], token_norms, state["prefix"]))
        if bar is not None:
            bar.update(step)
    if not num_examples:
        raise ValueError("data: the dataset is empty")
    results = {}
    for label, state in states.items():
        per_example = {key: np.concatenate([part[key] for part in state["per_example"]])
                       for key in state["per_example"][0]}
        results[label] = dict(units=state["units"], ratios=state["accumulator"].result(), per_example=per_example)
    return results, num_examples, batch_size


def _bootstrap(statistic, arrays, resamples, seed):
    """``bootstrap_interval`` (vectorized over resamples), or ``(estimate, nan, nan)`` when the estimate is not
    finite (a unit with a zero branch norm has an infinite ratio)."""
    estimate = np.asarray(statistic(*[array[None] for array in arrays]))[0]
    if not np.all(np.isfinite(estimate)):
        nan = np.full_like(estimate, np.nan)
        return estimate, nan, nan
    return bootstrap.bootstrap_interval(statistic, *arrays, num_resamples=resamples, seed=seed, vectorized=True,
                                        resamples_per_call=50)


# --------------------------------------------------------------------------------------------------------
# (a) norm ratios: analysis and figures


def token_ratio_figure(per_token, units, label, num_prefix_tokens):
    """Figure 7 left: ``log10`` of ``per_token [U, T]`` as a token (rows, top: token 0) x residual unit heatmap,
    legible for 197 tokens and 12-32 blocks: rows ticked at the prefix tokens and about 8 spaced tokens, columns
    at the first unit of about 12 spaced blocks."""
    with np.errstate(divide="ignore"):
        matrix = np.log10(np.asarray(per_token, dtype=np.float64)).T  # [T, U]
    num_tokens, num_units = matrix.shape
    figure = Figure(figsize=(7.5, 6.5), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, origin="upper", cmap="viridis", aspect="auto", interpolation="nearest")
    step = max(1, int(np.ceil((num_tokens - num_prefix_tokens) / 8)))
    rows = list(range(num_prefix_tokens)) + list(range(max(step, num_prefix_tokens), num_tokens, step))
    axes.set_yticks(rows, ["CLS" if row < num_prefix_tokens else str(row) for row in rows], fontsize=7)
    starts = [index for index, name in enumerate(units)
              if index == 0 or unit_block(name) != unit_block(units[index - 1])]
    block_step = max(1, int(np.ceil(len(starts) / 12)))
    shown = starts[::block_step]
    axes.set_xticks(shown, [f"b{unit_block(units[index])}" for index in shown], fontsize=7)
    for index in starts[1:]:
        axes.axvline(index - 0.5, color="white", linewidth=0.3, alpha=0.6)
    if num_prefix_tokens:
        axes.axhline(num_prefix_tokens - 0.5, color="red", linewidth=0.8)
    axes.set_xlabel(f"residual unit ({num_units} units, ticks at the block's first unit)")
    axes.set_ylabel(f"token ({num_tokens} tokens)")
    axes.set_title(f"{label}: norm ratio per token and residual unit")
    figure.colorbar(image, ax=axes, shrink=0.85, label="log10 ||z|| / ||f(z)||")
    return figure


def norm_ratio_analysis(models, data, *, resamples, seed, progress, context):
    """Norm ratios of ``{label: model}`` over ``data``: ``(summary, arrays, findings, figures [FigureSpec] of
    Figure 7, number of examples)``; ``context`` is recorded in the findings' detail."""
    collected, num_examples, batch_size = collect_norm_ratios(models, data, progress)
    summary, arrays, series = {}, {}, {}
    for label, entry in collected.items():
        per_example = entry["per_example"]
        sums = [unit[2] for unit in entry["units"]]
        depth = common.normalised_depths(len(sums))
        value, low, high = _bootstrap(log10_ratios, (per_example["skip"], per_example["branch"]), resamples, seed)
        ratios = entry["ratios"]
        item = {"family": model_family(models[label]), "units": sums,
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
                    log10_ratios, (per_example[f"skip_{part}"], per_example[f"branch_{part}"]), resamples, seed)
                item[f"ratio_{part}"] = [ratios[name][f"ratio_{part}"] for name in sums]
                item[f"log10_ratio_{part}_low"], item[f"log10_ratio_{part}_high"] = part_low, part_high
                arrays[f"{label}/ratio_{part}"] = np.array(item[f"ratio_{part}"])
                name = f"{label}: {'CLS token' if part == 'cls' else 'spatial tokens'}"
                series[name] = (depth, part_value, part_low, part_high)
        else:
            series[label] = (depth, value, low, high)
        summary[label] = item

    findings, figures = [], []
    cls_vit = next((label for label, model in models.items() if common.is_cls_vit(model)), None)
    resnet = next((label for label, model in models.items() if model_family(model) == "resnet"), None)
    sizes = dict(num_examples=num_examples, batch_size=batch_size, seed=seed)
    if cls_vit is not None and resnet is not None:
        a, b = collected[cls_vit]["per_example"], collected[resnet]["per_example"]
        estimate, low, high = _bootstrap(mean_log_ratio_difference,
                                         (a["skip"], a["branch"], b["skip"], b["branch"]), resamples, seed)
        threshold, direction = claims.threshold("vit_skip_branch_dominates")
        findings.append(Finding(
            key="vit_skip_branch_dominates", section="6",
            claim="Skip connections are much more influential in ViT than in ResNet (higher norm ratios "
                  "‖z‖/‖f(z)‖ throughout)",
            quantity=f"mean over residual units of ln(‖z‖/‖f(z)‖) of {cls_vit} minus that of {resnet} "
                     "(ratios of mean norms over examples, all tokens / positions)",
            value=estimate, low=low, high=high, threshold=threshold, direction=direction,
            detail=evaluation.finding_detail(context, **sizes, models=[cls_vit, resnet],
                                             interval="percentile bootstrap over examples, paired across models",
                                             resamples=resamples)))
    if cls_vit is not None:
        model, per_example = models[cls_vit], collected[cls_vit]["per_example"]
        sums = [unit[2] for unit in collected[cls_vit]["units"]]
        first_half = np.array([unit_block(name) < model.config.num_layers / 2 for name in sums])
        if first_half.any() and not first_half.all():
            estimate, low, high = _bootstrap(
                lambda *arrays: phase_change(*arrays, first_half),
                tuple(per_example[key] for key in ("skip_cls", "branch_cls", "skip_spatial", "branch_spatial")),
                resamples, seed)
            threshold, direction = claims.threshold("cls_spatial_phase_change")
            findings.append(Finding(
                key="cls_spatial_phase_change", section="6",
                claim="ViT skip connections propagate the CLS token in the first half of the network (high CLS "
                      "ratio, low spatial ratio) and the spatial tokens in the second half (reversed)",
                quantity=f"{cls_vit}: mean over first-half residual units of ln(ratio_CLS / ratio_spatial) minus "
                         "the same mean over second-half units",
                value=estimate, low=low, high=high, threshold=threshold, direction=direction,
                detail=evaluation.finding_detail(context, **sizes, model=cls_vit,
                                                 first_half_units=int(first_half.sum()),
                                                 second_half_units=int((~first_half).sum()),
                                                 interval="percentile bootstrap over examples",
                                                 resamples=resamples)))
        per_token, prefix = arrays[f"{cls_vit}/ratio_per_token"], tokens.infer_num_prefix_tokens(model)
        figures.append(FigureSpec(
            file="norm_ratio_tokens.png", paper_figure="7",
            caption=f"Figure 7 (left): log10 of the norm ratio ||z|| / ||f(z)|| of {cls_vit} per token (rows, "
                    "token 0 = CLS) and residual unit (columns, attention and MLP of every block).",
            look_for="The CLS token (top row) has a high ratio (the skip dominates) in the early blocks and a low "
                     "one later, while the spatial tokens show the reverse: a phase change around the middle.",
            draw=lambda: token_ratio_figure(per_token, sums, cls_vit, prefix)))
    figures.append(FigureSpec(
        file="norm_ratio_layers.png", paper_figure="7",
        caption="Figure 7 (right): log10 norm ratio ||z|| / ||f(z)|| of every residual unit by normalised depth: "
                "the ViT's CLS token and spatial tokens, the ResNet and the Mixer (95% bootstrap bands over "
                "examples).",
        look_for="The ViT's ratios lie far above the ResNet's throughout: skip connections are much more "
                 "influential in ViT.",
        draw=lambda: plotting.line_plot(
            series, title="Skip / long-branch norm ratio by depth (95% bootstrap band)",
            xlabel="normalised depth of the residual unit", ylabel="log10 ||z|| / ||f(z)||", hlines=(0.0,),
            figsize=(7.0, 4.5))))
    return summary, arrays, findings, figures, num_examples


# --------------------------------------------------------------------------------------------------------
# (b) skip removal


def removed_block(model, label):
    """The block whose skips the ViT ``model`` lacks (exactly one is expected)."""
    blocks = tuple(model.config.skip_blocks_removed)
    if len(blocks) != 1:
        raise ValueError(f"no_skip_models: {label!r} must have the skips of exactly one block removed "
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
    step = max(1, int(np.ceil(len(groups) / 12)))
    ticks = [start for _, start, _ in groups][::step]
    labels = [group.replace("block", "b") for group, _, _ in groups][::step]
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


def removal_checks(models, central, reference_label, names, block, images, batch_size, *, num_permutations, seed):
    """``{"second_measure", "null"}`` of ``skip_removal_partitions_representation`` on ``images [m, ...]`` (whole
    minibatches of ``batch_size``): the partition difference under Procrustes similarity, and the null of the
    ``central`` no-skip ViT's within-side mean CKA over the residual stream ``names``."""
    factors = {label: measure_checks.tap_factors(models[label], images, names, batch_size)
               for label in (central, reference_label)}
    procrustes = {label: measure_checks.procrustes_pairs([found[name] for name in names],
                                                         [found[name] for name in names])
                  for label, found in factors.items()}
    difference = (partition_scalar(procrustes[central], names, block)["partition"]
                  - partition_scalar(procrustes[reference_label], names, block)["partition"])
    grams = measure_checks.grams([factors[central][name] for name in names])

    cka = measure_checks.minibatch_cka(grams, grams, batch_size)

    def within(order):
        return partition_scalar(cka(order), names, block)["within"]

    return {"second_measure": measure_checks.second_measure(difference, len(images)),
            "null": measure_checks.null_check(
                within, len(images), f"{central}: mean CKA between layers on the same side of block {block} "
                "(within), one layer of each pair shuffled", measure_checks.minibatch_estimator(batch_size),
                num_permutations, seed)}


def skip_removal_analysis(reference_label, reference, noskip, accuracies, images, batch_size, *, resamples, seed,
                          progress, strategy, context, check_examples=measure_checks.DEFAULT_CHECK_EXAMPLES,
                          null_permutations=measure_checks.DEFAULT_NULL_PERMUTATIONS):
    """CKA heatmaps and partition scalars: ``(summary, arrays, findings, figures)``."""
    models = {reference_label: reference, **noskip}
    blocks = {reference_label: None, **{label: removed_block(model, label) for label, model in noskip.items()}}
    matrices, terms, names = {}, {}, None
    dataset = evaluation.image_dataset(images, batch_size)
    for label, model in models.items():
        metric, layer_names, _, batch_terms = representations.accumulate_cka(
            model, dataset, REMOVAL_LAYERS, progress=progress, return_batch_terms=True, strategy=strategy)
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
                num_resamples=resamples, seed=seed)
            difference = bootstrap.cka_bootstrap_interval(
                {"noskip": terms[label], "reference": terms[reference_label]},
                lambda m, b=block: (partition_scalar(m["noskip"], names, b)["partition"]
                                    - partition_scalar(m["reference"], names, b)["partition"]),
                num_resamples=resamples, seed=seed)
            entry.update(partition=partition, partition_interval=evaluation.interval(*own),
                         reference_partition=reference_partition,
                         partition_minus_reference=evaluation.interval(*difference))
            titles[label] += f", partition {partition['partition']:.2f} (ref. {reference_partition['partition']:.2f})"
        summary["models"][label] = entry

    central = min(noskip, key=lambda label: abs(blocks[label] - (num_layers - 1) / 2))
    difference = summary["models"][central]["partition_minus_reference"]
    checks = measure_checks.NO_CHECKS
    if check_examples:
        checked = images[measure_checks.check_indices(len(images), batch_size, check_examples)]
        checks = removal_checks(models, central, reference_label, names, blocks[central], checked, batch_size,
                                num_permutations=null_permutations, seed=seed)
    threshold, direction = claims.threshold("skip_removal_partitions_representation")
    findings.append(Finding(
        key="skip_removal_partitions_representation", section="6",
        claim="Removing the skip connections of a (middle) block partitions the ViT representation: layers "
              "before and after it have little similarity",
        quantity=f"partition scalar (mean within-side minus mean across-block CKA, residual stream) of {central} "
                 f"minus that of {reference_label} at the same block {blocks[central]}",
        value=difference["value"], low=difference["low"], high=difference["high"], threshold=threshold,
        direction=direction,
        detail=evaluation.finding_detail(context, len(images), batch_size, seed, models=[central, reference_label],
                                         layers=names,
                                         interval="percentile bootstrap over minibatches, paired across models",
                                         resamples=resamples, accuracy=accuracies[central],
                                         reference_accuracy=accuracies[reference_label]),
        **checks))
    arrays = {"layers": np.array(names), **{f"{label}/cka": matrix for label, matrix in matrices.items()}}
    figures = [FigureSpec(
        file="skip_removal_cka.png", paper_figure="8",
        caption="Figure 8: within-model CKA heatmaps of the residual stream of ViTs trained without the skip "
                "connections of one block (cyan lines), beside the ViT with all of them; accuracies and partition "
                "scalars in the titles.",
        look_for="Removing the skip connections of a middle block partitions the representation: layers before "
                 "and after the block have little similarity, and accuracy drops.",
        draw=lambda: removal_figure(matrices, names, blocks, titles))]
    return summary, arrays, findings, figures


# --------------------------------------------------------------------------------------------------------


@evaluation.single_threaded_blas
def run(vit, resnet=None, mixer=None, no_skip_models=None, *, data, known_accuracies=None,
        bootstrap_resamples=1000, seed=0, progress=False, strategy=None, context=None,
        check_examples=measure_checks.DEFAULT_CHECK_EXAMPLES,
        null_permutations=measure_checks.DEFAULT_NULL_PERMUTATIONS):
    """Section 6 on the given models (see the module docstring for the roles and statistics).

    Args:
      vit: a ViT with all its skip connections, a ``keras.Model`` (labelled by its ``name``) or a ``(label,
        model)`` pair; with a CLS token for the CLS / spatial split and the token heatmap.
      resnet, mixer: optional ResNetV2 / Mixer (model or ``(label, model)``): one norm-ratio line each; the ResNet
        is the comparison of ``vit_skip_branch_dominates``.
      no_skip_models: optional ``{label: ViT}`` (or a sequence of models / pairs) without the skips of one block
        each, of ``vit``'s depth. Without them Figure 8 and its finding are skipped (no public checkpoints).
      data: ``tf.data`` dataset of ``(images [b, S, S, 3], labels [b])`` batches, in a fixed order.
      known_accuracies: ``{label: accuracy}`` of models with a known test accuracy (e.g. a training record), shown
        for Figure 8; other models there get their accuracy on ``data``.
      bootstrap_resamples, seed: the bootstrap of every interval.
      progress: show progress bars.
      strategy: optional ``tf.distribute.Strategy`` for the CKA accumulation of Figure 8.
      context: optional JSON-able dict recorded in every finding's detail (e.g. ``{"dataset": "imagenet2012"}``).
      check_examples, null_permutations: the checks of the skip-removal finding (module docstring;
        ``check_examples=0`` skips them).

    Returns a :class:`SectionResult` with array groups ``norm_ratios`` (and ``skip_removal_cka``), Figures 7 (and 8)
    and the findings; ``summary["skipped"]`` names each skipped figure with the reason.
    """
    vit_label, vit_model = common.labeled(vit, "vit")
    common.require_family(vit_model, vit_label, "vit", "vit")
    if tuple(vit_model.config.skip_blocks_removed):
        raise ValueError(f"vit: {vit_label!r} lacks skip connections (skip_blocks_removed="
                         f"{tuple(vit_model.config.skip_blocks_removed)}); pass it in no_skip_models")
    norm_models = {vit_label: vit_model}
    for role, value, family in (("resnet", resnet, "resnet"), ("mixer", mixer, "mixer")):
        if value is not None:
            label, model = common.labeled(value, role)
            common.require_family(model, label, role, family)
            norm_models = common.unique_labels(norm_models, {label: model})
    noskip = common.labeled_group(no_skip_models, "no_skip_models")
    for label, model in noskip.items():
        common.require_family(model, label, "no_skip_models", "vit")
    common.unique_labels(norm_models, noskip)
    common.shared_image_size({**norm_models, **noskip})

    summary, arrays, skipped = {}, {}, []
    summary["norm_ratios"], arrays["norm_ratios"], findings, figures, num_examples = norm_ratio_analysis(
        norm_models, data, resamples=bootstrap_resamples, seed=seed, progress=progress, context=context)
    summary["num_examples"] = num_examples
    if not common.is_cls_vit(vit_model):
        skipped.append({"paper_figure": "7", "file": "norm_ratio_tokens.png", "reason": NO_CLS_VIT_REASON})
    if noskip:
        images, labels, batch_size = evaluation.dataset_arrays(data)
        known = known_accuracies or {}
        accuracies = {label: evaluation.accuracies(model, images, labels, known.get(label))
                      for label, model in {vit_label: vit_model, **noskip}.items()}
        summary["skip_removal"], arrays["skip_removal_cka"], removal_findings, removal_figures = \
            skip_removal_analysis(vit_label, vit_model, noskip, accuracies, images, batch_size,
                                  resamples=bootstrap_resamples, seed=seed, progress=progress, strategy=strategy,
                                  context=context, check_examples=check_examples,
                                  null_permutations=null_permutations)
        findings += removal_findings
        figures += removal_figures
    else:
        summary["skip_removal"] = None
        skipped.append({"paper_figure": "8", "file": "skip_removal_cka.png", "reason": NO_SKIP_REASON})
    summary["skipped"] = skipped
    return SectionResult(experiment="skip_connections", arrays=arrays, findings=findings, summary=summary,
                         figures=figures)
