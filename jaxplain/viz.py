"""Colour maps and overlays for 2-D attribution maps; never called from inside a method."""

from __future__ import annotations

import numpy as np

from jaxplain.errors import InputError
from jaxplain.types import Model

# Anchor colours (position, RGB) of two maps, linearly interpolated into 256-entry tables.
_ANCHORS = {
    "heat": [(0.0, (0, 0, 0)), (0.35, (120, 20, 130)), (0.65, (230, 70, 30)), (0.85, (250, 180, 30)), (1.0, (255, 255, 220))],
    "diverging": [(0.0, (40, 60, 200)), (0.5, (255, 255, 255)), (1.0, (200, 30, 30))],
}


def colormap(name: str = "heat") -> np.ndarray:
    """``uint8 [256, 3]`` lookup table."""
    if name not in _ANCHORS:
        raise InputError(f"unknown colour map {name!r}; expected one of {sorted(_ANCHORS)}")
    pos, rgb = zip(*_ANCHORS[name])
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, pos, [c[i] for c in rgb]) for i in range(3)], -1).round().astype(np.uint8)


def normalize(m: np.ndarray, percentile: float = 99.0, signed: bool = False) -> np.ndarray:
    """Scale a map to [0, 1] (``signed``: [-1, 1]) by the ``percentile`` of its magnitude, clipping outliers."""
    m = np.asarray(m, np.float64)
    scale = np.percentile(np.abs(m), percentile)
    if not np.isfinite(scale) or scale <= 0:
        scale = np.abs(m).max() or 1.0
    return np.clip(m / scale, -1.0 if signed else 0.0, 1.0)


def heatmap(m: np.ndarray, cmap: str = "heat", signed: bool = False, percentile: float = 99.0) -> np.ndarray:
    """``[H, W]`` map -> ``uint8 [H, W, 3]`` colours (unsigned maps use ``|m|``)."""
    m = np.asarray(m)
    if m.ndim != 2:
        raise InputError(f"heatmap takes a 2-D map [H, W], got shape {m.shape} (use jaxplain.reduce)")
    if signed:
        v = (normalize(m, percentile, signed=True) + 1) / 2
        cmap = "diverging" if cmap == "heat" else cmap
    else:
        v = normalize(np.abs(m), percentile)
    return colormap(cmap)[np.round(v * 255).astype(np.int64)]


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[h, w]`` to ``size`` (Pillow, float)."""
    from PIL import Image

    m = np.asarray(m, np.float32)
    if m.shape == tuple(size):
        return m
    return np.asarray(Image.fromarray(m, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def overlay(image: np.ndarray, m: np.ndarray, alpha: float = 0.55, **kw) -> np.ndarray:
    """Blend the colour map of ``m [h, w]`` over ``image uint8 [H, W, 3]``, weighting by intensity;
    ``m`` is resized to the image (a layer-resolution CAM is fine, a 1-D profile is refused)."""
    image, m = np.asarray(image, np.float64), np.asarray(m)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"overlay draws over an RGB image [H, W, 3], got shape {image.shape}")
    if m.ndim != 2:
        raise InputError(f"overlay takes a 2-D map [h, w], got shape {m.shape} (reduce [H, W, C] attributions first)")
    m = resize_map(m, image.shape[:2])
    colours = heatmap(m, **kw).astype(np.float64)
    weight = alpha * normalize(np.abs(m), kw.get("percentile", 99.0))[..., None] ** 0.5
    return np.clip(image * (1 - weight) + colours * weight, 0, 255).round().astype(np.uint8)


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
    """The first conv layer's filters (``[kh, kw, 3, K]`` kernels) as a grid of small RGB pictures,
    each filter min-max normalised and read in ``model.channel_order`` (BGR kernels are flipped);
    ``layer`` defaults to the model's first layer. Returns ``uint8 [h, w, 3]``."""
    layer = layer or model.layers[0]
    try:
        kernel = np.asarray(model.params[layer]["kernel"])
    except (KeyError, TypeError):
        raise InputError(f"{model.name} has no kernel for layer {layer!r}") from None
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise InputError(f"layer {layer!r} has a kernel of shape {kernel.shape}: filters shows 3-channel (first-layer) kernels")
    if model.channel_order == "BGR":  # shown as RGB pictures
        kernel = kernel[:, :, ::-1]
    tiles = []
    for k in range(kernel.shape[-1]):
        f = kernel[..., k]
        f = (f - f.min()) / (f.max() - f.min() or 1.0)
        tiles.append(_upscale((f * 255).round().astype(np.uint8), scale))
    return grid(tiles, cols=cols)
