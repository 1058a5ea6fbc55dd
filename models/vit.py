"""A Flax NNX Vision Transformer (ViT-B/16 and its relatives as configurations of one class) that
satisfies the Model contract, and its loaders: timm safetensors and google-research's ``.npz``.

Layer names follow timm:

- ``patch_embed``: the patch tokens after the projection, ``[grid**2, D]`` (before the class token
  and the position embeddings are added);
- ``blocks.{i}.attn``: block ``i``'s attention probabilities ``[heads, T, T]`` (``T = grid**2 + 1``,
  the class token first); a tap there is added to the probabilities *before* they weight the
  values, so ``d logit / d tap`` is the gradient with respect to the attention (what
  gradient x attention methods need);
- ``blocks.{i}``: the block's output tokens ``[T, D]``, class token included;
- ``norm``: the final LayerNorm's output ``[T, D]``; ``head``: the logits ``[K]`` (read from the
  class token).

The Model declares these facts for the kernel: ``token_grid`` (the patch grid), ``token_layers``
(``patch_embed``, every ``blocks.{i}`` and ``norm``, with 0, 1 and 1 leading class tokens), so
``explain`` shows CAM and layer methods those layers as ``[grid, grid, D]`` (``jaxplain.engine.tokens``);
``attention_layers`` (every ``blocks.{i}.attn``, never spatial), read by ``attention_rollout`` and
``transformer_attribution``; ``cam_layer``, the default CAM layer, ``blocks.{depth-2}``: the last
block's *input* (as pytorch-grad-cam's ViT recipe takes ``blocks[-1].norm1``). The last block's
output does not do: the head reads only the class token and LayerNorm is per token, so the
gradient of every logit with respect to ``blocks.{depth-1}``'s patch tokens (and ``norm``'s) is
exactly zero, and so is any gradient-based CAM there.

Pre-norm blocks ``h + attn(norm1(h))``, ``h + mlp(norm2(h))`` with LayerNorm epsilon 1e-6 (timm's
ViT and flax's LayerNorm both), attention scaled by ``head_dim ** -0.5``. The MLP's GELU is the exact
(erf) form for timm's weights (torch's ``nn.GELU()``) and the tanh approximation for the original
google-research weights (their flax ``nn.gelu`` is ``jax.nn.gelu(approximate=True)``):
``ViTConfig.gelu_approximate``, set from the weights' source.

There is no ReLU in a ViT: ``relu=None`` (or ``jax.nn.relu``, the identity swap) is accepted and
changes nothing; any other rectifier (guided backprop, deconvnet, guided Grad-CAM, the redirected
ReLU of feature visualisation) raises an ``InputError``: their backward rules are defined for ReLU
networks and have no GELU counterpart to substitute.

Weight layouts (every key listed in ``table`` and checked; missing, extra or misshapen keys and
files of another patch size, depth, width, head count or MLP width raise a ``WeightsError``):

- ``"timm"``: ``vit_base_patch16_224.augreg2_in21k_ft_in1k``'s safetensors (torch module names,
  ``Linear`` weights ``[out, in]``, a fused ``qkv`` ordered query, key, value then head);
- ``"google"``: google-research/vision_transformer's ``ViT-B_16*.npz`` (pre-Linen flax names,
  ``MultiHeadDotProductAttention_1/{query,key,value}/kernel [D, heads, head_dim]``);
- ``"jaxplain"``: our cache, ``nnx``'s own parameter paths joined with ``/``.

A local file's position embedding sets the input size (``ViT-B_16.npz`` is the 384x384 fine-tune,
``ViT-B_16-224.npz`` the 224x224 one) and its head the number of classes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from jaxplain.errors import InputError, WeightsError
from jaxplain.types import ApplyFn, Array, Model, PyTree, Relu

from . import imagenet, weights as _weights
from .layers import nnx_apply, recorder

SOURCES = ("timm", "google")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """The shape of a ViT: ``patch`` x ``patch`` patches of an ``image_size`` square picture,
    ``depth`` blocks of ``width`` channels, ``heads`` attention heads, MLPs of width ``mlp``,
    ``classes`` outputs; ``gelu_approximate``: the tanh form of GELU (google's weights)."""

    patch: int = 16
    depth: int = 12
    width: int = 768
    heads: int = 12
    mlp: int = 3072
    classes: int = 1000
    image_size: int = 224
    gelu_approximate: bool = False
    eps: float = 1e-6
    name: str = "vit_b16"

    def __post_init__(self) -> None:
        for field in ("patch", "depth", "width", "heads", "mlp", "classes", "image_size"):
            if getattr(self, field) < 1:
                raise InputError(f"ViTConfig.{field} must be positive, got {getattr(self, field)}")
        if self.width % self.heads:
            raise InputError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.image_size % self.patch:
            raise InputError(f"image_size {self.image_size} is not a multiple of the patch size {self.patch}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def tokens(self) -> int:
        """Patches plus the class token."""
        return self.grid**2 + 1

    @property
    def layers(self) -> tuple[str, ...]:
        names = ["patch_embed"]
        for i in range(self.depth):
            names += [f"blocks.{i}.attn", f"blocks.{i}"]
        return (*names, "norm", "head")

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def describe(self) -> str:
        return (f"patch size {self.patch}, depth {self.depth}, width {self.width}, {self.heads} heads, "
                f"MLP width {self.mlp}")


VIT_B16 = ViTConfig()


# ---------------------------------------------------------------- the network


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis (two-pass variance, as torch's), statistics in at least
    float32 (a bfloat16 model keeps them exact), the result in the input's dtype."""

    def __init__(self, width: int, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((width,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((width,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        wide = x.astype(jnp.float64 if x.dtype == jnp.float64 else jnp.float32)
        mu = jnp.mean(wide, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(wide - mu), axis=-1, keepdims=True)
        y = ((wide - mu) * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return y * self.scale[...] + self.bias[...]


class Attention(nnx.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm's ``Attention``)."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.proj = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, y: Array, out: Callable[[str, Array], Array], name: str) -> Array:
        """``[T, D] -> [T, D]``; the probabilities ``[heads, T, T]`` pass through ``out(name, .)``."""
        t, d = y.shape
        hd = d // self.heads
        qkv = self.qkv(y).reshape(t, 3, self.heads, hd)  # output features ordered (q|k|v, head, dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        scores = jnp.einsum("qhd,khd->hqk", q, k) * hd**-0.5
        probs = out(name, jax.nn.softmax(scores, axis=-1))
        return self.proj(jnp.einsum("hqk,khd->qhd", probs, v).reshape(t, d))


class Mlp(nnx.Module):
    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, rngs=rngs)

    def __call__(self, y: Array, gelu: Callable[[Array], Array]) -> Array:
        return self.fc2(gelu(self.fc1(y)))


class Block(nnx.Module):
    """A pre-norm transformer block: ``h + attn(norm1(h))``, then ``h + mlp(norm2(h))``."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(config.width, config.eps)
        self.attn = Attention(config.width, config.heads, rngs=rngs)
        self.norm2 = LayerNorm(config.width, config.eps)
        self.mlp = Mlp(config.width, config.mlp, rngs=rngs)

    def __call__(self, h: Array, out: Callable[[str, Array], Array], name: str,
                 gelu: Callable[[Array], Array]) -> Array:
        h = h + self.attn(self.norm1(h), out, f"{name}.attn")
        h = h + self.mlp(self.norm2(h), gelu)
        return out(name, h)


def check_relu(relu: Relu | None, name: str) -> None:
    """A ViT has no ReLU: only ``None`` or ``jax.nn.relu`` itself (no swap) are accepted."""
    if relu is not None and relu is not jax.nn.relu:
        raise InputError(
            f"{name} has no ReLU to swap (its MLPs use GELU): guided backprop, deconvnet, guided "
            f"Grad-CAM and other rectifier swaps do not apply to a ViT; use gradients, integrated "
            f"gradients or the attention-based methods"
        )


class ViT(nnx.Module):
    """The network; ``__call__(x [H, W, 3], taps, relu) -> (logits, acts)`` on one image.

    Only its structure is used (``abstract_state``); seeded random weights come from ``random_params``.
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        p, d = config.patch, config.width
        self.patch_embed = nnx.Conv(3, d, (p, p), strides=(p, p), padding="VALID", rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.pos_embed = nnx.Param(jnp.zeros((config.tokens, d), jnp.float32))
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
        self.norm = LayerNorm(d, config.eps)
        self.head = nnx.Linear(d, config.classes, rngs=rngs)

    def __call__(
        self, x: Array, taps: Mapping[str, Array] | None = None, relu: Relu | None = None
    ) -> tuple[Array, dict[str, Array]]:
        cfg = self.config
        check_relu(relu, cfg.name)
        if x.shape[-3:] != (cfg.image_size, cfg.image_size, 3):
            raise InputError(
                f"{cfg.name} needs one {cfg.image_size}x{cfg.image_size}x3 image (its position "
                f"embeddings are for a {cfg.grid}x{cfg.grid} grid of patches), got shape {x.shape}"
            )
        out, acts = recorder(taps)

        gelu = functools.partial(jax.nn.gelu, approximate=cfg.gelu_approximate)
        h = out("patch_embed", self.patch_embed(x).reshape(cfg.grid**2, cfg.width))
        h = jnp.concatenate([self.cls_token[...][None], h], axis=0) + self.pos_embed[...]
        for i, block in enumerate(self.blocks):
            h = block(h, out, f"blocks.{i}", gelu)
        h = out("norm", self.norm(h))
        return out("head", self.head(h[0])), acts


def abstract_state(config: ViTConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph and the parameter shapes of ``config``, without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0))))


def _block_shapes(c: ViTConfig) -> dict[str, Any]:
    d, m = c.width, c.mlp
    ln = {"scale": (d,), "bias": (d,)}
    return {
        "norm1": dict(ln),
        "attn": {"qkv": {"kernel": (d, 3 * d), "bias": (3 * d,)}, "proj": {"kernel": (d, d), "bias": (d,)}},
        "norm2": dict(ln),
        "mlp": {"fc1": {"kernel": (d, m), "bias": (m,)}, "fc2": {"kernel": (m, d), "bias": (d,)}},
    }


def param_shapes(config: ViTConfig) -> dict[str, Any]:
    """The nested dict of parameter shapes ``apply`` reads (``nnx``'s paths, blocks keyed by int):
    conv kernel ``[p, p, 3, D]``, dense kernels ``[in, out]``, LayerNorm ``scale``/``bias``."""
    c = config
    return {
        "patch_embed": {"kernel": (c.patch, c.patch, 3, c.width), "bias": (c.width,)},
        "cls_token": (c.width,),
        "pos_embed": (c.tokens, c.width),
        "blocks": {i: _block_shapes(c) for i in range(c.depth)},
        "norm": {"scale": (c.width,), "bias": (c.width,)},
        "head": {"kernel": (c.width, c.classes), "bias": (c.classes,)},
    }


def random_params(config: ViTConfig, seed: int = 0) -> dict[str, Any]:
    """Seeded random float32 weights, drawn with NumPy's ``default_rng(seed)`` in ``param_shapes``
    order: kernels LeCun normal (std ``1/sqrt(fan_in)``, flax's ``Dense`` default, which keeps
    attention logits O(1) so the probabilities are far from uniform), LayerNorm scales
    ``1 + N(0, 0.1)``, every bias, the class token and the position embeddings ``N(0, 0.1)``: no
    zero bias and no identity LayerNorm, so tests see every parameter."""
    rng = np.random.default_rng(seed)

    def draw(name: str, shape: Any) -> Any:
        if isinstance(shape, dict):
            return {k: draw(k, s) for k, s in shape.items()}
        a = rng.standard_normal(shape, dtype=np.float32)
        if name == "kernel":
            return a * np.float32(1 / np.sqrt(np.prod(shape[:-1])))
        return a * np.float32(0.1) + np.float32(name == "scale")

    return {k: draw(k, s) for k, s in param_shapes(config).items()}


def make_apply(config: ViTConfig) -> ApplyFn:
    """The pure ``apply(params, x, taps=None, relu=None)`` of a ViT of this config."""
    return nnx_apply(*abstract_state(config))


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


# ---------------------------------------------------------------- sources, downloads, the Model


# How each source's weights expect a picture: timm's eval transform for its ViTs (crop_pct 0.9,
# bicubic: shorter side to 248, centre crop 224); vit_jax's ``tf.image.resize`` of the whole picture
# to the input size (bilinear; TF does not antialias, PIL's bilinear does when shrinking).
RESIZE: dict[str, Callable[[Image.Image, tuple[int, int]], Image.Image] | None] = {
    "timm": functools.partial(imagenet.resize_timm, crop_pct=0.9, resample=Image.Resampling.BICUBIC),
    "google": None,
}
INPUT_BOX: dict[str, Callable[[tuple[int, int], tuple[int, int]], tuple[float, float, float, float]] | None] = {
    "timm": functools.partial(imagenet.box_timm, crop_pct=0.9),
    "google": None,
}

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


@functools.cache
def _apply(config: ViTConfig):
    return make_apply(config)


def build(config: ViTConfig, params: dict, *, source: str) -> Model:
    """A ``Model`` from a configuration and its parameters, with ``source``'s GELU, preprocessing
    (mean = std = 0.5 on [0, 1] for both), resize and the region of the picture it keeps."""
    config = dataclasses.replace(config, gelu_approximate=source == "google")
    return Model(
        apply=_apply(config),
        params=jax.device_put(params),
        layers=config.layers,
        preprocess=imagenet.preprocess_inception,
        resize=RESIZE[source],
        input_box=INPUT_BOX[source],
        channel_order="RGB",
        input_size=config.input_size,
        name=config.name,
        source=source,
        min_size=config.image_size,
        cam_layer=f"blocks.{config.depth - 2}" if config.depth > 1 else "patch_embed",  # see the module docstring
        token_grid=(config.grid, config.grid),
        token_layers={"patch_embed": 0, **{f"blocks.{i}": 1 for i in range(config.depth)}, "norm": 1},
        attention_layers=tuple(f"blocks.{i}.attn" for i in range(config.depth)),
    )


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
