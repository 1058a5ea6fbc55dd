"""Infidelity and max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of
Explanations"), as ``captum.metrics.infidelity`` and ``captum.metrics.sensitivity_max`` define them.

Sample ``i`` of an image draws its randomness from ``fold_in(key, i)``, so a result does not
depend on the chunking; ``infidelity_perturbations`` and ``sensitivity_noise`` draw exactly what
the metrics draw (for comparisons with other libraries on identical noise).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.checks import positive_int, real
from jaxplain.chunks import along, counts_images, keep
from jaxplain.methods.gradients import gradient
from jaxplain.marks import better, method_function, per_image, wraps_method
from jaxplain.types import ApplyFn, Array, PyTree

from .common import pixels, require_key, scorer, substrate

PERTURBATIONS = ("gaussian", "square")


def _square_sizes(h: int, w: int, square_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Side lengths ``1 .. square_max`` and the probability of each when every placement of every
    size is equally likely (Yeh et al.'s enumeration of all squares, sampled)."""
    sizes = np.arange(1, square_max + 1)
    count = (h - sizes + 1) * (w - sizes + 1)
    return sizes, (count / count.sum()).astype(np.float32)


def _check_kind(perturbation: str, sigma: float, square_max: int, shape: tuple[int, ...]) -> None:
    if perturbation not in PERTURBATIONS:
        raise InputError(f"perturbation must be one of {PERTURBATIONS} or an array [S, H, W, C], got {perturbation!r}")
    if perturbation == "gaussian":
        real(sigma, "sigma", above=0)
    else:
        square_max = positive_int(square_max, "square_max")
        if square_max > min(shape[:2]):
            raise InputError(f"square_max must be at most the image's side {min(shape[:2])}, got {square_max}")


def _draw(key: Array, i: Array, x: Array, perturbation: str, sigma: float, square_max: int,
          fill: Array) -> tuple[Array, Array]:
    """``(I, perturbed)`` ``[H, W, C]`` of sample ``i``: Gaussian ``I ~ N(0, sigma^2)`` with
    ``x - I``; or a random square's indicator (all channels) with ``x`` there replaced by ``fill``."""
    h, w = x.shape[:2]
    k = jax.random.fold_in(key, i)
    if perturbation == "gaussian":
        noise = sigma * jax.random.normal(k, x.shape, x.dtype)
        return noise, x - noise
    sizes, p = _square_sizes(h, w, square_max)
    u = jax.random.uniform(k, (3,))  # one draw: cheaper to compile than choice + randint
    pick = jnp.searchsorted(jnp.asarray(np.cumsum(p)), u[0] * p.sum())
    r = jnp.asarray(sizes, jnp.int32)[jnp.minimum(pick, square_max - 1)]

    def span(v: Array, n: int) -> Array:  # [n]: a run of r cells starting uniformly in [0, n - r]
        start = jnp.minimum((v * (n - r + 1).astype(v.dtype)).astype(jnp.int32), n - r)
        cells = jnp.arange(n)
        return (cells >= start) & (cells < start + r)

    inside = (span(u[1], h)[:, None] & span(u[2], w)[None, :])[..., None]
    return jnp.broadcast_to(inside, x.shape).astype(x.dtype), jnp.where(inside, fill, x)


def infidelity_perturbations(key: Array, x: Array, samples: int, *, perturbation: str = "gaussian",
                             sigma: float = 0.003, square_max: int = 10,
                             baseline: float | str | Array = 0.0) -> tuple[Array, Array]:
    """``(I [S, H, W, C], perturbed inputs [S, H, W, C])``: the ``samples`` perturbations that
    ``infidelity`` draws for ``x [H, W, C]`` from ``key`` (the image's key: ``jaxplain.evaluate_keys``);
    Captum's ``infidelity`` takes them as what its ``perturb_func`` returns."""
    _check_kind(perturbation, sigma, square_max, x.shape)
    samples = positive_int(samples, "samples")
    fill = substrate(x, baseline)
    return jax.vmap(lambda i: _draw(key, i, x, perturbation, sigma, square_max, fill))(jnp.arange(samples))


@better("lower")
@per_image(attribution=None, perturbation=4, baseline=3)
@counts_images(forward_only=True)
def infidelity(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
               perturbation: str | Array = "gaussian", samples: int = 10, sigma: float = 0.003,
               square_max: int = 10, baseline: float | str | Array = 0.0, normalize: bool = False,
               score: str = "logit", key: Array | None = None, chunk: int | None = 16) -> dict[str, Array]:
    """Infidelity (Yeh et al. 2019; ``captum.metrics.infidelity``): the mean over ``samples``
    perturbations ``I`` of ``(sum(I * attribution) - (f(x) - f(x_I)))^2``, ``f`` the target's
    logit (``score="logit"``, Captum's forward output indexed by the target; or
    ``"probability"``). Lower is better.

    ``perturbation``:
    - ``"gaussian"``: ``I ~ N(0, sigma^2)`` per element, ``x_I = x - I``; ``sigma`` is absolute
      (in preprocessed units), default 0.003 as in Captum's ``infidelity`` docstring example (Yeh
      et al.'s code uses 0.2 on [0, 1] MNIST, clipped to the pixel range). For local
      attributions (the gradient).
    - ``"square"``: Yeh et al.'s square removal: ``I`` is the indicator (all channels) of a square
      of side ``1 .. square_max``, each placement of each size equally likely (their code
      enumerates them all); ``x_I`` is ``x`` with the square set to ``baseline``. For global
      attributions (gradient x input, integrated gradients with that baseline).
    - an array ``[S, H, W, C]`` of ``I`` shared by all images (``[B, S, H, W, C]``: one set per
      image), ``x_I = x - I``; ``samples`` is then ``S``. No key needed.

    ``normalize``: Captum's (and Yeh et al.'s) optimal scaling, ``attribution`` times ``beta =
    sum(a b) / sum(a^2)`` (``a = sum(I * attribution)``, ``b = f(x) - f(x_I)``; ``beta = sum(a b)``
    when ``sum(a^2) = 0``, as Captum's ``safe_div``). A map ``[H, W]`` is repeated over the
    channels (as Quantus and Captum do with an expanded map). ``key``: required for the random
    perturbations. Returns ``{"score": scalar}``.
    """
    a = pixels(attribution, x.shape)
    f = scorer(apply, params, target, score)
    if isinstance(perturbation, str):
        _check_kind(perturbation, sigma, square_max, x.shape)
        n = positive_int(samples, "samples")
        k = require_key(key, f"infidelity with perturbation={perturbation!r}")
        fill = substrate(x, baseline)

        def draw(i: Array) -> tuple[Array, Array]:
            return _draw(k, i, x, perturbation, sigma, square_max, fill)
    else:
        given = jnp.asarray(perturbation, x.dtype)
        if given.ndim != 4 or given.shape[1:] != x.shape or given.shape[0] < 1:
            raise InputError(f"perturbation must be 'gaussian', 'square' or an array [S, H, W, C] with [H, W, C] = "
                             f"{x.shape} (or [B, S, H, W, C]), got shape {given.shape}")
        n = given.shape[0]

        def draw(i: Array) -> tuple[Array, Array]:
            return given[i], x - given[i]

    fx = keep(lambda: f(x))

    def one(i: Array) -> tuple[Array, Array]:
        change, moved = draw(i)
        return jnp.sum(change * a), fx - f(moved)

    dots, drops = along(one, n, chunk)
    if normalize:
        denom = jnp.sum(dots * dots)
        dots = dots * (jnp.sum(dots * drops) / jnp.where(denom == 0, 1, denom))
    return {"score": jnp.mean((dots - drops) ** 2)}


def _sample_noise(key: Array, i: Array, shape: tuple[int, ...], radius: float) -> tuple[Array, Array]:
    """Sample ``i``'s ``(uniform noise in [-radius, radius) of shape, key for the method)``."""
    k_noise, k_method = jax.random.split(jax.random.fold_in(key, i))
    return jax.random.uniform(k_noise, shape, jnp.float32, -radius, radius), k_method


def nested_chunk(method: Callable, settings: dict[str, Any], chunk: int | None) -> tuple[dict[str, Any], int | None]:
    """``(method's settings, samples per chunk)`` that keep one chunk of a re-explaining metric at
    about ``chunk`` model passes per image, as ``explain`` keeps a method's: a method that sums
    over passes in chunks of its own (IG's path points) gets ``chunk = min(its chunk, chunk)``
    unless its settings set one, and the metric re-explains ``max(1, chunk // that)`` samples at a
    time (one where the method's chunk is ``None``, all its passes at once). Otherwise as given."""
    params = inspect.signature(method).parameters
    if chunk is None or "chunk" not in params:
        return settings, chunk
    if "chunk" not in settings:
        own = params["chunk"].default
        settings = {**settings, "chunk": chunk if own is None else min(own, chunk)}
    own = settings["chunk"]
    return settings, 1 if own is None else max(1, chunk // own)


def sensitivity_noise(key: Array, samples: int, shape: tuple[int, ...], radius: float = 0.02, *,
                      method_keys: bool = False) -> Array | tuple[Array, Array]:
    """``[samples, *shape]``: the noise ``max_sensitivity`` adds to an image of ``shape`` for the
    image key ``key`` (``jaxplain.evaluate_keys``); sample ``i`` re-explains ``x + noise[i]``.
    ``method_keys=True``: ``(noise, keys [samples])``, with the key a random method gets for each
    sample. To replay in Captum's ``sensitivity_max`` or Quantus' ``MaxSensitivity``, give them a
    perturbation function that returns ``x + noise[i]``."""
    noise, keys = jax.vmap(lambda i: _sample_noise(key, i, shape, radius))(jnp.arange(positive_int(samples, "samples")))
    return (noise, keys) if method_keys else noise


@better("lower")
@wraps_method(setting="method")
@per_image(attribution=None)
@counts_images
def max_sensitivity(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
                    method: str | Callable = gradient, method_settings: Mapping[str, Any] | None = None,
                    samples: int = 10, radius: float = 0.02, key: Array | None = None,
                    chunk: int | None = 16) -> dict[str, Array]:
    """Max-sensitivity (Yeh et al. 2019; ``captum.metrics.sensitivity_max`` with its defaults):
    ``samples`` copies of ``x`` with uniform noise in the L-infinity ball of ``radius`` are
    explained again by ``method`` (with ``method_settings``; it must be the method that made
    ``attribution``, and a random one gets a key per sample); ``"sensitivities"`` ``[samples]``:
    ``||method(x + d) - attribution|| / ||attribution||`` (Frobenius norms; a zero attribution
    divides by 1, as Captum); ``"score"``: their maximum (lower is better; their mean is what
    Quantus' ``AvgSensitivity`` reports, there over 200 samples in a ball of 0.2). ``radius`` is
    absolute, in preprocessed units. ``chunk``: model passes per image at a time, the method's
    own passes included (``nested_chunk``), so memory does not grow with ``samples`` x steps.
    """
    n = positive_int(samples, "samples")
    radius = real(radius, "radius", above=0)
    k = require_key(key, "max_sensitivity")
    method, wants_key = method_function(method, "method", "evaluate")
    settings, chunk = nested_chunk(method, dict(method_settings or {}), chunk)
    norm = jnp.linalg.norm(attribution)
    norm = jnp.where(norm == 0, 1, norm)

    def one(i: Array) -> Array:
        noise, k_method = _sample_noise(k, i, x.shape, radius)
        extra = {"key": k_method} if wants_key else {}
        again = method(apply, params, x + noise.astype(x.dtype), target, **settings, **extra)
        if again.shape != attribution.shape:
            raise InputError(f"max_sensitivity: the method returns shape {again.shape} but the attribution has "
                             f"{attribution.shape}; pass the method (and settings) that made the attributions")
        return jnp.linalg.norm(again - attribution)

    sensitivities = along(one, n, chunk) / norm
    return {"score": sensitivities.max(), "sensitivities": sensitivities}
