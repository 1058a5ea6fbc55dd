"""``jaxplain concepts`` on a tiny grayscale model of your own (``tests.user_models:tiny``)."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxplain import cli
from jaxplain.cli.common import user_function
from jaxplain.runs.concepts import crop_box
from tests.user_models import SIDE

SPEC = "tests.user_models:tiny"
SQUARES = [(0, 0), (8, 6), (3, 9), (10, 10), (5, 2)]  # top-left corners of a 6x6 white square, one per picture


def _pictures(folder, which):
    folder.mkdir(exist_ok=True)
    for i in which:
        a = np.zeros((SIDE, SIDE), np.uint8)
        r, c = SQUARES[i]
        a[r:r + 6, c:c + 6] = 255
        Image.fromarray(a).save(folder / f"p{i}.png")


def _concepts(*args):
    return cli.main(["concepts", *map(str, args), "--model", SPEC, "--layer", "conv", "--channels", "0,3,5",
                     "--top", "2", "--batch-size", "2"])


def test_concepts_finds_crops_and_resumes(tmp_path, capsys, quick_threefry):
    """Three pictures and an unreadable one, then all five (a rerun scores only the two new ones);
    the reference lists equal a run over all five at once. Activation scores are the channel's
    largest activation of the model run by the test; a picture's relevance lies on its white square
    only (black pixels are 0 and conv relevance is z+ of the pixels), so every crop is the picture
    cut inside the square's box padded by 2 pixels (10% of 16), and holds part of the square, but
    where the channel's map is all zero (a channel active only on black pixels): the whole picture."""
    pics, out, once = tmp_path / "pics", tmp_path / "out", tmp_path / "once"
    _pictures(pics, [0, 1, 2])
    (pics / "broken.png").write_bytes(b"not a picture")
    assert _concepts(pics, "--out", out) == 4  # done, one unreadable
    assert "failed" in capsys.readouterr().err
    first = (out / "concepts.jsonl").read_text().splitlines()
    assert len(first) == 3 * 2 * 2  # channels x kinds x top
    (pics / "broken.png").unlink()
    _pictures(pics, [3, 4])
    assert _concepts(pics, "--out", out, "--report") == 0
    assert "2 scored, 3 skipped" in capsys.readouterr().err
    assert _concepts(pics, "--out", once) == 0
    capsys.readouterr()

    lines = [json.loads(line) for line in (out / "concepts.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (once / "concepts.jsonl").read_text().splitlines()]
    assert [(e["channel"], e["kind"], e["rank"], e["input"].rsplit("/", 1)[1], e["box"]) for e in lines] == \
        [(e["channel"], e["kind"], e["rank"], e["input"].rsplit("/", 1)[1], e["box"]) for e in again]
    np.testing.assert_allclose([e["score"] for e in lines], [e["score"] for e in again], rtol=1e-6)

    model = user_function(SPEC)()
    localised = 0
    for e in lines:
        i = int(e["input"].rsplit("/p", 1)[1][0])
        picture = np.asarray(Image.open(e["input"]))
        acts = np.asarray(model.apply(model.params, model.preprocess(picture[None, :, :, None])[0])[1]["conv"]
                          [..., e["channel"]])
        if e["kind"] == "activation":
            assert e["score"] == pytest.approx(float(acts.max()), rel=1e-5)
        top, left, bottom, right = e["box"]
        r, c = SQUARES[i]
        if e["box"] != [0, 0, SIDE, SIDE]:  # the whole picture: the fallback of a channel whose map is all zero
            localised += 1
            assert max(r - 2, 0) <= top < r + 6 and max(c - 2, 0) <= left < c + 6
            assert r <= bottom <= min(r + 8, SIDE) and c <= right <= min(c + 8, SIDE)
        crop = np.asarray(Image.open(out / e["crop"]))
        np.testing.assert_array_equal(crop, np.repeat(picture[top:bottom, left:right, None], 3, -1))
    assert localised >= len(lines) // 2
    assert crop_box(np.zeros((SIDE, SIDE))) == (0, 0, SIDE, SIDE)
    for kind in ("relevance", "activation"):
        for channel in (0, 3, 5):
            scores = [e["score"] for e in lines if e["kind"] == kind and e["channel"] == channel]
            assert scores == sorted(scores, reverse=True)
    page = (out / "index.html").read_text()
    assert page.count("<img ") == len(lines) and "channel_0003/relevance_1.png" in page


@pytest.mark.parametrize(("args", "message"), [
    (["--layer", "conv", "--channels", "0,a"], "argument --channels: takes channel indices"),
    (["--layer", "conv", "--composite", "zplus_everywhere"], "argument --composite: invalid choice"),
    (["--layer", "conv", "--top", "0"], "argument --top: must be at least 1"),
    (["--layer", "nope"], "unknown layer 'nope'; tiny-gray's layers: conv"),
    (["--layer", "conv", "--channels", "2,8"], "--channels 8 out of range: layer 'conv' has 8 channels"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, quick_threefry, args, message):
    """Bad flags fail before the model loads, a layer or channel the model lacks after it loads but
    before any picture: one line, exit 2, nothing left in --out."""
    _pictures(tmp_path / "pics", [0])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        raise SystemExit(cli.main(["concepts", str(tmp_path / "pics"), "--model", SPEC, "--out", str(out), *args]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
