"""Config dataclass helpers of the model families: field validation and presets with overrides."""

import dataclasses
import numbers

import numpy as np


class ConfigTypeError(TypeError, ValueError):
    """A config field of the wrong type: a ``TypeError``, and a ``ValueError`` like every other bad config value."""


def require_positive_int(owner, field, value):
    """Raises ``ValueError`` naming ``owner.field`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {field} must be a positive integer, got {_described(value)}")


def require_rate(owner, field, value):
    """Raises ``ValueError`` (``ConfigTypeError`` for a non-number) naming ``owner.field`` unless ``value`` is a real
    number in [0, 1) (a dropout rate)."""
    message = f"{owner}: {field} must be in [0, 1) (a real number), got {_described(value)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(message)
    if not 0.0 <= value < 1.0:
        raise ValueError(message)


def index_tuple(owner, field, value, size, what, size_field):
    """``value`` as a sorted tuple of distinct integers in ``[0, size)``, else an error naming ``owner.field`` and
    what was expected: ``ConfigTypeError`` for anything but a sequence (None, a single number, a string),
    ``ValueError`` for bad entries. ``size_field`` names the field that sets ``size``."""
    expected = f"a sequence of {what} indices in 0..{size - 1}, e.g. () or (0,)"
    try:
        if isinstance(value, (str, bytes, numbers.Number)):
            raise TypeError
        entries = tuple(value)
    except TypeError:
        hint = f"; write ({value!r},)" if isinstance(value, numbers.Integral) and not isinstance(value, bool) else ""
        raise ConfigTypeError(f"{owner}: {field} must be {expected}, got {_described(value)}{hint}") from None
    bad = [i for i in entries if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < size]
    if bad:
        raise ValueError(f"{owner}: {field} has invalid {what} indices {bad}; {what}s are numbered "
                         f"0..{size - 1} ({size_field}={size})")
    return tuple(sorted({int(i) for i in entries}))


def _described(value):
    """``repr(value)`` and its type, for an error message."""
    return f"{value!r} ({type(value).__name__})"


def config_from_preset(config_class, presets, name, overrides):
    """``config_class(**presets[name], **overrides)`` with clear errors for unknown names and fields."""
    owner = f"{config_class.__name__}.from_name"
    if not isinstance(name, str) or name not in presets:
        raise ValueError(f"{owner}: unknown preset {name!r}; known presets: {list(presets)}")
    fields = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"{owner}: unknown config fields {unknown}; fields are {fields}")
    return config_class(**{**presets[name], **overrides})
