"""The model zoo: Flax NNX VGGs, ResNet-50 and ViT-B/16 that load the ImageNet weights people have.

``vgg16(weights=None | "imagenet" | path, source=None)`` returns a ``jaxplain.Model``:

- ``weights=None``: seeded random weights (torchvision's initialisation).
- ``weights="imagenet"``: the published file of ``source`` (``"keras"``, the default, as
  Keras' ``VGG16(weights="imagenet")``; or ``"torchvision"``), downloaded, verified and cached
  (the download and its conversion, under ``$JAXPLAIN_HOME``).
- ``weights=path``: a Keras ``.h5``, torch ``.pth`` or safetensors file, format read from its
  bytes; read and converted on every load, never copied into the cache.

``source`` picks the head semantics, the preprocessing and the resize: Keras' (Caffe BGR, flatten,
224x224 only, nearest resize) or torchvision's (RGB mean/std, adaptive pool, any size from 32 up,
resize and centre crop). ``build`` puts these facts on the ``Model``.

``resnet50(weights, source)``: the same for ResNet-50 (``source="torchvision"``, the default, or
``"keras"``; timm's ``resnet50.*`` safetensors load as torchvision's), batch norm folded at load
time; ``weights`` may also name torchvision's releases ``"IMAGENET1K_V1"``/``"IMAGENET1K_V2"``
(``"imagenet"`` is V2, torchvision's default).

``vit_b16(weights=None | "imagenet" | path, source=None)``: ViT-B/16 with timm's
(``"timm"``, the default) or google-research's (``"google"``) weights; see ``models/vit.py``
(``jaxplain.models.vit``: the configurable ``ViTConfig`` and the loaders).

``synthetic_vgg()``: the ground-truth benchmark's small VGG, trained on ``jaxplain.synthetic``
images, its weights shipped inside the package (``models/synthetic.py``).
"""

from __future__ import annotations

import functools
import os

import jax

from jaxplain.errors import InputError, WeightsError
from jaxplain.types import Model

from . import imagenet, resnet as _resnet, resnet_weights as _resnet_weights, weights as _weights
from .resnet import ResNet, ResNetConfig
from .synthetic import synthetic_vgg
from .vgg import BLOCKS, VGG, VGGConfig, make_apply, random_params
from .vit import VIT_B16, ViTConfig, vit_b16

SOURCES = ("keras", "torchvision")

__all__ = [
    "BLOCKS", "ResNet", "ResNetConfig", "VGG", "VGGConfig", "VIT_B16", "ViTConfig", "build", "build_resnet",
    "imagenet", "resnet50", "synthetic_vgg", "vgg", "vgg11", "vgg13", "vgg16", "vgg19", "vit_b16",
]


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
    )


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
        file_source, has_top = _weights.file_info(raw)
        source = source or file_source
        include_top = has_top if include_top is None else include_top
    source = source or "keras"
    include_top = True if include_top is None else include_top
    config = VGGConfig(blocks=BLOCKS[arch], include_top=include_top, head=source, name=arch)

    if weights is None:
        return build(config, random_params(config, seed), source=source)
    if raw is not None:
        params = _weights.convert_raw(raw, config, origin=f"file {os.path.basename(weights)}")
        return build(config, params, source=source)
    # The published file: downloaded once, and its conversion kept beside it (``cache``).
    cached = _weights.cache_path(config, source)
    if cache and cached.exists():
        params = _weights.load_cached(cached, config)
    else:
        params = _weights.load_file(_weights.fetch(_weights.published(arch, source, include_top)), config)
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


@functools.cache
def _resnet_apply(config: ResNetConfig):
    return _resnet.make_apply(config)


def build_resnet(config: ResNetConfig, params: dict, *, source: str, resize_ratio: float = 256 / 224) -> Model:
    """A ResNet ``Model`` from a configuration and its folded parameters (flat dict ``layer ->
    param``), with ``source``'s preprocessing, resize and channel order; ``resize_ratio``:
    torchvision's resize over crop (256/224; IMAGENET1K_V2: 232/224)."""
    resize, box = imagenet.RESIZE[source], imagenet.INPUT_BOX[source]
    if source == "torchvision" and resize_ratio != 256 / 224:
        resize = functools.partial(imagenet.resize_torchvision, ratio=resize_ratio)
        box = functools.partial(imagenet.box_torchvision, ratio=resize_ratio)
    return Model(
        apply=_resnet_apply(config),
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
    rw = _resnet_weights
    if source is not None and source not in rw.SOURCES:
        raise InputError(f"unknown weight source {source!r}; expected one of {rw.SOURCES}")
    release = weights if isinstance(weights, str) and weights in rw.RELEASES else None
    published = weights == "imagenet" or release is not None
    raw = _weights.read_raw(weights) if weights is not None and not published else None
    if raw is not None:  # a local file: read once, here, and converted in memory (never cached)
        file_source, has_top = rw.file_info(raw)
        if source is not None and source != file_source:  # the source also picks the architecture
            raise WeightsError(f"{os.path.basename(weights)} holds {file_source} ResNet weights; "
                               f"source={source!r} would run them in another network variant")
        source = file_source
        include_top = has_top if include_top is None else include_top
        release = rw.release_of_file(weights)
    source = source or "torchvision"
    include_top = True if include_top is None else include_top
    config = ResNetConfig(include_top=include_top, style=source, name="resnet50")
    ratio = rw.RESIZE_RATIO.get(release or "IMAGENET1K_V1", 256 / 224)

    if weights is None:
        return build_resnet(config, _resnet.random_params(config, seed), source=source)
    if raw is not None:
        params = rw.convert_raw(raw, config, origin=f"file {os.path.basename(weights)}")
        return build_resnet(config, params, source=source, resize_ratio=ratio)
    tag = rw.release_of(source, include_top, release)
    params = rw.load_published(config, tag, source, cache=cache)
    return build_resnet(config, params, source=source, resize_ratio=rw.RESIZE_RATIO.get(tag, 256 / 224))
