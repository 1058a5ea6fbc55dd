"""ResNet-50 weights: torchvision ``.pth``, timm safetensors, Keras ``.h5``; batch norm folded;
and the loader.

``resnet50(weights, source)``: seeded random weights (``None``), the published file of ``source``
(``"imagenet"``; ``source="torchvision"``, the default, or ``"keras"``; timm's ``resnet50.*``
safetensors load as torchvision's) or a local file, batch norm folded at load time; ``weights``
may also name torchvision's releases ``"IMAGENET1K_V1"``/``"IMAGENET1K_V2"`` (``"imagenet"`` is
V2, torchvision's default).

Key layouts (``table`` lists every key of each, with its shape):

- ``"torchvision"``, also timm's ``resnet50.*`` safetensors (the same keys): ``conv1.weight``,
  ``bn1.{weight,bias,running_mean,running_var}``, ``layer{s}.{b}.conv{i}.weight``,
  ``layer{s}.{b}.bn{i}.*``, ``layer{s}.0.downsample.0.weight`` (conv), ``.downsample.1.*`` (BN),
  ``fc.{weight,bias}``; ``*.num_batches_tracked`` is taken where present (older files lack it).
- ``"keras"``: ``conv1_conv/{kernel,bias}``, ``conv1_bn/{gamma,beta,moving_mean,moving_variance}``,
  ``conv{s+1}_block{b+1}_{i}_conv`` / ``_bn`` (``_0_`` the shortcut), ``predictions/{kernel,bias}``.
- ``"jaxplain"``: our cache, already folded: ``{layer}/{kernel,bias}``.

Reading files, fetching, verifying and the cache directory are ``weights``' (shared with VGG).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from jaxplain.errors import InputError, WeightsError
from jaxplain.types import Model

from . import weights as _w
from .resnet import Params, ResNetConfig, build, fold_bn, random_params

SOURCES = ("torchvision", "keras")
RELEASES = ("IMAGENET1K_V1", "IMAGENET1K_V2")  # torchvision's names for its two ResNet-50 files
DEFAULT_RELEASE = "IMAGENET1K_V2"  # torchvision's ResNet50_Weights.DEFAULT
# torchvision's eval resize: the shorter side is this times the crop's (V1: 256/224; V2: 232/224).
RESIZE_RATIO = {"IMAGENET1K_V1": 256 / 224, "IMAGENET1K_V2": 232 / 224}

BN_STATS = ("mean", "var")


class Key(NamedTuple):
    role: str  # kernel, bias, gamma, beta, mean, var
    key: str
    shape: tuple[int, ...]


class Unit(NamedTuple):
    """One of our layers and every file key it is made of; ``optional`` keys are consumed if present."""

    layer: str
    keys: tuple[Key, ...]
    optional: tuple[str, ...] = ()


def _torch_modules(layer: str) -> tuple[str, str]:
    """Our conv layer -> torchvision's (conv module, batch-norm module)."""
    if layer == "conv1":
        return "conv1", "bn1"
    block, part = layer.rsplit(".", 1)
    if part == "downsample":
        return f"{block}.downsample.0", f"{block}.downsample.1"
    return layer, f"{block}.bn{part[-1]}"


def _keras_layers(layer: str) -> tuple[str, str]:
    """Our conv layer -> Keras' (conv layer, batch-norm layer) names."""
    if layer == "conv1":
        return "conv1_conv", "conv1_bn"
    stage, block, part = layer.split(".")
    i = "0" if part == "downsample" else part[-1]
    p = f"conv{int(stage[5:]) + 1}_block{int(block) + 1}_{i}"
    return f"{p}_conv", f"{p}_bn"


def table(config: ResNetConfig, layout: str) -> list[Unit]:
    """Every layer of ``config`` and the file keys and shapes it is read from, for ``layout``."""
    units: list[Unit] = []
    for layer, (shape, _) in config.conv_shapes().items():
        kh, kw, cin, cout = shape
        c = (cout,)
        if layout == "jaxplain":
            units.append(Unit(layer, (Key("kernel", f"{layer}/kernel", shape), Key("bias", f"{layer}/bias", c))))
        elif layout == "keras":
            conv, bn = _keras_layers(layer)
            units.append(Unit(layer, (
                Key("kernel", f"{conv}/kernel", shape), Key("bias", f"{conv}/bias", c),
                Key("gamma", f"{bn}/gamma", c), Key("beta", f"{bn}/beta", c),
                Key("mean", f"{bn}/moving_mean", c), Key("var", f"{bn}/moving_variance", c),
            )))
        elif layout == "torchvision":
            conv, bn = _torch_modules(layer)
            units.append(Unit(layer, (
                Key("kernel", f"{conv}.weight", (cout, cin, kh, kw)),
                Key("gamma", f"{bn}.weight", c), Key("beta", f"{bn}.bias", c),
                Key("mean", f"{bn}.running_mean", c), Key("var", f"{bn}.running_var", c),
            ), optional=(f"{bn}.num_batches_tracked",)))
        else:
            raise WeightsError(f"unknown ResNet key layout {layout!r}")
    if config.include_top:
        f, k = config.features, config.classes
        names = {"jaxplain": ("fc/kernel", "fc/bias"), "keras": ("predictions/kernel", "predictions/bias"),
                 "torchvision": ("fc.weight", "fc.bias")}[layout]
        kshape = (k, f) if layout == "torchvision" else (f, k)
        units.append(Unit("fc", (Key("kernel", names[0], kshape), Key("bias", names[1], (k,)))))
    return units


TOP_PREFIXES = ("fc.", "fc/", "predictions/")


def layout_of(raw: dict[str, np.ndarray], fmt: str) -> str:
    """Key layout: ``keras``, ``torchvision`` (and timm's) or ``jaxplain`` (our cache format)."""
    if fmt == "keras_h5":
        return "keras"
    if any(k.startswith("layer1.0.conv1/") for k in raw):
        return "jaxplain"
    if any(k.startswith("layer1.") for k in raw):
        return "torchvision"
    raise WeightsError(f"unrecognised key layout (first keys: {sorted(raw)[:4]}): not ResNet weights")


def _guess(raw: dict[str, np.ndarray], layout: str) -> str | None:
    """The architecture a file's keys suggest (by its third stage's depth), if a known one."""
    if layout == "keras":
        stage3 = {k.split("_")[1] for k in raw if k.startswith("conv4_block")}
        bottleneck = any(k.startswith("conv2_block1_3_conv") for k in raw)
    else:
        stage3 = {k.split(".")[1] for k in raw if k.startswith("layer3.")}
        bottleneck = any(k.startswith("layer1.0.conv3") for k in raw)
    if not bottleneck and stage3:
        return "resnet18/34 (basic blocks)"
    depth = {6: "resnet50", 23: "resnet101", 36: "resnet152"}
    return depth.get(len(stage3))


def _converter(layout: str, role: str, ndim: int) -> Callable[[np.ndarray], np.ndarray]:
    if layout == "torchvision" and role == "kernel":
        return _w._oihw if ndim == 4 else _w._linear
    return _w._same


def convert(raw: dict[str, np.ndarray], config: ResNetConfig, layout: str, origin: str = "file") -> Params:
    """Map a file's arrays onto ``config``'s (folded) parameters, refusing anything partial or extra."""
    guess = _guess(raw, layout)
    hint = f" (the {origin} looks like a {guess})" if guess and guess != config.name else ""
    params: Params = {}
    used: set[str] = set()
    for unit in table(config, layout):
        got: dict[str, np.ndarray] = {}
        for role, key, shape in unit.keys:
            if key not in raw:
                why = " (batch-norm running statistics: without them batch norm cannot be folded " \
                      "for inference)" if role in BN_STATS else ""
                raise WeightsError(f"{config.name} layer {unit.layer}: {origin} has no {role} '{key}'{why}{hint}")
            a = np.asarray(raw[key])
            if a.shape != shape:
                raise WeightsError(
                    f"{config.name} layer {unit.layer}: {role} '{key}' has shape {a.shape} in the "
                    f"{origin}, the model expects {shape}{hint}"
                )
            got[role] = _converter(layout, role, a.ndim)(a)
            used.add(key)
        used.update(k for k in unit.optional if k in raw)
        if "gamma" in got:
            k, b = fold_bn(got["kernel"], got.get("bias"), got["gamma"], got["beta"], got["mean"], got["var"], config.eps)
            params[unit.layer] = {"kernel": k, "bias": b}
        else:
            params[unit.layer] = got
    extra = set(raw) - used
    if not config.include_top:  # a file with a top may feed a model without one
        extra = {k for k in extra if not k.startswith(TOP_PREFIXES)}
    if extra:
        raise WeightsError(
            f"{config.name}: unexpected keys in the {origin}: {', '.join(sorted(extra)[:6])}"
            f"{' ...' if len(extra) > 6 else ''}{hint}"
        )
    return params


def file_info(raw: _w.RawWeights) -> tuple[str, bool]:
    """``(source, has_top)`` of a file: ``"keras"`` for Keras' layout, ``"torchvision"`` for torch
    layouts (timm's included), or what our cache records."""
    layout = layout_of(raw.arrays, raw.fmt)
    source = raw.source or ("keras" if layout == "keras" else "torchvision")
    return source, any(k.startswith(TOP_PREFIXES) for k in raw.arrays)


def convert_raw(raw: _w.RawWeights, config: ResNetConfig, origin: str = "file") -> Params:
    """``convert`` with the key layout read from the file's keys."""
    return convert(raw.arrays, config, layout_of(raw.arrays, raw.fmt), origin=origin)


def load_file(path: str | os.PathLike, config: ResNetConfig) -> Params:
    """Read and convert one weight file for ``config``."""
    return convert_raw(_w.read_raw(path), config, origin=f"file {Path(path).name}")


# ---------------------------------------------------------------- published files and the cache

PUBLISHED: dict[tuple[str, str], _w.Published] = {
    # keras-applications' resnet folder; md5 as in keras.applications.resnet's WEIGHTS_HASHES.
    ("resnet50", "keras-top"): _w._keras("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels.h5", "2cb95161c43110f7111970584f804107"),
    ("resnet50", "keras-notop"): _w._keras("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
    # torchvision: the sha256 prefix in the file name, as torch.hub checks it.
    ("resnet50", "IMAGENET1K_V1"): _w._torch("resnet50-0676ba61.pth", "0676ba61"),
    ("resnet50", "IMAGENET1K_V2"): _w._torch("resnet50-11ad3fa6.pth", "11ad3fa6"),
}


def release_of(source: str, include_top: bool, release: str | None) -> str:
    """The published file's tag: ``keras-top``/``keras-notop``, or torchvision's release name."""
    if source == "keras":
        if release is not None:
            raise WeightsError(f"{release} names torchvision's weights, not Keras'")
        return "keras-top" if include_top else "keras-notop"
    return release or DEFAULT_RELEASE


def published(arch: str, tag: str) -> _w.Published:
    if (arch, tag) not in PUBLISHED:
        have = sorted(f"{a} ({t})" for a, t in PUBLISHED)
        raise WeightsError(f"no published ImageNet weights for {arch} ({tag}); available: {', '.join(have)}")
    return PUBLISHED[(arch, tag)]


def cache_path(config: ResNetConfig, tag: str) -> Path:
    """Where the conversion of the published file ``tag`` for ``config`` is kept."""
    top = "top" if config.include_top else "notop"
    name = tag if tag.startswith("keras") else f"{tag}-{top}"  # Keras' tags say it already
    return _w.home() / "converted" / f"{config.name}-{name}-imagenet.safetensors"


def load_cached(path: Path, config: ResNetConfig) -> Params:
    return convert(_w.read_raw(path).arrays, config, "jaxplain", origin=f"cached file {path}")


def load_published(config: ResNetConfig, tag: str, source: str, *, cache: bool = True) -> Params:
    """The published file ``tag``, downloaded once, verified, converted; the conversion kept
    beside it (``cache``)."""
    cached = cache_path(config, tag)
    if cache and cached.exists():
        return load_cached(cached, config)
    params = load_file(_w.fetch(published(config.name, tag)), config)
    if cache:
        _w.save_params(params, cached, source)
    return params


def release_of_file(path: str | os.PathLike) -> str | None:
    """torchvision's release of a local file by its published name (``resnet50-11ad3fa6.pth``)."""
    name = Path(path).name
    return next((t for (_, t), p in PUBLISHED.items() if p.filename == name and t in RELEASES), None)


# ---------------------------------------------------------------- the loader


def resnet50(
    weights: str | os.PathLike | None = None,
    source: str | None = None,
    *,
    include_top: bool | None = None,
    seed: int = 0,
    cache: bool = True,
) -> Model:
    """ResNet-50 with the weights asked for (see the module docstring). ``source`` picks the
    variant with the preprocessing: ``"torchvision"`` (stride in the 3x3 conv) or ``"keras"``
    (stride in the first 1x1 conv, Caffe BGR input). ``seed`` seeds random weights (with random
    batch-norm statistics, folded); ``cache=False`` neither reads nor writes the converted copy
    of downloaded weights."""
    if source is not None and source not in SOURCES:
        raise InputError(f"unknown weight source {source!r}; expected one of {SOURCES}")
    release = weights if isinstance(weights, str) and weights in RELEASES else None
    is_published = weights == "imagenet" or release is not None
    raw = _w.read_raw(weights) if weights is not None and not is_published else None
    if raw is not None:  # a local file: read once, here, and converted in memory (never cached)
        file_source, has_top = file_info(raw)
        if source is not None and source != file_source:  # the source also picks the architecture
            raise WeightsError(f"{os.path.basename(weights)} holds {file_source} ResNet weights; "
                               f"source={source!r} would run them in another network variant")
        source = file_source
        include_top = has_top if include_top is None else include_top
        release = release_of_file(weights)
    source = source or "torchvision"
    include_top = True if include_top is None else include_top
    config = ResNetConfig(include_top=include_top, style=source, name="resnet50")
    ratio = RESIZE_RATIO.get(release or "IMAGENET1K_V1", 256 / 224)

    if weights is None:
        return build(config, random_params(config, seed), source=source)
    if raw is not None:
        params = convert_raw(raw, config, origin=f"file {os.path.basename(weights)}")
        return build(config, params, source=source, resize_ratio=ratio)
    tag = release_of(source, include_top, release)
    params = load_published(config, tag, source, cache=cache)
    return build(config, params, source=source, resize_ratio=RESIZE_RATIO.get(tag, 256 / 224))
