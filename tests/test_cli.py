"""The command line as a user runs it: subprocesses for whole runs whose point is the process (exit
status, one line on stderr), ``cli.main`` in-process for runs checked by the files they write (no
JAX start-up) and for argument checks that must fail before a model loads."""

import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from safetensors.torch import save_file

import jaxplain
from jaxplain import cli, models, viz
from jaxplain.io import load_for_model, load_image
from tests.test_imagenet_io import _png_header
from tests.torch_reference import TorchVGG


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("cli") / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in TorchVGG("vgg16").state_dict().items()}, path)
    return path


def run(*args, home):
    env = dict(os.environ, JAXPLAIN_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "jaxplain.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def run_here(*args, home):
    """``run`` in this process: ``cli.main``'s exit status and what it printed, as ``run`` returns them."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("JAXPLAIN_HOME", str(home))
        try:
            code = cli.main(list(map(str, args)))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def picture(path, seed=0, size=(150, 200)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3)).astype(np.uint8)).save(path)
    return path


def test_predict_end_to_end(vgg16_file, tmp_path):
    good = picture(tmp_path / "photo.png", size=(180, 260))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    r = run("predict", good, bad, "--weights", vgg16_file, home=tmp_path)
    assert r.returncode == 4, r.stderr  # one image failed, the other was still predicted
    lines = r.stdout.splitlines()
    assert lines[0] == str(good) and len(lines) == 6
    assert [l.split(".")[0].strip() for l in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert all(l.split()[-2].startswith("n") for l in lines[1:])  # wnids
    probs = [float(l.split()[-1]) for l in lines[1:]]
    assert probs == sorted(probs, reverse=True)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "broken.jpg" in err[0] and "Traceback" not in r.stderr


def test_explain_end_to_end(vgg16_file, tmp_path):
    """``jaxplain explain`` on the module's VGG16 file (one file for predict and explain)."""
    img = picture(tmp_path / "cat.png", seed=2)
    bad = tmp_path / "dog.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "out"
    r = run("explain", img, bad, "--weights", vgg16_file, "--method", "smoothgrad(samples=2)", "--precision", "float32",
            "--out", out, home=tmp_path / "home")
    assert r.returncode == 4, r.stderr  # all done, one input unreadable
    assert "top class" in r.stdout and "cat.png" in r.stdout
    failed = [line for line in r.stderr.splitlines() if line.startswith("jaxplain: failed")]
    assert len(failed) == 1 and "dog.jpg" in failed[0] and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == "jaxplain: complete, 1 unreadable: 1 explained, 0 skipped (already complete), 0 failed"
    (line,) = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    a = zarr.open_array(str(out / "smoothgrad" / "attributions.zarr"))[line["row"]]
    assert a.shape == (224, 224, 3) and a.dtype == np.float32 and np.isfinite(a).all()
    png = np.asarray(Image.open(out / "smoothgrad" / "cat.png"))
    assert png.shape == (150, 200, 3)  # over the picture at its own size


def test_bad_weights_is_one_line(tmp_path):
    w = tmp_path / "w.h5"
    w.write_text("garbage")
    img = picture(tmp_path / "i.png", size=(8, 8))
    r = run("predict", img, "--weights", w, home=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("jaxplain: error:") and "w.h5" in r.stderr


def _stored(out, method):
    """The results of ``method`` in an explain run's folder: its JSONL lines and attributions."""
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    return [l for l in lines if l["method"] == method], zarr.open_array(str(out / method / "attributions.zarr"))[:]


def test_a_cam_is_drawn_as_the_map_it_is(tmp_path):
    """The PNG of a [H, W] method is the overlay of the API's map over the picture at its own size
    (the command line once passed it through the channel reduction, which collapsed its width into
    a 1-D profile, and drew it over the 224x224 input)."""
    img = picture(tmp_path / "cat.png", seed=1)
    r = run_here("explain", img, "--model", "vgg11", "--weights", "random", "--method", "grad_cam",
                 "--out", tmp_path / "out", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    m = models.vgg11()  # the same seeded random weights
    loaded = load_for_model(img, m)
    cam = np.asarray(jaxplain.explain(m, m.preprocess(loaded.image[None]), "predicted", "grad_cam"))[0]
    (line,), stored = _stored(tmp_path / "out", "grad_cam")
    np.testing.assert_allclose(stored[line["row"]], cam, rtol=1e-5, atol=1e-6 * np.abs(cam).max())
    png = np.asarray(Image.open(tmp_path / "out" / "grad_cam" / "cat.png")).astype(int)
    assert png.shape == (150, 200, 3)  # the picture's own size
    want = viz.overlay(loaded.original, stored[line["row"]], box=loaded.box).astype(int)
    assert np.abs(png - want).max() <= 1  # the map drawn is the map stored
    assert np.abs(np.diff(png.mean(-1), axis=1)).mean() > 1  # the map varies across the width too


def test_a_signed_map_is_drawn_signed(tmp_path):
    """A map with both signs (a surrogate's segments for and against the class, or gradients
    summed over channels) is drawn in diverging colours (viz.overlay(signed=True)), not as |map|,
    which made opposing evidence look alike."""
    img = picture(tmp_path / "cat.png", seed=1)
    r = run_here("explain", img, "--model", "vgg11", "--weights", "random", "--method", "gradient", "--reduce", "sum",
                 "--out", tmp_path / "out", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    (line,), stored = _stored(tmp_path / "out", "gradient")
    m = np.asarray(jaxplain.reduce(stored[line["row"]], "sum"))
    assert m.shape == (224, 224) and m.min() < 0 < m.max() and line["signed"]
    png = np.asarray(Image.open(tmp_path / "out" / "gradient" / "cat.png")).astype(int)
    loaded = load_for_model(img, models.vgg11())
    assert np.abs(png - viz.overlay(loaded.original, m, box=loaded.box, signed=True).astype(int)).max() <= 1
    assert np.abs(png - viz.overlay(loaded.original, m, box=loaded.box).astype(int)).max() > 10


def test_same_names_and_batch_size_independence(tmp_path):
    """Three inputs named x.png in different folders keep their folders (a/x.png, b/x.png,
    c/x.png); a random method gives each image the same map whatever --batch-size (keys fold in
    each file's path)."""
    paths = []
    for i, d in enumerate("abc"):
        (tmp_path / d).mkdir()
        paths.append(picture(tmp_path / d / "x.png", seed=i))
    outs = {}
    for bs in (1, 3):
        out = tmp_path / f"out{bs}"
        r = run_here("explain", *paths, "--model", "vgg11", "--weights", "random", "--method", "smoothgrad(samples=2)",
                     "--batch-size", bs, "--out", out, home=tmp_path / "home")
        assert r.returncode == 0, r.stderr
        assert sorted(str(p.relative_to(out / "smoothgrad")) for p in (out / "smoothgrad").rglob("*.png")) == [
            "a/x.png", "b/x.png", "c/x.png"]
        lines, stored = _stored(out, "smoothgrad")
        outs[bs] = [stored[l["row"]] for l in sorted(lines, key=lambda l: l["input"])]
    for a, b in zip(outs[1], outs[3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
    assert not np.allclose(outs[1][0], outs[1][1])  # different pictures, different maps


def test_bad_images_and_outputs_lose_nothing_else(tmp_path):
    """A decompression bomb is one 'failed' line; an output path taken by a folder is one
    'could not write' line; the good image's results are written; exit status 1."""
    good = picture(tmp_path / "good.png")
    bomb = _png_header(tmp_path / "bomb.png", 20000, 20000)
    taken = picture(tmp_path / "taken.png", seed=2)
    out = tmp_path / "out"
    (out / "gradient" / "taken.png").mkdir(parents=True)
    r = run("explain", bomb, good, taken, "--model", "vgg11", "--weights", "random", "--out", out, home=tmp_path / "home")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("jaxplain: failed")]
    assert len(err) == 2, r.stderr
    assert "bomb.png" in err[0] and "400000000 pixels" in err[0]
    assert "could not write its results" in err[1] and "taken.png" in err[1]
    assert r.stderr.splitlines()[-1] == "jaxplain: 1 explained, 0 skipped (already complete), 1 failed, 1 unreadable"
    (line,), stored = _stored(out, "gradient")
    assert line["input"] == str(good) and stored.shape[1:] == (224, 224, 3)
    assert Image.open(out / "gradient" / "good.png").size == (200, 150)


@pytest.mark.parametrize("args,message", [
    (["--out", "FILE"], "--out .*: is an existing file, not a folder"),
    (["--out", "FILE/sub"], "--out .*FILE/sub: cannot write there"),
    (["--out", "/proc/jaxplain-test"], "cannot write there"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--batch-size", "-3"], "argument --batch-size: must be at least 1, got -3"),
    (["--batch-size", "two"], "argument --batch-size: not an integer: 'two'"),
    (["--reduce", "bogus"], "argument --reduce: invalid choice: 'bogus'"),
    (["--coordinator", "localhost:1234"], "--coordinator needs --num-processes and --process-id"),
    (["--num-processes", "2"], "--num-processes and --process-id need --coordinator"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], r"--process-id must be in \[0, 2\)"),
    (["--method", "saliency"], "unknown method 'saliency'"),
    (["--method", "integrated_gradients(stepz=2)"], "has no setting 'stepz'"),
    (["--method", "layer_integrated_gradients"], "returns a layer's activations, which cannot be drawn"),
    (["--target", "cat"], "--target takes 'predicted' or a class index, not 'cat'"),
    (["--target", "-1"], "--target must be a class index >= 0"),
])
def test_arguments_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, args, message):
    """Each bad argument is one line (exit 2) before any model or image is touched: the weights
    named do not exist, so loading them would have failed differently."""
    (tmp_path / "FILE").write_text("a file")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    monkeypatch.setattr(cli.common, "load_model", lambda a: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as exit_:  # argparse's own checks exit
        raise SystemExit(cli.main(["explain", str(tmp_path / "missing.png"), "--weights", "/no/such.h5", *args]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("jaxplain: error:"), err
    assert pytest.importorskip("re").search(message, err), err


def test_unknown_layer_fails_before_any_image(tmp_path):
    img = picture(tmp_path / "a.png")
    r = run("explain", img, "--model", "vgg11", "--weights", "random", "--method", "grad_cam(layer='block9_conv1')",
            "--out", tmp_path / "out", home=tmp_path / "home")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown layer 'block9_conv1'" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing written: the folder this run made, empty, is gone


def test_help_lists_methods_and_reductions(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in jaxplain.METHODS) and "abs_max" in text and "l2" in text
    assert "``" not in text
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_progress_bar_counts_the_calls(tiny_model, capfd):
    """explain(progress=True): a bar on stderr over the compiled calls (host loop: one per chunk)."""
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXPLAIN_CHUNK_LOOP", "host")
        jaxplain.explain(tiny_model, x, 0, "integrated_gradients(steps=6, chunk=2)", progress=True)
    err = capfd.readouterr().err
    assert "integrated_gradients on 2 images" in err and "3/3" in err, err
    jax.block_until_ready(jaxplain.explain(tiny_model, x, 0, "gradient"))
    assert capfd.readouterr().err == ""  # off by default


def test_evaluate_on_the_synthetic_benchmark(tmp_path):
    """`jaxplain evaluate`: a table of methods x metrics and a JSON of every score, equal to what
    the API gives on the same synthetic images with the shipped model."""
    from jaxplain import synthetic

    out = tmp_path / "res" / "scores.json"
    r = run_here("evaluate", "-n", "6", "--methods", "gradient", "grad_cam", "--metrics", "deletion(steps=8)",
                 "pointing_game", "--batch-size", "4", "--json", out, home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("synthetic_vgg on 6 synthetic images (seed 0): 2 methods x 2 metrics, 4 cells to run")
    assert lines[1].split()[:5] == ["method", "explain", "s", "deletion(steps=8)", "pointing_game"]
    assert [l.split()[0] for l in lines[3:5]] == ["gradient", "grad_cam"]
    assert "lower is better: deletion(steps=8)" in r.stdout and "higher is better: pointing_game" in r.stdout
    result = __import__("json").loads(out.read_text())
    cells = {(c["method"], c["metric"]): c for c in result["cells"]}
    assert len(cells) == 4 and all(len(c["scores"]) == 6 for c in cells.values())
    model = models.synthetic_vgg()
    data = synthetic.make(6, seed=0)
    x = model.preprocess(data.images)
    a = jaxplain.explain(model, x, "predicted", "grad_cam")
    want = jaxplain.evaluate(model, x, "predicted", a, "pointing_game", mask=data.masks)["score"]
    np.testing.assert_allclose(cells[("grad_cam", "pointing_game")]["scores"], want, atol=1e-6)
    g = jaxplain.explain(model, x, "predicted", "gradient")
    want = jaxplain.evaluate(model, x, "predicted", g, "deletion(steps=8)")["score"]
    np.testing.assert_allclose(cells[("gradient", "deletion(steps=8)")]["scores"], want, atol=1e-5)


def test_evaluate_on_your_images_and_masks(tmp_path):
    """With images and masks (pictures, white = the object) the masks follow the images through
    the model's resize; a bad image is skipped with one line and the rest still scored."""
    from jaxplain import synthetic

    data = synthetic.make(3, seed=5, size=96)
    paths, masks = [], []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        masks.append(tmp_path / f"mask{i}.png")
        Image.fromarray(data.images[i]).save(paths[-1])
        Image.fromarray((data.masks[i] * 255).astype(np.uint8)).save(masks[-1])
    out = tmp_path / "scores.json"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    r = run("evaluate", paths[0], broken, *paths[1:], "--masks", masks[0], masks[0], *masks[1:], "--model",
            "synthetic_vgg", "--methods", "grad_cam", "--metrics", "relevance_mass", "--json", out, home=tmp_path / "home")
    assert r.returncode == 4, r.stderr  # one image skipped, the others scored
    errors = [line for line in r.stderr.splitlines() if not line.startswith("  ")]  # the rest: a line per finished cell
    assert len(errors) == 1 and "broken.png" in errors[0] and "Traceback" not in r.stderr
    assert "grad_cam x relevance_mass:" in r.stderr
    assert r.stdout.startswith("synthetic_vgg on 3 images")
    model = models.synthetic_vgg()
    x = model.preprocess(np.stack([load_image(p, model) for p in paths]))
    m = np.stack([load_image(p, model).max(-1) > 127 for p in masks])
    assert m.shape == (3, 64, 64) and 0 < m.mean() < 0.5
    a = jaxplain.explain(model, x, "predicted", "grad_cam")
    want = jaxplain.evaluate(model, x, "predicted", a, "relevance_mass", mask=m)["score"]
    got = __import__("json").loads(out.read_text())["cells"][0]["scores"]
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--metrics", "nope"], "unknown metric 'nope'"),
    (["--metrics", "deletion(stepz=3)"], "deletion has no setting 'stepz'"),
    (["--methods", "layer_integrated_gradients"], "returns a layer's activations, which no metric can score"),
    (["IMG", "--metrics", "pointing_game"], "metric 'pointing_game' needs ground-truth masks"),
    (["IMG", "--masks", "IMG", "IMG"], "--masks gives 2 masks for 1 image: one mask per image"),
    (["--masks", "IMG"], "--masks goes with your images"),
    (["--json", "DIR"], "--json .*: is a folder, not a file"),
    (["-n", "0"], "argument -n: must be at least 1, got 0"),
    (["--model", "synthetic_vgg", "--weights", "imagenet"], "--weights for synthetic_vgg is 'shipped' or 'random'"),
])
def test_evaluate_arguments_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, args, message):
    (tmp_path / "DIR").mkdir()
    args = [a.replace("IMG", str(tmp_path / "missing.png")).replace("DIR", str(tmp_path / "DIR")) for a in args]
    monkeypatch.setattr(cli.common, "load_model", lambda a: pytest.fail("loaded the model"))
    monkeypatch.setattr(models, "synthetic_vgg", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as exit_:
        raise SystemExit(cli.main(["evaluate", *args]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("jaxplain: error:"), err
    assert pytest.importorskip("re").search(message, err), err


def test_a_compilation_cache_dir_in_the_environment_wins(tmp_path, monkeypatch):
    """The command line keeps compiled programs under ``$JAXPLAIN_HOME/xla`` unless JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` is set (the test suite shares one folder with the runs it starts)."""
    monkeypatch.setenv("JAXPLAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    from jax._src import compilation_cache

    from jaxplain import xla_cache

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs,
              jax.config.jax_compilation_cache_max_size)
    monkeypatch.setattr(xla_cache, "_state", {"decided": False, "ours": None})
    try:
        cli.common.compile_cache()
        assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs,
                jax.config.jax_compilation_cache_max_size) == before
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        jax.config.update("jax_compilation_cache_dir", None)  # as in a process without the suite's folder
        monkeypatch.setattr(xla_cache, "_state", {"decided": False, "ours": None})
        cli.common.compile_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "home" / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
        jax.config.update("jax_compilation_cache_max_size", before[2])
        compilation_cache.reset_cache()


def test_predict_and_evaluate_help_and_exit_status_for_unreadable_inputs(tmp_path, capsys):
    """`predict` with one unreadable input prints the others and exits 4, as explain does; the
    help of predict and evaluate states the exit status, --model's default and evaluate's
    default methods, and speaks of the model's classes (not ImageNet's)."""
    good = picture(tmp_path / "photo.png", size=(64, 64))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    r = run_here("predict", good, bad, "--model", "synthetic_vgg", "--weights", "random", "--top", "2",
                 home=tmp_path / "home")
    assert r.returncode == 4, r.stderr
    lines = r.stdout.splitlines()
    assert lines[lines.index(str(good)) + 1].startswith("  1. ") and "broken.jpg" in r.stderr
    for command in ("predict", "evaluate", "explain"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status:" in text and "4 all done, but some" in text, command
        assert "--model MODEL the zoo's model (default" in text, (command, text)
        assert "ImageNet classes" not in text
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from jaxplain.cli.evaluate import DEFAULT_METHODS

    assert f"(default: {' '.join(DEFAULT_METHODS)}; list below)" in text
    assert all(name in text for name in jaxplain.METHODS)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "the model's top classes" in text and "ImageNet classes" not in text
