"""ViT weights: the key tables of timm's safetensors, google-research's ``.npz`` and our cache
(``table`` lists every key of each, with its shape; the layouts are described in ``vit.py``), the published
ImageNet files, and the loaders ``vit(config, weights, source)`` and ``vit_b16(weights, source)``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from jaxplain.errors import InputError, WeightsError
from jaxplain.types import Model

from . import weights as _weights
from .vit import SOURCES, VIT_B16, ViTConfig, build, param_shapes, random_params


# ---------------------------------------------------------------- weight layouts


class Entry(NamedTuple):
    """One parameter of ours (``path`` in the nested dict) made of the file's ``keys``, each of
    ``shape`` in the file, by ``convert(*arrays)`` (a new float32 C-ordered array)."""

    path: tuple[str | int, ...]
    keys: tuple[str, ...]
    shape: tuple[int, ...]
    convert: Callable[..., np.ndarray]


def _same(a: np.ndarray) -> np.ndarray:
    return np.array(a, np.float32)


def _flat(shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.array(a, np.float32).reshape(shape)


def _torch_linear(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, np.float32).T)


def _torch_conv(a: np.ndarray) -> np.ndarray:  # [D, 3, p, p] (OIHW) -> [p, p, 3, D] (HWIO)
    return np.ascontiguousarray(np.asarray(a, np.float32).transpose(2, 3, 1, 0))


def _heads_in(*kernels: np.ndarray) -> np.ndarray:
    """google's ``query``/``key``/``value`` kernels ``[D, heads, hd]`` -> our ``qkv`` kernel ``[D, 3D]``."""
    return np.concatenate([np.asarray(k, np.float32).reshape(k.shape[0], -1) for k in kernels], axis=1)


def _heads_bias(*biases: np.ndarray) -> np.ndarray:
    """``[heads, hd]`` each -> ``[3D]`` (query, key, value; head-major within each)."""
    return np.concatenate([np.asarray(b, np.float32).reshape(-1) for b in biases])


def _heads_out(a: np.ndarray) -> np.ndarray:
    """google's ``out`` kernel ``[heads, hd, D]`` -> our ``proj`` kernel ``[D, D]``."""
    return np.array(a, np.float32).reshape(-1, a.shape[-1])


def _table_timm(c: ViTConfig) -> list[Entry]:
    d, m, k, p = c.width, c.mlp, c.classes, c.patch
    e = [
        Entry(("patch_embed", "kernel"), ("patch_embed.proj.weight",), (d, 3, p, p), _torch_conv),
        Entry(("patch_embed", "bias"), ("patch_embed.proj.bias",), (d,), _same),
        Entry(("cls_token",), ("cls_token",), (1, 1, d), _flat((d,))),
        Entry(("pos_embed",), ("pos_embed",), (1, c.tokens, d), _flat((c.tokens, d))),
    ]
    for i in range(c.depth):
        b = f"blocks.{i}."
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2")):
            e += [Entry(("blocks", i, ours, "scale"), (f"{b}{theirs}.weight",), (d,), _same),
                  Entry(("blocks", i, ours, "bias"), (f"{b}{theirs}.bias",), (d,), _same)]
        for mod, sub, (n_out, n_in) in (("attn", "qkv", (3 * d, d)), ("attn", "proj", (d, d)),
                                        ("mlp", "fc1", (m, d)), ("mlp", "fc2", (d, m))):
            e += [Entry(("blocks", i, mod, sub, "kernel"), (f"{b}{mod}.{sub}.weight",), (n_out, n_in), _torch_linear),
                  Entry(("blocks", i, mod, sub, "bias"), (f"{b}{mod}.{sub}.bias",), (n_out,), _same)]
    return e + [
        Entry(("norm", "scale"), ("norm.weight",), (d,), _same),
        Entry(("norm", "bias"), ("norm.bias",), (d,), _same),
        Entry(("head", "kernel"), ("head.weight",), (k, d), _torch_linear),
        Entry(("head", "bias"), ("head.bias",), (k,), _same),
    ]


def _table_google(c: ViTConfig) -> list[Entry]:
    d, m, k, p, h = c.width, c.mlp, c.classes, c.patch, c.heads
    hd = d // h
    e = [
        Entry(("patch_embed", "kernel"), ("embedding/kernel",), (p, p, 3, d), _same),
        Entry(("patch_embed", "bias"), ("embedding/bias",), (d,), _same),
        Entry(("cls_token",), ("cls",), (1, 1, d), _flat((d,))),
        Entry(("pos_embed",), ("Transformer/posembed_input/pos_embedding",), (1, c.tokens, d), _flat((c.tokens, d))),
    ]
    for i in range(c.depth):
        b = f"Transformer/encoderblock_{i}/"
        mha = f"{b}MultiHeadDotProductAttention_1/"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            e += [Entry(("blocks", i, ours, "scale"), (f"{b}{theirs}/scale",), (d,), _same),
                  Entry(("blocks", i, ours, "bias"), (f"{b}{theirs}/bias",), (d,), _same)]
        qkv = ("query", "key", "value")
        e += [
            Entry(("blocks", i, "attn", "qkv", "kernel"), tuple(f"{mha}{n}/kernel" for n in qkv), (d, h, hd), _heads_in),
            Entry(("blocks", i, "attn", "qkv", "bias"), tuple(f"{mha}{n}/bias" for n in qkv), (h, hd), _heads_bias),
            Entry(("blocks", i, "attn", "proj", "kernel"), (f"{mha}out/kernel",), (h, hd, d), _heads_out),
            Entry(("blocks", i, "attn", "proj", "bias"), (f"{mha}out/bias",), (d,), _same),
        ]
        for sub, dense, (n_in, n_out) in (("fc1", "Dense_0", (d, m)), ("fc2", "Dense_1", (m, d))):
            e += [Entry(("blocks", i, "mlp", sub, "kernel"), (f"{b}MlpBlock_3/{dense}/kernel",), (n_in, n_out), _same),
                  Entry(("blocks", i, "mlp", sub, "bias"), (f"{b}MlpBlock_3/{dense}/bias",), (n_out,), _same)]
    return e + [
        Entry(("norm", "scale"), ("Transformer/encoder_norm/scale",), (d,), _same),
        Entry(("norm", "bias"), ("Transformer/encoder_norm/bias",), (d,), _same),
        Entry(("head", "kernel"), ("head/kernel",), (d, k), _same),
        Entry(("head", "bias"), ("head/bias",), (k,), _same),
    ]


def _table_jaxplain(c: ViTConfig) -> list[Entry]:
    def walk(tree: dict, path: tuple) -> list[Entry]:
        out: list[Entry] = []
        for k, v in tree.items():
            if isinstance(v, dict):
                out += walk(v, (*path, k))
            else:
                out.append(Entry((*path, k), ("/".join(map(str, (*path, k))),), v, _same))
        return out

    return walk(param_shapes(c), ())


TABLES: dict[str, Callable[[ViTConfig], list[Entry]]] = {
    "timm": _table_timm,
    "google": _table_google,
    "jaxplain": _table_jaxplain,
}


def table(config: ViTConfig, layout: str) -> list[Entry]:
    """Every parameter of ``config`` and the file keys (shapes, conversion) it comes from in ``layout``."""
    return TABLES[layout](config)


def layout_of(raw: Mapping[str, np.ndarray]) -> str:
    """``"timm"``, ``"google"`` or ``"jaxplain"`` from a file's keys; other files are refused."""
    if "patch_embed.proj.weight" in raw or any(k.startswith("blocks.") for k in raw):
        return "timm"
    if "embedding/kernel" in raw or any(k.startswith("Transformer/") for k in raw):
        return "google"
    if "patch_embed/kernel" in raw:
        return "jaxplain"
    raise WeightsError(f"unrecognised key layout (first keys: {sorted(raw)[:4]}): not ViT weights")


def _strip_prefix(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Some google checkpoints keep the parameters under ``opt/target/`` (timm's npz loader looks
    for it); a file with only such keys is read without the prefix."""
    prefix = "opt/target/"
    if raw and all(k.startswith(prefix) for k in raw):
        return {k[len(prefix):]: v for k, v in raw.items()}
    return raw


class FileArch(NamedTuple):
    """What a file's shapes say of its network (``None``: not readable from this layout)."""

    patch: int | None
    depth: int
    width: int | None
    heads: int | None
    mlp: int | None
    classes: int | None
    tokens: int | None


_BLOCK_INDEX = {
    "timm": re.compile(r"blocks\.(\d+)\."),
    "google": re.compile(r"Transformer/encoderblock_(\d+)/"),
    "jaxplain": re.compile(r"blocks/(\d+)/"),
}


def file_arch(raw: Mapping[str, np.ndarray], layout: str) -> FileArch:
    """The patch size, depth, width, heads, MLP width, classes and token count a file's arrays imply."""
    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(raw[key].shape) if key in raw else None

    blocks = {int(m.group(1)) for k in raw if (m := _BLOCK_INDEX[layout].match(k))}
    depth = max(blocks) + 1 if blocks else 0
    if layout == "timm":
        pe, fc1, head = shape("patch_embed.proj.weight"), shape("blocks.0.mlp.fc1.weight"), shape("head.weight")
        patch, width = (pe[-1], pe[0]) if pe and len(pe) == 4 else (None, None)
        heads, mlp, classes, pos = None, fc1 and fc1[0], head and head[0], shape("pos_embed")
    elif layout == "google":
        pe, q = shape("embedding/kernel"), shape("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
        fc1, head = shape("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"), shape("head/kernel")
        patch, width = (pe[0], pe[-1]) if pe and len(pe) == 4 else (None, None)
        heads = q[1] if q and len(q) == 3 else None
        mlp, classes, pos = fc1 and fc1[-1], head and head[-1], shape("Transformer/posembed_input/pos_embedding")
    else:
        pe, fc1, head = shape("patch_embed/kernel"), shape("blocks/0/mlp/fc1/kernel"), shape("head/kernel")
        patch, width = (pe[0], pe[-1]) if pe and len(pe) == 4 else (None, None)
        heads, mlp, classes, pos = None, fc1 and fc1[-1], head and head[-1], shape("pos_embed")
    tokens = pos[-2] if pos and len(pos) >= 2 else None
    return FileArch(patch, depth, width, heads, mlp, classes, tokens)


def fit_config(config: ViTConfig, arch: FileArch, origin: str) -> ViTConfig:
    """``config`` with the file's input size and classes; a file of another patch size, depth,
    width, head count or MLP width is refused, naming both."""
    ours = {"patch": config.patch, "depth": config.depth, "width": config.width, "heads": config.heads, "mlp": config.mlp}
    differ = {k: v for k, v in arch._asdict().items() if k in ours and v is not None and v != ours[k]}
    if differ:
        labels = {"patch": "patch size", "depth": "depth", "width": "width", "heads": "heads", "mlp": "MLP width"}
        file = ", ".join(f"{labels[k]} {v}" for k, v in arch._asdict().items() if k in ours and v is not None)
        raise WeightsError(
            f"the {origin} holds a ViT of {file}; {config.name} is a ViT of {config.describe()} "
            f"(it differs in {', '.join(labels[k] for k in differ)})"
        )
    changes: dict[str, int] = {}
    if arch.classes is not None:
        changes["classes"] = arch.classes
    if arch.tokens is not None:
        grid = int(round(np.sqrt(arch.tokens - 1)))
        if grid * grid + 1 != arch.tokens:
            raise WeightsError(f"the {origin} has {arch.tokens} position embeddings: not a square grid plus a class token")
        changes["image_size"] = grid * config.patch
    return dataclasses.replace(config, **changes)


def _set(tree: dict, path: tuple, value: np.ndarray) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def convert(raw: Mapping[str, np.ndarray], config: ViTConfig, layout: str, origin: str = "file") -> dict[str, Any]:
    """Map a file's arrays onto ``config``'s parameters, refusing anything partial or extra."""
    params: dict[str, Any] = {}
    used: set[str] = set()
    for e in table(config, layout):
        name = ".".join(map(str, e.path))
        arrays = []
        for key in e.keys:
            if key not in raw:
                raise WeightsError(f"{config.name} parameter {name}: the {origin} has no '{key}'")
            a = np.asarray(raw[key])
            if a.shape != e.shape:
                raise WeightsError(
                    f"{config.name} parameter {name}: '{key}' has shape {a.shape} in the {origin}, "
                    f"the model expects {e.shape}"
                )
            arrays.append(a)
            used.add(key)
        _set(params, e.path, e.convert(*arrays))
    extra = set(raw) - used
    if extra:
        hint = (" (a pre-logits representation layer: an ImageNet-21k pre-training checkpoint, not a "
                "fine-tuned classifier)" if any("pre_logits" in k for k in extra) else "")
        raise WeightsError(
            f"{config.name}: unexpected keys in the {origin}: {', '.join(sorted(extra)[:6])}"
            f"{' ...' if len(extra) > 6 else ''}{hint}"
        )
    return params


def source_of(raw: _weights.RawWeights, layout: str) -> str:
    """The weight source a file's layout implies (our cache records it in its metadata)."""
    if layout == "jaxplain":
        return raw.source if raw.source in SOURCES else "timm"
    return layout


def load_raw(raw: _weights.RawWeights, config: ViTConfig, origin: str) -> tuple[ViTConfig, dict[str, Any], str]:
    """``(config fitted to the file, params, source)`` for a file's contents."""
    arrays = _strip_prefix(raw.arrays)
    layout = layout_of(arrays)
    config = fit_config(config, file_arch(arrays, layout), origin)
    return config, convert(arrays, config, layout, origin), source_of(raw, layout)


# ---------------------------------------------------------------- downloads and the loaders


# The published ImageNet-1k files. Their digests are not recorded yet (this code was written
# without network access): until they are, a download is not verified and a warning says so.
PUBLISHED: dict[tuple[str, str], _weights.Published] = {
    ("vit_b16", "timm"): _weights.Published(
        "vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors",
        "https://huggingface.co/timm/vit_base_patch16_224.augreg2_in21k_ft_in1k/resolve/main/model.safetensors",
        "sha256", ""),
    ("vit_b16", "google"): _weights.Published(
        "ViT-B_16-224.npz",
        "https://storage.googleapis.com/vit_models/imagenet21k+imagenet2012/ViT-B_16-224.npz",
        "sha256", ""),
}


def published(name: str, source: str) -> _weights.Published:
    if (name, source) not in PUBLISHED:
        have = ", ".join(f"{n} ({s})" for n, s in PUBLISHED)
        raise WeightsError(f"no published ImageNet weights for {name} from {source}; available: {have}")
    return PUBLISHED[(name, source)]


def cache_path(config: ViTConfig, source: str) -> Path:
    """Where the conversion of ``source``'s published ImageNet weights for ``config`` is kept."""
    return _weights.home() / "converted" / f"{config.name}-{source}-imagenet.safetensors"


def vit(
    config: ViTConfig = VIT_B16,
    weights: str | os.PathLike | None = None,
    source: str | None = None,
    *,
    seed: int = 0,
    cache: bool = True,
) -> Model:
    """A ViT of ``config`` with the weights asked for (see ``vit_b16``)."""
    if source is not None and source not in SOURCES:
        raise InputError(f"unknown weight source {source!r}; expected one of {SOURCES}")
    if weights is None:
        return build(config, random_params(config, seed), source=source or "timm")
    if weights != "imagenet":  # a local file: read once, converted in memory, never cached
        raw = _weights.read_raw(weights)
        config, params, file_source = load_raw(raw, config, f"file {os.path.basename(weights)}")
        return build(config, params, source=source or file_source)
    source = source or "timm"
    cached = cache_path(config, source)
    if cache and cached.exists():
        raw = _weights.read_raw(cached)
        config, params, _ = load_raw(raw, config, f"cached file {cached}")
        return build(config, params, source=source)
    pub = published(config.name, source)
    if not pub.digest:
        warnings.warn(f"no published {pub.algo} is recorded for {pub.filename}: the download is not verified",
                      stacklevel=2)
    path = _weights.fetch(pub)
    config, params, _ = load_raw(_weights.read_raw(path), config, f"file {pub.filename}")
    if cache:
        _weights.save_params(params, cached, source)
    return build(config, params, source=source)


def vit_b16(weights: str | os.PathLike | None = None, source: str | None = None, **kwargs: Any) -> Model:
    """ViT-B/16 (patch 16, 12 blocks, width 768, 12 heads, MLP 3072, 1000 classes).

    - ``weights=None``: seeded random weights (``random_params``).
    - ``weights="imagenet"``: the published file of ``source``: ``"timm"`` (the default,
      ``vit_base_patch16_224.augreg2_in21k_ft_in1k``, exact GELU, timm's resize 248 bicubic +
      centre crop 224) or ``"google"`` (google-research's ``ViT-B_16-224.npz``, tanh GELU, a
      plain resize of the whole picture); downloaded, converted and cached under ``$JAXPLAIN_HOME``.
    - ``weights=path``: a timm safetensors (or ``.pth``), a google ``.npz`` or our cache file,
      its format read from its bytes and its layout from its keys; the file sets the input size
      and the classes; one of another patch size, depth or width is refused.
    """
    return vit(VIT_B16, weights, source, **kwargs)
