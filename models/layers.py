"""Pooling layers with the reference frameworks' semantics and a fast CPU lowering."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.types import Array


def _windows(x: Array) -> Array:
    """``[..., H, W, C] -> [..., H//2, W//2, C, 4]``; window order (0,0),(0,1),(1,0),(1,1)."""
    *lead, h, w, c = x.shape
    x = x[..., : h // 2 * 2, : w // 2 * 2, :]
    x = x.reshape(*lead, h // 2, 2, w // 2, 2, c)
    n = len(lead)
    x = jnp.transpose(x, (*range(n), n, n + 2, n + 4, n + 1, n + 3))
    return x.reshape(*lead, h // 2, w // 2, c, 4)


@jax.custom_vjp
def max_pool_2x2(x: Array) -> Array:
    """2x2 max pool, stride 2, 'valid' (odd rows/columns dropped): ``[..., H, W, C]``.

    Written as reshape + max, which XLA:CPU differentiates far faster than
    ``reduce_window``. The gradient goes to the *first* maximum of each window in
    row-major order, as in torch's ``MaxPool2d`` and Keras' ``MaxPooling2D``.
    """
    return _windows(x).max(axis=-1)


def _pool_fwd(x: Array) -> tuple[Array, tuple[Array, tuple[int, ...]]]:
    win = _windows(x)
    return win.max(axis=-1), (jnp.argmax(win, axis=-1), x.shape)


def _pool_bwd(res: tuple[Array, tuple[int, ...]], g: Array) -> tuple[Array]:
    idx, shape = res
    *lead, h, w, c = shape
    n = len(lead)
    spread = jax.nn.one_hot(idx, 4, dtype=g.dtype) * g[..., None]  # [..., h2, w2, c, 4]
    spread = spread.reshape(*lead, h // 2, w // 2, c, 2, 2)
    spread = jnp.transpose(spread, (*range(n), n, n + 3, n + 1, n + 4, n + 2))
    spread = spread.reshape(*lead, h // 2 * 2, w // 2 * 2, c)
    pad = [(0, 0)] * n + [(0, h % 2), (0, w % 2), (0, 0)]
    return (jnp.pad(spread, pad),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


def adaptive_pool_matrix(n: int, out: int) -> np.ndarray:
    """``[out, n]`` averaging matrix of torch's ``AdaptiveAvgPool`` along one axis.

    Bin ``i`` covers ``floor(i*n/out)`` to ``ceil((i+1)*n/out)``; bins overlap when ``n`` is
    not a multiple of ``out`` and repeat cells when ``n < out``.
    """
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        lo, hi = (i * n) // out, -((-(i + 1) * n) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: Array, size: int) -> Array:
    """torch ``AdaptiveAvgPool2d((size, size))`` on ``[H, W, C] -> [size, size, C]``."""
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == (size, size):
        return x
    ph = jnp.asarray(adaptive_pool_matrix(h, size), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(w, size), x.dtype)
    return jnp.einsum("ih,jw,...hwc->...ijc", ph, pw, x)
