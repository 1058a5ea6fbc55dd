"""ReLU swapping for guided backprop and deconvnet, on any JAX forward pass.

The forward pass is traced to a jaxpr in which every call of ``jax.nn.relu`` (which
``flax.linen.relu``, ``nnx.relu`` and Keras' JAX ``relu`` are), also inside jitted or
rematerialised blocks, is replaced by the method's rectifier. One inside a loop, a branch or a
custom derivative raises an ``InputError``; a ReLU written as ``jnp.maximum(x, 0)`` is not seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.extend import core as jcore

from jaxplain.errors import InputError
from jaxplain.types import Relu

# Calls whose body the ReLU swap evaluates inline (primitive -> the parameter holding the body); a
# rematerialised block loses its memory saving there, which a ReLU swap does not need.
INLINED = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
            "remat2": "jaxpr", "checkpoint": "jaxpr"}


def is_relu(eqn: Any, names: tuple[str, ...] = ("relu",)) -> bool:
    """A call of ``jax.nn.relu`` (a ``custom_jvp`` named ``relu``, or one of ``names``)."""
    if eqn.primitive.name != "custom_jvp_call":
        return False
    info = eqn.params["call_jaxpr"].jaxpr.debug_info
    return info is not None and info.func_name in names


def _has_relu(jaxpr: Any) -> bool:
    return any(is_relu(e) or any(_has_relu(j) for j in jcore.jaxprs_in_params(e.params)) for e in jaxpr.eqns)


def _eval_swapped(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], relu: Relu, found: list[str]) -> list[Any]:
    """Evaluate ``jaxpr`` with every ``jax.nn.relu`` replaced by ``relu`` (entering calls of jitted
    functions); ``found`` collects ``"relu"`` per swap, or the primitive whose body hides one."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        if is_relu(eqn):
            outs = [relu(ins[-1])]
            found.append("relu")
        elif isinstance(body := eqn.params.get(INLINED.get(eqn.primitive.name, "")), (jcore.ClosedJaxpr, jcore.Jaxpr)):
            inner, consts = (body.jaxpr, body.consts) if isinstance(body, jcore.ClosedJaxpr) else (body, ())
            outs = _eval_swapped(inner, consts, ins, relu, found)
        else:
            if any(_has_relu(j) for j in jcore.jaxprs_in_params(eqn.params)):
                raise InputError(f"a ReLU sits inside a {eqn.primitive.name!r} (a loop, a branch or a "
                                 "custom-derivative block), where jaxplain cannot swap it: guided backprop and "
                                 "deconvnet would be wrong")
            with eqn.ctx.manager:  # as jax's own eval_jaxpr binds an equation
                outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def swap_relus(fn: Callable[..., Any], relu: Relu, name: str) -> Callable[..., Any]:
    """``fn`` with every call of ``jax.nn.relu`` in its forward pass replaced by ``relu``; an
    ``InputError`` when there is none to replace."""

    def swapped(*args: Any) -> Any:
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
        found: list[str] = []
        try:
            outs = _eval_swapped(closed.jaxpr, closed.consts, jax.tree.leaves(args), relu, found)
        except InputError as e:
            raise InputError(f"{name}: {e}") from None
        if not found:
            raise InputError(f"{name} has no ReLU that jaxplain can swap: guided backprop and deconvnet replace every "
                             "call of jax.nn.relu (flax.linen.relu, nnx.relu) in the forward pass, and it calls none "
                             "(a ReLU written as jnp.maximum(x, 0), or another activation, cannot be swapped)")
        return jax.tree.unflatten(jax.tree.structure(shapes), outs)

    return swapped
