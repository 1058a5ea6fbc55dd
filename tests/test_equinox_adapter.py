"""from_equinox: a small grayscale Equinox CNN (channel-first, one image per call, as Equinox
writes them) against the same weights written by hand as the Model contract in plain lax,
channel-last (the independent reference): logits, activations, a layer's input, taps and the
attributions of gradient, IG, guided backprop, Grad-CAM and layer IG; the registry's property
checks (shape, dtype, finite; batch = loop; jit = eager); the user's module untouched; a stateful
module with BatchNorm; bad input.

Tolerance: 1e-5 of the largest reference value (float32): the two networks run the same
arithmetic through different code (OIHW against HWIO convolutions, a transposed flatten)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxplain
from jaxplain.errors import InputError
from jaxplain.metrics.randomisation import randomised_layers
from jaxplain.types import Model, input_key
from tests import test_method_properties as props

RTOL = 1e-5
SIZE = 16
LAYERS = ("conv1", "act", "pool", "features.layers.0", "features.layers.1", "features", "fc1", "head")


def close(a, b, rtol=RTOL):
    """max |a - b| <= rtol * max |b|, with a non-trivial b."""
    a, b = np.asarray(a), np.asarray(b)
    scale = np.abs(b).max()
    assert a.shape == b.shape and scale > 0 and np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


class CNN(eqx.Module):
    """Grayscale ``[1, 16, 16]`` -> 10 logits: ReLU as an ``eqx.nn.Lambda`` and as a function call."""

    conv1: eqx.nn.Conv2d
    act: eqx.nn.Lambda
    pool: eqx.nn.MaxPool2d
    features: eqx.nn.Sequential
    fc1: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k[0])
        self.act = eqx.nn.Lambda(jax.nn.relu)
        self.pool = eqx.nn.MaxPool2d(2, 2)
        self.features = eqx.nn.Sequential([eqx.nn.Conv2d(4, 8, 3, padding=1, key=k[1]), eqx.nn.Lambda(jax.nn.relu)])
        self.fc1 = eqx.nn.Linear(8 * 8 * 8, 16, key=k[2])
        self.head = eqx.nn.Linear(16, 10, key=k[3])

    def __call__(self, x):
        x = self.features(self.pool(self.act(self.conv1(x))))
        return self.head(jax.nn.relu(self.fc1(x.reshape(-1))))


def _set(net, where, w, b):
    return eqx.tree_at(lambda m: (where(m).weight, where(m).bias), net, (jnp.asarray(w), jnp.asarray(b)))


def random_cnn(seed=3):
    """The CNN with He-scaled weights and non-zero biases (logits of order one)."""
    net = CNN(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    for where in (lambda m: m.conv1, lambda m: m.features.layers[0], lambda m: m.fc1, lambda m: m.head):
        layer = where(net)
        fan_in = int(np.prod(layer.weight.shape[1:]))
        w = (rng.normal(size=layer.weight.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        net = _set(net, where, w, (0.1 * rng.normal(size=layer.bias.shape)).astype(np.float32))
    return net


# ---- By hand: the contract, plain lax, channel-last


def hand_params(net):
    """The same weights, HWIO kernels, ``[K]`` biases and ``[in, out]`` dense kernels."""
    def conv(c):
        return {"kernel": jnp.transpose(c.weight, (2, 3, 1, 0)), "bias": c.bias.reshape(-1)}

    def dense(d):
        return {"kernel": d.weight.T, "bias": d.bias}

    return {"conv1": conv(net.conv1), "conv2": conv(net.features.layers[0]), "fc1": dense(net.fc1),
            "head": dense(net.head)}


def hand_apply(params, x, taps=None, relu=None):
    """The CNN on one image ``[16, 16, 1]``; records (and taps) ``conv1``, ``pool`` (the input of
    ``features.layers.0``) and ``features.layers.0``."""
    relu, taps, acts = relu or jax.nn.relu, taps or {}, {}

    def out(name, h):
        h = h + taps[name] if name in taps else h
        acts[name] = h
        return h

    def conv(p, h):
        y = lax.conv_general_dilated(h[None], p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y[0] + p["bias"]

    h = relu(out("conv1", conv(params["conv1"], x)))
    h = out("pool", lax.reduce_window(h, -jnp.inf, lax.max, (2, 2, 1), (2, 2, 1), "VALID"))
    h = relu(out("features.layers.0", conv(params["conv2"], h)))
    h = jnp.transpose(h, (2, 0, 1)).reshape(-1)  # Equinox flattens [C, h, w]
    h = relu(h @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    return h @ params["head"]["kernel"] + params["head"]["bias"], acts


@pytest.fixture(scope="module")
def net():
    return random_cnn()


@pytest.fixture(scope="module")
def models(net):
    hand = Model(apply=hand_apply, params=jax.device_put(hand_params(net)), layers=("conv1", "pool", "features.layers.0"),
                 preprocess=lambda a: a, input_size=(SIZE, SIZE), channels=1, name="by-hand")
    return jaxplain.from_equinox(net, input_size=(SIZE, SIZE), name="eqx-cnn"), hand


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(5).normal(size=(3, SIZE, SIZE, 1)).astype(np.float32)


TARGETS = np.array([3, 7, 1])
METHODS = {
    "gradient": {},
    "integrated_gradients": {"steps": 7},
    "guided_backprop": {},
    "grad_cam": {"layer": "features.layers.0"},
    "layer_integrated_gradients": {"layer": "features.layers.0", "steps": 7},
}


@pytest.fixture(scope="module")
def explained(models, xs):
    """``{method: (eqx, by hand)}`` on the batch."""
    m, hand = models
    return {n: (np.asarray(jaxplain.explain(m, xs, TARGETS, n, **s)), np.asarray(jaxplain.explain(hand, xs, TARGETS, n, **s)))
            for n, s in METHODS.items()}


def test_model_facts_logits_acts_layer_inputs_and_taps(models, xs):
    """Layers by attribute path in forward order, C from the first conv, conv layers shown
    channel-last; the logits, the acts, a layer's input and the gradients through taps on an
    output and on an input match the hand-written model."""
    m, hand = models
    assert m.layers == LAYERS and m.channels == 1 and m.input_shape == (SIZE, SIZE, 1)
    assert m.layer_inputs == LAYERS  # every submodule here takes one float array
    x = jnp.asarray(xs[0])
    logits, acts = m.apply(m.params, x)
    want_logits, want = hand.apply(hand.params, x)
    close(logits, want_logits)
    for k in ("conv1", "features.layers.0"):
        close(acts[k], want[k])
    close(acts["pool"], want["pool"])
    close(acts[input_key("features.layers.0")], want["pool"])
    close(acts[input_key("conv1")], x)
    assert acts["features.layers.0"].shape == (8, 8, 8) and acts["fc1"].shape == (16,)
    # gradients with respect to taps: an output (conv1), an input (of features.layers.0)
    rng = np.random.default_rng(1)
    t1, t2 = (jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in ((SIZE, SIZE, 4), (8, 8, 4)))
    ours = jax.grad(lambda a, b: m.apply(m.params, x, {"conv1": a, input_key("features.layers.0"): b})[0][3],
                    argnums=(0, 1))(t1, t2)
    theirs = jax.grad(lambda a, b: hand.apply(hand.params, x, {"conv1": a, "pool": b})[0][3], argnums=(0, 1))(t1, t2)
    for a, b in zip(ours, theirs):
        close(a, b)
    close(m.apply(m.params, x, {"conv1": t1})[0], hand.apply(hand.params, x, {"conv1": t1})[0])
    # model randomisation finds each top-level layer's weights under its attribute path
    assert randomised_layers(m) == ["conv1", "features", "fc1", "head"]


@pytest.mark.parametrize("method", list(METHODS))
def test_attributions_match_the_hand_written_model(explained, method):
    close(*explained[method])


# A swapped rectifier, a layer's activation and gradient, taps along a path (each also takes a plain gradient).
PROPERTY = ["guided_backprop", "grad_cam", "layer_integrated_gradients"]


def test_registry_properties(models, xs, explained):
    """tests/test_method_properties.py's checks: shape, dtype, finite; explain on the batch = the
    per-image method jitted in a loop; jitted = eager."""
    m = models[0]
    for name in PROPERTY:
        got = explained[name][0]
        shape = {"grad_cam": (3, SIZE, SIZE), "layer_integrated_gradients": (3, 8, 8, 8)}.get(name, xs.shape)
        assert got.shape == shape and got.dtype == np.float32 and np.isfinite(got).all() and np.abs(got).max() > 0
        s = METHODS[name]
        jitted = props._direct(m, xs[:2], TARGETS[:2], name, True, s)
        props.close(got[:2], jitted)
        props.close(jitted[:1], props._direct(m, xs[:1], TARGETS[:1], name, False, s))


def test_the_users_module_is_untouched(net, models, explained):
    before = [np.array(v) for v in jax.tree.leaves(random_cnn())]
    assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(net)))
    assert jax.tree.structure(net) == jax.tree.structure(random_cnn())
    assert all(type(getattr(net, f.name)).__module__.startswith("equinox") for f in dataclasses.fields(net))


# ---- A stateful module: BatchNorm with its running statistics


class BNNet(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(2, 3, 3, padding=1, key=k[0])
        self.bn = eqx.nn.BatchNorm(3, "batch", mode="ema")
        self.head = eqx.nn.Linear(3, 4, key=k[1])

    def __call__(self, x, state):
        h, state = self.bn(self.conv(x), state)
        return self.head(jax.nn.relu(h).mean(axis=(1, 2))), state


def test_stateful_module_in_inference_mode():
    """``state=``: BatchNorm normalises with the running statistics (non-zero, set by hand), the
    module in inference mode; its output is a layer, channel-last."""
    net, state = eqx.nn.make_with_state(BNNet)(jax.random.key(0))
    rng = np.random.default_rng(2)
    mean, var = (jnp.asarray(v.astype(np.float32)) for v in (rng.normal(size=3), 0.5 + rng.random(3)))
    state = state.set(net.bn.ema_state_index, (mean, var))
    w, b = jnp.asarray(rng.normal(size=3).astype(np.float32)), jnp.asarray(rng.normal(size=3).astype(np.float32))
    net = eqx.tree_at(lambda n: (n.bn.weight, n.bn.bias), net, (w, b))
    m = jaxplain.from_equinox(net, state=state, input_size=(6, 6))
    assert m.layers == ("conv", "bn", "head") and m.channels == 2
    x = jnp.asarray(rng.normal(size=(6, 6, 2)).astype(np.float32))

    def by_hand(v):
        c = jnp.moveaxis(net.conv(jnp.moveaxis(v, -1, 0)), 0, -1)  # the conv is checked above
        h = (c - mean) / jnp.sqrt(var + net.bn.eps) * w + b
        return net.head.weight @ jax.nn.relu(h).mean(axis=(0, 1)) + net.head.bias, h

    logits, acts = m.apply(m.params, x)
    want_logits, want_bn = by_hand(x)
    close(logits, want_logits)
    close(acts["bn"], want_bn)
    close(jax.grad(lambda v: m.apply(m.params, v)[0][2])(x), jax.grad(lambda v: by_hand(v)[0][2])(x))


# ---- Bad input


class Pair(eqx.Module):
    lin: eqx.nn.Linear

    def __call__(self, x):
        h = self.lin(x.reshape(-1))
        return {"logits": h, "aux": h[:2]}


def test_bad_input(net):
    with pytest.raises(InputError, match="from_equinox takes an equinox.Module, got function"):
        jaxplain.from_equinox(lambda x: x)
    with pytest.raises(InputError, match=r"CNN does not run on a \(20, 20, 1\) float32 input given to it as "
                                         r"\(1, 20, 20\).*input_shape=\(H, W, C\)"):
        jaxplain.from_equinox(net, input_size=(20, 20))
    with pytest.raises(InputError, match=r"unknown layer 'conv9'; CNN's layers: conv1, act, pool, features.layers.0"):
        jaxplain.from_equinox(net, input_size=(SIZE, SIZE), layers=["conv9"])
    pair = Pair(eqx.nn.Linear(12, 5, key=jax.random.key(0)))
    with pytest.raises(InputError, match=r"no 2-D eqx.nn.Conv.*give input_shape=\(H, W, C\)"):
        jaxplain.from_equinox(pair)
    with pytest.raises(InputError, match=r"Pair returns a dict, not an array of logits: pass output=.*"
                                         r"\['aux'\]: \(2,\), \['logits'\]: \(5,\)"):
        jaxplain.from_equinox(pair, input_shape=(2, 2, 3))
    m = jaxplain.from_equinox(pair, input_shape=(2, 2, 3), output="logits")
    x = jnp.arange(12, dtype=jnp.float32).reshape(2, 2, 3)
    close(m.apply(m.params, x)[0], pair.lin(jnp.moveaxis(x, -1, 0).reshape(-1)))
    with pytest.raises(InputError, match="state must be the eqx.nn.State"):
        jaxplain.from_equinox(net, state={"a": 1})


def test_a_stateful_module_without_state_and_output_on_a_stateful_one():
    """Found by trying a model of one's own: a stateful module given no ``state=`` is told to pass
    it (not to change its input shape), and ``output=`` on a stateful one says that it picks from
    the output with the returned state already set aside."""
    net, state = eqx.nn.make_with_state(BNNet)(jax.random.key(0))
    with pytest.raises(InputError, match=r"BNNet takes more than the image \(.*missing 1 required positional "
                                         r"argument: 'state'\): a stateful module.*needs state="):
        jaxplain.from_equinox(net, input_size=(6, 6))
    with pytest.raises(InputError, match=r"BNNet must return logits \[K\], got \(\) from output=0, which picks from "
                                         r"the module's output, the state it returns already set aside"):
        jaxplain.from_equinox(net, state=state, input_size=(6, 6), output=0)
