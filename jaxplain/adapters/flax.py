"""Any Flax module as a ``Model``: ``from_flax(module, variables)``, Linen or NNX.

How the contract ``apply(params, x [H, W, C], taps, relu) -> (logits [K], acts)`` is met
without knowing the network:

- **Layers** are the outputs of the submodules' ``__call__``, named by their path with dots
  (``"layer4.2.conv3"``; Linen's auto names such as ``"Conv_0"``), in the order the forward
  pass produces them. A submodule called twice gives ``"name"`` then ``"name#2"``. An output that
  is not one float array carrying the batch axis (a tuple, a batch-independent table), or that
  is made inside a transformation of the forward pass (``nn.remat``, ``nn.scan``: the interceptor
  sees only the inner call, in another trace), is not a layer; naming it raises an
  ``InputError`` saying why.
- **Layer inputs**: a layer whose call's first positional argument is such an array also
  exposes that input (``Model.layer_inputs``), tapped and recorded under ``input_key(layer)``
  (``"layer:input"``) before the call runs.
- **Taps and acts**, Linen: ``nn.intercept_methods`` adds the tap to each such output and
  records the sum. NNX has no interceptor, so ``apply`` works on a private copy of the graph
  (``nnx.merge`` of the weights it is given) whose submodules' classes are swapped for
  subclasses whose ``__call__`` does the same; the caller's module is never touched.
  (``capture_intermediates`` / ``nnx.capture`` record outputs but cannot add a tap, and
  ``Module.perturb`` adds a tap but records no value: one mechanism gives both.)
- **ReLU swapping** (guided backprop, deconvnet): the forward pass is traced to a jaxpr in which
  every call of ``jax.nn.relu`` (which ``flax.linen.relu`` and ``nnx.relu`` are), in the module
  or in any submodule, also inside jitted or rematerialised blocks, is replaced by the method's
  rectifier. A network with none, or with one
  inside a loop, a branch or a custom derivative (``scan``, ``cond``, ``custom_vjp``), raises an
  ``InputError``: its rectifiers cannot be swapped. A ReLU written as ``jnp.maximum(x, 0)`` is
  not recognised and stays a plain ReLU.
- **Batch**: modules are called on ``x[None]`` (``batched=False``: on ``x``) and the batch axis
  is removed from the logits and every layer; ``apply`` is pure in ``params`` (Linen: the
  variables dict; NNX: the float state of the module), so it jits and vmaps.
- **Inference mode**: ``call_kwargs`` (``{"train": False}``) go to every call (Linen
  ``module.apply(variables, x, **call_kwargs)``, NNX ``module(x, **call_kwargs)``). NNX modules
  are also put in it (``nnx.view(deterministic=True, use_running_average=True)``); a Linen
  module that updates a collection (BatchNorm's statistics) or asks for an rng (Dropout) is
  refused with the ``call_kwargs`` to pass.
- **Output**: the module returns the logits, or ``output=`` picks them from what it returns (an
  index, a key, an attribute name or a function).
- **Channels**: ``C`` is read from the first submodule call holding a ``kernel`` in the forward
  pass (the parameter tree's order is alphabetical, not the forward order): a convolution's
  ``[kh, kw, C_in, C_out]`` gives ``C = C_in * feature_group_count``. A first Dense on a
  flattened input says nothing of ``C``: a module without a convolution first gets RGB's 3 if it
  runs on them, else an ``InputError`` asking for ``input_shape=(H, W, C)``.

The layers are found by tracing the module (``jax.eval_shape``, no compute) on an input of
``input_size`` (224x224 when ``None``): once up to its first kernel for ``C`` (on 3 channels,
which no layer before it reads), once whole on ``C`` channels.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.adapters.recorder import Output, Recorder, choose, contract_apply
from jaxplain.errors import InputError, JaxplainError
from jaxplain.types import Array, Model, PyTree, input_key

PROBE_SIZE = (224, 224)  # the size the layers are found at when input_size is None


def scale_to_unit(images: np.ndarray) -> np.ndarray:
    """The default preprocessing: ``uint8 [B, H, W, C] -> float32 [B, H, W, C]`` in ``[0, 1]``, any ``C``."""
    return np.asarray(images, np.float32) / np.float32(255.0)


Runner = Callable[[PyTree, Array, Recorder], Any]  # (params, input with batch axis, recorder) -> module output


# ----------------------------------------------------------------------------------------------
# Linen


def _linen_runner(module: Any, call_kwargs: Mapping[str, Any]) -> Runner:
    """``run(variables, x, rec)``: ``module.apply(variables, x, **call_kwargs)``, every submodule's
    ``__call__`` passed through ``rec``."""
    import flax.linen as nn

    def run(variables: PyTree, x: Array, rec: Recorder) -> Any:
        def intercept(next_fun, args, kwargs, context):
            m = context.module
            path = m.path if context.method_name == "__call__" else ()
            if not path:
                return next_fun(*args, **kwargs)
            name = ".".join(map(str, path))
            if isinstance(rec, _KernelProbe) and m.has_variable("params", "kernel"):
                rec.stop(name, m.get_variable("params", "kernel"), getattr(m, "feature_group_count", 1))
            return rec.call(name, next_fun, *args, **kwargs)

        with nn.intercept_methods(intercept):
            return module.apply(variables, x, **call_kwargs)

    return run


def _linen_variables(variables: Any) -> PyTree:
    """The variables dict ``{"params": ..., "batch_stats": ...}``; a bare params tree is wrapped."""
    if not isinstance(variables, Mapping):
        raise InputError("a Linen module needs its variables: from_flax(module, variables), where variables is "
                         f"what module.init returned (or its 'params'), got {type(variables).__name__}")
    return dict(variables) if "params" in variables else {"params": variables}


# ----------------------------------------------------------------------------------------------
# NNX


_active = threading.local()  # the stack of (paths by module id, recorder) of the NNX passes running


@functools.cache
def _tapping(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` passes its output through the running recorder."""

    def __call__(self, *args, **kwargs):
        stack = getattr(_active, "stack", None)
        paths, rec = stack[-1] if stack else ({}, None)
        path = paths.get(id(self))
        if path is None:
            return cls.__call__(self, *args, **kwargs)
        kernel = getattr(self, "kernel", None)
        if isinstance(rec, _KernelProbe) and kernel is not None:
            rec.stop(path, kernel.get_value() if hasattr(kernel, "get_value") else kernel,
                     getattr(self, "feature_group_count", 1))
        return rec.call(path, functools.partial(cls.__call__, self), *args, **kwargs)

    return type(cls)(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                            "__qualname__": cls.__qualname__})


def _is_weight(path: tuple, value: Any) -> bool:
    """NNX state that ``params`` carries: float arrays (weights, batch statistics), not RNG keys,
    counters or sown intermediates."""
    from flax import nnx

    if isinstance(value, nnx.Intermediate):
        return False
    v = value.get_value() if isinstance(value, nnx.Variable) else value
    return isinstance(v, (jax.Array, np.ndarray)) and jnp.issubdtype(v.dtype, jnp.inexact)


def _nnx_parts(module: Any, state: Any, call_kwargs: Mapping[str, Any]) -> tuple[PyTree, Runner]:
    """``(weights, run)`` of an NNX module: its float state, and a runner on a private copy that
    calls it as ``module(x, **call_kwargs)``."""
    from flax import nnx

    copy = nnx.clone(module)
    if state is not None:
        try:
            nnx.update(copy, state)
        except Exception as e:  # flax says what does not fit
            raise InputError(f"variables do not fit the {type(module).__name__} module: {e}") from e
    copy = nnx.view(copy, deterministic=True, use_running_average=True, raise_if_not_found=False)
    graphdef, weights, rest = nnx.split(copy, _is_weight, ...)

    def run(params: PyTree, x: Array, rec: Recorder) -> Any:
        net = nnx.merge(graphdef, params, rest)
        paths = {}
        for path, m in nnx.iter_modules(net):
            if path and callable(m):
                paths[id(m)] = ".".join(map(str, path))
                object.__setattr__(m, "__class__", _tapping(type(m)))
        stack = _active.__dict__.setdefault("stack", [])
        stack.append((paths, rec))
        try:
            return net(x, **call_kwargs)
        finally:
            stack.pop()

    return weights, run


# ----------------------------------------------------------------------------------------------
# The adapter


class _Kernel(Exception):
    """Stops the channel probe at the first submodule call holding a kernel."""

    def __init__(self, path: str, shape: tuple[int, ...], groups: int):
        super().__init__(path)
        self.path, self.shape, self.groups = path, shape, groups


class _KernelProbe(Recorder):
    """The recorder of the channel probe: the runners call ``stop`` at a submodule holding a kernel."""

    def stop(self, path: str, kernel: Any, groups: Any) -> None:
        raise _Kernel(path, tuple(jnp.shape(kernel)), groups if isinstance(groups, int) and groups > 0 else 1)


def _mode_hint(module: Any) -> str:
    """``call_kwargs={...}`` that would put ``module`` in inference mode, read from its ``__call__``."""
    try:
        params = inspect.signature(type(module).__call__).parameters.values()
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.name in ("train", "training", "is_training"):
            return f"call_kwargs={{{p.name!r}: False}}"
        if p.name in ("deterministic", "use_running_average", "inference", "eval"):
            return f"call_kwargs={{{p.name!r}: True}}"
    flags = [p for p in params if isinstance(p.default, bool)]
    if flags:
        return f"call_kwargs={{{flags[0].name!r}: {not flags[0].default}}}"
    return "call_kwargs={...} with the argument of its __call__ that selects inference mode"


def _failure(e: Exception, name: str, module: Any, call_kwargs: Mapping[str, Any]) -> str | None:
    """What to tell a user whose module failed for a reason other than the input's shape (None if none)."""
    import flax.errors

    given = f" (call_kwargs={dict(call_kwargs)!r} was passed)" if call_kwargs else ""
    if isinstance(e, flax.errors.ModifyScopeVariableError):
        return (f"{name} updates a collection when called ({e}): it runs in training mode{given}; pass "
                f"{_mode_hint(module)} so every call runs in inference mode")
    if isinstance(e, flax.errors.InvalidRngError):
        return (f"{name} asks for random numbers when called ({e}): it runs in training mode (Dropout){given}; pass "
                f"{_mode_hint(module)} so every call runs in inference mode")
    if call_kwargs and isinstance(e, TypeError) and "keyword argument" in str(e):
        return f"call_kwargs={dict(call_kwargs)!r} do not fit how {name} is called ({e})"
    return None


def _channels(run: Runner, params: PyTree, size: tuple[int, int], batched: bool, name: str, module: Any,
              call_kwargs: Mapping[str, Any]) -> tuple[int | None, str]:
    """``(C, "")``, C read from the first kernel of the forward pass (a trace stopped there, no
    compute), or ``(None, why it cannot be read)``."""
    shape = ((2,) if batched else ()) + (*size, 3)
    try:
        jax.eval_shape(lambda p, v: run(p, v, _KernelProbe(None, {}, batched)), params,
                       jax.ShapeDtypeStruct(shape, jnp.float32))
    except _Kernel as k:
        if len(k.shape) == 4:
            return k.shape[2] * k.groups, ""
        return None, (f"{name}'s first layer with weights, {k.path!r}, has a kernel {k.shape}, not a convolution's "
                      "[kh, kw, C_in, C_out]: the channel count C of its input cannot be read from it")
    except JaxplainError:
        raise
    except Exception as e:
        why = _failure(e, name, module, call_kwargs)
        if why:
            raise InputError(why) from e
        return None, f"{name} does not run up to its first convolution, where the channel count C would be read"
    return None, f"{name} has no convolution kernel [kh, kw, C_in, C_out] to read the channel count C of its input from"


def _describe(v: Any) -> str:
    return f"{tuple(v.shape)} {v.dtype}" if hasattr(v, "shape") and hasattr(v, "dtype") else type(v).__name__


def _holds(out: Any) -> str:
    """What a module's output holds: its keys, indices or fields with their shapes."""
    if isinstance(out, Mapping):
        items = [(repr(k), v) for k, v in out.items()]
    elif hasattr(out, "_fields"):  # a namedtuple: by index or attribute
        items = [(f"[{i}] .{f}", getattr(out, f)) for i, f in enumerate(out._fields)]
    elif isinstance(out, (tuple, list)):
        items = [(f"[{i}]", v) for i, v in enumerate(out)]
    elif dataclasses.is_dataclass(out):
        items = [(f".{f.name}", getattr(out, f.name)) for f in dataclasses.fields(out)]
    else:
        return f"a {type(out).__name__}"
    return f"a {type(out).__name__} of " + ", ".join(f"{k} {_describe(v)}" for k, v in items)


def _picker(output: int | str | Callable[[Any], Any] | None, name: str) -> Callable[[Any], Array]:
    """``out -> logits`` of ``output=``; an ``InputError`` listing what ``out`` holds when that is not an array."""
    if output is not None and not callable(output) and (isinstance(output, bool) or not isinstance(output, (int, str))):
        raise InputError(f"output must be an index, a key, an attribute name or a function out -> logits, got {output!r}")

    def take(out: Any) -> Any:
        if output is None or callable(output):
            return out if output is None else output(out)
        if isinstance(out, Mapping):
            if output in out:
                return out[output]
        elif isinstance(output, int):
            if isinstance(out, (tuple, list)) and -len(out) <= output < len(out):
                return out[output]
        elif not isinstance(out, jax.Array) and hasattr(out, output):
            return getattr(out, output)
        raise InputError(f"output={output!r} is not in what {name} returns: {_holds(out)}")

    def pick(out: Any) -> Array:
        logits = take(out)
        if not isinstance(logits, jax.Array):
            said = "" if output is None else f" output={output!r} picks {_holds(logits)} from it, "
            raise InputError(f"{name} returns {_holds(out)} (traced on a batch of 2),{said} not one array of logits; "
                             "pass output= to pick them: an index, a key, an attribute name or a function out -> logits")
        return logits

    return pick


def _probe(run: Runner, params: PyTree, size: tuple[int, int], batched: bool, name: str, *, channels: int = 3,
           module: Any = None, call_kwargs: Mapping[str, Any] | None = None,
           pick: Callable[[Any], Array] = lambda out: out, unknown: str = "") -> list[Output]:
    """Every submodule call of one traced forward pass (no compute) on a ``size`` input of zeros
    with ``channels`` channels (``unknown``: why ``C`` could not be read, said if it fails)."""
    call_kwargs = call_kwargs or {}
    shape = ((2,) if batched else ()) + (*size, channels)
    recs: list[Recorder] = []

    def forward(p: PyTree, v: Array) -> Any:
        recs.append(Recorder(None, {}, batched))
        return pick(run(p, v, recs[-1]))

    try:
        logits = jax.eval_shape(forward, params, jax.ShapeDtypeStruct(shape, jnp.float32))
    except JaxplainError:
        raise
    except Exception as e:
        why = _failure(e, name, module, call_kwargs)
        if why:
            raise InputError(why) from e
        if unknown:
            raise InputError(f"{unknown}, and it does not run on {channels} channels ({shape} float32 input: "
                             f"{type(e).__name__}: {e}); give input_shape=(H, W, C)") from e
        raise InputError(f"{name} does not run on a {shape} float32 input ({type(e).__name__}: {e}); give "
                         "input_size=(H, W) if it takes one size (input_shape=(H, W, C) if its channel count is not "
                         f"{shape[-1]}), and call it on a batch (batched=True) or on one image (batched=False) as "
                         "it expects") from e
    want = 2 if batched else 1
    if not isinstance(logits, jax.ShapeDtypeStruct) or logits.ndim != want or (batched and logits.shape[0] != 2):
        got = tuple(logits.shape) if isinstance(logits, jax.ShapeDtypeStruct) else type(logits).__name__
        raise InputError(f"{name} must return logits {'[B, K]' if batched else '[K]'}, got {got}")
    return recs[-1].outputs


def _inputs(outputs: list[Output], layers: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``layers`` whose input (the call's first argument) can be tapped."""
    return tuple(o.name for o in outputs if o.name in layers and not o.input_problem)


def _apply(run: Runner, layers: tuple[str, ...], batched: bool, name: str, *, inputs: tuple[str, ...] = (),
           pick: Callable[[Any], Array] = lambda out: out) -> Callable[..., Any]:
    """The contract's ``apply`` over ``run``, exposing ``layers`` and the inputs of ``inputs``."""
    wanted = frozenset(layers) | {input_key(n) for n in inputs}

    def forward(params: PyTree, x: Array, taps: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        rec = Recorder(wanted, taps, batched)
        out = pick(run(params, x[None] if batched else x, rec))
        return (out[0] if batched else out), rec.acts

    return contract_apply(forward, layers, inputs, name)


def _shape(input_shape: Any, input_size: Any) -> tuple[tuple[int, int] | None, int | None]:
    """``(input_size, channels)`` from the arguments (``channels`` None: to be read from the module)."""
    size = None
    if input_size is not None:
        if len(tuple(input_size)) != 2 or min(input_size) < 1:
            raise InputError(f"input_size must be (H, W), got {input_size!r}")
        size = (int(input_size[0]), int(input_size[1]))
    if input_shape is None:
        return size, None
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    ok = len(shape) == 3 and isinstance(shape[2], (int, np.integer)) and shape[2] >= 1 and (
        shape[:2] == (None, None) or all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape[:2]))
    if not ok:
        raise InputError(f"input_shape must be (H, W, C) (H, W None when any size works), got {input_shape!r}")
    given = None if shape[0] is None else (int(shape[0]), int(shape[1]))
    if size is not None and given is not None and size != given:
        raise InputError(f"input_size={size} and input_shape={shape} disagree; give one of them")
    return size or given, int(shape[2])


def from_flax(module: Any, variables: Any = None, *, input_shape: tuple[int | None, int | None, int] | None = None,
              input_size: tuple[int, int] | None = None, call_kwargs: Mapping[str, Any] | None = None,
              output: int | str | Callable[[Any], Any] | None = None, layers: Sequence[str] | None = None,
              preprocess: Callable[[np.ndarray], np.ndarray] | None = None, name: str | None = None,
              batched: bool = True) -> Model:
    """A ``Model`` from a Flax module (see the module docstring for how).

    Args:
      module: a ``flax.linen.Module`` or a ``flax.nnx.Module``.
      variables: Linen: the variables ``module.init`` returned (or their ``"params"``).
        NNX: ``None`` (the module's own state) or a state to load into a copy of it.
      input_shape: ``(H, W, C)`` of one image (``H, W`` None when any size works); default: ``C``
        read from the module's first convolution kernel ``[kh, kw, C, C_out]``; required when no
        convolution comes first (a Dense on the flattened image) and 3 channels do not fit.
      input_size: ``(H, W)`` the module takes; ``None`` when any size works.
      call_kwargs: keyword arguments of every call (``{"train": False}``): Linen
        ``module.apply(variables, x, **call_kwargs)``, NNX ``module(x, **call_kwargs)``.
      output: how to get the logits ``[B, K]`` from what the module returns: an index (a tuple),
        a key (a dict), an attribute name (a dataclass, a namedtuple) or a function
        ``out -> logits``; ``None``: it returns them.
      layers: the layer names to expose (default: every tappable submodule output).
      preprocess: ``uint8 [B, H, W, C] -> float32 [B, H, W, C]`` (default: scale to ``[0, 1]``).
      name: the model's name (default: the module's class name).
      batched: the module expects a batch ``[B, H, W, C]`` (``False``: one image ``[H, W, C]``).
    """
    import flax.linen as nn
    from flax import nnx

    name = name or type(module).__name__
    if call_kwargs is not None and (not isinstance(call_kwargs, Mapping) or not all(isinstance(k, str) for k in call_kwargs)):
        raise InputError(f"call_kwargs must be a dict of keyword arguments such as {{'train': False}}, got {call_kwargs!r}")
    call_kwargs = dict(call_kwargs or {})
    pick = _picker(output, name)
    if isinstance(module, nn.Module):
        params, run = _linen_variables(variables), _linen_runner(module, call_kwargs)
    elif isinstance(module, nnx.Module):
        params, run = _nnx_parts(module, variables, call_kwargs)
    else:
        raise InputError(f"from_flax takes a flax.linen or flax.nnx Module, got {type(module).__name__}")
    input_size, channels = _shape(input_shape, input_size)
    params = jax.device_put(params)
    size = input_size or PROBE_SIZE
    unknown = ""
    if channels is None:  # read from the first kernel; if it cannot be, the 3 channels of RGB if they run
        channels, unknown = _channels(run, params, size, batched, name, module, call_kwargs)
        channels = channels or 3
    outputs = _probe(run, params, size, batched, name, channels=channels, module=module, call_kwargs=call_kwargs,
                     pick=pick, unknown=unknown)
    chosen = choose(outputs, layers, name)
    inputs = _inputs(outputs, chosen)
    return Model(apply=_apply(run, chosen, batched, name, inputs=inputs, pick=pick), params=params, layers=chosen,
                 preprocess=preprocess or scale_to_unit, input_size=input_size, channels=channels, name=name,
                 source="flax", layer_inputs=inputs)
