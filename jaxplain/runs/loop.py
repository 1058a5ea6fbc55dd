"""A data-set run's streaming loop: stream images from disk (Grain), explain them with several
methods, write every result once.

``run`` is what ``jaxplain explain`` does after checking its arguments (``record.prepare``):

- Grain decodes and resizes the pictures in background threads with a bounded prefetch, each
  image once for all methods; in a multi-process run ``ShardByJaxProcess`` gives each process
  every ``process_count``-th input.
- Each batch: one forward pass (top-5 classes, at the run's precision), then each method's
  compiled call (the last batch padded, so one program per method).
- Writer threads (at the run's own priority, at most one batch behind the model) draw each map
  over the original picture at its own size (carried back through the model's resize or crop),
  write the PNG overlay and thumbnails atomically, then append the image's ``results.jsonl``
  line; the attributions go to one zarr array per method (``jaxplain.runs.outputs``).
- A rerun skips every (image, method) its ``results.jsonl`` names with the file's current size
  and time (``jaxplain.runs.record``); ``stop()`` (a signal) ends the run after the batch in
  flight, whose writes all finish (the last batch's too); only images not yet computed are left
  for the rerun.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import baselines, registry, viz
from jaxplain.engine.precision import with_precision
from jaxplain.engine.runner import explain, predict
from jaxplain.engine.settings import resolve_for_model
from jaxplain.errors import InputError, JaxplainError
from jaxplain.io import converted_line, load_for_model, picture_mode
from jaxplain.marks import uses_target
from jaxplain.runs import outputs, record
from jaxplain.runs.progress import Progress
from jaxplain.runs.record import PICTURES, THUMBS, Job
from jaxplain.types import Model

# the overlays' zlib settings: Z_RLE, "almost as fast as Z_HUFFMAN_ONLY, but better compression for PNG image
# data" (zlib's manual); measured on 0.8-megapixel overlays: a quarter of Pillow's default's time, files no larger
PNG = {"compress_level": 1, "compress_type": zlib.Z_RLE}
BEHIND = 1  # batches the writers may be behind the model: bounds memory and the wait when a run stops


@dataclass
class Counts:
    """Images of a run: explained now (``redone``: of them, changed since their results), skipped
    (already complete), failed (a method or a write), unreadable (could not be decoded); whether
    a signal stopped it."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    unreadable: int = 0
    redone: int = 0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Item(NamedTuple):
    path: Path
    name: str   # output name below each method's folder, without suffix
    todo: tuple[str, ...]  # labels still to compute
    content: tuple[int, int] | None  # (size, mtime_ns) when listed: the resume key
    changed: bool  # some result exists for an earlier version of the file


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


def my_items(files: Sequence[Path], names: Sequence[str], labels: Sequence[str], done: record.Done
             ) -> tuple[list[Item], int]:
    """This process's share of the inputs (Grain's ``ShardByJaxProcess``: every ``count``-th
    input from the process's index, over the whole sorted list) that still need a method (none
    yet, or one made from an earlier version of the file), and how many of its share are complete."""
    import grain

    shard = grain.sharding.ShardByJaxProcess()
    items, complete = [], 0
    for path, name in list(zip(files, names))[shard.shard_index :: shard.shard_count]:
        key, content = os.path.realpath(path), record.fingerprint(path)
        state = {label: record.is_complete(done, key, label, content) for label in labels}
        todo = tuple(label for label in labels if not state[label])
        if todo:
            items.append(Item(Path(path), name, todo, content, any(v is None for v in state.values())))
        else:
            complete += 1
    return items, complete


def check_jobs(model: Model, jobs_: Sequence[Job], image_shape: tuple[int, int, int]) -> None:
    """Every job's settings against the model, before any image: layers and neurons, then the
    method traced (``jax.eval_shape``, nothing computed) on one image, so that a value it refuses
    (``steps=0``) is one error now, not a failure per image."""
    for job in jobs_:
        _trace(job, model, resolve_for_model(job.fn, model, image_shape, job.settings), image_shape)


def _trace(job: Job, model: Model, settings: dict[str, Any], image_shape: tuple[int, int, int]) -> None:
    """``job``'s method traced on one image of ``model`` (``jax.eval_shape``, nothing computed):
    a value it refuses is an ``InputError`` naming the method; any other failure is left to the
    run (settings only a batch completes, such as segment maps, are checked per batch)."""
    extra = {"key": jax.random.key(0)} if job.random else {}
    try:
        jax.eval_shape(lambda p, x: job.fn(model.apply, p, x, jnp.int32(0), **settings, **extra), model.params,
                       jax.ShapeDtypeStruct(image_shape, jnp.float32))
    except JaxplainError as e:
        raise InputError(f"--method {job.label}: {e}") from None
    except Exception:  # noqa: BLE001
        pass


# What a setting means only on a real network (a layer, a neuron of it, its attention maps, LRP's rules
# by layer name and its input's bounds): left to ``check_jobs`` once the model is loaded;
# ``check_values`` checks the rest before.
MODEL_SETTINGS = ("layer", "neuron", "attention", "grid", "attribute_to", "rules", "box")
OPTIONAL = ("layer", "attribute_to", "rules", "box")  # a method with these still runs on the stand-in without them
STAND_IN_SHAPE = (224, 224, 3)  # no model of the zoo takes a larger picture: a window or a grid that fits the
# real model's input fits this one too, so nothing valid is refused here


def stand_in(image_shape: tuple[int, int, int] = STAND_IN_SHAPE, classes: int = 10) -> Model:
    """A one-conv ReLU network of ``image_shape`` (layer ``"conv"``, taps and ReLU swap as the
    ``Model`` contract asks): what methods are traced on before the real model loads."""
    c = image_shape[-1]

    def apply(params: Any, x: Any, taps: Any = None, relu: Any = None) -> tuple[Any, dict[str, Any]]:
        a = jax.lax.conv_general_dilated(x[None], params["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
        a = (relu or jax.nn.relu)(a + (taps or {}).get("conv", 0.0))
        return a.mean((0, 1)) @ params["dense"], {"conv": a}

    params = {"kernel": jnp.full((3, 3, c, 4), 0.1, jnp.float32), "dense": jnp.ones((4, classes), jnp.float32)}
    return Model(apply, params, ("conv",), preprocess=lambda u: np.asarray(u, np.float32) / 255.0,
                 input_size=image_shape[:2], name="stand-in")


def check_values(jobs_: Sequence[Job]) -> None:
    """Every job's setting values, before the model loads: each method traced (``jax.eval_shape``,
    nothing computed) on a ``stand_in`` network, its settings that name parts of the real network
    (``MODEL_SETTINGS``) left out, so that ``integrated_gradients(steps=0)`` is refused before a
    model is read. Methods that need such a setting (a neuron, attention maps) wait for
    ``check_jobs``."""
    model = stand_in()
    for job in jobs_:
        if any(k in registry.settings_of(job.fn) and k not in OPTIONAL for k in MODEL_SETTINGS):
            continue
        settings = {k: v for k, v in job.settings.items() if k not in MODEL_SETTINGS}
        try:
            settings = resolve_for_model(job.fn, model, STAND_IN_SHAPE, settings)
        except JaxplainError as e:
            raise InputError(f"--method {job.label}: {e}") from None
        except Exception:  # noqa: BLE001  (what only the real model or a batch completes: checked after loading)
            continue
        _trace(job, model, settings, STAND_IN_SHAPE)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of ``logits [..., K]`` (float64 in, float64 out)."""
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _finish(batch: list[tuple[Future, tuple]], stopping: bool = False) -> None:
    """Wait for a batch's writes, doing those no writer has started on this thread (or, when
    ``stopping``, leaving them to the rerun): writers busy elsewhere cannot stall the run."""
    for future, (fn, *args) in batch:
        if future.cancel():
            if not stopping:
                fn(*args)
        else:
            future.result()


def _record(item: Item, job: Job, target: int, top: list[dict[str, Any]], size: tuple[int, int], store: str, row: int,
            signed: bool, seconds: float, process: int) -> dict[str, Any]:
    size_, modified = item.content if item.content is not None else (None, None)
    return {"input": str(item.path), "path": os.path.realpath(item.path), "bytes": size_, "modified": modified,
            "method": job.label, "name": job.name, "settings": job.spec,
            "target": int(target) if uses_target(job.fn, job.settings) else None, "top5": top,
            "size": [int(size[0]), int(size[1])],
            "overlay": f"{job.label}/{item.name}.png", "thumb": f"{THUMBS}/{job.label}/{item.name}.jpg",
            "picture": f"{THUMBS}/{PICTURES}/{item.name}.jpg", "store": f"{job.label}/{store}.zarr", "row": int(row),
            "signed": bool(signed), "seconds": round(float(seconds), 6), "process": process}


def _said(item: Item, lines: list[dict[str, Any]]) -> str:
    """The line telling what was done for one image."""
    top = lines[0]["top5"][0] if lines[0]["top5"] else None
    best = f"top class {top['name']} (p={top['p']:.3f}); " if top else ""
    aimed = [l["method"] for l in lines if l["target"] is not None]
    free = [l["method"] for l in lines if l["target"] is None]
    parts = [f"explained class {next(l['target'] for l in lines if l['target'] is not None)} with {', '.join(aimed)}"] \
        if aimed else []
    if free:
        parts.append(f"{'and ' if aimed else 'explained with '}{', '.join(free)} "
                     f"(which ignore{'s' if len(free) == 1 else ''} the target)")
    changed = "changed since its results, explained again; " if item.changed else ""
    return f"{item.path}: {changed}{best}{' '.join(parts)}"


def _draw_and_record(out: Path, results: Path, item: Item, loaded, done: list[tuple[Job, np.ndarray, dict]],
                     failures: list[str], reduce: str, colormaps: dict[str, str], counts: Counts, say: Callable[[str], None]) -> None:
    """The writer threads' work for one image: thumbnails and overlays (atomic), then its lines."""
    try:
        outputs.write_atomic(out / THUMBS / PICTURES / f"{item.name}.jpg",
                             outputs.picture_bytes(viz.thumbnail(loaded.original), "JPEG", quality=88))
        lines = []
        for job, attribution, rec in done:
            m = viz.as_map(attribution, job.drawn_as, reduce)
            signed = bool(np.min(m) < 0)
            picture = viz.overlay(loaded.original, m, box=loaded.box, signed=signed,
                                  cmap=colormaps["signed" if signed else "unsigned"])
            outputs.write_atomic(out / rec["overlay"], outputs.picture_bytes(picture, **PNG))
            outputs.write_atomic(out / rec["thumb"], outputs.picture_bytes(viz.thumbnail(picture), "JPEG", quality=88))
            lines.append({**rec, "signed": signed})
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
            counts.redone += item.changed
    for failure in failures:
        say(f"jaxplain: failed {item.path} with {failure}")
    if lines:
        say(_said(item, lines))


def run(model: Model, files: Sequence[Path], names: Sequence[str], jobs_: Sequence[Job], *, out: Path,
        config: dict[str, Any], target: Any, class_names: Sequence[str] | None, batch_size: int = 8,
        precision: str | None = None, stop: Callable[[], bool] = lambda: False, threads: int | None = None,
        writers: int = 2) -> Counts:
    """Explain ``files`` (``names``: each file's name relative to the inputs; made unique in the
    folder by ``record.unique_names``) with every job, writing into ``out`` (checked and prepared
    by ``record.prepare``); returns the counts of this process's images. A grayscale model
    (``channels=1``) reads the pictures as grayscale, saying once that colour ones are converted;
    a model of neither 1 nor 3 channels is refused before anything runs (``io.picture_mode``)."""
    import jax

    picture_mode(model)  # pictures give 1 or 3 channels: any other count is one error now

    process, count = jax.process_index(), jax.process_count()
    results_name, store = record.results_files(process, count)
    failed_name = record.failed_file(process, count)
    results = out / results_name
    outputs.repair(results)
    done = record.completed(out)
    names = record.unique_names(done, files, names)
    labels = [j.label for j in jobs_]
    items, complete = my_items(files, names, labels, done)
    counts = Counts(skipped=complete)
    if not items:
        return counts
    batch_size = min(batch_size, len(items))  # a short run pads no batch beyond its images
    dtype, reduce, colormaps = config["dtype"], config["reduce"], config["colormaps"]
    arrays: dict[str, Any] = {}
    next_row = {j.label: done.rows.get(f"{j.label}/{store}.zarr", 0) for j in jobs_}
    progress = Progress(len(items), counts)
    threads = threads or min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="jaxplain-writer")
    pending: list[list[tuple[Future, tuple]]] = []
    keys = {j.label: record.key_of(j) for j in jobs_ if j.random}
    scoring = with_precision(model, precision)
    converting = [True]  # no line yet about colour pictures read as grayscale

    def batch_of(group: list[tuple[Item, Any]]) -> None:
        images = np.stack([loaded.image for _, loaded in group])
        x = model.preprocess(images)
        logits = np.asarray(predict(scoring, x, batch_size=batch_size), np.float64)
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
                ids = [baselines.path_id(os.path.realpath(group[k][0].path)) for k in need]
                extra = {"key": baselines.per_image(keys[job.label], ids)}
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
            lost = outputs.write_rows(arrays[job.label], first, attr)
            if lost.sum():
                progress.say(f"jaxplain: warning: {job.label}: {int(lost.sum())} values of {int((lost > 0).sum())} "
                             f"image(s) beyond {dtype}'s range stored as inf (--dtype float32 keeps them)")
            next_row[job.label] += len(need)
            for r, (k, a) in enumerate(zip(need, attr)):
                item, loaded = group[k]
                rec = _record(item, job, targets[k], tops[k], loaded.original.shape[:2], store, first + r, False,
                              seconds, process)
                per_image[k].append((job, a, rec))
        while len(pending) >= BEHIND:
            _finish(pending.pop(0))
        tasks = [(_draw_and_record, out, results, item, loaded, per_image[k], failures[k], reduce, colormaps, counts,
                  progress.say) for k, (item, loaded) in enumerate(group)]
        pending.append([(pool.submit(*task), task) for task in tasks])
        progress.update(len(group))

    finished = False
    try:
        group: list[tuple[Item, Any]] = []
        for item, loaded in _stream(model, items, prefetch=2 * batch_size, threads=threads):
            if isinstance(loaded, str):
                with counts.lock:
                    counts.unreadable += 1
                    outputs.replace_line(out / failed_name, "path", {"input": str(item.path),
                                                                     "path": os.path.realpath(item.path), "reason": loaded})
                progress.say(f"jaxplain: failed {loaded}")
                progress.unreadable(1)
                continue
            if loaded.converted and converting:
                converting.clear()
                progress.say(converted_line(model, item.path))
            group.append((item, loaded))
            if len(group) == batch_size:
                batch_of(group)
                group = []
                if stop():
                    counts.stopped = True
                    break
        if group and not counts.stopped:
            batch_of(group)
        finished = True
    finally:  # a stop (a signal) comes after a batch: its writes finish; an error leaves those not started
        for batch in pending:
            _finish(batch, stopping=not finished)
        pool.shutdown(wait=True)
        progress.close()
    return counts
