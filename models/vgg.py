"""A Flax NNX VGG (11/13/16/19 as configurations of one class) that satisfies the Model contract.

Layer names follow Keras: ``block1_conv1`` ... ``block5_pool``, ``flatten``, ``fc1``, ``fc2``,
``predictions``. Conv layers' outputs are taken after their ReLU, as in Keras. Two heads:

- ``"keras"``: flatten the ``grid x grid x C`` map (the input must then be ``grid * 2**blocks``).
- ``"torchvision"``: adaptive average pool to ``grid x grid`` first, so any input size works.

Dropout is inference-only and therefore absent.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, Model, PyTree, Relu

from . import imagenet
from .layers import adaptive_avg_pool, max_pool_2x2, nnx_apply, recorder

BLOCKS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
HEADS = ("keras", "torchvision")


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """The shape of a VGG network.

    ``blocks[i]`` conv layers of width ``widths[i]`` then a 2x2 max pool, for each block;
    with ``include_top``, ``fc1``/``fc2`` of width ``fc`` and ``predictions`` of ``classes``.
    """

    blocks: tuple[int, ...] = BLOCKS["vgg16"]
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    fc: int = 4096
    classes: int = 1000
    include_top: bool = True
    head: str = "keras"
    grid: int = 7
    name: str = "vgg16"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise InputError(f"unknown head {self.head!r}; expected one of {HEADS}")
        if len(self.blocks) != len(self.widths):
            raise InputError("blocks and widths must have the same length")

    @property
    def conv_names(self) -> tuple[str, ...]:
        return tuple(
            f"block{b}_conv{i}" for b, n in enumerate(self.blocks, 1) for i in range(1, n + 1)
        )

    @property
    def layers(self) -> tuple[str, ...]:
        names = []
        for b, n in enumerate(self.blocks, 1):
            names += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
        if self.include_top:
            names += ["flatten", "fc1", "fc2", "predictions"]
        return tuple(names)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The only input size the Keras head accepts; ``None`` (any) otherwise."""
        if self.include_top and self.head == "keras":
            side = self.grid * 2 ** len(self.blocks)
            return (side, side)
        return None

    @property
    def min_size(self) -> int:
        return 2 ** len(self.blocks)


class VGG(nnx.Module):
    """The network; ``__call__(x [H, W, 3], taps, relu) -> (logits, acts)`` on one image.

    Only its structure is used (``abstract_state``): the values its constructor draws are never
    kept; seeded random weights come from ``random_params``.
    """

    def __init__(self, config: VGGConfig, *, rngs: nnx.Rngs):
        self.config = config
        cin = 3
        for (b, n), width in zip(enumerate(config.blocks, 1), config.widths):
            for i in range(1, n + 1):
                conv = nnx.Conv(cin, width, (3, 3), padding="SAME", rngs=rngs)
                setattr(self, f"block{b}_conv{i}", conv)
                cin = width
        if config.include_top:
            flat = config.grid * config.grid * cin
            self.fc1 = nnx.Linear(flat, config.fc, rngs=rngs)
            self.fc2 = nnx.Linear(config.fc, config.fc, rngs=rngs)
            self.predictions = nnx.Linear(config.fc, config.classes, rngs=rngs)

    def __call__(
        self, x: Array, taps: Mapping[str, Array] | None = None, relu: Relu | None = None
    ) -> tuple[Array, dict[str, Array]]:
        cfg, relu = self.config, relu or jax.nn.relu
        out, acts = recorder(taps)

        h = x
        for b, n in enumerate(cfg.blocks, 1):
            for i in range(1, n + 1):
                name = f"block{b}_conv{i}"
                h = out(name, relu(getattr(self, name)(h)))
            h = out(f"block{b}_pool", max_pool_2x2(h))
        if not cfg.include_top:
            return h, acts
        if cfg.head == "torchvision":
            h = adaptive_avg_pool(h, cfg.grid)
        elif h.shape[-3:-1] != (cfg.grid, cfg.grid):
            raise InputError(
                f"{cfg.name} with the Keras head needs a {cfg.input_size[0]}x{cfg.input_size[1]} "
                f"input (its feature map must be {cfg.grid}x{cfg.grid}), got a "
                f"{x.shape[-3]}x{x.shape[-2]} image"
            )
        h = out("flatten", h.reshape(*h.shape[:-3], -1))
        h = out("fc1", relu(self.fc1(h)))
        h = out("fc2", relu(self.fc2(h)))
        return out("predictions", self.predictions(h)), acts


def abstract_state(config: VGGConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph and the parameter shapes of ``config``, without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: VGG(config, rngs=nnx.Rngs(0))))


def param_shapes(config: VGGConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """``layer -> {"kernel": shape, "bias": shape}`` in forward order: conv kernels
    ``[3, 3, C_in, C_out]``, dense kernels ``[in, out]`` (the keys and shapes ``apply`` reads)."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    cin = 3
    for (b, n), width in zip(enumerate(config.blocks, 1), config.widths):
        for i in range(1, n + 1):
            shapes[f"block{b}_conv{i}"] = {"kernel": (3, 3, cin, width), "bias": (width,)}
            cin = width
    if config.include_top:
        dims = {"fc1": (config.grid * config.grid * cin, config.fc), "fc2": (config.fc, config.fc),
                "predictions": (config.fc, config.classes)}
        shapes.update({name: {"kernel": d, "bias": d[1:]} for name, d in dims.items()})
    return shapes


def random_params(config: VGGConfig, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Seeded random float32 weights with torchvision's VGG initialisation, as a nested dict.

    Conv kernels ``[3, 3, C_in, C_out]``: He normal with fan-out, std ``sqrt(2 / (9 * C_out))``;
    dense kernels: normal(0, 0.01); biases 0. Drawn with NumPy's ``default_rng(seed)`` layer by
    layer in forward order, so a model without its top has the same conv weights as one with it.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shapes in param_shapes(config).items():
        kernel = rng.standard_normal(shapes["kernel"], dtype=np.float32)
        if len(shapes["kernel"]) == 4:  # He normal, fan-out = kh * kw * C_out (torch's fan_out)
            kh, kw, _, cout = shapes["kernel"]
            std = np.sqrt(2.0 / (kh * kw * cout))
        else:
            std = 0.01
        kernel *= np.float32(std)
        params[name] = {"kernel": kernel, "bias": np.zeros(shapes["bias"], np.float32)}
    return params


def make_apply(config: VGGConfig) -> ApplyFn:
    """The pure ``apply(params, x, taps=None, relu=None)`` of a VGG of this config."""
    return nnx_apply(*abstract_state(config))


@functools.cache
def _apply(config: VGGConfig):
    return make_apply(config)


def build(config: VGGConfig, params: dict, *, source: str) -> Model:
    """A ``Model`` from a configuration and its parameters (nested dict ``layer -> param``), with
    ``source``'s preprocessing, resize (and the region of the picture it keeps) and channel order."""
    return Model(
        apply=_apply(config),
        params=jax.device_put(params),
        layers=config.layers,
        preprocess=imagenet.PREPROCESS[source],
        resize=imagenet.RESIZE[source],
        input_box=imagenet.INPUT_BOX[source],
        channel_order=imagenet.CHANNEL_ORDER[source],
        input_size=config.input_size,
        name=config.name,
        source=source,
        min_size=config.min_size,
        cam_layer=config.conv_names[-1],  # the last conv (Keras' Grad-CAM), not the pool after it
    )
