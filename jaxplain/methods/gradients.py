"""Gradient family on one image: saliency, gradient x input, guided backprop, deconvnet."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxplain.types import ApplyFn, Array, PyTree, Relu


def score(apply: ApplyFn, params: PyTree, target: Array, relu: Relu | None = None) -> Callable[[Array], Array]:
    """``x -> logits[target]``: the scalar every gradient method differentiates."""
    return lambda x: apply(params, x, relu=relu)[0][target]


def gradient(apply: ApplyFn, params: PyTree, x: Array, target: Array) -> Array:
    """Vanilla saliency: ``d logit[target] / d x``, ``[H, W, C]`` (Captum ``Saliency(abs=False)``)."""
    return jax.grad(score(apply, params, target))(x)


def gradient_x_input(apply: ApplyFn, params: PyTree, x: Array, target: Array) -> Array:
    """``x * d logit[target] / d x`` (Captum ``InputXGradient``)."""
    return x * gradient(apply, params, x, target)


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """ReLU whose backward pass keeps positive gradients at positive inputs (guided backprop)."""
    return jax.nn.relu(x)


guided_relu.defvjp(
    lambda x: (jax.nn.relu(x), x),
    lambda x, g: (jnp.maximum(g, 0) * (x > 0).astype(g.dtype),),
)


@jax.custom_vjp
def deconv_relu(x: Array) -> Array:
    """ReLU whose backward pass rectifies the gradient and ignores the forward mask (deconvnet)."""
    return jax.nn.relu(x)


deconv_relu.defvjp(lambda x: (jax.nn.relu(x), None), lambda _, g: (jnp.maximum(g, 0),))


def guided_backprop(apply: ApplyFn, params: PyTree, x: Array, target: Array) -> Array:
    """Guided backpropagation (Springenberg et al. 2015): every ReLU backward is
    ``relu(grad) * (input > 0)``; ``[H, W, C]`` (Captum ``GuidedBackprop``)."""
    return jax.grad(score(apply, params, target, relu=guided_relu))(x)


def deconvnet(apply: ApplyFn, params: PyTree, x: Array, target: Array) -> Array:
    """Deconvnet (Zeiler & Fergus 2014): every ReLU backward is ``relu(grad)``; ``[H, W, C]``
    (Captum ``Deconvolution``)."""
    return jax.grad(score(apply, params, target, relu=deconv_relu))(x)
