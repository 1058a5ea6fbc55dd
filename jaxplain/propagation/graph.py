"""A model's forward pass as a list of nodes that relevance propagation walks backwards.

The forward pass ``apply(params, x, taps)`` is traced to a jaxpr, with a zero tap at every layer,
calls of jitted functions inlined, and each equation classified by what it does to the
*activations* (the values that depend on the image):

- ``layer``: a convolution or a dense product with a weight read from ``params`` (``kind``
  ``"conv"`` / ``"dense"``), fused with the shape changes and the shifts and scales by parameters
  that follow it (its bias, a batch norm: ``z = scale * S(lin(x, W)) + shift``);
- ``tap``: where ``apply`` records a layer; relevance passes, and CRP masks it there;
- ``pass``: a rectifier (``jax.nn.relu``, ``max(x, c)``) or a type change: relevance passes;
- ``gradient``: moves values without mixing them (reshape, slice, pad, concatenate, gather) or
  picks one (max pooling, ``reduce_max``): relevance follows the gradient (winner takes all);
- ``norm``: linear in the activations with no weight of ``params`` (a residual sum, an average
  pool, a mean, a scale by a constant): relevance in proportion to each input's contribution;
- ``unary``, ``product``, ``softmax``, ``normalise``: what only a transformer composite covers
  (GELU and other non-linearities, a product of two activations, attention's softmax, the
  division of layer norm); elsewhere an ``InputError`` naming the layer and the operation.

Every node knows the layer it belongs to: the first tap after it in the forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxplain.adapters.relus import INLINED, is_relu
from jaxplain.types import ApplyFn, Array, PyTree

# Moving values without mixing them: relevance follows the gradient.
ROUTING = {"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "dynamic_slice",
           "gather", "concatenate", "stack", "pad", "rev", "select_n", "copy", "copy_p", "reduce_precision",
           "dynamic_update_slice", "split"}
# Picking one value of several (max pooling): winner takes all, by the gradient.
CHOOSING = {"reduce_max", "reduce_min", "reduce_window_max", "reduce_window_min", "cummax", "cummin",
            "select_and_gather_add", "argmax"}
# Linear in the activations (with constants): the proportional rule.
LINEAR = {"add", "sub", "reduce_sum", "reduce_window_sum", "cumsum", "neg", "add_any", "mul", "div",
          "dot_general", "conv_general_dilated"}
PASSING = {"convert_element_type", "stop_gradient", "optimization_barrier"}
AFFINE = {"add", "sub", "mul", "div"}
SHAPE = {"reshape", "squeeze", "expand_dims", "convert_element_type"}
UNARY = {"erf", "tanh", "logistic", "exp", "log", "log1p", "expm1", "sin", "cos", "integer_pow", "pow", "sqrt",
         "rsqrt", "abs", "sign", "square", "erf_inv", "atan2", "exp2", "cbrt", "tan"}


@dataclasses.dataclass
class Node:
    """One step of the forward pass.

    ``kind`` as in the module docstring; ``eqns`` the equations it evaluates, in order (a fused
    layer: the product, then its shape changes, shift and scale); ``inputs`` the activation
    variables relevance flows to; ``output`` the variable relevance comes from; ``layer`` the
    layer's name (the next tap); for a ``layer`` node ``op`` is ``"conv"`` or ``"dense"``, ``weight``
    the weight variable and ``x`` the activation operand's position in the product.
    """

    kind: str
    eqns: list[Any]
    inputs: list[Any]
    output: Any
    layer: str = ""
    op: str = ""
    weight: Any = None
    x: int = 0
    first: bool = False
    what: str = ""
    chain: list[tuple[Any, int]] = dataclasses.field(default_factory=list)
    taps: list[str] = dataclasses.field(default_factory=list)
    after: str = ""
    positive: bool = False  # a layer whose activation input is never negative (a ReLU's output, pooled)


@dataclasses.dataclass
class Graph:
    """The traced forward pass: ``jaxpr`` (inlined equations in ``nodes``' order), its inputs
    (``params`` leaves, the image, the taps), the nodes, and the output variable (the logits)."""

    consts: list[Any]
    constvars: list[Any]
    param_vars: list[Any]
    image_var: Any
    tap_vars: dict[str, Any]
    nodes: list[Node]
    logits: Any
    layers: tuple[str, ...]
    eqns: list[Any] = dataclasses.field(default_factory=list)

    @property
    def relevance_layers(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "layer"]


def _is_relu(eqn: Any) -> bool:
    return is_relu(eqn, ("relu", "relu6"))


def _custom_name(eqn: Any) -> str:
    info = eqn.params["call_jaxpr"].jaxpr.debug_info
    return info.func_name if info is not None else ""


def _body_prims(jaxpr: Any) -> set[str]:
    out = set()
    for e in jaxpr.eqns:
        body = e.params.get(INLINED.get(e.primitive.name, ""))
        if body is not None:
            out |= _body_prims(body.jaxpr if isinstance(body, jcore.ClosedJaxpr) else body)
        else:
            out.add(e.primitive.name)
    return out


def _is_pool(eqn: Any) -> bool:
    """A custom-derivative block that only moves and picks values (a max pool written by hand)."""
    if eqn.primitive.name != "custom_jvp_call":
        return False
    prims = _body_prims(eqn.params["call_jaxpr"].jaxpr)
    choosing = CHOOSING | {"max", "min"}  # also an elementwise maximum of shifted views of one input
    return bool(prims & choosing) and prims <= ROUTING | choosing | PASSING | {"broadcast_in_dim", "iota", "eq", "ge",
                                                                              "gt", "lt", "le"}


def _is_softmax(eqn: Any) -> bool:
    return eqn.primitive.name == "custom_jvp_call" and _custom_name(eqn) in ("_softmax", "softmax")


def _flatten(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """The equations of ``jaxpr`` with jitted calls inlined: ``(eqns, constvars, consts, outvars)``;
    inner variables are renamed to the outer ones they stand for."""
    eqns: list[Any] = []
    constvars: list[Any] = []
    constvals: list[Any] = []

    def go(jx: Any, cvals: Sequence[Any], ins: Sequence[Any]) -> list[Any]:
        alias: dict[Any, Any] = {}
        for v, c in zip(jx.constvars, cvals):
            constvars.append(v)
            constvals.append(c)
        alias.update({v: a for v, a in zip(jx.invars, ins)})

        def sub(v: Any) -> Any:
            return v if isinstance(v, jcore.Literal) else alias.get(v, v)

        for e in jx.eqns:
            invars = [sub(v) for v in e.invars]
            name = e.primitive.name
            body = e.params.get(INLINED.get(name, ""))
            if isinstance(body, (jcore.ClosedJaxpr, jcore.Jaxpr)) and not _is_relu(e):
                inner, ic = (body.jaxpr, body.consts) if isinstance(body, jcore.ClosedJaxpr) else (body, ())
                outs = go(inner, ic, invars)
                alias.update({o: r for o, r in zip(e.outvars, outs)})
                continue
            if name == "custom_jvp_call" and not (_is_relu(e) or _is_pool(e) or _is_softmax(e)):
                inner = e.params["call_jaxpr"]
                outs = go(inner.jaxpr, inner.consts, invars)
                alias.update({o: r for o, r in zip(e.outvars, outs)})
                continue
            eqns.append(e.replace(invars=invars))
        return [sub(v) for v in jx.outvars]

    outs = go(jaxpr, consts, args)
    return eqns, constvars, constvals, outs


def bind(eqn: Any, ins: Sequence[Any]) -> list[Any]:
    """Evaluate one equation on ``ins``; always a list of outputs."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _float(v: Any) -> bool:
    return jnp.issubdtype(v.aval.dtype, jnp.floating)


def trace(apply: ApplyFn, params: PyTree, x: Array) -> Graph:
    """Trace ``apply`` at ``(params, x)`` (with a zero tap at every layer it records) into a ``Graph``."""
    shapes = jax.eval_shape(lambda p, i: apply(p, i)[1], params, x)
    layers = tuple(k for k in shapes if not k.endswith(":input"))
    abstract = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), t)  # noqa: E731
    taps = {k: jax.ShapeDtypeStruct(shapes[k].shape, shapes[k].dtype) for k in layers}

    def fwd(p: PyTree, i: Array, t: Mapping[str, Array]) -> Array:
        return apply(p, i, taps=t)[0]

    closed = jax.make_jaxpr(fwd)(abstract(params), jax.ShapeDtypeStruct(x.shape, x.dtype), taps)
    n_params = len(jax.tree.leaves(params))
    invars = closed.jaxpr.invars
    param_vars, image_var = invars[:n_params], invars[n_params]
    tap_leaves = invars[n_params + 1:]
    tap_vars = {k: tap_leaves[i] for i, k in enumerate(sorted(taps))}  # a dict's leaves: in sorted key order
    eqns, constvars, consts, outs = _flatten(closed.jaxpr, closed.consts, invars)
    eqns = _live(eqns, outs[:1])
    graph = Graph(consts=list(consts), constvars=constvars, param_vars=list(param_vars), image_var=image_var,
                  tap_vars=tap_vars, nodes=[], logits=outs[0], layers=layers, eqns=eqns)
    graph.nodes = _classify(eqns, graph)
    return graph


def _live(eqns: list[Any], outs: Sequence[Any]) -> list[Any]:
    """The equations the outputs ``outs`` depend on (the recorded activations dropped)."""
    live = {v for v in outs if not isinstance(v, jcore.Literal)}
    kept = []
    for e in reversed(eqns):
        if any(o in live for o in e.outvars):
            kept.append(e)
            live.update(v for v in e.invars if not isinstance(v, jcore.Literal))
    return kept[::-1]


def _classify(eqns: list[Any], graph: Graph) -> list[Node]:
    """Nodes of ``eqns``: activations are the values that depend on the image (not on a tap);
    parameters those that depend on ``params`` only."""
    acts = {graph.image_var}
    params = set(graph.param_vars)
    tap_of = {v: k for k, v in graph.tap_vars.items()}
    uses: dict[Any, int] = {}
    for e in eqns:
        for v in e.invars:
            if not isinstance(v, jcore.Literal):
                uses[v] = uses.get(v, 0) + 1
    is_act = lambda v: not isinstance(v, jcore.Literal) and v in acts  # noqa: E731
    is_param = lambda v: not isinstance(v, jcore.Literal) and v in params  # noqa: E731

    nodes: list[Node] = []
    chain: dict[Any, Node] = {}  # the output variable of a layer still taking shifts and scales
    for e in eqns:
        prim = e.primitive.name
        act_in = [v for v in e.invars if is_act(v)]
        if not act_in:
            if any(is_param(v) for v in e.invars):
                params.update(e.outvars)
            names = {tap_of[v] for v in e.invars if not isinstance(v, jcore.Literal) and v in tap_of}
            if len(names) == 1:  # a tap broadcast or reshaped to the layer's shape
                tap_of.update({o: names.pop() for o in e.outvars})
            nodes.append(Node("const", [e], [], None))
            continue
        acts.update(o for o in e.outvars)
        out = e.outvars[0]
        if not _float(out):
            nodes.append(Node("const", [e], [], None))  # a comparison or an index: carries no relevance
            continue
        taps = [tap_of[v] for v in e.invars if not isinstance(v, jcore.Literal) and v in tap_of]
        if prim == "add" and taps:
            node = chain.pop(act_in[0], None)
            nodes.append(Node("tap", [e], act_in, out, layer=taps[0]))
            if node is not None and uses.get(act_in[0], 0) == 1:
                node.taps.append(taps[0])
                chain[out] = node  # the layer goes on through its tap (a batch norm after it)
            continue
        others = [v for v in e.invars if not is_act(v)]
        node = chain.pop(act_in[0], None) if len(act_in) == 1 else None
        if node is not None and uses.get(act_in[0], 0) == 1 and len(act_in) == 1 and (
                prim in SHAPE and len(e.invars) == 1 or (prim in AFFINE and (prim != "div" or e.invars[0] is act_in[0]))):
            node.eqns.append(e)
            node.chain.append((e, e.invars.index(act_in[0])))
            node.output = out
            chain[out] = node
            continue
        if prim in ("conv_general_dilated", "dot_general") and len(act_in) == 1 and any(is_param(v) for v in others):
            xi = e.invars.index(act_in[0])
            node = Node("layer", [e], act_in, out, op="conv" if prim == "conv_general_dilated" else "dense",
                        weight=e.invars[1 - xi], x=xi)
            nodes.append(node)
            chain[out] = node
            continue
        if (prim in AFFINE and len(act_in) == 1 and any(is_param(v) for v in others)
                and not (prim == "div" and e.invars[1] is act_in[0])):
            nodes.append(Node("shift", [e], act_in, out, what=prim))
            continue
        if _is_relu(e) or (prim in ("max", "min") and len(act_in) == 1) or prim in PASSING:
            nodes.append(Node("pass", [e], act_in, out))
        elif _is_pool(e) or prim in ROUTING or prim in CHOOSING:
            nodes.append(Node("gradient", [e], act_in, out))
        elif _is_softmax(e):
            nodes.append(Node("softmax", [e], act_in, out, what="softmax"))
        elif prim in ("mul", "dot_general") and len(act_in) == 2:
            nodes.append(Node("product", [e], act_in, out, what=prim))
        elif prim == "div" and len(act_in) == 2:
            nodes.append(Node("normalise", [e], act_in, out, what=prim))
        elif prim in LINEAR and not (prim == "div" and e.invars[1] is act_in[0]):
            nodes.append(Node("norm", [e], act_in, out, what=prim))
        elif prim in UNARY and len(act_in) == 1:
            nodes.append(Node("unary", [e], act_in, out, what=prim))
        else:
            what = _custom_name(e) if prim.startswith("custom_") and "call_jaxpr" in e.params else prim
            nodes.append(Node("unknown", [e], act_in, out, what=what or prim))
    _name(nodes)
    _mark_positive(eqns, nodes, graph)
    first = next((n for n in nodes if n.kind == "layer"), None)
    if first is not None:
        first.first = True
    return nodes


# Keeping the sign of their one activation input: a value >= 0 stays >= 0.
SIGN_KEEPING = {"reshape", "transpose", "squeeze", "expand_dims", "slice", "rev", "broadcast_in_dim", "copy",
                "copy_p", "reduce_precision", "convert_element_type", "reduce_max", "reduce_window_max"}


def _mark_positive(eqns: list[Any], nodes: list[Node], graph: Graph) -> None:
    """Set ``positive`` on each layer whose activation input is >= 0 by construction: a ReLU's
    output (``relu``, ``max(x, c >= 0)``), then taps (adding the zero tap), max pools and shape
    changes. The rules skip the terms of negative inputs there (exactly zero), not their results."""
    taps = set(graph.tap_vars.values())
    pos: set[Any] = set()
    for e in eqns:
        prim = e.primitive.name
        ins = [v for v in e.invars if not isinstance(v, jcore.Literal)]
        lits = [v for v in e.invars if isinstance(v, jcore.Literal)]
        rectifier = _is_relu(e) or (prim == "max" and len(ins) == 1 and lits and np.all(np.asarray(lits[0].val) >= 0))
        tapped = prim == "add" and len(ins) == 2 and any(v in taps for v in ins) and all(v in pos or v in taps for v in ins)
        kept = (prim in SIGN_KEEPING or _is_pool(e)) and len(ins) == 1 and ins[0] in pos
        if rectifier or tapped or kept:
            pos.update(e.outvars)
    for node in nodes:
        if node.kind == "layer" and node.inputs[0] in pos:
            node.positive = True


def _name(nodes: list[Node]) -> None:
    """Each node's layer: the first tap at or after it (the output for what follows the last)."""
    current = "the output"
    for node in reversed(nodes):
        if node.kind == "tap":
            current = node.layer
        elif not node.layer:
            node.layer = current
    previous = ""
    for node in nodes:
        node.after = previous
        if node.kind == "tap":
            previous = node.layer


def forward(graph: Graph, params: PyTree, x: Array) -> dict[Any, Any]:
    """Every variable's value for ``x``: the forward pass, the taps zero."""
    env: dict[Any, Any] = dict(zip(graph.constvars, graph.consts))
    env.update(zip(graph.param_vars, jax.tree.leaves(params)))
    env[graph.image_var] = x
    for k, v in graph.tap_vars.items():
        env[v] = jnp.zeros(v.aval.shape, v.aval.dtype)
    for e in graph.eqns:
        env.update(zip(e.outvars, bind(e, [read(env, v) for v in e.invars])))
    return env


def read(env: Mapping[Any, Any], v: Any) -> Any:
    return v.val if isinstance(v, jcore.Literal) else env[v]


def function_of(eqn: Any, env: Mapping[Any, Any], wrt: Sequence[Any], *, every_output: bool = False
                ) -> Callable[..., Any]:
    """``eqn`` as a function of the variables ``wrt`` (the others read from ``env``): its first
    output, or the tuple of all (``every_output``)."""

    def f(*vals: Any) -> Any:
        sub = dict(zip(wrt, vals))
        outs = bind(eqn, [sub[v] if not isinstance(v, jcore.Literal) and v in sub else read(env, v)
                          for v in eqn.invars])
        return tuple(outs) if every_output else outs[0]

    return f


def chain_function(node: Node, env: Mapping[Any, Any]) -> tuple[Callable[[Array, Array], Array], Array | None, Array | None]:
    """A fused layer as ``(lin, scale, shift)``: ``output = scale * lin(x, W) + shift``, where
    ``lin(x, W)`` is the product followed by the layer's shape changes; ``scale`` / ``shift``
    (``None`` when absent) collect the shifts and scales by parameters, in the output's shape."""
    lin_eqn = node.eqns[0]
    scale: Array | None = None
    shift: Array | None = None
    for e, pos in node.chain:
        prim = e.primitive.name
        if prim in SHAPE:
            shape = e.invars[pos].aval.shape
            scale = None if scale is None else bind(e, [jnp.broadcast_to(scale, shape)])[0]
            shift = None if shift is None else bind(e, [jnp.broadcast_to(shift, shape)])[0]
            continue
        k = read(env, e.invars[1 - pos])
        if prim == "add":
            shift = k if shift is None else shift + k
        elif prim == "sub":
            shift = -k if shift is None else shift - k
        elif prim == "mul":
            scale = k if scale is None else scale * k
            shift = None if shift is None else shift * k
        else:  # div, the activation the numerator
            scale = 1.0 / k if scale is None else scale / k
            shift = None if shift is None else shift / k

    def lin(x: Array, w: Array) -> Array:
        ins = [x, w] if node.x == 0 else [w, x]
        h = bind(lin_eqn, ins)[0]
        for e, _ in node.chain:
            if e.primitive.name in SHAPE:
                h = bind(e, [h])[0]
        return h

    shape, dtype = node.output.aval.shape, node.output.aval.dtype
    scale = None if scale is None else jnp.broadcast_to(scale, shape).astype(dtype)
    shift = None if shift is None else jnp.broadcast_to(shift, shape).astype(dtype)
    return lin, scale, shift
