"""A transformer's token layers seen as their patch grid, so every method that needs a spatial
layer (the CAMs, layer and neuron attribution) runs on a ViT unchanged.

A model that declares ``token_grid=(gh, gw)`` and ``token_layers={name: prefix}`` (``Model``)
gets, through ``grid_view``, an ``apply`` whose activation of each token layer ``[T, D]`` is
``act[prefix:].reshape(gh, gw, D)`` (the leading non-patch tokens, a class token, dropped; patches
row-major) and whose tap there is ``[gh, gw, D]``, added to the patch tokens (zero on the leading
ones). The gradient with respect to such a tap is the gradient with respect to the patch tokens.
``runner.prepare`` applies it once, so ``explain``, ``evaluate`` and the benchmarks see the grid.
Attention layers (``[heads, T, T]``) pass through unchanged and stay non-spatial.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, Model, PyTree, Relu


def grid_view(model: Model) -> Model:
    """``model`` with its token layers shown as ``[gh, gw, D]`` (a model without token layers, or
    one already viewed so, as it is). The result declares no token layers: viewing is done once."""
    if not model.token_layers:
        return model
    layers = tuple(sorted((name, int(p)) for name, p in model.token_layers.items()))
    return model.replace(apply=grid_apply(model.apply, tuple(model.token_grid), layers), token_layers={})


@functools.lru_cache(maxsize=64)
def grid_apply(apply: ApplyFn, grid: tuple[int, int], layers: tuple[tuple[str, int], ...]) -> ApplyFn:
    """``apply`` with each ``(layer, prefix)`` of ``layers`` shown on the ``grid`` (one function per
    arguments, so compiled calls keyed on ``apply`` are reused)."""
    gh, gw = grid
    prefix = dict(layers)

    def to_tokens(name: str, tap: Array) -> Array:
        if tap.ndim < 2 or tuple(tap.shape[:2]) != (gh, gw):
            raise InputError(f"a tap on token layer {name!r} is on its patch grid [{gh}, {gw}, ...], got shape {tap.shape}")
        flat = tap.reshape(gh * gw, *tap.shape[2:])
        return jnp.concatenate([jnp.zeros((prefix[name], *tap.shape[2:]), tap.dtype), flat])

    def to_grid(name: str, act: Array) -> Array:
        if act.ndim < 1 or act.shape[0] != prefix[name] + gh * gw:
            raise InputError(f"token layer {name!r} has shape {act.shape}: {prefix[name]} leading tokens and a "
                             f"{gh}x{gw} grid need {prefix[name] + gh * gw} tokens")
        return act[prefix[name]:].reshape(gh, gw, *act.shape[1:])

    def view(params: PyTree, x: Array, taps: Mapping[str, Array] | None = None,
             relu: Relu | None = None) -> tuple[Array, dict[str, Array]]:
        taps = {k: to_tokens(k, v) if k in prefix else v for k, v in (taps or {}).items()}
        logits, acts = apply(params, x, taps=taps or None, relu=relu)
        return logits, {k: to_grid(k, v) if k in prefix else v for k, v in acts.items()}

    return view
