"""The backward walk: relevance from the output to the image, node by node, in reverse.

Plain JAX from end to end (no custom derivatives), so a relevance map can be jitted, vmapped over
images or concepts, and differentiated with respect to the image and the weights.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import Array

from .graph import Graph, Node, chain_function, function_of, read
from .rules import Layer, Rule, stabilise

# node kind -> (node, relevance of its outputs, forward values) -> relevance of node.inputs;
# what a composite adds for operations the CNN rules do not cover (transformers).
Handler = Callable[[Node, list[Array], Mapping[Any, Any]], list[Array]]

_HINT = {
    "unary": "a non-linearity other than a ReLU (a GELU, tanh, sigmoid)",
    "product": "a product of two activations (attention, gating)",
    "softmax": "a softmax",
    "normalise": "a division by activations (layer norm)",
    "shift": "a scale or shift by parameters that follows no conv or dense layer (a batch norm there cannot be "
             "merged into a linear layer)",
}


_TRANSFORMER = ("unary", "product", "softmax", "normalise", "shift")


def _activation(eqn: Any) -> str:
    """The library activation function (``jax.nn.gelu``, a Flax or Keras activation) an equation was
    traced in, from its source frames, innermost first; ``""`` when none."""
    frames = eqn.source_info.traceback.frames if eqn.source_info.traceback is not None else []
    for frame in frames:
        path = frame.file_name.replace("\\", "/")
        if "/nn/" in path or "activation" in path:
            return frame.function_name
    return ""


def layer(node: Node, env: Mapping[Any, Any]) -> Layer:
    """The ``Layer`` a rule sees at a ``layer`` node."""
    lin, scale, shift = chain_function(node, env)
    return Layer(lin, read(env, node.weight), scale, shift, read(env, node.inputs[0]), read(env, node.output),
                 node.layer, node.positive)


def layer_output(graph: Graph, name: str) -> Any:
    """The variable holding layer ``name``'s output on the walk: its tap's, or the output of the
    fused layer the tap sits in (a conv before its batch norm)."""
    for node in graph.nodes:
        if node.kind == "layer" and name in node.taps:
            return node.output
    for node in graph.nodes:
        if node.kind == "tap" and node.layer == name:
            return node.eqns[0].outvars[0]
    raise InputError(f"layer {name!r} is not on the path from the image to the output")


def gradient(node: Node, rs: list[Array], env: Mapping[Any, Any]) -> list[Array]:
    """Relevance along the gradient of the node's equation (routing, max pooling)."""
    eqn = node.eqns[0]
    f = function_of(eqn, env, node.inputs)
    return list(jax.vjp(f, *[read(env, v) for v in node.inputs])[1](rs[0]))


def norm(node: Node, rs: list[Array], env: Mapping[Any, Any], stabilizer: float = 1e-6) -> list[Array]:
    """The proportional rule on an equation linear in its activation inputs: each input gets
    ``x_i * J_i^T (R / z)`` (a residual sum splits by each branch's contribution)."""
    eqn = node.eqns[0]
    f = function_of(eqn, env, node.inputs)
    xs = [read(env, v) for v in node.inputs]
    g = rs[0] / stabilise(read(env, node.output), stabilizer)
    grads = jax.vjp(f, *xs)[1](g)
    return [x * gr for x, gr in zip(xs, grads)]


def relevance(graph: Graph, env: Mapping[Any, Any], start: Array, rule_for: Callable[[Node], Rule], *,
              masks: Mapping[str, Array] | None = None, handlers: Mapping[str, Handler] | None = None,
              name: str = "lrp", upto: str | None = None, start_at: str | None = None) -> Array:
    """Relevance at the image (``[H, W, C]``), from ``start`` at the logits.

    ``masks``: layer -> array multiplied into the relevance passing that layer (CRP's concept
    conditions); ``handlers``: node kind -> its rule, for kinds the CNN rules leave out;
    ``upto``: stop at that layer and return the relevance of its output instead; ``start_at``:
    ``start`` is the relevance of that layer's output (a neuron's own map), not of the logits.
    """
    masks = dict(masks or {})
    handlers = dict(handlers or {})
    first = next((i for i, n in enumerate(graph.nodes) if n.kind == "layer"), len(graph.nodes))
    rel: dict[Any, Array] = {graph.logits if start_at is None else layer_output(graph, start_at): start}

    def add(v: Any, r: Array) -> None:
        r = r.astype(v.aval.dtype)
        rel[v] = rel[v] + r if v in rel else r

    for i in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[i]
        if node.kind == "const":
            continue
        outs = [o for o in node.eqns[-1].outvars] if node.kind != "layer" else [node.output]
        if not any(o in rel for o in outs):
            continue
        rs = [rel.pop(o) if o in rel else jnp.zeros(o.aval.shape, o.aval.dtype) for o in outs]
        if node.kind == "tap":
            if node.layer in masks:
                rs[0] = rs[0] * masks.pop(node.layer)
            if upto is not None and node.layer == upto:
                return rs[0]
            add(node.inputs[0], rs[0])
        elif node.kind == "layer":
            for t in node.taps:
                if t in masks:  # a tap inside a fused layer (a conv before its batch norm): masked at its output
                    rs[0] = rs[0] * masks.pop(t)
                if upto is not None and t == upto:
                    return rs[0]
            add(node.inputs[0], rule_for(node)(layer(node, env), rs[0]))
        elif node.kind == "pass":
            add(node.inputs[0], rs[0])
        elif node.kind == "gradient" and len(outs) == 1:
            for v, r in zip(node.inputs, gradient(node, rs, env)):
                add(v, r)
        elif node.kind == "gradient":
            raise InputError(f"{name}: layer {node.layer!r} splits its activations into several outputs "
                             f"({node.eqns[0].primitive.name}), which relevance propagation does not follow")
        elif node.kind == "norm":
            for v, r in zip(node.inputs, norm(node, rs, env)):
                add(v, r)
        elif node.kind in handlers:
            for v, r in zip(node.inputs, handlers[node.kind](node, rs, env)):
                add(v, r)
        elif node.kind == "shift" and i < first:
            add(node.inputs[0], rs[0])  # the input's normalisation inside the model: relevance passes
        else:
            hint = _HINT.get(node.kind, "an operation no rule covers")
            where = f"layer {node.layer!r}" + (f" (after {node.after!r})" if node.after else "")
            tip = "; composite 'attn_lrp' covers transformers" if node.kind in _TRANSFORMER else ""
            op = repr(node.what or node.eqns[0].primitive.name)
            op += f" (in {fn})" if (fn := _activation(node.eqns[-1])) else ""
            raise InputError(f"{name}: {where} applies {op} to its activations ({hint}); no LRP rule of this "
                             f"composite covers it{tip}")
    if upto is not None:
        raise InputError(f"{name}: layer {upto!r} is not on the path from the image to the output")
    image = graph.image_var
    return rel.get(image, jnp.zeros(image.aval.shape, image.aval.dtype))
