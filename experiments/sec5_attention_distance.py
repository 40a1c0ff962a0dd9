"""Section 5, Figures 3 and 4: mean attention distance of every head in every block, with full and little data.

For each ViT given (``--models``, default the CPU zoo's ``vit`` and ``vit_data3``, the same recipe trained on 3% of
the training data), every block's attention probabilities (``blockNN/attn``) are streamed over a stratified
subset of the test split; each head's distance is the attention-weighted pixel distance between query and key
patches (CLS dropped, renormalised over the patches), averaged over queries and examples
(``analysis.attention``). The spread of a block is ``max - min`` of its heads' mean distances. 95% intervals
bootstrap the examples (paired across models: the same images are resampled for every model).

Outputs in ``--out`` (default ``results/sec5_attention_distance``), written atomically:

  attention_distances.npz         per model: ``<model>.per_example [N, L, H]`` distances and ``<model>.mean [L, H]``
  attention_distances.json        per model and block: heads sorted by distance (with intervals), spread
  attention_distances.png         Figure 3/4: every head's mean distance per block, all models (error bars)
  attention_heads_<model>.png     heads sorted by distance, one line per block (the paper's Figure 3 layout)
  attention_spread.png            spread (max - min) per block for each model
  summary.json                    settings, the uniform-attention reference distance and the findings

Findings, with ``k = max(1, L // 3)`` lowest / highest blocks (2 of 6):

* ``lower_layers_mix_local_and_global_heads`` (first model): mean spread of the ``k`` lowest blocks minus that of
  the ``k`` highest; claim > 0 (lower blocks hold local and global heads, higher blocks only global ones).
* ``less_data_no_local_heads`` (second model vs first): the smallest head distance in the ``k`` lowest blocks of the
  little-data ViT minus that of the full-data ViT; claim > 0 (with less data no head learns to attend locally).

    python -m experiments.sec5_attention_distance
    python -m experiments.sec5_attention_distance --models vit vit_data10 --num-examples 1024
"""

import os
import sys
import time

import keras
import numpy as np

from experiments import common
from experiments.sec4_representation_structure import load_models, model_family
from vitcnn_tf import atomic_io, findings, plotting, representations
from vitcnn_tf.analysis import attention, bootstrap

DEFAULT_MODELS = ("vit", "vit_data3")
DEFAULT_OUT = os.path.join("results", "sec5_attention_distance")
ATTENTION_TAPS = r"block\d+/attn"


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec5_attention_distance")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=2000,
                                default_batch_size=250, default_out=DEFAULT_OUT)
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the intervals (default: %(default)s)")
    return parser


def run(options):
    started = time.time()
    models = load_models(options.models, options)
    for label, model in models.items():
        if model_family(model) != "vit":
            raise ValueError(f"--models: {label!r} is not a ViT (attention distances need self-attention heads)")
    per_example = {label: attention_distances(label, model, options) for label, model in models.items()}
    interval = dict(num_resamples=options.num_resamples, seed=options.seed)
    per_model = {}
    for label, distances in per_example.items():
        means, low, high = bootstrap.bootstrap_interval(lambda d: d.mean(axis=1), distances, vectorized=True,
                                                        **interval)
        spread, spread_low, spread_high = bootstrap.bootstrap_interval(
            lambda d: block_spreads(d.mean(axis=1)), distances, vectorized=True, **interval)
        per_model[label] = dict(mean=means, low=low, high=high, spread=spread, spread_low=spread_low,
                                spread_high=spread_high)
    reference = uniform_attention_distance(next(iter(models.values())))
    write_outputs(options.out, per_example, per_model, reference)
    found = distance_findings(per_example, reference, options)
    summary = {
        "experiment": "sec5_attention_distance",
        "models": dict(zip(models, options.models)),
        "num_examples": int(next(iter(per_example.values())).shape[0]),
        "uniform_attention_distance": reference,
        "blocks": {label: [{"block": block, "sorted_head_distances": np.sort(values["mean"][block]).tolist(),
                            "spread": float(values["spread"][block]),
                            "spread_interval": [float(values["spread_low"][block]),
                                                float(values["spread_high"][block])]}
                           for block in range(values["mean"].shape[0])]
                   for label, values in per_model.items()},
        "findings": [finding.to_dict() for finding in found],
        "seconds": round(time.time() - started, 1),
    }
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


def attention_distances(label, model, options):
    """``[N, L, H]`` mean attention distance of every head of every block for each evaluation example."""
    names = representations.select_layers(model, ATTENTION_TAPS)
    config = model.config
    accumulators = [attention.MeanAttentionDistance(config.patch_size, config.num_prefix_tokens) for _ in names]
    data = common.evaluation_data(options, common.image_size(model))
    print(f"attention distances of {label!r}: {len(names)} blocks", flush=True)
    progress = keras.utils.Progbar(len(data)) if options.progress else None
    for step, (images, _) in enumerate(data, start=1):
        maps = representations.extract(model, images, names)
        for accumulator, name in zip(accumulators, names):
            accumulator.update(maps[name])
        if progress is not None:
            progress.update(step)
    return np.stack([accumulator.per_example() for accumulator in accumulators], axis=1)


def block_spreads(head_distances):
    """``[..., L, H]`` head distances -> ``[..., L]`` spread ``max - min`` over the heads."""
    return head_distances.max(axis=-1) - head_distances.min(axis=-1)


def uniform_attention_distance(model):
    """Mean distance (pixels) of a head attending uniformly to all patches: the 'fully global' reference."""
    config = model.config
    return float(attention.patch_distance_matrix(config.grid_size, config.patch_size).mean())


def extreme_blocks(num_blocks):
    """``(lowest, highest)`` block index lists, ``k = max(1, L // 3)`` each."""
    k = max(1, num_blocks // 3)
    return list(range(k)), list(range(num_blocks - k, num_blocks))


def distance_findings(per_example, reference, options):
    labels = list(per_example)
    first = per_example[labels[0]]
    lowest, highest = extreme_blocks(first.shape[1])
    interval = dict(num_resamples=options.num_resamples, seed=options.seed, vectorized=True)

    def spread_contrast(d):
        spreads = block_spreads(d.mean(axis=1))
        return spreads[:, lowest].mean(axis=1) - spreads[:, highest].mean(axis=1)

    value, low, high = bootstrap.bootstrap_interval(spread_contrast, first, **interval)
    results = [findings.Finding(
        key="lower_layers_mix_local_and_global_heads", section="5",
        claim="Lower ViT layers mix local and global heads; higher layers attend only globally",
        quantity=f"mean head-distance spread (max - min, pixels) of the lowest {len(lowest)} blocks minus that of the "
                 f"highest {len(highest)} blocks, {labels[0]}",
        value=value, low=low, high=high, threshold=0.0, direction="greater",
        detail={"model": labels[0], "num_examples": int(first.shape[0]), "lowest_blocks": lowest,
                "highest_blocks": highest, "interval": "bootstrap over examples",
                "block_spreads": block_spreads(first.mean(axis=0)).tolist(),
                "lowest_blocks_min_head_distance": float(first.mean(axis=0)[lowest].min()),
                "highest_blocks_min_head_distance": float(first.mean(axis=0)[highest].min()),
                "uniform_attention_distance": reference})]
    if len(labels) < 2:
        print("one model only: less_data_no_local_heads skipped (give the full-data ViT, then the little-data one)",
              flush=True)
        return results
    second = per_example[labels[1]]
    if second.shape != first.shape:
        raise ValueError(f"--models: {labels[0]!r} and {labels[1]!r} must have the same blocks and heads, got "
                         f"distances of shape {first.shape} and {second.shape}")

    def local_gap(full, little):
        return little.mean(axis=1)[:, lowest].min(axis=(1, 2)) - full.mean(axis=1)[:, lowest].min(axis=(1, 2))

    value, low, high = bootstrap.bootstrap_interval(local_gap, first, second, **interval)
    results.append(findings.Finding(
        key="less_data_no_local_heads", section="5",
        claim="With less training data, the lower attention layers do not learn to attend locally",
        quantity=f"smallest head distance (pixels) in the lowest {len(lowest)} blocks, {labels[1]} minus {labels[0]}",
        value=value, low=low, high=high, threshold=0.0, direction="greater",
        detail={"full_data_model": labels[0], "little_data_model": labels[1], "lowest_blocks": lowest,
                "num_examples": int(first.shape[0]), "interval": "paired bootstrap over examples",
                "full_data_min_head_distance": float(first.mean(axis=0)[lowest].min()),
                "little_data_min_head_distance": float(second.mean(axis=0)[lowest].min())}))
    return results


def write_outputs(folder, per_example, per_model, reference):
    arrays = {}
    for label, distances in per_example.items():
        arrays[f"{label}.per_example"] = distances
        arrays[f"{label}.mean"] = per_model[label]["mean"]
    atomic_io.save_npz(os.path.join(folder, "attention_distances.npz"), **arrays)
    atomic_io.write_json(os.path.join(folder, "attention_distances.json"), {
        label: {"mean": values["mean"], "low": values["low"], "high": values["high"], "spread": values["spread"],
                "spread_low": values["spread_low"], "spread_high": values["spread_high"]}
        for label, values in per_model.items()})
    series, spread_series = {}, {}
    for offset, (label, values) in zip(np.linspace(-0.15, 0.15, len(per_model)), per_model.items()):
        num_blocks, num_heads = values["mean"].shape
        blocks = np.repeat(np.arange(num_blocks), num_heads) + offset
        series[label] = (blocks, values["mean"].ravel(), values["low"].ravel(), values["high"].ravel())
        spread_series[label] = (np.arange(num_blocks), values["spread"], values["spread_low"],
                                values["spread_high"])
        order = np.argsort(values["mean"], axis=1)
        heads = {f"block {block}": (np.arange(num_heads), np.take_along_axis(values["mean"], order, 1)[block])
                 for block in range(num_blocks)}
        figure = plotting.line_plot(heads, title=f"{label}: heads sorted by mean attention distance",
                                    xlabel="head (sorted)", ylabel="mean attention distance (pixels)",
                                    hlines={"uniform attention": reference}, ylim=(0, None),
                                    xticks=np.arange(num_heads))
        atomic_io.save_figure(figure, os.path.join(folder, f"attention_heads_{label}.png"), dpi=120)
    num_blocks = next(iter(per_model.values()))["mean"].shape[0]
    figure = plotting.line_plot(series, style="points", title="Mean attention distance of every head",
                                xlabel="block", ylabel="mean attention distance (pixels)",
                                hlines={"uniform attention": reference}, ylim=(0, None),
                                xticks=np.arange(num_blocks))
    atomic_io.save_figure(figure, os.path.join(folder, "attention_distances.png"), dpi=120)
    figure = plotting.line_plot(spread_series, title="Spread of head distances per block (max - min)",
                                xlabel="block", ylabel="spread (pixels)", xticks=np.arange(num_blocks))
    atomic_io.save_figure(figure, os.path.join(folder, "attention_spread.png"), dpi=120)


if __name__ == "__main__":
    sys.exit(main())
