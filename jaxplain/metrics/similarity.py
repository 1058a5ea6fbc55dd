"""Similarity of two maps or vectors: Pearson's and Spearman's correlation (ties ranked by their
average, as SciPy) and SSIM (as scikit-image's ``structural_similarity``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import Array


def average_ranks(values: Array) -> Array:
    """``[N]`` 0-based ranks of ``values`` (flattened) from the smallest up, ties given the mean of
    their places (``scipy.stats.rankdata(method="average") - 1``)."""
    v = values.reshape(-1)
    s = jnp.sort(v)
    below = jnp.searchsorted(s, v, side="left")
    upto = jnp.searchsorted(s, v, side="right")
    return (below + upto - 1).astype(jnp.float32) / 2


def pearson(a: Array, b: Array) -> Array:
    """Pearson's correlation of two arrays (flattened); NaN when either is constant."""
    a = a.reshape(-1) - a.mean()
    b = b.reshape(-1) - b.mean()
    return (a @ b) / jnp.sqrt((a @ a) * (b @ b))


def spearman(a: Array, b: Array) -> Array:
    """Spearman's rank correlation of two arrays of one shape (flattened), ties by average rank
    (``scipy.stats.spearmanr``); NaN when either is constant."""
    return pearson(average_ranks(a), average_ranks(b))


CORRELATIONS = ("pearson", "spearman")


def correlate(a: Array, b: Array, kind: str) -> Array:
    """``pearson`` (``kind="pearson"``) or ``spearman`` of ``a`` and ``b``; NaN when either is constant."""
    if kind not in CORRELATIONS:
        raise InputError(f"correlation must be one of {CORRELATIONS}, got {kind!r}")
    return pearson(a, b) if kind == "pearson" else spearman(a, b)


def ssim(a: Array, b: Array, *, win_size: int = 7, data_range: float = 1.0, k1: float = 0.01,
         k2: float = 0.03) -> Array:
    """The mean structural similarity of two ``[H, W]`` maps, as scikit-image's
    ``structural_similarity(a, b, data_range=data_range)`` with its defaults: a uniform
    ``win_size`` x ``win_size`` window, sample covariances (``N / (N - 1)``), ``K1 = 0.01``,
    ``K2 = 0.03``, averaged over the windows that lie inside the map (scikit-image crops
    ``(win_size - 1) / 2`` pixels at each edge, so its edge padding never counts)."""
    if a.ndim != 2 or a.shape != b.shape or min(a.shape) < win_size:
        raise InputError(f"SSIM compares two maps [H, W] of the same shape, at least {win_size}x{win_size}; "
                         f"got {a.shape} and {b.shape}")
    n = win_size * win_size

    def mean(v: Array) -> Array:
        return jax.lax.reduce_window(v, 0.0, jax.lax.add, (win_size, win_size), (1, 1), "VALID") / n

    ua, ub = mean(a), mean(b)
    cov = n / (n - 1)
    va = cov * (mean(a * a) - ua * ua)
    vb = cov * (mean(b * b) - ub * ub)
    vab = cov * (mean(a * b) - ua * ub)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.mean()
