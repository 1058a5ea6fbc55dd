"""Any Equinox module as a ``Model``: ``from_equinox(module)``.

How the contract ``apply(params, x [H, W, C], taps, relu) -> (logits [K], acts)`` is met:

- **Input layout.** Equinox's convolutions are channel-first and its modules usually take one
  image, so by default (``channels_first=True``, ``batched=False``) the image ``[H, W, C]`` is
  given to the module as ``[C, H, W]``. ``C`` is the ``in_channels`` of the module's first 2-D
  ``eqx.nn.Conv`` (in attribute order), or ``input_shape[2]``.
- **Layers** are the outputs of the submodules' ``__call__``, named by their attribute path
  (``"conv1"``, ``"features.layers.0"``, an index for a list, tuple or ``Sequential`` entry, a key
  for a dict), in the order the forward pass produces them (a second call: ``"name#2"``). With
  ``channels_first``, every 3-D output (4-D with the batch axis) is ``[K, h, w]`` and is shown
  channel-last, ``[h, w, K]``, as the methods need; a tap is given channel-last too. A stateful
  layer's ``(output, state)`` is the layer ``output``. An output that is not one float array, or
  one made inside a transformation of the forward pass (``jax.vmap``, ``lax.scan``), is not a
  layer, and naming it says why.
- **Taps, acts and layer inputs**: ``apply`` rebuilds the module from ``params`` and replaces, in
  that copy (``eqx.tree_at``), every exposed submodule by a wrapper that routes its call through
  ``jaxplain.adapters.recorder.Recorder.call``; the wrapper also taps and records the submodule's
  first positional argument under ``input_key(layer)`` (``Model.layer_inputs``: every layer whose
  input is one float array). The user's module is never touched.
- **Params** are the module's float arrays (``eqx.partition(module, eqx.is_inexact_array)``) as
  nested dicts keyed by the attribute path (``params["features"]["layers"][0]["weight"]``), so
  ``apply`` is pure in them (jit, vmap) and ``model_randomisation`` finds each layer's weights;
  with ``state=`` (``eqx.nn.make_with_state``) the ``eqx.nn.State`` rides along under
  ``params[":state"]`` and the module is called as ``module(x, state)``, the new state dropped.
- **Inference mode**: the module is put in it (``eqx.nn.inference_mode``: ``BatchNorm`` reads its
  running statistics from ``state``, ``Dropout`` does nothing), so no key is needed.
- **ReLU swap** (guided backprop, deconvnet): ``jaxplain.adapters.relus.swap_relus``, which sees
  ``jax.nn.relu`` called directly or through ``eqx.nn.Lambda(jax.nn.relu)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.adapters.flax import scale_to_unit
from jaxplain.adapters.recorder import Output, Recorder, choose, contract_apply
from jaxplain.errors import InputError, JaxplainError
from jaxplain.types import Array, Model, PyTree, input_key

PROBE_SIZE = (224, 224)  # the size the layers are found at when neither input_size nor input_shape says
STATE = ":state"  # params' key of the eqx.nn.State (no attribute path can be this)

Part = tuple[str, Any]  # one step of an attribute path: ("attr", name) or ("item", index or key)


# ----------------------------------------------------------------------------------------------
# The module's tree: submodule paths, and params as nested dicts


def _submodules(module: Any, parts: tuple[Part, ...] = ()) -> list[tuple[tuple[Part, ...], Any]]:
    """``(path, submodule)`` of every callable ``eqx.Module`` below ``module``, parents first, in
    attribute order (lists, tuples and dicts entered)."""
    import equinox as eqx

    out = []

    def visit(value: Any, at: tuple[Part, ...]) -> None:
        if isinstance(value, eqx.Module):
            if at and callable(value):
                out.append((at, value))
            for f in dataclasses.fields(value):
                if not f.metadata.get("static", False):
                    visit(getattr(value, f.name, None), (*at, ("attr", f.name)))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, (*at, ("item", i)))
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, (*at, ("item", k)))

    visit(module, parts)
    return out


def _dotted(parts: tuple[Part, ...]) -> str:
    return ".".join(str(k) for _, k in parts)


def _get(module: Any, parts: tuple[Part, ...]) -> Any:
    for kind, k in parts:
        module = getattr(module, k) if kind == "attr" else module[k]
    return module


def _key(entry: Any) -> Any:
    """The dict key of one ``jax.tree_util`` path entry (attribute name, index or key)."""
    for attr in ("name", "idx", "key"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _nest(paths: list[tuple[Any, ...]], leaves: list[Any]) -> dict:
    """Nested dicts with ``leaf`` at each ``path``."""
    out: dict = {}
    for path, leaf in zip(paths, leaves):
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


def _first_channels(module: Any) -> int | None:
    """``in_channels`` of the first 2-D ``eqx.nn.Conv`` in attribute order, ``None`` if none."""
    import equinox as eqx

    convs = [m for _, m in _submodules(module) if isinstance(m, eqx.nn.Conv) and m.num_spatial_dims == 2]
    return int(convs[0].in_channels) if convs else None


# ----------------------------------------------------------------------------------------------
# The wrapper that routes a submodule's call through the recorder


class _Hooks:
    """One forward pass's bookkeeping around the recorder: channel-last views of outputs and
    inputs, the input taps, and (probe) the inputs' problems."""

    def __init__(self, rec: Recorder, inputs: frozenset[str] | None, channels_first: bool, batched: bool):
        self.rec, self.inputs, self.channels_first, self.batched = rec, inputs, channels_first, batched
        self.input_problems: dict[str, str] = {}

    def moved(self, v: Any) -> bool:
        """Whether ``v`` is a channel-first spatial array ``[K, h, w]`` (``[B, K, h, w]``) shown channel-last."""
        return self.channels_first and isinstance(v, jax.Array) and v.ndim == 3 + self.batched

    def to_last(self, v: Array) -> Array:
        return jnp.moveaxis(v, self.batched, -1)

    def to_first(self, v: Array) -> Array:
        return jnp.moveaxis(v, -1, self.batched)

    def _input(self, name: str, x: Any) -> Any:
        """The layer's input with its tap added and recorded (``input_key(name)``)."""
        rec, key = self.rec, input_key(name)
        if rec.wanted is None:
            self.input_problems[name] = rec._problem(x)
            return x
        if self.inputs is None or name not in self.inputs:
            return x
        moved = self.moved(x)
        v = self.to_last(x) if moved else x
        if key in rec.taps:
            tap = jnp.asarray(rec.taps[key]).astype(v.dtype)
            v = v + (tap[None] if self.batched else tap)
        rec.acts[key] = v[0] if self.batched else v
        return self.to_first(v) if moved else v

    def call(self, path: str, inner: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``inner(*args, **kwargs)`` through ``Recorder.call``, seen channel-last."""
        import equinox as eqx

        rec = self.rec
        if args and path not in rec.running:
            k = rec.calls.get(path, 0) + 1
            args = (self._input(path if k == 1 else f"{path}#{k}", args[0]), *args[1:])
        box: dict[str, Any] = {}

        def run(*a: Any, **kw: Any) -> Any:
            out = inner(*a, **kw)
            if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], eqx.nn.State):
                out, box["state"] = out
            if self.moved(out):
                box["moved"] = True
                out = self.to_last(out)
            return out

        out = rec.call(path, run, *args, **kwargs)
        if box.get("moved"):
            out = self.to_first(out)
        return (out, box["state"]) if "state" in box else out


@functools.cache
def _wrappers() -> tuple[type, type]:
    """The wrapper classes (equinox is imported only here): a plain one, and a
    ``StatefulLayer`` one, so ``eqx.nn.Sequential`` still passes the state to a wrapped stateful layer."""
    import equinox as eqx

    own = ("inner", "path", "hooks")

    class Tapped(eqx.Module):
        inner: Any
        path: str = eqx.field(static=True)
        hooks: _Hooks = eqx.field(static=True)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self.hooks.call(self.path, self.inner, *args, **kwargs)

        def __getattr__(self, name: str) -> Any:  # the parent may read the submodule's attributes
            if name in own or name.startswith("__"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    class TappedStateful(Tapped, eqx.nn.StatefulLayer):
        def is_stateful(self) -> bool:
            return self.inner.is_stateful()

    return Tapped, TappedStateful


def _wrap(module: Any, paths: Sequence[tuple[Part, ...]], hooks: _Hooks) -> Any:
    """A copy of ``module`` whose submodules at ``paths`` call through ``hooks`` (deepest first,
    so a parent's wrapper holds its wrapped children)."""
    import equinox as eqx

    plain, stateful = _wrappers()
    for parts in sorted(paths, key=len, reverse=True):
        sub = _get(module, parts)
        cls = stateful if isinstance(sub, eqx.nn.StatefulLayer) else plain
        module = eqx.tree_at(lambda m, p=parts: _get(m, p), module, cls(sub, _dotted(parts), hooks))
    return module


# ----------------------------------------------------------------------------------------------
# The adapter


def _picker(output: Any) -> Callable[[Any], Any]:
    """What takes the logits out of the module's output: an index, a key, an attribute name or a callable."""
    if output is None:
        return lambda out: out
    if callable(output):
        return output
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        return lambda out: out[output]
    if isinstance(output, str):
        return lambda out: out[output] if isinstance(out, Mapping) else getattr(out, output)
    raise InputError(f"output must be an index, a key, an attribute name or a callable, got {type(output).__name__}")


def _holds(out: Any) -> str:
    """What a non-array output holds, for the error: its entries' shapes."""
    flat, _ = jax.tree_util.tree_flatten_with_path(out)
    return ", ".join(f"{jax.tree_util.keystr(p) or '.'}: {tuple(getattr(v, 'shape', ()))}" for p, v in flat[:12])


class _Parts:
    """The fixed parts of the adapted module: how to rebuild it from ``params`` and call it."""

    def __init__(self, module: Any, state: Any, channels_first: bool, batched: bool, output: Any):
        import equinox as eqx

        module = eqx.nn.inference_mode(module)
        arrays, self.static = eqx.partition(module, eqx.is_inexact_array)
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(arrays)
        self.paths = [tuple(_key(e) for e in p) for p, _ in flat]
        self.params = _nest(self.paths, [v for _, v in flat])
        if state is not None:
            self.params[STATE] = state
        self.stateful, self.channels_first, self.batched = state is not None, channels_first, batched
        self.candidates = [parts for parts, _ in _submodules(module)]
        self.pick, self.output = _picker(output), output

    def module(self, params: PyTree) -> Any:
        import equinox as eqx

        leaves = []
        for path in self.paths:
            node = params
            for k in path:
                node = node[k]
            leaves.append(node)
        return eqx.combine(jax.tree.unflatten(self.treedef, leaves), self.static)

    def run(self, params: PyTree, x: Array, hooks: _Hooks, paths: Sequence[tuple[Part, ...]]) -> Any:
        """The logits of ``x`` (``[H, W, C]``, ``[B, H, W, C]`` when batched), submodules at ``paths`` hooked."""
        import equinox as eqx

        net = _wrap(self.module(params), paths, hooks)
        v = jnp.moveaxis(x, -1, self.batched) if self.channels_first else x
        if self.stateful:
            out = net(v, params[STATE])
            if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], eqx.nn.State):
                out = out[0]
        else:
            out = net(v)
        return self.pick(out)


def _probe(parts: _Parts, shape: tuple[int, int, int], name: str) -> tuple[list[Output], dict[str, str]]:
    """Every submodule call of one traced forward pass (no compute) on an image of ``shape`` ``[H, W, C]``,
    and each call's input problem ("" when its first argument is one float array)."""
    full = ((2,) if parts.batched else ()) + shape
    seen: list[_Hooks] = []

    def forward(p: PyTree, v: Array) -> Any:
        seen.append(_Hooks(Recorder(None, {}, parts.batched), None, parts.channels_first, parts.batched))
        return parts.run(p, v, seen[-1], parts.candidates)

    try:
        logits = jax.eval_shape(forward, parts.params, jax.ShapeDtypeStruct(full, jnp.float32))
    except JaxplainError:
        raise
    except Exception as e:
        if not parts.stateful and isinstance(e, TypeError) and "required positional argument" in str(e):
            raise InputError(f"{name} takes more than the image ({e}): a stateful module, called as module(x, state), "
                             "needs state= (the eqx.nn.State of eqx.nn.make_with_state)") from e
        given = (full[:-3] + (full[-1], *full[-3:-1])) if parts.channels_first else full
        raise InputError(f"{name} does not run on a {full} float32 input{' given to it as ' + str(given) if parts.channels_first else ''} "
                         f"({type(e).__name__}: {e}); give input_shape=(H, W, C) it takes, channels_first=False if it "
                         "takes channel-last images, and batched=True if it takes a batch") from e
    want = 2 if parts.batched else 1
    if not isinstance(logits, jax.ShapeDtypeStruct):
        raise InputError(f"{name} returns a {type(logits).__name__}, not an array of logits: pass output= (an index, "
                         f"a key, an attribute name or a callable) to pick them; it holds {_holds(logits)}")
    if logits.ndim != want or (parts.batched and logits.shape[0] != 2):
        picked = "" if parts.output is None else f" from output={parts.output!r}" + (
            ", which picks from the module's output, the state it returns already set aside" if parts.stateful else "")
        raise InputError(f"{name} must return logits {'[B, K]' if parts.batched else '[K]'}, got {tuple(logits.shape)}{picked}")
    return seen[-1].rec.outputs, seen[-1].input_problems


def _apply(parts: _Parts, layers: tuple[str, ...], inputs: tuple[str, ...], name: str) -> Callable[..., Any]:
    """The contract's ``apply``, exposing ``layers`` and the inputs of ``inputs``."""
    hooked = [p for p in parts.candidates if _dotted(p) in {n.split("#")[0] for n in layers + inputs}]
    wanted = frozenset(layers)

    def forward(params: PyTree, x: Array, taps: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        hooks = _Hooks(Recorder(wanted, taps, parts.batched), frozenset(inputs), parts.channels_first, parts.batched)
        out = parts.run(params, x[None] if parts.batched else x, hooks, hooked)
        return (out[0] if parts.batched else out), hooks.rec.acts

    return contract_apply(forward, layers, inputs, name)


def _shape(module: Any, input_shape: Any, input_size: Any) -> tuple[tuple[int, int] | None, int]:
    """``(input_size, channels)`` from the arguments and the module's first conv."""
    if input_shape is not None:
        s = tuple(input_shape)
        if len(s) != 3 or not all(v is None or (isinstance(v, (int, np.integer)) and v > 0) for v in s[:2]) \
                or not isinstance(s[2], (int, np.integer)) or s[2] < 1:
            raise InputError(f"input_shape must be (H, W, C) of one image, channel-last (H, W may be None), got {input_shape!r}")
        if input_size is not None and tuple(input_size) != tuple(s[:2]):
            raise InputError(f"input_size {tuple(input_size)} disagrees with input_shape {s}")
        size = None if s[0] is None or s[1] is None else (int(s[0]), int(s[1]))
        return size, int(s[2])
    if input_size is not None:
        if len(tuple(input_size)) != 2 or min(input_size) < 1:
            raise InputError(f"input_size must be (H, W), got {input_size!r}")
        input_size = (int(input_size[0]), int(input_size[1]))
    channels = _first_channels(module)
    if channels is None:
        raise InputError(f"{type(module).__name__} has no 2-D eqx.nn.Conv to read its input channels from: "
                         "give input_shape=(H, W, C)")
    return input_size, channels


def from_equinox(module: Any, *, input_shape: tuple[int | None, int | None, int] | None = None,
                 input_size: tuple[int, int] | None = None, channels_first: bool = True, batched: bool = False,
                 state: Any = None, output: Any = None, layers: Sequence[str] | None = None,
                 preprocess: Callable[[np.ndarray], np.ndarray] | None = None, name: str | None = None) -> Model:
    """A ``Model`` from an Equinox module (see the module docstring for how).

    Args:
      module: an ``eqx.Module`` returning logits ``[K]`` for one image (``[B, K]`` if ``batched``).
      input_shape: ``(H, W, C)`` of one image, channel-last as jaxplain's images are (``H, W``
        may be ``None``); default: ``C`` from the first 2-D ``eqx.nn.Conv``'s ``in_channels``.
      input_size: ``(H, W)`` the module takes; ``None`` when any size works.
      channels_first: the module takes ``[C, H, W]`` (Equinox's convolutions); ``False``: ``[H, W, C]``.
      batched: the module takes a batch (``False``: one image, Equinox's convention).
      state: the ``eqx.nn.State`` of a stateful module (``eqx.nn.make_with_state``); it is then
        called as ``module(x, state)`` and returns ``(output, state)``.
      output: picks the logits from what the module returns: an index, a key, an attribute
        name or a callable.
      layers: the layer names to expose (default: every tappable submodule output).
      preprocess: ``uint8 [B, H, W, C] -> float32 [B, H, W, C]`` (default: scaled to ``[0, 1]``;
        a 1-channel model's pictures are read grayscale).
      name: the model's name (default: the module's class name).
    """
    try:
        import equinox as eqx
    except ImportError as e:
        raise InputError("from_equinox needs equinox installed (pip install equinox)") from e
    if not isinstance(module, eqx.Module):
        raise InputError(f"from_equinox takes an equinox.Module, got {type(module).__name__}")
    if state is not None and not isinstance(state, eqx.nn.State):
        raise InputError(f"state must be the eqx.nn.State from eqx.nn.make_with_state, got {type(state).__name__}")
    name = name or type(module).__name__
    size, channels = _shape(module, input_shape, input_size)
    parts = _Parts(module, state, bool(channels_first), bool(batched), output)
    parts.params = jax.device_put(parts.params)
    outputs, problems = _probe(parts, (*(size or PROBE_SIZE), channels), name)
    chosen = choose(outputs, layers, name)
    inputs = tuple(n for n in chosen if problems.get(n) == "")
    if preprocess is None:
        preprocess = scale_to_unit
    return Model(apply=_apply(parts, chosen, inputs, name), params=parts.params, layers=chosen,
                 preprocess=preprocess, input_size=size, name=name, source="equinox", channels=channels,
                 layer_inputs=inputs)
