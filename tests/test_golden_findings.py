"""The findings the shipped zoo gives, recomputed stage by stage and compared with ``tests/golden/findings.json``
(written by ``tests/make_golden.py`` from a reproduction run): a change that moves a finding's value, interval,
per-seed value, control or verdict beyond 3 significant digits fails here, naming the finding and the number."""

import json
import math
import os

import pytest

from experiments import common, reproduce
from make_golden import GOLDEN_FILE
from vitcnn_tf import claims

RELATIVE, ABSOLUTE = 5e-3, 1e-3  # 3 significant digits, and 1e-3 for values near 0


def golden():
    with open(GOLDEN_FILE) as handle:
        return json.load(handle)


def close(found, expected):
    if expected is None or found is None:
        return found is None and expected is None
    return math.isclose(found, expected, rel_tol=RELATIVE, abs_tol=ABSOLUTE)


def test_the_golden_file_covers_every_stage_and_every_claim():
    stages = golden()
    assert sorted(stages) == sorted(stage.name for stage in reproduce.STAGES)
    assert sorted(item["key"] for found in stages.values() for item in found) == sorted(claims.CLAIMS)


@pytest.mark.parametrize("stage", [stage.name for stage in reproduce.STAGES])
def test_a_stage_gives_its_golden_findings(stage, tmp_path):
    module = next(item for item in reproduce.STAGES if item.name == stage).load()
    options = module.build_parser().parse_args(["--out", str(tmp_path / stage), "--no-progress"])
    common.check_options(module, options)
    found = {item["key"]: item for item in common.run_experiment(module, options)["findings"]}
    expected = {item["key"]: item for item in golden()[stage]}
    assert sorted(found) == sorted(expected)
    problems = []
    for key, want in expected.items():
        got = found[key]
        for name in ("value", "low", "high", "threshold"):
            if not close(got[name], want[name]):
                problems.append(f"{key}.{name}: {got[name]} != golden {want[name]}")
        if got["verdict"] != want["verdict"]:
            problems.append(f"{key}.verdict: {got['verdict']} != golden {want['verdict']}")
        got_seeds = [(item["seed"], item["value"]) for item in got["seeds"]]
        want_seeds = [(item["seed"], item["value"]) for item in want["seeds"]]
        if [s for s, _ in got_seeds] != [s for s, _ in want_seeds] or not all(
                close(a, b) for (_, a), (_, b) in zip(got_seeds, want_seeds)):
            problems.append(f"{key}.seeds: {got_seeds} != golden {want_seeds}")
        if (got["control"] is None) != (want["control"] is None) or (
                want["control"] is not None and not close(got["control"]["value"], want["control"]["value"])):
            problems.append(f"{key}.control: {got['control'] and got['control']['value']} != golden "
                            f"{want['control'] and want['control']['value']}")
    assert not problems, "; ".join(problems)
