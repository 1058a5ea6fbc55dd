"""precision=: what each option compiles to, and what bfloat16 costs against float32."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.engine.runner import prepare, resolved
from jaxplain.registry import METHODS
from tests.method_settings import images


def _hlo(model, name, precision):
    m = jaxplain.with_precision(model, precision)
    x = jnp.asarray(images(2))
    prep = prepare(METHODS[name], m, x, resolved(METHODS[name], m, x, {}))
    return prep.call.first.lower(m.params, x, jnp.zeros(2, jnp.int32), prep.keys, prep.per_image, prep.shared).as_text()


@pytest.mark.parametrize("precision,words", [("float32", "precision HIGHEST>"), ("tensorfloat32", "precision HIGH>"), ("bfloat16", "bf16")])
def test_each_precision_reaches_the_convolutions(tiny_model, precision, words):
    convs = [line for line in _hlo(tiny_model, "gradient", precision).splitlines() if "convolution" in line]
    assert convs and all(words in line for line in convs), convs[:2]  # forward and backward ones


# Relative L2 error allowed for bfloat16: the largest measured on three random tiny VGGs, about
# doubled. A single gradient is the most sensitive (ReLU gates and max-pool winners flip where
# bfloat16 rounds values to ties; 13-23% measured), an average over a path less (IG 5-7%);
# Grad-CAM 0.6-3%, occlusion 1.5-10% (its maps still correlate above 0.999).
BF16_L2 = {"gradient": 0.45, "integrated_gradients": 0.15, "grad_cam": 0.07, "occlusion": 0.2}


@pytest.mark.parametrize("name", sorted(BF16_L2))
def test_bfloat16_is_close_to_float32(tiny_model, name):
    x, t = images(3), [1, 4, 7]
    full = np.asarray(jaxplain.explain(tiny_model, x, t, name, precision="float32"))
    half = jaxplain.explain(tiny_model, x, t, name, precision="bfloat16")
    assert half.dtype == jnp.float32 and half.shape == full.shape
    half = np.asarray(half)
    err = np.linalg.norm(half - full) / np.linalg.norm(full)
    corr = min(np.corrcoef(h.ravel(), f.ravel())[0, 1] for h, f in zip(half, full))
    assert 0 < err < BF16_L2[name] and corr > 0.9, (err, corr)


def test_unknown_precision_is_named(tiny_model):
    with pytest.raises(jaxplain.InputError, match="precision must be one of"):
        jaxplain.explain(tiny_model, images(1), 0, "gradient", precision="fp8")
