"""Layer and neuron attribution through the Model contract's taps: one mechanism for all.

A tap added to a layer's output has the layer's activation gradient as its gradient, so
``d score / d tap`` at ``tap = 0`` is ``d score / d activation`` without hooks.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree, Relu, input_key

from jaxplain.baselines import baseline_image
from .integrated import Refined, integrate, path_passes
from jaxplain.chunks import counts_images, keep
from jaxplain.marks import cost, output, per_image, targetless

Neuron = int | tuple[int | slice, ...] | Callable[[Array], Array]
"""A neuron selector (Captum's ``neuron_selector``, on one image's activation in HWC order):
an int ``k``, the mean of channel ``k`` (the last axis; on a flat layer ``[K]``, unit ``k``);
a tuple of ints, one per axis, one unit (``(i, j, k)``); a tuple with slices (up to one entry
per axis, the missing ones whole), the SUM of the units it selects, as Captum; a function
``act -> scalar`` of the layer's activation (API only; a setting keyed by the function itself,
as ``jax.jit`` keys a static one: define it once and let it read nothing that changes)."""

ATTRIBUTE_TO = ("output", "input")


def layer_key(layer: str | None, attribute_to: str = "output") -> str | None:
    """The ``acts`` / ``taps`` key a method reads: ``layer`` (its output) or ``input_key(layer)``
    (its input, ``attribute_to="input"``, Captum's ``attribute_to_layer_input``)."""
    if attribute_to not in ATTRIBUTE_TO:
        raise InputError(f"attribute_to must be 'output' or 'input', got {attribute_to!r}")
    return input_key(layer) if attribute_to == "input" and layer is not None else layer


def activation(apply: ApplyFn, params: PyTree, x: Array, layer: str | None) -> Array:
    """The activation of ``layer`` (a key of ``acts``: a layer, or ``input_key(layer)`` for its
    input) for one image (its shape is the layer's, e.g. ``[h, w, K]``)."""
    if layer is None:
        raise InputError("this method needs layer=<name>; jaxplain.explain picks the last conv layer")
    acts = apply(params, x)[1]
    if layer not in acts:
        if layer.endswith(input_key("")):
            raise InputError(f"the model records no input of layer {layer[:-len(input_key(''))]!r} "
                             f"(Model.layer_inputs); what it records: {', '.join(acts)}")
        raise InputError(f"unknown layer {layer!r}; the model's layers: {', '.join(acts)}")
    return acts[layer]


def layer_gradient(apply: ApplyFn, params: PyTree, x: Array, target: Array, layer: str | None,
                   relu: Relu | None = None) -> tuple[Array, Array]:
    """``(A, dS/dA)``: the layer's activation and the gradient of ``logits[target]`` with respect to it."""
    shape = jax.eval_shape(lambda: activation(apply, params, x, layer))

    def score(tap: Array) -> tuple[Array, Array]:
        logits, acts = apply(params, x, taps={layer: tap}, relu=relu)
        return logits[target], acts[layer]

    grad, act = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return act, grad


def neuron_value(act: Array, neuron: Neuron) -> Array:
    """The scalar ``neuron`` (a ``Neuron`` selector) selects from one image's activation ``act``."""
    if callable(neuron):
        return neuron(act)
    if isinstance(neuron, (int, np.integer)):
        return jnp.mean(act[..., neuron])
    idx = tuple(neuron)
    if any(isinstance(i, slice) for i in idx):
        return jnp.sum(act[idx])
    return act[idx]


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_neuron(shape: tuple[int, ...], neuron: Neuron | None, layer: str | None = None) -> None:
    """``neuron`` selects a scalar from an activation of ``shape``, or an ``InputError`` naming
    the layer and its shape."""
    at = f"layer {layer!r} of shape {tuple(shape)}" if layer is not None else f"a layer of shape {tuple(shape)}"
    if neuron is None:
        raise InputError("this method needs neuron=<channel>, neuron=(i, j, k), a tuple with slices or a function")
    if callable(neuron):
        try:
            out = jax.eval_shape(neuron, jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
        except Exception as e:  # noqa: BLE001  (the user's function, whatever it raises)
            raise InputError(f"the neuron function fails on {at}: {type(e).__name__}: {e}") from None
        if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
            got = f"shape {out.shape}, dtype {out.dtype}" if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
            raise InputError(f"the neuron function must return one float (a scalar) of {at}'s activation, got {got}")
        return
    if _is_int(neuron):
        if not 0 <= neuron < shape[-1]:
            raise InputError(f"channel {neuron} is out of range: the layer has {shape[-1]} channels ({at})")
        return
    if not isinstance(neuron, (tuple, list)) or not all(_is_int(i) or isinstance(i, slice) for i in neuron):
        raise InputError(f"neuron must be an int (a channel), a tuple of ints and slices or a function, got {neuron!r}")
    idx = tuple(neuron)
    sliced = any(isinstance(i, slice) for i in idx)
    if len(idx) != len(shape) and not (sliced and len(idx) < len(shape)):
        need = f"{len(shape)} entries (HWC order)" + (" or fewer with a slice" if not sliced else " at most")
        raise InputError(f"neuron {idx} has {len(idx)} entries: {at} needs {need}")
    for i, n in zip(idx, shape):
        if isinstance(i, slice):
            bounds = [b for b in (i.start, i.stop) if b is not None]
            if not all(_is_int(b) for b in (*bounds, *(() if i.step is None else (i.step,)))) or i.step == 0:
                raise InputError(f"neuron {idx}: a slice takes ints (and a non-zero step), got {i}")
            if any(not -n <= b <= n for b in bounds):
                raise InputError(f"neuron {idx} is out of range for {at}: {i} on an axis of {n}")
            if not range(n)[i]:
                raise InputError(f"neuron {idx} selects no unit of {at}: {i} is empty on an axis of {n}")
        elif not 0 <= i < n:
            raise InputError(f"neuron {idx} is out of range for {at}")


@output("layer")
def layer_gradient_x_activation(apply: ApplyFn, params: PyTree, x: Array, target: Array, *,
                                layer: str | None = None, attribute_to: str = "output") -> Array:
    """``A * dS/dA`` at ``layer``, the layer's shape (Captum ``LayerGradientXActivation``);
    ``attribute_to="input"``: at the layer's input (``attribute_to_layer_input=True``)."""
    act, grad = layer_gradient(apply, params, x, target, layer_key(layer, attribute_to))
    return act * grad


@output("layer")
@cost(path_passes)
@per_image(baseline=3)
@counts_images
def layer_integrated_gradients(apply: ApplyFn, params: PyTree, x: Array, target: Array, *,
                               layer: str | None = None, steps: int = 50, rule: str = "gausslegendre",
                               baseline: str | Array = "zeros", key: Array | None = None,
                               chunk: int | None = 16, return_delta: bool = False, tolerance: float | None = None,
                               max_steps: int = 128, per_round: int = 8,
                               multiply_by_inputs: bool = True,
                               attribute_to: str = "output") -> Array | tuple[Array, Array] | Refined:
    """Integrated gradients in ``layer``'s activation space (Captum ``LayerIntegratedGradients``):
    the layer's output runs from its value at the baseline input to its value at ``x`` while the
    rest of the network follows; the result has the layer's shape. ``return_delta``,
    ``tolerance``, ``max_steps``, ``per_round``: as ``integrated_gradients``'s, the score ``F``
    along this path (``F(0)``: the layer set to its value at the baseline). ``multiply_by_inputs=False``:
    the gradient averaged along the path, without the factor ``A(x) - A(b)``, as Captum's option;
    then neither ``tolerance`` nor ``return_delta`` (no completeness). ``attribute_to="input"``:
    the same along the layer's input (Captum's ``attribute_to_layer_input=True``)."""
    layer = layer_key(layer, attribute_to)
    act, base = keep(lambda: (activation(apply, params, x, layer),
                              activation(apply, params, baseline_image(baseline, x, key), layer)))

    def f(tap: Array) -> Array:  # the score with the layer's output moved by tap
        return apply(params, x, taps={layer: tap})[0][target]

    # the tap runs from base - act to 0: act + tap from base to act
    return integrate("layer_integrated_gradients", f, base - act, jnp.zeros_like(act), rule=rule, steps=steps,
                     chunk=chunk, return_delta=return_delta, tolerance=tolerance, max_steps=max_steps,
                     per_round=per_round, multiply_by_inputs=multiply_by_inputs)


def _neuron_score(apply: ApplyFn, params: PyTree, layer: str, neuron: Neuron) -> Callable[[Array], Array]:
    return lambda v: neuron_value(apply(params, v)[1][layer], neuron)


@targetless
def neuron_gradient(apply: ApplyFn, params: PyTree, x: Array, target: Array, *,
                    layer: str | None = None, neuron: Neuron | None = None, attribute_to: str = "output") -> Array:
    """Gradient of the neuron ``neuron`` selects (a ``Neuron``: a unit, a channel's mean, a sum
    over slices, a function) of ``layer`` with respect to the input, ``[H, W, C]`` (Captum
    ``NeuronGradient``); ``attribute_to="input"`` selects it on the layer's input (Captum's
    ``attribute_to_neuron_input=True``); ``target`` is not used."""
    layer = layer_key(layer, attribute_to)
    check_neuron(jax.eval_shape(lambda: activation(apply, params, x, layer)).shape, neuron, layer)
    return jax.grad(_neuron_score(apply, params, layer, neuron))(x)


@targetless
@cost(path_passes)
@per_image(baseline=3)
@counts_images
def neuron_integrated_gradients(apply: ApplyFn, params: PyTree, x: Array, target: Array, *,
                                layer: str | None = None, neuron: Neuron | None = None, steps: int = 50,
                                rule: str = "gausslegendre", baseline: str | Array = "zeros",
                                key: Array | None = None, chunk: int | None = 16, return_delta: bool = False,
                                tolerance: float | None = None, max_steps: int = 128,
                                per_round: int = 8, attribute_to: str = "output") -> Array | tuple[Array, Array] | Refined:
    """Integrated gradients of the neuron ``neuron`` selects (a ``Neuron``) of ``layer``, ``[H, W, C]``
    (Captum ``NeuronIntegratedGradients``); ``target`` is not used. ``return_delta``,
    ``tolerance``, ``max_steps``, ``per_round``: as ``integrated_gradients``'s, for the neuron.
    ``attribute_to="input"``: the neuron of the layer's input (``attribute_to_neuron_input=True``)."""
    layer = layer_key(layer, attribute_to)
    check_neuron(jax.eval_shape(lambda: activation(apply, params, x, layer)).shape, neuron, layer)
    f = _neuron_score(apply, params, layer, neuron)
    base = baseline_image(baseline, x, key)
    return integrate("neuron_integrated_gradients", f, base, x, rule=rule, steps=steps, chunk=chunk,
                     return_delta=return_delta, tolerance=tolerance, max_steps=max_steps, per_round=per_round)
