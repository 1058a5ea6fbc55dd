"""What a model's layers and logits look like for an image shape (traced once, never compiled),
and the checks that images, layers and neurons fit the model."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError, InputWarning
from jaxplain.engine.tokens import grid_view
from jaxplain.types import Array, Model, input_key


@functools.lru_cache(maxsize=64)
def _shapes(apply: Callable, struct: Any, shape: tuple[int, ...]) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """``(logits shape, {layer: activation shape})`` for one image, from one trace (no compile)."""
    params = jax.tree.unflatten(struct[0], struct[1])
    logits, acts = jax.eval_shape(lambda p, x: apply(p, x), params, jax.ShapeDtypeStruct(shape, jnp.float32))
    return logits.shape, {k: v.shape for k, v in acts.items()}


def params_struct(model: Model) -> tuple:
    """``(treedef, leaf shapes)`` of the weights: a hashable key for caches that depend on shapes only."""
    leaves, treedef = jax.tree.flatten(model.params)
    return (treedef, tuple(jax.ShapeDtypeStruct(l.shape, l.dtype) for l in leaves))


def layer_shapes(model: Model, image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every layer's activation shape for one image of ``image_shape`` (traced, not compiled), as
    the methods see it: a token layer as its patch grid (``tokens.grid_view``)."""
    return _shapes(grid_view(model).apply, params_struct(model), tuple(image_shape))[1]


def default_layer(model: Model, image_shape: tuple[int, ...]) -> str:
    """The model's ``cam_layer``, else the last spatial layer ``[h, w, K]`` of the forward pass
    (``model.layers`` order; attention layers, 3-D but not spatial, never), whatever its name."""
    _check_has_layers(model)
    if model.cam_layer is not None:
        return model.cam_layer
    shapes = layer_shapes(model, image_shape)
    spatial = [name for name in model.layers if len(shapes.get(name, ())) == 3 and name not in model.attention_layers]
    if not spatial:
        raise InputError(f"{model.name} has no spatial layer [h, w, K]")
    return spatial[-1]


def check_layer(model: Model, image_shape: tuple[int, ...], layer: str, *, spatial: bool = False) -> tuple[int, ...]:
    """The layer's activation shape, or an ``InputError`` naming the valid layers. ``layer`` may be
    a layer's input, ``input_key(name)`` for a name in ``model.layer_inputs``."""
    _check_has_layers(model)
    shapes = layer_shapes(model, image_shape)
    if layer not in shapes:
        inputs = [name for name in model.layer_inputs if input_key(name) == layer]
        if inputs:
            raise InputError(f"{model.name} lists {inputs[0]!r} in layer_inputs, but its apply records no "
                             f"{layer!r} in acts")
        raise InputError(f"unknown layer {layer!r}; {model.name}'s layers: {', '.join(model.layers)}")
    if spatial and layer in model.attention_layers:
        raise InputError(f"layer {layer!r} holds attention probabilities {shapes[layer]} [heads, T, T], not a spatial "
                         f"layer [h, w, K]: CAM methods need one (a token layer such as {_token_hint(model)} is seen as "
                         "its patch grid); attention_rollout and transformer_attribution read the attention")
    if spatial and len(shapes[layer]) != 3:
        raise InputError(f"layer {layer!r} has shape {shapes[layer]}: CAM methods need a spatial layer [h, w, K]")
    return shapes[layer]


def _check_has_layers(model: Model) -> None:
    """An ``InputError`` saying why when ``model`` exposes no layers at all."""
    if not model.layers:
        raise InputError(f"{model.name} exposes no layers, so CAM, layer and neuron methods cannot run on it (a "
                         "subclassed Keras model has no graph of layers to tap: build it as a Functional or "
                         "Sequential model; an adapter given layers=() exposes none)")


def _token_hint(model: Model) -> str:
    return repr(model.cam_layer) if model.cam_layer else "a block's output"


def num_classes(model: Model, image_shape: tuple[int, ...]) -> int:
    """Number of logits ``model.apply`` gives for one image of ``image_shape`` (traced, not compiled)."""
    shape = _shapes(model.apply, params_struct(model), tuple(image_shape))[0]
    if len(shape) != 1:
        raise InputError(f"{model.name} outputs {shape} per image, not a vector of logits: it has no classifier")
    return shape[0]


def check_images(model: Model, images: Any) -> Array:
    """Preprocessed float images ``[B, H, W, C]`` that fit ``model``, or an ``InputError``."""
    a = images if isinstance(images, jax.Array) else np.asarray(images)
    if a.ndim != 4:
        hint = " (add a batch axis: images[None])" if a.ndim == 3 else ""
        if a.ndim == 3 and model.channels == 1:
            hint = " (a batch of grayscale images: add the channel axis, images[..., None]; one image: images[None])"
        raise InputError(f"images must be a batch [B, H, W, C], got shape {a.shape}{hint}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise InputError(f"images must be preprocessed floats (model.preprocess), got dtype {a.dtype}")
    if a.shape[0] == 0:
        raise InputError("images is an empty batch")
    channels = model.channels
    if a.shape[-1] != channels:
        raise InputError(f"{model.name} takes {channels} channel{'s' if channels != 1 else ''} [B, H, W, {channels}], got "
                         f"images of {a.shape[-1]} channel{'s' if a.shape[-1] != 1 else ''} (shape {a.shape})")
    hw = tuple(a.shape[1:3])
    if model.input_size is not None and hw != tuple(model.input_size):
        raise InputError(f"{model.name} takes {model.input_size[0]}x{model.input_size[1]} images, got {hw[0]}x{hw[1]}")
    if min(hw) < model.min_size:
        raise InputError(f"{model.name} needs images of at least {model.min_size}x{model.min_size}, got {hw[0]}x{hw[1]}")
    a = jnp.asarray(a, jnp.float32)
    if not bool(jnp.isfinite(a).all()):
        bad = np.unique(np.nonzero(~np.isfinite(np.asarray(a)))[0])
        raise InputError(f"images {bad.tolist()[:8]} contain NaN or infinite pixels")
    _check_range(model, float(a.min()), float(a.max()))
    return a


def _check_range(model: Model, low: float, high: float) -> None:
    """An ``InputWarning`` when images span ``[low, high]`` far outside (by more than 4 times its
    width) the range ``model.preprocess`` gives a black and a white picture: 0-255 pixel values
    handed to a model that expects them normalised (noise around a normalised picture stays
    inside). No check without a preprocess."""
    if getattr(model, "preprocess", None) is None:
        return
    pixels = np.full((2, 1, 1, int(model.channels)), 255, np.uint8)  # [2, 1, 1, C]: black, white
    pixels[0] = 0
    try:
        ref = np.asarray(model.preprocess(pixels), np.float64)
    except Exception:  # noqa: BLE001  (a preprocess that cannot take a 1x1 picture: no check)
        return
    lo, hi = float(ref.min()), float(ref.max())
    if low < lo - 4 * (hi - lo) or high > hi + 4 * (hi - lo):
        warnings.warn(f"images range over [{low:.4g}, {high:.4g}], far outside [{lo:.4g}, {hi:.4g}], what "
                      f"{model.name}'s preprocess makes of pixels 0..255: pass model.preprocess(pixels) (uint8 [B, H, W, C])",
                      InputWarning, stacklevel=4)
