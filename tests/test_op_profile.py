"""benchmarks/op_profile.py's classes: every convolution of a program whose structure is known (a
forward convolution and both of its gradients) lands in the right class, read from XLA's
optimised HLO as the profile reads it; torch's operator names land in the same classes."""

import collections

import jax
import jax.numpy as jnp

from benchmarks import op_profile


def test_convolutions_and_torch_operators_are_classified():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 8))
    b = jax.random.normal(jax.random.key(2), (8,))

    def loss(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y + b) ** 2)

    both = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # forward, input and filter gradients
    instrs, comps = op_profile.parse_hlo(both.lower(x, w).compile().as_text())
    convs = [i for i in instrs.values() if i["op"] == "convolution"]
    found = collections.Counter(op_profile.conv_kind(i) for i in convs)
    fusions = [n for n, i in instrs.items() if i["op"] == "fusion"]  # a fusion around a convolution: its class
    assert {op_profile.classify_thunk(n, instrs, comps) for n in fusions} - {"elementwise", "transpose/copy", "reduction"} \
        <= set(found)
    assert found["conv forward"] == 1
    assert found["conv backward-input"] == 1
    assert found["conv backward-filter"] == 1

    names = {"aten::mkldnn_convolution": "conv forward", "aten::convolution_backward": "conv backward-input",
             "aten::addmm": "matmul", "aten::native_batch_norm": "batch norm", "aten::_softmax": "softmax",
             "aten::gelu_backward": "GELU", "aten::native_layer_norm": "layer norm", "aten::clamp_min": "elementwise",
             "aten::threshold_backward": "elementwise", "aten::max_pool2d_with_indices": "pooling",
             "aten::copy_": "transpose/copy", "aten::t": "transpose/copy", "aten::sum": "reduction"}
    assert {n: op_profile.classify_torch(n) for n in names} == names
