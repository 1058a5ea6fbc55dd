"""The bookkeeping every adapter shares: one forward pass's submodule calls named, tapped and recorded.

An adapter routes each submodule call through ``Recorder.call(path, fn, *args)``; the recorder
names it (``path``, then ``path#2`` for a second call), adds the tap asked for and records the
activation; the probe (``wanted=None``) lists every call with why it cannot be a layer, and why
its input (``args[0]``) cannot be one. A wanted ``input_key(name)`` taps and records ``args[0]``
before ``fn`` runs (``Model.layer_inputs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxplain.adapters.relus import swap_relus
from jaxplain.errors import InputError
from jaxplain.types import Array, Relu, input_key


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


Forward = Callable[[Any, Array, Mapping[str, Array]], "tuple[Array, dict[str, Array]]"]


def choose(outputs: list[Output], layers: Sequence[str] | None, name: str, refuse: str = "") -> tuple[str, ...]:
    """The layers asked for (default: every tappable output), in forward order, or an
    ``InputError`` naming the layer that is unknown or cannot be tapped; ``refuse``: why this
    model has none to ask for (said when ``layers`` names any)."""
    valid = tuple(o.name for o in outputs if not o.problem)
    if layers is None:
        return valid
    if isinstance(layers, str):
        raise InputError(f"layers must be a list of layer names, got the string {layers!r}")
    if refuse and layers:
        raise InputError(refuse)
    problems = {o.name: o.problem for o in outputs}
    for layer in layers:
        if layer not in problems:
            raise InputError(f"unknown layer {layer!r}; {name}'s layers: {', '.join(valid)}")
        if problems[layer]:
            raise InputError(f"layer {layer!r} of {name} cannot be tapped: {problems[layer]}")
    asked = set(layers)
    return tuple(n for n in valid if n in asked)


def contract_apply(forward: Forward, layers: tuple[str, ...], inputs: tuple[str, ...], name: str,
                   none: str = "none") -> Callable[..., Any]:
    """The contract's ``apply(params, x [H, W, C], taps=None, relu=None)`` over ``forward(params, x,
    taps) -> (logits [K], acts)``: one image checked, taps only of ``layers`` and the inputs of
    ``inputs``, and a ``relu`` other than ``jax.nn.relu`` swapped in (``relus.swap_relus``);
    ``none``: what to say of a model without layers."""
    known = frozenset(layers) | {input_key(n) for n in inputs}

    def apply(params: Any, x: Array, taps: Mapping[str, Array] | None = None,
              relu: Relu | None = None) -> tuple[Array, dict[str, Array]]:
        """``(logits [K], {layer: activation, input_key(layer): its input})`` of one image ``x [H, W, C]``."""
        if jnp.ndim(x) != 3:
            raise InputError(f"{name}'s apply takes one image [H, W, C], got shape {jnp.shape(x)}")
        taps = dict(taps or {})
        unknown = [k for k in taps if k not in known]
        if unknown:
            raise InputError(f"taps name unknown layers {unknown}; {name}'s layers: {', '.join(layers) or none}"
                             + (" (and their inputs, '<layer>:input')" if inputs else ""))
        if relu is None or relu is jax.nn.relu:
            return forward(params, x, taps)
        return swap_relus(forward, relu, name)(params, x, taps)

    return apply
