"""The HTML report of a data-set run: ``OUT/index.html`` and ``OUT/report/page-NNNN.html``.

Self-contained pages (inline CSS, no scripts, no external resources) that open from the file system:
every link is relative to the page's folder, every attribute value HTML-escaped and every URL
percent-encoded per path segment, so file names with spaces, ``#``, ``?``, ``%`` or non-ASCII work.
"""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
import urllib.parse
from typing import NamedTuple

from PIL import Image

from jaxplain import viz
from jaxplain.errors import InputError
from jaxplain.runs import outputs, record

MARK = "<title>jaxplain report"  # what tells a page of ours from a user's


class Row(NamedTuple):
    """One picture of the report: its input path and its results by method label."""

    input: str
    results: dict[str, dict]


def read_results(path: pathlib.Path) -> dict[tuple[str, str], dict]:
    """``results.jsonl`` -> ``{(path, method): result}``, read as the run reads it
    (``outputs.read_lines``: a line that does not parse is left out, a missing file has none); a
    line without ``input`` and ``method`` is no result; a later line for the same pair wins (a
    picture explained again after it changed)."""
    out = {}
    for result in outputs.read_lines(path):
        if {"input", "method"} <= result.keys():
            out[(result.get("path", result["input"]), result["method"])] = result
    return out


def is_ours(path: pathlib.Path) -> bool:
    """Whether the page at ``path`` is a report this module wrote (its title says so)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return MARK.encode() in head


def check_writable(out: pathlib.Path) -> None:
    """Refuse to write a report where ``out/index.html`` is a page of someone else's."""
    index = _page_path(out, 1)
    if index.exists() and not is_ours(index):
        raise InputError(f"{index} is not a jaxplain report: it is left as it is; move it away to write the report")


def _rows(results: dict[tuple[str, str], dict]) -> list[Row]:
    """Group results by input, sorted by input path."""
    grouped: dict[str, dict[str, dict]] = {}
    for (name, method), result in results.items():
        grouped.setdefault(name, {})[method] = result
    return [Row(name, grouped[name]) for name in sorted(grouped)]


def _href(target: pathlib.Path, folder: pathlib.Path) -> str:
    """A relative URL from a page in ``folder`` to the file ``target``, percent-encoded per segment."""
    try:
        rel = pathlib.PurePath(os.path.relpath(target, folder))
    except ValueError:  # another drive (Windows): no relative path exists
        return pathlib.Path(os.path.abspath(target)).as_uri()
    return "/".join(urllib.parse.quote(part, safe="") for part in rel.parts)


def _gradient(name: str, stops: int = 33) -> str:
    """A CSS ``linear-gradient`` of the colour map ``name`` (``stops`` evenly spaced colours)."""
    table = viz.colormap(name)
    index = [round(i * (len(table) - 1) / (stops - 1)) for i in range(stops)]
    colours = ", ".join("#%02x%02x%02x" % tuple(int(c) for c in table[i]) for i in index)
    return f"linear-gradient(to right, {colours})"


def _page_path(out: pathlib.Path, page: int) -> pathlib.Path:
    """Page 1 is ``OUT/index.html``, page n > 1 ``OUT/report/page-000n.html``."""
    return out / "index.html" if page == 1 else out / "report" / f"page-{page:04d}.html"


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (str, list, dict)) else v}" for k, v in settings.items())


SHOWN = 96  # a picture smaller than this (its longer side, pixels) is shown enlarged by a whole factor


def _size(path: pathlib.Path) -> str:
    """``width="w" height="h"`` from the image header, or "" when the file cannot be read; a small
    picture (an MNIST digit) is shown ``ceil(SHOWN / longer side)`` times its size in whole pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError:
        return ""
    if max(w, h) >= SHOWN:
        return f' width="{w}" height="{h}"'
    k = -(-SHOWN // max(w, h, 1))
    return f' width="{k * w}" height="{k * h}" style="image-rendering:pixelated"'


_CSS = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222;background:#fff}
h1{font-size:1.3em;margin:.2em 0}
header p,header li{margin:.15em 0}
.bars{display:flex;gap:2em;flex-wrap:wrap;margin:.5em 0}
.bar{width:260px;height:14px;border:1px solid #999}
.ticks{display:flex;justify-content:space-between;width:262px;font-size:.8em}
nav{margin:.8em 0}
nav a,nav span{margin-right:.4em}
nav .current{font-weight:bold}
table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center}
td.top5{text-align:left;font-size:.85em;min-width:12em}
td.top5 ol{margin:0;padding-left:1.4em}
td.top5 .target{font-weight:bold}
td.missing{color:#999;vertical-align:middle}
img{max-width:256px;max-height:256px;height:auto}
.name{font-size:.8em;word-break:break-all;max-width:256px;margin:0 auto}
"""


def _header(run: dict, count: int) -> str:
    model = run.get("model", {})
    model_name = model.get("name", "") if isinstance(model, dict) else model
    model_rest = _settings({k: v for k, v in model.items() if k != "name" and v is not None}) if isinstance(model, dict) else ""
    methods = []
    for m in run.get("methods", []):
        name = "" if m.get("name", m["label"]) == m["label"] else f" ({_attr(m['name'])})"
        settings = _settings(m.get("settings", {}))
        methods.append(f"<li><b>{_attr(m['label'])}</b>{name}{': ' + _attr(settings) if settings else ''}</li>")
    bars = []
    labels = {"unsigned": ("0", "max |attribution|"), "signed": ("\u2212max", "0", "+max")}
    for kind, name in run.get("colormaps", {}).items():
        ticks = "".join(f"<span>{_attr(t)}</span>" for t in labels.get(kind, ("min", "max")))
        bars.append(f'<div><div>{_attr(kind)} maps: {_attr(name)}</div>'
                    f'<div class="bar" style="background:{_attr(_gradient(name))}"></div>'
                    f'<div class="ticks">{ticks}</div></div>')
    target = run.get("target", "predicted")
    return (f"<header><h1>jaxplain report: {_attr(model_name)}</h1>"
            + (f"<p>model: {_attr(model_rest)}</p>" if model_rest else "")
            + f"<p>{count} image{'s' if count != 1 else ''}; target: {_attr(target)}"
            + (f"; dtype: {_attr(run['dtype'])}" if "dtype" in run else "")
            + (f"; channels reduced by {_attr(run['reduce'])}" if "reduce" in run else "") + "</p>"
            + f"<ul>{''.join(methods)}</ul>"
            + f'<div class="bars">{"".join(bars)}</div>'
            + "<p>Each heat map is scaled on its own: max is that map's own largest |attribution|, "
              "so colours compare within an image, not across images. Signed maps (with negative "
              "values) use the signed colour map.</p></header>")


def _nav(out: pathlib.Path, page: int, pages: int) -> str:
    if pages == 1:
        return ""
    folder = _page_path(out, page).parent

    def link(p: int, text: str) -> str:
        return f'<a href="{_attr(_href(_page_path(out, p), folder))}">{text}</a>'

    parts = [link(page - 1, "&laquo; previous") if page > 1 else "<span>&laquo; previous</span>"]
    parts += [f'<span class="current">{p}</span>' if p == page else link(p, str(p)) for p in range(1, pages + 1)]
    parts.append(link(page + 1, "next &raquo;") if page < pages else "<span>next &raquo;</span>")
    return f"<nav>{' '.join(parts)}</nav>"


def _row(out: pathlib.Path, folder: pathlib.Path, row: Row, labels: list[str]) -> str:
    first = next((row.results[m] for m in labels if m in row.results), next(iter(row.results.values())))
    original = pathlib.Path(row.input) if os.path.isabs(row.input) else out / row.input
    shown = first.get("input", row.input)
    cells = []
    picture = first.get("picture")
    img = (f'<img class="picture" src="{_attr(_href(out / picture, folder))}"{_size(out / picture)} alt="{_attr(shown)}">'
           if picture else "")
    cells.append(f'<td><a href="{_attr(_href(original, folder))}">{img}</a>'
                 f'<div class="name">{_attr(shown)}</div></td>')
    target = first.get("target")
    items = []
    for entry in first.get("top5", []):
        mark = entry.get("class") == target
        opening, marker = ('<li class="target">', " &#9664; explained") if mark else ("<li>", "")
        items.append(f"{opening}{_attr(entry.get('name', entry.get('class')))} {100 * float(entry.get('p', 0)):.1f}%{marker}</li>")
    outside = target is not None and all(e.get("class") != target for e in first.get("top5", []))
    extra = f'<div class="target">explained: class {_attr(target)}</div>' if outside else ""
    cells.append(f'<td class="top5"><ol>{"".join(items)}</ol>{extra}</td>')
    for label in labels:
        result = row.results.get(label)
        if result is None or "thumb" not in result:
            cells.append('<td class="missing">&mdash;</td>')
            continue
        thumb = out / result["thumb"]
        full = out / result.get("overlay", result["thumb"])
        title = f"{label} on {row.input}, target {result.get('target')}" + (" (signed)" if result.get("signed") else "")
        cells.append(f'<td><a href="{_attr(_href(full, folder))}"><img class="heat" src="{_attr(_href(thumb, folder))}"'
                     f'{_size(thumb)} alt="{_attr(label)}" title="{_attr(title)}"></a></td>')
    return f"<tr>{''.join(cells)}</tr>"


def _unreadable(unread: dict[str, str]) -> str:
    """The inputs that could not be read, listed under the table."""
    if not unread:
        return ""
    items = "".join(f"<li>{_attr(path)}: {_attr(why)}</li>" for path, why in sorted(unread.items()))
    return f'<section class="unreadable"><h2>{len(unread)} unreadable input{"s" * (len(unread) > 1)}</h2><ul>{items}</ul></section>'


def _page(out: pathlib.Path, run: dict, chunk: list[Row], count: int, page: int, pages: int,
          unread: dict[str, str] | None = None) -> str:
    folder = _page_path(out, page).parent
    labels = [m["label"] for m in run.get("methods", [])]
    nav = _nav(out, page, pages)
    head = "".join(f"<th>{_attr(label)}</th>" for label in labels)
    body = "\n".join(_row(out, folder, row, labels) for row in chunk)
    title = f"{MARK[len('<title>'):]}{f' (page {page} of {pages})' if pages > 1 else ''}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head><body>{_header(run, count)}{nav}"
            f"<table><thead><tr><th>picture</th><th>top-5</th>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"
            f"{nav}{_unreadable(unread or {}) if page == 1 else ''}</body></html>\n")


def write(out: str | os.PathLike, *, page_size: int = 50) -> pathlib.Path:
    """Write the report of the run in ``out`` (its ``run.json`` and ``results.jsonl``): ``out/index.html``
    and, past ``page_size`` pictures, ``out/report/page-0002.html``, ...; returns the index.html path."""
    if not isinstance(page_size, int) or page_size < 1:
        raise InputError(f"page_size must be a positive integer, got {page_size!r}")
    out = pathlib.Path(out)
    try:
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{out / 'run.json'} does not exist: is this the --out folder of a `jaxplain explain` run?") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{out / 'run.json'} is not valid JSON ({e})") from None
    if not isinstance(run, dict) or not all(isinstance(m, dict) and "label" in m for m in run.get("methods", [])):
        raise InputError(f"{out / 'run.json'} is not a run description (methods need a 'label')")
    check_writable(out)
    table = _rows(read_results(out / "results.jsonl"))
    unread = record.failed(out)
    pages = max(1, math.ceil(len(table) / page_size))
    for page in range(1, pages + 1):
        chunk = table[(page - 1) * page_size: page * page_size]
        outputs.write_atomic(_page_path(out, page), _page(out, run, chunk, len(table), page, pages, unread).encode("utf-8"))
    written = {_page_path(out, p) for p in range(2, pages + 1)}
    for stale in (out / "report").glob("page-*.html"):  # pages of an earlier, longer report
        if stale not in written and is_ours(stale):
            stale.unlink()
    return _page_path(out, 1)
