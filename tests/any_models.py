"""Small grayscale image classifiers written the way their owners write them (Linen, NNX, Keras 3,
Equinox; a Linen net with ``train``, BatchNorm and Dropout; a Linen net returning a dict), each
wrapped by its adapter as a ``jaxplain.Model``. ``--model tests.any_models:NAME`` on the command
line reads them, so the folder run serves them as a user's own model.

Every builder takes ``seed`` and returns ``(model, native)``, ``native(x [B, 16, 16, 1]) -> logits
[B, 3]`` being the network called as its owner calls it (the test's independent reference), or,
through ``NAME`` without the ``_pair`` suffix, only the ``Model`` (what the CLI wants). Weights are
random with non-zero biases (and batch statistics) so no layer is linear along a path from zero.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

import jaxplain

SIZE, CLASSES = 16, 3


def _jitter(tree, seed: int):
    """Every float leaf plus a small normal draw: biases and statistics non-zero."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    return jax.tree.unflatten(treedef, [l + 0.1 * jax.random.normal(k, l.shape, l.dtype) if jnp.issubdtype(l.dtype, jnp.floating)
                                        else l for l, k in zip(leaves, keys)])


# ---- Linen


def _linen_classes():
    import flax.linen as nn

    class Gray(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="stem")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="features")(x))
            return nn.Dense(CLASSES, name="head")(x.mean(axis=(1, 2)))

    class Trained(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Conv(4, (3, 3), padding="SAME", name="stem")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
            x = nn.Dropout(0.5, deterministic=not train)(x)
            x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="features")(x))
            return nn.Dense(CLASSES, name="head")(x.mean(axis=(1, 2)))

    class Dict(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="stem")(x))
            f = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="features")(x))
            pooled = f.mean(axis=(1, 2))
            return {"logits": nn.Dense(CLASSES, name="head")(pooled), "embedding": pooled}

    return Gray, Trained, Dict


def linen_pair(seed: int = 0):
    Gray, _, _ = _linen_classes()
    module = Gray()
    variables = _jitter(module.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 1))), seed)
    return jaxplain.from_flax(module, variables, name="linen_gray"), lambda x: module.apply(variables, x)


def linen_train_pair(seed: int = 0):
    _, Trained, _ = _linen_classes()
    module = Trained()
    variables = _jitter(module.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 1)), train=False), seed)
    model = jaxplain.from_flax(module, variables, call_kwargs={"train": False}, name="linen_train")
    return model, lambda x: module.apply(variables, x, train=False)


def linen_dict_pair(seed: int = 0):
    _, _, Dict = _linen_classes()
    module = Dict()
    variables = _jitter(module.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 1))), seed)
    model = jaxplain.from_flax(module, variables, output="logits", name="linen_dict")
    return model, lambda x: module.apply(variables, x)["logits"]


# ---- NNX


def nnx_pair(seed: int = 0):
    from flax import nnx

    class Gray(nnx.Module):
        def __init__(self, rngs):
            self.stem = nnx.Conv(1, 4, (3, 3), padding="SAME", rngs=rngs)
            self.features = nnx.Conv(4, 8, (3, 3), padding="SAME", rngs=rngs)
            self.head = nnx.Linear(8, CLASSES, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.stem(x))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            x = nnx.relu(self.features(x))
            return self.head(x.mean(axis=(1, 2)))

    net = Gray(nnx.Rngs(seed))
    graphdef, state = nnx.split(net)
    net = nnx.merge(graphdef, _jitter(state, seed))
    return jaxplain.from_flax(net, name="nnx_gray"), lambda x: net(x)


# ---- Keras 3 (JAX backend)


def keras_pair(seed: int = 0):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(CLASSES, name="head")(x)
    net = keras.Model(inputs, outputs, name="keras_gray")
    rng = np.random.default_rng(seed)
    for v in net.weights:
        if len(v.shape) == 1:
            v.assign((0.1 * rng.normal(size=v.shape)).astype(np.float32))
    return jaxplain.from_keras(net), lambda x: net(x, training=False)


# ---- Equinox (channel-first inside, as Equinox writes it)


def equinox_pair(seed: int = 0):
    import equinox as eqx

    class Gray(eqx.Module):
        stem: eqx.nn.Conv2d
        features: eqx.nn.Conv2d
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.stem = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
            self.features = eqx.nn.Conv2d(4, 8, 3, padding=1, key=k2)
            self.head = eqx.nn.Linear(8, CLASSES, key=k3)

        def __call__(self, x):  # one image [1, H, W]
            x = jax.nn.relu(self.stem(x))
            x = eqx.nn.MaxPool2d(2, 2)(x)
            x = jax.nn.relu(self.features(x))
            return self.head(x.mean(axis=(1, 2)))

    net = Gray(jax.random.key(seed))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    net = eqx.combine(_jitter(params, seed), static)
    native = jax.vmap(lambda x: net(jnp.transpose(x, (2, 0, 1))))
    return jaxplain.from_equinox(net, name="equinox_gray"), native


PAIRS = {"linen": linen_pair, "nnx": nnx_pair, "keras": keras_pair, "equinox": equinox_pair,
         "linen_train": linen_train_pair, "linen_dict": linen_dict_pair}


def _model_only(builder):
    def build(seed: int = 0) -> jaxplain.Model:
        return builder(seed)[0]
    return build


linen, nnx_gray, keras_gray, equinox_gray, linen_train, linen_dict = map(_model_only, PAIRS.values())
