"""What a person sees: no TensorFlow C++ log lines from any process the project starts (the main process and its
workers), a run killed with kill -9 leaves no worker behind, and its rerun gives the uninterrupted outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import reproduce_fake_stage as fake

from experiments import reproduce
from vitcnn_tf import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_MAIN = os.path.join(ROOT, "tests", "reproduce_fake_stage.py")
TENSORFLOW_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
                    "cudart_stub", "Could not find cuda drivers", "cuInit", "I0000", "W0000", "E0000")


def environment(**extra):
    """This environment without the TensorFlow settings of the test session (as a fresh shell has it)."""
    env = {key: value for key, value in os.environ.items() if key not in runtime.ENVIRONMENT_DEFAULTS}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    return {**env, **extra}


def assert_quiet(stderr):
    found = [line for line in stderr.splitlines() if any(noise in line for noise in TENSORFLOW_NOISE)]
    assert not found, found


def test_the_noise_filter_keeps_other_lines():
    assert runtime.is_tensorflow_log_noise("I0000 00:00:1796212541.922195   12274 port.cc:153] oneDNN custom ...")
    assert runtime.is_tensorflow_log_noise("WARNING: All log messages before absl::InitializeLog() is called are "
                                           "written to STDERR")
    assert not runtime.is_tensorflow_log_noise("E0000 00:00:1796212541.9 12274 gpu.cc:1] a real error")
    assert not runtime.is_tensorflow_log_noise("UserWarning: a dead layer")


def test_an_experiment_command_prints_no_tensorflow_log_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.sec5_attention_distance", "--help"], cwd=tmp_path,
                          env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--num-examples" in done.stdout
    assert_quiet(done.stderr)


@pytest.mark.slow
def test_killing_the_main_process_kills_its_workers_and_the_rerun_completes(tmp_path, monkeypatch):
    """Two worker processes (each imports TensorFlow, quietly); the main process is killed with SIGKILL while a
    worker sleeps inside a stage; the worker must end within seconds. Then a fresh run (a subprocess killed inside a
    stage's writes, and its rerun) gives the outputs of an uninterrupted run."""
    pid_file = tmp_path / "worker.pid"
    main = subprocess.Popen([sys.executable, FAKE_MAIN, "--out", str(tmp_path / "out"), "--jobs", "2",
                             "--no-progress"], env=environment(FAKE_STAGE_SLEEP=str(pid_file)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not pid_file.exists() or len(pid_file.read_text().split()) < 2:  # both workers are in a stage
            assert main.poll() is None and time.monotonic() < deadline, main.communicate()
            time.sleep(0.2)
        workers = [int(pid) for pid in pid_file.read_text().split()]
        main.send_signal(signal.SIGKILL)
        _, stderr = main.communicate(timeout=60)
    finally:
        main.kill()
    deadline = time.monotonic() + 20
    while any(map(_alive, workers)):
        assert time.monotonic() < deadline, f"workers {workers} outlived their killed parent"
        time.sleep(0.2)
    assert_quiet(stderr)

    killed = subprocess.run([sys.executable, FAKE_MAIN, "--out", str(tmp_path / "out"), "--jobs", "1"],
                            env=environment(FAKE_STAGE_KILL="sec4_beta_stage:2.5"), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert_quiet(killed.stderr)
    rerun = subprocess.run([sys.executable, FAKE_MAIN, "--out", str(tmp_path / "out"), "--jobs", "1"],
                           env=environment(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert_quiet(rerun.stderr)
    assert "sec4_alpha: up to date, reused" in rerun.stderr and "sec4_beta_stage: started" in rerun.stderr
    assert "findings: " in rerun.stdout and "report: " in rerun.stdout

    monkeypatch.setattr(reproduce, "STAGES", fake.stages())  # the reference, uninterrupted, in this process
    assert reproduce.main(["--out", str(tmp_path / "reference"), "--jobs", "1", "--no-progress"]) == 0
    assert _without_fingerprints(fake.comparable_outputs(tmp_path / "out")) == \
        _without_fingerprints(fake.comparable_outputs(tmp_path / "reference"))


def _without_fingerprints(contents):
    """Stage records without their fingerprints (they hash the package's code, which may be edited between the
    subprocesses and this process)."""
    cleaned = {}
    for path, data in contents.items():
        if path.endswith("stage.json"):
            record = json.loads(data)
            record.pop("fingerprint")
            data = json.dumps(record, sort_keys=True).encode()
        cleaned[path] = data
    return cleaned


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:  # a zombie (dead, not yet reaped) counts as dead
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
