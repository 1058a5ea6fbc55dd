"""Checks of a method's settings, each raising an ``InputError`` that names the setting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.types import Array


def positive_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def as_key(key: object) -> object:
    """``jax.random.key(key)`` for an int seed; any other key (or ``None``) as it is."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


def like_image(value: object, x: Array) -> Array:
    """``value`` (a number or an array of ``x``'s shape) broadcast to ``x``'s shape and dtype."""
    b = jnp.asarray(value, x.dtype)
    if b.ndim not in (0, 3) or (b.ndim == 3 and b.shape != x.shape):
        raise InputError(f"baseline must be a number or an array of the image's shape {x.shape}, got shape {b.shape}")
    return jnp.broadcast_to(b, x.shape)


def real(value: object, name: str, *, above: float | None = None, at_least: float | None = None,
         at_most: float | None = None) -> float:
    """``value`` if it is a finite number in the stated range (``above`` excludes its bound)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (at_most is None or value <= at_most)
    if not ok:
        bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
                  f"<= {at_most}" if at_most is not None else ""]
        raise InputError(f"{name} must be a number {' and '.join(b for b in bounds if b)}, got {value!r}")
    return float(value)
