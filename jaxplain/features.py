"""Feature visualisation: synthesise, by gradient ascent from noise, the image that maximises a
channel of a layer (or a class logit), vmapped over channels so many channels are one program.

Regularisers as in Olah et al. 2017 ("Feature Visualization"): random jitter each step, total
variation, and a decorrelated parameterisation (Fourier coefficients scaled by 1/frequency, and
colours through the ImageNet colour-correlation square root), squashed to [0, 1] by a sigmoid.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxplain.errors import InputError
from jaxplain.checks import positive_int
from jaxplain.engine.shapes import check_layer
from jaxplain.types import ApplyFn, Array, Model, PyTree

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


@functools.lru_cache(maxsize=16)
def _optimiser(apply: ApplyFn, preprocess: Callable, layer: str, size: tuple[int, int], param: str, steps: int,
               lr: float, jitter: int, tv: float) -> Callable:
    """The jitted ascent ``(params, z0 [N, ...], channels [N], keys [N, steps]) -> [N, H, W, 3]``:
    one program per settings (jit caches per shape), the weights an argument."""
    h, w = size
    opt = optax.adam(lr)

    def objective(params: PyTree, z: Array, c: Array, k: Array, relu: Any) -> Array:
        rgb = _to_rgb(z, param, size)
        pad = jnp.pad(rgb, ((jitter, jitter), (jitter, jitter), (0, 0)), mode="reflect")
        dy, dx = jax.random.randint(k, (2,), 0, 2 * jitter + 1)
        shifted = jax.lax.dynamic_slice(pad, (dy, dx, 0), (h, w, 3))
        act = apply(params, preprocess(shifted * 255.0), relu=relu)[1][layer]
        tv_loss = jnp.mean(jnp.abs(jnp.diff(rgb, axis=0))) + jnp.mean(jnp.abs(jnp.diff(rgb, axis=1)))
        return -(jnp.mean(act[..., c]) - tv * tv_loss)

    def one(params: PyTree, z: Array, c: Array, ks: Array) -> Array:
        def stepper(relu: Any) -> Callable:
            def step(carry: tuple, k: Array) -> tuple[tuple, None]:
                z, state = carry
                g = jax.grad(objective, argnums=1)(params, z, c, k, relu)
                with jax.numpy_dtype_promotion("standard"):  # optax mixes its int step count with floats
                    updates, state = opt.update(g, state, z)
                return (optax.apply_updates(z, updates), state), None

            return step

        # A quarter of the steps with redirected ReLUs wakes silent channels, then plain ReLUs.
        warm = max(1, steps // 4)
        carry, _ = jax.lax.scan(stepper(redirected_relu), (z, opt.init(z)), ks[:warm])
        carry, _ = jax.lax.scan(stepper(jax.nn.relu), carry, ks[warm:])
        return _to_rgb(carry[0], param, size)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


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
    steps = positive_int(steps, "steps")
    if param not in ("fourier", "pixel"):
        raise InputError(f"param must be 'fourier' or 'pixel', not {param!r}")
    if model.channels != 3:
        raise InputError(f"visualize_features optimises an RGB picture (colour-decorrelated), and {model.name} takes "
                         f"{model.channels}-channel images: it draws features of RGB models only")
    channels = [channels] if isinstance(channels, int) else list(channels)
    if not channels:
        raise InputError("visualize_features needs at least one channel")
    size = tuple(size or model.input_size or (224, 224))
    shape = check_layer(model, (*size, 3), layer)
    bad = [c for c in channels if not 0 <= c < shape[-1]]
    if bad:
        raise InputError(f"channel {bad[0]} is out of range: layer {layer!r} has {shape[-1]} channels")
    run = _optimiser(model.apply, model.preprocess, layer, size, param, steps, lr, jitter, tv)
    n = len(channels)
    k_init, k_steps = jax.random.split(key)
    z0 = jax.vmap(lambda k: _init(k, param, size))(jax.random.split(k_init, n))
    keys = jax.vmap(lambda k: jax.random.split(k, steps))(jax.random.split(k_steps, n))
    return np.asarray(run(model.params, z0, jnp.asarray(channels, jnp.int32), keys))
