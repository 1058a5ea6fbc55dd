"""Noise wrappers around any gradient-family method: SmoothGrad, SquareGrad, VarGrad."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree

from jaxplain.checks import positive_int, real
from jaxplain.chunks import counts_images, keep, sum_chunks
from .gradients import gradient
from jaxplain.marks import cost, method_function, passes, wraps_method


def _moments(
    apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: Callable, samples: int,
    sigma: float, key: Array | None, chunk: int | None, base_settings: Mapping[str, Any] | None,
    centred: bool = True,
) -> tuple[Array, Array, Array]:
    """``(mean, mean of squares, variance)`` of ``base(x + noise)`` over ``samples`` Gaussian
    noise draws with standard deviation ``sigma * (max(x) - min(x))``; ``base`` is a method
    function (``explain`` resolves a registered name to it).

    With ``centred``, the sums are taken around ``c = base(x)`` (one more evaluation, un-noised):
    ``d = a - c`` is small where the noise barely moves ``a``, so ``var = mean(d^2) - mean(d)^2``
    does not cancel in float32 as ``mean(a^2) - mean(a)^2`` does (which went negative at small
    ``sigma``); the other two follow exactly, ``mean = c + mean(d)`` and ``mean(a^2) = var +
    mean^2``. SmoothGrad, which needs the mean only, sums ``a`` itself (no extra evaluation).
    """
    if key is None:
        raise InputError("smoothgrad, squaregrad and vargrad are random: pass key=jax.random.key(...)")
    samples = positive_int(samples, "samples")
    sigma = real(sigma, "sigma (a fraction of each image's value range)", at_least=0)
    fn, wants_key = method_function(base, "base", "explain")
    settings = dict(base_settings or {})
    std = sigma * (jnp.max(x) - jnp.min(x))

    def centre() -> Array:
        extra = {"key": jax.random.fold_in(key, samples)} if wants_key else {}
        return fn(apply, params, x, target, **settings, **extra)

    c = keep(centre) if centred else jnp.zeros((), x.dtype)

    def part(keys: Array) -> tuple[Array, Array]:
        def one(k: Array) -> Array:
            k_noise, k_base = jax.random.split(k)
            noisy = x + std * jax.random.normal(k_noise, x.shape, x.dtype)
            extra = {"key": k_base} if wants_key else {}
            return fn(apply, params, noisy, target, **settings, **extra)

        d = jax.vmap(one)(keys) - c
        return jnp.sum(d, axis=0), jnp.sum(d * d, axis=0)

    s1, s2 = sum_chunks(part, jax.random.split(key, samples), chunk)
    shift, spread = s1 / samples, s2 / samples
    mean = c + shift
    var = jnp.maximum(spread - shift * shift, 0)
    return mean, var + mean * mean, var


def _noise_passes(settings: dict, image_shape: tuple[int, ...]) -> int:
    """The base's passes once per noise sample."""
    return settings["samples"] * passes(settings["base"], dict(settings["base_settings"] or {}), image_shape)


@wraps_method
@cost(_noise_passes)
@counts_images
def smoothgrad(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: str | Callable = gradient,
               samples: int = 50, sigma: float = 0.15, key: Array | None = None, chunk: int | None = 16,
               base_settings: Mapping[str, Any] | None = None) -> Array:
    """SmoothGrad (Smilkov et al. 2017): the mean of ``base`` over noisy copies of ``x``, ``[H, W, C]``."""
    return _moments(apply, params, x, target, base=base, samples=samples, sigma=sigma, key=key,
                    chunk=chunk, base_settings=base_settings, centred=False)[0]


@wraps_method
@cost(_noise_passes)
@counts_images
def squaregrad(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: str | Callable = gradient,
               samples: int = 50, sigma: float = 0.15, key: Array | None = None, chunk: int | None = 16,
               base_settings: Mapping[str, Any] | None = None) -> Array:
    """SquareGrad (Hooker et al. 2019): the mean of ``base**2`` over noisy copies, ``[H, W, C]``."""
    return _moments(apply, params, x, target, base=base, samples=samples, sigma=sigma, key=key,
                    chunk=chunk, base_settings=base_settings)[1]


@wraps_method
@cost(_noise_passes)
@counts_images
def vargrad(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, base: str | Callable = gradient,
            samples: int = 50, sigma: float = 0.15, key: Array | None = None, chunk: int | None = 16,
            base_settings: Mapping[str, Any] | None = None) -> Array:
    """VarGrad (Adebayo et al. 2018): the variance of ``base`` over noisy copies, ``[H, W, C]``."""
    return _moments(apply, params, x, target, base=base, samples=samples, sigma=sigma, key=key,
                    chunk=chunk, base_settings=base_settings)[2]
