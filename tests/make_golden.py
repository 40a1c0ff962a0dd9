"""Writes ``tests/golden/findings.json`` from a reproduction run on the shipped zoo (run by hand after a change
that is meant to move the findings, then review the diff)::

    python -m experiments.reproduce --out results/reproduce
    python tests/make_golden.py results/reproduce

For every stage of the CPU preset it keeps the pooled findings of the stage's record (value, interval, threshold,
verdict, every seed's value and the control at initialisation), as ``tests/test_golden_findings.py`` recomputes
them.
"""

import json
import os
import sys

GOLDEN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "findings.json")
KEPT = ("key", "value", "low", "high", "threshold", "direction", "verdict", "seeds", "control")


def golden_from_run(folder):
    """``{stage: [finding with the KEPT fields]}`` from the stage records of a reproduction folder."""
    from experiments import reproduce

    golden = {}
    for stage in reproduce.STAGES:
        record, problem = reproduce.read_stage_record(os.path.join(folder, stage.name))
        if record is None:
            raise SystemExit(f"{folder}: stage {stage.name} has no valid record ({problem or 'not run'})")
        if record["run"].get("preset") != "cpu":
            raise SystemExit(f"{folder}: stage {stage.name} ran with preset {record['run'].get('preset')!r}, not cpu")
        golden[stage.name] = [{name: item.get(name) for name in KEPT} for item in record["summary"]["findings"]]
    return golden


def main(argv):
    if len(argv) != 1:
        raise SystemExit(__doc__)
    golden = golden_from_run(argv[0])
    os.makedirs(os.path.dirname(GOLDEN_FILE), exist_ok=True)
    with open(GOLDEN_FILE, "w") as handle:
        json.dump(golden, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print(f"wrote {GOLDEN_FILE}: {sum(map(len, golden.values()))} findings of {len(golden)} stages")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])
