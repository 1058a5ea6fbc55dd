"""A Flax NNX Vision Transformer (ViT-B/16 and its relatives as configurations of one class) that
satisfies the Model contract; its loaders (timm safetensors, google-research's ``.npz``) are in
``vit_weights``.

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
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, Model, Relu

from . import imagenet
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


def gelu(x: Array) -> Array:
    """The exact GELU ``x * Phi(x) = x (1 + erf(x / sqrt 2)) / 2`` (torch's ``nn.GELU()``, the same
    formula), elementwise. ``jax.nn.gelu(approximate=False)`` computes the same function through
    ``erfc``, whose XLA:CPU lowering (two rational approximations and an ``exp`` per element) is
    several times slower than ``erf``'s single one."""
    return x * (0.5 + 0.5 * jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


def patchify(x: Array, kernel: Array, bias: Array) -> Array:
    """``x [H, W, C]``, ``kernel [p, p, C, D]``, ``bias [D] -> [(H/p) * (W/p), D]``: the stride-``p``,
    ``p`` x ``p`` convolution of non-overlapping patches as one matmul of the flattened patches
    (the same sums; XLA:CPU's gradient of the strided convolution with respect to its 3-channel
    input was 20 times slower than its forward pass)."""
    p, c, d = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    gh, gw = x.shape[0] // p, x.shape[1] // p
    patches = x.reshape(gh, p, gw, p, c).transpose(0, 2, 1, 3, 4).reshape(gh * gw, p * p * c)
    return patches @ kernel.reshape(p * p * c, d) + bias


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

        act = functools.partial(jax.nn.gelu, approximate=True) if cfg.gelu_approximate else gelu
        h = out("patch_embed", patchify(x, self.patch_embed.kernel[...], self.patch_embed.bias[...]))
        h = jnp.concatenate([self.cls_token[...][None], h], axis=0) + self.pos_embed[...]
        for i, block in enumerate(self.blocks):
            h = block(h, out, f"blocks.{i}", act)
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


# ---------------------------------------------------------------- sources and the Model


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
