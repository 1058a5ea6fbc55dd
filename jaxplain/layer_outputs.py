"""What the layers see: activations of a batch, batched and jitted like explain(), and per-channel summaries."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.engine.runner import check_batch_size, run_batches
from jaxplain.engine.shapes import check_images, check_layer
from jaxplain.types import Array, Model, forward


def activations(model: Model, images: Any, layers: str | Sequence[str], *, batch_size: int | None = None) -> dict[str, Array]:
    """``{layer: [B, ...]}``: the activations of ``layers`` for preprocessed ``images [B, H, W, C]``
    (Captum ``LayerActivation``), in slices of ``batch_size`` and sharded like ``explain``."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    if not layers:
        raise InputError("activations needs at least one layer name")
    images = check_images(model, images)
    check_batch_size(batch_size)
    for layer in layers:
        check_layer(model, images.shape[1:], layer)
    n = images.shape[0]
    return run_batches(forward(model.apply, layers), model.params, (images,), n, batch_size or n)


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
