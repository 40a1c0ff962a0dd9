"""A stand-in experiment module for the orchestration tests of experiments.reproduce (no models, instant).

It follows the experiment-module interface: ``build_parser()``, ``run(options)`` and an optional
``check_options(options)``. ``run`` writes ``result.json``, ``samples.png``, ``data.npz`` and ``summary.json`` (with
a ``seconds`` timing, as the real stages write) whose content depends only on the options, counts its calls in
``CALLS``, raises ``KeyboardInterrupt`` when its stage name is in ``INTERRUPT`` (an injected crash) and
``RuntimeError`` when in ``FAIL``.

Kills, for the tests that kill a run at a given moment (the process ends by ``SIGKILL``, nothing is cleaned up):

* ``KILL = (stage, k)`` (or the environment variable ``FAKE_STAGE_KILL=stage:k``): ``run`` kills its process after
  writing ``k`` files of that stage; ``k`` may end in ``.5`` to die half-way through writing file ``k + 1`` (a
  temporary file with half its bytes);
* the environment variable ``FAKE_STAGE_SLEEP=file``: ``run`` appends its process id to ``file`` and sleeps (a
  worker to kill the parent of).

Run as a script, it is ``python -m experiments.reproduce`` over :func:`stages` (``python reproduce_fake_stage.py
--out DIR ...``); the environment variable ``FAKE_KILL_AT_REPLACE=n`` kills the process just before its ``n``-th
``os.replace`` / ``os.rename`` call (every file and folder commit of a run).
"""

import json
import os
import re
import signal
import sys
import time

import numpy as np
from matplotlib.figure import Figure

from experiments import common
from vitcnn_tf import atomic_io
from vitcnn_tf.findings import Finding

CALLS = []
INTERRUPT = set()
FAIL = set()
KILL = None
REQUIRE_VIT = False  # check_options: every --models spec must be a ViT (as the attention-distance stage asks)
STAGE_NAMES = ("sec4_alpha", "sec4_beta_stage", "sec4_gamma_st")


def stages():
    """The fake pipeline: one :class:`experiments.reproduce.Stage` per name of ``STAGE_NAMES``."""
    from experiments import reproduce

    return tuple(reproduce.Stage(name, "4", f"Fake stage {name}", None, module="reproduce_fake_stage")
                 for name in STAGE_NAMES)


def build_parser():
    parser = common.new_parser(__doc__, "fake")
    common.add_common_arguments(parser, default_models=[], default_num_examples=64, default_out="unused")
    return parser


def check_options(options):
    if REQUIRE_VIT:
        common.check_model_families(options, "models", allowed=("vit",))


def run(options):
    started = time.perf_counter()
    stage = os.path.basename(options.out).split(".")[1] if os.path.basename(options.out).startswith(".") \
        else os.path.basename(options.out)
    CALLS.append(stage)
    _maybe_sleep()
    kill = _kill_spec(stage)
    written = []

    def write(name, writer):
        if kill is not None and kill == len(written) + 0.5:
            _die_half_way(os.path.join(options.out, name))
        writer(os.path.join(options.out, name))
        written.append(name)
        if kill is not None and kill == len(written):
            os.kill(os.getpid(), signal.SIGKILL)

    rng = np.random.default_rng([options.num_examples, len(stage)])
    samples = rng.normal(loc=len(stage) % 3 - 1, size=options.num_examples)
    half_width = 1.96 * samples.std() / np.sqrt(samples.size)
    write("result.json", lambda path: atomic_io.write_json(path, {"mean": samples.mean()}))
    if stage in INTERRUPT:
        raise KeyboardInterrupt(f"injected interruption in {stage}")
    if stage in FAIL:
        raise RuntimeError(f"injected failure in {stage}")
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot(samples[:10])
    write("samples.png", lambda path: atomic_io.save_figure(figure, path))
    write("data.npz", lambda path: atomic_io.save_npz(path, samples=samples))
    finding = Finding(f"{stage}_mean_positive", "4", f"{stage}: the mean is positive", "sample mean",
                      samples.mean(), samples.mean() - half_width, samples.mean() + half_width)
    summary = {"findings": [finding.to_dict()], "mean": json.loads(json.dumps(samples.mean())),
               "seconds": round(time.perf_counter() - started, 3)}
    write(common.SUMMARY_FILE, lambda path: atomic_io.write_json(path, summary))
    return summary


_DURATION = r"\d+(?:\.\d+)? (?:s|min|h)"
_REPORT_TIMINGS = (re.compile(rf"(ran in ){_DURATION}"), re.compile(rf"(Time(?:\*\*|</b>): ){_DURATION}"))


def comparable_outputs(out):
    """``{relative path: bytes}`` of every file of a reproduce output folder with its timings blanked, to compare
    two runs byte for byte. The timings are exactly: ``seconds`` in each ``stage.json`` and in the ``summary`` it
    holds, ``seconds`` in each ``summary.json`` (and so that file's sha256 in ``stage.json``), and in
    ``report.md`` / ``report.html`` the run time of the ``Time`` line and each stage's ``ran in`` time. The lock
    file ``.lock`` (it holds the pid of the last run) is not an output."""
    contents = {}
    for folder, _, names in os.walk(out):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, out)
            if relative == atomic_io.LOCK_FILE:
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            if name in ("stage.json", common.SUMMARY_FILE):
                record = json.loads(data)
                record.pop("seconds")
                if name == "stage.json":
                    record["summary"].pop("seconds", None)
                    record["files"].pop(common.SUMMARY_FILE, None)
                data = json.dumps(record, sort_keys=True).encode()
            elif name in ("report.md", "report.html"):
                text = data.decode()
                for pattern in _REPORT_TIMINGS:
                    text = pattern.sub(r"\1<time>", text)
                data = text.encode()
            contents[relative] = data
    return contents


def _kill_spec(stage):
    spec = KILL
    if spec is None and os.environ.get("FAKE_STAGE_KILL"):
        name, _, count = os.environ["FAKE_STAGE_KILL"].rpartition(":")
        spec = (name, float(count))
    return float(spec[1]) if spec is not None and spec[0] == stage else None


def _die_half_way(path):
    """Writes half of a file into a temporary file as the atomic writers do, then dies."""
    with atomic_io.atomic_open(path, "wb") as handle:
        handle.write(b"half of a file")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _maybe_sleep():
    pid_file = os.environ.get("FAKE_STAGE_SLEEP")
    if pid_file:
        with open(pid_file, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(600)


def _kill_before_replace(count):
    """Patches ``os.replace`` and ``os.rename`` to kill this process just before the ``count``-th call."""
    calls = {"n": 0}

    def wrap(function):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return wrapped

    os.replace, os.rename = wrap(os.replace), wrap(os.rename)


if __name__ == "__main__":
    from experiments import reproduce

    reproduce.STAGES = stages()
    if os.environ.get("FAKE_KILL_AT_REPLACE"):
        _kill_before_replace(int(os.environ["FAKE_KILL_AT_REPLACE"]))
    sys.exit(reproduce.main(sys.argv[1:]))
