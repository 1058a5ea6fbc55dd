"""The front door: bad input is refused with a named problem, parsing, reduce, the full VGG16
end to end (``jaxplain explain`` as a user runs it on a VGG16 file is in test_cli.py, on its
module's weight file)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain import InputError, registry

X = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("images,match", [
    (X[0], r"batch \[B, H, W, C\].*add a batch axis"),
    (X[..., :2], "takes 3 channels"),
    (X[:, :4, :4], "at least 8x8"),
    (np.where(np.arange(2)[:, None, None, None] == 1, np.nan, X), r"images \[1\] contain NaN"),
    (X.astype(np.uint8), "preprocessed floats"),
])
def test_bad_images(tiny_model, images, match):
    with pytest.raises(InputError, match=match):
        jaxplain.explain(tiny_model, images, 0, "gradient")


def test_wrong_size_for_fixed_input_model():
    from jaxplain import models

    cfg = models.VGGConfig(blocks=(1, 1), widths=(4, 4), fc=8, classes=3, grid=2, head="keras", name="k")
    m = models.build(cfg, models.random_params(cfg), source="keras")
    with pytest.raises(InputError, match="takes 8x8 images, got 32x32"):
        jaxplain.explain(m, X, 0, "gradient")


@pytest.mark.parametrize("targets,match", [
    (10, r"target 10 is outside \[0, 10\)"),
    ([1, -1], r"target -1 is outside"),
    ([1, 2, 3], r"one int or \[B\]=2 ints"),
    ("top", "ints or 'predicted'"),
    (np.array([0.5, 1.0]), "integer class indices"),
])
def test_bad_targets(tiny_model, targets, match):
    with pytest.raises(InputError, match=match):
        jaxplain.explain(tiny_model, X, targets, "gradient")


@pytest.mark.parametrize("method,settings,match", [
    ("saliency_maps", {}, "unknown method 'saliency_maps'; registered: .*gradient"),
    ("integrated_gradients(stepz=3)", {}, "has no setting 'stepz'; its settings: steps"),
    ("gradient", {"steps": 3}, "gradient has no setting 'steps'"),
    ("smoothgrad", {}, "random: pass key="),
    ("integrated_gradients", {"baseline": "uniform"}, "random: pass key="),
    ("integrated_gradients", {"rule": "simpson"}, "unknown integration rule 'simpson'"),
    ("integrated_gradients", {"baseline": "grey"}, "unknown baseline 'grey'"),
    ("expected_gradients", {"key": jax.random.key(0)}, "needs references"),
    ("integrated_gradients(steps=)", {}, "cannot parse method"),
])
def test_bad_methods_and_settings(tiny_model, method, settings, match):
    with pytest.raises(InputError, match=match):
        jaxplain.explain(tiny_model, X, 0, method, **settings)


def test_bad_input_is_refused_before_compiling(tiny_model, monkeypatch):
    ex = sys.modules["jaxplain.engine.runner"]  # the module of jaxplain.explain

    def no_compile(*a, **k):
        raise AssertionError("reached the compiled call")

    monkeypatch.setattr(ex, "_batched", no_compile)
    for images, targets in [(X[0], 0), (X, 99), (X[..., :1], 0)]:
        with pytest.raises(InputError):
            jaxplain.explain(tiny_model, images, targets, "gradient")


def test_parse_and_targets(tiny_model):
    fn, s = registry.parse("integrated_gradients(steps=64, rule='riemann_left', return_delta=False)")
    assert fn is jaxplain.integrated_gradients and s == {"steps": 64, "rule": "riemann_left", "return_delta": False}
    predicted = np.asarray(jnp.argmax(tiny_model(X), -1))
    a = jaxplain.explain(tiny_model, X, "predicted", "gradient")
    b = jaxplain.explain(tiny_model, X, predicted, jaxplain.gradient)
    np.testing.assert_array_equal(a, b)
    c = jaxplain.explain(tiny_model, X, int(predicted[0]), "gradient")
    np.testing.assert_array_equal(a[0], c[0])


def test_black_baseline_is_the_preprocessed_black_image(tiny_model):
    black = tiny_model.preprocess(np.zeros((1, 32, 32, 3), np.uint8))
    a = jaxplain.explain(tiny_model, X, 1, "integrated_gradients", baseline="black", steps=8)
    b = jaxplain.explain(tiny_model, X, 1, "integrated_gradients", baseline=black[0], steps=8)
    np.testing.assert_array_equal(a, b)


def test_reduce():
    a = np.array([[[[1.0, -3.0, 2.0]]]], np.float32)
    assert float(jaxplain.reduce(a, "abs_max")[0, 0, 0]) == 3.0
    assert float(jaxplain.reduce(a, "sum")[0, 0, 0]) == 0.0
    assert float(jaxplain.reduce(a, "abs_sum")[0, 0, 0]) == 6.0
    assert float(jaxplain.reduce(a, "l2")[0, 0, 0]) == pytest.approx(np.sqrt(14))
    with pytest.raises(InputError, match="unknown reduction"):
        jaxplain.reduce(a, "median")
    assert jaxplain.reduce(a[0], "sum").shape == (1, 1)  # one image [H, W, C]


@pytest.mark.parametrize("shape", [(2, 224, 224), (2, 14, 14, 512), (224,), (1, 2, 3, 4, 3)])
def test_reduce_and_overlay_refuse_what_they_do_not_take(shape):
    """A CAM's [B, H, W] map (its W would pass for channels), a layer's activations: refused with
    the reason, never collapsed into a wrong picture; overlay takes 2-D maps only."""
    from jaxplain import viz

    with pytest.raises(InputError, match=r"reduce takes pixel attributions \[H, W, C\] or \[B, H, W, C\]"):
        jaxplain.reduce(np.ones(shape, np.float32))
    assert jaxplain.reduce(np.ones((2, 8, 8, 13), np.float32), channels=13).shape == (2, 8, 8)
    image = np.zeros((8, 8, 3), np.uint8)
    for bad in (np.ones(8), np.ones((1, 8, 8))):
        with pytest.raises(InputError, match="overlay takes a 2-D map"):
            viz.overlay(image, bad)
    assert viz.overlay(image, np.ones((2, 2))).shape == (8, 8, 3)  # a layer-resolution map is resized


def test_full_vgg16_end_to_end():
    """The real architecture (random weights, Keras head, 224x224) through explain at batch 2."""
    from jaxplain import models

    m = models.vgg16()
    x = np.random.default_rng(1).normal(0, 50, size=(2, 224, 224, 3)).astype(np.float32)
    g = jaxplain.explain(m, x, "predicted", "gradient")
    assert g.shape == x.shape and np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0
    # Two chunks of 2 steps: the chunked sum and its delta (4 steps cost half of 8; delta = sum - gap
    # holds at any step count). Each forward pass once: the logits give the targets and the gap.
    attr, delta = jaxplain.explain(m, x, "predicted", "integrated_gradients(steps=4, chunk=2)", return_delta=True)
    logits = np.asarray(m(x))
    t = logits.argmax(-1)
    gap = logits[[0, 1], t] - np.asarray(m(np.zeros_like(x)))[[0, 1], t]
    assert attr.shape == x.shape and np.isfinite(np.asarray(attr)).all()
    np.testing.assert_allclose(np.asarray(attr).sum((1, 2, 3)) - gap, delta, atol=1e-4 * np.abs(gap).max())


def test_host_loop_sizes_an_unset_chunk_to_the_call(tiny_model, monkeypatch):
    """On the host loop a chunk that counts images is sized to the images per call and device
    (half as many for methods of forward passes only);
    a chunk the user sets, and a chunk that counts something else (Grad-CAM++'s activation
    elements), are left alone; scan keeps the method's default."""
    from jaxplain.engine.runner import prepare as prepare_resolved, resolved
    from jaxplain import chunks

    def prepare(fn, model, x, settings, **kw):
        return prepare_resolved(fn, model, x, resolved(fn, model, x, settings), **kw)

    assert [chunks.host_chunk(b, 224 * 224) for b in (1, 2, 8, 16, 64)] == [16, 8, 2, 1, 1]
    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", "host")
    ig, x = registry.METHODS["integrated_gradients"], jnp.asarray(X)
    assert prepare(ig, tiny_model, x, {}).static["chunk"] == chunks.CALL_PIXELS // (2 * 32 * 32)
    assert prepare(ig, tiny_model, x, {}, per_call=1).static["chunk"] == chunks.CALL_PIXELS // (32 * 32)
    assert prepare(ig, tiny_model, x, {"chunk": 3}).static["chunk"] == 3
    occlusion = registry.METHODS["occlusion"]  # forward passes only: smaller calls
    assert prepare(occlusion, tiny_model, x, {}).static["chunk"] == chunks.FORWARD_CALL_PIXELS // (2 * 32 * 32)
    assert "chunk" not in prepare(registry.METHODS["grad_cam_pp"], tiny_model, x, {}).static
    seen = []
    monkeypatch.setattr(chunks, "host_chunk", lambda per_call, pixels, _: seen.append((per_call, pixels)) or 2)
    a = jaxplain.explain(tiny_model, X, 0, "integrated_gradients(steps=5)", batch_size=1)
    assert seen == [(1, 32 * 32)]  # explain counts the images of one call, not the whole batch
    np.testing.assert_allclose(a, jaxplain.explain(tiny_model, X, 0, "integrated_gradients(steps=5, chunk=None)"),
                               rtol=1e-5, atol=1e-6 * np.abs(np.asarray(a)).max())
    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", "scan")
    assert "chunk" not in prepare(ig, tiny_model, x, {}).static


@pytest.mark.parametrize("method,module,passes", [
    ("occlusion(window=(8, 8), strides=(8, 8), chunk=2)", "perturb", 1),  # f(x)
    ("score_cam(chunk=2)", "cam", 1),  # the layer's activation
    # the layer at the baseline (at x it is the same as the head of every chunk's pass, which XLA shares)
    ("layer_integrated_gradients(steps=8, chunk=2)", "layer", 1),
])
def test_host_loop_computes_kept_values_once(tiny_model, monkeypatch, method, module, passes):
    """The forward passes a method makes before its sum run in the host loop's first call only:
    XLA's count for the whole loop is (calls - 1) * passes forward passes below the count with
    ``keep`` turned off. Results agree."""
    import importlib

    from jaxplain.engine.runner import _batched, prepare, resolved

    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", "host")
    fn, settings = registry.parse(method)
    x, t = jnp.asarray(X[:1]), jnp.zeros(1, jnp.int32)
    forward = jax.jit(lambda p, v: tiny_model.apply(p, v)[0]).lower(tiny_model.params, x[0]).compile().cost_analysis()
    forward = (forward[0] if isinstance(forward, (list, tuple)) else forward)["flops"]

    def run() -> tuple[float, np.ndarray, int]:
        prep = prepare(fn, tiny_model, x, resolved(fn, tiny_model, x, settings))
        go, flops = prep.call.compile(tiny_model.params, x, t, prep.keys, prep.per_image, prep.shared)
        return flops, np.asarray(go()), len(prep.call.steps())

    kept, a, calls = run()
    monkeypatch.setattr(importlib.import_module(f"jaxplain.methods.{module}"), "keep", lambda compute: compute())
    _batched.cache_clear()  # trace the steps again, without keep
    again, b, _ = run()
    assert calls >= 4
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
    _batched.cache_clear()
    np.testing.assert_allclose(again - kept, (calls - 1) * passes * forward, rtol=0.1)


def test_a_short_call_is_padded_to_a_power_of_two(tiny_model, monkeypatch):
    """A run smaller than ``batch_size`` (and the last slice of a longer one) computes the next
    power of two of its images, not the whole batch: 1 image at batch 8 costs one image. The
    results are those of one image per call."""
    from jaxplain.engine import runner

    assert [runner.call_images(k, 8) for k in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [runner.call_images(k, 6) for k in (1, 3, 5, 6)] == [1, 4, 6, 6]  # never beyond the batch
    sizes = []
    call = runner.Calls.__call__
    monkeypatch.setattr(runner.Calls, "__call__", lambda self, p, images, *a, **k: sizes.append(images.shape[0])
                        or call(self, p, images, *a, **k))
    x = np.random.default_rng(3).normal(size=(11, 32, 32, 3)).astype(np.float32)
    t = np.arange(11) % 10
    for n, want in ((1, [1]), (3, [4]), (11, [8, 4])):
        sizes.clear()
        got = np.asarray(jaxplain.explain(tiny_model, x[:n], t[:n], "integrated_gradients(steps=4)", batch_size=8))
        assert sizes == want
        one = np.concatenate([jaxplain.explain(tiny_model, x[i:i + 1], t[i:i + 1], "integrated_gradients(steps=4)")
                              for i in range(n)])
        np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())  # batching reorders sums


def test_progress_is_called_after_every_compiled_call(tiny_model, monkeypatch):
    """``progress=f`` hears ``f(done, total)`` after each compiled call: on the host loop one per
    chunk (IG of 8 steps in chunks of 2: 4 calls a batch), so a long batch reports as it goes."""
    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", "host")
    heard = []
    jaxplain.explain(tiny_model, np.concatenate([X, X[:1]]), 0, "integrated_gradients(steps=8, chunk=2)", batch_size=2,
                     progress=lambda done, total: heard.append((done, total)))
    assert heard == [(i, 8) for i in range(1, 9)]  # two batches of four calls
    with pytest.raises(InputError, match="progress must be True, False or a function"):
        jaxplain.explain(tiny_model, X, 0, "gradient", progress="yes")


def test_a_folder_run_reports_each_chunk(tmp_path, monkeypatch):
    """``jaxplain explain FOLDER`` says how far a batch is, chunk by chunk: the first line comes
    after the first compiled call, not after the batch (here stderr is no terminal: lines)."""
    from tests.test_dataset_run import photo, run

    photo(tmp_path / "in" / "a.png", (64, 64))
    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", "host")
    r = run("explain", tmp_path / "in", "--model", "synthetic_vgg", "--method", "integrated_gradients(steps=8, chunk=2)",
            "--batch-size", "1", "--out", tmp_path / "out", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "jaxplain: 0/1 images, integrated_gradients: 1/4 calls of this batch" in r.stderr, r.stderr


def test_a_costly_call_is_warned_before_it_compiles(tiny_model, monkeypatch):
    """IG with 100000 steps is 100000 gradient passes per image: ``explain`` says so, with the
    FLOP count, before anything compiles; every method at its defaults stays below the line."""
    import warnings

    from jaxplain import marks
    from jaxplain.engine import cost, runner

    def no_compile(*a, **k):
        raise AssertionError("reached the compiled call")

    monkeypatch.setattr(runner, "prepare", no_compile)
    with pytest.warns(jaxplain.CostWarning, match=r"integrated_gradients makes 100000 model passes per image "
                                                  r"\(200000 for 2 images, about .* FLOP"):
        with pytest.raises(AssertionError, match="reached the compiled call"):
            jaxplain.explain(tiny_model, X, 0, "integrated_gradients(steps=100000)")
    monkeypatch.undo()
    for name, fn in registry.METHODS.items():
        if {"steps", "samples", "masks"} & set(registry.settings_of(fn)):
            assert hasattr(fn, "cost"), name  # its passes grow with a setting: it declares them
        assert marks.passes(fn, registry.resolve(fn, {}), (224, 224, 3)) <= cost.WARN_PASSES, name
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxplain.CostWarning)
        jaxplain.explain(tiny_model, X, 0, "integrated_gradients")


def test_pixel_values_are_warned_once_at_the_callers_line():
    """0..255 pixels handed to explain: one InputWarning per call, pointing at the caller's line
    (not a second one from inside the engine, where the predicted class is found)."""
    import warnings

    from jaxplain import models

    model = models.synthetic_vgg(None)
    raw = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3)).astype(np.float32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        jaxplain.explain(model, raw, "predicted", "gradient")
    found = [w for w in seen if issubclass(w.category, jaxplain.InputWarning)]
    assert len(found) == 1, [(w.filename, str(w.message)) for w in found]
    assert found[0].filename == __file__


def test_messages_name_the_method_and_hint_at_quoting(tiny_model):
    """A neuron method without its neuron names itself; a bare name as a setting's value is
    answered with the setting quoted."""
    with pytest.raises(InputError, match=r"^neuron_gradient needs neuron=<channel> or neuron=\(i, j, k\)"):
        jaxplain.explain(tiny_model, X, "predicted", "neuron_gradient")
    with pytest.raises(InputError, match=r"must be literals .*; quote a string: layer=\"nope\""):
        registry.parse("grad_cam(layer=nope)")
    with pytest.raises(InputError, match=r"must be literals \(numbers, strings, True/False/None\)$"):
        registry.parse("grad_cam(layer=[x for x in 'ab'])")
