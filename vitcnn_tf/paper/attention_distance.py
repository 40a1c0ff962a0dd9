"""Section 5, Figures 3 and 4: mean attention distance of every head in every block, with full and little data.

For each ViT, every block's attention probabilities (``blockNN/attn``) are streamed over the evaluation batches;
each head's distance is the attention-weighted pixel distance between query and key patches (CLS dropped,
renormalised over the patches), averaged over queries and examples (``analysis.attention``). The spread of a block
is ``max - min`` of its heads' mean distances. 95% intervals bootstrap the examples (paired across models: the same
images are resampled for every model).

Models of different depths and head counts (ViT-B/16 with ViT-L/16) are measured each on its own blocks; the
figures then place every model's blocks on a normalised depth (0 = first block, 1 = last) and the comparisons
between a little-data ViT and its twin use each model's own lowest blocks (``common.extreme_blocks``).

Attention entropy (ours, the usual companion of the distance): each head's mean entropy (nats) of its attention
over the patch keys (``analysis.attention.AttentionEntropy``), from the same maps in the same pass, with 95%
intervals over the examples; a head attending uniformly to all ``P`` patches has entropy ``log P``.

Memory: one minibatch's attention maps of every block at once, ``b * L * H * T^2`` float32: 2.4 GB for ViT-L/16 at
224 px (T = 197, 24 blocks, 16 heads) and minibatch 32; use minibatches of 32 for the paper's models.

Findings, with ``k = max(1, L // 3)`` lowest / highest blocks of each model (2 of 6, 4 of 12, 8 of 24) and every
head's distance as a ratio ``r`` of its model's uniform-attention distance (a local head: ``r <
LOCAL_HEAD_RATIO = 0.5``; a global one: ``r > GLOBAL_HEAD_RATIO = 0.8``):

* ``lower_layers_mix_local_and_global_heads`` (first model): the smallest of three margins, ``0.5 - min r`` over
  the heads of the ``k`` lowest blocks, ``max r`` there ``- 0.8`` and ``min r`` over the ``k`` highest blocks
  ``- 0.8``; claim > 0 (lower blocks hold a local and a global head, higher blocks only global ones).
* ``less_data_no_local_heads`` (first little-data model against its twin, the first model): the smaller of
  ``0.5 - min r`` of the full-data ViT's ``k`` lowest blocks and ``min r`` of the little-data ViT's ``k`` lowest
  blocks ``- 0.5``; claim > 0 (the full-data ViT learns a local head, the little-data one none).

Both list their parts in ``detail["conditions"]`` (text, the ratio on all the examples, met).
"""

import numpy as np

from vitcnn_tf import claims, findings, plotting, representations
from vitcnn_tf.analysis import attention, bootstrap, tokens
from vitcnn_tf.data.elements import element_images
from vitcnn_tf.paper import common, evaluation
from vitcnn_tf.paper.result import FigureSpec, SectionResult

ATTENTION_TAPS = r"block\d+/attn"
LOCAL_HEAD_RATIO = 0.5
"""A local head: mean attention distance below half the uniform-attention distance."""
GLOBAL_HEAD_RATIO = 0.8
"""A global head: mean attention distance above 0.8 times the uniform-attention distance."""


def attention_distances(model, data, progress=False):
    """``[N, L, H]`` mean attention distance (pixels) of every head of every block of a ViT ``model`` for each
    example of ``data`` (batches ``(images, labels)``)."""
    return attention_statistics(model, data, progress)[0]


def attention_statistics(model, data, progress=False):
    """``([N, L, H] mean attention distance in pixels, [N, L, H] mean attention entropy in nats)`` of every head of
    every block of a ViT ``model`` for each example of ``data`` (batches ``(images, labels)``), in one pass."""
    names = representations.select_layers(model, ATTENTION_TAPS)
    config = model.config
    distances = [attention.MeanAttentionDistance(config.patch_size, config.num_prefix_tokens) for _ in names]
    entropies = [attention.AttentionEntropy(config.num_prefix_tokens) for _ in names]
    cardinality = int(data.cardinality()) if hasattr(data, "cardinality") else -1
    bar = evaluation.progress_bar(cardinality if cardinality >= 0 else None, progress)
    for step, batch in enumerate(data, start=1):
        maps = representations.extract(model, element_images(batch, "data"), names)
        for distance, entropy, name in zip(distances, entropies, names):
            weights = tokens.as_float64(maps[name], name)  # converted once for both statistics
            distance.update(weights)
            entropy.update(weights)
        if bar is not None:
            bar.update(step)
    return tuple(np.stack([accumulator.per_example() for accumulator in accumulators], axis=1)
                 for accumulators in (distances, entropies))


def block_spreads(head_distances):
    """``[..., L, H]`` head distances -> ``[..., L]`` spread ``max - min`` over the heads."""
    return head_distances.max(axis=-1) - head_distances.min(axis=-1)


def uniform_attention_entropy(model):
    """Entropy (nats) of a head attending uniformly to all patches of ViT ``model``: ``log P``."""
    return float(np.log(model.config.grid_size ** 2))


def uniform_attention_distance(model):
    """Mean distance (pixels) of a head attending uniformly to all patches of ViT ``model``: the 'fully global'
    reference."""
    config = model.config
    return float(attention.patch_distance_matrix(config.grid_size, config.patch_size).mean())


def distance_intervals(per_example, num_resamples=1000, seed=0):
    """Per model: ``mean [L, H]`` head distances with ``low`` / ``high`` and ``spread [L]`` with ``spread_low`` /
    ``spread_high`` (bootstrap over the examples of ``per_example {label: [N, L, H]}``)."""
    interval = dict(num_resamples=num_resamples, seed=seed, vectorized=True)
    per_model = {}
    for label, distances in per_example.items():
        means, low, high = bootstrap.bootstrap_interval(lambda d: d.mean(axis=1), distances, **interval)
        spread, spread_low, spread_high = bootstrap.bootstrap_interval(
            lambda d: block_spreads(d.mean(axis=1)), distances, **interval)
        per_model[label] = dict(mean=means, low=low, high=high, spread=spread, spread_low=spread_low,
                                spread_high=spread_high)
    return per_model


def entropy_intervals(per_example, num_resamples=1000, seed=0):
    """Per model: ``entropy [L, H]`` mean head entropies with ``entropy_low`` / ``entropy_high`` (bootstrap over
    the examples of ``per_example {label: [N, L, H]}``)."""
    interval = dict(num_resamples=num_resamples, seed=seed, vectorized=True)
    per_model = {}
    for label, entropies in per_example.items():
        mean, low, high = bootstrap.bootstrap_interval(lambda e: e.mean(axis=1), entropies, **interval)
        per_model[label] = dict(entropy=mean, entropy_low=low, entropy_high=high)
    return per_model


def distance_ratios(distances, reference, name):
    """``[..., N, L, H]`` head distances (pixels) -> ``[..., L, H]`` mean over the examples divided by the
    uniform-attention distance ``reference`` (pixels, > 0; ``name`` names it in the error)."""
    if not (np.isfinite(reference) and reference > 0):
        raise ValueError(f"{name}: expected the positive uniform-attention distance in pixels, got {reference!r}")
    return distances.mean(axis=-3) / reference


def spread_finding(label, distances, reference, num_resamples=1000, seed=0):
    """``lower_layers_mix_local_and_global_heads`` on model ``label``'s ``[N, L, H]`` distances (pixels), with its
    uniform-attention distance ``reference`` (pixels)."""
    lowest, highest = common.extreme_blocks(distances.shape[1])

    def margins(ratios):
        """``[..., L, H]`` ratios -> ``[..., 3]`` margins of the three conditions (module docstring)."""
        lower, upper = ratios[..., lowest, :], ratios[..., highest, :]
        return np.stack([LOCAL_HEAD_RATIO - lower.min(axis=(-2, -1)), lower.max(axis=(-2, -1)) - GLOBAL_HEAD_RATIO,
                         upper.min(axis=(-2, -1)) - GLOBAL_HEAD_RATIO], axis=-1)

    ratios = distance_ratios(distances, reference, "reference")
    value, low, high = bootstrap.bootstrap_interval(
        lambda d: margins(distance_ratios(d, reference, "reference")).min(axis=-1), distances,
        num_resamples=num_resamples, seed=seed, vectorized=True)
    # Each text states what was measured: the claimed wording when the condition is met, its negation if not.
    met = [bool(margin > 0) for margin in margins(ratios)]
    lowest_min, lowest_max = float(ratios[lowest].min()), float(ratios[lowest].max())
    highest_min = float(ratios[highest].min())
    conditions = [
        {"text": f"the lowest {len(lowest)} blocks hold {'a' if met[0] else 'no'} head below {LOCAL_HEAD_RATIO:g}x "
                 f"the uniform distance (smallest {lowest_min:.2f}x)", "value": lowest_min, "met": met[0]},
        {"text": f"the lowest {len(lowest)} blocks hold {'a' if met[1] else 'no'} head above {GLOBAL_HEAD_RATIO:g}x "
                 f"the uniform distance (largest {lowest_max:.2f}x)", "value": lowest_max, "met": met[1]},
        {"text": f"the highest {len(highest)} blocks hold {'no' if met[2] else 'a'} head below "
                 f"{GLOBAL_HEAD_RATIO:g}x the uniform distance (smallest {highest_min:.2f}x)", "value": highest_min,
         "met": met[2]}]
    mean = distances.mean(axis=0)
    key = "lower_layers_mix_local_and_global_heads"
    threshold, direction = claims.threshold(key)
    return findings.Finding(
        key=key, section="5",
        claim="Lower ViT layers mix local and global heads; higher layers attend only globally",
        quantity=f"{label}: with r = head mean distance / uniform-attention distance ({reference:.3g} px), the "
                 f"smallest of {LOCAL_HEAD_RATIO:g} - min r over the heads of the lowest {len(lowest)} blocks, "
                 f"max r there - {GLOBAL_HEAD_RATIO:g}, and min r over the highest {len(highest)} blocks - "
                 f"{GLOBAL_HEAD_RATIO:g}",
        value=value, low=low, high=high, threshold=threshold, direction=direction,
        detail={"model": label, "num_examples": int(distances.shape[0]), "lowest_blocks": lowest,
                "highest_blocks": highest, "interval": "bootstrap over examples", "conditions": conditions,
                "block_min_ratio": ratios.min(axis=1).tolist(), "block_max_ratio": ratios.max(axis=1).tolist(),
                "block_spreads": block_spreads(mean).tolist(),
                "lowest_blocks_min_head_distance": float(mean[lowest].min()),
                "highest_blocks_min_head_distance": float(mean[highest].min()),
                "uniform_attention_distance": reference})


def less_data_finding(full_label, full, little_label, little, *, full_reference, little_reference,
                      num_resamples=1000, seed=0):
    """``less_data_no_local_heads``: ``[N, L1, H1]`` full-data and ``[N, L2, H2]`` little-data distances (pixels)
    of the same ``N`` examples (block and head counts may differ: each model's own lowest blocks are used), with
    each model's uniform-attention distance (pixels)."""
    if full.shape[0] != little.shape[0]:
        raise ValueError(f"{full_label!r} and {little_label!r}: distances of {full.shape[0]} and {little.shape[0]} "
                         "examples; the paired bootstrap needs the same examples")
    lowest_full, _ = common.extreme_blocks(full.shape[1])
    lowest_little, _ = common.extreme_blocks(little.shape[1])

    def smallest_ratios(full_d, little_d):
        """``([...] full-data, [...] little-data)`` smallest head ratio of each model's lowest blocks."""
        return (distance_ratios(full_d, full_reference, "full_reference")[..., lowest_full, :].min(axis=(-2, -1)),
                distance_ratios(little_d, little_reference, "little_reference")[..., lowest_little, :]
                .min(axis=(-2, -1)))

    def margin(full_d, little_d):
        full_min, little_min = smallest_ratios(full_d, little_d)
        return np.minimum(LOCAL_HEAD_RATIO - full_min, little_min - LOCAL_HEAD_RATIO)

    value, low, high = bootstrap.bootstrap_interval(margin, full, little, num_resamples=num_resamples, seed=seed,
                                                    vectorized=True)
    full_min, little_min = (float(v) for v in smallest_ratios(full, little))
    same_blocks = lowest_full == lowest_little
    blocks_text = (f"the lowest {len(lowest_full)} blocks" if same_blocks else
                   f"the lowest blocks ({len(lowest_full)} of {full.shape[1]} and {len(lowest_little)} of "
                   f"{little.shape[1]})")
    # Each text states what was measured: the claimed wording when the condition is met, its negation if not.
    full_met, little_met = full_min < LOCAL_HEAD_RATIO, little_min > LOCAL_HEAD_RATIO
    conditions = [
        {"text": f"the full-data ViT ({full_label}) holds {'a' if full_met else 'no'} local head (< "
                 f"{LOCAL_HEAD_RATIO:g}x the uniform distance) in its lowest {len(lowest_full)} blocks (smallest "
                 f"{full_min:.2f}x)", "value": full_min, "met": full_met},
        {"text": f"the little-data ViT ({little_label}) holds {'no' if little_met else 'a'} local head in its lowest "
                 f"{len(lowest_little)} blocks (smallest {little_min:.2f}x)", "value": little_min, "met": little_met}]
    detail = {"full_data_model": full_label, "little_data_model": little_label, "lowest_blocks": lowest_full,
              "num_examples": int(full.shape[0]), "interval": "paired bootstrap over examples",
              "conditions": conditions, "full_data_min_ratio": full_min, "little_data_min_ratio": little_min,
              "little_minus_full_min_ratio": little_min - full_min,
              "full_data_min_head_distance": float(full.mean(axis=0)[lowest_full].min()),
              "little_data_min_head_distance": float(little.mean(axis=0)[lowest_little].min()),
              "uniform_attention_distances": {full_label: full_reference, little_label: little_reference}}
    if not same_blocks:
        detail["little_data_lowest_blocks"] = lowest_little
    key = "less_data_no_local_heads"
    threshold, direction = claims.threshold(key)
    return findings.Finding(
        key=key, section="5",
        claim="With less training data, the lower attention layers do not learn to attend locally",
        quantity=f"with r = head mean distance / the model's uniform-attention distance ({full_reference:.3g} and "
                 f"{little_reference:.3g} px) and min r over {blocks_text}: the smaller of {LOCAL_HEAD_RATIO:g} - "
                 f"min r of {full_label} and min r of {little_label} - {LOCAL_HEAD_RATIO:g}",
        value=value, low=low, high=high, threshold=threshold, direction=direction, detail=detail)


def run(models, data, *, little_data_models=None, num_resamples=1000, seed=0, progress=False):
    """Figures 3 and 4: mean attention distance of every head of every block.

    Args:
      models: ``{label: ViT}`` trained with full data (Figure 3; e.g. ViT-B/16 and ViT-L/16 on ImageNet-21k); depths
        and head counts may differ.
      data: one ``tf.data`` dataset of ``(images [b, S, S, 3], labels [b])`` batches, iterated once per model (it
        must yield the same examples in the same order each time, for the paired intervals).
      little_data_models: ``{label: ViT}`` trained with less data (Figure 4; e.g. the ImageNet-1k twins), the
        ``i``-th the twin of the ``i``-th of ``models``; the finding ``less_data_no_local_heads`` compares the first
        pair. Labels must differ from those of ``models``.
      num_resamples, seed: the bootstrap over examples.

    Returns a :class:`SectionResult` with arrays ``attention_distances {<label>.per_example [N, L, H], <label>.mean
    [L, H]}`` for every model, the table ``attention_distances`` (means, spreads and intervals per model), the
    findings and the figures.
    """
    common.check_models(models)
    little_data_models = dict(little_data_models or {})
    clashes = sorted(set(models) & set(little_data_models))
    if clashes:
        raise ValueError(f"little_data_models: labels {clashes} already name models")
    if len(little_data_models) > len(models):
        raise ValueError(f"little_data_models: {len(little_data_models)} models for {len(models)} full-data twins")
    all_models = {**models, **little_data_models}
    for label, model in all_models.items():
        common.require_family(model, label, "models / little_data_models", "vit",
                              reason="attention distances need self-attention heads")
    per_example, entropy_per_example = {}, {}
    for label, model in all_models.items():
        if progress:
            print(f"attention distances of {label!r}", flush=True)
        per_example[label], entropy_per_example[label] = attention_statistics(model, data, progress)
    counts = {distances.shape[0] for distances in per_example.values()}
    if len(counts) != 1:
        raise ValueError(f"data: the passes over the models gave different example counts {sorted(counts)}")
    per_model = distance_intervals(per_example, num_resamples, seed)
    entropies = entropy_intervals(entropy_per_example, num_resamples, seed)
    references = {label: uniform_attention_distance(model) for label, model in all_models.items()}
    first = next(iter(models))
    found = [spread_finding(first, per_example[first], references[first], num_resamples, seed)]
    twins = list(zip(models, little_data_models))
    if twins:
        full_label, little_label = twins[0]
        found.append(less_data_finding(full_label, per_example[full_label], little_label, per_example[little_label],
                                       full_reference=references[full_label],
                                       little_reference=references[little_label], num_resamples=num_resamples,
                                       seed=seed))
    arrays = {"attention_distances": {
        name: value for label, distances in per_example.items()
        for name, value in ((f"{label}.per_example", distances), (f"{label}.mean", per_model[label]["mean"]),
                            (f"{label}.entropy_per_example", entropy_per_example[label]),
                            (f"{label}.entropy", entropies[label]["entropy"]))}}
    tables = {"attention_distances": {label: {**values, **entropies[label]} for label, values in per_model.items()}}
    summary = {
        "full_data_models": list(models), "little_data_models": dict(twins),
        "num_examples": counts.pop(),
        "uniform_attention_distance": references[first],
        "uniform_attention_distances": references,
        "blocks": {label: [{"block": block, "sorted_head_distances": np.sort(values["mean"][block]).tolist(),
                            "spread": float(values["spread"][block]),
                            "spread_interval": [float(values["spread_low"][block]),
                                                float(values["spread_high"][block])]}
                           for block in range(values["mean"].shape[0])]
                   for label, values in per_model.items()},
    }
    if not twins:
        summary["findings_skipped"] = {"less_data_no_local_heads": "no little-data model given"}
    figures = [_distances_figure("attention_distances.png", "3", {label: per_model[label] for label in models},
                                 references[first], FIGURE3_CAPTION, FIGURE3_LOOK_FOR)]
    if twins:
        pairs = {label: per_model[label] for pair in twins for label in pair}
        figures.append(_distances_figure("attention_distances_less_data.png", "4", pairs, references[first],
                                         FIGURE4_CAPTION, FIGURE4_LOOK_FOR))
    figures += [_heads_figure(label, per_model[label], references[label]) for label in all_models]
    figures.append(_spread_figure(per_model))
    uniform_entropies = {label: uniform_attention_entropy(model) for label, model in all_models.items()}
    summary["uniform_attention_entropy"] = uniform_entropies[first]
    figures.append(_entropy_figure(entropies, uniform_entropies[first]))
    return SectionResult(experiment="attention_distance", arrays=arrays, tables=tables, findings=found,
                         summary=summary, figures=figures)


FIGURE3_CAPTION = ("Mean attention distance (pixels, mean over examples with a 95% interval) of every head in every "
                   "block of the full-data ViTs; the dashed line is a head attending uniformly to all patches.")
FIGURE3_LOOK_FOR = ("Lower blocks hold both local heads (small distance) and global heads; higher blocks attend "
                    "entirely globally, near the uniform-attention line.")
FIGURE4_CAPTION = ("The same for each ViT trained with less data beside its full-data twin.")
FIGURE4_LOOK_FOR = ("With less training data the lower blocks do not learn to attend locally: their smallest head "
                    "distances stay well above the full-data twin's.")


def _depth_axis(per_model):
    """``(x positions per model {label: [L]}, x label, ticks, tick labels)``: block indices when every model has
    as many blocks, else normalised depths."""
    depths = {label: values["mean"].shape[0] for label, values in per_model.items()}
    if len(set(depths.values())) == 1:
        count = next(iter(depths.values()))
        ticks = common.block_ticks(count)
        return {label: np.arange(count, dtype=np.float64) for label in depths}, "block", ticks, None
    ticks = np.linspace(0, 1, 5)
    return ({label: common.normalised_depths(count) for label, count in depths.items()},
            "normalised depth (0 = first block, 1 = last)", ticks, [f"{t:.2f}" for t in ticks])


def _distances_figure(file, paper_figure, per_model, reference, caption, look_for):
    positions, xlabel, ticks, ticklabels = _depth_axis(per_model)

    def draw():
        series = {}
        width = 0.3 if xlabel == "block" else 0.3 / max(len(p) for p in positions.values())
        for offset, (label, values) in zip(np.linspace(-width / 2, width / 2, len(per_model)), per_model.items()):
            num_heads = values["mean"].shape[1]
            x = np.repeat(positions[label], num_heads) + offset
            series[label] = (x, values["mean"].ravel(), values["low"].ravel(), values["high"].ravel())
        return plotting.line_plot(series, style="points", title="Mean attention distance of every head",
                                  xlabel=xlabel, ylabel="mean attention distance (pixels)",
                                  hlines={"uniform attention": reference}, ylim=(0, None), xticks=ticks,
                                  xticklabels=ticklabels)

    return FigureSpec(file=file, paper_figure=paper_figure, caption=caption, look_for=look_for, draw=draw)


def _heads_figure(label, values, reference):
    def draw():
        num_blocks, num_heads = values["mean"].shape
        ordered = np.sort(values["mean"], axis=1)
        heads = {f"block {block}": (np.arange(num_heads), ordered[block]) for block in range(num_blocks)}
        return plotting.line_plot(heads, title=f"{label}: heads sorted by mean attention distance",
                                  xlabel="head (sorted)", ylabel="mean attention distance (pixels)",
                                  hlines={f"uniform attention ({reference:.3g} px)": reference,
                                          **{f"{ratio:g}x uniform ({ratio * reference:.3g} px): {text}":
                                             ratio * reference for ratio, text in (
                                              (GLOBAL_HEAD_RATIO, "global heads above"),
                                              (LOCAL_HEAD_RATIO, "local heads below"))}},
                                  ylim=(0, None), xticks=common.block_ticks(num_heads), legend_title="block")

    return FigureSpec(
        file=f"attention_heads_{label}.png", paper_figure="3",
        caption=f"{label}: the heads of every block sorted by mean attention distance, one line per block "
                "(the paper's Figure 3 layout); dashed lines: uniform attention and the local / global head bounds "
                f"({LOCAL_HEAD_RATIO:g}x and {GLOBAL_HEAD_RATIO:g}x of it) of the findings.",
        look_for="The lowest blocks' lines start near zero (local heads) and rise to global heads; the highest "
                 "blocks' lines are flat near the uniform-attention distance.", draw=draw)


def _spread_figure(per_model):
    positions, xlabel, ticks, ticklabels = _depth_axis(per_model)

    def draw():
        series = {label: (positions[label], values["spread"], values["spread_low"], values["spread_high"])
                  for label, values in per_model.items()}
        return plotting.line_plot(series, title="Spread of head distances per block (max - min)", xlabel=xlabel,
                                  ylabel="spread (pixels)", xticks=ticks, xticklabels=ticklabels)

    return FigureSpec(
        file="attention_spread.png", paper_figure="",
        caption="Spread (max - min) of the heads' mean attention distances per block, with 95% bands, every model.",
        look_for="A large spread in the lower blocks that shrinks with depth (ours; the finding "
                 "lower_layers_mix_local_and_global_heads asks for heads beyond fixed fractions of the uniform "
                 "distance instead).", draw=draw)


def _entropy_figure(entropies, reference):
    positions, xlabel, ticks, ticklabels = _depth_axis({label: {"mean": values["entropy"]}
                                                        for label, values in entropies.items()})

    def draw():
        series = {}
        width = 0.3 if xlabel == "block" else 0.3 / max(len(p) for p in positions.values())
        for offset, (label, values) in zip(np.linspace(-width / 2, width / 2, len(entropies)), entropies.items()):
            num_heads = values["entropy"].shape[1]
            series[label] = (np.repeat(positions[label], num_heads) + offset, values["entropy"].ravel(),
                             values["entropy_low"].ravel(), values["entropy_high"].ravel())
        return plotting.line_plot(series, style="points", title="Mean attention entropy of every head",
                                  xlabel=xlabel, ylabel="attention entropy over the patches (nats)",
                                  hlines={"uniform attention (log P)": reference}, ylim=(0, None), xticks=ticks,
                                  xticklabels=ticklabels)

    return FigureSpec(
        file="attention_entropy.png", paper_figure="",
        caption="Mean entropy (nats) of every head's attention over the patch keys, per block, every model (mean "
                "over examples with a 95% interval; ours, the companion of Figures 3 and 4); the dashed line is a "
                "head attending uniformly to all patches.",
        look_for="Local heads (small distance) have low entropy; the higher blocks' heads sit near the uniform "
                 "line, as their distances sit near the uniform-attention distance.", draw=draw)
