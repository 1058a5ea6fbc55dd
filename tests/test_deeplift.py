"""DeepLIFT (Rescale) and DeepLiftShap against Captum's ``DeepLift`` / ``DeepLiftShap`` on the same
weights: the tiny VGG twin (ReLU modules of their own, max pools, non-zero biases) and a small
network with a max pool, a tanh, a residual sum and a softmax; summation-to-delta; the multipliers
alone; a GELU refused.

Captum's hooks go wrong where two hooked modules touch (a ReLU straight into a MaxPool2d: its maps
then sum to about twice ``f(x) - f(b)`` on the VGG twin, captum#1104), so the torch twins put a copy
(``Clone``, the same function) between them.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum import attr as ca
from flax import linen as nn

import jaxplain
from jaxplain.methods.relevance import deeplift
from tests.compare import assert_close, to_nhwc, to_torch

CAPTUM_TOL = 1e-5  # max |ours - Captum| <= 1e-5 * max |Captum|, float32 on both sides


class Clone(torch.nn.Module):
    """The identity as a new tensor: keeps Captum's hooks of two adjacent modules apart."""

    def forward(self, x):
        return x.clone()


def apart(net):
    """A copy of the torch VGG twin with a ``Clone`` after each ReLU of its features."""
    net = copy.deepcopy(net)
    mods = [[m, Clone()] if isinstance(m, torch.nn.ReLU) else [m] for m in net.features]
    net.features = torch.nn.Sequential(*[m for ms in mods for m in ms])
    return net


def test_deeplift_and_shap_match_captum_on_vgg(pair, xs):
    """A batch through ``explain`` (one baseline per image; one reference batch for all), each
    map against Captum's and summing to ``f(x) - f(b)`` (DeepLiftShap: minus the references' mean)."""
    net, m = pair
    net, t = apart(net), [3, 7]
    rng = np.random.default_rng(5)
    base = rng.normal(size=xs.shape).astype(np.float32) * 0.5  # one baseline per image
    refs = rng.normal(size=(3, *xs.shape[1:])).astype(np.float32)  # one reference batch for all images

    # The multipliers (multiply_by_inputs=False), and the map (x - b) * m.
    mult = jaxplain.explain(m, xs, t, "deeplift", baseline=base, multiply_by_inputs=False)
    want = ca.DeepLift(net, multiply_by_inputs=False).attribute(to_torch(xs), baselines=to_torch(base), target=t)
    assert_close(mult, to_nhwc(want), CAPTUM_TOL)
    got = (xs - base) * mult
    assert_close(got, to_nhwc(ca.DeepLift(net).attribute(to_torch(xs), baselines=to_torch(base), target=t)), CAPTUM_TOL)
    # Summation-to-delta: each map sums to f(x) - f(b) for its target.
    with torch.no_grad():
        fx, fb, fr = (net(torch.tensor(a.transpose(0, 3, 1, 2))).numpy() for a in (xs, base, refs))
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), fx[[0, 1], t] - fb[[0, 1], t], rtol=1e-4, atol=1e-5)

    shap = jaxplain.explain(m, xs, t, "deeplift_shap", baselines=refs)
    want = to_nhwc(ca.DeepLiftShap(net).attribute(to_torch(xs), baselines=torch.tensor(refs.transpose(0, 3, 1, 2)),
                                                  target=t))
    assert_close(shap, want, CAPTUM_TOL)
    np.testing.assert_allclose(shap.sum(axis=(1, 2, 3)), fx[[0, 1], t] - fr[:, t].mean(axis=0), rtol=1e-4, atol=1e-5)

    with pytest.raises(jaxplain.InputError, match="baselines"):
        jaxplain.explain(m, xs, t, "deeplift_shap")


class Residual(nn.Module):
    """conv, ReLU, max pool, then ``h + act(conv(h))``, ReLU, mean, dense, softmax."""

    act: str = "tanh"

    @nn.compact
    def __call__(self, x):
        h = nn.max_pool(nn.relu(nn.Conv(4, (3, 3), padding=1, name="conv1")(x)), (2, 2), (2, 2))
        y = nn.Conv(4, (3, 3), padding=1, name="conv2")(h)
        h = nn.relu(h + (jnp.tanh(y) if self.act == "tanh" else nn.gelu(y)))
        return jax.nn.softmax(nn.Dense(5, name="fc")(h.mean(axis=(1, 2))))


class TorchResidual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.apart = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), Clone()
        self.pool = torch.nn.MaxPool2d(2, 2)
        self.conv2, self.tanh, self.relu2 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.ReLU()
        self.fc, self.softmax = torch.nn.Linear(4, 5), torch.nn.Softmax(dim=1)

    def forward(self, x):
        h = self.pool(self.apart(self.relu1(self.conv1(x))))
        h = self.relu2(h + self.tanh(self.conv2(h)))
        return self.softmax(self.fc(h.mean(dim=(2, 3))))


def test_deeplift_matches_captum_on_residual_maxpool_tanh_softmax():
    """One image (Captum's softmax rule averages over its whole batch); the GELU twin is refused."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 16, 16, 3)).astype(np.float32)
    base = rng.normal(size=x.shape).astype(np.float32) * 0.3
    shapes = {"conv1": ((3, 3, 3, 4), (4,)), "conv2": ((3, 3, 4, 4), (4,)), "fc": ((4, 5), (5,))}
    variables = {"params": {k: {"kernel": rng.normal(size=w).astype(np.float32) * 0.5,
                                "bias": rng.normal(size=b).astype(np.float32) * 0.5} for k, (w, b) in shapes.items()}}
    model = jaxplain.from_flax(Residual(), variables, name="residual")
    p = variables["params"]
    net = TorchResidual().eval()
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            getattr(net, name).weight.copy_(torch.tensor(np.asarray(p[name]["kernel"]).transpose(3, 2, 0, 1)))
            getattr(net, name).bias.copy_(torch.tensor(np.asarray(p[name]["bias"])))
        net.fc.weight.copy_(torch.tensor(np.asarray(p["fc"]["kernel"]).T))
        net.fc.bias.copy_(torch.tensor(np.asarray(p["fc"]["bias"])))
    np.testing.assert_allclose(net(to_torch(x)).detach().numpy()[0], model.apply(model.params, x[0])[0], rtol=1e-5)

    got = jaxplain.explain(model, x, 2, "deeplift", baseline=base)
    want = to_nhwc(ca.DeepLift(net).attribute(to_torch(x), baselines=to_torch(base), target=2))
    assert_close(got, want, CAPTUM_TOL)

    gelu = jaxplain.from_flax(Residual(act="gelu"), variables, name="residual_gelu")
    with pytest.raises(jaxplain.InputError, match=r"deeplift: layer 'fc' \(after 'conv2'\) applies 'mul'"):
        jax.eval_shape(lambda v: deeplift(gelu.apply, gelu.params, v, 2, baseline=base[0]), x[0])
