"""The model registry: every preset resolves and builds, family lookup, checkpoint suffixes."""

import pathlib

import keras
import pytest

import helpers
from vitcnn_tf.models import Mixer, ResNetV2, ViT, get_model, load_timm, model_family, registry, save_npz


@pytest.mark.parametrize("preset", registry.preset_names())
def test_every_preset_builds_through_get_model(preset):
    family = registry.family_of_preset(preset)
    with helpers.deferred_variables():  # shapes only: the paper-scale presets allocate nothing
        model = get_model(preset, num_classes=7)
    assert isinstance(model, family.model_class) and model_family(model) == family.name
    assert model.config == family.config_class.from_name(preset, num_classes=7)
    assert model.output_shape == (None, 7)


def test_families_and_presets_are_disjoint_and_complete():
    names = registry.preset_names()
    assert len(names) == len(set(names))
    assert [family.name for family in registry.FAMILIES] == ["vit", "resnet", "mixer"]
    assert {"ViT-B/16", "ViT-L/16", "BiT-R50x1", "Mixer-B/16", "ViT-CPU/4", "ResNetV2-CPU", "Mixer-CPU/4"} <= set(names)


@pytest.mark.parametrize("build, family", [(helpers.tiny_vit, "vit"), (helpers.tiny_resnet, "resnet"),
                                           (helpers.tiny_mixer, "mixer")])
def test_model_family_of_each_family(build, family):
    assert model_family(build()) == family


def test_model_family_refuses_a_plain_keras_model():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="plain")
    with pytest.raises(ValueError, match="'plain'.*ViTConfig.*got config type NoneType"):
        model_family(plain)


def test_unknown_preset_and_field_errors():
    with pytest.raises(ValueError, match="'ViT-Z/3' is not a model preset; known: .*ViT-B/16.*BiT-R50x1"):
        get_model("ViT-Z/3")
    with pytest.raises(TypeError, match="unknown config fields \\['depth'\\]"):
        get_model("ViT-CPU/4", depth=3)


def test_get_model_loads_a_release_checkpoint(tmp_path):
    source = helpers.randomize_weights(get_model("Mixer-CPU/4", num_blocks=1, image_size=16), seed=3)
    save_npz(source, tmp_path / "mixer.npz")
    loaded = get_model("Mixer-CPU/4", tmp_path / "mixer.npz", num_blocks=1, image_size=16)
    assert isinstance(loaded, Mixer)
    helpers.assert_same_forward(loaded, source, helpers.random_images(2, 16))


def test_get_model_loads_a_timm_checkpoint():
    path = pathlib.Path(__file__).parent / "fixtures" / "timm" / "mixer.safetensors"
    fields = dict(patch_size=8, hidden_dim=32, num_blocks=2, tokens_mlp_dim=16, channels_mlp_dim=64, num_classes=5)
    loaded = get_model("Mixer-CPU/4", path, **fields)
    reference = load_timm(get_model("Mixer-CPU/4", **fields), path)
    helpers.assert_same_forward(loaded, reference, helpers.random_images(2, 32))
    assert loaded.get_layer("head").kernel.numpy().any()


def test_checkpoint_suffixes(tmp_path):
    assert registry.CHECKPOINT_SUFFIXES == (".npz", ".safetensors")
    with pytest.raises(ValueError, match="expected a file ending in .npz or .safetensors"):
        get_model("ViT-CPU/4", tmp_path / "weights.h5")
    with pytest.raises(FileNotFoundError, match="load_timm: no file .*weights.safetensors"):
        get_model("ViT-CPU/4", tmp_path / "weights.safetensors")


def test_classes_are_the_registry_ones():
    assert {family.model_class for family in registry.FAMILIES} == {ViT, ResNetV2, Mixer}
