"""CRP (concept relevance propagation) against zennit-crp's ``CondAttribution`` on the tiny VGG twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxplain
from jaxplain import viz
from jaxplain.errors import InputError
from jaxplain.methods.relevance import channel_relevance, crp, neuron_map
from jaxplain.runs import record
from tests.zennit_stub import zennit

LAYER, TORCH_LAYER = "block2_conv1", "features.3"  # the second conv: 8 channels at 16x16


def test_crp_matches_zennit_crp_and_its_maps_sum_to_lrp(pair, xs):
    """``epsilon_plus`` on the tiny VGG (random non-zero biases), targets 3 and 7, every channel of
    the second conv: per channel against ``CondAttribution`` (its heatmap: the input relevance
    summed over colour channels), tolerance 1e-5 of the largest |value| (measured: 9e-7 of it; the
    sum 9e-7, the layer 1.1e-6);
    the maps of all 8 channels sum to zennit's unconditioned LRP map, and ``channel_relevance`` of
    channels [5, 0, 2] is zennit-crp's recorded relevance at the layer summed over positions (same
    tolerance). Batch = loop: the shared property tests (``tests/test_method_properties.py``)."""
    z = zennit()  # before zennit-crp, which imports zennit
    from crp.attribution import CondAttribution

    net, m = pair
    targets = [3, 7]
    every = np.asarray(jaxplain.explain(m, xs, targets, f"crp(layer={LAYER!r})"))  # channels=None: all 8
    assert every.shape == (2, 8, 32, 32, 3)

    attribution = CondAttribution(net)
    data = torch.tensor(xs.transpose(0, 3, 1, 2))
    rows = [(i, c) for i in range(2) for c in range(8)]
    conds = [{TORCH_LAYER: [c], "y": [targets[i]]} for i, c in rows]
    ref = attribution(data[[i for i, _ in rows]].clone().requires_grad_(True), conds, z.composites.EpsilonPlus())
    ref = ref.heatmap.numpy().reshape(2, 8, 32, 32)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(every.sum(-1), ref, rtol=0, atol=1e-5 * scale)

    plain = attribution(data.clone().requires_grad_(True), [{"y": [t]} for t in targets], z.composites.EpsilonPlus(),
                        record_layer=[TORCH_LAYER])
    np.testing.assert_allclose(every.sum((1, -1)), plain.heatmap.numpy(), rtol=0,
                               atol=1e-5 * np.abs(plain.heatmap.numpy()).max())

    at_layer = plain.relevances[TORCH_LAYER].numpy().sum((2, 3))  # [B, 8]
    chosen = [5, 0, 2]
    per_channel = jax.jit(jax.vmap(lambda x, t: channel_relevance(m.apply, m.params, x, t, layer=LAYER,
                                                                  channels=chosen)))
    np.testing.assert_allclose(per_channel(jnp.asarray(xs), jnp.asarray(targets)), at_layer[:, chosen], rtol=0,
                               atol=1e-5 * np.abs(at_layer).max())


@pytest.mark.parametrize(("settings", "message"), [
    ({"layer": "nope"}, "unknown layer 'nope'"),
    ({"layer": LAYER, "channels": [1, 8]}, r"channel 8 out of range: layer 'block2_conv1' has 8 channels"),
    ({"layer": LAYER, "channels": [-1]}, r"channel -1 out of range"),
    ({"layer": LAYER, "channels": []}, "non-empty list of ints"),
    ({"layer": LAYER, "channels": [1, 1]}, "channels repeat"),
    ({"layer": LAYER, "channels": [0.5]}, "non-empty list of ints"),
])
def test_bad_layer_or_channels(pair, xs, settings, message):
    """Refused with an ``InputError`` by ``explain`` and by a direct call (traced only, nothing compiles)."""
    _, m = pair
    with pytest.raises(InputError, match=message):
        jaxplain.explain(m, xs[:1], 3, "crp", **settings)
    with pytest.raises(InputError, match=message):
        jax.eval_shape(lambda x: crp(m.apply, m.params, x, 3, **settings), jnp.asarray(xs[0]))


def test_a_map_per_concept_is_not_drawn_as_one_picture():
    with pytest.raises(InputError, match="map per concept"):
        viz.as_map(np.zeros((3, 8, 8, 3)), "concepts")
    with pytest.raises(InputError, match="jaxplain concepts"):
        record.jobs(["crp(layer='block2_conv1')"], 0)


def test_neuron_map_is_gradient_times_input_of_the_most_active_neuron_at_lrp_0(pair, xs):
    """``neuron_map`` (what ``jaxplain concepts`` crops the most active pictures by) hands back the
    channel's largest activation; under LRP-0 (epsilon -> 0) on a ReLU network a map started from
    an activation ``a`` is ``x * da/dx`` (relevance = activation x gradient, layer by layer), so the
    reference is ``jax.grad`` of that one neuron, found by argmax in the test."""
    _, model = pair
    x = jnp.asarray(xs[0])
    layer, channel = "block2_conv1", 3

    def neuron(v):
        a = model.apply(model.params, v)[1][layer][..., channel]
        return a.ravel()[jnp.argmax(jax.lax.stop_gradient(a).ravel())]

    ours = neuron_map(model.apply, model.params, x, jnp.int32(channel), layer=layer, composite="epsilon",
                      epsilon=1e-9)
    ref = x * jax.grad(neuron)(x)
    assert float(jnp.abs(ref).max()) > 0
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5 * float(jnp.abs(ref).max()))
