"""What several metrics share: a map from an attribution, pixel orders, label maps of regions, the
model's score along a series of perturbed images, substrates, correlations."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxplain.errors import InputError
from jaxplain.checks import like_image
from jaxplain.chunks import along
from jaxplain.types import ApplyFn, Array, PyTree

SCORES = ("probability", "logit")
ORDERS = ("morf", "lerf")  # most / least relevant first


def check_order(order: str) -> None:
    """An ``InputError`` unless ``order`` is one of ``ORDERS``."""
    if order not in ORDERS:
        raise InputError(f"order must be one of {ORDERS}, got {order!r}")


def pixel_map(attribution: Array) -> Array:
    """``[H, W]``: an ``[H, W, C]`` attribution summed over its channels (a map stays as it is)."""
    return attribution.sum(-1) if attribution.ndim == 3 else attribution


def attribution_map(attribution: Array, x: Array) -> Array:
    """``pixel_map`` of an attribution ``[H, W, C]`` or ``[H, W]`` of ``x [H, W, C]``, or an
    ``InputError`` naming the shapes (``evaluate`` checks this too; here for direct calls)."""
    h, w, c = x.shape
    if tuple(attribution.shape) not in ((h, w, c), (h, w)):
        raise InputError(f"attribution must be [H, W, C] = {(h, w, c)} or [H, W] = {(h, w)} for this image, "
                         f"got shape {tuple(attribution.shape)}")
    return pixel_map(attribution)


def order(values: Array) -> Array:
    """Indices of ``values`` (any shape, flattened) from the largest down; ties by index, lowest first."""
    return jnp.argsort(-values.reshape(-1), stable=True)


def ranks(values: Array) -> Array:
    """Each element's place in ``order(values)`` (0 = the largest), shaped like ``values``."""
    o = order(values)
    return jnp.zeros(o.shape, jnp.int32).at[o].set(jnp.arange(o.size, dtype=jnp.int32)).reshape(values.shape)


def scorer(apply: ApplyFn, params: PyTree, target: Array, score: str) -> Callable[[Array], Array]:
    """``x [H, W, C] -> scalar``: the target's softmax probability or logit."""
    check_score(score)
    return lambda v: score_of(apply(params, v)[0], target, score)


def check_score(score: str) -> None:
    """An ``InputError`` unless ``score`` is one of ``SCORES``."""
    if score not in SCORES:
        raise InputError(f"score must be one of {SCORES}, got {score!r}")


def score_of(logits: Array, target: Array, score: str) -> Array:
    """The target's softmax probability or logit (``score``) from ``logits [K]``."""
    return logits[target] if score == "logit" else jax.nn.softmax(logits)[target]


def region_sums(values: Array, labels: np.ndarray, n: int) -> Array:
    """``[n]``: the sum of ``values [H, W]`` over each region of a label map ``labels [H, W]`` (ids ``0 .. n - 1``)."""
    return jax.ops.segment_sum(values.reshape(-1), jnp.asarray(labels.reshape(-1)), num_segments=n)


def scores_along(f: Callable[[Array], Array], image: Callable[[Array], Array], n: int,
                 chunk: int | None) -> Array:
    """``[n]``: ``f(image(i))`` for ``i = 0 .. n - 1``, ``chunk`` images per vectorised forward pass
    (``chunks.along``: the calling metric's one outermost ``sum_chunks``)."""
    return along(lambda i: f(image(i)), n, chunk)


def rise_blur_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """The 1-D factor of the RISE code's blur kernel (Petsiuk et al. 2018, ``gkern``): a unit impulse
    of ``size`` filtered by a Gaussian of ``sigma`` with SciPy's reflecting edges (so at sigma 5 the
    tails fold back into the window); the 2-D kernel is its outer product."""
    impulse = np.zeros(size)
    impulse[size // 2] = 1.0
    return ndimage.gaussian_filter1d(impulse, sigma).astype(np.float32)


def rise_blur(x: Array, size: int = 11, sigma: float = 5.0) -> Array:
    """``x [H, W, C]`` blurred per channel by ``rise_blur_kernel`` with zero padding (the RISE code's
    insertion substrate: ``conv2d(x, kernel, padding=size // 2)``)."""
    k = jnp.asarray(rise_blur_kernel(size, sigma))
    h, w = x.shape[:2]
    pad = size // 2

    def band(n: int) -> Array:  # [n, n]: out[i] = sum_j k[j - i + pad] x[j], zero outside
        d = jnp.arange(n)[None, :] - jnp.arange(n)[:, None] + pad
        return jnp.where((d >= 0) & (d < size), k[jnp.clip(d, 0, size - 1)], 0.0)

    return jnp.einsum("ih,hwc,jw->ijc", band(h), x, band(w))


def substrate(x: Array, fill: float | str | Array, key: Array | None = None) -> Array:
    """What removed pixels become: a number, ``"blur"`` (``rise_blur``), ``"uniform"`` (noise,
    each element uniform in ``[min x, max x]``, drawn from ``key``) or an ``[H, W, C]`` array
    (``"black"``, the preprocessed black image, is resolved by ``evaluate``)."""
    if isinstance(fill, str):
        if fill == "blur":
            return rise_blur(x)
        if fill == "uniform" and key is not None:
            return jax.random.uniform(key, x.shape, x.dtype, jnp.min(x), jnp.max(x))
        if fill == "uniform":
            raise InputError("baseline='uniform' is random: pass key=jax.random.key(...) or an int seed")
        if fill == "black":
            raise InputError("baseline='black' needs the model's preprocessing: use jaxplain.evaluate, or pass the array")
        raise InputError(f"a baseline must be a number, 'black', 'blur', 'uniform' or an [H, W, C] array, got {fill!r}")
    return like_image(fill, x)


def pixels(attribution: Array, shape: tuple[int, ...]) -> Array:
    """``attribution`` as ``shape`` ``[H, W, C]``: a map ``[H, W]`` is repeated over the channels."""
    a = attribution[..., None] if attribution.ndim == 2 else attribution
    return jnp.broadcast_to(a, shape)


def require_key(key: Array | None, name: str) -> Array:
    """``key``, or an ``InputError`` saying that metric ``name`` is random."""
    if key is None:
        raise InputError(f"{name} is random: pass key=jax.random.key(...) (or an int seed to evaluate)")
    return key
