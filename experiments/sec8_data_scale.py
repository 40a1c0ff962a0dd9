"""Section 8 (Figures 12 and 13): how the amount of training data shapes the representations.

``--models`` holds, per architecture, models trained on fractions of the training data and one trained on all
of it (default: the zoo's ``vit_data3``, ``vit_data10``, ``vit_data30``, ``vit``, and the same for ``resnet``).
The fraction of a zoo recipe comes from the recipe (no fraction = 1); for other specs give ``--fractions`` in the
order of ``--models``. Models are grouped by architecture (ViT, ResNet, Mixer from their config); each group needs
a model with fraction 1, the reference.

* Figure 12: minibatch CKA (``--num-examples`` test images in minibatches of ``--batch-size``) between each
  reduced-data model and the reference at the output of every block (ViT ``blockNN/+mlp``, ResNetV2 every unit's
  ``+res``), one line per fraction, with 95% bootstrap bands over minibatches.
* Figure 13: few-shot linear probes (as ``sec7_linear_probes``: ``--shots`` per class from ``--train-pool``
  training images, ``--probe-seeds``) on the mean over spatial tokens / positions of every residual-stream
  representation, by normalised depth, one line per fraction.

Outputs in ``--out``:
  data_scale_cka.npz          per group ``<arch>/<label>/cka`` [L, L] (reference blocks x model blocks) and
                              ``<arch>/blocks``
  data_scale_cka_<arch>.png   Figure 12: CKA to the reference at each block, one line per fraction
  data_scale_probes_<arch>.png  Figure 13: GAP-feature probe accuracy by normalised depth, one line per fraction
  data_scale_probes.npz       per model ``<label>/gap`` [L, S] accuracies and ``<label>/depth``
  summary.json                per-block CKA with intervals, probe accuracies, test accuracies, the finding

Finding (95% percentile bootstrap over minibatches):
  less_data_hurts_higher_layers_more  for the ViT trained on the smallest fraction: mean CKA to the reference
      over the lowest third of the blocks minus over the highest third (at least one block each), > 0
      (the same number for the ResNet group is in the detail)

    python -m experiments.sec8_data_scale
    python -m experiments.sec8_data_scale --models v3.keras v100.keras r3.keras r100.keras --fractions .03 1 .03 1
"""

import os
import sys
import time

import numpy as np

from experiments import common
from experiments import sec678_common as shared
from experiments import sec7_linear_probes as probing
from vitcnn_tf import atomic_io, plotting, representations
from vitcnn_tf.analysis import bootstrap
from vitcnn_tf.findings import Finding

DEFAULT_MODELS = ("vit_data3", "vit_data10", "vit_data30", "vit",
                  "resnet_data3", "resnet_data10", "resnet_data30", "resnet")
ARCHITECTURE_NAMES = {"vit": "ViT", "resnet": "ResNet", "mixer": "Mixer"}


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec8_data_scale")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=1024, default_batch_size=64,
                                default_out=os.path.join("results", "sec8_data_scale"))
    parser.add_argument("--fractions", type=float, nargs="+", default=None, metavar="F",
                        help="training-data fraction of each model of --models, in order (default: from the zoo "
                             "recipes; required for other specs)")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000,
                        help="bootstrap resamples over minibatches (default: %(default)s)")
    return probing.add_probe_arguments(parser)


def model_fractions(options):
    """The training-data fraction of every spec of ``--models``."""
    if options.fractions is not None:
        if len(options.fractions) != len(options.models):
            raise ValueError(f"--fractions: {len(options.fractions)} values for {len(options.models)} --models")
        if not all(0 < fraction <= 1 for fraction in options.fractions):
            raise ValueError(f"--fractions: every fraction must be in (0, 1], got {options.fractions}")
        return list(options.fractions)
    from vitcnn_tf import zoo

    unknown = [spec for spec in options.models if spec not in zoo.RECIPES]
    if unknown:
        raise ValueError(f"--fractions is required when --models are not zoo recipes ({unknown})")
    return [zoo.RECIPES[spec].fraction or 1.0 for spec in options.models]


def group_models(models, fractions):
    """``{architecture: {"reference": label, "reduced": [labels by increasing fraction]}}``."""
    groups = {}
    for (label, model), fraction in zip(models.items(), fractions):
        groups.setdefault(shared.model_family(model), []).append((fraction, label))
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


def block_cka(groups, models, images, options):
    """Per architecture and reduced-data model: the CKA matrix to the reference over the block outputs, the
    per-batch terms and per-block 95% intervals."""
    results = {}
    dataset, strategy = shared.cka_dataset(images, options), common.distribution_strategy(options)
    for architecture, group in groups.items():
        reference = models[group["reference"]]
        blocks = shared.block_output_layers(reference)
        entries = {}
        for label in group["reduced"]:
            metric, _, model_blocks, terms = representations.accumulate_cka(
                reference, dataset, blocks, model_y=models[label], layers_y=shared.block_output_layers(models[label]),
                progress=options.progress, return_batch_terms=True, strategy=strategy)
            if model_blocks != blocks:
                raise ValueError(f"{label!r} has blocks {model_blocks}, the reference {group['reference']!r} has "
                                 f"{blocks}: models of one architecture must have the same depth")
            intervals = [bootstrap.cka_bootstrap_interval(terms, lambda m, i=i: m[i, i],
                                                          num_resamples=options.bootstrap_resamples,
                                                          seed=options.seed) for i in range(len(blocks))]
            entries[label] = {"cka": metric.result().numpy(), "terms": terms,
                              "same_block": [shared.interval(*values) for values in intervals]}
        results[architecture] = {"blocks": blocks, "models": entries}
    return results


@shared.single_threaded_blas
def run(options):
    """CKA to the full-data model, probes, figures and the finding; writes the files of the module docstring."""
    started = time.perf_counter()
    os.makedirs(options.out, exist_ok=True)
    fractions = model_fractions(options)
    models = shared.load_models(options.models, options)
    fraction_of, spec_of = dict(zip(models, fractions)), dict(zip(models, options.models))
    groups = group_models(models, fractions)
    sizes = {common.image_size(model) for model in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"--models must share one input size, got {sizes}")
    images, labels = shared.load_arrays(options, sizes.pop())

    cka = block_cka(groups, models, images, options)
    probe_results, num_classes, num_test = probing.probe_model_set(models, options, ("gap",))

    figures, cka_arrays, probe_arrays, summary_groups, findings = {}, {}, {}, {}, []
    for architecture, group in groups.items():
        name = ARCHITECTURE_NAMES[architecture]
        blocks = cka[architecture]["blocks"]
        low, high = low_high_blocks(len(blocks))
        cka_arrays[f"{architecture}/blocks"] = np.array(blocks)
        series, group_summary = {}, {"reference": group["reference"], "blocks": blocks, "models": {}}
        for label in [*group["reduced"], group["reference"]]:
            model_summary = {"fraction": fraction_of[label],
                             **shared.accuracies(spec_of[label], models[label], images, labels, options)}
            if label in cka[architecture]["models"]:
                entry = cka[architecture]["models"][label]
                cka_arrays[f"{architecture}/{label}/cka"] = entry["cka"]
                same = entry["same_block"]
                series[f"{100 * fraction_of[label]:g}% of the data ({label})"] = (
                    np.arange(len(blocks)), [s["value"] for s in same], [s["low"] for s in same],
                    [s["high"] for s in same])
                estimate, lo, hi = bootstrap.cka_bootstrap_interval(
                    entry["terms"], lambda m: low_minus_high(m, low, high),
                    num_resamples=options.bootstrap_resamples, seed=options.seed)
                model_summary.update(same_block_cka=same, low_minus_high=shared.interval(estimate, lo, hi))
            accuracies = probe_results[label]["accuracies"]
            gap = np.stack([accuracies[layer]["gap"] for layer in probe_results[label]["layers"]])  # [L, S]
            mean, lo, hi = probing.seed_band(gap, options)
            probe_arrays.update({f"{label}/gap": gap, f"{label}/depth": probe_results[label]["depth"],
                                 f"{label}/layers": np.array(probe_results[label]["layers"])})
            model_summary["probe_gap"] = {"layers": probe_results[label]["layers"], "mean": mean, "low": lo,
                                          "high": hi}
            group_summary["models"][label] = model_summary
        summary_groups[architecture] = group_summary
        if series:
            figures[f"data_scale_cka_{architecture}.png"] = plotting.line_plot(
                series, title=f"{name}: CKA to the model trained on all the data, per block",
                xlabel="block", ylabel="CKA (same block)", xticks=np.arange(len(blocks)),
                xticklabels=[block.rsplit("/", 1)[0] for block in blocks], ylim=(0.0, 1.02), figsize=(6.5, 4.5))
        figures[f"data_scale_probes_{architecture}.png"] = plotting.line_plot(
            {f"{100 * fraction_of[label]:g}% of the data ({label})": (
                probe_results[label]["depth"], *[group_summary["models"][label]["probe_gap"][key]
                                                 for key in ("mean", "low", "high")])
             for label in [*group["reduced"], group["reference"]]},
            title=f"{name}: {options.shots}-shot probes on token-averaged features", xlabel="normalised layer depth",
            ylabel="test accuracy", hlines=(1.0 / num_classes,), ylim=(0.0, 1.0), figsize=(6.5, 4.5))

    vit_group = summary_groups.get("vit")
    if vit_group is not None and groups["vit"]["reduced"]:
        smallest = groups["vit"]["reduced"][0]
        value = vit_group["models"][smallest]["low_minus_high"]
        other = {architecture: {"model": group["reduced"][0],
                                "low_minus_high": summary_groups[architecture]["models"][group["reduced"][0]]
                                ["low_minus_high"]}
                 for architecture, group in groups.items() if architecture != "vit" and group["reduced"]}
        low, high = low_high_blocks(len(cka["vit"]["blocks"]))
        findings.append(Finding(
            key="less_data_hurts_higher_layers_more", section="8",
            claim="With less training data, lower-layer representations stay similar to those learned with all the "
                  "data while higher layers diverge",
            quantity=f"CKA between {smallest} ({100 * fraction_of[smallest]:g}% of the data) and "
                     f"{groups['vit']['reference']} at the same block, mean over the lowest blocks "
                     f"{[cka['vit']['blocks'][i] for i in low]} minus over the highest "
                     f"{[cka['vit']['blocks'][i] for i in high]}",
            value=value["value"], low=value["low"], high=value["high"], threshold=0.0, direction="greater",
            detail=shared.common_detail(options, models=[smallest, groups["vit"]["reference"]],
                                        resamples=options.bootstrap_resamples, other_architectures=other,
                                        interval="percentile bootstrap over minibatches")))

    atomic_io.save_npz(os.path.join(options.out, "data_scale_cka.npz"), **cka_arrays)
    atomic_io.save_npz(os.path.join(options.out, "data_scale_probes.npz"), **probe_arrays)
    for file_name, figure in figures.items():
        atomic_io.save_figure(figure, os.path.join(options.out, file_name), dpi=120)
    summary = {"module": "sec8_data_scale", "num_examples": int(len(images)), "probe_test_examples": num_test,
               "shots": options.shots, "seeds": list(options.probe_seeds), "chance_accuracy": 1.0 / num_classes,
               "groups": summary_groups, "findings": [finding.to_dict() for finding in findings],
               "files": sorted(["data_scale_cka.npz", "data_scale_probes.npz", *figures, common.SUMMARY_FILE]),
               "seconds": time.perf_counter() - started}
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
