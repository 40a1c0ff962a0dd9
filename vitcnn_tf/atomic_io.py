"""Result files: atomic writes, the JSON convention and file hashes.

Atomic: every writer goes through a temporary file in the same folder, then ``os.replace``, so a crash (or
Ctrl-C) in the middle of a write leaves either the previous file or none, never half a file.

JSON: NaN and inf are not valid JSON; :func:`write_json` writes them as ``null`` and, in a dict, notes where
(``non_finite_note``, ``non_finite_paths``). NumPy scalars and arrays become Python numbers and lists.
"""

import contextlib
import hashlib
import json
import math
import os
import tempfile

import numpy as np


NON_FINITE_NOTE = ("non-finite numbers (NaN, inf) are not valid JSON and were written as null; "
                   "'non_finite_paths' lists where")


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yields a temporary sibling path of ``path`` (ending in ``suffix``) for a writer that takes a file name;
    when the block succeeds the file is synced and replaces ``path`` atomically, otherwise it is removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` atomically."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp_path, open(tmp_path, mode) as handle:
        yield handle


def json_safe(value, path="$"):
    """``(value with NaN / inf floats replaced by None, [JSON paths of the replaced numbers])``; NumPy scalars
    and arrays become Python numbers and lists, dict keys strings. Other objects are returned unchanged."""
    if isinstance(value, dict):
        cleaned, paths = {}, []
        for key, item in value.items():
            cleaned[str(key)], sub_paths = json_safe(item, f"{path}.{key}")
            paths += sub_paths
        return cleaned, paths
    if isinstance(value, (list, tuple)):
        cleaned, paths = [], []
        for index, item in enumerate(value):
            item, sub_paths = json_safe(item, f"{path}[{index}]")
            cleaned.append(item)
            paths += sub_paths
        return cleaned, paths
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist(), path)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path]
    return value, []


def write_json(path, obj, indent=2):
    """Write ``obj`` as JSON atomically, in the convention of :func:`json_safe`; returns what was written.

    A dict whose non-finite numbers were replaced gains ``non_finite_note`` and ``non_finite_paths``. An object
    JSON cannot encode raises ``TypeError`` naming its type, leaving any previous file in place.
    """
    cleaned, paths = json_safe(obj)
    if paths and isinstance(cleaned, dict):
        cleaned["non_finite_note"] = NON_FINITE_NOTE
        cleaned["non_finite_paths"] = paths
    with atomic_open(path, "w") as handle:
        json.dump(cleaned, handle, indent=indent, default=_json_default, sort_keys=False, allow_nan=False)
        handle.write("\n")
    return cleaned


def save_npz(path, **arrays):
    """``np.savez`` atomically; ``path`` is used as given (no ``.npz`` appended)."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def save_figure(fig, path, **savefig_kwargs):
    """Save a matplotlib figure atomically; the format is taken from the path's suffix."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=fmt, **savefig_kwargs)


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value):
    raise TypeError(f"write_json: cannot encode object of type {type(value).__name__}")
