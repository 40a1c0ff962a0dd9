"""Findings pooled over trained seeds with their untrained control (``findings.pool_seeds``), and the experiment
runs behind them (``experiments.common.experiment_runs`` / ``run_experiment``)."""

import argparse
import json
import math
import os
import types

import numpy as np
import pytest

from experiments import common
from vitcnn_tf import claims, findings
from vitcnn_tf.findings import Finding


def finding(value, low, high, key="k", threshold=0.0, direction="greater", **fields):
    return Finding(key=key, section="4", claim="c", quantity="q", value=value, low=low, high=high,
                   threshold=threshold, direction=direction, **fields)


def test_two_seeds_without_example_spread_give_the_seed_bootstrap_in_closed_form():
    # Resampling two seeds a, b gives the means a, (a+b)/2, b with probabilities 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% percentiles are a and b.
    pooled = findings.pool_seeds({0: finding(1.0, 1.0, 1.0), 1: finding(3.0, 3.0, 3.0)}, num_resamples=4000)
    assert pooled.value == 2.0
    assert (pooled.low, pooled.high) == (1.0, 3.0)
    assert [item["value"] for item in pooled.seeds] == [1.0, 3.0]
    assert pooled.detail["num_seeds"] == 2 and "two-level" in pooled.detail["interval"]


def test_the_example_level_spread_widens_the_pooled_interval():
    narrow = findings.pool_seeds({0: finding(1.0, 1.0, 1.0), 1: finding(1.2, 1.2, 1.2), 2: finding(1.1, 1.1, 1.1)})
    wide = findings.pool_seeds({0: finding(1.0, 0.5, 1.5), 1: finding(1.2, 0.7, 1.7), 2: finding(1.1, 0.6, 1.6)})
    assert wide.value == pytest.approx(narrow.value) == pytest.approx(1.1)
    assert wide.high - wide.low > narrow.high - narrow.low
    # Three equal-spread seeds averaged: about sd / sqrt(3) of each seed's example-level spread, plus the seeds'.
    seed_sd = 0.5 / 1.959964
    assert wide.high - wide.low == pytest.approx(2 * 1.959964 * math.sqrt(seed_sd ** 2 / 3 + 0.1 ** 2 * 2 / 9),
                                                 rel=0.15)


def test_one_seed_keeps_its_own_interval():
    pooled = findings.pool_seeds({0: finding(0.4, 0.3, 0.5)})
    assert (pooled.value, pooled.low, pooled.high) == (0.4, 0.3, 0.5)
    assert len(pooled.seeds) == 1


def test_a_control_that_holds_marks_the_finding_and_a_learned_claim_becomes_a_difference():
    trained = {0: finding(1.0, 0.9, 1.1, threshold=0.5), 1: finding(1.2, 1.1, 1.3, threshold=0.5)}
    control = finding(0.8, 0.75, 0.85, threshold=0.5)
    structural = findings.pool_seeds(trained, control=control, learned=False)
    assert structural.value == pytest.approx(1.1) and structural.threshold == 0.5
    assert structural.control_verdict == findings.HOLDS and structural.holds_at_initialisation
    learned = findings.pool_seeds(trained, control=control, learned=True)
    assert learned.value == pytest.approx(0.3) and learned.threshold == 0.0
    assert learned.detail["trained_value"] == pytest.approx(1.1)
    assert "trained minus at initialisation" in learned.quantity
    assert learned.low < 0.3 < learned.high
    assert "trained minus initialisation" in findings.control_text(learned)


def test_a_control_that_does_not_hold_leaves_a_learned_claim_on_its_trained_value():
    trained = {0: finding(1.0, 0.9, 1.1, threshold=0.5)}
    control = finding(0.1, 0.0, 0.2, threshold=0.5)
    pooled = findings.pool_seeds(trained, control=control, learned=True)
    assert pooled.value == 1.0 and pooled.control_verdict == findings.DOES_NOT_HOLD
    assert not pooled.holds_at_initialisation


def test_pooled_findings_round_trip_through_json():
    pooled = findings.pool_seeds({0: finding(1.0, 0.9, 1.1), 1: finding(1.4, 1.2, 1.6)},
                                 control=finding(-0.3, -0.4, -0.2))
    data = json.loads(json.dumps(pooled.to_dict()))
    back = Finding.from_dict(data)
    assert back.seeds == pooled.seeds and back.control == pooled.control
    assert data["control_verdict"] == findings.DOES_NOT_HOLD and data["verdict"] == back.verdict


def test_mixed_keys_are_refused():
    with pytest.raises(ValueError, match="different keys"):
        findings.pool_seeds({0: finding(1.0, 0.9, 1.1, key="a"), 1: finding(1.0, 0.9, 1.1, key="b")})


def test_the_reason_lists_unmet_conditions_or_the_interval_against_the_threshold():
    conditions = [{"text": "a local head", "value": 0.8, "met": False}, {"text": "a global head", "met": True}]
    assert finding(-0.3, -0.4, -0.2, detail={"conditions": conditions}).reason == "a local head"
    assert "straddles" in finding(0.1, -0.1, 0.3).reason
    assert finding(0.3, 0.2, 0.4).reason == ""


def test_every_claim_has_a_direction_and_a_no_effect_level_on_the_other_side_of_its_threshold():
    for claim in claims.CLAIMS.values():
        assert claim.direction in findings.DIRECTIONS
        beyond = claim.threshold - claim.no_effect
        assert beyond >= 0 if claim.direction == "greater" else beyond <= 0, claim.key


# --- experiment runs -------------------------------------------------------------------------------------------

VALUES = {"vit": 1.0, "vit_seed1": 1.2, "vit_seed2": 1.4, "resnet": 0.2, "resnet_seed1": 0.2, "resnet_seed2": 0.2,
          "vit_noskip_mid": 3.0, "vit_noskip_mid_seed1": 3.5, "init:vit": 0.9, "init:resnet": 0.1,
          "init:vit_noskip_mid": 0.0}


def fake_module(calls):
    """An experiment module whose finding ``sum`` is the sum of the models' values in ``VALUES``, and finding
    ``noskip`` the no-skip model's value when it takes part."""

    def run(options):
        calls.append((options.out, list(options.models)))
        os.makedirs(options.out, exist_ok=True)
        total = sum(VALUES[spec] for spec in options.models)
        found = [finding(total, total - 0.1, total + 0.1, key="sum", threshold=1.5).to_dict()]
        noskip = [spec for spec in options.models if "noskip" in spec]
        if noskip:
            value = VALUES[noskip[0]]
            found.append(finding(value, value - 0.1, value + 0.1, key="noskip").to_dict())
        return common.write_summary(options, {"models": {spec: spec for spec in options.models}, "findings": found})

    return types.SimpleNamespace(run=run, __name__="fake")


def options_for(tmp_path, models, seeds=(0, 1, 2), control="init"):
    return argparse.Namespace(models=list(models), out=str(tmp_path / "out"), seeds=list(seeds), control=control,
                              seed=0)


def test_each_seed_runs_on_its_twins_and_models_without_a_twin_leave_that_run(tmp_path):
    options = options_for(tmp_path, ["vit", "resnet", "vit_noskip_mid"])
    runs = common.experiment_runs(options)
    assert [(name, run.models, skipped) for name, run, skipped in runs] == [
        ("seed0", ["vit", "resnet", "vit_noskip_mid"], ""),
        ("seed1", ["vit_seed1", "resnet_seed1", "vit_noskip_mid_seed1"], ""),
        ("seed2", ["vit_seed2", "resnet_seed2"], ""),
        ("init", ["init:vit", "init:resnet", "init:vit_noskip_mid"], "")]
    assert [run.out for _, run, _ in runs] == [options.out, *(os.path.join(options.out, name)
                                                              for name in ("seed1", "seed2", "init"))]
    assert common.model_specs(options) == ["vit", "resnet", "vit_noskip_mid", "vit_seed1", "resnet_seed1",
                                           "vit_noskip_mid_seed1", "vit_seed2", "resnet_seed2", "init:vit",
                                           "init:resnet", "init:vit_noskip_mid"]


def test_only_the_first_run_draws_figures_and_computes_the_checks(tmp_path):
    options = options_for(tmp_path, ["vit", "resnet"])
    options.check_examples, options.null_permutations, options.figures = 256, 100, True
    runs = common.experiment_runs(options)
    assert [(run.figures, run.check_examples, run.null_permutations) for _, run, _ in runs] == [
        (True, 256, 100), (False, 0, 100), (False, 0, 100), (False, 0, 100)]
    assert options.check_examples == 256  # the caller's options are left as they were


def test_run_experiment_pools_each_finding_over_the_seeds_that_have_it(tmp_path):
    calls = []
    options = options_for(tmp_path, ["vit", "resnet", "vit_noskip_mid"])
    summary = common.run_experiment(fake_module(calls), options)
    assert len(calls) == 4
    by_key = {item["key"]: item for item in summary["findings"]}
    # sum: seeds 0, 1 and 2 (4.2, 4.9, 1.6), control 1.0
    assert [item["value"] for item in by_key["sum"]["seeds"]] == pytest.approx([4.2, 4.9, 1.6])
    assert by_key["sum"]["value"] == pytest.approx(np.mean([4.2, 4.9, 1.6]))
    assert by_key["sum"]["control"]["value"] == pytest.approx(1.0)
    assert by_key["sum"]["control"]["models"] == ["init:vit", "init:resnet", "init:vit_noskip_mid"]
    # noskip: seeds 0 and 1 only (no third seed of the no-skip model)
    assert [item["seed"] for item in by_key["noskip"]["seeds"]] == [0, 1]
    with open(os.path.join(options.out, common.SUMMARY_FILE)) as handle:
        assert json.load(handle)["findings"][0]["value"] == pytest.approx(by_key["sum"]["value"])
    assert [run["name"] for run in summary["runs"]] == ["seed0", "seed1", "seed2", "init"]


def test_the_runs_of_an_experiment_share_model_objects_of_one_architecture(tmp_path):
    loaded = []

    def run(options):
        models = common.load_models(options.models, options)
        loaded.append(list(models.values()))
        assert len({id(model) for model in models.values()}) == len(models)
        return common.write_summary(options, {"models": {}, "findings": []})

    options = options_for(tmp_path, ["vit", "vit_gap"], seeds=(0, 1), control="init")
    options.zoo_dir, options.progress = None, False
    common.run_experiment(types.SimpleNamespace(run=run, __name__="fake"), options)
    assert [len(models) for models in loaded] == [2, 2, 2]
    assert all(later[i] is loaded[0][i] for later in loaded[1:] for i in range(2))
    assert common.load_models(["vit"], options)["vit"] is not loaded[0][0]  # outside run_experiment: a new model


def test_one_seed_without_control_is_the_plain_run(tmp_path):
    calls = []
    summary = common.run_experiment(fake_module(calls), options_for(tmp_path, ["vit"], seeds=(0,), control="none"))
    assert len(calls) == 1 and summary["findings"][0]["value"] == 1.0 and "runs" not in summary
