"""The VGG port's pieces against torch: pooling (with ties), adaptive pooling, the contract,
seeded random weights with torchvision's initialisation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxplain import InputError, models
from jaxplain.models.layers import adaptive_avg_pool, max_pool_2x2
from jaxplain.models.vgg import abstract_state, param_shapes, random_params
from tests.conftest import TINY


@pytest.mark.parametrize("shape", [(6, 8, 3), (7, 9, 2)])  # odd sizes drop the last row/column
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_value_and_gradient_match_torch(shape, ties):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, shape) if ties else rng.normal(size=shape)  # 0/1 values: many ties
    x = x.astype(np.float32)
    g = rng.normal(size=(shape[0] // 2, shape[1] // 2, shape[2])).astype(np.float32)

    xt = torch.tensor(x.transpose(2, 0, 1)[None], requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 2, 2)
    yt.backward(torch.tensor(g.transpose(2, 0, 1)[None]))
    y, vjp = jax.vjp(max_pool_2x2, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy()[0].transpose(1, 2, 0))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), xt.grad.numpy()[0].transpose(1, 2, 0))


def test_max_pool_batches_under_vmap():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 4, 2)).astype(np.float32))
    f = lambda v: max_pool_2x2(v).sum()  # noqa: E731
    np.testing.assert_array_equal(jax.vmap(jax.grad(f))(x), jnp.stack([jax.grad(f)(v) for v in x]))


@pytest.mark.parametrize("n", [2, 3, 5, 7, 8, 10, 14])
def test_adaptive_pool_matches_torch(n):
    x = np.random.default_rng(n).normal(size=(n, n + 1, 4)).astype(np.float32)
    want = torch.nn.AdaptiveAvgPool2d((7, 7))(torch.tensor(x.transpose(2, 0, 1)[None]))[0].numpy()
    from jaxplain.models.layers import adaptive_pool_matrix

    ph, pw = adaptive_pool_matrix(n, 7), adaptive_pool_matrix(n + 1, 7)
    got = np.einsum("ih,jw,hwc->ijc", ph, pw, x)
    np.testing.assert_allclose(got, want.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)
    sq = x[:, :n]  # the layer itself, on a square map
    want_sq = torch.nn.AdaptiveAvgPool2d((7, 7))(torch.tensor(sq.transpose(2, 0, 1)[None]))[0].numpy()
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(jnp.asarray(sq), 7)), want_sq.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)


def test_contract(tiny_model):
    m = tiny_model
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))
    logits, acts = m.apply(m.params, x[0])
    assert logits.shape == (10,)
    assert tuple(acts) == m.layers
    assert acts["block3_pool"].shape == (4, 4, 8)
    # vmap over images equals a loop; __call__ is the jitted batch.
    np.testing.assert_allclose(m(x), jnp.stack([m.apply(m.params, v)[0] for v in x]), rtol=1e-5, atol=1e-6)


def test_tap_gradient_is_the_activation_gradient(tiny_model):
    """d logit / d tap equals the derivative through the layer's output: central differences in
    float64 (eps 1e-6, so no ReLU kink is crossed) on the largest entries with a positive
    activation (a zero one ties with its max-pool neighbours, where one-sided slopes differ)."""
    m = tiny_model
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), m.params)
        x = jnp.asarray(np.random.default_rng(2).normal(size=(32, 32, 3)))
        _, acts = m.apply(p64, x)
        zero = jnp.zeros_like(acts["block2_conv1"])
        f = lambda t: m.apply(p64, x, taps={"block2_conv1": t})[0][3]  # noqa: E731
        g = jax.grad(f)(zero)
        eps = 1e-6
        score = np.abs(np.asarray(g)) * (np.asarray(acts["block2_conv1"]) > 1e-3)
        for flat in np.argsort(-score.ravel())[:3]:
            i = np.unravel_index(flat, g.shape)
            fd = (f(zero.at[i].set(eps)) - f(zero.at[i].set(-eps))) / (2 * eps)
            np.testing.assert_allclose(float(g[i]), float(fd), rtol=1e-6)


def test_swappable_relu(tiny_model):
    m = tiny_model
    x = jnp.ones((32, 32, 3), jnp.float32)
    a = m.apply(m.params, x)[0]
    b = m.apply(m.params, x, relu=lambda v: v)[0]  # a linear network: differs
    assert not np.allclose(a, b)


def test_keras_head_needs_224():
    cfg = models.VGGConfig(blocks=(1, 1), widths=(4, 4), fc=8, classes=3, grid=2, head="keras", name="t")
    model = models.build(cfg, models.random_params(cfg), source="keras")
    assert model.input_size == (8, 8)
    with pytest.raises(InputError, match="needs a 8x8 input"):
        model.apply(model.params, jnp.zeros((12, 12, 3), jnp.float32))


def test_unknown_arch_and_source():
    with pytest.raises(InputError, match="unknown architecture"):
        models.vgg("vgg17")
    with pytest.raises(InputError, match="unknown weight source"):
        models.vgg16(source="caffe")


# ---------------------------------------------------------------- seeded random weights

# Wide enough for sample statistics: block2_conv1 has 3*3*16*64 = 9216 weights.
SMALL = models.VGGConfig(blocks=(1, 1), widths=(16, 64), fc=256, classes=10, grid=2, head="torchvision", name="small")


@pytest.mark.parametrize("config", [TINY, SMALL, models.VGGConfig(), models.VGGConfig(blocks=models.BLOCKS["vgg19"], include_top=False)])
def test_param_shapes_are_the_modules(config):
    _, state = abstract_state(config)
    want = jax.tree.map(lambda a: tuple(a.shape), nnx.to_pure_dict(state))
    assert param_shapes(config) == want


def test_random_params_are_seeded():
    a, b, c = random_params(SMALL, seed=0), random_params(SMALL, seed=0), random_params(SMALL, seed=1)
    assert list(a) == list(param_shapes(SMALL))
    for layer in a:
        for p in ("kernel", "bias"):
            assert a[layer][p].dtype == np.float32 and a[layer][p].shape == param_shapes(SMALL)[layer][p]
            np.testing.assert_array_equal(a[layer][p], b[layer][p])
        assert not np.any(a[layer]["kernel"] == c[layer]["kernel"])  # another seed: other draws
    # The convolutions do not depend on whether the model has its top.
    notop = random_params(dataclasses.replace(SMALL, include_top=False), seed=0)
    assert list(notop) == ["block1_conv1", "block2_conv1"]
    np.testing.assert_array_equal(notop["block2_conv1"]["kernel"], a["block2_conv1"]["kernel"])


def test_random_params_follow_torchvisions_initialisation():
    """Conv kernels: He normal with fan-out, std sqrt(2 / (kh * kw * C_out)) as torch's
    kaiming_normal_(mode="fan_out", nonlinearity="relu") (checked on torch's own draws); dense
    kernels: normal(0, 0.01); biases 0. A sample of n weights must have its std within 6 standard
    errors (relative 1/sqrt(2n)) of the target, its mean within 6 std/sqrt(n) of 0, and the share
    within one std of the mean within 6 binomial errors of 68.27%. Fan-in would give a std 2x
    (block2) or 2.3x (block1) too large, far outside these bounds."""

    def check(w, std):
        w, n = np.asarray(w, np.float64).ravel(), w.size
        assert abs(w.std() / std - 1) <= 6 / np.sqrt(2 * n), (w.std(), std, n)
        assert abs(w.mean()) <= 6 * std / np.sqrt(n)
        inside = np.mean(np.abs(w) < std)
        assert abs(inside - 0.6827) <= 6 * np.sqrt(0.6827 * 0.3173 / n)

    t = torch.empty(64, 16, 3, 3)  # torch's layout: C_out, C_in, kh, kw
    torch.manual_seed(0)
    torch.nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
    check(t.numpy(), np.sqrt(2 / (3 * 3 * 64)))  # the formula is torch's

    params = random_params(SMALL, seed=3)
    for layer, cout in (("block1_conv1", 16), ("block2_conv1", 64)):
        check(params[layer]["kernel"], np.sqrt(2 / (3 * 3 * cout)))
    for layer in ("fc1", "fc2", "predictions"):
        check(params[layer]["kernel"], 0.01)
    for layer in params:
        assert not np.any(params[layer]["bias"])


def test_random_vgg16_is_deterministic():
    a, b = models.vgg16(include_top=False), models.vgg16(include_top=False, seed=0)
    np.testing.assert_array_equal(a.params["block5_conv3"]["kernel"], b.params["block5_conv3"]["kernel"])
    assert a.source == "keras" and a.params["block5_conv3"]["kernel"].shape == (3, 3, 512, 512)


def test_max_pool_higher_derivatives_route_through_the_first_maximum():
    """Along element j of a window of ties, f(t) = sum(pool(x + t e_j)^2) has f'' = 2 if j is the
    window's first maximum and 0 otherwise, at every order of forward mode (Grad-CAM++'s exact
    mode nests three); the rule's own primal once split it among the ties (f'' = 2/4)."""
    x = jnp.zeros((2, 2, 1), jnp.float32)  # one window, four tied zeros
    for j, want in enumerate([2.0, 0.0, 0.0, 0.0]):
        e = jax.nn.one_hot(j, 4, dtype=jnp.float32).reshape(2, 2, 1)
        f = lambda t: jnp.sum(max_pool_2x2(x + t * e) ** 2)  # noqa: E731,B023
        f1 = lambda t: jax.jvp(f, (t,), (1.0,))[1]  # noqa: E731,B023
        assert float(jax.jvp(f1, (0.0,), (1.0,))[1]) == want
