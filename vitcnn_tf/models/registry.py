"""One registry of every model family and preset: ``get_model(preset, checkpoint=None, **overrides)``.

A family is a config dataclass, a model class and a preset table. ``get_model("ViT-B/16", "ViT-B_16.npz",
representation_size=768, num_classes=21843)`` builds the model from ``ViTConfig.from_name`` and loads the file (a
release ``.npz`` or a timm ``.safetensors``, by its suffix); ``model_family(model)`` names the family of a built
model.
"""

import dataclasses
import os

from vitcnn_tf.models import checkpoint as checkpoint_lib
from vitcnn_tf.models import mixer, resnet_v2, timm, vit


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: its name (``"vit"``, ``"resnet"``, ``"mixer"``), config class, model class and presets."""

    name: str
    config_class: type
    model_class: type
    presets: dict


FAMILIES = (
    Family("vit", vit.ViTConfig, vit.ViT, vit.VIT_PRESETS),
    Family("resnet", resnet_v2.ResNetV2Config, resnet_v2.ResNetV2, resnet_v2.RESNET_V2_PRESETS),
    Family("mixer", mixer.MixerConfig, mixer.Mixer, mixer.MIXER_PRESETS),
)
# file suffix -> loader(model, path) of the checkpoint formats.
CHECKPOINT_LOADERS = {".npz": checkpoint_lib.load_npz, ".safetensors": timm.load_timm}
CHECKPOINT_SUFFIXES = tuple(CHECKPOINT_LOADERS)


def preset_names():
    """Every preset of every family, in registry order."""
    return [name for family in FAMILIES for name in family.presets]


def family_of_preset(preset):
    """The :class:`Family` with preset ``preset``; ValueError naming the known presets otherwise."""
    for family in FAMILIES:
        if preset in family.presets:
            return family
    raise ValueError(f"preset {preset!r} is not a model preset; known: {', '.join(preset_names())}")


def model_config(preset, **overrides):
    """The config dataclass of ``preset`` with ``overrides`` applied."""
    return family_of_preset(preset).config_class.from_name(preset, **overrides)


def get_model(preset, checkpoint=None, **overrides):
    """``keras.Model`` of ``preset`` (``"ViT-B/16"``, ``"BiT-R50x1"``, ``"Mixer-B/16"``, ``"ViT-CPU/4"``, ...) with
    config ``overrides``; with ``checkpoint`` its weights are loaded: a release ``.npz`` file (``load_npz``) or a
    timm ``.safetensors`` file (``load_timm``; ``get_model("ViT-B/16", "vit_base_patch16_gap_224.safetensors",
    classifier="gap", num_heads=16)``). Any other suffix raises ``ValueError``.
    """
    family = family_of_preset(preset)
    if checkpoint is not None:
        _checkpoint_loader(checkpoint)
    model = family.model_class(family.config_class.from_name(preset, **overrides))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def load_checkpoint(model, checkpoint):
    """Loads a release ``.npz`` or timm ``.safetensors`` file into ``model`` (a model of the registry)."""
    _checkpoint_loader(checkpoint)(model, os.fspath(checkpoint))


def _checkpoint_loader(checkpoint):
    """The loader of :data:`CHECKPOINT_LOADERS` for the file's suffix; ValueError for any other suffix."""
    path = os.fspath(checkpoint)
    suffix = os.path.splitext(path)[1]
    if suffix not in CHECKPOINT_LOADERS:
        raise ValueError(f"checkpoint={path!r}: expected a file ending in {' or '.join(CHECKPOINT_SUFFIXES)}")
    return CHECKPOINT_LOADERS[suffix]


def model_family(model):
    """``"vit"``, ``"resnet"`` or ``"mixer"`` for a model of the registry (by its config class); ValueError for
    other models."""
    config = getattr(model, "config", None)
    for family in FAMILIES:
        if isinstance(config, family.config_class):
            return family.name
    raise ValueError(f"model {getattr(model, 'name', model)!r}: expected a vitcnn_tf ViT, ResNetV2 or Mixer (a model "
                     f"with a config of {', '.join(f.config_class.__name__ for f in FAMILIES)}), got config type "
                     f"{type(config).__name__}")
