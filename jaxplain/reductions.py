"""Reduce pixel attributions ``[H, W, C]`` or ``[B, H, W, C]`` to maps ``[H, W]`` / ``[B, H, W]``."""

from __future__ import annotations

import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import Array

REDUCTIONS = ("abs_max", "abs_sum", "sum", "max", "l2", "mean")
MAX_CHANNELS = 4  # an image's channels: grey, RGB, RGBA


def reduce(attributions: Array, how: str = "abs_max", *, channels: int | None = None) -> Array:
    """Collapse the channel axis: ``abs_max`` (max |a|, the saliency-map convention), ``abs_sum``,
    ``sum`` (signed, Captum's default for heat maps), ``max``, ``l2`` or ``mean``.

    Takes what the gradient family, occlusion and guided Grad-CAM return, ``[H, W, C]`` or
    ``[B, H, W, C]`` with ``C`` the image's channels (at most 4, or exactly ``channels``, which a
    multispectral model's attributions need: ``channels=model.channels``); it
    refuses other shapes rather than guessing: a CAM's or RISE's ``[B, H, W]`` is already a map,
    and a layer's activations are not pixels."""
    a = jnp.asarray(attributions)
    if how not in REDUCTIONS:
        raise InputError(f"unknown reduction {how!r}; expected one of {REDUCTIONS}")
    fits = a.ndim in (3, 4) and (a.shape[-1] == channels if channels is not None else 1 <= a.shape[-1] <= MAX_CHANNELS)
    if not fits:
        want = f"{channels}" if channels is not None else f"1-{MAX_CHANNELS}"
        more = "" if channels is not None else "; a model of more channels: pass channels=C"
        raise InputError(f"reduce takes pixel attributions [H, W, C] or [B, H, W, C] with C = {want} image channels, "
                         f"got shape {tuple(a.shape)}: a [B, H, W] map (CAMs, RISE) needs no reduction, and a layer's "
                         f"activations are not pixels{more}")
    ops = {
        "abs_max": lambda: jnp.max(jnp.abs(a), axis=-1),
        "abs_sum": lambda: jnp.sum(jnp.abs(a), axis=-1),
        "sum": lambda: jnp.sum(a, axis=-1),
        "max": lambda: jnp.max(a, axis=-1),
        "l2": lambda: jnp.sqrt(jnp.sum(a * a, axis=-1)),
        "mean": lambda: jnp.mean(a, axis=-1),
    }
    return ops[how]()
