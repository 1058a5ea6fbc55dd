"""LRP's properties, each against an independent reference.

- Every rule on a one-layer dense and a one-layer conv net against the rule's formula written out
  in NumPy from per-input contributions ``c_ji = W_ji x_i`` (zennit 0.5.1's formulas, its
  stabiliser ``z + 1e-6 (sign z + [z == 0])``), the conv unrolled into a matrix by loops; a Linen
  Conv + BatchNorm (running statistics, some negative scales) merged on the fly equals the same
  net with the batch norm folded into the conv by hand, for every rule.
- Conservation on a bias-free ReLU CNN (the input relevance sums to the target's logit); with
  biases, on a 2-layer dense net, the shortfall equals what each bias absorbs under the epsilon
  rule (``sum_j b_j R_j / z_j``, computed in NumPy).
- ``epsilon`` -> 0 on bias-free ReLU networks (Linen CNN, the tiny zoo ResNet with its biases zeroed,
  Keras 3, Equinox) equals gradient x input (``jax.grad`` of the network's own function).
- batch = loop and jit = eager (``explain`` over 3 images vs ``lrp`` called eagerly per image);
  ``jax.grad`` of an LRP map with respect to the input and the weights vs central differences in
  float64.
- Bad input: each an ``InputError`` with its message; the command line writes maps and refuses a
  bad composite in one line.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.methods.relevance import lrp
from jaxplain.propagation import graph as graph_
from jaxplain.propagation import rules as rules_
from jaxplain.propagation import walk

EPS = 1e-6  # zennit's stabiliser
RULES = ["epsilon", "zero", "zplus", "alpha_beta(2, 1)", "gamma(0.25)", "zbox", "flat", "wsquare"]


def _conv(x, w, padding="VALID"):
    return jax.lax.conv_general_dilated(x[None], w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


def _tap(h, taps, name, acts):
    h = h + taps[name] if taps and name in taps else h
    acts[name] = h
    return h


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    assert a.shape == b.shape and scale > 0, (a.shape, b.shape)
    err = np.abs(a - b).max() / scale
    assert err <= rtol, err
    return err


# ------------------------------------------------------------------ each rule against its formula


def _stab(z):
    return z + EPS * (np.sign(z) + (z == 0))


def _formula(rule, m, field, b, x, r, low, high):
    """The rule's input relevance ``[in]`` for a layer ``z = m x + b`` (``m [out, in]``; ``field``:
    1 where input i is in output j's receptive field), written from the contributions."""
    c = m * x[None, :]  # c[j, i] = W_ji x_i
    cp, cn = np.maximum(c, 0), np.minimum(c, 0)
    bp, bn = np.maximum(b, 0), np.minimum(b, 0)
    z = c.sum(1) + b

    def share(contrib, denom, rel=r):  # R_i = sum_j contrib_ji R_j / denom_j
        return (contrib * (rel / denom)[:, None]).sum(0)

    if rule == "epsilon":
        return share(c, _stab(z))
    if rule == "zero":
        return share(c, np.where(z == 0, np.inf, z))
    if rule == "zplus":
        return share(cp, _stab(cp.sum(1) + bp))
    if rule.startswith("alpha_beta"):
        return 2 * share(cp, _stab(cp.sum(1) + bp)) - share(cn, _stab(cn.sum(1) + bn))
    if rule.startswith("gamma"):
        up, down = c + 0.25 * cp, c + 0.25 * cn  # where z > 0 positive contributions boosted, z < 0 negative
        return (share(up, _stab(up.sum(1) + b + 0.25 * bp), np.where(z > 0, r, 0))
                + share(down, _stab(down.sum(1) + b + 0.25 * bn), np.where(z < 0, r, 0)))
    if rule == "zbox":
        mp, mn = np.maximum(m, 0), np.minimum(m, 0)
        t = c - mp * low[None, :] - mn * high[None, :]
        return share(t, _stab(t.sum(1)))
    if rule == "flat":
        return share(field, _stab(field.sum(1)))
    if rule == "wsquare":
        return share(m * m, _stab((m * m).sum(1) + b * b))
    raise AssertionError(rule)


def _unrolled(w, h, wd):
    """A VALID conv's kernel ``w [kh, kw, C, O]`` on an ``[h, wd, C]`` input as a matrix
    ``[out, in]`` (row-major indices of ``[oh, ow, O]`` and ``[h, wd, C]``), and its receptive fields."""
    kh, kw, c, o = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    m = np.zeros((oh * ow * o, h * wd * c))
    field = np.zeros_like(m)
    for y in range(oh):
        for xx in range(ow):
            for k in range(o):
                for dy in range(kh):
                    for dx in range(kw):
                        for ch in range(c):
                            j, i = (y * ow + xx) * o + k, ((y + dy) * wd + xx + dx) * c + ch
                            m[j, i], field[j, i] = w[dy, dx, ch, k], 1.0
    return m, field


def _one_layer(kind):
    """``(apply, params, x, m, field, b)``: a one-layer dense or conv net, its matrix form."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 4, 2)).astype(np.float32)
    if kind == "dense":
        w, b = rng.normal(size=(32, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)

        def apply(p, v, taps=None, relu=None):
            acts = {}
            return _tap(v.reshape(-1) @ p["w"] + p["b"], taps, "dense", acts), acts

        return apply, {"w": w, "b": b}, x, w.T.astype(np.float64), np.ones((5, 32)), b
    w, b = rng.normal(size=(3, 3, 2, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)

    def apply(p, v, taps=None, relu=None):
        acts = {}
        return _tap(_conv(v, p["w"]) + p["b"], taps, "conv", acts).reshape(-1), acts

    m, field = _unrolled(w.astype(np.float64), 4, 4)
    return apply, {"w": w, "b": b}, x, m, field, np.tile(b, 4)


def test_each_rule_on_one_layer_equals_its_formula():
    """Relative error <= 1e-5 (float32 against float64) for every rule on a dense and a conv layer,
    a random relevance on every output (all rules in one compiled program per layer); zbox's
    per-channel image bounds through ``lrp`` reach a dense layer after a flatten."""
    for kind in ("dense", "conv"):
        apply, params, x, m, field, b = _one_layer(kind)
        r = np.random.default_rng(4).normal(size=m.shape[0]).astype(np.float32)
        # per-channel bounds where the layer sees the image's channels (conv), scalars after a flatten
        low, high = (np.array([-1.5, -2.0], np.float32), np.array([2.0, 1.0], np.float32)) if kind == "conv" else (-1.5, 2.0)
        lo, hi = np.broadcast_to(low, x.shape).ravel(), np.broadcast_to(high, x.shape).ravel()
        parsed = [rules_.parse(spec, box=(low, high)) for spec in RULES]

        @jax.jit
        def every_rule(v, rel, apply=apply, params=params, parsed=parsed):
            g = graph_.trace(apply, params, v)
            env = graph_.forward(g, params, v)
            return [walk.relevance(g, env, rel, lambda node, rule=rule: rule) for rule in parsed]

        for spec, got in zip(RULES, every_rule(jnp.asarray(x), jnp.asarray(r))):
            want = _formula(spec, m, field, b.astype(np.float64), x.ravel().astype(np.float64), r, lo, hi)
            _close(np.asarray(got).ravel(), want, 1e-5)
    # per-channel bounds of the image reach a dense layer after a flatten (lrp pushes them through it)
    apply, params, x, m, field, b = _one_layer("dense")
    low, high = np.array([-1.5, -2.0], np.float32), np.array([2.0, 1.0], np.float32)
    got = lrp(apply, params, jnp.asarray(x), 2, composite="epsilon", rules={"dense": "zbox"}, box=np.stack([low, high]))
    x64 = x.ravel().astype(np.float64)
    r = np.eye(5)[2] * (m @ x64 + b)
    want = _formula("zbox", m, field, b, x64, r, np.broadcast_to(low, x.shape).ravel(), np.broadcast_to(high, x.shape).ravel())
    _close(np.asarray(got).ravel(), want, 1e-5)


# ------------------------------------------------------------------ batch norm merged on the fly


def _linen_bn(fold):
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(3, (3, 3), padding="VALID", name="conv")(x)
            if not fold:
                x = nn.BatchNorm(use_running_average=True, name="bn")(x)
            x = nn.relu(x)
            return nn.Dense(4, name="head")(x.reshape(x.shape[0], -1))

    return Net()


def test_batch_norm_merged_equals_folded_by_hand_for_every_rule():
    """A Linen Conv + BatchNorm (running statistics, non-zero means, two of three scales negative)
    + ReLU equals the net whose conv has the batch norm folded in by hand
    (``W s``, ``(b - mean) s + beta``, ``s = scale / sqrt(var + 1e-5)``): relative 1e-5, every rule."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    merged = _linen_bn(False)
    stats = {"mean": rng.normal(size=3), "var": rng.uniform(0.5, 2, size=3)}
    bn = {"scale": np.array([1.3, -0.7, -1.1]), "bias": rng.normal(size=3)}
    conv = {"kernel": rng.normal(size=(3, 3, 2, 3)), "bias": rng.normal(size=3)}
    head = {"kernel": rng.normal(size=(48, 4)), "bias": rng.normal(size=4)}
    f32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
    v = f32({"params": {"conv": conv, "bn": bn, "head": head}, "batch_stats": {"bn": stats}})
    s = bn["scale"] / np.sqrt(stats["var"] + 1e-5)
    folded_conv = {"kernel": conv["kernel"] * s, "bias": (conv["bias"] - stats["mean"]) * s + bn["bias"]}
    folded = _linen_bn(True)
    vf = f32({"params": {"conv": folded_conv, "head": head}})
    models = [jaxplain.from_flax(merged, v, input_shape=(6, 6, 2)), jaxplain.from_flax(folded, vf, input_shape=(6, 6, 2))]
    _close(models[0](x), models[1](x), 1e-5)
    target = int(np.argmax(models[0](x)[0]))

    @jax.jit
    def every_rule(params, im):  # both nets, every rule: one program
        return [[lrp(m.apply, p, im, target, composite="epsilon", rules={"*": spec}, box=(-2.0, 2.0)) for spec in RULES]
                for m, p in zip(models, params)]

    for spec, a, b in zip(RULES, *every_rule([m.params for m in models], jnp.asarray(x[0]))):
        assert float(jnp.abs(b).max()) > 0, spec
        _close(a, b, 1e-5)


# ------------------------------------------------------------------ conservation, gradient x input


def _bias_free_cnn():
    """A bias-free Linen ReLU CNN (conv, max pool, conv, mean, dense) on ``[8, 8, 2]``."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", use_bias=False, name="conv1")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(6, (3, 3), padding="SAME", use_bias=False, name="conv2")(x))
            return nn.Dense(5, use_bias=False, name="head")(x.mean(axis=(1, 2)))

    rng = np.random.default_rng(6)
    shapes = {"conv1": (3, 3, 2, 4), "conv2": (3, 3, 4, 6), "head": (6, 5)}
    variables = {"params": {k: {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32)} for k, s in shapes.items()}}
    return jaxplain.from_flax(Net(), variables, input_shape=(8, 8, 2))


CONSERVING = [{"composite": "epsilon"}, {"composite": "epsilon_plus"}, {"composite": "epsilon_alpha2_beta1"},
              {"composite": "epsilon", "rules": {"conv*": "gamma(0.25)"}}, {"composite": "epsilon_plus_flat"},
              {"composite": "epsilon_gamma_box", "box": (-3.0, 3.0)}]


def test_conservation_gradient_times_input_batch_and_jit_on_a_bias_free_network():
    """Bias-free ReLU CNN, 3 images: the input relevance sums to the target's logit (relative
    1e-4; the stabiliser 1e-6 absorbs the rest) for epsilon, zplus, alpha_beta(2, 1), gamma, flat
    on the first layer and zbox; epsilon 1e-9 equals gradient x input (``jax.grad``; relative
    1e-5). ``explain`` over the batch (vmapped, jitted) equals the per-image loop, and the jitted
    map equals ``lrp`` run eagerly (relative 1e-5)."""
    model = _bias_free_cnn()
    x = jnp.asarray(np.random.default_rng(7).normal(size=(3, 8, 8, 2)), jnp.float32)
    targets = np.array([0, 3, 1])

    @jax.jit
    def maps(p, v, t):
        return [lrp(model.apply, p, v, t, **s) for s in CONSERVING] + [
            lrp(model.apply, p, v, t, composite="epsilon", epsilon=1e-9),
            v * jax.grad(lambda u: model.apply(p, u)[0][t])(v), model.apply(p, v)[0][t]]

    loop = []
    for v, t in zip(x, targets):
        *conserved, tiny, grad_x_input, logit = maps(model.params, v, jnp.int32(t))
        for s, m in zip(CONSERVING, conserved):
            assert abs(float(m.sum()) - float(logit)) <= 1e-4 * abs(float(logit)), (s, m.sum(), logit)
        assert not np.allclose(conserved[1], conserved[0], rtol=1e-2)  # the rules differ, each conserves
        _close(tiny, grad_x_input, 1e-5)
        loop.append(conserved[-1])
    batch = jaxplain.explain(model, np.asarray(x), targets, "lrp", **CONSERVING[-1])
    _close(batch, np.stack(loop), 1e-5)
    _close(lrp(model.apply, model.params, x[1], 3, **CONSERVING[-1]), loop[1], 1e-5)


def test_with_biases_the_shortfall_is_what_the_biases_absorb():
    """A 2-layer dense ReLU net with biases, epsilon rule: ``sum R_in = z_t - A_2 - A_1``, each
    layer absorbing ``A = sum_j R_j (b_j + e sign z_j) / (z_j + e sign z_j)`` (NumPy, float64;
    agreement 1e-5 of the logit, the absorbed shares themselves over 2% of it)."""
    rng = np.random.default_rng(8)
    p = {"w1": rng.normal(size=(18, 6)), "b1": rng.normal(size=6), "w2": rng.normal(size=(6, 4)), "b2": rng.normal(size=4)}
    p = {k: v.astype(np.float32) for k, v in p.items()}

    def apply(q, v, taps=None, relu=None):
        acts = {}
        h = jax.nn.relu(_tap(v.reshape(-1) @ q["w1"] + q["b1"], taps, "dense1", acts))
        return _tap(h @ q["w2"] + q["b2"], taps, "dense2", acts), acts

    x = rng.normal(size=(3, 3, 2)).astype(np.float32)
    got = lrp(apply, p, jnp.asarray(x), 1, composite="epsilon", epsilon=0.01)
    q = {k: v.astype(np.float64) for k, v in p.items()}
    stab = lambda z: z + 0.01 * (np.sign(z) + (z == 0))
    z1 = x.ravel() @ q["w1"] + q["b1"]
    h = np.maximum(z1, 0)
    z2 = h @ q["w2"] + q["b2"]
    r2 = np.eye(4)[1] * z2
    absorbed2 = np.sum(r2 * (stab(z2) - (z2 - q["b2"])) / stab(z2))
    r1 = h * (q["w2"] @ (r2 / stab(z2)))  # the relevance of the ReLU's output, passed to z1
    absorbed1 = np.sum(r1 * (stab(z1) - (z1 - q["b1"])) / stab(z1))
    assert min(abs(absorbed1), abs(absorbed2)) > 0.02 * abs(z2[1]), (absorbed1, absorbed2, z2[1])
    assert abs(float(got.sum()) - (z2[1] - absorbed2 - absorbed1)) <= 1e-5 * abs(z2[1]), (got.sum(), z2[1], absorbed1, absorbed2)


def test_resnet_at_small_epsilon_equals_gradient_times_input():
    """The tiny zoo ResNet (bottlenecks, residual sums, max pool, global average pool) with every
    bias zeroed: epsilon 1e-9 equals gradient x input (relative 5e-4: float32 over 20 layers; measured 1.1e-4), and conserves the logit."""
    from jaxplain.models.resnet import ResNetConfig, make_apply, random_params

    cfg = ResNetConfig(blocks=(1, 2, 1, 1), widths=(4, 8, 8, 16), stem=8, classes=10, name="resnet_small")
    params = {k: {n: (a * 0 if n == "bias" else a) for n, a in v.items()} for k, v in random_params(cfg, 1).items()}
    apply = make_apply(cfg)
    x = jnp.asarray(np.random.default_rng(9).normal(size=(32, 32, 3)), jnp.float32)

    @jax.jit
    def both(p, v):
        logits = apply(p, v)[0]
        t = jnp.argmax(logits)
        return (lrp(apply, p, v, t, composite="epsilon", epsilon=1e-9),
                v * jax.grad(lambda u: apply(p, u)[0][t])(v), logits[t])

    tiny, grad_x_input, logit = both(params, x)
    _close(tiny, grad_x_input, 5e-4)
    assert abs(float(tiny.sum()) - float(logit)) <= 1e-4 * abs(float(logit))


# ------------------------------------------------------------------ batch = loop, jit = eager, jax.grad


def test_grad_of_a_map_matches_finite_differences():
    """``jax.grad`` of ``sum(lrp(x) * v)`` on a dense ReLU net (zbox, gamma(0.25) and epsilon layers)
    with respect to the image and to the weights, against central differences along random
    directions in float64 (step 1e-5; relative 1e-6)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        p = {"w1": rng.normal(size=(12, 5)), "b1": rng.normal(size=5), "w2": rng.normal(size=(5, 4)),
             "b2": rng.normal(size=4), "w3": rng.normal(size=(4, 3)), "b3": rng.normal(size=3)}

        def apply(q, v, taps=None, relu=None):
            acts = {}
            h = jax.nn.relu(_tap(v.reshape(-1) @ q["w1"] + q["b1"], taps, "dense1", acts))
            h = jax.nn.relu(_tap(h @ q["w2"] + q["b2"], taps, "dense2", acts))
            return _tap(h @ q["w3"] + q["b3"], taps, "head", acts), acts

        x, weight = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 3, 2))
        chosen = {"dense1": "zbox(-3.0, 3.0)", "dense2": "gamma(0.25)"}

        @jax.jit
        def f(q, v):
            return jnp.sum(lrp(apply, q, v, 2, composite="epsilon", rules=chosen) * weight)

        gq, gx = jax.jit(jax.grad(f, argnums=(0, 1)))(p, x)
        dq = jax.tree.map(lambda a: rng.normal(size=a.shape), p)
        dx = rng.normal(size=x.shape)
        h = 1e-5
        plus = lambda t: jax.tree.map(lambda a, b: a + t * b, p, dq)
        fd_x = (f(p, x + h * dx) - f(p, x - h * dx)) / (2 * h)
        fd_q = (f(plus(h), x) - f(plus(-h), x)) / (2 * h)
        along_q = sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree.leaves(gq), jax.tree.leaves(dq)))
        assert abs(float(jnp.sum(gx * dx)) - float(fd_x)) <= 1e-6 * abs(float(fd_x)), (jnp.sum(gx * dx), fd_x)
        assert abs(along_q - float(fd_q)) <= 1e-6 * abs(float(fd_q)), (along_q, fd_q)


# ------------------------------------------------------------------ bad input


def _small_net(act=jax.nn.relu, norm_after_act=False):
    """A conv ``c1`` (+ an activation, + optionally a batch norm by parameters) and a dense ``d``."""
    rng = np.random.default_rng(12)
    p = {"c1": {"w": rng.normal(size=(3, 3, 2, 3)), "b": rng.normal(size=3)}, "d": {"w": rng.normal(size=(27, 4))},
         "bn": {"mean": rng.normal(size=3), "scale": rng.normal(size=3), "beta": rng.normal(size=3)}}
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)

    def apply(q, v, taps=None, relu=None):
        acts = {}
        h = act(_tap(_conv(v, q["c1"]["w"]) + q["c1"]["b"], taps, "c1", acts))
        if norm_after_act:
            h = _tap((h - q["bn"]["mean"]) * q["bn"]["scale"] + q["bn"]["beta"], taps, "bn", acts)
        return _tap(h.reshape(-1) @ q["d"]["w"], taps, "d", acts), acts

    return apply, p, jnp.asarray(rng.normal(size=(5, 5, 2)), jnp.float32)


def test_bad_input_is_an_input_error_naming_the_problem():
    apply, p, x = _small_net()
    cases = [
        ({"composite": "epsilon_plus_plus"}, "unknown LRP composite 'epsilon_plus_plus'; composites: epsilon_plus,"),
        ({"rules": {"c1": "epsilonn"}}, "unknown LRP rule 'epsilonn'; rules: alpha_beta,"),
        ({"rules": {"c1": "gamma(0.5"}}, "cannot read LRP rule 'gamma(0.5': expected name(arguments)"),
        ({"rules": {"c1": "gamma(0.5, )x"}}, "cannot read LRP rule"),
        ({"rules": {"c1": "gamma(bogus=1)"}}, "LRP rule 'gamma(bogus=1)': "),
        ({"rules": {"block9_*": "flat"}}, "rules names 'block9_*', which matches no conv or dense layer; those layers: c1, d"),
        ({"composite": "epsilon_gamma_box", "box": np.zeros((3, 2))}, "box must be (low, high) or an array [2, C]"),
        ({"composite": "epsilon_gamma_box", "box": np.zeros((2, 5))},
         "box's low bound has shape (5,), which does not fit the image (5, 5, 2)"),
        ({"composite": "epsilon_gamma_box"}, "composite 'epsilon_gamma_box' puts zbox on the first conv, which needs"),
    ]
    for settings, message in cases:
        with pytest.raises(jaxplain.InputError) as e:
            lrp(apply, p, x, 1, **settings)
        assert message in str(e.value), (settings, str(e.value))
    gelu = _small_net(jax.nn.gelu)
    with pytest.raises(jaxplain.InputError, match=r"layer 'd' \(after 'c1'\) applies 'mul' \(in gelu\) to its activations"):
        lrp(*gelu, 1)
    bn = _small_net(norm_after_act=True)
    with pytest.raises(jaxplain.InputError, match=r"layer 'bn' \(after 'c1'\) applies '(add|mul|sub)' to its activations "
                       r"\(a scale or shift by parameters that follows no conv or dense layer \(a batch norm"):
        lrp(*bn, 1)


# ------------------------------------------------------------------ any model, the command line


def _bias_free(model):
    """``model`` with every bias zeroed."""
    zero = lambda path, a: a * 0 if "bias" in jax.tree_util.keystr(path) else a
    return dataclasses.replace(model, params=jax.tree_util.tree_map_with_path(zero, model.params))


@pytest.mark.parametrize("name", ["keras", "equinox"])
def test_keras_and_equinox_at_small_epsilon_equal_gradient_times_input(name):
    """``from_keras`` / ``from_equinox`` CNNs (conv, max pool, conv, global mean, dense; Equinox
    channel-first inside) with biases zeroed: LRP-epsilon(1e-9) equals gradient x input of the
    adapter's own forward pass (relative 1e-4; measured 2.2e-5) and conserves the logit."""
    from tests import any_models

    model = _bias_free(any_models.PAIRS[name](0)[0])
    assert any("bias" in jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(model.params)[0])
    x = jnp.asarray(np.random.default_rng(13).normal(size=(16, 16, 1)), jnp.float32)

    @jax.jit
    def both(p, v):
        logits = model.apply(p, v)[0]
        t = jnp.argmax(logits)
        return (lrp(model.apply, p, v, t, composite="epsilon", epsilon=1e-9),
                v * jax.grad(lambda u: model.apply(p, u)[0][t])(v), logits[t])

    tiny, grad_x_input, logit = both(model.params, x)
    _close(tiny, grad_x_input, 1e-4)
    assert abs(float(tiny.sum()) - float(logit)) <= 1e-4 * abs(float(logit))


def test_command_line_writes_maps_and_refuses_a_bad_composite_in_one_line(tmp_path, capsys):
    """``jaxplain explain DIR --model tests.any_models:linen --method "lrp(composite=...)"`` writes
    one map per picture; ``rules`` may name the real model's layers; a bad composite is one line."""
    from PIL import Image

    from jaxplain import cli

    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(14)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8), mode="L").save(folder / f"p{i}.png")
    common = ["explain", str(folder), "--model", "tests.any_models:linen"]
    method = "lrp(composite='epsilon_gamma_box', rules={'features': 'epsilon(0.25)'})"
    code = cli.main([*common, "--method", method, "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr()
    assert len(list((tmp_path / "out").rglob("p*.png"))) == 2
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    code = cli.main([*common, "--method", "lrp(composite='epsilon_plus_plus')", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "unknown LRP composite 'epsilon_plus_plus'" in err, err
