"""The benchmarks in benchmarks/ run in their tiniest setting and print their numbers (functional only: speed and
memory are measured by the benchmarks, never asserted here)."""

import json
import math
import os
import re
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import _common  # noqa: E402
import gpu_check  # noqa: E402
import heatmap_bench  # noqa: E402
import memory_bench  # noqa: E402
import paper_dry_run  # noqa: E402
import precision_bench  # noqa: E402

TINY = ["--tiny", "--batch-size", "8"]
NUMBER = r"([0-9][0-9,]*\.?[0-9]*(?:e[+-]?[0-9]+)?)"


def numbers_after(label, text):
    """The numbers on the first line of ``text`` that contains ``label``, after it."""
    line = next((line for line in text.splitlines() if label in line), None)
    assert line is not None, f"no line with {label!r} in:\n{text}"
    return [float(value.replace(",", "")) for value in re.findall(NUMBER, line.split(label, 1)[1])]


def test_steady_and_first_excludes_the_first_batch():
    # 3 batches of 10 examples taking 5 s (tracing), 1 s, 2 s: steady 3 s per 20 examples = 150 s per 1,000.
    assert _common.steady_and_first([5.0, 1.0, 2.0], [10, 10, 10]) == (150.0, 5.0)
    assert _common.steady_and_first([2.0], [8]) == (250.0, 2.0)
    steady, first = _common.steady_and_first([[5.0, 8.0], [1.0, 2.0], [2.0, 2.0]], [10, 10, 10])  # two clocks
    np.testing.assert_allclose(steady, [150.0, 200.0])
    np.testing.assert_allclose(first, [5.0, 8.0])


def test_batch_clock_times_each_batch():
    clock = _common.BatchClock([(np.zeros((4, 2)), 0), (np.zeros((3, 2)), 1)])
    seen = [batch[1] for batch in clock]
    clock.stop()
    assert seen == [0, 1] and clock.sizes == [4, 3]
    durations = clock.durations()
    assert durations.shape == (2, 2) and np.all(durations >= 0)  # batches x (wall, CPU)


def test_batch_clock_needs_stop():
    clock = _common.BatchClock([np.zeros((4, 2))])
    list(clock)
    with pytest.raises(RuntimeError, match="stop"):
        clock.durations()


def test_evenly_spaced_keeps_first_and_last():
    assert memory_bench.evenly_spaced(list("abcdefg"), 3) == ["a", "d", "g"]
    assert memory_bench.evenly_spaced(list("ab"), 3) == ["a", "b"]


@pytest.mark.parametrize("module, argv", [
    (heatmap_bench, ["--batch-size", "2"]),
    (heatmap_bench, ["--num-examples", "64", "--batch-size", "128"]),
    (memory_bench, ["--small", "100", "--batch-size", "128"]),
    (precision_bench, ["--batches", "1000", "--batch-size", "64"]),
])
def test_bad_sizes_are_refused(module, argv, capsys):
    with pytest.raises(SystemExit):
        module.parse_args(argv)
    assert "need" in capsys.readouterr().err


def test_precision_bench_refuses_a_tap_pattern_matching_nothing():
    args = precision_bench.parse_args(["--tiny", "--taps", "no_such_tap"])
    models, _ = _common.cpu_pair(args)
    with pytest.raises(ValueError, match="no_such_tap.*vit"):
        precision_bench.selected_taps(models, args.taps)


@pytest.mark.slow
def test_heatmap_bench_prints_times_and_ratios(capsys):
    assert heatmap_bench.main(TINY + ["--num-examples", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    table = out.split("seconds per 1,000 examples", 1)[1]
    rows = {match[1].strip(): [float(value) for value in match.groups()[1:]]
            for match in re.finditer(r"^  (.+?) +([0-9.]+) s +([0-9.]+)x +([0-9.]+) s +([0-9.]+)x", table,
                                     flags=re.MULTILINE)}
    labels = ["plain forward", "tap extraction", "CKA accumulation", "split pipeline", "end to end"]
    assert [label for label in labels for row in rows if row.startswith(label)] == labels
    forward = next(value for row, value in rows.items() if row.startswith("plain forward"))
    assert forward[1] == forward[3] == 1.0  # the baseline's ratios to itself
    for wall, wall_ratio, cpu, cpu_ratio in rows.values():  # every ratio is to the plain forward of the same run
        assert wall > 0 and cpu > 0
        assert wall_ratio == pytest.approx(wall / forward[0], rel=0.02, abs=0.01)
        assert cpu_ratio == pytest.approx(cpu / forward[2], rel=0.02, abs=0.01)
    wall_extraction, wall_cka, cpu_extraction, cpu_cka = numbers_after("time split of the heatmap", out)[:4]
    assert wall_extraction + wall_cka == pytest.approx(100, abs=1)
    assert cpu_extraction + cpu_cka == pytest.approx(100, abs=1)
    # accumulate_cka and the separately timed pipeline computed the same heatmap.
    assert numbers_after("max |end-to-end heatmap - split-pipeline heatmap|", out)[0] < 1e-9


@pytest.mark.slow
def test_precision_bench_prints_both_errors_and_their_ratio(capsys):
    assert precision_bench.main(["--tiny", "--batches", "3", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    error32 = numbers_after("(a) MinibatchCKA, float32 activations   max |error|", out)[0]
    error64 = numbers_after("(b) MinibatchCKA, float64 activations   max |error|", out)[0]
    ratio = numbers_after("ratio of max errors float32 / float64 input:", out)[0]
    # MinibatchCKA's documented agreement with the reference: 1e-4 for float32 input, 1e-6 (here far less) for float64.
    assert 0 <= error32 < 1e-4 and 0 <= error64 < 1e-9
    assert math.isfinite(ratio) or error64 == 0
    assert "largest float32-input error at (" in out


@pytest.mark.slow
def test_memory_bench_reports_peaks_of_fresh_processes(capsys):
    argv = TINY + ["--small", "16", "--large", "32", "--naive-examples", "16"]
    assert memory_bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s+(streaming heatmap|naive: keep)", line)]
    assert len(rows) == 3
    for row in rows:
        examples, peak, start, growth, seconds = (float(v.replace(",", "")) for v in re.findall(NUMBER, row)[-5:])
        assert examples in (16, 32) and peak >= start > 0 and growth == pytest.approx(peak - start, abs=1)
    assert numbers_after("peak RSS ratio", out)[0] > 0
    assert "growth ratio" in out
    assert "vs streaming all" in out and "computed from the shapes, not run" in out


def test_a_stale_zoo_is_an_error_not_a_retrain(tmp_path):
    for name in ("vit", "resnet"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text("{}")
    args = heatmap_bench.parse_args(["--zoo-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="stale or corrupted"):
        _common.cpu_pair(args)


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_reports_every_part(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--batches", "1", "--warmup", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    precision = report["precision"]
    # the guard turns TensorFloat-32 off inside and restores it; guarded errors are float32-level
    assert precision["tf32_enabled_globally"] and not precision["tf32_inside_guard"] and precision["tf32_after_guard"]
    assert max(value for name, value in precision["max_abs_error"].items()
               if name != "unguarded_tf32_matmul") <= precision["tolerance"]
    placement = report["placement"]
    assert placement["placement_log_nodes"] > 0 and not placement["errors"]
    assert set(placement["output_devices"]) >= {"gram_linear", "linear_cka", "MinibatchCKA.update_state"}
    assert all("device:CPU:" in where for where in placement["output_devices"].values())
    vit, joint = report["throughput"]["vit_b16"], report["throughput"]["vit_b16_x_bit_r50x1"]
    assert vit["taps"] == 2 * gpu_check.QUICK_VIT["num_layers"] and vit["images_per_second"] > 0
    assert joint["taps"] == vit["taps"] + 4  # BiT's four unit outputs (one unit per stage)
    assert vit["heatmap_diagonal_max_error"] < 1e-6 and vit["heatmap_finite_fraction"] == 1.0
    assert "ALL PASS" in capsys.readouterr().out


def test_paper_dry_run_quick_specs_follow_the_checkpoint_table(tmp_path):
    from experiments import reproduce
    from vitcnn_tf.model_specs import parse_model_spec

    table = {checkpoint.name: checkpoint for checkpoint in reproduce.CHECKPOINTS}
    full = paper_dry_run.checkpoint_specs(paper_dry_run.CHECKPOINT_NAMES, str(tmp_path), quick=False)
    quick = paper_dry_run.checkpoint_specs(paper_dry_run.CHECKPOINT_NAMES, str(tmp_path), quick=True)
    for name in paper_dry_run.CHECKPOINT_NAMES:
        assert full[name] == table[name].spec(str(tmp_path))  # the release file names and overrides
        spec = parse_model_spec(quick[name])
        assert spec.preset == table[name].preset and spec.path == str(tmp_path / f"{name}.npz")
        assert spec.overrides["num_classes"] == parse_model_spec(full[name]).overrides["num_classes"]
        assert ("representation_size" in spec.overrides) == ("representation_size" in table[name].overrides)
    with pytest.raises(ValueError, match="not in experiments.reproduce.CHECKPOINTS"):
        paper_dry_run.checkpoint_specs(["no_such_checkpoint"], str(tmp_path), quick=True)


def test_paper_dry_run_writes_an_image_folder_and_a_command_reproduce_accepts(tmp_path):
    from experiments import reproduce
    from vitcnn_tf import data as data_lib

    root = tmp_path / "images"
    assert paper_dry_run.write_image_folder(str(root), classes=3, per_class=2, seed=0, size=24) == 12
    for split in ("train", "test"):
        info = data_lib.check_split("image_folder", split, data_dir=str(root))
        assert info.num_classes == 3 and data_lib.split_size("image_folder", split, data_dir=str(root)) == 6
    args = paper_dry_run.parse_args(["--quick", "--work", str(tmp_path)])
    folders = {name: str(tmp_path / name) for name in ("checkpoints", "images", "reproduce")}
    specs = paper_dry_run.checkpoint_specs(paper_dry_run.CHECKPOINT_NAMES, folders["checkpoints"], quick=True)
    argv = paper_dry_run.reproduce_argv(args, folders, specs, "sec4_representation_structure")
    assert argv[1:3] == ["-m", "experiments.reproduce"]
    options = reproduce.build_parser().parse_args(argv[3:])
    assert (options.preset, options.dataset, options.jobs, options.only) == ("paper", "image_folder", 1,
                                                                            "sec4_representation_structure")
    assert options.num_examples == [str(paper_dry_run.QUICK_NUM_EXAMPLES)]
    assert sorted(entry.split("=", 1)[0] for entry in options.model) == sorted(paper_dry_run.CHECKPOINT_NAMES)


def test_paper_dry_run_refuses_too_few_images(capsys):
    with pytest.raises(SystemExit):
        paper_dry_run.parse_args(["--per-class", "5"])
    with pytest.raises(SystemExit):
        paper_dry_run.parse_args(["--num-examples", "100", "--classes", "2", "--per-class", "10"])
    assert "10-shot" in capsys.readouterr().err
