"""Section 7 (Figures 9 and 10): do final-layer tokens keep the spatial location of their input patch?

Roles (:func:`run`): ``cls_vit``, a CLS-token ViT (Figure 9); optionally ``gap_vit``, a ViT classifying by global
average pooling (Figure 9's comparison: without it the GAP rows and ``gap_vit_localizes_less`` are skipped, with
the reason in the summary); optionally ``resnet`` (Figure 10).

The final block's token representations of each model (ViT ``blockNN/+mlp`` of the last block, CLS dropped;
ResNetV2 the last unit's output ``[n, h, w, c]``, a "token" being all channels at one spatial position) are
compared by linear CKA over the evaluation images with every non-overlapping ``patch_size`` input patch
(``vitcnn_tf.analysis.localization.token_patch_cka``). A ResNet position owns the patches its cell of the image
covers (``region_mask``: a 4x4 map on an 8x8 patch grid owns 2x2 patches; BiT-R50x1's 7x7 map on ViT-B/16's 14x14
grid owns 2x2 patches).

Localization scores: ``own_share``, the mean over tokens of the share of a token's CKA (summed over all patches)
on its own patch(es); ``top1_fraction``, the fraction of tokens whose most similar patch is one of their own; and
``mean_own_rank``, the mean rank of a token's best own patch (``localization_scores``). A map without spatial
information (every token's row the same) scores ``k / P``, ``k / P`` and about ``(P + 1) / (k + 1)`` for ``k``
own patches out of ``P``; ``cls_vit_tokens_localize`` divides the own-patch share by ``k / P`` (the localization
ratio, 1 without spatial information). The findings use ``own_share`` because ``top1_fraction`` saturates at 1 as
soon as every own patch is the maximum of its row, which hides differences in how sharply tokens localize (both
are reported).

Intervals: percentile bootstrap over examples. Each resample redraws the examples (the same draw for every
model, so model differences are paired) and recomputes the token-patch CKA maps and scores. Only the models of
the findings (CLS and GAP ViT) are resampled unless ``bootstrap_all``. Resampling with replacement duplicates
examples, which lowers the effective sample size; linear CKA (biased HSIC) between unrelated representations
grows as the sample shrinks, so replicate scores are biased low and the interval can sit slightly below the
estimate. Differences between models share this bias and mostly cancel.

Checks beyond CKA (``measure_checks``, on ``check_examples`` evenly spaced images, default 256): both findings also
report the same statistic (localization ratio, relative drop) computed from token-patch Procrustes similarity
maps, and the permutation null (``null_permutations`` shuffles, default 100) of the CKA they compare: the CLS
ViT's mean linear CKA between each token and its own patch(es), with the images shuffled against the tokens.

Arrays: ``token_patch_cka`` (per model ``<label>/cka_map`` [T, P], ``own_patches`` [T, P], ``token_grid``).

Findings (thresholds: ``vitcnn_tf.claims``):
  cls_vit_tokens_localize   localization ratio of the CLS ViT: its own-patch share / (k / P), > 2
  gap_vit_localizes_less    relative drop of the own-patch share from the CLS ViT to the GAP ViT,
                            (CLS share - GAP share) / CLS share, > 0.25
"""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vitcnn_tf import claims, plotting, representations
from vitcnn_tf.analysis import bootstrap, localization
from vitcnn_tf.analysis.tokens import infer_num_prefix_tokens
from vitcnn_tf.findings import Finding
from vitcnn_tf.grids import square_side
from vitcnn_tf.paper import common, evaluation, measure_checks
from vitcnn_tf.paper.result import FigureSpec, SectionResult

# Tokens drawn in the maps, as (row, column) fractions of the token grid: a corner, an edge, two interior tokens.
TOKEN_POSITIONS = ((0.0, 0.0), (0.0, 0.5), (0.375, 0.375), (0.625, 0.75))
SCORES = ("own_share", "top1_fraction", "mean_own_rank")
NO_GAP_REASON = "no GAP ViT given"


def final_token_layer(model):
    """The tap holding the final block's tokens (see the module docstring)."""
    return common.block_output_layers(model)[-1]


def token_grid(model, tokens):
    """``(h, w)`` spatial layout of a token tap ``[n, T, d]`` (square grid after the CLS tokens) or map
    ``[n, h, w, c]``."""
    if tokens.ndim == 4:
        return tokens.shape[1], tokens.shape[2]
    prefix = infer_num_prefix_tokens(model)
    side = square_side(tokens.shape[1] - prefix, f"tokens of shape {tokens.shape} without {prefix} prefix tokens")
    return side, side


def grid_tokens(grid):
    """Row-major indices of the ``TOKEN_POSITIONS`` on a ``(h, w)`` grid, and their ``(row, column)``."""
    cells = [(min(int(r * grid[0]), grid[0] - 1), min(int(c * grid[1]), grid[1] - 1)) for r, c in TOKEN_POSITIONS]
    return [row * grid[1] + col for row, col in cells], cells


def extract_tokens(model, images, batch_size):
    """The final-layer tokens of ``model`` for ``images [n, S, S, 3]``: ``[n, T, d]`` or ``[n, h, w, c]``
    float32."""
    layer = final_token_layer(model)
    return np.concatenate([representations.extract(model, images[start:start + batch_size], [layer])[layer]
                           for start in range(0, len(images), batch_size)])


def own_patch_share(cka_map, own_patches):
    """Mean over tokens of the share of a token's CKA (summed over all patches) that falls on its own patches.

    ``cka_map`` ``[T, P]`` (>= 0; all-NaN rows of constant tokens are left out), ``own_patches`` ``[T, P]`` bool.
    A map without spatial information (every token's row the same) gives exactly ``k / P`` when every patch is
    owned by equally many tokens; a perfectly localized map gives 1. Unlike the top-1 fraction it does not
    saturate once the own patch is the maximum, so it also measures how sharp the localization is.
    """
    cka_map, own_patches = np.asarray(cka_map, dtype=np.float64), np.asarray(own_patches, dtype=bool)
    rows = ~np.isnan(cka_map).all(axis=1)
    cka_map, own_patches = cka_map[rows], own_patches[rows]
    totals = cka_map.sum(axis=1)
    if not len(cka_map) or np.any(~np.isfinite(totals)) or np.any(totals <= 0):
        raise ValueError("cka_map: every scored token needs finite CKA values with a positive sum over patches")
    return float(np.mean(np.where(own_patches, cka_map, 0.0).sum(axis=1) / totals))


def chance_own_share(own_patches):
    """The own-patch share ``k / P`` of a map without spatial information, for the ``[T, P]`` own-patch mask
    (mean over tokens of own patches / all patches)."""
    return float(np.mean(np.asarray(own_patches).sum(axis=1) / np.shape(own_patches)[1]))


def relative_drop(share, other_share):
    """``(share - other_share) / share``: the fraction of ``share`` that ``other_share`` loses."""
    return (share - other_share) / share


def scores_of_map(cka_map, own_patches):
    """``localization_scores`` plus ``own_share`` / ``chance_own_share`` (see ``own_patch_share``) of a
    ``[T, P]`` map and its ``[T, P]`` own-patch mask."""
    scores = localization.localization_scores(cka_map, own_patches=own_patches)
    scores["own_share"] = own_patch_share(cka_map, own_patches)
    scores["chance_own_share"] = chance_own_share(own_patches)
    return scores


def bootstrap_scores(images, tokens, setups, labels, pair, patch_size, *, resamples, seed, progress):
    """Percentile bootstrap over examples of the scores of ``labels`` (one draw of examples per resample, shared
    by all models; every CKA map recomputed, ``localization.ResampledTokenPatchCKA``): ``{(label, score):
    interval}``, plus, when ``pair`` is given,
    ``("difference", score)``: the interval of score(pair[0]) - score(pair[1]) (for ``mean_own_rank``, where lower
    is better, score(pair[1]) - score(pair[0])), and ``("relative_drop", "own_share")``: that of the own-patch
    share's ``relative_drop`` from pair[0] to pair[1]. Empty when ``labels`` is empty."""
    if not labels:
        return {}
    bar = evaluation.progress_bar(resamples + 1, progress, unit_name="resample")
    calls = [0]
    resampled_maps = localization.ResampledTokenPatchCKA([tokens[label] for label in labels], images, patch_size,
                                                         [setups[label][0] for label in labels])

    def statistic(indices):
        calls[0] += 1
        if bar is not None:
            bar.update(calls[0])
        scores = [scores_of_map(cka_map, setups[label][1]) for cka_map, label in zip(resampled_maps(indices), labels)]
        values = np.array([score[name] for name in SCORES for score in scores])
        if pair is None:
            return values
        first, second = labels.index(pair[0]), labels.index(pair[1])
        differences = [values[s * len(labels) + first] - values[s * len(labels) + second] for s in range(len(SCORES))]
        share = SCORES.index("own_share") * len(labels)
        return np.append(values, [-d if name == "mean_own_rank" else d for d, name in zip(differences, SCORES)]
                         + [relative_drop(values[share + first], values[share + second])])

    # resampling the example indices draws what resampling the images and tokens together would
    estimate, low, high = bootstrap.bootstrap_interval(statistic, np.arange(len(images)), num_resamples=resamples,
                                                       seed=seed)
    intervals = {(label, name): evaluation.interval(estimate[s * len(labels) + m], low[s * len(labels) + m],
                                                    high[s * len(labels) + m])
                 for s, name in enumerate(SCORES) for m, label in enumerate(labels)}
    if pair is not None:
        offset = len(SCORES) * len(labels)
        intervals.update({("difference", name): evaluation.interval(estimate[offset + s], low[offset + s],
                                                                     high[offset + s])
                          for s, name in enumerate(SCORES)})
        intervals[("relative_drop", "own_share")] = evaluation.interval(estimate[-1], low[-1], high[-1])
    return intervals


def localization_checks(images, tokens, setups, cls_label, gap_label, patch_size, *, num_permutations, seed):
    """``{finding key: {"second_measure", "null"}}`` of the findings on the checked ``images [m, ...]`` and their
    ``tokens`` (``{label: [m, T, d]}``): the findings' statistics (localization ratio, relative drop) from the
    own-patch shares of token-patch Procrustes maps, and the null of the CLS ViT's own-patch linear CKA."""
    patches = localization.image_patches(images, patch_size)
    patch_factors = measure_checks.array_factors(patches.transpose(1, 0, 2))
    shares = {}
    for label in [label for label in (cls_label, gap_label) if label is not None]:
        prefix, own = setups[label]
        token_factors = measure_checks.array_factors(tokens[label][:, prefix:].transpose(1, 0, 2))
        shares[label] = own_patch_share(measure_checks.procrustes_pairs(token_factors, patch_factors), own)
        if label == cls_label:
            cls_token_factors, own_pairs = token_factors, np.argwhere(own)
    own_pair_cka = measure_checks.paired_linear_cka([cls_token_factors[token] for token in own_pairs[:, 0]],
                                                    [patch_factors[patch] for patch in own_pairs[:, 1]])

    def own_patch_cka(order):
        values = own_pair_cka(order)
        return float(np.mean([values[own_pairs[:, 0] == token].mean() for token in np.unique(own_pairs[:, 0])]))

    null = measure_checks.null_check(
        own_patch_cka, len(images), f"{cls_label}: mean over tokens of the linear CKA with their own patch(es) "
        "(images shuffled against the tokens)", "linear CKA (biased HSIC) over the checked examples",
        num_permutations, seed)
    ratio = shares[cls_label] / chance_own_share(setups[cls_label][1])
    checks = {"cls_vit_tokens_localize": {
        "second_measure": measure_checks.second_measure(ratio, len(images)), "null": null}}
    if gap_label is not None:
        checks["gap_vit_localizes_less"] = {
            "second_measure": measure_checks.second_measure(relative_drop(shares[cls_label], shares[gap_label]),
                                                            len(images)),
            "null": null}
    return checks


def maps_figure(maps, grids, patch_grid, labels):
    """Figures 9 / 10: per model (row) the CKA maps of the ``TOKEN_POSITIONS`` tokens over the patch grid."""
    panels, titles, boxes = [], [], []
    for label in labels:
        own = localization.region_mask(grids[label], patch_grid)
        indices, cells = grid_tokens(grids[label])
        for index, cell in zip(indices, cells):
            panels.append(maps[label][index].reshape(patch_grid))
            titles.append(f"{label}: token {cell}")
            boxes.append(np.argwhere(own[index].reshape(patch_grid)))
    figure = plotting.image_grid(panels, titles, ncols=len(TOKEN_POSITIONS), colorbar=True, panel_size=2.4,
                                 title="CKA between a final-layer token and each input patch (own patches in red)")
    for axes, cells in zip(figure.axes[:len(panels)], boxes):
        (top, left), (bottom, right) = cells.min(axis=0), cells.max(axis=0)
        axes.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1, fill=False,
                                 edgecolor="red", linewidth=1.5))
    return figure


def scores_figure(summary_models, labels):
    """Own-patch share and top-1 fraction per model: points at the estimate, segments from the interval's low to
    high end for bootstrapped models (a percentile interval need not contain the estimate), grey bars at the
    no-information level."""
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(labels), dtype=np.float64)
    for offset, marker, (name, text) in zip((-0.12, 0.12), ("o", "s"), (("own_share", "own-patch CKA share"),
                                                                        ("top1_fraction", "top-1 own-patch fraction"))):
        (points,) = axes.plot(positions + offset, [summary_models[label][name] for label in labels], marker,
                              label=f"{text} (95% interval)")
        bootstrapped = [m for m, label in enumerate(labels) if summary_models[label][f"{name}_interval"]]
        axes.vlines(positions[bootstrapped] + offset,
                    [summary_models[labels[m]][f"{name}_interval"]["low"] for m in bootstrapped],
                    [summary_models[labels[m]][f"{name}_interval"]["high"] for m in bootstrapped],
                    color=points.get_color())
    axes.hlines([summary_models[label]["chance_own_share"] for label in labels], positions - 0.3, positions + 0.3,
                color="grey", linestyle="--", label="no spatial information: k / P")
    axes.set_xticks(positions, labels)
    axes.set_ylim(0.0, 1.05)
    axes.set_ylabel("score")
    axes.set_title("Localization of final-layer tokens")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


@evaluation.single_threaded_blas
def run(cls_vit, gap_vit=None, resnet=None, *, data, patch_size=None, bootstrap_resamples=20, bootstrap_all=False,
        seed=0, progress=False, context=None, check_examples=measure_checks.DEFAULT_CHECK_EXAMPLES,
        null_permutations=measure_checks.DEFAULT_NULL_PERMUTATIONS):
    """Section 7 localization (see the module docstring for the roles, scores and intervals).

    Args:
      cls_vit: a CLS-token ViT, a ``keras.Model`` (labelled by its ``name``) or a ``(label, model)`` pair.
      gap_vit: optional GAP ViT (model or pair); without it its rows of Figure 9 and ``gap_vit_localizes_less``
        are skipped.
      resnet: optional ResNetV2 (model or pair), Figure 10.
      data: ``tf.data`` dataset of ``(images [b, S, S, 3], labels [b])`` batches; ``S`` shared by the models.
      patch_size: input patch side in pixels (default: the CLS ViT's patch size); must divide ``S``.
      bootstrap_resamples, seed: the bootstrap over examples (each resample recomputes every CKA map).
      bootstrap_all: also resample the ResNet's scores (not used by a finding).
      progress: show progress bars.
      context: optional JSON-able dict recorded in every finding's detail (e.g. ``{"dataset": "imagenet2012"}``).
      check_examples, null_permutations: the findings' checks (module docstring;
        ``check_examples=0`` skips them).

    Returns a :class:`SectionResult`: array group ``token_patch_cka``, the maps (Figures 9 / 10) and the scores,
    the findings; ``summary["skipped"]`` names what was skipped and why.
    """
    models, cls_label, gap_label = common.token_role_models(cls_vit, gap_vit, resnet)
    cls_model, size = models[cls_label], common.shared_image_size(models)
    patch_size = patch_size or cls_model.config.patch_size
    if size % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the image size {size}")
    patch_grid = (size // patch_size, size // patch_size)
    images, _, batch_size = evaluation.dataset_arrays(data)

    tokens, grids, setups, maps, scores, arrays = {}, {}, {}, {}, {}, {}
    for label, model in models.items():
        tokens[label] = extract_tokens(model, images, batch_size)
        grids[label] = token_grid(model, tokens[label])
        own = localization.region_mask(grids[label], patch_grid)
        prefix = infer_num_prefix_tokens(model) if tokens[label].ndim == 3 else 0
        setups[label] = (prefix, own)
        maps[label] = localization.token_patch_cka(tokens[label], images, patch_size, num_prefix_tokens=prefix)
        scores[label] = scores_of_map(maps[label], own)
        arrays.update({f"{label}/cka_map": maps[label], f"{label}/own_patches": own,
                       f"{label}/token_grid": np.array(grids[label])})

    labels = list(models)
    compare = gap_label is not None
    resampled = labels if bootstrap_all else [label for label in labels if label in (cls_label, gap_label)]
    intervals = bootstrap_scores(images, tokens, setups, resampled, (cls_label, gap_label) if compare else None,
                                 patch_size, resamples=bootstrap_resamples, seed=seed, progress=progress)
    summary_models = {}
    for label in labels:
        item = {"layer": final_token_layer(models[label]), "token_grid": list(grids[label]),
                "num_prefix_tokens": setups[label][0], **scores[label]}
        for name in SCORES:
            item[f"{name}_interval"] = intervals.get((label, name))
        summary_models[label] = item

    checks = {key: measure_checks.NO_CHECKS for key in ("cls_vit_tokens_localize", "gap_vit_localizes_less")}
    if check_examples:
        checked = measure_checks.check_indices(len(images), batch_size, check_examples)
        checks = localization_checks(images[checked], {label: values[checked] for label, values in tokens.items()},
                                     setups, cls_label, gap_label, patch_size, num_permutations=null_permutations,
                                     seed=seed)
    findings = []
    detail = dict(patch_size=patch_size, patch_grid=list(patch_grid), resamples=bootstrap_resamples,
                  interval="percentile bootstrap over examples, every CKA map recomputed per resample")
    item = summary_models[cls_label]
    share, chance = item["own_share_interval"], item["chance_own_share"]
    threshold, direction = claims.threshold("cls_vit_tokens_localize")
    findings.append(Finding(
        key="cls_vit_tokens_localize", section="7",
        claim="Final-layer tokens of a CLS-token ViT are most similar to their own input patch (they keep "
              "spatial location)",
        quantity=f"{cls_label} ({item['layer']}): localization ratio, the own-patch CKA share (mean over tokens of "
                 f"CKA with the own patch / CKA summed over all patches) divided by its level k/P = {chance:.3g} "
                 "for a map without spatial information (1 = no spatial information)",
        value=share["value"] / chance, low=share["low"] / chance, high=share["high"] / chance, threshold=threshold,
        direction=direction,
        detail=evaluation.finding_detail(
            context, len(images), batch_size, seed, model=cls_label, own_share=share, chance_own_share=chance,
            top1_fraction=item["top1_fraction_interval"],
            chance_top1_fraction=item["chance_top1_fraction"], mean_own_rank=item["mean_own_rank_interval"],
            chance_mean_own_rank=item["chance_mean_own_rank"], **detail),
        **checks["cls_vit_tokens_localize"]))
    skipped = []
    if compare:
        drop = intervals[("relative_drop", "own_share")]
        threshold, direction = claims.threshold("gap_vit_localizes_less")
        findings.append(Finding(
            key="gap_vit_localizes_less", section="7",
            claim="A ViT trained with global average pooling instead of a CLS token localizes less",
            quantity=f"relative drop of the own-patch CKA share (final block tokens) from {cls_label} to {gap_label}: "
                     f"({cls_label} share - {gap_label} share) / {cls_label} share",
            value=drop["value"], low=drop["low"], high=drop["high"], threshold=threshold, direction=direction,
            detail=evaluation.finding_detail(
                context, len(images), batch_size, seed, models=[cls_label, gap_label], paired=True,
                own_shares={label: summary_models[label]["own_share_interval"] for label in (cls_label, gap_label)},
                other_scores={"own_share_difference": intervals[("difference", "own_share")],
                              "top1_fraction_difference": intervals[("difference", "top1_fraction")],
                              "mean_own_rank_difference (GAP minus CLS)": intervals[("difference", "mean_own_rank")]},
                **detail),
            **checks["gap_vit_localizes_less"]))
    else:
        skipped.append({"paper_figure": "9", "part": "GAP ViT maps and gap_vit_localizes_less",
                        "reason": NO_GAP_REASON})

    figures = [
        FigureSpec(
            file="localization_maps.png", paper_figure="9, 10",
            caption="Figures 9 and 10: linear CKA between a final-layer token (a corner, an edge and two interior "
                    "tokens; one row per model) and every input patch; the token's own patch(es) boxed in red.",
            look_for="The CLS ViT's tokens are most similar to their own patch (a sharp peak in the red box); the "
                     "GAP ViT's tokens are much less localized; the ResNet's positions localize to their region.",
            draw=lambda: maps_figure(maps, grids, patch_grid, labels)),
        FigureSpec(
            file="localization_scores.png", paper_figure="",
            caption="Localization scores of every model: the own-patch share of CKA and the top-1 own-patch "
                    "fraction, with 95% bootstrap intervals and the no-information level k / P.",
            look_for="The CLS ViT scores far above the no-information level, and above the GAP ViT.",
            draw=lambda: scores_figure(summary_models, labels)),
    ]
    summary = {"num_examples": int(len(images)), "patch_size": patch_size, "models": summary_models,
               "skipped": skipped}
    return SectionResult(experiment="localization", arrays={"token_patch_cka": arrays}, findings=findings,
                         summary=summary, figures=figures)
