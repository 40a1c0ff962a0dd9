"""Loading and saving the published ``.npz`` checkpoints (vit_jax ViT and Mixer, BiT ResNetV2).

Generic over the model protocol of ``vitcnn_tf.models.base``: ``model.checkpoint_variables()`` (from the
family's ``checkpoint_layout()`` table) maps every release key to a variable of the release shape,
``model.checkpoint_head_keys`` names the classifier head, and ``model.adapt_checkpoint_array(key, array)``
adapts an array first (ViT resamples position embeddings).
"""

import dataclasses
import os
import warnings
import zipfile

import numpy as np

from vitcnn_tf import atomic_io

# Keys listed per kind of mismatch in a load_npz error; the rest are counted.
MAX_LISTED_KEYS = 8


def load_npz(model, path):
    """Loads the ``.npz`` checkpoint at ``path`` into ``model`` (all variables, or none on error).

    Raises ``ValueError`` naming the file, the model and the keys (with both shapes) of missing, unexpected or
    mis-shaped arrays, at most ``MAX_LISTED_KEYS`` of each kind (then how many more), and naming the file (and
    key) with what is wrong for a file that is not a NumPy archive, a truncated one, a corrupt ``.npy`` header or
    a pickled (object) array (``_read_npz``). Head arrays (``model.checkpoint_head_keys``) whose shape differs,
    i.e. another class count, are skipped with a warning, keeping the model's fresh head. Arrays are cast to the
    variable dtype. Returns ``model``.
    """
    path = os.fspath(path)
    variables = model.checkpoint_variables()
    arrays = _read_npz(path)
    head_keys = set(model.checkpoint_head_keys)
    to_assign, skipped_head, mismatched = {}, [], []
    for key, variable in variables.items():
        if key not in arrays:
            continue
        try:
            array = model.adapt_checkpoint_array(key, arrays[key])
        except ValueError as error:
            raise ValueError(f"load_npz: {path}: cannot adapt {key!r} of shape {arrays[key].shape} to the model's "
                             f"{tuple(variable.shape)}: {error}") from error
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"load_npz: {path}: array {key!r} has non-numeric dtype {array.dtype}")
        expected = tuple(variable.shape)
        if array.shape == expected:
            to_assign[key] = array
        elif key in head_keys:
            skipped_head.append(f"{key!r}: checkpoint {array.shape} vs model {expected}")
        else:
            mismatched.append(key)
    missing = sorted(set(variables) - set(arrays))
    unexpected = sorted(set(arrays) - set(variables))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"load_npz: {path} does not fit the {type(model).__name__} {model.name!r} ({_describe_config(model)}):\n"
            + _describe_keys("of the wrong shape", mismatched, lambda key: f": checkpoint shape {arrays[key].shape}, "
                                                                       f"model expects {tuple(variables[key].shape)}")
            + _describe_keys("missing from the checkpoint", missing, lambda key: f" {tuple(variables[key].shape)}")
            + _describe_keys("unexpected in the checkpoint", unexpected, lambda key: f" {arrays[key].shape}")
            + "  Is it the checkpoint of another model, or do the config overrides differ from the release?"
        )
    if skipped_head:
        for key in head_keys:
            to_assign.pop(key, None)
        warnings.warn(
            f"load_npz: {path}: the classifier head has another class count ({'; '.join(skipped_head)}); "
            "keeping the model's freshly initialised head",
            stacklevel=2,
        )
    for key, array in to_assign.items():
        variables[key].assign(array.astype(variables[key].dtype))
    return model


def save_npz(model, path):
    """Writes ``model``'s variables to ``path`` (atomically) in the release ``.npz`` format of ``load_npz``."""
    arrays = {key: np.asarray(variable.numpy()) for key, variable in model.checkpoint_variables().items()}
    atomic_io.save_npz(path, **arrays)


def _read_npz(path):
    """{key -> array} of an ``.npz`` file, read with ``allow_pickle=False``.

    Raises ``ValueError`` naming the file (and the key) and what is wrong: not a NumPy ``.npz`` archive (another
    kind of file, a single ``.npy`` array or pickled data), a truncated or damaged archive, a member that is not a
    ``.npy`` array, a corrupt ``.npy`` header, a pickled (object) array, or truncated array data.
    """
    with open(path, "rb") as file:
        start = file.read(len(np.lib.format.MAGIC_PREFIX))
    if not start.startswith(_ZIP_PREFIXES):
        raise ValueError(f"load_npz: {path} is not a NumPy .npz archive: {_describe_non_zip(start)}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"load_npz: {path} is a truncated or damaged .npz (zip) archive: {error}") from error
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                array = archive[key]
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
                problem = _diagnose_member(archive, key)
                raise ValueError(f"load_npz: {path}: array {key!r} {problem} ({error})") from error
            if not isinstance(array, np.ndarray):
                raise ValueError(f"load_npz: {path}: member {key!r} is not a .npy array, so the file is not a NumPy "
                                 f".npz archive of named arrays")
            arrays[key] = array
    return arrays


# Local file header and end of central directory (an empty archive): how np.load recognises a zip file.
_ZIP_PREFIXES = (b"PK\x03\x04", b"PK\x05\x06")


def _describe_non_zip(start):
    """What a file starting with the bytes ``start`` is, for an error message."""
    if start.startswith(np.lib.format.MAGIC_PREFIX):
        return "it is a single .npy array, not an .npz archive of named arrays"
    if start.startswith(b"\x80"):
        return "it holds pickled data, which is refused for safety"
    if not start:
        return "the file is empty"
    return f"it starts with {start!r} instead of a zip header (b'PK\\x03\\x04')"


def _diagnose_member(archive, key):
    """Why reading array ``key`` of the open ``NpzFile`` ``archive`` failed: its ``.npy`` header, read again."""
    name = key + ".npy" if key + ".npy" in archive.zip.namelist() else key
    try:
        with archive.zip.open(name) as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(member)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return "has a corrupt .npy header"
    if dtype.hasobject:
        return "is a pickled (object) array, which is refused for safety; checkpoints must hold plain numeric arrays"
    return "has truncated or damaged data"


def _describe_keys(what, keys, shapes_of):
    """One line per key (at most ``MAX_LISTED_KEYS``) with its shapes, under a count of ``what``."""
    if not keys:
        return ""
    lines = [f"  {len(keys)} {what}:"]
    lines += [f"    {key!r}{shapes_of(key)}" for key in keys[:MAX_LISTED_KEYS]]
    if len(keys) > MAX_LISTED_KEYS:
        lines.append(f"    ... and {len(keys) - MAX_LISTED_KEYS} more")
    return "\n".join(lines) + "\n"


def _describe_config(model):
    """The model's config as ``field=value`` pairs, or ``"no config"``."""
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config):
        return "no config"
    return ", ".join(f"{field.name}={getattr(config, field.name)!r}" for field in dataclasses.fields(config))
