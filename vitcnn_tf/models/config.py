"""Config dataclass helpers of the model families: field validation and presets with overrides."""

import dataclasses

import numpy as np


def require_positive_int(owner, field, value):
    """Raises ``ValueError`` naming ``owner.field`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {field} must be a positive integer, got {value!r}")


def config_from_preset(config_class, presets, name, overrides):
    """``config_class(**presets[name], **overrides)`` with clear errors for unknown names and fields."""
    owner = f"{config_class.__name__}.from_name"
    if name not in presets:
        raise ValueError(f"{owner}: unknown preset {name!r}; known presets: {list(presets)}")
    fields = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"{owner}: unknown config fields {unknown}; fields are {fields}")
    return config_class(**{**presets[name], **overrides})
