"""The faithfulness metrics against independent references on the same inputs: plain NumPy loops
written from the papers (and the RISE authors' ``CausalMetric``) scored by the torch twin of the
tiny VGG, Quantus 0.6 on that torch twin, and known answers on linear models.

Tolerances: jaxplain and the torch twin compute the same float32 network in different orders,
~1e-6 apart on probabilities and logits of O(1); curves and their areas are compared at
``TOL = 1e-5`` absolute. Correlations of 200 (or 50) such values at ``CORR_TOL = 1e-4``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quantus
import torch
from scipy import ndimage, stats

import jaxplain
from jaxplain import baselines
from jaxplain.metrics.similarity import average_ranks, correlate
from jaxplain.metrics.faithfulness import mu_fidelity, mu_fidelity_masks, region_perturbation
from tests.conftest import tiny_pair

TOL = 1e-5
CORR_TOL = 1e-4
H = W = 32


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The torch twin runs hundreds of tiny forward passes: one thread is ~20x faster on a busy
    2-core machine than two spinning threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=3)


@pytest.fixture(scope="module")
def data():
    """Two images, continuous attribution maps (no ties), two targets."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, H, W, 3)).astype(np.float32)
    a = rng.normal(size=(2, H, W)).astype(np.float32)
    return x, a, np.array([1, 7])


def torch_scores(net, images: np.ndarray, target: int, score: str = "probability") -> np.ndarray:
    """The torch twin's target probability (or logit) of NHWC ``images``."""
    with torch.no_grad():
        out = net(torch.tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
    return (out.softmax(-1) if score == "probability" else out)[:, target].numpy()


def _linear_apply(params, x, taps=None, relu=None):
    return params["w"] @ x.reshape(-1) + params["b"], {}


def linear_model(w: np.ndarray, b: np.ndarray) -> jaxplain.Model:
    """``logits = W @ x.ravel() + b``: the metrics' known answers are sums of ``w * x``. One
    ``apply`` for all, so models of the same shapes share compiled programs."""
    return jaxplain.Model(apply=_linear_apply, params={"w": jnp.asarray(w), "b": jnp.asarray(b)}, layers=(),
                          preprocess=None, input_size=None, name="linear")


# ------------------------------------------------------------------ deletion and insertion


def rise_gkern(klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """The RISE code's ``gkern``: a 2-D impulse through SciPy's Gaussian, one kernel per channel."""
    impulse = np.zeros((klen, klen))
    impulse[klen // 2, klen // 2] = 1
    kern = np.zeros((3, 3, klen, klen), np.float32)
    kern[0, 0] = kern[1, 1] = kern[2, 2] = ndimage.gaussian_filter(impulse, nsig)
    return torch.from_numpy(kern)


def rise_causal(net, x: np.ndarray, a: np.ndarray, target: int, mode: str, steps: int, fill: float) -> tuple:
    """The RISE code's ``CausalMetric.single_run``, as a NumPy loop: ``step = ceil(HW / steps)``
    pixels (all channels) per iteration in attribution order (stable argsort of ``-a``); the
    curve of the target's probability and ``(sum - a0/2 - an/2) / n``."""
    hw = H * W
    step = -(-hw // steps)
    n = (hw + step - 1) // step
    if mode == "deletion":
        start, finish = x.copy(), np.full_like(x, fill)
    else:
        with torch.no_grad():
            blurred = torch.nn.functional.conv2d(torch.tensor(x.transpose(2, 0, 1)[None]), rise_gkern(), padding=5)
        start, finish = blurred[0].numpy().transpose(1, 2, 0).copy(), x.copy()
    order = np.argsort(-a.reshape(-1), kind="stable")
    curve = []
    for i in range(n + 1):
        curve.append(torch_scores(net, start[None], target)[0])
        if i < n:
            ids = order[step * i: step * (i + 1)]
            start.reshape(hw, 3)[ids] = finish.reshape(hw, 3)[ids]
    curve = np.array(curve)
    return curve, (curve.sum() - curve[0] / 2 - curve[-1] / 2) / n


CAUSAL = {"deletion": ("deletion", {}), "deletion_10": ("deletion", {"steps": 10, "baseline": 0.5}),
          "insertion": ("insertion", {})}


@pytest.fixture(scope="module")
def causal(pair, data):
    """``evaluate`` of each ``CAUSAL`` case (computed once: later tests reuse them)."""
    x, a, t = data
    return {name: jaxplain.evaluate(pair[1], x, t, a, mode, **settings) for name, (mode, settings) in CAUSAL.items()}


@pytest.mark.parametrize("name", list(CAUSAL))
def test_causal_matches_rise_loop(pair, data, causal, name):
    """Curve and AUC against the RISE algorithm run image by image on the torch twin (steps=10:
    103 pixels a step, the last step shorter)."""
    net = pair[0]
    x, a, t = data
    mode, settings = CAUSAL[name]
    out = causal[name]
    for i in range(2):
        curve, area = rise_causal(net, x[i], a[i], int(t[i]), mode, settings.get("steps", H), settings.get("baseline", 0.0))
        np.testing.assert_allclose(out["curve"][i], curve, atol=TOL, rtol=0)
        np.testing.assert_allclose(out["score"][i], area, atol=TOL, rtol=0)


def test_deletion_linear_known_auc():
    """A linear model whose per-pixel contributions ``w * x`` (channels summed) are 1 .. 16 in a
    shuffled order, one pixel a step, logits: after ``k`` steps the logit is ``b + (16-k)(17-k)/2``,
    so the area is ``b + (sum_m m(m+1)/2 - 136/2 - 0) / 16 = b + (816 - 68) / 16 = b + 46.75``."""
    rng = np.random.default_rng(0)
    v = rng.permutation(np.arange(1, 17)).astype(np.float32).reshape(4, 4)
    x = rng.uniform(0.5, 2.0, size=(1, 4, 4, 3)).astype(np.float32)
    share = rng.dirichlet(np.ones(3), size=(4, 4)).astype(np.float32)  # w * x splits v over channels
    w = np.zeros((2, 48), np.float32)
    w[1] = (v[..., None] * share / x[0]).reshape(-1)
    m = linear_model(w, np.array([0.0, 0.25], np.float32))
    attribution = w[1].reshape(4, 4, 3) * x[0]
    out = jaxplain.evaluate(m, x, 1, attribution[None], "deletion(steps=16, score='logit')")
    np.testing.assert_allclose(out["curve"][0], 0.25 + (16 - np.arange(17)) * (17 - np.arange(17)) / 2, atol=1e-4)
    np.testing.assert_allclose(out["score"][0], 0.25 + 46.75, atol=1e-4)


def quantus_fill(x: np.ndarray, quantus_baseline: float | str) -> np.ndarray:
    """Quantus' ``perturb_baseline`` as our per-image baseline ``[B, H, W, C]``: a number, or
    ``"black"``, which Quantus takes as each image's minimum (not the black image)."""
    value = x.min(axis=(1, 2, 3)) if quantus_baseline == "black" else np.full(len(x), quantus_baseline)
    return np.broadcast_to(value[:, None, None, None], x.shape).astype(np.float32)


@pytest.mark.parametrize("quantus_baseline", [0.0, "black"])
def test_deletion_matches_quantus_pixel_flipping(pair, data, quantus_baseline):
    """Quantus' ``PixelFlipping`` (softmax on, normalise and abs off) on 24x24 crops with
    ``features_in_step = 3 * 24``: the map broadcast over channels puts each pixel's three copies
    next to each other in its ranking of all C*H*W values, so each step flips 24 whole pixels, as
    ours (Quantus asserts that the step divides H*W, not C*H*W, hence 24x24). Quantus' curve has
    no point for the intact image: it is ours from step 1. Its AUC is ``np.trapz`` with dx = 1
    over those 24 points; ours is the RISE area over 25 points on [0, 1], so ``24 * ours =
    quantus + (c0 + c1) / 2``. Quantus' ``"black"`` is the image's minimum (one number per image),
    not the black image: ours reproduces it with that constant as the baseline."""
    net, m = pair
    x, a, t = (v[:, 4:28, 4:28] if v.ndim > 1 else v for v in data)  # Quantus wants 3 * 24 | 24 * 24
    ours = jaxplain.evaluate(m, x, t, a, "deletion", baseline=quantus_fill(x, quantus_baseline))
    metric = quantus.PixelFlipping(features_in_step=3 * 24, perturb_baseline=quantus_baseline, normalise=False,
                                   abs=False, disable_warnings=True)
    curves = np.array(metric(model=net, x_batch=x.transpose(0, 3, 1, 2), y_batch=t, a_batch=a[:, None],
                             softmax=True, device="cpu"))
    np.testing.assert_allclose(ours["curve"][:, 1:], curves, atol=TOL, rtol=0)
    c = np.asarray(ours["curve"])
    np.testing.assert_allclose(24 * np.asarray(ours["score"]), np.trapezoid(curves, axis=1) + (c[:, 0] + c[:, 1]) / 2,
                               atol=24 * TOL)


# ------------------------------------------------------------------ region perturbation


def centred_patches(h: int, w: int, p: int) -> list[tuple[slice, slice]]:
    """Patches of side ``p`` on a grid padded by ``(-h) % p`` split floor-first (as Quantus pads),
    cut at the image's border, row-major."""
    oh, ow = (-h % p) // 2, (-w % p) // 2
    rows = range(0, h + oh, p)
    cols = range(0, w + ow, p)
    return [(slice(max(r - oh, 0), r - oh + p), slice(max(c - ow, 0), c - ow + p)) for r in rows for c in cols]


def aopc_loop(net, x: np.ndarray, a: np.ndarray, target: int, p: int, regions: int, fill: np.ndarray,
              order: str = "morf") -> tuple:
    """Samek et al. 2017, as a loop: patches ranked by summed relevance, replaced one by one by
    ``fill``; the curve ``f(x) - f(x_k)``, k = 0..L, and AOPC = its mean."""
    patches = centred_patches(H, W, p)
    sums = np.array([a[s].sum() for s in patches])
    ranked = np.argsort(-sums if order == "morf" else sums, kind="stable")[:regions]
    xk = x.copy()
    f0 = torch_scores(net, x[None], target)[0]
    curve = [0.0]
    for j in ranked:
        xk[patches[j]] = fill[patches[j]]
        curve.append(f0 - torch_scores(net, xk[None], target)[0])
    return np.array(curve), np.mean(curve)


REGION = {"uniform": "region_perturbation(patch=6, regions=20, baseline='uniform')",
          "lerf": "region_perturbation(patch=6, regions=12, baseline=0.3, order='lerf')"}


@pytest.fixture(scope="module")
def region(pair, data):
    x, a, t = data
    return {name: jaxplain.evaluate(pair[1], x, t, a, spec, key=4 if "uniform" in spec else None)
            for name, spec in REGION.items()}


def test_region_perturbation_matches_samek_loop(pair, data, region):
    """Patch 6 on 32x32 (a padded grid, 36 patches, cut border patches), 20 regions, the
    ``"uniform"`` baseline: the loop replaces with the same noise image, drawn from the per-image
    key as ``evaluate`` makes it (``baselines``' policy: ``fold_in(named(key, name, settings), i)``);
    also ``"lerf"`` with a constant."""
    net = pair[0]
    x, a, t = data
    key = baselines.named(4, "region_perturbation", dict(patch=6, regions=20, baseline="uniform"))
    for i in range(2):
        noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), x[i].shape, jnp.float32, x[i].min(), x[i].max()))
        curve, aopc = aopc_loop(net, x[i], a[i], int(t[i]), 6, 20, noise)
        np.testing.assert_allclose(region["uniform"]["curve"][i], curve, atol=TOL, rtol=0)
        np.testing.assert_allclose(region["uniform"]["score"][i], aopc, atol=TOL, rtol=0)
        curve, aopc = aopc_loop(net, x[i], a[i], int(t[i]), 6, 12, np.full_like(x[i], 0.3), "lerf")
        np.testing.assert_allclose(region["lerf"]["curve"][i], curve, atol=TOL, rtol=0)
        np.testing.assert_allclose(region["lerf"]["score"][i], aopc, atol=TOL, rtol=0)


@pytest.mark.parametrize("patch, order, quantus_baseline", [(4, "morf", 0.0), (4, "morf", "black"), (6, "lerf", 0.3)])
def test_region_perturbation_matches_quantus(pair, data, region, patch, order, quantus_baseline):
    """Quantus' ``RegionPerturbation`` (softmax on, normalise and abs off; patch 6 pads 32 to 36
    as ours). Its result per image is ``f(x) - f(x_k)`` for k = 1..L: ours from k = 1 (ours
    starts with the 0 of k = 0, which AOPC's 1/(L+1) mean counts: ``(L + 1) * ours = sum of
    Quantus' curve``). Quantus' ``"black"`` is the image's minimum: ours with that constant."""
    net, m = pair
    x, a, t = data
    regions = 12
    if order == "lerf":
        ours = region["lerf"]
    else:
        ours = jaxplain.evaluate(m, x, t, a, f"region_perturbation(patch={patch}, regions={regions})",
                                 baseline=quantus_fill(x, quantus_baseline))
    metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, order=order,
                                        perturb_baseline=quantus_baseline, normalise=False, abs=False,
                                        disable_warnings=True)
    curves = np.array(metric(model=net, x_batch=x.transpose(0, 3, 1, 2), y_batch=t, a_batch=a[:, None],
                             softmax=True, device="cpu"))
    np.testing.assert_allclose(ours["curve"][:, 1:], curves, atol=TOL, rtol=0)
    np.testing.assert_allclose((regions + 1) * np.asarray(ours["score"]), curves.sum(1), atol=(regions + 1) * TOL)


def test_region_perturbation_linear_known_aopc():
    """Linear model, logits, baseline 0, attribution = w * x: removing patch j lowers the logit by
    its contribution ``s_j``; with the patches' sums sorted down, AOPC = mean over k = 0..L of
    ``s_(1) + ... + s_(k)``; regions beyond the 4 patches are capped at 4."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    w = rng.normal(size=(3, 48)).astype(np.float32)
    m = linear_model(w, np.zeros(3, np.float32))
    attribution = (w[2].reshape(4, 4, 3) * x[0])
    s = attribution.sum(-1).reshape(2, 2, 2, 2).sum((1, 3)).reshape(-1)
    drops = np.concatenate([[0.0], np.cumsum(np.sort(s)[::-1])])
    out = jaxplain.evaluate(m, x, 2, attribution[None], "region_perturbation(patch=2, baseline=0.0, score='logit')")
    np.testing.assert_allclose(out["curve"][0], drops, atol=1e-5)
    np.testing.assert_allclose(out["score"][0], drops.mean(), atol=1e-5)


# ------------------------------------------------------------------ mu-fidelity


def test_mu_fidelity_masks_are_nearest_upsampled_subsets():
    """Every sample switches off exactly ``int(81 * 0.2) = 16`` cells of the 9x9 grid; pixels get
    their cell by nearest-neighbour upsampling with half-pixel centres (torch's ``nearest-exact``,
    the rule of ``tf.image.resize(..., "nearest")`` Xplique uses). On 36x36 each cell is 4x4."""
    key = jax.random.key(0)
    masks = np.asarray(mu_fidelity_masks(key, (36, 36), samples=50))
    assert masks.shape == (50, 36, 36) and masks.dtype == bool
    assert (masks.reshape(50, -1).sum(1) == 16 * 16).all()
    odd = np.asarray(mu_fidelity_masks(key, (32, 32, 3), samples=50))
    cells = masks[:, ::4, ::4].astype(np.float32)
    up = torch.nn.functional.interpolate(torch.tensor(cells[:, None]), size=(32, 32), mode="nearest-exact")
    np.testing.assert_array_equal(odd, up[:, 0].numpy() > 0.5)
    assert not (masks == masks[:1]).all()  # the samples differ


MU = "mu_fidelity(grid_size=8, samples=50, baseline=0.2)"


@pytest.fixture(scope="module")
def mu(pair, data):
    x, a, t = data
    return jaxplain.evaluate(pair[1], x, t, a, MU, key=9)


def test_mu_fidelity_matches_numpy_loop(pair, data, mu):
    """The same subsets (``mu_fidelity_masks`` with the key ``evaluate`` gives image i,
    ``fold_in(named(key, "mu_fidelity", settings), i)``); drops by the torch twin (logits), subset sums in NumPy, Pearson by
    NumPy's ``corrcoef``. (The default 9x9 grid, cells of uneven size, runs in the linear tests.)"""
    net = pair[0]
    x, a, t = data
    key = baselines.named(9, "mu_fidelity", dict(grid_size=8, samples=50, baseline=0.2))
    for i in range(2):
        masks = np.asarray(mu_fidelity_masks(jax.random.fold_in(key, i), (H, W), grid_size=8, samples=50))
        drops = torch_scores(net, x[i][None], int(t[i]), "logit")[0] - torch_scores(
            net, np.where(masks[..., None], np.float32(0.2), x[i]), int(t[i]), "logit")
        sums = (masks * a[i]).sum((1, 2))
        np.testing.assert_allclose(mu["drops"][i], drops, atol=TOL, rtol=0)
        np.testing.assert_allclose(mu["sums"][i], sums, atol=1e-4, rtol=0)
        np.testing.assert_allclose(mu["score"][i], np.corrcoef(sums, drops)[0, 1], atol=CORR_TOL)


def test_correlations_match_scipy():
    """``correlate``: Pearson as ``scipy.stats.pearsonr``; Spearman as ``spearmanr``, ties given
    their average rank (values drawn from 5 levels, so most are tied)."""
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, 200).astype(np.float32), rng.normal(size=200).astype(np.float32)
    b = b + a
    ours = jax.jit(lambda u, v: (correlate(u, v, "pearson"), correlate(u, v, "spearman"), average_ranks(u)))(a, b)
    np.testing.assert_allclose(ours[0], stats.pearsonr(a, b)[0], atol=1e-6)
    np.testing.assert_allclose(ours[1], stats.spearmanr(a, b)[0], atol=1e-6)
    np.testing.assert_array_equal(ours[2], stats.rankdata(a) - 1)


def test_mu_fidelity_matches_quantus_faithfulness_correlation(pair, data, mu, monkeypatch):
    """Quantus' ``FaithfulnessCorrelation`` is the same measure on random subsets of single
    values (224 of C*H*W, one forward pass per subset, logits, Pearson). Fed our subsets (grid 8
    on 32x32: 12 cells of 4x4 pixels, all channels: 576 values each), by replacing the
    ``np.random.choice`` it draws them with, its per-image correlation is ours."""
    net = pair[0]
    x, a, t = data
    key, samples = baselines.named(9, "mu_fidelity", dict(grid_size=8, samples=50, baseline=0.2)), 50
    masks = [np.asarray(mu_fidelity_masks(jax.random.fold_in(key, i), (H, W), grid_size=8, samples=samples))
             for i in range(2)]
    chw = [[np.flatnonzero(np.broadcast_to(mk, (3, H, W))) for mk in ms] for ms in masks]
    queue = iter([chw[i][r] for r in range(samples) for i in range(2)])  # Quantus' order: run, then image
    monkeypatch.setattr(np.random, "choice", lambda n, size, replace=True: next(queue))
    metric = quantus.FaithfulnessCorrelation(nr_runs=samples, subset_size=576, perturb_baseline=0.2, normalise=False,
                                             abs=False, return_aggregate=False, disable_warnings=True)
    scores = metric(model=net, x_batch=x.transpose(0, 3, 1, 2), y_batch=t, a_batch=a[:, None], softmax=False,
                    device="cpu")
    np.testing.assert_allclose(mu["score"], scores, atol=CORR_TOL)


LIN = 20  # the 9x9 grid on 20x20: cells of 2 or 3 pixels a side


@pytest.fixture(scope="module")
def lin():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, LIN, LIN, 3)).astype(np.float32)
    w = rng.normal(size=(2, LIN * LIN * 3)).astype(np.float32)
    return x, w, rng.normal(size=(16, LIN, LIN)).astype(np.float32)


def test_mu_fidelity_linear_known_answers(lin):
    """A linear model with its exact contributions ``w * x`` and baseline 0: each drop equals the
    attribution's sum over the subset, so both correlations are 1. Random attributions: about 0
    (16 images x 200 samples: each ~N(0, 0.07), their mean within 0.08 of 0)."""
    x, w, noise = lin
    m = linear_model(w, np.array([0.1, -0.2], np.float32))
    exact = w[0].reshape(LIN, LIN, 3) * x
    for kind in ("pearson", "spearman"):
        out = jaxplain.evaluate(m, x, 0, exact, f"mu_fidelity(correlation={kind!r})", key=0, chunk=None)
        np.testing.assert_allclose(out["score"], 1.0, atol=1e-5)
        np.testing.assert_allclose(out["drops"], out["sums"], atol=1e-4)
    random = jaxplain.evaluate(m, x, 0, noise, "mu_fidelity", key=1, chunk=None)
    assert abs(float(np.mean(random["score"]))) < 0.08


def test_pearson_of_a_constant_is_zero(lin):
    """Xplique's rule: a NaN correlation (no variation in the drops) counts as 0. A model whose
    target logit ignores the input gives constant drops."""
    x, w, noise = lin
    m = linear_model(np.zeros_like(w), np.zeros(2, np.float32))
    out = jaxplain.evaluate(m, x, 0, noise, "mu_fidelity", key=0, chunk=None)
    assert (np.asarray(out["score"]) == 0.0).all()


# ------------------------------------------------------------------ batching, chunks, bad input


@pytest.mark.parametrize("which", ["deletion", "region", "mu"])
def test_batch_and_chunk_independence(pair, data, causal, region, mu, which):
    """One image per call and chunks that split the forward passes over two host-loop calls give
    the results of the whole batch in one call."""
    x, a, t = data
    whole, spec, key, n = {"deletion": (causal["deletion"], "deletion", None, 33),
                           "region": (region["uniform"], REGION["uniform"], 4, 21), "mu": (mu, MU, 9, 61)}[which]
    keyed = {} if key is None else {"key": key}
    parts = jaxplain.evaluate(pair[1], x, t, a, spec, **keyed, batch_size=1, chunk=n // 2 + 1)
    assert whole.keys() == parts.keys()
    for k in whole:
        np.testing.assert_allclose(whole[k], parts[k], atol=1e-6, rtol=0)


BAD = [
    ("deletion", {"steps": 0}, "steps must be a positive int"),
    ("insertion", {"steps": 2.5}, "steps must be a positive int"),
    ("deletion", {"score": "prob"}, "score must be one of"),
    ("deletion", {"baseline": "grey"}, "unknown baseline 'grey'; a baseline is a number"),
    ("deletion", {"baseline": np.zeros((5, 5, 3), np.float32)}, "baseline must be a number or an array"),
    ("deletion", {"baseline": "uniform"}, "baseline='uniform' is random: pass key"),
    ("region_perturbation", {"patch": 0}, "patch must be a positive int"),
    ("region_perturbation", {"patch": 40}, "patch must be at most the image's side 32"),
    ("region_perturbation", {"regions": 0}, "regions must be a positive int"),
    ("region_perturbation", {"order": "random"}, "order must be one of"),
    ("region_perturbation", {"baseline": "uniform"}, "baseline='uniform' is random: pass key"),
    ("region_perturbation", {"score": "prob"}, "score must be one of"),
    ("mu_fidelity", {}, "mu_fidelity is random: pass key"),
    ("mu_fidelity", {"key": 0, "grid_size": 0}, "grid_size must be a positive int"),
    ("mu_fidelity", {"key": 0, "grid_size": 33}, "grid_size must be at most the image's side 32"),
    ("mu_fidelity", {"key": 0, "subset_percent": 0.0}, "subset_percent must be a number > 0.0"),
    ("mu_fidelity", {"key": 0, "subset_percent": 1.5}, "subset_percent must be a number > 0.0 and <= 1.0"),
    ("mu_fidelity", {"key": 0, "grid_size": 2}, "switches off no cell of a 2x2 grid"),
    ("mu_fidelity", {"key": 0, "samples": 0}, "samples must be a positive int"),
    ("mu_fidelity", {"key": 0, "correlation": "kendall"}, "correlation must be one of"),
    ("mu_fidelity", {"key": 0, "baseline": "blurry"}, "unknown baseline 'blurry'; a baseline is a number"),
]


@pytest.mark.parametrize("metric, settings, message", BAD)
def test_bad_settings(pair, data, metric, settings, message):
    _, m = pair
    x, a, t = data
    with pytest.raises(jaxplain.InputError, match=message):
        jaxplain.evaluate(m, x, t, a, metric, **settings)


@pytest.mark.parametrize("metric", ["deletion", "insertion", "region_perturbation", "mu_fidelity"])
def test_bad_attributions(pair, data, metric):
    """A layer-sized or NaN attribution is refused by ``evaluate``; a wrong shape also by the
    metric called directly."""
    _, m = pair
    x, a, t = data
    key = {"key": 0} if metric == "mu_fidelity" else {}
    with pytest.raises(jaxplain.InputError, match=r"attributions must be \[B, H, W, C\]"):
        jaxplain.evaluate(m, x, t, a[:, :16, :16], metric, **key)
    nan = a.copy()
    nan[1, 3, 4] = np.nan
    with pytest.raises(jaxplain.InputError, match=r"attributions of images \[1\] contain NaN"):
        jaxplain.evaluate(m, x, t, nan, metric, **key)
    fn = jaxplain.METRICS[metric]
    extra = {"key": jax.random.key(0)} if metric == "mu_fidelity" else {}
    extra |= {"baseline": 0.0} if metric == "region_perturbation" else {}
    with pytest.raises(jaxplain.InputError, match=r"attribution must be \[H, W, C\] = \(32, 32, 3\) or \[H, W\]"):
        fn(m.apply, m.params, jnp.asarray(x[0]), 1, attribution=jnp.zeros((16, 16)), **extra)


def test_black_needs_preprocessing(data):
    """``"black"`` (region perturbation's default) is the model's preprocessed black image: a
    direct call, or a model without ``preprocess``, is told what to pass instead."""
    x, a, _ = data
    m = linear_model(np.zeros((2, H * W * 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(jaxplain.InputError, match="baseline='black' needs the model's preprocessing"):
        region_perturbation(m.apply, m.params, jnp.asarray(x[0]), 0, attribution=jnp.asarray(a[0]))
    with pytest.raises(jaxplain.InputError, match="baseline='black' needs linear's preprocess"):
        jaxplain.evaluate(m, x, 0, a, "region_perturbation")
    assert "mu_fidelity" in jaxplain.METRICS and jaxplain.METRICS["mu_fidelity"] is mu_fidelity
