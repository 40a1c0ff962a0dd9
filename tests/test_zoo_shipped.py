"""The trained zoo shipped with the package: a zoo folder of None loads it strictly (a mismatch is an error naming
the file, never a retrain), ``zoo.ship`` makes it, and the command lines default to it."""

import configparser
import dataclasses
import json
import os
import pathlib
import re
import types

import keras
import numpy as np
import pytest

from experiments import common, reproduce
from experiments import train as train_cli
from vitcnn_tf import atomic_io, model_specs, training, zoo

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = zoo.Recipe(
    name="tiny_shipped", architecture="vit", preset="ViT-CPU/4",
    model_overrides={"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_heads": 2, "num_layers": 2},
    training=training.TrainConfig(epochs=1), dataset="digits", image_size=16, batch_size=64, num_examples=256,
    description="test-only tiny ViT",
)


def write_entry(results, recipe=TINY, *, weights_seed=7, test_accuracy=0.625):
    """A complete zoo entry of ``recipe`` in the folder ``results``: the weights of a model initialised with seed
    ``weights_seed`` (standing in for trained ones) and a record made here; returns ``(weights, record)``."""
    model = zoo.build_model(dataclasses.replace(recipe, seed=weights_seed), num_classes=10)
    folder = pathlib.Path(results) / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    training.save_weights(model, str(folder / "model.npz"), "npz")
    record = {"recipe": recipe.to_dict(), "recipe_fingerprint": recipe.fingerprint(), "model_config": {},
              "data": {"num_classes": 10, "train_examples": 256}, "epochs": 1, "weights_file": "model.npz",
              "weights_sha256": atomic_io.sha256_file(folder / "model.npz"), "test_accuracy": test_accuracy,
              "train_accuracy": 0.75, "wall_time_seconds": 12.0, "cpu_seconds": 20.0}
    (folder / training.RECORD_FILE).write_text(json.dumps(record))
    return [np.array(w) for w in model.get_weights()], record


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """An empty shipped zoo in ``tmp_path/shipped`` with TINY registered; training is forbidden."""
    monkeypatch.setattr(zoo, "SHIPPED_DIR", str(tmp_path / "shipped"))
    monkeypatch.setitem(zoo.RECIPES, TINY.name, TINY)

    def fail(*args, **kwargs):
        raise AssertionError("training.fit was called with the shipped zoo")

    monkeypatch.setattr(training, "fit", fail)
    return tmp_path / "shipped"


def _same_weights(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------ defaults


def test_the_shipped_zoo_is_package_data_and_the_default_zoo():
    assert zoo.SHIPPED_DIR == os.path.join(os.path.dirname(os.path.abspath(zoo.__file__)), "zoo_weights")
    assert os.path.isfile(os.path.join(zoo.SHIPPED_DIR, "README.md"))
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    globs = config["options.package_data"]["vitcnn_tf"].split()
    assert {"zoo_weights/*/*.npz", "zoo_weights/*/*.json"} <= set(globs)
    assert zoo.DEFAULT_RESULTS_DIR is None and common.DEFAULT_ZOO_DIR is None
    assert reproduce.build_parser().parse_args([]).zoo_dir is None
    parser = common.add_common_arguments(common.new_parser("", "x"), default_models=[], default_out="o")
    assert parser.parse_args([]).zoo_dir is None
    for name in zoo.shipped_recipes():  # every shipped entry matches its record and the code's recipe
        assert zoo.cached_record(name, None)["recipe_fingerprint"] == zoo.RECIPES[name].fingerprint()


def test_a_shipped_entry_loads_without_training(shipped):
    weights, record = write_entry(shipped)
    assert zoo.cached_record(TINY.name, None) == record
    entry = zoo.load_or_train(TINY.name)
    assert not entry.trained and entry.record == record
    assert _same_weights([np.array(w) for w in entry.model.get_weights()], weights)
    assert _same_weights([np.array(w) for w in zoo.get_model(TINY.name).get_weights()], weights)
    assert _same_weights([np.array(w) for w in model_specs.load_model(TINY.name).get_weights()], weights)
    identity = model_specs.model_identity(TINY.name)
    assert identity["weights_sha256"] == atomic_io.sha256_file(shipped / TINY.name / "model.npz")


def _damage(shipped, damage):
    """Damages the shipped TINY entry; returns a regular expression its error must match."""
    folder = shipped / TINY.name
    record_path, weights_path = folder / training.RECORD_FILE, folder / "model.npz"
    if damage == "not_shipped":
        return f"'{TINY.name}' is not in the shipped zoo .*{record_path}.* not found.*--zoo-dir DIR"
    write_entry(shipped)
    record = json.loads(record_path.read_text())
    if damage == "garbage_record":
        record_path.write_text("{not json")
        return f"unreadable record {record_path}"
    if damage == "not_a_record":
        record_path.write_text(json.dumps({"weights_file": "model.npz"}))
        return f"{record_path} is not a zoo record"
    if damage == "other_recipe":
        record["recipe_fingerprint"] = dataclasses.replace(TINY, seed=1).fingerprint()
        record_path.write_text(json.dumps(record))
        return f"{record_path}: its weights were trained from another recipe .*{TINY.fingerprint()}.*--zoo-dir DIR"
    if damage == "missing_weights":
        weights_path.unlink()
        return f"weights {weights_path} missing"
    data = bytearray(weights_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights_path.write_bytes(bytes(data))
    return (f"weights {weights_path} do not match their record {record_path}.*sha256 "
            f"{atomic_io.sha256_file(weights_path)}, recorded {record['weights_sha256']}")


@pytest.mark.parametrize("damage", ["not_shipped", "garbage_record", "not_a_record", "other_recipe",
                                    "missing_weights", "flipped_byte"])
def test_a_bad_shipped_entry_is_an_error_naming_the_file(shipped, damage):
    pattern = _damage(shipped, damage)
    for call in (lambda: zoo.cached_record(TINY.name, None), lambda: zoo.load_or_train(TINY.name, None),
                 lambda: zoo.get_model(TINY.name), lambda: model_specs.load_model(TINY.name, zoo_dir=None),
                 lambda: model_specs.model_identity(TINY.name, None)):
        with pytest.raises(zoo.ShippedZooError, match=pattern):
            call()
    assert issubclass(zoo.ShippedZooError, ValueError)


def test_the_shipped_zoo_is_never_trained_into(shipped, tmp_path):
    write_entry(shipped)
    with pytest.raises(ValueError, match="retrain=True needs a results_dir folder"):
        zoo.load_or_train(TINY.name, None, retrain=True)
    with pytest.raises(ValueError, match="train_recipes: expected a results_dir folder, got None"):
        zoo.train_recipes([TINY.name], None)
    with pytest.raises(ValueError, match="training_task: expected a results_dir folder"):
        zoo.training_task(TINY.name, None)


def test_a_folder_keeps_training_on_first_use(shipped, tmp_path):
    write_entry(shipped)  # a valid shipped entry does not stand in for an empty folder
    with pytest.raises(AssertionError, match="training.fit was called"):
        zoo.load_or_train(TINY.name, tmp_path / "folder")
    assert zoo.cached_record(TINY.name, tmp_path / "folder") is None


# -------------------------------------------------------------------------------------------------- ship


def test_ship_copies_verified_entries_atomically(shipped, tmp_path):
    results = tmp_path / "results"
    _, record = write_entry(results)
    assert zoo.ship(results, [TINY.name]) == {TINY.name: record}
    for name in ("model.npz", training.RECORD_FILE):
        assert (shipped / TINY.name / name).read_bytes() == (results / TINY.name / name).read_bytes()
    assert zoo.cached_record(TINY.name, None) == record
    assert zoo.shipped_size_bytes() == sum(os.path.getsize(shipped / TINY.name / name)
                                           for name in ("model.npz", training.RECORD_FILE))
    # shipping again replaces the entry; no temporary folder is left
    weights, record = write_entry(results, weights_seed=8, test_accuracy=0.5)
    zoo.ship(results, [TINY.name])
    assert zoo.cached_record(TINY.name, None) == record
    assert _same_weights([np.array(w) for w in zoo.get_model(TINY.name).get_weights()], weights)
    assert atomic_io.stale_siblings(shipped) == [] and sorted(os.listdir(shipped)) == [TINY.name]
    assert zoo.shipped_recipes() == [TINY.name]


def test_ship_refuses_a_missing_or_invalid_entry_before_copying(shipped, tmp_path, monkeypatch):
    other = dataclasses.replace(TINY, name="tiny_shipped_other")
    monkeypatch.setitem(zoo.RECIPES, other.name, other)
    results = tmp_path / "results"
    write_entry(results)
    with pytest.raises(ValueError, match="ship: zoo recipe 'tiny_shipped_other' has no valid entry in .*not trained"):
        zoo.ship(results, [TINY.name, other.name])
    write_entry(results, other)
    (results / other.name / "model.npz").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="'tiny_shipped_other' has no valid entry .*do not match their record"):
        zoo.ship(results, [TINY.name, other.name])
    assert not shipped.exists() or os.listdir(shipped) == []
    with pytest.raises(ValueError, match="ship: expected a results_dir folder"):
        zoo.ship(None)


def test_train_cli_ships_with_results_dir_only(shipped, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--recipe", TINY.name, "--ship"])
    assert "--ship: give --results-dir DIR" in capsys.readouterr().err
    _, record = write_entry(tmp_path / "results")
    assert train_cli.main(["--recipe", TINY.name, "--results-dir", str(tmp_path / "results"), "--ship"]) == 0
    assert f"shipped 1 recipe(s) into {shipped}" in capsys.readouterr().out
    assert zoo.cached_record(TINY.name, None) == record


# ----------------------------------------------------------------------------------------------- reproduce


@pytest.fixture
def fake_reproduce(monkeypatch, shipped):
    """experiments.reproduce over one fake stage whose model is the zoo recipe TINY."""
    import reproduce_fake_stage as fake

    def build_parser():
        parser = common.new_parser("", "fake")
        common.add_common_arguments(parser, default_models=[TINY.name], default_num_examples=64, default_out="o")
        return parser

    monkeypatch.setattr(fake, "build_parser", build_parser)
    monkeypatch.setattr(reproduce, "STAGES", fake.stages()[:1])
    monkeypatch.setattr(reproduce, "hardware", lambda: "test CPU")
    monkeypatch.setattr(reproduce, "code_files", lambda module_name: [fake.__file__])
    fake.CALLS.clear()
    yield fake
    fake.CALLS.clear()


def test_reproduce_stops_before_any_stage_on_a_bad_shipped_file(fake_reproduce, shipped, tmp_path, capsys):
    pattern = _damage(shipped, "flipped_byte")
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--out", str(tmp_path / "out"), "--jobs", "1", "--no-progress"])
    assert exit_info.value.code == 2 and fake_reproduce.CALLS == []
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m experiments.reproduce: error: shipped zoo: ")
    assert re.search(pattern, lines[0])


def test_reproduce_uses_the_shipped_zoo_by_default(fake_reproduce, shipped, tmp_path):
    _, record = write_entry(shipped, test_accuracy=0.625)
    assert reproduce.main(["--out", str(tmp_path / "out"), "--jobs", "1", "--no-progress"]) == 0
    assert fake_reproduce.CALLS[0] == fake_reproduce.STAGE_NAMES[0]
    stage = json.loads((tmp_path / "out" / fake_reproduce.STAGE_NAMES[0] / reproduce.STAGE_FILE).read_text())
    assert "--zoo-dir" not in stage["command"]
    assert stage["models"][0] == {"name": TINY.name, "source": TINY.name, "sha256": record["weights_sha256"]}
    row = next(line for line in (tmp_path / "out" / "report.md").read_text().splitlines()
               if line.startswith(f"| {TINY.name} |"))
    assert row.endswith("| 0.625 | 12 |")


def test_retrain_zoo_uses_results_zoo_and_reuses_its_valid_entries(fake_reproduce, shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, shipped_record = write_entry(shipped, weights_seed=7)
    _, folder_record = write_entry(tmp_path / "results" / "zoo", weights_seed=9)
    assert folder_record["weights_sha256"] != shipped_record["weights_sha256"]
    assert reproduce.main(["--out", "out", "--jobs", "1", "--no-progress", "--retrain-zoo"]) == 0
    stage = json.loads((tmp_path / "out" / fake_reproduce.STAGE_NAMES[0] / reproduce.STAGE_FILE).read_text())
    assert stage["models"][0]["sha256"] == folder_record["weights_sha256"]
    args = types.SimpleNamespace(jobs=1, progress=False, retrain_zoo=True, zoo_dir=None, preset="cpu",
                                 checkpoints=None, model=[], batch_size=None, num_examples=[])
    reproduce._check_arguments(args)
    assert args.zoo_dir == os.path.join("results", "zoo") == zoo.DEFAULT_TRAIN_DIR


def test_init_specs_need_no_shipped_weights(shipped):
    spec = model_specs.init_spec(TINY.name)
    assert spec == f"init:{TINY.name}"
    assert model_specs.model_identity(spec) == {
        "kind": "init", "label": f"{TINY.name}@init",
        "of": {"kind": "zoo", "recipe": TINY.name, "recipe_fingerprint": TINY.fingerprint()}}
    model = model_specs.load_model(spec)  # TINY is not shipped
    keras.utils.set_random_seed(123)
    again = model_specs.load_model(spec, zoo_dir=None)
    weights = [np.array(w) for w in model.get_weights()]
    assert _same_weights(weights, [np.array(w) for w in again.get_weights()])
    assert model.config.hidden_size == 16 and model.config.num_classes == 10
    trained, _ = write_entry(shipped, weights_seed=7)  # TINY's seed is 0
    assert _same_weights([np.array(w) for w in model_specs.load_model(TINY.name).get_weights()], trained)
    random = [(a, b) for a, b in zip(weights, trained) if a.ndim >= 2 and np.std(a) > 0]  # kernels, embeddings
    assert len(random) >= 8 and not any(np.array_equal(a, b) for a, b in random)
