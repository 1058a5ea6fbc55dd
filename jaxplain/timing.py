"""One way to compare the speed of two calls (ours and a peer's, or two settings of ours), used by
every side-by-side benchmark: both sides warmed up, then interleaved rounds (the order alternating,
ABBA), the median and spread (min-max) of each side and of the per-round ratio, the thread counts
and the machine's load average before and after. A ratio is only printed when neither side's
spread is over ``max_spread`` of its median; otherwise it reads "noisy, rerun".

XLA:CPU runs one thread per CPU the process may use (``os.sched_getaffinity``); ``equal_threads``
sets torch's intra-op threads (if torch is imported) to the same count, so both sides get the same.
``competing(n)`` runs ``n`` busy processes beside a measurement: the shared-machine regime."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

MAX_SPREAD = 0.25


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median and range ``[low, high]`` of some measured values."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)))

    @property
    def relative(self) -> float:
        """``(high - low) / median``: 0.25 is a range of a quarter of the median."""
        return (self.high - self.low) / self.median if self.median else float("inf")

    def text(self, fmt: str = ".3g", unit: str = "") -> str:
        return f"{self.median:{fmt}}{unit} ({self.low:{fmt}}-{self.high:{fmt}})"


def load() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def cpus() -> int:
    """CPUs this process may run on: the number of threads XLA:CPU's pool uses."""
    return len(os.sched_getaffinity(0))


def threads() -> dict[str, int | None]:
    """Intra-op threads per framework: XLA's (one per CPU of the affinity mask) and torch's, if imported."""
    torch = sys.modules.get("torch")
    return {"cpus": cpus(), "xla": cpus(), "torch": torch.get_num_threads() if torch is not None else None}


def equal_threads(n: int | None = None) -> dict[str, int | None]:
    """Give torch (if imported) ``n`` intra-op threads, by default as many as XLA has; the counts."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n or cpus())
    return threads()


@dataclasses.dataclass
class Comparison:
    """Seconds per call of each side, round by round (``seconds[name][r]``), for calls of ``items``
    images each; ``names[0]`` is the side whose speed the ratio gives relative to ``names[1]``."""

    names: tuple[str, str]
    seconds: dict[str, list[float]]
    items: int
    load_before: float
    load_after: float
    threads: dict[str, int | None]
    max_spread: float = MAX_SPREAD

    def side(self, name: str) -> Spread:
        """Seconds per call of one side."""
        return Spread.of(self.seconds[name])

    def per_s(self, name: str) -> Spread:
        """Items (images) per second of one side."""
        s = self.side(name)
        return Spread(self.items / s.median, self.items / s.high, self.items / s.low)

    @property
    def ratio(self) -> Spread:
        """Speed of ``names[0]`` over ``names[1]``, round by round (> 1: the first is faster)."""
        a, b = self.names
        return Spread.of([tb / ta for ta, tb in zip(self.seconds[a], self.seconds[b])])

    @property
    def noisy(self) -> bool:
        return any(self.side(n).relative > self.max_spread for n in self.names)

    def ratio_text(self) -> str:
        """``"1.12x (1.05-1.20)"``, or ``"noisy, rerun"`` when either side's spread is over the limit."""
        if self.noisy:
            return "noisy, rerun"
        return self.ratio.text(".2f", "x")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"names": list(self.names), "items": self.items, "rounds": len(self.seconds[self.names[0]]),
                               "load_before": self.load_before, "load_after": self.load_after,
                               "threads": self.threads, "max_spread": self.max_spread, "noisy": self.noisy}
        for n in self.names:
            s, p = self.side(n), self.per_s(n)
            out[n] = {"seconds": self.seconds[n], "s_per_call": s.median, "s_low": s.low, "s_high": s.high,
                      "per_s": p.median, "per_s_low": p.low, "per_s_high": p.high, "spread": s.relative}
        r = self.ratio
        out["ratio"] = None if self.noisy else r.median
        out["ratio_low"], out["ratio_high"], out["ratio_median_even_if_noisy"] = r.low, r.high, r.median
        return out


def side_by_side(first: Callable[[], Any], second: Callable[[], Any], *, names: tuple[str, str] = ("jaxplain", "peer"),
                 items: int = 1, rounds: int = 5, warmup: int = 1, max_spread: float = MAX_SPREAD) -> Comparison:
    """Time two no-argument calls (each must finish its work before returning: block or
    synchronise) in ``rounds`` interleaved rounds after ``warmup`` calls each; the order alternates
    from round to round (first-second, second-first) so neither always runs after the other."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"side_by_side needs rounds >= 1 and warmup >= 0, not {rounds}, {warmup}")
    calls = dict(zip(names, (first, second)))
    before = load()
    for _ in range(warmup):
        for f in calls.values():
            f()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            calls[n]()
            seconds[n].append(time.perf_counter() - t)
    return Comparison(tuple(names), seconds, items, before, load(), threads(), max_spread)


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def competing(n: int) -> Iterator[None]:
    """Run ``n`` busy processes (one core each, a Python spin loop) for the duration of the block."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
