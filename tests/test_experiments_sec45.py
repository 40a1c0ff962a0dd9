"""The Section 4 and 5 command lines: each writes the files its docstring promises, and its arrays and findings are
those of the library function (``vitcnn_tf.paper``) called on the same models and evaluation data.

The analyses themselves are tested against independent computations in tests/test_paper_sec45.py.
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
from vitcnn_tf import claims, plotting
from vitcnn_tf.models import Mixer, MixerConfig, ResNetV2, ResNetV2Config, ViT, ViTConfig
from vitcnn_tf.paper import attention_distance, representation_structure

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


def check_files(out, names):
    for name in names:
        assert (out / name).stat().st_size > 0, name
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert json.loads((out / "summary.json").read_text())["figures"]


@pytest.mark.slow
def test_sec4_command_line_writes_the_library_result(tiny_models, tmp_path):
    # The ViT twice (two loaded copies): the labels are made unique (model_specs.load_models) and the cross map
    # equals the within map.
    specs = [tiny_models["vit"], tiny_models["resnet"], tiny_models["mixer"], tiny_models["vit"]]
    options, summary = run_module(sec4, tmp_path, specs, "--seed-replicates")
    labels = ["vit", "resnet", "mixer", "vit#2"]
    keys = [f"within_{label}" for label in labels] + [f"cross_{a}_{b}" for i, a in enumerate(labels)
                                                       for b in labels[i + 1:]]
    assert sorted(summary["maps"]) == sorted(keys)
    check_files(tmp_path, [f"{key}{suffix}" for key in keys for suffix in (".npz", ".png", ".json")])
    check_findings(summary, ["vit_uniform_similarity", "resnet_lower_half_matches_vit_lowest_quarter"])
    assert summary["models"] == dict(zip(labels, specs)) and summary["taps"] == "all"
    np.testing.assert_allclose(np.load(tmp_path / "cross_vit_vit#2.npz")["matrix"],
                               np.load(tmp_path / "within_vit.npz")["matrix"], rtol=1e-6, atol=1e-9)
    # The library on the same models and data gives the same arrays and findings.
    models = common.load_models(specs, options)
    result = representation_structure.run(models, common.evaluation_data(options, IMAGE_SIZE), num_resamples=50)
    np.testing.assert_allclose(np.load(tmp_path / "within_resnet.npz")["matrix"],
                               result.arrays["within_resnet"]["matrix"], rtol=1e-6, atol=1e-9)
    assert [finding.value for finding in result.findings] == pytest.approx(
        [finding["value"] for finding in summary["findings"]], rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_sec4_seed_replicates_and_block_taps(tiny_models, tmp_path):
    replicates = [f"{tiny_models['vit']}={tiny_models['vit_seed1']}",
                  f"{tiny_models['resnet']}={tiny_models['resnet_seed1']}"]
    _, summary = run_module(sec4, tmp_path, [tiny_models["vit"], tiny_models["resnet"]], "--seed-replicates",
                            *replicates, "--taps", "blocks")
    assert summary["seed_replicates"] == {"vit": ["vit_seed1"], "resnet": ["resnet_seed1"]}
    assert sorted(summary["maps"]) == ["cross_vit_resnet", "seeds_resnet_resnet_seed1", "seeds_vit_vit_seed1",
                                       "within_resnet", "within_vit"]
    assert summary["maps"]["within_vit"]["row_names"] == ["embedding"] + [
        f"block{b:02d}/{tap}" for b in range(2) for tap in ("sa", "+sa", "mlp", "+mlp")]
    uniform = summary["findings"][0]
    assert uniform["detail"]["seed_pairs"] == [["vit", "resnet"], ["vit_seed1", "resnet_seed1"]]
    assert uniform["value"] == pytest.approx(np.mean(uniform["detail"]["per_seed"]))


def test_attention_distance_command_line(tiny_models, tmp_path):
    options, summary = run_module(sec5_distance, tmp_path, [tiny_models["vit"], tiny_models["vit"]])
    check_files(tmp_path, ["attention_distances.npz", "attention_distances.json", "attention_distances.png",
                           "attention_distances_less_data.png", "attention_heads_vit.png",
                           "attention_heads_vit#2.png", "attention_spread.png", "summary.json"])
    check_findings(summary, ["lower_layers_mix_local_and_global_heads", "less_data_no_local_heads"])
    assert summary["little_data_models"] == {"vit": "vit#2"}
    models = common.load_models([tiny_models["vit"]], options)
    result = attention_distance.run(models, common.evaluation_data(options, IMAGE_SIZE), num_resamples=50)
    saved = np.load(tmp_path / "attention_distances.npz")
    np.testing.assert_allclose(saved["vit.per_example"], result.arrays["attention_distances"]["vit.per_example"],
                               rtol=1e-6)
    assert saved["vit.per_example"].shape == (32, 2, 4)
    # Two copies of one model: both have the same smallest ratio r in block 0 (of 2 blocks), so the statistic
    # min(0.5 - r, r - 0.5) is -|r - 0.5|, with r from the saved distances and the uniform distance of the 4 x 4
    # grid of 4 px patches.
    cells = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), axis=-1).reshape(-1, 2)
    uniform = 4 * np.linalg.norm(cells[:, None] - cells[None], axis=-1).mean()
    smallest = saved["vit.per_example"].mean(axis=0)[0].min() / uniform
    less = summary["findings"][1]
    assert less["value"] == pytest.approx(-abs(smallest - 0.5), rel=1e-6)
    assert less["detail"]["little_minus_full_min_ratio"] == 0.0
    assert (less["threshold"], less["direction"]) == claims.threshold("less_data_no_local_heads")
    assert result.findings[0].value == pytest.approx(summary["findings"][0]["value"], rel=1e-6)


@pytest.mark.slow
def test_head_subset_command_line(tiny_models, tmp_path):
    _, summary = run_module(sec5_heads, tmp_path, [tiny_models["vit"], tiny_models["resnet"]], "--window-sizes",
                            "1", "2")
    check_files(tmp_path, ["head_subset_cka.npz", "head_subset_cka.json", "head_subset_cka.png", "summary.json"])
    check_findings(summary, ["local_heads_most_resnet_like"])
    assert len(summary["subsets"]) == 4 + 3
    assert np.load(tmp_path / "head_subset_cka.npz")["cka"].shape[0] == 7


@pytest.mark.slow
def test_receptive_field_command_line(tiny_models, tmp_path):
    options = sec5_erf.build_parser().parse_args([
        "--models", tiny_models["vit"], tiny_models["resnet"], "--out", str(tmp_path), "--dataset", "digits",
        "--num-examples", "8", "--batch-size", "8", "--max-channels", "2", "--num-blocks", "1", "--num-resamples", "50",
        "--no-progress"])
    summary = sec5_erf.run(options)
    check_files(tmp_path, ["erf_maps.npz", "erf_maps_vit.png", "erf_maps_resnet.png",
                           "erf_maps_vit_before_residual.png", "erf_extent.png", "receptive_fields.json",
                           "summary.json"])
    check_findings(summary, ["vit_erf_larger_in_lower_layers"])
    assert list(summary["extent"]["vit"]) == ["block00/sa", "block00/+mlp"]  # the first of 2 blocks
    assert list(summary["extent"]["resnet"]) == ["block1/unit01/+res", "block2/unit01/+res"]
    assert summary["max_channels"] == 2 and summary["num_images"] == 8 and summary["num_blocks"] == 1


# --- plotting ------------------------------------------------------------------------------------------------------


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


def test_24_block_heatmap_labels_every_block():
    names = ["embedding"] + [f"block{b:02d}/{tap}" for b in range(24) for tap in ("sa", "+sa", "mlp", "+mlp")]
    figure = plotting.cka_heatmap(np.eye(len(names)), names)
    labels = [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
    assert [f"block{b:02d}" for b in range(24)] == [label for label in labels if label.startswith("block")]


def test_many_series_get_distinct_colours_and_an_outside_legend():
    series = {f"block {b}": (np.arange(3), np.arange(3) + b) for b in range(32)}
    figure = plotting.line_plot(series, hlines={"uniform": 1.0}, legend_title="block")
    axes = figure.axes[0]
    assert len({tuple(line.get_color()) for line in axes.lines[:32]}) == 32
    legend = axes.get_legend()
    assert len(legend.get_texts()) == 33
    bbox = legend.get_bbox_to_anchor().transformed(axes.transAxes.inverted())
    assert bbox.x0 > 1.0  # beside the axes, not over the data
    few = plotting.line_plot({"a": ([0, 1], [0, 1]), "b": ([0, 1], [1, 0])})
    assert few.axes[0].get_legend() is not None


def test_points_plot_draws_intervals_that_do_not_contain_their_estimate():
    # A percentile bootstrap interval need not contain the estimate: the second point lies above its interval.
    x, y, low, high = [0.0, 1.0], [0.5, 0.9], [0.4, 0.6], [0.6, 0.8]
    figure = plotting.line_plot({"a": (x, y, low, high)}, style="points")
    (segments,) = figure.axes[0].collections
    np.testing.assert_allclose(np.array(segments.get_segments()), [[[0.0, 0.4], [0.0, 0.6]], [[1.0, 0.6], [1.0, 0.8]]])
    np.testing.assert_allclose(figure.axes[0].lines[0].get_ydata(), y)
