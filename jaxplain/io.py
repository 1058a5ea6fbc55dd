"""Images in (Pillow), arrays and PNGs out."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxplain.errors import ImageError, InputError, InputWarning
from jaxplain.types import Model

_HIGH_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
MIN_SIDE = 8
"""Pictures with a side shorter than this are refused: brought to a model's input (224 pixels a
side for most), each of their pixels would become a block of tens of pixels; nothing to explain."""
MAX_ASPECT = 10.0
"""Pictures longer than this times their width (or wider) are explained with a warning: the
input squashes them or keeps a small part of them."""


def _too_many_pixels(path: str | os.PathLike, e: Exception) -> ImageError:
    """The error for a picture over Pillow's ``MAX_IMAGE_PIXELS`` (its count, from Pillow's message)."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    count = f"{int(found[1])} pixels" if found else "more pixels than that"
    return ImageError(
        f"{path}: {count}, above the limit of {Image.MAX_IMAGE_PIXELS} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); refused unread as a possible decompression bomb"
    )


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB, turned upright by its EXIF orientation.

    Accepts RGB, RGBA and LA (alpha dropped), grayscale, palette, CMYK and 16-bit images (scaled
    by 1/257 to 8 bits). Pictures of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused
    from their header, before decoding (``ImageError``). Of an animated picture or a multipage
    TIFF the first frame is read, with an ``InputWarning``.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                frames, kind = getattr(img, "n_frames", 1), img.format
                img = ImageOps.exif_transpose(img)
                img.load()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_many_pixels(path, e) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    if frames > 1:
        what = f"a multipage TIFF of {frames} pages" if kind == "TIFF" else f"an animated {kind} of {frames} frames"
        warnings.warn(f"{path}: {what}; only the first is used", InputWarning, stacklevel=2)
    if img.mode in _HIGH_BIT:
        a = np.asarray(img, np.float64)
        if img.mode != "F" or a.max() > 255:
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g] * 3, axis=-1))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def resize_bilinear(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A plain bilinear resize to ``(H, W)``: what a model without its own ``resize`` gets."""
    return img.resize((size[1], size[0]), Image.Resampling.BILINEAR)


class Loaded(NamedTuple):
    """A picture read for a model: ``original`` ``uint8 [h, w, 3]`` as in the file (upright RGB),
    ``image`` ``uint8 [H, W, 3]`` at the model's input size, and ``box`` ``(left, top, right,
    bottom)``: the region of ``original``, in its pixels, that ``image`` shows."""

    original: np.ndarray
    image: np.ndarray
    box: tuple[float, float, float, float]


def load_for_model(
    path: str | os.PathLike, model: Model | None = None, *, size: tuple[int, int] | None = None
) -> Loaded:
    """Read ``path`` once: the original picture, and the picture brought to the model's input size
    by ``model.resize`` (how its weights expect it; bilinear when the model has none, or without a
    model), with the region of the original it shows (``model.input_box``; the whole picture when
    the model has none).

    ``size`` ``(H, W)`` overrides the model's ``input_size``; the default is 224x224. A picture
    with a side under ``MIN_SIDE`` pixels is refused (``ImageError``); one whose sides differ by
    more than ``MAX_ASPECT`` times is used with an ``InputWarning``.
    """
    img = read_image(path)
    w, h = img.size
    size = tuple(size or (model.input_size if model is not None else None) or (224, 224))
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{path}: a {h}x{w} picture (height x width) is refused: a side under {MIN_SIDE} pixels has "
                         f"too little to explain once stretched to {size[0]}x{size[1]}")
    resized = _to_input(path, img, model, size)
    input_box = model.input_box if model is not None else None
    box = (0.0, 0.0, float(w), float(h)) if input_box is None else tuple(float(v) for v in input_box((h, w), size))
    if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
        raise InputError(f"{path}: the model's input_box gave {box}, not (left, top, right, bottom) with right > left "
                         "and bottom > top")
    if max(h, w) > MAX_ASPECT * min(h, w):
        kept = (box[2] - box[0]) * (box[3] - box[1]) / (w * h)
        what = f"squashed to {size[0]}x{size[1]}" if kept > 0.99 else f"the model's crop keeps {kept:.0%} of it"
        warnings.warn(f"{path}: a {h}x{w} picture (height x width), sides more than {MAX_ASPECT:g} times apart: {what}",
                      InputWarning, stacklevel=2)
    return Loaded(np.asarray(img, np.uint8), resized, box)


def _to_input(path: str | os.PathLike, img: Image.Image, model: Model | None, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [H, W, 3]``: ``img`` brought to ``size`` by the model's resize (bilinear without one)."""
    resize = (model.resize if model is not None else None) or resize_bilinear
    resized = resize(img, size)
    if resized.size != (size[1], size[0]):
        raise InputError(f"{path}: the model's resize gave a {resized.size[1]}x{resized.size[0]} picture, "
                         f"not {size[0]}x{size[1]}")
    return np.asarray(resized.convert("RGB"), np.uint8)


def load_image(
    path: str | os.PathLike, model: Model | None = None, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB at the model's input size: ``load_for_model(...).image``."""
    return load_for_model(path, model, size=size).image


def load_mask(
    path: str | os.PathLike, picture: Loaded, model: Model | None = None, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """``bool [H, W]``: the ground-truth mask (white = the object) of ``picture``, brought to the
    input as the picture was (the model's resize). A mask of another size than its picture's
    original is refused (``ImageError``): stretching it would move the object.
    """
    img = read_image(path)
    h, w = picture.original.shape[:2]
    if (img.height, img.width) != (h, w):
        raise ImageError(f"{path}: a {img.height}x{img.width} mask for a {h}x{w} picture (height x width): a mask "
                         "must be its picture's size, pixel for pixel")
    size = tuple(size or (model.input_size if model is not None else None) or (224, 224))
    return _to_input(path, img, model, size).max(-1) > 127


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write ``uint8 [H, W, 3]`` (or ``[H, W]``) as PNG, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path)
