"""Section 6-8 experiment modules: their own statistics on hand-built inputs, and a smoke run of each module on tiny
untrained models (saved as ``.keras`` files) producing every promised file and a findings list.

The analyses they call (norm ratios, token-patch CKA, probes, bootstrap) are tested in ``tests/test_analysis_*.py``.
"""

import argparse
import json
import math

import keras
import numpy as np
import pytest

from experiments import sec6_skip_connections as sec6
from experiments import sec7_linear_probes as sec7_probes
from experiments import sec7_localization as sec7_loc
from experiments import sec8_data_scale as sec8
from experiments import common
from experiments import sec678_common as shared
from vitcnn_tf import representations
from vitcnn_tf.analysis import localization, skip
from vitcnn_tf.models import Mixer, MixerConfig, ResNetV2, ResNetV2Config, ViT, ViTConfig

TINY_VIT = dict(image_size=16, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=4)
TINY_RESNET = dict(image_size=16, width_factor=0.125)
TINY_MIXER = dict(image_size=16, hidden_dim=8, tokens_mlp_dim=8, channels_mlp_dim=16, num_blocks=2)
LAYERS = ["embedding", "block00/+sa", "block00/+mlp", "block01/+sa", "block01/+mlp", "block02/+sa", "block02/+mlp"]


def strict_json(path):
    """Parse a JSON file, refusing the non-standard NaN / Infinity constants Python would otherwise accept."""
    def refuse(constant):
        raise ValueError(f"{path}: invalid JSON constant {constant}")

    with open(path) as handle:
        return json.load(handle, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------------------
# Section 6: partition scalar, norm-ratio statistics


def test_layer_sides_split_at_the_removed_block():
    sides = sec6.layer_sides(LAYERS + ["encoder_norm"], block=1)
    assert sides.tolist() == [-1, -1, -1, 0, 1, 1, 1, 1]


def test_partition_scalar_on_a_hand_built_matrix():
    # block 1 removed: before = embedding, block00/*; inside = block01/+sa; after = block01/+mlp, block02/*.
    before, inside, after = [0, 1, 2], [3], [4, 5, 6]
    cka = np.full((7, 7), 0.5)
    cka[np.ix_(before, before)] = 0.9
    cka[np.ix_(after, after)] = 0.7
    cka[np.ix_(before, after)] = cka[np.ix_(after, before)] = 0.2
    cka[inside, :] = cka[:, inside] = 0.123  # the inside of the block is on neither side
    np.fill_diagonal(cka, 1.0)  # the diagonal is never averaged
    result = sec6.partition_scalar(cka, LAYERS, block=1)
    assert result["within_before"] == pytest.approx(0.9) and result["within_after"] == pytest.approx(0.7)
    assert result["within"] == pytest.approx(0.8) and result["across"] == pytest.approx(0.2)
    assert result["partition"] == pytest.approx(0.6)
    # A uniform matrix has no partition at any block.
    assert sec6.partition_scalar(np.full((7, 7), 0.4), LAYERS, block=2)["partition"] == pytest.approx(0.0)


def test_partition_scalar_with_a_one_layer_side_uses_the_other_side_only():
    cka = np.arange(49, dtype=float).reshape(7, 7) / 49
    cka = (cka + cka.T) / 2
    result = sec6.partition_scalar(cka, LAYERS, block=2)  # after = [block02/+mlp] only
    before = [0, 1, 2, 3, 4]
    expected_within = cka[np.ix_(before, before)][~np.eye(5, dtype=bool)].mean()
    assert math.isnan(result["within_after"])
    assert result["within"] == pytest.approx(expected_within)
    assert result["across"] == pytest.approx(cka[before, 6].mean())
    with pytest.raises(ValueError, match=r"\[7, 7\] matrix"):
        sec6.partition_scalar(cka[:6, :6], LAYERS, block=1)


def test_phase_change_and_mean_log_ratio_on_known_ratios():
    ones = np.ones((5, 4))
    # CLS ratios 4, 4, 1, 1 and spatial ratios 1, 1, 4, 4 over units in blocks 0, 0, 1, 1.
    skip_cls, branch_cls = ones * [4, 4, 1, 1], ones
    skip_spatial, branch_spatial = ones * [2, 2, 8, 8], ones * 2
    first_half = np.array([True, True, False, False])
    value = sec6.phase_change(skip_cls, branch_cls, skip_spatial, branch_spatial, first_half)
    assert value == pytest.approx(np.log(4) - (-np.log(4)))  # D = +ln 4 in the first half, -ln 4 after
    # Ratios of mean norms over examples, not means of per-example ratios.
    skip_a, branch_a = np.array([[1.0], [3.0]]), np.array([[1.0], [1.0]])
    assert sec6.log_ratios(skip_a, branch_a) == pytest.approx([np.log(2.0)])
    assert sec6.mean_log_ratio_difference(skip_a, branch_a, ones[:2, :1], ones[:2, :1]) == pytest.approx(np.log(2))


@pytest.mark.parametrize("build", [
    lambda: ViT(ViTConfig.from_name("ViT-CPU/4", **TINY_VIT)),
    lambda: ResNetV2(ResNetV2Config.from_name("ResNetV2-CPU", **TINY_RESNET)),
    lambda: Mixer(MixerConfig.from_name("Mixer-CPU/4", **TINY_MIXER)),
], ids=["vit", "resnet", "mixer"])
def test_per_example_norms_give_the_library_norm_ratios(build):
    keras.utils.set_random_seed(1)
    model = build()
    images = np.random.default_rng(0).uniform(-1, 1, (12, 16, 16, 3)).astype("float32")
    units = skip.residual_units(model)
    prefix = shared.num_prefix_tokens(model)
    needed = list(dict.fromkeys(name for unit in units for name in unit if name is not None))
    parts = [sec6.per_example_norms(units, representations.extract(model, images[s:s + 6], needed), prefix)
             for s in (0, 6)]
    norms = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    expected = skip.norm_ratios(model, images, batch_size=6)  # same batches: same float32 activations
    sums = [unit[2] for unit in units]
    np.testing.assert_allclose(np.exp(sec6.log_ratios(norms["skip"], norms["branch"])),
                               [expected[name]["ratio"] for name in sums], rtol=1e-9)
    if prefix:
        for part in ("cls", "spatial"):
            np.testing.assert_allclose(np.exp(sec6.log_ratios(norms[f"skip_{part}"], norms[f"branch_{part}"])),
                                       [expected[name][f"ratio_{part}"] for name in sums], rtol=1e-9)
    else:
        assert set(norms) == {"skip", "branch"}


def test_single_tap_extraction_returns_the_whole_batch():
    # Regression: Keras 3 returns a one-output model's output bare, which used to be zipped over the batch.
    model = ViT(ViTConfig.from_name("ViT-CPU/4", **TINY_VIT))
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    alone = representations.extract(model, images, ["block01/+mlp"])["block01/+mlp"]
    together = representations.extract(model, images, ["block01/+mlp", "embedding"])["block01/+mlp"]
    assert alone.shape == (3, 17, 8)
    np.testing.assert_array_equal(alone, together)


# ---------------------------------------------------------------------------------------------------------
# Section 7: own-patch share, probe features


def test_own_patch_share_is_one_when_localized_and_k_over_p_without_spatial_information():
    own = localization.region_mask((2, 2), (4, 4))  # each of 4 tokens owns 4 of 16 patches
    localized = np.where(own, 0.5, 0.0)
    assert sec7_loc.own_patch_share(localized, own) == pytest.approx(1.0)
    same_row = np.tile(np.random.default_rng(0).uniform(0.1, 1.0, 16), (4, 1))
    assert sec7_loc.own_patch_share(same_row, own) == pytest.approx(4 / 16)
    with_constant_token = np.vstack([localized, np.full((1, 16), np.nan)])
    assert sec7_loc.own_patch_share(with_constant_token, np.vstack([own, own[:1]])) == pytest.approx(1.0)
    scores = sec7_loc.scores_of_map(same_row, own)
    assert scores["chance_own_share"] == pytest.approx(0.25) and scores["chance_top1_fraction"] == pytest.approx(0.25)


def test_grid_tokens_pick_a_corner_an_edge_and_interior_tokens():
    indices, cells = sec7_loc.grid_tokens((8, 8))
    assert cells == [(0, 0), (0, 4), (3, 3), (5, 6)]
    assert indices == [0, 4, 27, 46]


def test_probe_features_drop_the_cls_token_and_pick_the_grid_positions():
    n, side, dim = 3, 8, 5
    values = np.random.default_rng(0).standard_normal((n, 1 + side * side, dim))
    features = sec7_probes.token_features(values, 1, 4, ("tokens", "cls", "gap", "single"))
    spatial = values[:, 1:].reshape(n, side, side, dim)
    rows = cols = [1, 3, 5, 7]
    np.testing.assert_array_equal(features["tokens"], spatial[:, rows][:, :, cols].reshape(n, 16, dim))
    np.testing.assert_allclose(features["gap"], values[:, 1:].mean(axis=1))
    np.testing.assert_array_equal(features["cls"], values[:, 0])
    np.testing.assert_array_equal(features["single"], spatial[:, 4, 4])
    # A feature map: positions are tokens, no CLS; a map smaller than the grid is probed at every position.
    feature_map = np.random.default_rng(1).standard_normal((n, 2, 2, dim))
    features = sec7_probes.token_features(feature_map, 0, 4, ("tokens", "cls", "gap"))
    assert set(features) == {"tokens", "gap"} and features["tokens"].shape == (n, 4, dim)


# ---------------------------------------------------------------------------------------------------------
# Section 8: low vs high blocks, grouping; JSON summaries


def test_low_minus_high_blocks_on_a_hand_built_matrix():
    low, high = sec8.low_high_blocks(6)
    assert low.tolist() == [0, 1] and high.tolist() == [4, 5]
    assert [part.tolist() for part in sec8.low_high_blocks(4)] == [[0], [3]]
    cka = np.diag([0.9, 0.8, 0.7, 0.6, 0.5, 0.3]) + 0.01  # off-diagonal entries are ignored
    assert sec8.low_minus_high(cka, low, high) == pytest.approx(0.85 - 0.4)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        sec8.low_high_blocks(1)


@pytest.mark.slow
def test_block_cka_under_a_mirrored_strategy_equals_the_single_device_run():
    # Two logical CPU devices (tests/conftest.py): each global batch of 16 is split into two minibatches of 8,
    # which must give the single-device result with batches of 8.
    keras.utils.set_random_seed(3)
    models = {"full": ViT(ViTConfig.from_name("ViT-CPU/4", **TINY_VIT)),
              "part": ViT(ViTConfig.from_name("ViT-CPU/4", **TINY_VIT))}
    groups = {"vit": {"reference": "full", "reduced": ["part"]}}
    images = np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
    results = {}
    for strategy, batch_size in (("none", 8), ("mirrored", 16)):
        options = argparse.Namespace(batch_size=batch_size, strategy=strategy, progress=False,
                                     bootstrap_resamples=10, seed=0)
        results[strategy] = sec8.block_cka(groups, models, images, options)["vit"]["models"]["part"]["cka"]
    np.testing.assert_allclose(results["mirrored"], results["none"], atol=1e-6)


def test_group_models_needs_one_full_data_model_per_architecture():
    vit = ViT(ViTConfig.from_name("ViT-CPU/4", **TINY_VIT))
    models = {"a": vit, "b": vit, "c": vit}
    groups = sec8.group_models(models, [1.0, 0.3, 0.03])
    assert groups == {"vit": {"reference": "a", "reduced": ["c", "b"]}}
    with pytest.raises(ValueError, match="exactly one trained on all the data"):
        sec8.group_models(models, [0.1, 0.3, 0.03])


def test_json_safe_replaces_non_finite_numbers_and_notes_where(tmp_path):
    cleaned, paths = common.json_safe({"a": [1.0, np.nan], "b": {"c": np.float32(np.inf)}, "d": np.arange(2)})
    assert cleaned == {"a": [1.0, None], "b": {"c": None}, "d": [0, 1]}
    assert paths == ["$.a[1]", "$.b.c"]

    class Options:
        out = str(tmp_path)

    written = common.write_summary(Options, {"x": -np.inf, "findings": []})
    stored = strict_json(tmp_path / common.SUMMARY_FILE)
    assert stored == written and stored["x"] is None and stored["non_finite_paths"] == ["$.x"]


# ---------------------------------------------------------------------------------------------------------
# Smoke runs of the four modules


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny untrained models as ``.keras`` files: {name: path}."""
    folder = tmp_path_factory.mktemp("tiny_models")
    keras.utils.set_random_seed(0)
    builders = {
        "vit": lambda: ViT(ViTConfig.from_name("ViT-CPU/4", **TINY_VIT)),
        "vit_gap": lambda: ViT(ViTConfig.from_name("ViT-CPU/4", classifier="gap", **TINY_VIT)),
        "vit_noskip_early": lambda: ViT(ViTConfig.from_name("ViT-CPU/4", skip_blocks_removed=(0,), **TINY_VIT)),
        "vit_noskip_mid": lambda: ViT(ViTConfig.from_name("ViT-CPU/4", skip_blocks_removed=(2,), **TINY_VIT)),
        "vit_data10": lambda: ViT(ViTConfig.from_name("ViT-CPU/4", **TINY_VIT)),
        "resnet": lambda: ResNetV2(ResNetV2Config.from_name("ResNetV2-CPU", **TINY_RESNET)),
        "resnet_data10": lambda: ResNetV2(ResNetV2Config.from_name("ResNetV2-CPU", **TINY_RESNET)),
        "mixer": lambda: Mixer(MixerConfig.from_name("Mixer-CPU/4", **TINY_MIXER)),
    }
    paths = {}
    for name, build in builders.items():
        paths[name] = str(folder / f"{name}.keras")
        build().save(paths[name])
    return paths


def smoke_run(module, tiny_models, tmp_path, models, *extra):
    out = tmp_path / module.__name__.rsplit(".", 1)[1]
    argv = ["--models", *[tiny_models[name] for name in models], "--dataset", "digits", "--num-examples", "64",
            "--batch-size", "16", "--out", str(out), "--no-progress", *extra]
    summary = module.run(module.build_parser().parse_args(argv))
    stored = strict_json(out / common.SUMMARY_FILE)
    assert stored == summary
    assert sorted(path.name for path in out.iterdir()) == summary["files"]
    for name in summary["files"]:
        assert (out / name).stat().st_size > 0
    return summary


def check_findings(summary, keys):
    assert [finding["key"] for finding in summary["findings"]] == keys
    for finding in summary["findings"]:
        assert finding["verdict"] in ("holds", "does not hold", "inconclusive")
        assert finding["low"] is None or finding["low"] <= finding["high"]


@pytest.mark.slow
def test_sec6_smoke(tiny_models, tmp_path):
    summary = smoke_run(sec6, tiny_models, tmp_path, ["vit_noskip_early", "vit", "resnet", "mixer", "vit_noskip_mid"],
                        "--bootstrap-resamples", "20")
    assert list(summary["skip_removal"]["models"]) == ["vit", "vit_noskip_early", "vit_noskip_mid"]
    assert list(summary["norm_ratios"]) == ["vit", "resnet", "mixer"]
    assert set(summary["files"]) >= {"norm_ratios.npz", "norm_ratio_tokens.png", "norm_ratio_layers.png",
                                     "skip_removal_cka.npz", "skip_removal_cka.png"}
    check_findings(summary, ["vit_skip_branch_dominates", "cls_spatial_phase_change",
                             "skip_removal_partitions_representation"])
    assert summary["findings"][2]["detail"]["models"] == ["vit_noskip_mid", "vit"]  # block 2 of 0..3: most central
    with np.load(tmp_path / "sec6_skip_connections" / "norm_ratios.npz") as arrays:
        assert arrays["vit/ratio_per_token"].shape == (8, 17)  # 4 blocks x (sa, mlp), CLS + 16 tokens


@pytest.mark.slow
def test_sec7_localization_smoke(tiny_models, tmp_path):
    summary = smoke_run(sec7_loc, tiny_models, tmp_path, ["vit", "vit_gap", "resnet"], "--bootstrap-resamples", "3")
    assert set(summary["files"]) >= {"token_patch_cka.npz", "localization_maps.png", "localization_scores.png"}
    check_findings(summary, ["cls_vit_tokens_localize", "gap_vit_localizes_less"])
    assert summary["models"]["resnet"]["token_grid"] == [2, 2] and summary["models"]["vit"]["num_tokens"] == 16


@pytest.mark.slow
def test_sec7_linear_probes_smoke(tiny_models, tmp_path):
    summary = smoke_run(sec7_probes, tiny_models, tmp_path, ["vit", "vit_gap", "resnet"], "--shots", "2",
                        "--probe-seeds", "0", "1", "--train-pool", "64")
    assert set(summary["files"]) >= {"probes.npz", "probes_per_token.png", "probes_aggregations.png"}
    check_findings(summary, ["cls_vit_spatial_tokens_probe_poorly"])
    assert "cls" in summary["models"]["vit"] and "cls" not in summary["models"]["vit_gap"]
    assert len(summary["models"]["vit"]["depth"]) == 9  # embedding + 4 blocks x (+sa, +mlp)


@pytest.mark.slow
def test_sec8_smoke(tiny_models, tmp_path):
    summary = smoke_run(sec8, tiny_models, tmp_path, ["vit_data10", "vit", "resnet_data10", "resnet"],
                        "--fractions", "0.1", "1", "0.1", "1", "--shots", "2", "--probe-seeds", "0", "1",
                        "--train-pool", "64", "--bootstrap-resamples", "20")
    assert set(summary["files"]) >= {"data_scale_cka.npz", "data_scale_probes.npz", "data_scale_cka_vit.png",
                                     "data_scale_cka_resnet.png", "data_scale_probes_vit.png",
                                     "data_scale_probes_resnet.png"}
    check_findings(summary, ["less_data_hurts_higher_layers_more"])
    assert summary["groups"]["resnet"]["models"]["resnet_data10"]["low_minus_high"]["value"] is not None
