"""What a data-set run leaves in its folder: atomic files, the ``results.jsonl`` index, and one
chunked zarr array of attributions per method.

Every file is written under a temporary name, synced to disk and renamed (``write_atomic``), and
a ``results.jsonl`` line is appended (and synced) only after the files it names are complete, so the JSONL is the
run's index: a result it does not name does not exist, whatever a crash left behind. The
attributions are a zarr array ``[rows, *shape]`` chunked one image per chunk (one file each,
written whole), opened in NumPy with ``zarr.open_array("OUT/gradient/attributions.zarr")[:]``;
a line's ``row`` says which image a row holds.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from jaxplain.errors import InputError
from jaxplain.files import write_atomic as write_atomic  # the one atomic writer (jaxplain.files)


def picture_bytes(rgb: np.ndarray, kind: str = "PNG", **options: Any) -> bytes:
    """``uint8 [H, W, 3]`` (or grayscale ``[H, W, 1]`` / ``[H, W]``) encoded by Pillow as ``kind`` ("PNG", "JPEG")."""
    from PIL import Image

    buf = io.BytesIO()
    a = np.asarray(rgb, np.uint8)
    Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).save(buf, kind, **options)
    return buf.getvalue()


def read_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order; a line that does not parse (the end of a
    line a killed run was writing) is left out. A missing file has none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def repair(path: str | os.PathLike) -> None:
    """Cut a JSONL file back to its last complete line, so the next append starts a line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)


def append_lines(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record and flush them to disk."""
    text = "".join(json.dumps(r) + "\n" for r in records)  # ASCII: any file name survives
    if not text:
        return
    with open(path, "a", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def replace_line(path: str | os.PathLike, key: str, record: dict[str, Any]) -> None:
    """``record`` into the JSONL file at ``path`` in place of the lines with the same ``key``
    value (the file rewritten atomically): one line per key however often it is said."""
    kept = [r for r in read_lines(path) if r.get(key) != record[key]]
    write_atomic(Path(path), "".join(json.dumps(r) + "\n" for r in [*kept, record]).encode("ascii"))


def open_rows(path: str | os.PathLike, shape: tuple[int, ...], dtype: str, rows: int):
    """The zarr array ``[rows, *shape]`` at ``path``, created when missing (one chunk per row),
    and cut or grown to ``rows`` (rows past the last one the index names are left-overs of a
    killed run). An existing array of another shape or dtype is refused."""
    import zarr

    path = Path(path)
    if (path / "zarr.json").exists():
        try:
            arr = zarr.open_array(str(path), mode="r+")
        except Exception as e:  # noqa: BLE001  (zarr's own errors: a damaged or foreign store)
            raise InputError(f"{path}: not a readable zarr array ({e}); move it away or use --overwrite") from None
        if tuple(arr.shape[1:]) != tuple(shape) or str(arr.dtype) != dtype:
            raise InputError(f"{path} holds {arr.dtype} attributions of shape {tuple(arr.shape[1:])}, not {dtype} "
                             f"{tuple(shape)}: use another --out or --overwrite")
        if arr.shape[0] != rows:
            arr.resize((rows, *shape))
        return arr
    path.parent.mkdir(parents=True, exist_ok=True)
    return zarr.create_array(str(path), shape=(rows, *shape), chunks=(1, *shape), dtype=dtype, fill_value=0)


def write_rows(arr, first: int, values: np.ndarray) -> np.ndarray:
    """``values [n, *shape]`` into rows ``first .. first + n`` of ``arr``, growing it. Returns
    ``[n]``: per row, the finite values that the store's dtype turned into ±inf (float16 beyond
    ±65504)."""
    end = first + len(values)
    if arr.shape[0] < end:
        arr.resize((end, *arr.shape[1:]))
    with np.errstate(over="ignore"):  # counted and said by the caller, not NumPy's bare warning
        stored = values.astype(arr.dtype)
    arr[first:end] = stored
    lost = np.isfinite(values) & ~np.isfinite(stored)
    return lost.reshape(len(values), -1).sum(-1)


class Lock:
    """An exclusive lock on ``path`` (``fcntl.flock``), held until ``release``, which removes the
    file: a second run writing into the same folder is refused instead of mixing its rows and
    lines with ours. A file removed by a run releasing it between our open and flock is opened again."""

    def __init__(self, path: str | os.PathLike, what: str):
        import fcntl

        self.path = Path(path)
        while True:
            self.file = open(self.path, "a")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.close()
                raise InputError(f"another jaxplain run is writing {what}; wait for it, or use another --out") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino:
                    return
            except FileNotFoundError:
                pass
            self.file.close()  # we locked a file already released and removed: lock the one in its place

    def release(self) -> None:
        """Remove the file, then let go (a run waiting on it opens a new one)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.file.close()
