"""Faithfulness on one image: does removing what the attribution ranks first change the output?

Deletion and insertion (Petsiuk et al. 2018), region perturbation / AOPC (Samek et al. 2017),
mu-fidelity (Bhatt et al. 2020). Every perturbed image goes through the model in vectorised
chunks (``common.scores_along``, the one outermost ``sum_chunks``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.checks import positive_int, real
from jaxplain.chunks import counts_images, keep
from jaxplain.marks import better, per_image
from jaxplain.types import ApplyFn, Array, PyTree

from .common import attribution_map, check_order, ranks, require_key, region_sums, scorer, scores_along, substrate
from .similarity import correlate


def auc(curve: Array) -> Array:
    """The RISE code's area under a curve of ``n`` points on [0, 1]: ``(sum - c0/2 - c_last/2) / (n - 1)``."""
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (curve.shape[-1] - 1)


def _causal(apply: ApplyFn, params: PyTree, x: Array, target: Array, attribution: Array, start: Array,
            finish: Array, steps: int | None, score: str, chunk: int | None) -> dict[str, Array]:
    """The RISE code's ``CausalMetric``: from ``start``, the pixels in attribution order become
    ``finish``'s, ``ceil(H W / steps)`` pixels (all channels) per step; the target's score after
    each of ``0 .. steps`` steps, and its ``auc``."""
    h, w = x.shape[:2]
    steps = h if steps is None else positive_int(steps, "steps")
    steps = min(steps, h * w)
    per_step = -(-h * w // steps)
    steps = -(-h * w // per_step)  # as the reference code: ceil(HW / per_step) steps
    rank = ranks(attribution_map(attribution, x))
    f = scorer(apply, params, target, score)
    curve = scores_along(f, lambda i: jnp.where((rank < i * per_step)[..., None], finish, start), steps + 1, chunk)
    return {"score": auc(curve), "curve": curve}


@better("lower")
@per_image(attribution=None, baseline=3)
@counts_images(forward_only=True)
def deletion(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
             steps: int | None = None, baseline: float | str | Array = 0.0, score: str = "probability",
             key: Array | None = None, chunk: int | None = 16) -> dict[str, Array]:
    """Deletion (Petsiuk et al. 2018): pixels (channels summed) from the most relevant down are
    replaced by ``baseline`` (``jaxplain.baselines``: a number, ``"black"``, ``"blur"``,
    ``"rise_blur"``, ``"uniform"`` noise drawn from ``key``, ..., or an ``[H, W, C]`` array), ``H W /
    steps`` per step (default: as many steps as the image has rows, 224 pixels a step at 224x224,
    as the RISE code); ``"curve"`` ``[steps + 1]``: the target's softmax probability (``score``:
    ``"probability"`` or ``"logit"``) after each step; ``"score"``: its area (lower is better).
    Ties in the attribution are taken by pixel index (row-major), lowest first."""
    return _causal(apply, params, x, target, attribution, x, substrate(x, baseline, key), steps, score, chunk)


@better("higher")
@per_image(attribution=None, baseline=3)
@counts_images(forward_only=True)
def insertion(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
              steps: int | None = None, baseline: float | str | Array = "rise_blur", score: str = "probability",
              chunk: int | None = 16) -> dict[str, Array]:
    """Insertion (Petsiuk et al. 2018): from the ``baseline`` (default ``"rise_blur"``, the RISE
    code's Gaussian, kernel 11, sigma 5, zero padding; or a number, ``"black"``, ``"blur"``, an
    array), pixels from the most relevant down get their values back, ``H W / steps`` per step;
    ``"curve"`` and ``"score"`` (its area, higher is better) as ``deletion``."""
    return _causal(apply, params, x, target, attribution, substrate(x, baseline), x, steps, score, chunk)


def patch_labels(h: int, w: int, patch: int) -> tuple[np.ndarray, int]:
    """``(labels [H, W], n)``: each pixel's square patch of side ``patch``, numbered row-major. As
    Quantus, an image whose side is not a multiple of ``patch`` is padded on both sides (the
    floor of half the padding before), so the border patches are cut."""
    rows = (np.arange(h) + (-h % patch) // 2) // patch
    cols = (np.arange(w) + (-w % patch) // 2) // patch
    return (rows[:, None] * (cols[-1] + 1) + cols[None, :]).astype(np.int32), int((rows[-1] + 1) * (cols[-1] + 1))


@better("higher")
@per_image(attribution=None, baseline=3)
@counts_images(forward_only=True)
def region_perturbation(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
                        patch: int = 8, regions: int = 100, order: str = "morf",
                        baseline: float | str | Array = "black", score: str = "probability",
                        key: Array | None = None, chunk: int | None = 16) -> dict[str, Array]:
    """Region perturbation (Samek et al. 2017; Quantus' ``RegionPerturbation``): the image is cut
    into ``patch`` x ``patch`` squares (``patch_labels``), ranked by their summed attribution (all
    channels), most relevant first (``order="morf"``) or least (``"lerf"``; ties by patch index,
    lowest first); the first ``regions`` (at most all) become ``baseline`` one after another:
    ``"black"`` (the preprocessed black image, the default), a number, ``"blur"``, ``"uniform"``
    (each element uniform in ``[min x, max x]``; needs ``key``) or an ``[H, W, C]`` array.
    ``"curve"`` ``[L + 1]``: ``f(x) - f(x_k)`` after ``k = 0 .. L`` regions, ``f`` the target's
    softmax probability (``score="logit"``: its logit); ``"score"``: AOPC, the curve's mean
    ``1/(L+1) sum_k (f(x) - f(x_k))`` (higher is better for ``"morf"``)."""
    h, w = x.shape[:2]
    patch = positive_int(patch, "patch")
    if patch > min(h, w):
        raise InputError(f"patch must be at most the image's side {min(h, w)}, got {patch}")
    regions = positive_int(regions, "regions")
    check_order(order)
    labels, n = patch_labels(h, w, patch)
    sums = region_sums(attribution_map(attribution, x), labels, n)
    place = ranks(sums if order == "morf" else -sums)[labels]  # [H, W]: when each pixel's patch goes
    fill = substrate(x, baseline, key)
    f = scorer(apply, params, target, score)
    values = scores_along(f, lambda k: jnp.where((place < k)[..., None], fill, x), min(regions, n) + 1, chunk)
    curve = values[0] - values
    return {"score": curve.mean(), "curve": curve}


def _grid(h: int, w: int, grid_size: int) -> np.ndarray:
    """``[H, W]``: each pixel's cell of a ``grid_size`` x ``grid_size`` grid, upsampled by nearest
    neighbour with half-pixel centres (``tf.image.resize(..., "nearest")``, as Xplique), exactly
    in integers: row ``floor((i + 1/2) grid_size / H)``."""
    rows = (2 * np.arange(h) + 1) * grid_size // (2 * h)
    cols = (2 * np.arange(w) + 1) * grid_size // (2 * w)
    return (rows[:, None] * grid_size + cols[None, :]).astype(np.int32)


def _subsets(key: Array, grid_size: int, subset_percent: float, samples: int) -> Array:
    """``bool [samples, grid_size**2]``: per sample, ``int(grid_size**2 * subset_percent)`` cells
    drawn uniformly without replacement (True: switched off). Xplique's code switches off one
    more (``argsort(...) > size`` keeps ``grid_size**2 - size - 1``: 17 of 81 by default) while
    its comment says ``size``; this takes the comment's count."""
    size = int(grid_size**2 * subset_percent)
    if size < 1:
        raise InputError(f"subset_percent={subset_percent} switches off no cell of a {grid_size}x{grid_size} grid")
    u = jax.random.uniform(key, (samples, grid_size**2))
    return jnp.argsort(jnp.argsort(u, axis=-1), axis=-1) < size


def _mu_checks(shape: tuple[int, ...], grid_size: int, subset_percent: float, samples: int) -> tuple[int, float, int]:
    grid_size, samples = positive_int(grid_size, "grid_size"), positive_int(samples, "samples")
    if grid_size > min(shape[:2]):
        raise InputError(f"grid_size must be at most the image's side {min(shape[:2])}, got {grid_size}")
    return grid_size, real(subset_percent, "subset_percent", above=0.0, at_most=1.0), samples


def mu_fidelity_masks(key: Array, shape: tuple[int, ...], *, grid_size: int = 9, subset_percent: float = 0.2,
                      samples: int = 200) -> Array:
    """``bool [samples, H, W]``: the subsets ``mu_fidelity`` switches off for an image of ``shape``
    (``[H, W]`` or ``[H, W, C]``) with the same ``key`` and settings (True: set to the baseline)."""
    grid_size, subset_percent, samples = _mu_checks(tuple(shape), grid_size, subset_percent, samples)
    return _subsets(key, grid_size, subset_percent, samples)[:, _grid(shape[0], shape[1], grid_size)]


def _mu_draws(key: Array, x: Array, grid_size: int, subset_percent: float, samples: int,
              baseline: float | str | Array) -> tuple[Array, Array]:
    """``(cells bool [samples, grid_size**2], fill [H, W, C])``: everything ``mu_fidelity`` draws
    from ``key`` (the subsets, and the baseline from ``fold_in(key, 1)`` where it is random)."""
    return _subsets(key, grid_size, subset_percent, samples), substrate(x, baseline, jax.random.fold_in(key, 1))


def mu_fidelity_draws(key: Array, x: Array, *, grid_size: int = 9, subset_percent: float = 0.2, samples: int = 200,
                      baseline: float | str | Array = 0.0) -> tuple[Array, Array]:
    """``(masks bool [samples, H, W], fill [H, W, C])``: what ``mu_fidelity`` draws for the image
    ``x [H, W, C]`` with image key ``key`` (``jaxplain.evaluate_keys``) and the same settings.
    Sample ``i`` is ``where(masks[i][..., None], fill, x)``; ``fill`` is the baseline image (random
    only for ``"uniform"``). To replay in Quantus' ``FaithfulnessCorrelation``, hand it
    ``flatnonzero`` of each mask over ``[C, H, W]`` as its subsets and ``fill`` as its baseline."""
    grid_size, subset_percent, samples = _mu_checks(x.shape, grid_size, subset_percent, samples)
    cells, fill = _mu_draws(key, x, grid_size, subset_percent, samples, baseline)
    return cells[:, _grid(x.shape[0], x.shape[1], grid_size)], fill


@better("higher")
@per_image(attribution=None, baseline=3)
@counts_images(forward_only=True)
def mu_fidelity(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
                key: Array | None = None, grid_size: int = 9, subset_percent: float = 0.2, samples: int = 200,
                baseline: float | str | Array = 0.0, score: str = "logit", correlation: str = "pearson",
                chunk: int | None = 16) -> dict[str, Array]:
    """Mu-fidelity (Bhatt et al. 2020, with Xplique's ``MuFidelity`` defaults): ``samples`` times,
    a random ``subset_percent`` of the cells of a ``grid_size`` x ``grid_size`` grid (nearest
    upsampled to pixels; ``mu_fidelity_masks``) is set to ``baseline`` (a number, ``"black"``,
    ``"blur"``, ``"uniform"`` noise drawn from ``fold_in(key, 1)``, or an ``[H, W, C]`` array;
    the subsets and the fill: ``mu_fidelity_draws``). ``"drops"`` ``[samples]``: ``f(x) - f(x_S)``, ``f`` the target's logit
    (``score="probability"``: its softmax); ``"sums"`` ``[samples]``: the attribution summed over
    ``S`` (all channels); ``"score"``: their Pearson correlation, as the paper and Quantus'
    ``FaithfulnessCorrelation`` (``correlation="spearman"``: Spearman's, ties averaged, as
    Xplique computes it), 0 where either is constant (Xplique's rule for a NaN). Random through
    ``key`` (required)."""
    key = require_key(key, "mu_fidelity")
    grid_size, subset_percent, samples = _mu_checks(x.shape, grid_size, subset_percent, samples)
    labels = _grid(x.shape[0], x.shape[1], grid_size)
    off, fill = keep(lambda: _mu_draws(key, x, grid_size, subset_percent, samples, baseline))  # once per host loop
    sums = off.astype(x.dtype) @ region_sums(attribution_map(attribution, x), labels, grid_size**2)
    off = jnp.concatenate([jnp.zeros((1, grid_size**2), bool), off])  # item 0: x itself
    values = scores_along(scorer(apply, params, target, score),
                          lambda i: jnp.where(off[i][labels][..., None], fill, x), samples + 1, chunk)
    drops = values[0] - values[1:]
    r = correlate(sums, drops, correlation)
    return {"score": jnp.where(jnp.isnan(r), 0.0, r), "drops": drops, "sums": sums}
