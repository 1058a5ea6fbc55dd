"""A Flax NNX ResNet-50 (bottleneck blocks 3-4-6-3) that satisfies the Model contract.

Layer names follow torchvision's module paths:

- ``conv1`` (after its batch norm and ReLU), ``maxpool``;
- inside block ``layer{s}.{b}``: ``.conv1``, ``.conv2`` (after batch norm and ReLU), ``.conv3``
  (after batch norm, before the residual add), ``.downsample`` (the projection shortcut, first
  block of each stage);
- ``layer{s}.{b}``: the block's output after the residual add and its ReLU;
- ``layer1`` ... ``layer4``: the stage outputs (the same values as their last block's; what
  Grad-CAM on ``layer4`` means in Captum and pytorch-grad-cam; a tap on either is added once);
- ``avgpool`` (global average, ``[2048]``) and ``fc`` (the logits).

Batch norm is folded into the convolutions when weights are loaded (inference): every conv here
has a bias and no normalisation. Two styles:

- ``"torchvision"`` (also timm's ``resnet50``, "v1.5"): a stage's stride 2 is in the 3x3 conv;
  max-pool padding is ``-inf``.
- ``"keras"`` (Keras applications, the original Caffe model): the stride 2 is in the first 1x1
  conv; max-pool padding is zero (``ZeroPadding2D``), which only matters for gradient ties.

Any input from 32x32 up works (global average pool).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import traversals

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, Model, PyTree, Relu

from . import imagenet
from .layers import max_pool_3x3s2, nnx_apply, recorder

STYLES = ("torchvision", "keras")
EPS = {"torchvision": 1e-5, "keras": 1.001e-5}  # batch norm epsilon of each framework's ResNet
DEPTHS = {"resnet50": (3, 4, 6, 3)}

Params = dict[str, dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """The shape of a bottleneck ResNet: ``blocks[s]`` blocks of width ``widths[s]`` (outputs
    ``expansion`` times wider) per stage; with ``include_top``, ``fc`` to ``classes``."""

    blocks: tuple[int, ...] = DEPTHS["resnet50"]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: int = 64
    expansion: int = 4
    classes: int = 1000
    include_top: bool = True
    style: str = "torchvision"
    name: str = "resnet50"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise InputError(f"unknown ResNet style {self.style!r}; expected one of {STYLES}")
        if len(self.blocks) != len(self.widths):
            raise InputError("blocks and widths must have the same length")

    @property
    def eps(self) -> float:
        return EPS[self.style]

    def block_names(self) -> list[tuple[int, int, str]]:
        """``(stage, block, "layer{s}.{b}")`` in forward order (stages from 1, blocks from 0)."""
        return [(s, b, f"layer{s}.{b}") for s, n in enumerate(self.blocks, 1) for b in range(n)]

    @property
    def layers(self) -> tuple[str, ...]:
        names = ["conv1", "maxpool"]
        for s, n in enumerate(self.blocks, 1):
            for b in range(n):
                p = f"layer{s}.{b}"
                names += [f"{p}.conv1", f"{p}.conv2", f"{p}.conv3"]
                names += [f"{p}.downsample"] if b == 0 else []
                names.append(p)
            names.append(f"layer{s}")
        if self.include_top:
            names += ["avgpool", "fc"]
        return tuple(names)

    @property
    def cam_layer(self) -> str:
        return f"layer{len(self.blocks)}"

    @property
    def min_size(self) -> int:
        return 32

    def conv_shapes(self) -> dict[str, tuple[tuple[int, int, int, int], int]]:
        """``layer -> ((kh, kw, C_in, C_out), stride)`` of every conv, in forward order."""
        shapes = {"conv1": ((7, 7, 3, self.stem), 2)}
        cin = self.stem
        for s, b, p in self.block_names():
            width = self.widths[s - 1]
            stride = 2 if b == 0 and s > 1 else 1
            first, middle = (stride, 1) if self.style == "keras" else (1, stride)
            shapes[f"{p}.conv1"] = ((1, 1, cin, width), first)
            shapes[f"{p}.conv2"] = ((3, 3, width, width), middle)
            shapes[f"{p}.conv3"] = ((1, 1, width, width * self.expansion), 1)
            if b == 0:
                shapes[f"{p}.downsample"] = ((1, 1, cin, width * self.expansion), stride)
            cin = width * self.expansion
        return shapes

    @property
    def features(self) -> int:
        return self.widths[-1] * self.expansion


def _conv(shape: tuple[int, int, int, int], stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    k = shape[0]
    pad = ((k // 2, k // 2),) * 2  # torch's symmetric padding (XLA's "SAME" is not, at stride 2)
    return nnx.Conv(shape[2], shape[3], (k, k), strides=stride, padding=pad, rngs=rngs)


class Bottleneck(nnx.Module):
    """conv1 (1x1) -> conv2 (3x3) -> conv3 (1x1), plus the (projected) shortcut; BN folded."""

    def __init__(self, shapes: Mapping[str, tuple], prefix: str, *, rngs: nnx.Rngs):
        for part in ("conv1", "conv2", "conv3", "downsample"):
            if f"{prefix}.{part}" in shapes:
                setattr(self, part, _conv(*shapes[f"{prefix}.{part}"], rngs))
        self.has_downsample = f"{prefix}.downsample" in shapes

    def __call__(self, h: Array, out, relu: Relu, prefix: str) -> Array:
        y = out(f"{prefix}.conv1", relu(self.conv1(h)))
        y = out(f"{prefix}.conv2", relu(self.conv2(y)))
        y = out(f"{prefix}.conv3", self.conv3(y))
        shortcut = out(f"{prefix}.downsample", self.downsample(h)) if self.has_downsample else h
        return out(prefix, relu(y + shortcut))


class ResNet(nnx.Module):
    """The network; ``__call__(x [H, W, 3], taps, relu) -> (logits, acts)`` on one image.

    Only its structure is used (``abstract_state``): weights come from ``random_params`` or a
    loader, as a flat dict ``layer -> {"kernel", "bias"}`` (see ``make_apply``).
    """

    def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        shapes = config.conv_shapes()
        self.conv1 = _conv(*shapes["conv1"], rngs)
        for s, n in enumerate(config.blocks, 1):
            blocks = [Bottleneck(shapes, f"layer{s}.{b}", rngs=rngs) for b in range(n)]
            setattr(self, f"layer{s}", nnx.List(blocks))
        if config.include_top:
            self.fc = nnx.Linear(config.features, config.classes, rngs=rngs)

    def __call__(
        self, x: Array, taps: Mapping[str, Array] | None = None, relu: Relu | None = None
    ) -> tuple[Array, dict[str, Array]]:
        cfg, relu = self.config, relu or jax.nn.relu
        if min(x.shape[-3:-1]) < cfg.min_size:
            raise InputError(f"{cfg.name} needs an input of at least {cfg.min_size}x{cfg.min_size}, "
                             f"got {x.shape[-3]}x{x.shape[-2]}")
        out, acts = recorder(taps)

        h = out("conv1", relu(self.conv1(x)))
        h = out("maxpool", max_pool_3x3s2(h, 0.0 if cfg.style == "keras" else -np.inf))
        for s, n in enumerate(cfg.blocks, 1):
            stage = getattr(self, f"layer{s}")
            for b in range(n):
                h = stage[b](h, out, relu, f"layer{s}.{b}")
            h = out(f"layer{s}", h)
        if not cfg.include_top:
            return h, acts
        h = out("avgpool", jnp.mean(h, axis=(-3, -2)))
        return out("fc", self.fc(h)), acts


def abstract_state(config: ResNetConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph and the parameter shapes of ``config``, without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: ResNet(config, rngs=nnx.Rngs(0))))


def param_shapes(config: ResNetConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """``layer -> {"kernel": shape, "bias": shape}`` in forward order (folded convs
    ``[kh, kw, C_in, C_out]``, ``fc`` ``[C, classes]``): the keys ``apply`` reads."""
    shapes = {k: {"kernel": s, "bias": s[-1:]} for k, (s, _) in config.conv_shapes().items()}
    if config.include_top:
        shapes["fc"] = {"kernel": (config.features, config.classes), "bias": (config.classes,)}
    return shapes


def fold_bn(
    kernel: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
    mean: np.ndarray, var: np.ndarray, eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A conv followed by inference batch norm as one conv: ``kernel [..., C_out]`` scaled by
    ``gamma / sqrt(var + eps)``, bias ``beta + (bias - mean) * gamma / sqrt(var + eps)``.

    Computed in float64, returned as float32 (new arrays, never views of the inputs).
    """
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    b = np.zeros_like(scale) if bias is None else np.asarray(bias, np.float64)
    folded_bias = np.asarray(beta, np.float64) + (b - np.asarray(mean, np.float64)) * scale
    return (np.asarray(kernel, np.float64) * scale).astype(np.float32), folded_bias.astype(np.float32)


def random_raw(config: ResNetConfig, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Seeded random unfolded weights: ``layer -> {"kernel", "gamma", "beta", "mean", "var"}``
    for convs (``[kh, kw, C_in, C_out]``, He normal with fan-out as torchvision, no conv bias),
    ``{"kernel", "bias"}`` for ``fc``. Batch-norm statistics are random and not the identity:
    gamma ~ U(0.5, 1), beta, mean ~ N(0, 0.1), var ~ U(0.5, 1.5); ``fc`` normal(0, 0.01), bias
    N(0, 0.1). Drawn layer by layer in forward order with NumPy's ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    raw: dict[str, dict[str, np.ndarray]] = {}
    for name, (shape, _) in config.conv_shapes().items():
        kh, kw, _, cout = shape
        c = (cout,)
        raw[name] = {
            "kernel": rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / (kh * kw * cout))),
            "gamma": rng.uniform(0.5, 1.0, c).astype(np.float32),
            "beta": rng.normal(0, 0.1, c).astype(np.float32),
            "mean": rng.normal(0, 0.1, c).astype(np.float32),
            "var": rng.uniform(0.5, 1.5, c).astype(np.float32),
        }
    if config.include_top:
        raw["fc"] = {
            "kernel": rng.normal(0, 0.01, (config.features, config.classes)).astype(np.float32),
            "bias": rng.normal(0, 0.1, (config.classes,)).astype(np.float32),
        }
    return raw


def fold_params(raw: Mapping[str, Mapping[str, np.ndarray]], eps: float) -> Params:
    """``random_raw``'s layout folded: every conv ``{"kernel", "bias"}`` (``raw`` convs may carry
    their own ``"bias"``, as Keras' do)."""
    params: Params = {}
    for name, p in raw.items():
        if "gamma" in p:
            k, b = fold_bn(p["kernel"], p.get("bias"), p["gamma"], p["beta"], p["mean"], p["var"], eps)
            params[name] = {"kernel": k, "bias": b}
        else:
            params[name] = {"kernel": np.array(p["kernel"], np.float32), "bias": np.array(p["bias"], np.float32)}
    return params


def random_params(config: ResNetConfig, seed: int = 0) -> Params:
    """Seeded random weights with random batch-norm statistics, folded (see ``random_raw``)."""
    return fold_params(random_raw(config, seed), config.eps)


def make_apply(config: ResNetConfig) -> ApplyFn:
    """The pure ``apply(params, x, taps=None, relu=None)`` of a ResNet of this config; ``params``
    is flat, ``{"conv1": {"kernel", "bias"}, "layer1.0.conv1": ..., "fc": ...}``."""
    nested = nnx_apply(*abstract_state(config))

    def apply(
        params: PyTree, x: Array, taps: Mapping[str, Array] | None = None, relu: Relu | None = None
    ) -> tuple[Array, dict[str, Array]]:
        tree = traversals.unflatten_mapping({(*layer.split("."), p): a for layer, ps in params.items() for p, a in ps.items()})
        return nested(tree, x, taps, relu)

    return apply


@functools.cache
def _apply(config: ResNetConfig):
    return make_apply(config)


def build(config: ResNetConfig, params: dict, *, source: str, resize_ratio: float = 256 / 224) -> Model:
    """A ResNet ``Model`` from a configuration and its folded parameters (flat dict ``layer ->
    param``), with ``source``'s preprocessing, resize and channel order; ``resize_ratio``:
    torchvision's resize over crop (256/224; IMAGENET1K_V2: 232/224)."""
    resize, box = imagenet.RESIZE[source], imagenet.INPUT_BOX[source]
    if source == "torchvision" and resize_ratio != 256 / 224:
        resize = functools.partial(imagenet.resize_torchvision, ratio=resize_ratio)
        box = functools.partial(imagenet.box_torchvision, ratio=resize_ratio)
    return Model(
        apply=_apply(config),
        params=jax.device_put(params),
        layers=config.layers,
        preprocess=imagenet.PREPROCESS[source],
        resize=resize,
        input_box=box,
        channel_order=imagenet.CHANNEL_ORDER[source],
        input_size=None,
        name=config.name,
        source=source,
        min_size=config.min_size,
        cam_layer=config.cam_layer,
    )
