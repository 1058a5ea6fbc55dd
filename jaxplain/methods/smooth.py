"""Noise wrappers around any gradient-family method: SmoothGrad, SquareGrad, VarGrad."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree

from .checks import positive_int, real
from .chunks import counts_images, sum_chunks
from .gradients import gradient
from .marks import wraps_method


def _moments(
    apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: Callable, samples: int,
    sigma: float, key: Array | None, chunk: int | None, base_settings: Mapping[str, Any] | None,
) -> tuple[Array, Array]:
    """Mean of ``base(x + noise)`` and of its square over ``samples`` Gaussian noise draws with
    standard deviation ``sigma * (max(x) - min(x))``. ``base`` is a method function
    (``explain`` resolves a registered name to it)."""
    if key is None:
        raise InputError("smoothgrad, squaregrad and vargrad are random: pass key=jax.random.key(...)")
    samples = positive_int(samples, "samples")
    sigma = real(sigma, "sigma (a fraction of each image's value range)", at_least=0)
    if not callable(base):
        raise InputError(f"base must be a method function here, got {base!r}: jaxplain.explain resolves registered names")
    fn = base
    settings = dict(base_settings or {})
    wants_key = "key" in inspect.signature(fn).parameters
    std = sigma * (jnp.max(x) - jnp.min(x))

    def part(keys: Array) -> tuple[Array, Array]:
        def one(k: Array) -> Array:
            k_noise, k_base = jax.random.split(k)
            noisy = x + std * jax.random.normal(k_noise, x.shape, x.dtype)
            extra = {"key": k_base} if wants_key else {}
            return fn(apply, params, noisy, target, **settings, **extra)

        a = jax.vmap(one)(keys)
        return jnp.sum(a, axis=0), jnp.sum(a * a, axis=0)

    s1, s2 = sum_chunks(part, jax.random.split(key, samples), chunk)
    return s1 / samples, s2 / samples


@wraps_method
@counts_images
def smoothgrad(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: str | Callable = gradient,
               samples: int = 50, sigma: float = 0.15, key: Array | None = None, chunk: int | None = 16,
               base_settings: Mapping[str, Any] | None = None) -> Array:
    """SmoothGrad (Smilkov et al. 2017): the mean of ``base`` over noisy copies of ``x``, ``[H, W, C]``."""
    return _moments(apply, params, x, target, base=base, samples=samples, sigma=sigma, key=key,
                    chunk=chunk, base_settings=base_settings)[0]


@wraps_method
@counts_images
def squaregrad(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: str | Callable = gradient,
               samples: int = 50, sigma: float = 0.15, key: Array | None = None, chunk: int | None = 16,
               base_settings: Mapping[str, Any] | None = None) -> Array:
    """SquareGrad (Hooker et al. 2019): the mean of ``base**2`` over noisy copies, ``[H, W, C]``."""
    return _moments(apply, params, x, target, base=base, samples=samples, sigma=sigma, key=key,
                    chunk=chunk, base_settings=base_settings)[1]


@wraps_method
@counts_images
def vargrad(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: str | Callable = gradient,
            samples: int = 50, sigma: float = 0.15, key: Array | None = None, chunk: int | None = 16,
            base_settings: Mapping[str, Any] | None = None) -> Array:
    """VarGrad (Adebayo et al. 2018): the variance of ``base`` over noisy copies, ``[H, W, C]``."""
    m1, m2 = _moments(apply, params, x, target, base=base, samples=samples, sigma=sigma, key=key,
                      chunk=chunk, base_settings=base_settings)
    return m2 - m1 * m1
