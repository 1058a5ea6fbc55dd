"""from_flax: one small CNN written as a Linen module, as an NNX module and by hand as the Model
contract (the independent reference, plain lax) gives the same logits, activations and
attributions; bad modules and layer names fail with a message naming the problem.

Tolerance: 1e-5 of the largest reference value (float32). The three networks run the same
arithmetic through different code (a batch axis of one, flax's Conv/Dense against lax calls),
so they agree to the last bits, not exactly."""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import jaxplain
from jaxplain.errors import InputError
from jaxplain.types import Model, input_key

RTOL = 1e-5
# Layer names: the shared property tests (tests/method_settings.py) use "block3_conv2", an 8x8x8
# layer at 32x32, so the small CNN names its last conv that way.
LAYERS = ("block1_conv1", "block1_relu", "block2_conv1", "block3_conv2", "fc1", "predictions")
SHAPES = {"block1_conv1": (3, 3, 3, 4), "block2_conv1": (3, 3, 4, 8), "block3_conv2": (3, 3, 8, 8),
          "fc1": (8, 16), "predictions": (16, 10)}


def close(a, b, rtol=RTOL):
    """max |a - b| <= rtol * max |b|, with a non-trivial b."""
    a, b = np.asarray(a), np.asarray(b)
    scale = np.abs(b).max()
    assert a.shape == b.shape and scale > 0 and np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


def random_weights(seed: int = 0) -> dict:
    """He-scaled kernels and non-zero biases, ``layer -> {"kernel", "bias"}`` (logits of order one)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in SHAPES.items():
        fan_in = int(np.prod(shape[:-1]))
        out[name] = {"kernel": (rng.normal(size=shape) * np.sqrt(2 / fan_in)).astype(np.float32),
                     "bias": (0.1 * rng.normal(size=shape[-1])).astype(np.float32)}
    return out


def pool(x):
    """2x2 max pool, stride 2, on ``[B, H, W, C]``."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


# ---- Linen: one ReLU a submodule, the others function calls (nn.relu, jax.nn.relu)


class LinenReLU(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(x)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = LinenReLU(name="block1_relu")(nn.Conv(4, (3, 3), padding="SAME", name="block1_conv1")(x))
        x = pool(nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="block2_conv1")(pool(x))))
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="block3_conv2")(x))
        x = jax.nn.relu(nn.Dense(16, name="fc1")(x.mean(axis=(1, 2))))
        return nn.Dense(10, name="predictions")(x)


# ---- NNX: the same network


class NNXReLU(nnx.Module):
    def __call__(self, x):
        return nnx.relu(x)


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, channels: int = 3):
        self.block1_conv1 = nnx.Conv(channels, 4, (3, 3), padding="SAME", rngs=rngs)
        self.block1_relu = NNXReLU()
        self.block2_conv1 = nnx.Conv(4, 8, (3, 3), padding="SAME", rngs=rngs)
        self.block3_conv2 = nnx.Conv(8, 8, (3, 3), padding="SAME", rngs=rngs)
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.predictions = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = self.block1_relu(self.block1_conv1(x))
        x = pool(nnx.relu(self.block2_conv1(pool(x))))
        x = nnx.relu(self.block3_conv2(x))
        x = jax.nn.relu(self.fc1(x.mean(axis=(1, 2))))
        return self.predictions(x)


def nnx_cnn(weights: dict, channels: int = 3) -> NNXCNN:
    """The NNX CNN with ``weights`` (on ``channels`` input channels: the first conv's first ones)."""
    m = NNXCNN(nnx.Rngs(0), channels)
    for name, p in weights.items():
        layer = getattr(m, name)
        layer.kernel[...] = jnp.asarray(p["kernel"][:, :, :channels] if name == "block1_conv1" else p["kernel"])
        layer.bias[...] = jnp.asarray(p["bias"])
    return m


# ---- By hand: the contract, plain lax


def reference_apply(params, x, taps=None, relu=None):
    """The same CNN on one image ``[32, 32, 3]``, written against the Model contract."""
    relu, taps, acts = relu or jax.nn.relu, taps or {}, {}

    def out(name, h):
        h = h + taps[name] if name in taps else h
        acts[name] = h
        return h

    def conv(name, h):
        y = lax.conv_general_dilated(h[None], params[name]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y[0] + params[name]["bias"]

    def maxpool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (2, 2, 1), (2, 2, 1), "VALID")

    def dense(name, h):
        return h @ params[name]["kernel"] + params[name]["bias"]

    h = out("block1_relu", relu(out("block1_conv1", conv("block1_conv1", x))))
    h = maxpool(relu(out("block2_conv1", conv("block2_conv1", maxpool(h)))))
    h = relu(out("block3_conv2", conv("block3_conv2", h)))
    h = relu(out("fc1", dense("fc1", jnp.mean(h, axis=(0, 1)))))
    return out("predictions", dense("predictions", h)), acts


def reference_model(weights: dict) -> Model:
    return Model(apply=reference_apply, params=jax.device_put(weights), layers=LAYERS,
                 preprocess=jaxplain.adapters.flax.scale_to_unit, input_size=None, name="by-hand")


@pytest.fixture(scope="module")
def weights():
    return random_weights(3)


@pytest.fixture(scope="module")
def models(weights):
    """``{"linen", "nnx", "hand"}`` -> the same CNN as a Model."""
    return {"linen": jaxplain.from_flax(LinenCNN(), {"params": weights}, name="linen-cnn"),
            "nnx": jaxplain.from_flax(nnx_cnn(weights), name="nnx-cnn"),
            "hand": reference_model(weights)}


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)


KINDS = ["linen", "nnx"]


@pytest.mark.parametrize("kind", KINDS)
def test_layers_are_submodule_paths_in_forward_order(models, kind):
    assert models[kind].layers == LAYERS


@pytest.mark.parametrize("kind", KINDS)
def test_logits_acts_and_taps_match_the_hand_written_model(models, xs, kind):
    m, ref = models[kind], models["hand"]
    rng = np.random.default_rng(1)
    _, acts = ref.apply(ref.params, xs[0])
    taps = {k: jnp.asarray(rng.normal(size=acts[k].shape).astype(np.float32)) for k in ("block1_conv1", "block3_conv2")}
    for t in ({}, taps):
        logits, got = jax.jit(m.apply)(m.params, xs[0], t)
        want_logits, want = ref.apply(ref.params, xs[0], t)
        close(logits, want_logits)
        assert sorted(got) == sorted(k for layer in LAYERS for k in (input_key(layer), layer))
        for k in LAYERS:
            close(got[k], want[k])


@pytest.mark.parametrize("kind", KINDS)
def test_apply_is_pure_in_params(models, weights, xs, kind):
    """Other values in the same structure give the hand-written model's result for them, through
    one compiled function (vmapped over a batch)."""
    m = models[kind]
    batched = jax.jit(jax.vmap(lambda p, v: m.apply(p, v)[0], in_axes=(None, 0)))
    other = random_weights(9)
    params2 = {"params": other} if kind == "linen" else jaxplain.from_flax(nnx_cnn(other)).params
    close(batched(m.params, xs), jax.vmap(lambda v: reference_apply(weights, v)[0])(xs))
    close(batched(params2, xs), jax.vmap(lambda v: reference_apply(other, v)[0])(xs))


# Methods with their settings: a plain gradient, a path integral, a swapped rectifier (both
# kinds), a CAM and a layer path integral in an inner layer.
METHODS = {
    "gradient": {},
    "integrated_gradients": {"steps": 16},
    "guided_backprop": {},
    "deconvnet": {},
    "grad_cam": {"layer": "block3_conv2"},
    "layer_integrated_gradients": {"layer": "block2_conv1", "steps": 16},
}


@pytest.fixture(scope="module")
def expected(models, xs):
    ref = models["hand"]
    return {n: np.asarray(jaxplain.explain(ref, xs, [3, 7], n, **s)) for n, s in METHODS.items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_attributions_match_the_hand_written_model(models, xs, expected, kind, method):
    got = jaxplain.explain(models[kind], xs, [3, 7], method, **METHODS[method])
    close(got, expected[method])


# ---- Bad input


def test_unknown_layer_lists_the_valid_ones(weights):
    with pytest.raises(InputError, match=r"unknown layer 'conv9'.*block1_conv1, block1_relu, block2_conv1, "
                                         r"block3_conv2, fc1, predictions"):
        jaxplain.from_flax(LinenCNN(), {"params": weights}, layers=["block2_conv1", "conv9"])
    with pytest.raises(InputError, match=r"unknown layer 'conv9'.*block1_conv1, block1_relu"):
        jaxplain.from_flax(nnx_cnn(weights), layers=["conv9"])


def test_chosen_layers_keep_forward_order(weights):
    m = jaxplain.from_flax(nnx_cnn(weights), layers=["fc1", "block2_conv1"])
    assert m.layers == m.layer_inputs == ("block2_conv1", "fc1")
    assert set(m.apply(m.params, jnp.zeros((32, 32, 3)))[1]) == {"block2_conv1", "fc1", "block2_conv1:input", "fc1:input"}


class Pair(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x, -x


class Table(nn.Module):
    """A batch-independent output (a learned table), which no image's tap could move alone."""

    @nn.compact
    def __call__(self):
        return self.param("table", nn.initializers.normal(), (4, 3))


class Odd(nn.Module):
    @nn.compact
    def __call__(self, x):
        a, b = Pair(name="pair")(x)
        t = Table(name="table")()
        h = nn.relu(nn.Dense(3, name="dense")(a.mean(axis=(1, 2)) - b.mean(axis=(1, 2))))
        return h @ t.T


def test_layers_that_cannot_be_tapped():
    variables = Odd().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    m = jaxplain.from_flax(Odd(), variables, input_size=(8, 8))
    assert m.layers == ("dense",)
    with pytest.raises(InputError, match=r"layer 'pair' of Odd cannot be tapped: its output is a tuple, not one array"):
        jaxplain.from_flax(Odd(), variables, layers=["pair"])
    with pytest.raises(InputError, match=r"layer 'table' of Odd cannot be tapped: its output \(4, 3\) does not carry "
                                         r"the batch axis"):
        jaxplain.from_flax(Odd(), variables, layers=["table"])


class GeluCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.gelu(nn.Conv(4, (3, 3))(x)).mean(axis=(1, 2)))


class MaximumNNX(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.maximum(self.conv(x), 0.0).mean(axis=(1, 2)))


class LoopNNX(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 3, (3, 3), rngs=rngs)
        self.head = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        h, _ = jax.lax.scan(lambda c, _: (jax.nn.relu(c) - 0.1, None), self.conv(x), None, length=2)
        return self.head(h.mean(axis=(1, 2)))


class RematCNN(nn.Module):
    remat: bool = True

    @nn.compact
    def __call__(self, x):
        x = (nn.remat(LinenReLU) if self.remat else LinenReLU)(name="act")(nn.Conv(4, (3, 3))(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_submodule_inside_a_transformation():
    """nn.remat runs its module in an inner trace (the interceptor sees only that call): not a
    layer, with a message saying why; its ReLU is still swapped."""
    x = np.zeros((1, 16, 16, 3), np.float32)
    variables = RematCNN().init(jax.random.key(0), x)
    m = jaxplain.from_flax(RematCNN(), variables)
    assert m.layers == ("Conv_0", "Dense_0")
    with pytest.raises(InputError, match=r"layer 'act' of RematCNN cannot be tapped: it runs inside a transformation"):
        jaxplain.from_flax(RematCNN(), variables, layers=["act"])
    # the ReLU inside the rematerialised block is swapped: guided backprop as without remat
    plain_net = jaxplain.from_flax(RematCNN(remat=False), m.params)
    xr = np.random.default_rng(2).normal(size=(1, 16, 16, 3)).astype(np.float32)
    close(jaxplain.explain(m, xr, [1], "guided_backprop"), jaxplain.explain(plain_net, xr, [1], "guided_backprop"))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_rectifier_that_cannot_be_swapped(method):
    x = np.zeros((1, 16, 16, 3), np.float32)
    gelu = jaxplain.from_flax(GeluCNN(), GeluCNN().init(jax.random.key(0), x))
    with pytest.raises(InputError, match=r"GeluCNN has no ReLU that jaxplain can swap.*jax.nn.relu"):
        jaxplain.explain(gelu, x, [0], method)
    maximum = jaxplain.from_flax(MaximumNNX(nnx.Rngs(0)))
    with pytest.raises(InputError, match=r"MaximumNNX has no ReLU that jaxplain can swap.*jnp.maximum"):
        jaxplain.explain(maximum, x, [0], method)
    loop = jaxplain.from_flax(LoopNNX(nnx.Rngs(0)))
    with pytest.raises(InputError, match=r"LoopNNX: a ReLU sits inside a 'scan'.*cannot swap it"):
        jaxplain.explain(loop, x, [0], method)
    # the gradient needs no swap
    assert np.isfinite(np.asarray(jaxplain.explain(gelu, x, [0], "gradient"))).all()


def test_other_bad_inputs(weights, models):
    with pytest.raises(InputError, match="from_flax takes a flax.linen or flax.nnx Module, got dict"):
        jaxplain.from_flax({"params": weights}, None)
    with pytest.raises(InputError, match="a Linen module needs its variables"):
        jaxplain.from_flax(LinenCNN())
    m = models["linen"]
    with pytest.raises(InputError, match=r"taps name unknown layers \['nope'\]"):
        m.apply(m.params, jnp.zeros((32, 32, 3)), {"nope": jnp.zeros(3)})
    with pytest.raises(InputError, match=r"apply takes one image \[H, W, C\], got shape \(1, 32, 32, 3\)"):
        m.apply(m.params, jnp.zeros((1, 32, 32, 3)))
    flat = FlatCNN()
    variables = flat.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(InputError, match=r"FlatCNN does not run on a \(2, 224, 224, 3\) float32 input.*input_size"):
        jaxplain.from_flax(flat, variables)
    assert jaxplain.from_flax(flat, variables, input_size=(16, 16)).input_size == (16, 16)


class FlatCNN(nn.Module):
    """Flattens its feature map, so it takes one input size."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


def test_nnx_module_is_not_changed(weights):
    net = nnx_cnn(weights)
    before = jax.tree.map(np.asarray, nnx.state(net))
    m = jaxplain.from_flax(net)
    jaxplain.explain(m, np.zeros((1, 32, 32, 3), np.float32), [0], "guided_backprop")
    assert type(net.block1_conv1) is nnx.Conv
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(net)), before)


def test_readme_snippet():
    """The README's ten lines, as written there."""

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3), name="conv1")(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Conv(32, (3, 3), name="conv2")(x))
            return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))

    variables = CNN().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    model = jaxplain.from_flax(CNN(), variables)
    images = model.preprocess(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    cams = jaxplain.explain(model, images, "predicted", "grad_cam", layer="conv2")
    assert model.layers == ("conv1", "conv2", "head") and cams.shape == (4, 32, 32)


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 3, (3, 3), rngs=rngs)

    def __call__(self, x):
        return x + nnx.relu(self.conv(x))


class NNXStages(nnx.Module):
    def __init__(self, rngs):
        self.layer1 = nnx.List([NNXBlock(rngs), NNXBlock(rngs)])
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        for block in self.layer1:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + nn.relu(nn.Conv(3, (3, 3), name="conv")(x))


class LinenStages(nn.Module):
    def setup(self):
        self.layer1 = [LinenBlock() for _ in range(2)]
        self.head = nn.Dense(2)

    def __call__(self, x):
        for block in self.layer1:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


def test_nested_paths():
    """Blocks in a list: the path with dots, each block after its own submodules."""
    assert jaxplain.from_flax(NNXStages(nnx.Rngs(0)), input_size=(8, 8)).layers == (
        "layer1.0.conv", "layer1.0", "layer1.1.conv", "layer1.1", "head")
    variables = LinenStages().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert jaxplain.from_flax(LinenStages(), variables, input_size=(8, 8)).layers == (
        "layer1_0.conv", "layer1_0", "layer1_1.conv", "layer1_1", "head")


class Twice(nnx.Module):
    """One image ``[H, W, C]`` in (no batch axis), the same conv called twice."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 3, (3, 3), rngs=rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.conv(nnx.relu(self.conv(x))).mean(axis=(0, 1)))


def test_unbatched_module_and_a_submodule_called_twice():
    net = Twice(nnx.Rngs(0))
    m = jaxplain.from_flax(net, batched=False, input_size=(8, 8))
    assert m.layers == ("conv", "conv#2", "head")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32))
    tap = jnp.ones((8, 8, 3), jnp.float32)
    (logits, plain), (_, tapped) = (jax.jit(m.apply)(m.params, x, t) for t in ({}, {"conv#2": tap}))
    close(logits, net(x))
    close(tapped["conv"], plain["conv"])
    close(tapped["conv#2"], plain["conv#2"] + tap)
    assert m.layer_inputs == m.layers
    np.testing.assert_array_equal(plain[input_key("conv#2")], jax.nn.relu(plain["conv"]))


class NNXNorm(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(nnx.relu(self.bn(self.conv(x)))).mean(axis=(1, 2)))


class LinenNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(nn.Conv(4, (3, 3), name="conv")(x)))
        return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def test_batch_norm_uses_its_statistics():
    """Random running statistics (not the identity); NNX put in inference mode (BatchNorm's running
    averages, no dropout), Linen's batch_stats collection carried in params."""
    rng = np.random.default_rng(0)
    stats = {"mean": rng.normal(size=4).astype(np.float32), "var": rng.uniform(0.5, 2, size=4).astype(np.float32)}
    x = rng.normal(size=(8, 8, 3)).astype(np.float32)
    net = NNXNorm(nnx.Rngs(0))
    net.bn.mean[...], net.bn.var[...] = jnp.asarray(stats["mean"]), jnp.asarray(stats["var"])
    m = jaxplain.from_flax(net, input_size=(8, 8))
    assert m.layers == ("conv", "bn", "drop", "head")
    want = nnx.view(net, deterministic=True, use_running_average=True)(x[None])[0]
    close(m.apply(m.params, x)[0], want)
    variables = LinenNorm().init(jax.random.key(0), x[None])
    variables = {**variables, "batch_stats": {"bn": stats}}
    lm = jaxplain.from_flax(LinenNorm(), variables, input_size=(8, 8))
    close(lm.apply(lm.params, x)[0], LinenNorm().apply(variables, x[None])[0])
    assert not np.allclose(lm.apply(lm.params, x)[0], LinenNorm().apply({**variables, "batch_stats": {"bn": {
        "mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32)}}}, x[None])[0])


# ---- Any channel count, call flags, outputs, layer inputs


def jitter(tree, seed: int):
    """``tree`` with every leaf moved by 0.1 * N(0, 1): non-zero biases, non-trivial BatchNorm scales."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [np.asarray(v, np.float32) + 0.1 * rng.normal(size=np.shape(v)).astype(np.float32)
                                        for v in leaves])


class TrainLeNet(nn.Module):
    """A LeNet on 28x28x1 in the flax examples' convention: BatchNorm and Dropout keyed on ``train``
    (default ``True``), the last conv named ``features``. ``trunk`` and ``top`` let the test call
    the two halves itself; ``act`` lets it pass a rectifier."""

    act: Any = nn.relu

    def setup(self):
        self.conv1 = nn.Conv(4, (3, 3), padding="SAME")
        self.bn = nn.BatchNorm()
        self.drop = nn.Dropout(0.5)
        self.features = nn.Conv(6, (3, 3), padding="SAME")
        self.head = nn.Dense(10)

    def trunk(self, x, train: bool = True):
        x = pool(self.act(self.bn(self.conv1(x), use_running_average=not train)))
        return self.features(self.drop(x, deterministic=not train))

    def top(self, h, train: bool = True):
        h = pool(self.act(h))
        return self.head(h.reshape(h.shape[0], -1))

    def __call__(self, x, train: bool = True):
        return self.top(self.trunk(x, train), train)


def train_lenet_variables():
    v = TrainLeNet().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    rng = np.random.default_rng(8)
    stats = {"mean": rng.normal(size=4).astype(np.float32), "var": rng.uniform(0.5, 2.0, size=4).astype(np.float32)}
    return {"params": jitter(v["params"], 2), "batch_stats": {"bn": stats}}


def lenet_by_hand(variables):
    """The contract by hand over ``module.apply(variables, x, train=False)``: the two halves called
    by the test, the tap added between them, the rectifier passed to the module."""

    def apply(params, x, taps=None, relu=None):
        net = TrainLeNet(act=relu or nn.relu)
        h = net.apply(params, x[None], train=False, method=TrainLeNet.trunk)[0]
        h = h + taps["features"] if taps and "features" in taps else h
        return net.apply(params, h[None], train=False, method=TrainLeNet.top)[0], {"features": h}

    return Model(apply=apply, params=jax.device_put(variables), layers=("features",), channels=1,
                 preprocess=jaxplain.adapters.flax.scale_to_unit, input_size=(28, 28), name="by-hand")


GRAY_METHODS = {"gradient": {}, "integrated_gradients": {"steps": 8}, "guided_backprop": {},
                "grad_cam": {"layer": "features"}, "layer_integrated_gradients": {"layer": "features", "steps": 8}}


def test_grayscale_linen_lenet_with_train_flag_batchnorm_and_dropout():
    """C = 1 read from the first conv's kernel; call_kwargs={"train": False} gives the attributions
    of the hand-written apply over module.apply(variables, x, train=False) (running statistics
    used, no dropout); without it, an error naming the flag."""
    variables = train_lenet_variables()
    m = jaxplain.from_flax(TrainLeNet(), variables, input_size=(28, 28), call_kwargs={"train": False})
    assert (m.channels, m.input_shape) == (1, (28, 28, 1))
    assert m.layers == ("conv1", "bn", "drop", "features", "head")
    ref = lenet_by_hand(variables)
    xs = np.random.default_rng(6).normal(size=(2, 28, 28, 1)).astype(np.float32)
    close(m.apply(m.params, xs[0])[0], TrainLeNet().apply(variables, xs[:1], train=False)[0])
    for method, settings in GRAY_METHODS.items():
        close(jaxplain.explain(m, xs, [3, 7], method, **settings), jaxplain.explain(ref, xs, [3, 7], method, **settings))
    with pytest.raises(InputError, match=r"TrainLeNet updates a collection when called.*batch_stats.*training mode; "
                                         r"pass call_kwargs=\{'train': False\}"):
        jaxplain.from_flax(TrainLeNet(), variables, input_size=(28, 28))
    with pytest.raises(InputError, match=r"TrainLeNet takes 1 channel \[B, H, W, 1\], got images of 3 channels \(shape \(1, 28, 28, 3\)\)"):
        jaxplain.explain(m, np.zeros((1, 28, 28, 3), np.float32), [0], "gradient")


class NNXGray(nnx.Module):
    """A grayscale CNN, any size: ``conv2`` takes ``act``'s output as it is; smooth after it (a
    finite difference there crosses no kink)."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 4, (3, 3), padding="SAME", rngs=rngs)
        self.act = NNXReLU()
        self.conv2 = nnx.Conv(4, 6, (3, 3), padding="SAME", rngs=rngs)
        self.head = nnx.Linear(6, 5, rngs=rngs)

    def __call__(self, x):
        h = nnx.tanh(self.conv2(self.act(self.conv1(x))))
        return self.head(h.mean(axis=(1, 2)))


def test_grayscale_nnx_cnn_and_layer_inputs():
    """C = 1 from the kernel; acts carry each layer's input: conv2's is act's output, conv1's the
    image; a tap on conv2's input moves the logits as a tap on act's output does and as a central
    finite difference along the tap says."""
    net = NNXGray(nnx.Rngs(1))
    for layer in (net.conv1, net.conv2, net.head):
        layer.bias[...] = jnp.asarray(np.random.default_rng(4).normal(size=layer.bias.shape).astype(np.float32) * 0.1)
    m = jaxplain.from_flax(net)
    assert (m.channels, m.input_shape) == (1, (None, None, 1))
    assert m.layers == m.layer_inputs == ("conv1", "act", "conv2", "head")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 16, 1)).astype(np.float32))
    run = jax.jit(lambda t_in, t_act: m.apply(m.params, x, {input_key("conv2"): t_in, "act": t_act}))
    zero = jnp.zeros((16, 16, 4), jnp.float32)
    logits, acts = run(zero, zero)
    close(logits, net(x[None])[0])
    np.testing.assert_array_equal(acts[input_key("conv2")], acts["act"])
    np.testing.assert_array_equal(acts[input_key("conv1")], x)
    d, eps = jnp.asarray(np.random.default_rng(3).normal(size=zero.shape).astype(np.float32)), 1e-2
    moved = run(eps * d, zero)[0]
    close(moved, run(zero, eps * d)[0])
    fd = (moved - run(-eps * d, zero)[0]) / (2 * eps)
    close(fd, jax.jvp(lambda t: run(t, zero)[0], (zero,), (d,))[1], rtol=1e-3)
    sub = jaxplain.from_flax(net, layers=["conv2"])
    assert sub.layer_inputs == ("conv2",) and set(sub.apply(sub.params, x)[1]) == {"conv2", "conv2:input"}


class Out(NamedTuple):
    logits: jax.Array
    features: jax.Array


class TwoHeads(nn.Module):
    """Returns the logits with the pooled features: a tuple, a dict or a namedtuple."""

    kind: str = "tuple"

    @nn.compact
    def __call__(self, x):
        f = nn.relu(nn.Conv(4, (3, 3), name="conv")(x)).mean(axis=(1, 2))
        logits = nn.Dense(3, name="head")(f)
        return {"tuple": (logits, f), "dict": {"logits": logits, "features": f}, "named": Out(logits, f)}[self.kind]


def test_output_picks_the_logits():
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32)
    v = {"params": jitter(TwoHeads().init(jax.random.key(0), x)["params"], 1)}
    for kind, output, want in [("tuple", 0, lambda o: o[0]), ("dict", "logits", lambda o: o["logits"]),
                               ("named", "logits", lambda o: o.logits), ("named", lambda o: o[0], lambda o: o[0])]:
        m = jaxplain.from_flax(TwoHeads(kind), v, output=output)
        assert m.layers == ("conv", "head")
        close(m.apply(m.params, x[0])[0], want(TwoHeads(kind).apply(v, x))[0])
    m = jaxplain.from_flax(TwoHeads("dict"), v, output="logits")
    want = jax.grad(lambda im: TwoHeads("dict").apply(v, im[None])["logits"][0, 2])(x[0])
    close(jaxplain.explain(m, x, [2], "gradient")[0], want)


class DenseFirst(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(nn.relu(nn.Dense(8, name="fc")(x.reshape(x.shape[0], -1))))


class DropNet(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic: bool = False):
        return nn.Dense(3)(nn.Dropout(0.5)(nn.Conv(4, (3, 3))(x), deterministic=deterministic).mean(axis=(1, 2)))


def test_bad_shapes_outputs_and_call_flags():
    x = np.zeros((1, 8, 8, 3), np.float32)
    v = TwoHeads().init(jax.random.key(0), x)
    with pytest.raises(InputError, match=r"TwoHeads returns a dict of 'logits' \(2, 3\) float32, 'features' \(2, 4\) "
                                         r"float32 .*not one array of logits; pass output= to pick them"):
        jaxplain.from_flax(TwoHeads("dict"), v)
    with pytest.raises(InputError, match=r"TwoHeads returns a tuple of \[0\] \(2, 3\) float32, \[1\] \(2, 4\)"):
        jaxplain.from_flax(TwoHeads("tuple"), v)
    with pytest.raises(InputError, match=r"output='logit' is not in what TwoHeads returns: a dict of 'logits' \(2, 3\)"):
        jaxplain.from_flax(TwoHeads("dict"), v, output="logit")
    with pytest.raises(InputError, match=r"output=2 is not in what TwoHeads returns: a tuple of \[0\]"):
        jaxplain.from_flax(TwoHeads("tuple"), v, output=2)
    with pytest.raises(InputError, match=r"output='logit' is not in what TwoHeads returns: a Out of \[0\] \.logits "
                                         r"\(2, 3\) float32, \[1\] \.features"):
        jaxplain.from_flax(TwoHeads("named"), v, output="logit")
    with pytest.raises(InputError, match=r"output must be an index, a key, an attribute name or a function"):
        jaxplain.from_flax(TwoHeads("dict"), v, output=1.5)
    dense = DenseFirst().init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(InputError, match=r"DenseFirst's first layer with weights, 'fc', has a kernel \(784, 8\), not a "
                                         r"convolution's \[kh, kw, C_in, C_out\].*and it does not run on 3 channels.*"
                                         r"give input_shape=\(H, W, C\)"):
        jaxplain.from_flax(DenseFirst(), dense)
    m = jaxplain.from_flax(DenseFirst(), dense, input_shape=(28, 28, 1))
    assert (m.input_size, m.channels, m.layers) == ((28, 28), 1, ("fc", "head"))
    for bad in [(28, 28), (28, None, 1), (28, 28, 0), "28x28x1"]:
        with pytest.raises(InputError, match=r"input_shape must be \(H, W, C\)"):
            jaxplain.from_flax(DenseFirst(), dense, input_shape=bad)
    with pytest.raises(InputError, match=r"input_size=\(16, 16\) and input_shape=\(28, 28, 1\) disagree"):
        jaxplain.from_flax(DenseFirst(), dense, input_shape=(28, 28, 1), input_size=(16, 16))
    drop = DropNet().init(jax.random.key(0), x)
    with pytest.raises(InputError, match=r"DropNet asks for random numbers when called.*dropout.*pass "
                                         r"call_kwargs=\{'deterministic': True\}"):
        jaxplain.from_flax(DropNet(), drop)
    assert jaxplain.from_flax(DropNet(), drop, call_kwargs={"deterministic": True}).layers == ("Conv_0", "Dropout_0", "Dense_0")
    with pytest.raises(InputError, match=r"call_kwargs=\{'train': False\} do not fit how DropNet is called.*train"):
        jaxplain.from_flax(DropNet(), drop, call_kwargs={"train": False})
    with pytest.raises(InputError, match=r"call_kwargs must be a dict of keyword arguments"):
        jaxplain.from_flax(DropNet(), drop, call_kwargs=[("deterministic", True)])
