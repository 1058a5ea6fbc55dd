"""ResNet-50 against its reference frameworks on random weights in the published layouts:
Keras 3's ``ResNet50`` (JAX backend) through a legacy HDF5 file Keras itself reads back, and a
torch network with torchvision's module names (timm's are the same) through ``.pth`` and
safetensors files. Batch-norm statistics are random, so folding them is what is tested."""

import keras
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxplain import models
from tests.keras_files import write_legacy_h5
from tests.torch_reference import TorchResNet

# max |ours - reference| <= TOL * max |reference logit|: float32 sums over up to 4608 products per
# conv, 53 convs deep, batch norm folded in float64 then rounded. Measured on this machine's CPU:
# 3.4e-7 against Keras at 224x224, 6.9e-7 / 6.7e-7 against torch at 224x224 / 160x192.
TOL = 1e-4

# Keras' variables warn on NumPy 2's copy keyword, once per weight read: noise here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rel_err(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


# ---------------------------------------------------------------- Keras


def _randomise_keras(model, seed: int) -> None:
    """Conv/dense biases N(0, 0.1); batch norm gamma U(0.5, 1), beta and moving mean N(0, 0.1),
    moving variance U(0.5, 1.5) (positive, not the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        w = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            c = w[0].shape
            new = [rng.uniform(0.5, 1.0, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
            layer.set_weights([a.astype(np.float32) for a in new])
        elif len(w) == 2:
            layer.set_weights([w[0], rng.normal(0, 0.1, w[1].shape).astype(np.float32)])


@pytest.fixture(scope="module")
def keras_resnet(tmp_path_factory):
    """Keras' ResNet50 built once, randomised, written as the published ``.h5`` and its ``_notop``."""
    keras.utils.set_random_seed(0)
    ref = keras.applications.ResNet50(weights=None, classifier_activation=None, input_shape=(224, 224, 3))
    _randomise_keras(ref, seed=1)
    d = tmp_path_factory.mktemp("keras_resnet")
    write_legacy_h5(ref, d / "resnet50_weights_tf_dim_ordering_tf_kernels.h5", "keras2")
    body = keras.Model(ref.input, ref.get_layer("conv5_block3_out").output)
    write_legacy_h5(body, d / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "keras2")
    return ref, d


def test_keras_reads_the_file_back(keras_resnet):
    ref, d = keras_resnet
    back = keras.applications.ResNet50(weights=None, classifier_activation=None, input_shape=(224, 224, 3))
    back.load_weights(str(d / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"))
    for a, b in zip(ref.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keras_logits_at_224(keras_resnet):
    ref, d = keras_resnet
    model = models.resnet50(d / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    assert model.source == "keras" and model.channel_order == "BGR" and model.layers[-1] == "fc"
    x = np.random.default_rng(5).normal(0, 60, size=(2, 224, 224, 3)).astype(np.float32)
    want = np.asarray(ref(x))
    err = _rel_err(model(x), want)
    print(f"keras resnet50 224x224: max relative error {err:.2e}")
    assert err <= TOL


def test_keras_notop_file(keras_resnet):
    """The ``_notop`` file gives the feature extractor with the same folded weights."""
    _, d = keras_resnet
    full = models.resnet50(d / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    body = models.resnet50(d / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert body.layers[-1] == "layer4" and "fc" not in body.params
    assert set(body.params) == set(full.params) - {"fc"}
    for layer in body.params:
        np.testing.assert_array_equal(body.params[layer]["kernel"], full.params[layer]["kernel"])


def test_keras_preprocessing_matches():
    from keras.applications import resnet50 as kr

    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    want = np.asarray(kr.preprocess_input(img.astype(np.float32)))
    np.testing.assert_allclose(models.imagenet.preprocess_caffe(img), want, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- torch (torchvision / timm names)


@pytest.fixture(scope="module")
def torch_resnet(tmp_path_factory):
    """A torch ResNet-50 with torchvision's module names in eval mode, saved as ``.pth`` (with
    ``num_batches_tracked``, as recent files), as an older ``.pth`` without it (as torchvision's
    IMAGENET1K_V1 file), and as timm-style safetensors."""
    torch.manual_seed(0)
    net = TorchResNet().eval()
    d = tmp_path_factory.mktemp("torch_resnet")
    sd = net.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in sd)
    torch.save(sd, d / "resnet50-random.pth")
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, d / "resnet50-old.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "resnet50-timm.safetensors")
    return net, d


def _torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


@pytest.fixture(scope="module")
def from_pth(torch_resnet):
    return models.resnet50(torch_resnet[1] / "resnet50-random.pth")


@pytest.mark.parametrize("size", [(224, 224), (160, 192)])
def test_torch_logits(torch_resnet, from_pth, size):
    net, _ = torch_resnet
    assert from_pth.source == "torchvision" and from_pth.input_size is None
    x = np.random.default_rng(sum(size)).normal(size=(2, *size, 3)).astype(np.float32)
    err = _rel_err(from_pth(x), _torch_logits(net, x))
    print(f"torch resnet50 {size}: max relative error {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("fname", ["resnet50-timm.safetensors", "resnet50-old.pth"])
def test_every_layout_gives_the_same_weights(torch_resnet, from_pth, fname):
    net, d = torch_resnet
    model = models.resnet50(d / fname)
    assert model.source == "torchvision"
    for layer, ps in from_pth.params.items():
        for p, a in ps.items():
            np.testing.assert_array_equal(model.params[layer][p], a)
    x = np.random.default_rng(7).normal(size=(2, 224, 224, 3)).astype(np.float32)  # the shape compiled above
    assert _rel_err(model(x), _torch_logits(net, x)) <= TOL
