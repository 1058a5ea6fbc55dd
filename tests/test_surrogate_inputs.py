"""Bad input to the surrogate family and jaxplain.segments: each gets a jaxplain exception that names
the problem. And two things label maps must get right: one map per image goes to its image, and
padding the segment count with empty labels changes nothing."""

import sys

import jax
import numpy as np
import pytest

import jaxplain
from jaxplain import baselines
from tests import compare
from jaxplain.errors import InputError, MissingDependency

pytestmark = pytest.mark.usefixtures("quick_threefry")  # LIME's draws compile faster; both sides draw alike
RTOL = 1e-5  # float32: the same forward passes in other batches and orders differ in the last bits


def close(a, b, rtol=RTOL):
    compare.close(a, b, rtol)


@pytest.fixture(scope="module")
def data(tiny_model):
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    return tiny_model, x, np.array([1, 4, 7])


KEY = {"feature_ablation": {}, "lime": dict(key=0), "kernel_shap": dict(key=0)}  # feature ablation draws nothing


def quadrants(n: int = 32) -> np.ndarray:
    """``[n, n]`` int32: four quadrant labels 0..3."""
    r = np.arange(n) >= n // 2
    return (r[:, None] * 2 + r[None, :]).astype(np.int32)


# -- label maps -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["feature_ablation", "lime", "kernel_shap"])
def test_label_map_of_the_wrong_shape(data, method):
    m, x, t = data
    with pytest.raises(InputError, match=r"a label map must be \[H, W\] = \(32, 32\) .*got shape \(16, 16\)"):
        jaxplain.explain(m, x, t, method, segments=np.zeros((16, 16), np.int32), **KEY[method])


def test_label_map_per_image_with_another_batch_size(data):
    m, x, t = data
    maps = np.stack([quadrants()] * 2)
    with pytest.raises(InputError, match=r"\[B, H, W\] = \(3, 32, 32\).*got shape \(2, 32, 32\)"):
        jaxplain.explain(m, x, t, "feature_ablation", segments=maps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_label_map_of_non_integers(data, dtype):
    m, x, t = data
    labels = quadrants().astype(dtype)
    with pytest.raises(InputError, match=f"integer labels, got dtype {np.dtype(dtype)}"):
        jaxplain.explain(m, x, t, "feature_ablation", segments=labels)
    with pytest.raises(InputError, match="integer labels"):  # the method called directly checks too
        jaxplain.feature_ablation(m.apply, m.params, x[0], 1, segments=labels)


def test_negative_labels(data):
    m, x, t = data
    labels = quadrants() - 1
    with pytest.raises(InputError, match="labels must be >= 0, got -1"):
        jaxplain.explain(m, x, t, "lime", segments=labels, key=0)
    with pytest.raises(InputError, match="labels must be >= 0"):
        jaxplain.kernel_shap(m.apply, m.params, x[0], 1, segments=labels, exact=True)


def test_more_segments_than_max_segments(data):
    m, x, t = data
    with pytest.raises(InputError, match=r"labels up to 3 but max_segments=3"):
        jaxplain.explain(m, x, t, "feature_ablation", segments=quadrants(), max_segments=3)
    with pytest.raises(InputError, match=r"labels up to 3 but max_segments=2"):
        jaxplain.lime(m.apply, m.params, x[0], 1, segments=quadrants(), max_segments=2, key=jax.random.key(0))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_max_segments(data, bad):
    m, x, t = data
    with pytest.raises(InputError, match="max_segments must be a positive int or None"):
        jaxplain.explain(m, x, t, "feature_ablation", segments=quadrants(), max_segments=bad)


# -- kinds and scikit-image -------------------------------------------------------------------------------

def test_missing_scikit_image(data, monkeypatch):
    m, x, t = data
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` now raises ImportError
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    pictures = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(MissingDependency, match=r"needs scikit-image: pip install 'jaxplain\[segments\]'"):
        jaxplain.segments(pictures, "slic")
    with pytest.raises(MissingDependency, match=r"pip install 'jaxplain\[segments\]'"):
        jaxplain.explain(m, x, t, "feature_ablation", segments="quickshift")
    # the grid and label maps need no scikit-image
    assert jaxplain.segments(pictures, "grid", cells=2).max() == 3
    assert jaxplain.explain(m, x, t, "feature_ablation", segments=quadrants()).shape == (3, 32, 32)


@pytest.mark.parametrize("kind", ["slic2", "grid2", "slic(n_segments=4", "4", "slic(3)"])
def test_unknown_segment_kind(data, kind):
    m, x, t = data
    with pytest.raises(InputError, match=r"segments must be one of grid, slic, felzenszwalb, quickshift"):
        jaxplain.segments(np.zeros((16, 16, 3), np.uint8), kind)
    with pytest.raises(InputError, match="segments must be one of"):
        jaxplain.explain(m, x, t, "feature_ablation", segments=kind)


@pytest.mark.parametrize("kind", [None, 3])
def test_segment_kind_not_a_string(kind):
    with pytest.raises(InputError, match="segments must be one of"):
        jaxplain.segments(np.zeros((16, 16, 3), np.uint8), kind)


def test_bad_segment_options(data):
    m, x, t = data
    pictures = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(InputError, match="must be literals"):
        jaxplain.segments(pictures, "slic(n_segments=many)")
    with pytest.raises(InputError, match="segments='slic' with {'colour': 3}: scikit-image refused it .*colour"):  # its own words
        jaxplain.segments(pictures, "slic", colour=3)
    with pytest.raises(InputError, match="segments='grid' takes only cells=, got sigma"):
        jaxplain.segments(pictures, "grid", sigma=1.0)
    with pytest.raises(InputError, match="segments='grid' takes only cells=, got sigma"):
        jaxplain.explain(m, x, t, "feature_ablation", segments="grid(sigma=1.0)")


@pytest.mark.parametrize("pictures, fragment", [
    (np.zeros((16, 16), np.uint8), r"RGB pictures \[B, H, W, 3\] or \[H, W, 3\], or grayscale ones \[B, H, W, 1\] or \[H, W, 1\], got shape \(16, 16\)"),
    (np.zeros((2, 16, 16, 4), np.uint8), r"got shape \(2, 16, 16, 4\)"),
    (np.full((16, 16, 3), 2.0), r"uint8 pictures or floats in \[0, 1\], got float64 in \[2.0, 2.0\]"),
    (np.zeros((16, 16, 3), np.int32), "uint8 pictures or floats in"),
])
def test_segments_of_bad_pictures(pictures, fragment):
    with pytest.raises(InputError, match=fragment):
        jaxplain.segments(pictures, "grid")


def test_direct_call_with_a_scikit_image_kind(data):
    m, x, t = data
    for name in ("feature_ablation", "lime", "kernel_shap"):
        key = {"key": jax.random.key(0)} if KEY[name] else {}
        with pytest.raises(InputError, match=r"segments='slic' is computed from the picture on the host: use "
                                             r"jaxplain.explain, or pass a label map \(jaxplain.segments\)"):
            getattr(jaxplain, name)(m.apply, m.params, x[0], 1, segments="slic", **key)


@pytest.mark.parametrize("cells", [0, 33, (2, 0), (2, 40), -1, True, (True, 2), 2.0, (2, 2, 2)])
def test_bad_cells(data, cells):
    m, x, t = data
    with pytest.raises(InputError, match=r"cells must be a positive int or \(rows, columns\) no larger than the image"):
        jaxplain.explain(m, x, t, "feature_ablation", cells=cells)
    with pytest.raises(InputError, match="cells must be a positive int"):
        jaxplain.segments(np.zeros((32, 32, 3), np.uint8), "grid", cells=cells)


# -- method settings ----------------------------------------------------------------------------------

def test_lime_without_key(data):
    m, x, t = data
    with pytest.raises(InputError, match=r"lime is random: pass key=jax.random.key\(...\) or an int seed, or the coalitions"):
        jaxplain.explain(m, x, t, "lime", cells=2, samples=10)
    with pytest.raises(InputError, match="lime is random"):
        jaxplain.lime(m.apply, m.params, x[0], 1, cells=2, samples=10)


def test_kernel_shap_sampled_without_key(data):
    m, x, t = data
    with pytest.raises(InputError, match=r"kernel_shap samples coalitions: pass key="):
        jaxplain.explain(m, x, t, "kernel_shap", cells=3, samples=20)


def test_coalitions_not_zero_or_one(data):
    m, x, t = data
    table = np.ones((5, 4), np.float32)
    table[2, 1] = 0.5
    with pytest.raises(InputError, match=r"coalitions must hold 0 \(segment dropped\) or 1 \(kept\) only"):
        jaxplain.explain(m, x, t, "lime", cells=2, coalitions=table)
    with pytest.raises(InputError, match="coalitions must hold 0"):
        jaxplain.lime(m.apply, m.params, x[0], 1, cells=2, coalitions=table)


@pytest.mark.parametrize("shape", [(10, 3), (10, 5), (10,), (0, 4), (2, 10, 4, 1)])
def test_coalitions_of_the_wrong_shape(data, shape):
    m, x, t = data
    with pytest.raises(InputError, match=r"coalitions must be \[samples, M\] = \[n, 4\] of 0/1, got shape"):
        jaxplain.explain(m, x, t, "lime", cells=2, coalitions=np.ones(shape, np.float32))


def test_kernel_shap_samples_below_the_segment_count(data):
    m, x, t = data
    with pytest.raises(InputError, match=r"samples >= the number of segments \(9\) to fit them, got 5; or exact=True"):
        jaxplain.explain(m, x, t, "kernel_shap", cells=3, samples=5, key=0)
    with pytest.raises(InputError, match=r"samples >= the number of segments \(9\)"):
        jaxplain.explain(m, x, t, "kernel_shap", cells=3, samples=8, exact=False, key=0)
    # exact needs no samples: every coalition is evaluated
    a = jaxplain.explain(m, x[:1], t[:1], "kernel_shap", cells=2, samples=2, exact=True)
    b = jaxplain.explain(m, x[:1], t[:1], "kernel_shap", cells=2)  # 2^4 <= 2 M + 2048: exact by default
    close(a, b)


def test_exact_with_too_many_segments(data):
    m, x, t = data
    with pytest.raises(InputError, match=r"exact=True with 25 segments needs 2\^25 forward passes; use at most 20"):
        jaxplain.explain(m, x, t, "kernel_shap", cells=5, exact=True)


@pytest.mark.parametrize("method, setting, value, fragment", [
    ("lime", "samples", 0, "samples must be a positive int, got 0"),
    ("kernel_shap", "samples", 2.5, "samples must be a positive int, got 2.5"),
    ("lime", "kernel_width", 0.0, "kernel_width must be a number > 0"),
    ("lime", "alpha", -1.0, "alpha must be a number >= 0"),
    ("feature_ablation", "score", "prob", r"score must be one of \('logit', 'probability'\) \(or 'softmax'.*got 'prob'"),
    ("feature_ablation", "baseline", "grey", "unknown baseline 'grey'; a baseline is a number, .*'mean'"),
    ("kernel_shap", "baseline", np.zeros((16, 16, 3), np.float32), r"array of the image's shape \(32, 32, 3\)"),
])
def test_bad_settings(data, method, setting, value, fragment):
    m, x, t = data
    with pytest.raises(InputError, match=fragment):
        jaxplain.explain(m, x, t, method, cells=2, **KEY[method], **{setting: value})


# -- label maps per image, and padding ----------------------------------------------------------------------

def per_image_maps() -> np.ndarray:
    """Three different label maps ``[3, 32, 32]``: quadrants, three vertical stripes, five horizontal bands."""
    stripes = np.broadcast_to(np.arange(32) * 3 // 32, (32, 32))
    bands = np.broadcast_to((np.arange(32) * 5 // 32)[:, None], (32, 32))
    return np.stack([quadrants(), stripes, bands]).astype(np.int32)


@pytest.mark.parametrize("method, settings", [
    ("feature_ablation", dict(chunk=None)),  # one chunk each: the property tests cover chunking
    ("lime", dict(samples=20, key=jax.random.key(3), chunk=None)),
    ("kernel_shap", dict(exact=True, chunk=None)),
])
def test_a_map_per_image_equals_each_image_with_its_map(data, method, settings):
    m, x, t = data
    maps = per_image_maps()
    got = jaxplain.explain(m, x, t, method, segments=maps, **settings)
    assert got.shape == (3, 32, 32)
    for i in range(3):
        one = dict(settings, segments=maps[i], max_segments=5)  # the batch's count: the largest label + 1
        if "key" in one:
            # the batch's key for image i (baselines' policy: the method's named key, then the index)
            named = baselines.named(settings["key"], method, {"samples": 20, "segments": maps})
            one["key"] = jax.random.fold_in(named, i)[None]
        want = jaxplain.explain(m, x[i:i + 1], t[i:i + 1], method, **one)
        close(got[i], want[0])
        for s in range(maps[i].max() + 1):  # one value per segment, on its pixels
            assert np.unique(np.asarray(got[i])[maps[i] == s]).size == 1


def test_padding_with_empty_labels_changes_nothing(data):
    m, x, t = data
    labels = quadrants()
    # feature ablation: an empty label is never ablated
    close(jaxplain.explain(m, x, t, "feature_ablation", segments=labels, max_segments=7, chunk=3),
          jaxplain.explain(m, x, t, "feature_ablation", segments=labels))
    # LIME on the same coalitions, the padded labels' columns anything: a label without pixels is no feature
    rng = np.random.default_rng(1)
    table = rng.integers(0, 2, (30, 4)).astype(np.float32)
    table[0] = 1
    padded = np.concatenate([table, rng.integers(0, 2, (30, 3)).astype(np.float32)], 1)
    a = jaxplain.explain(m, x, t, "lime", segments=labels, coalitions=table, return_fit=True, chunk=None)
    b = jaxplain.explain(m, x, t, "lime", segments=labels, coalitions=padded, max_segments=7, return_fit=True, chunk=None)
    close(b.attribution, a.attribution, 1e-4)  # a least-squares solve of another size: 1e-4
    close(b.coefficients[:, :4], a.coefficients, 1e-4)
    np.testing.assert_array_equal(np.asarray(b.coefficients[:, 4:]), 0.0)
    close(b.intercept, a.intercept, 1e-4)
    # exact KernelSHAP: null players do not change the others' Shapley values
    c = jaxplain.explain(m, x, t, "kernel_shap", segments=labels, return_fit=True, chunk=None)
    d = jaxplain.explain(m, x, t, "kernel_shap", segments=labels, max_segments=6, exact=True, return_fit=True, chunk=None)
    close(d.attribution, c.attribution, 1e-4)  # sums over 64 coalitions instead of 16, in float32
    np.testing.assert_array_equal(np.asarray(d.coefficients[:, 4:]), 0.0)
    close(d.intercept, c.intercept)


def test_an_empty_label_inside_the_range_gets_zero(data):
    m, x, t = data
    labels = quadrants() * 2  # labels 0, 2, 4, 6: 1, 3, 5 have no pixel
    fit = jaxplain.explain(m, x, t, "kernel_shap", segments=labels, return_fit=True, chunk=None)
    assert fit.coefficients.shape == (3, 7)
    np.testing.assert_array_equal(np.asarray(fit.coefficients[:, 1::2]), 0.0)
    compact = jaxplain.explain(m, x, t, "kernel_shap", segments=quadrants(), return_fit=True, chunk=None)
    close(fit.coefficients[:, ::2], compact.coefficients, 1e-4)


# -- found by trying the methods as a new user ---------------------------------------------------------

@pytest.mark.parametrize("spec, fragment", [("quickshift(kernel_size=0)", "kernel_size"),
                                            ("slic(n_segments=-3)", "n_segments")])
def test_options_scikit_image_refuses(data, spec, fragment):
    """scikit-image's own ValueError (or NumPy's ComplexWarning for a negative count) becomes an InputError."""
    m, x, t = data
    pictures = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(InputError, match=f"scikit-image refused it.*|{fragment}"):
        jaxplain.segments(pictures, spec)


def test_sparse_labels_warn_of_their_cost(data):
    """Two labels, 0 and 40: 41 features (forward passes); a CostWarning says so and how to renumber."""
    m, x, t = data
    labels = np.zeros((32, 32), np.int64)
    labels[:, 16:] = 40
    with pytest.warns(jaxplain.CostWarning, match=r"uses 2 labels but the largest is 40.*np.unique"):
        a = jaxplain.explain(m, x, t, "feature_ablation", segments=labels)
    b = jaxplain.explain(m, x, t, "feature_ablation", segments=(labels > 0).astype(np.int64))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_direct_calls_take_an_int_seed(data):
    """The message says "or an int seed": a direct call takes one too (explain folds it per image)."""
    m, x, t = data
    for name in ("lime", "kernel_shap"):
        fn = getattr(jaxplain, name)
        a = fn(m.apply, m.params, x[0], 1, cells=2, samples=12, key=5)
        b = fn(m.apply, m.params, x[0], 1, cells=2, samples=12, key=jax.random.key(5))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernel_shap_hint_only_offers_exact_where_possible(data):
    m, x, t = data
    labels = np.arange(32 * 32).reshape(32, 32) % 30
    with pytest.raises(InputError, match=r"samples >= the number of segments \(30\) to fit them, got 10") as e:
        jaxplain.explain(m, x, t, "kernel_shap", segments=labels, samples=10, key=0)
    assert "exact=True" not in str(e.value)  # 2^30 coalitions are refused
