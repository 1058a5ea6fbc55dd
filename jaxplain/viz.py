"""Colour maps (matplotlib's), overlays over the original picture, colour bars, thumbnails and grids
for 2-D attribution maps; never called from inside a method."""

from __future__ import annotations

import functools
import math

import numpy as np

from jaxplain.errors import InputError, MissingDependency
from jaxplain.reductions import reduce
from jaxplain.types import Model

UNSIGNED = "inferno"  # perceptual: maps of magnitudes (|attribution|, CAMs)
SIGNED = "RdBu_r"  # diverging, white at zero: maps with negative values
OUTSIDE = 0.4  # the brightness overlay leaves to the parts of a picture the model never saw


@functools.cache
def _table(name: str) -> np.ndarray:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("colour maps need matplotlib: pip install matplotlib") from None
    try:
        cmap = matplotlib.colormaps[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown colour map {name!r}: not one of matplotlib's (e.g. {UNSIGNED!r}, {SIGNED!r}, "
                         "'viridis')") from None
    table = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    table.setflags(write=False)
    return table


def colormap(name: str = UNSIGNED) -> np.ndarray:
    """matplotlib's colour map ``name`` sampled at 256 points: ``uint8 [256, 3]`` (read-only)."""
    if not isinstance(name, str):
        raise InputError(f"a colour map is named by a string (one of matplotlib's), got {type(name).__name__}")
    return _table(name)


def normalize(m: np.ndarray, percentile: float = 99.0, signed: bool = False) -> np.ndarray:
    """Scale a map to [0, 1] (``signed``: [-1, 1]) by the ``percentile`` of its magnitude, clipping outliers."""
    m = np.asarray(m, np.float64)
    scale = np.percentile(np.abs(m), percentile)
    if not np.isfinite(scale) or scale <= 0:
        scale = np.abs(m).max() or 1.0
    return np.clip(m / scale, -1.0 if signed else 0.0, 1.0)


def _levels(m: np.ndarray, signed: bool, percentile: float) -> np.ndarray:
    """A map's colour levels: ``normalize(m)`` in [-1, 1] when ``signed``, else ``normalize(|m|)`` in [0, 1]."""
    if not np.isfinite(m).all():
        raise InputError(f"the map has {np.size(m) - np.isfinite(m).sum()} NaN or infinite values: nothing to draw")
    return normalize(m, percentile, signed=True) if signed else normalize(np.abs(m), percentile)


def _colours(v: np.ndarray, cmap: str | None, signed: bool) -> np.ndarray:
    """Levels ``[...]`` -> ``uint8 [..., 3]`` (a signed map's zero is the middle of the table)."""
    table = colormap(cmap or (SIGNED if signed else UNSIGNED))
    return np.take(table, np.round(((v + 1) / 2 if signed else v) * 255).astype(np.int64), axis=0)  # 3x table[i]'s speed


def heatmap(m: np.ndarray, cmap: str | None = None, signed: bool = False, percentile: float = 99.0) -> np.ndarray:
    """``[H, W]`` map -> ``uint8 [H, W, 3]`` colours. Unsigned: ``|m|`` in ``cmap`` (default ``UNSIGNED``);
    ``signed``: negative to positive in ``cmap`` (default ``SIGNED``)."""
    m = np.asarray(m)
    if m.ndim != 2:
        raise InputError(f"heatmap takes a 2-D map [H, W], got shape {m.shape} (use jaxplain.reduce)")
    return _colours(_levels(m, signed, percentile), cmap, signed)


def as_map(attribution: np.ndarray, kind: str, reduction: str = "abs_max") -> np.ndarray:
    """One image's attribution -> the ``[h, w]`` float map a picture draws, by the method's output
    ``kind`` (``jaxplain.marks.output_of``): ``"pixels"`` ``[H, W, C]`` (any ``C``) reduced over
    channels by ``reduction`` (``jaxplain.reduce``); ``"map"`` ``[h, w]`` (CAMs, RISE, surrogates) as it is;
    ``"layer"`` (a layer's shape) and ``"concepts"`` (``[K, H, W, C]``: a map per concept) are refused."""
    a = np.asarray(attribution)
    if kind == "concepts":
        raise InputError(f"a map per concept {a.shape} [K, H, W, C] is not one picture: draw one concept's map "
                         "(attribution[k], a 'pixels' map), or run jaxplain concepts")
    if kind == "layer":
        raise InputError(f"a layer-shaped attribution {a.shape} is not a picture of the input: use it from Python "
                         "(jaxplain.explain returns the array)")
    if kind == "pixels":
        if a.ndim != 3:
            raise InputError(f"a 'pixels' attribution is one image's [H, W, C], got shape {a.shape}")
        return np.asarray(reduce(a, reduction, channels=a.shape[-1]), np.float64)
    if kind == "map":
        if a.ndim != 2:
            raise InputError(f"a 'map' attribution is one image's [h, w], got shape {a.shape}")
        return a.astype(np.float64)
    raise InputError(f"unknown output kind {kind!r}; expected 'pixels', 'map', 'layer' or 'concepts'")


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[h, w]`` to ``size`` (Pillow, float)."""
    from PIL import Image

    m = np.asarray(m, np.float32)
    if m.shape == tuple(size):
        return m
    return np.asarray(Image.fromarray(m, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _check_box(box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    if box is None:
        return 0.0, 0.0, float(size[1]), float(size[0])
    try:
        left, top, right, bottom = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"box must be (left, top, right, bottom), got {box!r}") from None
    if not (np.isfinite([left, top, right, bottom]).all() and right > left and bottom > top):
        raise InputError(f"box must be finite (left, top, right, bottom) with right > left and bottom > top, "
                         f"got {box!r}")
    return left, top, right, bottom


def _axis(n: int, lo: float, hi: float, k: int):
    """Sample points of ``n`` picture pixels on ``k`` map cells spanning ``[lo, hi)``: the lower
    cell, the upper cell, the fraction between them, and whether the pixel's centre is inside."""
    centre = np.arange(n) + 0.5
    u = (centre - lo) * (k / (hi - lo)) - 0.5  # in map cells, cell i's centre at i
    inside = (centre >= lo) & (centre < hi)
    u = np.clip(u, 0, k - 1)
    i0 = np.minimum(np.floor(u).astype(np.int64), max(k - 2, 0))
    return i0, np.minimum(i0 + 1, k - 1), (u - i0).astype(np.float32), inside


def place(m: np.ndarray, size: tuple[int, int], box=None) -> tuple[np.ndarray, np.ndarray]:
    """The map ``m [h', w']`` laid over the region ``box`` ``(left, top, right, bottom)`` (pixels,
    floats; ``None``: everything) of a picture of ``size`` ``(h, w)``: ``(values float32 [h, w],
    inside bool [h, w])``, bilinear at each pixel's centre (shrunk first by Pillow when the region
    has fewer pixels than the map); ``inside``: the pixel's centre is in ``box``."""
    m = np.asarray(m, np.float32)
    left, top, right, bottom = _check_box(box, size)
    shrunk = (max(1, min(m.shape[0], math.ceil(bottom - top))), max(1, min(m.shape[1], math.ceil(right - left))))
    m = resize_map(m, shrunk)  # scaling the whole map keeps its edges on the box's
    y0, y1, fy, iy = _axis(size[0], top, bottom, m.shape[0])
    x0, x1, fx, ix = _axis(size[1], left, right, m.shape[1])
    rows = m[y0] * (1 - fy)[:, None] + m[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx, iy[:, None] & ix[None, :]


def overlay(image: np.ndarray, m: np.ndarray, alpha: float = 0.55, *, box=None, cmap: str | None = None,
            signed: bool = False, percentile: float = 99.0) -> np.ndarray:
    """Blend the colours of ``m [h, w]`` over ``image uint8 [H, W, 3]`` (RGB) or a grayscale
    ``[H, W, 1]`` / ``[H, W]`` (drawn as gray), weighting by intensity; returns ``uint8 [H, W, 3]``.

    ``box`` ``(left, top, right, bottom)``, in ``image``'s pixels (floats): the region of ``image``
    the model's input showed (``Loaded.box``); the map is stretched over it and the rest of the
    picture dimmed to ``OUTSIDE``. ``None``: the whole picture. Colours are as ``heatmap``'s, levels
    taken at the map's own resolution (a layer-resolution CAM is fine, a 1-D profile is refused)."""
    image, m = as_rgb(image), np.asarray(m)
    if m.ndim != 2:
        raise InputError(f"overlay takes a 2-D map [h, w], got shape {m.shape} (reduce [H, W, C] attributions first)")
    v, inside = place(_levels(m, signed, percentile), image.shape[:2], box)
    weight = alpha * np.sqrt(np.abs(v))[..., None]
    picture = image.astype(np.float32)
    drawn = picture * (1 - weight)  # in place from here: a data-set run draws large pictures
    drawn += _colours(v, cmap, signed) * weight
    if not inside.all():
        drawn = np.where(inside[..., None], drawn, picture * OUTSIDE)
    np.clip(drawn, 0, 255, out=drawn)
    return np.rint(drawn, out=drawn).astype(np.uint8)


def colorbar(cmap: str | None = None, signed: bool = False, size: tuple[int, int] = (12, 256)) -> np.ndarray:
    """A horizontal colour bar ``uint8 [h, w, 3]`` of ``size`` ``(h, w)``: the colour map overlay
    and heatmap use (low on the left; ``signed``: negative on the left, zero in the middle)."""
    h, w = size
    if h < 1 or w < 1:
        raise InputError(f"colorbar size must be positive (h, w), got {size}")
    table = colormap(cmap or (SIGNED if signed else UNSIGNED))
    row = table[np.round(np.linspace(0, 255, w)).astype(np.int64)]
    return np.repeat(row[None], h, axis=0)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]`` of an RGB picture ``[H, W, 3]`` (as it is) or a grayscale one ``[H, W, 1]``
    or ``[H, W]`` (its gray repeated), what ``overlay`` draws over; any other shape is refused."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InputError(f"overlay draws over an RGB picture [H, W, 3] or a grayscale one [H, W, 1] or [H, W], got shape "
                         f"{a.shape}; a picture of other channels: draw over one made of them (such as their mean)")
    return a


def thumbnail(rgb: np.ndarray, longest: int = 256) -> np.ndarray:
    """``uint8 [H, W, 3]`` (or grayscale ``[H, W, 1]`` / ``[H, W]``, kept so) shrunk (never
    enlarged) so that its longest side is at most ``longest``, its aspect ratio kept (Pillow)."""
    from PIL import Image

    rgb = np.asarray(rgb, np.uint8)
    if longest < 1:
        raise InputError(f"thumbnail's longest side must be positive, got {longest}")
    gray = rgb.ndim == 3 and rgb.shape[-1] == 1
    img = Image.fromarray(rgb[..., 0] if gray else rgb)
    img.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return np.asarray(img)[..., None] if gray else np.asarray(img)


def grid(tiles: list[np.ndarray], cols: int = 8, pad: int = 2) -> np.ndarray:
    """Tile equally-sized ``uint8 [h, w, 3]`` images into one picture."""
    if not tiles:
        raise InputError("grid needs at least one tile")
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    out = np.full((rows * (h + pad) + pad, min(cols, len(tiles)) * (w + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = t
    return out


def _upscale(tile: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def feature_maps(acts: np.ndarray, channels: list[int] | None = None, cols: int = 8, scale: int = 4) -> np.ndarray:
    """A grid picture of one image's feature maps ``[h, w, K]`` (each channel normalised on its own)."""
    acts = np.asarray(acts)
    if acts.ndim != 3:
        raise InputError(f"feature_maps takes one image's activations [h, w, K], got shape {acts.shape}")
    channels = list(range(acts.shape[-1])) if channels is None else channels
    tiles = [_upscale(heatmap(acts[..., c], percentile=100.0), scale) for c in channels]
    return grid(tiles, cols=cols)


def filters(model: Model, layer: str | None = None, cols: int = 16, scale: int = 8) -> np.ndarray:
    """The first conv layer's filters (``[kh, kw, 3, K]`` kernels, or a grayscale model's
    ``[kh, kw, 1, K]`` shown gray) as a grid of small RGB pictures, each filter min-max normalised
    and read in ``model.channel_order`` (BGR kernels are flipped);
    ``layer`` defaults to the model's first layer. Returns ``uint8 [h, w, 3]``."""
    layer = layer or model.layers[0]
    try:
        kernel = np.asarray(model.params[layer]["kernel"])
    except (KeyError, TypeError):
        raise InputError(f"{model.name} has no kernel for layer {layer!r}") from None
    if kernel.ndim != 4 or kernel.shape[2] not in (1, 3):
        raise InputError(f"layer {layer!r} has a kernel of shape {kernel.shape}: filters shows 3- or 1-channel "
                         "(first-layer) kernels")
    if kernel.shape[2] == 1:  # grayscale: gray pictures
        kernel = np.repeat(kernel, 3, axis=2)
    elif model.channel_order == "BGR":  # shown as RGB pictures
        kernel = kernel[:, :, ::-1]
    tiles = []
    for k in range(kernel.shape[-1]):
        f = kernel[..., k]
        f = (f - f.min()) / (f.max() - f.min() or 1.0)
        tiles.append(_upscale((f * 255).round().astype(np.uint8), scale))
    return grid(tiles, cols=cols)
