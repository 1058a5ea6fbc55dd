"""Captum on a small bottleneck ResNet with torchvision's module names, and jaxplain on the same
weights through the torchvision loader: saliency, guided backprop, integrated gradients, and
Grad-CAM on ``layer4`` (jaxplain's default layer for ResNets). Random batch-norm statistics."""

import numpy as np
import pytest
import torch

import jaxplain
from jaxplain.models import ResNetConfig, build_resnet, resnet_weights
from tests.torch_reference import TorchResNet


def _rel_err(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


@pytest.fixture(scope="module")
def small_pair():
    """A small bottleneck ResNet (stages of 1, 2, 1, 1 blocks) in torch with torchvision's names,
    random batch-norm statistics, and the same weights in jaxplain through the torchvision loader."""
    torch.manual_seed(2)
    net = TorchResNet(blocks=(1, 2, 1, 1), widths=(4, 8, 8, 16), stem=8, num_classes=10).eval()
    cfg = ResNetConfig(blocks=(1, 2, 1, 1), widths=(4, 8, 8, 16), stem=8, classes=10, name="small")
    raw = {k: v.detach().float().numpy() for k, v in net.state_dict().items()}
    return net, build_resnet(cfg, resnet_weights.convert(raw, cfg, "torchvision"), source="torchvision")


def _captum(net, cls, xs, t, *args, **kw):
    from captum import attr as ca

    x = torch.tensor(np.ascontiguousarray(xs.transpose(0, 3, 1, 2)), requires_grad=True)
    return getattr(ca, cls)(net, *args).attribute(x, target=t, **kw).detach().numpy()


CAPTUM_TOL = 1e-5  # float32, same input; measured 2.5e-7 (saliency), 2.6e-7 (guided), 3.1e-7 (IG), 6.1e-7 (Grad-CAM)


@pytest.mark.parametrize("method,cls,kw", [
    ("gradient", "Saliency", dict(abs=False)),
    ("guided_backprop", "GuidedBackprop", {}),
    ("integrated_gradients", "IntegratedGradients", dict(n_steps=16, method="gausslegendre", baselines=0.0)),
])
def test_small_resnet_matches_captum(small_pair, method, cls, kw):
    net, m = small_pair
    xs = np.random.default_rng(8).normal(size=(2, 64, 64, 3)).astype(np.float32)
    ours = dict(steps=16, rule="gausslegendre") if method == "integrated_gradients" else {}
    want = _captum(net, cls, xs, [3, 7], **kw).transpose(0, 2, 3, 1)
    err = _rel_err(jaxplain.explain(m, xs, [3, 7], method, **ours), want)
    print(f"small resnet {method} vs Captum: {err:.1e}")
    assert err <= CAPTUM_TOL


def test_small_resnet_grad_cam_on_layer4_matches_captum(small_pair):
    """Captum's ``LayerGradCam`` on the ``layer4`` module: jaxplain's default layer for ResNets."""
    net, m = small_pair
    xs = np.random.default_rng(9).normal(size=(2, 96, 96, 3)).astype(np.float32)  # layer4: 3x3
    # The class whose weighted layer4 evidence is largest (logit minus bias): its CAM sums to a
    # positive number, so it is not all zero after the ReLU.
    t = [int(i) for i in (_torch_logits(net, xs) - net.fc.bias.detach().numpy()).argmax(axis=1)]
    want = _captum(net, "LayerGradCam", xs, t, net.layer4, relu_attributions=True)[:, 0]
    assert (want > 0).any(axis=(1, 2)).all()
    err = _rel_err(jaxplain.explain(m, xs, t, "grad_cam", upsample=False), want)
    print(f"small resnet grad_cam on layer4 vs Captum: {err:.1e}")
    assert err <= CAPTUM_TOL
