"""vitcnn_tf.zoo: the recipe registry, and the cache (reuse without retraining, detection of bad entries)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import train as train_cli
from vitcnn_tf import atomic_io, training, zoo
from vitcnn_tf.data import load_dataset

TINY = zoo.Recipe(
    name="tiny_vit", architecture="vit", preset="ViT-CPU/4",
    model_overrides={"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_heads": 2, "num_layers": 2},
    training=training.TrainConfig(epochs=1, learning_rate=3e-3), dataset="digits", image_size=16, batch_size=64,
    num_examples=256, description="test-only tiny ViT",
)


def _images():
    return next(iter(load_dataset("digits", "test", batch_size=32, image_size=16)))[0].numpy()


def _forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training.fit was called although a valid cache entry exists")

    monkeypatch.setattr(training, "fit", fail)


# ------------------------------------------------------------------------------------------------ registry


def test_registry_has_the_paper_recipes_with_their_seeds():
    main = ("vit", "vit_gap", "resnet", "mixer")
    secondary = ("vit_noskip_early", "vit_noskip_mid", "vit_noskip_late", "vit_data3", "vit_data10", "vit_data30")
    assert zoo.SEEDS_OF == {**{name: [name, f"{name}_seed1", f"{name}_seed2"] for name in main},
                            **{name: [name, f"{name}_seed1"] for name in secondary}}
    assert sorted(zoo.RECIPES) == sorted(twin for twins in zoo.SEEDS_OF.values() for twin in twins)
    assert len(zoo.RECIPES) == 24
    for base, twins in zoo.SEEDS_OF.items():
        assert zoo.RECIPES[base].seed == 0
        for seed, name in enumerate(twins[1:], start=1):
            assert zoo.RECIPES[name] == dataclasses.replace(
                zoo.RECIPES[base], name=f"{base}_seed{seed}", seed=seed, description=zoo.RECIPES[name].description)
    with pytest.raises(ValueError, match="unknown zoo recipe 'nope'.*vit_gap"):
        zoo.get_recipe("nope")


def test_recipe_model_configs():
    configs = {name: zoo.model_config(name, num_classes=10) for name in zoo.RECIPES}
    assert configs["vit"].classifier == "token" and configs["vit_gap"].classifier == "gap"
    blocks = [configs[f"vit_noskip_{where}"].skip_blocks_removed for where in ("early", "mid", "late")]
    assert [len(b) for b in blocks] == [1, 1, 1]
    early, mid, late = (b[0] for b in blocks)
    assert 0 <= early < mid < late < configs["vit"].num_layers
    for name, config in configs.items():
        assert config.image_size == 32 and config.num_classes == 10, name
    assert type(configs["resnet"]).__name__ == "ResNetV2Config"
    assert type(configs["mixer"]).__name__ == "MixerConfig"


def test_data_fraction_recipes_are_nested_subsets_of_the_plain_recipe():
    # epochs = round(plain epochs / sqrt(fraction)): 4 / sqrt(0.03) = 23.1, 4 / sqrt(0.1) = 12.6, 4 / sqrt(0.3) = 7.3
    expected_epochs = {"3": 23, "10": 13, "30": 7}
    plain = zoo.RECIPES["vit"]
    assert plain.fraction is None and plain.training.epochs == 4
    for percent, fraction in (("3", 0.03), ("10", 0.1), ("30", 0.3)):
        recipe = zoo.RECIPES[f"vit_data{percent}"]
        assert recipe.fraction == fraction and recipe.subset_seed == plain.subset_seed
        assert recipe.training.epochs == expected_epochs[percent]
        assert dataclasses.replace(recipe, name="vit", fraction=None, training=plain.training,
                                   description=plain.description) == plain


def test_fingerprint_covers_every_field_but_the_description():
    assert TINY.fingerprint() == dataclasses.replace(TINY).fingerprint()
    assert TINY.fingerprint() == dataclasses.replace(TINY, description="other words").fingerprint()
    changes = [dict(seed=1), dict(batch_size=32), dict(num_examples=128), dict(model_overrides={}),
               dict(training=dataclasses.replace(TINY.training, epochs=2)), dict(augment="translate")]
    fingerprints = {dataclasses.replace(TINY, **change).fingerprint() for change in changes}
    assert len(fingerprints) == len(changes) and TINY.fingerprint() not in fingerprints


def test_bad_recipes_raise():
    with pytest.raises(ValueError, match="architecture must be one of"):
        dataclasses.replace(TINY, architecture="lstm")
    with pytest.raises(ValueError, match="plain, non-empty folder name"):
        dataclasses.replace(TINY, name="../escape" if os.sep == "/" else "..\\escape")


# ------------------------------------------------------------------------------------------------- cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """TINY trained once into a module-wide results folder; returns (results_dir, entry, predictions)."""
    results = tmp_path_factory.mktemp("zoo")
    entry = zoo.load_or_train(TINY, results, verbose=0)
    return results, entry, entry.model.predict(_images(), verbose=0)


@pytest.mark.slow
def test_training_writes_weights_and_a_validated_record(trained):
    results, entry, _ = trained
    assert entry.trained
    folder = results / "tiny_vit"
    record = json.loads((folder / training.RECORD_FILE).read_text())
    assert record == entry.record
    assert record["recipe_fingerprint"] == TINY.fingerprint() and record["recipe"]["name"] == "tiny_vit"
    assert record["weights_file"] == "model.npz"
    assert record["weights_sha256"] == atomic_io.sha256_file(folder / "model.npz")
    assert record["data"]["train_examples"] == 256 and record["data"]["test_examples"] == 364
    assert record["model_config"]["hidden_size"] == 16 and record["model_config"]["num_classes"] == 10
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["epochs"] == 1
    assert zoo.cached_record(TINY, results) == record


def test_valid_cache_is_loaded_without_training(trained, monkeypatch):
    results, entry, predictions = trained
    _forbid_training(monkeypatch)
    loaded = zoo.load_or_train(TINY, results, verbose=0)
    assert not loaded.trained and loaded.record == entry.record
    np.testing.assert_allclose(loaded.model.predict(_images(), verbose=0), predictions, atol=1e-6)
    np.testing.assert_allclose(zoo.get_model(TINY, results).predict(_images(), verbose=0), predictions, atol=1e-6)


def _copy_entry(trained, tmp_path):
    results, _, _ = trained
    target = tmp_path / "zoo"
    (target / "tiny_vit").mkdir(parents=True)
    for name in ("model.npz", training.RECORD_FILE):
        (target / "tiny_vit" / name).write_bytes((results / "tiny_vit" / name).read_bytes())
    return target


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_a_byte", "delete_weights", "garbage_record",
                                    "delete_record"])
def test_damaged_cache_is_detected(trained, tmp_path, damage):
    results = _copy_entry(trained, tmp_path)
    folder = results / "tiny_vit"
    assert zoo.cached_record(TINY, results) is not None
    weights, record = folder / "model.npz", folder / training.RECORD_FILE
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip_a_byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete_weights":
        weights.unlink()
    elif damage == "garbage_record":
        record.write_text("{not json")
    else:
        record.unlink()
    assert zoo.cached_record(TINY, results) is None


@pytest.mark.slow
def test_truncated_weights_are_retrained(trained, tmp_path):
    results = _copy_entry(trained, tmp_path)
    weights = results / "tiny_vit" / "model.npz"
    weights.write_bytes(weights.read_bytes()[:100])
    entry = zoo.load_or_train(TINY, results, verbose=0)
    assert entry.trained
    assert zoo.cached_record(TINY, results) == entry.record  # the new entry is complete and valid


class _FitCalled(Exception):
    pass


def _spy_on_fit(monkeypatch):
    """Replace training.fit by a stub that raises _FitCalled (training itself is tested elsewhere)."""
    def stub(*args, **kwargs):
        raise _FitCalled

    monkeypatch.setattr(training, "fit", stub)


def test_changed_recipe_is_retrained(trained, tmp_path, monkeypatch):
    results = _copy_entry(trained, tmp_path)
    changed = dataclasses.replace(TINY, seed=1)
    assert zoo.cached_record(changed, results) is None
    _spy_on_fit(monkeypatch)
    with pytest.raises(_FitCalled):
        zoo.load_or_train(changed, results, verbose=0)


def test_retrain_flag_forces_training(trained, tmp_path, monkeypatch):
    results = _copy_entry(trained, tmp_path)
    _spy_on_fit(monkeypatch)
    assert not zoo.load_or_train(TINY, results, verbose=0).trained
    with pytest.raises(_FitCalled):
        zoo.load_or_train(TINY, results, retrain=True, verbose=0)


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_list_and_errors(capsys):
    assert train_cli.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in zoo.RECIPES)
    with pytest.raises(SystemExit):
        train_cli.main(["--recipe", "no_such_recipe"])
    with pytest.raises(SystemExit):
        train_cli.main([])


def test_cli_loads_a_cached_recipe_and_prints_the_table(trained, tmp_path, monkeypatch, capsys):
    results = _copy_entry(trained, tmp_path)
    monkeypatch.setitem(zoo.RECIPES, "tiny_vit", TINY)
    _forbid_training(monkeypatch)
    assert train_cli.main(["--recipe", "tiny_vit", "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| tiny_vit"))
    assert "cached" in row and f"{trained[1].record['test_accuracy']:.3f}" in row


@pytest.mark.slow
def test_train_recipes_in_two_workers_then_reuses_the_cache(trained, tmp_path, monkeypatch):
    other = dataclasses.replace(TINY, name="tiny_vit_seed1", seed=1)
    done = []
    outcome = zoo.train_recipes([other, TINY], tmp_path, num_workers=2,
                                on_done=lambda name, record, was_trained: done.append((name, was_trained)))
    assert list(outcome) == ["tiny_vit_seed1", "tiny_vit"] and sorted(done) == [("tiny_vit", True),
                                                                               ("tiny_vit_seed1", True)]
    for recipe in (TINY, other):
        record, was_trained = outcome[recipe.name]
        assert was_trained and zoo.cached_record(recipe, tmp_path) == record
    # Trained in a single-threaded worker process: the same model as the in-process run, up to float rounding.
    worker_model = zoo.get_model(TINY, tmp_path)
    np.testing.assert_allclose(worker_model.predict(_images(), verbose=0), trained[2], atol=1e-3)
    assert outcome["tiny_vit"][0]["test_accuracy"] == pytest.approx(trained[1].record["test_accuracy"], abs=0.02)

    _forbid_training(monkeypatch)
    again = zoo.train_recipes([TINY, other], tmp_path, num_workers=2)
    assert {name: was_trained for name, (_, was_trained) in again.items()} == {"tiny_vit": False,
                                                                               "tiny_vit_seed1": False}
