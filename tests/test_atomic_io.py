import json
import os

import numpy as np
import pytest

from vitcnn_tf import atomic_io


def test_write_json_and_npz_round_trip(tmp_path):
    atomic_io.write_json(tmp_path / "a" / "r.json", {"x": np.float64(1.5), "v": np.arange(3)})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 1.5, "v": [0, 1, 2]}
    atomic_io.save_npz(tmp_path / "m.npz", m=np.eye(2))
    with np.load(tmp_path / "m.npz") as data:
        np.testing.assert_array_equal(data["m"], np.eye(2))


def test_failed_write_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    atomic_io.write_json(target, {"ok": 1})
    with pytest.raises(TypeError, match="cannot encode"):
        atomic_io.write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_atomic_open_rejects_read_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_io.atomic_open(tmp_path / "x", "r"):
            pass


def test_result_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_io.write_json(tmp_path / "r.json", {})
    finally:
        os.umask(mask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
