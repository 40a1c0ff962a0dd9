"""The Section 6-8 command lines: roles of ``--models``, the files they write (the arrays, tables, figures and the
summary of the library's result), and that no experiment module imports another. The analyses themselves are
tested in ``tests/test_paper_sec678.py``.
"""

import ast
import json

import keras
import numpy as np
import pytest

from experiments import common
from experiments import sec6_skip_connections as sec6
from experiments import sec7_linear_probes as sec7_probes
from experiments import sec7_localization as sec7_loc
from experiments import sec8_data_scale as sec8
from vitcnn_tf import claims
from vitcnn_tf.models import get_model
from vitcnn_tf.paper import common as common_paper

MODULES = (sec6, sec7_loc, sec7_probes, sec8)
TINY_VIT = dict(image_size=16, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=4)
TINY_RESNET = dict(image_size=16, width_factor=0.125)
TINY_MIXER = dict(image_size=16, hidden_dim=8, tokens_mlp_dim=8, channels_mlp_dim=16, num_blocks=2)


def strict_json(path):
    """Parse a JSON file, refusing the non-standard NaN / Infinity constants Python would otherwise accept."""
    def refuse(constant):
        raise ValueError(f"{path}: invalid JSON constant {constant}")

    with open(path) as handle:
        return json.load(handle, parse_constant=refuse)


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_experiment_modules_import_only_experiments_common(module):
    with open(module.__file__) as handle:
        tree = ast.parse(handle.read())
    imported = {node.module + "." + alias.name if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names if (getattr(node, "module", None) or alias.name).startswith("experiments")}
    assert imported <= {"experiments.common"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny untrained models as ``.keras`` files: {name: path}."""
    folder = tmp_path_factory.mktemp("tiny_models")
    keras.utils.set_random_seed(0)
    builders = {
        "vit": lambda: get_model("ViT-CPU/4", **TINY_VIT),
        "vit_gap": lambda: get_model("ViT-CPU/4", classifier="gap", **TINY_VIT),
        "vit_noskip_early": lambda: get_model("ViT-CPU/4", skip_blocks_removed=(0,), **TINY_VIT),
        "vit_noskip_mid": lambda: get_model("ViT-CPU/4", skip_blocks_removed=(2,), **TINY_VIT),
        "vit_data10": lambda: get_model("ViT-CPU/4", **TINY_VIT),
        "resnet": lambda: get_model("ResNetV2-CPU", **TINY_RESNET),
        "mixer": lambda: get_model("Mixer-CPU/4", **TINY_MIXER),
    }
    paths = {}
    for name, build in builders.items():
        paths[name] = str(folder / f"{name}.keras")
        build().save(paths[name])
    return paths


def assert_claim_thresholds(summary):
    """Every written finding states its claim's effect size (``vitcnn_tf.claims``) as threshold and direction."""
    assert summary["findings"]
    for finding in summary["findings"]:
        assert (finding["threshold"], finding["direction"]) == claims.threshold(finding["key"]), finding["key"]


def loaded(tiny_models, names):
    return {name: keras.saving.load_model(tiny_models[name]) for name in names}


def test_sec6_roles_come_from_the_configs(tiny_models):
    models = loaded(tiny_models, ["vit_noskip_early", "vit", "resnet", "mixer", "vit_noskip_mid"])
    assert sec6.split_roles(models) == {"vit": "vit", "resnet": "resnet", "mixer": "mixer",
                                        "no_skip_models": ["vit_noskip_early", "vit_noskip_mid"]}
    with pytest.raises(ValueError, match="second vit"):
        sec6.split_roles(loaded(tiny_models, ["vit", "vit_gap"]))
    with pytest.raises(ValueError, match="need a ViT"):
        sec6.split_roles(loaded(tiny_models, ["resnet"]))


def test_sec7_roles_come_from_the_configs(tiny_models):
    models = loaded(tiny_models, ["resnet", "vit_gap", "vit"])
    assert common_paper.token_roles(models) == {"cls_vit": "vit", "gap_vit": "vit_gap", "resnet": "resnet"}
    assert common_paper.token_role_pairs(models) == tuple((label, models[label]) for label in ("vit", "vit_gap",
                                                                                               "resnet"))
    assert common_paper.token_role_pairs({"vit": models["vit"]}) == (("vit", models["vit"]), None, None)
    with pytest.raises(ValueError, match="--models: 'mixer' \\(mixer\\) has no free role"):
        common_paper.token_roles(loaded(tiny_models, ["vit", "mixer"]), "--models")
    with pytest.raises(ValueError, match="need a CLS-token ViT"):
        common_paper.token_roles(loaded(tiny_models, ["vit_gap"]))


def test_sec8_fractions_from_the_zoo_recipes_or_the_option():
    parser = sec8.build_parser()
    assert sec8.model_fractions(parser.parse_args([])) == [0.03, 0.1, 0.3, 1.0]  # vit_data3 .. vit
    options = parser.parse_args(["--models", "a.keras", "b.keras", "--fractions", "1", "0.09"])
    assert sec8.model_fractions(options) == [1.0, 0.09]
    with pytest.raises(ValueError, match="--fractions is required"):
        sec8.model_fractions(parser.parse_args(["--models", "a.keras"]))
    with pytest.raises(ValueError, match="2 values for 1 --models"):
        sec8.model_fractions(parser.parse_args(["--models", "a.keras", "--fractions", "1", "0.5"]))


def smoke_run(module, tiny_models, tmp_path, models, *extra):
    out = tmp_path / module.__name__.rsplit(".", 1)[1]
    argv = ["--models", *[tiny_models[name] for name in models], "--dataset", "digits", "--num-examples", "64",
            "--batch-size", "16", "--out", str(out), "--no-progress", *extra]
    summary = module.run(module.build_parser().parse_args(argv))
    stored = strict_json(out / common.SUMMARY_FILE)
    assert stored == summary
    figures = [figure["file"] for figure in summary["figures"]]
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted([*figures, common.SUMMARY_FILE, *(name for name in written if name.endswith(".npz"))])
    for name in written:
        assert (out / name).stat().st_size > 0
    for finding in summary["findings"]:
        assert finding["verdict"] in ("holds", "does not hold", "inconclusive")
        assert finding["low"] is None or finding["low"] <= finding["high"]
    return summary, out


@pytest.mark.slow
def test_sec6_writes_the_result(tiny_models, tmp_path):
    summary, out = smoke_run(sec6, tiny_models, tmp_path, ["vit_noskip_early", "vit", "resnet", "vit_noskip_mid"],
                             "--bootstrap-resamples", "20")
    assert list(summary["skip_removal"]["models"]) == ["vit", "vit_noskip_early", "vit_noskip_mid"]
    assert list(summary["norm_ratios"]) == ["vit", "resnet"]
    assert [finding["key"] for finding in summary["findings"]] == [
        "vit_skip_branch_dominates", "cls_spatial_phase_change", "skip_removal_partitions_representation"]
    assert summary["findings"][2]["detail"]["models"] == ["vit_noskip_mid", "vit"]  # block 2 of 0..3: most central
    assert summary["findings"][0]["detail"]["dataset"] == "digits"
    assert_claim_thresholds(summary)
    with np.load(out / "norm_ratios.npz") as arrays:
        assert arrays["vit/ratio_per_token"].shape == (8, 17)
    assert (out / "skip_removal_cka.npz").exists()


@pytest.mark.slow
def test_sec6_without_no_skip_models_names_the_skipped_figure(tiny_models, tmp_path):
    summary, out = smoke_run(sec6, tiny_models, tmp_path, ["vit", "resnet"], "--bootstrap-resamples", "5")
    assert summary["skipped"][0]["paper_figure"] == "8" and "no public checkpoints" in summary["skipped"][0]["reason"]
    assert not (out / "skip_removal_cka.png").exists()


@pytest.mark.slow
def test_sec7_localization_writes_the_result(tiny_models, tmp_path):
    summary, out = smoke_run(sec7_loc, tiny_models, tmp_path, ["vit", "vit_gap", "resnet"],
                             "--bootstrap-resamples", "3")
    assert [finding["key"] for finding in summary["findings"]] == ["cls_vit_tokens_localize",
                                                                   "gap_vit_localizes_less"]
    assert_claim_thresholds(summary)
    assert summary["models"]["resnet"]["token_grid"] == [2, 2] and summary["models"]["vit"]["num_tokens"] == 16
    assert (out / "token_patch_cka.npz").exists()


@pytest.mark.slow
def test_sec7_linear_probes_writes_the_result(tiny_models, tmp_path):
    summary, out = smoke_run(sec7_probes, tiny_models, tmp_path, ["vit", "vit_gap", "resnet"], "--shots", "2",
                             "--probe-seeds", "0", "1", "--train-pool", "64")
    assert [finding["key"] for finding in summary["findings"]] == ["cls_vit_spatial_tokens_probe_poorly"]
    assert_claim_thresholds(summary)
    assert "cls" in summary["models"]["vit"] and "cls" not in summary["models"]["vit_gap"]
    assert len(summary["models"]["vit"]["depth"]) == 9  # embedding + 4 blocks x (+sa, +mlp)
    assert (out / "probes.npz").exists()


@pytest.mark.slow
def test_sec8_writes_the_result(tiny_models, tmp_path):
    summary, out = smoke_run(sec8, tiny_models, tmp_path, ["vit_data10", "vit"], "--fractions", "0.1", "1",
                             "--data-names", "small set", "large set", "--shots", "2", "--probe-seeds", "0", "1",
                             "--train-pool", "64", "--bootstrap-resamples", "20")
    assert [finding["key"] for finding in summary["findings"]] == ["less_data_hurts_higher_layers_more"]
    assert_claim_thresholds(summary)
    assert summary["groups"]["vit"]["models"]["vit_data10"]["data"] == "small set"
    assert {"data_scale_cka.npz", "data_scale_probes.npz"} <= {path.name for path in out.iterdir()}
