"""Section 5, Figure 5: are the local attention heads of the first ViT block the most ResNet-like?

1. The heads of the ViT's first block (``block``, default 0) are sorted by mean attention distance over the
   evaluation set (``analysis.attention``).
2. Subsets from the most local to the most global heads: every window of consecutive heads in that order, of every
   size in ``window_sizes`` (default 1 .. H; 4 heads give 4 + 3 + 2 + 1 = 10 subsets, 12 heads 78, 16 heads 136).
   A subset's output is the block's per-head attention output before the output projection
   (``blockNN/attn_heads`` ``[n, T, H, dh]``) restricted to its heads, flattened per example; its mean distance is
   the mean of its heads' distances.
3. Minibatch CKA between every subset's output and every lower-layer ResNet representation (the first half of the
   ResNet's taps, ``logits`` excluded), streamed over the same examples (one joint forward pass per minibatch).

Finding ``local_heads_most_resnet_like``: correlation over the subsets between mean distance and max CKA with the
lower ResNet layers, pooled within window sizes (both centred within each size, so that subsets are compared only
with subsets of as many heads); claim < -0.5 (``vitcnn_tf.claims``). The interval bootstraps the CKA minibatches
(head order and distances held fixed). The plain correlation is in its detail.

Checks beyond CKA (``measure_checks``), on ``check_examples`` evenly spaced examples (default 256, whole
minibatches): the same within-size correlation with orthogonal Procrustes similarity in place of CKA, and the
permutation null (``null_permutations`` shuffles, default 100) of the CKA it compares: the max CKA over the lower
ResNet layers of the first subset (the most local window of the smallest size), the ResNet's examples shuffled.
"""

import keras
import numpy as np

from vitcnn_tf import claims, findings, plotting, representations
from vitcnn_tf.analysis import attention, bootstrap
from vitcnn_tf.data.elements import element_images
from vitcnn_tf.paper import common, evaluation, measure_checks
from vitcnn_tf.paper.result import FigureSpec, SectionResult

RESNET_EXCLUDE = {"logits"}
MAX_CKA_RESAMPLES = 200  # resamples of each subset's max-CKA error bar (the finding uses num_resamples)


def block_head_distances(model, block, data, progress=False):
    """``[H]`` mean attention distance (pixels) of each head of ViT ``model``'s ``block`` (e.g. ``"block00"``)
    over the batches of ``data``."""
    config = model.config
    accumulator = attention.MeanAttentionDistance(config.patch_size, config.num_prefix_tokens)
    tap = f"{block}/attn"
    cardinality = int(data.cardinality()) if hasattr(data, "cardinality") else -1
    bar = evaluation.progress_bar(cardinality if cardinality >= 0 else None, progress)
    for step, batch in enumerate(data, start=1):
        accumulator.update(representations.extract(model, element_images(batch, "data"), [tap])[tap])
        if bar is not None:
            bar.update(step)
    return accumulator.result()


def head_windows(order, window_sizes=None):
    """Windows of consecutive heads of ``order`` (``[H]`` heads sorted local -> global), for each size in
    ``window_sizes`` (default every size 1 .. H), sizes ascending and windows from local to global: a list of
    head-index tuples."""
    num_heads = len(order)
    sizes = range(1, num_heads + 1) if window_sizes is None else sorted(set(window_sizes))
    too_large = [size for size in sizes if size > num_heads]
    if too_large:
        raise ValueError(f"window_sizes: {too_large} exceed the number of heads ({num_heads})")
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
    ResNet taps ``"<resnet>:<tap>"``; returns ``(model, subset tap names, joint ResNet tap names)``."""
    joint = representations.joint_tap_model({vit: vit_model, resnet: resnet_model},
                                            {vit: [heads_tap], resnet: resnet_names})
    heads = joint.taps[f"{vit}:{heads_tap}"]
    taps = {f"heads[{','.join(map(str, subset))}]": keras.ops.take(heads, np.array(subset), axis=2)
            for subset in subsets}
    subset_names = list(taps)
    joint_resnet_names = [f"{resnet}:{name}" for name in resnet_names]
    taps.update({name: joint.taps[name] for name in joint_resnet_names})
    return representations.model_with_taps(joint.inputs, taps, name="head_subsets"), subset_names, joint_resnet_names


def head_subset_checks(model, subset_names, resnet_names, subset_distance, sizes, images, batch_size, *,
                       compared, num_permutations, seed):
    """``{"second_measure", "null"}`` of ``local_heads_most_resnet_like`` on ``images [m, ...]`` (whole minibatches
    of ``batch_size``) through the joint ``model``: the within-size correlation of ``subset_distance [S]`` with each
    subset's max Procrustes similarity over ``resnet_names``, and the null of the first subset's max CKA over them
    (``compared`` names that subset)."""
    factors = measure_checks.tap_factors(model, images, subset_names + resnet_names, batch_size)
    subset_factors, resnet_factors = [factors[name] for name in subset_names], [factors[name] for name in resnet_names]
    procrustes = measure_checks.procrustes_pairs(subset_factors, resnet_factors)
    first_gram, resnet_grams = measure_checks.grams(subset_factors[:1]), measure_checks.grams(resnet_factors)

    cka = measure_checks.minibatch_cka(first_gram, resnet_grams, batch_size)

    def first_max_cka(order):
        return float(np.nanmax(cka(order)))

    return {"second_measure": measure_checks.second_measure(
                within_size_correlation(subset_distance, np.nanmax(procrustes, axis=1), sizes), len(images)),
            "null": measure_checks.null_check(
                first_max_cka, len(images), f"max CKA over the lower ResNet layers of {compared} (ResNet examples "
                "shuffled)", measure_checks.minibatch_estimator(batch_size), num_permutations, seed)}


def run(models, data, *, block=0, window_sizes=None, num_resamples=1000, seed=0, strategy=None, progress=False,
        check_examples=measure_checks.DEFAULT_CHECK_EXAMPLES,
        null_permutations=measure_checks.DEFAULT_NULL_PERMUTATIONS):
    """Figure 5: CKA between subsets of the first ViT's ``block`` heads and the first ResNet's lower layers.

    Args:
      models: ``{label: keras.Model}`` holding a ViT and a ResNet (the first of each family is used).
      data: a ``tf.data`` dataset of ``(images [b, S, S, 3], labels [b])`` batches (``b >= 4``), iterated three
        times (head distances, CKA, the checked examples); it must yield the same examples each time.
      block: the ViT encoder block; window_sizes: sizes of the windows of sorted heads (default 1 .. H).
      num_resamples, seed: the bootstrap over CKA minibatches (the seed also draws the null's shuffles);
        strategy: a ``tf.distribute.Strategy`` or None.
      check_examples, null_permutations: the finding's checks beyond CKA (module docstring;
        ``check_examples=0`` skips them).

    Returns a :class:`SectionResult` with arrays ``head_subset_cka {cka [S, R], subset_mean_distance [S],
    head_distance [H], subset_names, resnet_names}``, its table, the finding and Figure 5.
    """
    common.check_models(models)
    vit, resnet = common.first_of_family(models, "vit"), common.first_of_family(models, "resnet")
    if vit is None or resnet is None:
        raise ValueError(f"models: need a ViT and a ResNet, got {', '.join(models)}")
    block_name = f"block{block:02d}"
    heads_tap = f"{block_name}/attn_heads"
    representations.select_layers(models[vit], [heads_tap, f"{block_name}/attn"])
    head_distance = block_head_distances(models[vit], block_name, data, progress)
    order = np.argsort(head_distance, kind="stable")
    subsets = head_windows(order, window_sizes)
    if len(subsets) - len({len(subset) for subset in subsets}) < 2:
        raise ValueError(f"window_sizes: the {len(subsets)} head subset(s) leave fewer than 2 degrees of freedom for "
                         "the within-size correlation; use smaller windows")
    subset_distance = np.array([head_distance[list(heads)].mean() for heads in subsets])
    resnet_names = lower_half_taps(models[resnet])
    model, subset_names, joint_resnet_names = subset_tap_model(models[vit], heads_tap, subsets, models[resnet],
                                                               resnet_names, vit, resnet)
    if progress:
        print(f"CKA of {len(subsets)} head subsets of {vit}:{heads_tap} with {len(resnet_names)} lower {resnet} "
              "layers", flush=True)
    metric, _, _, terms = representations.accumulate_cka(model, data, subset_names, layers_y=joint_resnet_names,
                                                          progress=progress, return_batch_terms=True,
                                                          strategy=strategy)
    cka = np.asarray(metric.result(), dtype=np.float64)
    batch_size = evaluation.batch_size_of(data)
    num_examples = int(len(terms["cross"]) * batch_size)
    sizes = np.array([len(subset) for subset in subsets])

    def correlation(matrix):
        return within_size_correlation(subset_distance, np.nanmax(matrix, axis=1), sizes)

    value, low, high = bootstrap.cka_bootstrap_interval(terms, correlation, num_resamples=num_resamples, seed=seed)
    max_cka, max_low, max_high = (np.array(v) for v in zip(*(
        bootstrap.cka_bootstrap_interval(terms, lambda matrix, s=s: float(np.nanmax(matrix[s])),
                                         num_resamples=min(num_resamples, MAX_CKA_RESAMPLES), seed=seed)
        for s in range(len(subsets)))))
    indices, checks = np.zeros(0, np.int64), measure_checks.NO_CHECKS
    if check_examples:
        indices = measure_checks.check_indices(num_examples, batch_size, check_examples)
        checks = head_subset_checks(model, subset_names, joint_resnet_names, subset_distance, sizes,
                                    measure_checks.take_images(data, indices), batch_size,
                                    compared=f"heads {','.join(map(str, subsets[0]))}",
                                    num_permutations=null_permutations, seed=seed)
    threshold, direction = claims.threshold("local_heads_most_resnet_like")
    finding = findings.Finding(
        key="local_heads_most_resnet_like", section="5",
        claim="Lower ResNet layers are most similar to the local attention heads of the ViT's first block",
        quantity=f"within-window-size Pearson correlation over {len(subsets)} head subsets of {vit} {block_name} "
                 f"between mean attention distance and max CKA with the lower-half {resnet} layers",
        value=value, low=low, high=high, threshold=threshold, direction=direction,
        detail={"vit": vit, "resnet": resnet, "block": block, "num_subsets": len(subsets),
                "num_examples": num_examples,
                "plain_correlation": float(np.corrcoef(subset_distance, np.nanmax(cka, axis=1))[0, 1]),
                "interval": "bootstrap over CKA minibatches, head order and distances fixed"},
        **checks)
    names = [f"heads {','.join(map(str, subset))}" for subset in subsets]
    arrays = {"head_subset_cka": {"cka": cka, "subset_mean_distance": subset_distance,
                                  "head_distance": head_distance, "subset_names": np.array(names),
                                  "resnet_names": np.array(resnet_names)}}
    tables = {"head_subset_cka": {
        "resnet_layers": resnet_names,
        "subsets": [{"heads": list(map(int, subset)), "mean_distance": float(distance),
                     "cka": dict(zip(resnet_names, map(float, row))), "max_cka": float(best),
                     "max_cka_interval": [float(lo), float(hi)]}
                    for subset, distance, row, best, lo, hi in zip(subsets, subset_distance, cka, max_cka, max_low,
                                                                  max_high)]}}
    summary = {
        "vit": vit, "resnet": resnet, "block": block, "num_examples": num_examples,
        "check_examples": int(len(indices)), "null_permutations": null_permutations,
        "head_distance": head_distance, "head_order_local_to_global": order,
        "subsets": [{"heads": list(map(int, heads)), "mean_distance": float(distance), "max_cka": float(best)}
                    for heads, distance, best in zip(subsets, subset_distance, max_cka)],
    }
    figure = _figure(cka, subset_distance, resnet_names, max_cka, max_low, max_high, f"{vit} {block_name}", resnet)
    return SectionResult(experiment="local_global_heads", arrays=arrays, tables=tables, findings=[finding],
                         summary=summary, figures=[figure])


def _figure(cka, subset_distance, resnet_names, max_cka, max_low, max_high, vit_block, resnet):
    order = np.argsort(subset_distance, kind="stable")

    def draw():
        series = {f"max over lower {resnet} layers": (subset_distance[order], max_cka[order], max_low[order],
                                                       max_high[order])}
        for index, name in enumerate(resnet_names):
            if "/" not in name or name.endswith("/+res") or name.startswith("root/"):
                series[f"{resnet} {name}"] = (subset_distance[order], cka[order, index])
        return plotting.line_plot(series, style="points", title=f"{vit_block} head subsets vs lower {resnet} layers",
                                  xlabel="mean attention distance of the subset (pixels)", ylabel="CKA")

    return FigureSpec(
        file="head_subset_cka.png", paper_figure="5",
        caption=(f"CKA between subsets of {vit_block}'s attention heads (windows of heads sorted from local to "
                 f"global, x: the subset's mean attention distance) and the lower {resnet} layers: the maximum "
                 "over those layers with a 95% interval, and each unit output."),
        look_for=("The lower ResNet layers are most similar to the most local heads, and the similarity falls "
                  "monotonically as more global heads are included."), draw=draw)
