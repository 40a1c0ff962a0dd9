"""experiments.reproduce keeps its output folder consistent: stage records list their outputs with sha256 and are
written last, damaged outputs are rerun, temporary leftovers are cleaned, one run per folder, reports merge, and a
run killed at any moment then rerun gives the outputs of an uninterrupted run (apart from timings)."""

import json
import os
import re
import signal

import pytest
import reproduce_fake_stage as fake

from experiments import reproduce
from vitcnn_tf import atomic_io

NAMES = [stage.name for stage in fake.stages()]


@pytest.fixture(autouse=True)
def fake_pipeline(monkeypatch):
    monkeypatch.setattr(reproduce, "STAGES", fake.stages())
    monkeypatch.setattr(reproduce, "hardware", lambda: "test CPU")  # no TensorFlow call in forked children
    # the fingerprints cover the fake stage's code only, so that edits of the package while the tests run do not
    # change them (tests/test_reproduce.py covers the code files)
    monkeypatch.setattr(reproduce, "code_files", lambda module_name: [fake.__file__])
    fake.CALLS.clear()
    yield
    fake.KILL = None
    fake.REQUIRE_VIT = False


def run(out, *extra):
    return reproduce.main(["--out", str(out), "--no-progress", "--jobs", "1", *extra])


def run_killed(out, *extra, kill=None, kill_at_replace=None):
    """Runs reproduce in a forked child that dies by SIGKILL inside a stage's writes (``kill = (stage, k)``, see
    reproduce_fake_stage) or just before its ``kill_at_replace``-th file or folder commit; returns True when it was
    killed (False: it finished first)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            fake.KILL = kill
            if kill_at_replace is not None:
                fake._kill_before_replace(kill_at_replace)
            with open(os.devnull, "w") as quiet:
                os.dup2(quiet.fileno(), 1)
                os.dup2(quiet.fileno(), 2)
                code = run(out, *extra)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


def count_commits(out, *extra):
    """The number of ``os.replace`` / ``os.rename`` calls of a run."""
    calls = []
    real_replace, real_rename = os.replace, os.rename
    os.replace = lambda *args, **kwargs: calls.append(1) or real_replace(*args, **kwargs)
    os.rename = lambda *args, **kwargs: calls.append(1) or real_rename(*args, **kwargs)
    try:
        run(out, *extra)
    finally:
        os.replace, os.rename = real_replace, real_rename
    return len(calls)


def test_the_record_lists_every_output_with_its_sha256(tmp_path):
    run(tmp_path)
    for name in NAMES:
        folder = tmp_path / name
        record = json.loads((folder / reproduce.STAGE_FILE).read_text())
        assert record["files"] == atomic_io.file_hashes(folder, exclude=(reproduce.STAGE_FILE,))
        assert set(record["files"]) == {"result.json", "samples.png", "data.npz", "summary.json"}
        assert record["fingerprint"] and record["run"] == {"preset": "cpu", "dataset": "shapes10", "split": "test"}
        assert not [entry for entry in os.listdir(tmp_path) if entry.startswith(".") and entry != ".lock"]


@pytest.mark.parametrize("damage, message", [
    (lambda folder: os.remove(folder / "samples.png"), "its output samples.png is missing"),
    (lambda folder: (folder / "data.npz").write_bytes((folder / "data.npz").read_bytes()[:50]),
     "its output data.npz changed since the stage wrote it"),
])
def test_a_missing_or_changed_output_reruns_its_stage_and_says_why(tmp_path, capsys, damage, message):
    run(tmp_path / "reference")
    run(tmp_path / "out")
    damage(tmp_path / "out" / "sec4_beta_stage")
    fake.CALLS.clear()
    capsys.readouterr()
    assert run(tmp_path / "out") == 0
    assert fake.CALLS == ["sec4_beta_stage"]
    assert f"sec4_beta_stage: ran in 0 s (rerun: {message})" in capsys.readouterr().err
    assert fake.comparable_outputs(tmp_path / "out") == fake.comparable_outputs(tmp_path / "reference")


def test_stale_temporaries_are_removed(tmp_path, capsys):
    run(tmp_path)
    leftovers = [tmp_path / "sec4_alpha" / ".result.json.ab12cd_9.tmp", tmp_path / ".report.md.zz99yy00.tmp",
                 tmp_path / ".sec4_alpha.new-4242" / "result.json", tmp_path / ".sec4_beta_stage.old-17" / "x"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_text("left by a killed run")
    capsys.readouterr()
    run(tmp_path)
    assert "removed 4 temporary file(s) or folder(s) left by an interrupted run" in capsys.readouterr().out
    assert not any(path.exists() for path in leftovers)
    assert not (tmp_path / ".sec4_alpha.new-4242").exists() and not (tmp_path / ".sec4_beta_stage.old-17").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    with atomic_io.folder_lock(tmp_path):  # another run holds the folder
        with pytest.raises(SystemExit) as exit_info:
            run(tmp_path)
    assert exit_info.value.code == 2 and fake.CALLS == []
    error = capsys.readouterr().err
    assert f"error: --out {tmp_path}: another reproduce run (pid {os.getpid()}) is writing there" in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    assert run_killed(tmp_path, kill=("sec4_alpha", 1))  # dies holding the lock
    assert (tmp_path / atomic_io.LOCK_FILE).exists()
    assert run(tmp_path) == 0 and fake.CALLS[-3:] == NAMES


def test_only_updates_its_stages_and_the_report_keeps_the_others(tmp_path):
    run(tmp_path)
    before = json.loads((tmp_path / "findings.json").read_text())
    fake.CALLS.clear()
    run(tmp_path, "--only", "sec4_beta", "--num-examples", "32")
    assert fake.CALLS == ["sec4_beta_stage"]
    after = json.loads((tmp_path / "findings.json").read_text())
    assert [f["key"] for f in after] == [f["key"] for f in before] == [f"{name}_mean_positive" for name in NAMES]
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("ran in") == 3 and "**Examples per stage**: sec4_alpha 64, sec4_beta_stage 32, " \
        "sec4_gamma_st 64." in markdown
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3


def test_only_into_a_new_folder_lists_the_stages_not_run(tmp_path):
    run(tmp_path, "--only", "sec4_gamma")
    markdown = (tmp_path / "report.md").read_text()
    assert "Stage `sec4_alpha` (Fake stage sec4_alpha): not run; no valid record in this folder" in markdown
    assert len(json.loads((tmp_path / "findings.json").read_text())) == 1


def test_records_of_another_dataset_are_left_out_of_the_report(tmp_path, capsys):
    run(tmp_path, "--only", "sec4_alpha", "--dataset", "digits")
    capsys.readouterr()
    run(tmp_path, "--only", "sec4_beta")
    assert "left out of the report: sec4_alpha (its record is for dataset digits, preset cpu, split test)" \
        in capsys.readouterr().out
    assert [f["key"] for f in json.loads((tmp_path / "findings.json").read_text())] == \
        ["sec4_beta_stage_mean_positive"]


def test_paths_spelled_differently_give_the_same_fingerprints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo").mkdir()
    (tmp_path / "data").mkdir()
    run(tmp_path / "out", "--zoo-dir", "zoo/", "--data-dir", "data")
    fake.CALLS.clear()
    run(tmp_path / "out", "--zoo-dir", "zoo", "--data-dir", "./data/")
    run(tmp_path / "out", "--zoo-dir", str(tmp_path / "zoo"), "--data-dir", str(tmp_path / "data"))
    assert fake.CALLS == []


def test_a_checkpoint_enters_the_fingerprint_by_its_content_not_its_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.npz").write_bytes(b"weights one")

    def fingerprint(spec):
        options = fake.build_parser().parse_args(["--models", spec])
        return reproduce.stage_fingerprint(fake, options)

    first = fingerprint("ViT-CPU/4=ckpt/w.npz")
    assert fingerprint(f"ViT-CPU/4={tmp_path}/ckpt/../ckpt/w.npz") == first == fingerprint("ViT-CPU/4=./ckpt/w.npz")
    (tmp_path / "ckpt" / "w.npz").write_bytes(b"weights two")
    reproduce._cached_file_identity.cache_clear()
    assert fingerprint("ViT-CPU/4=ckpt/w.npz") != first


# --- killed runs -----------------------------------------------------------------------------------------------


def test_a_run_killed_before_any_commit_then_rerun_gives_the_uninterrupted_outputs(tmp_path):
    commits = count_commits(tmp_path / "reference")
    reference = fake.comparable_outputs(tmp_path / "reference")
    assert commits == 3 * (4 + 1 + 1) + 3  # per stage 4 files, its record, its folder move; 3 report files
    for commit in range(1, commits + 1):
        out = tmp_path / f"killed{commit}"
        assert run_killed(out, kill_at_replace=commit)
        run(out)
        assert fake.comparable_outputs(out) == reference, f"killed before commit {commit}"


@pytest.mark.parametrize("kill", [("sec4_alpha", 0.5), ("sec4_beta_stage", 2), ("sec4_beta_stage", 2.5),
                                  ("sec4_gamma_st", 4)])
def test_a_run_killed_inside_a_stage_write_then_rerun_gives_the_uninterrupted_outputs(tmp_path, kill):
    run(tmp_path / "reference")
    assert run_killed(tmp_path / "out", kill=kill)
    fresh = [entry for entry in os.listdir(tmp_path / "out") if re.match(r"^\..+\.new-\d+$", entry)]
    assert fresh == [f".{kill[0]}.new-" + fresh[0].rsplit("-", 1)[1]]  # the stage wrote into its fresh folder
    assert not (tmp_path / "out" / kill[0]).exists()
    run(tmp_path / "out")
    assert fake.comparable_outputs(tmp_path / "out") == fake.comparable_outputs(tmp_path / "reference")


def test_a_killed_rerun_with_other_options_keeps_the_finished_stage_consistent(tmp_path, capsys):
    """A finished stage rerun with another --num-examples and killed part-way, then rerun with the original options:
    the stage's folder still holds the original outputs and record, which are reused."""
    run(tmp_path / "reference")
    run(tmp_path / "out")
    assert run_killed(tmp_path / "out", "--num-examples", "32", kill=("sec4_alpha", 2))
    record = json.loads((tmp_path / "out" / "sec4_alpha" / "stage.json").read_text())
    assert record["num_examples"] == 64
    fake.CALLS.clear()
    capsys.readouterr()
    run(tmp_path / "out")
    assert fake.CALLS == [] and "sec4_alpha: up to date, reused" in capsys.readouterr().err
    assert fake.comparable_outputs(tmp_path / "out") == fake.comparable_outputs(tmp_path / "reference")
    # killed between the two moves of the stage folder (commits 1-5: its files and record; 6: the old folder moved
    # aside; 7: the new one into place): the stage's folder is missing, so the rerun runs it again
    assert run_killed(tmp_path / "out", "--num-examples", "32", kill_at_replace=7)
    assert not (tmp_path / "out" / "sec4_alpha").exists()
    run(tmp_path / "out")
    assert fake.comparable_outputs(tmp_path / "out") == fake.comparable_outputs(tmp_path / "reference")
