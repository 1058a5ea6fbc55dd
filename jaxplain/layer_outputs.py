"""What the layers see: activations of a batch, batched and jitted like explain(), and per-channel summaries."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.runner import _run, check_images, check_layer
from jaxplain.types import Array, Model


@functools.lru_cache(maxsize=32)
def _collect(apply: Callable, layers: tuple[str, ...]) -> Callable:
    return jax.jit(jax.vmap(lambda p, x: {k: apply(p, x)[1][k] for k in layers}, in_axes=(None, 0)))


def activations(model: Model, images: Any, layers: str | Sequence[str], *, batch_size: int | None = None) -> dict[str, Array]:
    """``{layer: [B, ...]}``: the activations of ``layers`` for preprocessed ``images [B, H, W, C]``
    (Captum ``LayerActivation``), in slices of ``batch_size`` and sharded like ``explain``."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    if not layers:
        raise InputError("activations needs at least one layer name")
    images = check_images(model, images)
    for layer in layers:
        check_layer(model, images.shape[1:], layer)
    fn = _collect(model.apply, layers)
    n = images.shape[0]
    return _run(lambda p, x: fn(p, x), model.params, (images,), n, batch_size or n)


def channel_means(acts: Array) -> Array:
    """Mean activation per channel: ``[B, h, w, K] -> [B, K]`` (``[B, K]`` passes through)."""
    acts = jnp.asarray(acts)
    return acts if acts.ndim == 2 else jnp.mean(acts, axis=tuple(range(1, acts.ndim - 1)))


def top_channels(acts: Array, k: int = 8) -> tuple[Array, Array]:
    """``(indices [B, k], means [B, k])``: each image's ``k`` channels of highest mean activation."""
    means = channel_means(acts)
    if not 1 <= k <= means.shape[-1]:
        raise InputError(f"k must be in [1, {means.shape[-1]}], got {k}")
    values, idx = jax.lax.top_k(means, k)
    return idx, values
