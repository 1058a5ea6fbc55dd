"""Segment label maps for the surrogate methods (feature ablation, LIME, KernelSHAP, XRAI): a grid,
scikit-image's SLIC, Felzenszwalb or quickshift run on the picture a person sees, or the caller's own.

A label map is an integer array ``[H, W]`` (or ``[B, H, W]``, one per image) whose labels are
``0 .. M - 1``; a label with no pixel is an empty segment, which the methods leave out (zero
attribution, never switched). ``M``, the number of segments, is static inside a compiled method:
``explain`` sets it to the largest label + 1 over the batch unless ``max_segments`` fixes it.
"""

from __future__ import annotations

import ast
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import CostWarning, InputError, MissingDependency
from jaxplain.types import Array, Model

KINDS = ("grid", "slic", "felzenszwalb", "quickshift")
# scikit-image's settings per kind; quickshift's are the lime package's (LimeImageExplainer).
DEFAULTS: dict[str, dict[str, Any]] = {
    "slic": dict(n_segments=50, compactness=10.0, sigma=1.0),
    "felzenszwalb": dict(scale=100.0, sigma=0.8, min_size=50),
    "quickshift": dict(kernel_size=4, max_dist=200.0, ratio=0.2),
}


def parse_kind(spec: str) -> tuple[str, dict[str, Any]]:
    """``"slic(n_segments=100)"`` -> ``("slic", {"n_segments": 100})``; a bare kind has no options."""
    hint = f"segments must be one of {', '.join(KINDS)}, optionally with options as in \"slic(n_segments=100)\", or a label map"
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise InputError(f"{hint}; got {spec!r}") from None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        name = node.func.id
        try:
            options = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            raise InputError(f"options in segments={spec!r} must be literals") from None
    elif isinstance(node, ast.Name):
        name, options = node.id, {}
    else:
        raise InputError(f"{hint}; got {spec!r}")
    if name not in KINDS:
        raise InputError(f"{hint}; got {spec!r}")
    return name, options


def grid(shape: tuple[int, int], cells: int | tuple[int, int]) -> np.ndarray:
    """``[H, W]`` int32: ``cells`` (or ``(rows, columns)``) rectangles numbered row by row; row
    ``i`` of the image falls in cell row ``floor(i * rows / H)``."""
    h, w = shape
    bad = InputError(f"cells must be a positive int or (rows, columns) no larger than the image {shape}; got {cells!r}")
    if isinstance(cells, (int, np.integer)):
        cells = (cells, cells)
    if not isinstance(cells, (tuple, list)) or len(cells) != 2:
        raise bad
    rows, cols = cells
    for n, size in ((rows, h), (cols, w)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= size:
            raise bad
    r = np.arange(h) * rows // h
    c = np.arange(w) * cols // w
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


def skimage_module(what: str) -> Any:
    """``skimage.segmentation``, or a ``MissingDependency`` saying that ``what`` needs the extra."""
    try:
        from skimage import segmentation
    except ImportError:
        raise MissingDependency(f"{what} needs scikit-image: pip install 'jaxplain[segments]' "
                                "(or pass a label map, or segments='grid')") from None
    return segmentation


def _check_pictures(images: Any) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3) or a.shape[0] == 0:
        raise InputError(f"segments takes RGB pictures [B, H, W, 3] or [H, W, 3], or grayscale ones [B, H, W, 1] or "
                         f"[H, W, 1], got shape {a.shape}; for other channel counts segment a picture made of them "
                         "(such as images.mean(-1, keepdims=True)), or pass label maps")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise InputError(f"segments takes uint8 pictures or floats in [0, 1], got {a.dtype} in "
                         f"[{a.min() if a.size else 0}, {a.max() if a.size else 0}]")
    return a


def _lightness(picture: np.ndarray) -> np.ndarray:
    """A grayscale picture ``[H, W, 1]`` (uint8, or floats in [0, 1]) on Lab's lightness scale
    (0-100, float64): the units scikit-image measures an RGB picture's colours in, so that
    ``compactness`` and ``max_dist`` mean the same for grayscale and colour pictures."""
    top = 255.0 if picture.dtype == np.uint8 else 1.0
    return picture.astype(np.float64) * (100.0 / top)


def _segment(algorithm: Any, kind: str, picture: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """One picture ``[H, W, 3]`` (RGB) or ``[H, W, 1]`` (grayscale) segmented by scikit-image."""
    if picture.shape[-1] == 3:
        return np.asarray(algorithm(picture, **settings))
    if kind == "slic":
        return np.asarray(algorithm(_lightness(picture)[..., 0], channel_axis=None, **settings))
    if kind == "quickshift":
        return np.asarray(algorithm(_lightness(picture), convert2lab=False, **settings))
    return np.asarray(algorithm(picture[..., 0], channel_axis=None, **settings))


def segments(images: Any, kind: str = "slic", **options: Any) -> np.ndarray:
    """Label maps ``[B, H, W]`` int32 (labels from 0) of RGB ``images`` ``[B, H, W, 3]`` or grayscale
    ones ``[B, H, W, 1]`` (uint8, or floats in [0, 1]) as a person sees them, not preprocessed for a
    model. A grayscale picture is segmented as grayscale, its values on Lab's lightness scale (what
    an RGB picture's colours are measured in), so each kind's options mean the same for both.

    ``kind``: ``"grid"`` (``cells=8``: ``cells x cells`` rectangles, or ``(rows, columns)``),
    ``"slic"``, ``"felzenszwalb"`` or ``"quickshift"`` (scikit-image, the ``segments`` extra;
    ``options`` go to it over ``DEFAULTS``); ``"slic(n_segments=100)"`` also works.
    """
    pictures = _check_pictures(images)
    if not isinstance(kind, str):
        raise InputError(f"segments must be one of {', '.join(KINDS)}, got {kind!r}")
    kind, parsed = parse_kind(kind)
    options = {**parsed, **options}
    b, h, w, _ = pictures.shape
    if kind == "grid":
        unknown = set(options) - {"cells"}
        if unknown:
            raise InputError(f"segments='grid' takes only cells=, got {', '.join(sorted(unknown))}")
        return np.broadcast_to(grid((h, w), options.get("cells", 8)), (b, h, w)).copy()
    algorithm = getattr(skimage_module(f"segments={kind!r}"), kind)
    settings = {**DEFAULTS[kind], **options}
    if kind == "slic":
        settings["start_label"] = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)  # a negative count, say
            maps = [_segment(algorithm, kind, p, settings) for p in pictures]
    except (TypeError, ValueError, np.exceptions.ComplexWarning) as e:
        raise InputError(f"segments={kind!r} with {options or 'its defaults'}: scikit-image refused it ({e})") from None
    return np.stack([np.unique(m, return_inverse=True)[1].reshape(m.shape) for m in maps]).astype(np.int32)


def pictures(model: Model, images: Any) -> np.ndarray:
    """The uint8 pictures ``[B, H, W, C]`` (``C = model.channels``) that ``model.preprocess`` turns
    into ``images``.

    Inverts a preprocessing that is affine per pixel (scaling, mean and standard deviation, channel
    order: every model of the zoo), found by probing ``model.preprocess`` with a few uint8 pixels of
    ``C`` channels; any other raises an ``InputError`` that asks for label maps instead."""
    if model.preprocess is None:
        raise InputError(f"{model.name} has no preprocess to invert: pass label maps (jaxplain.segments on your pictures)")
    c = int(model.channels)
    probe = np.zeros((c + 2, 1, 1, c), np.uint8)
    probe[1 : c + 1, 0, 0] = 255 * np.eye(c, dtype=np.uint8)
    probe[c + 1, 0, 0] = np.resize(np.array([37, 200, 91], np.uint8), c)
    try:
        out = np.asarray(model.preprocess(probe), np.float64).reshape(c + 2, -1)
    except Exception as e:  # noqa: BLE001  (a preprocess that cannot take these pixels)
        raise InputError(f"{model.name}'s preprocess does not take uint8 pixels [B, H, W, {c}] ({e}), so the picture "
                         "cannot be recovered: pass label maps (jaxplain.segments on your pictures)") from None
    offset, a = out[0], (out[1 : c + 1] - out[0]) / 255.0  # preprocessed = pixels @ a + offset
    scale = max(np.abs(out).max(), 1e-12)
    if (a.shape[1] != c or np.abs(probe[c + 1, 0, 0].astype(np.float64) @ a + offset - out[c + 1]).max() > 1e-4 * scale
            or np.linalg.matrix_rank(a) < c):
        raise InputError(f"{model.name}'s preprocess is not an affine map of the pixel values, so the picture cannot be "
                         "recovered: pass label maps (jaxplain.segments on your pictures)")
    x = np.asarray(images, np.float64)
    px = (x - offset) @ np.linalg.pinv(a)
    return np.clip(np.rint(px), 0, 255).astype(np.uint8)


def seen(pictures_: np.ndarray) -> np.ndarray:
    """What a person sees of uint8 pictures ``[B, H, W, C]``, the picture a segmentation runs on:
    RGB (``C = 3``) and grayscale (``C = 1``) as they are; any other count (RGBA, multispectral)
    as the grayscale mean of its channels ``[B, H, W, 1]``."""
    if pictures_.shape[-1] in (1, 3):
        return pictures_
    return np.rint(pictures_.mean(-1, keepdims=True)).astype(np.uint8)


def check_labels(labels: Any, shape: tuple[int, int], batch: int | None = None) -> Array | np.ndarray:
    """``labels`` as int32 if it is a label map ``[H, W]`` (or ``[B, H, W]`` with ``batch`` images)
    of non-negative integers; an ``InputError`` naming what is wrong otherwise."""
    a = labels if isinstance(labels, jax.Array) else np.asarray(labels)
    if a.dtype == bool or not jnp.issubdtype(a.dtype, jnp.integer):
        raise InputError(f"a label map must hold integer labels, got dtype {a.dtype}")
    ok = [(*shape,)] + ([(batch, *shape)] if batch is not None else [])
    if tuple(a.shape) not in ok:
        want = f"[H, W] = {tuple(shape)}" + (f" or [B, H, W] = {(batch, *shape)}" if batch is not None else "")
        raise InputError(f"a label map must be {want} for these images, got shape {tuple(a.shape)}")
    if not isinstance(a, jax.core.Tracer) and a.size and int(a.min()) < 0:
        raise InputError(f"labels must be >= 0, got {int(a.min())}")
    return a.astype(np.int32) if isinstance(a, np.ndarray) else a.astype(jnp.int32)


def count(labels: Array | np.ndarray, max_segments: int | None) -> int:
    """The static number of segments ``M``: ``max_segments``, checked against the labels where
    they are known, or the largest label + 1 (which needs concrete labels)."""
    concrete = not isinstance(labels, jax.core.Tracer)
    top = int(labels.max()) + 1 if concrete and labels.size else None
    if max_segments is None:
        if top is None:
            raise InputError("pass max_segments (the number of segment labels) when the label map is traced")
        return top
    if isinstance(max_segments, bool) or not isinstance(max_segments, (int, np.integer)) or max_segments < 1:
        raise InputError(f"max_segments must be a positive int or None, got {max_segments!r}")
    if top is not None and top > max_segments:
        raise InputError(f"the label map has labels up to {top - 1} but max_segments={max_segments}: "
                         "raise max_segments, or ask for fewer segments")
    return int(max_segments)


def resolve(model: Model, images: Any, settings: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A surrogate method's ``segments`` and ``max_segments`` for a batch of preprocessed
    ``images [B, H, W, C]`` (``explain`` calls this on the host): a scikit-image kind becomes the
    label maps ``[B, H, W]`` of the pictures (``pictures``; a model of neither 1 nor 3 channels: of
    their channels' mean, ``seen``); a label map is checked; ``max_segments``
    becomes the static count (``count``). ``"grid"`` stays for the method to build. ``defaults``:
    the method's settings' defaults."""
    settings = dict(settings)
    spec = settings.get("segments", defaults["segments"])
    b, h, w = np.shape(images)[:3]
    if isinstance(spec, str):
        kind, options = parse_kind(spec)
        if kind == "grid":
            unknown = set(options) - {"cells"}
            if unknown:
                raise InputError(f"segments='grid' takes only cells=, got {', '.join(sorted(unknown))}")
            if "cells" in options:
                settings["cells"] = options["cells"]
            settings["segments"] = "grid"
            return settings
        labels = segments(seen(pictures(model, images)), kind, **options)
    else:
        labels = check_labels(spec, (h, w), b)
    settings["segments"] = labels
    settings["max_segments"] = count(labels, settings.get("max_segments"))
    used = len(np.unique(np.asarray(labels)))
    if settings["max_segments"] > max(2 * used, used + 16):
        warnings.warn(f"the label map uses {used} labels but the largest is {settings['max_segments'] - 1}: every label "
                      f"up to it costs a feature (a forward pass, a column); renumber with "
                      f"np.unique(labels, return_inverse=True)", CostWarning, stacklevel=4)
    return settings
