"""The Model contract every explained network satisfies, and array aliases.

A model is a pure function of one image plus a few facts about it::

    logits, acts = model.apply(params, x, taps=None, relu=None)

- ``x``: one preprocessed image ``[H, W, C]`` float32.
- ``acts``: layer name -> that layer's activation for this image.
- ``taps``: layer name -> array added to that layer's output; the gradient with respect to
  a tap is the gradient with respect to that activation.
- ``relu``: the rectifier to use for every ReLU (``None``: ``jax.nn.relu``); methods that
  change the backward pass (guided backprop, deconvnet) pass their own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import jax
import numpy as np

from jaxplain.errors import InputError

if TYPE_CHECKING:
    import PIL.Image

Array = jax.Array
PyTree = Any
Relu = Callable[[Array], Array]


class ApplyFn(Protocol):
    def __call__(
        self,
        params: PyTree,
        x: Array,
        taps: Mapping[str, Array] | None = None,
        relu: Relu | None = None,
    ) -> tuple[Array, dict[str, Array]]: ...


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A network ready to explain.

    Attributes:
      apply: pure ``(params, x [H, W, C], taps=None, relu=None) -> (logits [K], acts)``.
      params: the weights, a pytree passed to ``apply``.
      layers: layer names in forward order (the keys ``acts`` and ``taps`` use).
      preprocess: ``uint8 [B, H, W, C] -> float32 [B, H, W, C]`` for these weights (RGB pixels
        for a 3-channel model, gray ones for a 1-channel model).
      input_size: ``(H, W)`` the weights expect; ``None`` when any size works.
      channels: ``C``, the channels of a preprocessed image (3 for RGB, 1 for grayscale, any
        count for multispectral inputs); ``input_shape`` is ``(H, W, C)``.
      name: a short name such as ``"vgg16"``.
      source: where the weights came from (``"keras"``, ``"torchvision"``, ``"random"``).
      min_size: the smallest spatial size ``apply`` accepts.
      resize: ``(picture, (H, W)) -> picture of that size``, how these weights expect a picture
        brought to the input size; ``None``: a plain bilinear resize to ``(H, W)``.
      input_box: ``(original (h, w), input (H, W)) -> (left, top, right, bottom)``: the region of
        the original picture, in its pixels (floats), that the resized input shows (what a centre
        crop kept); ``None``: the whole picture (a resize that only scales).
      channel_order: the order of the input channels after ``preprocess``, ``"RGB"`` or
        ``"BGR"`` (Caffe's and Keras' VGG weights).
      cam_layer: the layer CAM and layer methods use when none is asked for (ResNet's
        ``"layer4"``, ViT's next-to-last block, VGG's last conv); ``None``: the last spatial layer
        ``[h, w, K]`` of the forward pass, whatever its name (attention layers excluded).
      token_grid: ``(gh, gw)``, the patch grid of a transformer's token layers (row-major
        patches); ``None``: the model has no token layers.
      token_layers: token layer ``[T, D]`` -> how many non-patch tokens lead it (a ViT's class
        token: 1; its patch embedding: 0), ``T = prefix + gh * gw``. ``explain`` shows methods
        these layers as their patch grid ``[gh, gw, D]`` (``jaxplain.engine.tokens``).
      layer_inputs: the layers whose *input* (the first argument of the layer's call) ``apply``
        also taps and records, under the key ``input_key(layer)`` (``"layer:input"``) in ``taps``
        and ``acts``; what ``attribute_to="input"`` reads. ``()``: none.
      attention_layers: the attention probability layers ``[heads, T, T]`` in forward order
        (query rows, key columns, the class token first); never spatial. What
        ``attention_rollout`` and ``transformer_attribution`` read (a tap there must be added to
        the probabilities before they weight the values).
    """

    apply: ApplyFn
    params: PyTree
    layers: tuple[str, ...]
    preprocess: Callable[[np.ndarray], np.ndarray]
    input_size: tuple[int, int] | None
    name: str = "model"
    source: str = "random"
    min_size: int = 1
    resize: Callable[[PIL.Image.Image, tuple[int, int]], PIL.Image.Image] | None = None
    input_box: Callable[[tuple[int, int], tuple[int, int]], tuple[float, float, float, float]] | None = None
    channel_order: str = "RGB"
    channels: int = 3
    cam_layer: str | None = None
    token_grid: tuple[int, int] | None = None
    token_layers: Mapping[str, int] = dataclasses.field(default_factory=dict)
    attention_layers: tuple[str, ...] = ()
    layer_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_tokens(self)
        unknown = [n for n in self.layer_inputs if n not in self.layers]
        if unknown:
            raise InputError(f"{self.name} declares inputs of layers it does not have: {', '.join(unknown)}")
        if not isinstance(self.channels, (int, np.integer)) or isinstance(self.channels, bool) or self.channels < 1:
            raise InputError(f"channels must be a positive int (the C of [H, W, C]), got {self.channels!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.resize is not None and not callable(self.resize):
            raise InputError(f"resize must be a function (picture, (H, W)) -> picture or None, got {type(self.resize).__name__}")
        if self.input_box is not None and not callable(self.input_box):
            raise InputError("input_box must be a function ((h, w), (H, W)) -> (left, top, right, bottom) or None, "
                             f"got {type(self.input_box).__name__}")

    def __call__(self, batch: Array) -> Array:
        """Logits ``[B, K]`` of a preprocessed batch ``[B, H, W, C]`` (jitted)."""
        return forward(self.apply)(self.params, batch)

    @property
    def input_shape(self) -> tuple[int | None, int | None, int]:
        """``(H, W, C)`` of one preprocessed image; ``H, W`` are ``None`` when any size works."""
        h, w = self.input_size if self.input_size is not None else (None, None)
        return (h, w, int(self.channels))

    def replace(self, **changes: Any) -> "Model":
        return dataclasses.replace(self, **changes)


def input_key(layer: str) -> str:
    """The ``taps`` / ``acts`` key of ``layer``'s input (``"layer:input"``)."""
    return f"{layer}:input"


def _check_tokens(model: Model) -> None:
    """The token facts agree with each other and with ``layers``, or an ``InputError``."""
    declared = [*model.token_layers, *model.attention_layers]
    if declared and model.token_grid is None:
        raise InputError(f"{model.name} declares token or attention layers ({', '.join(declared)}) but no token_grid (gh, gw)")
    if model.token_grid is not None:
        g = tuple(model.token_grid)
        if len(g) != 2 or not all(isinstance(n, int) and n > 0 for n in g):
            raise InputError(f"token_grid must be two positive ints (gh, gw), got {model.token_grid!r}")
    unknown = [n for n in declared if n not in model.layers]
    if unknown:
        raise InputError(f"{model.name} declares token or attention layers it does not have: {', '.join(unknown)}")
    both = sorted(set(model.token_layers) & set(model.attention_layers))
    if both:
        raise InputError(f"layers {', '.join(both)} are declared both token and attention layers")
    bad = {n: p for n, p in model.token_layers.items() if not isinstance(p, int) or p < 0}
    if bad:
        raise InputError(f"token_layers maps each layer to its count of leading non-patch tokens (an int >= 0), got {bad}")


@functools.lru_cache(maxsize=32)
def forward(apply: ApplyFn, layers: tuple[str, ...] = ()) -> Callable[[PyTree, Array], Any]:
    """``jit(vmap(apply))`` over a batch ``[B, H, W, C]``: the logits ``[B, K]``, or with
    ``layers`` the dict of those layers' activations ``{layer: [B, ...]}``."""

    def one(params: PyTree, x: Array) -> Any:
        logits, acts = apply(params, x)
        return {k: acts[k] for k in layers} if layers else logits

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))
