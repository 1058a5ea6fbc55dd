"""Infidelity and max-sensitivity against captum.metrics on the same weights and the same
perturbations (drawn by our helpers, handed to Captum through its ``perturb_func``), and against
answers known in closed form on linear and quadratic models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum.attr import Saliency
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max

import jaxplain
from jaxplain import baselines
from jaxplain.errors import InputError
from jaxplain.metrics.robustness import infidelity_perturbations, sensitivity_noise
from tests.compare import assert_close
from tests.compare import to_torch as _nchw
from tests.conftest import tiny_pair

TARGET = 3
KEY = jax.random.key(7)
# float32 forward passes in torch and in XLA differ by ~1e-6 on O(1) logits; the metrics are
# squared or normed differences of O(0.1-1) quantities, so 1e-4 relative holds with margin.
CAPTUM_TOL = 1e-4
pytestmark = pytest.mark.usefixtures("quick_threefry")  # the metrics and helpers draw under the same setting


def _torch(a) -> torch.Tensor:
    """NHWC (or [N, H, W, C] stacks) -> NCHW torch, no grad."""
    return torch.tensor(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def toy_model(kind: str, w: np.ndarray, b: float = 0.3) -> jaxplain.Model:
    """``linear``: logits ``[sum(w x) + b, -sum(w x)]``; ``quadratic``: ``[sum(w x^2), -sum(w x)]``
    (its target-0 gradient is ``2 w x``)."""

    def apply(params, x, taps=None, relu=None):
        s = jnp.sum(params["w"] * (x * x if kind == "quadratic" else x))
        return jnp.stack([s + b, -jnp.sum(params["w"] * x)]), {}

    return jaxplain.Model(apply=apply, params={"w": jnp.asarray(w)}, layers=(), preprocess=None,
                          input_size=None, name=kind)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(3)
    return rng.normal(size=(8, 8, 3)).astype(np.float32), rng.normal(size=(2, 8, 8, 3)).astype(np.float32)


# ---------------------------------------------------------------- infidelity


@pytest.mark.parametrize("perturbation,normalize", [("gaussian", False), ("square", True)])
def test_infidelity_matches_captum(pair, xs, perturbation, normalize):
    """Captum's ``infidelity`` with a ``perturb_func`` returning exactly the perturbations our
    metric draws for each image (``infidelity_perturbations`` with evaluate's per-image key
    ``fold_in(named(key, "infidelity", settings), b)``, ``baselines``' policy): ``(I, x - I)`` Gaussian (sigma 0.1, so that ``f(x) - f(x - I)`` is far
    above float32 noise), or Yeh's square indicator with the square zeroed. The attribution is
    the gradient plus noise, so the residual is not a cancellation."""
    net, m = pair
    s = 10
    a = np.asarray(jaxplain.explain(m, xs, TARGET, "gradient"))
    a = a + 0.05 * np.random.default_rng(0).normal(size=a.shape).astype(np.float32)
    settings = dict(perturbation=perturbation, sigma=0.1, samples=s, normalize=normalize)
    ours = jaxplain.evaluate(m, xs, TARGET, a, "infidelity", key=KEY, **settings)["score"]

    keys = baselines.per_image(baselines.named(KEY, jaxplain.METRICS["infidelity"], settings), np.arange(len(xs)))
    draw = jax.jit(jax.vmap(lambda k, x: infidelity_perturbations(k, x, s, perturbation=perturbation, sigma=0.1)))
    i_all, moved = (_torch(np.asarray(d).reshape(-1, *xs.shape[1:])) for d in draw(keys, xs))  # image-major, as Captum

    def perturb_func(inputs):
        assert inputs.shape == moved.shape
        return i_all, moved

    ref = captum_infidelity(net, perturb_func, _torch(xs), _torch(a), target=TARGET, n_perturb_samples=s,
                            normalize=normalize)
    assert_close(ours, ref.numpy(), CAPTUM_TOL)


def test_infidelity_given_perturbations_per_image_match_captum(pair, xs):
    """An array ``[B, S, H, W, C]`` of perturbations (one set per image) is used as given, with
    ``x - I``, as Captum's default convention."""
    net, m = pair
    rng = np.random.default_rng(5)
    a = rng.normal(size=xs.shape[:3]).astype(np.float32)  # a map, repeated over channels
    i = (0.05 * rng.normal(size=(2, 4, 32, 32, 3))).astype(np.float32)
    ours = jaxplain.evaluate(m, xs, TARGET, a, "infidelity", perturbation=i)["score"]
    ref = captum_infidelity(net, lambda inputs: (_torch(i.reshape(8, 32, 32, 3)), inputs - _torch(i.reshape(8, 32, 32, 3))),
                            _torch(xs), _torch(np.repeat(a[..., None], 3, -1)), target=TARGET, n_perturb_samples=4)
    assert_close(ours, ref.numpy(), CAPTUM_TOL)


def test_infidelity_of_exact_attributions_is_zero(toy):
    """Linear model: ``f(x) - f(x - I) = sum(w I)``, so the gradient ``w`` has infidelity 0 for
    any ``I`` (Gaussian, or shared ones given as an array), and gradient x input ``w x`` has 0
    for square removal to the zero baseline. A wrong attribution does not."""
    w, x = toy
    m = toy_model("linear", w)
    grad = np.broadcast_to(w, x.shape)
    i = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype(np.float32)
    scale = float(np.mean(np.sum(i * w, axis=(1, 2, 3)) ** 2))  # E[(f(x) - f(x - I))^2]
    for settings in (dict(key=1), dict(perturbation=i), dict(perturbation=i, normalize=True)):
        got = jaxplain.evaluate(m, x, 0, grad, "infidelity", sigma=0.5, **settings)["score"]
        np.testing.assert_array_less(np.asarray(got), 1e-10 * scale)
    got = jaxplain.evaluate(m, x, 0, grad * x, "infidelity(perturbation='square', square_max=4)", key=2)["score"]
    np.testing.assert_array_less(np.asarray(got), 1e-10)
    wrong = jaxplain.evaluate(m, x, 0, -grad, "infidelity", perturbation=i)["score"]
    np.testing.assert_allclose(wrong, 4 * scale, rtol=1e-5)  # (-a - a)^2 = 4 a^2


def test_square_perturbations_are_yehs_squares(toy):
    """Each square perturbation is one all-channel square of side 1..square_max inside the image,
    zeroed in the perturbed input."""
    _, x = toy
    i, moved = jax.jit(lambda k, x: infidelity_perturbations(k, x, 200, perturbation="square", square_max=3))(KEY, x[0])
    i, moved = np.asarray(i), np.asarray(moved)
    sides = set()
    for one, mv in zip(i, moved):
        rows, cols = np.nonzero(one[..., 0])
        side = rows.max() - rows.min() + 1
        assert side == cols.max() - cols.min() + 1 and one[..., 0].sum() == side * side
        assert (one == one[..., :1]).all()
        np.testing.assert_array_equal(mv, np.where(one > 0, 0, x[0]))
        sides.add(int(side))
    assert sides == {1, 2, 3}


# ---------------------------------------------------------------- max-sensitivity


def test_max_sensitivity_matches_captum(pair, xs):
    """Captum's ``sensitivity_max`` with ``Saliency(abs=False)`` (our ``gradient``) and a
    ``perturb_func`` that adds exactly our noise (``sensitivity_noise`` with each image's key)."""
    net, m = pair
    a = np.asarray(jaxplain.explain(m, xs, TARGET, "gradient"))
    out = jaxplain.evaluate(m, xs, TARGET, a, "max_sensitivity", key=KEY)
    key = baselines.named(KEY, "max_sensitivity")  # baselines' policy: the metric's key, then the image's
    noise = _torch(np.concatenate([np.asarray(sensitivity_noise(jax.random.fold_in(key, b), 10, xs.shape[1:]))
                                   for b in range(len(xs))]))
    ref = sensitivity_max(Saliency(net).attribute, _nchw(xs), perturb_func=lambda inputs: inputs + noise,
                          target=TARGET, abs=False)
    assert_close(out["score"], ref.detach().numpy(), CAPTUM_TOL)
    assert out["sensitivities"].shape == (2, 10)
    np.testing.assert_allclose(out["sensitivities"].max(1), out["score"])


def test_max_sensitivity_known_answers(toy):
    """Linear model: the gradient does not move, sensitivity 0. Quadratic model: the gradient is
    ``2 w x``, so sample ``i`` scores ``||w d_i|| / ||w x||`` (``d_i`` our noise), here with
    chunks of 5 of 10 samples. A zero attribution is divided by 1, as Captum does."""
    w, x = toy
    lin = toy_model("linear", w)
    got = jaxplain.evaluate(lin, x, 0, np.broadcast_to(w, x.shape), "max_sensitivity", key=0)["score"]
    np.testing.assert_array_equal(got, 0)
    quad = toy_model("quadratic", w)
    grad = 2 * w * x
    spec = "max_sensitivity(radius=0.1, chunk=5)"
    out = jaxplain.evaluate(quad, x, 0, grad, spec, key=KEY)["sensitivities"]
    zero = jaxplain.evaluate(quad, x, 0, np.zeros_like(x), spec, key=KEY)["sensitivities"]
    key = baselines.named(KEY, "max_sensitivity", {"radius": 0.1})  # chunk draws nothing
    d = jax.jit(jax.vmap(lambda b: sensitivity_noise(jax.random.fold_in(key, b), 10, x.shape[1:], 0.1)))(jnp.arange(2))
    d = np.asarray(d)
    assert np.all(np.abs(d) <= 0.1) and np.abs(d).max() > 0.09
    for b in range(2):
        expected = np.linalg.norm((2 * w * d[b]).reshape(10, -1), axis=1) / np.linalg.norm(grad[b])
        np.testing.assert_allclose(out[b], expected, rtol=1e-5)
        np.testing.assert_allclose(zero[b], np.linalg.norm((2 * w * (x[b] + d[b])).reshape(10, -1), axis=1), rtol=1e-5)


def test_max_sensitivity_re_explains_with_a_random_method(toy):
    """``method`` as a registered name with settings; a random method gets a key per sample, so
    the result is reproducible from ``key`` and changes with it."""
    w, x = toy
    quad = toy_model("quadratic", w)
    a = 2 * w * x
    spec = "max_sensitivity(method='smoothgrad(samples=4)', samples=3)"
    one, again = (jaxplain.evaluate(quad, x, 0, a, spec, key=1)["score"] for _ in range(2))
    other = jaxplain.evaluate(quad, x, 0, a, spec, key=2)["score"]
    np.testing.assert_array_equal(one, again)
    assert np.all(np.asarray(one) > 0) and not np.array_equal(one, other)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("metric,settings,message", [
    ("infidelity", dict(samples=0, key=0), "samples must be a positive int"),
    ("infidelity", dict(perturbation="uniform", key=0), "perturbation must be one of"),
    ("infidelity", dict(perturbation=np.zeros((3, 4, 4, 3), np.float32)), "perturbation must be 'gaussian', 'square' or an array"),
    ("infidelity", dict(sigma=0.0, key=0), "sigma must be a number > 0"),
    ("infidelity", dict(perturbation="square", square_max=9, key=0), "square_max must be at most"),
    ("infidelity", dict(score="loss", key=0), "score must be one of"),
    ("infidelity", {}, "infidelity with perturbation='gaussian' is random: pass key"),
    ("max_sensitivity", dict(samples=0, key=0), "samples must be a positive int"),
    ("max_sensitivity", dict(radius=0.0, key=0), "radius must be a number > 0"),
    ("max_sensitivity", dict(radius=-1, key=0), "radius must be a number > 0"),
    ("max_sensitivity", {}, "max_sensitivity is random: pass key"),
    ("max_sensitivity", dict(method="grad_cam", key=0), "the method returns shape"),
    ("max_sensitivity", dict(method="nope", key=0), "unknown method 'nope'"),
])
def test_bad_settings(toy, metric, settings, message):
    w, x = toy
    m = toy_model("linear", w)
    if settings.get("method") == "grad_cam":
        m = tiny_pair(seed=2)[1]
        x = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(InputError, match=message):
        jaxplain.evaluate(m, x, 0, np.ones(x.shape, np.float32), metric, **settings)


@pytest.mark.parametrize("metric", ["infidelity", "max_sensitivity"])
def test_bad_attributions(toy, metric):
    w, x = toy
    m = toy_model("linear", w)
    with pytest.raises(InputError, match="attributions must be"):
        jaxplain.evaluate(m, x, 0, np.ones((2, 8, 3), np.float32), metric, key=0)
    bad = np.ones(x.shape, np.float32)
    bad[1, 2, 2, 0] = np.nan
    with pytest.raises(InputError, match=r"attributions of images \[1\] contain NaN"):
        jaxplain.evaluate(m, x, 0, bad, metric, key=0)
