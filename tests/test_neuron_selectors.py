"""Neuron selectors (a unit, a channel, slices summed, a function) and ``attribute_to="input"``
against Captum on the same weights: a tiny torch CNN and its hand-written JAX twin, whose
``apply`` records the inputs of ``conv2`` and ``fc`` (``Model.layer_inputs``); the selectors'
and ``attribute_to``'s bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum import attr as ca
from torch import nn

import jaxplain
from jaxplain import InputError, registry
from jaxplain.engine.settings import freeze, frozen, thaw
from jaxplain.types import Model, input_key
from tests.compare import assert_close, to_nhwc, to_torch

TOL = 1e-5  # max |ours - Captum| <= TOL * max |Captum|, float32 on both sides
H, C = 12, 2  # 12x12 images with 2 channels; conv1 4 channels, pool to 6x6, conv2 5 channels, 4 classes


class TorchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.fc = nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.Linear(5 * 6 * 6, 4)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc(torch.flatten(self.relu2(self.conv2(x)), 1))


def _conv(x, w, b):
    return jax.lax.conv_general_dilated(x[None], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + b


def apply(params, x, taps=None, relu=None):
    """The twin of ``TorchNet`` on one image ``[12, 12, 2]``: layers conv1, conv2, fc (the
    modules' outputs) and the inputs of conv2 and fc (fc's flattened in torch's CHW order)."""
    taps, relu, acts = taps or {}, relu or jax.nn.relu, {}

    def rec(name, v):
        v = v + taps[name] if name in taps else v
        acts[name] = v
        return v

    h = rec("conv1", _conv(x, params["w1"], params["b1"]))
    h = relu(h).reshape(6, 2, 6, 2, 4).max(axis=(1, 3))
    h = rec("conv2", _conv(rec(input_key("conv2"), h), params["w2"], params["b2"]))
    h = rec(input_key("fc"), relu(h).transpose(2, 0, 1).reshape(-1))
    return rec("fc", h @ params["wf"] + params["bf"]), acts


@pytest.fixture(scope="module")
def twins():
    torch.manual_seed(3)
    net = TorchNet().eval()
    for m in (net.conv1, net.conv2, net.fc):
        nn.init.normal_(m.bias, 0, 0.3)  # non-zero biases
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    params = {"w1": sd["conv1.weight"].transpose(2, 3, 1, 0), "b1": sd["conv1.bias"],
              "w2": sd["conv2.weight"].transpose(2, 3, 1, 0), "b2": sd["conv2.bias"],
              "wf": sd["fc.weight"].T, "bf": sd["fc.bias"]}
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    model = Model(apply, params, ("conv1", "conv2", "fc"), preprocess=lambda u: np.asarray(u[..., :C], np.float32) / 255,
                  input_size=(H, H), channels=C, name="twin", layer_inputs=("conv2", "fc"))
    return net, model


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(5).normal(size=(2, H, H, C)).astype(np.float32)


def _square(a):  # one image's conv2 activation [6, 6, 5] -> a scalar
    return jnp.sum(a[..., 1] ** 2) + a[2, 3, 4]


def _torch_square(out):  # the same on Captum's batch [B, 5, 6, 6] -> [B]
    return (out[:, 1] ** 2).sum(dim=(1, 2)) + out[:, 4, 2, 3]


def test_neuron_selectors_match_captum(twins, xs):
    """A unit (our HWC (i, j, k) is Captum's (k, i, j)), slices summed, a function, a channel,
    and the same on conv2's input (attribute_to_neuron_input=True), for NeuronGradient and
    NeuronIntegratedGradients (8 Gauss-Legendre steps from zero), to TOL."""
    net, m = twins
    cases = [  # (ours, Captum's, attribute_to)
        ((2, 3, 1), (1, 2, 3), "output"),
        ((slice(1, 4), 2, slice(0, 5, 2)), (slice(0, 5, 2), slice(1, 4), 2), "output"),
        ((slice(None), slice(None), 3), (3, slice(None)), "output"),  # Captum: fewer entries, the rest whole
        (_square, _torch_square, "output"),
        ((4, 1, slice(0, 3)), (slice(0, 3), 4, 1), "input"),
        (2, lambda out: out[:, 2].mean(dim=(1, 2)), "input"),  # our int: a channel's mean
    ]
    ng, nig = ca.NeuronGradient(net, net.conv2), ca.NeuronIntegratedGradients(net, net.conv2)
    for n, (ours, theirs, to) in enumerate(cases):
        kw = {"attribute_to_neuron_input": to == "input"}
        want = ng.attribute(to_torch(xs), neuron_selector=theirs, **kw)
        assert_close(jaxplain.explain(m, xs, None, "neuron_gradient", layer="conv2", neuron=ours, attribute_to=to),
                     to_nhwc(want), TOL)
        if n in (2, 5):  # IG: a unit, slices, a function and slices of the input (a compile each)
            continue
        want = nig.attribute(to_torch(xs), neuron_selector=theirs, n_steps=8, method="gausslegendre", **kw)
        got = jaxplain.explain(m, xs, None, "neuron_integrated_gradients", layer="conv2", neuron=ours, steps=8,
                               attribute_to=to)
        assert_close(got, to_nhwc(want), TOL)
    # the command line's spelling of a slice reads as the API's, and the slice setting is cached by value
    fn, settings = registry.parse("neuron_gradient(layer='conv2', neuron=(slice(1, 4), 2, slice(0, 5, 2)))")
    assert settings["neuron"] == (slice(1, 4), 2, slice(0, 5, 2))
    np.testing.assert_array_equal(jaxplain.explain(m, xs, None, fn, **settings),
                                  jaxplain.explain(m, xs, None, "neuron_gradient", layer="conv2", neuron=cases[1][0]))
    assert thaw(freeze(settings)) == settings and hash(frozen(settings)) == hash(frozen(dict(settings)))


def test_layer_methods_attribute_to_input_match_captum(twins, xs):
    """LayerIntegratedGradients (conv2's and fc's inputs), LayerGradientXActivation and
    LayerGradCam (conv2's input) with attribute_to_layer_input=True, to TOL."""
    net, m = twins
    t = [1, 3]
    for layer, module in (("conv2", net.conv2), ("fc", net.fc)):
        want = ca.LayerIntegratedGradients(net, module).attribute(
            to_torch(xs), baselines=0.0, target=t, n_steps=8, method="gausslegendre", attribute_to_layer_input=True)
        want = to_nhwc(want) if want.ndim == 4 else want.detach().numpy()
        got = jaxplain.explain(m, xs, t, "layer_integrated_gradients", layer=layer, steps=8, attribute_to="input")
        assert_close(got, want, TOL)
    want = ca.LayerGradientXActivation(net, net.conv2).attribute(to_torch(xs), target=t, attribute_to_layer_input=True)
    got = jaxplain.explain(m, xs, t, "layer_gradient_x_activation", layer="conv2", attribute_to="input")
    assert_close(got, to_nhwc(want), TOL)
    want = ca.LayerGradCam(net, net.conv2).attribute(to_torch(xs), target=t, relu_attributions=True,
                                                     attribute_to_layer_input=True)[:, 0]
    got = jaxplain.explain(m, xs, t, "grad_cam", layer="conv2", upsample=False, attribute_to="input")
    assert_close(got, want.detach().numpy(), TOL)
    want = ca.GuidedGradCam(net, net.conv2).attribute(to_torch(xs), target=t, attribute_to_layer_input=True)
    got = jaxplain.explain(m, xs, t, "guided_grad_cam", layer="conv2", upsample="nearest", attribute_to="input")
    assert_close(got, to_nhwc(want), TOL)
    # Grad-CAM++, Eigen-CAM and Score-CAM run at conv2's input (its 6x6x4 array); Eigen-CAM's map
    # is checked there against NumPy's SVD of that array (the paper's projection, signed to
    # correlate with the mean activation, rectified)
    act = np.stack([apply(m.params, v)[1][input_key("conv2")] for v in jnp.asarray(xs)])
    for method in ("grad_cam_pp", "eigen_cam", "score_cam"):
        got = jaxplain.explain(m, xs, t, method, layer="conv2", upsample=False, attribute_to="input")
        assert got.shape == (2, 6, 6) and bool(jnp.isfinite(got).all())
    eig = np.asarray(jaxplain.explain(m, xs, t, "eigen_cam", layer="conv2", upsample=False, attribute_to="input"))
    for b in range(2):
        centred = act[b].reshape(-1, 4) - act[b].reshape(-1, 4).mean(0)
        proj = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        proj = proj if np.corrcoef(proj, act[b].reshape(-1, 4).mean(1))[0, 1] >= 0 else -proj
        assert_close(eig[b], np.maximum(proj, 0).reshape(6, 6), TOL)


def test_bad_selectors_and_attribute_to(twins, xs, tiny_model):
    _, m = twins
    shape = r"layer 'conv2' of shape \(6, 6, 5\)"
    bad = [
        (7, rf"channel 7 is out of range: the layer has 5 channels \({shape}\)"),
        ((1, 2), rf"neuron \(1, 2\) has 2 entries: {shape} needs 3 entries \(HWC order\) or fewer with a slice"),
        ((1, 2, 3, slice(0, 1)), rf"has 4 entries: {shape} needs 3 entries \(HWC order\) at most"),
        ((6, 0, 0), rf"neuron \(6, 0, 0\) is out of range for {shape}"),
        ((slice(0, 9), 0, 0), rf"is out of range for {shape}: slice\(0, 9, None\) on an axis of 6"),
        ((slice(3, 3), 0, 0), rf"selects no unit of {shape}: slice\(3, 3, None\) is empty"),
        ((0.5, 0, 0), r"neuron must be an int \(a channel\), a tuple of ints and slices or a function, got \(0.5"),
        ("conv2", r"neuron must be an int"),
        (lambda a: a[0], rf"must return one float \(a scalar\) of {shape}'s activation, got shape \(6, 5\)"),
        (lambda a: a[9, 9, 9, 9], rf"the neuron function fails on {shape}: IndexError"),
    ]
    for neuron, message in bad:
        with pytest.raises(InputError, match=message):
            jaxplain.explain(m, xs, None, "neuron_gradient", layer="conv2", neuron=neuron)
    with pytest.raises(InputError, match=r"channel 190 is out of range: the layer has 180 channels \(layer 'fc:input' of shape \(180,\)\)"):
        jaxplain.explain(m, xs, None, "neuron_integrated_gradients", layer="fc", neuron=190, attribute_to="input")
    # the method called directly (no engine) checks its selector too
    with pytest.raises(InputError, match=r"must return one float \(a scalar\) of layer 'conv2' of shape"):
        jaxplain.neuron_gradient(m.apply, m.params, jnp.asarray(xs[0]), 0, layer="conv2", neuron=lambda a: a)
    with pytest.raises(InputError, match=r"attribute_to='input' at layer 'conv1': twin cannot tap that layer's "
                                         r"input; the layers whose input it taps: conv2, fc"):
        jaxplain.explain(m, xs, 0, "layer_gradient_x_activation", layer="conv1", attribute_to="input")
    with pytest.raises(InputError, match=r"attribute_to='input' at layer 'block3_conv2': tiny cannot tap that "
                                         r"layer's input; it declares no layer inputs \(Model.layer_inputs\)"):
        jaxplain.explain(tiny_model, np.zeros((1, 32, 32, 3), np.float32), 0, "grad_cam", attribute_to="input")
    with pytest.raises(InputError, match=r"attribute_to must be 'output' or 'input', got 'inputs'"):
        jaxplain.explain(m, xs, 0, "layer_integrated_gradients", layer="conv2", attribute_to="inputs")
    with pytest.raises(InputError, match=r"the model records no input of layer 'conv1' \(Model.layer_inputs\)"):
        jaxplain.layer_gradient_x_activation(m.apply, m.params, jnp.asarray(xs[0]), 0, layer="conv1",
                                             attribute_to="input")
