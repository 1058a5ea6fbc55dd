"""Composites as data: which LRP rule each linear layer gets, by its kind (``conv``, ``dense``), by
being the first layer of the forward pass, or by name.

The built-in composites are zennit's (same names, snake case, same defaults: ``epsilon`` 1e-6 for
dense layers, ``gamma`` 0.25, stabiliser 1e-6)::

    epsilon_plus               conv: zplus             dense: epsilon
    epsilon_plus_flat          as epsilon_plus, the first layer (conv or dense): flat
    epsilon_gamma_box          conv: gamma             dense: epsilon    the first conv: zbox
    epsilon_alpha2_beta1       conv: alpha_beta(2, 1)  dense: epsilon
    epsilon_alpha2_beta1_flat  as epsilon_alpha2_beta1, the first layer: flat
    epsilon                    every layer: epsilon (with epsilon -> 0: gradient x input)
    attn_lrp                   every layer: epsilon; softmax, products, LayerNorm and GELU by
                               AttnLRP's rules (``transformer.py``): transformers such as the ViT

``rules`` maps layer names or globs (``"block5_*"``) to rules and overrides the composite there.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Mapping

from jaxplain.errors import InputError

from . import rules as rules_
from .graph import Graph, Node

COMPOSITES: dict[str, dict[str, str]] = {
    "epsilon_plus": {"conv": "zplus", "dense": "epsilon({epsilon})"},
    "epsilon_plus_flat": {"first": "flat", "conv": "zplus", "dense": "epsilon({epsilon})"},
    "epsilon_gamma_box": {"first_conv": "zbox", "conv": "gamma({gamma})", "dense": "epsilon({epsilon})"},
    "epsilon_alpha2_beta1": {"conv": "alpha_beta(2, 1)", "dense": "epsilon({epsilon})"},
    "epsilon_alpha2_beta1_flat": {"first": "flat", "conv": "alpha_beta(2, 1)", "dense": "epsilon({epsilon})"},
    "epsilon": {"conv": "epsilon({epsilon})", "dense": "epsilon({epsilon})"},
    "attn_lrp": {"conv": "epsilon({epsilon})", "dense": "epsilon({epsilon})"},
}
# Composites whose walk also needs the transformer rules (``transformer.handlers``).
TRANSFORMER = frozenset({"attn_lrp"})


def check(composite: str) -> dict[str, str]:
    if not isinstance(composite, str) or composite not in COMPOSITES:
        raise InputError(f"unknown LRP composite {composite!r}; composites: {', '.join(COMPOSITES)}")
    return COMPOSITES[composite]


def chooser(graph: Graph, composite: str, rules: Mapping[str, Any] | None = None, *, epsilon: float = 1e-6,
            gamma: float = 0.25, box: tuple[Any, Any] | None = None) -> Callable[[Node], rules_.Rule]:
    """``node -> rule`` for the linear layers of ``graph`` under ``composite`` and the user's
    ``rules`` (layer name or glob -> rule); an ``InputError`` for an unknown composite or rule, or a
    name that matches no conv or dense layer."""
    table = check(composite)
    fmt = {"epsilon": epsilon, "gamma": gamma}
    layers = graph.relevance_layers
    if not layers:
        raise InputError("LRP found no conv or dense layer with weights from params in the forward pass")
    first = layers[0]
    first_conv = next((n for n in layers if n.op == "conv"), None)
    if not isinstance(rules or {}, Mapping):
        raise InputError(f"rules must map layer names or globs to rules, got {type(rules).__name__}")
    user = dict(rules or {})
    names = sorted({n.layer for n in layers})
    parsed_user = {}
    for pattern, spec in user.items():
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise InputError(f"rules names {pattern!r}, which matches no conv or dense layer; those layers: "
                             f"{', '.join(names)}")
        parsed_user[pattern] = rules_.parse(spec, box=box)
    built = {k: rules_.parse(v.format(**fmt), box=box) for k, v in table.items()
             if not (k == "first_conv" and box is None)}

    def choose(node: Node) -> rules_.Rule:
        matched = [rule for pattern, rule in parsed_user.items() if fnmatch.fnmatchcase(node.layer, pattern)]
        if matched:
            return matched[-1]
        if node is first and "first" in built:
            return built["first"]
        if node is first_conv and "first_conv" in table:
            if "first_conv" not in built:
                raise InputError(f"composite {composite!r} puts zbox on the first conv, which needs the input's "
                                 "bounds: pass box=(low, high) or explain a Model (its preprocessing gives them)")
            return built["first_conv"]
        return built[node.op]

    return choose
