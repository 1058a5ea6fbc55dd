"""Integrated gradients to a stated accuracy (``tolerance=``): the completeness axiom per image
against the model called independently, convergence to the exact integral, work that follows
each path's need, the step cap's report and the settings' errors."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.chunks import loop_mode
from jaxplain.errors import InputError
from jaxplain.errors import ToleranceWarning
from jaxplain.methods.integrated import Refined, integrated_gradients, rule_nodes

from tests.conftest import compiles_of

LAYER, NEURON = "block2_conv1", 3
METHODS = {"integrated_gradients": {}, "layer_integrated_gradients": {"layer": LAYER},
           "neuron_integrated_gradients": {"layer": LAYER, "neuron": NEURON}}
IG = dict(tolerance=0.001, max_steps=256, return_delta=True)  # one compiled program for several tests


@pytest.fixture(scope="module")
def counted(data):
    """explain(..., "integrated_gradients", **IG) on the batch, and the programs it compiled."""
    m, x, t = data
    return compiles_of("batched", lambda: jaxplain.explain(m, x, t, "integrated_gradients", **IG))


@pytest.fixture(scope="module")
def refined(counted):
    return counted[0]


@pytest.fixture(scope="module")
def data(tiny_model):
    """The tiny VGG (torch's default initialisation: non-zero biases, so the path bends at ReLU and
    max-pool kinks), 3 noise images and their predicted classes."""
    m = tiny_model
    assert all(np.abs(np.asarray(p["bias"])).min() > 0 for p in m.params.values())
    x = np.random.default_rng(5).normal(size=(3, 32, 32, 3)).astype(np.float32)
    return m, x, np.asarray(jnp.argmax(m(x), -1))


def _gap(m, x, t, name):
    """F(1) - F(0) of each image's path, from forward passes alone: the class score at x and at 0
    (IG); at x and with the layer's output replaced by its value at 0 (layer IG); the unit's mean
    channel value at x and at 0 (neuron IG)."""
    out = []
    for v, c in zip(x, t):
        v = jnp.asarray(v)
        logits, acts = m.apply(m.params, v)
        logits0, acts0 = m.apply(m.params, jnp.zeros_like(v))
        if name == "integrated_gradients":
            out.append(logits[c] - logits0[c])
        elif name == "layer_integrated_gradients":
            moved = m.apply(m.params, v, taps={LAYER: acts0[LAYER] - acts[LAYER]})[0]
            out.append(logits[c] - moved[c])
        else:
            out.append(jnp.mean(acts[LAYER][..., NEURON]) - jnp.mean(acts0[LAYER][..., NEURON]))
    return np.asarray(out, np.float64)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_completeness_within_tolerance(data, refined, name):
    """sum(attribution) is within the tolerance (IG 0.1%, layer and neuron IG 1%) of F(1) - F(0)
    for every image (computed here by calling the model), and ``delta`` is that difference (to
    float32 rounding of the sums, 1e-5 |gap|). Measured: layer IG 16 gradients per image,
    neuron IG 24-88 (its F, a channel mean over 256 units, changes by only 0.002 end to end)."""
    m, x, t = data
    if name == "integrated_gradients":
        out, tol = refined, IG["tolerance"]
    else:
        out, tol = jaxplain.explain(m, x, t, name, tolerance=0.01, return_delta=True, **METHODS[name]), 0.01
    assert isinstance(out, Refined)
    gap = _gap(m, x, t, name)
    total = np.asarray(out.attribution, np.float64).reshape(len(x), -1).sum(1)
    assert np.all(np.abs(total - gap) <= tol * np.abs(gap)), (total - gap) / gap
    np.testing.assert_allclose(total - gap, out.delta, atol=1e-5 * np.abs(gap).max())
    assert np.all(out.converged)


@pytest.mark.parametrize("name", ["layer_integrated_gradients", "neuron_integrated_gradients"])
def test_fixed_rule_delta_of_layer_and_neuron(data, name):
    """``return_delta`` without a tolerance: ``(attribution, sum(attribution) - (F(1) - F(0)))``."""
    m, x, t = data
    attr, delta = jaxplain.explain(m, x, t, name, steps=16, return_delta=True, **METHODS[name])
    gap = _gap(m, x, t, name)
    total = np.asarray(attr, np.float64).reshape(len(x), -1).sum(1)
    np.testing.assert_allclose(total - gap, delta, atol=1e-5 * np.abs(gap).max())


def _midpoint_ig(m, x, c, steps=4096):
    """The paper's definition by its Riemann sum: (x - 0) * mean_k grad f((k + 1/2) x / steps)."""
    grad = jax.jit(jax.vmap(jax.grad(lambda v: m.apply(m.params, v)[0][c])))
    total = np.zeros(x.shape, np.float64)
    for lo in range(0, steps, 512):
        a = (np.arange(lo, lo + 512) + 0.5) / steps
        total += np.asarray(grad(jnp.asarray(a[:, None, None, None] * x, jnp.float32)), np.float64).sum(0)
    return x * total / steps


def test_converges_to_the_exact_integral(data, refined):
    """Against a 4096-step midpoint sum, two images: every pixel within 1.5% of the largest
    |attribution| at tolerance 1e-3 (measured 0.9% and 0.5%) and within 0.3% at 1e-4 (measured
    0.07% and 0.11%, with about 300 gradients)."""
    m, x, t = data
    finer = jaxplain.explain(m, x[:2], t[:2], "integrated_gradients", tolerance=1e-4, max_steps=512)
    for v, c, coarse, fine in zip(x[:2], t[:2], np.asarray(refined.attribution), np.asarray(finer)):
        want = _midpoint_ig(m, v, c)
        err = [np.abs(a - want).max() / np.abs(want).max() for a in (coarse, fine)]
        assert err[0] <= 0.015 and err[1] <= 0.003, err


KINKS = (0.3, 0.55, 0.8)


def kinked_model(kinks=KINKS, seed=0):
    """``f(x) = sum_k v_k relu(w_k . x + b_k)``: on the path ``a x`` from 0 to the returned image,
    unit ``k`` switches on at ``a = kinks[k]``, so F is linear with a kink at each. Returns the
    model, the image ``[8, 8, 3]`` and the exact IG ``x * sum_k v_k w_k (1 - kinks[k])``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(len(kinks), 8, 8, 3)).astype(np.float32)
    x = rng.normal(size=(8, 8, 3)).astype(np.float32)
    s = np.einsum("khwc,hwc->k", w, x)
    w *= np.sign(s)[:, None, None, None]  # each unit rises along the path
    b = (-np.asarray(kinks) * np.abs(s)).astype(np.float32)  # w_k . (a x) + b_k = |s_k| (a - kink_k)
    v = np.asarray([1.0, -2.0, 1.5], np.float32)[: len(kinks)]

    def apply(params, z, taps=None, relu=None):
        h = jnp.einsum("khwc,hwc->k", params["w"], z) + params["b"]
        out = jnp.sum(params["v"] * jax.nn.relu(h))
        return jnp.stack([out, -out]), {}

    m = jaxplain.Model(apply=apply, params={"w": jnp.asarray(w), "b": jnp.asarray(b), "v": jnp.asarray(v)},
                       layers=(), preprocess=None, input_size=None, name="kinked")
    exact = x * np.einsum("k,khwc->hwc", v * (1 - np.asarray(kinks)), w)
    return m, x, exact


def test_fewer_evaluations_than_fixed_rules_on_a_kinked_path():
    """Three kinks on the path: refining at them reaches 1e-3 with at most 64 gradients (measured
    48; the attribution 1e-4 of its largest value from the closed form), where Gauss-Legendre
    and the trapezoid rule at 64 to 512 nodes are all above it (measured 0.8-2.7%: each
    straddles the kinks, its error ~ the node spacing times the jumps in slope). A rule's
    error is ``sum_i w_i F'(a_i) - (F(1) - F(0))``, ``F'`` in closed form."""
    m, x, exact = kinked_model()
    out = jaxplain.explain(m, x[None], 0, "integrated_gradients", tolerance=1e-3, return_delta=True)
    gap = float(np.sum(exact))
    assert out.converged[0] and out.evaluations[0] <= 64, out
    assert abs(float(out.delta[0])) <= 1e-3 * abs(gap)
    np.testing.assert_allclose(out.attribution[0], exact, atol=1e-3 * np.abs(exact).max())
    kinks, jumps = KINKS, np.asarray(np.einsum("khwc,hwc->k", m.params["w"], x)) * np.asarray(m.params["v"])
    for rule in ("gausslegendre", "riemann_trapezoid"):
        for steps in (64, 128, 256, 512):
            a, w = (v.astype(np.float64) for v in rule_nodes(rule, steps))
            slope = (a[:, None] > np.asarray(kinks)[None]) @ jumps
            assert abs(w @ slope - gap) > 1e-3 * abs(gap), (rule, steps)


def test_work_follows_each_images_need_and_slices(data, refined):
    """At tolerance 0.1% the three images need different numbers of gradients (measured 56, 104, 48),
    each the same in one-image calls (``batch_size=1``, through ``explain``'s slices) as in one
    call: an image's count is its own need, not the batch's slowest (whose count the batch's
    compute follows, see ``refine_path``); attributions equal to float32 rounding."""
    m, x, t = data
    n = np.asarray(refined.evaluations)
    alone = jaxplain.explain(m, x, t, "integrated_gradients", batch_size=1, **IG)
    np.testing.assert_array_equal(alone.evaluations, n)
    assert len(set(n)) == 3 and np.all(n < IG["max_steps"]), n
    scale = np.abs(np.asarray(refined.attribution)).max()
    np.testing.assert_allclose(alone.attribution, refined.attribution, atol=1e-5 * scale)
    assert np.all(alone.converged)


def test_host_loop_rounds_equal_the_while_loop(data, counted):
    """On the CPU's host loop (``explain``'s default there) the rounds are compiled calls; the
    method under the user's own ``jit`` runs them in one ``lax.while_loop``. The same nodes for
    images that stop after different numbers of rounds (same gradient counts and flags), the
    attribution and delta equal to float32 rounding (1e-5 of the largest |value|), and three
    programs (first round, one reused for every further round, the finish) for up to 13 rounds."""
    m, x, t = data
    out, compiled = counted
    assert loop_mode() == "host"
    one = jax.jit(jax.vmap(lambda v, c: integrated_gradients(m.apply, m.params, v, c, **IG)))
    ref = one(jnp.asarray(x), jnp.asarray(t, jnp.int32))
    n = np.asarray(ref.evaluations)
    assert len(set(n // 8)) == 3, n  # different numbers of rounds
    np.testing.assert_array_equal(out.evaluations, n)
    np.testing.assert_array_equal(out.converged, ref.converged)
    scale = np.abs(np.asarray(ref.attribution)).max()
    np.testing.assert_allclose(out.attribution, ref.attribution, atol=1e-5 * scale)
    np.testing.assert_allclose(out.delta, ref.delta, atol=1e-5 * scale)
    assert compiled == 3, compiled


def test_cap_hit_is_reported(data):
    m, x, t = data
    with pytest.warns(ToleranceWarning, match="max_steps=16") as seen:
        out = jaxplain.explain(m, x, t, "integrated_gradients", tolerance=1e-6, max_steps=16, return_delta=True)
    assert len([w for w in seen if w.category is ToleranceWarning]) == len(x)  # once per image, at the end
    assert np.all(out.evaluations == 16) and not np.any(out.converged)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ToleranceWarning)  # within tolerance: silent
        jaxplain.explain(m, x, t, "integrated_gradients", **IG)


@pytest.mark.parametrize("setting, value, named", [
    ("tolerance", 0, "tolerance"), ("tolerance", -0.1, "tolerance"), ("tolerance", float("nan"), "tolerance"),
    ("tolerance", "0.01", "tolerance"), ("tolerance", True, "tolerance"),
    ("max_steps", 0, "max_steps"), ("max_steps", 20.0, "max_steps"), ("max_steps", 4, "max_steps"),
    ("per_round", 1, "per_round"), ("per_round", None, "per_round"),
])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_bad_settings(data, name, setting, value, named):
    m, x, t = data
    s = {"tolerance": 0.01, **METHODS[name], setting: value}
    with pytest.raises(InputError, match=named):
        jaxplain.explain(m, x[:1], t[:1], name, **s)
