"""``reproduce --preset paper``: the checkpoint table, the checks before any work, the plan, and an end-to-end run
on tiny release-format checkpoints (written with ``save_npz``) and a tiny prepared tfds dataset."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import reproduce_fake_stage as fake
import tiny_tfds

from experiments import reproduce
from vitcnn_tf import model_specs, models

TINY = {  # checkpoint name -> tiny spec of the same family and head layout (16 px, 3 classes)
    "vit_b16": "ViT-CPU/4:num_layers=2,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3,"
               "representation_size=8",
    "vit_l16": "ViT-CPU/4:num_layers=3,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3,"
               "representation_size=8",
    "bit_r50": "ResNetV2-CPU:image_size=16,num_classes=3",
    "mixer_b16": "Mixer-CPU/4:num_blocks=2,hidden_dim=16,tokens_mlp_dim=8,channels_mlp_dim=32,image_size=16,"
                 "num_classes=3",
    "augreg_b16_i1k": "ViT-CPU/4:num_layers=2,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3",
    "augreg_b16_i21k": "ViT-CPU/4:num_layers=2,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3",
    "augreg_l16_i1k": "ViT-CPU/4:num_layers=3,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3",
    "augreg_l16_i21k": "ViT-CPU/4:num_layers=3,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3",
}


def _write_checkpoint(preset_spec, path, seed):
    """Writes a randomly initialised model of ``preset_spec`` (``PRESET:key=value,...``) with ``save_npz``."""
    import keras

    keras.utils.set_random_seed(seed)
    spec = model_specs.parse_model_spec(preset_spec)
    models.save_npz(models.get_model(spec.preset, **spec.overrides), str(path))
    return f"{preset_spec}={path}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tiny_tfds.prepare(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{name: spec}`` of tiny release-format checkpoints for every table entry, and a GAP ViT."""
    folder = tmp_path_factory.mktemp("ckpt")
    specs = {name: _write_checkpoint(spec, folder / f"{name}.npz", index) for index, (name, spec)
             in enumerate(TINY.items())}
    specs["gap_vit"] = _write_checkpoint(
        "ViT-CPU/4:num_layers=2,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3,classifier=gap",
        folder / "gap.npz", 99)
    return specs


def _args(tmp_path, data_dir, *extra):
    return ["--preset", "paper", "--checkpoints", str(tmp_path / "none"), "--dataset", tiny_tfds.NAME,
            "--split", "validation", "--data-dir", data_dir, "--out", str(tmp_path / "out"), "--no-progress", *extra]


def test_checkpoint_table_lists_every_release_with_its_figures():
    names = [checkpoint.name for checkpoint in reproduce.CHECKPOINTS]
    assert len(set(names)) == len(names)
    files = {checkpoint.name: checkpoint.file for checkpoint in reproduce.CHECKPOINTS}
    assert files["vit_b16"] == "ViT-B_16.npz" and files["bit_r50"] == "BiT-M-R50x1.npz"
    assert files["augreg_b16_i1k"] == "B_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz"
    for checkpoint in reproduce.CHECKPOINTS:
        assert checkpoint.url.endswith("/" + checkpoint.file) and checkpoint.figures
    used = {name for stage in reproduce.STAGES if stage.paper for name in stage.paper.models}
    assert used <= set(names) | set(reproduce.OPTIONAL_MODELS)


def test_npz_shapes_reads_the_headers(tmp_path):
    arrays = {"a/kernel": np.zeros((3, 5), np.float32), "b": np.ones(7, np.float64)}
    np.savez(tmp_path / "x.npz", **arrays)
    assert reproduce.npz_shapes(tmp_path / "x.npz") == {"a/kernel": (3, 5), "b": (7,)}


def test_checkpoint_check_names_the_file_the_key_and_both_shapes(tmp_path):
    spec = _write_checkpoint(TINY["vit_b16"], tmp_path / "vit.npz", 0)
    assert reproduce.check_checkpoint(spec) == []
    # the same file read as a wider model: every kernel mismatches; the message names file, key and shapes
    wider = spec.replace("hidden_size=16", "hidden_size=24")
    problems = reproduce.check_checkpoint(wider)
    assert f"{tmp_path / 'vit.npz'}: key 'embedding/kernel' has shape (4, 4, 3, 16), the model ViT-CPU/4 expects " \
           "(4, 4, 3, 24)" in problems
    # a release without pre-logits (AugReg, fine-tuned) read as the ImageNet-21k layout
    plain = _write_checkpoint(TINY["augreg_b16_i1k"], tmp_path / "plain.npz", 1)
    problems = reproduce.check_checkpoint(plain.replace("num_classes=3", "num_classes=3,representation_size=8"))
    assert any("key 'pre_logits/kernel' is missing (the model ViT-CPU/4 expects shape (16, 8))" in p
               for p in problems)
    # another head size is an error too (BiT-S under the BiT-M name)
    assert any("'head/kernel'" in p for p in reproduce.check_checkpoint(plain.replace("num_classes=3",
                                                                                      "num_classes=5")))


@pytest.fixture
def fake_stages(monkeypatch):
    stages = (reproduce.Stage("sec4_alpha", "4", "Alpha", reproduce.PaperStage(
                  ("vit_b16", "mixer_b16"), optional=("mixer_b16",), figures=(("1", ("vit_b16",)),
                                                                              ("H", ("mixer_b16",))),
                  batch_size=8, num_examples=20, min_batches=2), module="reproduce_fake_stage"),
              reproduce.Stage("sec5_beta", "5", "Beta", reproduce.PaperStage(
                  ("bit_r50",), figures=(("6", ("bit_r50",)),), batch_size=32, num_examples=9),
                  module="reproduce_fake_stage"),
              reproduce.Stage("sec6_gamma", "6", "Gamma", None, module="reproduce_fake_stage",
                              paper_skip="no public checkpoints"))
    monkeypatch.setattr(reproduce, "STAGES", stages)
    fake.CALLS.clear()
    return stages


def test_a_missing_file_skips_only_the_figures_that_need_it(tmp_path, data_dir, checkpoints, fake_stages, capsys):
    code = reproduce.main(_args(tmp_path, data_dir, "--model", f"vit_b16={checkpoints['vit_b16']}", "--jobs", "1"))
    # the stage, then its control at initialisation (the checkpoints have no seed twins)
    assert code == 0 and fake.CALLS == ["sec4_alpha", "init"]
    printed = capsys.readouterr().out
    assert f"dataset {tiny_tfds.NAME}, split validation" in printed
    assert "run  sec4_alpha (Figures 1) on 20 examples" in printed
    assert "without Figure H: needs mixer_b16: Mixer-B_16.npz is not in --checkpoints" in printed
    assert "skip sec5_beta: missing bit_r50: BiT-M-R50x1.npz is not in --checkpoints" in printed
    assert "skip sec6_gamma: no public checkpoints" in printed and "Figure 8 is not run" in printed
    record = json.loads((tmp_path / "out" / "sec4_alpha" / "stage.json").read_text())
    assert record["summary"]["findings"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    path = checkpoints["vit_b16"].rsplit("=", 1)[1]
    assert f"| vit_b16 | {path} | {reproduce.training.sha256_file(path)} | loaded |" in markdown
    assert "Stage `sec5_beta` (Beta): skipped; missing bit_r50" in markdown
    assert "**Figure H skipped**: needs mixer_b16" in markdown and "**Figure 8 skipped**" in markdown
    assert "**Examples per stage**: sec4_alpha 20." in markdown and "split `validation`" in markdown


def test_stage_options_follow_the_paper_defaults_and_overrides(tmp_path, data_dir, checkpoints, fake_stages):
    args = reproduce.build_parser().parse_args(_args(
        tmp_path, data_dir, *[item for name in ("vit_b16", "bit_r50") for item in ("--model", f"{name}={checkpoints[name]}")],
        "--num-examples", "12", "--num-examples", "sec5=6"))
    setup = reproduce.check_inputs(args, reproduce.STAGES)
    assert (setup.split, setup.num_classes) == ("validation", tiny_tfds.NUM_CLASSES)
    plans = {plan.stage.name: plan for plan in reproduce.plan_stages(args, reproduce.STAGES, setup)}
    alpha = fake.build_parser().parse_args(plans["sec4_alpha"].argv)
    assert (alpha.num_examples, alpha.batch_size, alpha.split) == (12, 6, "validation")  # 2 minibatches of 6
    assert alpha.models == [checkpoints["vit_b16"]]
    beta = fake.build_parser().parse_args(plans["sec5_beta"].argv)
    assert (beta.num_examples, beta.batch_size) == (6, 6)  # the batch shrinks to the examples
    assert plans["sec6_gamma"].argv is None
    args.num_examples = ["sec4=7"]
    with pytest.raises(reproduce.UserError, match="--num-examples: stage sec4_alpha needs at least 8 examples"):
        reproduce.plan_stages(args, reproduce.STAGES, setup)


@pytest.mark.parametrize("extra, message", [
    (["--model", "vit_b16=ViT-CPU/4=/no/such.npz"], "--model vit_b16: no file '/no/such.npz'"),
    (["--model", "vit_x=ViT-CPU/4=/no/such.npz"], "--model: 'vit_x' is not a checkpoint of the paper preset"),
    (["--num-examples", "sec9=3"], "--num-examples: 'sec9' must name one stage"),
    (["--split", "test"], "split 'test'.*labels are not class indices"),
    (["--split", "nope"], "no split 'nope'"),
    (["--batch-size", "2"], "--batch-size: expected at least 4"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, data_dir, fake_stages, capsys, extra, message):
    with pytest.raises(SystemExit):
        reproduce.main(_args(tmp_path, data_dir, *extra))
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert re.search(message, error), error


def test_a_wrong_file_under_a_right_name_stops_the_run_before_any_work(tmp_path, data_dir, checkpoints, fake_stages,
                                                                      capsys):
    (tmp_path / "none").mkdir()
    shutil.copy(checkpoints["mixer_b16"].rsplit("=", 1)[1], tmp_path / "none" / "BiT-M-R50x1.npz")
    with pytest.raises(SystemExit):
        reproduce.main(_args(tmp_path, data_dir, "--model", f"vit_b16={checkpoints['vit_b16']}"))
    error = capsys.readouterr().err
    assert f"{tmp_path / 'none' / 'BiT-M-R50x1.npz'}: key" in error and "is missing" in error
    assert len(error) < 2000 and "more problems" in error  # the first problems, not every key of the file
    assert fake.CALLS == []


@pytest.mark.slow
def test_paper_preset_end_to_end_on_tiny_checkpoints(tmp_path, data_dir, checkpoints):
    """Every stage of the paper preset on tiny release-format checkpoints, 24 validation images, 16 px."""
    substitutes = [item for name, spec in checkpoints.items() for item in ("--model", f"{name}={spec}")]
    code = reproduce.main(_args(tmp_path, data_dir, *substitutes, "--num-examples", "24", "--jobs", "1"))
    out = tmp_path / "out"
    records = {name: json.loads((out / name / "stage.json").read_text()) for name in os.listdir(out)
               if (out / name / "stage.json").exists()}
    assert code == 0
    assert set(records) == {stage.name for stage in reproduce.STAGES if stage.paper is not None}
    found = json.loads((out / "findings.json").read_text())
    assert found and all(item["verdict"] in ("holds", "does not hold", "inconclusive") for item in found)
    markdown = (out / "report.md").read_text()
    assert "**Figure 8 skipped**" in markdown and f"`{tiny_tfds.NAME}`, split `validation`" in markdown
    used = {name for stage in reproduce.STAGES if stage.paper for name in stage.paper.models}
    for name in used:
        path = checkpoints[name].rsplit("=", 1)[1]
        assert reproduce.training.sha256_file(path) in markdown
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= len(records)
