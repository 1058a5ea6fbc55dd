"""Relevance propagation on one image: LRP with rules and composites, DeepLIFT and DeepLiftShap
(``jaxplain.propagation``).

The forward pass is traced and walked backwards with a rule per layer; no hooks, so a map is
jitted, vmapped and differentiated like any JAX function.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.baselines import baseline_image
from jaxplain.errors import InputError
from jaxplain.marks import cost, output, per_image
from jaxplain.types import ApplyFn, Array, PyTree

from jaxplain.propagation.compiled import compiled
from jaxplain.propagation import composites, deeplift as deeplift_walk, graph as graph_, transformer, walk


def start_relevance(logits: Array, target: Array) -> Array:
    """The relevance at the output: the target's logit, zero elsewhere."""
    return jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype) * logits


@compiled
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
    g, env, choose, handlers = _walked(apply, params, x, composite, rules, epsilon, gamma, box)
    return walk.relevance(g, env, start_relevance(env[g.logits], target), choose, handlers=handlers)


def _walked(apply: ApplyFn, params: PyTree, x: Array, composite: str, rules: Mapping[str, Any] | None,
            epsilon: float, gamma: float, box: Any
            ) -> tuple[graph_.Graph, dict[Any, Any], Callable[..., Any], dict[str, Any] | None]:
    """What every LRP walk of ``x`` needs: ``(graph, forward values, rule chooser, handlers)``
    (the handlers of a transformer composite, else ``None``)."""
    g = graph_.trace(apply, params, x)
    handlers = None
    if isinstance(composite, str) and composite in composites.TRANSFORMER:
        g = transformer.prepare(g)
        handlers = transformer.handlers(g, epsilon)
    env = graph_.forward(g, params, x)
    choose = composites.chooser(g, composite, rules, epsilon=epsilon, gamma=gamma,
                                box=at_first_layer(g, params, x, bounds(box, x.shape)))
    return g, env, choose, handlers


@output("concepts")
@compiled
def crp(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None = None,
        channels: Any = None, composite: str = "epsilon_plus", rules: Mapping[str, Any] | None = None,
        epsilon: float = 1e-6, gamma: float = 0.25, box: Any = None) -> Array:
    """Concept relevance propagation (Achtibat et al. 2023), ``[K, H, W, C]``: for each of the
    ``channels`` (ints; ``None``: all) of ``layer``, the LRP map of the target conditioned on that
    channel (the relevance passing ``layer`` kept in that channel only). One program for all K:
    the walk is vmapped over the K masks, so the part above ``layer`` is computed once. The maps
    of all channels sum to ``lrp``'s map. Other settings as ``lrp``."""
    walk_, layer, chosen = _conditioned(apply, params, x, target, layer, channels, composite, rules, epsilon, gamma, box)
    return jax.vmap(lambda c: walk_({layer: c}))(jnp.asarray(chosen))


def channel_map(apply: ApplyFn, params: PyTree, x: Array, target: Array, channel: Array, *, layer: str,
                composite: str = "epsilon_plus", rules: Mapping[str, Any] | None = None, epsilon: float = 1e-6,
                gamma: float = 0.25, box: Any = None) -> Array:
    """``crp``'s ``[H, W, C]`` map of one ``channel`` (an int array: may be traced, vmapped over
    pairs of image and channel); settings as ``crp``."""
    walk_, layer, _ = _conditioned(apply, params, x, target, layer, None, composite, rules, epsilon, gamma, box)
    return walk_({layer: channel})


def channel_relevance(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None = None,
                      channels: Any = None, composite: str = "epsilon_plus", rules: Mapping[str, Any] | None = None,
                      epsilon: float = 1e-6, gamma: float = 0.25, box: Any = None) -> Array:
    """``[K]``: each of the ``channels`` of ``layer`` (``None``: all), its LRP relevance for the
    target at that layer's output summed over positions (what ``crp``'s map of that channel sums
    to, less what biases below absorb); settings as ``crp``."""
    walk_, layer, chosen = _conditioned(apply, params, x, target, layer, channels, composite, rules, epsilon, gamma, box)
    r = walk_({}, upto=layer)
    return r.reshape(-1, r.shape[-1]).sum(0)[jnp.asarray(chosen)]


def neuron_map(apply: ApplyFn, params: PyTree, x: Array, channel: Array, *, layer: str,
               composite: str = "epsilon_plus", rules: Mapping[str, Any] | None = None, epsilon: float = 1e-6,
               gamma: float = 0.25, box: Any = None) -> Array:
    """``[H, W, C]``: the LRP map of ``channel``'s largest activation at ``layer`` (that one neuron's
    activation as the relevance to hand back), which lies in the neuron's receptive field; what
    relevance maximisation crops the pictures where a channel is most active by. ``channel`` may
    be traced."""
    g, env, choose, handlers = _walked(apply, params, x, composite, rules, epsilon, gamma, box)
    layer, _ = concept_channels(g, layer, None)
    a = env[walk.layer_output(g, layer)]
    picked = jnp.take(a, channel, axis=-1)
    spot = jax.nn.one_hot(jnp.argmax(picked.ravel()), picked.size, dtype=a.dtype).reshape(picked.shape)
    start = (spot * picked)[..., None] * jax.nn.one_hot(channel, a.shape[-1], dtype=a.dtype)
    return walk.relevance(g, env, start, choose, handlers=handlers, name="crp", start_at=layer)


def _conditioned(apply: ApplyFn, params: PyTree, x: Array, target: Array, layer: str | None, channels: Any,
                 composite: str, rules: Mapping[str, Any] | None, epsilon: float, gamma: float,
                 box: Any) -> tuple[Callable[..., Array], str, tuple[int, ...]]:
    """``(walk, layer, channels)``: ``walk({layer: channel}, upto=None)`` the LRP walk of ``x`` with
    the relevance at ``layer`` kept in that channel only (``{}``: none kept out)."""
    g, env, choose, handlers = _walked(apply, params, x, composite, rules, epsilon, gamma, box)
    layer, chosen = concept_channels(g, layer, channels)
    start = start_relevance(env[g.logits], target)
    tap = g.tap_vars[layer].aval

    def walk_(condition: Mapping[str, Array], upto: str | None = None) -> Array:
        masks = {k: jax.nn.one_hot(c, tap.shape[-1], dtype=tap.dtype) for k, c in condition.items()}
        return walk.relevance(g, env, start, choose, masks=masks, handlers=handlers, name="crp", upto=upto)

    return walk_, layer, chosen


def concept_channels(g: graph_.Graph, layer: str | None, channels: Any) -> tuple[str, tuple[int, ...]]:
    """``(layer, channels)`` checked on the traced graph: ``layer`` a recorded layer on the way from
    the image to the logits (``None``: the last spatial one), ``channels`` distinct ints in
    ``[0, K)`` (``None``: all K, an int: that one); an ``InputError`` otherwise."""
    on_path = {n.layer for n in g.nodes if n.kind == "tap"} | {t for n in g.relevance_layers for t in n.taps}
    names = [k for k in g.layers if k in on_path]
    if layer is None:
        spatial = [k for k in names if len(g.tap_vars[k].aval.shape) == 3]
        if not spatial:
            raise InputError("crp needs layer=<name>: the model records no spatial layer [h, w, K]")
        layer = spatial[-1]
    if not isinstance(layer, str) or layer not in g.tap_vars:
        raise InputError(f"crp: unknown layer {layer!r}; the layers: {', '.join(g.layers)}")
    if layer not in on_path:
        raise InputError(f"crp: layer {layer!r} is not on the path from the image to the logits; those layers: "
                         f"{', '.join(names)}")
    k = g.tap_vars[layer].aval.shape[-1]
    if channels is None:
        return layer, tuple(range(k))
    items = [channels] if _is_int(channels) else channels
    if not isinstance(items, (list, tuple)) or not items or not all(_is_int(c) for c in items):
        raise InputError(f"crp: channels must be a non-empty list of ints (or None: all), got {channels!r}")
    bad = [int(c) for c in items if not 0 <= int(c) < k]
    if bad:
        raise InputError(f"crp: channel{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range: "
                         f"layer {layer!r} has {k} channels [0, {k})")
    if len({int(c) for c in items}) != len(items):
        raise InputError(f"crp: channels repeat: {list(items)}")
    return layer, tuple(int(c) for c in items)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


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
    pixels = np.stack([np.zeros((1, 1, channels), np.uint8), np.full((1, 1, channels), 255, np.uint8)])
    out = np.asarray(preprocess(pixels), np.float32)
    return jnp.asarray(np.stack([out[0, 0, 0], out[1, 0, 0]]))


@per_image(baseline=3)
@compiled
def deeplift(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, baseline: str | Array = "black",
             eps: float = 1e-10, multiply_by_inputs: bool = True) -> Array:
    """DeepLIFT (Shrikumar et al. 2017), the Rescale rule as Captum's ``DeepLift``, ``[H, W, C]``:
    ``(x - b) * m``, the multipliers ``m`` of the target's logit walked back comparing the forward
    passes of ``x`` and the ``baseline`` ``b`` (settings as ``integrated_gradients``'; ``"black"``
    the model's preprocessed black picture): linear layers by their gradient, ReLUs and other
    elementwise non-linearities by ``delta_out / delta_in`` (the gradient where
    ``|delta_in| < eps``), max pools by Captum's cross maximum. The map sums to
    ``f(x) - f(b)`` for the target. ``multiply_by_inputs=False``: the multipliers alone.
    A GELU, a product or a division of activations: an ``InputError`` naming the layer."""
    base = baseline_image(baseline, x)
    g = graph_.trace(apply, params, x)
    m = _multipliers(g, params, x, graph_.forward(g, params, x), base, target, eps)
    return (x - base) * m if multiply_by_inputs else m


@cost(lambda s, _: 1 if s.get("baselines") is None else int(np.shape(s["baselines"])[-4]))
@per_image(baselines=4)
@compiled
def deeplift_shap(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, baselines: Array | None = None,
                  eps: float = 1e-10, multiply_by_inputs: bool = True) -> Array:
    """DeepLiftShap (Captum's ``DeepLiftShap``), ``[H, W, C]``: the mean of ``deeplift`` over a
    reference batch ``baselines [N, H, W, C]`` (required), the references vmapped; the map sums to
    ``f(x)`` minus the mean of ``f`` over the references for the target."""
    if baselines is None:
        raise InputError("deeplift_shap needs baselines=[N, H, W, C], a batch of reference images")
    refs = jnp.asarray(baselines, x.dtype)
    if refs.ndim != x.ndim + 1 or refs.shape[1:] != x.shape or refs.shape[0] < 1:
        raise InputError(f"deeplift_shap: baselines must be [N, *{x.shape}] with N >= 1, got {refs.shape}")
    g = graph_.trace(apply, params, x)
    env = graph_.forward(g, params, x)

    def one(b: Array) -> Array:
        m = _multipliers(g, params, x, env, b, target, eps, name="deeplift_shap")
        return (x - b) * m if multiply_by_inputs else m

    return jnp.mean(jax.vmap(one)(refs), axis=0)


def _multipliers(g: graph_.Graph, params: PyTree, x: Array, env: Mapping[Any, Any], base: Array, target: Array,
                 eps: float, name: str = "deeplift") -> Array:
    """DeepLIFT's multipliers ``[H, W, C]`` of ``x`` against ``base`` (``env``: ``x``'s forward values)."""
    ref = graph_.forward(g, params, base)
    return deeplift_walk.multipliers(g, env, ref, jax.nn.one_hot(target, env[g.logits].shape[-1],
                                                                  dtype=env[g.logits].dtype), eps=eps, name=name)
