"""XRAI (Kapishnikov et al. 2019; PAIR's ``saliency``) on one image: a base attribution summed
into regions, regions chosen greedily by gain density.

The regions are boolean masks ``[N, H, W]``, overlapping or not: by default PAIR's (Felzenszwalb
at six scales on the picture at 224x224, each segment dilated by a disk of radius 5), computed on
the host by ``explain``; the base attribution and the selection run in JAX, batched and jitted.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import segmentation
from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, Model, PyTree

from jaxplain import baselines as baselines_
from jaxplain.checks import as_key, real
from jaxplain.marks import cost, host_settings, method_function, output, passes, per_image, wraps_method

SCALES = (50, 100, 150, 250, 500, 1200)  # PAIR's Felzenszwalb scales, sigma 0.8, min size 150, at 224x224
ALGORITHMS = ("full", "fast")


class Xrai(NamedTuple):
    """XRAI with ``return_ranks=True``, one image (a leading ``B`` through ``explain``)."""

    attribution: Array  # [H, W]: each pixel's region's gain density
    ranks: Array  # [H, W] int32: 1 for the pixels of the best region, 2 for the next, ...


def xrai_masks(picture: np.ndarray, *, dilation: int = 5) -> np.ndarray:
    """PAIR's XRAI regions of one picture ``[H, W, 3]`` (or grayscale ``[H, W, 1]``): ``[N, H, W]`` bool. The picture is scaled
    to [-1, 1] by its own range and resized to 224x224 (cubic), segmented by Felzenszwalb at each
    of ``SCALES`` (sigma 0.8, min size 150), the label maps resized back (nearest), every segment
    of every scale a mask, each dilated by a disk of radius ``dilation``."""
    seg = segmentation.skimage_module("segments='xrai'")
    from skimage.morphology import dilation as dilate
    from skimage.morphology import disk
    from skimage.transform import resize

    im = np.asarray(picture, np.float64)
    gray = im.ndim == 3 and im.shape[-1] == 1
    im = im[..., 0] if gray else im
    lo, hi = im.min(), im.max()
    im = (im - lo) / (hi - lo) * 2.0 - 1.0 if hi > lo else np.zeros_like(im)
    small = resize(im, (224, 224), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    masks = []
    for scale in SCALES:
        labels = seg.felzenszwalb(small, scale=scale, sigma=0.8, min_size=150, channel_axis=None if gray else -1)
        labels = resize(labels, picture.shape[:2], order=0, preserve_range=True, mode="constant",
                        anti_aliasing=False).astype(int)
        masks += [labels == v for v in range(labels.min(), labels.max() + 1)]
    if dilation:
        masks = [dilate(m, footprint=disk(dilation)) for m in masks]
    return np.stack(masks)


def _baselines(model: Model, image_shape: tuple[int, ...], baselines: Any) -> Any:
    """``"black"`` / ``"white"`` in ``baselines`` as the preprocessed pictures; stacked ``[K, H, W, C]``."""
    if isinstance(baselines, (str, int, float)) or (hasattr(baselines, "ndim") and np.ndim(baselines) <= 3):
        baselines = (baselines,)
    out = []
    for b in baselines:
        if isinstance(b, str):
            if b not in ("black", "white"):
                raise InputError(f"baselines must hold 'black', 'white', numbers or [H, W, C] arrays, got {b!r}")
            b = np.asarray(baselines_.for_model(b, model.preprocess, image_shape, model.name), np.float32)
        out.append(np.broadcast_to(np.asarray(b, np.float32), image_shape))
    return np.stack(out)


def _as_masks(segments: Any, shape: tuple[int, int], batch: int | None = None) -> np.ndarray:
    """Boolean masks ``[N, H, W]`` (or ``[B, N, H, W]``) from masks or a label map (one mask per label)."""
    a = np.asarray(segments)
    if a.dtype == bool:
        if a.shape[-2:] != tuple(shape) or a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[0] != batch):
            raise InputError(f"segment masks must be [N, H, W] or [B, N, H, W] with H, W = {tuple(shape)}"
                             f"{f' and B = {batch}' if batch else ''}, got shape {a.shape}")
        return a
    labels = segmentation.check_labels(a, shape, batch)
    return labels[..., None, :, :] == np.arange(int(labels.max()) + 1)[:, None, None]


def resolve(model: Model, images: Any, settings: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``explain``'s host step for ``xrai``: ``segments`` as boolean masks ``[B, N, H, W]``
    (``"xrai"``: ``xrai_masks`` of each picture; another kind: one mask per segment of
    ``jaxplain.segments``; masks or label maps as given), padded with empty masks to the same
    ``N``; ``baselines`` as ``[K, H, W, C]``."""
    settings = dict(settings)
    b, h, w = np.shape(images)[:3]
    spec = settings.get("segments", defaults["segments"])
    if isinstance(spec, str) and spec == "xrai":
        masks = [xrai_masks(p) for p in segmentation.seen(segmentation.pictures(model, images))]
    elif isinstance(spec, str):
        kind, options = segmentation.parse_kind(spec)
        if kind == "grid":
            labels = np.broadcast_to(segmentation.grid((h, w), options.get("cells", 8)), (b, h, w))
        else:
            labels = segmentation.segments(segmentation.seen(segmentation.pictures(model, images)), kind, **options)
        masks = list(_as_masks(labels, (h, w), b))
    else:
        given = _as_masks(spec, (h, w), b)
        masks = list(given) if given.ndim == 4 else [given] * b
    n = max(len(m) for m in masks)
    cap = settings.get("max_segments")
    if cap is not None and n > cap:
        raise InputError(f"xrai has {n} regions for an image but max_segments={cap}: raise max_segments")
    n = cap or n
    settings["segments"] = np.stack([np.concatenate([m, np.zeros((n - len(m), h, w), bool)]) for m in masks])
    settings["max_segments"] = n
    settings["baselines"] = _baselines(model, (h, w, np.shape(images)[3]), settings.get("baselines", defaults["baselines"]))
    return settings


def _regions(segments: Any, shape: tuple[int, int]) -> Array:
    """``[N, H, W]`` float32 0/1 masks from masks, a label map (one mask per label) or ``"grid"``."""
    if isinstance(segments, str):
        kind, options = ("xrai", {}) if segments == "xrai" else segmentation.parse_kind(segments)
        if kind != "grid":
            raise InputError(f"segments={segments!r} is computed from the picture on the host: use jaxplain.explain, "
                             "or pass masks [N, H, W] (xrai_masks of the picture) or a label map")
        labels = segmentation.grid(shape, options.get("cells", 8))
        return jnp.asarray(labels[None] == np.arange(labels.max() + 1)[:, None, None], jnp.float32)
    a = segments if isinstance(segments, jax.Array) else np.asarray(segments)
    if a.dtype == bool:
        if a.ndim != 3 or tuple(a.shape[1:]) != tuple(shape):
            raise InputError(f"segment masks must be [N, H, W] with H, W = {tuple(shape)}, got shape {tuple(a.shape)}")
        return jnp.asarray(a, jnp.float32)
    labels = segmentation.check_labels(a, shape)
    n = segmentation.count(labels, None)
    return (jnp.asarray(labels)[None] == jnp.arange(n)[:, None, None]).astype(jnp.float32)


def _base_map(apply: ApplyFn, params: PyTree, x: Array, target: Array, base: Callable, base_settings: Mapping,
              baselines: Any, key: Array | None) -> Array:
    """The base attribution, averaged over ``baselines`` where ``base`` takes a ``baseline``; a
    base that takes a key gets ``fold_in(key, j)`` for baseline ``j`` (``key`` as is without baselines)."""
    base, wants_key = method_function(base, "base", "explain")
    settings = dict(base_settings or {})
    key = as_key(key)

    def run(b: Array | None, j: Array | int) -> Array:
        extra = {"key": jax.random.fold_in(key, j) if b is not None else key} if wants_key and key is not None else {}
        return base(apply, params, x, target, **settings, **extra, **({} if b is None else {"baseline": b}))

    if "baseline" not in inspect.signature(base).parameters or "baseline" in settings:
        return run(None, 0)
    if isinstance(baselines, (tuple, list)):
        items = list(baselines)
    else:
        items = [baselines] if isinstance(baselines, str) or np.ndim(baselines) < 4 else list(jnp.asarray(baselines))
    if any(isinstance(b, str) for b in items):
        raise InputError("baselines 'black' and 'white' need the model's preprocessing: use jaxplain.explain, "
                         "or pass numbers or [H, W, C] arrays")
    stack = jnp.stack([jnp.broadcast_to(jnp.asarray(b, x.dtype), x.shape) for b in items])
    return jax.vmap(run)(stack, jnp.arange(len(items))).mean(0)


def _finish(attr: Array, step_of: Array, gains: Array) -> tuple[Array, Array]:
    """The map and ranks from each pixel's selection step (``-1``: never covered) and each step's gain."""
    left = step_of < 0
    rest = jnp.sum(jnp.where(left, attr, 0.0)) / jnp.maximum(jnp.sum(left), 1).astype(attr.dtype)
    out = jnp.where(left, rest, gains[jnp.maximum(step_of, 0)])
    order = jnp.argsort(-gains, stable=True)  # unused steps hold -inf: last
    rank_of_step = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    used = jnp.sum(gains > -jnp.inf)
    ranks = jnp.where(left, used + 1, rank_of_step[jnp.maximum(step_of, 0)] + 1)
    return out, ranks.astype(jnp.int32)


def _full(attr: Array, masks: Array, area_threshold: float, min_pixel_diff: int) -> tuple[Array, Array]:
    """PAIR's ``_xrai``: repeatedly drop the masks adding fewer than ``min_pixel_diff`` new pixels,
    then add the one whose new pixels have the highest mean attribution (the first such), until
    the covered area exceeds ``area_threshold`` or no mask is left."""
    n, hw = masks.shape
    need = max(int(min_pixel_diff), 1)

    def body(state):
        current, alive, step_of, gains, step, _ = state
        free = 1.0 - current
        count = masks @ free
        alive = alive & (count >= need)
        gain = jnp.where(alive, (masks @ (free * attr)) / jnp.maximum(count, 1.0), -jnp.inf)
        best = jnp.argmax(gain)
        go = alive.any()
        new = (masks[best] * free > 0) & go
        step_of = jnp.where(new, step, step_of)
        gains = gains.at[step].set(jnp.where(go, gain[best], -jnp.inf))
        current = jnp.maximum(current, masks[best] * go.astype(attr.dtype))
        alive = alive.at[best].set(False)
        done = ~go | (jnp.sum(current) > area_threshold * hw)
        return current, alive, step_of, gains, step + 1, done

    state = (jnp.zeros(hw, attr.dtype), jnp.ones(n, bool), jnp.full(hw, -1, jnp.int32), jnp.full(n, -jnp.inf, attr.dtype),
             jnp.int32(0), jnp.bool_(False))
    _, _, step_of, gains, _, _ = jax.lax.while_loop(lambda s: ~s[5] & (s[4] < n), body, state)
    return step_of, gains


def _fast(attr: Array, masks: Array, min_pixel_diff: int) -> tuple[Array, Array]:
    """PAIR's ``_xrai_fast``: masks in order of their own mean attribution; each adds its new
    pixels unless there are fewer than ``min_pixel_diff``, with their mean as the gain."""
    n, hw = masks.shape
    need = max(int(min_pixel_diff), 1)
    size = masks.sum(1)
    own = jnp.where(size > 0, (masks @ attr) / jnp.maximum(size, 1.0), -jnp.inf)
    order = jnp.argsort(-own, stable=True)

    def body(i, state):
        current, step_of, gains, step = state
        mask = masks[order[i]]
        new = mask * (1.0 - current) > 0
        count = jnp.sum(new)
        go = count >= need
        gain = jnp.sum(jnp.where(new, attr, 0.0)) / jnp.maximum(count, 1).astype(attr.dtype)
        step_of = jnp.where(new & go, step, step_of)
        gains = gains.at[step].set(jnp.where(go, gain, gains[step]))
        current = jnp.where(go, jnp.maximum(current, mask), current)
        return current, step_of, gains, step + go.astype(jnp.int32)

    state = (jnp.zeros(hw, attr.dtype), jnp.full(hw, -1, jnp.int32), jnp.full(n, -jnp.inf, attr.dtype), jnp.int32(0))
    _, step_of, gains, _ = jax.lax.fori_loop(0, n, body, state)
    return step_of, gains


def _passes(settings: dict, image_shape: tuple[int, ...]) -> int:
    """The base's passes once per baseline where it takes one; none for a given ``base_attribution``."""
    if settings["base_attribution"] is not None:
        return 0
    base, given = settings["base"], settings["baselines"]
    k = 1 if isinstance(given, str) or np.ndim(given) in (0, 3) else len(given)
    k = k if "baseline" in inspect.signature(base).parameters else 1
    return k * passes(base, dict(settings["base_settings"] or {}), image_shape)


@cost(_passes)
@output("map")
@per_image(segments=None, base_attribution=None)
@host_settings(resolve)
@wraps_method
def xrai(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, segments: str | Array = "xrai",
         max_segments: int | None = None, base: str | Callable = "integrated_gradients(steps=100)",
         base_settings: Mapping[str, Any] | None = None, baselines: Any = ("black", "white"),
         base_attribution: Array | None = None, algorithm: str = "full", area_threshold: float = 1.0,
         min_pixel_diff: int = 50, return_ranks: bool = False, key: Array | None = None) -> Array | Xrai:
    """XRAI (Kapishnikov et al. 2019), PAIR's algorithm, ``[H, W]``.

    The ``base`` method (default integrated gradients, 100 steps), averaged over ``baselines``
    (default the black and white pictures) when it takes a ``baseline``, or the caller's
    ``base_attribution`` (``[H, W, C]`` or ``[H, W]``), is reduced over channels by the maximum.
    Regions (``segments``: ``"xrai"``, PAIR's multi-scale Felzenszwalb, computed by ``explain``;
    another kind; masks ``[N, H, W]``; a label map) are added greedily by gain density, the mean
    attribution of the pixels a region adds (``algorithm="full"``; ``"fast"`` ranks the regions
    once by their own density); each pixel gets its region's gain, pixels no region covers the
    mean over them. ``return_ranks``: an ``Xrai`` with each pixel's region rank (1 = best).
    ``key``: for a random base (``smoothgrad``), folded in per baseline.
    Given the same regions and base attribution, PAIR's ``XRAI`` gives the same map and ranks; its
    defaults differ: it segments the model's input scaled by its own range (here the picture), its
    baselines are the input's minimum and maximum, and its IG averages the gradients at
    ``linspace(0, 1, steps)`` (here Gauss-Legendre).
    """
    if algorithm not in ALGORITHMS:
        raise InputError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    area_threshold = real(area_threshold, "area_threshold", at_least=0)
    if isinstance(min_pixel_diff, bool) or not isinstance(min_pixel_diff, (int, np.integer)) or min_pixel_diff < 0:
        raise InputError(f"min_pixel_diff must be an int >= 0, got {min_pixel_diff!r}")
    h, w = x.shape[:2]
    masks = _regions(segments, (h, w)).reshape(-1, h * w)
    if base_attribution is None:
        attr = _base_map(apply, params, x, target, base, base_settings, baselines, key)
    else:
        attr = jnp.asarray(base_attribution, jnp.float32)
        if attr.shape not in (x.shape, (h, w)):
            raise InputError(f"base_attribution must be [H, W, C] = {x.shape} or [H, W], got shape {attr.shape}")
    attr = (attr.max(-1) if attr.ndim == 3 else attr).reshape(-1)
    if algorithm == "full":
        step_of, gains = _full(attr, masks, area_threshold, min_pixel_diff)
    else:
        step_of, gains = _fast(attr, masks, min_pixel_diff)
    out, ranks = _finish(attr, step_of, gains)
    return Xrai(out.reshape(h, w), ranks.reshape(h, w)) if return_ranks else out.reshape(h, w)
