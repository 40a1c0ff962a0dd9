"""The Section 4 and 5 analyses of ``vitcnn_tf.paper``: each saved array recomputed from lower-level library code
(the NumPy CKA reference, ``analysis.attention``, direct gradients) on the same inputs, and each finding's value
recomputed from the arrays. Tiny untrained models on a few random 16 px batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf import claims, representations
from vitcnn_tf.analysis import attention, bootstrap, receptive_field
from vitcnn_tf.findings import DOES_NOT_HOLD, HOLDS
from vitcnn_tf.metrics import reference
from vitcnn_tf.models import get_model
from vitcnn_tf.paper import attention_distance, common, evaluation, local_global_heads, receptive_fields
from vitcnn_tf.paper import representation_structure
from vitcnn_tf.paper.result import SectionResult

SIZE, BATCH, NUM_BATCHES = 16, 8, 3
TINY_VIT = dict(image_size=SIZE, num_classes=10, hidden_size=16, mlp_dim=16, num_heads=4, num_layers=3)


def tiny_vit(seed, **overrides):
    keras.utils.set_random_seed(seed)
    return get_model("ViT-CPU/4", **{**TINY_VIT, **overrides})


def tiny_resnet(seed):
    keras.utils.set_random_seed(seed)
    return get_model("ResNetV2-CPU", image_size=SIZE, num_classes=10, block_counts=(1, 1), width_factor=0.125,
                     num_groups=2)


def tiny_mixer(seed):
    keras.utils.set_random_seed(seed)
    return get_model("Mixer-CPU/4", image_size=SIZE, num_classes=10, hidden_dim=8, num_blocks=2, tokens_mlp_dim=4,
                     channels_mlp_dim=8)


def random_images(seed, count=BATCH * NUM_BATCHES):
    return np.random.default_rng(seed).uniform(-1, 1, size=(count, SIZE, SIZE, 3)).astype(np.float32)


def dataset(images):
    labels = np.arange(len(images)) % 10
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH, drop_remainder=True)


def batches(images):
    return [images[start:start + BATCH] for start in range(0, len(images) - BATCH + 1, BATCH)]


@pytest.fixture(scope="module")
def models():
    return {"vit": tiny_vit(0), "resnet": tiny_resnet(1), "mixer": tiny_mixer(2)}


# --- common --------------------------------------------------------------------------------------------------------


def test_common_helpers(models):
    np.testing.assert_allclose(common.normalised_depths(5), [0, 0.25, 0.5, 0.75, 1])
    assert common.extreme_blocks(6) == ([0, 1], [4, 5])
    assert common.extreme_blocks(2) == ([0], [1])
    assert common.extreme_blocks(24) == (list(range(8)), list(range(16, 24)))
    assert list(common.block_ticks(24)) == list(range(24))
    ticks = common.block_ticks(48)
    assert ticks[0] == 0 and ticks[-1] == 47 and len(ticks) <= 26
    assert common.first_of_family(models, "resnet") == "resnet" and common.first_of_family(models, "vit") == "vit"
    assert common.first_of_family({"m": models["mixer"]}, "vit") is None
    assert common.residual_stream_taps(models["vit"]) == ["embedding"] + [
        f"block{b:02d}/{tap}" for b in range(3) for tap in ("sa", "+sa", "mlp", "+mlp")]
    assert common.block_output_taps(models["resnet"]) == ["block1/unit01/+res", "block2/unit01/+res"]
    assert common.residual_units(models["vit"]) == [tuple(unit) for unit in models["vit"].residual_taps]
    assert common.image_size(models["vit"]) == SIZE and common.shared_image_size(models) == SIZE
    with pytest.raises(ValueError, match=r"models: 'resnet' is a resnet model, expected vit \(heads\)"):
        common.require_family(models["resnet"], "resnet", "models", "vit", reason="heads")


def test_normalised_depths_formulas():
    # The saved depth arrays use np.linspace (x * step), the Section 4 finding x / (count - 1); both are kept
    # because they differ in the last bit for most counts (e.g. 6: 3 * 0.2 != 3 / 5 in float64).
    for count in (1, 2, 6, 7, 25, 49):
        step = 1.0 / max(count - 1, 1)
        expected_product = [0.0] + [index * step for index in range(1, count - 1)] + [1.0] * (count > 1)
        expected_division = [index / max(count - 1, 1) for index in range(count)]
        assert common.normalised_depths(count).tolist() == expected_product
        assert common.normalised_depths(count, by_division=True).tolist() == expected_division
    assert common.normalised_depths(6)[3] != common.normalised_depths(6, by_division=True)[3]


def test_evaluation_helpers():
    data = dataset(random_images(0))
    assert evaluation.batch_size_of(data) == BATCH
    np.testing.assert_array_equal(evaluation.stack_images(data, 10), random_images(0)[:10])
    passes = evaluation.data_passes(lambda index: index, passes=3)
    assert [make() for make in passes] == [0, 1, 2]
    with pytest.raises(ValueError, match="passes"):
        evaluation.data_passes(data, passes=2)


# --- Section 4 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def structure(models):
    images = random_images(1)
    result = representation_structure.run(models, dataset(images), num_resamples=100, seed=0)
    return images, result


def test_within_and_cross_maps_equal_the_reference_minibatch_cka(models, structure):
    images, result = structure
    assert isinstance(result, SectionResult)
    assert list(result.arrays) == ["within_vit", "within_resnet", "within_mixer", "cross_vit_resnet",
                                   "cross_vit_mixer", "cross_resnet_mixer"]
    assert [figure.paper_figure for figure in result.figures] == ["1", "1", "H", "2", "H", "H"]
    taps = {label: list(result.arrays[f"within_{label}"]["row_names"]) for label in ("vit", "resnet")}
    assert taps["vit"] == representation_structure.kept_taps(models["vit"])
    assert not [name for name in taps["vit"] if name.endswith("/attn") or name == "logits"]
    extracted = {label: [list(representations.extract(models[label], batch, taps[label]).values())
                         for batch in batches(images)] for label in taps}
    np.testing.assert_allclose(result.arrays["within_vit"]["matrix"], reference.minibatch_cka(extracted["vit"]),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.arrays["cross_vit_resnet"]["matrix"],
                               reference.minibatch_cka(extracted["vit"], extracted["resnet"]), rtol=1e-4, atol=1e-6)
    assert result.tables["within_vit"]["shape"] == [len(taps["vit"])] * 2


def test_structure_findings_recomputed_from_the_saved_maps(models, structure):
    _, result = structure
    uniform, depth = result.findings
    assert (uniform.key, depth.key) == ("vit_uniform_similarity", "resnet_lower_half_matches_vit_lowest_quarter")
    within = {label: result.arrays[f"within_{label}"] for label in ("vit", "resnet")}
    outputs = {label: [list(within[label]["row_names"]).index(name)
                       for name in common.block_output_taps(models[label])] for label in within}
    expected = (representation_structure.lower_upper_similarity(within["vit"]["matrix"], outputs["vit"])
                - representation_structure.lower_upper_similarity(within["resnet"]["matrix"], outputs["resnet"]))
    assert uniform.value == pytest.approx(expected, abs=1e-9)
    cross = result.arrays["cross_vit_resnet"]["matrix"].T  # rows: ResNet taps
    lower = list(range(cross.shape[0] // 2))
    best = np.argmax(cross[lower], axis=1)
    assert depth.value == pytest.approx(np.mean(best / (cross.shape[1] - 1)), abs=1e-9)
    for finding in result.findings:
        assert finding.low <= finding.value <= finding.high
        assert (finding.threshold, finding.direction) == claims.threshold(finding.key)


def test_block_taps_and_two_shuffled_passes_equal_the_reference(models):
    images = random_images(2, BATCH * 2)
    orders = [np.arange(len(images)), np.random.default_rng(5).permutation(len(images))]
    pair = {"vit": models["vit"], "resnet": models["resnet"]}
    result = representation_structure.run(pair, lambda index: dataset(images[orders[index]]), passes=2,
                                          taps="blocks", num_resamples=50)
    names = list(result.arrays["within_vit"]["row_names"])
    assert names == common.residual_stream_taps(models["vit"])
    assert result.summary["passes"] == 2 and result.summary["num_examples"] == 2 * BATCH
    extracted = [list(representations.extract(models["vit"], batch, names).values())
                 for order in orders for batch in batches(images[order])]
    np.testing.assert_allclose(result.arrays["within_vit"]["matrix"], reference.minibatch_cka(extracted),
                               rtol=1e-4, atol=1e-6)


def test_seed_replicates_give_seed_maps_and_means_over_seed_pairs(models):
    images = random_images(3, BATCH * 2)
    replicates = {"vit": {"vit_s1": tiny_vit(10)}, "resnet": {"resnet_s1": tiny_resnet(11)}}
    result = representation_structure.run({"vit": models["vit"], "resnet": models["resnet"]}, dataset(images),
                                          seed_replicates=replicates, num_resamples=50)
    assert sorted(result.arrays) == ["cross_vit_resnet", "seeds_resnet_resnet_s1", "seeds_vit_vit_s1",
                                     "within_resnet", "within_vit"]
    uniform = result.findings[0]
    assert uniform.detail["seed_pairs"] == [["vit", "resnet"], ["vit_s1", "resnet_s1"]]
    assert uniform.value == pytest.approx(np.mean(uniform.detail["per_seed"]))
    with pytest.raises(ValueError, match="seed_replicates"):
        representation_structure.run({"vit": models["vit"]}, dataset(images), seed_replicates={"x": {}})


# --- Section 5: attention distances --------------------------------------------------------------------------------


def test_attention_distances_of_vits_of_different_depths_and_heads_equal_per_batch_distances():
    # The ViT-B/16-with-ViT-L/16 case: 3 blocks of 4 heads against 6 blocks of 2 heads, each with a twin.
    images = random_images(4, BATCH * 2)
    full = {"small": tiny_vit(20), "large": tiny_vit(21, num_layers=6, num_heads=2)}
    little = {"small_little": tiny_vit(22), "large_little": tiny_vit(23, num_layers=6, num_heads=2)}
    result = attention_distance.run(full, dataset(images), little_data_models=little, num_resamples=100)
    arrays = result.arrays["attention_distances"]
    for label, model in {**full, **little}.items():
        names = [f"block{b:02d}/attn" for b in range(model.config.num_layers)]
        per_batch = [representations.extract(model, batch, names) for batch in batches(images)]
        expected = np.stack([np.mean([attention.mean_attention_distance(maps[name], patch_size=4)
                                      for maps in per_batch], axis=0) for name in names])
        np.testing.assert_allclose(arrays[f"{label}.mean"], expected, rtol=1e-9)
        assert arrays[f"{label}.per_example"].shape == (2 * BATCH, *expected.shape)
    spread, less = result.findings
    # Uniform attention over the 4 x 4 patch grid: the mean distance between patch centres, 4 px apart.
    cells = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), axis=-1).reshape(-1, 2)
    uniform = 4 * np.linalg.norm(cells[:, None] - cells[None], axis=-1).mean()
    labels = [*full, *little]
    assert result.summary["uniform_attention_distances"] == pytest.approx(dict.fromkeys(labels, uniform))
    ratios = {label: arrays[f"{label}.mean"] / uniform for label in labels}
    lowest, highest = common.extreme_blocks(3)
    small = ratios["small"]
    assert spread.value == pytest.approx(min(0.5 - small[lowest].min(), small[lowest].max() - 0.8,
                                             small[highest].min() - 0.8), abs=1e-9)
    assert spread.detail["block_min_ratio"] == pytest.approx(small.min(axis=1).tolist(), abs=1e-12)
    assert less.key == "less_data_no_local_heads"
    assert less.detail["full_data_model"] == "small" and less.detail["little_data_model"] == "small_little"
    assert less.value == pytest.approx(min(0.5 - small[lowest].min(), ratios["small_little"][lowest].min() - 0.5),
                                       abs=1e-9)
    # Different depths: the comparison uses each model's own lowest blocks.
    other = attention_distance.less_data_finding("small", arrays["small.per_example"], "large",
                                                 arrays["large.per_example"], full_reference=uniform,
                                                 little_reference=uniform, num_resamples=50)
    assert other.value == pytest.approx(min(0.5 - small[:1].min(), ratios["large"][:2].min() - 0.5), abs=1e-9)
    files = [figure.file for figure in result.figures]
    assert files[:2] == ["attention_distances.png", "attention_distances_less_data.png"]
    assert [figure.paper_figure for figure in result.figures[:2]] == ["3", "4"]
    for figure in result.figures:
        figure.draw()


def hand_built_distances(ratios, reference, num_examples=4):
    """``[N, L, H]`` head distances (pixels) whose mean over the examples is ``ratios [L, H] * reference``: the
    examples alternate ``+-0.05 * reference`` around it, so that the bootstrap has something to resample."""
    offsets = 0.05 * reference * np.where(np.arange(num_examples) % 2, -1.0, 1.0)
    return np.asarray(ratios)[None] * reference + offsets[:, None, None]


def test_spread_finding_is_the_smallest_margin_in_units_of_the_uniform_distance():
    # 3 blocks (lowest: block 0, highest: block 2) of 4 heads; uniform attention at 10 px. One head of block 0 at
    # 0.3x, every other head at 0.95x: margins 0.5 - 0.3, 0.95 - 0.8 and 0.95 - 0.8, the smallest 0.15.
    ratios = np.full((3, 4), 0.95)
    ratios[0, 0] = 0.3
    distances = hand_built_distances(ratios, 10.0)
    found = attention_distance.spread_finding("m", distances, 10.0, num_resamples=200, seed=3)
    assert (found.threshold, found.direction) == claims.threshold("lower_layers_mix_local_and_global_heads")
    assert found.value == pytest.approx(0.15, abs=1e-12)
    assert [c["value"] for c in found.detail["conditions"]] == pytest.approx([0.3, 0.95, 0.95], abs=1e-12)
    assert [c["met"] for c in found.detail["conditions"]] == [True, True, True]
    assert found.verdict == HOLDS and found.reason == ""
    assert found.detail["conditions"][0]["text"] == ("the lowest 1 blocks hold a head below 0.5x the uniform "
                                                     "distance (smallest 0.30x)")

    def plain_margin(d):  # one resample [N, L, H] -> scalar, written out
        r = d.mean(axis=0) / 10.0
        return min(0.5 - r[0].min(), r[0].max() - 0.8, r[2].min() - 0.8)

    expected = bootstrap.bootstrap_interval(plain_margin, distances, num_resamples=200, seed=3)
    assert (found.value, found.low, found.high) == pytest.approx(expected, abs=1e-12)
    # A head of the highest block at 0.6x: that margin is 0.6 - 0.8 = -0.2, and it is the reason.
    ratios[2, 1] = 0.6
    failed = attention_distance.spread_finding("m", hand_built_distances(ratios, 10.0), 10.0, num_resamples=200)
    assert failed.value == pytest.approx(-0.2, abs=1e-12)
    assert [c["met"] for c in failed.detail["conditions"]] == [True, True, False]
    assert failed.verdict == DOES_NOT_HOLD
    assert failed.reason == "the highest 1 blocks hold a head below 0.8x the uniform distance (smallest 0.60x)"
    with pytest.raises(ValueError, match="reference: expected the positive uniform-attention distance"):
        attention_distance.spread_finding("m", distances, 0.0)


def test_less_data_finding_is_the_smaller_margin_with_each_models_uniform_distance():
    # Full-data ViT: 3 blocks of 4 heads at 10 px uniform, a head of block 0 at 0.3x (margin 0.5 - 0.3 = 0.2).
    # Little-data ViT: 6 blocks of 2 heads at 12 px uniform (lowest blocks 0 and 1), smallest there 0.65x (margin
    # 0.65 - 0.5 = 0.15); its block 5 holds a head at 0.2x, outside the lowest blocks.
    full_ratios = np.full((3, 4), 0.95)
    full_ratios[0, 0] = 0.3
    little_ratios = np.full((6, 2), 0.9)
    little_ratios[1, 0], little_ratios[5, 0] = 0.65, 0.2
    full = hand_built_distances(full_ratios, 10.0)
    found = attention_distance.less_data_finding("full", full, "little", hand_built_distances(little_ratios, 12.0),
                                                 full_reference=10.0, little_reference=12.0, num_resamples=200)
    assert (found.threshold, found.direction) == claims.threshold("less_data_no_local_heads")
    assert found.value == pytest.approx(0.15, abs=1e-12)
    assert found.detail["little_minus_full_min_ratio"] == pytest.approx(0.35, abs=1e-12)
    assert [c["met"] for c in found.detail["conditions"]] == [True, True]
    assert found.verdict == HOLDS and found.reason == ""
    # A local head (0.4x) in the little-data ViT's block 1: margin 0.4 - 0.5 = -0.1.
    little_ratios[1, 1] = 0.4
    failed = attention_distance.less_data_finding("full", full, "little", hand_built_distances(little_ratios, 12.0),
                                                  full_reference=10.0, little_reference=12.0, num_resamples=200)
    assert failed.value == pytest.approx(-0.1, abs=1e-12)
    assert failed.verdict == DOES_NOT_HOLD
    assert failed.reason == "the little-data ViT (little) holds a local head in its lowest 2 blocks (smallest 0.40x)"
    with pytest.raises(ValueError, match="little_reference"):
        attention_distance.less_data_finding("full", full, "little", full, full_reference=10.0, little_reference=0.0)


def test_a_24_block_vit_draws_with_every_block_in_the_legend_and_ticks():
    vit = tiny_vit(30, num_layers=24, num_heads=2, hidden_size=8, mlp_dim=8)
    result = attention_distance.run({"deep": vit}, dataset(random_images(6, BATCH)), num_resamples=20)
    assert [finding.key for finding in result.findings] == ["lower_layers_mix_local_and_global_heads"]
    assert result.findings[0].detail["lowest_blocks"] == list(range(8))
    figures = {figure.file: figure for figure in result.figures}
    heads = figures["attention_heads_deep.png"].draw()
    legend = heads.axes[0].get_legend()
    texts = [text.get_text() for text in legend.get_texts()]
    assert [f"block {b}" for b in range(24)] == [text for text in texts if text.startswith("block")]
    colours = {tuple(np.round(line.get_color(), 4)) for line in heads.axes[0].lines[:24]}
    assert len(colours) == 24
    distances = figures["attention_distances.png"].draw()
    ticks = [tick.get_text() for tick in distances.axes[0].get_xticklabels()]
    assert ticks == [str(b) for b in range(24)]


# --- Section 5: local and global heads -----------------------------------------------------------------------------


def test_head_subset_cka_equals_the_reference_and_the_finding_is_recomputed(models):
    images = random_images(7)
    result = local_global_heads.run({"vit": models["vit"], "resnet": models["resnet"]}, dataset(images),
                                    num_resamples=100, check_examples=16, null_permutations=5, seed=3)
    arrays = result.arrays["head_subset_cka"]
    attn = np.concatenate([representations.extract(models["vit"], batch, ["block00/attn"])["block00/attn"]
                           for batch in batches(images)])
    np.testing.assert_allclose(arrays["head_distance"], attention.mean_attention_distance(attn, patch_size=4),
                               rtol=1e-9)
    order = np.argsort(arrays["head_distance"], kind="stable")
    subsets = local_global_heads.head_windows(order)
    assert len(arrays["subset_names"]) == len(subsets) == 10
    resnet_names = list(arrays["resnet_names"])
    assert resnet_names == local_global_heads.lower_half_taps(models["resnet"])
    batches_x, batches_y = [], []
    for batch in batches(images):
        heads = representations.extract(models["vit"], batch, ["block00/attn_heads"])["block00/attn_heads"]
        batches_x.append([heads[:, :, list(subset)] for subset in subsets])
        batches_y.append(list(representations.extract(models["resnet"], batch, resnet_names).values()))
    np.testing.assert_allclose(arrays["cka"], reference.minibatch_cka(batches_x, batches_y), rtol=1e-4, atol=1e-6)
    (finding,) = result.findings
    sizes = np.array([len(subset) for subset in subsets])
    expected = local_global_heads.within_size_correlation(arrays["subset_mean_distance"],
                                                          np.nanmax(arrays["cka"], axis=1), sizes)
    assert finding.value == pytest.approx(expected, abs=1e-9)
    assert (finding.threshold, finding.direction) == claims.threshold("local_heads_most_resnet_like")
    assert finding.detail["plain_correlation"] == pytest.approx(
        np.corrcoef(arrays["subset_mean_distance"], arrays["cka"].max(axis=1))[0, 1], abs=1e-9)
    # checks beyond CKA on 16 evenly spaced examples (2 minibatches of 8)
    checked = images[np.round(np.linspace(0, 23, 16)).astype(int)]
    heads = representations.extract(models["vit"], checked, ["block00/attn_heads"])["block00/attn_heads"]
    subset_features = [heads[:, :, list(subset)] for subset in subsets]
    resnet_features = list(representations.extract(models["resnet"], checked, resnet_names).values())
    procrustes = np.array([[reference.procrustes_similarity(x, y) for y in resnet_features] for x in subset_features])
    assert finding.second_measure == {"measure": "procrustes", "num_examples": 16, "value": pytest.approx(
        local_global_heads.within_size_correlation(arrays["subset_mean_distance"], procrustes.max(axis=1), sizes),
        abs=1e-4)}
    expected = reference_null(lambda order: np.max(reference_minibatch(subset_features[:1], resnet_features, order)),
                              16, 5, seed=3)
    for key in ("value", "null_mean", "null_q95", "p_value"):
        assert finding.null[key] == pytest.approx(expected[key], abs=1e-4), key
    assert finding.null["num_permutations"] == 5 and finding.null["num_examples"] == 16
    assert result.figures[0].paper_figure == "5"
    result.figures[0].draw()


def test_16_head_windows_count_and_within_size_correlation():
    assert len(local_global_heads.head_windows(np.arange(16))) == 136
    sizes = np.array([1, 1, 1, 2, 2])
    distance = np.array([1.0, 2.0, 3.0, 1.5, 2.5])
    similarity = np.array([0.3, 0.2, 0.1, 0.9, 0.8])
    assert local_global_heads.within_size_correlation(distance, similarity, sizes) == pytest.approx(-1.0)


# --- Section 5: receptive fields -----------------------------------------------------------------------------------


def direct_erf(model, tap, images, channels):
    """Mean over images and ``channels`` of |d a_c(centre) / d x|, one image and channel at a time (NumPy mean)."""
    submodel = representations.tap_model(model, tap)
    total = np.zeros(images.shape[1:3])
    for image in images:
        for channel in channels:
            x = tf.constant(image[None])
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = submodel(x, training=False)
                if len(out.shape) == 4:
                    value = out[0, out.shape[1] // 2, out.shape[2] // 2, channel]
                else:  # tokens [1, T, d] of a CLS ViT on a 4 x 4 grid: centre patch (2, 2)
                    value = out[0, 1 + 2 * 4 + 2, channel]
            total += np.abs(tape.gradient(value, x).numpy()[0]).mean(axis=-1)
    return total / (len(images) * len(channels))


def test_receptive_fields_equal_a_direct_gradient_computation(models):
    images = random_images(8, 2)
    pair = {"vit": models["vit"], "resnet": models["resnet"]}
    result = receptive_fields.run(pair, dataset(np.concatenate([images] * 4)), num_images=2, batch_size=1,
                                  max_channels=None, num_resamples=100)
    arrays = result.arrays["erf_maps"]
    assert list(arrays["vit.taps"]) == [f"block{b:02d}/{tap}" for b in range(3) for tap in ("sa", "+mlp")]
    assert list(arrays["resnet.taps"]) == ["block1/unit01/+res", "block2/unit01/+res"]
    for label, index in (("vit", 0), ("vit", 1), ("resnet", 0)):
        tap = arrays[f"{label}.taps"][index]
        width = representations.tap_model(pair[label], tap).output.shape[-1]
        expected = direct_erf(pair[label], tap, images, range(width))
        np.testing.assert_allclose(arrays[f"{label}.maps"][index], expected, rtol=1e-4, atol=1e-6 * expected.max())
    for label in pair:
        np.testing.assert_array_equal(arrays[f"{label}.extent"],
                                      [receptive_field.erf_extent(m, 0.5) for m in arrays[f"{label}.maps"]])
    (finding,) = result.findings
    assert finding.detail["vit_tap"] == "block00/+mlp"
    assert finding.value == pytest.approx(arrays["vit.extent"][1] / arrays["resnet.extent"][0])
    assert (finding.threshold, finding.direction) == claims.threshold("vit_erf_larger_in_lower_layers")
    assert [figure.file for figure in result.figures] == ["erf_maps_vit.png", "erf_maps_resnet.png",
                                                          "erf_maps_vit_before_residual.png", "erf_extent.png"]
    assert [figure.paper_figure for figure in result.figures] == ["6", "6", "C", ""]
    for figure in result.figures:
        figure.draw()


def test_erf_finding_is_the_ratio_of_the_extents(models):
    # 16 px maps of 3 images (scaled differently, same shape). Uniform over the image: the smallest centred square
    # holding half the mass has side 12 (144 / 256 >= 0.5 > 121 / 256). A 2 x 2 block at the centre: side 2.
    scales = np.array([1.0, 2.0, 3.0])[:, None, None]
    uniform, block = np.ones((16, 16)), np.zeros((16, 16))
    block[7:9, 7:9] = 1.0

    def results(vit_map, resnet_map):
        vit_maps, resnet_maps = scales * vit_map, scales * resnet_map
        return {"vit": {"taps": ["block00/sa", "block00/+mlp"], "per_image": np.stack([vit_maps, vit_maps]),
                        "extent": np.array([receptive_field.erf_extent(vit_map)] * 2)},
                "resnet": {"taps": ["block1/unit01/+res"], "per_image": resnet_maps[None],
                           "extent": np.array([receptive_field.erf_extent(resnet_map)])}}

    pair = {"vit": models["vit"], "resnet": models["resnet"]}
    wide = receptive_fields.erf_finding(pair, results(uniform, block), num_resamples=50)
    assert (wide.value, wide.low, wide.high) == (6.0, 6.0, 6.0)
    assert (wide.threshold, wide.direction) == claims.threshold("vit_erf_larger_in_lower_layers")
    assert wide.verdict == HOLDS and "divided by" in wide.quantity
    same = receptive_fields.erf_finding(pair, results(block, block), num_resamples=50)
    assert same.value == 1.0 and same.verdict == DOES_NOT_HOLD


def test_erf_taps_of_evenly_spaced_blocks(models):
    vit = models["vit"]  # 3 blocks
    assert receptive_fields.erf_taps(vit, num_blocks=2) == ["block00/sa", "block00/+mlp", "block02/sa", "block02/+mlp"]
    assert receptive_fields.erf_taps(vit, num_blocks=5) == receptive_fields.erf_taps(vit)
    assert receptive_fields.evenly_spaced(list(range(12)), 6) == [0, 2, 4, 7, 9, 11]
    assert receptive_fields.evenly_spaced(list(range(24)), 6) == [0, 5, 9, 14, 18, 23]
    assert receptive_fields.evenly_spaced(list(range(12)), 1) == [0]
    assert receptive_fields.erf_taps(models["resnet"], num_blocks=1) == receptive_fields.erf_taps(models["resnet"])
    with pytest.raises(ValueError, match="num_blocks"):
        receptive_fields.erf_taps(vit, num_blocks=0)


def test_sampled_channels_cost_a_fixed_number_of_gradient_calls(models, monkeypatch):
    calls = []
    original = receptive_field.per_image_effective_receptive_field

    def counting(*args, **kwargs):
        calls.append(kwargs["max_channels"])
        return original(*args, **kwargs)

    monkeypatch.setattr(receptive_field, "per_image_effective_receptive_field", counting)
    result = receptive_fields.run({"resnet": models["resnet"]}, dataset(random_images(9, BATCH)), num_images=2,
                                  max_channels=3, num_resamples=10)
    assert calls == [3, 3] and result.findings == []
    assert result.summary["findings_skipped"]
    with pytest.raises(ValueError, match="max_channels"):
        receptive_fields.run({"resnet": models["resnet"]}, dataset(random_images(9, BATCH)), max_channels=0)


# --- Checks beyond CKA (Section 4) and the attention entropy (Section 5) -------------------------------------------


def reference_minibatch(x_layers, y_layers, order, batch=BATCH):
    """Reference minibatch CKA [Lx, Ly] over consecutive minibatches, the examples of ``y_layers`` reordered."""
    y_layers = [y if order is None else y[order] for y in y_layers]
    starts = range(0, len(x_layers[0]), batch)
    return reference.minibatch_cka([[x[s:s + batch] for x in x_layers] for s in starts],
                                   [[y[s:s + batch] for y in y_layers] for s in starts])


def reference_null(statistic, count, permutations, seed):
    orders = reference.permutations(count, permutations, seed)
    return reference.null_summary(statistic(None), [statistic(order) for order in orders])


def test_structure_checks_recomputed_with_the_reference(models):
    images = random_images(11)  # 24 examples: 3 minibatches of 8; 16 checked examples = 2 minibatches
    pair = {"vit": models["vit"], "resnet": models["resnet"]}
    result = representation_structure.run(pair, dataset(images), num_resamples=20, check_examples=16,
                                          null_permutations=5, seed=2)
    uniform, depth = result.findings
    checked = images[np.round(np.linspace(0, 23, 16)).astype(int)]
    taps = {label: representation_structure.kept_taps(model) for label, model in pair.items()}
    features = {label: representations.extract(model, checked, taps[label]) for label, model in pair.items()}
    outputs = {label: common.block_output_taps(model) for label, model in pair.items()}

    def halves(label):
        half = len(outputs[label]) // 2
        return [features[label][name] for name in outputs[label][:half]], [features[label][name] for name in
                                                                           outputs[label][half:]]

    def lower_upper_procrustes(label):
        lower, upper = halves(label)
        return np.mean([[reference.procrustes_similarity(a, b) for b in upper] for a in lower])

    assert uniform.second_measure == {"measure": "procrustes", "num_examples": 16, "value": pytest.approx(
        lower_upper_procrustes("vit") - lower_upper_procrustes("resnet"), abs=1e-4)}
    lower_resnet = taps["resnet"][:len(taps["resnet"]) // 2]
    cross = np.array([[reference.procrustes_similarity(features["resnet"][a], features["vit"][b])
                       for b in taps["vit"]] for a in lower_resnet])
    # the most similar ViT tap of each row, allowing for near-ties within the float32 precision of the features
    candidates = [np.flatnonzero(row >= row.max() - 1e-4) / (len(taps["vit"]) - 1) for row in cross]
    assert (np.mean([c.min() for c in candidates]) - 1e-9 <= depth.second_measure["value"]
            <= np.mean([c.max() for c in candidates]) + 1e-9)
    expected = reference_null(lambda order: np.mean(reference_minibatch(*halves("vit"), order)), 16, 5, seed=2)
    for key in ("value", "null_mean", "null_q95", "p_value"):
        assert uniform.null[key] == pytest.approx(expected[key], abs=1e-4), key
    vit_layers = [features["vit"][name] for name in taps["vit"]]
    resnet_layers = [features["resnet"][name] for name in lower_resnet]
    expected = reference_null(lambda order: np.mean(np.max(reference_minibatch(resnet_layers, vit_layers, order),
                                                           axis=1)), 16, 5, seed=2)
    for key in ("value", "null_mean", "null_q95", "p_value"):
        assert depth.null[key] == pytest.approx(expected[key], abs=1e-4), key
    assert uniform.null["num_permutations"] == 5 and uniform.null_verdict in ("clears", "does not clear")
    # the CKA values and verdicts are those of the run without checks
    plain = representation_structure.run(pair, dataset(images), num_resamples=20, check_examples=8,
                                         null_permutations=1, seed=2)
    assert [(f.value, f.low, f.high, f.verdict) for f in plain.findings] == [
        (f.value, f.low, f.high, f.verdict) for f in result.findings]


@pytest.mark.parametrize("measure", ["procrustes", "mutual_knn"])
def test_maps_under_other_measures_equal_the_reference_on_the_checked_examples(models, measure):
    images = random_images(12)
    pair = {"vit": models["vit"], "mixer": models["mixer"]}  # no ViT-ResNet pair: maps only, no findings
    result = representation_structure.run(pair, dataset(images), num_resamples=20, measure=measure,
                                          check_examples=16)
    assert result.findings == [] and result.summary["measure"] == measure and result.summary["maps_examples"] == 16
    checked = images[np.round(np.linspace(0, 23, 16)).astype(int)]
    names = {label: list(result.arrays[f"within_{label}"]["row_names"]) for label in pair}
    features = {label: representations.extract(model, checked, names[label]) for label, model in pair.items()}
    similarity = (reference.procrustes_similarity if measure == "procrustes"
                  else lambda x, y: reference.mutual_knn(x, y, representation_structure.NUM_NEIGHBOURS))
    rows, cols = names["vit"][::4], names["mixer"][::5]
    expected = np.array([[similarity(features["vit"][a], features["mixer"][b]) for b in cols] for a in rows])
    found = result.arrays["cross_vit_mixer"]["matrix"][::4, ::5]
    np.testing.assert_allclose(found, expected, atol=1e-4 if measure == "procrustes" else 0)
    figure = result.figures[0].draw()
    assert figure.axes[-1].get_ylabel() == representation_structure.MEASURES[measure]
    assert representation_structure.MEASURES[measure] in result.figures[0].caption


def test_attention_entropy_arrays_equal_the_analysis_entropy():
    images = random_images(13, BATCH * 2)
    vit = tiny_vit(40)
    result = attention_distance.run({"vit": vit}, dataset(images), num_resamples=20)
    arrays = result.arrays["attention_distances"]
    names = [f"block{b:02d}/attn" for b in range(3)]
    maps = [representations.extract(vit, batch, names) for batch in batches(images)]
    expected = np.stack([attention.attention_entropy(np.concatenate([m[name] for m in maps])) for name in names])
    np.testing.assert_allclose(arrays["vit.entropy"], expected, rtol=1e-9)
    assert arrays["vit.entropy_per_example"].shape == (2 * BATCH, 3, 4)
    table = result.tables["attention_distances"]["vit"]
    assert np.all(table["entropy_low"] <= table["entropy_high"])
    assert result.summary["uniform_attention_entropy"] == pytest.approx(np.log(16))
    figure = next(f for f in result.figures if f.file == "attention_entropy.png")
    assert figure.draw().axes[0].get_ylabel() == "attention entropy over the patches (nats)"
