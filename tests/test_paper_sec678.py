"""The Section 6-8 analyses of ``vitcnn_tf.paper`` on tiny models: every saved array recomputed from the lower-level
library (``analysis.skip``, ``analysis.localization``, ``analysis.probes``, ``metrics.reference``) on the same
inputs, every finding's value recomputed from the arrays, the chunked probes against the all-in-memory ones, and
the optional roles.
"""

import matplotlib
import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf import claims, representations
from vitcnn_tf.analysis import localization as localization_lib
from vitcnn_tf.analysis import probes, skip
from vitcnn_tf.metrics import reference
from vitcnn_tf.models import get_model
from vitcnn_tf.paper import data_scale, linear_probes, localization, skip_connections

TINY_VIT = dict(image_size=16, hidden_size=8, mlp_dim=16, num_heads=2)
TINY_RESNET = dict(image_size=16, width_factor=0.125)
BATCH = 8


def vit(num_layers=2, **overrides):
    return get_model("ViT-CPU/4", num_layers=num_layers, **TINY_VIT, **overrides)


def resnet():
    return get_model("ResNetV2-CPU", **TINY_RESNET)


def images_and_labels(n, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (n, 16, 16, 3)).astype("float32")
    return images, np.arange(n, dtype=np.int64) % num_classes


def dataset(images, labels, batch_size=BATCH):
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def extract(model, images, layer):
    """``layer`` of ``model`` over ``images`` in the analyses' minibatches (the same float32 values)."""
    return np.concatenate([representations.extract(model, images[s:s + BATCH], [layer])[layer]
                           for s in range(0, len(images), BATCH)])


def draw_all(result):
    for figure_spec in result.figures:
        figure = figure_spec.draw()
        assert isinstance(figure, matplotlib.figure.Figure) and figure.axes
        assert figure_spec.caption and figure_spec.look_for


def finding(result, key):
    return next(item for item in result.findings if item.key == key)


# ---------------------------------------------------------------------------------------------------------
# Section 6


@pytest.fixture(scope="module")
def skip_setup():
    tf.keras.utils.set_random_seed(0)
    models = {"cls": vit(3), "res": resnet(), "noskip": vit(3, skip_blocks_removed=(1,))}
    images, labels = images_and_labels(32)
    result = skip_connections.run(("cls", models["cls"]), resnet=("res", models["res"]),
                                  no_skip_models={"noskip": models["noskip"]}, data=dataset(images, labels),
                                  known_accuracies={"cls": 0.5}, bootstrap_resamples=20, seed=3)
    return models, images, labels, result


def test_norm_ratio_arrays_are_the_analysis_norm_ratios(skip_setup):
    models, images, _, result = skip_setup
    arrays = result.arrays["norm_ratios"]
    for label in ("cls", "res"):
        expected = skip.norm_ratios(models[label], images, batch_size=BATCH)
        units = list(expected)
        assert arrays[f"{label}/units"].tolist() == units
        np.testing.assert_allclose(arrays[f"{label}/ratio"], [expected[u]["ratio"] for u in units], rtol=1e-12)
    cls_expected = skip.norm_ratios(models["cls"], images, batch_size=BATCH)
    for part in ("cls", "spatial"):
        np.testing.assert_allclose(arrays[f"cls/ratio_{part}"], [v[f"ratio_{part}"] for v in cls_expected.values()],
                                   rtol=1e-12)
    np.testing.assert_allclose(arrays["cls/ratio_per_token"],
                               np.stack([v["ratio_per_token"] for v in cls_expected.values()]), rtol=1e-12)
    assert arrays["cls/ratio_per_token"].shape == (6, 17)  # 3 blocks x (sa, mlp); CLS + 16 tokens


def test_norm_ratio_findings_are_recomputed_from_the_arrays(skip_setup):
    _, _, _, result = skip_setup
    arrays = result.arrays["norm_ratios"]
    dominates = finding(result, "vit_skip_branch_dominates")
    assert dominates.value == pytest.approx(np.log(arrays["cls/ratio"]).mean() - np.log(arrays["res/ratio"]).mean(),
                                            rel=1e-9)
    assert dominates.low <= dominates.high
    gap = np.log(arrays["cls/ratio_cls"]) - np.log(arrays["cls/ratio_spatial"])
    first_half = np.array([int(name[5:7]) < 1.5 for name in arrays["cls/units"]])  # blockNN/...: blocks 0, 1 of 3
    phase = finding(result, "cls_spatial_phase_change")
    assert phase.value == pytest.approx(gap[first_half].mean() - gap[~first_half].mean(), rel=1e-9)
    assert phase.detail["seed"] == 3 and phase.detail["num_examples"] == 32 and phase.detail["batch_size"] == BATCH
    for found in (dominates, phase):
        assert (found.threshold, found.direction) == claims.threshold(found.key)


def test_skip_removal_cka_is_the_reference_minibatch_cka_and_the_partition_is_recomputed(skip_setup):
    models, images, labels, result = skip_setup
    arrays = result.arrays["skip_removal_cka"]
    layers = arrays["layers"].tolist()
    assert layers[0] == "embedding" and len(layers) == 7
    for label in ("cls", "noskip"):
        batches = [[value for value in representations.extract(models[label], images[s:s + BATCH], layers).values()]
                   for s in range(0, len(images), BATCH)]
        np.testing.assert_allclose(arrays[f"{label}/cka"], reference.minibatch_cka(batches), atol=2e-5)

    def partition(cka):  # block 1 removed: before = embedding, block00; after = block01/+mlp, block02
        before, after = [0, 1, 2], [4, 5, 6]
        within = np.mean([cka[np.ix_(side, side)][~np.eye(len(side), dtype=bool)].mean() for side in (before, after)])
        return within - cka[np.ix_(before, after)].mean()

    expected = partition(arrays["noskip/cka"]) - partition(arrays["cls/cka"])
    removal = finding(result, "skip_removal_partitions_representation")
    assert removal.value == pytest.approx(expected, abs=1e-9)
    assert (removal.threshold, removal.direction) == claims.threshold("skip_removal_partitions_representation")
    models_summary = result.summary["skip_removal"]["models"]
    assert models_summary["cls"]["test_accuracy"] == 0.5 and models_summary["cls"]["eval_subset_accuracy"] is None
    logits = representations.extract(models["noskip"], images, ["logits"])["logits"]  # as predict_accuracy
    assert models_summary["noskip"]["eval_subset_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_skip_connections_figures_in_the_paper_order(skip_setup):
    _, _, _, result = skip_setup
    assert [(f.file, f.paper_figure) for f in result.figures] == [
        ("norm_ratio_tokens.png", "7"), ("norm_ratio_layers.png", "7"), ("skip_removal_cka.png", "8")]
    assert result.summary["skipped"] == []
    draw_all(result)


def test_skip_connections_without_no_skip_models_skips_figure_8_with_the_reason():
    tf.keras.utils.set_random_seed(1)
    images, labels = images_and_labels(16)
    result = skip_connections.run(vit(), data=dataset(images, labels), bootstrap_resamples=5)
    assert "skip_removal_cka" not in result.arrays and result.summary["skip_removal"] is None
    assert [f.paper_figure for f in result.figures] == ["7", "7"]
    assert result.summary["skipped"] == [{"paper_figure": "8", "file": "skip_removal_cka.png",
                                          "reason": skip_connections.NO_SKIP_REASON}]
    assert "no public checkpoints" in skip_connections.NO_SKIP_REASON
    assert [item.key for item in result.findings] == ["cls_spatial_phase_change"]  # no ResNet: no comparison
    with pytest.raises(ValueError, match="lacks skip connections"):
        skip_connections.run(vit(skip_blocks_removed=(0,)), data=dataset(images, labels))
    with pytest.raises(ValueError, match="expected resnet"):
        skip_connections.run(vit(), resnet=vit(), data=dataset(images, labels))


def test_token_ratio_figure_is_legible_at_paper_scale():
    # ViT-B/16: 197 tokens; ViT-L/16: 24 blocks = 48 residual units.
    units = [f"block{b:02d}/{kind}" for b in range(24) for kind in ("+sa", "+mlp")]
    per_token = np.random.default_rng(0).uniform(0.5, 5.0, (48, 197))
    figure = skip_connections.token_ratio_figure(per_token, units, "ViT-L/16", 1)
    axes = figure.axes[0]
    assert len(axes.get_xticks()) <= 12 and len(axes.get_yticks()) <= 10
    assert axes.get_yticklabels()[0].get_text() == "CLS"


# ---------------------------------------------------------------------------------------------------------
# Section 7: localization


@pytest.fixture(scope="module")
def localization_setup():
    tf.keras.utils.set_random_seed(2)
    models = {"cls": vit(), "gap": vit(classifier="gap"), "res": resnet()}
    images, labels = images_and_labels(32)
    result = localization.run(("cls", models["cls"]), ("gap", models["gap"]), ("res", models["res"]),
                              data=dataset(images, labels), bootstrap_resamples=3, seed=1)
    return models, images, result


def test_token_patch_maps_are_the_analysis_maps_and_the_reference_cka(localization_setup):
    models, images, result = localization_setup
    arrays = result.arrays["token_patch_cka"]
    for label, layer, prefix in (("cls", "block01/+mlp", 1), ("gap", "block01/+mlp", 0),
                                 ("res", representations.select_layers(models["res"], r"block\d+/unit\d+/\+res")[-1],
                                  0)):
        tokens = extract(models[label], images, layer)
        expected = localization_lib.token_patch_cka(tokens, images, 4, num_prefix_tokens=prefix)
        np.testing.assert_allclose(arrays[f"{label}/cka_map"], expected, rtol=1e-6, atol=1e-9)
    # One entry against the NumPy reference: token 5 of the CLS ViT (after the CLS token) with patch 6.
    tokens = extract(models["cls"], images, "block01/+mlp")
    patches = localization_lib.image_patches(images, 4)
    assert arrays["cls/cka_map"][5, 6] == pytest.approx(reference.linear_cka(tokens[:, 1 + 5], patches[:, 6]),
                                                       rel=1e-6)
    assert arrays["res/token_grid"].tolist() == [2, 2] and arrays["res/own_patches"].sum(axis=1).tolist() == [4] * 4


def test_localization_findings_are_recomputed_from_the_maps(localization_setup):
    _, _, result = localization_setup
    arrays = result.arrays["token_patch_cka"]

    def own_share(label):
        cka_map, own = arrays[f"{label}/cka_map"], arrays[f"{label}/own_patches"]
        return np.mean((cka_map * own).sum(axis=1) / cka_map.sum(axis=1))

    localize = finding(result, "cls_vit_tokens_localize")
    assert localize.value == pytest.approx(own_share("cls") * 16, rel=1e-9)  # each token owns 1 of 16 patches
    assert (localize.threshold, localize.direction) == claims.threshold("cls_vit_tokens_localize")
    less = finding(result, "gap_vit_localizes_less")
    assert less.value == pytest.approx((own_share("cls") - own_share("gap")) / own_share("cls"), rel=1e-9)
    assert (less.threshold, less.direction) == claims.threshold("gap_vit_localizes_less")
    assert result.summary["models"]["res"]["own_share_interval"] is None  # not resampled without bootstrap_all
    assert [f.paper_figure for f in result.figures] == ["9, 10", ""]
    draw_all(result)


def test_localization_intervals_are_those_of_the_ratio_and_the_relative_drop(localization_setup):
    # The bootstrap redone by hand: the same draws of examples (seed 1, 3 resamples), every map recomputed with the
    # analysis function, the own-patch shares written out; the ratio to 1/16 and the relative drop per resample.
    models, images, result = localization_setup
    arrays = result.arrays["token_patch_cka"]
    tokens = {label: extract(models[label], images, "block01/+mlp") for label in ("cls", "gap")}
    rng = np.random.default_rng(1)
    ratios, drops = [], []
    for _ in range(3):
        chosen = rng.integers(0, len(images), size=len(images))
        shares = {}
        for label, prefix in (("cls", 1), ("gap", 0)):
            cka_map = localization_lib.token_patch_cka(tokens[label][chosen], images[chosen], 4,
                                                       num_prefix_tokens=prefix)
            own = arrays[f"{label}/own_patches"]
            shares[label] = np.mean((cka_map * own).sum(axis=1) / cka_map.sum(axis=1))
        ratios.append(shares["cls"] * 16)
        drops.append((shares["cls"] - shares["gap"]) / shares["cls"])
    localize, less = finding(result, "cls_vit_tokens_localize"), finding(result, "gap_vit_localizes_less")
    assert [localize.low, localize.high] == pytest.approx(np.percentile(ratios, [2.5, 97.5]), rel=1e-6)
    assert [less.low, less.high] == pytest.approx(np.percentile(drops, [2.5, 97.5]), rel=1e-6, abs=1e-9)
    share = localize.detail["own_share"]
    assert [localize.low, localize.high] == pytest.approx([16 * share["low"], 16 * share["high"]], rel=1e-12)


def test_localization_without_a_gap_vit_skips_its_part_with_the_reason():
    tf.keras.utils.set_random_seed(3)
    images, labels = images_and_labels(16)
    result = localization.run(vit(), data=dataset(images, labels), bootstrap_resamples=2)
    assert [item.key for item in result.findings] == ["cls_vit_tokens_localize"]
    assert result.summary["skipped"][0]["reason"] == "no GAP ViT given"
    with pytest.raises(ValueError, match="CLS-token ViT"):
        localization.run(vit(classifier="gap"), data=dataset(images, labels))


# ---------------------------------------------------------------------------------------------------------
# Section 7: linear probes


@pytest.fixture(scope="module")
def probe_setup():
    tf.keras.utils.set_random_seed(4)
    models = {"cls": vit(), "gap": vit(classifier="gap"), "res": resnet()}
    train = images_and_labels(32, seed=1)
    test = images_and_labels(16, seed=2)
    result = linear_probes.run(("cls", models["cls"]), ("gap", models["gap"]), ("res", models["res"]),
                               train_data=dataset(*train), test_data=dataset(*test), num_classes=4, shots=3,
                               probe_seeds=(0, 1), token_grid=2)
    return models, train, test, result


def test_probe_arrays_are_the_analysis_probes_on_the_same_features(probe_setup):
    models, (train_x, train_y), (test_x, test_y), result = probe_setup
    arrays = result.arrays["probes"]
    draws = [probes.fewshot_sample(train_y, 3, seed, 4) for seed in (0, 1)]
    train, test = extract(models["cls"], train_x, "block00/+mlp"), extract(models["cls"], test_x, "block00/+mlp")
    # token_grid 2 on the 4 x 4 grid probes rows / columns 1 and 3: token (1, 3) is spatial token 7, tap token 8.
    expected = [probes.fewshot_linear_probe(train[draw, 8], train_y[draw], test[:, 8], test_y, 4) for draw in draws]
    np.testing.assert_array_equal(arrays["cls/per_token/block00/+mlp"][1], expected)
    expected_cls = [probes.fewshot_linear_probe(train[draw, 0], train_y[draw], test[:, 0], test_y, 4) for draw in draws]
    np.testing.assert_array_equal(arrays["cls/cls"][2], expected_cls)  # layers: embedding, block00/+sa, +mlp, ...
    expected_gap = [probes.fewshot_linear_probe(train[draw, 1:].mean(1), train_y[draw], test[:, 1:].mean(1), test_y, 4)
                    for draw in draws]
    np.testing.assert_allclose(arrays["cls/gap"][2], expected_gap)
    assert arrays["cls/layers"].tolist()[2] == "block00/+mlp" and "gap/cls" not in arrays
    np.testing.assert_allclose(arrays["cls/per_token_mean"][2], arrays["cls/per_token/block00/+mlp"].mean(axis=0))


def test_probe_finding_is_recomputed_from_the_arrays(probe_setup):
    _, _, _, result = probe_setup
    arrays = result.arrays["probes"]
    poorly = finding(result, "cls_vit_spatial_tokens_probe_poorly")
    assert poorly.value == pytest.approx(np.mean(arrays["gap/per_token_mean"][-1] - arrays["cls/per_token_mean"][-1]))
    assert poorly.detail["train_pool"] == 32 and poorly.detail["test_examples"] == 16
    assert (poorly.threshold, poorly.direction) == claims.threshold("cls_vit_spatial_tokens_probe_poorly")
    assert [f.paper_figure for f in result.figures] == ["11", "11"]
    draw_all(result)


def test_chunked_probes_equal_the_all_in_memory_probes(probe_setup):
    models, train, test, _ = probe_setup
    settings = dict(aggregations=("tokens", "cls", "gap"), shots=3, probe_seeds=[0], token_grid=2,
                    l2_reg=probes.DEFAULT_L2_REG, num_examples=48)
    for model in (models["cls"], models["res"]):
        whole = linear_probes.probe_model(model, dataset(*train), dataset(*test), 4, max_feature_bytes=2**40,
                                          **settings)
        chunked = linear_probes.probe_model(model, dataset(*train), dataset(*test), 4, max_feature_bytes=1,
                                            **settings)
        assert chunked["layers"] == whole["layers"]
        for layer in whole["layers"]:
            for name, values in whole["accuracies"][layer].items():
                np.testing.assert_array_equal(chunked["accuracies"][layer][name], values)


def test_layer_chunks_respect_the_budget():
    sizes = {"a": 4, "b": 4, "c": 9, "d": 1}
    assert linear_probes.layer_chunks(sizes, 8) == [["a", "b"], ["c"], ["d"]]
    assert linear_probes.layer_chunks(sizes, 100) == [["a", "b", "c", "d"]]
    per_example = linear_probes.feature_bytes_per_example(vit(), ["embedding"], 2, ("tokens", "cls", "gap"))
    assert per_example == {"embedding": (4 + 2) * 8 * 4}  # 4 tokens + CLS + GAP features of 8 float32 each


def test_probes_without_a_gap_vit_skip_the_finding_and_reshuffled_data_is_refused():
    tf.keras.utils.set_random_seed(5)
    train, test = images_and_labels(16, seed=1), images_and_labels(8, seed=2)
    result = linear_probes.run(vit(), train_data=dataset(*train), test_data=dataset(*test), num_classes=4, shots=2,
                               probe_seeds=(0,), token_grid=1)
    assert result.findings == [] and result.summary["skipped"][0]["reason"] == "no GAP ViT given"
    reshuffled = tf.data.Dataset.from_tensor_slices(train).shuffle(16, reshuffle_each_iteration=True).batch(8)
    with pytest.raises(ValueError, match="same order on every pass"):
        linear_probes.probe_model(vit(), reshuffled, dataset(*test), 4, aggregations=("gap",), shots=2,
                                  probe_seeds=[0], token_grid=1, l2_reg=1.0, num_examples=24, max_feature_bytes=1)


# ---------------------------------------------------------------------------------------------------------
# Section 8


def test_data_scale_cka_is_the_reference_minibatch_cka_and_the_finding_is_recomputed():
    tf.keras.utils.set_random_seed(6)
    large, small = vit(2), vit(2)
    images, labels = images_and_labels(32)
    train = images_and_labels(16, seed=1)
    result = data_scale.run({"large": large, "small": small}, {"large": 1.0, "small": 0.09},
                            data=dataset(images, labels), probe_train_data=dataset(*train), num_classes=4, shots=2,
                            probe_seeds=(0, 1), bootstrap_resamples=10, data_names={"small": "ImageNet-1k"})
    arrays = result.arrays["data_scale_cka"]
    blocks = arrays["vit/blocks"].tolist()
    assert blocks == ["block00/+mlp", "block01/+mlp"]
    batches = [[representations.extract(m, images[s:s + BATCH], blocks)[b] for b in blocks]
               for m in (large, small) for s in range(0, len(images), BATCH)]
    half = len(batches) // 2
    expected = reference.minibatch_cka(batches[:half], batches[half:])
    np.testing.assert_allclose(arrays["vit/small/cka"], expected, atol=2e-5)
    diagonal = np.diagonal(arrays["vit/small/cka"])
    less = finding(result, "less_data_hurts_higher_layers_more")
    assert less.value == pytest.approx(diagonal[0] - diagonal[1], abs=1e-9)
    assert (less.threshold, less.direction) == claims.threshold("less_data_hurts_higher_layers_more")
    probe_arrays = result.arrays["data_scale_probes"]
    train_x, train_y = train
    features = extract(small, train_x, "embedding")[:, 1:].mean(axis=1)
    test_features = extract(small, images, "embedding")[:, 1:].mean(axis=1)
    expected_gap = [probes.fewshot_linear_probe(features[draw], train_y[draw], test_features, labels, 4)
                    for draw in (probes.fewshot_sample(train_y, 2, seed, 4) for seed in (0, 1))]
    np.testing.assert_allclose(probe_arrays["small/gap"][0], expected_gap)
    assert [f.paper_figure for f in result.figures] == ["12", "13"]
    legend = result.figures[1].draw().axes[0].get_legend()  # Figure 13: one line per model
    assert "ImageNet-1k (small)" in [text.get_text() for text in legend.get_texts()]
    draw_all(result)
    with pytest.raises(ValueError, match="exactly one trained on all the data"):
        data_scale.run({"a": large, "b": small}, {"a": 0.5, "b": 0.1}, data=dataset(images, labels),
                       probe_train_data=dataset(*train), num_classes=4)


def test_block_ticks_stay_few_at_32_blocks():
    positions, labels = data_scale.block_ticks([f"block{b:02d}/+mlp" for b in range(32)])
    assert len(positions) <= data_scale.MAX_BLOCK_TICKS and labels[0] == "b00"
    assert data_scale.block_ticks(["block1/unit01/+res"])[1] == ["b1u01"]


# ---------------------------------------------------------------------------------------------------------
# Checks beyond CKA: every finding's Procrustes statistic and CKA null recomputed with the NumPy reference


def checked_indices(count, cap):
    return np.round(np.linspace(0, count - 1, cap)).astype(int)


def reference_minibatch(x_layers, y_layers, order):
    y_layers = [y if order is None else y[order] for y in y_layers]
    starts = range(0, len(x_layers[0]), BATCH)
    return reference.minibatch_cka([[x[s:s + BATCH] for x in x_layers] for s in starts],
                                   [[y[s:s + BATCH] for y in y_layers] for s in starts])


def assert_null(null, statistic, count, permutations, seed, tolerance=1e-4):
    orders = reference.permutations(count, permutations, seed)
    expected = reference.null_summary(statistic(None), [statistic(order) for order in orders])
    for key in ("value", "null_mean", "null_q95", "p_value"):
        assert null[key] == pytest.approx(expected[key], abs=tolerance), key
    assert null["num_examples"] == count and null["num_permutations"] == permutations


def test_skip_removal_checks_recomputed_with_the_reference():
    tf.keras.utils.set_random_seed(7)
    models = {"cls": vit(3), "noskip": vit(3, skip_blocks_removed=(1,))}
    images, labels = images_and_labels(32)
    result = skip_connections.run(("cls", models["cls"]), no_skip_models={"noskip": models["noskip"]},
                                  data=dataset(images, labels), bootstrap_resamples=5, seed=4, check_examples=16,
                                  null_permutations=4)
    removal = finding(result, "skip_removal_partitions_representation")
    names = result.arrays["skip_removal_cka"]["layers"].tolist()
    checked = images[checked_indices(32, 16)]
    features = {label: [representations.extract(model, checked, names)[name] for name in names]
                for label, model in models.items()}
    procrustes = {label: np.array([[reference.procrustes_similarity(a, b) for b in layers] for a in layers])
                  for label, layers in features.items()}
    expected = (skip_connections.partition_scalar(procrustes["noskip"], names, 1)["partition"]
                - skip_connections.partition_scalar(procrustes["cls"], names, 1)["partition"])
    assert removal.second_measure["value"] == pytest.approx(expected, abs=1e-4)
    assert_null(removal.null, lambda order: skip_connections.partition_scalar(
        reference_minibatch(features["noskip"], features["noskip"], order), names, 1)["within"], 16, 4, seed=4)


def test_localization_checks_recomputed_with_the_reference():
    tf.keras.utils.set_random_seed(8)
    models = {"cls": vit(), "gap": vit(classifier="gap")}
    images, labels = images_and_labels(24)
    result = localization.run(("cls", models["cls"]), ("gap", models["gap"]), data=dataset(images, labels),
                              bootstrap_resamples=2, seed=5, check_examples=16, null_permutations=4)
    checked = images[checked_indices(24, 16)]
    patches = localization_lib.image_patches(checked, 4)
    shares = {}
    for label, prefix in (("cls", 1), ("gap", 0)):
        tokens = extract(models[label], checked, "block01/+mlp")[:, prefix:]
        procrustes = np.array([[reference.procrustes_similarity(tokens[:, t], patches[:, p]) for p in range(16)]
                               for t in range(16)])
        shares[label] = np.mean(np.diag(procrustes) / procrustes.sum(axis=1))  # each token owns its patch
    localize, less = finding(result, "cls_vit_tokens_localize"), finding(result, "gap_vit_localizes_less")
    assert localize.second_measure["value"] == pytest.approx(shares["cls"] * 16, abs=1e-3)  # ratio to k/P = 1/16
    assert less.second_measure["value"] == pytest.approx((shares["cls"] - shares["gap"]) / shares["cls"], abs=1e-3)
    tokens = extract(models["cls"], checked, "block01/+mlp")[:, 1:]

    def own_patch_cka(order):
        shuffled = patches if order is None else patches[order]
        return np.mean([reference.linear_cka(tokens[:, t], shuffled[:, t]) for t in range(16)])

    assert_null(localize.null, own_patch_cka, 16, 4, seed=5)
    assert less.null == localize.null


def test_data_scale_checks_recomputed_with_the_reference():
    tf.keras.utils.set_random_seed(9)
    large, small = vit(3), vit(3)
    images, labels = images_and_labels(32)
    train = images_and_labels(16, seed=1)
    result = data_scale.run({"large": large, "small": small}, {"large": 1.0, "small": 0.1},
                            data=dataset(images, labels), probe_train_data=dataset(*train), num_classes=4, shots=2,
                            probe_seeds=(0,), bootstrap_resamples=5, seed=6, check_examples=24, null_permutations=4)
    less = finding(result, "less_data_hurts_higher_layers_more")
    blocks = ["block00/+mlp", "block01/+mlp", "block02/+mlp"]
    checked = images[checked_indices(32, 24)]
    features = [[representations.extract(model, checked, blocks)[b] for b in blocks] for model in (small, large)]
    same_block = [reference.procrustes_similarity(a, b) for a, b in zip(*features)]
    assert less.second_measure["value"] == pytest.approx(same_block[0] - same_block[2], abs=1e-4)
    assert_null(less.null, lambda order: reference_minibatch(features[0][:1], features[1][:1], order)[0, 0], 24, 4,
                seed=6)
