"""The bookkeeping every adapter shares: one forward pass's submodule calls named, tapped and recorded.

An adapter routes each submodule call through ``Recorder.call(path, fn, *args)``; the recorder
names it (``path``, then ``path#2`` for a second call), adds the tap asked for and records the
activation; the probe (``wanted=None``) lists every call with why it cannot be a layer, and why
its input (``args[0]``) cannot be one. A wanted ``input_key(name)`` taps and records ``args[0]``
before ``fn`` runs (``Model.layer_inputs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxplain.types import Array, input_key


class Output(NamedTuple):
    """One submodule call the probe saw: its layer name, why its output cannot be tapped ("" if it
    can), and why its input, the call's first positional argument, cannot ("" if it can)."""

    name: str
    problem: str
    input_problem: str = "it was not probed"


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
        and recorded (and its input ``args[0]``, before the call, when ``input_key`` of the
        layer is wanted). A call of the same submodule inside that call (a wrapper calling what
        it wraps) is the same layer: only the outer one counts."""
        if path in self.running:
            return fn(*args, **kwargs)
        k = self.calls.get(path, 0) + 1  # a call of the same path inside fn is not counted (above)
        name = path if k == 1 else f"{path}#{k}"
        if self.wanted is None:
            entry = self._problem(args[0], "input") if args else "the call has no positional argument"
        elif input_key(name) in self.wanted:
            args = (self._tap(input_key(name), args[0]), *args[1:])
        self.running.add(path)
        try:
            out = fn(*args, **kwargs)
        finally:
            self.running.discard(path)
        self.calls[path] = k
        if self.wanted is None:
            self.outputs.append(Output(name, self._problem(out), entry))
        elif name in self.wanted:
            out = self._tap(name, out)
        return out

    def _tap(self, key: str, value: Array) -> Array:
        """``value`` plus the tap at ``key`` (if any), recorded in ``acts`` without the batch axis."""
        if key in self.taps:
            tap = jnp.asarray(self.taps[key]).astype(value.dtype)
            value = value + (tap[None] if self.batched else tap)
        self.acts[key] = value[0] if self.batched else value
        return value

    def _problem(self, out: Any, what: str = "output") -> str:
        """Why ``out``, a call's ``what`` (output or input), cannot be a layer ("" if it can)."""
        if jcore.find_top_trace(()) is not self.trace:
            return "it runs inside a transformation of the forward pass (nn.remat, nn.scan, nnx.remat, a jit, ...)"
        if not isinstance(out, jax.Array):
            return f"its {what} is a {type(out).__name__}, not one array"
        if not jnp.issubdtype(out.dtype, jnp.floating):
            return f"its {what} has dtype {out.dtype}, not a float"
        if self.batched and (out.ndim == 0 or out.shape[0] != self.probe_batch):
            return f"its {what} {tuple(out.shape)} does not carry the batch axis"
        return ""
