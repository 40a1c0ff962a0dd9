"""Section 5, Figure 5: are local attention heads of the first ViT block the most ResNet-like?

1. The heads of the ViT's first block (``--block``, default 0) are sorted by mean attention distance over the
   evaluation set (``analysis.attention``).
2. Subsets from the most local to the most global heads: every window of consecutive heads in that order, of every
   size in ``--window-sizes`` (default 1 .. H; e.g. 4 heads give 4 + 3 + 2 + 1 = 10 subsets, the last one all
   heads). A subset's output is the block's per-head attention output before the output projection
   (``blockNN/attn_heads`` ``[n, T, H, dh]``) restricted to its heads, flattened per example; its mean distance is
   the mean of its heads' distances.
3. Minibatch CKA between every subset's output and every lower-layer ResNet representation (the first half of the
   ResNet's taps, ``logits`` excluded), streamed over the same examples (one joint forward pass per minibatch).

Outputs in ``--out`` (default ``results/sec5_local_global_heads``), written atomically:

  head_subset_cka.npz    ``cka [S, R]``, ``subset_mean_distance [S]``, ``head_distance [H]``, ``subset_names``,
                         ``resnet_names``
  head_subset_cka.json   subsets (heads, mean distance, CKA with each lower ResNet layer, max CKA with interval)
  head_subset_cka.png    Figure 5: CKA against subset mean distance (max over lower ResNet layers with bootstrap
                         error bars, and the ResNet's unit outputs)
  summary.json           settings and the finding

Finding ``local_heads_most_resnet_like``: correlation over the subsets between mean distance and max CKA with the
lower ResNet layers, pooled within window sizes (both centred within each size, so that subsets are compared only
with subsets of as many heads); claim < 0. The interval bootstraps the CKA minibatches (head order and distances
held fixed: their own intervals are in ``sec5_attention_distance``). The plain correlation is in its detail.

    python -m experiments.sec5_local_global_heads
    python -m experiments.sec5_local_global_heads --models vit resnet --window-sizes 1 2
"""

import os
import sys
import time

import keras
import numpy as np

from experiments import common
from experiments.sec4_representation_structure import first_of_family, load_models
from vitcnn_tf import atomic_io, findings, plotting, representations
from vitcnn_tf.analysis import attention, bootstrap

DEFAULT_MODELS = ("vit", "resnet")
DEFAULT_OUT = os.path.join("results", "sec5_local_global_heads")
RESNET_EXCLUDE = {"logits"}


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec5_local_global_heads")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=2000,
                                default_batch_size=125, default_out=DEFAULT_OUT)
    parser.add_argument("--block", type=int, default=0, help="ViT encoder block of the heads (default: %(default)s)")
    parser.add_argument("--window-sizes", type=common._positive_int, nargs="+", default=None, metavar="K",
                        help="sizes of the windows of consecutive sorted heads (default: every size 1 .. H)")
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the finding's interval (default: %(default)s)")
    return parser


def run(options):
    started = time.time()
    models = load_models(options.models, options)
    vit, resnet = first_of_family(models, "vit"), first_of_family(models, "resnet")
    if vit is None or resnet is None:
        raise ValueError(f"--models: need a ViT and a ResNet, got {', '.join(models)}")
    block = f"block{options.block:02d}"
    heads_tap = f"{block}/attn_heads"
    representations.select_layers(models[vit], [heads_tap, f"{block}/attn"])
    head_distance = first_block_head_distances(models[vit], block, options)
    order = np.argsort(head_distance, kind="stable")
    subsets = head_windows(order, options.window_sizes)
    if len(subsets) - len({len(subset) for subset in subsets}) < 2:
        raise ValueError(f"--window-sizes: the {len(subsets)} head subset(s) leave fewer than 2 degrees of freedom "
                         "for the within-size correlation; use smaller windows")
    subset_distance = np.array([head_distance[list(heads)].mean() for heads in subsets])
    resnet_names = lower_half_taps(models[resnet])
    model, subset_names, joint_resnet_names = subset_tap_model(models[vit], heads_tap, subsets, models[resnet],
                                                               resnet_names, vit, resnet)
    data = common.evaluation_data(options, common.image_size(model))
    print(f"CKA of {len(subsets)} head subsets of {vit}:{heads_tap} with {len(resnet_names)} lower {resnet} layers",
          flush=True)
    metric, _, _, terms = representations.accumulate_cka(model, data, subset_names, layers_y=joint_resnet_names,
                                                          progress=options.progress, return_batch_terms=True,
                                                          strategy=common.distribution_strategy(options))
    cka = np.asarray(metric.result(), dtype=np.float64)

    sizes = np.array([len(subset) for subset in subsets])

    def correlation(matrix):
        return within_size_correlation(subset_distance, np.nanmax(matrix, axis=1), sizes)

    value, low, high = bootstrap.cka_bootstrap_interval(terms, correlation, num_resamples=options.num_resamples,
                                                        seed=options.seed)
    max_cka, max_low, max_high = (np.array(v) for v in zip(*(
        bootstrap.cka_bootstrap_interval(terms, lambda matrix, s=s: float(np.nanmax(matrix[s])),
                                         num_resamples=min(options.num_resamples, 200), seed=options.seed)
        for s in range(len(subsets)))))
    finding = findings.Finding(
        key="local_heads_most_resnet_like", section="5",
        claim="Lower ResNet layers are most similar to the local attention heads of the ViT's first block",
        quantity=f"within-window-size Pearson correlation over {len(subsets)} head subsets of {vit} {block} between "
                 f"mean attention distance and max CKA with the lower-half {resnet} layers",
        value=value, low=low, high=high, threshold=0.0, direction="less",
        detail={"vit": vit, "resnet": resnet, "block": options.block, "num_subsets": len(subsets),
                "num_examples": int(len(terms["cross"]) * options.batch_size),
                "plain_correlation": float(np.corrcoef(subset_distance, np.nanmax(cka, axis=1))[0, 1]),
                "interval": "bootstrap over CKA minibatches, head order and distances fixed"})
    write_outputs(options.out, cka, subsets, subset_distance, head_distance, resnet_names, max_cka, max_low,
                  max_high, f"{vit} {block}", resnet)
    summary = {
        "experiment": "sec5_local_global_heads",
        "models": dict(zip(models, options.models)),
        "num_examples": int(len(terms["cross"]) * options.batch_size),
        "head_distance": head_distance,
        "head_order_local_to_global": order,
        "subsets": [{"heads": list(map(int, heads)), "mean_distance": float(distance), "max_cka": float(best)}
                    for heads, distance, best in zip(subsets, subset_distance, max_cka)],
        "findings": [finding.to_dict()],
        "seconds": round(time.time() - started, 1),
    }
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


def first_block_head_distances(model, block, options):
    """``[H]`` mean attention distance of each head of ``block`` over the evaluation set."""
    config = model.config
    accumulator = attention.MeanAttentionDistance(config.patch_size, config.num_prefix_tokens)
    data = common.evaluation_data(options, common.image_size(model))
    print(f"attention distances of {block}", flush=True)
    progress = keras.utils.Progbar(len(data)) if options.progress else None
    for step, (images, _) in enumerate(data, start=1):
        accumulator.update(representations.extract(model, images, [f"{block}/attn"])[f"{block}/attn"])
        if progress is not None:
            progress.update(step)
    return accumulator.result()


def head_windows(order, window_sizes=None):
    """Windows of consecutive heads of ``order`` (heads sorted local -> global), for each size in ``window_sizes``
    (default every size 1 .. H), sizes ascending and windows from local to global: a list of head-index tuples."""
    num_heads = len(order)
    sizes = range(1, num_heads + 1) if window_sizes is None else sorted(set(window_sizes))
    too_large = [size for size in sizes if size > num_heads]
    if too_large:
        raise ValueError(f"--window-sizes: {too_large} exceed the number of heads ({num_heads})")
    return [tuple(int(head) for head in order[start:start + size])
            for size in sizes for start in range(num_heads - size + 1)]


def within_size_correlation(distance, similarity, sizes):
    """Pearson correlation of ``distance`` and ``similarity`` (``[S]`` each) after centring both within each group
    of equal ``sizes`` (the pooled within-group correlation): subsets are compared only with subsets of as many
    heads, so a trend of CKA with the number of heads cannot masquerade as one with distance."""
    distance, similarity = np.asarray(distance, np.float64), np.asarray(similarity, np.float64)
    centred_distance, centred_similarity = distance.copy(), similarity.copy()
    for size in np.unique(sizes):
        group = sizes == size
        centred_distance[group] -= distance[group].mean()
        centred_similarity[group] -= similarity[group].mean()
    scale = np.sqrt(np.sum(centred_distance**2) * np.sum(centred_similarity**2))
    return float(np.sum(centred_distance * centred_similarity) / scale) if scale > 0 else float("nan")


def lower_half_taps(model):
    """The first half (rounded down, at least one) of the model's taps, ``logits`` excluded."""
    names = [name for name in representations.layer_names(model) if name not in RESNET_EXCLUDE]
    return names[:max(1, len(names) // 2)]


def subset_tap_model(vit_model, heads_tap, subsets, resnet_model, resnet_names, vit, resnet):
    """A model with taps ``"heads[i,j,...]"`` (``heads_tap`` restricted to those heads, ``[n, T, k, dh]``) and the
    ResNet taps; returns ``(model, subset tap names, ResNet tap names)``."""
    joint = representations.joint_tap_model({vit: vit_model, resnet: resnet_model},
                                            {vit: [heads_tap], resnet: resnet_names})
    heads = joint.taps[f"{vit}:{heads_tap}"]
    taps = {f"heads[{','.join(map(str, subset))}]": keras.ops.take(heads, np.array(subset), axis=2)
            for subset in subsets}
    subset_names = list(taps)
    joint_resnet_names = [f"{resnet}:{name}" for name in resnet_names]
    taps.update({name: joint.taps[name] for name in joint_resnet_names})
    return representations.model_with_taps(joint.inputs, taps, name="head_subsets"), subset_names, joint_resnet_names


def write_outputs(folder, cka, subsets, subset_distance, head_distance, resnet_names, max_cka, max_low, max_high,
                  vit_block, resnet):
    subset_names = [f"heads {','.join(map(str, subset))}" for subset in subsets]
    atomic_io.save_npz(os.path.join(folder, "head_subset_cka.npz"), cka=cka, subset_mean_distance=subset_distance,
                       head_distance=head_distance, subset_names=np.array(subset_names),
                       resnet_names=np.array(resnet_names))
    atomic_io.write_json(os.path.join(folder, "head_subset_cka.json"), {
        "resnet_layers": resnet_names,
        "subsets": [{"heads": list(map(int, subset)), "mean_distance": float(distance),
                     "cka": dict(zip(resnet_names, map(float, row))), "max_cka": float(best),
                     "max_cka_interval": [float(low), float(high)]}
                    for subset, distance, row, best, low, high in zip(subsets, subset_distance, cka, max_cka,
                                                                      max_low, max_high)]})
    order = np.argsort(subset_distance, kind="stable")
    series = {f"max over lower {resnet} layers": (subset_distance[order], max_cka[order], max_low[order],
                                                   max_high[order])}
    for index, name in enumerate(resnet_names):
        if "/" not in name or name.endswith("/+res") or name.startswith("root/"):
            series[f"{resnet} {name}"] = (subset_distance[order], cka[order, index])
    figure = plotting.line_plot(series, style="points",
                                title=f"{vit_block} head subsets vs lower {resnet} layers",
                                xlabel="mean attention distance of the subset (pixels)", ylabel="CKA")
    atomic_io.save_figure(figure, os.path.join(folder, "head_subset_cka.png"), dpi=120)


if __name__ == "__main__":
    sys.exit(main())
