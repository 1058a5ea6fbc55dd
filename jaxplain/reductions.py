"""Reduce attributions ``[..., H, W, C]`` to 2-D maps ``[..., H, W]``."""

from __future__ import annotations

import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import Array

REDUCTIONS = ("abs_max", "abs_sum", "sum", "max", "l2", "mean")


def reduce(attributions: Array, how: str = "abs_max") -> Array:
    """Collapse the channel axis: ``abs_max`` (max |a|, the saliency-map convention), ``abs_sum``,
    ``sum`` (signed, Captum's default for heat maps), ``max``, ``l2`` or ``mean``."""
    a = jnp.asarray(attributions)
    ops = {
        "abs_max": lambda: jnp.max(jnp.abs(a), axis=-1),
        "abs_sum": lambda: jnp.sum(jnp.abs(a), axis=-1),
        "sum": lambda: jnp.sum(a, axis=-1),
        "max": lambda: jnp.max(a, axis=-1),
        "l2": lambda: jnp.sqrt(jnp.sum(a * a, axis=-1)),
        "mean": lambda: jnp.mean(a, axis=-1),
    }
    if how not in ops:
        raise InputError(f"unknown reduction {how!r}; expected one of {REDUCTIONS}")
    return ops[how]()
