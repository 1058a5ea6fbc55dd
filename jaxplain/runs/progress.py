"""A run's progress: a tqdm bar on a terminal, a plain line every few seconds in a log."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line every ``every`` seconds (and at the end).
    Counts the images explained (``update``); an input that could not be read (``unreadable``) is
    taken off the total, not counted as an image. ``counts`` has ``failed`` and ``unreadable``
    attributes (so far)."""

    def __init__(self, total: int, counts: Any, every: float = 10.0):
        self.total, self.counts, self.every, self.start, self.last, self.seen = total, counts, every, time.time(), 0.0, 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, desc="explaining")

    def say(self, line: str) -> None:
        """A result's line on stdout; a failure's or warning's (``jaxplain: ...``) on stderr."""
        stream = sys.stderr if line.startswith("jaxplain:") else sys.stdout
        if self.bar is not None:
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def update(self, n: int) -> None:
        self.seen += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(failed=self.counts.failed, unreadable=self.counts.unreadable, refresh=False)
            return
        now = time.time()
        if now - self.last >= self.every or self.seen >= self.total:
            self.last = now
            rate = self.seen / max(now - self.start, 1e-9)
            left = (self.total - self.seen) / rate if rate > 0 else float("inf")
            eta = f"{int(left // 60)}m{int(left % 60):02d}s" if np.isfinite(left) else "?"
            unreadable = f", {self.counts.unreadable} unreadable" if self.counts.unreadable else ""
            print(f"jaxplain: {self.seen}/{self.total} images, {rate:.2f} images/s, {self.counts.failed} failed"
                  f"{unreadable}, about {eta} left", file=sys.stderr, flush=True)

    def unreadable(self, n: int = 1) -> None:
        """``n`` inputs could not be read: off the total (``counts.unreadable`` says how many)."""
        self.total -= n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.set_postfix(failed=self.counts.failed, unreadable=self.counts.unreadable, refresh=True)

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
