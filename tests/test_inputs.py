"""INPUT arguments: files, folders, globs and @lists, each file once; distinct output names."""

from pathlib import Path

import numpy as np
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
