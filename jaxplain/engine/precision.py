"""Compute precision as an option: the model runs in the chosen precision, the method around it
(sums over steps, products with the input) stays in float32, so attributions come out float32.

- ``"float32"``: every matmul and convolution at full float32 (``Precision.HIGHEST``).
- ``"tensorfloat32"``: float32 storage, TF32 matmuls and convolutions where the hardware has them
  (NVIDIA Ampere and later); on CPU the same as ``"float32"``.
- ``"bfloat16"``: weights, activations and gradients in bfloat16 (mixed precision: inputs cast
  in, logits and activations cast back to float32).
- ``None``: JAX's default for the backend.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxplain.engine.derived import derived
from jaxplain.errors import InputError
from jaxplain.types import Array, Model, PyTree, Relu

PRECISIONS = ("float32", "tensorfloat32", "bfloat16")


def _cast(tree: PyTree, dtype: Any) -> PyTree:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


@functools.lru_cache(maxsize=32)
def _apply_in(apply: Callable, precision: str) -> Callable:
    """``apply`` computing in ``precision``; float32 in and out."""
    if precision == "bfloat16":
        def mixed(params: PyTree, x: Array, taps: Mapping[str, Array] | None = None,
                  relu: Relu | None = None) -> tuple[Array, dict[str, Array]]:
            taps = None if taps is None else _cast(taps, jnp.bfloat16)
            out = apply(params, x.astype(jnp.bfloat16), taps=taps, relu=relu)
            return _cast(out, jnp.float32)

        return mixed
    level = {"float32": "highest", "tensorfloat32": "tensorfloat32"}[precision]

    def exact(params: PyTree, x: Array, taps: Mapping[str, Array] | None = None,
              relu: Relu | None = None) -> tuple[Array, dict[str, Array]]:
        with jax.default_matmul_precision(level):
            return apply(params, x, taps=taps, relu=relu)

    return exact


def with_precision(model: Model, precision: str | None) -> Model:
    """``model`` computing in ``precision`` (see the module docstring); ``None`` returns it as is."""
    if precision is None:
        return model
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)} or None, got {precision!r}")
    params = model.params
    if precision == "bfloat16":  # cast once per weights' values, not per call
        params = derived("bfloat16", params, lambda p: _cast(p, jnp.bfloat16))
    return model.replace(apply=_apply_in(model.apply, precision), params=params)
