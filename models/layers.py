"""What the zoo's networks share: pooling layers with the reference frameworks' semantics and a
fast CPU lowering, the tap-and-record step of the Model contract, and the pure ``apply`` of an
NNX network from its graph and parameter shapes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from typing import Callable, Mapping

from flax import nnx

from jaxplain.types import ApplyFn, Array, PyTree, Relu


def recorder(taps: Mapping[str, Array] | None) -> tuple[Callable[[str, Array], Array], dict[str, Array]]:
    """``(out, acts)``: ``out(name, h)`` adds ``taps[name]`` (if given) to the layer's output
    ``h``, records the sum in ``acts[name]`` and returns it."""
    taps = taps or {}
    acts: dict[str, Array] = {}

    def out(name: str, h: Array) -> Array:
        if name in taps:
            h = h + taps[name]
        acts[name] = h
        return h

    return out, acts


def nnx_apply(graphdef: nnx.GraphDef, shapes: nnx.State) -> ApplyFn:
    """The pure ``apply(params, x, taps=None, relu=None)`` of the NNX network of ``graphdef``
    with parameters ``params``, a nested pure dict in ``shapes``' paths."""

    def apply(
        params: PyTree, x: Array, taps: Mapping[str, Array] | None = None, relu: Relu | None = None
    ) -> tuple[Array, dict[str, Array]]:
        state = jax.tree.map(lambda s: s, shapes)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)(x, taps, relu)

    return apply


def _windows(x: Array) -> Array:
    """``[..., H, W, C] -> [..., H//2, W//2, C, 4]``; window order (0,0),(0,1),(1,0),(1,1)."""
    *lead, h, w, c = x.shape
    x = x[..., : h // 2 * 2, : w // 2 * 2, :]
    x = x.reshape(*lead, h // 2, 2, w // 2, 2, c)
    n = len(lead)
    x = jnp.transpose(x, (*range(n), n, n + 2, n + 4, n + 1, n + 3))
    return x.reshape(*lead, h // 2, w // 2, c, 4)


@jax.custom_jvp
def max_pool_2x2(x: Array) -> Array:
    """2x2 max pool, stride 2, 'valid' (odd rows/columns dropped): ``[..., H, W, C]``.

    Written as reshape + max, which XLA:CPU differentiates far faster than
    ``reduce_window``. The derivative (forward and, by transposition, reverse) goes through the
    *first* maximum of each window in row-major order, as in torch's ``MaxPool2d`` and Keras'
    ``MaxPooling2D``; forward mode makes higher-order derivatives available too.
    """
    return _windows(x).max(axis=-1)


@max_pool_2x2.defjvp
def _pool_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    win = _windows(x)
    first = jax.nn.one_hot(jnp.argmax(win, axis=-1), 4, dtype=x.dtype)
    # The max taken as the selection of the first maximum, so derivatives of this rule (forward
    # over forward: Grad-CAM++'s exact mode) route through the first maximum too; ``win.max``
    # would split them among tied maxima there.
    return jnp.sum(win * first, axis=-1), jnp.sum(_windows(t) * first, axis=-1)


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


def _views_3x3s2(x: Array, pad: float) -> list[Array]:
    """The nine ``[..., H', W', C]`` strided views of ``x`` padded by one row/column of ``pad`` on
    each side, one per offset of the 3x3 window at stride 2 (``H' = (H - 1) // 2 + 1``), in
    row-major window order."""
    *lead, h, w, c = x.shape
    widths = [(0, 0)] * len(lead) + [(1, 1), (1, 1), (0, 0)]
    xp = jnp.pad(x, widths, constant_values=jnp.asarray(pad, x.dtype))
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return [xp[..., i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :] for i in range(3) for j in range(3)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool_3x3s2(x: Array, pad: float = -np.inf) -> Array:
    """3x3 max pool, stride 2, one cell of padding of value ``pad``: ``[..., H, W, C] ->
    [..., (H+1)//2, (W+1)//2, C]`` (torch's ``MaxPool2d(3, 2, padding=1)``: ``pad=-inf``; Keras'
    ``ZeroPadding2D(1)`` + ``MaxPooling2D(3, 2)``: ``pad=0``).

    The derivative goes through the *first* maximum of each window in row-major order, as in
    torch and Keras (see ``max_pool_2x2``). Written as an elementwise maximum of the nine strided
    views (never stacked into a ``[..., 9]`` array, nor gathered from one); the gradient selects
    with a materialised int8 index of the first maximum, so XLA:CPU's fused transpose reads it
    instead of recomputing the nine comparisons in every term (measured on ``[8, 112, 112, 64]``:
    the pool's gradient 2.6x faster than stacked windows with ``argmax`` and ``take_along_axis``;
    the index another 10x with the ReLU before the pool).
    """
    return functools.reduce(jnp.maximum, _views_3x3s2(x, pad))


@max_pool_3x3s2.defjvp
def _pool3_jvp(pad: float, primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    views = _views_3x3s2(x, pad)
    y = functools.reduce(jnp.maximum, views)
    first = jnp.full(y.shape, len(views) - 1, jnp.int8)  # the first view equal to the maximum
    for i in range(len(views) - 2, -1, -1):
        first = jnp.where(views[i] == y, jnp.int8(i), first)
    first = jax.lax.optimization_barrier(first)  # computed once, not inside every use
    # selected, not multiplied: pads may be -inf
    ty = functools.reduce(jnp.add, [jnp.where(first == i, tv, 0) for i, tv in enumerate(_views_3x3s2(t, 0.0))])
    return y, ty
