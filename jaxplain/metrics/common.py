"""What several metrics share: a map from an attribution, pixel orders, label maps of regions, the
model's score along a series of perturbed images, substrates, correlations."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.baselines import SCORES, baseline_image, check_score, score_of, scorer  # noqa: F401  (one vocabulary)
from jaxplain.checks import as_key
from jaxplain.chunks import along
from jaxplain.types import Array

ORDERS = ("morf", "lerf")  # most / least relevant first


def check_order(order: str) -> None:
    """An ``InputError`` unless ``order`` is one of ``ORDERS``."""
    if order not in ORDERS:
        raise InputError(f"order must be one of {ORDERS}, got {order!r}")


def pixel_map(attribution: Array) -> Array:
    """``[H, W]``: an ``[H, W, C]`` attribution summed over its channels (a map stays as it is)."""
    return attribution.sum(-1) if attribution.ndim == 3 else attribution


def attribution_map(attribution: Array, x: Array) -> Array:
    """``pixel_map`` of an attribution ``[H, W, C]`` or ``[H, W]`` of ``x [H, W, C]``, or an
    ``InputError`` naming the shapes (``evaluate`` checks this too; here for direct calls)."""
    h, w, c = x.shape
    if tuple(attribution.shape) not in ((h, w, c), (h, w)):
        raise InputError(f"attribution must be [H, W, C] = {(h, w, c)} or [H, W] = {(h, w)} for this image, "
                         f"got shape {tuple(attribution.shape)}")
    return pixel_map(attribution)


def order(values: Array) -> Array:
    """Indices of ``values`` (any shape, flattened) from the largest down; ties by index, lowest first."""
    return jnp.argsort(-values.reshape(-1), stable=True)


def ranks(values: Array) -> Array:
    """Each element's place in ``order(values)`` (0 = the largest), shaped like ``values``."""
    o = order(values)
    return jnp.zeros(o.shape, jnp.int32).at[o].set(jnp.arange(o.size, dtype=jnp.int32)).reshape(values.shape)


def region_sums(values: Array, labels: np.ndarray, n: int) -> Array:
    """``[n]``: the sum of ``values [H, W]`` over each region of a label map ``labels [H, W]`` (ids ``0 .. n - 1``)."""
    return jax.ops.segment_sum(values.reshape(-1), jnp.asarray(labels.reshape(-1)), num_segments=n)


def scores_along(f: Callable[[Array], Array], image: Callable[[Array], Array], n: int,
                 chunk: int | None) -> Array:
    """``[n]``: ``f(image(i))`` for ``i = 0 .. n - 1``, ``chunk`` images per vectorised forward pass
    (``chunks.along``: the calling metric's one outermost ``sum_chunks``)."""
    return along(lambda i: f(image(i)), n, chunk)


def substrate(x: Array, fill: float | str | Array, key: Array | None = None) -> Array:
    """What removed pixels become: ``baselines.baseline_image(fill, x, key)`` (the one vocabulary;
    ``"black"`` / ``"white"`` are resolved by ``evaluate``)."""
    return baseline_image(fill, x, key)


def pixels(attribution: Array, shape: tuple[int, ...]) -> Array:
    """``attribution`` as ``shape`` ``[H, W, C]``: a map ``[H, W]`` is repeated over the channels."""
    a = attribution[..., None] if attribution.ndim == 2 else attribution
    return jnp.broadcast_to(a, shape)


def require_key(key: Array | int | None, name: str) -> Array:
    """``key`` normalised (``checks.as_key``), or an ``InputError`` saying that metric ``name`` is random."""
    return as_key(key, f"{name} is random")
