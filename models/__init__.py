"""The model zoo: Flax NNX VGGs, ResNet-50 and ViT-B/16 that load the ImageNet weights people have.

Each architecture is two files: the network (``vgg.py``, ``resnet.py``, ``vit.py``: its config, its
pure ``apply``, random weights and ``build``, which puts a weight source's preprocessing, resize
and channel order on the ``Model``) and its weights (``vgg_weights.py``, ``resnet_weights.py``,
``vit_weights.py``: key tables, published files and the loaders below). ``weights.py`` reads the
file formats and fetches, verifies and caches; ``zoo.py`` is the table of every model the command
line offers.

- ``vgg11/13/16/19(weights=None | "imagenet" | path, source=None)``: Keras' (``"keras"``, the
  default) or torchvision's (``"torchvision"``) weights (``vgg_weights``).
- ``resnet50(weights, source)``: torchvision's (the default; ``"IMAGENET1K_V1"``/``"IMAGENET1K_V2"``)
  or Keras' weights, batch norm folded at load time (``resnet_weights``).
- ``vit_b16(weights, source)``: timm's (``"timm"``, the default) or google-research's (``"google"``)
  weights (``vit_weights``; ``jaxplain.models.vit`` has the configurable ``ViTConfig``).
- ``synthetic_vgg()``: the ground-truth benchmark's small VGG, trained on ``jaxplain.synthetic``
  images, its weights shipped inside the package (``synthetic.py``).

``weights=None`` gives seeded random weights; ``"imagenet"`` the published file, downloaded,
verified and cached under ``$JAXPLAIN_HOME``; a path a local file, its format read from its bytes.
"""

from __future__ import annotations

from . import imagenet, resnet_weights, vgg_weights, vit_weights, weights
from .resnet import ResNet, ResNetConfig
from .resnet import build as build_resnet
from .resnet_weights import resnet50
from .synthetic import synthetic_vgg
from .vgg import BLOCKS, VGG, VGGConfig, build, make_apply, random_params
from .vgg_weights import SOURCES, vgg, vgg11, vgg13, vgg16, vgg19
from .vit import VIT_B16, ViTConfig
from .vit_weights import vit_b16

__all__ = [
    "BLOCKS",
    "ResNet",
    "ResNetConfig",
    "SOURCES",
    "VGG",
    "VGGConfig",
    "VIT_B16",
    "ViTConfig",
    "build",
    "build_resnet",
    "imagenet",
    "make_apply",
    "random_params",
    "resnet50",
    "resnet_weights",
    "synthetic_vgg",
    "vgg",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg_weights",
    "vit_b16",
    "vit_weights",
    "weights",
]
