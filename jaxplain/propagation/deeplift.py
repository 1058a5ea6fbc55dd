"""DeepLIFT's backward walk (Shrikumar et al. 2017, the Rescale rule, as Captum's ``DeepLift``):
multipliers from the output to the image, node by node, comparing two forward passes (the input's
and the reference's).

A node linear in its activations (conv and dense layers with their bias and batch norm, taps,
routing, sums, pools by averaging, scales and shifts by parameters) passes multipliers by its
gradient. An elementwise non-linearity (a ReLU, ``max(x, c)``, sigmoid, tanh, exp, ...) multiplies
them by ``delta_out / delta_in`` where ``|delta_in| >= eps``, else by its gradient. A max pool
(any value-picking reduction) takes the cross maximum ``m = max(out, out_ref)`` and sends
``g (m - out_ref)`` back along the input's own argmax and ``g (out - m)`` along the reference's,
divided by ``delta_in`` (gradient where ``|delta_in| < eps``). A softmax: the elementwise rescale,
minus its mean. Anything else (a product of two activations, as in a GELU; a division by
activations; a choice by the activations' values) is an ``InputError`` naming the layer.

Both passes share the graph; the walk follows the input's side (Captum's reference side carries the
same multipliers except where ``|delta_in| < eps``, where each side falls back to its own gradient).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxplain.errors import InputError
from jaxplain.types import Array

from .graph import CHOOSING, PASSING, Graph, Node, chain_function, function_of, read

_HINT = {
    "product": "a product of two activations (a GELU, attention, gating)",
    "normalise": "a division by activations (layer norm)",
    "unknown": "an operation DeepLIFT has no rule for",
}


def _vjp(node: Node, env: Mapping[Any, Any], gs: Sequence[Array]) -> list[Array]:
    """The node's plain gradient (transposed Jacobian times ``gs``, one per output) at ``env``."""
    if node.kind == "layer":
        lin, scale, _ = chain_function(node, env)
        w = read(env, node.weight)
        f = (lambda v: lin(v, w)) if scale is None else (lambda v: scale * lin(v, w))
        return list(jax.vjp(f, read(env, node.inputs[0]))[1](gs[0]))
    f = function_of(node.eqns[0], env, node.inputs, every_output=True)
    return list(jax.vjp(f, *[read(env, v) for v in node.inputs])[1](tuple(gs)))


def _ratio(num: Array, den: Array, fallback: Array, eps: float) -> Array:
    """``num / den`` where ``|den| >= eps``, else ``fallback`` (no NaN in either branch's gradient)."""
    small = jnp.abs(den) < eps
    return jnp.where(small, fallback, num / jnp.where(small, jnp.ones_like(den), den))


def _delta(v: Any, env: Mapping[Any, Any], ref: Mapping[Any, Any]) -> Array:
    return read(env, v) - read(ref, v)


def _rescale(node: Node, g: Array, env: Mapping[Any, Any], ref: Mapping[Any, Any], eps: float) -> Array:
    """An elementwise non-linearity: ``g * delta_out / delta_in`` (Captum's ``nonlinear``)."""
    grad = _vjp(node, env, [g])[0]
    return _ratio(g * _delta(node.output, env, ref), _delta(node.inputs[0], env, ref), grad, eps)


def _maxpool(node: Node, g: Array, env: Mapping[Any, Any], ref: Mapping[Any, Any], eps: float) -> Array:
    """Captum's ``maxpool``: the cross maximum of both outputs, each half unpooled by its own argmax."""
    out, out_ref = read(env, node.output), read(ref, node.output)
    top = jnp.maximum(out, out_ref)
    moved = _vjp(node, env, [g * (top - out_ref)])[0] + _vjp(node, ref, [g * (out - top)])[0]
    return _ratio(moved, _delta(node.inputs[0], env, ref), _vjp(node, env, [g])[0], eps)


def _softmax(a: Any, out: Any, g: Array, grad: Array, env: Mapping[Any, Any], ref: Mapping[Any, Any],
             eps: float) -> Array:
    """Captum's ``softmax`` from ``out`` back to its input ``a``: the elementwise rescale (``grad``,
    the softmax's gradient, where ``|delta_in| < eps``), minus its mean over this image's values."""
    m = _ratio(g * _delta(out, env, ref), _delta(a, env, ref), grad, eps)
    return m - jnp.mean(m)


def _softmax_input(node: Node, made: Mapping[Any, Any]) -> tuple[Any, tuple[int, ...]] | None:
    """``(a, axes)``: the input of a softmax over ``axes`` written out (``exp(a - stop_gradient(max a))
    / sum(exp(...))``, how ``jax.nn.softmax`` traces) that ends in the division ``node``; ``None``
    for another division."""
    eqn = node.eqns[0]
    num, den = eqn.invars
    through = ("broadcast_in_dim", "reshape", "expand_dims", "convert_element_type")
    while den in made and made[den].primitive.name in through:
        den = made[den].invars[0]
    if den not in made or made[den].primitive.name != "reduce_sum" or made[den].invars[0] is not num:
        return None
    axes = tuple(made[den].params["axes"])
    if num not in made or made[num].primitive.name != "exp":
        return None
    a = made[num].invars[0]
    shifted = made.get(a)
    if shifted is not None and shifted.primitive.name == "sub" and _stopped(shifted.invars[1], made):
        a = shifted.invars[0]
    return (a, axes) if a.aval.shape == node.output.aval.shape else None


def _stopped(v: Any, made: Mapping[Any, Any]) -> bool:
    """Whether ``v`` comes through a ``stop_gradient`` (through broadcasts and reshapes)."""
    while v in made:
        prim = made[v].primitive.name
        if prim == "stop_gradient":
            return True
        if prim not in ("broadcast_in_dim", "reshape", "expand_dims", "convert_element_type"):
            return False
        v = made[v].invars[0]
    return False


def _dependent(graph: Graph) -> set[Any]:
    """The variables that depend on the image (a predicate among them makes a choice nonlinear)."""
    out = {graph.image_var}
    for e in graph.eqns:
        if any(not isinstance(v, jcore.Literal) and v in out for v in e.invars):
            out.update(e.outvars)
    return out


def _refuse(node: Node, why: str, name: str) -> InputError:
    where = f"layer {node.layer!r}" + (f" (after {node.after!r})" if node.after else "")
    return InputError(f"{name}: {where} applies {node.what or node.eqns[0].primitive.name!r} to its activations "
                      f"({why}); DeepLIFT's Rescale rule does not cover it")


def multipliers(graph: Graph, env: Mapping[Any, Any], ref: Mapping[Any, Any], start: Array, *,
                eps: float = 1e-10, name: str = "deeplift") -> Array:
    """DeepLIFT's multipliers at the image (``[H, W, C]``): ``start`` (``[classes]``, the seed at the
    logits, e.g. a one-hot target) sent back through ``graph`` comparing the forward values ``env``
    (the input's, ``graph.forward``) with ``ref`` (the reference's)."""
    dependent = _dependent(graph)
    made = {o: e for e in graph.eqns for o in e.outvars}
    grads: dict[Any, Array] = {graph.logits: start}

    def add(v: Any, m: Array) -> None:
        m = m.astype(v.aval.dtype)
        grads[v] = grads[v] + m if v in grads else m

    for node in reversed(graph.nodes):
        if node.kind == "const":
            continue
        outs = [node.output] if node.kind == "layer" else list(node.eqns[-1].outvars)
        if not any(o in grads for o in outs):
            continue
        gs = [grads.pop(o) if o in grads else jnp.zeros(o.aval.shape, o.aval.dtype) for o in outs]
        prim = node.eqns[0].primitive.name
        if node.kind == "tap" or (node.kind == "pass" and prim in PASSING):
            add(node.inputs[0], gs[0])
        elif node.kind in ("pass", "unary"):
            add(node.inputs[0], _rescale(node, gs[0], env, ref, eps))
        elif node.kind == "softmax":
            grad = _vjp(node, env, gs)[0]
            add(node.inputs[0], _softmax(node.inputs[0], node.output, gs[0], grad, env, ref, eps))
        elif node.kind == "normalise" and prim == "div" and (soft := _softmax_input(node, made)) is not None:
            a, axes = soft
            grad = jax.vjp(functools.partial(jax.nn.softmax, axis=axes), read(env, a))[1](gs[0])[0]
            add(a, _softmax(a, node.output, gs[0], grad, env, ref, eps))
        elif node.kind == "gradient" and (prim in CHOOSING or prim == "custom_jvp_call"):
            add(node.inputs[0], _maxpool(node, gs[0], env, ref, eps))
        elif node.kind == "gradient" and prim == "select_n" and node.eqns[0].invars[0] in dependent:
            raise _refuse(node, "a choice by the activations' values, as a leaky ReLU or ELU written with "
                          "jnp.where", name)
        elif node.kind == "shift" and prim == "div" and node.eqns[0].invars[0] is not node.inputs[0]:
            raise _refuse(node, "a division by activations", name)
        elif node.kind in ("layer", "gradient", "norm", "shift"):
            for v, m in zip(node.inputs, _vjp(node, env, gs)):
                add(v, m)
        else:
            raise _refuse(node, _HINT.get(node.kind, _HINT["unknown"]), name)
    image = graph.image_var
    return grads.get(image, jnp.zeros(image.aval.shape, image.aval.dtype))
