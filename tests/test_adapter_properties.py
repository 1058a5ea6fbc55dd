"""The registry's shared property tests (tests/test_method_properties.py) on models built by the
adapters: the small CNN of tests/test_adapters.py as a Linen and as an NNX module (its last conv,
``block3_conv2``, is the 8x8x8 layer tests/method_settings.py names). Every registered method:
shape, dtype and finite values; batch = loop and jit = eager; ``batch_size`` slices = one call."""

import numpy as np
import pytest

import jaxplain
from tests.test_adapters import LinenCNN, nnx_cnn, random_weights
from tests.test_method_properties import reference  # noqa: F401  (the fixture, on this module's data)
from tests.test_method_properties import test_batch_equals_loop_and_jit_equals_eager  # noqa: F401
from tests.test_method_properties import test_batch_size_slices_equal_one_call  # noqa: F401
from tests.test_method_properties import test_shape_dtype_finite  # noqa: F401
from tests.method_settings import images


@pytest.fixture(scope="module", params=["linen", "nnx"])
def data(request):
    w = random_weights(4)
    model = (jaxplain.from_flax(LinenCNN(), {"params": w}) if request.param == "linen"
             else jaxplain.from_flax(nnx_cnn(w)))
    return model, images(), np.array([1, 4, 7])
