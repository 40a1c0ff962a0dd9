import json
import math

import pytest

from vitcnn_tf.findings import (CLEARS, DOES_NOT_CLEAR, DOES_NOT_HOLD, DOES_NOT_SURVIVE, HOLDS, INCONCLUSIVE,
                                NOT_CHECKED, SURVIVES, Finding, findings_table)


def make(value, low, high, threshold=0.0, direction="greater"):
    return Finding("k", "4", "claim", "quantity", value, low, high, threshold, direction)


@pytest.mark.parametrize(
    "low, high, threshold, direction, expected",
    [
        (0.1, 0.3, 0.0, "greater", HOLDS),  # interval entirely above
        (-0.3, -0.1, 0.0, "greater", DOES_NOT_HOLD),  # entirely below
        (-0.1, 0.3, 0.0, "greater", INCONCLUSIVE),  # straddles
        (0.0, 0.3, 0.0, "greater", INCONCLUSIVE),  # touches the threshold from the claimed side
        (-0.3, 0.0, 0.0, "greater", DOES_NOT_HOLD),  # at best equal: the claim is strict
        (0.6, 0.9, 0.5, "greater", HOLDS),  # non-zero threshold
        (0.2, 0.4, 0.5, "greater", DOES_NOT_HOLD),
        (0.2, 0.4, 0.5, "less", HOLDS),
        (0.6, 0.9, 0.5, "less", DOES_NOT_HOLD),
        (0.4, 0.6, 0.5, "less", INCONCLUSIVE),
    ],
)
def test_verdict_reads_the_interval_against_the_threshold(low, high, threshold, direction, expected):
    assert make((low + high) / 2, low, high, threshold, direction).verdict == expected


def test_non_finite_values_are_inconclusive_and_serialise_as_null():
    finding = make(math.nan, math.nan, math.nan)
    assert finding.verdict == INCONCLUSIVE
    data = json.loads(json.dumps(finding.to_dict()))
    assert data["value"] is None and data["verdict"] == INCONCLUSIVE
    assert math.isnan(Finding.from_dict(data).value)


def test_round_trip_recomputes_the_verdict():
    finding = make(0.5, 0.2, 0.8)
    data = finding.to_dict()
    data["verdict"] = DOES_NOT_HOLD  # a stale stored verdict is not trusted
    restored = Finding.from_dict(data)
    assert restored == finding and restored.verdict == HOLDS


def test_bad_direction_and_inverted_interval_are_rejected():
    with pytest.raises(ValueError, match="direction"):
        make(0.0, -1.0, 1.0, direction="above")
    with pytest.raises(ValueError, match="low=1.0 is above high=-1.0"):
        make(0.0, 1.0, -1.0)


def test_table_lists_each_finding_with_its_verdict():
    table = findings_table([make(0.5, 0.2, 0.8), make(-0.5, -0.8, -0.2, direction="less")])
    rows = table.splitlines()
    assert len(rows) == 4
    assert rows[2].endswith("**holds** | not checked | not checked |") and "0.5 [0.2, 0.8]" in rows[2]
    assert "**holds**" in rows[3] and "(claim: < 0)" in rows[3]


def checked(value, second, compared, level, threshold=0.0, direction="greater"):
    return Finding("k", "4", "claim", "quantity", value, value - 0.1, value + 0.1, threshold, direction,
                   second_measure={"measure": "procrustes", "value": second, "num_examples": 64},
                   null={"compared": "c", "value": compared, "null_q95": level, "p_value": 0.01})


@pytest.mark.parametrize(
    "second, threshold, direction, expected",
    [(0.2, 0.0, "greater", SURVIVES), (-0.2, 0.0, "greater", DOES_NOT_SURVIVE),
     (0.0, 0.0, "greater", DOES_NOT_SURVIVE), (0.1, 0.25, "less", SURVIVES), (0.3, 0.25, "less", DOES_NOT_SURVIVE), (math.nan, 0.0, "greater", DOES_NOT_SURVIVE)],
)
def test_second_measure_verdict_reads_the_value_against_the_same_threshold(second, threshold, direction, expected):
    assert checked(0.5, second, 0.5, 0.1, threshold, direction).second_measure_verdict == expected


def test_null_verdict_and_round_trip_of_the_checks():
    assert checked(0.5, 0.2, 0.5, 0.1).null_verdict == CLEARS
    assert checked(0.5, 0.2, 0.1, 0.1).null_verdict == DOES_NOT_CLEAR  # equal to the level: not above it
    assert checked(0.5, 0.2, 0.5, math.nan).null_verdict == DOES_NOT_CLEAR
    plain = make(0.5, 0.2, 0.8)
    assert plain.second_measure_verdict == NOT_CHECKED and plain.null_verdict == NOT_CHECKED
    finding = checked(0.5, -0.2, 0.05, 0.1)
    data = json.loads(json.dumps(finding.to_dict()))
    assert data["second_measure_verdict"] == DOES_NOT_SURVIVE and data["null_verdict"] == DOES_NOT_CLEAR
    restored = Finding.from_dict(data)
    assert restored == finding and restored.verdict == finding.verdict == HOLDS
    row = findings_table([finding]).splitlines()[2]
    assert row.endswith("| procrustes -0.2: does not survive | 0.05 vs 0.1 (p 0.01): does not clear |")
