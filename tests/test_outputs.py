"""The run folder's files: atomic writes, the JSONL index after a crash, zarr rows, the lock."""

import json

import numpy as np
import pytest
import zarr

from jaxplain.runs import outputs
from jaxplain.errors import InputError


def test_a_half_written_line_is_ignored_then_cut(tmp_path):
    path = tmp_path / "results.jsonl"
    outputs.append_lines(path, [{"a": 1}, {"b": "\udcff odd name"}])  # a file name that is not UTF-8
    with open(path, "a") as f:
        f.write('{"c": 3, "trunc')  # a run killed mid-line
    assert outputs.read_lines(path) == [{"a": 1}, {"b": "\udcff odd name"}]
    outputs.repair(path)
    outputs.append_lines(path, [{"d": 4}])
    assert [json.loads(l) for l in path.read_text().splitlines()] == [{"a": 1}, {"b": "\udcff odd name"}, {"d": 4}]
    assert outputs.read_lines(tmp_path / "none.jsonl") == []


def test_atomic_write_leaves_no_temporary(tmp_path):
    outputs.write_atomic(tmp_path / "sub" / "x.png", outputs.picture_bytes(np.zeros((3, 4, 3), np.uint8)))
    outputs.write_atomic(tmp_path / "sub" / "x.png", b"new")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"] and (tmp_path / "sub" / "x.png").read_bytes() == b"new"


def test_rows_are_cut_to_what_the_index_names(tmp_path):
    path = tmp_path / "attributions.zarr"
    arr = outputs.open_rows(path, (2, 3), "float16", 0)
    outputs.write_rows(arr, 0, np.arange(24, dtype=np.float32).reshape(4, 2, 3))
    again = outputs.open_rows(path, (2, 3), "float16", 2)  # the index names rows 0 and 1 only
    assert again.shape == (2, 2, 3)
    outputs.write_rows(again, 2, np.full((1, 2, 3), -1.0))
    got = zarr.open_array(str(path))[:]
    assert got.dtype == np.float16 and got.shape == (3, 2, 3)
    np.testing.assert_array_equal(got[:2], np.arange(12).reshape(2, 2, 3))
    np.testing.assert_array_equal(got[2], -1)
    with pytest.raises(InputError, match=r"holds float16 attributions of shape \(2, 3\), not float32 \(2, 3\)"):
        outputs.open_rows(path, (2, 3), "float32", 3)


def test_one_writer_per_folder(tmp_path):
    held = outputs.Lock(tmp_path / ".lock", "into out")
    with pytest.raises(InputError, match="another jaxplain run is writing into out"):
        outputs.Lock(tmp_path / ".lock", "into out")
    held.release()
    outputs.Lock(tmp_path / ".lock", "into out").release()  # free again


def test_atomic_write_syncs_the_file_and_its_folder_before_and_after_the_rename(tmp_path, monkeypatch):
    import os
    import stat

    synced, real = [], os.fsync

    def spy(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    outputs.write_atomic(tmp_path / "new" / "x.bin", b"data")
    assert synced[0] == "file" and "folder" in synced  # the bytes, then the rename
    assert (tmp_path / "new" / "x.bin").read_bytes() == b"data"


def test_atomic_write_follows_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        outputs.write_atomic(tmp_path / "x", b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644


def test_a_lock_released_leaves_no_file_and_one_taken_on_a_removed_file_is_taken_again(tmp_path, monkeypatch):
    import fcntl
    import os

    outputs.Lock(tmp_path / ".lock", "into out").release()
    assert not (tmp_path / ".lock").exists()
    real, calls = fcntl.flock, []

    def flock(f, op):  # another run releases (removes) the file between our open and our flock
        calls.append(op)
        if len(calls) == 1:
            (tmp_path / ".lock").unlink()
        return real(f, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    lock = outputs.Lock(tmp_path / ".lock", "into out")
    assert os.stat(tmp_path / ".lock").st_ino == os.fstat(lock.file.fileno()).st_ino  # the file others see
    lock.release()


def test_values_beyond_float16_are_counted_without_numpys_warning(tmp_path):
    import warnings

    arr = outputs.open_rows(tmp_path / "a.zarr", (2,), "float16", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's "overflow encountered in cast" would raise here
        lost = outputs.write_rows(arr, 0, np.array([[1e6, 1.0], [2.0, -7e4]], np.float32))
    np.testing.assert_array_equal(lost, [1, 1])
    np.testing.assert_array_equal(arr[:], np.array([[np.inf, 1.0], [2.0, -np.inf]], np.float16))
