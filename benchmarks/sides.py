"""What the peer benchmarks (``surrogates_vs_peers``, ``metrics_vs_quantus``, ``folder_run``) share
around ``jaxplain.timing.side_by_side``, the one comparison method: calls of a few milliseconds
repeated to fill a round, the machine line, the regime (``--rounds``, ``--compete N``) and the text
of a timed row (images/s median (min-max) of each side, the ratio (min-max) or "noisy, rerun")."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxplain import timing


def repeated(fn: Callable[[], Any], n: int) -> Callable[[], Any]:
    """``fn`` called ``n`` times; the last value."""

    def call() -> Any:
        for _ in range(n - 1):
            fn()
        return fn()

    return call


def compare(first: Callable[[], Any], second: Callable[[], Any], *, names: tuple[str, str], items: int, rounds: int,
            known: dict[str, float] | None = None, min_round: float = 0.5, size: bool = True,
            max_calls: int = 100) -> tuple[timing.Comparison, dict[str, int]]:
    """``timing.side_by_side`` of two calls already called once (the compile, a peer's first call),
    in seconds per single call. With ``size``, a call shorter than ``min_round`` seconds is repeated
    to fill a round (at most ``max_calls`` times; a few-millisecond call timed once is mostly the
    timer and the machine's noise), sized by one more timed call of each side (its warm-up) or by
    ``known[name]``, the seconds of a warm call already made (a peer that compiles nothing).
    Without ``size`` (calls of minutes) each round is one call and there is no further warm-up.
    Returns the comparison and the calls per round of each side."""
    counts = dict.fromkeys(names, 1)
    if size:
        for name, fn in zip(names, (first, second)):
            took = (known or {}).get(name)
            if took is None:
                start = time.perf_counter()
                fn()
                took = time.perf_counter() - start
            counts[name] = max(1, min(max_calls, math.ceil(min_round / max(took, 1e-9))))
    c = timing.side_by_side(repeated(first, counts[names[0]]), repeated(second, counts[names[1]]), names=names,
                            items=items, rounds=rounds, warmup=0)
    return dataclasses.replace(c, seconds={n: [s / counts[n] for s in v] for n, v in c.seconds.items()}), counts


def add_arguments(p: argparse.ArgumentParser, rounds: int = 5) -> None:
    """``--rounds`` (interleaved rounds after the warm-up) and ``--compete N``."""
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"interleaved timed rounds (ABBA) after the warm-up (default {rounds}; at least 5 for a ratio)")
    p.add_argument("--compete", type=int, default=0, metavar="N",
                   help="run N busy processes (a core each) beside the measurement: the shared-machine regime")


def regime(n: int) -> contextlib.AbstractContextManager:
    """``timing.competing(n)`` (``n`` > 0), else nothing."""
    return timing.competing(n) if n > 0 else contextlib.nullcontext()


def machine() -> dict[str, Any]:
    """CPU model, cores, jax's version and device, the host name."""
    import jax

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "device": str(jax.devices()[0]),
            "platform": jax.devices()[0].platform, "host": platform.node()}


def header(compete: int, rounds: int, versions: str = "") -> str:
    """The machine, versions, threads, load and regime: the first line of a benchmark's output."""
    m, t = machine(), timing.threads()
    torch = "" if t["torch"] is None else f", torch {t['torch']}"
    return (f"{m['cpu']}, {m['cores']} CPUs ({t['cpus']} in the affinity mask), jax {m['jax']} on {m['device']}"
            f"{'; ' + versions if versions else ''}; intra-op threads: XLA {t['xla']}{torch}; load {timing.load():.2f}; "
            f"{'beside %d busy process%s' % (compete, 'es' if compete > 1 else '') if compete else 'quiet (no competing process)'}; "
            f"{rounds} interleaved rounds (ABBA) after a warm-up, median (min-max); a ratio over a "
            f"{timing.MAX_SPREAD:.0%} spread of either side reads 'noisy, rerun'")


def footer(timings: list[dict[str, Any]]) -> str:
    """Load before the first comparison and after the last, and the threads they ran with
    (``timings``: ``Comparison.as_dict()`` of each, in order)."""
    if not timings:
        return f"load {timing.load():.2f}"
    t = timings[-1]["threads"]
    torch = "" if t["torch"] is None else f", torch {t['torch']}"
    return (f"load {timings[0]['load_before']:.2f} before, {timings[-1]['load_after']:.2f} after; "
            f"intra-op threads XLA {t['xla']}{torch}")


def number(v: float) -> str:
    """Three significant digits, no exponent below 10 000: ``"0.0123"``, ``"57.2"``, ``"2083"``."""
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def rate(c: timing.Comparison, name: str) -> str:
    """Images/s of one side, median (min-max): ``"57.2 (55.5-59.1)"``."""
    r = c.per_s(name)
    return f"{number(r.median)} ({number(r.low)}-{number(r.high)})"


def log(line: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)
