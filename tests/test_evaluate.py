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
    ("deletion", {"baseline": "grey"}, "unknown baseline 'grey'; a baseline is a number, an .*'black'.*'blur'"),
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
