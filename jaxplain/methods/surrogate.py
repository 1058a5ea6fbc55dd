"""The linear-surrogate family on one image: feature ablation, LIME and KernelSHAP over segments.

Segments switch on and off together (``segments``: a grid, or a label map ``[H, W]`` with labels
``0 .. M - 1``; ``explain`` turns ``"slic"``, ``"felzenszwalb"`` or ``"quickshift"`` into label
maps of the pictures, ``jaxplain.segmentation``). A switched-off segment takes the ``baseline``'s
pixels. Every coalition of segments is one image of a vectorized forward pass, ``chunk`` at a
time (``chunks.along``); the regression runs in JAX after the last pass. A label with no pixel
(padding up to the static ``M``) is no feature: its coefficient is 0 and it never switches.
Each returns a map ``[H, W]``: a segment's value on each of its pixels.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import segmentation
from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, Model, PyTree

from jaxplain.baselines import baseline_image, scorer
from jaxplain.checks import as_key, positive_int, real
from jaxplain.chunks import along, counts_images, keep
from jaxplain.marks import cost, host_settings, output, per_image

MAX_EXACT = 20  # kernel_shap enumerates at most 2**20 coalitions


class Fit(NamedTuple):
    """A surrogate's fit for one image (a leading ``B`` on each field through ``explain``)."""

    attribution: Array  # [H, W]: each segment's coefficient on its pixels
    coefficients: Array  # [M]: one per segment label (0 for a label without pixels)
    intercept: Array  # []: the fit's value with every segment off
    r2: Array  # []: the weighted coefficient of determination of the fit on the samples (for
    # exact KernelSHAP, on every coalition but the empty and full ones, weighted by the Shapley kernel;
    # KernelSHAP's fit is held to f(x) - f(baseline), so a game far from additive can give r2 < 0)


def _labels(segments: str | Array, cells: int | tuple[int, int], max_segments: int | None,
            shape: tuple[int, int]) -> tuple[Array, int, Array]:
    """``(labels [H, W] int32, M, present [M] bool)``: the grid of ``cells`` or the given label
    map, the static count, and which labels have pixels."""
    if isinstance(segments, str):
        kind, options = segmentation.parse_kind(segments)
        if kind != "grid":
            raise InputError(f"segments={segments!r} is computed from the picture on the host: use jaxplain.explain, "
                             "or pass a label map (jaxplain.segments)")
        labels = segmentation.grid(shape, options.get("cells", cells))
    else:
        labels = segmentation.check_labels(segments, shape)
    m = segmentation.count(labels, max_segments)
    return labels, m, _present(labels, m)  # NumPy when known at trace time: constants, not folded by XLA


def _fill(x: Array, baseline: float | str | Array, labels: Array, m: int, key: Array | int | None = None) -> Array:
    """``[H, W, C]``: what a switched-off segment shows, ``baselines.baseline_image`` (``"mean"``:
    each segment's mean colour, as lime's ``hide_color=None``); ``"uniform"`` draws from
    ``fold_in(key, 2**32 - 1)``, apart from the coalitions' ``fold_in(key, i)``."""
    k = None if key is None else jax.random.fold_in(as_key(key), 2**32 - 1)
    return baseline_image(baseline, x, k, labels=labels, regions=m)


def _present(labels: Array | np.ndarray, m: int) -> Array:
    """``[M]`` bool: the labels that have pixels (counted at trace time when the labels are known)."""
    if isinstance(labels, np.ndarray):
        return jnp.asarray(np.bincount(labels.reshape(-1), minlength=m) > 0)
    return jax.ops.segment_sum(jnp.ones(labels.size, jnp.int32), labels.reshape(-1), num_segments=m) > 0


def _outputs(f, x: Array, fill: Array, labels: Array, coalition, n: int, chunk: int | None) -> Array:
    """``[n]``: ``f`` of the image with the segments of ``coalition(i) [M]`` (1 = kept) kept and the rest filled."""

    def one(i: Array) -> Array:
        keep_pixel = coalition(i).astype(bool)[labels][..., None]
        return f(jnp.where(keep_pixel, x, fill))

    return along(one, n, chunk)


def _features(settings: dict, image_shape: tuple[int, ...]) -> int:
    """The segments of a surrogate's settings: ``max_segments`` (``explain`` counts a label
    map's), else the grid's cells."""
    if settings.get("max_segments"):
        return int(settings["max_segments"])
    cells = settings["cells"] if isinstance(settings["cells"], (tuple, list)) else (settings["cells"],) * 2
    return cells[0] * cells[1]


def _shap_passes(settings: dict, image_shape: tuple[int, ...]) -> int:
    """Every coalition when exact, else the samples and the two ends."""
    m = _features(settings, image_shape)
    samples = settings["samples"] or 2 * m + 2048
    exact = settings["exact"] if settings["exact"] is not None else 2**m <= samples
    return 2**m if exact else samples + 2


@output("map")
@cost(lambda s, shape: 1 + _features(s, shape), forward_only=True)
@per_image(baseline=3, segments=2)
@host_settings(segmentation.resolve)
@counts_images(forward_only=True)
def feature_ablation(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, segments: str | Array = "grid",
                     cells: int | tuple[int, int] = 8, max_segments: int | None = None, baseline: float | str | Array = 0.0,
                     score: str = "logit", chunk: int | None = 16) -> Array:
    """Feature ablation over segments (Captum ``FeatureAblation`` with a ``feature_mask``), ``[H, W]``:
    each segment in turn takes the ``baseline`` (``jaxplain.baselines``: a number, a name such as
    ``"black"``, ``"mean"``, ``"blur"``, or an array; default 0 as Captum's), and every pixel of it
    gets the drop ``f(x) - f(x ablated)`` of the target's ``score`` (``"logit"`` or
    ``"probability"``). ``M`` forward passes."""
    labels, m, present = _labels(segments, cells, max_segments, x.shape[:2])
    f = scorer(apply, params, target, score)
    fill = _fill(x, baseline, labels, m)
    full = keep(lambda: f(x))
    drops = full - _outputs(f, x, fill, labels, lambda s: jnp.arange(m) != s, m, chunk)
    return jnp.where(present, drops, 0.0)[labels]


def _coalition(key: Array, i: Array, present: Array) -> Array:
    """LIME's ``i``-th coalition ``[M]``: each present segment kept with probability 1/2; all kept for ``i = 0``."""
    draw = jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, present.shape)
    return jnp.where((i == 0) | ~present, True, draw).astype(jnp.float32)


def _weighted_fit(z: Array, y: Array, w: Array, alpha: float | Array) -> tuple[Array, Array, Array]:
    """``(coefficients [M], intercept, r2)`` of the ridge regression ``y ~ z`` with sample weights
    ``w``, an unpenalised intercept (scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=w)``),
    solved by least squares on the centred, weighted, ``sqrt(alpha)``-augmented system."""
    sw = jnp.sum(w)
    zm, ym = (w @ z) / sw, (w @ y) / sw
    r = jnp.sqrt(w)
    a = jnp.concatenate([(z - zm) * r[:, None], jnp.sqrt(alpha) * jnp.eye(z.shape[1], dtype=z.dtype)])
    b = jnp.concatenate([(y - ym) * r, jnp.zeros(z.shape[1], z.dtype)])
    coef = jnp.linalg.lstsq(a, b)[0]
    intercept = ym - zm @ coef
    resid = y - z @ coef - intercept
    r2 = 1.0 - jnp.sum(w * resid**2) / jnp.sum(w * (y - ym) ** 2)
    return coef, intercept, r2


def lasso_fit(z: Array, y: Array, w: Array, alpha: float | Array, *, sweeps: int = 2000,
              tol: float = 1e-7) -> tuple[Array, Array, Array]:
    """``(coefficients [M], intercept, r2)`` of the Lasso ``y ~ z`` (``z [n, M]``, ``y [n]``) with
    sample weights ``w [n]``, scikit-learn's ``Lasso(alpha).fit(z, y, sample_weight=w)``: the
    minimum of ``1 / (2 sum(w)) * sum_i w_i (y_i - z_i b - c)^2 + alpha * |b|_1``, the intercept
    ``c`` unpenalised (the weighted means taken out first, as scikit-learn does).

    Cyclic coordinate descent (as scikit-learn's) on the weighted Gram matrix: coordinate ``j``
    becomes ``soft(r_j, alpha) / G_jj`` with ``r_j = (Z^T W y)_j / sum(w) - sum_{k != j} G_jk b_k``;
    sweeps stop when none moves a coefficient by more than ``tol * max |b|`` (or after ``sweeps``).
    A feature that never varies (``G_jj = 0``) gets 0."""
    sw = jnp.sum(w)
    zm, ym = (w @ z) / sw, (w @ y) / sw
    zc, yc = z - zm, y - ym
    gram = (zc * w[:, None]).T @ zc / sw
    corr = (zc * w[:, None]).T @ yc / sw
    diag = jnp.diagonal(gram)
    safe = jnp.where(diag > 0, diag, 1.0)

    def coordinate(j: Array, b: Array) -> Array:
        r = corr[j] - gram[j] @ b + diag[j] * b[j]
        new = jnp.sign(r) * jnp.maximum(jnp.abs(r) - alpha, 0.0) / safe[j]
        return b.at[j].set(jnp.where(diag[j] > 0, new, 0.0))

    def todo(state: tuple[Array, Array, Array]) -> Array:
        b, moved, i = state
        return (i < sweeps) & (moved > tol * jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))

    def sweep(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        b, _, i = state
        new = jax.lax.fori_loop(0, z.shape[1], coordinate, b)
        return new, jnp.max(jnp.abs(new - b)), i + 1

    start = jnp.zeros(z.shape[1], z.dtype)
    coef, _, _ = jax.lax.while_loop(todo, sweep, (start, jnp.asarray(jnp.inf, z.dtype), jnp.int32(0)))
    intercept = ym - zm @ coef
    resid = y - z @ coef - intercept
    r2 = 1.0 - jnp.sum(w * resid**2) / jnp.sum(w * (y - ym) ** 2)
    return coef, intercept, r2


REGRESSORS = {"ridge": 1.0, "lasso": 0.01}  # each regressor's default alpha: lime's Ridge, Captum's SkLearnLasso


def _check_coalitions(table: Array | np.ndarray) -> None:
    if not bool(np.all((np.asarray(table) == 0) | (np.asarray(table) == 1))):
        raise InputError("coalitions must hold 0 (segment dropped) or 1 (kept) only")


def _lime_host(model: Model, images: Array, settings: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``explain``'s host step for ``lime``: the segments (``segmentation.resolve``) and a check of
    the caller's ``coalitions`` (inside the compiled method they are traced)."""
    if settings.get("coalitions") is not None:
        _check_coalitions(settings["coalitions"])
    return segmentation.resolve(model, images, settings, defaults)


@output("map")
@cost(lambda s, _: s["samples"], forward_only=True)
@per_image(baseline=3, segments=2, coalitions=2)
@host_settings(_lime_host)
@counts_images(forward_only=True)
def lime(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, segments: str | Array = "grid",
         cells: int | tuple[int, int] = 8, max_segments: int | None = None, samples: int = 1000,
         baseline: float | str | Array = "mean", kernel_width: float = 0.25, regressor: str = "ridge",
         alpha: float | None = None, score: str = "probability", coalitions: Array | None = None, return_fit: bool = False,
         key: Array | None = None, chunk: int | None = 16) -> Array | Fit:
    """LIME (Ribeiro et al. 2016) with the ``lime`` package's image defaults, ``[H, W]``.

    ``samples`` coalitions (the first keeps every segment; in the others each segment is kept
    with probability 1/2, drawn from ``key``), or the caller's ``coalitions [samples, M]`` of 0/1.
    A dropped segment shows the ``baseline`` (default ``"mean"``: its mean colour, lime's
    ``hide_color=None``; or any of ``jaxplain.baselines``). Each coalition ``z`` is
    weighted by ``sqrt(exp(-d^2 / kernel_width^2))`` with ``d`` its cosine distance to all-kept,
    and a weighted linear regression of the target's ``score`` (``"probability"``, lime's
    ``predict_proba``, or ``"logit"``) on ``z``, intercept unpenalised, gives each segment's
    coefficient: ``regressor="ridge"`` (lime's ``Ridge``, ``alpha`` default 1.0) or ``"lasso"``
    (Captum ``Lime``'s default ``SkLearnLasso``, ``alpha`` default 0.01, scikit-learn's meaning:
    ``lasso_fit``). ``return_fit``: a ``Fit`` with the coefficients, intercept and weighted R^2.
    """
    labels, m, present = _labels(segments, cells, max_segments, x.shape[:2])
    width = real(kernel_width, "kernel_width", above=0)
    if regressor not in REGRESSORS:
        raise InputError(f"lime: regressor must be one of {tuple(REGRESSORS)}, not {regressor!r}")
    alpha = real(REGRESSORS[regressor] if alpha is None else alpha, "alpha", at_least=0)
    if coalitions is None:
        samples = positive_int(samples, "samples")
        key = as_key(key, "lime is random", ", or the coalitions")
        coalition = lambda i: _coalition(key, i, present)  # noqa: E731
    else:
        table = jnp.asarray(coalitions)
        if table.ndim != 2 or table.shape[1] != m or table.shape[0] < 1:
            raise InputError(f"coalitions must be [samples, M] = [n, {m}] of 0/1, got shape {tuple(table.shape)}")
        if not isinstance(table, jax.core.Tracer):
            _check_coalitions(table)
        samples = table.shape[0]
        coalition = lambda i: jnp.where(present, table[i].astype(bool), True).astype(jnp.float32)  # noqa: E731
    f = scorer(apply, params, target, score)
    y = _outputs(f, x, _fill(x, baseline, labels, m, key), labels, coalition, samples, chunk)
    z = jax.vmap(coalition)(jnp.arange(samples)) * present.astype(jnp.float32)
    kept = z.sum(1)
    cosine = jnp.where(kept > 0, jnp.sqrt(kept / jnp.maximum(present.sum(), 1).astype(jnp.float32)), 0.0)
    weights = jnp.sqrt(jnp.exp(-((1.0 - cosine) ** 2) / width**2))
    coef, intercept, r2 = (_weighted_fit if regressor == "ridge" else lasso_fit)(z, y, weights, alpha)
    coef = jnp.where(present, coef, 0.0)
    return Fit(coef[labels], coef, intercept, r2) if return_fit else coef[labels]


def _exact_shapley(y: Array, m: int) -> Array:
    """``[M]`` Shapley values of the game ``y [2^M]`` (coalition ``s`` has player ``j`` when bit
    ``j`` of ``s`` is set): ``phi_i = sum_{S without i} |S|! (M - |S| - 1)! / M! (y[S + i] - y[S])``.

    Each player's marginal differences are taken before the weighted sum (the scores centred
    pair by pair): the offset all coalitions share (a logit near 20) cancels exactly, not in a
    float32 sum over ``2^M`` weighted scores (which lost 2-4% at ``M = 20``)."""
    size = (np.arange(2 ** (m - 1))[:, None] >> np.arange(m - 1)[None, :] & 1).sum(1)  # |S| of each S without i
    w = np.array([math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) for k in range(m)])
    weights = jnp.asarray(w[size], jnp.float32)  # [2^(M-1)], the same order for every player (below)

    def player(i: int) -> Array:
        pairs = y.reshape(2 ** (m - 1 - i), 2, 2**i)  # [higher bits, bit i, lower bits]
        return (pairs[:, 1] - pairs[:, 0]).reshape(-1) @ weights

    return jnp.stack([player(i) for i in range(m)])


def _kernel_coalition(key: Array, present: Array) -> Array:
    """A coalition ``[M]`` of KernelSHAP's sampling: its size ``k`` from the Shapley kernel
    ``(M - 1) / (k (M - k))`` over ``1 .. M - 1`` (``M`` the present segments), then ``k`` of the
    present segments uniformly."""
    m = present.sum().astype(jnp.float32)
    k = jnp.arange(1, present.size, dtype=jnp.float32)
    logits = jnp.where(k < m, jnp.log((m - 1) / (k * jnp.maximum(m - k, 1.0))), -jnp.inf)
    k_key, pick_key = jax.random.split(key)
    size = jax.random.categorical(k_key, jnp.where(m > 1, logits, 0.0)) + 1
    u = jnp.where(present, jax.random.uniform(pick_key, present.shape), 2.0)
    threshold = jnp.sort(u)[size.astype(jnp.int32) - 1]  # the size-th smallest draw: keep the size smallest
    return (u <= threshold).astype(jnp.float32)


@output("map")
@cost(_shap_passes, forward_only=True)
@per_image(baseline=3, segments=2)
@host_settings(segmentation.resolve)
@counts_images(forward_only=True)
def kernel_shap(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, segments: str | Array = "grid",
                cells: int | tuple[int, int] = 8, max_segments: int | None = None, samples: int | None = None,
                exact: bool | None = None, baseline: float | str | Array = 0.0, score: str = "logit",
                return_fit: bool = False, key: Array | None = None, chunk: int | None = 16) -> Array | Fit:
    """KernelSHAP (Lundberg & Lee 2017) over segments, ``[H, W]``: Shapley values of the target's
    ``score`` with a dropped segment showing the ``baseline`` (default 0, as Captum's).

    ``exact`` (by default when ``samples >= 2^M``): every coalition is evaluated and the Shapley
    values are exact. Otherwise ``samples`` coalitions (default ``2 M + 2048``, shap's) are drawn
    from ``key``: sizes from the Shapley kernel, members uniformly; a least-squares fit with the
    empty and full coalitions' values as a constraint (``sum(phi) = f(x) - f(baseline)``, solved by
    eliminating one coefficient). ``return_fit``: a ``Fit`` whose intercept is ``f(baseline)``.
    """
    labels, m, present = _labels(segments, cells, max_segments, x.shape[:2])
    samples = 2 * m + 2048 if samples is None else positive_int(samples, "samples")
    exact = 2**m <= samples if exact is None else bool(exact)
    if exact and m > MAX_EXACT:
        raise InputError(f"exact=True with {m} segments needs 2^{m} forward passes; use at most {MAX_EXACT} segments")
    if not exact and samples < m:
        raise InputError(f"kernel_shap needs samples >= the number of segments ({m}) to fit them, got {samples}"
                         + (f"; or exact=True for all 2^{m} coalitions" if m <= MAX_EXACT else ""))
    f = scorer(apply, params, target, score)
    fill = _fill(x, baseline, labels, m, key)
    if exact:
        bits = jnp.asarray((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1, jnp.float32)  # [2^M, M]
        y = _outputs(f, x, fill, labels, lambda i: bits[i], 2**m, chunk)
        phi = jnp.where(present, _exact_shapley(y, m), 0.0)
        size = np.arange(1, 2**m - 1)
        size = ((size[:, None] >> np.arange(m)[None, :]) & 1).sum(1)
        kernel = (m - 1) / (np.array([math.comb(m, k) for k in size]) * size * (m - size))  # the Shapley kernel
        base, z, w = y[0], bits[1:-1] * present.astype(jnp.float32), jnp.asarray(kernel, jnp.float32)
        y_fit = y[1:-1]
    else:
        key = as_key(key, "kernel_shap samples coalitions", ", or exact=True")
        ends = keep(lambda: jax.vmap(f)(jnp.stack([fill, x])))
        base, full = ends[0], ends[1]
        coalition = lambda i: _kernel_coalition(jax.random.fold_in(key, i), present)  # noqa: E731
        y_fit = _outputs(f, x, fill, labels, coalition, samples, chunk)
        z = jax.vmap(coalition)(jnp.arange(samples)) * present.astype(jnp.float32)
        w = jnp.ones(samples, jnp.float32)
        gap = full - base
        last = m - 1 - jnp.argmax(present[::-1])  # the present segment eliminated by the constraint
        others = (present & (jnp.arange(m) != last)).astype(jnp.float32)
        design = (z - z[:, last][:, None]) * others
        coef = jnp.linalg.lstsq(design, y_fit - base - z[:, last] * gap)[0] * others
        phi = coef.at[last].set(jnp.where(present[last], gap - coef.sum(), 0.0))
    if not return_fit:
        return phi[labels]
    resid = y_fit - base - z @ phi
    r2 = 1.0 - jnp.sum(w * resid**2) / jnp.sum(w * (y_fit - jnp.average(y_fit, weights=w)) ** 2)
    return Fit(phi[labels], phi, base, r2)
