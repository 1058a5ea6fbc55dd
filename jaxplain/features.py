"""Feature visualisation: synthesise, by gradient ascent from noise, the image that maximises a
channel of a layer (or a class logit), vmapped over channels so many channels are one program.

Regularisers as in Olah et al. 2017 ("Feature Visualization"): random jitter each step, total
variation, and a decorrelated parameterisation (Fourier coefficients scaled by 1/frequency, and
colours through the ImageNet colour-correlation square root), squashed to [0, 1] by a sigmoid.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.runner import check_layer
from jaxplain.types import Array, Model

# Square root of ImageNet's RGB colour covariance (the constant Lucid uses), columns normalised.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


def _freq_scale(h: int, w: int, decay: float = 1.0) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    return (1.0 / np.maximum(f, 1.0 / max(h, w)) ** decay).astype(np.float32)


def _to_rgb(z: Array, param: str, size: tuple[int, int]) -> Array:
    """Parameters -> RGB in [0, 1], ``[H, W, 3]``."""
    h, w = size
    if param == "fourier":
        scale = jnp.asarray(_freq_scale(h, w))[..., None]
        spec = jax.lax.complex(z[0] * scale, z[1] * scale)
        img = jnp.fft.irfft2(spec, s=(h, w), axes=(0, 1)) / 4.0
    else:
        img = z
    img = img @ jnp.asarray(_COLOR).T
    return jax.nn.sigmoid(img)


def _init(key: Array, param: str, size: tuple[int, int]) -> Array:
    h, w = size
    if param == "fourier":
        return 0.01 * jax.random.normal(key, (2, h, w // 2 + 1, 3), jnp.float32)
    return 0.01 * jax.random.normal(key, (h, w, 3), jnp.float32)


@jax.custom_vjp
def redirected_relu(x: Array) -> Array:
    """ReLU whose gradient also flows into negative inputs when it would raise them (so a
    channel that is silent at the start can still be optimised; Olah et al.'s redirected ReLU)."""
    return jax.nn.relu(x)


redirected_relu.defvjp(
    lambda x: (jax.nn.relu(x), x),
    lambda x, g: (jnp.where((x > 0) | (g < 0), g, 0.0),),  # g < 0: raising x lowers the loss
)


def _preprocess_fn(model: Model):
    """A differentiable version of the model's preprocessing on [0, 1] RGB."""
    return lambda rgb01: model.preprocess(rgb01 * 255.0)


def visualize_features(
    model: Model,
    layer: str,
    channels: int | Sequence[int],
    *,
    steps: int = 256,
    key: Array | None = None,
    size: tuple[int, int] | None = None,
    lr: float = 0.05,
    param: str = "fourier",
    jitter: int = 8,
    tv: float = 1e-3,
) -> np.ndarray:
    """``float32 [N, H, W, 3]`` RGB images in [0, 1], one per channel, each maximising the mean of
    that channel of ``layer`` (for ``layer="predictions"``: the class logit).

    ``param``: ``"fourier"`` (decorrelated, the default) or ``"pixel"``; ``jitter``: the largest
    random shift (pixels) each step; ``tv``: weight of the total-variation penalty.
    """
    if key is None:
        raise InputError("visualize_features is random: pass key=jax.random.key(...)")
    if param not in ("fourier", "pixel"):
        raise InputError(f"param must be 'fourier' or 'pixel', not {param!r}")
    channels = [channels] if isinstance(channels, int) else list(channels)
    size = tuple(size or model.input_size or (224, 224))
    shape = check_layer(model, (*size, 3), layer)
    bad = [c for c in channels if not 0 <= c < shape[-1]]
    if bad:
        raise InputError(f"channel {bad[0]} is out of range: layer {layer!r} has {shape[-1]} channels")
    prep = _preprocess_fn(model)
    h, w = size

    def objective(z: Array, c: Array, k: Array, relu: Any) -> Array:
        rgb = _to_rgb(z, param, size)
        pad = jnp.pad(rgb, ((jitter, jitter), (jitter, jitter), (0, 0)), mode="reflect")
        dy, dx = jax.random.randint(k, (2,), 0, 2 * jitter + 1)
        shifted = jax.lax.dynamic_slice(pad, (dy, dx, 0), (h, w, 3))
        act = model.apply(model.params, prep(shifted), relu=relu)[1][layer]
        value = jnp.mean(act[..., c])
        tv_loss = jnp.mean(jnp.abs(jnp.diff(rgb, axis=0))) + jnp.mean(jnp.abs(jnp.diff(rgb, axis=1)))
        return -(value - tv * tv_loss)

    b1, b2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def run(z0: Array, cs: Array, keys: Array) -> Array:
        def one(z: Array, c: Array, ks: Array) -> Array:
            def stepper(relu: Any):
                def step(carry: tuple, k: Array) -> tuple[tuple, None]:  # one Adam step
                    z, m, v, t = carry
                    g = jax.grad(objective)(z, c, k, relu)
                    m, v, t = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g, t + 1
                    update = (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
                    return (z - lr * update, m, v, t), None

                return step

            # A quarter of the steps with redirected ReLUs wakes silent channels, then plain ReLUs.
            warm = max(1, steps // 4)
            carry = (z, jnp.zeros_like(z), jnp.zeros_like(z), jnp.zeros((), jnp.float32))
            carry, _ = jax.lax.scan(stepper(redirected_relu), carry, ks[:warm])
            carry, _ = jax.lax.scan(stepper(jax.nn.relu), carry, ks[warm:])
            return _to_rgb(carry[0], param, size)

        return jax.vmap(one)(z0, cs, keys)

    n = len(channels)
    k_init, k_steps = jax.random.split(key)
    z0 = jax.vmap(lambda k: _init(k, param, size))(jax.random.split(k_init, n))
    keys = jax.vmap(lambda k: jax.random.split(k, steps))(jax.random.split(k_steps, n))
    return np.asarray(run(z0, jnp.asarray(channels, jnp.int32), keys))
