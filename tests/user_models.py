"""Models as a user of the command line writes them (``--model tests.user_models:tiny``): plain
functions returning a ``jaxplain.Model``, and functions that fail in each way the command refuses."""

import jax
import numpy as np

import jaxplain

SIDE = 16  # the input side of ``tiny``


def tiny_apply(params, x, taps=None, relu=None):
    """A conv (3x3, SAME) + ReLU + global mean + dense network of one image ``[H, W, C]``."""
    a = jax.lax.conv_general_dilated(x[None], params["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + params["bias"]
    a = a + (taps or {}).get("conv", 0.0)
    r = (relu or jax.nn.relu)(a)
    return r.mean((0, 1)) @ params["dense"] + params["dense_bias"], {"conv": a}


def tiny_params(width, channels, classes, seed):
    """Seeded random weights of ``tiny_apply``, biases non-zero."""
    k = jax.random.split(jax.random.key(seed), 4)
    return {"kernel": jax.random.normal(k[0], (3, 3, channels, width)) * 0.5,
            "bias": jax.random.normal(k[1], (width,)) * 0.1,
            "dense": jax.random.normal(k[2], (width, classes)),
            "dense_bias": jax.random.normal(k[3], (classes,)) * 0.1}


def gray(u):
    """``uint8 [B, H, W, 3]`` (or ``[B, H, W, 1]``) -> ``float32 [B, H, W, 1]`` in [0, 1]: the mean of the channels."""
    return np.asarray(u, np.float32).mean(-1, keepdims=True) / 255.0


def tiny(width=8, classes=4, seed=0, name="tiny-gray"):
    """A grayscale ``tiny_apply`` network of ``SIDE``x``SIDE`` inputs, ``width`` conv channels."""
    return jaxplain.Model(tiny_apply, tiny_params(width, 1, classes, seed), ("conv",), preprocess=gray,
                          input_size=(SIDE, SIDE), name=name, channels=1)


def raises(width=8):
    raise ValueError(f"no weights for width {width}")


def not_a_model():
    return {"apply": tiny_apply}


NOT_CALLABLE = 3
