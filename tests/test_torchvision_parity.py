"""Weights from a torchvision-layout network (.pth, safetensors in torchvision's and timm's keys)
give the same logits as torch, at 224x224 and at sizes where the adaptive pool matters."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxplain import models
from tests.torch_reference import TorchVGG, timm_state_dict

TOL = 1e-4  # max |ours - torch| <= TOL * max |torch logit|; float32 sums of ~25k products


@pytest.fixture(scope="module")
def torch_vgg16(tmp_path_factory):
    torch.manual_seed(0)
    net = TorchVGG("vgg16").eval()
    d = tmp_path_factory.mktemp("tv")
    sd = net.state_dict()
    torch.save(sd, d / "vgg16-random.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "vgg16-tv.safetensors")
    save_file({k: v.contiguous() for k, v in timm_state_dict(sd).items()}, d / "vgg16-timm.safetensors")
    return net, d


def _compare(net, model, size, seed):
    x = np.random.default_rng(seed).normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = np.asarray(model(x.transpose(0, 2, 3, 1)))
    err = np.abs(got - want).max()
    assert err <= TOL * np.abs(want).max(), (size, err, np.abs(want).max())


@pytest.mark.parametrize("fname", ["vgg16-random.pth", "vgg16-tv.safetensors", "vgg16-timm.safetensors"])
def test_vgg16_logits_match_torch_at_224(torch_vgg16, fname):
    net, d = torch_vgg16
    model = models.vgg16(d / fname)
    assert model.source == "torchvision" and model.input_size is None
    _compare(net, model, 224, seed=1)


@pytest.fixture(scope="module")
def from_pth(torch_vgg16):
    return models.vgg16(torch_vgg16[1] / "vgg16-random.pth")


@pytest.mark.parametrize("size", [64, 100, 256])  # 2x2 (repeats), 3x3 (overlaps), 8x8 maps
def test_adaptive_pool_sizes_match_torch(torch_vgg16, from_pth, size):
    _compare(torch_vgg16[0], from_pth, size, seed=size)


def test_features_only_from_full_file(torch_vgg16):
    net, d = torch_vgg16
    model = models.vgg16(d / "vgg16-random.pth", include_top=False)
    assert model.layers[-1] == "block5_pool"
    x = np.random.default_rng(3).normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = net.features(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(model(x.transpose(0, 2, 3, 1)))
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()


def test_vgg11_pth():
    torch.manual_seed(1)
    net = TorchVGG("vgg11").eval()
    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vgg11.pth")
        torch.save(net.state_dict(), path)
        model = models.vgg11(path)
    _compare(net, model, 96, seed=2)
