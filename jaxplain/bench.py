"""Measure explanation throughput: compile time, images/s, achieved FLOP/s against a matmul
probe of the same device, and peak memory; beside a peer by the comparison method
(``jaxplain.timing``). The timing core of ``jaxplain bench`` and of
``benchmarks/`` (where the peers' code lives: Captum, pytorch-grad-cam's algorithms)."""

from __future__ import annotations

import dataclasses
import platform
import resource
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxplain import marks, registry, timing
from jaxplain.engine.runner import prepare, resolved
from jaxplain.chunks import loop_mode
from jaxplain.engine.precision import with_precision
from jaxplain.types import Model

# Settings a user would run each method with (the anchors' usual values).
USUAL: dict[str, dict[str, Any]] = {
    "integrated_gradients": dict(steps=50),
    "smoothgrad": dict(samples=50),
    "squaregrad": dict(samples=50),
    "vargrad": dict(samples=50),
    "expected_gradients": dict(samples=32),
    "blur_ig": dict(steps=100),
    "guided_ig": dict(steps=200),
    "neuron_gradient": dict(neuron=0),  # channel 0 of the last conv layer
    "neuron_integrated_gradients": dict(neuron=0),
}


def passes(name: str, settings: dict[str, Any], shape: tuple[int, int, int] = (224, 224, 3)) -> int:
    """Model passes per image a method makes for images of ``shape`` (forward+backward for the
    gradient family, forward only for the perturbation family; for passes/s): its ``cost`` mark
    (``jaxplain.marks.cost``) on its settings, checked and completed by ``registry.resolve``."""
    fn, parsed = registry.parse(name)
    return marks.passes(fn, registry.resolve(fn, {**parsed, **settings}), shape)


def device_info() -> dict[str, Any]:
    d = jax.local_devices()[0]
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "device_count": jax.local_device_count(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
        "host": platform.node(),
    }


def timings(fn: Callable[[], Any], rounds: int, min_time: float = 0.0, warmup: int = 1) -> list[float]:
    """Seconds per call after ``warmup`` warm calls: at least ``rounds`` calls and ``min_time``
    seconds (at most 100 calls). ``fn`` must finish its work before returning (block or synchronise).
    One call alone; two calls side by side go through ``jaxplain.timing.side_by_side``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < rounds or (time.perf_counter() - start < min_time and len(times) < 100):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def matmul_peak(dtype: Any = jnp.float32, n: int | None = None, rounds: int = 5) -> float:
    """Measured FLOP/s of an ``n x n`` matrix product (2048 on CPU, 8192 on accelerators)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / min(timings(lambda: jax.block_until_ready(f(a)), rounds))


def peak_memory() -> tuple[int, str]:
    """``(bytes, what)``: the device's peak bytes in use where the backend reports it, else the
    process's peak resident set size."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


@dataclasses.dataclass
class Case:
    """One compiled (model, method, batch) ready to time."""

    name: str
    batch: int
    settings: dict[str, Any]
    call: Callable[[], Any]
    compile_s: float
    flops: float
    precision: str | None = None
    shape: tuple[int, int, int] = (224, 224, 3)


def compile_case(model: Model, method: str, batch: int, *, precision: str | None = None, **settings: Any) -> Case:
    """Compile ``method`` for ``batch`` random images at the model's input size (compile timed),
    the model computing in ``precision`` (``jaxplain.engine.precision``)."""
    model = with_precision(model, precision)
    fn, parsed = registry.parse(method)
    name = fn.__name__
    settings = {**USUAL.get(name, {}), **parsed, **settings}
    known = registry.settings_of(fn)
    if "key" in known:
        settings.setdefault("key", jax.random.key(0))
    h, w = model.input_size or (224, 224)
    images = jax.random.normal(jax.random.key(1), (batch, h, w, model.channels), jnp.float32)
    if "references" in known:
        settings.setdefault("references", images[:1] * 0.5)
    targets = jnp.zeros((batch,), jnp.int32)
    prep = prepare(fn, model, images, resolved(fn, model, images, settings))
    t = time.perf_counter()
    run, flops = prep.call.compile(model.params, images, targets, prep.keys, prep.per_image, prep.shared)
    compile_s = time.perf_counter() - t
    return Case(name, batch, prep.static, run, compile_s, flops, precision, (h, w, model.channels))


def figures(case: Case, seconds: Sequence[float], peak_flops: float) -> dict[str, Any]:
    """A row's figures from the measured seconds per call of ``case``: the median and the range
    (min-max) of the seconds and of images/s, and the derived figures at the median."""
    s = timing.Spread.of(seconds)
    mem, mem_kind = peak_memory()
    return {
        "method": case.name,
        "batch": case.batch,
        "settings": {k: repr(v) for k, v in case.settings.items()},
        "compile_s": case.compile_s,
        "seconds": list(seconds),
        "s_per_call": s.median,
        "s_low": s.low,
        "s_high": s.high,
        "images_per_s": case.batch / s.median,
        "images_per_s_low": case.batch / s.high,
        "images_per_s_high": case.batch / s.low,
        "spread": s.relative,
        "ms_per_image": 1e3 * s.median / case.batch,
        "passes_per_s": case.batch * passes(case.name, case.settings, case.shape) / s.median,
        "flops_per_call": case.flops,
        "flops_per_s": case.flops / s.median,
        "peak_flops_per_s": peak_flops,
        "fraction_of_peak": case.flops / s.median / peak_flops if peak_flops else None,
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "rounds": len(seconds),
        "dtype": "float32",
        "precision": case.precision or "default",
        "chunk_loop": loop_mode(),
    }


def measure(case: Case, peak_flops: float, rounds: int = 5, min_time: float = 0.0) -> dict[str, Any]:
    """Steady-state timing of a compiled case alone (``timings``), with the derived figures."""
    return figures(case, timings(lambda: jax.block_until_ready(case.call()), rounds, min_time), peak_flops)


def _spread(row: dict[str, Any], key: str) -> str:
    """``"2.30 (2.10-2.41)"`` from ``row[key]``, ``row[key + "_low"]``, ``row[key + "_high"]``."""
    return timing.Spread(row[key], row[f"{key}_low"], row[f"{key}_high"]).text(".3g")


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of measured rows: images/s as median (min-max) over the rounds, and
    beside a peer its images/s and the ratio (``timing.Comparison.ratio_text``)."""
    head = (f"{'method':<22}{'batch':>6}{'busy':>5}  {'images/s':<22}{'ms/image':>9}{'% peak':>8}{'compile s':>10}"
            f"  {'peer images/s':<22}{'vs peer':<18}")
    lines = [head, "-" * len(head)]
    for r in rows:
        frac = r.get("fraction_of_peak")
        theirs = _spread(r, "peer_images_per_s") if "peer_images_per_s" in r else "-"
        lines.append(
            f"{r['method']:<22}{r['batch']:>6}{r.get('competing', 0):>5}  {_spread(r, 'images_per_s'):<22}"
            f"{r['ms_per_image']:>9.1f}{(100 * frac if frac else float('nan')):>8.1f}{r['compile_s']:>10.1f}"
            f"  {theirs:<22}{r.get('vs_peer_text', '-'):<18}"
        )
    return "\n".join(lines)


def warm(calls: Sequence[Callable[[], Any]], seconds: float) -> None:
    """Call each of ``calls`` in turn until ``seconds`` have passed (a longer warm-up than the
    method's own; nothing if ``seconds`` <= 0)."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for f in calls:
            f()


def timed(case: Case, peak: float, theirs: Callable[[], Any] | None, *, peer_name: str = "captum", rounds: int = 5,
          warmup: int = 1, min_time: float = 0.0) -> dict[str, Any]:
    """One row: ``case`` alone (warm-up calls, then ``rounds`` timed calls) or beside ``theirs`` (a
    no-argument call of the peer) by the comparison method (``timing.side_by_side``): both warmed,
    interleaved rounds, the spread of each side and of the ratio, load before and after, threads."""
    ours = lambda: jax.block_until_ready(case.call())  # noqa: E731
    warm([ours] if theirs is None else [ours, theirs], min_time)
    if theirs is None:
        before = timing.load()
        seconds = timings(ours, rounds, warmup=warmup)
        return {**figures(case, seconds, peak), "load_before": before, "load_after": timing.load(),
                "threads": timing.threads()}
    c = timing.side_by_side(ours, theirs, names=("jaxplain", peer_name), items=case.batch, rounds=rounds, warmup=warmup)
    row = figures(case, c.seconds["jaxplain"], peak)
    if row["peak_memory_kind"] == "process peak RSS":  # one process: the peer's memory is in it too
        row["peak_memory_kind"] += f" (with {peer_name})"
    p, r = c.per_s(peer_name), c.ratio
    row.update(peer=peer_name, peer_seconds=c.seconds[peer_name], peer_images_per_s=p.median,
               peer_images_per_s_low=p.low, peer_images_per_s_high=p.high, peer_spread=c.side(peer_name).relative,
               vs_peer=None if c.noisy else r.median, vs_peer_low=r.low, vs_peer_high=r.high,
               vs_peer_text=c.ratio_text(), noisy=c.noisy, load_before=c.load_before, load_after=c.load_after,
               threads=c.threads, comparison=c.as_dict())
    return row


def run(model: Model, specs: Sequence[str], batches: Sequence[int], *, precision: str | None = None,
        rounds: int = 5, warmup: int = 1, min_time: float = 0.0, compete: int = 0,
        peer: Callable[[Case], Callable[[], Any] | None] | None = None, peer_name: str = "captum",
        label: str | None = None) -> list[dict[str, Any]]:
    """Measure every ``(method spec, batch)`` on ``model`` and print a table row as each finishes.

    ``peer(case)``, if given, returns a no-argument call of the peer's counterpart on the same
    case (``None`` where it has none); both are then timed by ``timing.side_by_side`` and the row
    gets the peer's images/s, the ratio (ours over theirs; ``None`` and "noisy, rerun" when a
    side's spread is over the limit) and the whole comparison. After the rounds, ``peer.fields()``
    (if the peer has it) adds the peer's own fields (its peak memory). ``compete`` > 0 times every
    case twice: quiet, then beside ``compete`` busy processes (``timing.competing``); the row's
    ``competing`` says which."""
    peak, info = matmul_peak(), device_info()
    h, w = model.input_size or (224, 224)
    print(f"{info['device_kind']} x{info['device_count']} ({info['platform']}), jax {info['jax']}, "
          f"{label or model.name} {h}x{w} float32 (precision {precision or 'default'}), matmul peak {peak / 1e9:.0f} GFLOP/s",
          flush=True)
    print(f"threads {timing.threads()}, load {timing.load():.2f}; median (min-max) of {rounds} rounds after "
          f"{warmup} warm-up call(s){f' and {min_time:g} s' if min_time > 0 else ''}"
          f"{f', {peer_name} interleaved' if peer else ''}; busy: processes spinning beside", flush=True)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for batch in batches:
            case = compile_case(model, spec, batch, precision=precision)
            theirs = peer(case) if peer is not None else None
            for busy in dict.fromkeys((0, compete)):
                with timing.competing(busy):
                    row = timed(case, peak, theirs, peer_name=peer_name, rounds=rounds, warmup=warmup,
                                min_time=min_time)
                if theirs is not None and hasattr(peer, "fields"):
                    row.update(peer.fields())
                rows.append({**row, "competing": busy, "model": model.name, **info})
                print(table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else table(rows[-1:]), flush=True)
    print(f"load {timing.load():.2f} at the end; threads {timing.threads()}", flush=True)
    return rows
