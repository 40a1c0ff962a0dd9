"""Section 4, Figures 1 and 2 (and Section H): CKA heatmaps between the layers within each model and across models.

Every kept tap of every model is streamed over the evaluation batches into one ``MinibatchCKA`` (Nguyen et al.
2020: unbiased HSIC summed over minibatches; several shuffled passes may be given). All models run side by side on
the same minibatches (``representations.joint_tap_model``), so each tap's Gram matrix is computed once per minibatch
and every within- and cross-model map comes from the same examples; the findings' 95% intervals resample those
minibatches (``analysis.bootstrap.cka_bootstrap_interval``), jointly for every map.

Taps (``taps=``):

* ``"all"`` (the CPU zoo's setting): every tap of ``representations.layer_names`` except those matching
  ``exclude`` (default the attention probabilities ``*/attn`` and ``logits``): norms, MLP hidden layers, per-head
  attention outputs and both residual branches are kept.
* ``"blocks"`` (the paper's heatmaps at 224 px): the block sublayers and the residual stream,
  ``common.residual_stream_taps``: the ViT's ``embedding`` and per block ``sa``, ``+sa``, ``mlp``, ``+mlp``; the
  ResNet's ``skip``, ``branch``, ``+res`` per unit; the Mixer's mixing sublayers and their residual sums
  (``exclude`` still applies). ViT-B/16 49 taps, ViT-L/16 97, BiT-R50x1 48, Mixer-B/16 49, against 493 taps in
  all for ``"all"``.

Memory: the joint forward pass of every model runs on one minibatch at once, so the peak grows with the minibatch.
Measured peak RSS for ViT-B/16, ViT-L/16, BiT-R50x1 and Mixer-B/16 at 224 px (random weights, ``taps="blocks"``,
243 taps; 2-core AMD EPYC, AVX2): 4.6 GiB at minibatch 8 and 6.3 GiB at minibatch 16, of which 2.7 GiB are the
models and the data; about 0.21 GiB more per example, so ~9.7 GiB at minibatch 32 (fits 16 GB) and ~29 GiB at 125
(does not). ``"all"`` (493 taps) costs about 0.26 GiB per example (9.0 GiB at 16, 13.2 GiB at 32). Use
``taps="blocks"`` and minibatches of 32 for the four paper models.

Findings (with a ViT and a ResNet among the models):

* ``vit_uniform_similarity``: mean CKA between the lower-half and the upper-half block outputs (residual sums),
  ViT minus ResNet; claim > 0.2 (thresholds from ``vitcnn_tf.claims``).
* ``resnet_lower_half_matches_vit_lowest_quarter``: for each tap in the lower half of the ResNet's kept taps, the
  normalised depth (0 = first, 1 = last kept ViT tap) of the most similar ViT tap, averaged; claim < 0.1875 (a
  proportional correspondence gives 0.25; the paper's "lowest quarter" about 0.125; 0.1875 is halfway).

Checks beyond CKA (``measure_checks``): both findings also report the same statistic under orthogonal Procrustes
similarity and the permutation null of the CKA they compare (the ViT's mean CKA between lower- and upper-half block
outputs; the mean over the lower-half ResNet layers of their largest CKA with a ViT layer), on ``check_examples``
evenly spaced examples (default 256) with ``null_permutations`` (default 100) shuffles.

Measures of the maps (``measure=``): ``"cka"`` (default) streams every example as above. ``"procrustes"`` and
``"mutual_knn"`` (k = 10) need every example of a tap at once, so their maps use the ``check_examples`` subset
(the findings stay CKA's): each tap is extracted for the subset, a group of taps of at most 256 MB of float32
activations at a time, and reduced to its Procrustes factor (``8 n min(n, d)`` bytes, 0.5 MB at n = 256) or its
``[n, k]`` neighbour indices; the maps come from those. Cost: one forward pass over the subset per group of taps,
an ``[n, n]`` eigendecomposition per tap and, for Procrustes, one ``[r, r]`` singular value decomposition per pair
of taps (``r = min(n, d)``).

Seed replicates (other trained seeds of a model) join the joint CKA; each gets a ``seeds_<a>_<b>`` map and the
findings become means over the seed pairs with two-level (seeds, minibatches) bootstrap intervals.
"""

import dataclasses
import re

import numpy as np

from vitcnn_tf import claims, findings, plotting, representations
from vitcnn_tf.analysis import bootstrap
from vitcnn_tf.metrics.neighbours import layer_neighbours, mutual_knn_from_neighbours
from vitcnn_tf.paper import common, evaluation, measure_checks
from vitcnn_tf.paper.result import FigureSpec, SectionResult

DEFAULT_EXCLUDE = r".*/attn|logits"
TAP_CHOICES = ("all", "blocks")
MEASURES = {"cka": "CKA", "procrustes": "Procrustes similarity", "mutual_knn": "mutual 10-NN alignment"}
NUM_NEIGHBOURS = 10

WITHIN_CAPTION = ("CKA between every pair of kept layers of {label} (x and y: layers from input to output, input at "
                  "the bottom left).")
WITHIN_LOOK_FOR = ("A ViT has a uniform, grid-like similarity structure with high similarity between its lower and "
                   "higher layers; a ResNet shows clear stages, with low similarity between lower and higher layers "
                   "(Section H compares an MLP-Mixer in the same way).")
CROSS_CAPTION = "CKA between every layer of {rows} (rows) and every layer of {cols} (columns)."
CROSS_LOOK_FOR = ("Between a ViT and a ResNet: the lower half of the ResNet's layers is similar to about the lowest "
                  "quarter of the ViT's layers, the upper half to roughly the next third, and the highest ViT "
                  "layers are dissimilar to every ResNet layer (Section H compares an MLP-Mixer in the same way).")
SEEDS_CAPTION = "CKA between the layers of two trained seeds of one recipe, {rows} (rows) and {cols} (columns)."
SEEDS_LOOK_FOR = "A strong diagonal: corresponding layers of two seeds learn similar representations (ours)."


def kept_taps(model, taps="all", exclude=DEFAULT_EXCLUDE):
    """Tap names of ``model`` in forward order for ``taps`` (``"all"`` or ``"blocks"``, see the module docstring),
    without those whose whole name matches the regular expression ``exclude`` ('' or None: none excluded)."""
    if taps not in TAP_CHOICES:
        raise ValueError(f"taps: expected one of {TAP_CHOICES}, got {taps!r}")
    names = representations.layer_names(model) if taps == "all" else common.residual_stream_taps(model)
    if exclude:
        pattern = re.compile(exclude)
        names = [name for name in names if not pattern.fullmatch(name)]
    if not names:
        raise ValueError(f"exclude={exclude!r} leaves no {taps!r} tap of model {model.name!r}")
    return names


def joint_cka(models, layers, data, *, passes=None, strategy=None, progress=False):
    """CKA between all ``layers`` (``{label: tap names}``) of all ``models`` on the same minibatches.

    ``data``: see ``common.data_passes``. Returns ``(matrix [L, L] float64, joint names "<label>:<tap>", batch terms
    over every pass (``cross [B, L, L]``, ``self_x``, ``self_y``), batches per pass, examples per batch)``.
    """
    # keyed by position, so that the same model objects (vitcnn_tf.model_specs.ModelPool) under other labels give
    # the same joint model, whose compiled extraction is then reused
    labels = list(models)
    joint = representations.joint_tap_model({str(index): models[label] for index, label in enumerate(labels)},
                                            {str(index): layers[label] for index, label in enumerate(labels)})
    metric, all_terms, batch_size = None, [], None
    pass_data = evaluation.data_passes(data, passes)
    for index, make in enumerate(pass_data):
        dataset = make()
        batch_size = batch_size or evaluation.batch_size_of(dataset)
        if progress:
            print(f"CKA pass {index + 1}/{len(pass_data)}: {len(joint.taps)} taps of {len(models)} model(s)",
                  flush=True)
        metric, names, _, terms = representations.accumulate_cka(joint, dataset, metric=metric, progress=progress,
                                                                  return_batch_terms=True, strategy=strategy)
        all_terms.append(terms)
    counts = {len(terms["cross"]) for terms in all_terms}
    if len(counts) != 1:
        raise ValueError(f"data: the passes hold different numbers of minibatches {sorted(counts)}")
    terms = {key: np.concatenate([t[key] for t in all_terms]) for key in ("cross", "self_x", "self_y")}
    names = [f"{labels[int(index)]}:{tap}" for index, tap in map(representations.split_tap_name, names)]
    return np.asarray(metric.result(), dtype=np.float64), names, terms, counts.pop(), batch_size


def lower_upper_similarity(matrix, indices):
    """Mean CKA between the lower half and the upper half of the layers ``indices`` of a within-model ``matrix``."""
    half = len(indices) // 2
    lower, upper = indices[:half], indices[half:]
    return float(np.mean(matrix[np.ix_(lower, upper)]))


def most_similar_depth(cross, rows):
    """Mean normalised depth (0..1 over the columns) of the most similar column for each row in ``rows`` of a
    ``[R, C]`` cross-model map."""
    best = np.nanargmax(cross[rows], axis=1)
    return float(np.mean(common.normalised_depths(cross.shape[1], by_division=True)[best]))


def finding_seed_pairs(models, replicates):
    """``[(ViT label, ResNet label), ...]``: the first ViT and ResNet of ``models`` and their seed replicates paired
    in order (as many pairs as both have seeds); empty without a ViT and a ResNet."""
    vit, resnet = common.first_of_family(models, "vit"), common.first_of_family(models, "resnet")
    if vit is None or resnet is None:
        return []
    return [(vit, resnet)] + list(zip(replicates.get(vit, []), replicates.get(resnet, [])))


def structure_checks(models, seed_pairs, layers, images, batch_size, *, num_permutations, seed):
    """``{finding key: {"second_measure", "null"}}`` of the two findings (module docstring) on ``images [m, ...]``
    (whole minibatches of ``batch_size``), for the ``seed_pairs`` of :func:`finding_seed_pairs`."""
    vit_labels, resnet_labels = [pair[0] for pair in seed_pairs], [pair[1] for pair in seed_pairs]
    outputs = {label: common.block_output_indices(models[label], layers[label]) for label in vit_labels
               + resnet_labels}
    lower = list(range(len(layers[resnet_labels[0]]) // 2))
    needed = {label: layers[label] for label in vit_labels}
    needed.update({label: [layers[label][i] for i in sorted(set(lower) | set(outputs[label]))]
                   for label in resnet_labels})
    factors = {label: measure_checks.tap_factors(models[label], images, taps, batch_size)
               for label, taps in needed.items()}

    def of(label, indices):
        return [factors[label][layers[label][i]] for i in indices]

    def uniform_procrustes(vit, resnet):
        return (lower_upper_similarity(measure_checks.procrustes_pairs(of(vit, outputs[vit]), of(vit, outputs[vit])),
                                       list(range(len(outputs[vit]))))
                - lower_upper_similarity(measure_checks.procrustes_pairs(of(resnet, outputs[resnet]),
                                                                         of(resnet, outputs[resnet])),
                                         list(range(len(outputs[resnet])))))

    def depth_procrustes(vit, resnet):
        cross = measure_checks.procrustes_pairs(of(resnet, lower), of(vit, range(len(layers[vit]))))
        return most_similar_depth(cross, list(range(len(lower))))

    grams = {label: measure_checks.grams(of(label, outputs[label])) for label in vit_labels}
    vit_grams = {label: measure_checks.grams(of(label, range(len(layers[label])))) for label in vit_labels}
    resnet_grams = {label: measure_checks.grams(of(label, lower)) for label in resnet_labels}

    lower_upper = [measure_checks.minibatch_cka(grams[label][:len(outputs[label]) // 2],
                                                grams[label][len(outputs[label]) // 2:], batch_size)
                   for label in vit_labels]
    resnet_vit = [measure_checks.minibatch_cka(resnet_grams[resnet], vit_grams[vit], batch_size)
                  for vit, resnet in seed_pairs]

    def vit_lower_upper(order):
        return float(np.mean([np.mean(cka(order)) for cka in lower_upper]))

    def best_vit_match(order):
        return float(np.mean([np.mean(np.nanmax(cka(order), axis=1)) for cka in resnet_vit]))

    count, seeds_text = len(images), (f", mean over {len(seed_pairs)} seeds" if len(seed_pairs) > 1 else "")
    estimator = measure_checks.minibatch_estimator(batch_size)
    return {
        "vit_uniform_similarity": {
            "second_measure": measure_checks.second_measure(
                np.mean([uniform_procrustes(*pair) for pair in seed_pairs]), count),
            "null": measure_checks.null_check(
                vit_lower_upper, count, "the ViT's mean CKA between lower-half and upper-half block outputs (upper "
                f"half shuffled){seeds_text}", estimator, num_permutations, seed)},
        "resnet_lower_half_matches_vit_lowest_quarter": {
            "second_measure": measure_checks.second_measure(
                np.mean([depth_procrustes(*pair) for pair in seed_pairs]), count),
            "null": measure_checks.null_check(
                best_vit_match, count, "mean over the lower-half ResNet layers of the largest CKA with any ViT layer "
                f"(ViT examples shuffled){seeds_text}", estimator, num_permutations, seed)},
    }


def measure_maps(models, layers, images, batch_size, measure):
    """``{label: {"factors" or "neighbours": per-tap reductions}}`` of ``images`` for a ``measure`` other than
    CKA, and ``pair(rows label, cols label) -> [La, Lb]`` map."""
    if measure == "procrustes":
        factors = {label: measure_checks.tap_factors(model, images, layers[label], batch_size)
                   for label, model in models.items()}
        return lambda rows, cols: measure_checks.procrustes_pairs([factors[rows][t] for t in layers[rows]],
                                                                  [factors[cols][t] for t in layers[cols]])

    def neighbours_of(activations):
        indices, zero = layer_neighbours([activations], NUM_NEIGHBOURS, "activations")
        return indices.numpy()[0], bool(zero[0])

    found = {label: measure_checks.reduce_taps(model, images, layers[label], batch_size, neighbours_of)
             for label, model in models.items()}

    def pair(rows, cols):
        indices = [np.stack([found[label][t][0] for t in layers[label]]) for label in (rows, cols)]
        zero = [np.array([found[label][t][1] for t in layers[label]]) for label in (rows, cols)]
        matrix = mutual_knn_from_neighbours(*indices)
        matrix[zero[0], :] = np.nan
        matrix[:, zero[1]] = np.nan
        return matrix

    return pair


def structure_findings(models, replicates, layers, slices, terms, batches_per_pass, *, batch_size, passes,
                       num_resamples=1000, seed=0):
    """The two Section 4 findings (empty without a ViT and a ResNet among ``models``).

    ``models``: every model of the joint CKA ``{label: keras.Model}``; ``replicates``: ``{label: [labels of other
    seeds]}``; ``layers``: kept taps per label; ``slices``: rows per label in the joint matrix; ``terms``: the batch
    terms of ``joint_cka``. With ``k`` replicates of both the ViT and the ResNet the findings average over ``k + 1``
    seed pairs and their intervals resample seeds and minibatches; otherwise minibatches only.
    """
    seed_pairs = finding_seed_pairs(models, replicates)
    if not seed_pairs:
        return []
    vit, resnet = seed_pairs[0]
    num_seeds = len(seed_pairs)
    seed_labels = [label for pair in seed_pairs for label in pair]
    outputs = {label: common.block_output_indices(models[label], layers[label]) for label in seed_labels}
    for label, indices in outputs.items():
        if len(indices) < 2:
            raise ValueError(f"model {label!r}: need at least 2 kept block-output (residual-sum) taps for the lower "
                             f"vs upper half similarity, found {len(indices)}; check exclude")
    interval = dict(num_resamples=num_resamples, seed=seed, batches_per_resample=batches_per_pass)

    def uniformity(matrix, vit_label, resnet_label):
        return (lower_upper_similarity(matrix[slices[vit_label], slices[vit_label]], outputs[vit_label])
                - lower_upper_similarity(matrix[slices[resnet_label], slices[resnet_label]], outputs[resnet_label]))

    def resnet_to_vit_depth(matrix, vit_label, resnet_label):
        lower_resnet = list(range(len(layers[resnet_label]) // 2))
        return most_similar_depth(matrix[slices[resnet_label], slices[vit_label]], lower_resnet)

    full = bootstrap.cka_from_batch_terms(terms)
    lower_resnet = list(range(len(layers[resnet]) // 2))
    upper_resnet = list(range(len(layers[resnet]) // 2, len(layers[resnet])))
    common_detail = {"vit": vit, "resnet": resnet, "num_examples": batches_per_pass * batch_size,
                     "passes": passes, "minibatches": int(len(terms["cross"])),
                     "seed_pairs": [list(pair) for pair in seed_pairs],
                     "interval": ("two-level bootstrap over the seed pairs and minibatches (one pass worth per "
                                  "resample)" if num_seeds > 1 else
                                  "bootstrap over minibatches (one pass worth per resample)")}
    threshold, direction = claims.threshold("vit_uniform_similarity")
    uniform = findings.Finding(
        key="vit_uniform_similarity", section="4",
        claim="ViT has more uniform representations: its lower and higher layers are more similar than the ResNet's",
        quantity="mean CKA between lower-half and upper-half block outputs (residual sums), ViT minus ResNet"
                 + (f", mean over {num_seeds} seeds" if num_seeds > 1 else ""),
        value=np.nan, low=np.nan, high=np.nan, threshold=threshold, direction=direction,
        detail={**common_detail,
                "vit_lower_upper_cka": lower_upper_similarity(full[slices[vit], slices[vit]], outputs[vit]),
                "resnet_lower_upper_cka": lower_upper_similarity(full[slices[resnet], slices[resnet]],
                                                                 outputs[resnet]),
                "per_seed": [uniformity(full, *pair) for pair in seed_pairs],
                "vit_block_outputs": [layers[vit][i] for i in outputs[vit]],
                "resnet_block_outputs": [layers[resnet][i] for i in outputs[resnet]]})
    threshold, direction = claims.threshold("resnet_lower_half_matches_vit_lowest_quarter")
    depth = findings.Finding(
        key="resnet_lower_half_matches_vit_lowest_quarter", section="4",
        claim="The lower half of the ResNet's layers is most similar to about the lowest quarter of the ViT's layers",
        quantity="mean normalised depth (0..1) of the most similar ViT layer over the lower half of the ResNet layers "
                 "(0.25 = proportional correspondence, ~0.125 = lowest quarter)"
                 + (f", mean over {num_seeds} seeds" if num_seeds > 1 else ""),
        value=np.nan, low=np.nan, high=np.nan, threshold=threshold, direction=direction,
        detail={**common_detail, "resnet_lower_half": [layers[resnet][i] for i in lower_resnet],
                "per_seed": [resnet_to_vit_depth(full, *pair) for pair in seed_pairs],
                "upper_half_mean_vit_depth": most_similar_depth(full[slices[resnet], slices[vit]], upper_resnet),
                "best_vit_layer": {layers[resnet][i]: layers[vit][int(np.nanargmax(full[slices[resnet],
                                                                                        slices[vit]][i]))]
                                   for i in range(len(layers[resnet]))}})
    results = []
    for finding, statistic in ((uniform, uniformity), (depth, resnet_to_vit_depth)):
        per_seed = [lambda matrix, pair=pair, statistic=statistic: statistic(matrix, *pair) for pair in seed_pairs]
        if num_seeds > 1:
            value, low, high = bootstrap.cka_bootstrap_interval_over_seeds(terms, per_seed, **interval)
        else:
            value, low, high = bootstrap.cka_bootstrap_interval(terms, per_seed[0], **interval)
        results.append(dataclasses.replace(finding, value=value, low=low, high=high))
    return results


def map_summary(matrix, row_names, col_names, rows, cols, key, passes):
    """JSON-able summary of one CKA map ``matrix [R, C]`` (shape, names, mean CKA, NaN count, file names)."""
    summary = {"rows": rows, "cols": cols, "shape": list(matrix.shape), "row_names": list(row_names),
               "col_names": list(col_names), "mean_cka": float(np.nanmean(matrix)),
               "nan_entries": int(np.isnan(matrix).sum()), "passes": passes,
               "files": {"matrix": f"{key}.npz", "figure": f"{key}.png"}}
    if rows == cols:
        off_diagonal = matrix[~np.eye(len(matrix), dtype=bool)]
        summary["mean_off_diagonal_cka"] = float(np.nanmean(off_diagonal)) if off_diagonal.size else None
    return summary


def run(models, data, *, seed_replicates=None, taps="all", exclude=DEFAULT_EXCLUDE, passes=None,
        num_resamples=1000, seed=0, strategy=None, progress=False, measure="cka",
        check_examples=measure_checks.DEFAULT_CHECK_EXAMPLES,
        null_permutations=measure_checks.DEFAULT_NULL_PERMUTATIONS):
    """Figures 1 and 2: within-model CKA maps of every model and cross-model maps of every pair.

    Args:
      models: ``{label: keras.Model}``, in the order of the maps (labels name the files: ``within_<label>``,
        ``cross_<a>_<b>``). The findings use the first ViT and the first ResNet.
      data: batches ``(images [b, S, S, 3], labels [b])``, ``b >= 4``: one ``tf.data`` dataset (one pass), a list of
        datasets, or ``make_data(pass_index) -> dataset`` with ``passes`` (Nguyen et al.'s shuffled passes). Every
        pass must hold the same number of minibatches.
      seed_replicates: ``{label of models: {replicate label: keras.Model}}``, other trained seeds of a model, for
        ``seeds_<label>_<replicate>`` maps and intervals over seeds.
      taps: ``"all"`` or ``"blocks"`` (see the module docstring); exclude: regular expression of taps left out.
      num_resamples, seed: the bootstrap of the findings' intervals. strategy: a ``tf.distribute.Strategy`` or None.
      measure: the maps' similarity measure, ``"cka"``, ``"procrustes"`` or ``"mutual_knn"`` (module docstring).
      check_examples, null_permutations: the subset of the findings' checks (and of a non-CKA measure's maps) and
        the shuffles of their permutation null (``measure_checks``); ``check_examples=0`` skips the checks (not
        with a non-CKA measure).

    Returns a :class:`SectionResult` with arrays ``{key: {matrix [La, Lb], row_names, col_names}}`` and a table per
    map key, the two findings, and one heatmap figure per map.
    """
    common.check_models(models)
    if measure not in MEASURES:
        raise ValueError(f"measure: expected one of {tuple(MEASURES)}, got {measure!r}")
    seed_replicates = seed_replicates or {}
    for label, others in seed_replicates.items():
        if label not in models:
            raise ValueError(f"seed_replicates: {label!r} is not a label of models ({', '.join(models)})")
        clashes = [other for other in others if other in models]
        if clashes:
            raise ValueError(f"seed_replicates[{label!r}]: labels {clashes} already name models")
    all_models = dict(models)
    for others in seed_replicates.values():
        all_models.update(others)
    replicates = {label: list(others) for label, others in seed_replicates.items() if others}
    layers = {label: kept_taps(model, taps, exclude) for label, model in all_models.items()}
    matrix, names, terms, batches_per_pass, batch_size = joint_cka(all_models, layers, data, passes=passes,
                                                                   strategy=strategy, progress=progress)
    num_passes = len(terms["cross"]) // batches_per_pass
    slices = common.model_slices(names)
    labels = list(models)
    maps = {f"within_{label}": (label, label) for label in labels}
    maps.update({f"cross_{first}_{second}": (first, second)
                 for i, first in enumerate(labels) for second in labels[i + 1:]})
    maps.update({f"seeds_{label}_{other}": (label, other)
                 for label, others in replicates.items() for other in others})
    if measure != "cka" and not check_examples:
        raise ValueError(f"check_examples: the {measure} maps are computed on the checked examples; expected >= 4, "
                         f"got {check_examples!r}")
    indices = (measure_checks.check_indices(batches_per_pass * batch_size, batch_size, check_examples)
               if check_examples else np.zeros(0, np.int64))
    seed_pairs = finding_seed_pairs(all_models, replicates)
    check_images = (measure_checks.take_images(evaluation.data_passes(data, passes)[0](), indices)
                    if len(indices) and (seed_pairs or measure != "cka") else None)
    measured = None if measure == "cka" else measure_maps(all_models, layers, check_images, batch_size, measure)
    arrays, tables, figures = {}, {}, []
    for key, (rows, cols) in maps.items():
        block = matrix[slices[rows], slices[cols]] if measured is None else measured(rows, cols)
        arrays[key] = {"matrix": block, "row_names": np.array(layers[rows]), "col_names": np.array(layers[cols])}
        tables[key] = map_summary(block, layers[rows], layers[cols], rows, cols, key, num_passes)
        families = {common.family(all_models[rows]), common.family(all_models[cols])}
        figures.append(_heatmap_figure(key, block, layers[rows], layers[cols], rows, cols, families, measure))
    found = structure_findings(all_models, replicates, layers, slices, terms, batches_per_pass,
                               batch_size=batch_size, passes=num_passes, num_resamples=num_resamples, seed=seed)
    if found and check_examples:
        checks = structure_checks(all_models, seed_pairs, layers, check_images, batch_size,
                                  num_permutations=null_permutations, seed=seed)
        found = [dataclasses.replace(finding, **checks[finding.key]) for finding in found]
    summary = {"seed_replicates": replicates, "num_examples": batches_per_pass * batch_size,
               "batch_size": batch_size, "passes": num_passes, "taps": taps, "excluded_taps": exclude,
               "measure": measure, "check_examples": int(len(indices)), "null_permutations": null_permutations,
               "maps": tables}
    if measure != "cka":
        summary["maps_examples"] = int(len(indices))
    if not found:
        summary["findings_skipped"] = "no ViT and ResNet pair among the models"
    return SectionResult(experiment="representation_structure", arrays=arrays, tables=tables, findings=found,
                         summary=summary, figures=figures)


def _heatmap_figure(key, matrix, row_names, col_names, rows, cols, families, measure="cka"):
    """The figure of one map; ``families``: the set of the two models' families (a Mixer's maps are the paper's
    Section H, a ViT-ResNet pair its Figure 2); ``measure``: the map's similarity measure (the paper's is CKA)."""
    if key.startswith("within_"):
        paper = "H" if "mixer" in families else "1"
        caption, look_for = WITHIN_CAPTION.format(label=rows), WITHIN_LOOK_FOR
        title = f"{rows}: CKA between its layers"
    elif key.startswith("cross_"):
        paper = "H" if "mixer" in families else "2" if families == {"vit", "resnet"} else ""
        caption, look_for = CROSS_CAPTION.format(rows=rows, cols=cols), CROSS_LOOK_FOR
        title = f"CKA: {rows} (rows) vs {cols} (columns)"
    else:
        paper, caption, look_for = "", SEEDS_CAPTION.format(rows=rows, cols=cols), SEEDS_LOOK_FOR
        title = f"CKA: {rows} (rows) vs {cols} (columns)"

    if measure != "cka":
        name = MEASURES[measure]
        caption = caption.replace("CKA", name) + " (the paper's figure uses CKA)"
        title = title.replace("CKA", name)

    def draw():
        figure = plotting.cka_heatmap(matrix, row_names, col_names, title=title, ylabel=f"{rows} layer",
                                      xlabel=f"{cols} layer")
        figure.axes[-1].set_ylabel(MEASURES[measure])
        return figure

    return FigureSpec(file=f"{key}.png", paper_figure=paper, caption=caption, look_for=look_for, draw=draw)
