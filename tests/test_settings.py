"""Settings on their way into the compiled call: dicts stay dicts, arrays nest, baselines and
keys come one per image, bad values get a jaxplain error naming them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain import InputError, baselines, registry
from jaxplain.engine.settings import freeze, thaw

X = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
T = np.array([1, 4, 7])


def test_dict_settings_arrive_as_dicts(tiny_model):
    """A method's dict setting reaches it as the dict it was given, nested dicts too (they were
    frozen into tuples for the compile cache, and only ``base_settings`` came back)."""
    seen = []

    def method(apply, params, x, target, *, opts=None):
        seen.append(opts)
        return jnp.zeros(())

    jaxplain.explain(tiny_model, X, T, method, opts={"b": [1, 2], "a": {"c": 3}})
    assert seen and all(o == {"a": {"c": 3}, "b": (1, 2)} and isinstance(o["a"], dict) for o in seen)
    assert thaw(freeze({"x": {"y": 1}})) == {"x": {"y": 1}}
    assert freeze({"a": 1}) != freeze((("a", 1),))  # a frozen dict never equals a tuple of pairs


def _per_image_loop(m, name, baselines, **settings):
    return np.concatenate([np.asarray(jaxplain.explain(m, X[i : i + 1], T[i : i + 1], name, baseline=b, **settings))
                           for i, b in enumerate(baselines)])


@pytest.mark.parametrize("name,settings", [
    ("integrated_gradients", dict(steps=6, chunk=4)),
    ("occlusion", dict(window=(8, 8), strides=(8, 8))),
    ("layer_integrated_gradients", dict(steps=4)),
])
def test_one_baseline_per_image(tiny_model, name, settings):
    """``baseline [B, H, W, C]``: image i against baseline i, as a loop of one-image calls
    (Captum's per-example baselines); the shared ``[H, W, C]`` form is unchanged."""
    m = tiny_model
    baselines = np.random.default_rng(1).normal(size=X.shape).astype(np.float32)
    got = np.asarray(jaxplain.explain(m, X, T, name, baseline=baselines, batch_size=2, **settings))
    want = _per_image_loop(m, name, baselines, **settings)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())  # batching reorders sums
    shared = np.asarray(jaxplain.explain(m, X, T, name, baseline=baselines[0], **settings))
    np.testing.assert_allclose(shared, _per_image_loop(m, name, [baselines[0]] * 3, **settings),
                               rtol=1e-5, atol=1e-5 * np.abs(shared).max())
    with pytest.raises(InputError, match=r"baseline has shape \(2, 32, 32, 3\): one per image needs 3"):
        jaxplain.explain(m, X, T, name, baseline=baselines[:2], **settings)


def test_arrays_and_black_inside_base_settings(tiny_model):
    """A wrapper's base gets array settings (shared or per image) and 'black' resolved, like a
    top-level method: SmoothGrad with sigma=0 is its base itself."""
    m = tiny_model
    key = jax.random.key(0)
    base = np.random.default_rng(2).normal(size=X.shape).astype(np.float32)
    for b in (base[0], base, "black"):
        got = jaxplain.explain(m, X, T, "smoothgrad", base="integrated_gradients", sigma=0.0, samples=2, key=key,
                               base_settings={"baseline": b, "steps": 4})
        want = jaxplain.explain(m, X, T, "integrated_gradients", baseline=b, steps=4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(np.asarray(want)).max())
    # A base given as a string with settings is the same as base_settings.
    a = jaxplain.explain(m, X, T, "smoothgrad(base='integrated_gradients(steps=4)', samples=2, sigma=0.0)", key=key)
    b = jaxplain.explain(m, X, T, "smoothgrad", base="integrated_gradients", base_settings={"steps": 4}, samples=2,
                         sigma=0.0, key=key)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="integrated_gradients has no setting 'stepz'"):
        jaxplain.explain(m, X, T, "smoothgrad", base="integrated_gradients", base_settings={"stepz": 4}, key=key)


def test_keys_as_seeds_and_per_image(tiny_model):
    m = tiny_model
    spec = "rise(masks=16, cells=4, chunk=8)"
    a = jaxplain.explain(m, X, T, spec, key=3)  # an int seed is jax.random.key(3)
    np.testing.assert_array_equal(a, jaxplain.explain(m, X, T, spec, key=jax.random.key(3)))
    # baselines' policy: the method's key names rise and its settings, image i's folds in i
    keys = baselines.per_image(baselines.named(jax.random.key(3), "rise", {"masks": 16, "cells": 4}), np.arange(3))
    np.testing.assert_array_equal(jaxplain.explain(m, X, T, spec, key=keys), a)  # one key per image
    # The last image alone, with its own key, gets its map from the batch (another batch size
    # blocks the convolutions differently: the last bits move).
    np.testing.assert_allclose(jaxplain.explain(m, X[2:], T[2:], spec, key=keys[2:]), a[2:], rtol=1e-5, atol=1e-7)
    raw = jax.random.PRNGKey(3)  # a raw uint32[2] key works too
    assert jaxplain.explain(m, X, T, spec, key=raw).shape == a.shape
    for bad, match in [(keys[:2], r"one key or one per image \(3\), got shape \(2,\)"), ("seed", "key must be"),
                       (np.ones(2, np.float32), "key must be")]:
        with pytest.raises(InputError, match=match):
            jaxplain.explain(m, X, T, spec, key=bad)


@pytest.mark.parametrize("batch_size", [True, 0, -3, 2.0])
def test_bad_batch_size(tiny_model, batch_size):
    with pytest.raises(InputError, match="batch_size must be a positive int"):
        jaxplain.explain(tiny_model, X, T, "gradient", batch_size=batch_size)


def test_targets_none_only_for_methods_that_ignore_them(tiny_model):
    with pytest.raises(InputError, match=r"targets=None is only for methods that ignore the target \(attention_rollout, eigen_cam, "
                                         r"neuron_gradient, neuron_integrated_gradients\); gradient explains a class"):
        jaxplain.explain(tiny_model, X, None, "gradient")
    with pytest.raises(InputError, match="smoothgrad explains a class"):
        jaxplain.explain(tiny_model, X, None, "smoothgrad", key=0)
    # Methods that ignore the target, and a wrapper around one, take None.
    assert jaxplain.explain(tiny_model, X, None, "eigen_cam").shape == (3, 32, 32)
    a = jaxplain.explain(tiny_model, X, None, "smoothgrad", base="neuron_gradient", base_settings={"neuron": 2},
                         samples=2, key=0)
    assert a.shape == X.shape


@pytest.mark.parametrize("method,settings,match", [
    ("expected_gradients", dict(samples=0, references=X, key=0), "samples must be a positive int, got 0"),
    ("guided_ig", dict(steps=0), "steps must be a positive int, got 0"),
    ("blur_ig", dict(max_sigma=-1.0), "max_sigma must be a number > 0, got -1.0"),
    ("blur_ig", dict(grad_step=0), "grad_step must be a number > 0"),
    ("guided_ig", dict(fraction=1.5), r"fraction must be a number > 0 and <= 1, got 1.5"),
    ("smoothgrad", dict(samples=True, key=0), "samples must be a positive int, got True"),
    ("smoothgrad", dict(sigma=-0.1, key=0), "sigma .* must be a number >= 0"),
    ("integrated_gradients", dict(steps=2.5), "steps must be a positive int, got 2.5"),
    ("smoothgrad", dict(base="nope", key=0), "unknown method 'nope'"),
    ("smoothgrad", dict(base_settings=[1], key=0), "base_settings must be a dict"),
    ("occlusion", dict(window={1, 2}), "setting window=.* is neither a literal, a function nor an array"),
])
def test_bad_values_name_the_setting(tiny_model, method, settings, match):
    with pytest.raises(InputError, match=match):
        jaxplain.explain(tiny_model, X, T, method, **settings)


def test_resolve_is_what_the_registry_checks():
    fn, s = registry.parse("vargrad(base='gradient_x_input')")
    resolved = registry.resolve(fn, s)
    assert resolved["base"] is jaxplain.gradient_x_input and resolved["base_settings"] == {}
    with pytest.raises(InputError, match="base must be a method function here"):  # a direct call: no registry
        jaxplain.vargrad(None, None, jnp.zeros((2, 2, 3)), 0, base="gradient", key=jax.random.key(0))


def _count_resolutions(monkeypatch) -> dict[str, list]:
    """Record the function each call of ``registry.resolve`` and ``resolve_for_model`` resolves
    (nested calls for a wrapped method record the wrapped one)."""
    import importlib

    st = importlib.import_module("jaxplain.engine.settings")
    ev = importlib.import_module("jaxplain.engine.evaluation")
    seen: dict[str, list] = {"registry": [], "model": []}
    by_registry, for_model = registry.resolve, st.resolve_for_model

    def counted_registry(fn, settings):
        seen["registry"].append(fn)
        return by_registry(fn, settings)

    def counted_model(fn, *a, **k):
        seen["model"].append(fn)
        return for_model(fn, *a, **k)

    monkeypatch.setattr(registry, "resolve", counted_registry)
    monkeypatch.setattr(st, "resolve_for_model", counted_model)
    monkeypatch.setattr(ev, "resolve_for_model", counted_model)
    return seen


@pytest.mark.parametrize("method", ["integrated_gradients(steps=4)", "grad_cam"])
def test_explain_resolves_settings_once(tiny_model, monkeypatch, method):
    """One ``explain`` call checks its settings (``registry.resolve``) once and resolves them for
    the model once, over several batches too."""
    fn = registry.parse(method)[0]
    seen = _count_resolutions(monkeypatch)
    jaxplain.explain(tiny_model, X, T, method, batch_size=2)
    assert seen["registry"].count(fn) == 1 and seen["model"].count(fn) == 1


@pytest.mark.parametrize("metric", ["deletion(steps=4)", "model_randomisation"])
def test_evaluate_resolves_settings_once(tiny_model, monkeypatch, metric):
    """The same for ``evaluate``; a staged metric (one run per stage of weights) too."""
    fn = registry.parse_metric(metric)[0]
    a = np.random.default_rng(2).normal(size=X.shape).astype(np.float32)
    seen = _count_resolutions(monkeypatch)
    jaxplain.evaluate(tiny_model, X, T, a, metric, key=0)
    assert seen["registry"].count(fn) == 1 and seen["model"].count(fn) == 1
