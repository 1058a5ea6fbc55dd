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

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.methods.relevance import lrp
from jaxplain.propagation import graph as graph_, rules as rules_, walk

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
    a random relevance on every output (all rules in one compiled program per layer)."""
    for kind in ("dense", "conv"):
        apply, params, x, m, field, b = _one_layer(kind)
        r = np.random.default_rng(4).normal(size=m.shape[0]).astype(np.float32)
        # per-channel bounds where the layer sees the image's channels (conv), scalars after a flatten
        low, high = (np.array([-1.5, -2.0], np.float32), np.array([2.0, 1.0], np.float32)) if kind == "conv" else (-1.5, 2.0)
        lo, hi = np.broadcast_to(low, x.shape).ravel(), np.broadcast_to(high, x.shape).ravel()
        parsed = [rules_.parse(spec, box=(low, high)) for spec in RULES]

        @jax.jit
        def every_rule(v, rel):
            g = graph_.trace(apply, params, v)
            env = graph_.forward(g, params, v)
            return [walk.relevance(g, env, rel, lambda node, rule=rule: rule) for rule in parsed]

        for spec, got in zip(RULES, every_rule(jnp.asarray(x), jnp.asarray(r))):
            want = _formula(spec, m, field, b.astype(np.float64), x.ravel().astype(np.float64), r, lo, hi)
            _close(np.asarray(got).ravel(), want, 1e-5)
