"""Attention-based maps for vision transformers: attention rollout and gradient-weighted attention
relevance. Both read the attention probabilities ``[heads, T, T]`` (query rows, key columns, the
class token first) of the layers the model declares (``Model.attention_layers``, passed as the
``attention`` setting) and return the class token's row over the patch tokens on the patch
``grid`` (``Model.token_grid``), ``[H, W]`` bilinear at the input's resolution (as the CAMs), or
``[gh, gw]`` with ``upsample=False``. The leading non-patch tokens are the ``T - gh * gw`` first.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree

from .cam import resize
from jaxplain.marks import output, targetless

FUSIONS = ("mean", "max", "min")


def _declared(name: str, attention: Sequence[str] | None, grid: tuple[int, int] | None) -> tuple[tuple[str, ...], tuple[int, int]]:
    if attention is None or grid is None:
        raise InputError(f"{name} needs attention=<the attention layers> and grid=(gh, gw); jaxplain.explain takes "
                         "them from the model (Model.attention_layers, Model.token_grid)")
    layers = (attention,) if isinstance(attention, str) else tuple(attention)
    if not layers:
        raise InputError(f"{name}: attention must name at least one attention layer")
    g = tuple(grid) if isinstance(grid, (tuple, list)) else ()
    if len(g) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in g):
        raise InputError(f"{name}: grid must be two positive ints (gh, gw), got {grid!r}")
    return layers, (g[0], g[1])


def _checked(name: str, layer: str, a: Array, grid: tuple[int, int]) -> int:
    """The number of leading non-patch tokens of attention ``a``, or an ``InputError``."""
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise InputError(f"{name}: layer {layer!r} has shape {a.shape}, not attention probabilities [heads, T, T]")
    prefix = a.shape[-1] - grid[0] * grid[1]
    if prefix < 1:
        raise InputError(f"{name}: layer {layer!r} has {a.shape[-1]} tokens, too few for a {grid[0]}x{grid[1]} grid "
                         "of patches and a class token")
    return prefix


def _prefix(name: str, layers: tuple[str, ...], acts: dict, grid: tuple[int, int]) -> int:
    """Every layer of ``layers`` checked in ``acts`` (arrays or shapes): the number of leading
    non-patch tokens, or an ``InputError`` naming the unknown or misshapen layer."""
    missing = [n for n in layers if n not in acts]
    if missing:
        raise InputError(f"{name}: unknown layer {missing[0]!r}; the model's layers: {', '.join(acts)}")
    return [_checked(name, n, acts[n], grid) for n in layers][0]


def _map(row: Array, prefix: int, grid: tuple[int, int], x: Array, upsample: bool) -> Array:
    """The class token's row ``[T]`` over the patches, ``[gh, gw]`` or resized to the input."""
    m = row[prefix:].reshape(grid)
    return resize(m, x.shape[:2]) if upsample else m


def _class_row(t: int, dtype: jnp.dtype) -> Array:
    """``e_0 [T]``: the class token's row of the identity. The maps need only this row of a
    product of ``[T, T]`` matrices ``M_L ... M_1``, so it is formed from the left,
    ``(((e_0 M_L) M_{L-1}) ... M_1)``: vector-matrix steps, ``T^2`` per block instead of ``T^3``
    (the matrix chain also took XLA:CPU 18 s on its first run at ViT-B/16's 197 tokens)."""
    return jnp.zeros((t,), dtype).at[0].set(1)


def fuse_heads(a: Array, how: str) -> Array:
    """``[heads, T, T] -> [T, T]`` by the mean, max or min over heads."""
    if how not in FUSIONS:
        raise InputError(f"head_fusion must be one of {FUSIONS}, not {how!r}")
    return {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}[how](a, axis=0)


def discard_lowest(a: Array, ratio: float) -> Array:
    """``a [T, T]`` with its ``floor(ratio * T * T)`` smallest entries set to zero, the class
    token's attention to itself (entry ``[0, 0]``) always kept (as the ``vit-explain`` code)."""
    flat = a.reshape(-1)
    k = int(ratio * flat.size)
    if k == 0:
        return a
    drop = jnp.zeros(flat.shape, bool).at[jnp.argsort(flat, stable=True)[:k]].set(True).at[0].set(False)
    return jnp.where(drop, jnp.zeros_like(flat), flat).reshape(a.shape)


@targetless
@output("map")
def attention_rollout(apply: ApplyFn, params: PyTree, x: Array, target: Array, *,
                      attention: Sequence[str] | None = None, grid: tuple[int, int] | None = None,
                      head_fusion: str = "mean", discard_ratio: float = 0.0, upsample: bool = True) -> Array:
    """Attention rollout (Abnar & Zuidema 2020), ``[H, W]`` (``upsample=False``: ``[gh, gw]``).

    Per block the heads are fused (``head_fusion``: ``"mean"`` as in the paper, ``"max"`` or
    ``"min"``), the residual connection accounted for as ``A' = 0.5 A + 0.5 I`` and the rows
    renormalised to sum to one; the blocks are multiplied, ``R = A'_L ... A'_1``, and the map is
    the class token's row of ``R`` over the patch tokens. ``discard_ratio`` (not in the paper; the
    option of the widely used ``vit-explain`` code) zeroes that fraction of each fused matrix's
    smallest entries before the identity is added (the class token's self-attention kept).
    Class-agnostic: ``target`` is not used. The map is not scaled (``vit-explain`` divides by
    its maximum); its entries are the rollout's, which sum with the class token's own to one.
    """
    layers, grid = _declared("attention_rollout", attention, grid)
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0.0 <= discard_ratio < 1.0:
        raise InputError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    acts = apply(params, x)[1]
    prefix = _prefix("attention_rollout", layers, acts, grid)
    t, dtype = acts[layers[0]].shape[-1], acts[layers[0]].dtype
    eye = jnp.eye(t, dtype=dtype)
    row = _class_row(t, dtype)
    for name in reversed(layers):  # e_0 A'_L ... A'_1
        a = discard_lowest(fuse_heads(acts[name], head_fusion), discard_ratio)
        a = 0.5 * a + 0.5 * eye
        row = row @ (a / jnp.sum(a, axis=-1, keepdims=True))
    return _map(row, prefix, grid, x, upsample)


@output("map")
def transformer_attribution(apply: ApplyFn, params: PyTree, x: Array, target: Array, *,
                            attention: Sequence[str] | None = None, grid: tuple[int, int] | None = None,
                            upsample: bool = True) -> Array:
    """Gradient-weighted attention relevance, ``[H, W]`` (``upsample=False``: ``[gh, gw]``): the
    self-attention rule of Chefer, Gur & Wolf, "Generic Attention-model Explainability for
    Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021, eqs. 5-6).

    ``R = I``; for each block in forward order ``Abar = mean_heads((dS/dA * A)^+)`` with ``S`` the
    target's logit and ``A`` the attention probabilities (the gradient through a tap on each
    attention layer), and ``R = R + Abar @ R``; the map is the class token's row of ``R`` over the
    patch tokens (``R`` is the product ``(I + Abar_L) ... (I + Abar_1)``; its class-token row is
    formed from the left, see ``_class_row``).

    Not the rule of their CVPR 2021 paper ("Transformer Interpretability Beyond Attention
    Visualization"): there each block's map is ``(dS/dA * R_A)^+`` averaged over heads, with
    ``R_A`` the LRP relevance of the attention map (propagated from the output through every layer
    by their LRP rules) in place of the attention ``A`` itself, and the maps are rolled out as
    attention rollout does (identity added, and in their code rows renormalised, before the
    product). This rule needs gradients only, so it runs on any model that exposes its attention
    probabilities, with no LRP rule per layer; ``R`` is not renormalised.
    """
    layers, grid = _declared("transformer_attribution", attention, grid)
    probe = jax.eval_shape(lambda: apply(params, x)[1])
    prefix = _prefix("transformer_attribution", layers, probe, grid)

    def score(taps: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        logits, acts = apply(params, x, taps=taps)
        return logits[target], {n: acts[n] for n in layers}

    zeros = {n: jnp.zeros(probe[n].shape, probe[n].dtype) for n in layers}
    grads, probs = jax.grad(score, has_aux=True)(zeros)
    row = _class_row(probe[layers[0]].shape[-1], probe[layers[0]].dtype)
    for name in reversed(layers):  # R = (I + Abar_L) ... (I + Abar_1): its row e_0 R from the left
        row = row + row @ jnp.mean(jax.nn.relu(grads[name] * probs[name]), axis=0)
    return _map(row, prefix, grid, x, upsample)
