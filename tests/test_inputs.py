"""INPUT arguments: files, folders, globs and @lists, each file once; distinct output names."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxplain.runs import inputs


def photo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return path


def test_lists_globs_and_problems(tmp_path):
    d = tmp_path / "d"
    a, b, c = photo(d / "a.png"), photo(d / "x" / "b.jpg"), photo(d / "x" / "c.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my pictures\n{a}\n\n{c}\n{a}\n")
    found = inputs.expand([f"@{listing}", str(d / "**" / "*.jpg"), str(d / "*.nothing"), f"@{tmp_path / 'none.txt'}"])
    assert found.files == [a, c, b]  # in argument order, each once
    assert [p.argument for p in found.problems] == [str(d / "*.nothing"), f"@{tmp_path / 'none.txt'}"]
    assert "no file matches" in found.problems[0].message and "cannot read the list" in found.problems[1].message
    assert inputs.output_names(found.files) == ["a", "x/c", "x/b"]


def test_folders_recursive_sorted_images_only(tmp_path):
    d = tmp_path / "d"
    files = [photo(d / "b.PNG"), photo(d / "a" / "z.jpeg"), photo(d / "a" / "y.JPG")]
    (d / "notes.txt").write_text("no picture")
    (tmp_path / "empty").mkdir()
    found = inputs.expand([str(d), str(tmp_path / "empty"), str(tmp_path / "missing.png")])
    assert found.files == sorted(files)
    assert [(p.argument, p.message.split(" (")[0]) for p in found.problems] == [
        (str(tmp_path / "empty"), "a folder with no image files"), (str(tmp_path / "missing.png"), "no such file or folder")]


def test_the_output_folder_is_never_an_input(tmp_path):
    """``jaxplain explain . --out out/``: the overlays of an earlier run are not explained again."""
    a = photo(tmp_path / "a.png")
    photo(tmp_path / "out" / "gradient" / "a.png")
    assert inputs.expand([str(tmp_path)], exclude=tmp_path / "out").files == [a]
    assert len(inputs.expand([str(tmp_path)]).files) == 2


def test_output_names_never_collide(tmp_path):
    files = [Path("/x/cat.jpg"), Path("/x/cat.png"), Path("/x/a.b.png"), Path("/x/a.b"), Path("/x/a.png"),
             Path("/x/y/c.jpg"), Path("/x/c.jpg"), Path("/x/dog.jpg")]
    names = inputs.output_names(files)
    assert names == ["cat.jpg", "cat.png", "a.b.png", "a.b", "a.png", "y/c", "c", "dog"]
    assert len(set(names)) == len(names)
    assert inputs.output_names([Path("/p/q/one.png")]) == ["one"]


def test_an_input_inside_the_output_folder_is_a_problem_that_says_why(tmp_path):
    """``jaxplain explain photos --out photos``: every file lies in the output folder; the argument
    names nothing left to explain, and the problem says so (not a silent empty run)."""
    d = tmp_path / "photos"
    photo(d / "a.png"), photo(d / "b.png")
    found = inputs.expand([str(d)], exclude=d)
    assert found.files == []
    assert [p.argument for p in found.problems] == [str(d)]
    assert f"its 2 image files are inside the output folder {d}" in found.problems[0].message
    one = inputs.expand([str(d / "a.png")], exclude=d)  # a file named inside it
    assert "its image file is inside the output folder" in one.problems[0].message
    # Only part of an argument inside: the rest explained, no problem (an earlier run's results).
    photo(tmp_path / "c.png")
    assert inputs.expand([str(tmp_path)], exclude=d) == ([tmp_path / "c.png"], [])


def test_an_unreadable_subfolder_is_a_problem(tmp_path, monkeypatch):
    """A subfolder that cannot be listed (permissions; simulated, as root reads everything) is
    reported with its name, and the readable files still come."""
    d = tmp_path / "d"
    a = photo(d / "a.png")
    photo(d / "locked" / "b.png")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = inputs.expand([str(d)])
    assert found.files == [a]
    assert [p.argument for p in found.problems] == [str(d)]
    assert found.problems[0].message == (f"cannot read the folder {d / 'locked'} (Permission denied): its images "
                                         "were left out")


def test_explain_into_its_own_input_folder_says_so_and_fails(tmp_path, capsys, monkeypatch):
    """The command line, as a user types it: ``explain photos --out photos`` and ``explain . --out .``
    name the excluded files and exit 1 (no model is loaded: there is nothing to explain)."""
    from jaxplain import cli

    d = tmp_path / "photos"
    photo(d / "a.png"), photo(d / "b.png")
    assert cli.main(["explain", str(d), "--out", str(d), "--model", "synthetic_vgg"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"jaxplain: failed {d}: its 2 image files are inside the output folder {d}, whose files a run "
                      "never reads (they could be its own results): nothing left to explain; write the results "
                      "elsewhere (--out)")
    assert err[-1] == "jaxplain: nothing to explain, 1 input refused (above): 0 explained, 0 skipped (already complete), 0 failed"
    monkeypatch.chdir(d)
    assert cli.main(["explain", ".", "--out", ".", "--model", "synthetic_vgg"]) == 1
    assert "failed .: its 2 image files are inside the output folder ." in capsys.readouterr().err


# ---------------------------------------------------------------- images handed to the API (engine.shapes.check_images)


def test_pixel_values_for_a_normalising_model_are_warned(tiny_model, recwarn):
    """0-255 floats into a model whose preprocess normalises (torchvision's: pixels 0..255 become
    [-2.118, 2.640]): explain, evaluate and predict warn; the same pictures preprocessed do not,
    nor does anything for a model without a preprocess."""
    import warnings

    import jaxplain

    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    raw = pixels.astype(np.float32)
    lo, hi = -0.485 / 0.229, (1 - 0.406) / 0.225  # torchvision's normalisation of 0 and 255
    message = (rf"images range over \[{raw.min():.4g}, {raw.max():.4g}\], far outside \[{lo:.4g}, {hi:.4g}\], "
               r"what .*'s preprocess makes of pixels 0..255: pass model.preprocess\(pixels\) \(uint8 \[B, H, W, C\]\)")
    with pytest.warns(jaxplain.InputWarning, match=message):
        jaxplain.predict(tiny_model, raw)
    with pytest.warns(jaxplain.InputWarning, match=message):
        jaxplain.explain(tiny_model, raw, 0, "gradient")
    with pytest.warns(jaxplain.InputWarning, match=message):
        jaxplain.evaluate(tiny_model, raw, 0, np.ones((2, 32, 32, 3), np.float32), "deletion(steps=4)")
    recwarn.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxplain.InputWarning)
        x = tiny_model.preprocess(pixels)
        jaxplain.predict(tiny_model, x)
        jaxplain.explain(tiny_model, x, 0, "gradient")
        jaxplain.predict(tiny_model, x * 4)  # beyond the range, not far beyond it
        jaxplain.predict(tiny_model, np.random.default_rng(1).normal(0, 3, raw.shape).astype(np.float32))
        jaxplain.predict(tiny_model.replace(preprocess=None), raw)
