"""Localisation on one image: does the attribution fall on the ground-truth object?

Pointing game (Zhang et al. 2018), relevance mass and relevance rank accuracy (Arras et al. 2022,
CLEVR-XAI), as Quantus 0.6's ``PointingGame``, ``RelevanceMassAccuracy`` and
``RelevanceRankAccuracy``. Each reads the attribution summed over its channels (a map as it is)
and a binary ``mask [H, W]`` of the object (``evaluate`` takes one for all images or one per image
``[B, H, W]``). None makes a forward pass or reads the target. An empty mask scores NaN (as Quantus).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.marks import better, per_image, targetless
from jaxplain.types import ApplyFn, Array, PyTree

from .common import pixel_map, ranks


def _needs_mask(name: str) -> InputError:
    return InputError(f"{name} scores against a ground-truth mask: pass mask=... (bool or 0/1), [H, W] for "
                      f"all images or [B, H, W] one per image")


def check_mask(images: Array, mask: Any, name: str) -> Array:
    """``mask`` as a bool ``[H, W]`` or ``[B, H, W]`` for ``images [B, H, W, C]``, or an
    ``InputError`` naming what is wrong (missing, not numbers, wrong shape, values other than 0
    and 1). An image whose mask is empty is warned about; its score is NaN."""
    if mask is None:
        raise _needs_mask(name)
    m = np.asarray(mask)
    if not (m.dtype == bool or np.issubdtype(m.dtype, np.number)):
        raise InputError(f"mask must be bool or 0/1 numbers, got dtype {m.dtype}")
    b, h, w = images.shape[:3]
    if m.shape not in ((h, w), (b, h, w)):
        raise InputError(f"mask must be [H, W] = {(h, w)} for all images or [B, H, W] = {(b, h, w)} one per image, "
                         f"got shape {m.shape}")
    if m.dtype != bool:
        bad = m[(m != 0) & (m != 1)]
        if bad.size:
            raise InputError(f"mask must be binary (bool or 0/1), got the value {bad.flat[0].item()!r}")
    m = m.astype(bool)
    empty = ~m.reshape(-1 if m.ndim == 2 else b, h * w).any(-1)
    if empty.any():
        which = "all images" if m.ndim == 2 else f"images {np.nonzero(empty)[0].tolist()[:8]}"
        warnings.warn(f"{name}: the mask is empty for {which}; their scores are NaN", stacklevel=3)
    return jnp.asarray(m)


def _inside(mask: Array | None, name: str) -> tuple[Array, Array]:
    """``(mask as bool [H, W], its pixel count as float32)``."""
    if mask is None:
        raise _needs_mask(name)
    m = jnp.asarray(mask).astype(bool)
    return m, m.sum().astype(jnp.float32)


def _nan_if_empty(value: Array, size: Array) -> Array:
    return jnp.where(size > 0, value, jnp.nan)


@better("higher")
@per_image(attribution=None, mask=2)
@targetless
def pointing_game(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
                  mask: Array | None = None, weighted: bool = False) -> dict[str, Array]:
    """Pointing game: 1 if a pixel of the largest attribution (channels summed; any of tied
    maxima, as Quantus) lies in ``mask``, else 0. ``weighted``: a hit scores ``1 - |mask| / (H W)``
    (Quantus' ``weighted=True`` meant so; its 0.6 code casts that back to a bool). No tolerance
    around the mask (Zhang et al. allowed 15 pixels; Quantus none)."""
    m, size = _inside(mask, "pointing_game")
    a = pixel_map(attribution)
    hit = jnp.any(m & (a == a.max())).astype(jnp.float32)
    if weighted:
        hit = hit * (1 - size / m.size)
    return {"score": _nan_if_empty(hit, size)}


@better("higher")
@per_image(attribution=None, mask=2)
@targetless
def relevance_mass(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
                   mask: Array | None = None, positive: bool = True) -> dict[str, Array]:
    """Relevance mass accuracy (Arras et al. 2022): the share of the attribution (channels summed)
    inside ``mask``, ``sum_mask R / sum R``. ``positive`` (Arras): only positive relevance counts,
    ``R = max(a, 0)``; ``False``: the signed sums (Quantus 0.6). NaN where the mask is empty or
    the relevance sums to zero."""
    m, size = _inside(mask, "relevance_mass")
    a = pixel_map(attribution)
    r = jnp.maximum(a, 0) if positive else a
    total = r.sum()
    share = jnp.where(m, r, 0).sum() / jnp.where(total == 0, jnp.nan, total)
    return {"score": _nan_if_empty(share, size)}


@better("higher")
@per_image(attribution=None, mask=2)
@targetless
def relevance_rank(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
                   mask: Array | None = None) -> dict[str, Array]:
    """Relevance rank accuracy (Arras et al. 2022): with ``K = |mask|``, the share of the ``K``
    pixels of largest attribution (channels summed) that lie in ``mask``. Ties are taken by pixel
    index (row-major), lowest first."""
    m, size = _inside(mask, "relevance_rank")
    top = ranks(pixel_map(attribution)) < m.sum()
    return {"score": _nan_if_empty((top & m).sum().astype(jnp.float32) / size, size)}
