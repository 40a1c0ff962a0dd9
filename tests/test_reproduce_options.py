"""Every option of reproduce and of the experiment modules is checked before any work: a bad one ends the command
with one line naming it (exit status 2), no traceback unless --debug, nothing run or written."""

import importlib
import os
import re

import pytest
import reproduce_fake_stage as fake

from experiments import common, reproduce

STAGES = reproduce.STAGES  # the real stages (the fixture below replaces them by fakes)
TINY_VIT = "ViT-CPU/4:num_layers=2,hidden_size=16,mlp_dim=32,num_heads=4,image_size=16,num_classes=3"
TINY_RESNET = "ResNetV2-CPU:image_size=16,num_classes=3"


@pytest.fixture(autouse=True)
def fake_pipeline(monkeypatch):
    monkeypatch.setattr(reproduce, "STAGES", fake.stages())
    fake.CALLS.clear()
    yield
    fake.REQUIRE_VIT = False


def one_line_error(capsys, call):
    """Runs ``call``, which must exit with status 2; returns its one error line (no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    return error


@pytest.mark.parametrize("extra, message", [
    (["--num-examples", "0"], "--num-examples: expected a positive integer N or STAGE=N, got '0'"),
    (["--num-examples", "5000"], "stage sec4_alpha: --num-examples 5000: expected at most the 2000 examples of "
                                 "split 'test' of shapes10"),
    (["--only", "sec9"], "--only: 'sec9' names no stage; stages are sec4_alpha, sec4_beta_stage, sec4_gamma_st"),
    (["--only", ","], "--only ',': expected comma-separated stage names or prefixes"),
    (["--dataset", "nope"], "--dataset nope --split test .*unknown dataset name 'nope'"),
    (["--split", "nope"], "--dataset shapes10 --split nope .*has no split 'nope'"),
    (["--jobs", "0"], "--jobs 0: expected at least 1"),
    (["--batch-size", "2"], "--batch-size: expected at least 4"),
    (["--model", f"vit_b16={TINY_VIT}"], "--model: it replaces checkpoints of --preset paper"),
])
def test_reproduce_refuses_bad_options_in_one_line_before_any_work(tmp_path, capsys, extra, message):
    error = one_line_error(capsys, lambda: reproduce.main(["--out", str(tmp_path / "out"), "--jobs", "1", *extra]))
    assert re.search(message, error), error
    assert fake.CALLS == [] and not (tmp_path / "out" / "report.md").exists()


def test_an_output_that_is_not_a_writable_folder_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    error = one_line_error(capsys, lambda: reproduce.main(["--out", str(tmp_path / "file"), "--jobs", "1"]))
    assert f"--out {tmp_path / 'file'}: expected a writable folder" in error
    if os.geteuid() != 0:  # permissions do not bind root
        (tmp_path / "read_only").mkdir(mode=0o555)
        error = one_line_error(capsys, lambda: reproduce.main(["--out", str(tmp_path / "read_only"), "--jobs", "1"]))
        assert "expected a writable folder (Permission denied)" in error
    assert fake.CALLS == []


def test_an_empty_checkpoints_folder_is_refused(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    error = one_line_error(capsys, lambda: reproduce.main([
        "--out", str(tmp_path / "out"), "--preset", "paper", "--checkpoints", str(tmp_path / "ckpt"),
        "--dataset", "shapes10"]))
    assert f"--checkpoints {tmp_path / 'ckpt'}: holds none of the paper's checkpoint files" in error


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--out", str(tmp_path), "--only", "sec9", "--debug"])
    error = capsys.readouterr().err
    assert "Traceback" in error and error.strip().splitlines()[-1].endswith("names no stage; stages are "
                                                                          "sec4_alpha, sec4_beta_stage, sec4_gamma_st")


def test_a_module_hook_checks_model_families_before_any_work(tmp_path, capsys):
    fake.REQUIRE_VIT = True
    error = one_line_error(capsys, lambda: common.main(fake, ["--models", TINY_RESNET, "--batch-size", "64",
                                                             "--out", str(tmp_path)]))
    assert f"--models {TINY_RESNET}: a resnet model; expected vit" in error and fake.CALLS == []


def _module_main(name, *argv, zoo_dir):
    module = importlib.import_module(f"experiments.{name}")
    return lambda: module.main([*argv, "--zoo-dir", str(zoo_dir)])


@pytest.mark.parametrize("name, argv, message", [
    ("sec5_receptive_fields", ["--mass", "2.0", "--models", TINY_VIT], r"--mass 2\.0: expected a fraction in \(0, 1\]"),
    ("sec5_local_global_heads", ["--block", "99", "--models", TINY_VIT, TINY_RESNET],
     "--block 99: expected a block of the ViT, 0 .. 1"),
    ("sec7_linear_probes", ["--shots", "0", "--models", TINY_VIT], "--shots 0: expected an integer >= 1"),
    ("sec5_attention_distance", ["--models", "foo"], "--models foo: .*'foo'"),
    ("sec5_attention_distance", ["--dataset", "nope"], "--dataset nope --split test: unknown dataset name 'nope'"),
    ("sec5_attention_distance", ["--num-examples", "0"], "argument --num-examples: expected a positive integer"),
    ("sec5_attention_distance", ["--num-examples", "5000", "--models", TINY_VIT],
     "--num-examples 5000: expected at most the 2000 examples of split 'test' of shapes10"),
    ("sec5_attention_distance", ["--num-examples", "16", "--models", TINY_VIT],
     "--num-examples 16: expected at least --batch-size"),
    ("sec5_attention_distance", ["--models", "ViT-CPU/4=/no/such.npz"], "--models ViT-CPU/4=/no/such.npz: no file"),
])
def test_experiment_modules_refuse_bad_options_in_one_line_before_any_work(tmp_path, capsys, name, argv, message):
    error = one_line_error(capsys, _module_main(name, *argv, "--out", str(tmp_path / "out"), zoo_dir=tmp_path / "zoo"))
    assert re.search(message, error), error
    assert not (tmp_path / "zoo").exists() and not os.listdir(tmp_path / "out") if (tmp_path / "out").exists() else True


def test_an_experiment_module_names_an_unwritable_output(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    error = one_line_error(capsys, _module_main("sec5_attention_distance", "--models", TINY_VIT, "--out",
                                                str(tmp_path / "file" / "out"), zoo_dir=tmp_path / "zoo"))
    assert f"--out {tmp_path / 'file' / 'out'}: expected a writable folder" in error


def test_a_resnet_where_a_vit_is_needed_is_one_line(tmp_path, capsys):
    error = one_line_error(capsys, _module_main("sec5_attention_distance", "--models", TINY_RESNET,
                                                "--num-examples", "8", "--batch-size", "8", "--no-progress",
                                                "--out", str(tmp_path / "out"), zoo_dir=tmp_path / "zoo"))
    assert re.search(r"resnet model[,;] expected vit", error), error


def test_the_worker_server_preloads_the_module_of_every_stage():
    assert {stage.module or f"experiments.{stage.name}" for stage in STAGES} == set(reproduce.STAGE_MODULES)


@pytest.mark.parametrize("argv, starts", [
    ([], True), (["--only", "sec4"], True), (["--jobs", "2"], True), (["--preset", "paper", "--jobs", "2"], True),
    (["--help"], False), (["-h"], False), (["--jobs", "1"], False), (["--job", "1"], False),
    (["--preset", "paper"], False), (["--strategy", "mirrored"], False), (["--jobs"], False), (["--jobs", "x"], False),
])
def test_the_worker_server_starts_early_only_when_stages_run_in_workers(monkeypatch, argv, starts):
    started = []
    monkeypatch.setattr(reproduce.parallel, "start_worker_server", lambda preload=(): started.append(preload))
    monkeypatch.setattr(reproduce.parallel, "default_num_workers", lambda: 2)
    assert reproduce.start_worker_server_early(argv) is starts
    assert started == ([("experiments.common", *reproduce.STAGE_MODULES)] if starts else [])
