"""jaxplain.files: the one atomic writer, used by the folder run, evaluate and the zoo's weight files."""

import os
import stat

import numpy as np
import pytest

from jaxplain import files


@pytest.fixture
def synced(monkeypatch):
    """What ``os.fsync`` was called on, in order: ``"file"`` or ``"folder"``."""
    seen, real = [], os.fsync

    def spy(fd):
        seen.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_commit_syncs_the_file_renames_and_syncs_the_folder(tmp_path, synced):
    tmp = tmp_path / ".x.tmp"
    tmp.write_bytes(b"data")
    files.commit(tmp, tmp_path / "x")
    assert synced == ["file", "folder"] and (tmp_path / "x").read_bytes() == b"data" and not tmp.exists()


def test_the_zoos_weight_files_are_written_durably(tmp_path, synced):
    """``save_params`` (and the download, through the same ``commit``) never leaves a renamed file unsynced."""
    from safetensors.numpy import load_file

    from jaxplain.models.weights import save_params

    save_params({"conv": {"kernel": np.ones((2, 2), np.float32)}}, tmp_path / "w.safetensors", "keras")
    assert synced[-2:] == ["file", "folder"]
    assert load_file(tmp_path / "w.safetensors")["conv/kernel"].sum() == 4
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
