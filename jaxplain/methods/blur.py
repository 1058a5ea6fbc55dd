"""Gaussian blur of one image as two matrix products, with the semantics of
``scipy.ndimage.gaussian_filter(x, [s, s, 0], mode="constant")`` (zero padding, kernel radius
``int(4 s + 0.5)``, kernel normalised over its full support). ``sigma`` may be traced. Also the
RISE code's own blur (``rise_blur``: an 11x11 kernel of sigma 5), the insertion metric's substrate."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxplain.types import Array


def blur_matrix(n: int, sigma: Array, max_sigma: float) -> Array:
    """``[n, n]`` matrix ``M`` with ``(M @ v)[i] = sum_j k(i - j) v[j]``; identity at ``sigma == 0``.

    ``max_sigma`` (static) bounds ``sigma`` so the kernel's normaliser can span its whole radius.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    safe = jnp.where(sigma > 0, sigma, 1.0)
    radius = jnp.floor(4.0 * sigma + 0.5)
    d = jnp.arange(n, dtype=jnp.float32)
    dist = d[:, None] - d[None, :]
    bound = max(n, int(4.0 * float(max_sigma) + 0.5) + 1)
    k = jnp.arange(-bound, bound + 1, dtype=jnp.float32)  # the kernel's own normaliser, |k| <= radius
    norm = jnp.sum(jnp.where(jnp.abs(k) <= radius, jnp.exp(-0.5 * (k / safe) ** 2), 0.0))
    m = jnp.where(jnp.abs(dist) <= radius, jnp.exp(-0.5 * (dist / safe) ** 2), 0.0) / norm
    return jnp.where(sigma > 0, m, jnp.eye(n, dtype=jnp.float32))


def gaussian_blur(x: Array, sigma: Array, max_sigma: float | None = None) -> Array:
    """Blur ``[H, W, C]`` over ``H`` and ``W`` with standard deviation ``sigma`` pixels
    (``max_sigma``: a static bound when ``sigma`` is traced)."""
    bound = float(sigma) if max_sigma is None else max_sigma
    mh, mw = blur_matrix(x.shape[0], sigma, bound), blur_matrix(x.shape[1], sigma, bound)
    return jnp.einsum("ih,hwc,jw->ijc", mh, x.astype(jnp.float32), mw).astype(x.dtype)


def blur_difference(x: Array, sigma: Array, step: float, max_sigma: float) -> Array:
    """``gaussian_blur(x, sigma + step) - gaussian_blur(x, sigma)``, formed from the difference of
    the blur matrices so float32 does not cancel it away."""
    bound = max_sigma + step
    h0, w0 = blur_matrix(x.shape[0], sigma, bound), blur_matrix(x.shape[1], sigma, bound)
    h1, w1 = blur_matrix(x.shape[0], sigma + step, bound), blur_matrix(x.shape[1], sigma + step, bound)
    return jnp.einsum("ih,hwc,jw->ijc", h1 - h0, x, w1) + jnp.einsum("ih,hwc,jw->ijc", h0, x, w1 - w0)


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
