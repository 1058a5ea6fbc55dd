"""evaluate(), the twin of explain(): one machinery (batching, keys per image, chunks), its input
checks, and the methods x metrics comparison behind `jaxplain evaluate`."""

import jax
import numpy as np
import pytest
from scipy import stats

import jaxplain
from jaxplain import comparison
from jaxplain.errors import InputError

X = np.random.default_rng(3).normal(size=(5, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def grads(tiny_model):
    return jaxplain.explain(tiny_model, X, "predicted", "gradient")


def test_results_do_not_depend_on_batch_size_or_chunk(tiny_model, grads):
    whole = jaxplain.evaluate(tiny_model, X, "predicted", grads, "deletion(steps=8)")
    parts = jaxplain.evaluate(tiny_model, X, "predicted", grads, "deletion", steps=8, batch_size=2, chunk=3)
    assert set(whole) == {"score", "curve"} and whole["curve"].shape == (5, 9)
    np.testing.assert_allclose(parts["curve"], whole["curve"], atol=1e-6)
    np.testing.assert_allclose(parts["score"], whole["score"], atol=1e-6)


def test_maps_and_pixels_are_both_scored(tiny_model, grads):
    # A [B, H, W] map is scored as the [B, H, W, C] attribution whose channels sum to it.
    a = jaxplain.evaluate(tiny_model, X, "predicted", grads, "deletion(steps=4)")
    b = jaxplain.evaluate(tiny_model, X, "predicted", np.asarray(grads).sum(-1), "deletion(steps=4)")
    np.testing.assert_allclose(a["curve"], b["curve"], atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (lambda g: g[..., :2], r"attributions must be \[B, H, W, C\] = \(5, 32, 32, 3\) \(pixels\) or \[B, H, W\]"),
    (lambda g: g[:3], r"got shape \(3, 32, 32, 3\)"),
    (lambda g: np.zeros((5, 4, 4, 8), np.float32), "a layer's attributions cannot be scored"),
    (lambda g: np.where(np.arange(5)[:, None, None, None] == 2, np.nan, g), r"attributions of images \[2\] contain NaN"),
    (lambda g: (g, g), "explain\\(..., return_delta=True\\) returns a tuple"),
    (lambda g: np.full(g.shape, "a"), "attributions must be numbers"),
])
def test_bad_attributions(tiny_model, grads, bad, message):
    with pytest.raises(InputError, match=message):
        jaxplain.evaluate(tiny_model, X, "predicted", bad(np.asarray(grads)), "deletion")


@pytest.mark.parametrize("metric, settings, message", [
    ("nope", {}, "unknown metric 'nope'; registered: .*deletion"),
    ("deletion(", {}, "cannot parse metric 'deletion\\('"),
    ("deletion", {"bogus": 1}, "deletion has no setting 'bogus'"),
    ("deletion", {"steps": 0}, "steps must be a positive int, got 0"),
    ("insertion", {"score": "odds"}, "score must be one of"),
    ("deletion", {"baseline": "grey"}, "a baseline must be a number, 'black', 'blur'"),
])
def test_bad_metric_or_settings(tiny_model, grads, metric, settings, message):
    with pytest.raises(InputError, match=message):
        jaxplain.evaluate(tiny_model, X, "predicted", grads, metric, **settings)


def test_targets_none_needs_a_metric_that_ignores_them(tiny_model, grads):
    with pytest.raises(InputError, match="targets=None is only for metrics that ignore the target .* deletion scores a class"):
        jaxplain.evaluate(tiny_model, X, None, grads, "deletion")


def test_a_black_baseline_is_the_models_black(tiny_model, grads):
    # "black" is resolved through the model's preprocessing (torchvision's mean and std here), as for explain.
    a = jaxplain.evaluate(tiny_model, X, "predicted", grads, "deletion(steps=4)", baseline="black")
    black = (0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    b = jaxplain.evaluate(tiny_model, X, "predicted", grads, "deletion(steps=4)", baseline=np.broadcast_to(black, X.shape[1:]))
    c = jaxplain.evaluate(tiny_model, X, "predicted", grads, "deletion(steps=4)", baseline=0.0)
    np.testing.assert_allclose(a["curve"], b["curve"], atol=1e-6)
    assert np.abs(a["curve"] - c["curve"]).max() > 1e-2


def test_interval_is_students_t():
    s = np.random.default_rng(0).normal(2.0, 0.5, 40)
    mean, low, high = comparison.interval(s)
    ref = stats.t.interval(0.95, len(s) - 1, loc=s.mean(), scale=stats.sem(s))
    np.testing.assert_allclose((mean, low, high), (s.mean(), *ref), rtol=1e-12)
    assert np.isnan(comparison.interval(s[:1])[1])
    with_nan = np.append(s, np.nan)  # an image without a score (an empty mask) is left out
    np.testing.assert_allclose(comparison.interval(with_nan), (mean, low, high), rtol=1e-12)


def test_compare_fills_every_cell(tiny_model):
    seconds, cells = comparison.compare(tiny_model, X, "predicted", ["gradient", "smoothgrad(samples=2)"],
                                        ["deletion(steps=4)", "insertion(steps=4)"], batch_size=2)
    assert list(seconds) == ["gradient", "smoothgrad(samples=2)"]
    assert [(c.method, c.metric) for c in cells] == [(m, k) for m in seconds for k in ("deletion(steps=4)", "insertion(steps=4)")]
    a = jaxplain.explain(tiny_model, X, "predicted", "gradient")
    ref = jaxplain.evaluate(tiny_model, X, "predicted", a, "deletion(steps=4)")["score"]
    np.testing.assert_allclose(cells[0].scores, ref, atol=1e-6)
    text = comparison.table(seconds, cells)
    assert text.splitlines()[0].split()[:3] == ["method", "explain", "s"] and "smoothgrad(samples=2)" in text


def test_compare_refuses_layer_methods_and_missing_masks(tiny_model):
    with pytest.raises(InputError, match="returns a layer's activations"):
        comparison.check_specs(["layer_gradient_x_activation"], ["deletion"], has_masks=False)


# Small settings so each registered metric runs in a second or two on the tiny model.
SMALL = {
    "deletion": {"steps": 6},
    "insertion": {"steps": 6},
    "region_perturbation": {"regions": 5, "patch": 8},
    "mu_fidelity": {"samples": 12, "grid_size": 4, "subset_percent": 0.25, "key": 0},
    "road": {"percentages": (20, 60), "key": 0},
    "infidelity": {"samples": 4, "key": 0},
    "max_sensitivity": {"samples": 3, "key": 0},
    "pointing_game": {},
    "relevance_mass": {},
    "relevance_rank": {},
    "model_randomisation": {"mode": "full", "key": 0},
}
MASK = np.zeros((5, 32, 32), bool)
MASK[:, 8:20, 10:26] = True


def test_every_registered_metric_has_small_settings():
    assert set(SMALL) == set(jaxplain.METRICS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_metric_scores_each_image_and_slices_agree(tiny_model, grads, name):
    """Through the registry: one finite score per image, which way it improves, and the same
    scores when the batch is cut into calls of 2 (per-image keys: random metrics too)."""
    fn = jaxplain.METRICS[name]
    extra = {"mask": MASK} if "mask" in jaxplain.registry.settings_of(fn) else {}
    whole = jaxplain.evaluate(tiny_model, X, "predicted", grads, name, **SMALL[name], **extra)
    parts = jaxplain.evaluate(tiny_model, X, "predicted", grads, name, batch_size=2, **SMALL[name], **extra)
    assert whole["score"].shape == (5,) and np.isfinite(np.asarray(whole["score"])).all()
    for k in whole:
        np.testing.assert_allclose(np.asarray(parts[k]), np.asarray(whole[k]), atol=1e-5, err_msg=k) if k != "layers" \
            else np.testing.assert_array_equal(parts[k], whole[k])
    assert getattr(fn, "better", None) in ({"higher", "lower"} if name != "road" else {None})


def test_interval_of_binary_scores_is_wilsons():
    """0/1 scores (pointing game hits) get Wilson's score interval, written here from its formula:
    inside [0, 1] where Student's t leaves it (9 hits of 10: t's upper bound is above 1)."""
    s = np.array([1.0] * 9 + [0.0])
    n, p, z = 10, 0.9, stats.norm.ppf(0.975)
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    np.testing.assert_allclose(comparison.interval(s), (0.9, centre - half, centre + half), rtol=1e-12)
    assert comparison.interval(s)[2] < 1 < s.mean() + stats.t.ppf(0.975, 9) * stats.sem(s)
    low, high = comparison.interval(np.ones(20))[1:]
    assert 0.8 < low < 1 and high == 1  # all hits: not the t-interval's empty [1, 1]
    np.testing.assert_allclose(comparison.interval(np.append(s, np.nan)), comparison.interval(s), rtol=1e-12)


def test_compare_keys_follow_the_key_policy_not_list_positions(tiny_model):
    """A random method's and metric's scores do not depend on what else is in the lists, nor on
    their order: each key is baselines.named(seed or the spec's key, name, settings), folded per
    image by its identity, as computed here by hand; ``key=`` inside a spec is that root."""
    from jaxplain import baselines

    sg, mu = "smoothgrad(samples=2)", "mu_fidelity(samples=4, grid_size=4)"
    _, alone = comparison.compare(tiny_model, X, "predicted", [sg], [mu], seed=4)
    _, among = comparison.compare(tiny_model, X, "predicted", ["gradient", sg], ["deletion(steps=4)", mu], seed=4)
    np.testing.assert_array_equal(alone[0].scores, among[3].scores)
    ids = np.array([7, 1, 9, 3, 5])
    _, keyed = comparison.compare(tiny_model, X, "predicted", ["smoothgrad(samples=2, key=3)"],
                                  ["mu_fidelity(samples=4, grid_size=4, key=1)"], ids=ids)
    a = jaxplain.explain(tiny_model, X, "predicted", "smoothgrad", samples=2,
                         key=baselines.per_image(baselines.named(3, "smoothgrad", {"samples": 2}), ids))
    want = jaxplain.evaluate(tiny_model, X, "predicted", a, "mu_fidelity", samples=4, grid_size=4,
                             key=baselines.per_image(baselines.named(1, "mu_fidelity", {"samples": 4, "grid_size": 4}), ids))
    np.testing.assert_allclose(keyed[0].scores, want["score"], atol=1e-6)
    assert np.abs(keyed[0].scores - alone[0].scores).max() > 1e-6


def test_max_sensitivity_chunks_the_methods_passes(tiny_model):
    """A re-explaining metric keeps about ``chunk`` model passes per image at a time, the method's
    own included: integrated gradients (chunk 16 of its own) is handed chunk 4, and the scores
    equal the one-shot computation (chunk=None) to float32 rounding."""
    from jaxplain.methods.integrated import integrated_gradients

    seen = []

    def ig(apply, params, x, target, *, steps=8, chunk=16):
        seen.append(chunk)
        return integrated_gradients(apply, params, x, target, steps=steps, chunk=chunk)

    a = jaxplain.explain(tiny_model, X[:2], "predicted", "integrated_gradients", steps=8)
    one = jaxplain.evaluate(tiny_model, X[:2], "predicted", a, "max_sensitivity", method=ig, samples=3, key=0, chunk=None)
    assert set(seen) == {16}
    seen.clear()
    parts = jaxplain.evaluate(tiny_model, X[:2], "predicted", a, "max_sensitivity", method=ig, samples=3, key=0, chunk=4)
    assert seen and set(seen) == {4}
    np.testing.assert_allclose(parts["sensitivities"], one["sensitivities"], rtol=1e-4, atol=1e-6)
