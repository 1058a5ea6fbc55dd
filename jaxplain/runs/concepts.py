"""Reference images of a layer's channels over a folder of pictures (``jaxplain concepts``).

Relevance maximisation (Achtibat et al. 2023): for each channel, the pictures where it is most
relevant to the predicted class (``channel_relevance``) and those where it is most active (its
largest activation), streamed a batch at a time, keeping only the running top ``k`` per channel,
and a crop of each: the bounding box of where the relevance concentrates, the channel's conditional
relevance (``crp``'s map) for the relevant pictures, the LRP map of the channel's most active neuron
(its receptive field's evidence, ``neuron_map``) for the active ones.

The folder holds ``concepts.json`` (the settings, the pictures seen, the running top lists; rewritten
atomically after each batch, so an interrupted run resumes from its last batch),
``channel_NNNN/{relevance,activation}_R.png`` (the crops, rank R from 1), ``concepts.jsonl`` (a line per
crop) and, with a report, ``index.html``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.methods.relevance import box_for_model, channel_map, channel_relevance, neuron_map
from jaxplain.runs import outputs, report
from jaxplain.types import Model

STATE = "concepts.json"
LINES = "concepts.jsonl"
KINDS = ("relevance", "activation")
SHARE = 0.8  # a crop holds the fewest pixels that carry this share of the absolute relevance ...
PAD = 0.1  # ... padded by this share of the picture's side


def read_state(out: Path) -> dict[str, Any] | None:
    """The folder's ``concepts.json``, or ``None``; an ``InputError`` if it is not one of ours."""
    path = out / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path} cannot be read as a concepts run ({e}): move it away or pass --overwrite") from None
    if not isinstance(state, dict) or not {"config", "seen", "top"} <= state.keys():
        raise InputError(f"{path} is not a concepts run: move it away or pass --overwrite")
    return state


def start(out: Path, config: dict[str, Any], *, overwrite: bool) -> dict[str, Any]:
    """The state to go on from: the folder's when its settings are ``config``'s, else a new one
    (another run's settings are refused unless ``overwrite``)."""
    try:
        state = read_state(out)
    except InputError:
        if not overwrite:
            raise
        state = None
    if state is not None and state["config"] != config:
        if not overwrite:
            diff = sorted(k for k in {*config, *state["config"]} if config.get(k) != state["config"].get(k))
            raise InputError(f"{out} holds a concepts run with other settings ({', '.join(diff)}): pass --overwrite to "
                             "start again there, or another --out")
        state = None
    return state or {"config": config, "seen": {}, "failed": {}, "top": {}, "crops": {}}


def save(out: Path, state: dict[str, Any]) -> None:
    outputs.write_atomic(out / STATE, json.dumps(state, sort_keys=True).encode("utf-8"))


def merge(top: list[list[Any]], scores: np.ndarray, paths: Sequence[str], k: int) -> list[list[Any]]:
    """The ``k`` best ``[score, path]`` of ``top`` and the new ``scores [B]`` of ``paths``
    (highest first, ties by path)."""
    both = [*top, *([float(s), p] for s, p in zip(scores, paths))]
    return sorted(both, key=lambda e: (-e[0], e[1]))[:k]


def scorer(model: Model, layer: str, channels: Sequence[int], composite: str) -> Callable[[np.ndarray], tuple]:
    """``images uint8 [B, H, W, C] -> (predicted [B], relevance [B, K], activation [B, K])``:
    the class, each channel's relevance for it (``channel_relevance``) and its largest activation."""
    box = box_for_model(model.preprocess, model.channels)
    chosen = jnp.asarray(channels)

    def one(params: Any, x: Any) -> tuple:
        logits, acts = model.apply(params, x)
        t = jnp.argmax(logits)
        r = channel_relevance(model.apply, params, x, t, layer=layer, channels=tuple(channels), composite=composite,
                              box=box)
        a = acts[layer]
        return t, r, a.reshape(-1, a.shape[-1]).max(0)[chosen]

    run = jax.jit(jax.vmap(one, in_axes=(None, 0)))
    return lambda images: tuple(np.asarray(v) for v in run(model.params, jnp.asarray(model.preprocess(images))))


def mapper(model: Model, layer: str, composite: str, kind: str = "relevance"
           ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(images uint8 [P, H, W, C], channels [P]) -> [P, H, W]``, summed over colour channels:
    each pair's CRP map for the predicted class (``kind="relevance"``), or the LRP map of the
    channel's most active neuron (``"activation"``: ``neuron_map``, its receptive field)."""
    box = box_for_model(model.preprocess, model.channels)

    def one(params: Any, x: Any, c: Any) -> Any:
        if kind == "activation":
            return neuron_map(model.apply, params, x, c, layer=layer, composite=composite, box=box).sum(-1)
        t = jnp.argmax(model.apply(params, x)[0])
        return channel_map(model.apply, params, x, t, c, layer=layer, composite=composite, box=box).sum(-1)

    run = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))
    return lambda images, chans: np.asarray(run(model.params, jnp.asarray(model.preprocess(images)),
                                                jnp.asarray(chans, jnp.int32)))


def crop_box(relevance: np.ndarray, share: float = SHARE, pad: float = PAD) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (end exclusive) of a map ``[H, W]``: the bounding box of the
    fewest pixels holding ``share`` of its absolute relevance, padded by ``pad`` of each side's
    length; the whole picture when the map is zero."""
    m = np.abs(np.asarray(relevance, np.float64))
    h, w = m.shape
    total = m.sum()
    if not np.isfinite(total) or total <= 0:
        return 0, 0, h, w
    order = np.argsort(m, axis=None)[::-1]
    n = int(np.searchsorted(np.cumsum(m.ravel()[order]), share * total)) + 1
    rows, cols = np.unravel_index(order[:n], m.shape)
    ph, pw = round(pad * h), round(pad * w)
    return (max(int(rows.min()) - ph, 0), max(int(cols.min()) - pw, 0),
            min(int(rows.max()) + 1 + ph, h), min(int(cols.max()) + 1 + pw, w))


def crop_name(channel: int, kind: str, rank: int) -> str:
    return f"channel_{channel:04d}/{kind}_{rank}.png"


def write_crops(out: Path, state: dict[str, Any], load: Callable[[str], np.ndarray],
                maps: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]], batch: int) -> list[dict[str, Any]]:
    """Each channel's crops (``crop_name``) of its top pictures, and their lines (``concepts.jsonl``);
    a crop already written of the same picture is kept."""
    lines, todo = [], []
    for channel, tops in sorted(state["top"].items(), key=lambda kv: int(kv[0])):
        for kind in KINDS:
            for rank, (score, path) in enumerate(tops[kind], 1):
                name = crop_name(int(channel), kind, rank)
                line = {"channel": int(channel), "kind": kind, "rank": rank, "score": score, "input": path,
                        "predicted": state["seen"][path]["predicted"], "crop": name}
                lines.append(line)
                done = state["crops"].get(name)
                if done is None or done["input"] != path or not (out / name).is_file():
                    todo.append(line)
                else:
                    line["box"] = done["box"]
    groups = [[line for line in todo if line["kind"] == kind] for kind in KINDS]
    for group in (g[i:i + batch] for g in groups for i in range(0, len(g), batch)):
        images = np.stack([load(line["input"]) for line in group])
        size = len(group)
        pad = batch - size  # one compiled shape for every call
        chans = np.array([line["channel"] for line in group] + [0] * pad)
        images = np.concatenate([images, np.repeat(images[:1], pad, 0)]) if pad else images
        for line, image, m in zip(group, images[:size], maps[group[0]["kind"]](images, chans)[:size]):
            top, left, bottom, right = crop_box(m)
            outputs.write_atomic(out / line["crop"], outputs.picture_bytes(_rgb(image[top:bottom, left:right])))
            line["box"] = [top, left, bottom, right]
            state["crops"][line["crop"]] = {"input": line["input"], "box": line["box"]}
    outputs.write_atomic(out / LINES, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode())
    return lines


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image


def write_report(out: Path, state: dict[str, Any], lines: list[dict[str, Any]]) -> Path:
    """``out/index.html``: a row per channel, its reference crops by relevance and by activation
    (the run report's page style, ``jaxplain.runs.report``)."""

    report.check_writable(out)
    cfg = state["config"]
    model = cfg.get("model", {})
    rows = []
    by_channel: dict[int, dict[str, list]] = {}
    for line in lines:
        by_channel.setdefault(line["channel"], {k: [] for k in KINDS})[line["kind"]].append(line)
    for channel, kinds in sorted(by_channel.items()):
        cells = [f"<td>channel {channel}</td>"]
        for kind in KINDS:
            pics = "".join(
                f'<a href="{report._attr(report._href(Path(e["input"]), out))}"><img src="{report._attr(report._href(out / e["crop"], out))}"'
                f'{report._size(out / e["crop"])} alt="{report._attr(e["crop"])}" title="{report._attr(e["input"])}: '
                f'{kind} {e["score"]:.4g}, class {e["predicted"]}"></a>' for e in kinds[kind])
            cells.append(f"<td>{pics or '&mdash;'}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = (f"<header><h1>jaxplain report: concepts of {report._attr(model.get('name', ''))} at "
            f"{report._attr(cfg['layer'])}</h1><p>{len(state['seen'])} images; composite {report._attr(cfg['composite'])}; "
            f"top {cfg['top']} per channel by relevance for the predicted class and by largest activation. Each crop: "
            f"the box of the fewest pixels holding {SHARE:.0%} of the absolute relevance, padded by {PAD:.0%}: the "
            "channel's conditional relevance (CRP) for the most relevant, the LRP map of its most active neuron for "
            "the most active.</p></header>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{report.MARK[len("<title>"):]}'
            f": concepts</title><style>{report._CSS}</style></head><body>{head}<table><thead><tr><th>channel</th>"
            f"<th>most relevant</th><th>most active</th></tr></thead>\n<tbody>\n{chr(10).join(rows)}\n</tbody></table>"
            "</body></html>\n")
    outputs.write_atomic(out / "index.html", page.encode("utf-8"))
    return out / "index.html"
