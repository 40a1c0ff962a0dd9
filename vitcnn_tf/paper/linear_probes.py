"""Section 7 (Figure 11): closed-form few-shot linear probes on single tokens and aggregated tokens, by depth.

Roles (:func:`run`): ``cls_vit``, a CLS-token ViT; optionally ``gap_vit`` (a GAP ViT: the comparison of the
finding, skipped with the reason "no GAP ViT given" without it) and ``resnet``.

For each model and each representation of its residual stream (ViT ``embedding``, ``blockNN/+sa``,
``blockNN/+mlp``; ResNetV2 the root and every unit output; Mixer ``stem`` and every ``+token_mixing`` /
``+channel_mixing``), at normalised depth 0 .. 1, probes (``vitcnn_tf.analysis.probes.fewshot_linear_probe``:
whitened features, bias column, ±1 targets, ridge with ``l2_reg``) are fitted on ``shots`` examples per class
drawn from the training pool (one draw per seed of ``probe_seeds``; every model and layer sees the same draws)
and scored on the test images. Features:

* per token (left pane): each token separately (spatial tokens only: the CLS token is excluded; a ResNet "token"
  is all channels at one position). Only a ``token_grid`` x ``token_grid`` evenly spaced subset of the positions
  is probed (the centres of a k x k partition of the grid: 16 of ViT-B/16's 196 tokens by default); their
  accuracies are averaged;
* aggregations (right pane): ``cls`` (the CLS token, CLS ViTs only), ``gap`` (the mean over all spatial tokens /
  positions) and ``single`` (one spatial token: the one at the grid centre ``(h // 2, w // 2)``).

Memory: only the probed features are kept (``[n, K, d]`` tokens and ``[n, d]`` per aggregation, float32), and the
layers are extracted in chunks whose train and test features fit in ``max_feature_bytes`` (a layer above the
budget is a chunk of its own): each chunk is one pass over the train and the test dataset extracting only its
layers (earlier layers are recomputed, not stored). For ViT-B/16 (d = 768, K = 16 probed tokens plus the CLS, GAP
and single-token features) a layer holds 19 x 768 x 4 B = 58 KB per example: 584 MB for 10,000 train images
(1,000 classes x 10 shots) plus 60 MB for 1,024 test images, so the default budget of 2 GiB holds 3 of its 25
residual-stream layers per chunk (9 chunks). Peak memory is about the budget plus one batch of the chunk's
activations and one probe fit (the float64 ``[N, d + 1]`` design matrix, 62 MB at N = 10,000): about 2.5 GB for
ViT-B/16 at 10,000 train images. BiT-R50x1's last-stage outputs (2,048 channels) hold 18 x 2048 x 4 B = 147 KB
per example, 1.6 GB for 11,024 images: one layer per chunk. The datasets must yield the same examples in the
same order on every pass (checked through their labels).

Finding (95% percentile bootstrap over the probe seeds; every seed's difference is paired; threshold from
``vitcnn_tf.claims``):
  cls_vit_spatial_tokens_probe_poorly  top-layer mean per-token accuracy of the GAP ViT minus that of the CLS
                                       ViT's spatial tokens, > 0.05 (5 points)
"""

import numpy as np

from vitcnn_tf import claims, grids, plotting, representations
from vitcnn_tf.analysis import bootstrap, probes, tokens
from vitcnn_tf.findings import Finding
from vitcnn_tf.paper import common, evaluation
from vitcnn_tf.paper.result import FigureSpec, SectionResult

AGGREGATIONS = ("cls", "gap", "single")
AGGREGATION_NAMES = {"cls": "CLS token", "gap": "GAP of tokens", "single": "single token", "tokens": "per token"}
DEFAULT_MAX_FEATURE_BYTES = 2**31
NO_GAP_REASON = "no GAP ViT given"


def spatial_grid(value, num_prefix_tokens):
    """A tap value as ``[n, h, w, d]`` spatial tokens: a token tap ``[n, T, d]`` without its prefix tokens on its
    square grid, or a feature map as it is."""
    if value.ndim == 4:
        return value
    if value.ndim != 3:
        raise ValueError(f"expected tokens [n, T, d] or a map [n, h, w, c], got shape {value.shape}")
    spatial = value[:, num_prefix_tokens:]
    side = grids.square_side(spatial.shape[1], f"tokens of shape {value.shape} without {num_prefix_tokens} prefix "
                                               "tokens")
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


def feature_bytes_per_example(model, layers, token_grid, aggregations):
    """``{layer: bytes}`` of the float32 probe features of one example at each of ``layers`` of ``model``."""
    shapes = representations.tap_shapes(model, list(layers))
    prefix = tokens.infer_num_prefix_tokens(model)
    sizes = {}
    for layer in layers:
        empty = np.zeros((1, *shapes[layer]), dtype=np.float32)
        sizes[layer] = sum(feature.nbytes for feature in
                           token_features(empty, prefix, token_grid, aggregations).values())
    return sizes


def layer_chunks(layer_bytes, max_bytes):
    """Consecutive runs of the layers of ``layer_bytes`` (``{layer: bytes}``, in order) whose bytes add up to at
    most ``max_bytes`` (a layer above the budget is a chunk of its own)."""
    chunks, total = [], 0
    for layer, size in layer_bytes.items():
        if chunks and total + size <= max_bytes:
            chunks[-1].append(layer)
            total += size
        else:
            chunks.append([layer])
            total = size
    return chunks


def extract_probe_features(model, data, layers, token_grid, aggregations, name="data"):
    """One pass over ``data`` (``(images [b, S, S, 3], labels [b])`` batches): ``({layer: {aggregation:
    array}}, labels [n])`` for ``layers`` of ``model``, keeping only the probed features of every batch."""
    prefix = tokens.infer_num_prefix_tokens(model)
    parts, labels = {layer: {} for layer in layers}, []
    for element in data:
        images, batch_labels = element[0], element[1]
        values = representations.extract(model, np.asarray(images, dtype=np.float32), list(layers))
        labels.append(np.asarray(batch_labels))
        for layer in layers:
            for feature_name, feature in token_features(values[layer], prefix, token_grid, aggregations).items():
                parts[layer].setdefault(feature_name, []).append(feature)
    if not labels:
        raise ValueError(f"{name}: the dataset is empty")
    features = {layer: {feature_name: np.concatenate(chunks) for feature_name, chunks in by_name.items()}
                for layer, by_name in parts.items()}
    return features, np.concatenate(labels).astype(np.int64)


def probe_accuracies(train_features, train_labels, test_features, test_labels, num_classes, shots, seeds, l2_reg,
                     progress=None):
    """Few-shot probe accuracies for features ``{layer: {aggregation: [n, d] or tokens [n, K, d]}}``:
    ``{layer: {aggregation: [S] (or [K, S] for tokens)}}`` over the seeds ``seeds`` (the same draws for every
    layer). ``progress``: an optional ``keras.utils.Progbar`` advanced once per layer."""
    draws = [probes.fewshot_sample(train_labels, shots, seed, num_classes) for seed in seeds]
    results = {}
    for layer, by_name in test_features.items():
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
            progress.add(1)
    return results


def probe_model(model, train_data, test_data, num_classes, *, aggregations, shots, probe_seeds, token_grid, l2_reg,
                num_examples, max_feature_bytes=DEFAULT_MAX_FEATURE_BYTES, progress=False):
    """Probe every residual-stream layer of ``model``, the layers extracted in chunks of at most
    ``max_feature_bytes`` of train and test features (module docstring; ``num_examples``: the train plus test
    examples, see :func:`count_examples`): ``{"layers", "depth" [L], "accuracies": {layer: {aggregation: [S] or
    [K, S]}}, "test_examples"}``."""
    if isinstance(max_feature_bytes, bool) or not isinstance(max_feature_bytes, (int, np.integer)) \
            or max_feature_bytes < 1:
        raise ValueError(f"max_feature_bytes: expected a positive int, got {max_feature_bytes!r}")
    layers = common.residual_stream_layers(model)
    train_labels = test_labels = None
    per_example = feature_bytes_per_example(model, layers, token_grid, aggregations)
    accuracies = {}
    bar = evaluation.progress_bar(len(layers), progress, unit_name="layer")
    chunks = layer_chunks({layer: size * num_examples for layer, size in per_example.items()}, max_feature_bytes)
    for chunk in chunks:
        train, chunk_train_labels = extract_probe_features(model, train_data, chunk, token_grid, aggregations,
                                                           "train_data")
        test, chunk_test_labels = extract_probe_features(model, test_data, chunk, token_grid, aggregations,
                                                         "test_data")
        if train_labels is None:
            train_labels, test_labels = chunk_train_labels, chunk_test_labels
        elif not (np.array_equal(train_labels, chunk_train_labels) and np.array_equal(test_labels, chunk_test_labels)):
            raise ValueError("train_data / test_data: the datasets yielded other examples on a second pass; they "
                             "must give the same examples in the same order on every pass (no reshuffling)")
        accuracies.update(probe_accuracies(train, train_labels, test, test_labels, num_classes, shots, probe_seeds,
                                           l2_reg, progress=bar))
    return {"layers": layers, "depth": common.normalised_depths(len(layers)), "accuracies": accuracies,
            "test_examples": int(len(test_labels))}


def count_examples(data):
    """``(examples, size of the first batch)`` of a dataset of ``(images, labels)`` batches (one pass)."""
    sizes = [int(np.shape(element[1])[0]) for element in data]
    if not sizes:
        raise ValueError("the dataset is empty")
    return sum(sizes), sizes[0]


def seed_band(accuracies, seed):
    """``(mean [L], low [L], high [L])`` over the seeds of ``accuracies [L, S]``: the mean and its 95% percentile
    bootstrap interval over seeds (the mean itself when there is a single seed)."""
    accuracies = np.asarray(accuracies, dtype=np.float64)
    mean = accuracies.mean(axis=1)
    if accuracies.shape[1] < 2:
        return mean, mean, mean
    # Resample the seeds (rows of accuracies.T [S, L]); vectorized: [r, S, L] -> [r, L].
    _, low, high = bootstrap.bootstrap_interval(lambda a: a.mean(axis=1), accuracies.T, num_resamples=1000,
                                                seed=seed, vectorized=True)
    return mean, low, high


def check_probe_settings(num_classes, shots, probe_seeds, token_grid):
    """Validate the probe settings shared by Figures 11 and 13; returns the seeds as a list."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots: expected an int >= 1, got {shots!r}")
    if isinstance(token_grid, bool) or not isinstance(token_grid, (int, np.integer)) or token_grid < 1:
        raise ValueError(f"token_grid: expected an int >= 1, got {token_grid!r}")
    seeds = [int(seed) for seed in probe_seeds]
    if not seeds:
        raise ValueError("probe_seeds: expected at least one seed")
    return seeds


@evaluation.single_threaded_blas
def run(cls_vit, gap_vit=None, resnet=None, *, train_data, test_data, num_classes, shots=10,
        probe_seeds=tuple(range(10)), token_grid=4, l2_reg=probes.DEFAULT_L2_REG,
        max_feature_bytes=DEFAULT_MAX_FEATURE_BYTES, seed=0, progress=False, context=None):
    """Figure 11 (see the module docstring for the roles, features, memory and the finding).

    Args:
      cls_vit: a CLS-token ViT, a ``keras.Model`` (labelled by its ``name``) or a ``(label, model)`` pair.
      gap_vit: optional GAP ViT (model or pair); without it the finding is skipped.
      resnet: optional ResNetV2 (model or pair).
      train_data: ``tf.data`` dataset of ``(images [b, S, S, 3], labels [b])`` batches, the pool the few-shot sets
        are drawn from (at least ``shots`` examples of each of the ``num_classes`` classes).
      test_data: the same for the test images.
      num_classes: number of classes of the labels.
      shots, probe_seeds: examples per class and one draw per seed.
      token_grid: probe a ``token_grid`` x ``token_grid`` evenly spaced subset of the token positions.
      l2_reg: the ridge penalty.
      max_feature_bytes: budget of the train and test features held at once (layers are extracted in chunks).
      seed: seed of the bootstrap over probe seeds.
      progress: show progress bars.
      context: optional JSON-able dict recorded in the finding's detail (e.g. ``{"dataset": "imagenet2012"}``).

    Returns a :class:`SectionResult` with array group ``probes``, Figure 11's two panes and the finding.
    """
    probe_seeds = check_probe_settings(num_classes, shots, probe_seeds, token_grid)
    models, cls_label, gap_label = common.token_role_models(cls_vit, gap_vit, resnet)
    (num_train, _), (num_test, test_batch_size) = count_examples(train_data), count_examples(test_data)

    results = {label: probe_model(model, train_data, test_data, num_classes, aggregations=("tokens",) + AGGREGATIONS,
                                  shots=shots, probe_seeds=probe_seeds, token_grid=token_grid, l2_reg=l2_reg,
                                  num_examples=num_train + num_test, max_feature_bytes=max_feature_bytes,
                                  progress=progress)
               for label, model in models.items()}

    arrays, summary_models, token_series, aggregate_series = {}, {}, {}, {}
    for label, result in results.items():
        layers, depth, accuracies = result["layers"], result["depth"], result["accuracies"]
        token_mean = np.stack([accuracies[layer]["tokens"].mean(axis=0) for layer in layers])  # [L, S]
        arrays.update({f"{label}/layers": np.array(layers), f"{label}/depth": depth,
                       f"{label}/per_token_mean": token_mean,
                       **{f"{label}/per_token/{layer}": accuracies[layer]["tokens"] for layer in layers}})
        mean, low, high = seed_band(token_mean, seed)
        token_series[label] = (depth, mean, low, high)
        item = {"layers": layers, "depth": depth,
                "num_probed_tokens": [int(len(accuracies[layer]["tokens"])) for layer in layers],
                "per_token": {"mean": mean, "low": low, "high": high}}
        for name in AGGREGATIONS:
            if name not in accuracies[layers[0]]:
                continue
            values = np.stack([accuracies[layer][name] for layer in layers])  # [L, S]
            arrays[f"{label}/{name}"] = values
            mean, low, high = seed_band(values, seed)
            item[name] = {"mean": mean, "low": low, "high": high}
            aggregate_series[f"{label}: {AGGREGATION_NAMES[name]}"] = (depth, mean, low, high)
        summary_models[label] = item

    findings, skipped = [], []
    if gap_label is not None:
        top = {label: arrays[f"{label}/per_token_mean"][-1] for label in (cls_label, gap_label)}  # [S]
        difference = top[gap_label] - top[cls_label]
        if len(difference) >= 2:
            estimate, low, high = bootstrap.bootstrap_interval(np.mean, difference, num_resamples=1000, seed=seed)
        else:
            estimate, low, high = float(difference[0]), np.nan, np.nan
        threshold, direction = claims.threshold("cls_vit_spatial_tokens_probe_poorly")
        findings.append(Finding(
            key="cls_vit_spatial_tokens_probe_poorly", section="7",
            claim="In the top layer, single spatial tokens of a CLS-token ViT classify poorly compared with the "
                  "tokens of a GAP ViT",
            quantity=f"{shots}-shot linear-probe accuracy averaged over probed spatial tokens of the top "
                     f"layer ({results[gap_label]['layers'][-1]}): {gap_label} minus {cls_label}",
            value=estimate, low=low, high=high, threshold=threshold, direction=direction,
            detail=evaluation.finding_detail(
                context, num_test, test_batch_size, seed, models=[gap_label, cls_label], shots=shots,
                seeds=probe_seeds, train_pool=num_train, test_examples=num_test,
                probed_tokens=summary_models[cls_label]["num_probed_tokens"][-1],
                top_layer_accuracy={label: float(values.mean()) for label, values in top.items()},
                chance=1.0 / num_classes,
                interval="percentile bootstrap over probe seeds (paired few-shot draws); test-set sampling "
                         "variation not included")))
    else:
        skipped.append({"paper_figure": "11", "part": "GAP ViT lines and cls_vit_spatial_tokens_probe_poorly",
                        "reason": NO_GAP_REASON})

    title = f"{shots}-shot"
    chance = 1.0 / num_classes
    figures = [
        FigureSpec(
            file="probes_per_token.png", paper_figure="11",
            caption=f"Figure 11 (left): {title} linear-probe test accuracy of single spatial tokens (mean over the "
                    "probed tokens) at every residual-stream layer, by normalised depth (95% bands over seeds).",
            look_for="In the higher layers the CLS ViT's spatial tokens classify poorly (they are not trained to), "
                     "unlike the GAP ViT's and the ResNet's tokens.",
            draw=lambda: plotting.line_plot(
                token_series, title=f"{title} probes on single tokens (mean over probed tokens)",
                xlabel="normalised layer depth", ylabel="test accuracy", hlines=(chance,), ylim=(0.0, 1.0),
                figsize=(6.5, 4.5))),
        FigureSpec(
            file="probes_aggregations.png", paper_figure="11",
            caption=f"Figure 11 (right): {title} linear-probe test accuracy of the CLS token, the mean of the "
                    "tokens (GAP) and one central token, by normalised depth (95% bands over seeds).",
            look_for="The CLS token (and the GAP of tokens) become linearly separable only in the higher layers.",
            draw=lambda: plotting.line_plot(
                aggregate_series, title=f"{title} probes on CLS / GAP / single-token features",
                xlabel="normalised layer depth", ylabel="test accuracy", hlines=(chance,), ylim=(0.0, 1.0),
                figsize=(7.0, 4.5))),
    ]
    summary = {"shots": shots, "seeds": probe_seeds, "train_pool": num_train,
               "test_examples": num_test, "num_classes": num_classes, "chance_accuracy": chance,
               "models": summary_models, "skipped": skipped}
    return SectionResult(experiment="linear_probes", arrays={"probes": arrays}, findings=findings, summary=summary,
                         figures=figures)
