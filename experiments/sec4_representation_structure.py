"""Section 4, Figures 1 and 2: CKA heatmaps between all layers within each model and across models.

Every tap of every model given (``--models``, default the CPU zoo's ``vit resnet mixer``; taps matching ``--exclude``,
by default the attention probabilities ``*/attn`` and the ``logits``, are left out; norms, MLP hidden layers and
both residual branches are kept) is streamed over a stratified subset of the test split into one ``MinibatchCKA``
(Nguyen et al. 2020: unbiased HSIC summed over minibatches; ``--passes`` > 1 repeats the set in new shuffled
orders, useful when it is small; ``--strategy`` runs it on a ``tf.distribute`` strategy). All models run side by
side on the same minibatches (``representations.joint_tap_model``), so each tap's Gram matrix is computed once per
minibatch and every within- and cross-model map comes from the same examples; the findings' 95% intervals resample
those minibatches (``analysis.bootstrap.cka_bootstrap_interval``), jointly for every map.

Outputs in ``--out`` (default ``results/sec4_representation_structure``), written atomically:

  within_<model>.npz / .png / .json    Figure 1: ``matrix [L, L]``, ``row_names``, ``col_names``; heatmap; summary
  cross_<a>_<b>.npz / .png / .json     Figure 2: ``matrix [La, Lb]`` (rows: model a) for every pair of models
  summary.json                         settings, per-map summaries and the findings

Findings (with a ViT and a ResNet among the models):

* ``vit_uniform_similarity``: mean CKA between the lower-half and the upper-half block outputs (residual-sum taps:
  ViT ``+sa`` / ``+mlp``, ResNet ``+res``), ViT minus ResNet; the paper's claim is > 0.
* ``resnet_lower_half_matches_vit_lowest_quarter``: for each tap in the lower half of the ResNet's taps, the
  normalised depth (0 = first, 1 = last kept ViT tap) of the most similar ViT tap, averaged; claim < 0.25. A
  proportional correspondence (lower half of the ResNet ~ lower half of the ViT) gives 0.25; the paper's "lowest
  quarter" gives about 0.125.

Seeds: ``--seed-replicates`` (default ``vit=vit_seed1 resnet=resnet_seed1``, the zoo's second seeds) adds models
trained like a model of ``--models`` with another seed. They join the joint CKA, each gets a ``seeds_<a>_<b>`` map
(CKA between two seeds of one recipe: how reproducible the layers are), and the findings become means over the
seed pairs with two-level (seeds, minibatches) bootstrap intervals.

    python -m experiments.sec4_representation_structure
    python -m experiments.sec4_representation_structure --models vit resnet --num-examples 1024 --passes 2
"""

import dataclasses
import os
import re
import sys
import time

import numpy as np

from experiments import common
from vitcnn_tf import atomic_io, findings, plotting, representations
from vitcnn_tf.analysis import bootstrap

DEFAULT_MODELS = ("vit", "resnet", "mixer")
DEFAULT_SEED_REPLICATES = ("vit=vit_seed1", "resnet=resnet_seed1")
DEFAULT_EXCLUDE = r".*/attn|logits"
DEFAULT_OUT = os.path.join("results", "sec4_representation_structure")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec4_representation_structure")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=2000,
                                default_batch_size=125, default_out=DEFAULT_OUT)
    parser.add_argument("--passes", type=common._positive_int, default=1,
                        help="shuffled passes over the examples (Nguyen et al.; default: %(default)s)")
    parser.add_argument("--exclude", default=DEFAULT_EXCLUDE,
                        help="regular expression of tap names to leave out ('' keeps every tap; "
                             "default: %(default)s)")
    parser.add_argument("--num-resamples", type=common._positive_int, default=1000,
                        help="bootstrap resamples of the findings' intervals (default: %(default)s)")
    common.add_seed_replicates_argument(parser, DEFAULT_SEED_REPLICATES)
    return parser


def run(options):
    started = time.time()
    specs = common.model_specs(options)  # --models, then the seed replicates
    all_models = load_models(specs, options)
    labels = list(all_models)[:len(options.models)]
    models = {label: all_models[label] for label in labels}
    label_of = {}
    for spec, label in zip(specs, all_models):
        label_of.setdefault(spec, label)
    replicates = {label_of[spec]: [label_of[r] for r in others]
                  for spec, others in common.seed_replicates(options).items()}
    layers = {label: kept_taps(model, options.exclude) for label, model in all_models.items()}
    matrix, names, terms, batches_per_pass = joint_cka(all_models, layers, options)
    slices = model_slices(names)
    maps = {}
    for label in models:
        maps[f"within_{label}"] = (label, label)
    for i, first in enumerate(labels):
        for second in labels[i + 1:]:
            maps[f"cross_{first}_{second}"] = (first, second)
    for label, others in replicates.items():
        for other in others:
            maps[f"seeds_{label}_{other}"] = (label, other)
    map_summaries = {}
    for key, (rows, cols) in maps.items():
        block = matrix[slices[rows], slices[cols]]
        map_summaries[key] = write_map(options.out, key, block, layers[rows], layers[cols], rows, cols, options)
    found = structure_findings(all_models, replicates, layers, slices, terms, batches_per_pass, options)
    summary = {
        "experiment": "sec4_representation_structure",
        "models": dict(zip(labels, options.models)),
        "seed_replicates": replicates,
        "num_examples": batches_per_pass * options.batch_size,
        "batch_size": options.batch_size,
        "passes": options.passes,
        "excluded_taps": options.exclude,
        "maps": map_summaries,
        "findings": [finding.to_dict() for finding in found],
        "seconds": round(time.time() - started, 1),
    }
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


# --- shared by the Section 5 modules -----------------------------------------------------------------------------


def model_label(spec):
    """A short file-name-safe label of a model spec: the zoo name, the ``.keras`` file's stem or the preset."""
    if spec.endswith(".keras"):
        spec = os.path.splitext(os.path.basename(spec))[0]
    elif "=" in spec and spec.rsplit("=", 1)[1].endswith(".npz"):
        spec = spec.split("=", 1)[0].split(":", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-") or "model"


def load_models(specs, options):
    """{unique label -> keras.Model} for the model specs, in order."""
    models = {}
    for spec in specs:
        label = base = model_label(spec)
        suffix = 2
        while label in models:
            label, suffix = f"{base}-{suffix}", suffix + 1
        print(f"loading model {spec!r} as {label!r}", flush=True)
        models[label] = common.load_model(spec, options)
    return models


def model_family(model):
    """``"vit"``, ``"resnet"``, ``"mixer"`` (from ``model.config``'s type) or ``"other"``."""
    from vitcnn_tf.models import MixerConfig, ResNetV2Config, ViTConfig

    config = getattr(model, "config", None)
    for family, config_class in (("vit", ViTConfig), ("resnet", ResNetV2Config), ("mixer", MixerConfig)):
        if isinstance(config, config_class):
            return family
    return "other"


def first_of_family(models, family):
    """Label of the first model of ``family`` in ``models`` (a dict), or None."""
    return next((label for label, model in models.items() if model_family(model) == family), None)


def normalised_depths(count):
    """``[count]`` positions 0..1 of ``count`` layers in forward order (0 for a single layer)."""
    return np.arange(count) / max(count - 1, 1)


# --- computation -------------------------------------------------------------------------------------------------


def kept_taps(model, exclude):
    """Tap names of ``model`` in forward order, without those whose whole name matches ``exclude``."""
    names = representations.layer_names(model)
    if exclude:
        pattern = re.compile(exclude)
        names = [name for name in names if not pattern.fullmatch(name)]
    if not names:
        raise ValueError(f"--exclude={exclude!r} leaves no tap of model {model.name!r}")
    return names


def joint_cka(models, layers, options):
    """CKA between all kept taps of all models: ``(matrix [L, L], joint names, batch terms, batches per pass)``.

    The joint names are ``"<label>:<tap>"`` in the order of ``models`` then taps; the batch terms cover every pass.
    """
    joint = representations.joint_tap_model(models, layers)
    size = common.image_size(joint)
    strategy = common.distribution_strategy(options)
    metric, all_terms = None, []
    for index in range(options.passes):
        shuffle_seed = None if options.passes == 1 else options.seed * 1000 + index
        data = common.evaluation_data(options, size, shuffle_seed=shuffle_seed)
        print(f"CKA pass {index + 1}/{options.passes}: {len(joint.taps)} taps of {len(models)} model(s)", flush=True)
        metric, names, _, terms = representations.accumulate_cka(joint, data, metric=metric,
                                                                  progress=options.progress, return_batch_terms=True,
                                                                  strategy=strategy)
        all_terms.append(terms)
    terms = {key: np.concatenate([t[key] for t in all_terms]) for key in ("cross", "self_x", "self_y")}
    batches_per_pass = len(all_terms[0]["cross"])
    return np.asarray(metric.result(), dtype=np.float64), names, terms, batches_per_pass


def model_slices(joint_names):
    """{label -> slice of its rows in the joint matrix} for joint names ``"<label>:<tap>"``."""
    slices = {}
    for index, name in enumerate(joint_names):
        label, _ = representations.split_tap_name(name)
        start = slices[label].start if label in slices else index
        slices[label] = slice(start, index + 1)
    return slices


def block_output_indices(model, names):
    """Indices into ``names`` of the model's residual-sum taps (block outputs), in forward order."""
    outputs = [unit[-1] for unit in getattr(model, "residual_taps", [])]
    return [names.index(name) for name in outputs if name in names]


def lower_upper_similarity(matrix, indices):
    """Mean CKA between the lower half and the upper half of the layers ``indices`` of a within-model ``matrix``."""
    half = len(indices) // 2
    lower, upper = indices[:half], indices[half:]
    return float(np.mean(matrix[np.ix_(lower, upper)]))


def most_similar_depth(cross, rows):
    """Mean normalised depth (0..1 over the columns) of the most similar column for each row in ``rows``."""
    best = np.nanargmax(cross[rows], axis=1)
    return float(np.mean(normalised_depths(cross.shape[1])[best]))


def structure_findings(models, replicates, layers, slices, terms, batches_per_pass, options):
    """The two Section 4 findings (empty without a ViT and a ResNet among the models).

    ``replicates``: ``{label: [labels of other seeds]}``. With ``k`` replicates of both the ViT and the ResNet, the
    findings average over ``k + 1`` seed pairs (seed ``s``'s ViT with seed ``s``'s ResNet) and their intervals
    resample seeds and minibatches (``cka_bootstrap_interval_over_seeds``); otherwise minibatches only.
    """
    vit, resnet = first_of_family(models, "vit"), first_of_family(models, "resnet")
    if vit is None or resnet is None:
        print("no ViT and ResNet pair among the models: Section 4 findings skipped", flush=True)
        return []
    num_seeds = 1 + min(len(replicates.get(vit, [])), len(replicates.get(resnet, [])))
    seed_pairs = [(vit, resnet)] + list(zip(replicates.get(vit, []), replicates.get(resnet, [])))[:num_seeds - 1]
    seed_labels = [label for pair in seed_pairs for label in pair]
    outputs = {label: block_output_indices(models[label], layers[label]) for label in seed_labels}
    for label, indices in outputs.items():
        if len(indices) < 2:
            raise ValueError(f"model {label!r}: need at least 2 kept block-output (residual-sum) taps for the lower "
                             f"vs upper half similarity, found {len(indices)}; check --exclude")
    interval = dict(num_resamples=options.num_resamples, seed=options.seed, batches_per_resample=batches_per_pass)

    def uniformity(matrix, vit_label, resnet_label):
        return (lower_upper_similarity(matrix[slices[vit_label], slices[vit_label]], outputs[vit_label])
                - lower_upper_similarity(matrix[slices[resnet_label], slices[resnet_label]], outputs[resnet_label]))

    def resnet_to_vit_depth(matrix, vit_label, resnet_label):
        lower_resnet = list(range(len(layers[resnet_label]) // 2))
        return most_similar_depth(matrix[slices[resnet_label], slices[vit_label]], lower_resnet)

    full = bootstrap.cka_from_batch_terms(terms)
    lower_resnet = list(range(len(layers[resnet]) // 2))
    upper_resnet = list(range(len(layers[resnet]) // 2, len(layers[resnet])))
    common_detail = {"vit": vit, "resnet": resnet, "num_examples": batches_per_pass * options.batch_size,
                     "passes": options.passes, "minibatches": int(len(terms["cross"])),
                     "seed_pairs": [list(pair) for pair in seed_pairs],
                     "interval": ("two-level bootstrap over the seed pairs and minibatches (one pass worth per "
                                  "resample)" if num_seeds > 1 else
                                  "bootstrap over minibatches (one pass worth per resample)")}
    uniform = findings.Finding(
        key="vit_uniform_similarity", section="4",
        claim="ViT has more uniform representations: its lower and higher layers are more similar than the ResNet's",
        quantity="mean CKA between lower-half and upper-half block outputs (residual sums), ViT minus ResNet"
                 + (f", mean over {num_seeds} seeds" if num_seeds > 1 else ""),
        value=np.nan, low=np.nan, high=np.nan, threshold=0.0, direction="greater",
        detail={**common_detail,
                "vit_lower_upper_cka": lower_upper_similarity(full[slices[vit], slices[vit]], outputs[vit]),
                "resnet_lower_upper_cka": lower_upper_similarity(full[slices[resnet], slices[resnet]],
                                                                 outputs[resnet]),
                "per_seed": [uniformity(full, *pair) for pair in seed_pairs],
                "vit_block_outputs": [layers[vit][i] for i in outputs[vit]],
                "resnet_block_outputs": [layers[resnet][i] for i in outputs[resnet]]})
    depth = findings.Finding(
        key="resnet_lower_half_matches_vit_lowest_quarter", section="4",
        claim="The lower half of the ResNet's layers is most similar to about the lowest quarter of the ViT's layers",
        quantity="mean normalised depth (0..1) of the most similar ViT layer over the lower half of the ResNet layers "
                 "(0.25 = proportional correspondence, ~0.125 = lowest quarter)"
                 + (f", mean over {num_seeds} seeds" if num_seeds > 1 else ""),
        value=np.nan, low=np.nan, high=np.nan, threshold=0.25, direction="less",
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


# --- outputs -----------------------------------------------------------------------------------------------------


def write_map(folder, key, matrix, row_names, col_names, rows, cols, options):
    """Write ``<key>.npz`` / ``.png`` / ``.json`` for one CKA map; returns its JSON summary."""
    atomic_io.save_npz(os.path.join(folder, f"{key}.npz"), matrix=matrix, row_names=np.array(row_names),
                       col_names=np.array(col_names))
    within = rows == cols
    title = (f"{rows}: CKA between its layers" if within else f"CKA: {rows} (rows) vs {cols} (columns)")
    figure = plotting.cka_heatmap(matrix, row_names, col_names, title=title, ylabel=f"{rows} layer",
                                  xlabel=f"{cols} layer")
    atomic_io.save_figure(figure, os.path.join(folder, f"{key}.png"), dpi=120)
    summary = {"rows": rows, "cols": cols, "shape": list(matrix.shape), "row_names": list(row_names),
               "col_names": list(col_names), "mean_cka": float(np.nanmean(matrix)),
               "nan_entries": int(np.isnan(matrix).sum()), "passes": options.passes, "files": {
                   "matrix": f"{key}.npz", "figure": f"{key}.png"}}
    if within:
        off_diagonal = matrix[~np.eye(len(matrix), dtype=bool)]
        summary["mean_off_diagonal_cka"] = float(np.nanmean(off_diagonal)) if off_diagonal.size else None
    atomic_io.write_json(os.path.join(folder, f"{key}.json"), summary)
    return summary


if __name__ == "__main__":
    sys.exit(main())
