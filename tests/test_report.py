"""The HTML report (jaxplain.runs.report): a fake run folder written here, the pages parsed with html.parser
(every relative link resolves, rows per page, method order, escaping), then opened in headless Chromium
(a screenshot, and the number of heat-map images that loaded, read from the DOM after load)."""

import html.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from jaxplain import InputError, viz
from jaxplain.runs import report

METHODS = ["saliency", "grad_cam"]  # run.json's order, deliberately not alphabetical
ODD = "odd name #1 50% ?<b>&'\"é.png"  # spaces, '#', '%', '?', '<', quotes, non-ASCII
MISSING = (7, "grad_cam")  # the one (image, method) without a result
THUMB = (40, 30)  # heat-map thumbnails' (width, height)
SHOWN = (120, 90)  # shown 3x in whole pixels: a picture under 96 pixels is enlarged to at least 96


def _ramp(name: str) -> np.ndarray:
    """A stand-in colour table (independent of which names viz knows): red 0..255, blue 255..0."""
    t = np.arange(256)
    return np.stack([t, np.full(256, 100 if name == "RdBu_r" else 0), 255 - t], -1).astype(np.uint8)


def _picture(path: pathlib.Path, size: tuple[int, int], seed: int, fmt: str | None = None) -> None:
    """A colourful picture (w, h) at ``path``."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, seed * 37 % 256)], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path, fmt)


def _make_run(root: pathlib.Path, n: int) -> tuple[pathlib.Path, list[str]]:
    """A run folder ``root/out`` over ``n`` pictures kept outside it in ``root/data``; returns
    ``(out, inputs)`` with inputs as results.jsonl names them (relative to out)."""
    out, data = root / "out", root / "data"
    names = [f"photos/img_{i:03d}.jpg" for i in range(n - 1)] + [f"photos/{ODD}"]
    run = {"version": 1, "model": {"name": "vgg16", "weights": "keras"},
           "methods": [{"label": "saliency", "name": "gradient", "settings": {}},
                       {"label": "grad_cam", "name": "grad_cam", "settings": {"layer": "block5_conv3"}}],
           "target": "predicted", "dtype": "float16", "reduce": "abs_max",
           "colormaps": {"unsigned": "inferno", "signed": "RdBu_r"}}
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps(run))
    lines, inputs = [], []
    for i, name in enumerate(names):
        stem = name.rsplit(".", 1)[0]
        _picture(data / name, (64, 48), i, "PNG" if name.endswith(".png") else "JPEG")
        _picture(out / "thumbs" / "pictures" / f"{stem}.jpg", (32, 24), i)
        inputs.append(f"../data/{name}")
        for m, label in enumerate(METHODS):
            if (i, label) == MISSING:
                continue
            _picture(out / label / f"{stem}.png", (64, 48), i + m)
            _picture(out / "thumbs" / label / f"{stem}.jpg", THUMB, i + 5 * m)
            result = {"input": inputs[-1], "method": label, "name": label, "settings": {}, "target": i % 10,
                      "top5": [{"class": (i + k) % 10, "name": f"class <{(i + k) % 10}> & co", "p": 0.5 / (k + 1)}
                               for k in range(5)],
                      "size": [48, 64], "overlay": f"{label}/{stem}.png", "thumb": f"thumbs/{label}/{stem}.jpg",
                      "picture": f"thumbs/pictures/{stem}.jpg", "store": f"{label}/attributions.zarr", "row": i,
                      "signed": m == 1, "seconds": 0.1, "process": 0}
            if i == 3 and m == 0:  # an earlier line for the same pair, superseded by the next one
                lines.append(json.dumps({**result, "thumb": "thumbs/nowhere.jpg"}))
            lines.append(json.dumps(result))
    lines.append(lines[0][: len(lines[0]) // 2])  # a run killed mid-write
    (out / "results.jsonl").write_text("\n".join(lines), encoding="utf-8")
    return out, inputs


class _Page(html.parser.HTMLParser):
    """Links, table rows and cells, header cells and heat-map images of one page."""

    def __init__(self):
        super().__init__()
        self.links, self.rows, self.th, self.heat, self.bars = [], [], [], [], []
        self._in_body = self._in_th = False
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("src", "href") if k in a]
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = {"class": a.get("class"), "text": "", "imgs": []}
            self.rows[-1].append(self._cell)
        elif tag == "th":
            self._in_th = True
            self.th.append("")
        elif tag == "img" and self._cell is not None:
            self._cell["imgs"].append(a)
            if a.get("class") == "heat":
                self.heat.append(a)
        elif tag == "div" and a.get("class") == "bar":
            self.bars.append(a["style"])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td":
            self._cell = None
        elif tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_th:
            self.th[-1] += data


def _parse(path: pathlib.Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _target(page: pathlib.Path, url: str) -> pathlib.Path:
    """The file a relative URL on ``page`` points at (asserting it is relative and percent-encoded)."""
    parts = urllib.parse.urlsplit(url)
    assert not parts.scheme and not parts.netloc and not url.startswith("/"), url
    assert not parts.query and not parts.fragment, url  # '?' and '#' in names must be encoded
    return pathlib.Path(os.path.normpath(page.parent / urllib.parse.unquote(url)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run over 120 pictures x 2 methods, reported with page_size=50 (3 pages)."""
    root = tmp_path_factory.mktemp("report")
    out, inputs = _make_run(root, 120)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(viz, "colormap", _ramp)
        index = report.write(out, page_size=50)
    return out, inputs, index


def test_pages_rows_and_order(run):
    out, inputs, index = run
    assert index == out / "index.html"
    pages = [index, out / "report" / "page-0002.html", out / "report" / "page-0003.html"]
    assert sorted((out / "report").iterdir()) == pages[1:]
    parsed = [_parse(p) for p in pages]
    assert [len(p.rows) for p in parsed] == [50, 50, 20]
    expected = sorted(inputs)
    for k, p in enumerate(parsed):
        assert p.th == ["picture", "top-5", *METHODS]
        for r, row in enumerate(p.rows):
            name = expected[50 * k + r]
            i = inputs.index(name)
            assert len(row) == 2 + len(METHODS)
            assert row[0]["text"] == name  # escaped in the source, the same text once parsed
            stem = name.removeprefix("../data/").rsplit(".", 1)[0]
            for label, cell in zip(METHODS, row[2:]):
                if (i, label) == MISSING:
                    assert cell["class"] == "missing" and cell["imgs"] == [] and cell["text"].strip() == "\u2014"
                    continue
                (img,) = cell["imgs"]
                assert img["class"] == "heat" and (img["width"], img["height"]) == tuple(map(str, SHOWN))
                assert _target(pages[k], img["src"]) == out / "thumbs" / label / f"{stem}.jpg"
            top = row[1]["text"]
            assert f"class <{i % 10}> & co 50.0%" in top and "explained" in top  # target = the first class
        assert len(p.heat) == sum(len(c["imgs"]) for row in p.rows for c in row[2:])
    assert sum(len(p.heat) for p in parsed) == 2 * 120 - 1


def test_every_link_resolves_and_names_are_escaped(run):
    out, inputs, index = run
    for page in [index, *sorted((out / "report").iterdir())]:
        source = page.read_text(encoding="utf-8")
        assert "<b>&" not in source and "class <" not in source  # the odd name and class names are escaped
        links = _parse(page).links
        assert links
        for url in links:
            assert _target(page, url).is_file(), (page.name, url)
    odd = f"../data/photos/{ODD}"
    assert odd in inputs
    where = [p for p in [index, *sorted((out / "report").iterdir())] if urllib.parse.quote(ODD, safe="") in p.read_text()]
    assert len(where) == 1  # the odd picture is linked (percent-encoded) from one page


def test_header_navigation_and_colour_bars(run):
    out, _, index = run
    page2 = _parse(out / "report" / "page-0002.html")
    nav = [u for u in page2.links if u.endswith(".html")]
    assert nav[:4] == ["../index.html", "../index.html", "page-0003.html", "page-0003.html"]  # previous, 1, 3, next
    text = index.read_text(encoding="utf-8")
    for words in ["vgg16", "120 images", "grad_cam", "layer=&quot;block5_conv3&quot;", "inferno", "RdBu_r",
                  "0", "max |attribution|", "\u2212max", "+max", "scaled on its own"]:
        assert words in text, words
    bars = _parse(index).bars
    assert len(bars) == 2
    assert "#0000ff" in bars[0] and "#ff0000" in bars[0]  # the ramp's ends, via viz.colormap
    assert "#0064ff" in bars[1] and "#ff6400" in bars[1]


def test_small_runs_bad_input_and_stale_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(viz, "colormap", _ramp)
    out, _ = _make_run(tmp_path, 9)
    report.write(out, page_size=3)
    assert len(list((out / "report").iterdir())) == 2
    report.write(out, page_size=5)  # now 2 pages: page-0003 of the earlier report goes
    assert [p.name for p in (out / "report").iterdir()] == ["page-0002.html"]
    report.write(out)
    assert not list((out / "report").iterdir())
    with pytest.raises(InputError, match="page_size"):
        report.write(out, page_size=0)
    lines = (out / "results.jsonl").read_text().splitlines()
    whole = report.read_results(out / "results.jsonl")
    (out / "results.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]))
    assert report.read_results(out / "results.jsonl") == whole  # one policy: a bad line is skipped
    (out / "results.jsonl").unlink()  # no result yet: an empty report
    assert "0 images" in report.write(out).read_text(encoding="utf-8")
    with pytest.raises(InputError, match="run.json does not exist"):
        report.write(tmp_path / "elsewhere")


def _chromium() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if found is None:
        pytest.skip("no headless browser: install Debian's chromium (apt-get install chromium) to open the report")
    return found


def _browse(tmp_path: pathlib.Path, url_file: pathlib.Path, *args: str) -> str:
    browser = _chromium()
    profile = tmp_path / "profile"
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
           "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args, url_file.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_screenshot(run, tmp_path):
    _, _, index = run
    shot = tmp_path / "index.png"
    _browse(tmp_path, index, f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars")
    with Image.open(shot) as im:
        assert im.size == (1400, 2000)
        colours = len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0))
    assert colours > 1000, colours  # pictures and heat maps drawn, not a blank or text-only page


COUNTER = """<pre id="loaded">not run</pre><script>
window.addEventListener("load", () => {
  const heat = Array.from(document.querySelectorAll("img.heat"));
  const ok = heat.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.getElementById("loaded").textContent = "loaded " + ok + " of " + heat.length;
});
</script>"""


@pytest.mark.parametrize("page", ["index.html", "report/page-0003.html"])
def test_chromium_loads_every_heat_map(run, tmp_path, page):
    out, _, _ = run
    page = out / page
    expected = len(_parse(page).heat)
    probe = page.with_name(f"probe-{tmp_path.name}.html")  # same folder: the same relative links
    broken = '<img class="heat" src="no-such-thumb.jpg" width="40" height="30" alt="broken on purpose">'
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", f"{broken}{COUNTER}</body>"),
                     encoding="utf-8")
    try:
        dom = _browse(tmp_path, probe, "--dump-dom", "--virtual-time-budget=10000")
    finally:
        probe.unlink()
    assert f"loaded {expected} of {expected + 1}" in dom, dom[-500:]  # the broken tag counted, not loaded


def test_a_bad_line_anywhere_is_skipped_as_the_run_skips_it(tmp_path):
    from jaxplain.runs import outputs

    path = tmp_path / "results.jsonl"
    good = [{"input": "a.png", "method": "gradient", "thumb": "t"}, {"input": "b.png", "method": "gradient", "thumb": "u"}]
    path.write_text(json.dumps(good[0]) + "\n{broken\n" + json.dumps(good[1]) + "\n")
    assert [r["input"] for r in report.read_results(path).values()] == [r["input"] for r in outputs.read_lines(path)]


def test_a_users_own_index_html_is_not_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(viz, "colormap", _ramp)
    out, _ = _make_run(tmp_path, 3)
    (out / "index.html").write_text("<html>my own page</html>")
    with pytest.raises(InputError, match="index.html"):
        report.write(out)
    assert (out / "index.html").read_text() == "<html>my own page</html>"
    (out / "index.html").unlink()
    old = os.umask(0o022)
    try:
        report.write(out)
        report.write(out)  # over a report of ours: fine
    finally:
        os.umask(old)
    assert (out / "index.html").stat().st_mode & 0o777 == 0o644


def test_an_unreadable_input_is_named_once_in_the_report(tmp_path, monkeypatch, capsys):
    from jaxplain import cli

    monkeypatch.setenv("JAXPLAIN_COMPILE_CACHE", "0")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rp").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "rp" / "good.png")
    (tmp_path / "rp" / "bad.png").write_text("not a picture")
    assert cli.main(["explain", "rp", "--out", "o", "--model", "synthetic_vgg", "--report"]) == 4
    page = (tmp_path / "o" / "index.html").read_text(encoding="utf-8")
    item = re.search(r'<section class="unreadable">.*?<li>(.*?)</li>', page, re.S).group(1)
    assert item.startswith(f"{os.path.realpath(tmp_path / 'rp' / 'bad.png')}: not a readable image"), item
    assert item.count("bad.png") == 1, item
