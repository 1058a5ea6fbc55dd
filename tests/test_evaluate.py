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


def _cli(argv, monkeypatch, capsys):
    from jaxplain import cli

    monkeypatch.setenv("JAXPLAIN_COMPILE_CACHE", "0")
    code = cli.main(["evaluate", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_cli_honours_random_weights_and_keys_in_specs(tmp_path, monkeypatch, capsys):
    """Without images, ``--weights random`` scores the synthetic benchmark with synthetic_vgg's
    seeded random weights (the control), ``key=`` inside a method's or metric's spec is accepted,
    and a model the benchmark cannot feed is refused in one line before anything loads."""
    from jaxplain import baselines, models, synthetic

    out = tmp_path / "r.json"
    code, stdout, err = _cli(["-n", 3, "--weights", "random", "--methods", "gradient", "smoothgrad(samples=2, key=3)",
                              "--metrics", "deletion(steps=4)", "mu_fidelity(samples=4, grid_size=4, key=1)",
                              "--json", out], monkeypatch, capsys)
    assert code == 0, err
    cells = {(c["method"], c["metric"]): c["scores"] for c in __import__("json").loads(out.read_text())["cells"]}
    bench = synthetic.make(3, seed=0)
    for weights in (None, "shipped"):
        model = models.synthetic_vgg(weights)
        x = model.preprocess(bench.images)
        want = jaxplain.evaluate(model, x, "predicted", jaxplain.explain(model, x, "predicted", "gradient"),
                                 "deletion(steps=4)")["score"]
        close = np.allclose(cells["gradient", "deletion(steps=4)"], want, atol=1e-5)
        assert close == (weights is None), weights
    model = models.synthetic_vgg(None)
    x = model.preprocess(bench.images)
    a = jaxplain.explain(model, x, "predicted", "smoothgrad", samples=2,
                         key=baselines.per_image(baselines.named(3, "smoothgrad", {"samples": 2}), np.arange(3)))
    want = jaxplain.evaluate(model, x, "predicted", a, "deletion(steps=4)")["score"]
    np.testing.assert_allclose(cells["smoothgrad(samples=2, key=3)", "deletion(steps=4)"], want, atol=1e-5)
    monkeypatch.setattr(models, "vgg", lambda *a, **k: pytest.fail("loaded a model"))
    code, _, err = _cli(["--model", "vgg16", "--json", tmp_path / "v.json"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "--model vgg16 needs your images" in err, err


def test_evaluate_cli_keeps_finished_cells_when_stopped_and_resumes(tmp_path):
    """SIGTERM mid-run: the cells finished so far are in the JSON (written as each finished), the
    exit status says a signal stopped it; the same command finishes only the missing cells, with
    the scores a run without a stop gives; other settings on that file are refused in one line."""
    import json
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, JAXPLAIN_COMPILE_CACHE="0")
    out = tmp_path / "r.json"
    args = [sys.executable, "-m", "jaxplain.cli", "evaluate", "-n", "3", "--methods", "gradient", "gradient_x_input",
            "--metrics", "deletion(steps=4)", "insertion(steps=4)", "--json", str(out)]
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    assert "4 cells to run" in first, first + p.stderr.read()
    line = p.stderr.readline()
    assert line.startswith("  [1/4] gradient x deletion(steps=4):"), line
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "stopping after the cell in flight" in err and "rerun the command to finish" in err and "Traceback" not in err
    kept = json.loads(out.read_text())["cells"]
    assert 1 <= len(kept) < 4
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{4 - len(kept)} cells to run ({len(kept)} already in" in r.stdout
    assert r.stderr.count("\n") == 4 - len(kept)  # a line per cell computed, none for those kept
    cells = {(c["method"], c["metric"]): c["scores"] for c in json.loads(out.read_text())["cells"]}
    assert len(cells) == 4
    from jaxplain import models, synthetic

    model = models.synthetic_vgg()
    x = model.preprocess(synthetic.make(3, seed=0).images)
    for method in ("gradient", "gradient_x_input"):
        a = jaxplain.explain(model, x, "predicted", method)
        for metric in ("deletion(steps=4)", "insertion(steps=4)"):
            want = jaxplain.evaluate(model, x, "predicted", a, metric)["score"]
            np.testing.assert_allclose(cells[method, metric], want, atol=1e-5, err_msg=f"{method} x {metric}")
    r = subprocess.run([*args[:5], "4", *args[6:]], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "holds results of other settings (-n 3 there, 4 here)" in r.stderr


def test_one_image_gets_wilsons_interval_for_hits_and_null_in_strict_json(tmp_path, monkeypatch, capsys):
    """One image: a 0/1 score has Wilson's interval (written here from its formula: a miss gives
    [0, z^2 / (1 + z^2)], about [0, 0.79]); Student's t has none, which the JSON writes as null
    (strict JSON, as JSON.parse reads it) and the table as ``-``."""
    import json

    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(comparison.interval(np.array([0.0])), (0.0, 0.0, z * z / (1 + z * z)), atol=1e-12)
    np.testing.assert_allclose(comparison.interval(np.array([1.0])), (1.0, 1 / (1 + z * z), 1.0), atol=1e-12)
    out = tmp_path / "r.json"
    code, stdout, err = _cli(["-n", 1, "--methods", "grad_cam", "--metrics", "pointing_game", "deletion(steps=4)",
                              "--json", out], monkeypatch, capsys)
    assert code == 0, err

    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    cells = {c["metric"]: c for c in json.loads(out.read_text(), parse_constant=refuse)["cells"]}
    hit = cells["pointing_game"]["scores"][0]
    assert hit in (0.0, 1.0)
    want = (0.0, z * z / (1 + z * z)) if hit == 0 else (1 / (1 + z * z), 1.0)
    np.testing.assert_allclose([cells["pointing_game"]["low"], cells["pointing_game"]["high"]], want, atol=1e-12)
    assert cells["deletion(steps=4)"]["low"] is None and cells["deletion(steps=4)"]["high"] is None
    assert "[-, -]" in stdout and "nan" not in stdout, stdout
    assert "1 method x 2 metrics, 2 cells to run" in stdout, stdout


def test_evaluate_cli_matches_finished_cells_by_settings_not_spelling(tmp_path, monkeypatch, capsys):
    """The same settings in another order (or spacing) are the same cell: not computed again nor
    stored twice, and the file keeps the label first written; another -n on that file is refused
    naming the flag and both values."""
    import json

    out = tmp_path / "r.json"
    code, stdout, err = _cli(["-n", 2, "--methods", "smoothgrad(samples=2, key=3)", "--metrics", "deletion(steps=4)",
                              "--json", out], monkeypatch, capsys)
    assert code == 0, err
    first = json.loads(out.read_text())
    code, stdout, err = _cli(["-n", 2, "--methods", "smoothgrad(key=3,samples=2)", "--metrics", "deletion( steps = 4 )",
                              "--json", out], monkeypatch, capsys)
    assert code == 0, err
    assert "0 cells to run (1 already in" in stdout and err == "", stdout + err
    assert "smoothgrad(key=3,samples=2)" in stdout  # this run's table: the labels written this time
    again = json.loads(out.read_text())
    assert [(c["method"], c["metric"]) for c in again["cells"]] == [("smoothgrad(samples=2, key=3)", "deletion(steps=4)")]
    assert again["cells"] == first["cells"] and list(again["method_seconds"]) == ["smoothgrad(samples=2, key=3)"]
    code, _, err = _cli(["-n", 3, "--methods", "gradient", "--json", out], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "holds results of other settings (-n 2 there, 3 here)" in err, err
