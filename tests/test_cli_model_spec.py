"""Your own model on the command line: ``--model package.module:function`` with ``--model-arg
KEY=VALUE`` for explain (its folder run, resume and report), evaluate, predict and bench; every bad
spec or argument is one line before anything runs."""

import contextlib
import io
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zarr
from PIL import Image

import jaxplain.bench
from jaxplain import cli
from jaxplain.cli.common import model_arg, parse_value
from jaxplain.io import load_image
from tests import user_models

SPEC = "tests.user_models:tiny"


def run_here(*args, home):
    """``jaxplain ARGS`` in this process: its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("JAXPLAIN_HOME", str(home))
        mp.setattr(sys, "path", list(sys.path))  # the command puts the current folder first; undone here
        try:
            code = cli.main(list(map(str, args)))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def grayscale_pngs(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20 + i, 24), dtype=np.uint8), "L").save(folder / f"g{i}.png")
    return sorted(folder.iterdir())


def test_your_model_through_explain_resume_report_evaluate_predict_and_bench(tmp_path):
    """One tiny grayscale network of tests/user_models.py built with width=4 by the command: the
    stored gradients are JAX's gradient of that hand-written network (not of the width-8 default),
    the rerun redoes nothing, other --model-arg values are refused, and evaluate, predict and
    bench run the same model."""
    files = grayscale_pngs(tmp_path / "pics")
    home, out = tmp_path / "home", tmp_path / "out"
    explain = ("explain", tmp_path / "pics", "--model", SPEC, "--model-arg", "width=4", "--method", "gradient",
               "--out", out, "--report")
    r = run_here(*explain, home=home)
    assert r.returncode == 0, r.stderr
    assert "tests.user_models:tiny" not in r.stdout  # the model's own name in what it prints
    assert json.loads((out / "run.json").read_text())["model"] == {"name": SPEC, "args": {"width": 4}}
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((l["input"], l["method"]) for l in lines) == sorted((str(f), "gradient") for f in files)
    html = (out / "index.html").read_text()
    assert SPEC in html and "width" in html and all(f"g{i}.png" in html for i in range(3))

    # the reference: jax.grad of the hand-written network built with width=4, at the predicted class
    params = user_models.tiny_params(4, 1, 4, 0)
    x = user_models.gray(np.stack([load_image(f, user_models.tiny()) for f in files]))
    logits = np.stack([user_models.tiny_apply(params, v)[0] for v in x])
    grads = np.stack([jax.grad(lambda v, c=c: user_models.tiny_apply(params, v)[0][c])(jnp.asarray(v))
                      for v, c in zip(x, logits.argmax(-1))])
    stored = zarr.open(str(out / "gradient" / "attributions.zarr"), mode="r")[:]
    rows = {l["input"]: l["row"] for l in lines if l["method"] == "gradient"}
    got = stored[[rows[str(f)] for f in files]]
    assert got.shape == (3, 16, 16, 1)
    np.testing.assert_allclose(got, grads, rtol=1e-5, atol=1e-6 * np.abs(grads).max())
    assert [l["top5"][0]["class"] for l in sorted(lines, key=lambda l: l["input"])] == list(logits.argmax(-1))
    default = user_models.tiny_params(8, 1, 4, 0)  # not the default width's gradient
    g8 = jax.grad(lambda v: user_models.tiny_apply(default, v)[0][0])(jnp.asarray(x[0]))
    assert np.abs(np.asarray(g8) - got[0]).max() > 1e-3

    before = (out / "results.jsonl").read_text()
    r = run_here(*explain, home=home)  # the resume: nothing to redo
    assert r.returncode == 0 and r.stderr.splitlines()[-1] == "jaxplain: 0 explained, 3 skipped (already complete), 0 failed"
    r = run_here(*[a if a != "width=4" else "width=5" for a in explain], home=home)  # other values: refused, nothing mixed in
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "holds results made with other settings: model" in r.stderr and "'width': 5" in r.stderr
    assert (out / "results.jsonl").read_text() == before

    scores = tmp_path / "scores.json"
    evaluate = ("evaluate", *files, "--model", SPEC, "--model-arg", "width=4", "--methods", "gradient",
                "--metrics", "deletion(steps=4)", "--json", scores)
    r = run_here(*evaluate, home=home)
    assert r.returncode == 0, r.stderr
    result = json.loads(scores.read_text())
    assert result["config"]["model"] == SPEC and result["config"]["model_args"] == {"width": 4}
    assert result["model"] == "tiny-gray" and len(result["cells"][0]["scores"]) == 3
    r = run_here(*[a if a != "width=4" else "width=3" for a in evaluate], home=home)
    assert r.returncode == 2 and "(--model-arg {'width': 4} there, {'width': 3} here)" in r.stderr, r.stderr

    r = run_here("predict", files[0], "--model", SPEC, "--model-arg", "width=4", "--top", "2", home=home)
    assert r.returncode == 0, r.stderr
    p = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    want = np.argsort(-p)[:2]
    printed = r.stdout.splitlines()
    assert printed[0] == str(files[0]) and [l.split()[1] for l in printed[1:]] == [str(c) for c in want]
    np.testing.assert_allclose([float(l.split()[-1]) for l in printed[1:]], p[want], atol=5e-5)

    timed = []  # bench: the same model reaches the timing loop (not run here: its matmul probe takes seconds)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jaxplain.bench, "run", lambda model, *a, **k: timed.append(model) or [{}])
        r = run_here("bench", "--model", SPEC, "--model-arg", "width=4", "--methods", "gradient", home=home)
    assert r.returncode == 0 and timed[0].name == "tiny-gray", r.stderr
    assert timed[0].params["kernel"].shape == (3, 3, 1, 4)
    r = run_here("bench", "--model", SPEC, "--size", "32", home=home)
    assert r.returncode == 2 and "--size goes with a zoo model" in r.stderr



def any_size():
    """``tiny`` stating no input size (its convolution and mean pool take any)."""
    return user_models.tiny().replace(input_size=None)


def test_evaluate_reads_a_folder_and_a_model_of_any_size_says_what_size_it_runs_at(tmp_path):
    """Found by trying a model of one's own: ``evaluate FOLDER`` reads the folder's pictures (sorted)
    as ``explain`` and ``predict`` do; a model without ``input_size`` says, in one line, that the
    pictures are resized to 224x224 (a LeNet trained at 28x28 otherwise silently misclassifies);
    ``predict`` and ``evaluate`` say once, as ``explain`` does, that colour pictures are converted
    for a grayscale model."""
    files = grayscale_pngs(tmp_path / "pics")
    scores = tmp_path / "scores.json"
    r = run_here("evaluate", tmp_path / "pics", "--model", SPEC, "--methods", "gradient", "--metrics",
                 "deletion(steps=2)", "--json", scores, home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    result = json.loads(scores.read_text())
    assert result["config"]["images"] == [str(f.resolve()) for f in files] and len(result["cells"][0]["scores"]) == 3
    assert "takes any size" not in r.stderr  # tiny has its input_size
    r = run_here("predict", files[0], "--model", "tests.test_cli_model_spec:any_size", "--top", "1", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ("jaxplain: tiny-gray takes any size (input_size None): pictures are resized to 224x224; "
                                "build it with input_size=(H, W) to run it at the size it was trained for")
    colour = [tmp_path / f"c{i}.png" for i in range(2)]  # a grayscale model's colour pictures: one line says so
    for i, f in enumerate(colour):
        Image.fromarray(np.full((16, 16, 3), (200, 30 * i, 10), np.uint8)).save(f)
    for command in (("predict", *colour), ("evaluate", *colour, "--methods", "gradient", "--metrics", "deletion(steps=2)",
                                            "--json", tmp_path / "colour.json")):
        r = run_here(*command, "--model", SPEC, home=tmp_path / "home")
        assert r.returncode == 0, r.stderr
        assert [l for l in r.stderr.splitlines() if "converted" in l] == [
            f"jaxplain: tiny-gray takes grayscale pictures (1 channel): colour ones such as {colour[0]} are converted "
            "to grayscale (luma)"]


BAD = [
    (["--model", "no_such_module_xyz:build"],
     r"--model no_such_module_xyz:build: cannot import no_such_module_xyz \(ModuleNotFoundError: No module named 'no_such_module_xyz'\)"),
    (["--model", "tests.user_models:nope"], r"--model tests.user_models:nope: tests.user_models has no attribute 'nope'"),
    (["--model", "tests.user_models:tiny.deeper"], r"tests.user_models.tiny has no attribute 'deeper'"),
    (["--model", "tests.user_models:NOT_CALLABLE"], r"tests.user_models.NOT_CALLABLE is not callable \(it is int 3\)"),
    (["--model", "tests.user_models:raises", "--model-arg", "width=3"],
     r"--model tests.user_models:raises: raises\(width=3\) raised ValueError: no weights for width 3"),
    (["--model", "tests.user_models:not_a_model"], r"not_a_model\(\) returned a dict, not a jaxplain.Model"),
    (["--model", SPEC, "--model-arg", "depth=2"], r"tiny\(depth=2\) raised TypeError: .*unexpected keyword argument 'depth'"),
    (["--model", "tests.user_models:raises", "--model-arg", "width"],
     r"argument --model-arg: expected KEY=VALUE with KEY a Python name, got 'width'"),
    (["--model", "tests.user_models:raises", "--model-arg", "=4"], r"argument --model-arg: expected KEY=VALUE"),
    (["--model", "tests.user_models:raises", "--model-arg", "width=1", "--model-arg", "width=2"],
     r"--model-arg width is given twice"),
    (["--model", "tests.user_models:raises", "--weights", "random"],
     r"--weights goes with a zoo model; give your function its own as --model-arg KEY=VALUE"),
    (["--model", "tests.user_models:raises", "--source", "keras"], r"--source goes with a zoo model"),
    (["--model", "vgg16", "--model-arg", "width=4"], r"--model-arg goes with --model package.module:function"),
    (["--model", "tests/user_models.py:tiny"], r"argument --model: 'tests/user_models.py:tiny' is not package.module:function"),
    (["--model", "vgg99"], r"argument --model: unknown model 'vgg99': the zoo has vgg11, .*; your own is package.module:function"),
]


@pytest.mark.parametrize("command", ["explain", "evaluate", "predict"])
@pytest.mark.parametrize("args,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_model_spec_is_one_line_before_anything_runs(tmp_path, command, args, message):
    """Each bad spec or --model-arg: exit 2, one line, nothing written (a pure argument error
    names ``raises``, whose call would have said something else)."""
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20), np.uint8), "L").save(img)
    out = tmp_path / ("scores.json" if command == "evaluate" else "out")
    where = {"explain": ["--out", out], "evaluate": ["--json", out], "predict": []}[command]
    r = run_here(command, img, *args, *where, home=tmp_path / "home")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("jaxplain: error:"), r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "" and not out.exists()


def test_a_module_in_the_current_folder_and_one_that_fails_to_import(tmp_path, monkeypatch):
    """The module is found from the current folder (as ``python -m`` finds it); one that raises
    ImportError while importing is named with the ImportError's message."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_net_cli_test.py").write_text("from tests.user_models import tiny as build\n")
    (tmp_path / "broken_net_cli_test.py").write_text("import not_installed_pkg_xyz\n")
    for name in ("my_net_cli_test", "broken_net_cli_test"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    img = grayscale_pngs(tmp_path / "pics", 1)[0]
    r = run_here("predict", img, "--model", "my_net_cli_test:build", "--model-arg", "width=4", "--top", "1",
                 home=tmp_path / "home")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == str(img), r.stderr
    r = run_here("predict", img, "--model", "broken_net_cli_test:build", home=tmp_path / "home")
    assert r.returncode == 2 and r.stderr == ("jaxplain: error: --model broken_net_cli_test:build: cannot import "
                                              "broken_net_cli_test (ModuleNotFoundError: No module named "
                                              "'not_installed_pkg_xyz')\n")
    for name in ("my_net_cli_test", "broken_net_cli_test"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("text,value", [
    ("4", 4), ("-2", -2), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True), ("False", False), ("None", None),
    ("null", None), ("[16, 16]", [16, 16]), ('{"a": 1}', {"a": 1}), ('"4"', "4"), ("relu", "relu"),
    ("weights/net.npz", "weights/net.npz"), ("007", "007"), ("NaN", "NaN"), ("", ""), ("a=b", "a=b"),
])
def test_model_arg_values(text, value):
    """The documented rule: JSON where it is JSON (no NaN), True/False/None, else the string."""
    got = parse_value(text)
    assert got == value and type(got) is type(value)
    assert model_arg(f"key={text}") == ("key", value)


def test_a_model_arg_naming_a_file_enters_the_record_by_size_and_time(tmp_path):
    """A value that names a file (weights) is recorded with its size and time, so a resume after
    the file changed is refused as other settings would be; values are recorded as JSON reads them back."""
    import argparse
    import os

    from jaxplain.cli.common import user_record

    weights = tmp_path / "net.npz"
    weights.write_bytes(b"1234")
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    args = argparse.Namespace(model=SPEC, model_arg=[("weights", str(weights)), ("shape", [16, 16]), ("name", "x")])
    first = user_record(args)
    assert first == {"name": SPEC, "args": {"weights": str(weights), "shape": [16, 16], "name": "x"},
                     "files": {"weights": {"path": str(weights.resolve()), "bytes": 4, "modified": 1_000_000_000}}}
    assert json.loads(json.dumps(first)) == first
    weights.write_bytes(b"12345")
    assert user_record(args) != first
