"""Atomic result files: write to a temporary file in the same folder, then ``os.replace``.

A crash (or Ctrl-C) in the middle of a write leaves either the previous file or none, never half a file.
"""

import contextlib
import json
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` atomically."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def write_json(path, obj, indent=2):
    """Write ``obj`` as JSON (NumPy scalars and arrays converted) atomically."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent, default=_json_default, sort_keys=False)
        handle.write("\n")


def save_npz(path, **arrays):
    """``np.savez`` atomically; ``path`` is used as given (no ``.npz`` appended)."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def save_figure(fig, path, **savefig_kwargs):
    """Save a matplotlib figure atomically; the format is taken from the path's suffix."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=fmt, **savefig_kwargs)


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"write_json: cannot encode object of type {type(value).__name__}")
