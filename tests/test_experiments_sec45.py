"""Section 4 and 5 experiment modules: smoke runs on tiny untrained models, checked against independent computations.

The attention-distance and ERF unit cases of issue 5 are in tests/test_analysis_attention.py and
tests/test_analysis_receptive_field.py; here: the heatmap properties, the head-subset CKA, every promised file, and
the helpers the modules add (per-image ERF maps, head windows, the findings' statistics, plot layer groups).
"""

import json
import os

import keras
import numpy as np
import pytest

from experiments import common, sec4_representation_structure as sec4
from experiments import sec5_attention_distance as sec5_distance
from experiments import sec5_local_global_heads as sec5_heads
from experiments import sec5_receptive_fields as sec5_erf
from vitcnn_tf import plotting, representations
from vitcnn_tf.analysis import attention, receptive_field
from vitcnn_tf.metrics import reference
from vitcnn_tf.models import Mixer, MixerConfig, ResNetV2, ResNetV2Config, ViT, ViTConfig

IMAGE_SIZE = 16
COMMON = ["--dataset", "digits", "--num-examples", "32", "--batch-size", "8", "--num-resamples", "50",
          "--no-progress"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Paths of tiny untrained ViT / ResNet / Mixer ``.keras`` files (16x16 input, 10 classes)."""
    folder = tmp_path_factory.mktemp("tiny_models")
    keras.utils.set_random_seed(0)
    models = {
        "vit": ViT(ViTConfig(patch_size=4, hidden_size=16, mlp_dim=16, num_heads=4, num_layers=2,
                             image_size=IMAGE_SIZE, num_classes=10)),
        "resnet": ResNetV2(ResNetV2Config(block_counts=(1, 1), width_factor=0.125, stem="small",
                                          image_size=IMAGE_SIZE, num_classes=10, num_groups=2)),
        "mixer": Mixer(MixerConfig(patch_size=4, hidden_dim=8, num_blocks=1, tokens_mlp_dim=4, channels_mlp_dim=8,
                                   image_size=IMAGE_SIZE, num_classes=10)),
    }
    keras.utils.set_random_seed(1)  # second seeds of the ViT and the ResNet, for intervals over seeds
    models["vit_seed1"] = ViT(models["vit"].config)
    models["resnet_seed1"] = ResNetV2(models["resnet"].config)
    paths = {}
    for name, model in models.items():
        paths[name] = str(folder / f"{name}.keras")
        model.save(paths[name])
    return paths


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITCNN_TF_CACHE", str(tmp_path_factory.getbasetemp() / "data_cache"))


def run_module(module, out, models, *extra):
    options = module.build_parser().parse_args(["--models", *models, "--out", str(out), *COMMON, *extra])
    return options, module.run(options)


def check_findings(summary, keys):
    assert [finding["key"] for finding in summary["findings"]] == keys
    for finding in summary["findings"]:
        assert finding["verdict"] in ("holds", "does not hold", "inconclusive")
        assert finding["low"] <= finding["value"] <= finding["high"]


def evaluation_batches(options, size=IMAGE_SIZE):
    return [np.asarray(images) for images, _ in common.evaluation_data(options, size)]


# --- Section 4 ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sec4_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("sec4")
    # The ViT twice (two loaded copies): the cross map of a model with itself must equal its within map.
    specs = [tiny_models["vit"], tiny_models["resnet"], tiny_models["mixer"], tiny_models["vit"]]
    options, summary = run_module(sec4, out, specs)
    return out, options, summary


@pytest.mark.slow
def test_sec4_writes_every_promised_file_and_the_findings(sec4_run):
    out, _, summary = sec4_run
    labels = ["vit", "resnet", "mixer", "vit-2"]
    keys = [f"within_{label}" for label in labels]
    keys += [f"cross_{a}_{b}" for i, a in enumerate(labels) for b in labels[i + 1:]]
    assert sorted(summary["maps"]) == sorted(keys)
    for key in keys:
        for suffix in (".npz", ".png", ".json"):
            assert (out / f"{key}{suffix}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["findings"] == summary["findings"]
    check_findings(summary, ["vit_uniform_similarity", "resnet_lower_half_matches_vit_lowest_quarter"])
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


@pytest.mark.slow
def test_sec4_with_seed_replicates_averages_the_findings_over_seed_pairs(tiny_models, tmp_path):
    replicates = [f"{tiny_models['vit']}={tiny_models['vit_seed1']}",
                  f"{tiny_models['resnet']}={tiny_models['resnet_seed1']}"]
    _, summary = run_module(sec4, tmp_path, [tiny_models["vit"], tiny_models["resnet"]], "--seed-replicates",
                            *replicates)
    assert summary["seed_replicates"] == {"vit": ["vit_seed1"], "resnet": ["resnet_seed1"]}
    assert sorted(summary["maps"]) == ["cross_vit_resnet", "seeds_resnet_resnet_seed1", "seeds_vit_vit_seed1",
                                       "within_resnet", "within_vit"]
    check_findings(summary, ["vit_uniform_similarity", "resnet_lower_half_matches_vit_lowest_quarter"])
    uniform = summary["findings"][0]
    assert uniform["detail"]["seed_pairs"] == [["vit", "resnet"], ["vit_seed1", "resnet_seed1"]]
    assert uniform["value"] == pytest.approx(np.mean(uniform["detail"]["per_seed"]))
    # Seed 0's term from the written within-model maps (an independent path from the batch terms).
    within = {label: np.load(tmp_path / f"within_{label}.npz") for label in ("vit", "resnet")}
    outputs = {label: [list(within[label]["row_names"]).index(name)
                       for name in uniform["detail"][f"{label}_block_outputs"]] for label in within}
    expected = (sec4.lower_upper_similarity(within["vit"]["matrix"], outputs["vit"])
                - sec4.lower_upper_similarity(within["resnet"]["matrix"], outputs["resnet"]))
    assert uniform["detail"]["per_seed"][0] == pytest.approx(expected, abs=1e-9)
    assert uniform["detail"]["per_seed"][1] != pytest.approx(expected, abs=1e-6)  # another seed, another value
    seeds_map = np.load(tmp_path / "seeds_vit_vit_seed1.npz")
    assert seeds_map["matrix"].shape == within["vit"]["matrix"].shape


def test_within_model_map_is_symmetric_with_unit_diagonal_and_excludes_attention_and_logits(sec4_run):
    out = sec4_run[0]
    for label in ("vit", "resnet", "mixer"):
        data = np.load(out / f"within_{label}.npz")
        matrix = data["matrix"]
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)
        assert list(data["row_names"]) == list(data["col_names"])
        assert not [name for name in data["row_names"] if name.endswith("/attn") or name == "logits"]
    names = list(np.load(out / "within_vit.npz")["row_names"])
    assert "block00/attn_heads" in names and "block01/mlp_hidden" in names and "block00/ln2" in names


def test_cross_map_of_a_model_with_itself_equals_its_within_map(sec4_run):
    out = sec4_run[0]
    within, cross = np.load(out / "within_vit.npz"), np.load(out / "cross_vit_vit-2.npz")
    np.testing.assert_allclose(cross["matrix"], within["matrix"], rtol=1e-6, atol=1e-9)
    assert list(cross["row_names"]) == list(within["row_names"])


def test_layer_names_align_with_matrix_rows(sec4_run, tiny_models):
    out, options, _ = sec4_run
    data = np.load(out / "cross_vit_resnet.npz")
    rows, cols = list(data["row_names"]), list(data["col_names"])
    vit, resnet = (keras.saving.load_model(tiny_models[name]) for name in ("vit", "resnet"))
    assert rows == sec4.kept_taps(vit, sec4.DEFAULT_EXCLUDE)
    picks = [("block01/mlp_hidden", "block2/unit01/conv1"), ("embedding", "root/conv")]
    batches_x, batches_y = [], []
    for images in evaluation_batches(options):
        x = representations.extract(vit, images, [a for a, _ in picks])
        y = representations.extract(resnet, images, [b for _, b in picks])
        batches_x.append([x[a] for a, _ in picks])
        batches_y.append([y[b] for _, b in picks])
    expected = reference.minibatch_cka(batches_x, batches_y)
    for i, (a, b) in enumerate(picks):
        assert data["matrix"][rows.index(a), cols.index(b)] == pytest.approx(expected[i, i], rel=1e-4)


def test_sec4_statistics_on_hand_made_matrices():
    uniform = np.array([[1.0, 0.9, 0.8, 0.7], [0.9, 1.0, 0.9, 0.8], [0.8, 0.9, 1.0, 0.9], [0.7, 0.8, 0.9, 1.0]])
    # lower half {0, 1} vs upper half {2, 3}: (0.8 + 0.7 + 0.9 + 0.8) / 4
    assert sec4.lower_upper_similarity(uniform, [0, 1, 2, 3]) == pytest.approx(0.8)
    cross = np.array([[0.9, 0.1, 0.0, 0.2, 0.1], [0.2, 0.8, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.1, 0.7]])
    # rows 0, 1 are most similar to columns 0, 1 of 5: depths 0 and 0.25
    assert sec4.most_similar_depth(cross, [0, 1]) == pytest.approx(0.125)
    assert sec4.model_slices(["a:x", "a:y", "b:x"]) == {"a": slice(0, 2), "b": slice(2, 3)}
    assert sec4.model_label("some/dir/my model.keras") == "my-model"
    assert sec4.model_label("ViT-B/16:num_classes=5=ckpt/v.npz") == "ViT-B-16"


# --- Section 5 -----------------------------------------------------------------------------------------------------


def test_attention_distance_module_outputs_match_a_direct_computation(tiny_models, tmp_path):
    options, summary = run_module(sec5_distance, tmp_path, [tiny_models["vit"], tiny_models["vit"]])
    for name in ("attention_distances.npz", "attention_distances.json", "attention_distances.png",
                 "attention_heads_vit.png", "attention_heads_vit-2.png", "attention_spread.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    check_findings(summary, ["lower_layers_mix_local_and_global_heads", "less_data_no_local_heads"])
    # Two copies of one model: the little-data-minus-full-data difference is exactly zero.
    assert summary["findings"][1]["value"] == summary["findings"][1]["low"] == summary["findings"][1]["high"] == 0
    vit = keras.saving.load_model(tiny_models["vit"])
    maps = [representations.extract(vit, images, ["block00/attn", "block01/attn"]) for images in
            evaluation_batches(options)]
    expected = np.stack([attention.mean_attention_distance(np.concatenate([m[name] for m in maps]), patch_size=4)
                         for name in ("block00/attn", "block01/attn")])
    saved = np.load(tmp_path / "attention_distances.npz")
    np.testing.assert_allclose(saved["vit.mean"], expected, rtol=1e-9)
    assert saved["vit.per_example"].shape == (32, 2, 4)
    spreads = [block["spread"] for block in summary["blocks"]["vit"]]
    np.testing.assert_allclose(spreads, expected.max(axis=1) - expected.min(axis=1), rtol=1e-9)


def test_attention_distance_helpers():
    assert sec5_distance.extreme_blocks(6) == ([0, 1], [4, 5])
    assert sec5_distance.extreme_blocks(2) == ([0], [1])
    np.testing.assert_allclose(sec5_distance.block_spreads(np.array([[1.0, 5.0, 2.0], [3.0, 3.0, 4.0]])), [4.0, 1.0])


@pytest.mark.slow
def test_head_subset_module_and_all_heads_subset_equals_the_full_pre_projection_cka(tiny_models, tmp_path):
    options, summary = run_module(sec5_heads, tmp_path, [tiny_models["vit"], tiny_models["resnet"]])
    for name in ("head_subset_cka.npz", "head_subset_cka.json", "head_subset_cka.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    check_findings(summary, ["local_heads_most_resnet_like"])
    saved = np.load(tmp_path / "head_subset_cka.npz")
    assert saved["cka"].shape == (10, len(saved["resnet_names"]))  # windows of 1, 2, 3, 4 of 4 heads
    subsets = [tuple(subset["heads"]) for subset in summary["subsets"]]
    assert sorted(subsets[-1]) == [0, 1, 2, 3]
    vit, resnet = (keras.saving.load_model(tiny_models[name]) for name in ("vit", "resnet"))
    resnet_names = list(saved["resnet_names"])
    single = subsets[0]
    batches_x, batches_y = [], []
    for images in evaluation_batches(options):
        heads = representations.extract(vit, images, ["block00/attn_heads"])["block00/attn_heads"]
        batches_x.append([heads, heads[:, :, list(single)]])
        batches_y.append(list(representations.extract(resnet, images, resnet_names).values()))
    expected = reference.minibatch_cka(batches_x, batches_y)
    np.testing.assert_allclose(saved["cka"][-1], expected[0], rtol=1e-4)
    np.testing.assert_allclose(saved["cka"][0], expected[1], rtol=1e-4)
    # The first subset is the most local head.
    assert summary["head_distance"][single[0]] == pytest.approx(min(summary["head_distance"]))


def test_head_windows_and_within_size_correlation():
    order = np.array([2, 0, 3, 1])
    windows = sec5_heads.head_windows(order)
    assert windows[:4] == [(2,), (0,), (3,), (1,)] and windows[4:7] == [(2, 0), (0, 3), (3, 1)]
    assert windows[-1] == (2, 0, 3, 1) and len(windows) == 10
    assert sec5_heads.head_windows(order, [2]) == [(2, 0), (0, 3), (3, 1)]
    with pytest.raises(ValueError, match="exceed"):
        sec5_heads.head_windows(order, [5])
    # Size groups {1, 1, 1} and {2, 2}: a trend between sizes is removed, the trend within sizes is kept.
    sizes = np.array([1, 1, 1, 2, 2])
    distance = np.array([1.0, 2.0, 3.0, 1.5, 2.5])
    similarity = np.array([0.3, 0.2, 0.1, 0.9, 0.8])  # decreasing within each size, higher for size 2
    assert sec5_heads.within_size_correlation(distance, similarity, sizes) == pytest.approx(-1.0)
    assert np.corrcoef(distance, similarity)[0, 1] > -0.5


@pytest.mark.slow
def test_receptive_field_module_writes_its_files(tiny_models, tmp_path):
    options = sec5_erf.build_parser().parse_args([
        "--models", tiny_models["vit"], tiny_models["resnet"], "--out", str(tmp_path), "--dataset", "digits",
        "--num-examples", "8", "--batch-size", "8", "--max-channels", "2", "--num-resamples", "50", "--no-progress"])
    summary = sec5_erf.run(options)
    for name in ("erf_maps.npz", "erf_maps_vit.png", "erf_maps_resnet.png", "erf_extent.png",
                 "receptive_fields.json", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    check_findings(summary, ["vit_erf_larger_in_lower_layers"])
    assert list(summary["extent"]["vit"]) == ["block00/sa", "block00/+sa", "block00/+mlp", "block01/sa",
                                              "block01/+sa", "block01/+mlp"]
    assert list(summary["extent"]["resnet"]) == ["block1/unit01/+res", "block2/unit01/+res"]


def test_per_image_erf_maps_average_to_the_erf_and_are_each_images_own():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((9, 9, 2))
    hidden = keras.layers.Conv2D(3, 3, padding="same", activation="tanh", name="conv0")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same", name="conv1")(hidden))
    images = np.random.default_rng(0).uniform(-1, 1, size=(5, 9, 9, 2)).astype(np.float32)
    # float32 gradients computed in batches of 2 and of 5: equal to float32 rounding (oneDNN picks its kernels
    # by batch size), hence rtol 1e-5.
    per_image = receptive_field.per_image_effective_receptive_field(model, images, "conv1", batch_size=2)
    assert per_image.shape == (5, 9, 9)
    np.testing.assert_allclose(per_image.mean(axis=0),
                               receptive_field.effective_receptive_field(model, images, "conv1"), rtol=1e-5)
    np.testing.assert_allclose(per_image[3], receptive_field.effective_receptive_field(model, images[3:4], "conv1"),
                               rtol=1e-6)
    assert not np.allclose(per_image[0], per_image[1])  # tanh: the gradient depends on the image


def test_resnet_erf_taps_are_the_stage_outputs():
    resnet = ResNetV2(ResNetV2Config(block_counts=(2, 1), width_factor=0.125, stem="small", image_size=8,
                                     num_classes=3, num_groups=2))
    assert sec5_erf.erf_taps(resnet) == ["block1/unit02/+res", "block2/unit01/+res"]
    assert sec5_erf.central_patch_mass(np.pad(np.ones((4, 4)), 4), 4) == pytest.approx(1.0)


# --- plotting ----------------------------------------------------------------------------------------------------


def test_layer_groups_follow_block_and_stage_prefixes():
    names = ["embedding", "block00/ln1", "block00/sa", "block01/ln1", "block2/unit01/conv1", "block2/unit02/+res",
             "logits"]
    assert plotting.layer_groups(names) == [("embedding", 0, 1), ("block00", 1, 3), ("block01", 3, 4),
                                            ("block2", 4, 6), ("logits", 6, 7)]
    figure = plotting.cka_heatmap(np.eye(len(names)), names)
    labels = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    assert "block00" in labels and "block2" in labels
    with pytest.raises(ValueError, match="row_names"):
        plotting.cka_heatmap(np.eye(3), names)
    with pytest.raises(ValueError, match="series"):
        plotting.line_plot({"a": ([0, 1], [1, 2, 3])})


def test_points_plot_draws_intervals_that_do_not_contain_their_estimate():
    # A percentile bootstrap interval need not contain the estimate: the second point lies above its interval.
    x, y, low, high = [0.0, 1.0], [0.5, 0.9], [0.4, 0.6], [0.6, 0.8]
    figure = plotting.line_plot({"a": (x, y, low, high)}, style="points")
    (segments,) = figure.axes[0].collections
    np.testing.assert_allclose(np.array(segments.get_segments()), [[[0.0, 0.4], [0.0, 0.6]], [[1.0, 0.6], [1.0, 0.8]]])
    np.testing.assert_allclose(figure.axes[0].lines[0].get_ydata(), y)
