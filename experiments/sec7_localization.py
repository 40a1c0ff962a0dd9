"""Section 7 (Figures 9 and 10): do final-layer tokens keep the spatial location of their input patch?

For each model of ``--models`` (default the CLS-token ViT, the GAP ViT and the ResNet) the final block's token
representations (ViT ``blockNN/+mlp`` of the last block, CLS dropped; ResNetV2 the last unit's output
``[n, h, w, c]``, a "token" being all channels at one spatial position; Mixer the last ``+channel_mixing``) are
compared by linear CKA over ``--num-examples`` test images with every non-overlapping ``--patch-size`` input
patch (``vitcnn_tf.analysis.localization.token_patch_cka``). A ResNet position owns the patches its cell of the
image covers (``region_mask``: a 4x4 map on an 8x8 patch grid owns 2x2 patches).

Localization scores: ``own_share``, the mean over tokens of the share of a token's CKA (summed over all patches)
on its own patch(es); ``top1_fraction``, the fraction of tokens whose most similar patch is one of their own; and
``mean_own_rank``, the mean rank of a token's best own patch (``localization_scores``). A map without spatial
information (every token's row the same) scores ``k / P``, ``k / P`` and about ``(P + 1) / (k + 1)`` for ``k``
own patches out of ``P``; ``k / P`` is the threshold of ``cls_vit_tokens_localize``. The findings use
``own_share`` because ``top1_fraction`` saturates at 1 as soon as every own patch is the maximum of its row,
which hides differences in how sharply tokens localize (both are reported).

Intervals: percentile bootstrap over examples. Each resample redraws the examples (the same draw for every
model, so model differences are paired) and recomputes the token-patch CKA maps and scores. A map costs about
``n * T * d * P * q`` multiply-adds (0.3-3 s for 512 examples on 2 cores, the ResNet's 16 x 512-d tokens being
the dearest), so to stay cheap only the models of the findings (CLS and GAP ViT) are resampled
(``--bootstrap-all`` adds the others) and the default is few resamples (``--bootstrap-resamples 20``: the
interval's ends are then interpolated between the extreme replicates of 20; coarse, raise it for tighter ones).
Resampling with replacement duplicates examples, which lowers the effective sample size; linear CKA (biased
HSIC) between unrelated representations grows as the sample shrinks, so replicate scores are biased low and the
interval can sit slightly below the estimate. Differences between models share this bias and mostly cancel.

Outputs in ``--out``:
  token_patch_cka.npz       per model ``<label>/cka_map`` [T, P], ``own_patches`` [T, P], ``token_grid``
  localization_maps.png     Figures 9 / 10: CKA of a corner, an edge and two interior tokens (rows: models) with
                            every input patch, own patch(es) boxed in red
  localization_scores.png   own-patch share and top-1 fraction per model, 95% intervals, no-information level
  summary.json              scores, intervals, chance levels, findings

Findings:
  cls_vit_tokens_localize   own-patch share of the CLS ViT, > its no-information level k / P
  gap_vit_localizes_less    own-patch share of the CLS ViT minus that of the GAP ViT, > 0

    python -m experiments.sec7_localization
    python -m experiments.sec7_localization --models vit.keras gap.keras resnet.keras --num-examples 256
"""

import math
import os
import sys
import time

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from experiments import common
from experiments import sec678_common as shared
from vitcnn_tf import atomic_io, plotting, representations
from vitcnn_tf.analysis import bootstrap, localization
from vitcnn_tf.findings import Finding

DEFAULT_MODELS = ("vit", "vit_gap", "resnet")
# Tokens drawn in the maps, as (row, column) fractions of the token grid: a corner, an edge, two interior tokens.
TOKEN_POSITIONS = ((0.0, 0.0), (0.0, 0.5), (0.375, 0.375), (0.625, 0.75))
SCORES = ("own_share", "top1_fraction", "mean_own_rank")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec7_localization")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=512,
                                default_out=os.path.join("results", "sec7_localization"))
    parser.add_argument("--patch-size", type=int, default=None,
                        help="input patch side in pixels (default: the first ViT's patch size, else image size / 8)")
    parser.add_argument("--bootstrap-resamples", type=int, default=20,
                        help="bootstrap resamples; each recomputes every CKA map (default: %(default)s)")
    parser.add_argument("--bootstrap-all", action="store_true",
                        help="bootstrap every model's scores, not only those of the CLS and GAP ViTs (the findings)")
    return parser


def final_token_layer(model):
    """The tap holding the final block's tokens (see the module docstring)."""
    return shared.block_output_layers(model)[-1]


def token_grid(model, tokens):
    """``(h, w)`` spatial layout of a token tap ``[n, T, d]`` (square grid after the CLS tokens) or map
    ``[n, h, w, c]``."""
    if tokens.ndim == 4:
        return tokens.shape[1], tokens.shape[2]
    side = math.isqrt(tokens.shape[1] - shared.num_prefix_tokens(model))
    return side, side


def grid_tokens(grid):
    """Row-major indices of the ``TOKEN_POSITIONS`` on a ``(h, w)`` grid, and their ``(row, column)``."""
    cells = [(min(int(r * grid[0]), grid[0] - 1), min(int(c * grid[1]), grid[1] - 1)) for r, c in TOKEN_POSITIONS]
    return [row * grid[1] + col for row, col in cells], cells


def extract_tokens(model, images, batch_size):
    """The final-layer tokens of ``model`` for ``images``: ``[n, T, d]`` or ``[n, h, w, c]`` float32."""
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


def scores_of_map(cka_map, own_patches):
    """``localization_scores`` plus ``own_share`` / ``chance_own_share`` (see ``own_patch_share``)."""
    scores = localization.localization_scores(cka_map, own_patches=own_patches)
    scores["own_share"] = own_patch_share(cka_map, own_patches)
    scores["chance_own_share"] = float(np.mean(np.asarray(own_patches).sum(axis=1) / np.shape(own_patches)[1]))
    return scores


def localization_statistics(images, token_sets, setups, patch_size):
    """``[3M]`` scores (each of ``SCORES`` for every one of ``M`` models, score-major) on the given examples:
    ``token_sets`` are the models' token arrays paired with ``images``; ``setups`` their
    ``(num_prefix_tokens, own_patches)``."""
    scores = []
    for tokens, (prefix, own) in zip(token_sets, setups):
        cka_map = localization.token_patch_cka(tokens, images, patch_size, num_prefix_tokens=prefix)
        scores.append(scores_of_map(cka_map, own))
    return np.array([score[name] for name in SCORES for score in scores])


def bootstrap_scores(images, tokens, setups, labels, pair, patch_size, options):
    """Percentile bootstrap over examples of the scores of ``labels`` (one draw of examples per resample, shared
    by all models; every CKA map recomputed): ``{(label, score): interval}``, plus, when ``pair`` is given,
    ``("difference", score)``: the interval of score(pair[0]) - score(pair[1]) (for ``mean_own_rank``, where lower
    is better, score(pair[1]) - score(pair[0])). Empty when ``labels`` is empty."""
    if not labels:
        return {}
    bar = shared.progress_bar(options.bootstrap_resamples + 1, options, unit_name="resample")
    calls = [0]

    def statistic(resampled_images, *token_sets):
        calls[0] += 1
        if bar is not None:
            bar.update(calls[0])
        values = localization_statistics(resampled_images, token_sets, [setups[label] for label in labels],
                                         patch_size)
        if pair is None:
            return values
        first, second = labels.index(pair[0]), labels.index(pair[1])
        differences = [values[s * len(labels) + first] - values[s * len(labels) + second] for s in range(len(SCORES))]
        return np.append(values, [-d if name == "mean_own_rank" else d for d, name in zip(differences, SCORES)])

    estimate, low, high = bootstrap.bootstrap_interval(
        statistic, images, *[tokens[label] for label in labels], num_resamples=options.bootstrap_resamples,
        seed=options.seed)
    intervals = {(label, name): shared.interval(estimate[s * len(labels) + m], low[s * len(labels) + m],
                                                high[s * len(labels) + m])
                 for s, name in enumerate(SCORES) for m, label in enumerate(labels)}
    if pair is not None:
        offset = len(SCORES) * len(labels)
        intervals.update({("difference", name): shared.interval(estimate[offset + s], low[offset + s],
                                                                 high[offset + s])
                          for s, name in enumerate(SCORES)})
    return intervals


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
    figure = plotting.image_grid(panels, titles, ncols=len(TOKEN_POSITIONS), colorbar=True,
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


@shared.single_threaded_blas
def run(options):
    """Maps, scores, intervals and findings; writes the files listed in the module docstring."""
    started = time.perf_counter()
    os.makedirs(options.out, exist_ok=True)
    models = shared.load_models(options.models, options)
    sizes = {common.image_size(model) for model in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"--models must share one input size, got {sizes}")
    size = sizes.pop()
    patch_size = options.patch_size or next(
        (model.config.patch_size for model in models.values() if shared.model_family(model) == "vit"), size // 8)
    if size % patch_size:
        raise ValueError(f"--patch-size={patch_size} does not divide the image size {size}")
    patch_grid = (size // patch_size, size // patch_size)
    images, _ = shared.load_arrays(options, size)

    tokens, grids, setups, maps, scores, arrays = {}, {}, {}, {}, {}, {}
    for label, model in models.items():
        tokens[label] = extract_tokens(model, images, options.batch_size)
        grids[label] = token_grid(model, tokens[label])
        own = localization.region_mask(grids[label], patch_grid)
        prefix = shared.num_prefix_tokens(model) if tokens[label].ndim == 3 else 0
        setups[label] = (prefix, own)
        maps[label] = localization.token_patch_cka(tokens[label], images, patch_size, num_prefix_tokens=prefix)
        scores[label] = scores_of_map(maps[label], own)
        arrays.update({f"{label}/cka_map": maps[label], f"{label}/own_patches": own,
                       f"{label}/token_grid": np.array(grids[label])})

    labels = list(models)
    cls_vit = next((label for label in labels if shared.is_cls_vit(models[label])), None)
    gap_vit = next((label for label in labels if shared.is_gap_vit(models[label])), None)
    compare = cls_vit is not None and gap_vit is not None
    resampled = labels if options.bootstrap_all else [label for label in labels if label in (cls_vit, gap_vit)]
    intervals = bootstrap_scores(images, tokens, setups, resampled, (cls_vit, gap_vit) if compare else None,
                                 patch_size, options)
    summary_models = {}
    for label in labels:
        item = {"layer": final_token_layer(models[label]), "token_grid": list(grids[label]),
                "num_prefix_tokens": setups[label][0], **scores[label]}
        for name in SCORES:
            item[f"{name}_interval"] = intervals.get((label, name))
        summary_models[label] = item

    findings = []
    detail = dict(patch_size=patch_size, patch_grid=list(patch_grid), resamples=options.bootstrap_resamples,
                  interval="percentile bootstrap over examples, every CKA map recomputed per resample")
    if cls_vit is not None:
        item = summary_models[cls_vit]
        share = item["own_share_interval"]
        findings.append(Finding(
            key="cls_vit_tokens_localize", section="7",
            claim="Final-layer tokens of a CLS-token ViT are most similar to their own input patch (they keep "
                  "spatial location)",
            quantity=f"{cls_vit} ({item['layer']}): own-patch CKA share (mean over tokens of CKA with the own "
                     f"patch / CKA summed over all patches); threshold = its level k/P = "
                     f"{item['chance_own_share']:.3g} for a map without spatial information",
            value=share["value"], low=share["low"], high=share["high"], threshold=item["chance_own_share"],
            direction="greater",
            detail=shared.common_detail(
                options, model=cls_vit, top1_fraction=item["top1_fraction_interval"],
                chance_top1_fraction=item["chance_top1_fraction"], mean_own_rank=item["mean_own_rank_interval"],
                chance_mean_own_rank=item["chance_mean_own_rank"], **detail)))
    if compare:
        findings.append(Finding(
            key="gap_vit_localizes_less", section="7",
            claim="A ViT trained with global average pooling instead of a CLS token localizes less",
            quantity=f"own-patch CKA share of {cls_vit} minus that of {gap_vit} (final block tokens)",
            value=intervals[("difference", "own_share")]["value"], low=intervals[("difference", "own_share")]["low"],
            high=intervals[("difference", "own_share")]["high"], threshold=0.0, direction="greater",
            detail=shared.common_detail(
                options, models=[cls_vit, gap_vit], paired=True,
                other_scores={"top1_fraction_difference": intervals[("difference", "top1_fraction")],
                              "mean_own_rank_difference (GAP minus CLS)": intervals[("difference", "mean_own_rank")]},
                **detail)))

    figures = {"localization_maps.png": maps_figure(maps, grids, patch_grid, labels)}
    figures["localization_scores.png"] = scores_figure(summary_models, labels)
    atomic_io.save_npz(os.path.join(options.out, "token_patch_cka.npz"), **arrays)
    for name, figure in figures.items():
        atomic_io.save_figure(figure, os.path.join(options.out, name), dpi=120)
    summary = {"module": "sec7_localization", "num_examples": int(len(images)), "patch_size": patch_size,
               "models": summary_models, "findings": [finding.to_dict() for finding in findings],
               "files": sorted(["token_patch_cka.npz", *figures, common.SUMMARY_FILE]),
               "seconds": time.perf_counter() - started}
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
