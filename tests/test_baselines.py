"""The one vocabulary (``jaxplain.baselines``): each baseline name is the same image through a
method and a metric, one score setting, one key policy.

A linear model ``logit_k(x) = sum(W_k * x)`` makes the baseline visible: integrated gradients
gives ``(x - b) * W_t`` exactly (its gradient is constant), deletion's last point (one step) and
insertion's first are ``f(b) = sum(W_t * b)``, feature ablation over one segment ``f(x) - f(b)``.
Each expected image is computed here from its definition (SciPy's Gaussian filter for the blurs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import jaxplain
from jaxplain import InputError, baselines
from jaxplain.checks import as_key
from jaxplain.types import Model

H, W, C, K = 12, 12, 3, 3
RNG = np.random.default_rng(5)
X = RNG.normal(size=(2, H, W, C)).astype(np.float32)
T = np.array([0, 2])
WEIGHTS = RNG.normal(size=(K, H, W, C)).astype(np.float32)


def _preprocess(u8: np.ndarray) -> np.ndarray:
    """A made-up normalisation, so "black" and "white" are not 0 and 1."""
    return (u8.astype(np.float32) - 100.0) / 50.0


def _model(power: int = 1) -> Model:
    def apply(params, x, taps=None, relu=None):
        return jnp.einsum("khwc,hwc->k", params, x**power), {}

    return Model(apply, jnp.asarray(WEIGHTS), ("logits",), _preprocess, None, name=f"power{power}")


def _rise_blur(x: np.ndarray) -> np.ndarray:
    """The RISE code's substrate: ``gkern(11, 5)`` (a 2-D impulse through SciPy's gaussian_filter,
    reflecting edges) applied per channel with zero padding 5."""
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    k = ndimage.gaussian_filter(impulse, 5)
    return np.stack([ndimage.correlate(x[..., c].astype(np.float64), k, mode="constant") for c in range(x.shape[-1])], -1)


def _expected(name, x: np.ndarray, key=None) -> np.ndarray:
    """The baseline image ``[H, W, C]`` of one image, from each name's definition."""
    if not isinstance(name, str):
        return np.broadcast_to(np.asarray(name, np.float32), x.shape)
    return {
        "zeros": lambda: np.zeros_like(x),
        "black": lambda: np.full_like(x, (0 - 100) / 50),
        "white": lambda: np.full_like(x, (255 - 100) / 50),
        "mean": lambda: np.broadcast_to(x.mean((0, 1)), x.shape),
        "blur": lambda: ndimage.gaussian_filter(x.astype(np.float64), [10, 10, 0], mode="constant"),
        "rise_blur": lambda: _rise_blur(x),
        "uniform": lambda: np.asarray(jax.random.uniform(key, x.shape, jnp.float32, x.min(), x.max())),
    }[name]()


ARRAY = RNG.normal(size=(H, W, C)).astype(np.float32)
PER_IMAGE = RNG.normal(size=(2, H, W, C)).astype(np.float32)
NAMES = [0.0, 0.5, "zeros", "black", "white", "mean", "blur", "rise_blur", "uniform", "array", "per_image"]


@pytest.mark.parametrize("name", NAMES, ids=str)
def test_each_baseline_is_the_same_image_for_methods_and_metrics(name):
    """IG's baseline, deletion's and insertion's substrate and feature ablation's fill are the image
    the name defines (float32 sums: atol 1e-4 on O(10) logits)."""
    m = _model()
    keys = jax.random.split(jax.random.key(7), 2)  # B keys are used as they are: one draw for all
    value = {"array": ARRAY, "per_image": PER_IMAGE}.get(name, name) if isinstance(name, str) else name
    want = np.stack([_expected(ARRAY if name == "array" else PER_IMAGE[i] if name == "per_image" else name, X[i],
                               keys[i]) for i in range(2)])
    f_base = np.einsum("bhwc,bhwc->b", WEIGHTS[T], want)
    f_x = np.einsum("bhwc,bhwc->b", WEIGHTS[T], X)

    ig = jaxplain.explain(m, X, T, "integrated_gradients", baseline=value, key=keys, steps=4)
    np.testing.assert_allclose(np.asarray(ig), (X - want) * WEIGHTS[T], atol=1e-4)

    attr = np.asarray(RNG.normal(size=(2, H, W)), np.float32)
    dele = jaxplain.evaluate(m, X, T, attr, "deletion", baseline=value, key=keys, steps=1, score="logit")
    np.testing.assert_allclose(np.asarray(dele["curve"][:, -1]), f_base, atol=1e-4)
    if name != "uniform":  # insertion takes no key
        ins = jaxplain.evaluate(m, X, T, attr, "insertion", baseline=value, steps=1, score="logit")
        np.testing.assert_allclose(np.asarray(ins["curve"][:, 0]), f_base, atol=1e-4)
        fa = jaxplain.explain(m, X, T, "feature_ablation", baseline=value, segments="grid", cells=1)
        np.testing.assert_allclose(np.asarray(fa)[:, 0, 0], f_x - f_base, atol=1e-4)


def test_insertion_defaults_to_the_rise_blur_and_blur_means_sigma_10_everywhere():
    m = _model()
    attr = np.ones((2, H, W), np.float32)
    ins = jaxplain.evaluate(m, X, T, attr, "insertion", steps=1, score="logit")
    want = np.einsum("bhwc,bhwc->b", WEIGHTS[T], np.stack([_rise_blur(x) for x in X]))
    np.testing.assert_allclose(np.asarray(ins["curve"][:, 0]), want, atol=1e-4)
    x = X[0]
    np.testing.assert_allclose(np.asarray(baselines.baseline_image("blur", jnp.asarray(x))), _expected("blur", x), atol=1e-5)
    assert not np.allclose(_expected("blur", x), _rise_blur(x), atol=1e-2)  # two names, two images


@pytest.mark.parametrize("call", ["explain", "evaluate"])
def test_an_unknown_baseline_lists_the_vocabulary(call):
    m = _model()
    with pytest.raises(InputError, match=r"unknown baseline 'grey'; a baseline is a number, .*'white'.*'rise_blur'"):
        if call == "explain":
            jaxplain.explain(m, X, T, "integrated_gradients", baseline="grey")
        else:
            jaxplain.evaluate(m, X, T, np.ones((2, H, W), np.float32), "deletion", baseline="grey")


def test_one_score_vocabulary():
    """Every method and metric with a ``score`` defaults to ``"logit"`` or ``"probability"``; the
    scorer is the logit or the softmax (computed here); ``"softmax"`` is ``"probability"``."""
    from jaxplain import registry

    for table in (registry.METHODS, registry.METRICS):
        for name, fn in table.items():
            s = registry.settings_of(fn)
            if "score" in s:
                assert s["score"] in baselines.SCORES, name
    m, x = _model(), jnp.asarray(X[0])
    logits = np.einsum("khwc,hwc->k", WEIGHTS, X[0]).astype(np.float64)
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for score, want in [("logit", logits[1]), ("probability", p[1]), ("softmax", p[1])]:
        np.testing.assert_allclose(float(baselines.scorer(m.apply, m.params, 1, score)(x)), want, rtol=1e-5, atol=2e-5)  # float32 sum of 432 terms
    with pytest.raises(InputError, match=r"score must be one of \('logit', 'probability'\)"):
        baselines.check_score("prob")


@pytest.mark.parametrize("spec", ["rise(masks=8, cells=3)", "lime(samples=8, cells=2)",
                                  "feature_ablation(cells=2)", "kernel_shap(cells=2, exact=True)"])
def test_softmax_is_probability_for_methods(spec):
    m, key = _model(), {} if spec.startswith(("feature", "kernel")) else {"key": 0}
    a = jaxplain.explain(m, X, T, spec, score="softmax", **key)
    b = jaxplain.explain(m, X, T, spec, score="probability", **key)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("metric", ["deletion(steps=2)", "insertion(steps=2)", "region_perturbation(patch=4, regions=3)",
                                    "mu_fidelity(grid_size=3, samples=4)"])
def test_softmax_is_probability_for_metrics(metric):
    m, attr = _model(), np.asarray(RNG.normal(size=(2, H, W)), np.float32)
    key = {"key": 0} if metric.startswith("mu") else {}
    a = jaxplain.evaluate(m, X, T, attr, metric, score="softmax", **key)
    b = jaxplain.evaluate(m, X, T, attr, metric, score="probability", **key)
    np.testing.assert_array_equal(np.asarray(a["score"]), np.asarray(b["score"]))


def test_a_methods_key_names_the_method_and_its_settings():
    """explain's key for image i is ``fold_in(named(key, name, settings), i)``: smoothgrad and
    vargrad with the same key and settings draw different noise (the model is quadratic, so the
    noise shows), and smoothgrad's draws are its own."""
    m = _model(power=2)
    settings = dict(samples=3, sigma=0.5)
    got = np.asarray(jaxplain.explain(m, X, T, "smoothgrad", key=0, **settings))
    for name, same in [("smoothgrad", True), ("vargrad", False)]:
        keys = baselines.per_image(baselines.named(0, name, settings), np.arange(2))
        direct = np.stack([jaxplain.smoothgrad(m.apply, m.params, jnp.asarray(X[i]), T[i], key=keys[i], **settings)
                           for i in range(2)])
        assert np.allclose(got, direct, rtol=1e-5, atol=1e-6) == same, name
    assert baselines.identity("smoothgrad", settings) != baselines.identity("vargrad", settings)
    # the same settings spelled another way (a default given, a chunk) draw alike
    again = jaxplain.explain(m, X, T, "smoothgrad(samples=3, base='gradient')", sigma=0.5, key=0, chunk=1)
    np.testing.assert_allclose(np.asarray(again), got, rtol=1e-5, atol=1e-6)


def test_draws_do_not_depend_on_the_batch_size():
    m = _model(power=2)
    whole = jaxplain.explain(m, X, T, "smoothgrad", samples=3, sigma=0.5, key=1)
    ones = jaxplain.explain(m, X, T, "smoothgrad", samples=3, sigma=0.5, key=1, batch_size=1)
    np.testing.assert_allclose(np.asarray(ones), np.asarray(whole), rtol=1e-5, atol=1e-6)
    attr = np.asarray(RNG.normal(size=(2, H, W)), np.float32)
    a = jaxplain.evaluate(m, X, T, attr, "deletion", baseline="uniform", steps=2, key=1)["curve"]
    b = jaxplain.evaluate(m, X, T, attr, "deletion", baseline="uniform", steps=2, key=1, batch_size=1)["curve"]
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_one_key_normaliser():
    np.testing.assert_array_equal(jax.random.key_data(as_key(3)), jax.random.key_data(jax.random.key(3)))
    raw = jax.random.PRNGKey(3)
    assert as_key(raw) is raw and as_key(None) is None
    with pytest.raises(InputError, match=r"lime is random: pass key=jax.random.key\(...\) or an int seed, or the coal"):
        as_key(None, "lime is random", ", or the coalitions")
    for bad in ["seed", np.ones(2, np.float32), 1.5]:
        with pytest.raises(InputError, match="key must be a jax.random.key"):
            as_key(bad)
