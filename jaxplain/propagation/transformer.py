"""AttnLRP (Achtibat et al., ICML 2024): the rules a transformer needs beyond the linear layers.

``prepare(graph)`` groups what the tracer sees op by op into the units the paper's rules speak of,
and ``handlers(graph, epsilon)`` gives ``walk.relevance`` a rule per node kind:

- **softmax** (a ``softmax`` node, or the ops ``exp(x - max)``, ``sum``, division written out):
  ``R_x = x * (R - s * sum(R))`` over the softmax axis (``s`` its output, ``x`` its input; the rest
  is absorbed like a bias);
- **elementwise functions** of one activation (a GELU's ``erf``/``erfc``/``tanh`` chain and the
  product ``x * cdf(x)`` that closes it, a SiLU, any ``unary`` node): the identity rule, ``R_x = R``.
  A unit is every elementwise op whose activation inputs all lead back to one variable ``x`` through
  elementwise ops of ``x``'s shape, with one output used outside it: it is recognised from the
  graph alone, whether the function is a named jit, a custom derivative or written out by hand;
- **products of two activations** (``q k^T``, attention times values, gating ``a * b``): the
  uniform rule, each operand half, by the epsilon rule with the other held constant; where one
  operand is a statistic (computed through a reduction of activations alone: LayerNorm's
  ``1 / std``, whether or not its scale is folded in; a squeeze-excitation gate) it is held constant
  and the other operand takes it all;
- **division by activations** (``normalise``: LayerNorm's ``(x - mean) / std``): the identity rule
  on the normalisation, the denominator held constant; the centring ``x - mean`` stays linear and
  takes the proportional (LRP-0) rule, so the LayerNorm is LXT's "std detached";
- **scale and shift by parameters** (``shift``: LayerNorm's affine, position embeddings): the
  epsilon rule of an elementwise linear layer, ``R_x = x * J^T (R / (z + eps sign z))``, the shift
  absorbing its share (before the first conv or dense layer, the input's normalisation, relevance
  passes as in the CNN composites).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxplain.types import Array

from . import walk
from .graph import Graph, Node, function_of, read
from .rules import stabilise

# Elementwise primitives a unit of the identity rule may contain.
ELEMENTWISE = {"erf", "erfc", "tanh", "logistic", "exp", "log", "log1p", "expm1", "sin", "cos", "integer_pow",
               "pow", "sqrt", "rsqrt", "abs", "square", "exp2", "cbrt", "tan", "mul", "add", "sub", "neg", "div",
               "max", "min", "copy", "copy_p", "convert_element_type", "reduce_precision"}
REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
_UNIT_KINDS = {"unary", "unknown", "norm", "product", "normalise", "pass", "gradient"}
_NONLINEAR = {"unary", "unknown", "product", "normalise"}


def prepare(graph: Graph) -> Graph:
    """``graph`` with each softmax, each centring ``x - mean(x)`` and each elementwise function of
    one activation as one node (``softmax``, ``centre``, ``unary``) whose input is the unit's input
    (the ops inside are left in place and receive no relevance), and a statistic left out of the
    inputs of a product or division with another activation (held constant)."""
    producer = {e.outvars[0]: e for e in graph.eqns if e.outvars}
    replaced: dict[int, Node] = {}
    taken: set[int] = set()
    for node in graph.nodes:
        fused = _softmax_unit(node, producer) or _centring_unit(node, producer)
        if fused is not None:
            replaced[id(node)] = fused
            taken.update(id(e) for e in fused.eqns)
    replaced.update(_elementwise_units(graph, taken))
    statistics = _statistics(graph)
    for node in graph.nodes:
        kept = [v for v in node.inputs if v not in statistics]
        if node.kind in ("product", "normalise") and len(kept) == 1 and len(node.inputs) == 2 and (
                id(node) not in replaced):
            replaced[id(node)] = dataclasses.replace(node, inputs=kept)  # the statistic held constant
    return dataclasses.replace(graph, nodes=[replaced.get(id(n), n) for n in graph.nodes])


def _statistics(graph: Graph) -> set[Any]:
    """The activations computed through a reduction of activations only (a mean, a variance, a
    max, and what is computed from them alone): LayerNorm's ``1 / std``, a softmax's sum."""
    acts, stats = {graph.image_var}, set()
    for e in graph.eqns:
        ins = [v for v in e.invars if _is_var(v) and v in acts]
        if not ins:
            continue
        acts.update(e.outvars)
        if e.primitive.name in REDUCTIONS or all(v in stats for v in ins):
            stats.update(e.outvars)
    return stats


def _softmax_unit(node: Node, producer: Mapping[Any, Any]) -> Node | None:
    """A ``softmax`` node for ``exp(u) / broadcast(sum(exp(u)))`` (``u = x - max(x)`` or ``x``)."""
    if node.kind != "normalise" or node.eqns[0].primitive.name != "div":
        return None
    num, den = node.eqns[0].invars
    exp = producer.get(num)
    if exp is None or exp.primitive.name != "exp":
        return None
    total = producer.get(den)
    while total is not None and total.primitive.name in ("broadcast_in_dim", "reshape", "expand_dims"):
        total = producer.get(total.invars[0])
    if total is None or total.primitive.name != "reduce_sum" or total.invars[0] is not num:
        return None
    x = exp.invars[0]
    shifted = producer.get(x)
    if shifted is not None and shifted.primitive.name == "sub" and _is_var(shifted.invars[1]) and (
            shifted.invars[1].aval.size < shifted.outvars[0].aval.size):
        x = shifted.invars[0]  # x - max(x): the shift cancels in the softmax, the rule sees x
    if not _is_var(x) or x.aval.shape != node.output.aval.shape:
        return None
    eqns = [e for e in (shifted, exp, total) if e is not None] + [node.eqns[0]]
    return Node("softmax", eqns, [x], node.output, layer=node.layer, after=node.after, what="softmax")


def _centring_unit(node: Node, producer: Mapping[Any, Any]) -> Node | None:
    """A ``centre`` node for ``x - mean(x)`` (LayerNorm's centring: ``sum(x)`` then a division or a
    product by a constant, broadcast back)."""
    if node.kind != "norm" or node.eqns[0].primitive.name != "sub" or len(node.inputs) != 2:
        return None
    x, mean = node.eqns[0].invars
    e = producer.get(mean)
    while e is not None and e.primitive.name in ("broadcast_in_dim", "reshape", "expand_dims"):
        e = producer.get(e.invars[0])
    if e is None or e.primitive.name not in ("div", "mul") or [_is_var(v) for v in e.invars] != [True, False] and (
            e.primitive.name == "div" or [_is_var(v) for v in e.invars] != [False, True]):
        return None
    total = producer.get(next(v for v in e.invars if _is_var(v)))
    while total is not None and total.primitive.name in ("broadcast_in_dim", "reshape", "expand_dims"):
        total = producer.get(total.invars[0])
    if total is None or total.primitive.name != "reduce_sum" or total.invars[0] is not x:
        return None
    return Node("centre", [total, node.eqns[0]], [x], node.output, layer=node.layer, after=node.after,
                what="centring")


def _is_var(v: Any) -> bool:
    return not isinstance(v, jcore.Literal)


def _eligible(node: Node) -> bool:
    if node.kind not in _UNIT_KINDS or len(node.eqns) != 1 or node.eqns[0].primitive.name not in ELEMENTWISE:
        return False
    shape = node.output.aval.shape
    return bool(node.inputs) and all(v.aval.shape == shape for v in node.inputs)


def _elementwise_units(graph: Graph, taken: set[int]) -> dict[int, Node]:
    """Identity-rule nodes (``unary``) replacing the last op of each elementwise function of one
    activation that contains a non-linear op and has one output used outside it."""
    consumers: dict[Any, list[int]] = {}
    for e in graph.eqns:
        for v in e.invars:
            if _is_var(v):
                consumers.setdefault(v, []).append(id(e))
    root: dict[Any, Any] = {}
    members: dict[Any, list[Node]] = {}
    for node in graph.nodes:
        if not _eligible(node) or id(node.eqns[0]) in taken:
            continue
        roots = {root.get(v, v) for v in node.inputs}
        if len(roots) != 1:
            continue
        r = roots.pop()
        root[node.output] = r
        members.setdefault(r, []).append(node)
    out: dict[int, Node] = {}
    for r, nodes in members.items():
        if not any(n.kind in _NONLINEAR for n in nodes):
            continue
        inside = {id(n.eqns[0]) for n in nodes}
        ends = [n for n in nodes if n.output is graph.logits or any(c not in inside for c in consumers.get(n.output, []))]
        if len(ends) == 1:
            end = ends[0]
            out[id(end)] = Node("unary", end.eqns, [r], end.output, layer=end.layer, after=end.after,
                                what="elementwise function")
    return out


# ---------------------------------------------------------------- the rules


def _softmax_axes(eqns: list[Any]) -> tuple[int, ...]:
    for e in eqns:
        if e.primitive.name == "reduce_sum":
            return tuple(e.params["axes"])
        body = e.params.get("call_jaxpr") or e.params.get("jaxpr")
        if body is not None:
            found = _softmax_axes((body.jaxpr if isinstance(body, jcore.ClosedJaxpr) else body).eqns)
            if found:
                return found
    return ()


def softmax(node: Node, rs: list[Array], env: Mapping[Any, Any]) -> list[Array]:
    """AttnLRP's softmax rule: ``R_x = x * (R - s * sum_axis(R))``."""
    axes = _softmax_axes(node.eqns) or (node.output.aval.ndim - 1,)
    x, s, r = read(env, node.inputs[0]), read(env, node.output), rs[0]
    return [x * (r - s * jnp.sum(r, axis=axes, keepdims=True))]


def centre_rule(epsilon: float) -> walk.Handler:
    """LRP-0 (stabilised by ``epsilon``) on the linear centring ``c = x - mean(x)``:
    ``R_x = x * (g - mean(g))``, ``g = R / (c + eps sign c)``; it conserves relevance."""
    def rule(node: Node, rs: list[Array], env: Mapping[Any, Any]) -> list[Array]:
        axes = tuple(node.eqns[0].params["axes"])
        g = rs[0] / stabilise(read(env, node.output), epsilon)
        return [read(env, node.inputs[0]) * (g - jnp.mean(g, axis=axes, keepdims=True))]
    return rule


def identity(node: Node, rs: list[Array], env: Mapping[Any, Any]) -> list[Array]:
    """The identity rule of an elementwise non-linearity: ``R_x = R``."""
    return [rs[0].reshape(node.inputs[0].aval.shape)]


def _epsilon_share(node: Node, rs: list[Array], env: Mapping[Any, Any], shares: list[float],
                   epsilon: float) -> list[Array]:
    """Each activation input ``a`` with the others constant: ``share * a * J_a^T (R / (z + eps sign z))``."""
    eqn = node.eqns[0]
    g = rs[0] / stabilise(read(env, node.output), epsilon)
    out = []
    for v, share in zip(node.inputs, shares):
        a = read(env, v)
        if share == 0:
            out.append(jnp.zeros_like(a))
            continue
        grad = jax.vjp(function_of(eqn, env, [v]), a)[1](g)[0]
        out.append(share * a * grad)
    return out


def product_rule(epsilon: float) -> walk.Handler:
    """The uniform rule on a product of two activations (``prepare`` leaves a statistic out of
    ``node.inputs``: held constant, the other operand takes it all)."""
    def rule(node: Node, rs: list[Array], env: Mapping[Any, Any]) -> list[Array]:
        return _epsilon_share(node, rs, env, [1.0 / len(node.inputs)] * len(node.inputs), epsilon)
    return rule


def normalise_rule(epsilon: float) -> walk.Handler:
    """The identity rule on a division by activations: the numerator takes it all."""
    def rule(node: Node, rs: list[Array], env: Mapping[Any, Any]) -> list[Array]:
        eqn = node.eqns[0]
        shares = [1.0 if v is eqn.invars[0] else 0.0 for v in node.inputs]
        return _epsilon_share(node, rs, env, shares, epsilon)
    return rule


def shift_rule(graph: Graph, epsilon: float) -> walk.Handler:
    """The epsilon rule on a scale or shift by parameters; before the first linear layer, passing."""
    first = next((i for i, n in enumerate(graph.nodes) if n.kind == "layer"), len(graph.nodes))
    early = {id(n) for n in graph.nodes[:first]}

    def rule(node: Node, rs: list[Array], env: Mapping[Any, Any]) -> list[Array]:
        if id(node) in early:
            return [rs[0]]
        return walk.norm(node, rs, env, epsilon)
    return rule


def handlers(graph: Graph, epsilon: float = 1e-6) -> dict[str, walk.Handler]:
    """AttnLRP's rules for ``walk.relevance(..., handlers=)`` on a ``prepare``d graph."""
    return {"softmax": softmax, "unary": identity, "centre": centre_rule(epsilon), "product": product_rule(epsilon),
            "normalise": normalise_rule(epsilon), "shift": shift_rule(graph, epsilon)}
