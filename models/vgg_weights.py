"""VGG weights: the key tables of Keras' .h5, torchvision's .pth, timm's safetensors and our
cache; the published ImageNet files; and the loaders ``vgg11`` ... ``vgg19``.

``vgg16(weights=None | "imagenet" | path, source=None)`` returns a ``jaxplain.Model``:

- ``weights=None``: seeded random weights (torchvision's initialisation).
- ``weights="imagenet"``: the published file of ``source`` (``"keras"``, the default, as
  Keras' ``VGG16(weights="imagenet")``; or ``"torchvision"``), downloaded, verified and cached
  (the download and its conversion, under ``$JAXPLAIN_HOME``).
- ``weights=path``: a Keras ``.h5``, torch ``.pth`` or safetensors file, format read from its
  bytes; read and converted on every load, never copied into the cache.

``source`` picks the head semantics, the preprocessing and the resize: Keras' (Caffe BGR, flatten,
224x224 only, nearest resize) or torchvision's (RGB mean/std, adaptive pool, any size from 32 up,
resize and centre crop). ``vgg.build`` puts these facts on the ``Model``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np

from jaxplain.errors import InputError, WeightsError
from jaxplain.types import Model

from . import weights as _weights
from .vgg import BLOCKS, VGGConfig, build, random_params
from .weights import Published, RawWeights, _first_axis_last, _keras, _linear, _oihw, _same, _torch, home, read_raw

Params = dict[str, dict[str, np.ndarray]]
SOURCES = ("keras", "torchvision")  # whose ImageNet weights a VGG loads, the default first


# ---------------------------------------------------------------- key tables


@dataclasses.dataclass(frozen=True)
class Entry:
    layer: str
    param: str
    key: str
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray]


def _fc1_from_chw(channels: int, grid: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch's fc1 reads a C,H,W flatten; ours reads H,W,C. Works for (out, C*g*g) and (out, C, g, g)."""

    def convert(a: np.ndarray) -> np.ndarray:
        out = a.shape[0]
        return _first_axis_last(a.reshape(out, channels, grid, grid), (2, 3, 1, 0)).reshape(-1, out)

    return convert


def layout_of(raw: dict[str, np.ndarray], fmt: str) -> str:
    """Key layout: ``keras``, ``torchvision``, ``timm`` or ``jaxplain`` (our own cache format)."""
    if fmt == "keras_h5":
        return "keras"
    if any(k.startswith(("pre_logits.", "head.fc.")) for k in raw):
        return "timm"
    if any(k.startswith("features.") for k in raw):
        return "torchvision"
    if any(k.startswith("block1_conv1/") for k in raw):
        return "jaxplain"
    raise WeightsError(f"unrecognised key layout (first keys: {sorted(raw)[:4]}): not VGG weights")


def table(config: VGGConfig, layout: str) -> list[Entry]:
    """Every (our layer, param) <- (file key, file shape, conversion) for ``layout``."""
    entries: list[Entry] = []
    cin, idx = 3, 0
    for (b, n), width in zip(enumerate(config.blocks, 1), config.widths):
        for i in range(1, n + 1):
            name = f"block{b}_conv{i}"
            if layout in ("keras", "jaxplain"):
                entries += [
                    Entry(name, "kernel", f"{name}/kernel", (3, 3, cin, width), _same),
                    Entry(name, "bias", f"{name}/bias", (width,), _same),
                ]
            else:
                entries += [
                    Entry(name, "kernel", f"features.{idx}.weight", (width, cin, 3, 3), _oihw),
                    Entry(name, "bias", f"features.{idx}.bias", (width,), _same),
                ]
            cin, idx = width, idx + 2
        idx += 1
    if not config.include_top:
        return entries
    g, fc, k = config.grid, config.fc, config.classes
    if layout in ("keras", "jaxplain"):
        shapes = {"fc1": (g * g * cin, fc), "fc2": (fc, fc), "predictions": (fc, k)}
        for name, shape in shapes.items():
            entries += [
                Entry(name, "kernel", f"{name}/kernel", shape, _same),
                Entry(name, "bias", f"{name}/bias", shape[1:], _same),
            ]
        return entries
    if layout == "torchvision":
        heads = [
            ("fc1", "classifier.0", (fc, cin * g * g), _fc1_from_chw(cin, g)),
            ("fc2", "classifier.3", (fc, fc), _linear),
            ("predictions", "classifier.6", (k, fc), _linear),
        ]
    else:  # timm: fc1/fc2 stored as conv kernels
        heads = [
            ("fc1", "pre_logits.fc1", (fc, cin, g, g), _fc1_from_chw(cin, g)),
            ("fc2", "pre_logits.fc2", (fc, fc, 1, 1), _linear),
            ("predictions", "head.fc", (k, fc), _linear),
        ]
    for name, key, shape, convert in heads:
        entries += [
            Entry(name, "kernel", f"{key}.weight", shape, convert),
            Entry(name, "bias", f"{key}.bias", shape[:1], _same),
        ]
    return entries


def _guess_arch(raw: dict[str, np.ndarray], layout: str) -> str | None:
    if layout in ("keras", "jaxplain"):
        convs = sum(1 for k in raw if "_conv" in k and k.endswith("/kernel"))
    else:
        convs = sum(1 for k in raw if k.startswith("features.") and k.endswith(".weight"))
    return next((a for a, blocks in BLOCKS.items() if sum(blocks) == convs), None)


def _has_top(raw: dict[str, np.ndarray], layout: str) -> bool:
    return any(k.startswith(("fc1/", "classifier.", "pre_logits.", "head.")) for k in raw)


def convert(raw: dict[str, np.ndarray], config: VGGConfig, layout: str, origin: str = "file") -> Params:
    """Map a file's arrays onto ``config``'s parameters, refusing anything partial or extra."""
    guess = _guess_arch(raw, layout)
    hint = f" (the {origin} looks like a {guess})" if guess and guess != config.name else ""
    params: Params = {}
    used = set()
    for e in table(config, layout):
        if e.key not in raw:
            raise WeightsError(
                f"{config.name} layer {e.layer}: {origin} has no {e.param} '{e.key}'{hint}"
            )
        a = np.asarray(raw[e.key])
        if a.shape != e.shape:
            raise WeightsError(
                f"{config.name} layer {e.layer}: {e.param} '{e.key}' has shape {a.shape} in the "
                f"{origin}, the model expects {e.shape}{hint}"
            )
        params.setdefault(e.layer, {})[e.param] = e.convert(a)
        used.add(e.key)
    extra = set(raw) - used
    if not config.include_top:  # a file with a top may feed a model without one
        extra = {k for k in extra if not k.startswith(("fc1/", "fc2/", "predictions/", "classifier.", "pre_logits.", "head."))}
    if extra:
        raise WeightsError(
            f"{config.name}: unexpected keys in the {origin}: {', '.join(sorted(extra)[:6])}"
            f"{' ...' if len(extra) > 6 else ''}{hint}"
        )
    return params


def convert_raw(raw: RawWeights, config: VGGConfig, origin: str = "file") -> Params:
    """``convert`` with the key layout read from the file's keys."""
    return convert(raw.arrays, config, layout_of(raw.arrays, raw.fmt), origin=origin)


def load_file(path: str | os.PathLike, config: VGGConfig) -> Params:
    """Read and convert one weight file for ``config``."""
    return convert_raw(read_raw(path), config, origin=f"file {Path(path).name}")


def file_info(raw: RawWeights) -> tuple[str, bool]:
    """``(source, has_top)`` of a file's contents: the head and preprocessing its weights imply
    (``"keras"`` for Keras' layout, ``"torchvision"`` for torch layouts, or what it records)."""
    layout = layout_of(raw.arrays, raw.fmt)
    source = raw.source or ("keras" if layout == "keras" else "torchvision")
    return source, _has_top(raw.arrays, layout)


# ---------------------------------------------------------------- the cache and the published files


def cache_path(config: VGGConfig, source: str) -> Path:
    """Where the conversion of ``source``'s published ImageNet weights for ``config`` is kept."""
    top = "top" if config.include_top else "notop"
    return home() / "converted" / f"{config.name}-{source}-{top}-imagenet.safetensors"


def load_cached(path: Path, config: VGGConfig) -> Params:
    """The parameters ``save_params`` wrote to ``path``."""
    return convert(read_raw(path).arrays, config, "jaxplain", origin=f"cached file {path}")


PUBLISHED: dict[tuple[str, str, bool], Published] = {
    ("vgg16", "keras", True): _keras("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    ("vgg16", "keras", False): _keras("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    ("vgg19", "keras", True): _keras("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
    ("vgg19", "keras", False): _keras("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    ("vgg11", "torchvision", True): _torch("vgg11-8a719046.pth", "8a719046"),
    ("vgg13", "torchvision", True): _torch("vgg13-19584684.pth", "19584684"),
    ("vgg16", "torchvision", True): _torch("vgg16-397923af.pth", "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),
    ("vgg19", "torchvision", True): _torch("vgg19-dcbb9e9d.pth", "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"),
}


def published(arch: str, source: str, include_top: bool) -> Published:
    """The canonical file for ``(arch, source, include_top)``; torchvision has one file for both."""
    key = (arch, source, include_top if source == "keras" else True)
    if key not in PUBLISHED:
        have = sorted({f"{a} ({s})" for a, s, _ in PUBLISHED})
        raise WeightsError(f"no published ImageNet weights for {arch} from {source}; available: {', '.join(have)}")
    return PUBLISHED[key]


# ---------------------------------------------------------------- the loaders


def vgg(
    arch: str,
    weights: str | os.PathLike | None = None,
    source: str | None = None,
    *,
    include_top: bool | None = None,
    seed: int = 0,
    cache: bool = True,
) -> Model:
    """A VGG of ``arch`` (``vgg11``/``vgg13``/``vgg16``/``vgg19``) with the weights asked for.

    ``seed`` seeds random weights (``weights=None``); ``cache=False`` neither reads nor writes the
    converted copy of downloaded weights.
    """
    if arch not in BLOCKS:
        raise InputError(f"unknown architecture {arch!r}; expected one of {sorted(BLOCKS)}")
    if source is not None and source not in SOURCES:
        raise InputError(f"unknown weight source {source!r}; expected one of {SOURCES}")
    raw = _weights.read_raw(weights) if weights is not None and weights != "imagenet" else None
    if raw is not None:  # a local file: read once, here, and converted in memory (never cached)
        file_source, has_top = file_info(raw)
        source = source or file_source
        include_top = has_top if include_top is None else include_top
    source = source or "keras"
    include_top = True if include_top is None else include_top
    config = VGGConfig(blocks=BLOCKS[arch], include_top=include_top, head=source, name=arch)

    if weights is None:
        return build(config, random_params(config, seed), source=source)
    if raw is not None:
        params = convert_raw(raw, config, origin=f"file {os.path.basename(weights)}")
        return build(config, params, source=source)
    # The published file: downloaded once, and its conversion kept beside it (``cache``).
    cached = cache_path(config, source)
    if cache and cached.exists():
        params = load_cached(cached, config)
    else:
        params = load_file(_weights.fetch(published(arch, source, include_top)), config)
        if cache:
            _weights.save_params(params, cached, source)
    return build(config, params, source=source)


def vgg11(weights=None, source=None, **kwargs) -> Model:
    """VGG11 (torchvision publishes ImageNet weights; Keras does not)."""
    return vgg("vgg11", weights, source, **kwargs)


def vgg13(weights=None, source=None, **kwargs) -> Model:
    """VGG13 (torchvision publishes ImageNet weights; Keras does not)."""
    return vgg("vgg13", weights, source, **kwargs)


def vgg16(weights=None, source=None, **kwargs) -> Model:
    """VGG16; see the module docstring for ``weights`` and ``source``."""
    return vgg("vgg16", weights, source, **kwargs)


def vgg19(weights=None, source=None, **kwargs) -> Model:
    """VGG19; see the module docstring for ``weights`` and ``source``."""
    return vgg("vgg19", weights, source, **kwargs)
