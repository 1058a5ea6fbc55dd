"""Joining a multi-process run: each process writes ``results.pN.jsonl`` and
``METHOD/attributions.pN.zarr``; process 0 moves them into ``results.jsonl`` and
``METHOD/attributions.zarr`` at the end (and ``jaxplain report`` after a crash)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxplain.runs import outputs
from jaxplain.runs.record import RESULTS, STORE, next_rows


def join(out: Path) -> int:
    """Move a multi-process run's parts into ``results.jsonl`` and the per-method stores; returns
    the results moved. Safe to repeat after a crash: a result already in ``results.jsonl`` (same
    path, method and content) is not moved twice."""
    import zarr

    parts = sorted(out.glob("results.p*.jsonl"))
    if not parts:
        return 0
    main = out / RESULTS
    outputs.repair(main)
    records = outputs.read_lines(main)
    done = {_key(r) for r in records}
    rows = next_rows(records)
    sources: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    moved = []
    for part in parts:
        for r in outputs.read_lines(part):
            if _key(r) in done:
                continue
            if r["store"] not in sources:
                sources[r["store"]] = zarr.open_array(str(out / r["store"]), mode="r")
            value = np.asarray(sources[r["store"]][int(r["row"])])
            store = f"{r['method']}/{STORE}.zarr"
            row = rows.get(store, 0)
            if store not in targets:
                targets[store] = outputs.open_rows(out / store, value.shape, str(value.dtype), row)
            outputs.write_rows(targets[store], row, value[None])
            moved.append({**r, "store": store, "row": row})
            rows = next_rows(moved[-1:], rows)
            done.add(_key(r))
    outputs.append_lines(main, moved)
    for part in parts:
        part.unlink()
    for store in out.glob(f"*/{STORE}.p*.zarr"):
        shutil.rmtree(store, ignore_errors=True)
    return len(moved)


def _key(r: dict[str, Any]) -> tuple:
    return r.get("path"), r.get("method"), r.get("bytes"), r.get("modified")
