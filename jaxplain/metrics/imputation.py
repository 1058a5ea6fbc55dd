"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods"): remove pixels in attribution order and fill them by noisy linear imputation,
which leaks little of the removal mask's shape to the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.checks import positive_int, real
from jaxplain.chunks import along, counts_images
from jaxplain.marks import per_image
from jaxplain.types import ApplyFn, Array, PyTree

from .common import check_order, check_score, pixel_map, ranks, require_key, score_of

PERCENTAGES = (10, 20, 30, 40, 50, 70, 90)  # the authors' experiments (noretrain_params.json)
# The authors' neighbour weights (road/imputations.py): (row, column) offset -> weight.
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
              ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def neighbour_sum(u: Array) -> Array:
    """``[H, W, C]``: each pixel's weighted sum of its 8 neighbours' values (``NEIGHBOURS``),
    nothing from outside the image."""
    h, w = u.shape[:2]
    p = jnp.pad(u, ((1, 1), (1, 1), (0, 0)))
    return sum(weight * p[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w] for (dy, dx), weight in NEIGHBOURS)


def road_impute(x: Array, removed: Array, *, noise: float = 0.01, key: Array | None = None,
                tol: float = 1e-6, max_iterations: int | None = None) -> Array:
    """``x [H, W, C]`` with the ``removed [H, W]`` pixels (all channels) filled by the authors'
    noisy linear imputation: each removed value is the weighted mean of its neighbours inside the
    image (``NEIGHBOURS``, 1/6 edge-adjacent and 1/12 diagonal, divided by the weights of the
    neighbours that exist), known pixels fixed; per channel the sparse system ``(D - W) u = b``
    on the removed pixels, which is symmetric and positive definite when at least one pixel is
    kept. Solved by Jacobi-preconditioned conjugate gradients on the whole grid (the operator is a
    3x3 stencil masked to the removed pixels) to a relative residual of ``tol`` within
    ``max_iterations`` (default ``5 (H + W)``; 90% of a 224x224 image in one blob needs about
    1000); then ``noise * N(0, 1)`` is added to the removed pixels (``key`` needed when ``noise > 0``).
    """
    h, w = x.shape[:2]
    if removed.shape != (h, w):
        raise InputError(f"removed must be a mask [H, W] = {(h, w)} for this image, got shape {removed.shape}")
    m = removed[..., None].astype(x.dtype)
    degree = neighbour_sum(jnp.ones((h, w, 1), x.dtype))
    b = m * neighbour_sum(x * (1 - m))
    u, _ = jax.scipy.sparse.linalg.cg(lambda v: m * (degree * v - neighbour_sum(m * v)), b, x0=jnp.zeros_like(x),
                                      tol=tol, maxiter=max_iterations or 5 * (h + w), M=lambda r: m * r / degree)
    if noise:
        u = u + _noise(require_key(key, "road (noise > 0)"), x.shape, x.dtype, noise)
    return jnp.where(removed[..., None], u, x)


def _noise(key: Array, shape: tuple[int, ...], dtype: jnp.dtype, noise: float) -> Array:
    """``noise * N(0, 1)`` of ``shape``: what the imputation adds to the removed pixels."""
    return noise * jax.random.normal(key, shape, dtype)


def road_noise(key: Array, shape: tuple[int, ...], *, percentages: tuple[float, ...] | list[float] = PERCENTAGES,
               noise: float = 0.01, dtype: jnp.dtype = jnp.float32) -> Array:
    """``[P, *shape]``: the noise ``road`` adds at each of its ``percentages`` to the removed
    pixels (those pixels only; the rest is unused) of an image of ``shape [H, W, C]`` with image
    key ``key`` (``jaxplain.evaluate_keys``): ``noise * N(0, 1)`` from ``fold_in(key, p)`` for
    the ``p``-th percentage. To replay in Quantus' ``ROAD``, give it a ``perturb_func`` that
    imputes without noise (``noisy_linear_imputation(..., noise=0)``) and adds this."""
    p = _check_percentages(percentages)
    real(noise, "noise", at_least=0)
    return jax.vmap(lambda i: _noise(jax.random.fold_in(key, i), tuple(shape), dtype, noise))(jnp.arange(p.size))


def _check_percentages(percentages: object) -> np.ndarray:
    try:
        values = np.atleast_1d(np.asarray(percentages, dtype=object))
    except Exception:  # a traced array
        raise InputError("percentages must be a list or tuple of numbers strictly between 0 and 100") from None
    ok = values.ndim == 1 and values.size > 0 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and 0 < v < 100 for v in values)
    if not ok:
        raise InputError(f"percentages must be numbers strictly between 0 and 100, got {percentages!r}")
    return values.astype(np.float64)


@per_image(attribution=None)
@counts_images(forward_only=True)
def road(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
         percentages: tuple[float, ...] | list[float] = PERCENTAGES, order: str = "morf", noise: float = 0.01,
         score: str = "probability", tol: float = 1e-6, max_iterations: int | None = None,
         key: Array | None = None, chunk: int | None = 16) -> dict[str, Array]:
    """ROAD (Rong et al. 2022): for each of ``percentages`` ``p`` (strictly between 0 and 100;
    default the authors' 10, 20, 30, 40, 50, 70, 90; Quantus' is ``range(1, 100, 2)``), the
    ``floor(H W p / 100)`` pixels ranked first by the attribution (channels summed; ties by pixel
    index, lowest first) for ``order="morf"``, or last for ``"lerf"``, are removed and imputed
    by ``road_impute`` (``noise``, ``tol``, ``max_iterations``; a fresh ``key`` per percentage,
    ``fold_in(key, i)`` for the ``i``-th: the noise is ``road_noise``).

    Returns ``"curve"`` ``[P]``: the target's softmax probability (``score``: or ``"logit"``)
    after each removal; ``"accuracy"`` ``[P]``: 1 where the target is still the top class (what
    Quantus' ``ROAD`` records); ``"score"``: the curve's mean over the percentages (MoRF: lower
    is better; LeRF: higher). The authors' code at ``th_p`` removes the top ``th_p`` for MoRF
    but the *bottom* ``1 - th_p`` for LeRF; here LeRF at ``p`` removes the ``p`` percent least
    relevant (their LeRF at ``100 - p``). They break ties with 1e-4 random noise; we by index.
    """
    check_order(order)
    p = _check_percentages(percentages)
    real(noise, "noise", at_least=0)
    real(tol, "tol", above=0)
    if max_iterations is not None:
        positive_int(max_iterations, "max_iterations")
    if noise:
        require_key(key, "road with noise > 0")
    h, w = x.shape[:2]
    counts = jnp.asarray((h * w * p / 100).astype(np.int64), jnp.int32)  # int(H W p / 100), as the authors
    rank = ranks(pixel_map(attribution))
    if order == "lerf":
        rank = h * w - 1 - rank
    check_score(score)

    def one(i: Array) -> tuple[Array, Array]:
        k = jax.random.fold_in(key, i) if noise else None
        filled = road_impute(x, rank < counts[i], noise=noise, key=k, tol=tol, max_iterations=max_iterations)
        logits = apply(params, filled)[0]
        return score_of(logits, target, score), (jnp.argmax(logits) == target).astype(x.dtype)

    curve, accuracy = along(one, p.size, chunk)
    return {"score": curve.mean(), "curve": curve, "accuracy": accuracy}
