"""A call's cost before it starts: model passes per image from each method's ``cost`` mark
(``jaxplain.marks.cost``) and, past ``WARN_PASSES``, XLA's FLOP count of the model's forward
pass, said in a ``CostWarning`` before anything compiles."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxplain.errors import CostWarning
from jaxplain.marks import passes
from jaxplain.types import Model

# Model passes per image above which explain warns. The defaults stay below it (RISE's 4000
# masks, kernel SHAP's 2178 samples on its 8x8 grid); VGG16 on a 2-core CPU makes about 5
# gradient passes per second, so 10000 passes is over half an hour per image there.
WARN_PASSES = 10_000


def forward_flops(model: Model, image_shape: tuple[int, ...]) -> float:
    """XLA's FLOP count of one forward pass of one image of ``image_shape`` (lowered, not
    compiled), or 0.0 where the backend reports none."""
    lowered = jax.jit(lambda p, x: model.apply(p, x)[0]).lower(model.params,
                                                               jax.ShapeDtypeStruct(image_shape, jnp.float32))
    c = lowered.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return float((c or {}).get("flops", 0.0))


def warn_if_costly(fn: Callable, model: Model, image_shape: tuple[int, ...], settings: dict[str, Any], n: int,
                   threshold: int = WARN_PASSES) -> int:
    """``fn``'s model passes per image with ``settings`` (resolved); above ``threshold`` a
    ``CostWarning`` with the passes of the ``n`` images and their FLOP count (a backward pass
    counted as two forward ones)."""
    per_image = passes(fn, settings, image_shape)
    if per_image > threshold:
        flops = forward_flops(model, image_shape) * (1 if getattr(fn, "forward_only", False) else 3) * per_image * n
        about = f", about {flops:.2g} FLOP (XLA's count of {model.name}'s forward pass)" if flops else ""
        name = getattr(fn, "__name__", "this method")
        warnings.warn(f"{name} makes {per_image} model passes per image ({per_image * n} for {n} image{'s' * (n > 1)}"
                      f"{about}): this can take hours; fewer steps or samples cost proportionally less",
                      CostWarning, stacklevel=4)
    return per_image
