"""Layer and neuron attribution through the Model contract's taps: one mechanism for all.

A tap added to a layer's output has the layer's activation gradient as its gradient, so
``d score / d tap`` at ``tap = 0`` is ``d score / d activation`` without hooks.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree, Relu

from jaxplain.baselines import baseline_image
from .integrated import Refined, integrate, path_passes
from jaxplain.chunks import counts_images, keep
from jaxplain.marks import cost, output, per_image, targetless

Neuron = int | tuple[int, ...]


def activation(apply: ApplyFn, params: PyTree, x: Array, layer: str | None) -> Array:
    """The activation of ``layer`` for one image (its shape is the layer's, e.g. ``[h, w, K]``)."""
    if layer is None:
        raise InputError("this method needs layer=<name>; jaxplain.explain picks the last conv layer")
    acts = apply(params, x)[1]
    if layer not in acts:
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
    """One unit (a full index tuple, e.g. ``(i, j, k)`` in HWC order) or the mean of one channel (an int)."""
    if isinstance(neuron, int):
        return jnp.mean(act[..., neuron])
    return act[tuple(neuron)]


def check_neuron(shape: tuple[int, ...], neuron: Neuron | None) -> None:
    if neuron is None:
        raise InputError("this method needs neuron=<channel> or neuron=(i, j, k)")
    if isinstance(neuron, int):
        if not 0 <= neuron < shape[-1]:
            raise InputError(f"channel {neuron} is out of range: the layer has {shape[-1]} channels")
        return
    idx = tuple(neuron)
    if len(idx) != len(shape) or any(not 0 <= i < n for i, n in zip(idx, shape)):
        raise InputError(f"neuron {idx} is out of range for a layer of shape {shape}")


@output("layer")
def layer_gradient_x_activation(apply: ApplyFn, params: PyTree, x: Array, target: Array, *,
                                layer: str | None = None) -> Array:
    """``A * dS/dA`` at ``layer``, the layer's shape (Captum ``LayerGradientXActivation``)."""
    act, grad = layer_gradient(apply, params, x, target, layer)
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
                               multiply_by_inputs: bool = True) -> Array | tuple[Array, Array] | Refined:
    """Integrated gradients in ``layer``'s activation space (Captum ``LayerIntegratedGradients``):
    the layer's output runs from its value at the baseline input to its value at ``x`` while the
    rest of the network follows; the result has the layer's shape. ``return_delta``,
    ``tolerance``, ``max_steps``, ``per_round``: as ``integrated_gradients``'s, the score ``F``
    along this path (``F(0)``: the layer set to its value at the baseline). ``multiply_by_inputs=False``:
    the gradient averaged along the path, without the factor ``A(x) - A(b)``, as Captum's option;
    then neither ``tolerance`` nor ``return_delta`` (no completeness)."""
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
                    layer: str | None = None, neuron: Neuron | None = None) -> Array:
    """Gradient of one unit or channel of ``layer`` with respect to the input, ``[H, W, C]``
    (Captum ``NeuronGradient``); ``target`` is not used."""
    check_neuron(jax.eval_shape(lambda: activation(apply, params, x, layer)).shape, neuron)
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
                                per_round: int = 8) -> Array | tuple[Array, Array] | Refined:
    """Integrated gradients of one unit or channel of ``layer``, ``[H, W, C]``
    (Captum ``NeuronIntegratedGradients``); ``target`` is not used. ``return_delta``,
    ``tolerance``, ``max_steps``, ``per_round``: as ``integrated_gradients``'s, for the neuron."""
    check_neuron(jax.eval_shape(lambda: activation(apply, params, x, layer)).shape, neuron)
    f = _neuron_score(apply, params, layer, neuron)
    base = baseline_image(baseline, x, key)
    return integrate("neuron_integrated_gradients", f, base, x, rule=rule, steps=steps, chunk=chunk,
                     return_delta=return_delta, tolerance=tolerance, max_steps=max_steps, per_round=per_round)
