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


def as_key(key: object, random: str | None = None, otherwise: str = "") -> object:
    """The one key normaliser: ``jax.random.key(key)`` for an int seed; a ``jax.random`` key
    (typed, or raw ``uint32 [..., 2]``; one or many) as it is. ``None`` stays ``None``, or with
    ``random`` (what needs the key, e.g. ``"lime is random"``) is an ``InputError``: ``"{random}:
    pass key=jax.random.key(...) or an int seed{otherwise}"``. Anything else is an ``InputError``."""
    if key is None:
        if random is not None:
            raise InputError(f"{random}: pass key=jax.random.key(...) or an int seed{otherwise}")
        return None
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise InputError(f"key must be a jax.random.key(...), an int seed or one key per image, got {type(key).__name__}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype != jnp.uint32 or not key.shape or key.shape[-1] != 2:
        raise InputError(f"key must be a jax.random.key(...), an int seed or one key per image, got an array of "
                         f"{key.dtype} {tuple(key.shape)}")
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
