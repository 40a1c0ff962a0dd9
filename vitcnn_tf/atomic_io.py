"""Result files: atomic writes, the JSON convention and file hashes.

Atomic: every writer goes through a temporary file in the same folder (``.<name>.<random>.tmp...``), then
``os.replace``, so a crash (or Ctrl-C) in the middle of a write leaves either the previous file or none, never half
a file; a process killed mid-write leaves its temporary file, which :func:`remove_stale_temporaries` removes.

Folders: :func:`file_hashes` lists a folder's files with their sha256 (a stage's record of its outputs),
:func:`replace_folder` moves a finished folder into place, and :func:`folder_lock` keeps a second process out of a
folder (an ``fcntl.flock`` lock, released by the kernel when its holder exits, even by ``kill -9``).

JSON: NaN and inf are not valid JSON; :func:`write_json` writes them as ``null`` and, in a dict, notes where
(``non_finite_note``, ``non_finite_paths``). NumPy scalars and arrays become Python numbers and lists.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile

import numpy as np


TEMPORARY_SUFFIX = ".tmp"
_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9_.]*)?$")  # mkstemp's 8 random characters
LOCK_FILE = ".lock"
NON_FINITE_NOTE = ("non-finite numbers (NaN, inf) are not valid JSON and were written as null; "
                   "'non_finite_paths' lists where")


@contextlib.contextmanager
def atomic_path(path, suffix=TEMPORARY_SUFFIX):
    """Yields a temporary sibling path of ``path`` (ending in ``suffix``, which starts with ``.tmp``) for a writer
    that takes a file name; when the block succeeds the file is synced and replaces ``path`` atomically, otherwise
    it is removed."""
    path = os.fspath(path)
    if not suffix.startswith(TEMPORARY_SUFFIX):
        raise ValueError(f"atomic_path: suffix must start with {TEMPORARY_SUFFIX!r}, got {suffix!r}")
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


def is_temporary(name):
    """True for the name of a temporary file of :func:`atomic_path` (``.<name>.<8 random characters>.tmp...``)."""
    return bool(_TEMPORARY_NAME.match(os.path.basename(os.fspath(name))))


def remove_stale_temporaries(folder):
    """Removes the temporary files of :func:`atomic_path` under ``folder`` (left by killed writers); returns their
    paths. Call it only while no other process writes there (under :func:`folder_lock`)."""
    removed = []
    for root, _, names in os.walk(os.fspath(folder)):
        for name in names:
            if is_temporary(name):
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                removed.append(path)
    return sorted(removed)


def file_hashes(folder, exclude=()):
    """``{relative path: sha256}`` of every file under ``folder`` (``/``-separated paths, sorted), except the names
    in ``exclude`` and temporary files."""
    folder = os.fspath(folder)
    hashes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            if relative not in exclude and not is_temporary(name):
                hashes[relative] = sha256_file(path)
    return dict(sorted(hashes.items()))


def changed_files(folder, hashes):
    """``[(relative path, "missing" | "changed")]`` of the files of ``hashes`` (:func:`file_hashes`) that are no
    longer in ``folder`` with that content; [] when every file is intact."""
    problems = []
    for relative, digest in hashes.items():
        path = os.path.join(os.fspath(folder), *relative.split("/"))
        if not os.path.isfile(path):
            problems.append((relative, "missing"))
        elif sha256_file(path) != digest:
            problems.append((relative, "changed"))
    return problems


def replace_folder(source, target):
    """Moves the finished folder ``source`` to ``target`` (a sibling), replacing any previous ``target``.

    The previous folder is first renamed to a hidden sibling ``.<name>.old-<pid>`` and removed after the move, so a
    crash leaves ``target`` either complete (old or new) or absent, never a mix; the hidden leftovers are what
    :func:`stale_siblings` finds."""
    source, target = os.fspath(source), os.fspath(target)
    retired = None
    if os.path.lexists(target):
        retired = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.old-{os.getpid()}")
        _remove_tree(retired)
        os.rename(target, retired)
    os.rename(source, target)
    if retired is not None:
        _remove_tree(retired)
    _sync_folder(os.path.dirname(os.path.abspath(target)))


def fresh_sibling(target):
    """A new empty hidden folder ``.<name>.new-<pid>`` beside ``target``, for writing what :func:`replace_folder`
    moves into place (any leftover of that name is removed first)."""
    target = os.fspath(target)
    path = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.new-{os.getpid()}")
    _remove_tree(path)
    os.makedirs(path)
    return path


def stale_siblings(folder):
    """The hidden ``.<name>.new-<pid>`` / ``.<name>.old-<pid>`` folders of :func:`fresh_sibling` and
    :func:`replace_folder` directly in ``folder`` (left by a killed run)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(r"^\..+\.(new|old)-\d+$")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if pattern.match(name) and os.path.isdir(os.path.join(folder, name)))


def remove_stale(folder):
    """Removes the :func:`stale_siblings` and :func:`remove_stale_temporaries` of ``folder``; returns their paths.
    Call it only under :func:`folder_lock`."""
    removed = stale_siblings(folder)
    for path in removed:
        _remove_tree(path)
    return removed + remove_stale_temporaries(folder)


class FolderLocked(RuntimeError):
    """Raised by :func:`folder_lock` when another process holds the folder's lock; ``holder`` is its pid text."""

    def __init__(self, folder, holder):
        self.folder, self.holder = folder, holder
        super().__init__(f"{folder} is in use by another process (pid {holder or 'unknown'})")


@contextlib.contextmanager
def folder_lock(folder):
    """Holds an exclusive lock on ``folder`` (created if needed) for the block: an ``fcntl.flock`` on
    ``<folder>/.lock``, which holds this process's pid. Raises :class:`FolderLocked` at once when another live
    process holds it; a lock file left by a dead process is free (the kernel drops a lock with its process)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666 & ~_current_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise FolderLocked(folder, os.pread(fd, 32, 0).decode(errors="replace").strip()) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_tree(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _sync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value):
    raise TypeError(f"write_json: cannot encode object of type {type(value).__name__}")
