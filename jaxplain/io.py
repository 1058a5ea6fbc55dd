"""Images in (Pillow), arrays and PNGs out."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxplain.errors import ImageError, InputError, InputWarning
from jaxplain.types import Model

_HIGH_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_GRAY = ("1", "L", "LA", "La", *_HIGH_BIT)  # Pillow's modes of a picture without colour
log = logging.getLogger("jaxplain")
CONVERTED = "jaxplain.converted"  # in a picture's ``info``: colour read as grayscale by ``read_image``
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


def converted_line(model: Model, path: Any) -> str:
    """The one line a run says when a grayscale model's colour pictures (``path`` the first) are
    converted to grayscale."""
    return (f"jaxplain: {model.name} takes grayscale pictures (1 channel): colour ones such as {path} are converted "
            "to grayscale (luma)")


def picture_mode(model: Model | None) -> str:
    """The Pillow mode a model's pictures are read in: ``"RGB"`` (3 channels, or no model), ``"L"``
    (a grayscale model, 1 channel); a model of any other channel count takes arrays, not picture
    files: an ``InputError`` that says so."""
    c = 3 if model is None else int(model.channels)
    if c in (1, 3):
        return "L" if c == 1 else "RGB"
    raise InputError(f"{model.name} takes {c}-channel images, which no picture file holds (a picture gives 1 or 3 "
                     f"channels): give it arrays [B, H, W, {c}] from Python (jaxplain.explain, jaxplain.evaluate)")


def read_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open an image as 8-bit RGB (``mode="RGB"``) or grayscale (``mode="L"``), turned upright by
    its EXIF orientation.

    Accepts RGB, RGBA and LA (alpha dropped), grayscale, palette, CMYK and 16-bit images (scaled
    by 1/257 to 8 bits); read as grayscale, a colour picture becomes Pillow's luma
    ``L = 0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2), marked ``info[CONVERTED]``. Pictures of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused
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
    if mode not in ("RGB", "L"):
        raise InputError(f"read_image reads pictures as 'RGB' or 'L' (grayscale), got mode={mode!r}")
    if img.mode in _HIGH_BIT:
        a = np.asarray(img, np.float64)
        if img.mode != "F" or a.max() > 255:
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(g if mode == "L" else np.stack([g] * 3, axis=-1))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    colour = img.mode not in _GRAY and not (img.mode == "P" and _gray_palette(img))
    if mode == "L" and img.mode not in ("L", "LA", "La", "1"):
        img = img.convert("RGB")  # CMYK, YCbCr, a palette: through RGB to Pillow's luma
    out = img.convert(mode)
    if mode == "L" and colour:
        out.info[CONVERTED] = True
    return out


def _gray_palette(img: Image.Image) -> bool:
    """A palette picture whose colours are all gray."""
    palette = np.asarray(img.getpalette() or [], np.int64).reshape(-1, 3)
    return bool((palette == palette[:, :1]).all())


def resize_bilinear(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A plain bilinear resize to ``(H, W)``: what a model without its own ``resize`` gets."""
    return img.resize((size[1], size[0]), Image.Resampling.BILINEAR)


class Loaded(NamedTuple):
    """A picture read for a model: ``original`` ``uint8 [h, w, C]`` as in the file (upright; RGB,
    ``C = 3``, or for a grayscale model ``C = 1``), ``image`` ``uint8 [H, W, C]`` at the model's
    input size, ``box`` ``(left, top, right, bottom)``: the region of ``original``, in its pixels,
    that ``image`` shows, and ``converted``: a colour picture read as grayscale for the model."""

    original: np.ndarray
    image: np.ndarray
    box: tuple[float, float, float, float]
    converted: bool = False


def load_for_model(
    path: str | os.PathLike, model: Model | None = None, *, size: tuple[int, int] | None = None
) -> Loaded:
    """Read ``path`` once: the original picture, and the picture brought to the model's input size
    by ``model.resize`` (how its weights expect it; bilinear when the model has none, or without a
    model), with the region of the original it shows (``model.input_box``; the whole picture when
    the model has none).

    A model of 1 channel reads the picture as grayscale (a colour one converted to Pillow's luma,
    ``converted``, logged at info level on the ``"jaxplain"`` logger); of 3, as RGB; of any other
    count, it is refused (``picture_mode``).

    ``size`` ``(H, W)`` overrides the model's ``input_size``; the default is 224x224. A picture
    with a side under ``MIN_SIDE`` pixels is refused (``ImageError``); one whose sides differ by
    more than ``MAX_ASPECT`` times is used with an ``InputWarning``.
    """
    mode = picture_mode(model)
    img = read_image(path, mode)
    converted = bool(img.info.get(CONVERTED))
    if converted:
        log.info("%s: a colour picture read as grayscale (luma) for %s, a 1-channel model", path, model.name)
    w, h = img.size
    size = tuple(size or (model.input_size if model is not None else None) or (224, 224))
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{path}: a {h}x{w} picture (height x width) is refused: a side under {MIN_SIDE} pixels has "
                         f"too little to explain once stretched to {size[0]}x{size[1]}")
    resized = _to_input(path, img, model, size, mode)
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
    return Loaded(_pixels(img), resized, box, converted)


def _pixels(img: Image.Image) -> np.ndarray:
    """``uint8 [h, w, 3]`` of an RGB picture, ``[h, w, 1]`` of a grayscale one."""
    a = np.asarray(img, np.uint8)
    return a[..., None] if a.ndim == 2 else a


def _to_input(path: str | os.PathLike, img: Image.Image, model: Model | None, size: tuple[int, int],
              mode: str = "RGB") -> np.ndarray:
    """``uint8 [H, W, 3]`` (``mode="L"``: ``[H, W, 1]``): ``img`` brought to ``size`` by the model's
    resize (bilinear without one)."""
    resize = (model.resize if model is not None else None) or resize_bilinear
    resized = resize(img, size)
    if resized.size != (size[1], size[0]):
        raise InputError(f"{path}: the model's resize gave a {resized.size[1]}x{resized.size[0]} picture, "
                         f"not {size[0]}x{size[1]}")
    return _pixels(resized.convert(mode))


def load_image(
    path: str | os.PathLike, model: Model | None = None, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """``uint8 [H, W, C]`` (RGB, or a grayscale model's ``C = 1``) at the model's input size:
    ``load_for_model(...).image``."""
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
    """Write ``uint8 [H, W, 3]`` (or grayscale ``[H, W]`` / ``[H, W, 1]``) as PNG, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(rgb, np.uint8)
    Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).save(path)
