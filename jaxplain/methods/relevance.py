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

from jaxplain.propagation import composites, graph as graph_, walk


def start_relevance(logits: Array, target: Array) -> Array:
    """The relevance at the output: the target's logit, zero elsewhere."""
    return jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype) * logits


def lrp(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, composite: str = "epsilon_plus",
        rules: Mapping[str, Any] | None = None, epsilon: float = 1e-6, gamma: float = 0.25,
        box: Any = None) -> Array:
    """Layer-wise relevance propagation (Bach et al. 2015), ``[H, W, C]``: the target's logit
    handed back layer by layer, each conv and dense layer by its rule under ``composite``
    (zennit's: ``epsilon_plus``, ``epsilon_plus_flat``, ``epsilon_gamma_box``,
    ``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``; or ``epsilon``), ``rules``
    overriding it by layer name or glob (``{"block1_conv1": "zbox", "block5_*": "epsilon(0.25)"}``).
    ReLUs pass relevance, max pools by the gradient, sums and average pools in proportion;
    batch norm merges into the layer before it. ``epsilon`` / ``gamma``: the composite's
    parameters; ``box``: ``[2, C]`` (or ``(low, high)``) bounds of the input for ``zbox`` (``explain``:
    the model's preprocessed pixel values 0 and 255)."""
    g = graph_.trace(apply, params, x)
    env = graph_.forward(g, params, x)
    choose = composites.chooser(g, composite, rules, epsilon=epsilon, gamma=gamma,
                                box=at_first_layer(g, params, x, bounds(box, x.shape)))
    return walk.relevance(g, env, start_relevance(env[g.logits], target), choose)


def bounds(box: Any, image_shape: tuple[int, ...] | None = None) -> tuple[Array, Array] | None:
    """``(low, high)`` from ``box`` ``[2, C]``, ``(low, high)`` or ``None``; each must broadcast to
    ``image_shape`` ``[H, W, C]`` when given."""
    if box is None:
        return None
    if isinstance(box, (tuple, list)) and len(box) == 2:
        low, high = jnp.asarray(box[0]), jnp.asarray(box[1])
    else:
        box = jnp.asarray(box)
        if box.ndim < 1 or box.shape[0] != 2:
            raise InputError(f"box must be (low, high) or an array [2, C] of the input's bounds, got shape {box.shape}")
        low, high = box[0], box[1]
    for what, b in (("low", low), ("high", high)):
        try:
            if image_shape is not None:
                jnp.broadcast_shapes(b.shape, tuple(image_shape))
        except ValueError:
            raise InputError(f"box's {what} bound has shape {b.shape}, which does not fit the image {tuple(image_shape)}: "
                             "give a number or one value per channel") from None
    return low, high


def at_first_layer(g: graph_.Graph, params: PyTree, x: Array, box: tuple[Array, Array] | None
                   ) -> tuple[Array, Array] | None:
    """The image's bounds ``box`` as the first conv (else the first dense layer) sees its input: images
    of the bounds pushed through what comes before it (a flatten, a transpose to channels first, the
    model's own normalisation). Numbers stay numbers (they fit any layer a user gives zbox)."""
    layers = g.relevance_layers
    if box is None or not layers or all(jnp.ndim(b) == 0 for b in box):
        return box
    node = next((n for n in layers if n.op == "conv"), layers[0])
    low, high = (graph_.forward(g, params, jnp.broadcast_to(jnp.asarray(b, x.dtype), x.shape))[node.inputs[0]]
                 for b in box)
    return low, high


def box_for_model(preprocess: Any, channels: int) -> Array:
    """``[2, C]``: the model's preprocessed pixel values 0 (row 0) and 255 (row 1) per channel."""
    import numpy as np

    pixels = np.stack([np.zeros((1, 1, channels), np.uint8), np.full((1, 1, channels), 255, np.uint8)])
    out = np.asarray(preprocess(pixels), np.float32)
    return jnp.asarray(np.stack([out[0, 0, 0], out[1, 0, 0]]))
