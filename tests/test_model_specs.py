"""Model specs: parsing of every kind, loading, labels, identities and errors."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest

import helpers
from vitcnn_tf import atomic_io, model_specs, zoo
from vitcnn_tf.model_specs import (ModelPool, ModelSpec, init_spec, load_model, load_models, model_identity,
                                   parse_model_spec, seed_twin)
from vitcnn_tf.models import ViT, load_timm, save_npz

TIMM_FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "timm"


@pytest.mark.parametrize("text, kind, preset, overrides, path, label", [
    ("vit_gap", "zoo", None, {}, None, "vit_gap"),
    ("some/dir/my model.keras", "keras", None, {}, "some/dir/my model.keras", "my-model"),
    ("ViT-B/16=ckpt/ViT-B_16.npz", "checkpoint", "ViT-B/16", {}, "ckpt/ViT-B_16.npz", "ViT-B-16"),
    ("ViT-B/16:representation_size=768,num_classes=21843=ckpt/v.npz", "checkpoint", "ViT-B/16",
     {"representation_size": 768, "num_classes": 21843}, "ckpt/v.npz", "ViT-B-16"),
    ("BiT-R50x1=timm/model.safetensors", "checkpoint", "BiT-R50x1", {}, "timm/model.safetensors", "BiT-R50x1"),
    ("ViT-CPU/4", "preset", "ViT-CPU/4", {}, None, "ViT-CPU-4"),
    ("ViT-CPU/4:skip_blocks_removed=(1, 3),classifier=gap", "preset", "ViT-CPU/4",
     {"skip_blocks_removed": (1, 3), "classifier": "gap"}, None, "ViT-CPU-4"),
])
def test_parse_every_kind(text, kind, preset, overrides, path, label):
    spec = parse_model_spec(text)
    assert spec == ModelSpec(text, kind, preset, overrides, path, label)
    assert parse_model_spec(spec) is spec


def test_zoo_labels_are_the_recipe_names():
    assert [parse_model_spec(name).label for name in zoo.RECIPES] == list(zoo.RECIPES)


@pytest.mark.parametrize("text, message", [
    ("", "non-empty string"),
    ("resnet50", "neither a zoo recipe .*vit_gap.* nor a model preset .*BiT-R50x1"),
    ("ViT-Z/3=file.npz", "'ViT-Z/3' is neither a zoo recipe"),
    ("ViT-CPU/4:num_classes", "override 'num_classes' must be key=value"),
])
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_model_spec(text)


def test_load_preset_checkpoint_and_keras_kinds(tmp_path):
    source = helpers.randomize_weights(helpers.tiny_vit(), seed=2)
    save_npz(source, tmp_path / "tiny.npz")
    fields = "patch_size=4,hidden_size=16,mlp_dim=24,num_heads=2,num_layers=3,image_size=16,num_classes=5"
    images = helpers.random_images(2, 16)
    loaded = load_model(f"ViT-CPU/4:{fields}={tmp_path / 'tiny.npz'}", zoo_dir=tmp_path)
    helpers.assert_same_forward(loaded, source, images)
    source.save(tmp_path / "tiny.keras")
    helpers.assert_same_forward(load_model(str(tmp_path / "tiny.keras"), zoo_dir=tmp_path), source, images)
    fresh = load_model(f"ViT-CPU/4:{fields}", zoo_dir=tmp_path)
    assert isinstance(fresh, ViT) and fresh.config == source.config


def test_missing_files_name_the_spec_and_the_path(tmp_path):
    missing = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match=f"'ViT-B/16={missing}'.*no checkpoint file '{missing}'"):
        load_model(f"ViT-B/16={missing}", zoo_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no keras file 'gone.keras'"):
        load_model("gone.keras", zoo_dir=tmp_path)


def test_a_timm_safetensors_checkpoint_loads_through_its_spec(tmp_path):
    path = TIMM_FIXTURES / "vit_gap.safetensors"
    fields = "patch_size=8,hidden_size=32,mlp_dim=64,num_heads=4,num_layers=2,num_classes=5,classifier=gap"
    spec = f"ViT-CPU/4:{fields}={path}"
    assert parse_model_spec(spec).kind == "checkpoint"
    loaded = load_model(spec, zoo_dir=tmp_path)
    reference = load_timm(ViT(loaded.config), path)
    images = helpers.random_images(2, 32)
    helpers.assert_same_forward(loaded, reference, images)
    assert loaded.config.classifier == "gap" and loaded.config.num_heads == 4
    assert model_identity(spec, zoo_dir=tmp_path)["sha256"] == atomic_io.sha256_file(path)
    (tmp_path / "m.safetensors").write_bytes(b"\0")
    with pytest.raises(ValueError, match="m.safetensors is not a readable safetensors file"):
        load_model(f"ViT-CPU/4={tmp_path / 'm.safetensors'}", zoo_dir=tmp_path)


def test_load_models_makes_labels_unique(tmp_path):
    specs = ["ViT-CPU/4:num_layers=1", "ViT-CPU/4:num_layers=1,classifier='gap'", "Mixer-CPU/4:num_blocks=1"]
    models = load_models(specs, zoo_dir=tmp_path)
    assert list(models) == ["ViT-CPU-4", "ViT-CPU-4#2", "Mixer-CPU-4"]
    assert models["ViT-CPU-4#2"].config.classifier == "gap"


def test_load_models_tells_checkpoints_of_one_preset_apart_by_file_name(tmp_path):
    vit = helpers.tiny_vit()
    for name in ("B_16-i21k", "B_16-i1k"):
        save_npz(vit, tmp_path / f"{name}.npz")
    keys = ("image_size", "patch_size", "hidden_size", "mlp_dim", "num_heads", "num_layers", "num_classes")
    fields = ",".join(f"{key}={getattr(vit.config, key)}" for key in keys)
    specs = [f"ViT-CPU/4:{fields}={tmp_path / name}.npz" for name in ("B_16-i21k", "B_16-i1k", "B_16-i1k")]
    assert list(load_models(specs, zoo_dir=tmp_path)) == ["ViT-CPU-4", "ViT-CPU-4-B_16-i1k", "ViT-CPU-4-B_16-i1k#2"]


def test_model_identity_of_files_uses_absolute_paths_and_hashes(tmp_path, monkeypatch):
    save_npz(helpers.tiny_vit(), tmp_path / "tiny.npz")
    monkeypatch.chdir(tmp_path)
    identity = model_identity("ViT-CPU/4:num_classes=5=./tiny.npz", zoo_dir="zoo")
    expected_path = os.path.join(str(tmp_path), "tiny.npz")
    assert identity == {"kind": "checkpoint", "label": "ViT-CPU-4", "preset": "ViT-CPU/4",
                        "overrides": {"num_classes": 5}, "path": expected_path,
                        "sha256": atomic_io.sha256_file(expected_path),
                        "spec": f"ViT-CPU/4:num_classes=5={expected_path}"}
    json.dumps(identity)


def test_model_identity_of_a_zoo_recipe(tmp_path):
    identity = model_identity("vit", zoo_dir=tmp_path)
    assert identity == {"kind": "zoo", "label": "vit", "spec": "vit", "recipe": "vit",
                        "recipe_fingerprint": zoo.get_recipe("vit").fingerprint(), "weights_sha256": None}


# ------------------------------------------------------------------------------------------- init specs

CPU_VIT = "patch_size=4,hidden_size=16,mlp_dim=24,num_heads=2,num_layers=2,image_size=16,num_classes=5"


@pytest.mark.parametrize("inner, preset, label", [
    ("vit", None, "vit@init"),
    ("ViT-B/16=ckpt/absent.npz", "ViT-B/16", "ViT-B-16@init"),
    ("ViT-CPU/4:num_layers=1", "ViT-CPU/4", "ViT-CPU-4@init"),
])
def test_parse_init_specs(inner, preset, label):
    spec = parse_model_spec(f"init:{inner}")
    assert spec == ModelSpec(f"init:{inner}", "init", preset, parse_model_spec(inner).overrides, None, label,
                             parse_model_spec(inner))
    assert spec.name == parse_model_spec(inner).name


@pytest.mark.parametrize("text, message", [
    ("init:init:vit", "'init:init:vit': init: applies once"),
    ("init:m.keras", "no initialisation control for a .keras file: its architecture's initialisers are unknown"),
    ("init:resnet50", "neither a zoo recipe"),
])
def test_init_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_model_spec(text)


def test_init_spec_and_seed_twin():
    assert init_spec("vit") == "init:vit" and init_spec("ViT-B/16=x.npz") == "init:ViT-B/16=x.npz"
    with pytest.raises(ValueError, match="no initialisation control for a .keras file"):
        init_spec("a.keras")
    with pytest.raises(ValueError, match="applies once"):
        init_spec("init:vit")
    assert [seed_twin("vit", seed) for seed in range(4)] == ["vit", "vit_seed1", "vit_seed2", None]
    assert [seed_twin("vit_noskip_mid", seed) for seed in range(3)] == ["vit_noskip_mid", "vit_noskip_mid_seed1",
                                                                        None]
    assert [seed_twin("vit_seed1", seed) for seed in range(2)] == ["vit_seed1", None]
    assert [seed_twin("ViT-B/16=x.npz", seed) for seed in range(2)] == ["ViT-B/16=x.npz", None]
    assert [seed_twin("a.keras", seed) for seed in range(2)] == ["a.keras", None]
    assert [seed_twin("init:resnet", seed) for seed in (0, 2, 3)] == ["init:resnet", "init:resnet_seed2", None]
    assert seed_twin("init:ViT-CPU/4", 0) == "init:ViT-CPU/4" and seed_twin("init:ViT-CPU/4", 1) is None


def test_init_model_of_a_checkpoint_spec_needs_no_file(tmp_path):
    trained = helpers.randomize_weights(load_model(f"ViT-CPU/4:{CPU_VIT}"), seed=3)
    save_npz(trained, tmp_path / "trained.npz")
    absent = load_model(f"init:ViT-CPU/4:{CPU_VIT}={tmp_path / 'absent.npz'}")
    again = load_model(f"init:ViT-CPU/4:{CPU_VIT}={tmp_path / 'trained.npz'}")
    keras.utils.set_random_seed(0)
    reference = ViT(trained.config)  # the preset at seed 0, built here
    reference(helpers.random_images(1, 16))
    images = helpers.random_images(2, 16)
    assert absent.config == trained.config
    helpers.assert_same_forward(absent, again, images)
    helpers.assert_same_forward(absent, reference, images)
    loaded = load_model(f"ViT-CPU/4:{CPU_VIT}={tmp_path / 'trained.npz'}")
    assert not np.allclose(absent.predict(images, verbose=0), loaded.predict(images, verbose=0))


def test_model_identity_of_init_specs_reads_no_file(tmp_path):
    assert model_identity("init:vit") == {
        "kind": "init", "label": "vit@init",
        "of": {"kind": "zoo", "recipe": "vit", "recipe_fingerprint": zoo.get_recipe("vit").fingerprint()}}
    spec = f"init:ViT-B/16:num_classes=5={tmp_path / 'absent.npz'}"
    assert model_identity(spec, zoo_dir=tmp_path) == {
        "kind": "init", "label": "ViT-B-16@init",
        "of": {"kind": "checkpoint", "preset": "ViT-B/16", "overrides": {"num_classes": 5}}}
    json.dumps(model_identity(spec))
    # the file is not read, so its spelling is no part of the identity
    assert model_identity(spec) == model_identity(f"init:ViT-B/16:num_classes=5={tmp_path / 'other.npz'}")


def test_spec_config_of_init_specs(tmp_path):
    from experiments import common

    options = common.add_common_arguments(common.new_parser("", "x"), default_models=[],
                                          default_out=str(tmp_path)).parse_args([])
    assert common.spec_config("init:vit_gap", options) == zoo.model_config("vit_gap")
    config = common.spec_config(f"init:ViT-CPU/4:{CPU_VIT}={tmp_path / 'absent.npz'}", options)
    assert config == load_model(f"ViT-CPU/4:{CPU_VIT}").config
    with pytest.raises(common.UserError, match="--models init:a.keras: .*no initialisation control"):
        common.spec_config("init:a.keras", options)


def test_a_model_pool_hands_out_kept_models_with_the_weights_of_the_new_spec(tmp_path):
    first = helpers.randomize_weights(load_model(f"ViT-CPU/4:{CPU_VIT}"), seed=3)
    second = helpers.randomize_weights(load_model(f"ViT-CPU/4:{CPU_VIT}"), seed=4)
    save_npz(first, tmp_path / "first.npz")
    save_npz(second, tmp_path / "second.npz")
    images = helpers.random_images(2, 16)
    pool = ModelPool()
    a = pool.load_model(f"ViT-CPU/4:{CPU_VIT}={tmp_path / 'first.npz'}")
    b = pool.load_model(f"ViT-CPU/4:{CPU_VIT}={tmp_path / 'second.npz'}")
    assert a is not b  # one run's models are distinct objects
    helpers.assert_same_forward(a, first, images)
    helpers.assert_same_forward(b, second, images)
    pool.release()
    again = pool.load_model(f"ViT-CPU/4:{CPU_VIT}={tmp_path / 'second.npz'}")
    initial = pool.load_model(f"init:ViT-CPU/4:{CPU_VIT}")
    other = pool.load_model(f"ViT-CPU/4:{CPU_VIT},classifier='gap'")
    assert again is a and initial is b and other not in (a, b)
    helpers.assert_same_forward(again, second, images)
    helpers.assert_same_forward(initial, load_model(f"init:ViT-CPU/4:{CPU_VIT}"), images)
    pool.release()
    preset = pool.load_model(f"ViT-CPU/4:{CPU_VIT}")
    assert preset is a
    keras.utils.set_random_seed(7)
    reference = load_model(f"ViT-CPU/4:{CPU_VIT}")
    keras.utils.set_random_seed(7)
    helpers.assert_same_forward(pool.load_model(f"ViT-CPU/4:{CPU_VIT}"), reference, images)


def test_a_model_pool_builds_an_initialisation_once(monkeypatch):
    pool = ModelPool()
    first = pool.load_model(f"init:ViT-CPU/4:{CPU_VIT}")
    initial = [weight.copy() for weight in first.get_weights()]
    pool.release()
    assert pool.load_model(f"ViT-CPU/4:{CPU_VIT}") is first  # a preset's fresh draw replaces the weights
    assert not all(np.array_equal(a, b) for a, b in zip(first.get_weights(), initial))
    pool.release()
    builds = []
    monkeypatch.setattr(model_specs, "_initial_model", lambda *args: builds.append(args))
    again = pool.load_model(f"init:ViT-CPU/4:{CPU_VIT}")
    assert again is first and builds == []
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), initial))


def test_a_model_pool_loads_a_zoo_model_into_a_kept_one():
    pool = ModelPool()
    kept = pool.load_model("vit")
    pool.release()
    twin = pool.load_model("vit_seed1")
    assert twin is kept
    helpers.assert_same_forward(twin, load_model("vit_seed1"), helpers.random_images(2, kept.config.image_size))
    with pytest.raises(ValueError, match="into: zoo recipe 'resnet' needs a model of config"):
        zoo.load_or_train("resnet", None, into=kept)
