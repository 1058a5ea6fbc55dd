"""Relevance propagation on one image: LRP with rules and composites (``jaxplain.propagation``).

The forward pass is traced and walked backwards with a rule per layer; no hooks, so a map is
jitted, vmapped and differentiated like any JAX function.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree

from jaxplain.propagation import composites, graph as graph_, transformer, walk


def start_relevance(logits: Array, target: Array) -> Array:
    """The relevance at the output: the target's logit, zero elsewhere."""
    return jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype) * logits


def lrp(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, composite: str = "epsilon_plus",
        rules: Mapping[str, Any] | None = None, epsilon: float = 1e-6, gamma: float = 0.25,
        box: Any = None) -> Array:
    """Layer-wise relevance propagation (Bach et al. 2015), ``[H, W, C]``: the target's logit
    handed back layer by layer, each conv and dense layer by its rule under ``composite``
    (zennit's: ``epsilon_plus``, ``epsilon_plus_flat``, ``epsilon_gamma_box``,
    ``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``; or ``epsilon``; or ``attn_lrp``, AttnLRP
    for transformers: epsilon everywhere, softmax, attention products, LayerNorm and GELU by the
    rules of Achtibat et al. 2024, ``jaxplain.propagation.transformer``), ``rules``
    overriding it by layer name or glob (``{"block1_conv1": "zbox", "block5_*": "epsilon(0.25)"}``).
    ReLUs pass relevance, max pools by the gradient, sums and average pools in proportion;
    batch norm merges into the layer before it. ``epsilon`` / ``gamma``: the composite's
    parameters; ``box``: ``[2, C]`` (or ``(low, high)``) bounds of the input for ``zbox`` (``explain``:
    the model's preprocessed pixel values 0 and 255)."""
    g = graph_.trace(apply, params, x)
    handlers = None
    if isinstance(composite, str) and composite in composites.TRANSFORMER:
        g = transformer.prepare(g)
        handlers = transformer.handlers(g, epsilon)
    env = graph_.forward(g, params, x)
    choose = composites.chooser(g, composite, rules, epsilon=epsilon, gamma=gamma, box=bounds(box))
    return walk.relevance(g, env, start_relevance(env[g.logits], target), choose, handlers=handlers)


def bounds(box: Any) -> tuple[Array, Array] | None:
    """``(low, high)`` from ``box`` ``[2, C]``, ``(low, high)`` or ``None``."""
    if box is None:
        return None
    if isinstance(box, (tuple, list)) and len(box) == 2:
        return jnp.asarray(box[0]), jnp.asarray(box[1])
    box = jnp.asarray(box)
    if box.ndim < 1 or box.shape[0] != 2:
        raise InputError(f"box must be (low, high) or an array [2, C] of the input's bounds, got shape {box.shape}")
    return box[0], box[1]


def box_for_model(preprocess: Any, channels: int) -> Array:
    """``[2, C]``: the model's preprocessed pixel values 0 (row 0) and 255 (row 1) per channel."""
    import numpy as np

    pixels = np.stack([np.zeros((1, 1, channels), np.uint8), np.full((1, 1, channels), 255, np.uint8)])
    out = np.asarray(preprocess(pixels), np.float32)
    return jnp.asarray(np.stack([out[0, 0, 0], out[1, 0, 0]]))
