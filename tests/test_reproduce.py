"""Orchestration of experiments.reproduce: stage caching, resume after interruptions, invalidation, report."""

import json
import os

import pytest
import reproduce_fake_stage as fake

from experiments import reproduce

FAKE_STAGES = fake.stages()


@pytest.fixture(autouse=True)
def fake_pipeline(monkeypatch):
    monkeypatch.setattr(reproduce, "STAGES", FAKE_STAGES)
    fake.CALLS.clear()
    fake.INTERRUPT.clear()
    fake.FAIL.clear()
    yield
    fake.INTERRUPT.clear()
    fake.FAIL.clear()


def run(out, *extra, jobs=1):
    return reproduce.main(["--out", str(out), "--no-progress", "--jobs", str(jobs), *extra])


outputs = fake.comparable_outputs  # every output file, timings blanked


def test_second_run_reuses_every_stage(tmp_path):
    run(tmp_path)
    assert fake.CALLS == [stage.name for stage in FAKE_STAGES]
    first = outputs(tmp_path)
    fake.CALLS.clear()
    run(tmp_path)
    assert fake.CALLS == []
    assert outputs(tmp_path) == first


@pytest.mark.slow
def test_two_worker_processes_give_the_in_process_results(tmp_path):
    run(tmp_path / "in_process")
    fake.CALLS.clear()
    run(tmp_path / "workers", jobs=2)
    assert fake.CALLS == []  # the stages ran in the worker processes
    assert outputs(tmp_path / "workers") == outputs(tmp_path / "in_process")


def test_a_worker_killed_inside_a_stage_fails_only_that_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STAGE_KILL", "sec4_beta_stage:1")  # the worker dies after the stage's first file
    assert run(tmp_path, jobs=2) == 1
    report = (tmp_path / "report.md").read_text()
    assert "Stage `sec4_beta_stage` (Fake stage sec4_beta_stage): failed" in report
    assert (tmp_path / "sec4_alpha" / reproduce.STAGE_FILE).exists()
    monkeypatch.delenv("FAKE_STAGE_KILL")
    assert run(tmp_path, jobs=2) == 0
    assert (tmp_path / "sec4_beta_stage" / reproduce.STAGE_FILE).exists()


def test_stage_code_covers_the_helper_modules_it_imports():
    files = {os.path.relpath(path, reproduce._PROJECT_ROOT)
             for path in reproduce.code_files("experiments.sec8_data_scale")}
    assert {"experiments/sec8_data_scale.py", "experiments/common.py", "vitcnn_tf/paper/data_scale.py",
            "vitcnn_tf/zoo.py"} <= files
    assert "experiments/sec6_skip_connections.py" not in files and "experiments/reproduce.py" not in files


def test_an_edited_helper_module_invalidates_the_stage(tmp_path, monkeypatch):
    run(tmp_path)
    helper = os.path.join(reproduce._PROJECT_ROOT, "experiments", "common.py")  # imported by the fake stage module
    real_sha256 = reproduce.training.sha256_file
    monkeypatch.setattr(reproduce.training, "sha256_file",
                        lambda path: "edited" if path == helper else real_sha256(path))
    fake.CALLS.clear()
    run(tmp_path)
    assert fake.CALLS == [stage.name for stage in FAKE_STAGES]


@pytest.mark.parametrize("interrupted", [stage.name for stage in FAKE_STAGES])
def test_resume_after_an_interruption_gives_the_uninterrupted_results(tmp_path, interrupted):
    run(tmp_path / "reference")
    reference = outputs(tmp_path / "reference")

    fake.CALLS.clear()
    fake.INTERRUPT.add(interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    before = fake.CALLS.index(interrupted)
    assert not os.path.exists(tmp_path / "resumed" / interrupted / reproduce.STAGE_FILE)
    assert not os.path.exists(tmp_path / "resumed" / "report.md")

    fake.INTERRUPT.clear()
    fake.CALLS.clear()
    run(tmp_path / "resumed")
    assert fake.CALLS == [stage.name for stage in FAKE_STAGES][before:]  # finished stages are not redone
    assert outputs(tmp_path / "resumed") == reference


def test_a_changed_setting_reruns_the_stages_it_affects(tmp_path):
    run(tmp_path)
    fake.CALLS.clear()
    run(tmp_path, "--num-examples", "128")
    assert fake.CALLS == [stage.name for stage in FAKE_STAGES]
    fake.CALLS.clear()
    run(tmp_path, "--num-examples", "128", "--only", "sec4_beta")
    assert fake.CALLS == []


def test_report_has_the_findings_table_and_embedded_figures(tmp_path):
    run(tmp_path)
    findings = json.loads((tmp_path / "findings.json").read_text())
    assert [f["key"] for f in findings] == [f"{stage.name}_mean_positive" for stage in FAKE_STAGES]
    for finding in findings:  # the verdict follows the interval
        expected = ("holds" if finding["low"] > 0 else "does not hold" if finding["high"] <= 0 else "inconclusive")
        assert finding["verdict"] == expected
    markdown = (tmp_path / "report.md").read_text()
    assert "| section | finding |" in markdown and "(sec4_alpha/samples.png)" in markdown
    assert "- **Findings**: " in markdown and "`shapes10`, split `test`" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FAKE_STAGES) and "src='sec4" not in page


def test_only_selects_stages_by_prefix_and_rejects_unknown_names():
    assert [s.name for s in reproduce.selected_stages("sec4_b,sec4_g")] == ["sec4_beta_stage", "sec4_gamma_st"]
    with pytest.raises(ValueError, match="'sec9' names no stage"):
        reproduce.selected_stages("sec9")


def test_a_failed_stage_does_not_stop_the_others_and_is_retried(tmp_path):
    fake.FAIL.add("sec4_beta_stage")
    assert run(tmp_path) == 1
    assert fake.CALLS == [stage.name for stage in FAKE_STAGES]
    assert ("Stage `sec4_beta_stage` (Fake stage sec4_beta_stage): failed; RuntimeError: injected failure"
            in (tmp_path / "report.md").read_text())
    fake.FAIL.clear()
    fake.CALLS.clear()
    assert run(tmp_path) == 0
    assert fake.CALLS == ["sec4_beta_stage"]
