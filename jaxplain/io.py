"""Images in (Pillow), arrays and PNGs out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxplain.errors import ImageError
from jaxplain.types import Model

_HIGH_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB, turned upright by its EXIF orientation.

    Accepts RGB, RGBA and LA (alpha dropped, as Keras and torchvision do), grayscale, palette,
    CMYK and 16-bit images (scaled by 1/257 to 8 bits).
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    if img.mode in _HIGH_BIT:
        a = np.asarray(img, np.float64)
        if img.mode != "F" or a.max() > 255:
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g] * 3, axis=-1))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def resize_keras(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``keras.utils.load_img(target_size=size)``: a nearest-neighbour resize to ``(H, W)``."""
    return img.resize((size[1], size[0]), Image.Resampling.NEAREST)


def resize_torchvision(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision ``Resize(256)`` + ``CenterCrop(224)``, scaled to ``size``: bilinear resize of
    the shorter side to ``size * 256/224``, then the centre crop."""
    short_target = round(min(size) * 256 / 224)
    w, h = img.size
    if w <= h:
        new = (short_target, int(short_target * h / w))
    else:
        new = (int(short_target * w / h), short_target)
    img = img.resize(new, Image.Resampling.BILINEAR)
    top = int(round((new[1] - size[0]) / 2.0))
    left = int(round((new[0] - size[1]) / 2.0))
    return img.crop((left, top, left + size[1], top + size[0]))


def load_image(path: str | os.PathLike, model: Model | None = None, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB at the model's input size, resized as its weights' framework does.

    Keras weights: nearest resize to 224x224 (``keras.utils.load_img``); torchvision weights:
    resize the shorter side to 256 and centre-crop 224. ``size`` overrides the model's size.
    """
    img = read_image(path)
    size = size or (model.input_size if model is not None else None) or (224, 224)
    if model is not None and model.source == "torchvision":
        img = resize_torchvision(img, size)
    else:
        img = resize_keras(img, size)
    return np.asarray(img, np.uint8)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write ``uint8 [H, W, 3]`` (or ``[H, W]``) as PNG, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path)
