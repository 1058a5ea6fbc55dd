"""The activation family: Captum on the same weights (Grad-CAM, layer activations, layer
gradient x activation, layer IG, neuron gradient and IG, guided Grad-CAM); the variants Captum lacks
against their papers' formulas evaluated by hand; Grad-CAM++'s exact derivatives against finite
differences; Score-CAM against a plain loop and pytorch-grad-cam's source; Eigen-CAM's sign
against NumPy's SVD; feature visualisation; bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum import attr as ca

import jaxplain
from jaxplain import InputError, viz
from jaxplain.methods.cam import diagonal_derivatives
from tests.compare import assert_close as _close
from tests.compare import to_nhwc as _nhwc
from tests.compare import to_torch as _t
from tests.conftest import tiny_pair

TOL = 1e-5  # max |ours - reference| <= 1e-5 * max |reference|, float32
LAYER, TORCH_LAYER = "block3_conv2", 9  # features[9] is the ReLU after block3_conv2 (post-ReLU output)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=4)


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(21).normal(size=(2, 32, 32, 3)).astype(np.float32)


# ---------------------------------------------------------------- Captum


def test_grad_cam_matches_captum(pair, xs):
    net, m = pair
    layer = net.features[TORCH_LAYER]
    want = ca.LayerGradCam(net, layer).attribute(_t(xs), target=[2, 5], relu_attributions=True)[:, 0]
    _close(jaxplain.explain(m, xs, [2, 5], "grad_cam", layer=LAYER, upsample=False), want.detach().numpy())


def test_activations_match_captum(pair, xs):
    net, m = pair
    want = ca.LayerActivation(net, net.features[TORCH_LAYER]).attribute(_t(xs))
    got = jaxplain.activations(m, xs, [LAYER, "fc1"])
    _close(got[LAYER], _nhwc(want))
    assert got["fc1"].shape == (2, 16)


def test_layer_gradient_x_activation_matches_captum(pair, xs):
    net, m = pair
    want = ca.LayerGradientXActivation(net, net.features[TORCH_LAYER]).attribute(_t(xs), target=[2, 5])
    _close(jaxplain.explain(m, xs, [2, 5], "layer_gradient_x_activation", layer=LAYER), _nhwc(want))


def test_layer_integrated_gradients_matches_captum(pair, xs):
    net, m = pair
    want = ca.LayerIntegratedGradients(net, net.features[TORCH_LAYER]).attribute(
        _t(xs), baselines=0.0, target=[2, 5], n_steps=16, method="gausslegendre")
    _close(jaxplain.explain(m, xs, [2, 5], "layer_integrated_gradients", layer=LAYER, steps=16), _nhwc(want))


def test_neuron_gradient_matches_captum(pair, xs):
    net, m = pair
    with torch.no_grad():  # an active unit, chosen from torch's own activations
        act = net.features[: TORCH_LAYER + 1](_t(xs)).numpy()
    c, h, w = np.unravel_index(int(np.argmax(act.min(axis=0))), act.shape[1:])
    want = ca.NeuronGradient(net, net.features[TORCH_LAYER]).attribute(_t(xs), neuron_selector=(int(c), int(h), int(w)))
    _close(jaxplain.explain(m, xs, None, "neuron_gradient", layer=LAYER, neuron=(int(h), int(w), int(c))), _nhwc(want))


def test_neuron_integrated_gradients_matches_captum(pair, xs):
    """One unit (our (h, w, c) is Captum's (c, h, w)) and one channel's mean (our int neuron; a
    callable selector for Captum), 16 Gauss-Legendre steps from a zero baseline, to TOL."""
    net, m = pair
    with torch.no_grad():
        act = net.features[: TORCH_LAYER + 1](_t(xs)).numpy()
    c, h, w = (int(i) for i in np.unravel_index(int(np.argmax(act.min(axis=0))), act.shape[1:]))
    nig = ca.NeuronIntegratedGradients(net, net.features[TORCH_LAYER])
    kw = dict(baselines=0.0, n_steps=16, method="gausslegendre")
    want = nig.attribute(_t(xs), neuron_selector=(c, h, w), **kw)
    got = jaxplain.explain(m, xs, None, "neuron_integrated_gradients", layer=LAYER, neuron=(h, w, c), steps=16)
    _close(got, _nhwc(want))
    channel = int(np.argmax(act.mean(axis=(0, 2, 3))))  # the most active channel on average
    want = nig.attribute(_t(xs), neuron_selector=lambda out: out[:, channel].mean(dim=(1, 2)), **kw)
    got = jaxplain.explain(m, xs, None, "neuron_integrated_gradients", layer=LAYER, neuron=channel, steps=16)
    _close(got, _nhwc(want))


def test_guided_grad_cam_matches_captum(pair, xs):
    net, m = pair
    want = ca.GuidedGradCam(net, net.features[TORCH_LAYER]).attribute(_t(xs), target=[2, 5], interpolate_mode="bilinear")
    _close(jaxplain.explain(m, xs, [2, 5], "guided_grad_cam", layer=LAYER), _nhwc(want))


# ---------------------------------------------------------------- the papers' formulas by hand

RNG = np.random.default_rng(3)
WC = RNG.normal(size=(3, 4)).astype(np.float32)            # a 1x1 conv: 3 -> 4 channels
HEAD = RNG.normal(size=(2, 4, 4, 4)).astype(np.float32)    # 2 logits, linear in the 4x4x4 layer
X1 = RNG.normal(size=(1, 4, 4, 3)).astype(np.float32)


def _fixed_model(smooth=False):
    """``feat = relu(x @ WC)``; logits linear in ``feat`` (so dS/dA = HEAD[target] exactly), or
    with ``smooth`` through tanh (a head with curvature)."""

    def apply(params, x, taps=None, relu=None):
        feat = (relu or jax.nn.relu)(x @ params["wc"])
        if taps and "feat" in taps:
            feat = feat + taps["feat"]
        h = jnp.tanh(feat) if smooth else feat
        return jnp.einsum("tijk,ijk->t", params["head"], h), {"feat": feat}

    return jaxplain.Model(apply=apply, params={"wc": jnp.asarray(WC), "head": jnp.asarray(HEAD)},
                          layers=("feat",), preprocess=None, input_size=None, name="fixed")


A = np.maximum(X1[0] @ WC, 0.0)  # the layer, [4, 4, 4]
G = HEAD[1]                      # dS/dA for target 1


def _relu(v):
    return np.maximum(v, 0.0)


FORMULAS = {
    "grad_cam": _relu(np.einsum("k,ijk->ij", G.mean(axis=(0, 1)), A)),
    "hires_cam": _relu(np.sum(G * A, axis=-1)),
    "xgrad_cam": _relu(np.einsum("k,ijk->ij", np.sum(A / (A.sum(axis=(0, 1)) + 1e-7) * G, axis=(0, 1)), A)),
    "layer_cam": _relu(np.sum(_relu(G) * A, axis=-1)),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_cam_variants_against_formulas(name):
    got = jaxplain.explain(_fixed_model(), X1, 1, name, layer="feat", upsample=False)[0]
    np.testing.assert_allclose(got, FORMULAS[name], rtol=1e-5, atol=1e-6)


def test_grad_cam_pp_formula_and_exact_relation():
    """Paper: alpha = G^2 / (2 G^2 + sum_ab A_ab G^3), w_k = sum_ij alpha relu(G). With a linear
    head, the exact derivatives of Y = exp(S) give exp(S) times the paper's map; exact mode
    differentiates exp(S - S(x)), so it gives the paper's map itself."""
    alpha = G**2 / np.where(2 * G**2 + A.sum(axis=(0, 1)) * G**3 != 0, 2 * G**2 + A.sum(axis=(0, 1)) * G**3, 1)
    w = np.sum(alpha * _relu(G), axis=(0, 1))
    want = _relu(np.einsum("k,ijk->ij", w, A))
    m = _fixed_model()
    paper = jaxplain.explain(m, X1, 1, "grad_cam_pp", layer="feat", upsample=False, derivatives="paper")[0]
    np.testing.assert_allclose(paper, want, rtol=1e-5, atol=1e-6)
    exact = jaxplain.explain(m, X1, 1, "grad_cam_pp", layer="feat", upsample=False, derivatives="exact")[0]
    np.testing.assert_allclose(exact, want, rtol=1e-4, atol=1e-6)


def test_grad_cam_pp_exact_derivatives_against_finite_differences():
    """Y'' and Y''' of every element, against central differences of JAX's gradient (float64)."""
    m = _fixed_model(smooth=True)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), m.params)
        x = jnp.asarray(X1[0], jnp.float64)
        act, d1, d2, d3 = diagonal_derivatives(m.apply, params, x, 1, "feat", chunk=16)
        s0 = m.apply(params, x)[0][1]  # exact mode differentiates exp(S - S(x)), S(x) a constant
        y = lambda t: jnp.exp(m.apply(params, x, taps={"feat": t})[0][1] - s0)  # noqa: E731
        grad = jax.grad(y)
        zero = jnp.zeros_like(act)
        eps = 1e-4
        for flat in [0, 7, 21, 40, 63]:
            e = jax.nn.one_hot(flat, act.size, dtype=jnp.float64).reshape(act.shape)
            i = np.unravel_index(flat, act.shape)
            gp, g0, gm = grad(zero + eps * e)[i], grad(zero)[i], grad(zero - eps * e)[i]
            np.testing.assert_allclose(float(d1[i]), float(g0), rtol=1e-10)
            np.testing.assert_allclose(float(d2[i]), float((gp - gm) / (2 * eps)), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(float(d3[i]), float((gp - 2 * g0 + gm) / eps**2), rtol=1e-4, atol=1e-7)
    # With curvature in the head, exact and paper differ (the paper assumes a piecewise-linear head).
    a = jaxplain.explain(m, X1, 1, "grad_cam_pp", layer="feat", upsample=False, derivatives="exact")
    b = jaxplain.explain(m, X1, 1, "grad_cam_pp", layer="feat", upsample=False)  # paper, the default
    assert not np.allclose(np.asarray(a) / np.abs(a).max(), np.asarray(b) / np.abs(b).max(), atol=1e-3)


def test_eigen_cam_against_svd_by_hand():
    flat = A.reshape(-1, 4).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ v
    if np.sum(proj * flat.mean(axis=1)) < 0:
        proj = -proj
    got = jaxplain.explain(_fixed_model(), X1, None, "eigen_cam", layer="feat", upsample=False)[0]
    np.testing.assert_allclose(got, _relu(proj).reshape(4, 4), rtol=1e-4, atol=1e-5)


def test_eigen_cam_sign_on_the_tiny_vgg(pair, xs):
    """The principal component of block3_conv2's centred [h*w, K] activations (torch's, by
    NumPy's float64 SVD), signed by our documented rule (positive correlation with the mean
    activation), rectified: ours equals it to 1e-5 of the maximum (measured 3e-7; float32 SVD,
    and the first two singular values, ~6 and ~4, are far apart). The other sign gives a map
    that differs by its whole maximum here, so a flipped sign fails the test. On both images
    the sign NumPy's SVD returns (measured here) is the other one: pytorch-grad-cam's EigenCAM,
    which keeps it, would show the complementary half."""
    net, m = pair
    with torch.no_grad():
        acts = _nhwc(net.features[: TORCH_LAYER + 1](_t(xs))).astype(np.float64)
    got = np.asarray(jaxplain.explain(m, xs, None, "eigen_cam", layer=LAYER, upsample=False))
    for a, g in zip(acts, got):
        flat = a.reshape(-1, a.shape[-1])
        centred = flat - flat.mean(axis=0)
        proj = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        sign = 1.0 if np.sum(proj * flat.mean(axis=1)) >= 0 else -1.0
        want = _relu(sign * proj).reshape(a.shape[:2])
        _close(g, want)
        flipped = _relu(-sign * proj).reshape(a.shape[:2])
        assert np.abs(flipped - want).max() > 100 * TOL * np.abs(want).max()


def test_score_cam_against_a_plain_loop(pair, xs):
    _, m = pair
    x = jnp.asarray(xs[0])
    act = np.asarray(m.apply(m.params, x)[1][LAYER])
    scores = []
    for k in range(act.shape[-1]):  # one masked forward pass at a time
        up = np.asarray(jax.image.resize(act[..., k], (32, 32), "bilinear", antialias=False))
        lo, hi = up.min(), up.max()
        mask = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
        scores.append(float(m.apply(m.params, x * mask[..., None])[0][2]))
    w = np.exp(np.array(scores) - max(scores))
    w /= w.sum()
    want = _relu(np.einsum("k,ijk->ij", w, act))
    got = jaxplain.explain(m, xs[:1], 2, "score_cam", layer=LAYER, upsample=False, chunk=3)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_score_cam_matches_pytorch_grad_cam(pair, xs):
    """pytorch-grad-cam's ScoreCAM (rewritten from its source in tests/grad_cam_reference.py; 3
    masked images per forward call) upsamples the masks with corners aligned and min-max scales
    its output: with ``align_corners=True`` our map, min-max scaled per image, equals it to 1e-5
    of the maximum (float32; the reference's 1e-8 and 1e-7 guards in its divisions are far
    below that). The default, half-pixel masks, gives a different map."""
    from tests.grad_cam_reference import score_cam as grad_cam_score_cam

    net, m = pair
    assert len(net.features) == TORCH_LAYER + 2  # features[:-1] ends at the last conv layer's ReLU
    t = [2, 7]
    want = grad_cam_score_cam(net, _t(xs).detach(), torch.tensor(t), batch=3)

    def scaled(v):
        v = np.asarray(v)
        lo, hi = v.min(axis=(1, 2), keepdims=True), v.max(axis=(1, 2), keepdims=True)
        return (v - lo) / (hi - lo)

    _close(scaled(jaxplain.explain(m, xs, t, "score_cam", layer=LAYER, align_corners=True)), want)
    half = scaled(jaxplain.explain(m, xs, t, "score_cam", layer=LAYER))
    assert np.abs(half - want).max() > 1e-3  # the setting is what makes them agree


# ---------------------------------------------------------------- summaries, pictures, features


def test_channel_summaries(pair, xs):
    _, m = pair
    acts = jaxplain.activations(m, xs, LAYER)[LAYER]
    means = np.asarray(acts).mean(axis=(1, 2))
    np.testing.assert_allclose(jaxplain.channel_means(acts), means, rtol=1e-6)
    idx, vals = jaxplain.top_channels(acts, k=3)
    np.testing.assert_array_equal(idx, np.argsort(-means, axis=1)[:, :3])
    assert viz.feature_maps(np.asarray(acts[0])).shape[2] == 3


def test_filters_picture():
    from jaxplain import models

    m = models.vgg11(include_top=False)  # the same conv weights; no 120M dense weights to draw
    pic = viz.filters(m)
    assert pic.dtype == np.uint8 and pic.shape == (4 * 26 + 2, 16 * 26 + 2, 3)  # 64 filters, 16 a row
    with pytest.raises(InputError, match="3- or 1-channel"):
        viz.filters(m, "block2_conv1")


def test_feature_visualisation(pair):
    """Each synthesised image drives its own channel far above random noise and above what the
    other channels' images give it; the same key gives the same images."""
    _, m = pair
    m = m.replace(input_size=(32, 32))
    noise = m.preprocess(np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32))
    noise_mean = np.asarray(jaxplain.channel_means(jaxplain.activations(m, noise, LAYER)[LAYER])).mean(axis=0)
    alive = [c for c in range(8) if noise_mean[c] > 1e-3][:4]  # channels some input can reach
    kw = dict(steps=192, key=jax.random.key(0), param="pixel", jitter=0, lr=0.1, tv=0.0)
    imgs = jaxplain.visualize_features(m, LAYER, alive, **kw)
    assert imgs.shape == (len(alive), 32, 32, 3) and imgs.min() >= 0 and imgs.max() <= 1
    acts = np.asarray(jaxplain.channel_means(jaxplain.activations(m, m.preprocess(imgs * 255), LAYER)[LAYER]))[:, alive]
    for i, c in enumerate(alive):
        assert acts[i, i] > 2 * noise_mean[c], (c, acts[i, i], noise_mean[c])
        assert acts[i, i] == acts[:, i].max(), (c, acts[:, i])
    np.testing.assert_array_equal(jaxplain.visualize_features(m, LAYER, alive, **kw), imgs)


def test_feature_visualisation_compiles_once_per_shape(pair):
    """The ascent is one jitted program per settings, the weights an argument: other channels
    and other weights of the same shapes reuse it (it was re-jitted on every call)."""
    from jaxplain.features import _optimiser

    _, m = pair
    m = m.replace(input_size=(32, 32))
    kw = dict(steps=4, key=jax.random.key(0), param="pixel", jitter=0)
    jaxplain.visualize_features(m, LAYER, [0, 1], **kw)
    run = _optimiser(m.apply, m.preprocess, LAYER, (32, 32), "pixel", 4, 0.05, 0, 1e-3)
    before = run._cache_size()
    jaxplain.visualize_features(m, LAYER, [2, 3], **kw)
    other = m.replace(params=jax.tree.map(lambda a: a * 2, m.params))
    jaxplain.visualize_features(other, LAYER, [4, 5], **kw)
    assert run._cache_size() == before == 1


# ---------------------------------------------------------------- bad input


def test_bad_layers_and_channels(pair, xs):
    _, m = pair
    with pytest.raises(InputError, match="unknown layer 'block9_conv1'.*block1_conv1, block1_pool"):
        jaxplain.explain(m, xs, 0, "grad_cam", layer="block9_conv1")
    with pytest.raises(InputError, match="'fc1' has shape \\(16,\\): CAM methods need a spatial layer"):
        jaxplain.explain(m, xs, 0, "score_cam", layer="fc1")
    with pytest.raises(InputError, match="channel 8 is out of range: the layer has 8 channels"):
        jaxplain.explain(m, xs, None, "neuron_gradient", layer=LAYER, neuron=8)
    with pytest.raises(InputError, match=r"neuron \(9, 0, 0\) is out of range"):
        jaxplain.explain(m, xs, None, "neuron_integrated_gradients", layer=LAYER, neuron=(9, 0, 0))
    with pytest.raises(InputError, match="channel 12 is out of range"):
        jaxplain.visualize_features(m.replace(input_size=(32, 32)), LAYER, [1, 12], key=jax.random.key(0))
    with pytest.raises(InputError, match="optimises an RGB picture .* takes 1-channel images: it draws features of RGB"):
        jaxplain.visualize_features(m.replace(channels=1), LAYER, [1], key=jax.random.key(0))
    with pytest.raises(InputError, match="unknown layer"):
        jaxplain.activations(m, xs, ["nope"])


def test_default_layer_is_the_last_conv(pair, xs):
    _, m = pair
    np.testing.assert_array_equal(jaxplain.explain(m, xs, 1, "grad_cam"), jaxplain.explain(m, xs, 1, "grad_cam", layer=LAYER))


def test_grad_cam_pp_exact_is_finite_at_large_logits_and_equals_paper_on_relu_heads():
    """A ReLU VGG is piecewise linear after any layer, so S'' = S''' = 0 and exact mode's alpha is
    the paper's. With the head scaled so the target logit exceeds 200, exp(S) overflows float32
    (the old exact mode returned NaN there); exp(S - S(x)) does not."""
    _, m = tiny_pair(seed=4)
    x = np.random.default_rng(21).normal(size=(2, 32, 32, 3)).astype(np.float32)
    for scale in (1.0, 400.0):
        params = jax.tree.map(lambda a: a, m.params)
        params["predictions"] = {k: v * scale for k, v in params["predictions"].items()}
        big = m.replace(params=params)
        t = np.asarray(jnp.argmax(big(x), -1))
        if scale > 1:
            assert np.asarray(big(x))[[0, 1], t].min() > 200
        with pytest.warns(jaxplain.CostWarning):
            exact = np.asarray(jaxplain.explain(big, x, t, "grad_cam_pp", layer=LAYER, derivatives="exact", chunk=128))
        paper = np.asarray(jaxplain.explain(big, x, t, "grad_cam_pp", layer=LAYER))
        assert np.isfinite(exact).all() and np.abs(paper).max() > 0
        _close(exact, paper, tol=1e-4)  # third derivatives in float32


def test_grad_cam_pp_exact_announces_its_cost(pair, xs):
    """Before it compiles, exact mode warns with the passes (one per activation element of the
    layer) and a FLOP estimate, which is within 2x of XLA's count for the compiled method."""
    from jaxplain import bench

    _, m = pair
    with pytest.warns(jaxplain.CostWarning, match=r"at block3_conv2 makes 512 third-order forward passes per image, "
                                                  r"about (\S+) FLOP") as record:
        jaxplain.explain(m, xs[:1], 1, "grad_cam_pp", layer=LAYER, derivatives="exact", chunk=128)
    estimate = float(str(record[0].message).split("about ")[1].split(" FLOP")[0])
    with pytest.warns(jaxplain.CostWarning):
        case = bench.compile_case(m.replace(input_size=(32, 32)), "grad_cam_pp(derivatives='exact', chunk=128)", 1, layer=LAYER)
    assert 0.5 < estimate / case.flops < 2, (estimate, case.flops)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (paper) form says nothing
        jaxplain.explain(m, xs[:1], 1, "grad_cam_pp", layer=LAYER)
