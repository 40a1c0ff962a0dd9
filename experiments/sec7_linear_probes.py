"""Section 7 (Figure 11): closed-form few-shot linear probes on single tokens and aggregated tokens, by depth.

For each model of ``--models`` (default the CLS-token ViT, the GAP ViT and the ResNet) and each representation
of its residual stream (ViT ``embedding``, ``blockNN/+sa``, ``blockNN/+mlp``; ResNetV2 the root and every unit
output; Mixer ``stem`` and every ``+token_mixing`` / ``+channel_mixing``), at normalised depth 0 .. 1, probes
(``vitcnn_tf.analysis.probes.fewshot_linear_probe``: whitened features, bias column, ±1 targets, ridge with
``--l2-reg``) are fitted on ``--shots`` examples per class drawn from a ``--train-pool`` subset of the training
split (one draw per seed of ``--probe-seeds``; every model sees the same draws) and scored on ``--num-examples``
test images. Features:

* per token (left pane): each token separately (spatial tokens only: the CLS token is excluded; a ResNet "token"
  is all channels at one position). To keep the cost down only a ``--token-grid`` x ``--token-grid`` evenly
  spaced subset of the positions is probed (the centres of a k x k partition of the grid: 16 of the 64 ViT
  tokens and of the 1024 positions of the first ResNet stage by default); their accuracies are averaged;
* aggregations (right pane): ``cls`` (the CLS token, CLS ViTs only), ``gap`` (the mean over all spatial tokens /
  positions) and ``single`` (one spatial token: the one at the grid centre ``(h // 2, w // 2)``).

Outputs in ``--out``:
  probes.npz                    per model ``<label>/layers``, ``depth`` [L], ``per_token_mean`` [L, S] (mean
                                over the probed tokens, S seeds), ``per_token/<layer>`` [K, S] (K probed
                                tokens), ``<label>/<aggregation>`` [L, S]
  probes_per_token.png          Figure 11 left: mean per-token accuracy by normalised depth (95% bands over seeds)
  probes_aggregations.png       Figure 11 right: CLS / GAP / single-token accuracy by normalised depth
  summary.json                  accuracies (mean over seeds, intervals), chance level, finding

Finding (95% percentile bootstrap over the probe seeds; every seed's difference is paired):
  cls_vit_spatial_tokens_probe_poorly  top-layer mean per-token accuracy of the GAP ViT minus that of the CLS
                                       ViT's spatial tokens, > 0

    python -m experiments.sec7_linear_probes
    python -m experiments.sec7_linear_probes --models vit.keras gap.keras --shots 5 --probe-seeds 0 1 2
"""

import os
import sys
import time

import numpy as np

from experiments import common
from experiments import sec678_common as shared
from vitcnn_tf import atomic_io, plotting, representations
from vitcnn_tf import data as data_lib
from vitcnn_tf.analysis import bootstrap, probes
from vitcnn_tf.findings import Finding

DEFAULT_MODELS = ("vit", "vit_gap", "resnet")
AGGREGATIONS = ("cls", "gap", "single")
AGGREGATION_NAMES = {"cls": "CLS token", "gap": "GAP of tokens", "single": "single token", "tokens": "per token"}


def add_probe_arguments(parser):
    """``--shots --probe-seeds --train-pool --token-grid --l2-reg`` (shared with ``sec8_data_scale``)."""
    parser.add_argument("--shots", type=int, default=10, help="training examples per class (default: %(default)s)")
    parser.add_argument("--probe-seeds", type=int, nargs="+", default=list(range(10)), metavar="SEED",
                        help="one few-shot draw per seed (default: 0 .. 9)")
    parser.add_argument("--train-pool", type=int, default=512,
                        help="stratified training-split examples the few-shot sets are drawn from "
                             "(default: %(default)s)")
    parser.add_argument("--token-grid", type=int, default=4,
                        help="probe a k x k evenly spaced subset of the token positions (default: %(default)s)")
    parser.add_argument("--l2-reg", type=float, default=probes.DEFAULT_L2_REG,
                        help="ridge penalty (default: 2**10, big_vision's)")
    return parser


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.sec7_linear_probes")
    common.add_common_arguments(parser, default_models=DEFAULT_MODELS, default_num_examples=1024,
                                default_out=os.path.join("results", "sec7_linear_probes"))
    return add_probe_arguments(parser)


def spatial_grid(value, num_prefix_tokens):
    """A tap value as ``[n, h, w, d]`` spatial tokens: a token tap ``[n, T, d]`` without its prefix tokens on its
    square grid, or a feature map as it is."""
    if value.ndim == 4:
        return value
    if value.ndim != 3:
        raise ValueError(f"expected tokens [n, T, d] or a map [n, h, w, c], got shape {value.shape}")
    spatial = value[:, num_prefix_tokens:]
    side = int(round(np.sqrt(spatial.shape[1])))
    if side * side != spatial.shape[1]:
        raise ValueError(f"{spatial.shape[1]} spatial tokens do not form a square grid")
    return spatial.reshape(len(value), side, side, value.shape[-1])


def probed_positions(height, width, grid):
    """``(rows, cols)`` of the centres of a ``grid x grid`` partition of an ``height x width`` map (all positions
    when the map is smaller than the grid)."""
    rows = np.unique(((np.arange(min(grid, height)) + 0.5) * height / min(grid, height)).astype(int))
    cols = np.unique(((np.arange(min(grid, width)) + 0.5) * width / min(grid, width)).astype(int))
    return rows, cols


def token_features(value, num_prefix_tokens, token_grid, aggregations):
    """Probe features of one batch of one tap: ``{"tokens": [n, K, d], "cls" / "gap" / "single": [n, d]}`` for the
    requested ``aggregations`` (``"tokens"`` in ``aggregations`` adds the probed tokens; ``"cls"`` only with
    prefix tokens)."""
    grid = spatial_grid(value, num_prefix_tokens if value.ndim == 3 else 0)
    height, width = grid.shape[1:3]
    features = {}
    if "tokens" in aggregations:
        rows, cols = probed_positions(height, width, token_grid)
        features["tokens"] = grid[:, rows][:, :, cols].reshape(len(grid), -1, grid.shape[-1])
    if "gap" in aggregations:
        features["gap"] = grid.mean(axis=(1, 2))
    if "single" in aggregations:
        features["single"] = grid[:, height // 2, width // 2]
    if "cls" in aggregations and value.ndim == 3 and num_prefix_tokens:
        features["cls"] = value[:, 0]
    return features


def extract_probe_features(model, images, batch_size, token_grid, aggregations):
    """``{layer: {aggregation: array}}`` for the residual-stream layers of ``model`` over ``images``
    (batch by batch, keeping only the probed features)."""
    layers = shared.residual_stream_layers(model)
    prefix = shared.num_prefix_tokens(model)
    parts = {layer: {} for layer in layers}
    for start in range(0, len(images), batch_size):
        values = representations.extract(model, images[start:start + batch_size], layers)
        for layer in layers:
            for name, feature in token_features(values[layer], prefix, token_grid, aggregations).items():
                parts[layer].setdefault(name, []).append(feature)
    return {layer: {name: np.concatenate(chunks) for name, chunks in by_name.items()}
            for layer, by_name in parts.items()}


def probe_accuracies(train_features, train_labels, test_features, test_labels, num_classes, shots, seeds, l2_reg,
                     progress=None):
    """Few-shot probe accuracies for features ``{layer: {aggregation: [n, d] or tokens [n, K, d]}}``:
    ``{layer: {aggregation: [S] (or [K, S] for tokens)}}`` over the seeds ``seeds`` (the same draws for every
    layer). ``progress``: an optional ``keras.utils.Progbar`` advanced once per layer."""
    draws = [probes.fewshot_sample(train_labels, shots, seed, num_classes) for seed in seeds]
    results = {}
    for step, (layer, by_name) in enumerate(test_features.items(), start=1):
        results[layer] = {}
        for name, test_x in by_name.items():
            train_x = train_features[layer][name]
            if name == "tokens":
                accuracy = [[probes.fewshot_linear_probe(train_x[draw, k], train_labels[draw], test_x[:, k],
                                                         test_labels, num_classes, l2_reg) for draw in draws]
                            for k in range(test_x.shape[1])]
            else:
                accuracy = [probes.fewshot_linear_probe(train_x[draw], train_labels[draw], test_x, test_labels,
                                                        num_classes, l2_reg) for draw in draws]
            results[layer][name] = np.array(accuracy)
        if progress is not None:
            progress.update(step)
    return results


def seed_band(accuracies, options):
    """``(mean [L], low [L], high [L])`` over the seeds of ``accuracies [L, S]``: the mean and its 95% percentile
    bootstrap interval over seeds (the mean itself when there is a single seed)."""
    accuracies = np.asarray(accuracies, dtype=np.float64)
    mean = accuracies.mean(axis=1)
    if accuracies.shape[1] < 2:
        return mean, mean, mean
    # Resample the seeds (rows of accuracies.T [S, L]); vectorized: [r, S, L] -> [r, L].
    _, low, high = bootstrap.bootstrap_interval(lambda a: a.mean(axis=1), accuracies.T, num_resamples=1000,
                                                seed=options.seed, vectorized=True)
    return mean, low, high


def probe_model_set(models, options, aggregations):
    """Extract and probe ``models`` (``{label: model}``): per model ``{"layers", "depth", "accuracies"}``, and the
    number of classes."""
    sizes = {common.image_size(model) for model in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"--models must share one input size, got {sizes}")
    size = sizes.pop()
    num_classes = data_lib.dataset_info(options.dataset, data_dir=options.data_dir).num_classes
    train_images, train_labels = shared.load_arrays(options, size, split="train", num_examples=options.train_pool)
    test_images, test_labels = shared.load_arrays(options, size)
    results = {}
    for label, model in models.items():
        train = extract_probe_features(model, train_images, options.batch_size, options.token_grid, aggregations)
        test = extract_probe_features(model, test_images, options.batch_size, options.token_grid, aggregations)
        bar = shared.progress_bar(len(test), options, unit_name="layer")
        accuracies = probe_accuracies(train, train_labels, test, test_labels, num_classes, options.shots,
                                      options.probe_seeds, options.l2_reg, progress=bar)
        layers = list(accuracies)
        results[label] = {"layers": layers, "depth": shared.normalized_depth(len(layers)), "accuracies": accuracies}
    return results, num_classes, len(test_labels)


@shared.single_threaded_blas
def run(options):
    """Probes, figures and the finding; writes the files listed in the module docstring."""
    started = time.perf_counter()
    os.makedirs(options.out, exist_ok=True)
    models = shared.load_models(options.models, options)
    results, num_classes, num_test = probe_model_set(models, options, ("tokens",) + AGGREGATIONS)

    arrays, summary_models, token_series, aggregate_series = {}, {}, {}, {}
    for label, result in results.items():
        layers, depth, accuracies = result["layers"], result["depth"], result["accuracies"]
        token_mean = np.stack([accuracies[layer]["tokens"].mean(axis=0) for layer in layers])  # [L, S]
        arrays.update({f"{label}/layers": np.array(layers), f"{label}/depth": depth,
                       f"{label}/per_token_mean": token_mean,
                       **{f"{label}/per_token/{layer}": accuracies[layer]["tokens"] for layer in layers}})
        mean, low, high = seed_band(token_mean, options)
        token_series[label] = (depth, mean, low, high)
        item = {"layers": layers, "depth": depth,
                "num_probed_tokens": [int(len(accuracies[layer]["tokens"])) for layer in layers],
                "per_token": {"mean": mean, "low": low, "high": high}}
        for name in AGGREGATIONS:
            if name not in accuracies[layers[0]]:
                continue
            values = np.stack([accuracies[layer][name] for layer in layers])  # [L, S]
            arrays[f"{label}/{name}"] = values
            mean, low, high = seed_band(values, options)
            item[name] = {"mean": mean, "low": low, "high": high}
            aggregate_series[f"{label}: {AGGREGATION_NAMES[name]}"] = (depth, mean, low, high)
        summary_models[label] = item

    findings = []
    cls_vit = next((label for label, model in models.items() if shared.is_cls_vit(model)), None)
    gap_vit = next((label for label, model in models.items() if shared.is_gap_vit(model)), None)
    if cls_vit is not None and gap_vit is not None:
        top = {label: arrays[f"{label}/per_token_mean"][-1] for label in (cls_vit, gap_vit)}  # [S]
        difference = top[gap_vit] - top[cls_vit]
        if len(difference) >= 2:
            estimate, low, high = bootstrap.bootstrap_interval(np.mean, difference, num_resamples=1000,
                                                               seed=options.seed)
        else:
            estimate, low, high = float(difference[0]), np.nan, np.nan
        findings.append(Finding(
            key="cls_vit_spatial_tokens_probe_poorly", section="7",
            claim="In the top layer, single spatial tokens of a CLS-token ViT classify poorly compared with the "
                  "tokens of a GAP ViT",
            quantity=f"{options.shots}-shot linear-probe accuracy averaged over probed spatial tokens of the top "
                     f"layer ({results[gap_vit]['layers'][-1]}): {gap_vit} minus {cls_vit}",
            value=estimate, low=low, high=high, threshold=0.0, direction="greater",
            detail=shared.common_detail(
                options, models=[gap_vit, cls_vit], shots=options.shots, seeds=list(options.probe_seeds),
                train_pool=options.train_pool, test_examples=num_test,
                probed_tokens=summary_models[cls_vit]["num_probed_tokens"][-1],
                top_layer_accuracy={label: float(values.mean()) for label, values in top.items()},
                chance=1.0 / num_classes,
                interval="percentile bootstrap over probe seeds (paired few-shot draws); test-set sampling "
                         "variation not included")))

    shots = f"{options.shots}-shot"
    figures = {
        "probes_per_token.png": plotting.line_plot(
            token_series, title=f"{shots} probes on single tokens (mean over probed tokens)",
            xlabel="normalised layer depth", ylabel="test accuracy", hlines=(1.0 / num_classes,), ylim=(0.0, 1.0),
            figsize=(6.5, 4.5)),
        "probes_aggregations.png": plotting.line_plot(
            aggregate_series, title=f"{shots} probes on CLS / GAP / single-token features",
            xlabel="normalised layer depth", ylabel="test accuracy", hlines=(1.0 / num_classes,), ylim=(0.0, 1.0),
            figsize=(7.0, 4.5)),
    }
    atomic_io.save_npz(os.path.join(options.out, "probes.npz"), **arrays)
    for name, figure in figures.items():
        atomic_io.save_figure(figure, os.path.join(options.out, name), dpi=120)
    summary = {"module": "sec7_linear_probes", "shots": options.shots, "seeds": list(options.probe_seeds),
               "train_pool": options.train_pool, "test_examples": num_test, "num_classes": num_classes,
               "chance_accuracy": 1.0 / num_classes, "models": summary_models,
               "findings": [finding.to_dict() for finding in findings],
               "files": sorted(["probes.npz", *figures, common.SUMMARY_FILE]),
               "seconds": time.perf_counter() - started}
    return common.write_summary(options, summary)


def main(argv=None):
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
