"""Durable files: the one atomic writer of the package and of the zoo.

A file is written under a temporary name in its folder, synced to disk, renamed over its name,
and the folder synced, so a reader (or a machine back from a power cut) sees the old file or the
whole new one, never an empty or half one."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """``tmp`` (a finished file in ``path``'s folder) synced to disk and renamed to ``path``, then
    the folder synced: what ``write_atomic`` does after writing, for writers that stream into
    ``tmp`` themselves (a download, a safetensors file)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _sync_folder(Path(path).parent)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` into ``path`` (folders created) atomically and durably (the module's docstring);
    the file's mode is 0666 less the umask, as ``open`` makes files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the system lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
