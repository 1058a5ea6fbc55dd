"""The options Captum users reach for, each against Captum (or torch, or scikit-learn) on the same
weights: the CAMs without their final ReLU, integrated gradients and layer IG without the
multiplication by ``input - baseline``, LIME with a Lasso, guided Grad-CAM's nearest upsampling.

One tiny VGG twin (torch and jaxplain, seed 5, non-zero random biases) at 30x30, so the last conv
layer is 7x7 and the upsampling ratios 30/7 are not whole (torch's nearest and a half-pixel
nearest would differ)."""

import functools

import jax
import numpy as np
import pytest
import torch
from captum import attr as ca
from sklearn.linear_model import Lasso

import jaxplain
from jaxplain import InputError
from jaxplain.methods.surrogate import lasso_fit
from tests.compare import assert_close as _close
from tests.compare import to_nhwc as _nhwc
from tests.compare import to_torch as _t
from tests.conftest import tiny_pair

TOL = 1e-5  # max |ours - reference| <= TOL * max |reference|, float32 on both sides
LAYER, TORCH_LAYER = "block3_conv2", 9  # features[9]: the ReLU after block3_conv2 (7x7x8 at 30x30)
T = [2, 5]
# Channel weights >= 0 by construction (relu(G); Grad-CAM++'s alpha relu(G), alpha > 0 where G > 0 and
# sum(A) >= 0; a softmax): their maps are >= 0 on a ReLU's output, so relu=False cannot show there.
NONNEGATIVE = {"layer_cam", "grad_cam_pp", "score_cam"}


@pytest.fixture(scope="module")
def twin():
    """``(net, model, xs)``: the torch VGG, jaxplain's with the same weights, two 30x30 images."""
    net, m = tiny_pair(seed=5)
    return net, m, np.random.default_rng(23).normal(size=(2, 30, 30, 3)).astype(np.float32)


def _signed(want: np.ndarray) -> np.ndarray:
    """``want``, checked to have negative values (else dropping the ReLU would be untested)."""
    assert want.min() < -1e-3 * np.abs(want).max(), want.min()
    return want


def _torch_score_cam(net, xs: np.ndarray, t: list[int]) -> np.ndarray:
    """Score-CAM without its final ReLU, written out in torch (Wang et al. 2020): each channel
    upsampled bilinearly (half-pixel), min-max scaled, masks the input; the softmax over channels
    of the masked inputs' target logits weights the channels. ``[B, h, w]``."""
    x = torch.tensor(xs.transpose(0, 3, 1, 2))
    out = []
    with torch.no_grad():
        acts = net.features[: TORCH_LAYER + 1](x)
        for b in range(len(xs)):
            up = torch.nn.functional.interpolate(acts[b][:, None], size=xs.shape[1:3], mode="bilinear",
                                                 align_corners=False)[:, 0]
            lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
            masks = torch.where(hi > lo, (up - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
            scores = net(x[b:b + 1] * masks[:, None])[:, t[b]]
            out.append((torch.softmax(scores, 0)[:, None, None] * acts[b]).sum(0).numpy())
    return np.stack(out)


def test_cams_without_relu_match_captum(twin):
    """``relu=False`` on every CAM that ends in the papers' ReLU, at the layer's resolution:
    Grad-CAM against Captum's ``LayerGradCam(relu_attributions=False)``; HiResCAM against the
    channel sum of Captum's ``LayerGradientXActivation``; LayerCAM, XGrad-CAM and Grad-CAM++
    (the paper's closed form) against their papers' formulas on Captum's activation ``A`` and
    gradient ``G`` (``LayerGradientXActivation(multiply_by_inputs=False)``); Eigen-CAM against
    NumPy's SVD of Captum's activation; Score-CAM against a torch loop. Each reference has
    negative values but LayerCAM's, Grad-CAM++'s and Score-CAM's, which are >= 0 wherever ``A`` is
    a ReLU's output (non-negative channel weights), as here: their option matters on a signed layer. Tolerance TOL (measured: at most 2e-7 of the map's maximum)."""
    net, m, xs = twin
    layer = net.features[TORCH_LAYER]
    grad_cam = ca.LayerGradCam(net, layer).attribute(_t(xs), target=T, relu_attributions=False)[:, 0].detach().numpy()
    a = ca.LayerActivation(net, layer).attribute(_t(xs)).detach().numpy()  # [B, K, h, w]
    g = ca.LayerGradientXActivation(net, layer, multiply_by_inputs=False).attribute(_t(xs), target=T).detach().numpy()
    hires = ca.LayerGradientXActivation(net, layer).attribute(_t(xs), target=T).detach().numpy().sum(1)
    total = a.sum(axis=(2, 3), keepdims=True)
    xgrad_w = (np.where(total > 0, a / np.where(total > 0, total, 1.0), 0.0) * g).sum(axis=(2, 3), keepdims=True)
    denom = 2 * g**2 + total * g**3
    alpha = np.where(denom != 0, g**2 / np.where(denom != 0, denom, 1.0), 0.0)
    pp_w = (alpha * np.maximum(g, 0)).sum(axis=(2, 3), keepdims=True)
    eigen = []
    for ab in a:
        flat = ab.reshape(ab.shape[0], -1).T  # [hw, K]
        centred = flat - flat.mean(0)
        proj = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        eigen.append((proj if proj @ flat.mean(1) >= 0 else -proj).reshape(ab.shape[1:]))
    want = {
        "hires_cam": hires,
        "layer_cam": (np.maximum(g, 0) * a).sum(1),
        "xgrad_cam": (xgrad_w * a).sum(1),
        "grad_cam_pp": (pp_w * a).sum(1),
        "eigen_cam": np.stack(eigen),
        "score_cam": _torch_score_cam(net, xs, T),
    }
    _close(jaxplain.explain(m, xs, T, "grad_cam(relu=False, upsample=False)", layer=LAYER), _signed(grad_cam), TOL)

    def one(name, x, t):
        return jaxplain.METHODS[name](m.apply, m.params, x, t, layer=LAYER, upsample=False, relu=False)

    @jax.jit
    def maps(x, t):  # the registered functions, one program for all (each through explain would compile alone)
        return {name: jax.vmap(functools.partial(one, name))(x, t) for name in want}

    for name, got in maps(xs, np.asarray(T)).items():
        _close(got, want[name] if name in NONNEGATIVE else _signed(want[name]), TOL)


def test_integrated_gradients_without_multiplication_match_captum(twin):
    """``multiply_by_inputs=False``: Captum's ``IntegratedGradients`` and
    ``LayerIntegratedGradients`` with the same option (16 Gauss-Legendre steps, zero baseline),
    to TOL (measured 2e-7 and 1e-7 of the maximum); with a ``tolerance`` or ``return_delta`` it
    is an ``InputError`` (no completeness without the multiplication)."""
    net, m, xs = twin
    kw = {"baselines": 0.0, "target": T, "n_steps": 16, "method": "gausslegendre"}
    want = ca.IntegratedGradients(net, multiply_by_inputs=False).attribute(_t(xs), **kw)
    _close(jaxplain.explain(m, xs, T, "integrated_gradients(multiply_by_inputs=False, steps=16)"), _nhwc(want), TOL)
    layer = net.features[TORCH_LAYER]
    want = ca.LayerIntegratedGradients(net, layer, multiply_by_inputs=False).attribute(_t(xs), **kw)
    got = jaxplain.explain(m, xs, T, "layer_integrated_gradients", layer=LAYER, steps=16, multiply_by_inputs=False)
    _close(got, _nhwc(want), TOL)
    for extra in ("tolerance=0.01", "return_delta=True"):
        with pytest.raises(InputError, match=f"multiply_by_inputs=False cannot take {extra.split('=')[0]}.*completeness"):
            jaxplain.explain(m, xs, T, f"integrated_gradients(multiply_by_inputs=False, {extra})")
    with pytest.raises(InputError, match="multiply_by_inputs must be True or False"):
        jaxplain.explain(m, xs, T, "layer_integrated_gradients(multiply_by_inputs='no')", layer=LAYER)


def test_lasso_matches_scikit_learn():
    """``lasso_fit`` against ``sklearn.linear_model.Lasso(alpha).fit(z, y, sample_weight=w)`` in
    float64 (tolerance 1e-12, so its own stopping does not count), on 0/1 designs with random
    weights, a column that never varies and one that is always 0 (both get 0), at three
    alphas, one of them zeroing some coefficients. Tolerance 1e-5 of max |coefficient| and of
    the intercept's scale (measured: 7e-7 and 5e-7); R^2 to 1e-5."""
    fit = jax.jit(lasso_fit)
    rng = np.random.default_rng(0)
    for alpha in (0.001, 0.01, 0.2):
        z = (rng.random((200, 12)) < 0.5).astype(np.float32)
        z[:, 3], z[:, 7] = 1.0, 0.0
        y = (z @ rng.normal(size=12) + 0.3 + 0.1 * rng.normal(size=200)).astype(np.float32)
        w = rng.random(200).astype(np.float32)
        ref = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(z.astype(np.float64), y.astype(np.float64),
                                                                    sample_weight=w.astype(np.float64))
        coef, intercept, r2 = fit(z, y, w, alpha)
        _close(coef, ref.coef_, 1e-5)
        assert abs(float(intercept) - ref.intercept_) <= 1e-5 * max(1.0, abs(ref.intercept_))
        assert abs(float(r2) - ref.score(z, y, sample_weight=w)) <= 1e-5
        assert coef[3] == 0 and coef[7] == 0
        if alpha == 0.2:
            assert (ref.coef_ == 0).sum() > 2 and np.array_equal(np.asarray(coef) == 0, ref.coef_ == 0)


def test_lime_lasso_matches_captum(twin):
    """``lime(regressor="lasso")`` (alpha: Captum's default 0.01) against Captum's ``Lime`` with
    its default interpretable model ``SkLearnLasso(alpha=0.01)`` on the same draws: our
    coalitions fed to Captum through ``perturb_func``, the same 4x4 grid as its
    ``feature_mask``, a zero fill (Captum's default baseline), the target's logit, and Captum
    given our similarity (the cosine distance to all-kept in the interpretable space,
    ``exp(-d^2 / (2 w^2))`` at width 1; Captum's default measures the distance on the perturbed
    image). Tolerance 1e-4 of max |coefficient|: scikit-learn stops at its default ``tol=1e-4``
    on float32 data (measured 2.5e-6; 4.2e-7 with its ``tol=1e-6``)."""
    net, m, xs = twin
    x = 3 * xs[:1]  # logits that move enough for alpha=0.01 to keep most segments
    labels = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 8, 0), 8, 1)[:30, :30]  # cells of 8 pixels
    coalitions = (np.random.default_rng(3).random((120, 16)) < 0.5).astype(np.float32)
    fit = jaxplain.explain(m, x, 5, "lime(regressor='lasso', score='logit', baseline=0.0, kernel_width=1.0)",
                           segments=labels[None], coalitions=coalitions[None], return_fit=True)

    def perturb(original, **kwargs):
        for row in coalitions:
            yield torch.tensor(row[None])

    def similarity(original, perturbed, z, **kwargs):
        d = 1 - torch.nn.functional.cosine_similarity(z.float(), torch.ones_like(z.float())).item()
        return float(np.exp(-(d**2) / 2))

    lime = ca.Lime(net, similarity_func=similarity, perturb_func=perturb)  # interpretable model: Captum's default
    attr = lime.attribute(_t(x), target=5, feature_mask=torch.tensor(labels[None, None]), n_samples=len(coalitions),
                          perturbations_per_eval=40).detach().numpy()
    want = np.array([attr[0, 0][labels == k][0] for k in range(16)])
    assert (want == 0).any() and (want != 0).sum() > 4  # the L1 penalty is at work, and not everything is 0
    _close(fit.coefficients[0], want, 1e-4)
    _close(fit.attribution[0], attr[0, 0], 1e-4)


def test_guided_grad_cam_nearest_matches_captum(twin):
    """``guided_grad_cam(upsample="nearest")`` against Captum's ``GuidedGradCam`` with its default
    ``interpolate_mode="nearest"`` (7x7 to 30x30, torch's ``floor(i * 7 / 30)``), to TOL (measured
    3e-7); the default stays ``"bilinear"`` (against Captum's ``interpolate_mode="bilinear"`` in
    ``test_activation_family``); another mode is an ``InputError``, and so is an unknown
    ``lime`` regressor."""
    net, m, xs = twin
    gc = ca.GuidedGradCam(net, net.features[TORCH_LAYER])
    got = jaxplain.explain(m, xs, T, "guided_grad_cam(upsample='nearest')", layer=LAYER)
    _close(got, _nhwc(gc.attribute(_t(xs), target=T)), TOL)
    assert jaxplain.registry.settings_of(jaxplain.METHODS["guided_grad_cam"])["upsample"] == "bilinear"
    with pytest.raises(InputError, match="upsample must be one of"):
        jaxplain.explain(m, xs, T, "guided_grad_cam(upsample='bicubic')", layer=LAYER)
    with pytest.raises(InputError, match="regressor must be one of"):
        jaxplain.explain(m, xs, T, "lime(regressor='elastic_net')", key=0)
