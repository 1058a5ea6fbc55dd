"""A small VGG trained on ``jaxplain.synthetic``: the ground-truth benchmark's model.

``synthetic_vgg(weights="shipped" | None | path)`` returns a ``jaxplain.Model`` for 64x64 images
of ``jaxplain.synthetic.CLASSES``: ``"shipped"`` loads ``synthetic_vgg.safetensors`` (inside the
package, no download), ``None`` gives seeded random weights, a path a safetensors file of the same
layout (what ``benchmarks/train_synthetic.py`` writes).

The network: VGG blocks (1, 1, 2, 2) of widths (12, 24, 48, 48), each a 2x2 max pool after its
convs, then fc1 and fc2 of 128 and 8 logits (the 4x4x48 map flattened; 191,696 weights).
The shipped weights (``synthetic_vgg.safetensors``, 0.77 MB) were trained with::

    python -m benchmarks.train_synthetic --out models/synthetic_vgg.safetensors

with its defaults: seed 0 (initial weights, batch order, flips); 32,000 training images
``make(32000, seed=0)``, the first epoch of four without distractors; Adam, batch 32, learning rate
2e-3 (100 warm-up steps, then cosine decay); 10.2 minutes on 2 shared CPU cores. Measured:
train accuracy 0.967, test accuracy 0.958 on 2,000 held-out images ``make(2000, seed=1)`` (0.965
on 5,000 of seed 99). Training from scratch is fragile: the network sits at chance until it finds
shape features, which the distractor-free first epoch makes it do within a few hundred steps on
this seed; the same run with ``--epochs 6`` (a slightly slower decay) stayed at chance.
"""

from __future__ import annotations

import functools
import os
from importlib import resources

import jax
import numpy as np

from jaxplain.errors import InputError
from jaxplain.synthetic import CLASSES
from jaxplain.types import Array, Model

from . import vgg_weights
from .vgg import VGGConfig, make_apply, random_params

CONFIG = VGGConfig(blocks=(1, 1, 2, 2), widths=(12, 24, 48, 48), fc=128, classes=len(CLASSES),
                   head="torchvision", grid=4, name="synthetic_vgg")
INPUT_SIZE = (64, 64)
SHIPPED = "synthetic_vgg.safetensors"
SOURCE = "synthetic"


def preprocess(images: np.ndarray | Array) -> np.ndarray | Array:
    """``uint8 [..., H, W, 3] RGB -> float32 [..., H, W, 3]``: ``x / 255 - 0.5``.

    NumPy in, NumPy out; a JAX array stays JAX (differentiable).
    """
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise InputError(f"expected RGB images [B, H, W, 3] or [H, W, 3], got shape {images.shape}")
    return images.astype(np.float32) / np.float32(255) - np.float32(0.5)


@functools.cache
def apply_fn():
    """The pure ``apply`` of ``CONFIG`` (one per process, so jit caches are shared)."""
    return make_apply(CONFIG)


def shipped_path():
    """The packaged weight file (a ``Traversable``; a real path in any ordinary install)."""
    return resources.files(__package__) / SHIPPED


def synthetic_vgg(weights: str | os.PathLike | None = "shipped", *, seed: int = 0) -> Model:
    """The benchmark's VGG: ``weights="shipped"`` (trained, packaged), ``None`` (random weights
    drawn with ``seed``) or a path to a safetensors file with this layout."""
    if weights is None:
        params = random_params(CONFIG, seed)
    else:
        if isinstance(weights, str) and weights == "shipped":
            with resources.as_file(shipped_path()) as path:
                params = vgg_weights.load_file(path, CONFIG)
        else:
            params = vgg_weights.load_file(weights, CONFIG)
    return Model(
        apply=apply_fn(),
        params=jax.device_put(params),
        layers=CONFIG.layers,
        preprocess=preprocess,
        input_size=INPUT_SIZE,
        name=CONFIG.name,
        source=SOURCE if weights is not None else "random",
        min_size=CONFIG.min_size,
        cam_layer=CONFIG.conv_names[-1],  # the last conv (Keras' Grad-CAM), not the pool after it
    )
