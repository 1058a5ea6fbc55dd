"""The surrogate family against independent references: Captum's ``FeatureAblation`` and
``ShapleyValues`` on the torch twin of the tiny VGG with the same feature masks, Shapley values by
brute force from the paper's formula (every subset, the torch twin in float64), a model exactly
linear in its segment indicators (closed-form coefficients), and the ``lime`` package on the very
coalitions it drew."""

import copy
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum import attr as ca

import jaxplain
from tests.compare import assert_close, to_torch
from tests.conftest import tiny_pair

pytestmark = pytest.mark.usefixtures("quick_threefry", "one_torch_thread")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for this module's Captum and brute-force references: on the shared,
    loaded 2-core machine, Captum's ShapleyValues over 5 features took 13.7 s on torch's default
    2 threads and 0.9 s on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(ours, ref, tol: float, what: str) -> None:
    """``assert_close`` (max |ours - ref| <= tol * max |ref|), printing the relative error reached."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    print(f"{what}: max |error| / max |reference| = {np.abs(ours - ref).max() / np.abs(ref).max():.2e}")
    assert_close(ours, ref, tol=tol)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=4)


def _pictures(n: int, seed: int, size: int = 32) -> np.ndarray:
    """``n`` uint8 pictures ``[n, size, size, 3]``: a few flat colour regions (a Voronoi tiling of
    random points, so scikit-image's SLIC finds irregular segments) with mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        points = rng.uniform(0, size, (7, 2))
        region = np.argmin((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2, -1)
        colours = rng.uniform(30, 225, (7, 3))
        out.append(colours[region] + rng.normal(0, 6, (size, size, 3)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _voronoi_labels(m: int, seed: int, size: int = 32) -> np.ndarray:
    """An irregular label map ``[size, size]`` with exactly the labels ``0 .. m - 1``: each pixel's
    nearest of ``m`` random points (drawn again until every point owns a pixel)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    while True:
        points = rng.uniform(0, size, (m, 2))
        labels = np.argmin((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2, -1)
        if len(np.unique(labels)) == m:
            return labels.astype(np.int32)


def _grid_labels(rows: int, cols: int, size: int = 32) -> np.ndarray:
    return (np.arange(size)[:, None] * rows // size * cols + np.arange(size)[None, :] * cols // size).astype(np.int32)


# ---------------------------------------------------------------- feature ablation against Captum


@pytest.mark.parametrize("kind,baseline", [("grid", 0.0), ("slic", 0.0), ("slic", -0.7), ("grid", "array")])
def test_feature_ablation_matches_captum(pair, kind, baseline):
    """Ours against Captum's ``FeatureAblation`` (target logits) on the torch twin with the same
    feature mask, one per image ``[B, 1, H, W]`` broadcast over the channels: a 4x4 grid, or
    SLIC's irregular segments of each picture; baseline 0 (both defaults), a non-zero number, or
    one array per image. Both float32 from the same weights, so they agree to 1e-5 of the largest
    drop (measured: 6e-7 to 2.4e-6)."""
    net, m = pair
    pictures = _pictures(3, seed=1)
    xs = np.asarray(m.preprocess(pictures), np.float32)
    labels = (np.broadcast_to(_grid_labels(4, 4), (3, 32, 32)) if kind == "grid"
              else jaxplain.segments(pictures, "slic(n_segments=12)"))
    assert kind == "grid" or len(np.unique(labels[0])) > 4
    targets = [1, 6, 3]
    if baseline == "array":
        baseline = np.random.default_rng(2).normal(size=xs.shape).astype(np.float32)
        captum_baseline = to_torch(baseline).detach()
    else:
        captum_baseline = baseline
    with torch.no_grad():
        want = ca.FeatureAblation(net).attribute(
            to_torch(xs).detach(), baselines=captum_baseline, target=targets,
            feature_mask=torch.tensor(labels[:, None].astype(np.int64)), perturbations_per_eval=8).numpy()
    assert np.array_equal(want, np.broadcast_to(want[:, :1], want.shape))  # Captum paints every channel alike
    got = jaxplain.explain(m, xs, targets, "feature_ablation", segments=labels, baseline=baseline)
    _close(got, want[:, 0], 1e-5, f"feature_ablation {kind} baseline {np.ndim(baseline) and 'array' or baseline}")


# ---------------------------------------------------------------- a model linear in its segment indicators


def _segment_linear_model(labels: np.ndarray, c: np.ndarray, bias: float) -> jaxplain.Model:
    """``logits = [t, -t]`` with ``t = bias + sum_s c_s * mean over segment s of x[..., 0]``:
    with baseline 0 a coalition ``z`` of segments gives ``bias + sum_s c_s * mean_s(x[..., 0]) * z_s``,
    exactly linear in the indicators ``z``."""
    m = len(c)
    flat = jnp.asarray(labels.reshape(-1))
    size = jnp.asarray(np.bincount(labels.reshape(-1), minlength=m), jnp.float32)

    def apply(params, x, taps=None, relu=None):
        means = jax.ops.segment_sum(x[..., 0].reshape(-1), flat, num_segments=m) / size
        t = params["bias"] + jnp.sum(params["c"] * means)
        return jnp.stack([t, -t]), {}

    return jaxplain.Model(apply=apply, params={"c": jnp.asarray(c, jnp.float32), "bias": jnp.float32(bias)},
                          layers=(), preprocess=lambda u: u.astype(np.float32) / 255, input_size=None,
                          name="segment-linear")


@pytest.fixture(scope="module")
def linear_case():
    """16 irregular segments, random coefficients and a random positive image: the exact
    coefficients are ``c_s * mean_s(x[..., 0])``, the intercept ``bias``."""
    rng = np.random.default_rng(7)
    labels = _voronoi_labels(16, seed=3)
    c = rng.normal(size=16)
    x = rng.uniform(0.2, 1.0, (1, 32, 32, 3)).astype(np.float32)
    flat = labels.reshape(-1)
    means = np.bincount(flat, x[0, ..., 0].reshape(-1).astype(np.float64)) / np.bincount(flat)
    return _segment_linear_model(labels, c, 0.4), x, labels, c * means


def test_kernel_shap_sampled_recovers_a_linear_model(linear_case):
    """Sampled KernelSHAP (500 coalitions of 16 segments) on a model exactly linear in the
    segment indicators: its constrained least squares fits without residual, so it returns the
    coefficients exactly (float32: within 1e-4 of max |c|; measured 7e-7); the intercept is
    f(baseline) = bias and R^2 = 1."""
    m, x, labels, want = linear_case
    fit = jaxplain.explain(m, x, 0, "kernel_shap", segments=labels, samples=500, exact=False, key=0,
                           return_fit=True, chunk=500)
    _close(fit.coefficients[0], want, 1e-4, "kernel_shap on the linear model")
    _close(fit.attribution[0], want[labels], 1e-4, "kernel_shap's map on the linear model")
    np.testing.assert_allclose(fit.intercept[0], 0.4, atol=1e-5)
    np.testing.assert_allclose(fit.r2[0], 1.0, atol=1e-4)


def test_lime_recovers_a_linear_model(linear_case):
    """LIME (500 coalitions) with ``alpha=0`` (no ridge) and ``kernel_width=1e6`` (every weight 1)
    is ordinary least squares with an intercept: on a model exactly linear in the segment
    indicators it returns the coefficients (within 1e-4 of max |c|; measured 5e-7) and the
    intercept ``bias``, with R^2 = 1."""
    m, x, labels, want = linear_case
    fit = jaxplain.explain(m, x, 0, "lime", segments=labels, samples=500, alpha=0.0, kernel_width=1e6,
                           baseline=0.0, score="logit", key=1, return_fit=True, chunk=500)
    _close(fit.coefficients[0], want, 1e-4, "lime on the linear model")
    np.testing.assert_allclose(fit.intercept[0], 0.4, atol=1e-4)
    np.testing.assert_allclose(fit.r2[0], 1.0, atol=1e-4)


# ---------------------------------------------------------------- exact Shapley values of the tiny VGG


def _brute_shapley(net, x: np.ndarray, baseline: np.ndarray, labels: np.ndarray, target: int) -> np.ndarray:
    """Shapley values ``[M]`` of segment players from the definition
    ``phi_i = sum_{S without i} |S|! (M - |S| - 1)! / M! (v(S + i) - v(S))``, with ``v(S)`` the
    target logit of the torch twin in float64 on ``x`` with the segments outside ``S`` set to ``baseline``."""
    m = int(labels.max()) + 1
    subsets = list(itertools.product((0, 1), repeat=m))  # subsets[j][i]: player i in subset j
    keep = np.array([np.asarray(s)[labels] for s in subsets], bool)[..., None]  # [2^M, H, W, 1]
    images = np.where(keep, x.astype(np.float64), baseline.astype(np.float64))
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        v = net64(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))[:, target].numpy()
    value = dict(zip(subsets, v))
    phi = np.zeros(m)
    for s in subsets:
        k = sum(s)
        for i in range(m):
            if not s[i]:
                with_i = s[:i] + (1,) + s[i + 1:]
                phi[i] += math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) * (value[with_i] - value[s])
    return phi


@pytest.fixture(scope="module")
def shap_case(pair):
    """Two images and 8 segments each (a 2x4 grid, and an irregular Voronoi map), a non-zero
    array baseline for the second, the exact Shapley values by brute force, and ours exact."""
    net, m = pair
    xs = np.asarray(m.preprocess(_pictures(2, seed=5)), np.float32)
    labels = np.stack([_grid_labels(2, 4), _voronoi_labels(8, seed=9)])
    baselines = np.stack([np.zeros((32, 32, 3), np.float32),
                          np.random.default_rng(3).normal(0, 0.5, (32, 32, 3)).astype(np.float32)])
    targets = [2, 8]
    want = np.stack([_brute_shapley(net, xs[i], baselines[i], labels[i], targets[i]) for i in range(2)])
    return m, xs, labels, baselines, targets, want


def test_kernel_shap_exact_is_the_shapley_value(shap_case):
    """Exact KernelSHAP (all 2^8 coalitions; the default samples 2 M + 2048 >= 2^8) against the
    Shapley formula evaluated by brute force on the float64 torch twin: within 1e-5 of max |phi|
    (float32 forward passes; measured 6e-7). The fit's intercept is f(baseline) and the
    values add up to f(x) - f(baseline) (efficiency)."""
    m, xs, labels, baselines, targets, want = shap_case
    fit = jaxplain.explain(m, xs, targets, "kernel_shap", segments=labels, baseline=baselines, return_fit=True,
                           chunk=256)
    _close(fit.coefficients, want, 1e-5, "exact kernel_shap against brute force")
    _close(fit.attribution, np.take_along_axis(want, labels.reshape(2, -1), 1).reshape(2, 32, 32), 1e-5,
           "exact kernel_shap's map against brute force")
    logits = np.asarray(m(jnp.asarray(np.concatenate([xs, baselines]))), np.float64)
    f_x, f_base = logits[[0, 1], targets], logits[[2, 3], targets]
    np.testing.assert_allclose(np.asarray(fit.intercept), f_base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(want.sum(1), f_x - f_base, rtol=1e-5, atol=1e-5)


def test_kernel_shap_exact_matches_captum_shapley_values(pair):
    """Against Captum's ``ShapleyValues`` (every permutation of the features) on the torch twin,
    same feature masks, same baselines, target logits. 6 segments (a 2x3 grid, and an irregular
    6-label map): Captum's 6! = 720 permutations take seconds, 8! = 40320 would take minutes on
    the CPU (the 8-segment case is checked against brute force above). Ours in the default chunks
    of 16 coalitions (four of them). Both float32: within 1e-5 of max |phi| (measured 2e-6)."""
    net, m = pair
    xs = np.asarray(m.preprocess(_pictures(2, seed=6)), np.float32)
    labels = np.stack([_grid_labels(2, 3), _voronoi_labels(6, seed=4)])
    baselines = np.stack([np.zeros((32, 32, 3), np.float32), np.full((32, 32, 3), 0.3, np.float32)])
    targets = [4, 9]
    with torch.no_grad():
        want = ca.ShapleyValues(net).attribute(
            to_torch(xs).detach(), baselines=to_torch(baselines).detach(), target=targets,
            feature_mask=torch.tensor(labels[:, None].astype(np.int64)), perturbations_per_eval=64).numpy()
    assert np.array_equal(want, np.broadcast_to(want[:, :1], want.shape))
    got = jaxplain.explain(m, xs, targets, "kernel_shap", segments=labels, baseline=baselines)
    _close(got, want[:, 0], 1e-5, "exact kernel_shap against Captum ShapleyValues")


# Sampled KernelSHAP against the exact Shapley values: 4 runs (each image of shap_case with two
# keys), errors as a fraction of each image's max |phi|. Measured (quick threefry, key 0):
#   samples   max |error|   RMS error
#      64        0.444        0.140
#     512        0.078        0.028
#    4096        0.037        0.013
SAMPLE_SIZES = (64, 512, 4096)


def test_kernel_shap_sampling_converges_to_the_shapley_value(shap_case):
    """Sampled KernelSHAP (``exact=False``) at 64, 512 and 4096 coalitions of the 8 segments of
    shap_case, each image with two keys: the errors against the exact Shapley values shrink as
    Monte Carlo errors do, as 1/sqrt(n) (a factor 0.35 per step of 8x): the RMS error by at least
    0.7 per step, the largest error (noisier: a maximum over 32 values) by at least 0.8, and at
    4096 samples the largest error is within 10% of max |phi|."""
    m, xs, labels, baselines, targets, want = shap_case
    rep = lambda a: np.repeat(np.asarray(a), 2, 0)  # noqa: E731  each image twice: keys fold_in(0, i) differ
    scale = np.abs(want).max(1, keepdims=True)
    worst, rms = [], []
    for n in SAMPLE_SIZES:
        got = jaxplain.explain(m, rep(xs), rep(targets), "kernel_shap", segments=rep(labels), baseline=rep(baselines),
                               samples=n, exact=False, key=0, return_fit=True, chunk=n).coefficients
        error = np.abs(np.asarray(got, np.float64) - rep(want)) / rep(scale)
        worst.append(float(error.max()))
        rms.append(float(np.sqrt(np.mean(error**2))))
    print("kernel_shap sampling, samples -> (max |error|, RMS error) / max |phi|:",
          {n: (round(w, 4), round(r, 4)) for n, w, r in zip(SAMPLE_SIZES, worst, rms)})
    assert rms[1] < 0.7 * rms[0] and rms[2] < 0.7 * rms[1], rms
    assert worst[1] < 0.8 * worst[0] and worst[2] < 0.8 * worst[1], worst
    assert worst[2] < 0.1, worst


# ---------------------------------------------------------------- LIME against the lime package


def test_lime_matches_the_lime_package(pair):
    """Ours against ``lime.lime_image.LimeImageExplainer`` on the same model (softmax of the
    tiny VGG on the preprocessed image lime perturbs), the same SLIC label map, the mean-colour
    fill (``hide_color=None``), lime's defaults (kernel width 0.25 on the cosine distance, Ridge
    alpha 1, every feature kept) and the very coalitions lime drew (recorded from its
    ``data_labels``). Coefficients, intercept and weighted R^2 agree to 1e-4 relative (float32
    against lime's float64; measured 2.6e-6 of max |coefficient|, 5e-7 on the intercept, 1e-7 on R^2)."""
    from lime import lime_image

    _, m = pair
    picture = _pictures(1, seed=8)
    x = np.asarray(m.preprocess(picture), np.float32)[0]
    labels = jaxplain.segments(picture, "slic(n_segments=20)")[0]
    target = 5
    forward = jax.jit(jax.vmap(lambda v: m.apply(m.params, v)[0]))

    def classify(images):
        logits = np.asarray(forward(jnp.asarray(images, jnp.float32)), np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    explainer = lime_image.LimeImageExplainer(random_state=0)
    drawn = {}
    data_labels = explainer.data_labels

    def recording(*args, **kwargs):
        data, outputs = data_labels(*args, **kwargs)
        drawn["data"] = data
        return data, outputs

    explainer.data_labels = recording
    explanation = explainer.explain_instance(x, classify, labels=(target,), top_labels=None, hide_color=None,
                                             num_samples=200, batch_size=50, segmentation_fn=lambda _: labels)
    coalitions = drawn["data"]
    assert coalitions.shape == (200, labels.max() + 1) and coalitions.shape[1] > 8
    want = np.zeros(coalitions.shape[1])
    for feature, weight in explanation.local_exp[target]:
        want[feature] = weight

    fit = jaxplain.explain(m, x[None], target, "lime", segments=labels, coalitions=coalitions, return_fit=True,
                           chunk=200)
    _close(fit.coefficients[0], want, 1e-4, "lime against the lime package")
    print(f"intercept {float(fit.intercept[0])!r} against {explanation.intercept[target]!r}, "
          f"R^2 {float(fit.r2[0])!r} against {explanation.score!r}")
    np.testing.assert_allclose(fit.intercept[0], explanation.intercept[target], rtol=1e-4)
    np.testing.assert_allclose(fit.r2[0], explanation.score, rtol=1e-4)


def test_kernel_shap_draws_sizes_from_the_shapley_kernel():
    """20000 of kernel_shap's coalitions over 10 present segments (and 2 empty labels, never drawn):
    the frequency of each size k = 1..9 is (M-1)/(k(M-k)) normalised, within 4 standard errors
    (a uniform size distribution, say, is off by 20 and more)."""
    import jax

    from jaxplain.methods.surrogate import _kernel_coalition

    present = jnp.asarray([True] * 5 + [False] + [True] * 5 + [False])
    keys = jax.random.split(jax.random.key(3), 20000)
    z = np.asarray(jax.vmap(lambda k: _kernel_coalition(k, present))(keys))
    assert (z[:, [5, 11]] == 0).all()
    m, n = 10, len(z)
    k = np.arange(1, m)
    p = (m - 1) / (k * (m - k))
    p /= p.sum()
    freq = np.bincount(z.sum(1).astype(int), minlength=m + 1)[1:m] / n
    assert (z.sum(1) >= 1).all() and (z.sum(1) <= m - 1).all()
    np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / n))
    # and the members of a size-k coalition are uniform: each present segment is in about mean(k)/M of them
    share = z[:, present].mean(0)
    np.testing.assert_allclose(share, (k * p).sum() / m, atol=4 * np.sqrt(0.25 / n))


# ---------------------------------------------------------------- exact KernelSHAP with a large logit


def _offset_game_model(labels: np.ndarray, c: np.ndarray, b: np.ndarray, offset: float) -> jaxplain.Model:
    """``logits = [t, 0]`` with ``t = offset + sum_s c_s a_s + (sum_s b_s a_s)^2``, ``a_s`` the mean of
    ``x[..., 0]`` over segment ``s``: with baseline 0 a coalition ``S`` scores
    ``v(S) = offset + sum_{s in S} c_s a_s + (sum_{s in S} b_s a_s)^2`` (not additive)."""
    m = len(c)
    flat = jnp.asarray(labels.reshape(-1))
    size = jnp.asarray(np.bincount(labels.reshape(-1), minlength=m), jnp.float32)

    def apply(params, x, taps=None, relu=None):
        a = jax.ops.segment_sum(x[..., 0].reshape(-1), flat, num_segments=m) / size
        t = params["offset"] + jnp.sum(params["c"] * a) + jnp.sum(params["b"] * a) ** 2
        return jnp.stack([t, jnp.zeros_like(t)]), {}

    params = {"c": jnp.asarray(c, jnp.float32), "b": jnp.asarray(b, jnp.float32), "offset": jnp.float32(offset)}
    return jaxplain.Model(apply=apply, params=params, layers=(), preprocess=lambda u: u.astype(np.float32) / 255,
                          input_size=None, name="offset-game")


def _shapley_float64(v: np.ndarray, m: int) -> np.ndarray:
    """Shapley values ``[M]`` of the game ``v [2^M]`` (bit ``j`` of a coalition's index: player ``j``
    in it), from the definition in float64: ``phi_i = sum_{S without i} |S|! (M-|S|-1)! / M! (v(S+i) - v(S))``."""
    index = np.arange(2**m)
    size = np.array([bin(s).count("1") for s in range(2**m)])
    weight = np.array([math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) for k in range(m)])
    phi = np.zeros(m)
    for i in range(m):
        without = index[(index >> i) & 1 == 0]
        phi[i] = np.sum(weight[size[without]] * (v[without | (1 << i)] - v[without]))
    return phi


@pytest.mark.parametrize("m", [16, 20])
def test_exact_kernel_shap_keeps_its_precision_under_a_large_logit(m):
    """A logit near 20 whose segments move it by about 0.1 each: exact KernelSHAP over all 2^M
    coalitions (float32 passes) against the Shapley values of the same game computed in float64
    by the definition: within 1e-5 of max |phi| (float32 logits near 20 carry 2e-6 of rounding;
    measured 7e-7 at 16 and 20 segments), and the values add up to v(all) - v(none) within 1e-5 of
    it (efficiency; measured 3e-7, 3e-6). Weighting the raw scores lost 8e-5 at 16 segments and
    2e-2 at 20."""
    rng = np.random.default_rng(m)
    labels = _voronoi_labels(m, seed=m, size=16)
    c, b = rng.normal(0, 0.2, m), rng.normal(0, 0.1, m)
    x = rng.uniform(0.2, 1.0, (1, 16, 16, 3)).astype(np.float32)
    flat = labels.reshape(-1)
    a = np.bincount(flat, x[0, ..., 0].reshape(-1).astype(np.float64)) / np.bincount(flat)
    bits = ((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1).astype(np.float64)
    v = 20.0 + bits @ (c * a) + (bits @ (b * a)) ** 2  # v(S), float64
    want = _shapley_float64(v, m)
    model = _offset_game_model(labels, c, b, 20.0)
    got = np.asarray(jaxplain.explain(model, x, 0, "kernel_shap", segments=labels, exact=True, return_fit=True,
                                      chunk=2**14).coefficients[0], np.float64)
    _close(got, want, 1e-5, f"exact kernel_shap at {m} segments, logit near 20")
    total = v[-1] - v[0]
    print(f"sum of the values off v(all) - v(none) by {abs(got.sum() - total) / abs(total):.1e} of it")
    assert abs(got.sum() - total) <= 1e-5 * abs(total)
