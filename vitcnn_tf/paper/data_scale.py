"""Section 8 (Figures 12 and 13): how the amount of pre-training data shapes the representations.

Roles (:func:`run`): ``models`` with their ``fractions`` of the largest pre-training set, grouped by architecture
(ViT, ResNet, Mixer from their config); each group has exactly one large-data model (fraction 1, the reference)
and any number of small-data models (fraction < 1). The paper compares ViTs pre-trained on JFT-300M with ones
pre-trained on ImageNet; JFT is not public, so with public checkpoints the large-data model is the ImageNet-21k
ViT and the small-data one its ImageNet-1k twin of the same training recipe (fraction 1.28M / 14.2M images),
and the CPU zoo uses models trained on 3%, 10%, 30% and all of its training set.

* Figure 12: minibatch CKA (over the minibatches of ``data``) between each small-data model and the reference at
  the output of every block (ViT ``blockNN/+mlp``, ResNetV2 every unit's ``+res``), one line per model, with
  95% bootstrap bands over minibatches.
* Figure 13: few-shot linear probes (as :mod:`vitcnn_tf.paper.linear_probes`: ``shots`` per class drawn from
  ``probe_train_data``, one draw per seed of ``probe_seeds``, scored on ``data``) on the mean over spatial tokens /
  positions of every residual-stream representation, by normalised depth, one line per model.

Arrays: ``data_scale_cka`` (per group ``<arch>/<label>/cka`` [L, L], reference blocks x model blocks, and
``<arch>/blocks``) and ``data_scale_probes`` (per model ``<label>/gap`` [L, S] accuracies, ``depth``, ``layers``).

Finding (95% percentile bootstrap over minibatches; threshold from ``vitcnn_tf.claims``):
  less_data_hurts_higher_layers_more  for the ViT trained on the smallest fraction: mean CKA to the reference
      over the lowest third of the blocks minus over the highest third (at least one block each), > 0.1
      (the same number for the other architectures is in the detail)

The finding also reports (``measure_checks``, on ``check_examples`` evenly spaced images, default 256) the same
statistic under orthogonal Procrustes similarity, and the permutation null (``null_permutations`` shuffles,
default 100) of the CKA it compares: the mean same-block CKA over the lowest blocks, the reference model's
examples shuffled.
"""

import numpy as np

from vitcnn_tf import claims, plotting, representations
from vitcnn_tf.analysis import bootstrap, probes
from vitcnn_tf.findings import Finding
from vitcnn_tf.models import model_family
from vitcnn_tf.paper import common, evaluation, linear_probes, measure_checks
from vitcnn_tf.paper.result import FigureSpec, SectionResult

ARCHITECTURE_NAMES = {"vit": "ViT", "resnet": "ResNet", "mixer": "Mixer"}
MAX_BLOCK_TICKS = 12


def group_models(models, fractions):
    """``{architecture: {"reference": label, "reduced": [labels by increasing fraction]}}`` of ``{label: model}``
    with ``fractions`` ``{label: fraction in (0, 1]}``."""
    missing = [label for label in models if label not in fractions]
    if missing:
        raise ValueError(f"fractions: no training-data fraction for {missing}")
    bad = {label: fraction for label, fraction in fractions.items() if not 0 < fraction <= 1}
    if bad:
        raise ValueError(f"fractions: every fraction must be in (0, 1], got {bad}")
    groups = {}
    for label, model in models.items():
        groups.setdefault(model_family(model), []).append((fractions[label], label))
    result = {}
    for architecture, members in groups.items():
        full = [label for fraction, label in members if fraction == 1.0]
        if len(full) != 1:
            raise ValueError(f"{ARCHITECTURE_NAMES[architecture]} models {[label for _, label in members]}: "
                             f"expected exactly one trained on all the data (fraction 1), got {full}")
        reduced = [label for fraction, label in sorted(members) if fraction < 1.0]
        result[architecture] = {"reference": full[0], "reduced": reduced}
    return result


def low_high_blocks(num_blocks):
    """``(low, high)`` index arrays: the lowest and highest third of ``num_blocks`` blocks (at least one each)."""
    if num_blocks < 2:
        raise ValueError(f"need at least 2 blocks to compare low and high blocks, got {num_blocks}")
    count = max(1, round(num_blocks / 3))
    return np.arange(count), np.arange(num_blocks - count, num_blocks)


def low_minus_high(cka, low, high):
    """Mean same-block CKA (the diagonal of ``cka [L, L]``) over the ``low`` blocks minus over the ``high``."""
    diagonal = np.diagonal(np.asarray(cka, dtype=np.float64))
    return float(diagonal[low].mean() - diagonal[high].mean())


def block_cka(groups, models, images, batch_size, *, resamples, seed, progress=False, strategy=None):
    """Per architecture and small-data model: the CKA matrix ``[L, L]`` to the reference over the block outputs
    on ``images [n, S, S, 3]`` in minibatches of ``batch_size``, the per-batch terms and per-block 95%
    intervals."""
    results = {}
    dataset = evaluation.image_dataset(images, batch_size)
    for architecture, group in groups.items():
        reference = models[group["reference"]]
        blocks = common.block_output_layers(reference)
        entries = {}
        for label in group["reduced"]:
            metric, _, model_blocks, terms = representations.accumulate_cka(
                reference, dataset, blocks, model_y=models[label],
                layers_y=common.block_output_layers(models[label]), progress=progress, return_batch_terms=True,
                strategy=strategy)
            if model_blocks != blocks:
                raise ValueError(f"{label!r} has blocks {model_blocks}, the reference {group['reference']!r} has "
                                 f"{blocks}: models of one architecture must have the same depth")
            intervals = [bootstrap.cka_bootstrap_interval(terms, lambda m, i=i: m[i, i], num_resamples=resamples,
                                                          seed=seed) for i in range(len(blocks))]
            entries[label] = {"cka": metric.result().numpy(), "terms": terms,
                              "same_block": [evaluation.interval(*values) for values in intervals]}
        results[architecture] = {"blocks": blocks, "models": entries}
    return results


def data_scale_checks(small, reference, images, batch_size, *, num_permutations, seed):
    """``{"second_measure", "null"}`` of ``less_data_hurts_higher_layers_more`` for the models ``small`` and
    ``reference`` on the checked ``images [m, ...]`` (whole minibatches of ``batch_size``)."""
    blocks = common.block_output_layers(reference)
    factors = [measure_checks.tap_factors(model, images, common.block_output_layers(model), batch_size)
               for model in (small, reference)]
    small_factors, reference_factors = ([found[name] for name in found] for found in factors)
    same_block = [measure_checks.procrustes_pairs([a], [b])[0, 0] for a, b in zip(small_factors, reference_factors)]
    low, high = low_high_blocks(len(blocks))
    small_grams = measure_checks.grams([small_factors[i] for i in low])
    reference_grams = measure_checks.grams([reference_factors[i] for i in low])

    cka = measure_checks.minibatch_cka(small_grams, reference_grams, batch_size)

    def low_block_cka(order):
        return float(np.mean(np.diagonal(cka(order))))

    return {"second_measure": measure_checks.second_measure(low_minus_high(np.diag(same_block), low, high),
                                                            len(images)),
            "null": measure_checks.null_check(
                low_block_cka, len(images), "mean same-block CKA over the lowest blocks (the reference model's "
                "examples shuffled)", measure_checks.minibatch_estimator(batch_size), num_permutations, seed)}


def block_ticks(blocks):
    """``(positions, labels)`` of at most ``MAX_BLOCK_TICKS`` evenly spaced ticks over ``blocks`` (tap names),
    labelled ``b3`` (ViT / Mixer block 3) or ``b2u01`` (ResNet stage 2, unit 1)."""
    step = max(1, int(np.ceil(len(blocks) / MAX_BLOCK_TICKS)))
    positions = np.arange(0, len(blocks), step)
    labels = [blocks[i].rsplit("/", 1)[0].replace("block", "b").replace("/unit", "u") for i in positions]
    return positions, labels


@evaluation.single_threaded_blas
def run(models, fractions, *, data, probe_train_data, num_classes, data_names=None, known_accuracies=None,
        shots=10, probe_seeds=tuple(range(10)), token_grid=4, l2_reg=probes.DEFAULT_L2_REG,
        max_feature_bytes=linear_probes.DEFAULT_MAX_FEATURE_BYTES, bootstrap_resamples=1000, seed=0, progress=False,
        strategy=None, context=None, check_examples=measure_checks.DEFAULT_CHECK_EXAMPLES,
        null_permutations=measure_checks.DEFAULT_NULL_PERMUTATIONS):
    """Section 8 (see the module docstring for the roles, statistics and finding).

    Args:
      models: ``{label: keras.Model}`` (or a sequence of models / ``(label, model)`` pairs): per architecture one
        large-data model and the small-data ones; e.g. ``{"ViT-B/16 i21k": ..., "ViT-B/16 i1k": ...}``.
      fractions: ``{label: fraction in (0, 1]}`` of the largest pre-training set each model saw (1: the
        large-data reference of its architecture).
      data: ``tf.data`` dataset of ``(images [b, S, S, 3], labels [b])`` batches, in a fixed order: the CKA
        minibatches and the probes' test set.
      probe_train_data: the same for the pool the few-shot training sets are drawn from.
      num_classes: classes of the labels.
      data_names: optional ``{label: name of its pre-training data}`` for the legends (default "<fraction>% of
        the data").
      known_accuracies: ``{label: test accuracy}`` where known (e.g. a training record); the others get their
        accuracy on ``data``.
      shots, probe_seeds, token_grid, l2_reg, max_feature_bytes: the probes (see ``linear_probes.run``).
      bootstrap_resamples, seed: the bootstrap over minibatches (and over probe seeds).
      progress: show progress bars.
      strategy: optional ``tf.distribute.Strategy`` for the CKA accumulation.
      context: optional JSON-able dict recorded in the finding's detail (e.g. ``{"dataset": "imagenet2012"}``).
      check_examples, null_permutations: the finding's checks (module docstring;
        ``check_examples=0`` skips them).

    Returns a :class:`SectionResult` with array groups ``data_scale_cka`` and ``data_scale_probes``, Figures 12
    (one per architecture with a small-data model) and 13 (one per architecture) and the finding.
    """
    probe_seeds = linear_probes.check_probe_settings(num_classes, shots, probe_seeds, token_grid)
    models = common.labeled_group(models, "models")
    if not models:
        raise ValueError("models: expected at least one large-data model and one small-data model")
    groups = group_models(models, fractions)
    common.shared_image_size(models)
    data_names = data_names or {}
    known = known_accuracies or {}
    images, labels, batch_size = evaluation.dataset_arrays(data)

    cka = block_cka(groups, models, images, batch_size, resamples=bootstrap_resamples, seed=seed, progress=progress,
                    strategy=strategy)
    num_train, _ = linear_probes.count_examples(probe_train_data)
    probe_results = {label: linear_probes.probe_model(
        model, probe_train_data, data, num_classes, aggregations=("gap",), shots=shots, probe_seeds=probe_seeds,
        token_grid=token_grid, l2_reg=l2_reg, num_examples=num_train + len(labels),
        max_feature_bytes=max_feature_bytes, progress=progress) for label, model in models.items()}

    def legend(label):
        return f"{data_names.get(label) or f'{100 * fractions[label]:g}% of the data'} ({label})"

    cka_figures, probe_figures, cka_arrays, probe_arrays, summary_groups, findings = [], [], {}, {}, {}, []
    for architecture, group in groups.items():
        name = ARCHITECTURE_NAMES[architecture]
        blocks = cka[architecture]["blocks"]
        low, high = low_high_blocks(len(blocks))
        cka_arrays[f"{architecture}/blocks"] = np.array(blocks)
        series, group_summary = {}, {"reference": group["reference"], "blocks": blocks, "models": {}}
        for label in [*group["reduced"], group["reference"]]:
            model_summary = {"fraction": fractions[label], "data": data_names.get(label),
                             **evaluation.accuracies(models[label], images, labels, known.get(label))}
            if label in cka[architecture]["models"]:
                entry = cka[architecture]["models"][label]
                cka_arrays[f"{architecture}/{label}/cka"] = entry["cka"]
                same = entry["same_block"]
                series[legend(label)] = (np.arange(len(blocks)), [s["value"] for s in same],
                                         [s["low"] for s in same], [s["high"] for s in same])
                estimate, lo, hi = bootstrap.cka_bootstrap_interval(
                    entry["terms"], lambda m: low_minus_high(m, low, high), num_resamples=bootstrap_resamples,
                    seed=seed)
                model_summary.update(same_block_cka=same, low_minus_high=evaluation.interval(estimate, lo, hi))
            accuracies = probe_results[label]["accuracies"]
            gap = np.stack([accuracies[layer]["gap"] for layer in probe_results[label]["layers"]])  # [L, S]
            mean, lo, hi = linear_probes.seed_band(gap, seed)
            probe_arrays.update({f"{label}/gap": gap, f"{label}/depth": probe_results[label]["depth"],
                                 f"{label}/layers": np.array(probe_results[label]["layers"])})
            model_summary["probe_gap"] = {"layers": probe_results[label]["layers"], "mean": mean, "low": lo,
                                          "high": hi}
            group_summary["models"][label] = model_summary
        summary_groups[architecture] = group_summary
        if series:
            ticks, tick_labels = block_ticks(blocks)
            cka_figures.append(FigureSpec(
                file=f"data_scale_cka_{architecture}.png", paper_figure="12",
                caption=f"Figure 12 ({name}): CKA between each model pre-trained on less data and the one "
                        f"pre-trained on the most ({group['reference']}) at the output of every block (95% "
                        "bootstrap bands over minibatches).",
                look_for="Lower layers stay similar to those learned with more data while the higher layers "
                         "diverge: the CKA falls with depth, more so for less data.",
                draw=lambda series=series, ticks=ticks, tick_labels=tick_labels, name=name: plotting.line_plot(
                    series, title=f"{name}: CKA to the model trained on the most data, per block",
                    xlabel="block", ylabel="CKA (same block)", xticks=ticks, xticklabels=tick_labels,
                    ylim=(0.0, 1.02), figsize=(6.5, 4.5))))
        probe_series = {legend(label): (probe_results[label]["depth"],
                                        *[group_summary["models"][label]["probe_gap"][key]
                                          for key in ("mean", "low", "high")])
                        for label in [*group["reduced"], group["reference"]]}
        probe_figures.append(FigureSpec(
            file=f"data_scale_probes_{architecture}.png", paper_figure="13",
            caption=f"Figure 13 ({name}): {shots}-shot linear-probe test accuracy on the token-averaged "
                    "representation of every residual-stream layer, by normalised depth, one line per "
                    "pre-training data size (95% bands over seeds).",
            look_for="Models pre-trained on more data reach a higher probe accuracy in the intermediate layers: "
                     "more data helps the intermediate representations.",
            draw=lambda probe_series=probe_series, name=name: plotting.line_plot(
                probe_series, title=f"{name}: {shots}-shot probes on token-averaged features",
                xlabel="normalised layer depth", ylabel="test accuracy", hlines=(1.0 / num_classes,),
                ylim=(0.0, 1.0), figsize=(6.5, 4.5))))

    vit_group = summary_groups.get("vit")
    skipped = []
    if vit_group is not None and groups["vit"]["reduced"]:
        smallest = groups["vit"]["reduced"][0]
        value = vit_group["models"][smallest]["low_minus_high"]
        other = {architecture: {"model": group["reduced"][0],
                                "low_minus_high": summary_groups[architecture]["models"][group["reduced"][0]]
                                ["low_minus_high"]}
                 for architecture, group in groups.items() if architecture != "vit" and group["reduced"]}
        low, high = low_high_blocks(len(cka["vit"]["blocks"]))
        checks = measure_checks.NO_CHECKS
        if check_examples:
            checked = images[measure_checks.check_indices(len(images), batch_size, check_examples)]
            checks = data_scale_checks(models[smallest], models[groups["vit"]["reference"]], checked, batch_size,
                                       num_permutations=null_permutations, seed=seed)
        threshold, direction = claims.threshold("less_data_hurts_higher_layers_more")
        findings.append(Finding(
            key="less_data_hurts_higher_layers_more", section="8",
            claim="With less training data, lower-layer representations stay similar to those learned with all the "
                  "data while higher layers diverge",
            quantity=f"CKA between {smallest} ({100 * fractions[smallest]:g}% of the data) and "
                     f"{groups['vit']['reference']} at the same block, mean over the lowest blocks "
                     f"{[cka['vit']['blocks'][i] for i in low]} minus over the highest "
                     f"{[cka['vit']['blocks'][i] for i in high]}",
            value=value["value"], low=value["low"], high=value["high"], threshold=threshold, direction=direction,
            detail=evaluation.finding_detail(context, len(images), batch_size, seed,
                                             models=[smallest, groups["vit"]["reference"]],
                                             resamples=bootstrap_resamples, other_architectures=other,
                                             interval="percentile bootstrap over minibatches"),
            **checks))
    else:
        skipped.append({"paper_figure": "12", "part": "less_data_hurts_higher_layers_more",
                        "reason": "no small-data ViT given"})
    summary = {"num_examples": int(len(images)), "probe_test_examples": int(len(labels)), "shots": shots,
               "seeds": probe_seeds, "chance_accuracy": 1.0 / num_classes, "groups": summary_groups,
               "skipped": skipped}
    return SectionResult(experiment="data_scale",
                         arrays={"data_scale_cka": cka_arrays, "data_scale_probes": probe_arrays},
                         findings=findings, summary=summary, figures=cka_figures + probe_figures)
