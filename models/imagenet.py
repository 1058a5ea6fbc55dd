"""ImageNet facts: class labels, and the preprocessing, resize and channel order of each weight
source (``PREPROCESS``, ``RESIZE``, ``INPUT_BOX``, ``CHANNEL_ORDER``: what ``models.build`` puts on a Model)."""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Callable

import numpy as np
from PIL import Image

from jaxplain.errors import InputError

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
INCEPTION_MEAN = np.array([0.5, 0.5, 0.5], np.float32)  # timm's IMAGENET_INCEPTION_MEAN / _STD
INCEPTION_STD = np.array([0.5, 0.5, 0.5], np.float32)


def _check_images(images: np.ndarray) -> np.ndarray:
    """Float32 images; NumPy in, NumPy out; JAX arrays stay JAX (so preprocessing is differentiable)."""
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise InputError(f"expected RGB images [B, H, W, 3] or [H, W, 3], got shape {images.shape}")
    return images.astype(np.float32)


def preprocess_caffe(images: np.ndarray) -> np.ndarray:
    """Keras 'caffe' mode: RGB -> BGR, subtract the BGR ImageNet mean, keep 0-255 scale.

    ``uint8 [..., H, W, 3] RGB -> float32 [..., H, W, 3] BGR``.
    """
    return _check_images(images)[..., ::-1] - CAFFE_MEAN_BGR


def preprocess_torch(images: np.ndarray) -> np.ndarray:
    """torchvision: scale to [0, 1], subtract mean, divide by std (RGB order kept)."""
    return (_check_images(images) / 255.0 - TORCH_MEAN) / TORCH_STD


def preprocess_inception(images: np.ndarray) -> np.ndarray:
    """Mean = std = 0.5 per channel on [0, 1] pictures, i.e. ``x / 127.5 - 1`` in [-1, 1] (RGB):
    the ViTs of google-research/vision_transformer and of timm (``IMAGENET_INCEPTION_MEAN/STD``)."""
    return (_check_images(images) / 255.0 - INCEPTION_MEAN) / INCEPTION_STD


PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "keras": preprocess_caffe,
    "torchvision": preprocess_torch,
}


def resize_keras(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``keras.utils.load_img(target_size=size)``: a nearest-neighbour resize to ``(H, W)``."""
    return img.resize((size[1], size[0]), Image.Resampling.NEAREST)


def _crop_geometry(w: int, h: int, size: tuple[int, int], short_target: int) -> tuple[tuple[int, int], int, int]:
    """torchvision's ``Resize(short_target)`` + ``CenterCrop(size)`` of a ``w x h`` picture: the
    resized ``(width, height)`` (shorter side ``short_target``, the longer truncated) and the
    crop's ``left`` and ``top`` in it."""
    if w <= h:
        new = (short_target, int(short_target * h / w))
    else:
        new = (int(short_target * w / h), short_target)
    return new, int(round((new[0] - size[1]) / 2.0)), int(round((new[1] - size[0]) / 2.0))


def _torchvision_geometry(
    w: int, h: int, size: tuple[int, int], ratio: float = 256 / 224
) -> tuple[tuple[int, int], int, int]:
    """torchvision's ``Resize`` + ``CenterCrop`` of a ``w x h`` picture to ``size`` ``(H, W)``:
    the resized ``(width, height)`` and the crop's ``left`` and ``top`` in it. ``ratio``: the
    resize's shorter side over the crop's (256/224; ResNet-50's IMAGENET1K_V2 weights: 232/224)."""
    return _crop_geometry(w, h, size, round(min(size) * ratio))


def resize_torchvision(img: Image.Image, size: tuple[int, int], ratio: float = 256 / 224) -> Image.Image:
    """torchvision ``Resize(256)`` + ``CenterCrop(224)``, scaled to ``size`` ``(H, W)``: bilinear
    resize of the shorter side to ``min(size) * ratio``, then the centre crop."""
    new, left, top = _torchvision_geometry(*img.size, size, ratio)
    img = img.resize(new, Image.Resampling.BILINEAR)
    return img.crop((left, top, left + size[1], top + size[0]))


def box_torchvision(
    original: tuple[int, int], size: tuple[int, int], ratio: float = 256 / 224
) -> tuple[float, float, float, float]:
    """The region ``(left, top, right, bottom)`` of an ``original`` ``(h, w)`` picture, in its
    pixels, that ``resize_torchvision(picture, size)`` shows: the centre crop scaled back by
    original / resized size."""
    h, w = original
    new, left, top = _torchvision_geometry(w, h, size, ratio)
    sx, sy = w / new[0], h / new[1]
    return left * sx, top * sy, (left + size[1]) * sx, (top + size[0]) * sy


def _timm_geometry(w: int, h: int, size: tuple[int, int], crop_pct: float) -> tuple[tuple[int, int], int, int]:
    """timm's eval transform (``transforms_imagenet_eval``, crop mode "center") for a square
    ``size``: shorter side to ``floor(size / crop_pct)``, then the centre crop."""
    return _crop_geometry(w, h, size, math.floor(min(size) / crop_pct))


def resize_timm(img: Image.Image, size: tuple[int, int], *, crop_pct: float = 0.9,
                resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """timm's eval resize: shorter side to ``floor(min(size) / crop_pct)`` (248 for 224 at timm's
    ViT default ``crop_pct=0.9``) with ``resample`` (bicubic for its ViTs), then the centre crop."""
    new, left, top = _timm_geometry(*img.size, size, crop_pct)
    img = img.resize(new, resample)
    return img.crop((left, top, left + size[1], top + size[0]))


def box_timm(original: tuple[int, int], size: tuple[int, int], *, crop_pct: float = 0.9) -> tuple[float, float, float, float]:
    """The region ``(left, top, right, bottom)`` of an ``original`` ``(h, w)`` picture that
    ``resize_timm(picture, size, crop_pct=crop_pct)`` shows."""
    h, w = original
    new, left, top = _timm_geometry(w, h, size, crop_pct)
    sx, sy = w / new[0], h / new[1]
    return left * sx, top * sy, (left + size[1]) * sx, (top + size[0]) * sy


# How each source's weights expect a picture brought to the input size.
RESIZE: dict[str, Callable[[Image.Image, tuple[int, int]], Image.Image]] = {
    "keras": resize_keras,
    "torchvision": resize_torchvision,
}

# The region of the original picture each resize keeps (None: all of it, only scaled).
INPUT_BOX: dict[str, Callable[[tuple[int, int], tuple[int, int]], tuple[float, float, float, float]] | None] = {
    "keras": None,
    "torchvision": box_torchvision,
}

# The order of the input channels after preprocessing (Keras' VGGs are Caffe's: BGR).
CHANNEL_ORDER: dict[str, str] = {"keras": "BGR", "torchvision": "RGB"}


@functools.cache
def classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes as ``(wnid, name)``, in the standard index order."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text()
    return tuple(tuple(line.split("\t")) for line in text.splitlines())  # type: ignore[misc]


def decode(logits: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Top classes of each row of ``logits [B, 1000]`` (or ``[1000]``).

    Returns per image a list of ``(wnid, name, probability)``, softmax of the logits, best first.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 1:
        logits = logits[None]
    if logits.ndim != 2 or logits.shape[1] != 1000:
        raise InputError(f"decode expects ImageNet logits [B, 1000], got shape {logits.shape}")
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    names = classes()
    order = np.argsort(-logits, axis=1, kind="stable")[:, :top]
    return [[(*names[i], float(p[i])) for i in row] for row, p in zip(order, probs)]
