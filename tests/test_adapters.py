"""from_flax: one small CNN written as a Linen module, as an NNX module and by hand as the Model
contract (the independent reference, plain lax) gives the same logits, activations and
attributions; bad modules and layer names fail with a message naming the problem.

Tolerance: 1e-5 of the largest reference value (float32). The three networks run the same
arithmetic through different code (a batch axis of one, flax's Conv/Dense against lax calls),
so they agree to the last bits, not exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import jaxplain
from jaxplain.errors import InputError
from jaxplain.types import Model

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
    def __init__(self, rngs: nnx.Rngs):
        self.block1_conv1 = nnx.Conv(3, 4, (3, 3), padding="SAME", rngs=rngs)
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


def nnx_cnn(weights: dict) -> NNXCNN:
    m = NNXCNN(nnx.Rngs(0))
    for name, p in weights.items():
        layer = getattr(m, name)
        layer.kernel[...] = jnp.asarray(p["kernel"])
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
        assert list(got) == list(LAYERS)
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
    "integrated_gradients": dict(steps=16),
    "guided_backprop": {},
    "deconvnet": {},
    "grad_cam": dict(layer="block3_conv2"),
    "layer_integrated_gradients": dict(layer="block2_conv1", steps=16),
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
    assert m.layers == ("block2_conv1", "fc1")
    assert set(m.apply(m.params, jnp.zeros((32, 32, 3)))[1]) == {"block2_conv1", "fc1"}


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
