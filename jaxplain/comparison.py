"""Methods against metrics: explain a batch with each method, score each explanation with each
metric, and summarise per cell the mean, a 95% interval over the images and the seconds taken
(``jaxplain evaluate`` prints ``table``)."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from scipy import stats

from jaxplain import registry
from jaxplain.errors import InputError
from jaxplain.engine.evaluation import evaluate
from jaxplain.marks import output_of, wrapped
from jaxplain.engine.runner import explain
from jaxplain.types import Array, Model


class Cell(NamedTuple):
    """One method on one metric: ``scores [B]``, their ``mean``, the 95% interval ``(low, high)``
    of the mean (Student's t over the images), and the ``seconds`` the metric took. Images whose
    score is NaN (a localisation metric's empty mask) are left out of the summary."""

    method: str
    metric: str
    scores: np.ndarray
    mean: float
    low: float
    high: float
    seconds: float


def interval(scores: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the finite ``scores`` and its ``level`` t-interval (NaN
    bounds for fewer than two)."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return math.nan, math.nan, math.nan
    m = float(s.mean())
    if s.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, s.size - 1) * s.std(ddof=1) / math.sqrt(s.size))
    return m, m - half, m + half


def check_specs(methods: Sequence[str], metrics: Sequence[str], has_masks: bool) -> None:
    """Every method and metric parses, methods return something a metric can score, and the
    metrics that need ground-truth masks have them: an ``InputError`` otherwise (before any work)."""
    for spec in methods:
        fn, settings = registry.parse(spec)
        settings = registry.resolve(fn, settings)
        if output_of(fn, settings) == "layer":
            raise InputError(f"method {spec!r} returns a layer's activations, which no metric can score against the image")
    for spec in metrics:
        fn, settings = registry.parse_metric(spec)
        registry.resolve(fn, settings)
        if "mask" in registry.settings_of(fn) and not has_masks:
            raise InputError(f"metric {spec!r} needs ground-truth masks: pass masks (--masks), or use the synthetic benchmark")


def _seconds(f: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, time.perf_counter() - t


def compare(model: Model, images: Array, targets: Any, methods: Sequence[str], metrics: Sequence[str], *,
            masks: Array | None = None, batch_size: int | None = None, seed: int = 0,
            report: Callable[[str], None] | None = None) -> tuple[dict[str, float], list[Cell]]:
    """Explain ``images`` with each method (``key`` from ``seed`` where random) and score each
    result with each metric; a metric that re-explains (``method`` setting) gets the method and
    its settings, a localisation metric the ``masks [B, H, W]``. Returns ``(seconds per method,
    cells)``; seconds include compiling. ``report``, if given, hears a line per finished cell."""
    check_specs(methods, metrics, masks is not None)
    key = jax.random.key(seed)
    method_seconds, cells = {}, []
    for mi, spec in enumerate(methods):
        fn, settings = registry.parse(spec)
        extra = {"key": jax.random.fold_in(key, mi)} if "key" in registry.settings_of(fn) else {}
        attr, method_seconds[spec] = _seconds(lambda: explain(model, images, targets, fn, batch_size=batch_size,
                                                              **settings, **extra))
        attr = attr[0] if isinstance(attr, tuple) else attr
        for ki, metric in enumerate(metrics):
            mfn, msettings = registry.parse_metric(metric)
            known = registry.settings_of(mfn)
            more: dict[str, Any] = {}
            if "key" in known:
                more["key"] = jax.random.fold_in(key, 1000 + ki)
            if "mask" in known:
                more["mask"] = masks
            names = wrapped(mfn)
            if names and names[0] not in msettings:
                more[names[0]], more[names[1]] = fn, settings
            out, sec = _seconds(lambda: evaluate(model, images, targets, attr, mfn, batch_size=batch_size,
                                                 **msettings, **more))
            scores = np.asarray(out["score"], np.float64)
            cells.append(Cell(spec, metric, scores, *interval(scores), sec))
            if report:
                report(f"{spec} x {metric}: {cells[-1].mean:.4g} ({sec:.1f} s)")
    return method_seconds, cells


def table(method_seconds: dict[str, float], cells: Sequence[Cell]) -> str:
    """A plain-text table: a row per method, a column per metric, each cell ``mean [low, high] (s)``."""
    metrics = list(dict.fromkeys(c.metric for c in cells))
    by = {(c.method, c.metric): c for c in cells}
    head = ["method", "explain s", *metrics]
    rows = [head]
    for m, sec in method_seconds.items():
        row = [m, f"{sec:.1f}"]
        for k in metrics:
            c = by.get((m, k))
            missing = 0 if c is None else int(np.sum(~np.isfinite(c.scores)))
            row.append("" if c is None else f"{c.mean:.3f} [{c.low:.3f}, {c.high:.3f}] ({c.seconds:.1f} s)"
                       + (f" {missing} NaN" if missing else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    ways = {k: getattr(registry.parse_metric(k)[0], "better", None) for k in metrics}
    legend = [f"{way} is better: {', '.join(k for k in metrics if ways[k] == way)}" for way in ("higher", "lower")
              if way in ways.values()]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *legend])
