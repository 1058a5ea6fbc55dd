"""Perturbation family on one image: occlusion and RISE. Forward passes only, vectorized over
perturbations in chunks of ``chunk`` (one compiled batch per chunk, never one call each)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree

from jaxplain.baselines import baseline_image, check_score, scorer
from jaxplain.checks import as_key
from jaxplain.chunks import counts_images, keep, sum_chunks
from jaxplain.marks import cost, output, per_image


def per_axis(value: int | tuple[int, ...], name: str, c: int) -> tuple[int, int, int]:
    """``(h, w, c)`` from an int, ``(h, w)`` (all channels together) or ``(h, w, c)``."""
    v = (value, value) if isinstance(value, int) else tuple(value)
    if len(v) == 2:
        v = (*v, c)
    if len(v) != 3 or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in v):
        raise InputError(f"{name} must be a positive int, (h, w) or (h, w, c); got {value!r}")
    return v


def _windows_1d(size: int, window: int, stride: int) -> Array:
    """``[n, size]`` 0/1 masks of windows ``[k*stride, k*stride + window)``, clipped at the end;
    ``n = ceil((size - window) / stride) + 1``, so the last window reaches the edge (as Captum)."""
    n = math.ceil((size - window) / stride) + 1
    starts = jnp.arange(n)[:, None] * stride
    u = jnp.arange(size)[None, :]
    return ((u >= starts) & (u < starts + window)).astype(jnp.float32)


def occlusion_windows(shape: tuple[int, int, int], window: int | tuple[int, ...], strides: int | tuple[int, ...]) -> int:
    """How many windows (forward passes besides the image's own) occlusion makes on ``shape``."""
    win, st = per_axis(window, "window", shape[2]), per_axis(strides, "strides", shape[2])
    return math.prod(math.ceil(max(size - a, 0) / b) + 1 for size, a, b in zip(shape, win, st))


@cost(lambda s, shape: 1 + occlusion_windows(shape, s["window"], s["strides"]), forward_only=True)
@per_image(baseline=3)
@counts_images(forward_only=True)
def occlusion(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, window: int | tuple[int, ...] = (15, 15),
              strides: int | tuple[int, ...] = (8, 8), baseline: float | str | Array = 0.0, chunk: int | None = 16) -> Array:
    """Occlusion (Zeiler & Fergus 2014; Captum ``Occlusion``), ``[H, W, C]``.

    A ``window`` (``(h, w)`` covers every channel; ``(h, w, c)`` also slides over channels) moves
    by ``strides``; inside it ``x`` is replaced by ``baseline`` (``jaxplain.baselines``: a number,
    a name such as ``"blur"``, an ``[H, W, C]`` array; ``"black"`` through ``explain``). Each element gets the mean drop of the target logit
    ``f(x) - f(x occluded)`` over the windows that cover it. Captum's
    ``sliding_window_shapes=(3, 15, 15), strides=(3, 8, 8)`` is ``window=(15, 15), strides=(8, 8)``.
    """
    h, w, c = x.shape
    win, st = per_axis(window, "window", c), per_axis(strides, "strides", c)
    for name, size, a, s in zip("HWC", x.shape, win, st):
        if a > size:
            raise InputError(f"occlusion window {win} is larger than the image {x.shape} along {name}")
        if s > a and a < size:
            raise InputError(f"occlusion stride {st} is larger than the window {win} along {name}: pixels would be skipped")
    mh, mw, mc = (_windows_1d(size, a, s) for size, a, s in zip(x.shape, win, st))
    base = baseline_image(baseline, x)
    f = lambda v: apply(params, v)[0][target]  # noqa: E731
    full = keep(lambda: f(x))  # once per host loop, not once per chunk

    def part(ids: Array) -> Array:
        kh, rest = jnp.divmod(ids, mw.shape[0] * mc.shape[0])
        kw, kc = jnp.divmod(rest, mc.shape[0])
        m = mh[kh][:, :, None, None] * mw[kw][:, None, :, None] * mc[kc][:, None, None, :]  # [n, H, W, C]
        drop = full - jax.vmap(f)(x * (1 - m) + base * m)
        return jnp.einsum("n,nhwc->hwc", drop, m)

    total = sum_chunks(part, jnp.arange(mh.shape[0] * mw.shape[0] * mc.shape[0]), chunk)
    counts = mh.sum(0)[:, None, None] * mw.sum(0)[None, :, None] * mc.sum(0)[None, None, :]
    return total / counts


def _mirror_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``[n_out, n_in]`` linear-interpolation weights with half-pixel centres; a source position
    outside the grid reads its mirror image about the edge pixel's centre, the edge not repeated
    (NumPy's and scikit-image's ``"reflect"``, SciPy's ``"mirror"``)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    lo = np.floor(src).astype(int)
    frac = src - lo

    def mirror(i: np.ndarray) -> np.ndarray:
        if n_in == 1:
            return np.zeros_like(i)
        i = np.abs(i) % (2 * n_in - 2)
        return np.where(i >= n_in, 2 * n_in - 2 - i, i)

    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, mirror(lo)), 1 - frac)
    np.add.at(m, (rows, mirror(lo + 1)), frac)
    return m.astype(np.float32)


def _mask(key: Array, shape: tuple[int, int], cells: int, p: float) -> Array:
    h, w = shape
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    kg, ky, kx = jax.random.split(key, 3)
    grid = jax.random.bernoulli(kg, p, (cells, cells)).astype(jnp.float32)
    dy, dx = jax.random.randint(ky, (), 0, ch), jax.random.randint(kx, (), 0, cw)
    rows = jax.lax.dynamic_slice_in_dim(jnp.asarray(_mirror_matrix((cells + 1) * ch, cells)), dy, h)  # [H, cells]
    cols = jax.lax.dynamic_slice_in_dim(jnp.asarray(_mirror_matrix((cells + 1) * cw, cells)), dx, w)  # [W, cells]
    return rows @ grid @ cols.T  # only the cropped rows and columns of the upsampled grid


def rise_masks(key: Array, n: int, shape: tuple[int, int], cells: int = 7, p: float = 0.5) -> Array:
    """The ``n`` RISE masks ``[n, H, W]`` in [0, 1] that ``rise`` draws from ``key``, as the
    official generator (Petsiuk et al. 2018) makes them: a ``cells x cells`` grid of
    Bernoulli(``p``) cells, upsampled bilinearly to ``(cells + 1) * ceil(H / cells)`` by
    ``(cells + 1) * ceil(W / cells)`` (``skimage.transform.resize(grid, size, order=1,
    mode="reflect", anti_aliasing=False)``: half-pixel centres, mirrored past the edge) and
    cropped to ``[dy:dy + H, dx:dx + W]``, ``dy`` and ``dx`` uniform over one cell. The upsampling
    is two interpolation matrices fixed at trace time, cropped before they are applied."""
    return jax.vmap(lambda k: _mask(k, shape, cells, p))(jax.random.split(key, n))


@output("map")
@cost(lambda s, _: s["masks"], forward_only=True)
@per_image(baseline=3)
@counts_images(forward_only=True)
def rise(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, masks: int = 4000, cells: int = 7,
         p: float = 0.5, baseline: float | str | Array = 0.0, score: str = "probability", key: Array | None = None,
         chunk: int | None = 32) -> Array:
    """RISE (Petsiuk et al. 2018), ``[H, W]``: ``sum_i s(x * M_i + baseline * (1 - M_i)) M_i / (masks * p)``
    over ``masks`` random masks (``rise_masks``); ``s`` is the target's ``"probability"`` (the
    paper's; ``"softmax"`` the same) or its ``"logit"``. Masks come from ``key``, ``chunk`` at a
    time; a ``"uniform"`` baseline from ``fold_in(key, 1)``."""
    key = as_key(key, "rise is random")
    check_score(score)
    if not 0 < p <= 1 or not isinstance(cells, int) or cells < 1 or not isinstance(masks, int) or masks < 1:
        raise InputError(f"rise needs masks >= 1, cells >= 1 and 0 < p <= 1; got {masks}, {cells}, {p}")
    base = baseline_image(baseline, x, jax.random.fold_in(key, 1))

    f = scorer(apply, params, target, score)

    def part(keys: Array) -> Array:
        m = jax.vmap(lambda k: _mask(k, x.shape[:2], cells, p))(keys)[..., None]  # [n, H, W, 1]
        s = jax.vmap(f)(x * m + base * (1 - m))
        return jnp.einsum("n,nhw->hw", s, m[..., 0])

    return sum_chunks(part, jax.random.split(key, masks), chunk) / (masks * p)
