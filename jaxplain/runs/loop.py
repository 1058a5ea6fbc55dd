"""A data-set run: stream images from disk (Grain), explain them with several methods, write every
result once, resume where a run stopped.

``run`` is what ``jaxplain explain`` does after checking its arguments:

- Grain decodes and resizes the pictures in background threads with a bounded prefetch, each
  image once for all methods; in a multi-process run ``ShardByJaxProcess`` gives each process
  every ``process_count``-th input.
- Each batch: one forward pass (top-5 classes), then each method's compiled call (the last batch
  padded, so one program per method).
- Writer threads (at the lowest priority) draw each map over the original picture at its own size
  (carried back through the model's resize or crop), write the PNG overlay and thumbnails atomically, then append the
  image's ``results.jsonl`` line; the attributions go to one zarr array per method
  (``jaxplain.runs.outputs``).
- A rerun skips every (image, method) its ``results.jsonl`` names; ``stop()`` (a signal) ends the
  run after the batch in flight, whose results are written.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from jaxplain import registry, viz
from jaxplain.runs import outputs
from jaxplain.errors import InputError, JaxplainError
from jaxplain.io import load_for_model
from jaxplain.marks import output_of
from jaxplain.engine.runner import explain, predict
from jaxplain.types import Model

RESULTS = "results.jsonl"
RUN = "run.json"
THUMBS = "thumbs"
PICTURES = "pictures"  # thumbs/pictures/: the original pictures' thumbnails
STORE = "attributions"
# the overlays' zlib settings: Z_RLE, "almost as fast as Z_HUFFMAN_ONLY, but better compression for PNG image
# data" (zlib's manual); measured on 0.8-megapixel overlays: a quarter of Pillow's default's time, files no larger
PNG = {"compress_level": 1, "compress_type": zlib.Z_RLE}
WRITER_NICE = 19  # see _background


class Job(NamedTuple):
    """One method of a run: its folder ``label``, registered ``name``, function, resolved
    settings, the settings as given (``spec``, JSON), its output kind and whether it takes a key."""

    label: str
    name: str
    fn: Callable
    settings: dict[str, Any]
    spec: dict[str, Any]
    drawn_as: str
    random: bool


def jobs(specs: Sequence[str], seed: int) -> list[Job]:
    """``--method`` arguments as jobs, checked without a model: names, settings, drawable output;
    a repeated name gets the folder ``name-2``, ``name-3``, ..."""
    made: list[Job] = []
    for spec in specs:
        fn, given = registry.parse(spec)
        settings = registry.resolve(fn, dict(given))
        drawn_as = output_of(fn, settings)
        if drawn_as == "layer":
            raise InputError(f"--method {fn.__name__} returns a layer's activations, which cannot be drawn over the "
                             "image: use it from Python (jaxplain.explain)")
        given = {k: _json(v) for k, v in given.items()}
        random = "key" in registry.settings_of(fn)
        if random:
            given["key"] = settings.pop("key", seed)
        if any(j.name == fn.__name__ and j.spec == given for j in made):
            raise InputError(f"--method {spec} is given twice")
        same = sum(j.name == fn.__name__ for j in made)
        label = fn.__name__ if not same else f"{fn.__name__}-{same + 1}"
        made.append(Job(label, fn.__name__, fn, settings, given, drawn_as, random))
    return made


def _json(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return repr(value)


def configuration(model: dict[str, Any], jobs_: Sequence[Job], *, target: Any, dtype: str, reduce: str,
                  colormaps: dict[str, str]) -> dict[str, Any]:
    """What ``run.json`` records: everything a result depends on."""
    return {"version": 1, "model": model, "target": target, "dtype": dtype, "reduce": reduce, "colormaps": colormaps,
            "methods": [{"label": j.label, "name": j.name, "settings": j.spec} for j in jobs_]}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    said = []
    for k in ("model", "target", "dtype", "reduce", "colormaps"):
        if old.get(k) != new.get(k):
            said.append(f"{k} {old.get(k)!r} (this run: {new.get(k)!r})")
    before = {m["label"]: m for m in old.get("methods", [])}
    for m in new["methods"]:
        was = before.get(m["label"])
        if was is not None and was != m:
            said.append(f"{m['label']} with settings {was['settings']} (this run: {m['settings']})")
    return said


def prepare(out: Path, config: dict[str, Any], *, overwrite: bool, writer: bool) -> dict[str, Any]:
    """Check this run against the results already in ``out``; with ``overwrite``, remove them
    first. Returns the run's record (old methods kept) and, when ``writer`` (process 0), writes it."""
    import json
    import shutil

    path = out / RUN
    try:
        old = json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a jaxplain run record ({e}); use another --out or --overwrite") from None
    if old is not None and overwrite:
        if writer:
            labels = {m["label"] for m in old.get("methods", [])} | {m["label"] for m in config["methods"]}
            for name in [*labels, THUMBS, "report"]:
                shutil.rmtree(out / name, ignore_errors=True)
            for p in [*out.glob("results*.jsonl"), out / "index.html", path]:
                p.unlink(missing_ok=True)
        old = None
    if old is not None:
        said = _differences(old, config)
        if said:
            raise InputError(f"{out} holds results made with other settings: {'; '.join(said)}. Use another --out, "
                             "or --overwrite to replace them")
        known = {m["label"] for m in config["methods"]}
        config = {**config, "methods": [*config["methods"], *[m for m in old["methods"] if m["label"] not in known]]}
    if writer:
        outputs.write_atomic(path, json.dumps(config, indent=1).encode())
    return config


@dataclass
class Counts:
    """Images of a run: explained now, skipped (already complete), failed; whether a signal stopped it."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Item(NamedTuple):
    path: Path
    name: str   # output name below each method's folder, without suffix
    todo: tuple[str, ...]  # labels still to compute


def _files(process: int, count: int) -> tuple[str, str]:
    """This process's results file and store name."""
    return (RESULTS, STORE) if count == 1 else (f"results.p{process}.jsonl", f"{STORE}.p{process}")


def _load(model: Model, item: Item):
    try:
        return item, load_for_model(item.path, model)
    except JaxplainError as e:
        return item, str(e)
    except MemoryError:
        return item, f"{item.path}: not enough memory to decode it"


def _stream(model: Model, items: Sequence[Item], prefetch: int, threads: int):
    """``(item, Loaded | error message)`` in order, decoded by ``threads`` Grain threads ahead."""
    import grain

    ds = grain.MapDataset.source(list(items)).map(lambda it: _load(model, it))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))


def my_items(files: Sequence[Path], names: Sequence[str], labels: Sequence[str], done: set[tuple[str, str]]
             ) -> tuple[list[Item], int]:
    """This process's share of the inputs (Grain's ``ShardByJaxProcess``: every ``count``-th
    input from the process's index, over the whole sorted list) that still need a method, and how
    many of its share are complete."""
    import grain

    shard = grain.sharding.ShardByJaxProcess()
    items, complete = [], 0
    for path, name in list(zip(files, names))[shard.shard_index :: shard.shard_count]:
        key = os.path.realpath(path)
        todo = tuple(label for label in labels if (key, label) not in done)
        if todo:
            items.append(Item(Path(path), name, todo))
        else:
            complete += 1
    return items, complete


def completed(out: Path) -> tuple[set[tuple[str, str]], dict[str, int]]:
    """``(path, label)`` pairs every results file in ``out`` names, and per store the number of
    rows its lines use (the next free row)."""
    done, rows = set(), {}
    for f in sorted(out.glob("results*.jsonl")):
        for r in outputs.read_lines(f):
            try:
                done.add((r["path"], r["method"]))
                rows[r["store"]] = max(rows.get(r["store"], 0), int(r["row"]) + 1)
            except (KeyError, TypeError, ValueError):
                continue
    return done, rows


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of ``logits [..., K]`` (float64 in, float64 out)."""
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line every ``every`` seconds (and at the end)."""

    def __init__(self, total: int, counts: Counts, every: float = 10.0):
        self.total, self.counts, self.every, self.start, self.last, self.seen = total, counts, every, time.time(), 0.0, 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, desc="explaining")

    def say(self, line: str) -> None:
        """A result's line on stdout; a failure's (``jaxplain: failed ...``) on stderr."""
        stream = sys.stderr if line.startswith("jaxplain:") else sys.stdout
        if self.bar is not None:
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def update(self, n: int) -> None:
        self.seen += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(failed=self.counts.failed, refresh=False)
            return
        now = time.time()
        if now - self.last >= self.every or self.seen >= self.total:
            self.last = now
            rate = self.seen / max(now - self.start, 1e-9)
            left = (self.total - self.seen) / rate if rate > 0 else float("inf")
            eta = f"{int(left // 60)}m{int(left % 60):02d}s" if np.isfinite(left) else "?"
            print(f"jaxplain: {self.seen}/{self.total} images, {rate:.2f} images/s, {self.counts.failed} failed, "
                  f"about {eta} left", file=sys.stderr, flush=True)

    def calls(self, label: str, done: int, total: int) -> None:
        """Within a batch: ``label``'s explain has made ``done`` of its ``total`` compiled calls
        (one per chunk on the CPU), so a long batch shows it is moving."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{label} {done}/{total} calls", refresh=True)
            return
        now = time.time()
        if now - self.last >= self.every:
            self.last = now
            print(f"jaxplain: {self.seen}/{self.total} images, {label}: {done}/{total} calls of this batch",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _background() -> None:
    """A writer thread's start (Linux): the lowest priority for this thread alone, so that drawing
    and encoding use the time XLA's threads leave idle instead of stalling them. Measured on 2 busy
    cores, VGG16 gradient at batch 8: the folder run at 0.98-1.04 of the kernel's images/s, against
    0.89-0.92 at the default priority (``python -m benchmarks.folder_run``). Where other processes
    leave them no time, the main thread does the writes no writer has started (``_finish``)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        except OSError:
            pass


def _finish(batch: list[tuple[Future, tuple]]) -> None:
    """Wait for a batch's writes, doing those no writer has started on this (normal-priority)
    thread: low-priority writers on a machine busy with other work cannot stall the run."""
    for future, (fn, *args) in batch:
        if future.cancel():
            fn(*args)
        else:
            future.result()


def _record(item: Item, job: Job, target: int, top: list[dict[str, Any]], size: tuple[int, int], store: str, row: int,
            signed: bool, seconds: float, process: int) -> dict[str, Any]:
    return {"input": str(item.path), "path": os.path.realpath(item.path), "method": job.label, "name": job.name,
            "settings": job.spec, "target": int(target), "top5": top, "size": [int(size[0]), int(size[1])],
            "overlay": f"{job.label}/{item.name}.png", "thumb": f"{THUMBS}/{job.label}/{item.name}.jpg",
            "picture": f"{THUMBS}/{PICTURES}/{item.name}.jpg", "store": f"{job.label}/{store}.zarr", "row": int(row),
            "signed": bool(signed), "seconds": round(float(seconds), 6), "process": process}


def _draw_and_record(out: Path, results: Path, item: Item, loaded, done: list[tuple[Job, np.ndarray, dict]],
                     failures: list[str], reduce: str, colormaps: dict[str, str], counts: Counts, say: Callable[[str], None]) -> None:
    """The writer threads' work for one image: thumbnails and overlays (atomic), then its lines."""
    try:
        outputs.write_atomic(out / THUMBS / PICTURES / f"{item.name}.jpg",
                             outputs.picture_bytes(viz.thumbnail(loaded.original), "JPEG", quality=88))
        lines = []
        for job, attribution, record in done:
            m = viz.as_map(attribution, job.drawn_as, reduce)
            signed = bool(np.min(m) < 0)
            picture = viz.overlay(loaded.original, m, box=loaded.box, signed=signed,
                                  cmap=colormaps["signed" if signed else "unsigned"])
            outputs.write_atomic(out / record["overlay"], outputs.picture_bytes(picture, **PNG))
            outputs.write_atomic(out / record["thumb"], outputs.picture_bytes(viz.thumbnail(picture), "JPEG", quality=88))
            lines.append({**record, "signed": signed})
    except (OSError, JaxplainError) as e:
        with counts.lock:
            counts.failed += 1
        what = f"{e.strerror or e} ({e.filename})" if isinstance(e, OSError) else str(e)
        say(f"jaxplain: failed {item.path}: could not write its results: {what}")
        return
    with counts.lock:
        outputs.append_lines(results, lines)
        if failures:
            counts.failed += 1
        else:
            counts.done += 1
    for failure in failures:
        say(f"jaxplain: failed {item.path} with {failure}")
    if not lines:
        return
    top = lines[0]["top5"][0] if lines[0]["top5"] else None
    best = f"top class {top['name']} (p={top['p']:.3f}); " if top else ""
    say(f"{item.path}: {best}explained class {lines[0]['target']} with {', '.join(l['method'] for l in lines)}")


def run(model: Model, files: Sequence[Path], names: Sequence[str], jobs_: Sequence[Job], *, out: Path,
        config: dict[str, Any], target: Any, class_names: Sequence[str] | None, batch_size: int = 8,
        precision: str | None = None, stop: Callable[[], bool] = lambda: False, threads: int | None = None,
        writers: int = 2) -> Counts:
    """Explain ``files`` (output ``names``) with every job, writing into ``out`` (checked and
    prepared by ``prepare``); returns the counts of this process's images."""
    import jax

    process, count = jax.process_index(), jax.process_count()
    results_name, store = _files(process, count)
    results = out / results_name
    outputs.repair(results)
    done, rows = completed(out)
    labels = [j.label for j in jobs_]
    items, complete = my_items(files, names, labels, done)
    counts = Counts(skipped=complete)
    if not items:
        return counts
    batch_size = min(batch_size, len(items))  # a short run pads no batch beyond its images
    dtype, reduce, colormaps = config["dtype"], config["reduce"], config["colormaps"]
    arrays: dict[str, Any] = {}
    next_row = {j.label: rows.get(f"{j.label}/{store}.zarr", 0) for j in jobs_}
    progress = Progress(len(items), counts)
    threads = threads or min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="jaxplain-writer", initializer=_background)
    pending: list[list[Future]] = []

    def batch_of(group: list[tuple[Item, Any]]) -> None:
        images = np.stack([loaded.image for _, loaded in group])
        x = model.preprocess(images)
        logits = np.asarray(predict(model, x, batch_size=batch_size), np.float64)
        probs = softmax(logits)
        targets = logits.argmax(-1) if target == "predicted" else np.full(len(group), int(target))
        tops = []
        for p in probs:
            best = np.argsort(-p)[:5]
            tops.append([{"class": int(c), "name": class_names[c] if class_names else str(int(c)), "p": round(float(p[c]), 6)}
                         for c in best])
        per_image: list[list[tuple[Job, np.ndarray, dict]]] = [[] for _ in group]
        failures: list[list[str]] = [[] for _ in group]
        for job in jobs_:
            need = [k for k, (item, _) in enumerate(group) if job.label in item.todo]
            if not need:
                continue
            extra = {}
            if job.random:
                ids = np.array([zlib.crc32(os.path.realpath(group[k][0].path).encode()) for k in need], np.uint32)
                seed = jax.random.key(job.spec["key"])
                extra = {"key": jax.vmap(lambda i: jax.random.fold_in(seed, i))(ids)}
            start = time.perf_counter()
            try:
                attr = explain(model, x[need], targets[need], job.fn, batch_size=batch_size, precision=precision,
                               progress=functools.partial(progress.calls, job.label), **job.settings, **extra)
            except JaxplainError as e:  # a method that refuses these images: the others go on
                for k in need:
                    failures[k].append(f"{job.label}: {e}")
                continue
            attr = np.asarray(attr[0] if isinstance(attr, tuple) else attr)
            seconds = (time.perf_counter() - start) / len(need)
            if job.label not in arrays:
                arrays[job.label] = outputs.open_rows(out / job.label / f"{store}.zarr", attr.shape[1:], dtype,
                                                      next_row[job.label])
            first = next_row[job.label]
            outputs.write_rows(arrays[job.label], first, attr)
            next_row[job.label] += len(need)
            for r, (k, a) in enumerate(zip(need, attr)):
                item, loaded = group[k]
                record = _record(item, job, targets[k], tops[k], loaded.original.shape[:2], store, first + r, False,
                                 seconds, process)
                per_image[k].append((job, a, record))
        if len(pending) >= 2:  # at most two batches drawn behind the one computed
            _finish(pending.pop(0))
        tasks = [(_draw_and_record, out, results, item, loaded, per_image[k], failures[k], reduce, colormaps, counts,
                  progress.say) for k, (item, loaded) in enumerate(group)]
        pending.append([(pool.submit(*task), task) for task in tasks])
        progress.update(len(group))

    try:
        group: list[tuple[Item, Any]] = []
        for item, loaded in _stream(model, items, prefetch=2 * batch_size, threads=threads):
            if isinstance(loaded, str):
                with counts.lock:
                    counts.failed += 1
                progress.say(f"jaxplain: failed {loaded}")
                progress.update(1)
                continue
            group.append((item, loaded))
            if len(group) == batch_size:
                batch_of(group)
                group = []
                if stop():
                    counts.stopped = True
                    break
        if group and not counts.stopped:
            batch_of(group)
    finally:
        for batch in pending:
            _finish(batch)
        pool.shutdown(wait=True)
        progress.close()
    return counts


def join(out: Path) -> int:
    """Move a multi-process run's parts (``results.pN.jsonl``, ``METHOD/attributions.pN.zarr``)
    into ``results.jsonl`` and ``METHOD/attributions.zarr``; returns the results moved. Safe to
    repeat after a crash: a result already in ``results.jsonl`` is not moved twice."""
    import shutil

    import zarr

    parts = sorted(out.glob("results.p*.jsonl"))
    if not parts:
        return 0
    main = out / RESULTS
    outputs.repair(main)
    done, rows = set(), {}
    for r in outputs.read_lines(main):
        done.add((r.get("path"), r.get("method")))
        if "store" in r and "row" in r:
            rows[r["store"]] = max(rows.get(r["store"], 0), int(r["row"]) + 1)
    sources: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    moved = []
    for part in parts:
        for r in outputs.read_lines(part):
            if (r.get("path"), r.get("method")) in done:
                continue
            if r["store"] not in sources:
                sources[r["store"]] = zarr.open_array(str(out / r["store"]), mode="r")
            value = np.asarray(sources[r["store"]][int(r["row"])])
            store = f"{r['method']}/{STORE}.zarr"
            row = rows.get(store, 0)
            if store not in targets:
                targets[store] = outputs.open_rows(out / store, value.shape, str(value.dtype), row)
            outputs.write_rows(targets[store], row, value[None])
            rows[store] = row + 1
            moved.append({**r, "store": store, "row": row})
            done.add((r.get("path"), r.get("method")))
    outputs.append_lines(main, moved)
    for part in parts:
        part.unlink()
    for store in out.glob(f"*/{STORE}.p*.zarr"):
        shutil.rmtree(store, ignore_errors=True)
    return len(moved)
