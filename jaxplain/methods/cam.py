"""The CAM family: one ``cam()`` core and a small channel-weight function per variant.

Every variant forms ``relu(sum_k W_k * A_k)`` from the layer's activation ``A [h, w, K]`` (and,
for most, the gradient ``G = dS/dA``); they differ only in ``W`` ``[h, w, K]`` (a per-channel weight
broadcast over positions, or a per-position one). Output ``[H, W]`` at the input's resolution
(bilinear), or the layer's ``[h, w]`` with ``upsample=False``. Every CAM takes ``relu=True``: the
papers' final rectifier; ``relu=False`` keeps the signed sum (Captum's ``LayerGradCam(...,
relu_attributions=False)`` for Grad-CAM), rectified before the resize when on, never after.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree

from jaxplain.chunks import counts_images, keep, sum_chunks
from .gradients import guided_backprop
from .layer import activation, layer_gradient, layer_key
from jaxplain.marks import output, targetless

Weights = Callable[[Array, Array], Array]


def resize(m: Array, size: tuple[int, int]) -> Array:
    """Bilinear resize of ``[h, w]`` to ``size`` (half-pixel centres, as torch's ``align_corners=False``)."""
    return jax.image.resize(m, size, "bilinear", antialias=False)


def _corner_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``[n_out, n_in]`` linear-interpolation weights with the corner pixels' centres aligned:
    output ``i`` reads source position ``i * (n_in - 1) / (n_out - 1)``."""
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.minimum(np.floor(src).astype(int), max(n_in - 2, 0))
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    if n_in > 1:
        m[np.arange(n_out), lo + 1] += frac
    return m.astype(np.float32)


def resize_align_corners(m: Array, size: tuple[int, int]) -> Array:
    """Bilinear resize of ``[..., h, w]`` to ``[..., *size]`` with corner pixels aligned (torch's
    ``align_corners=True``, ``nn.UpsamplingBilinear2d``), as two static interpolation matrices."""
    rows = jnp.asarray(_corner_matrix(size[0], m.shape[-2]), m.dtype)
    cols = jnp.asarray(_corner_matrix(size[1], m.shape[-1]), m.dtype)
    return jnp.einsum("Hh,...hw,Ww->...HW", rows, m, cols)


def _spatial(a: Array, layer: str) -> None:
    if a.ndim != 3:
        raise InputError(f"layer {layer!r} has shape {a.shape}: CAM methods need a spatial layer [h, w, K]")


def finish(m: Array, size: tuple[int, int], *, relu: bool, upsample: bool) -> Array:
    """A CAM's last step on its ``[h, w]`` sum: rectified (``relu``), then resized to ``size``
    (bilinear, ``upsample``)."""
    m = jax.nn.relu(m) if relu else m
    return resize(m, size) if upsample else m


def cam(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None, weights: Weights,
        upsample_to_input: bool = True, relu: bool = True, attribute_to: str = "output") -> Array:
    """``relu(sum_k weights(A, G) * A)`` at ``layer`` (without the ReLU for ``relu=False``;
    ``attribute_to="input"``: at its input); the core of every gradient-based CAM."""
    layer = layer_key(layer, attribute_to)
    act, grad = layer_gradient(apply, params, x, target, layer)
    _spatial(act, layer)
    return finish(jnp.sum(weights(act, grad) * act, axis=-1), x.shape[:2], relu=relu, upsample=upsample_to_input)


def grad_cam_weights(act: Array, grad: Array) -> Array:
    """Grad-CAM (Selvaraju et al. 2017): the spatial mean of the gradient per channel."""
    return jnp.mean(grad, axis=(0, 1), keepdims=True)


def hires_cam_weights(act: Array, grad: Array) -> Array:
    """HiResCAM (Draelos & Carin 2020): the gradient itself, position by position."""
    return grad


def xgrad_cam_weights(act: Array, grad: Array) -> Array:
    """XGrad-CAM (Fu et al. 2020): ``sum_ij A_ij / (sum_ij A_ij + eps) * G_ij`` per channel."""
    norm = jnp.sum(act, axis=(0, 1), keepdims=True) + 1e-7
    return jnp.sum(act / norm * grad, axis=(0, 1), keepdims=True)


def layer_cam_weights(act: Array, grad: Array) -> Array:
    """LayerCAM (Jiang et al. 2021): the positive part of the gradient, position by position."""
    return jax.nn.relu(grad)


def grad_cam_pp_paper_weights(act: Array, grad: Array) -> Array:
    """Grad-CAM++ closed form (Chattopadhay et al. 2018, eq. 19, for ``Y = exp(S)``):
    ``alpha = G^2 / (2 G^2 + sum_ab A_ab G^3)``, ``w_k = sum_ij alpha relu(G)``."""
    g2, g3 = grad**2, grad**3
    denom = 2 * g2 + jnp.sum(act, axis=(0, 1), keepdims=True) * g3
    alpha = g2 / jnp.where(denom != 0, denom, 1.0)
    return jnp.sum(alpha * jax.nn.relu(grad), axis=(0, 1), keepdims=True)


def _variant(weights: Weights, doc: str) -> Callable:
    def method(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None = None,
               upsample: bool = True, relu: bool = True, attribute_to: str = "output") -> Array:
        return cam(apply, params, x, target, layer=layer, weights=weights, upsample_to_input=upsample, relu=relu,
                   attribute_to=attribute_to)

    method.__doc__ = doc + (" ``[H, W]`` (``upsample=False``: ``[h, w]``); ``relu=False`` drops the final"
                            " ReLU (the signed map); ``attribute_to=\"input\"``: from the layer's input, Captum's"
                            " ``attribute_to_layer_input=True``.")
    return output("map")(method)


grad_cam = _variant(grad_cam_weights, "Grad-CAM: ``relu(sum_k mean_ij(G_k) A_k)``, Captum ``LayerGradCam`` "
                    "(``relu=False``: its ``relu_attributions=False``).")
hires_cam = _variant(hires_cam_weights, "HiResCAM: ``relu(sum_k G_k * A_k)``.")
xgrad_cam = _variant(xgrad_cam_weights, "XGrad-CAM: activation-weighted gradient sums per channel.")
layer_cam = _variant(layer_cam_weights, "LayerCAM: ``relu(sum_k relu(G_k) * A_k)``.")
for _f, _n in ((grad_cam, "grad_cam"), (hires_cam, "hires_cam"), (xgrad_cam, "xgrad_cam"), (layer_cam, "layer_cam")):
    _f.__name__ = _f.__qualname__ = _n


def diagonal_derivatives(apply: ApplyFn, params: PyTree, x: Array, target: Array, layer: str,
                         chunk: int | None = 256) -> tuple[Array, Array, Array, Array]:
    """``(A, dY/dA, d2Y/dA2, d3Y/dA3)`` for ``Y = exp(S - S(x))``, ``S = logits[target]``: the
    pure (diagonal) partials of every activation element, exact by nested forward-mode through
    the network after the layer (one pass per element, vectorized in chunks of ``chunk``).

    ``S(x)`` is a constant, not a function of the activation, so these are ``exp(-S(x))`` times
    the derivatives of ``exp(S)``: Grad-CAM++'s ``alpha`` is unchanged, and nothing overflows
    where ``exp(S)`` would (a logit above about 88 in float32)."""
    act, s0 = keep(lambda: _activation_and_score(apply, params, x, target, layer))

    def y(tap: Array) -> Array:
        return jnp.exp(apply(params, x, taps={layer: tap})[0][target] - s0)

    zero = jnp.zeros_like(act)
    d1 = keep(lambda: jax.grad(y)(zero))

    def part(idx: Array) -> tuple[Array, Array]:
        d2, d3 = jax.vmap(lambda i: _along(y, zero, i))(idx)
        hot = jax.nn.one_hot(idx, act.size, dtype=act.dtype)  # scatter this chunk's values
        return d2 @ hot, d3 @ hot

    d2, d3 = sum_chunks(part, jnp.arange(act.size), chunk)
    return act, d1, d2.reshape(act.shape), d3.reshape(act.shape)


def _activation_and_score(apply: ApplyFn, params: PyTree, x: Array, target: Array,
                          layer: str | None) -> tuple[Array, Array]:
    logits, acts = apply(params, x)
    if layer not in acts:
        activation(apply, params, x, layer)  # raises, naming the layers
    return acts[layer], logits[target]


def _along(y: Callable[[Array], Array], zero: Array, index: Array) -> tuple[Array, Array]:
    """The 2nd and 3rd derivatives of ``y`` along activation element ``index`` at ``zero``."""
    e = jax.nn.one_hot(index, zero.size, dtype=zero.dtype).reshape(zero.shape)
    f = lambda t: y(zero + t * e)  # noqa: E731
    f1 = lambda t: jax.jvp(f, (t,), (jnp.ones_like(t),))[1]  # noqa: E731
    f2 = lambda t: jax.jvp(f1, (t,), (jnp.ones_like(t),))[1]  # noqa: E731
    return jax.jvp(f2, (jnp.zeros((), zero.dtype),), (jnp.ones((), zero.dtype),))


def exact_cost(apply: ApplyFn, params: PyTree, image_shape: tuple[int, ...], layer: str) -> tuple[int, float]:
    """``(passes, flops)`` per image of ``derivatives="exact"`` at ``layer``: one third-order
    forward pass per activation element, and XLA's FLOP count for them (the lowered program's
    count for two elements minus that for one, times the elements). Traced, never compiled."""
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    image = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    shape = jax.eval_shape(lambda p, v: apply(p, v)[1][layer], params, image).shape

    def elements(p: PyTree, v: Array, idx: Array) -> tuple[Array, Array]:
        y = lambda tap: jnp.exp(apply(p, v, taps={layer: tap})[0][0])  # noqa: E731
        return jax.vmap(lambda i: _along(y, jnp.zeros(shape, jnp.float32), i))(idx)

    def flops(n: int) -> float:
        lowered = jax.jit(elements).lower(jax.tree.map(spec, params), image, jax.ShapeDtypeStruct((n,), jnp.int32))
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float((cost or {}).get("flops", 0.0))

    passes = int(np.prod(shape))
    return passes, passes * max(flops(2) - flops(1), 0.0)


@output("map")
def grad_cam_pp(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None = None,
                upsample: bool = True, relu: bool = True, derivatives: str = "paper", chunk: int | None = 256,
                attribute_to: str = "output") -> Array:
    """Grad-CAM++ (Chattopadhay et al. 2018), ``[H, W]``: ``w_k = sum_ij alpha_ij relu(dY/dA_ij)``,
    ``alpha = d2Y / (2 d2Y + sum_ab A_ab d3Y)`` for ``Y = exp(S)``, derivatives by activation element.

    ``derivatives="paper"`` (the default) is the paper's closed form in the first derivative
    ``G = dS/dA``, exact when the network after the layer is piecewise linear (ReLU heads, as
    VGG's): one backward pass. ``"exact"`` takes the three derivatives from JAX, exact for any head
    but one third-order forward pass per activation element, ``chunk`` at a time (VGG16 at
    ``block5_conv3``: 100352 passes, about 1e14 FLOP per image; ``explain`` warns with the count
    before it compiles, ``exact_cost`` returns it). Exact mode differentiates ``exp(S - S(x))``,
    so its map is ``exp(-S(x))`` times that of ``exp(S)``: finite at any logit, and equal to the
    paper's where the head is piecewise linear. ``relu=False`` drops the final ReLU;
    ``attribute_to="input"``: at the layer's input.
    """
    layer = layer_key(layer, attribute_to)
    if derivatives == "paper":
        return cam(apply, params, x, target, layer=layer, weights=grad_cam_pp_paper_weights, upsample_to_input=upsample,
                   relu=relu)
    if derivatives != "exact":
        raise InputError(f"derivatives must be 'paper' or 'exact', not {derivatives!r}")
    act, d1, d2, d3 = diagonal_derivatives(apply, params, x, target, layer, chunk)
    _spatial(act, layer)
    denom = 2 * d2 + jnp.sum(act, axis=(0, 1), keepdims=True) * d3
    alpha = d2 / jnp.where(denom != 0, denom, 1.0)
    w = jnp.sum(alpha * jax.nn.relu(d1), axis=(0, 1), keepdims=True)
    return finish(jnp.sum(w * act, axis=-1), x.shape[:2], relu=relu, upsample=upsample)


def _exact_cost_note(model: Any, image_shape: tuple[int, ...], settings: dict[str, Any]) -> str | None:
    """What ``derivatives="exact"`` will cost, said by ``explain`` before it compiles."""
    if settings.get("derivatives") != "exact":
        return None
    layer = layer_key(settings["layer"], settings.get("attribute_to", "output"))
    passes, flops = exact_cost(model.apply, model.params, tuple(image_shape), layer)
    return (f"grad_cam_pp(derivatives='exact') at {settings['layer']} makes {passes} third-order forward passes "
            f"per image, about {flops:.2g} FLOP (XLA's count); derivatives='paper', the default, is exact for "
            f"ReLU heads and costs one backward pass")


grad_cam_pp.cost_note = _exact_cost_note


@targetless
@output("map")
def eigen_cam(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None = None,
              upsample: bool = True, relu: bool = True, attribute_to: str = "output") -> Array:
    """Eigen-CAM (Muhammad & Yeasin 2020), ``[H, W]``: the activations (centred per channel)
    projected on their first principal direction, signed so the map correlates positively with
    the mean activation, then rectified (``relu=False``: not). Class-agnostic: ``target`` is not used.

    pytorch-grad-cam's ``EigenCAM`` (``get_2d_projection``) projects the same centred
    activations on the first right singular vector but keeps the sign LAPACK returns, with no
    correction, so its map can be the other half of the projection (on the tests' tiny VGG it
    is, for both test images); it then rectifies, min-max scales each map to [0, 1] and resizes
    it with cv2. Ours is signed as above and not scaled. ``attribute_to="input"``: the
    activations of the layer's input."""
    layer = layer_key(layer, attribute_to)
    act = activation(apply, params, x, layer)
    _spatial(act, layer)
    flat = act.reshape(-1, act.shape[-1])
    centred = flat - jnp.mean(flat, axis=0)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[0]
    proj = proj * jnp.where(jnp.sum(proj * jnp.mean(flat, axis=1)) < 0, -1.0, 1.0)
    return finish(proj.reshape(act.shape[:2]), x.shape[:2], relu=relu, upsample=upsample)


@output("map")
@counts_images(forward_only=True)
def score_cam(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None = None,
              upsample: bool = True, relu: bool = True, align_corners: bool = False, chunk: int | None = 32,
              attribute_to: str = "output") -> Array:
    """Score-CAM (Wang et al. 2020), ``[H, W]``: each channel, upsampled and min-max normalised,
    masks the input; the softmax over channels of the masked inputs' target logits weights the
    channels, and the weighted sum is rectified (``relu=False``: not). The ``K`` masked forward
    passes are vectorized in chunks of ``chunk``.

    ``align_corners`` picks how the channel masks are upsampled: ``False`` (default) with
    half-pixel centres, as our other CAMs, Captum's ``LayerAttribution.interpolate`` and
    ``jax.image.resize``; ``True`` with corner pixels aligned, as pytorch-grad-cam's
    ``ScoreCAM`` (``nn.UpsamplingBilinear2d``). The choice matters: on the tests' tiny VGGs (8x8
    layer, 32x32 input; 4 seeds x 4 random images x 10 targets) the two conventions' maps differ
    by a median 2.0% of the map's maximum (90th percentile 5.6%, worst 16%). pytorch-grad-cam
    also min-max scales its output to [0, 1]; ours is not scaled. The final map
    (``upsample=True``) is resized with half-pixel centres either way, as pytorch-grad-cam's cv2.
    ``attribute_to="input"``: the channels of the layer's input.
    """
    layer = layer_key(layer, attribute_to)
    act = keep(lambda: activation(apply, params, x, layer))
    _spatial(act, layer)
    k = act.shape[-1]
    maps = jnp.moveaxis(act, -1, 0)  # [K, h, w]

    def part(idx: Array) -> Array:
        if align_corners:
            m = resize_align_corners(maps[idx], x.shape[:2])
        else:
            m = jax.vmap(lambda c: resize(maps[c], x.shape[:2]))(idx)
        lo = jnp.min(m, axis=(1, 2), keepdims=True)
        hi = jnp.max(m, axis=(1, 2), keepdims=True)
        m = jnp.where(hi > lo, (m - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
        scores = jax.vmap(lambda mask: apply(params, x * mask[..., None])[0][target])(m)
        return jax.nn.one_hot(idx, k, dtype=scores.dtype).T @ scores  # scatter into [K]

    scores = sum_chunks(part, jnp.arange(k), chunk)
    w = jax.nn.softmax(scores)
    return finish(jnp.sum(w * act, axis=-1), x.shape[:2], relu=relu, upsample=upsample)


def resize_nearest(m: Array, size: tuple[int, int]) -> Array:
    """Nearest-neighbour resize of ``[..., h, w]`` to ``[..., *size]`` as torch's
    ``F.interpolate(mode="nearest")`` (Captum's ``LayerAttribution.interpolate`` default): output
    ``i`` reads source ``min(floor(i * h / H), h - 1)``, a static gather."""
    rows = np.minimum(np.floor(np.arange(size[0]) * (m.shape[-2] / size[0])).astype(int), m.shape[-2] - 1)
    cols = np.minimum(np.floor(np.arange(size[1]) * (m.shape[-1] / size[1])).astype(int), m.shape[-1] - 1)
    return m[..., rows[:, None], cols[None, :]]


UPSAMPLES = ("bilinear", "nearest")


def guided_grad_cam(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, layer: str | None = None,
                    upsample: str = "bilinear", attribute_to: str = "output") -> Array:
    """Guided Grad-CAM (Selvaraju et al. 2017), ``[H, W, C]``: guided backprop times the
    Grad-CAM map upsampled to the input (Captum ``GuidedGradCam``). ``upsample``:
    ``"bilinear"`` (the default; half-pixel centres, Captum's ``interpolate_mode="bilinear"``) or
    ``"nearest"`` (Captum's default ``interpolate_mode``, torch's nearest: ``resize_nearest``).
    ``attribute_to="input"``: the Grad-CAM of the layer's input (``attribute_to_layer_input=True``)."""
    if upsample not in UPSAMPLES:
        raise InputError(f"guided_grad_cam: upsample must be one of {UPSAMPLES}, not {upsample!r}")
    g = grad_cam(apply, params, x, target, layer=layer, upsample=False, attribute_to=attribute_to)
    g = resize(g, x.shape[:2]) if upsample == "bilinear" else resize_nearest(g, x.shape[:2])
    return guided_backprop(apply, params, x, target) * g[..., None]


for _f in (grad_cam, grad_cam_pp, hires_cam, xgrad_cam, layer_cam, eigen_cam, score_cam, guided_grad_cam):
    _f.spatial_layer = True  # explain() refuses layers without [h, w, K] activations for these
