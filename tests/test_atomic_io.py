import hashlib
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


def test_write_json_writes_non_finite_numbers_as_null_and_notes_where(tmp_path):
    written = atomic_io.write_json(tmp_path / "s.json",
                                   {"a": [1.0, np.nan], "b": {"c": np.float32(np.inf)}, "d": np.arange(2)})
    stored = json.loads((tmp_path / "s.json").read_text())
    assert stored == written
    assert stored["a"] == [1.0, None] and stored["b"] == {"c": None} and stored["d"] == [0, 1]
    assert stored["non_finite_paths"] == ["$.a[1]", "$.b.c"] and stored["non_finite_note"] == atomic_io.NON_FINITE_NOTE
    clean = atomic_io.write_json(tmp_path / "t.json", {"x": 1.5})
    assert clean == {"x": 1.5}


def test_json_safe_converts_numpy_and_lists_replaced_paths():
    cleaned, paths = atomic_io.json_safe([np.float64(2.0), (np.nan, -np.inf), {1: np.int64(3)}])
    assert cleaned == [2.0, [None, None], {"1": 3}] and paths == ["$[1][0]", "$[1][1]"]
    assert isinstance(cleaned[2]["1"], int)


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * 1024 + 7)
    (tmp_path / "blob").write_bytes(data)
    assert atomic_io.sha256_file(tmp_path / "blob", chunk_size=1024) == hashlib.sha256(data).hexdigest()


def test_atomic_path_replaces_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "w.bin"
    with atomic_io.atomic_path(target, suffix=".tmp.bin") as tmp:
        assert tmp.endswith(".tmp.bin") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as handle:
            handle.write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_io.atomic_path(target) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["w.bin"]


def test_temporary_names_are_recognised_and_stale_ones_removed(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_io.atomic_path(tmp_path / "sub" / "a.npz") as tmp:
            open(tmp, "wb").close()
            raise KeyboardInterrupt  # the temporary file is removed on any exception...
    assert os.listdir(tmp_path / "sub") == []
    (tmp_path / "sub" / ".a.npz.x1y2z3_0.tmp").write_bytes(b"left by kill -9")  # ...but not on a kill
    (tmp_path / ".w.weights.h5.abcdefgh.tmp.weights.h5").write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")
    (tmp_path / ".d.new-12").mkdir()
    assert atomic_io.is_temporary(".a.npz.x1y2z3_0.tmp") and not atomic_io.is_temporary("keep.tmp")
    removed = atomic_io.remove_stale(tmp_path)
    assert sorted(os.path.basename(path) for path in removed) == [".a.npz.x1y2z3_0.tmp", ".d.new-12",
                                                                  ".w.weights.h5.abcdefgh.tmp.weights.h5"]
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp", "sub"]


def test_file_hashes_and_changed_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"x")
    (tmp_path / "record.json").write_text("{}")
    hashes = atomic_io.file_hashes(tmp_path, exclude=("record.json",))
    assert hashes == {"d/x.bin": hashlib.sha256(b"x").hexdigest()}
    assert atomic_io.changed_files(tmp_path, hashes) == []
    (tmp_path / "d" / "x.bin").write_bytes(b"y")
    assert atomic_io.changed_files(tmp_path, hashes) == [("d/x.bin", "changed")]
    os.remove(tmp_path / "d" / "x.bin")
    assert atomic_io.changed_files(tmp_path, hashes) == [("d/x.bin", "missing")]


def test_replace_folder_swaps_a_finished_folder_into_place(tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "old.txt").write_text("old")
    fresh = atomic_io.fresh_sibling(tmp_path / "stage")
    assert os.path.basename(fresh) == f".stage.new-{os.getpid()}" and os.listdir(fresh) == []
    with open(os.path.join(fresh, "new.txt"), "w") as handle:
        handle.write("new")
    atomic_io.replace_folder(fresh, tmp_path / "stage")
    assert os.listdir(tmp_path) == ["stage"] and os.listdir(tmp_path / "stage") == ["new.txt"]


def test_folder_lock_refuses_a_second_holder_until_released(tmp_path):
    with atomic_io.folder_lock(tmp_path):
        with pytest.raises(atomic_io.FolderLocked, match=f"pid {os.getpid()}"):
            with atomic_io.folder_lock(tmp_path):
                pass
    with atomic_io.folder_lock(tmp_path):  # released with its file descriptor
        pass
