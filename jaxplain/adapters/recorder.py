"""The bookkeeping every adapter shares: one forward pass's submodule calls named, tapped and recorded.

An adapter routes each submodule call through ``Recorder.call(path, fn, *args)``; the recorder
names it (``path``, then ``path#2`` for a second call), adds the tap asked for and records the
activation; the probe (``wanted=None``) lists every call with why it cannot be a layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxplain.types import Array


class Output(NamedTuple):
    """One submodule call the probe saw: its layer name, and why it cannot be tapped ("" if it can)."""

    name: str
    problem: str


class Recorder:
    """The bookkeeping of one forward pass: names each submodule call, adds its tap, records it.

    ``wanted=None`` is the probe: every call is kept as an ``Output``, nothing is tapped."""

    def __init__(self, wanted: frozenset[str] | None, taps: Mapping[str, Array], batched: bool, probe_batch: int = 2):
        self.wanted, self.taps, self.batched, self.probe_batch = wanted, taps, batched, probe_batch
        self.trace = jcore.find_top_trace(())  # the forward pass's; a transformation inside it runs another
        self.calls: dict[str, int] = {}
        self.running: set[str] = set()
        self.acts: dict[str, Array] = {}
        self.outputs: list[Output] = []

    def call(self, path: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, the call of the submodule at ``path``, with its output tapped
        and recorded. A call of the same submodule inside that call (a wrapper calling what it
        wraps) is the same layer: only the outer one counts."""
        if path in self.running:
            return fn(*args, **kwargs)
        self.running.add(path)
        try:
            out = fn(*args, **kwargs)
        finally:
            self.running.discard(path)
        return self._record(path, out)

    def _record(self, path: str, out: Any) -> Any:
        k = self.calls[path] = self.calls.get(path, 0) + 1
        name = path if k == 1 else f"{path}#{k}"
        if self.wanted is None:
            self.outputs.append(Output(name, self._problem(out)))
        elif name in self.wanted:
            if name in self.taps:
                tap = jnp.asarray(self.taps[name]).astype(out.dtype)
                out = out + (tap[None] if self.batched else tap)
            self.acts[name] = out[0] if self.batched else out
        return out

    def _problem(self, out: Any) -> str:
        if jcore.find_top_trace(()) is not self.trace:
            return "it runs inside a transformation of the forward pass (nn.remat, nn.scan, nnx.remat, a jit, ...)"
        if not isinstance(out, jax.Array):
            return f"its output is a {type(out).__name__}, not one array"
        if not jnp.issubdtype(out.dtype, jnp.floating):
            return f"its output has dtype {out.dtype}, not a float"
        if self.batched and (out.ndim == 0 or out.shape[0] != self.probe_batch):
            return f"its output {tuple(out.shape)} does not carry the batch axis"
        return ""
