"""Measure explanation throughput: compile time, images/s, achieved FLOP/s against a matmul
probe of the same device, and peak memory. The timing core of ``jaxplain bench`` and of
``benchmarks/`` (where the peers' code lives: Captum, pytorch-grad-cam's algorithms)."""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxplain import marks, registry
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


def timings(fn: Callable[[], Any], rounds: int, min_time: float = 0.0) -> list[float]:
    """Seconds per call after one warm call: at least ``rounds`` calls and ``min_time`` seconds
    (at most 100 calls). ``fn`` must finish its work before returning (block or synchronise)."""
    fn()  # warm
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


def measure(case: Case, peak_flops: float, rounds: int = 3, min_time: float = 1.0) -> dict[str, Any]:
    """Steady-state timing of a compiled case, with the derived figures."""
    times = timings(lambda: jax.block_until_ready(case.call()), rounds, min_time)
    sec = statistics.median(times)
    mem, mem_kind = peak_memory()
    return {
        "method": case.name,
        "batch": case.batch,
        "settings": {k: repr(v) for k, v in case.settings.items()},
        "compile_s": case.compile_s,
        "s_per_call": sec,
        "images_per_s": case.batch / sec,
        "ms_per_image": 1e3 * sec / case.batch,
        "passes_per_s": case.batch * passes(case.name, case.settings, case.shape) / sec,
        "flops_per_call": case.flops,
        "flops_per_s": case.flops / sec,
        "peak_flops_per_s": peak_flops,
        "fraction_of_peak": case.flops / sec / peak_flops if peak_flops else None,
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "rounds": len(times),
        "dtype": "float32",
        "precision": case.precision or "default",
        "chunk_loop": loop_mode(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of measured rows."""
    head = f"{'method':<22}{'batch':>6}{'images/s':>11}{'ms/image':>11}{'% peak':>8}{'compile s':>11}{'vs Captum':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        frac = r.get("fraction_of_peak")
        vs = r.get("vs_captum")
        lines.append(
            f"{r['method']:<22}{r['batch']:>6}{r['images_per_s']:>11.3f}{r['ms_per_image']:>11.1f}"
            f"{(100 * frac if frac else float('nan')):>8.1f}{r['compile_s']:>11.1f}"
            f"{(f'{vs:.2f}x' if vs else '-'):>11}"
        )
    return "\n".join(lines)


def run(model: Model, specs: Sequence[str], batches: Sequence[int], *, precision: str | None = None,
        rounds: int = 3, min_time: float = 1.0, peer: Callable[[Case], dict[str, Any] | None] | None = None,
        label: str | None = None) -> list[dict[str, Any]]:
    """Measure every ``(method spec, batch)`` on ``model`` and print a table row as each finishes.

    ``peer(case)``, if given, times a peer on the same case and returns its fields
    (``captum_images_per_s`` and the like; ``None`` where it has no counterpart); the row then
    gets ``vs_captum``, our images/s over the peer's."""
    peak, info = matmul_peak(), device_info()
    h, w = model.input_size or (224, 224)
    print(f"{info['device_kind']} x{info['device_count']} ({info['platform']}), jax {info['jax']}, "
          f"{label or model.name} {h}x{w} float32 (precision {precision or 'default'}), matmul peak {peak / 1e9:.0f} GFLOP/s")
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for batch in batches:
            case = compile_case(model, spec, batch, precision=precision)
            row = {**measure(case, peak, rounds=rounds, min_time=min_time), "model": model.name, **info}
            theirs = peer(case) if peer is not None else None
            if theirs:
                row.update(theirs, vs_captum=row["images_per_s"] / theirs["captum_images_per_s"])
            rows.append(row)
            print(table([row]).splitlines()[-1] if len(rows) > 1 else table([row]), flush=True)
    return rows
