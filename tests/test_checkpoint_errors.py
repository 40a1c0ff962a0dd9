"""load_npz on damaged or foreign files: each error names the file (and key) and says what is wrong."""

import io
import zipfile

import numpy as np
import pytest

import helpers
from vitcnn_tf.models import load_npz, save_npz


@pytest.fixture(scope="module")
def model():
    return helpers.tiny_vit(hidden_size=8, mlp_dim=12, num_layers=1)


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / "model.npz"
    save_npz(model, path)
    return path


def _load_error(model, path):
    before = {key: v.numpy().copy() for key, v in model.checkpoint_variables().items()}
    with pytest.raises(ValueError) as error:
        load_npz(model, path)
    for key, variable in model.checkpoint_variables().items():
        np.testing.assert_array_equal(variable.numpy(), before[key], err_msg=f"{key} changed by a failed load")
    message = str(error.value)
    assert str(path) in message
    return message


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def test_truncated_npz_names_the_file_and_says_truncated(model, saved):
    """It used to raise ``zipfile.BadZipFile: File is not a zip file`` without the path."""
    data = saved.read_bytes()
    saved.write_bytes(data[:len(data) // 2])
    message = _load_error(model, saved)
    assert "is a truncated or damaged .npz (zip) archive" in message


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4096),
                                     b"embedding/kernel = [[0.1, 0.2], [0.3, 0.4]]\n"], ids=["random-bytes", "text"])
def test_random_bytes_or_text_are_not_a_numpy_archive_rather_than_pickled_data(model, tmp_path, content):
    """They used to be called "pickled data"."""
    path = tmp_path / "weights.npz"
    path.write_bytes(content)
    message = _load_error(model, path)
    assert "is not a NumPy .npz archive: it starts with" in message
    assert "pickled" not in message


def test_empty_file_is_not_a_numpy_archive(model, tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert "is not a NumPy .npz archive: the file is empty" in _load_error(model, path)


def test_single_npy_array_is_not_an_archive(model, tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros(3))
    assert "it is a single .npy array, not an .npz archive" in _load_error(model, path)


def test_corrupt_npy_header_inside_a_valid_zip_names_the_key(model, tmp_path):
    """It used to be called a "pickled (object) array"."""
    member = bytearray(_npy_bytes(np.zeros((2, 3), np.float32)))
    start = member.index(b"{")
    member[start:start + 8] = b"@#garbag"
    path = tmp_path / "corrupt_header.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cls.npy", bytes(member))
    message = _load_error(model, path)
    assert "array 'cls' has a corrupt .npy header" in message
    assert "pickled" not in message


def test_header_bytes_overwritten_in_a_saved_checkpoint_is_a_corrupt_header(model, saved):
    data = bytearray(saved.read_bytes())
    start = data.index(b"{'descr'")  # the first member's .npy header, stored uncompressed by np.savez
    data[start:start + 8] = b"\x00" * 8
    saved.write_bytes(bytes(data))
    first_key = zipfile.ZipFile(io.BytesIO(bytes(data))).namelist()[0][:-len(".npy")]
    assert f"array {first_key!r} has a corrupt .npy header" in _load_error(model, saved)


def test_truncated_array_data_inside_a_valid_zip_names_the_key(model, tmp_path):
    member = _npy_bytes(np.zeros((4, 8), np.float32))
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cls.npy", member[:-20])
    assert "array 'cls' has truncated or damaged data" in _load_error(model, path)


def test_zip_member_that_is_not_an_npy_array(model, tmp_path):
    path = tmp_path / "foreign.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "member 'readme.txt' is not a .npy array" in _load_error(model, path)
