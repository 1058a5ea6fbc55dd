"""Each method against something independent: finite differences, closed forms, axioms,
Captum on the same weights, and PAIR's NumPy implementations of blur IG and guided IG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from captum import attr as ca

import jaxplain
from jaxplain import baselines
from jaxplain.methods.integrated import RULES, rule_nodes
from tests.compare import assert_close as _close
from tests.compare import to_nhwc as _from_torch
from tests.compare import to_torch as _torch
from tests.conftest import tiny_pair

pytestmark = pytest.mark.usefixtures("quick_threefry")  # random programs compile about 2x faster; all sides draw alike

CAPTUM_TOL = 1e-5  # max |ours - Captum| <= 1e-5 * max |Captum| in float32


def linear_model(w, b=0.3):
    """``f(x) = [sum(w * x) + b, -sum(w * x)]``: a contract-conforming linear model."""

    def apply(params, x, taps=None, relu=None):
        s = jnp.sum(params["w"] * x)
        return jnp.stack([s + b, -s]), {}

    return jaxplain.Model(apply=apply, params={"w": jnp.asarray(w)}, layers=(), preprocess=None,
                          input_size=None, name="linear")


# ---------------------------------------------------------------- analytic references


def test_gradient_matches_finite_differences(pair, xs):
    """Directional derivatives by central differences in float64 (eps 1e-6: no ReLU kink is
    crossed, rounding is ~1e-10), against the method run in float64 on the same weights."""
    _, m = pair
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), m.params)
        x = jnp.asarray(xs[0], jnp.float64)
        f = jax.jit(lambda v: m.apply(p64, v)[0][3])  # compiled once, not op by op
        g = jax.jit(lambda v: jaxplain.gradient(m.apply, p64, v, 3))(x)
        assert g.dtype == jnp.float64
        for _ in range(5):
            v = jnp.asarray(rng.normal(size=x.shape))
            eps = 1e-6
            fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
            np.testing.assert_allclose(float(jnp.sum(g * v)), float(fd), rtol=1e-6)
    # float32 through explain agrees with the float64 gradient.
    np.testing.assert_allclose(jaxplain.explain(m, xs[:1], 3, "gradient")[0], np.asarray(g), rtol=1e-4, atol=1e-5 * np.abs(g).max())


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline", ["zeros", "blur", "array"])
def test_ig_of_linear_model_is_exact(rule, baseline):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 8, 3)).astype(np.float32)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    m = linear_model(w)
    s = dict(steps=5, rule=rule)
    if baseline == "array":
        base = rng.normal(size=(8, 8, 3)).astype(np.float32)
        s["baseline"] = base
    elif baseline == "blur":
        from scipy.ndimage import gaussian_filter

        base = np.stack([gaussian_filter(v.astype(np.float64), [10, 10, 0], mode="constant") for v in x])
        s["baseline"] = "blur"
    else:
        base = np.zeros_like(x)
    got = jaxplain.explain(m, x, 0, "integrated_gradients", **s)
    np.testing.assert_allclose(got, (x - base) * w, rtol=1e-5, atol=1e-5)


def _gaps(m, x, t):
    n = np.arange(len(x))
    return np.asarray(m(x))[n, t] - np.asarray(m(np.zeros_like(x)))[n, t]


def test_completeness_on_tiny_vgg(tiny_model):
    """|delta| <= 1e-2 |f(x) - f(0)| at 64 Gauss-Legendre steps for the predicted class.

    The quadrature error comes from ReLU and max-pool kinks along the path: on other random tiny
    networks up to 3% was measured at 64 steps for some images, below 0.6% at 256 (next test).
    """
    m = tiny_model
    x = np.random.default_rng(11).normal(size=(6, 32, 32, 3)).astype(np.float32)
    t = np.asarray(jnp.argmax(m(x), -1))
    attr, delta = jaxplain.explain(m, x, t, "integrated_gradients(steps=64)", return_delta=True)
    gap = _gaps(m, x, t)
    np.testing.assert_allclose(np.asarray(attr).sum((1, 2, 3)) - gap, delta, atol=1e-5 * np.abs(gap).max())
    assert np.all(np.abs(delta) <= 1e-2 * np.abs(gap)), (delta, gap)


@pytest.mark.parametrize("seed", [2, 3])
def test_completeness_converges_with_steps(seed):
    m = tiny_pair(seed)[1]
    x = np.random.default_rng(11).normal(size=(4, 32, 32, 3)).astype(np.float32)
    _, delta = jaxplain.explain(m, x, 3, "integrated_gradients(steps=256)", return_delta=True)
    assert np.all(np.abs(delta) <= 1e-2 * np.abs(_gaps(m, x, 3)))


def test_completeness_on_vgg16_with_biases():
    """IG's completeness error |delta| / |f(x) - f(0)| on a full VGG16 (torchvision head, 2
    noise images of 64x64, the predicted class, Gauss-Legendre) with biases N(0, 0.1^2).

    With torchvision's zero biases a ReLU/max-pool network is positively homogeneous: f is
    linear along the path from 0 (f(x/2) is exactly halfway) and any rule is exact (measured
    3e-7 at 16 steps), which hides quadrature errors. The random biases bend the path (f(x/2)
    is 25% of the gap off halfway). Weights are drawn here: convolutions He-normal by fan-out
    (torchvision's), fc1 and fc2 He-normal by fan-in, predictions N(0, 0.05^2), so the logits
    are O(1) (std 1.0, largest 3.9; torchvision's N(0, 0.01^2) head gives 0.1) and
    f(x) - f(0) is 1.4. Measured |delta| / |f(x) - f(0)| for the two images:

        steps    16      32      64      128
        img 0    2.4%    1.6%    0.03%   0.25%
        img 1    0.64%   0.10%   0.60%   0.48%

    not monotone: the error comes from the ReLU and max-pool kinks the path crosses, which
    each rule's nodes straddle differently (at 112x112 the worse image gave 3.8%, 0.52%, 0.59%,
    1.0%, 0.38% at 16 to 256 steps, another draw of the weights 1.1%, 1.8%, 0.76%, 0.38%, 0.25%).
    Asserted at 64 steps: below 2%, 3.3x the worst measured there (another draw of the weights,
    seed 1, gave 0.50% and 1.65% at 64 steps at 64x64: a draw-dependent error, as at 112x112,
    with this draw pinned by its seed). 64x64 rather than 112x112
    (a third of the pixels, 2x2 features into the adaptive pool): the same 16 layers and kinks
    along the path, in a third of the time."""
    from flax import nnx

    from jaxplain.models import BLOCKS, VGGConfig, build
    from jaxplain.models.vgg import abstract_state

    config = VGGConfig(blocks=BLOCKS["vgg16"], head="torchvision")
    rng = np.random.default_rng(0)

    def draw(path, s):
        layer, name = path[0].key, path[-1].key
        if name == "bias":
            std = 0.1
        elif layer.startswith("block"):  # kernel [3, 3, in, out]
            std = np.sqrt(2 / (s.shape[0] * s.shape[1] * s.shape[3]))
        elif layer == "predictions":
            std = 0.05
        else:  # fc1, fc2: kernel [in, out]
            std = np.sqrt(2 / s.shape[0])
        return rng.standard_normal(s.shape, dtype=np.float32) * np.float32(std)

    params = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(abstract_state(config)[1]))
    m = build(config, params, source="torchvision")
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    logits, at_zero, halfway = (np.asarray(m(v)) for v in (x, np.zeros_like(x), x / 2))
    assert np.all(logits.std(axis=1) > 0.5) and np.all(np.abs(logits).max(axis=1) < 30)  # O(1)-O(10)
    t = logits.argmax(axis=1)
    n = np.arange(2)
    gap = logits[n, t] - at_zero[n, t]
    assert np.all(np.abs(gap) > 0.5)
    bend = halfway[n, t] - (logits[n, t] + at_zero[n, t]) / 2
    assert np.all(np.abs(bend) > 0.02 * np.abs(gap))  # f is not linear along the path
    _, delta = jaxplain.explain(m, x, t, "integrated_gradients", steps=64, return_delta=True)
    assert np.all(np.abs(np.asarray(delta)) < 0.02 * np.abs(gap)), np.abs(np.asarray(delta)) / np.abs(gap)


CLOSED = {  # sum_i w_i a_i**2 for n = 4 nodes, from each rule's definition
    "riemann_left": (0 + 1 + 4 + 9) / 16 / 4,
    "riemann_right": (1 + 4 + 9 + 16) / 16 / 4,
    "riemann_middle": 1 / 3 - 1 / (12 * 16),
    "riemann_trapezoid": 1 / 3 + 1 / (6 * 9),
    "gausslegendre": 1 / 3,
}


@pytest.mark.parametrize("rule", RULES)
def test_rules_against_closed_form(rule):
    """IG of f(x) = sum(x**3) from 0 is 3 x**3 * sum_i w_i a_i**2 (the rule's estimate of 1/3)."""

    def apply(params, x, taps=None, relu=None):
        return jnp.sum(x**3)[None], {}

    m = jaxplain.Model(apply=apply, params={}, layers=(), preprocess=None, input_size=None)
    x = np.linspace(-2, 2, 5 * 5 * 3, dtype=np.float32).reshape(1, 5, 5, 3)
    got = jaxplain.explain(m, x, 0, "integrated_gradients", steps=4, rule=rule)
    np.testing.assert_allclose(got, 3 * x**3 * CLOSED[rule], rtol=1e-5, atol=1e-6)
    a, w = rule_nodes(rule, 4)
    assert abs(float(np.sum(w)) - 1) < 1e-6


def test_noise_wrappers_analytic():
    """For f = sum(c * x**2): grad = 2c(x + n), n ~ N(0, s^2), so SmoothGrad -> 2cx, VarGrad ->
    4c^2 s^2, SquareGrad -> 4c^2 (x^2 + s^2); each pixel within 5 Monte-Carlo standard errors of
    its analytic value (4000 samples; the standard errors from the normal's moments:
    sd(sample variance) = sqrt(2/n) var, Var((x + n)^2) = 4 x^2 s^2 + 2 s^4). Measured: the
    largest of the 48 pixels' |error| / standard error is 3.2, 2.1 and 3.1 with the module's
    (quick) threefry draws, 3.0, 3.0 and 2.6 with jax's default ones."""
    rng = np.random.default_rng(3)
    c = rng.uniform(0.5, 1.5, size=(4, 4, 3)).astype(np.float32)

    def apply(params, x, taps=None, relu=None):
        return jnp.sum(params * x * x)[None], {}

    m = jaxplain.Model(apply=apply, params=jnp.asarray(c), layers=(), preprocess=None, input_size=None)
    x = rng.uniform(-1, 1, size=(1, 4, 4, 3)).astype(np.float32)
    std = 0.15 * (x.max() - x.min())
    kw = dict(samples=4000, key=jax.random.key(0), chunk=None)  # one vmapped call: the model is tiny
    sg = np.asarray(jaxplain.explain(m, x, 0, "smoothgrad", **kw))
    vg = np.asarray(jaxplain.explain(m, x, 0, "vargrad", **kw))
    sq = np.asarray(jaxplain.explain(m, x, 0, "squaregrad", **kw))
    n, s2 = 4000, np.float64(std) ** 2
    se = 2 * c * std / np.sqrt(n)  # standard error of the SmoothGrad mean
    assert np.all(np.abs(sg - 2 * c * x) < 5 * se)
    var = 4 * c**2 * s2
    assert np.all(np.abs(vg - var) < 5 * np.sqrt(2 / n) * var), np.abs(vg - var) / (np.sqrt(2 / n) * var)
    sq_se = 4 * c**2 * np.sqrt((4 * x**2 * s2 + 2 * s2**2) / n)
    assert np.all(np.abs(sq - 4 * c**2 * (x**2 + s2)) < 5 * sq_se), np.abs(sq - 4 * c**2 * (x**2 + s2)) / sq_se


@pytest.mark.parametrize("name,sigma", [
    ("vargrad", 0.001),     # little noise: mean^2 / var up to 16000 per pixel, where float32 cancels
    ("squaregrad", 0.15),   # the default noise
])
def test_noise_wrappers_against_a_loop_over_the_same_draws(pair, xs, name, sigma):
    """Per pixel against the same noise draws made by hand (explain's key for image i is
    ``fold_in(named(key, name, settings), i)``, ``baselines``' policy, split into ``samples`` keys, each split into (noise, base) keys; noise
    ``std * normal``, std = sigma * (max(x) - min(x)) in float32), each gradient taken by the
    test, the variance and the mean of squares in float64 NumPy. Tolerance 1e-4 of each pixel
    plus 1e-6 of the map's maximum (for pixels of nearly zero variance); measured: at most 4% of
    it (1.6e-5 of a pixel; float32 gradients of a batch and of one image differ in their last
    bits). VarGrad as mean(a^2) - mean(a)^2 in float32 (before _moments summed around base(x))
    was 9e-4 off a pixel here, 5x the tolerance, and gave a negative variance."""
    _, m = pair
    key, n, t = jax.random.key(7), 16, [3, 7]
    got = np.asarray(jaxplain.explain(m, xs, t, name, samples=n, sigma=sigma, key=key, chunk=8), np.float64)
    grad = jax.jit(jax.grad(lambda v, i: m.apply(m.params, v)[0][i]))
    for i, x in enumerate(jnp.asarray(xs)):
        std = sigma * (jnp.max(x) - jnp.min(x))
        g = []
        for k in jax.random.split(jax.random.fold_in(baselines.named(key, jaxplain.METHODS[name], dict(samples=n, sigma=sigma)), i), n):
            k_noise, _ = jax.random.split(k)
            g.append(np.asarray(grad(x + std * jax.random.normal(k_noise, x.shape, x.dtype), t[i]), np.float64))
        g = np.stack(g)
        want = g.var(axis=0) if name == "vargrad" else (g * g).mean(axis=0)
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_smoothgrad_of_linear_model_is_the_weight():
    w = np.random.default_rng(4).normal(size=(6, 6, 3)).astype(np.float32)
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 3)).astype(np.float32)
    m = linear_model(w)
    k = jax.random.key(1)
    np.testing.assert_allclose(jaxplain.explain(m, x, 0, "smoothgrad", samples=8, key=k), np.broadcast_to(w, x.shape), rtol=1e-5)
    np.testing.assert_allclose(jaxplain.explain(m, x, 0, "vargrad", samples=8, key=k), 0, atol=1e-5)


def test_expected_gradients(pair, xs):
    w = np.random.default_rng(6).normal(size=(32, 32, 3)).astype(np.float32)
    ref = xs[1:]
    got = jaxplain.explain(linear_model(w), xs[:1], 0, "expected_gradients", references=ref, samples=5, key=jax.random.key(0))
    np.testing.assert_allclose(got, (xs[:1] - ref) * w, rtol=1e-4, atol=1e-5)
    # One reference and many samples: a Monte-Carlo estimate of IG from that baseline.
    _, m = pair
    eg = np.asarray(jaxplain.explain(m, xs[:1], 3, "expected_gradients", references=ref, samples=512, key=jax.random.key(1)))
    ig = np.asarray(jaxplain.explain(m, xs[:1], 3, "integrated_gradients", baseline=ref[0], steps=64))
    assert np.linalg.norm(eg - ig) < 0.15 * np.linalg.norm(ig)


def test_expected_gradients_against_a_loop_over_the_same_draws(pair, xs):
    """The same references and alphas drawn by hand (explain's key for image i is
    ``fold_in(named(key, "expected_gradients", settings), i)``, split into (index, alpha) keys; ``randint`` over the R references, ``uniform`` alphas),
    each term's gradient taken by torch on the same weights, the mean in float64: to 1e-5 of the
    maximum (float32 gradients, as the Captum comparisons; measured 3e-7). Unfolded keys (other
    draws) are 78-116% off, so the draws themselves are pinned."""
    net, m = pair
    refs = np.random.default_rng(12).normal(size=(5, 32, 32, 3)).astype(np.float32)
    key, n, t = jax.random.key(5), 12, [3, 7]
    got = jaxplain.explain(m, xs, t, "expected_gradients", references=refs, samples=n, key=key, chunk=5)
    for i, x in enumerate(xs):
        k_idx, k_alpha = jax.random.split(jax.random.fold_in(baselines.named(key, "expected_gradients", {"samples": n}), i))
        idx = np.asarray(jax.random.randint(k_idx, (n,), 0, len(refs)))
        alphas = np.asarray(jax.random.uniform(k_alpha, (n,), jnp.float32))
        assert len(set(idx.tolist())) > 1  # several references drawn
        r = refs[idx]
        pts = _torch(r + alphas[:, None, None, None] * (x - r))
        net(pts)[:, t[i]].sum().backward()
        want = ((x - r).astype(np.float64) * _from_torch(pts.grad)).mean(axis=0)
        _close(got[i], want)


# ---------------------------------------------------------------- Captum, same weights


def test_gradient_and_input_x_gradient_match_captum(pair, xs):
    net, m = pair
    t = [3, 7]
    _close(jaxplain.explain(m, xs, t, "gradient"), _from_torch(ca.Saliency(net).attribute(_torch(xs), target=t, abs=False)))
    _close(jaxplain.explain(m, xs, t, "gradient_x_input"), _from_torch(ca.InputXGradient(net).attribute(_torch(xs), target=t)))


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_match_captum(pair, xs, rule):
    net, m = pair
    t, n = [3, 7], 16
    want = _from_torch(ca.IntegratedGradients(net).attribute(_torch(xs), baselines=0.0, target=t, n_steps=n, method=rule))
    if rule == "riemann_trapezoid":  # Captum's weights sum to (n-1)/n: see REFERENCE-NOTES
        want = want * n / (n - 1)
    _close(jaxplain.explain(m, xs, t, "integrated_gradients", steps=n, rule=rule), want)


@pytest.mark.parametrize("name,cls", [("guided_backprop", ca.GuidedBackprop), ("deconvnet", ca.Deconvolution)])
def test_modified_backprop_matches_captum(pair, xs, name, cls):
    net, m = pair
    t = [3, 7]
    _close(jaxplain.explain(m, xs, t, name), _from_torch(cls(net).attribute(_torch(xs), target=t)))


# ---------------------------------------------------------------- PAIR's saliency library


def _pair_grad_fn(m, target, dtype=np.float64):
    from saliency.core import INPUT_OUTPUT_GRADIENTS

    grad = jax.jit(jax.vmap(lambda v: jaxplain.gradient(m.apply, m.params, v, target)))

    def call(batch, call_model_args=None, expected_keys=None):
        return {INPUT_OUTPUT_GRADIENTS: np.asarray(grad(jnp.asarray(batch, jnp.float32)), dtype)}

    return call


def test_blur_ig_matches_pair(pair, xs):
    """PAIR blurs in float64 with SciPy; we blur in float32 by matrices: 2e-4 of the max."""
    from saliency.core import BlurIG

    _, m = pair
    want = BlurIG().GetMask(xs[0].astype(np.float64), _pair_grad_fn(m, 3), max_sigma=8, steps=20, batch_size=1)
    got = jaxplain.explain(m, xs[:1], 3, "blur_ig", max_sigma=8.0, steps=20)[0]
    _close(got, want, tol=2e-4)


class _NumpyWithOldQuantile:
    """numpy, but accepting the ``interpolation=`` keyword that PAIR's guided IG still passes."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, interpolation="linear", **kw):
        return np.quantile(a, q, method=interpolation, **kw)


def test_guided_ig_matches_pair(pair, xs, monkeypatch):
    """Same gradients, same float32 arithmetic: the same path and attribution."""
    import saliency.core.guided_ig as pair_gig
    from saliency.core import GuidedIG

    monkeypatch.setattr(pair_gig, "np", _NumpyWithOldQuantile())
    _, m = pair
    want = GuidedIG().GetMask(xs[0], _pair_grad_fn(m, 3, np.float32), x_steps=12, x_baseline=np.zeros_like(xs[0]), max_dist=0.02, fraction=0.25)
    got = jaxplain.explain(m, xs[:1], 3, "guided_ig", steps=12)[0]
    _close(got, want, tol=1e-4)


def test_path_methods_of_linear_model_are_exact():
    rng = np.random.default_rng(8)
    w = rng.normal(size=(8, 8, 3)).astype(np.float32)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    m = linear_model(w)
    np.testing.assert_allclose(jaxplain.explain(m, x, 0, "guided_ig", steps=10), x * w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [1001, 1002, 2500])
def test_gauss_legendre_beyond_the_companion_matrix(n):
    """Above 1000 nodes the rule comes from Newton's method (linear memory) rather than NumPy's
    companion-matrix eigenvalues (8 n^2 bytes: 75 GB at 100000); both agree where both run. Past
    1001 the reference is SciPy's ``roots_legendre`` (Golub-Welsch: a tridiagonal eigenproblem,
    polished by one Newton step), which agrees with NumPy's to 2e-16 in the nodes and 2e-10 of the
    largest weight at 2500 in 0.4 s, where NumPy's dense O(n^3) eigenvalues took 12 s."""
    from scipy.special import roots_legendre

    from jaxplain.methods.integrated import gauss_legendre

    x, w = gauss_legendre(n)
    xr, wr = np.polynomial.legendre.leggauss(n) if n == 1001 else roots_legendre(n)
    np.testing.assert_allclose(x, xr, rtol=0, atol=1e-14)
    np.testing.assert_allclose(w, wr, rtol=0, atol=1e-9 * wr.max())
    # Exact for polynomials up to degree 2n - 1: the integral of x^(2k) over [-1, 1] is 2 / (2k + 1).
    for k in (0, 5, 50):
        np.testing.assert_allclose(np.sum(w * x ** (2 * k)), 2 / (2 * k + 1), rtol=1e-11)


def test_ig_memory_is_flat_in_steps():
    """IG at 20000 Gauss-Legendre steps: the nodes take linear memory (a companion matrix of 3.2 GB
    before; 100000 steps asked for 74.5 GiB), and IG of a linear model is still exact."""
    import tracemalloc

    from jaxplain.methods.integrated import rule_nodes

    tracemalloc.start()
    a, w = rule_nodes("gausslegendre", 20000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6 and a.shape == (20000,) and abs(float(w.sum()) - 1) < 1e-5, peak
    rng = np.random.default_rng(9)
    w8 = rng.normal(size=(8, 8, 3)).astype(np.float32)
    x = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    got = jaxplain.explain(linear_model(w8), x, 0, "integrated_gradients", steps=20000, chunk=5000)
    np.testing.assert_allclose(got, x * w8, rtol=1e-4, atol=1e-5)
