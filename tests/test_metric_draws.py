"""Replaying a metric's draws elsewhere: the public draw functions of ``jaxplain.metrics`` with the
image keys of ``jaxplain.evaluate_keys`` give exactly what ``evaluate`` drew, fed to Quantus 0.6 /
Captum (or a loop from the paper's formula) on the same weights in torch.

The network: a 3x3 conv (random non-zero biases), ReLU, a flatten and a dense layer, written
once in JAX and once in torch with the same weights; 12x12 images, cheap to compile."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quantus
import scipy.stats
import torch
from captum.metrics import infidelity as captum_infidelity
from quantus.functions.perturb_func import noisy_linear_imputation

import jaxplain
from jaxplain.errors import InputError
from jaxplain.metrics import (
    infidelity_perturbations,
    mu_fidelity_draws,
    randomised_params,
    road_noise,
    sensitivity_noise,
    substrate,
)
from tests.compare import assert_close

H = W = 12
K = 3
pytestmark = pytest.mark.usefixtures("quick_threefry")


def weights(c: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def f(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)
    return {"conv": {"kernel": 0.5 * f(3, 3, c, 4), "bias": 0.3 * f(4)},
            "dense": {"kernel": 0.1 * f(H * W * 4, K), "bias": 0.3 * f(K)}}


def apply(params, x, taps=None, relu=None):
    relu = relu or jax.nn.relu
    h = jax.lax.conv_general_dilated(x[None], params["conv"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + params["conv"]["bias"]
    h = relu(h)
    return h.reshape(-1) @ params["dense"]["kernel"] + params["dense"]["bias"], {"conv": h}


def torch_net(params) -> torch.nn.Module:
    """The same network in torch (NCHW; the flatten in our HWC order), ``params`` loaded."""
    c = params["conv"]["kernel"].shape[2]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(c, 4, 3, padding=1)
            self.dense = torch.nn.Linear(H * W * 4, K)

        def forward(self, x):
            h = torch.relu(self.conv(x)).permute(0, 2, 3, 1).reshape(len(x), -1)
            return self.dense(h)

    net = Net().eval()
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor(np.asarray(params["conv"]["kernel"]).transpose(3, 2, 0, 1)))
        net.conv.bias.copy_(torch.tensor(np.asarray(params["conv"]["bias"])))
        net.dense.weight.copy_(torch.tensor(np.asarray(params["dense"]["kernel"]).T))
        net.dense.bias.copy_(torch.tensor(np.asarray(params["dense"]["bias"])))
    return net


def model(c: int = 3, seed: int = 0) -> jaxplain.Model:
    params = jax.tree.map(jnp.asarray, weights(c, seed))
    return jaxplain.Model(apply=apply, params=params, layers=("conv", "dense"), preprocess=None, input_size=(H, W),
                          channels=c, name="tiny_flat")


def nchw(a) -> torch.Tensor:
    a = np.asarray(a, np.float32)
    return torch.tensor(np.ascontiguousarray(np.moveaxis(a, -1, -3)))


def logits(net, x_hwc) -> np.ndarray:
    with torch.no_grad():
        return net(nchw(x_hwc)).numpy()


def torch_gradient(net, x_nchw: torch.Tensor, targets) -> torch.Tensor:
    t = x_nchw.clone().requires_grad_(True)
    net(t)[torch.arange(len(t)), torch.as_tensor(np.asarray(targets))].sum().backward()
    return t.grad


@pytest.fixture(scope="module")
def case():
    m = model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, H, W, 3)).astype(np.float32)
    a = rng.normal(size=x.shape).astype(np.float32)  # continuous: no ties in any ranking
    return m, torch_net(m.params), x, a, np.array([0, 2])


def test_mu_fidelity_draws_replayed_in_quantus(case, monkeypatch):
    """Quantus' ``FaithfulnessCorrelation`` handed our subsets (its ``np.random.choice``, run then
    image) and our ``"uniform"`` fill (its perturb function): its per-image Pearson is ours; the
    metric's drops and subset sums are the torch net's on ``where(mask, fill, x)`` and the
    attribution summed over the masks, so those are the draws it used. Measured: Pearson 9e-8,
    drops 4e-6 (logits up to 30), sums 2e-6."""
    m, net, x, a, t = case
    spec = "mu_fidelity(grid_size=6, subset_percent=0.25, samples=20, baseline='uniform')"
    settings = {"grid_size": 6, "subset_percent": 0.25, "samples": 20, "baseline": "uniform"}
    out = jaxplain.evaluate(m, x, t, a, spec, key=4)
    keys = jaxplain.evaluate_keys(spec, 4, len(x))
    draws = [mu_fidelity_draws(keys[i], jnp.asarray(x[i]), **settings) for i in range(2)]
    masks = [np.asarray(d[0]) for d in draws]
    fills = [np.asarray(d[1]) for d in draws]
    for i in range(2):
        moved = np.where(masks[i][..., None], fills[i], x[i])
        drops = logits(net, x[i][None])[0, t[i]] - logits(net, moved)[:, t[i]]
        np.testing.assert_allclose(out["drops"][i], drops, atol=1e-5)
        np.testing.assert_allclose(out["sums"][i], (masks[i][..., None] * a[i]).sum((1, 2, 3)), atol=1e-4)
    assert masks[0].sum((1, 2)).tolist() == [36] * 20 and not np.array_equal(masks[0], masks[1])
    assert (fills[0] >= x[0].min()).all() and (fills[0] <= x[0].max()).all() and np.unique(fills[0]).size > 400

    chw = [[np.flatnonzero(np.broadcast_to(mk, (3, H, W))) for mk in ms] for ms in masks]
    queue = iter([chw[i][r] for r in range(20) for i in range(2)])
    monkeypatch.setattr(np.random, "choice", lambda n, size, replace=True: next(queue))
    flat_fill = np.stack([np.moveaxis(f, -1, 0).reshape(-1) for f in fills])

    def perturb(arr, indices, **kw):
        out = arr.copy()
        for b in range(len(arr)):
            out[b, indices[b]] = flat_fill[b, indices[b]]
        return out

    metric = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=108, perturb_func=perturb, normalise=False,
                                             abs=False, return_aggregate=False, disable_warnings=True)
    theirs = metric(model=net, x_batch=np.moveaxis(x, -1, 1), y_batch=t, a_batch=np.moveaxis(a, -1, 1),
                    softmax=False, device="cpu")
    np.testing.assert_allclose(out["score"], theirs, atol=1e-4)


def test_sensitivity_noise_replayed_in_quantus_and_method_keys(case):
    """Quantus' ``MaxSensitivity`` (gradient explanations by torch, no normalisation) with a
    perturb function returning ``x + our noise``: its max equals ours. A random method
    (gradient plus noise from its key) replayed from ``sensitivity_noise(..., method_keys=True)``
    gives the metric's sensitivities sample by sample. Measured: at most 3.2e-7 of the scale."""
    m, net, x, _, t = case
    grad = np.asarray(jaxplain.explain(m, x, t, "gradient"))
    spec = "max_sensitivity(samples=5, radius=0.1)"
    out = jaxplain.evaluate(m, x, t, grad, spec, key=5)
    keys = jaxplain.evaluate_keys(spec, 5, len(x))
    noise = np.stack([np.asarray(sensitivity_noise(k, 5, x.shape[1:], 0.1)) for k in keys])  # [B, S, H, W, C]
    steps = itertools.count()

    def perturb(arr, indices, **kw):
        s = next(steps)
        return arr + np.moveaxis(noise[:, s], -1, 1).reshape(len(arr), -1)

    def explain_func(model, inputs, targets, **kw):
        return torch_gradient(model, torch.as_tensor(np.asarray(inputs)), targets).numpy()

    theirs = quantus.MaxSensitivity(nr_samples=5, perturb_func=perturb, normalise=False, abs=False,
                                    disable_warnings=True)(model=net, x_batch=np.moveaxis(x, -1, 1), y_batch=t,
                                                           a_batch=np.moveaxis(grad, -1, 1),
                                                           explain_func=explain_func, device="cpu")
    assert_close(out["score"], np.asarray(theirs), 1e-4)

    def noisy_gradient(apply, params, x, target, *, key):
        g = jax.grad(lambda v: apply(params, v)[0][target])(x)
        return g + 0.05 * jax.random.normal(key, x.shape)

    got = jaxplain.evaluate(m, x, t, grad, "max_sensitivity", method=noisy_gradient, samples=3, key=6)
    keys = jaxplain.evaluate_keys("max_sensitivity", 6, len(x), method=noisy_gradient, samples=3)
    for b in range(2):
        d, mk = sensitivity_noise(keys[b], 3, x.shape[1:], method_keys=True)
        moved = nchw(x[b][None] + np.asarray(d))
        again = torch_gradient(net, moved, [t[b]] * 3).numpy() + np.moveaxis(
            np.stack([0.05 * np.asarray(jax.random.normal(k, x.shape[1:])) for k in mk]), -1, 1)
        ref = np.linalg.norm((again - np.moveaxis(grad[b], -1, 0)).reshape(3, -1), axis=1) / np.linalg.norm(grad[b])
        assert_close(got["sensitivities"][b], ref, 1e-4)


def test_infidelity_perturbations_replayed_in_captum(case):
    """Captum's ``infidelity`` with a ``perturb_func`` returning our ``(I, x - I)``. Measured: 1e-6 of the scale."""
    m, net, x, a, t = case
    spec = "infidelity(samples=6, sigma=0.2)"
    ours = jaxplain.evaluate(m, x, t, a, spec, key=7)["score"]
    keys = jaxplain.evaluate_keys(spec, 7, len(x))
    drawn = [infidelity_perturbations(k, jnp.asarray(xi), 6, sigma=0.2) for k, xi in zip(keys, x)]
    i_all = nchw(np.concatenate([np.asarray(d[0]) for d in drawn]))
    moved = nchw(np.concatenate([np.asarray(d[1]) for d in drawn]))
    ref = captum_infidelity(net, lambda inputs: (i_all, moved), nchw(x), nchw(a), target=torch.tensor(t),
                            n_perturb_samples=6)
    assert_close(ours, ref.numpy(), 1e-4)


def test_road_noise_replayed_in_quantus():
    """Quantus' ``ROAD`` on one channel (where Quantus runs), its perturb function Quantus' own
    ``noisy_linear_imputation`` without noise plus our ``road_noise`` on the removed pixels: its
    accuracy per percentage is ours, and the torch net's probabilities on those images are our
    curve (noise 0.3, so the draws matter). Measured: accuracy equal, curve 2.5e-7 of the scale."""
    m = model(c=1, seed=3)
    net = torch_net(m.params)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, H, W, 1)).astype(np.float32)
    a = rng.normal(size=(4, H, W)).astype(np.float32)
    t = np.argmax(np.asarray(jax.vmap(lambda v: apply(m.params, v)[0])(x)), 1)
    percentages = [10, 30, 50, 80]
    spec = "road(percentages=[10, 30, 50, 80], noise=0.3)"
    out = jaxplain.evaluate(m, x, t, a, spec, key=8)
    keys = jaxplain.evaluate_keys(spec, 8, len(x))
    noise = np.stack([np.asarray(road_noise(k, (H, W, 1), percentages=percentages, noise=0.3)) for k in keys])
    calls, seen = itertools.count(), []

    def perturb(arr, indices, **kw):  # Quantus' order: percentage, then image
        p, b = divmod(next(calls), len(x))
        out = noisy_linear_imputation(arr, indices, noise=0.0)
        removed = np.zeros(H * W, bool)
        removed[np.asarray(indices).ravel()] = True
        out = np.where(removed.reshape(1, H, W), out + noise[b, p, ..., 0][None], out)
        seen.append((b, p, out))
        return out

    theirs = quantus.ROAD(percentages=percentages, perturb_func=perturb, normalise=False, disable_warnings=True)(
        model=net, x_batch=np.moveaxis(x, -1, 1), y_batch=t, a_batch=a[:, None], device="cpu")
    np.testing.assert_allclose(np.asarray(out["accuracy"]).mean(0), [theirs[p] for p in percentages], atol=1e-6)
    curve = np.zeros((4, 4))
    for b, p, img in seen:
        with torch.no_grad():
            curve[b, p] = torch.softmax(net(torch.tensor(img[None], dtype=torch.float32)), 1)[0, t[b]].item()
    assert_close(out["curve"], curve, 1e-4)
    clean = jaxplain.evaluate(m, x, t, a, "road(percentages=[10, 30, 50, 80], noise=0.0)")["curve"]
    assert np.abs(np.asarray(clean) - curve).max() > 1e-3  # the noise changed the outcome


def test_randomised_params_replayed_in_torch(case):
    """Each stage's weights from ``randomised_params`` loaded into the torch twin: the torch
    gradient's |map| against the attribution's, Spearman by SciPy, is the metric's per stage
    (cascading and independent). Measured: 7e-9."""
    m, _, x, _, t = case
    grad = np.asarray(jaxplain.explain(m, x, t, "gradient"))
    for mode in ("cascading", "independent"):
        out = jaxplain.evaluate(m, x, t, grad, "model_randomisation", mode=mode, key=9)
        stages = randomised_params(m, 9, mode=mode)
        assert [n for n, _ in stages] == ["dense", "conv"] == list(out["layers"])
        for s, (_, params) in enumerate(stages):
            again = torch_gradient(torch_net(params), nchw(x), t).abs().sum(1).numpy()
            for b in range(2):
                rho = scipy.stats.spearmanr(np.abs(grad[b]).sum(-1).ravel(), again[b].ravel())[0]
                np.testing.assert_allclose(out["spearman"][b, s], rho, atol=1e-5)
    cascade = randomised_params(m, 9)
    kept, drawn = cascade[0][1], cascade[1][1]  # stage 1 keeps the conv, stage 2 draws it
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kept["conv"]), jax.tree.leaves(m.params["conv"])))
    assert not np.array_equal(drawn["conv"]["kernel"], m.params["conv"]["kernel"])


def test_deletion_uniform_fill_replayed_in_torch(case):
    """``deletion(baseline="uniform")``: the fill ``substrate(x, "uniform", key)`` with the image's
    key, pixels replaced in attribution order (12 per step, the RISE code's ``CausalMetric``) and
    the torch net's probabilities: the metric's curve. Measured: 3.5e-7 of the scale."""
    m, net, x, a, t = case
    spec = "deletion(baseline='uniform')"
    out = jaxplain.evaluate(m, x, t, a, spec, key=10)
    keys = jaxplain.evaluate_keys(spec, 10, len(x))
    for b in range(2):
        fill = np.asarray(substrate(jnp.asarray(x[b]), "uniform", keys[b]))
        order = np.argsort(-a[b].sum(-1).ravel(), kind="stable")
        imgs = []
        for step in range(H + 1):
            off = np.zeros(H * W, bool)
            off[order[: step * W]] = True
            imgs.append(np.where(off.reshape(H, W, 1), fill, x[b]))
        with torch.no_grad():
            curve = torch.softmax(net(nchw(np.stack(imgs))), 1)[:, t[b]].numpy()
        assert_close(out["curve"][b], curve, 1e-5)


def test_two_keys_draw_differently_and_bad_keys(case):
    """Every draw function draws anew for another key (and per image: ``evaluate_keys`` differ);
    ``evaluate_keys`` without a key, or with a wrong count, is an ``InputError``."""
    m, _, x, _, _ = case
    k1, k2 = jax.random.key(1), jax.random.key(2)
    xi = jnp.asarray(x[0])
    pairs = [
        (mu_fidelity_draws(k1, xi, samples=4, baseline="uniform"), mu_fidelity_draws(k2, xi, samples=4, baseline="uniform")),
        (sensitivity_noise(k1, 3, xi.shape), sensitivity_noise(k2, 3, xi.shape)),
        (infidelity_perturbations(k1, xi, 3), infidelity_perturbations(k2, xi, 3)),
        (road_noise(k1, xi.shape), road_noise(k2, xi.shape)),
        (randomised_params(m, 1, mode="full")[0][1], randomised_params(m, 2, mode="full")[0][1]),
    ]
    for one, two in pairs:
        for u, v in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
            assert not np.array_equal(np.asarray(u), np.asarray(v))
    keys = jax.random.key_data(jaxplain.evaluate_keys("mu_fidelity", 0, 3))
    assert len({tuple(np.asarray(k).tolist()) for k in keys}) == 3
    with pytest.raises(InputError, match="evaluate_keys needs a key"):
        jaxplain.evaluate_keys("mu_fidelity", None, 2)
    with pytest.raises(InputError, match=r"key must be one key or one per image \(2\)"):
        jaxplain.evaluate_keys("mu_fidelity", jax.random.split(k1, 3), 2)
