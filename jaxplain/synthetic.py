"""A ground-truth benchmark that needs no download: images whose class is one object's shape.

Each image holds one flat-coloured object (its class: ``CLASSES``) at a random place, scale,
rotation and colour, over a smooth, noisy random background, among distractors that every class
has alike: thin lines, small specks and noise-textured patches of random colours and counts. The
object is drawn last and no distractor comes within ``GAP`` pixels of it, so ``masks`` is exactly
the set of pixels the object covers, and every one of them has the object's colour. The
background's base colour lies at least ``CONTRAST`` (RGB distance) from the object's.

Pure data (NumPy, no model): ``make(n, seed=...)`` is deterministic, and a prefix of a larger set
is the smaller set, since images are drawn in blocks of ``BLOCK`` from per-block generators.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from jaxplain.errors import InputError

CLASSES = ("disc", "ring", "square", "frame", "triangle", "cross", "bar", "crescent")
BLOCK = 256  # images per generator block; each block holds every class BLOCK // len(CLASSES) times
GAP = 2  # pixels between the object and the nearest distractor
CONTRAST = 120.0  # least RGB distance from the object's colour to the background's base colour
MIN_SIZE = 32


class Synthetic(NamedTuple):
    """A batch of benchmark images.

    images: ``uint8 [n, size, size, 3]`` RGB; labels: ``int32 [n]`` indices into ``CLASSES``;
    masks: ``bool [n, size, size]``, the object's pixels; colours: ``uint8 [n, 3]``, the object's
    colour (every masked pixel has exactly this value).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    colours: np.ndarray


def _check(n: object, seed: object, size: object) -> None:
    def whole(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not whole(n) or n < 1:
        raise InputError(f"n must be an int >= 1 (the number of images), got {n!r}")
    if not whole(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    if not whole(size) or size < MIN_SIZE:
        raise InputError(f"size must be an int >= {MIN_SIZE} (the image side in pixels), got {size!r}")


def _tri(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """An equilateral triangle of inradius 0.55 (three half-planes)."""
    return np.maximum(np.maximum(-v, 0.866 * u + 0.5 * v), -0.866 * u + 0.5 * v) <= 0.55


def _box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v))


def _arm(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)


# Each class's object in its own frame: ``u, v`` are pixel offsets from the centre, rotated and
# divided by the object's radius; every shape lies within radius 1.1 of the centre.
SHAPES = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "ring": lambda u, v: np.abs(u * u + v * v - 0.625) <= 0.375,  # radii 0.5 to 1
    "square": lambda u, v: _box(u, v) <= 0.8,
    "frame": lambda u, v: np.abs(_box(u, v) - 0.65) <= 0.2,  # half-sides 0.45 to 0.85
    "triangle": _tri,
    "cross": lambda u, v: _arm(u, v) | _arm(v, u),
    "bar": _arm,
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.85**2),
}


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation of ``bool [n, S, S]`` by a ``(2k+1)``-pixel square."""
    s = mask.shape[-1]
    padded = np.pad(mask, ((0, 0), (k, k), (k, k)))
    rows = np.zeros((mask.shape[0], s + 2 * k, s), bool)
    for d in range(2 * k + 1):
        rows |= padded[:, :, d : d + s]
    out = np.zeros_like(mask)
    for d in range(2 * k + 1):
        out |= rows[:, d : d + s]
    return out


def _smooth_field(rng: np.random.Generator, n: int, size: int, cells: int, amplitude: float) -> np.ndarray:
    """Bilinear upsampling of a random ``cells x cells`` grid: ``float32 [n, size, size, 3]``."""
    grid = rng.uniform(-amplitude, amplitude, (n, cells, cells, 3)).astype(np.float32)
    pos = np.linspace(0, cells - 1, size)
    lo = np.minimum(pos.astype(int), cells - 2)
    frac = (pos - lo).astype(np.float32)
    up = np.zeros((size, cells), np.float32)
    up[np.arange(size), lo] = 1 - frac
    up[np.arange(size), lo + 1] = frac
    rows = np.matmul(up, grid.reshape(n, cells, cells * 3)).reshape(n, size, cells, 3)
    return np.matmul(up, rows)


def _stamp(layer: np.ndarray, on: np.ndarray, img: np.ndarray, ys: np.ndarray, xs: np.ndarray,
           keep: np.ndarray, colour: np.ndarray) -> None:
    """Paint ``colour [..., 3]`` at pixels ``(img, ys, xs)`` (same leading shape) where ``keep``."""
    s = layer.shape[1]
    keep = keep & (ys >= 0) & (ys < s) & (xs >= 0) & (xs < s)
    img, ys, xs = (np.broadcast_to(a, keep.shape)[keep] for a in (img, ys, xs))
    layer[img, ys, xs] = np.broadcast_to(colour, (*keep.shape, 3))[keep]
    on[img, ys, xs] = True


def _objects(rng: np.random.Generator, n: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced labels ``[n]``, object masks ``[n, s, s]`` and colours ``uint8 [n, 3]``: a random
    radius, centre (the whole shape inside the image), rotation and colour for each."""
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int32)
    radius = rng.uniform(0.125, 0.22, n) * s
    margin = 1.1 * radius + 1
    cy, cx = (rng.uniform(margin, s - 1 - margin) for _ in range(2))
    theta = rng.uniform(0, 2 * np.pi, n)
    colour = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    grid = np.arange(s, dtype=np.float32)
    dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)  # [n, S, 1]
    dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)  # [n, 1, S]
    cos, sin = ((np.stack([np.cos(theta), np.sin(theta)]) / radius)[:, :, None, None]).astype(np.float32)
    masks = np.zeros((n, s, s), bool)
    for k, name in enumerate(CLASSES):
        p = labels == k
        masks[p] = SHAPES[name](cos[p] * dx[p] + sin[p] * dy[p], cos[p] * dy[p] - sin[p] * dx[p])
    return labels, masks, colour


def _background(rng: np.random.Generator, colour: np.ndarray, s: int) -> np.ndarray:
    """``uint8 [n, s, s, 3]``: a base colour at least ``CONTRAST`` from ``colour [n, 3]`` (the
    farthest of 64 tries where none is), a smooth field of +-25 and pixel noise of +-10."""
    n = len(colour)
    candidates = rng.uniform(30, 225, (n, 64, 3))
    dist = np.linalg.norm(candidates - colour[:, None, :].astype(np.float64), axis=-1)
    far = dist >= CONTRAST
    pick = np.where(far.any(axis=1), far.argmax(axis=1), dist.argmax(axis=1))
    base = candidates[np.arange(n), pick].astype(np.float32)
    background = rng.random((n, s, s, 3), np.float32)
    background *= 20
    background += (base - 10)[:, None, None, :]
    background += _smooth_field(rng, n, s, 4, 25.0)
    return np.clip(np.rint(background, out=background), 0, 255, out=background).astype(np.uint8)


def _distractors(rng: np.random.Generator, n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer ``uint8 [n, s, s, 3]`` and where it is painted ``bool [n, s, s]``: 2-6 thin lines,
    4-20 specks (radius 1-3.5 px at 64x64) and 0-3 noise-textured patches (5-12 px), each of a
    random colour."""
    f = s / 64.0
    layer = np.zeros((n, s, s, 3), np.uint8)
    on = np.zeros((n, s, s), bool)
    idx = np.arange(n)[:, None, None]

    lines = 6
    count = rng.integers(2, lines + 1, n)
    start = rng.uniform(0, s - 1, (n, lines, 2))
    angle = rng.uniform(0, 2 * np.pi, (n, lines))
    length = rng.uniform(0.2, 0.8, (n, lines)) * s
    tint = rng.integers(0, 256, (n, lines, 3)).astype(np.uint8)
    t = np.linspace(0, 1, 2 * s)
    ys = np.rint(start[..., 0, None] + np.sin(angle)[..., None] * length[..., None] * t).astype(int)
    xs = np.rint(start[..., 1, None] + np.cos(angle)[..., None] * length[..., None] * t).astype(int)
    keep = np.broadcast_to((np.arange(lines) < count[:, None])[..., None], ys.shape)
    _stamp(layer, on, idx, ys, xs, keep, tint[:, :, None, :])

    specks, reach = 20, max(2, int(np.ceil(3.5 * f)))
    count = rng.integers(4, specks + 1, n)
    centre = rng.integers(0, s, (n, specks, 2))
    rad = rng.uniform(1.0, 3.5, (n, specks)) * f
    tint = rng.integers(0, 256, (n, specks, 3)).astype(np.uint8)
    oy, ox = (a.ravel() for a in np.mgrid[-reach : reach + 1, -reach : reach + 1])
    keep = (oy**2 + ox**2 <= rad[..., None] ** 2) & (np.arange(specks) < count[:, None])[..., None]
    _stamp(layer, on, idx, centre[..., 0, None] + oy, centre[..., 1, None] + ox, keep, tint[:, :, None, :])

    patches, side = 3, int(np.ceil(12 * f))
    count = rng.integers(0, patches + 1, n)
    corner = rng.integers(0, s, (n, patches, 2))
    extent = rng.uniform(5, 12, (n, patches, 2)) * f
    tint = rng.integers(0, 256, (n, patches, 3)).astype(np.float32)
    noise = 40.0 * rng.standard_normal((n, patches, side * side, 3), np.float32)
    oy, ox = (a.ravel() for a in np.mgrid[0:side, 0:side])
    keep = (oy < extent[..., 0, None]) & (ox < extent[..., 1, None]) & (np.arange(patches) < count[:, None])[..., None]
    texture = np.clip(np.rint(tint[:, :, None, :] + noise), 0, 255).astype(np.uint8)
    _stamp(layer, on, idx, corner[..., 0, None] + oy, corner[..., 1, None] + ox, keep, texture)
    return layer, on


def _block(rng: np.random.Generator, size: int, distractors: bool) -> Synthetic:
    """``BLOCK`` images from one generator (every draw made whether or not ``distractors``)."""
    labels, masks, colour = _objects(rng, BLOCK, size)
    images = _background(rng, colour, size)
    layer, on = _distractors(rng, BLOCK, size)
    if distractors:  # kept GAP pixels away from the object
        np.copyto(images, layer, where=(on & ~_dilate(masks, GAP))[..., None])
    np.copyto(images, colour[:, None, None, :], where=masks[..., None])  # the object, drawn last
    return Synthetic(images, labels, masks, colour)


def make(n: int, *, seed: int, size: int = 64, distractors: bool = True) -> Synthetic:
    """``n`` benchmark images of ``size x size`` pixels (see the module docstring).

    Deterministic in ``(seed, size)``; ``make(n, seed=s)`` is the first ``n`` images of any larger
    ``make(m, seed=s)``. ``distractors=False`` gives the same images, objects and backgrounds
    without the distractors (an ablation; the masks are the same). Classes are balanced: each
    block of ``BLOCK`` images holds every class equally often.
    """
    _check(n, seed, size)
    blocks = -(-n // BLOCK)
    seqs = np.random.SeedSequence([int(seed), int(size)]).spawn(blocks)
    parts = [_block(np.random.default_rng(q), size, distractors) for q in seqs]
    return Synthetic(*(np.concatenate(field)[:n] for field in zip(*parts)))
