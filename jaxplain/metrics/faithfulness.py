"""Faithfulness on one image: does removing what the attribution ranks first change the output?

Deletion and insertion (Petsiuk et al. 2018). More in this family are added beside them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxplain.methods.checks import positive_int
from jaxplain.methods.chunks import counts_images, sum_chunks
from jaxplain.methods.marks import per_image
from jaxplain.types import ApplyFn, Array, PyTree

from .common import pixel_map, ranks, scorer, substrate


def auc(curve: Array) -> Array:
    """The RISE code's area under a curve of ``n`` points on [0, 1]: ``(sum - c0/2 - c_last/2) / (n - 1)``."""
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (curve.shape[-1] - 1)


def _causal(apply: ApplyFn, params: PyTree, x: Array, target: Array, attribution: Array, start: Array,
            finish: Array, steps: int | None, score: str, chunk: int | None) -> dict[str, Array]:
    """The RISE code's ``CausalMetric``: from ``start``, the pixels in attribution order become
    ``finish``'s, ``ceil(H W / steps)`` pixels (all channels) per step; the target's score after
    each of ``0 .. steps`` steps, and its ``auc``."""
    h, w = x.shape[:2]
    steps = h if steps is None else positive_int(steps, "steps")
    steps = min(steps, h * w)
    per_step = -(-h * w // steps)
    steps = -(-h * w // per_step)  # as the reference code: ceil(HW / per_step) steps
    rank = ranks(pixel_map(attribution))
    f = scorer(apply, params, target, score)

    def part(ids: Array) -> Array:
        moved = (rank[None] < (ids * per_step)[:, None, None])[..., None]  # [n, H, W, 1]
        values = jax.vmap(f)(jnp.where(moved, finish[None], start[None]))
        return jnp.zeros(steps + 1, values.dtype).at[ids].set(values)

    curve = sum_chunks(part, jnp.arange(steps + 1), chunk)
    return {"score": auc(curve), "curve": curve}


@per_image(attribution=None, baseline=3)
@counts_images(forward_only=True)
def deletion(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
             steps: int | None = None, baseline: float | str | Array = 0.0, score: str = "probability",
             chunk: int | None = 16) -> dict[str, Array]:
    """Deletion (Petsiuk et al. 2018): pixels (channels summed) from the most relevant down are
    replaced by ``baseline`` (a number, ``"black"``, ``"blur"`` or an ``[H, W, C]`` array), ``H W /
    steps`` per step (default: as many steps as the image has rows, 224 pixels a step at 224x224,
    as the RISE code); ``"curve"`` ``[steps + 1]``: the target's softmax probability (``score``:
    ``"probability"`` or ``"logit"``) after each step; ``"score"``: its area (lower is better).
    Ties in the attribution are taken by pixel index (row-major), lowest first."""
    return _causal(apply, params, x, target, attribution, x, substrate(x, baseline), steps, score, chunk)


@per_image(attribution=None)
@counts_images(forward_only=True)
def insertion(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
              steps: int | None = None, score: str = "probability", chunk: int | None = 16) -> dict[str, Array]:
    """Insertion (Petsiuk et al. 2018): from the blurred image (the RISE code's Gaussian, kernel 11,
    sigma 5, zero padding), pixels from the most relevant down get their values back, ``H W /
    steps`` per step; ``"curve"`` and ``"score"`` (its area, higher is better) as ``deletion``."""
    return _causal(apply, params, x, target, attribution, substrate(x, "blur"), x, steps, score, chunk)
