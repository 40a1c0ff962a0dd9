"""Loading and saving the published ``.npz`` checkpoints (vit_jax ViT and Mixer, BiT ResNetV2).

Generic over the model protocol: ``model.checkpoint_variables()`` maps every release key to a variable of the
release shape, ``model.checkpoint_head_keys`` names the classifier head, and
``model.adapt_checkpoint_array(key, array)`` adapts an array first (ViT resamples position embeddings).
"""

import warnings

import numpy as np

from vitcnn_tf import atomic_io


def load_npz(model, path):
    """Loads the ``.npz`` checkpoint at ``path`` into ``model`` (all variables, or none on error).

    Raises ``ValueError`` naming the keys (and both shapes) of missing, unexpected or mis-shaped arrays, and
    the file for a pickled (object) array. Head arrays (``model.checkpoint_head_keys``) whose shape differs,
    i.e. another class count, are skipped with a warning, keeping the model's fresh head. Arrays are cast to
    the variable dtype. Returns ``model``.
    """
    variables = model.checkpoint_variables()
    arrays = _read_npz(path)
    missing = sorted(set(variables) - set(arrays))
    unexpected = sorted(set(arrays) - set(variables))
    if missing or unexpected:
        raise ValueError(
            f"load_npz: {path} does not match {type(model).__name__}'s checkpoint keys:\n"
            + _describe_keys("missing from the checkpoint", missing, lambda key: tuple(variables[key].shape))
            + _describe_keys("unexpected in the checkpoint", unexpected, lambda key: arrays[key].shape)
        )
    head_keys = set(model.checkpoint_head_keys)
    to_assign, skipped_head, mismatched = {}, [], []
    for key, variable in variables.items():
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
            mismatched.append(f"  {key!r}: checkpoint shape {array.shape}, model expects {expected}")
    if mismatched:
        raise ValueError(f"load_npz: {path} has arrays of the wrong shape:\n" + "\n".join(mismatched))
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
    """{key -> array} of an ``.npz`` file, read with ``allow_pickle=False``."""
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as error:  # a pickle file, or a single pickled .npy array
        raise ValueError(f"load_npz: {path} holds pickled data, which is refused for safety ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"load_npz: {path} is a single .npy array, not an .npz archive of named arrays")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                raise ValueError(
                    f"load_npz: {path}: array {key!r} is a pickled (object) array, which is refused for safety; "
                    "checkpoints must hold plain numeric arrays"
                ) from error
    return arrays


def _describe_keys(what, keys, shape_of):
    if not keys:
        return ""
    return f"  {len(keys)} {what}: " + ", ".join(f"{key!r} {shape_of(key)}" for key in keys) + "\n"
