"""Any Flax module as a ``Model``: ``from_flax(module, params_or_state)``, Linen or NNX.

How the contract ``apply(params, x [H, W, C], taps, relu) -> (logits [K], acts)`` is met
without knowing the network:

- **Layers** are the outputs of the submodules' ``__call__``, named by their path with dots
  (``"layer4.2.conv3"``; Linen's auto names such as ``"Conv_0"``), in the order the forward
  pass produces them. A submodule called twice gives ``"name"`` then ``"name#2"``. An output that
  is not one float array carrying the batch axis (a tuple, a batch-independent table), or that
  is made inside a transformation of the forward pass (``nn.remat``, ``nn.scan``: the interceptor
  sees only the inner call, in another trace), is not a layer; naming it raises an
  ``InputError`` saying why.
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
- The module must run in inference mode when called as ``module(x)``: NNX modules are put in it
  (``nnx.view(deterministic=True, use_running_average=True)``); a Linen module must default to
  it (bind ``train=False`` in a wrapper).

The layers are found by tracing the module once (``jax.eval_shape``, no compute) on an input of
``input_size`` (224x224 when ``None``) with 3 channels.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.adapters.recorder import Output, Recorder
from jaxplain.adapters.relus import swap_relus
from jaxplain.errors import InputError, JaxplainError
from jaxplain.types import Array, Model, PyTree, Relu

PROBE_SIZE = (224, 224)  # the size the layers are found at when input_size is None


def scale_to_unit(images: np.ndarray) -> np.ndarray:
    """The default preprocessing: ``uint8 [B, H, W, 3] -> float32 [B, H, W, 3]`` in ``[0, 1]``."""
    return np.asarray(images, np.float32) / np.float32(255.0)


Runner = Callable[[PyTree, Array, Recorder], Any]  # (params, input with batch axis, recorder) -> module output


# ----------------------------------------------------------------------------------------------
# Linen


def _linen_runner(module: Any) -> Runner:
    """``run(variables, x, rec)``: ``module.apply``, every submodule's ``__call__`` output passed through ``rec``."""
    import flax.linen as nn

    def run(variables: PyTree, x: Array, rec: Recorder) -> Any:
        def intercept(next_fun, args, kwargs, context):
            path = context.module.path if context.method_name == "__call__" else ()
            if not path:
                return next_fun(*args, **kwargs)
            return rec.call(".".join(map(str, path)), next_fun, *args, **kwargs)

        with nn.intercept_methods(intercept):
            return module.apply(variables, x)

    return run


def _linen_variables(params_or_state: Any) -> PyTree:
    """The variables dict ``{"params": ..., "batch_stats": ...}``; a bare params tree is wrapped."""
    if not isinstance(params_or_state, Mapping):
        raise InputError("a Linen module needs its variables: from_flax(module, variables), where variables is "
                         f"what module.init returned (or its 'params'), got {type(params_or_state).__name__}")
    return dict(params_or_state) if "params" in params_or_state else {"params": params_or_state}


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
        return rec.call(path, cls.__call__, self, *args, **kwargs)

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


def _nnx_parts(module: Any, state: Any) -> tuple[PyTree, Runner]:
    """``(weights, run)`` of an NNX module: its float state, and a runner on a private copy."""
    from flax import nnx

    copy = nnx.clone(module)
    if state is not None:
        try:
            nnx.update(copy, state)
        except Exception as e:  # flax says what does not fit
            raise InputError(f"params_or_state does not fit the {type(module).__name__} module: {e}") from e
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
            return net(x)
        finally:
            stack.pop()

    return weights, run


# ----------------------------------------------------------------------------------------------
# The adapter


def _probe(run: Runner, params: PyTree, size: tuple[int, int], batched: bool, name: str) -> list[Output]:
    """Every submodule call of one traced forward pass (no compute) on a ``size`` input of zeros."""
    shape = ((2,) if batched else ()) + (*size, 3)
    recs: list[Recorder] = []

    def forward(p: PyTree, v: Array) -> Any:
        recs.append(Recorder(None, {}, batched))
        return run(p, v, recs[-1])

    try:
        logits = jax.eval_shape(forward, params, jax.ShapeDtypeStruct(shape, jnp.float32))
    except JaxplainError:
        raise
    except Exception as e:
        raise InputError(f"{name} does not run on a {shape} float32 input ({type(e).__name__}: {e}); give "
                         "input_size=(H, W) if it takes one size, and call it on a batch (batched=True) or on one "
                         "image (batched=False) as it expects") from e
    want = 2 if batched else 1
    if not isinstance(logits, jax.ShapeDtypeStruct) or logits.ndim != want or (batched and logits.shape[0] != 2):
        got = tuple(logits.shape) if isinstance(logits, jax.ShapeDtypeStruct) else type(logits).__name__
        raise InputError(f"{name} must return logits {'[B, K]' if batched else '[K]'}, got {got}")
    return recs[-1].outputs


def _choose(outputs: list[Output], layers: Sequence[str] | None, name: str) -> tuple[str, ...]:
    """The layers asked for (default: every tappable output), in forward order."""
    valid = tuple(o.name for o in outputs if not o.problem)
    if layers is None:
        return valid
    if isinstance(layers, str):
        raise InputError(f"layers must be a list of layer names, got the string {layers!r}")
    problems = {o.name: o.problem for o in outputs}
    for layer in layers:
        if layer not in problems:
            raise InputError(f"unknown layer {layer!r}; {name}'s layers: {', '.join(valid)}")
        if problems[layer]:
            raise InputError(f"layer {layer!r} of {name} cannot be tapped: {problems[layer]}")
    asked = set(layers)
    return tuple(n for n in valid if n in asked)


def _apply(run: Runner, layers: tuple[str, ...], batched: bool, name: str) -> Callable[..., Any]:
    """The contract's ``apply`` over ``run``, exposing ``layers``."""
    wanted = frozenset(layers)

    def forward(params: PyTree, x: Array, taps: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        rec = Recorder(wanted, taps, batched)
        out = run(params, x[None] if batched else x, rec)
        return (out[0] if batched else out), rec.acts

    def apply(params: PyTree, x: Array, taps: Mapping[str, Array] | None = None,
              relu: Relu | None = None) -> tuple[Array, dict[str, Array]]:
        """``(logits [K], {layer: activation})`` of one image ``x [H, W, C]``."""
        if jnp.ndim(x) != 3:
            raise InputError(f"{name}'s apply takes one image [H, W, C], got shape {jnp.shape(x)}")
        taps = dict(taps or {})
        unknown = [k for k in taps if k not in wanted]
        if unknown:
            raise InputError(f"taps name unknown layers {unknown}; {name}'s layers: {', '.join(layers)}")
        if relu is None or relu is jax.nn.relu:
            return forward(params, x, taps)
        return swap_relus(forward, relu, name)(params, x, taps)

    return apply


def from_flax(module: Any, params_or_state: Any = None, *, layers: Sequence[str] | None = None,
              preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
              input_size: tuple[int, int] | None = None, name: str | None = None,
              batched: bool = True) -> Model:
    """A ``Model`` from a Flax module (see the module docstring for how).

    Args:
      module: a ``flax.linen.Module`` or a ``flax.nnx.Module`` returning logits.
      params_or_state: Linen: the variables ``module.init`` returned (or their ``"params"``).
        NNX: ``None`` (the module's own state) or a state to load into a copy of it.
      layers: the layer names to expose (default: every tappable submodule output).
      preprocess: ``uint8 [B, H, W, 3] -> float32 [B, H, W, C]`` (default: scale to ``[0, 1]``).
      input_size: ``(H, W)`` the module takes; ``None`` when any size works.
      name: the model's name (default: the module's class name).
      batched: the module expects a batch ``[B, H, W, C]`` (``False``: one image ``[H, W, C]``).
    """
    import flax.linen as nn
    from flax import nnx

    name = name or type(module).__name__
    if isinstance(module, nn.Module):
        params, run = _linen_variables(params_or_state), _linen_runner(module)
    elif isinstance(module, nnx.Module):
        params, run = _nnx_parts(module, params_or_state)
    else:
        raise InputError(f"from_flax takes a flax.linen or flax.nnx Module, got {type(module).__name__}")
    if input_size is not None:
        if len(tuple(input_size)) != 2 or min(input_size) < 1:
            raise InputError(f"input_size must be (H, W), got {input_size!r}")
        input_size = (int(input_size[0]), int(input_size[1]))
    params = jax.device_put(params)
    chosen = _choose(_probe(run, params, input_size or PROBE_SIZE, batched, name), layers, name)
    return Model(apply=_apply(run, chosen, batched, name), params=params, layers=chosen,
                 preprocess=preprocess or scale_to_unit, input_size=input_size, name=name, source="flax")
