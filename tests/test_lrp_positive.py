"""The rules' shortcut for layers whose input is a ReLU's output: the terms of negative inputs are
skipped there (they are exactly zero), which must leave every map as the full formula gives it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.methods.relevance import start_relevance
from jaxplain.propagation import composites, walk
from jaxplain.propagation import graph as graph_


def conv(x, p):
    return jax.lax.conv_general_dilated(x[None], p["kernel"], (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + p["bias"]


def apply(params, x, taps=None, relu=None):
    """conv -> ReLU -> max pool -> conv (no ReLU) -> conv -> ReLU -> dense, on one image [8, 8, 3]."""
    taps = taps or {}
    acts = {}

    def tap(name, v):
        v = v + taps[name] if name in taps else v
        acts[name] = v
        return v

    h = jax.nn.relu(tap("c1", conv(x, params["c1"])))
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (2, 2, 1), (2, 2, 1), "VALID")
    h = tap("c2", conv(h, params["c2"]))  # no ReLU: c3's input has both signs
    h = jax.nn.relu(tap("c3", conv(h, params["c3"])))
    return tap("fc", h.reshape(-1) @ params["fc"]["kernel"] + params["fc"]["bias"]), acts


def test_positive_layers_skip_only_zero_terms():
    k = iter(jax.random.split(jax.random.key(0), 9))
    shapes = {"c1": (3, 3, 3, 4), "c2": (3, 3, 4, 5), "c3": (3, 3, 5, 6), "fc": (4 * 4 * 6, 7)}
    params = {n: {"kernel": jax.random.normal(next(k), s) / np.sqrt(np.prod(s[:-1])),
                  "bias": 0.1 * jax.random.normal(next(k), s[-1:])} for n, s in shapes.items()}
    x = jax.random.normal(next(k), (8, 8, 3))
    g = graph_.trace(apply, params, x)
    marks = {n.layer: n.positive for n in g.relevance_layers}
    assert marks == {"c1": False, "c2": True, "c3": False, "fc": True}  # after a ReLU (and a max pool) only
    env = graph_.forward(g, params, x)
    start = start_relevance(env[g.logits], jnp.int32(2))
    box = (jnp.full((3,), -3.0), jnp.full((3,), 3.0))
    for name in ("epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        choose = composites.chooser(g, name, None, box=box)

        def full(node, choose=choose):  # the same rule with every term computed
            rule = choose(node)
            return lambda layer, r: rule(dataclasses.replace(layer, positive=False), r)

        fast = walk.relevance(g, env, start, choose)
        slow = walk.relevance(g, env, start, full)
        np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-7 * float(jnp.abs(slow).max()), err_msg=name)
        assert float(jnp.abs(fast).max()) > 0
    # fewer convolutions in the program (the last composite's): c2's negative-input terms are gone
    count = lambda f: str(jax.make_jaxpr(lambda: walk.relevance(g, env, start, f))()).count("conv_general")
    assert count(choose) < count(full)
