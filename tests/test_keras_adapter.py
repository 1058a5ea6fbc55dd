"""from_keras: a grayscale Keras CNN (Functional and Sequential) against Keras' own forward pass
and a hand-written JAX ``apply`` of the same weights (the independent reference, plain lax); a
VGG-style RGB Keras net against the same weights in an NNX module through ``from_flax``; weights
assigned after ``from_keras`` (as training leaves them) are the ones explained; a subclassed model gives logits only; bad
inputs fail with a message naming the problem.

Tolerance: 1e-5 of the largest reference value (float32: the same arithmetic through Keras'
layers, lax calls or flax's modules agrees to the last bits). All models are tiny (16x16) and
built once per module; conftest sets ``KERAS_BACKEND=jax``."""

import ast
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from flax import nnx
from jax import lax
from keras import layers as kl

import jaxplain
from jaxplain.errors import InputError, InputWarning
from jaxplain.types import Model, input_key
from tests import test_method_properties as props
from tests.method_settings import settings_for

RTOL = 1e-5
NAMES = ("c1", "p1", "block3_conv2", "bn", "r", "gap", "fc1", "drop", "pred")


def close(a, b, rtol=RTOL):
    """max |a - b| <= rtol * max |b|, with a non-trivial b."""
    a, b = np.asarray(a), np.asarray(b)
    scale = np.abs(b).max()
    assert a.shape == b.shape and scale > 0 and np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


def gray_layers(softmax: bool = True) -> list:
    """A grayscale CNN, 16x16x1: conv-relu, pool, conv ``block3_conv2`` (8x8x8, the layer the shared
    property settings name), batch norm, a ReLU layer, GAP, dense-relu, dropout, dense (softmax)."""
    return [kl.Conv2D(4, 3, padding="same", activation="relu", name="c1"), kl.MaxPooling2D(name="p1"),
            kl.Conv2D(8, 3, padding="same", name="block3_conv2"), kl.BatchNormalization(name="bn"), kl.ReLU(name="r"),
            kl.GlobalAveragePooling2D(name="gap"), kl.Dense(6, activation="relu", name="fc1"),
            kl.Dropout(0.5, name="drop"), kl.Dense(5, activation="softmax" if softmax else None, name="pred")]


def functional(ls: list) -> keras.Model:
    inp = x = keras.Input((16, 16, 1))
    for layer in ls:
        x = layer(x)
    return keras.Model(inp, x, name="gray_functional")


def random_weights(model: keras.Model, seed: int) -> list[np.ndarray]:
    """He-scaled kernels, non-zero biases and batch-norm statistics in ``model.get_weights()`` order."""
    rng = np.random.default_rng(seed)
    out = []
    for v in model.weights:
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            w = rng.uniform(0.5, 1.5, size=shape)
        elif "gamma" in v.path:
            w = 1 + 0.2 * rng.normal(size=shape)
        else:
            w = rng.normal(size=shape) * (np.sqrt(2 / np.prod(shape[:-1])) if len(shape) > 1 else 0.1)
        out.append(w.astype(np.float32))
    return out


def hand_apply(params, x, taps=None, relu=None):
    """The grayscale CNN on one image ``[16, 16, 1]``, written against the Model contract with
    ``params = {layer: {"kernel", "bias"}}`` (Keras' layouts: HWIO kernels, ``[in, out]`` dense)."""
    relu, taps, acts = relu or jax.nn.relu, taps or {}, {}

    def out(name, h):
        h = h + taps[name] if name in taps else h
        acts[name] = h
        return h

    def conv(name, h):
        y = lax.conv_general_dilated(h[None], params[name]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y[0] + params[name]["bias"]

    h = out("c1", relu(conv("c1", x)))
    h = out("p1", lax.reduce_window(h, -jnp.inf, lax.max, (2, 2, 1), (2, 2, 1), "VALID"))
    h = out("block3_conv2", conv("block3_conv2", h))
    bn = params["bn"]  # inference: the moving statistics, Keras' epsilon 1e-3
    h = out("bn", (h - bn["moving_mean"]) / jnp.sqrt(bn["moving_variance"] + 1e-3) * bn["gamma"] + bn["beta"])
    h = out("r", relu(h))
    h = out("fc1", relu(jnp.mean(h, axis=(0, 1)) @ params["fc1"]["kernel"] + params["fc1"]["bias"]))
    return out("pred", h @ params["pred"]["kernel"] + params["pred"]["bias"]), acts


def hand_model(w: list[np.ndarray]) -> Model:
    """``hand_apply`` with the weights ``w`` (``get_weights()`` order) as a Model."""
    params = {n: {"kernel": w[i], "bias": w[i + 1]} for i, n in ((0, "c1"), (2, "block3_conv2"), (8, "fc1"), (10, "pred"))}
    params["bn"] = dict(zip(("gamma", "beta", "moving_mean", "moving_variance"), w[4:8]))
    return Model(apply=hand_apply, params=params, layers=("c1", "p1", "block3_conv2", "bn", "r", "fc1", "pred"),
                 preprocess=lambda u: u, input_size=(16, 16), channels=1, name="by-hand")


@pytest.fixture(scope="module")
def nets():
    """The grayscale CNN as a Keras Functional and Sequential model (same weights), each from_keras
    with its softmax dropped, and the hand-written model of those weights."""
    f = functional(gray_layers())
    s = keras.Sequential([keras.Input((16, 16, 1)), *gray_layers()], name="gray_sequential")
    w = random_weights(f, 0)
    f.set_weights(w)
    s.set_weights(w)
    return {"keras_functional": f, "keras_sequential": s, "hand": hand_model(w),
            "functional": jaxplain.from_keras(f, logits=True), "sequential": jaxplain.from_keras(s, logits=True)}


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(5).normal(size=(3, 16, 16, 1)).astype(np.float32)


TARGETS = np.array([1, 4, 2])
# A plain gradient, a path integral, a swapped rectifier, a CAM and a layer path integral, with the
# shared property tests' settings (tests/method_settings.py: its layer is "block3_conv2").
# Integrated gradients in one chunk (no loop: one program to compile).
METHODS = ["gradient", "integrated_gradients", "guided_backprop", "grad_cam", "layer_integrated_gradients"]


def settings(name: str, xs: np.ndarray) -> dict:
    return {"steps": 8, "chunk": None} if name == "integrated_gradients" else settings_for(name, xs)


@pytest.fixture(scope="module")
def maps(nets, xs):
    """``explain`` of each method on the Functional model, computed once."""
    m = nets["functional"]
    return {n: jaxplain.explain(m, xs, TARGETS, n, **settings(n, xs)) for n in METHODS}


def test_keras_models_match_keras_and_the_hand_written_apply(nets, xs, maps):
    """Layers by Keras name in forward order, the contract's facts, logits against Keras' own
    forward pass, layer outputs and inputs and taps against the hand-written model, for the
    Functional and the Sequential model; five methods on the Functional model against the
    hand-written model of the same weights."""
    hand = nets["hand"]
    probabilities = np.asarray(nets["keras_functional"](xs))
    tap = jnp.full((8, 8, 4), 0.3)  # on block3_conv2's input, for the hand-written model on p1's output
    _, want = hand.apply(hand.params, xs[0], {"p1": tap})
    for kind in ("functional", "sequential"):
        m = nets[kind]
        assert m.layers == NAMES and m.input_shape == (16, 16, 1) and m.source == "keras"
        assert m.layer_inputs == NAMES  # every layer here takes one float array
        assert set(m.params) == {"c1", "block3_conv2", "bn", "fc1", "pred"}  # float weights (not the dropout's seed)
        assert set(m.params["bn"]) == {"gamma", "beta", "moving_mean", "moving_variance"}
        close(jax.nn.softmax(m(xs)), probabilities)
        close(m(xs), hand(xs))
        logits, acts = m.apply(m.params, xs[0], {input_key("block3_conv2"): tap})
        close(logits, hand.apply(hand.params, xs[0], {"p1": tap})[0])
        for k in want:
            close(acts[k], want[k] - tap if k == "p1" else want[k])
        close(acts[input_key("block3_conv2")], want["p1"])  # the input, tapped, is the previous output + tap
    close(probabilities, np.asarray(nets["keras_sequential"](xs)))
    for name in METHODS:
        want = jaxplain.explain(hand, xs, TARGETS, name, **settings(name, xs))
        close(maps[name], want)
    assert not np.allclose(maps["guided_backprop"], maps["gradient"])  # the rectifier really is swapped


# One method per way a method meets the adapter: a plain gradient, a swapped rectifier, a layer's
# tap and activation (layer IG taps the same way, along a path: left out for time, ~3 s).
PROPERTY_NAMES = ["gradient", "guided_backprop", "grad_cam"]


@pytest.mark.usefixtures("quick_threefry")
@pytest.mark.parametrize("name", PROPERTY_NAMES)
def test_registry_properties(nets, xs, maps, name):
    """The registry's property tests (shape, dtype, finite, batch = loop, jit = eager) on the
    Functional model (the Sequential one runs the same layers, checked against it above)."""
    data = props.Zoo(nets["functional"], nets["functional"]), xs, TARGETS
    props.test_shape_dtype_finite(data, maps, name)
    props.test_batch_equals_loop_and_jit_equals_eager(data, maps, name)


def test_softmax_is_detected_and_kept_with_a_warning_or_dropped(nets, xs):
    f = nets["keras_functional"]
    with pytest.warns(InputWarning, match=r"ends in a softmax \(layer 'pred'\).*logits=True"):
        kept = jaxplain.from_keras(f)
    close(kept(xs), np.asarray(f(xs)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        close(jaxplain.from_keras(f, logits=False)(xs), np.asarray(f(xs)))
    # a final Activation("softmax") layer is dropped as a whole
    g = keras.Sequential([keras.Input((16, 16, 1)), kl.Flatten(), kl.Dense(3, name="z"), kl.Activation("softmax")])
    m = jaxplain.from_keras(g, logits=True)
    close(m(xs), np.asarray(g.get_layer("z")(g.layers[0](xs))))
    with pytest.raises(InputError, match="logits=True drops a final softmax, and .* last layer 'z' has none"):
        jaxplain.from_keras(keras.Sequential([keras.Input((16, 16, 1)), kl.Flatten(), kl.Dense(3, name="z")]), logits=True)


def test_weights_changed_after_from_keras_are_explained(xs):
    """The Model reads the variables' values at each call: weights assigned after from_keras (what
    ``fit`` does when it ends, and ``set_weights``) change what is explained, to what the
    hand-written model of the new weights gives; a pytree copy of ``params`` stays fixed."""
    f = functional(gray_layers(softmax=False))
    f.set_weights(random_weights(f, 1))
    m = jaxplain.from_keras(f)
    before, logits = np.asarray(jaxplain.explain(m, xs, TARGETS, "gradient")), np.asarray(m(xs))
    snapshot = jax.device_put(m.params)
    f.set_weights(random_weights(f, 2))
    f.get_layer("c1").kernel.assign(f.get_layer("c1").kernel * 1.5)
    after = np.asarray(jaxplain.explain(m, xs, TARGETS, "gradient"))
    assert not np.allclose(after, before)
    close(after, jaxplain.explain(hand_model(f.get_weights()), xs, TARGETS, "gradient"))
    close(m(xs), np.asarray(f(xs)))
    close(m.replace(params=snapshot)(xs), logits)  # the old values
    assert not np.allclose(logits, m(xs))


class Subclassed(keras.Model):
    """The grayscale CNN's first conv and a dense head, with a call of its own."""

    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = kl.Conv2D(4, 3, padding="same", activation="relu")
        self.head = kl.Dense(5)

    def call(self, x, training=False):
        return self.head(jnp.mean(self.conv(x), axis=(1, 2)))


def test_subclassed_model_gives_logits_and_refuses_layer_methods(xs):
    sub = Subclassed()
    sub(xs)
    w = random_weights(sub, 2)
    sub.set_weights(w)
    with pytest.raises(InputError, match=r"does not say its input shape.*input_shape=\(H, W, C\)"):
        jaxplain.from_keras(sub)
    m = jaxplain.from_keras(sub, input_shape=(16, 16, 1))
    assert m.layers == () and m.layer_inputs == () and m.channels == 1
    close(m(xs), np.asarray(sub(xs)))

    def by_hand(v, t):
        h = jax.nn.relu(lax.conv_general_dilated(v[None], w[0], (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + w[1])
        return (jnp.mean(h, axis=(0, 1)) @ w[2] + w[3])[t]

    close(jaxplain.explain(m, xs, TARGETS, "gradient"), jax.vmap(jax.grad(by_hand))(jnp.asarray(xs), TARGETS))
    for name in ("grad_cam", "layer_integrated_gradients"):
        with pytest.raises(InputError, match="subclassed Keras model has no graph of layers to tap"):
            jaxplain.explain(m, xs, TARGETS, name)
    with pytest.raises(InputError, match="subclassed Keras model: it has no graph of layers to tap"):
        jaxplain.from_keras(sub, input_shape=(16, 16, 1), layers=["conv"])



class NoTraining(Subclassed):
    """A subclassed model whose ``call`` takes no ``training`` (Keras calls it without one)."""

    def call(self, x):
        return self.head(jnp.mean(self.conv(x), axis=(1, 2)))


def test_subclassed_model_whose_call_takes_no_training(xs):
    """Found by trying a model of one's own: ``call(self, x)`` is run without ``training=``, as
    Keras runs it, not refused as an input of the wrong size."""
    sub = NoTraining()
    sub(xs)
    sub.set_weights(random_weights(sub, 3))
    close(jaxplain.from_keras(sub, input_shape=(16, 16, 1))(xs), np.asarray(sub(xs)))


class VGGStyle(nnx.Module):
    """Conv-ReLU-Conv-ReLU-Pool-Dense on 16x16 RGB, the Keras net below."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 4, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(4, 6, (3, 3), padding="SAME", rngs=rngs)
        self.fc = nnx.Linear(8 * 8 * 6, 7, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.fc(x.reshape(x.shape[0], -1))


def test_keras_vgg_style_net_gives_the_maps_of_the_same_weights_in_nnx():
    k = keras.Sequential([keras.Input((16, 16, 3)), kl.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
                          kl.Conv2D(6, 3, padding="same", name="conv2"), kl.ReLU(name="relu2"), kl.MaxPooling2D(name="pool"),
                          kl.Flatten(name="flatten"), kl.Dense(7, name="fc")])
    w = random_weights(k, 3)
    k.set_weights(w)
    net = VGGStyle(nnx.Rngs(0))
    for i, layer in enumerate((net.conv1, net.conv2, net.fc)):
        layer.kernel[...] = jnp.asarray(w[2 * i])
        layer.bias[...] = jnp.asarray(w[2 * i + 1])
    ours, theirs = jaxplain.from_keras(k), jaxplain.from_flax(net, input_size=(16, 16))
    assert ours.layers[:2] == theirs.layers[:2] == ("conv1", "conv2")
    x = np.random.default_rng(6).normal(size=(2, 16, 16, 3)).astype(np.float32)
    t = np.array([3, 6])
    close(ours(x), np.asarray(k(x)))
    close(jaxplain.explain(ours, x, t, "grad_cam", layer="conv2"), jaxplain.explain(theirs, x, t, "grad_cam", layer="conv2"))


def test_bad_inputs_are_named(nets, monkeypatch):
    with pytest.raises(InputError, match="from_keras takes a keras.Model .*, got Conv2D"):
        jaxplain.from_keras(kl.Conv2D(2, 3))
    with pytest.raises(InputError, match="is not built: give it a keras.Input"):
        jaxplain.from_keras(keras.Sequential([kl.Dense(2)]))
    with pytest.raises(InputError, match="unknown layer 'nope'; gray_functional's layers: c1, p1"):
        jaxplain.from_keras(nets["keras_functional"], logits=True, layers=["nope"])
    with pytest.raises(InputError, match="2 outputs"):
        inp = keras.Input((16, 16, 1))
        jaxplain.from_keras(keras.Model(inp, [kl.Flatten()(inp), kl.Flatten()(inp)]))
    m = nets["functional"]
    with pytest.raises(InputError, match=r"takes 1 channel \[B, H, W, 1\], got images of 3 channels"):
        jaxplain.explain(m, np.zeros((1, 16, 16, 3), np.float32), np.array([0]), "gradient")
    with pytest.raises(InputError, match="taps name unknown layers"):
        m.apply(m.params, jnp.zeros((16, 16, 1)), {"gap:inputs": jnp.zeros(8)})
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(InputError, match="needs Keras on the JAX backend, keras runs on 'torch': set KERAS_BACKEND=jax"):
        jaxplain.from_keras(nets["keras_functional"])
    monkeypatch.setitem(sys.modules, "keras", None)  # what `import keras` meets where it is not installed
    with pytest.raises(InputError, match=r"from_keras needs Keras 3 \(pip install keras\)"):
        jaxplain.from_keras(nets["keras_functional"])


def test_the_package_imports_keras_only_inside_functions():
    """``import jaxplain`` never loads keras: no module of the package imports it at the top."""
    root = pathlib.Path(jaxplain.__file__).parent
    for path in root.rglob("*.py"):
        body = ast.parse(path.read_text()).body
        names = [a.name for n in body if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in body if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.split(".")[0] == "keras"], path
