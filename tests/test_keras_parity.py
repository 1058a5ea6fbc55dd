"""Keras' VGG16/VGG19 (JAX backend, random weights) written as legacy HDF5 in the published layout:
Keras loads the file back, and jaxplain's import gives the same logits (or block5_pool features)."""

import keras
import numpy as np
import pytest

from jaxplain import models
from tests.keras_files import write_legacy_h5

pytestmark = pytest.mark.usefixtures("quick_threefry")  # Keras' initialisers draw through jax.random: one random program per shape

TOL = 1e-4  # max |ours - keras| <= TOL * max |keras output|


def _randomise_biases(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            layer.set_weights([w[0], rng.normal(0, 0.1, w[1].shape).astype(np.float32)])


CASES = [
    ("vgg16", True, "published"),
    ("vgg19", True, "published"),
    ("vgg16", False, "published"),
    ("vgg19", False, "keras2"),
]


@pytest.mark.parametrize("arch,top,style", CASES)
def test_keras_file_roundtrip_and_parity(tmp_path, arch, top, style):
    ctor = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[arch]
    side = 224 if top else 64  # the head takes 224x224 only; without it the same weights at a twelfth of the pixels
    kw = dict(weights=None, include_top=top, input_shape=(side, side, 3))
    if top:
        kw["classifier_activation"] = None
    ref = ctor(**kw)
    _randomise_biases(ref, seed=len(arch) + top)
    path = tmp_path / f"{arch}_{top}.h5"
    write_legacy_h5(ref, path, style)

    # Keras' own legacy loader reads the file back, weight for weight.
    back = ctor(**kw)
    back.load_weights(str(path))
    for a, b in zip(ref.get_weights(), back.get_weights(), strict=True):  # bit for bit (assert_array_equal's
        # NaN-aware passes over 100M entries took 9 s of the 23 s of this loop under load)
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))

    model = getattr(models, arch)(path)
    assert model.source == "keras"
    assert model.layers[-1] == ("predictions" if top else "block5_pool")
    x = np.random.default_rng(5).normal(0, 60, size=(3, side, side, 3)).astype(np.float32)
    want = np.asarray(ref(x))
    got = np.asarray(model(x))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()


def test_keras_preprocessing_matches():
    from keras.applications import vgg16 as kv

    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    want = np.asarray(kv.preprocess_input(img.astype(np.float32)))
    np.testing.assert_allclose(models.imagenet.preprocess_caffe(img), want, rtol=0, atol=1e-4)
