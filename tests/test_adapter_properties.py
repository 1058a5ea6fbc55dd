"""The registry's shared property tests (tests/test_method_properties.py) on models built by the
adapters: the small CNN of tests/test_adapters.py as a Linen and as an NNX module (its last conv,
``block3_conv2``, is the 8x8x8 layer tests/method_settings.py names).

Shape, dtype and finite values and batch = loop and jit = eager for one method of each way a
method meets the model: a plain gradient, a swapped rectifier, taps of a layer along a path in
chunks (layer IG), a layer's activation and gradient (Grad-CAM), activations alone (Score-CAM), and
a swapped rectifier with a tap (guided Grad-CAM); ``batch_size`` slices = one call for three of
them. The same NNX CNN on one channel (C read from its first kernel) for Grad-CAM. Every method on both adapters compiles for about three minutes per test on the shared 2-core
machine (measured), over this file's two-minute budget; the methods themselves are covered on the
tiny VGG, and all of them passed the shape/dtype/finite test on the Linen adapter once by hand."""

import numpy as np
import pytest

import jaxplain
from tests import test_method_properties as props
from tests.method_settings import images, settings_for
from tests.test_adapters import LinenCNN, nnx_cnn, random_weights

NAMES = ["gradient", "guided_backprop", "layer_integrated_gradients", "grad_cam", "score_cam", "guided_grad_cam"]


@pytest.fixture(scope="module", params=["linen", "nnx"])
def data(request):
    w = random_weights(4)
    model = (jaxplain.from_flax(LinenCNN(), {"params": w}) if request.param == "linen"
             else jaxplain.from_flax(nnx_cnn(w)))
    return props.Zoo(model, model), images(), np.array([1, 4, 7])  # no attention layers: one model for all


@pytest.fixture(scope="module")
def reference(data):
    m, x, t = data
    return {n: jaxplain.explain(m.cnn, x, t, n, **settings_for(n, x)) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_finite(data, reference, name):
    props.test_shape_dtype_finite(data, reference, name)


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_loop_and_jit_equals_eager(data, reference, name):
    props.test_batch_equals_loop_and_jit_equals_eager(data, reference, name)


@pytest.mark.parametrize("name", ["gradient", "layer_integrated_gradients", "guided_grad_cam"])
def test_batch_size_slices_equal_one_call(data, reference, name):
    props.test_batch_size_slices_equal_one_call(data, reference, name)


@pytest.fixture(scope="module")
def gray():
    model = jaxplain.from_flax(nnx_cnn(random_weights(4), channels=1))
    assert model.channels == 1
    x = images()[..., :1]
    return props.Zoo(model, model), x, np.array([1, 4, 7])


def test_grayscale_model(gray):
    """Grad-CAM (a layer's activation and its gradient) on the one-channel CNN."""
    m, x, t = gray
    reference = {"grad_cam": jaxplain.explain(m.cnn, x, t, "grad_cam", **settings_for("grad_cam", x))}
    props.test_shape_dtype_finite(gray, reference, "grad_cam")
    props.test_batch_equals_loop_and_jit_equals_eager(gray, reference, "grad_cam")
