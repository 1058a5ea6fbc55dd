"""``jaxplain explain`` over folders as a user runs it (subprocesses): good and bad files mixed,
reruns, SIGINT / SIGTERM and a rerun, two processes. The model is the shipped synthetic VGG
(64x64), so a run takes seconds; each stored attribution is compared with ``jaxplain.explain``
on the same picture, each overlay read back at the picture's own size."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import jaxplain
from jaxplain import cli, models
from jaxplain.io import load_image
from tests.test_imagenet_io import _png_header

ROOT = Path(__file__).resolve().parents[1]


def run(*args, home, cwd=None):
    env = dict(os.environ, JAXPLAIN_HOME=str(home), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "jaxplain.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd or ROOT)


def photo(path, size, seed=0, mode="RGB"):
    """A picture of ``size`` (h, w): a few flat shapes on noise, saved in ``mode``."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
    h, w = size
    a[h // 4 : h // 2, w // 5 : w // 2] = (220, 40, 40)
    a[h // 2 :, w // 2 :] = (40, 200, 60)
    img = Image.fromarray(a)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def lines(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def synthetic():
    return models.synthetic_vgg()


def reference(model, path, method):
    x = model.preprocess(load_image(path, model)[None])
    return np.asarray(jaxplain.explain(model, x, "predicted", method))[0]


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "photos"
    good = [photo(d / "cat.jpg", (240, 320), 1), photo(d / "cat.png", (90, 60), 2),  # a shared stem
            photo(d / "sub" / "wide.png", (40, 300), 3), photo(d / "sub" / "gray.png", (64, 64), 4, "L"),
            photo(d / "sub" / "palette.gif", (70, 50), 5, "P"), photo(d / "rgba.png", (50, 80), 6, "RGBA"),
            photo(d / "cmyk.jpg", (60, 60), 7, "CMYK"), photo(d / "deep.png", (33, 47), 8, "I;16")]
    (d / "zero.jpg").write_bytes(b"")
    photo(d / "cut.jpg", (200, 200), 9)
    (d / "cut.jpg").write_bytes((d / "cut.jpg").read_bytes()[:600])
    (d / "text.png").write_text("not a picture")
    _png_header(d / "bomb.png", 20000, 20000)
    (d / "notes.txt").write_text("not an image suffix: never listed")
    bad = ["zero.jpg", "cut.jpg", "text.png", "bomb.png"]
    return d, good, bad


def test_a_folder_with_good_and_bad_files(folder, synthetic, tmp_path):
    d, good, bad = folder
    out = tmp_path / "out"
    r = run("explain", d, tmp_path / "missing", "--model", "synthetic_vgg", "--method", "gradient",
            "--method", "grad_cam", "--out", out, "--batch-size", "3", "--dtype", "float16", home=tmp_path)
    assert r.returncode == 4, r.stderr  # all done, some inputs unreadable
    assert "Traceback" not in r.stderr
    failed = [l for l in r.stderr.splitlines() if l.startswith("jaxplain: failed")]
    assert len(failed) == len(bad) + 1, r.stderr  # one line each, the missing path too
    for name in [*bad, "missing"]:
        assert sum(name in l for l in failed) == 1, (name, failed)
    assert r.stderr.strip().splitlines()[-1] == (
        f"jaxplain: complete, {len(bad) + 1} unreadable: {len(good)} explained, 0 skipped (already complete), 0 failed")
    records = lines(out)
    assert len(records) == 2 * len(good)
    assert {(r["input"], r["method"]) for r in records} == {(str(p), m) for p in good for m in ("gradient", "grad_cam")}
    stores = {m: zarr.open_array(str(out / m / "attributions.zarr"))[:] for m in ("gradient", "grad_cam")}
    assert stores["gradient"].dtype == np.float16 and stores["gradient"].shape == (len(good), 64, 64, 3)
    assert stores["grad_cam"].shape == (len(good), 64, 64)
    for rec in records:
        path = Path(rec["input"])
        h, w = np.asarray(Image.open(path)).shape[:2]
        assert rec["size"] == [h, w]
        for key in ("overlay", "thumb", "picture"):
            Image.open(out / rec[key]).load()  # each decodes
        assert Image.open(out / rec["overlay"]).size == (w, h)  # the picture's own size
        assert max(Image.open(out / rec["thumb"]).size) <= 256
        want = reference(synthetic, path, rec["method"])
        got = stores[rec["method"]][rec["row"]].astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())  # float16 storage
        assert len(rec["top5"]) == 5 and rec["top5"][0]["class"] == rec["target"]
        assert [t["p"] for t in rec["top5"]] == sorted((t["p"] for t in rec["top5"]), reverse=True)
    names = sorted(r["overlay"] for r in records if r["method"] == "gradient")
    assert names == sorted(["gradient/cat.jpg.png", "gradient/cat.png.png", "gradient/sub/wide.png",
                            "gradient/sub/gray.png", "gradient/sub/palette.png", "gradient/rgba.png",
                            "gradient/cmyk.png", "gradient/deep.png"])  # the tree mirrored, no collision


def test_a_rerun_skips_what_is_complete_and_refuses_other_settings(tmp_path, synthetic):
    d = tmp_path / "in"
    for i in range(5):
        photo(d / f"p{i}.png", (50 + 10 * i, 70), i)
    out = tmp_path / "out"
    args = ["explain", d, "--model", "synthetic_vgg", "--out", out, "--batch-size", "2"]
    first = run(*args, "--method", "gradient", home=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run(*args, "--method", "gradient", "--method", "smoothgrad(samples=4)", home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines()[-1] == "jaxplain: 5 explained, 0 skipped (already complete), 0 failed"
    assert "with smoothgrad" in again.stdout and "gradient," not in again.stdout  # only the new method ran
    third = run(*args, "--method", "gradient", "--method", "smoothgrad(samples=4)", home=tmp_path)
    assert third.returncode == 0 and "0 explained, 5 skipped (already complete), 0 failed" in third.stderr
    records = lines(out)
    assert len(records) == 10 and len({(r["input"], r["method"]) for r in records}) == 10  # each once
    smooth = zarr.open_array(str(out / "smoothgrad" / "attributions.zarr"))[:]
    assert smooth.shape[0] == 5
    changed = run(*args, "--method", "smoothgrad(samples=8)", home=tmp_path)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1
    assert "samples" in changed.stderr and "--overwrite" in changed.stderr
    replaced = run(*args, "--method", "smoothgrad(samples=8)", "--overwrite", home=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    kept = lines(out)  # only the conflicting method replaced: gradient's results stay
    assert sorted((r["method"], r["settings"].get("samples")) for r in kept) == [("gradient", None)] * 5 + [("smoothgrad", 8)] * 5
    assert all((out / r["overlay"]).is_file() for r in kept) and len(list((out / "gradient").glob("*.png"))) == 5
    assert cli.main(["report", str(out)]) == 0 and (out / "index.html").is_file()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, monkeypatch, capsys):
    from jaxplain.runs import outputs

    monkeypatch.setattr(cli.common, "load_model", lambda args: pytest.fail("the model was loaded"))
    img = photo(tmp_path / "a.png", (20, 20))
    out = tmp_path / "out"
    out.mkdir()
    held = outputs.Lock(out / ".lock.p0", "into out")  # as a running explain holds it
    try:
        assert cli.main(["explain", str(img), "--out", str(out), "--model", "synthetic_vgg"]) == 2
        assert "another jaxplain run is writing" in capsys.readouterr().err
        assert cli.main(["report", str(out)]) == 2  # no run.json yet
        assert "no jaxplain run here" in capsys.readouterr().err
    finally:
        held.release()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_run_stopped_by_a_signal_and_rerun_gives_each_result_once(tmp_path, sig, synthetic):
    d = tmp_path / "in"
    n = 40
    for i in range(n):
        photo(d / f"p{i:02d}.png", (64 + i, 64), i)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jaxplain.cli", "explain", str(d), "--model", "synthetic_vgg", "--out", str(out),
            "--batch-size", "2", "--method", "integrated_gradients(steps=64)"]
    env = dict(os.environ, JAXPLAIN_HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "results.jsonl").exists() and (out / "results.jsonl").stat().st_size):
        time.sleep(0.02)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and "stopped by a signal" in stderr
    first = lines(out)
    assert 0 < len(first) < n
    rerun = run(*args[3:], home=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n - len(first)} explained, {len(first)} skipped" in rerun.stderr  # nothing finished was redone
    records = lines(out)
    assert sorted(r["input"] for r in records) == sorted(str(d / f"p{i:02d}.png") for i in range(n))
    store = zarr.open_array(str(out / "integrated_gradients" / "attributions.zarr"))[:]
    assert sorted(r["row"] for r in records) == list(range(n)) and store.shape[0] == n
    for rec in records[:: 7]:
        want = reference(synthetic, rec["input"], "integrated_gradients(steps=64)")
        np.testing.assert_allclose(store[rec["row"]], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        Image.open(out / rec["overlay"]).load()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_inputs_and_join_their_results(tmp_path, synthetic):
    d = tmp_path / "in"
    n = 7
    for i in range(n):
        photo(d / f"p{i}.png", (60, 60 + 5 * i), i)
    out = tmp_path / "out"
    coordinator = f"127.0.0.1:{_port()}"
    env = dict(os.environ, JAXPLAIN_HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "jaxplain.cli", "explain", str(d), "--model", "synthetic_vgg",
                               "--out", str(out), "--method", "gradient", "--batch-size", "2", "--report",
                               "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "(process 0): 4 explained" in outs[0][1] and "(process 1): 3 explained" in outs[1][1]
    records = lines(out)
    assert sorted(r["input"] for r in records) == sorted(str(d / f"p{i}.png") for i in range(n))  # once each
    assert sorted(r["process"] for r in records) == [0] * 4 + [1] * 3
    assert not list(out.glob("results.p*")) and not list(out.glob("*/attributions.p*"))  # parts joined
    store = zarr.open_array(str(out / "gradient" / "attributions.zarr"))[:]
    assert sorted(r["row"] for r in records) == list(range(n))
    for rec in records:
        want = reference(synthetic, rec["input"], "gradient")
        np.testing.assert_allclose(store[rec["row"]], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert (out / "index.html").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--method", "no_such_method"], "no_such_method"),
    (["--method", "gradient(steps=3)"], "steps"),
    (["--method", "layer_gradient_x_activation"], "cannot be drawn"),
    (["--method", "gradient", "--method", "gradient"], "given twice"),
    (["--cmap", "no_such_map"], "no_such_map"),
    (["--target", "-1"], "--target"),
])
def test_arguments_are_checked_before_a_model_loads(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(cli.common, "load_model", lambda args: pytest.fail("the model was loaded"))
    img = photo(tmp_path / "a.png", (20, 20))
    assert cli.main(["explain", str(img), "--out", str(tmp_path / "out"), "--model", "synthetic_vgg", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxplain: error:") and message in err


def test_an_unusable_output_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.common, "load_model", lambda args: pytest.fail("the model was loaded"))
    img = photo(tmp_path / "a.png", (20, 20))
    (tmp_path / "file").write_text("x")
    for out, message in [(tmp_path / "file", "existing file"), (tmp_path / "file" / "sub", "cannot write there")]:
        assert cli.main(["explain", str(img), "--out", str(out), "--model", "synthetic_vgg"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and str(out) in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.common, "load_model", lambda args: pytest.fail("the model was loaded"))
    img = photo(tmp_path / "a.png", (20, 20))
    with pytest.raises(jaxplain.InputError, match="unknown method 'nope'"):
        cli.main(["explain", str(img), "--out", str(tmp_path / "out"), "--method", "nope", "--debug"])


def test_the_report_of_a_real_run_opens_in_a_browser(tmp_path):
    """What the pipeline writes and what the report links agree: headless Chromium loads every
    heat map of a run's index.html (the report's own tests build their folders by hand)."""
    from tests.test_report import COUNTER, _browse, _chromium

    _chromium()  # skips, with the reason, where there is no browser
    d = tmp_path / "in"
    for i in range(3):
        photo(d / f"p {i}#.png", (50 + 20 * i, 80), i)  # a space and a '#' in every name
    out = tmp_path / "out"
    r = run("explain", d, "--model", "synthetic_vgg", "--method", "gradient", "--method", "grad_cam", "--report",
            "--out", out, home=tmp_path)
    assert r.returncode == 0, r.stderr
    probe = out / "probe.html"
    probe.write_text((out / "index.html").read_text(encoding="utf-8").replace("</body>", f"{COUNTER}</body>"),
                     encoding="utf-8")
    dom = _browse(tmp_path, probe, "--dump-dom", "--virtual-time-budget=10000")
    assert "loaded 6 of 6" in dom, dom[-500:]


def test_writes_no_writer_started_are_done_by_the_waiting_thread():
    """Low-priority writers that get no time cannot stall a run: waiting for a batch, the main
    thread does every write still queued."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from jaxplain.runs import loop as pipeline

    release, ran = threading.Event(), []
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(release.wait)  # the only writer, held up
        task = (lambda who: ran.append((who, threading.current_thread().name)), "queued")
        pipeline._finish([(pool.submit(*task), task)])
        assert ran == [("queued", threading.current_thread().name)]  # done here, not by the writer
        release.set()
        pipeline._finish([(busy, (release.wait,))])  # one already running is waited for


# --- the folder as a user sees it across runs (in process: cli.main, the shipped synthetic VGG) ---


@pytest.fixture()
def jx(monkeypatch, capsys):
    """``jx(*argv) -> (exit status, stdout, stderr)`` of ``jaxplain explain ...`` (synthetic_vgg) in this process."""
    monkeypatch.setenv("JAXPLAIN_COMPILE_CACHE", "0")

    def call(*argv):
        capsys.readouterr()
        code = cli.main(["explain", *map(str, argv), "--model", "synthetic_vgg"])
        got = capsys.readouterr()
        return code, got.out, got.err

    return call


def test_two_runs_into_one_folder_keep_both_pictures(tmp_path, jx):
    a = photo(tmp_path / "in" / "a" / "cat.png", (40, 60), 1)
    b = photo(tmp_path / "in" / "b" / "cat.png", (60, 40), 2)
    out = tmp_path / "o"
    assert jx(a, "--out", out)[0] == 0
    first = lines(out)[0]
    kept = {k: (out / first[k]).read_bytes() for k in ("overlay", "thumb", "picture")}
    code, _, err = jx(b, "--out", out, "--report")
    assert code == 0, err
    records = {r["input"]: r for r in lines(out)}
    assert set(records) == {str(a), str(b)}
    for k in ("overlay", "thumb", "picture"):
        assert records[str(a)][k] != records[str(b)][k]  # a name of its own in the folder
        assert (out / records[str(a)][k]).read_bytes() == kept[k]  # a's pictures untouched
    assert Image.open(out / records[str(b)]["overlay"]).size == (40, 60)  # b's own, at b's size
    again = jx(a, b, "--out", out)  # both at once: each keeps the name it has
    assert again[0] == 0 and "0 explained, 2 skipped" in again[2]
    assert {r["input"]: r["overlay"] for r in lines(out)} == {k: r["overlay"] for k, r in records.items()}


def test_a_resume_with_the_methods_in_another_order_is_accepted(tmp_path, jx):
    img = photo(tmp_path / "a.png", (30, 30))
    out = tmp_path / "o"
    one, two = "smoothgrad(samples=2)", "smoothgrad(samples=3)"
    assert jx(img, "--out", out, "--method", one, "--method", two)[0] == 0
    code, _, err = jx(img, "--out", out, "--method", two, "--method", one)
    assert code == 0, err
    assert "0 explained, 1 skipped (already complete)" in err
    assert sorted((r["method"], r["settings"]["samples"]) for r in lines(out)) == [("smoothgrad", 2),
                                                                                   ("smoothgrad-2", 3)]


def test_help_says_the_attributions_are_zarr():
    text = cli.parser().format_help()
    assert "NPY" not in text and "zarr" in text


def test_float16_overflow_is_counted_not_silent(tmp_path, jx, monkeypatch):
    from jaxplain.runs import loop

    real = loop.explain
    monkeypatch.setattr(loop, "explain", lambda *a, **k: np.asarray(real(*a, **k)) * 0 + np.float32(1e6))
    img = photo(tmp_path / "a.png", (30, 30))
    code, _, err = jx(img, "--out", tmp_path / "o", "--dtype", "float16")
    n = 64 * 64 * 3
    assert f"{n} values" in err and "float16" in err, err
    assert "overflow encountered" not in err, err  # NumPy's own warning is not said too
    assert code == 0


def test_the_top5_is_predicted_at_the_run_precision(tmp_path, jx, synthetic):
    from jaxplain.engine.precision import with_precision
    from jaxplain.engine.runner import predict

    img = photo(tmp_path / "a.png", (50, 50), 3)
    assert jx(img, "--out", tmp_path / "o", "--precision", "bfloat16")[0] == 0
    x = synthetic.preprocess(load_image(img, synthetic)[None])
    low = np.asarray(predict(with_precision(synthetic, "bfloat16"), x), np.float64)[0]
    full = np.asarray(predict(with_precision(synthetic, "float32"), x), np.float64)[0]
    p_low, p_full = np.exp(low - low.max()) / np.exp(low - low.max()).sum(), np.exp(full - full.max()) / np.exp(full - full.max()).sum()
    top = lines(tmp_path / "o")[0]["top5"][0]
    assert abs(p_low[top["class"]] - p_full[top["class"]]) > 1e-5  # the two precisions can be told apart
    assert top["p"] == pytest.approx(p_low[top["class"]], abs=2e-6)


def test_bad_setting_values_are_refused_before_any_image_and_not_recorded(tmp_path, jx):
    img = photo(tmp_path / "a.png", (30, 30))
    out = tmp_path / "o"
    code, stdout, err = jx(img, "--out", out, "--method", "integrated_gradients(steps=0)")
    assert code == 2 and err.count("\n") == 1 and "steps" in err, err
    assert "failed" not in err and not (out / "results.jsonl").exists()
    assert "steps" not in ((out / "run.json").read_text() if (out / "run.json").exists() else "")
    code, _, err = jx(img, "--out", out, "--method", "integrated_gradients(steps=4)")
    assert code == 0 and "1 explained" in err, err


def test_a_bad_setting_value_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """``steps=0`` (and a bad value of any setting that does not name part of the network) is one
    line before the model is read: the method is traced on a stand-in network first."""
    monkeypatch.setattr(cli.common, "load_model", lambda args: pytest.fail("the model was loaded"))
    img = photo(tmp_path / "a.png", (30, 30))
    for spec, word in [("integrated_gradients(steps=0)", "steps"), ("smoothgrad(sigma=-1.0)", "sigma"),
                       ("lime(samples=0)", "samples"), ("occlusion(strides=(0, 8))", "strides")]:
        assert cli.main(["explain", str(img), "--out", str(tmp_path / "o"), "--method", spec]) == 2, spec
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err and "failed" not in err, err


def test_the_stand_in_refuses_only_what_the_real_model_refuses(synthetic):
    """No false refusal before the model loads: every method the command line takes, at its defaults,
    is refused by the stand-in network only if the real model (synthetic_vgg) refuses it too."""
    from jaxplain.registry import METHODS
    from jaxplain.runs import loop, record

    for name in sorted(METHODS):
        try:
            jobs = record.jobs([name], 0, [])
        except jaxplain.InputError:  # the command line does not draw it (a layer's activations)
            continue
        try:
            loop.check_values(jobs)
        except jaxplain.InputError as e:
            with pytest.raises(jaxplain.InputError):
                loop.check_jobs(synthetic, jobs, (64, 64, 3))
            print(name, e)


def test_a_method_recorded_without_results_does_not_block_a_rerun(tmp_path, jx):
    img = photo(tmp_path / "a.png", (30, 30))
    out = tmp_path / "o"
    assert jx(img, "--out", out, "--method", "gradient")[0] == 0
    record = json.loads((out / "run.json").read_text())
    record["methods"].append({"label": "smoothgrad", "name": "smoothgrad", "settings": {"samples": 2, "key": 0}})
    (out / "run.json").write_text(json.dumps(record))  # as a run killed before its first smoothgrad result leaves it
    code, _, err = jx(img, "--out", out, "--method", "gradient", "--method", "smoothgrad(samples=3)")
    assert code == 0 and "1 explained" in err, err
    assert [m["settings"] for m in json.loads((out / "run.json").read_text())["methods"] if m["label"] == "smoothgrad"] \
        == [{"samples": 3, "key": 0}]


def test_a_changed_picture_is_explained_again(tmp_path, jx, synthetic):
    d = tmp_path / "in"
    p1, p2 = photo(d / "p1.png", (40, 40), 1), photo(d / "p2.png", (40, 40), 2)
    out = tmp_path / "o"
    assert jx(d, "--out", out)[0] == 0
    photo(p1, (52, 36), 7)  # edited in place: other pixels, other size
    os.utime(p1, ns=(p1.stat().st_atime_ns, p1.stat().st_mtime_ns + 10**9))
    code, stdout, err = jx(d, "--out", out)
    assert code == 0 and "1 explained, 1 skipped" in err, err
    assert "changed" in stdout and str(p1) in stdout
    latest = {r["input"]: r for r in lines(out)}  # a later line wins
    assert latest[str(p1)]["size"] == [52, 36]
    store = zarr.open_array(str(out / "gradient" / "attributions.zarr"))[:]
    want = reference(synthetic, p1, "gradient")
    np.testing.assert_allclose(store[latest[str(p1)]["row"]], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    from jaxplain.runs import report

    assert report.read_results(out / "results.jsonl")[(os.path.realpath(p1), "gradient")]["size"] == [52, 36]


def test_random_methods_key_on_the_method_and_the_picture(tmp_path, jx, synthetic):
    from jaxplain import baselines

    img = photo(tmp_path / "a.png", (30, 30), 4)
    out = tmp_path / "o"
    assert jx(img, "--out", out, "--method", "smoothgrad(samples=2)", "--seed", "5")[0] == 0
    key = baselines.per_image(baselines.named(5, "smoothgrad", {"samples": 2}), [baselines.path_id(os.path.realpath(img))])
    x = synthetic.preprocess(load_image(img, synthetic)[None])
    want = np.asarray(jaxplain.explain(synthetic, x, "predicted", "smoothgrad", samples=2, key=key))[0]
    got = zarr.open_array(str(out / "smoothgrad" / "attributions.zarr"))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_writers_run_at_the_run_priority(tmp_path, jx, monkeypatch):
    """Writers at nice 19 starve on a busy machine (a SIGTERM waited minutes for them): they run
    at the priority of the run."""
    from jaxplain import viz
    from jaxplain.runs import loop

    seen, real = [], viz.thumbnail
    monkeypatch.setattr(viz, "thumbnail", lambda *a, **k: seen.append(
        os.getpriority(os.PRIO_PROCESS, __import__("threading").get_native_id())) or real(*a, **k))
    d = tmp_path / "in"
    for i in range(3):
        photo(d / f"p{i}.png", (30, 30), i)
    assert jx(d, "--out", tmp_path / "o", "--batch-size", "1")[0] == 0
    assert seen and set(seen) == {os.getpriority(os.PRIO_PROCESS, 0)}


def test_a_target_is_not_claimed_for_a_method_that_ignores_it(tmp_path, jx):
    img = photo(tmp_path / "a.png", (30, 30))
    code, stdout, err = jx(img, "--out", tmp_path / "o", "--target", "3", "--method", "gradient", "--method", "eigen_cam")
    assert code == 0, err
    assert "explained class 3 with gradient" in stdout and "eigen_cam (which ignores the target)" in stdout, stdout
    assert {r["method"]: r["target"] for r in lines(tmp_path / "o")} == {"gradient": 3, "eigen_cam": None}


def test_a_complete_folder_with_unreadable_files_says_so(tmp_path, jx):
    d = tmp_path / "in"
    photo(d / "good.png", (30, 30))
    (d / "bad.png").write_text("not a picture")
    out = tmp_path / "o"
    for _ in range(2):
        code, _, err = jx(d, "--out", out, "--report")
        assert code == 4, err
        assert err.strip().splitlines()[-1].startswith("jaxplain: complete, 1 unreadable"), err
    assert "0 explained, 1 skipped" in err
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "bad.png" in page and "unreadable" in page


def test_report_refuses_to_replace_a_users_index_html_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.common, "load_model", lambda args: pytest.fail("the model was loaded"))
    img = photo(tmp_path / "a.png", (20, 20))
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<html>mine</html>")
    assert cli.main(["explain", str(img), "--out", str(out), "--model", "synthetic_vgg", "--report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index.html" in err
    assert (out / "index.html").read_text() == "<html>mine</html>"


SIGNAL_DURING = """
import os, signal, sys
from jaxplain import cli
from jaxplain.runs import loop
real, calls = loop.explain, []
def explain(*a, **k):  # a real SIGTERM, sent while the batch number {batch} is computed
    calls.append(1)
    if len(calls) == {batch}:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
loop.explain = explain
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("batch", [3, 2])
def test_a_signal_during_a_batch_keeps_that_batchs_results(tmp_path, batch):
    """The batch in flight is written whole, the last one included; only work not started is left."""
    d = tmp_path / "in"
    for i in range(6):
        photo(d / f"p{i}.png", (32, 32), i)
    out = tmp_path / "out"
    argv = ["explain", str(d), "--model", "synthetic_vgg", "--out", str(out), "--batch-size", "2",
            "--method", "integrated_gradients(steps=4)"]
    env = dict(os.environ, JAXPLAIN_HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", SIGNAL_DURING.format(batch=batch), *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert f"jaxplain: {2 * batch} explained, 0 skipped" in p.stderr, p.stderr
    assert sorted(Path(r["input"]).name for r in lines(out)) == [f"p{i}.png" for i in range(2 * batch)]
    rerun = run(*argv, home=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - 2 * batch} explained, {2 * batch} skipped" in rerun.stderr


def test_no_lock_or_folder_is_left_behind(tmp_path, jx):
    d = tmp_path / "photos"
    photo(d / "a.png", (30, 30))
    code, _, err = jx(d, "--out", d)  # refused: the only input is the output folder
    assert code == 1, err
    assert sorted(p.name for p in d.iterdir()) == ["a.png"]  # the user's folder as it was
    empty = tmp_path / "empty"
    empty.mkdir()
    assert jx(empty, "--out", tmp_path / "o5")[0] == 1  # nothing to explain
    assert not (tmp_path / "o5").exists()
    assert jx(d, "--out", tmp_path / "o6", "--target", "99999")[0] == 2  # refused once the model is loaded
    assert not (tmp_path / "o6").exists()
    out = tmp_path / "o"
    assert jx(d, "--out", out)[0] == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".lock")]
    assert cli.main(["report", str(out)]) == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".lock")]


def test_results_that_ignore_the_target_neither_conflict_nor_are_redone(tmp_path, jx):
    img = photo(tmp_path / "a.png", (30, 30))
    out = tmp_path / "o"
    assert jx(img, "--out", out, "--method", "eigen_cam", "--target", "3")[0] == 0
    for extra in ([], ["--overwrite"]):
        code, _, err = jx(img, "--out", out, "--method", "eigen_cam", "--target", "2", *extra)
        assert code == 0 and "0 explained, 1 skipped" in err, err
    assert jx(img, "--out", out, "--method", "gradient", "--target", "2")[0] == 0
    code, _, err = jx(img, "--out", out, "--method", "gradient", "--method", "eigen_cam", "--target", "1")
    assert code == 2 and "target 2" in err, err  # gradient's results depend on it
    code, _, err = jx(img, "--out", out, "--method", "gradient", "--method", "eigen_cam", "--target", "1", "--overwrite")
    assert code == 0 and "1 explained, 0 skipped" in err, err
    assert sorted((r["method"], r["target"]) for r in lines(out)) == [("eigen_cam", None), ("gradient", 1)]


def test_progress_counts_unreadable_files_apart_from_images(tmp_path, jx):
    d = tmp_path / "in"
    photo(d / "a.png", (30, 30))
    for name in ("b.png", "c.png"):
        (d / name).write_text("not a picture")
    code, _, err = jx(d, "--out", tmp_path / "o")
    assert code == 4, err
    progress = [line for line in err.splitlines() if " images, " in line and "images/s" in line]
    assert progress and progress[-1].startswith("jaxplain: 1/1 images, "), err
    assert "0 failed, 2 unreadable" in progress[-1], err


def test_failed_jsonl_has_one_line_per_input_across_reruns(tmp_path, jx):
    d = tmp_path / "in"
    photo(d / "a.png", (30, 30))
    (d / "bad.png").write_text("not a picture")
    out = tmp_path / "o"
    for _ in range(3):
        assert jx(d, "--out", out)[0] == 4
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [Path(r["input"]).name for r in failed] == ["bad.png"]


def test_help_says_what_exit_1_and_report_mean():
    import argparse

    sub = {a.dest: a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)}["command"]
    explain = " ".join(sub.choices["explain"].format_help().split())
    assert "1 some work failed (a method or a write), or nothing was there to explain" in explain
    report = " ".join(sub.choices["report"].format_help().split())
    assert "Write a run's report" in report and "joining a multi-process run's parts first" in report, report
