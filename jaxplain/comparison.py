"""Methods against metrics: explain a batch with each method, score each explanation with each
metric, and summarise per cell the mean, a 95% interval over the images and the seconds taken
(``jaxplain evaluate`` prints ``table``).

Keys (``jaxplain.baselines``): a method's or metric's key is ``named(root, name, settings)``, the
root its spec's ``key`` if given, else ``seed``; each image's key folds in the image's identity
(``ids``: its index by default, a hash of its path for pictures from files). So a cell's scores
do not depend on the other methods or metrics in the lists, nor on their order."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from scipy import stats

from jaxplain import baselines, registry
from jaxplain.errors import InputError
from jaxplain.engine.evaluation import evaluate
from jaxplain.marks import output_of, wrapped
from jaxplain.engine.runner import explain
from jaxplain.types import Array, Model


class Cell(NamedTuple):
    """One method on one metric: ``scores [B]``, their ``mean``, the 95% interval ``(low, high)``
    of the mean (``interval``: Student's t, or Wilson's for 0/1 scores), and the ``seconds`` the
    metric took. Images whose score is NaN (a localisation metric's empty mask) are left out of
    the summary."""

    method: str
    metric: str
    scores: np.ndarray
    mean: float
    low: float
    high: float
    seconds: float


def interval(scores: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the finite ``scores`` and its ``level`` interval. Scores
    that are all 0 or 1 (a pointing game's hits) get Wilson's score interval, which stays inside
    [0, 1] and exists from one score on; others Student's t (NaN bounds for fewer than two)."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return math.nan, math.nan, math.nan
    m = float(s.mean())
    if np.all((s == 0) | (s == 1)):
        return (m, *wilson(m, s.size, level))
    if s.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, s.size - 1) * s.std(ddof=1) / math.sqrt(s.size))
    return m, m - half, m + half


def wilson(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval ``(low, high)`` for a proportion ``p`` of ``n`` binary trials."""
    z = float(stats.norm.ppf((1 + level) / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def check_specs(methods: Sequence[str], metrics: Sequence[str], has_masks: bool) -> None:
    """Every method and metric parses, methods return something a metric can score, and the
    metrics that need ground-truth masks have them: an ``InputError`` otherwise (before any work)."""
    for spec in methods:
        fn, settings = registry.parse(spec)
        settings = registry.resolve(fn, settings)
        if output_of(fn, settings) == "layer":
            raise InputError(f"method {spec!r} returns a layer's activations, which no metric can score against the image")
        if output_of(fn, settings) == "concepts":
            raise InputError(f"method {spec!r} returns a map per concept [K, H, W, C], which no metric scores as one map")
    for spec in metrics:
        fn, settings = registry.parse_metric(spec)
        registry.resolve(fn, settings)
        if "mask" in registry.settings_of(fn) and not has_masks:
            raise InputError(f"metric {spec!r} needs ground-truth masks: pass masks (--masks), or use the synthetic benchmark")


def _seconds(f: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, time.perf_counter() - t


def spec_key(spec: str | Callable, settings: dict[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """``(key, settings without key)`` of a method or metric spec: ``baselines.named`` of its
    ``key`` setting (else ``seed``) with its name and other settings."""
    rest = {k: v for k, v in settings.items() if k != "key"}
    fn = registry.parse(spec, "metric" if isinstance(spec, str) and spec.split("(")[0].strip() in registry.METRICS
                        else "method")[0]
    return baselines.named(settings.get("key", seed), fn, registry.resolve(fn, dict(rest))), rest


def compare(model: Model, images: Array, targets: Any, methods: Sequence[str], metrics: Sequence[str], *,
            masks: Array | None = None, batch_size: int | None = None, seed: int = 0,
            ids: Sequence[int] | None = None, done: Mapping[tuple[str, str], Cell] | None = None,
            method_seconds: Mapping[str, float] | None = None, on_cell: Callable[[Cell, dict[str, float]], None] | None = None,
            stop: Callable[[], bool] | None = None,
            report: Callable[[str], None] | None = None) -> tuple[dict[str, float], list[Cell]]:
    """Explain ``images`` with each method and score each result with each metric; a metric that
    re-explains (``method`` setting) gets the method and its settings, a localisation metric the
    ``masks [B, H, W]``. Keys as the module says, per image from ``ids [B]`` (default: indices).
    ``done`` (cells by ``(method, metric)``, with ``method_seconds``) are kept, not recomputed; a
    method whose cells are all done is not explained. ``on_cell`` hears each new cell as it
    finishes, with the seconds per method so far; ``stop()`` true ends the loop after the cell in flight. Returns ``(seconds per
    method, cells)`` in the lists' order, without cells not reached; seconds include compiling.
    ``report``, if given, hears a line per finished cell with the time left, extrapolated."""
    check_specs(methods, metrics, masks is not None)
    ids = np.arange(images.shape[0]) if ids is None else np.asarray(ids)
    done = dict(done or {})
    seconds = dict(method_seconds or {})
    todo = sum((m, k) not in done for m in methods for k in metrics)
    spent, finished = 0.0, 0
    for spec in methods:
        if all((spec, k) in done for k in metrics) or (stop and stop()):
            continue
        fn, settings = registry.parse(spec)
        key, settings = spec_key(spec, settings, seed)
        extra = {"key": baselines.per_image(key, ids)} if "key" in registry.settings_of(fn) else {}
        t = time.perf_counter()
        attr, seconds[spec] = _seconds(lambda: explain(model, images, targets, fn, batch_size=batch_size,
                                                       **settings, **extra))
        attr = attr[0] if isinstance(attr, tuple) else attr
        for metric in metrics:
            if (spec, metric) in done:
                continue
            if stop and stop():
                break
            mfn, msettings = registry.parse_metric(metric)
            known = registry.settings_of(mfn)
            mkey, msettings = spec_key(metric, msettings, seed)
            more: dict[str, Any] = {}
            if "key" in known:  # a staged metric draws its weights from one key
                more["key"] = mkey if getattr(mfn, "stages", None) else baselines.per_image(mkey, ids)
            if "mask" in known:
                more["mask"] = masks
            names = wrapped(mfn)
            if names and names[0] not in msettings:
                more[names[0]], more[names[1]] = fn, settings
            out, sec = _seconds(lambda: evaluate(model, images, targets, attr, mfn, batch_size=batch_size,
                                                 **msettings, **more))
            scores = np.asarray(out["score"], np.float64)
            done[spec, metric] = Cell(spec, metric, scores, *interval(scores), sec)
            spent, finished = spent + time.perf_counter() - t, finished + 1
            t = time.perf_counter()
            if on_cell:
                on_cell(done[spec, metric], dict(seconds))
            if report:
                left = spent / finished * (todo - finished)
                report(f"[{finished}/{todo}] {spec} x {metric}: {done[spec, metric].mean:.4g} ({sec:.1f} s); "
                       f"about {_duration(left)} left")
    cells = [done[m, k] for m in methods for k in metrics if (m, k) in done]
    return {m: seconds[m] for m in methods if m in seconds}, cells


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _bound(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def table(method_seconds: dict[str, float], cells: Sequence[Cell]) -> str:
    """A plain-text table: a row per method, a column per metric, each cell ``mean [low, high] (s)``
    (``-`` for a bound that does not exist, Student's t of one image)."""
    metrics = list(dict.fromkeys(c.metric for c in cells))
    by = {(c.method, c.metric): c for c in cells}
    head = ["method", "explain s", *metrics]
    rows = [head]
    for m, sec in method_seconds.items():
        row = [m, f"{sec:.1f}"]
        for k in metrics:
            c = by.get((m, k))
            missing = 0 if c is None else int(np.sum(~np.isfinite(c.scores)))
            row.append("" if c is None else f"{c.mean:.3f} [{_bound(c.low)}, {_bound(c.high)}] ({c.seconds:.1f} s)"
                       + (f" {missing} NaN" if missing else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    ways = {k: getattr(registry.parse_metric(k)[0], "better", None) for k in metrics}
    legend = [f"{way} is better: {', '.join(k for k in metrics if ways[k] == way)}" for way in ("higher", "lower")
              if way in ways.values()]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *legend])
