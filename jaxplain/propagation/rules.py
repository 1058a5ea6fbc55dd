"""LRP rules: how a linear layer (conv or dense, with its bias and any batch norm merged into it)
hands the relevance of its outputs to its inputs.

A layer is ``z = scale * lin(x, W) + shift`` (``Layer``). Every rule is the modified backward pass
of zennit's formulation: terms ``o_t = lin(x_t, rho_t(W)) + rho_t(b)`` of modified inputs and
parameters, the relevance divided by a stabilised sum of terms, sent back through the transposed
products and multiplied by the terms' inputs::

    epsilon(e)           R_in = x * W^T (R / (z + e sign(z)))
    zplus                alpha_beta(1, 0)
    alpha_beta(a, b)     a * [x+ W+^T + x- W-^T](R / (z++ + z--)) - b * [x+ W-^T + x- W+^T](R / (z+- + z-+))
    gamma(g)             generalised: positive contributions boosted by g (W + g W+), for z > 0 and z < 0
    zbox(low, high)      x W^T(.) - low W+^T(.) - high W-^T(.) over z - low W+ - high W-
    flat                 1^T (R / sum of fan-in): relevance spread uniformly over the receptive field
    wsquare              W^2^T (R / (W^2 1 + b^2))
    zero                 epsilon(0) (no relevance where z == 0)
    pass                 R_in = R_out (a layer whose input and output have one shape)

A rule is a function ``(layer, relevance [out shape]) -> relevance [in shape]``; ``parse`` makes one
from ``"gamma(0.5)"``-style text.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import Array

Mix = tuple[tuple[float, str], ...]  # a parameter as a sum of coefficients times parts of W or b
ID: Mix = ((1.0, "id"),)
POS: Mix = ((1.0, "pos"),)
NEG: Mix = ((1.0, "neg"),)
ZERO: Mix = ()


@dataclasses.dataclass(frozen=True)
class Layer:
    """One linear layer at one image: ``z = scale * lin(x, W) + shift`` (``scale`` / ``shift``
    ``None`` when absent), its input ``x`` and output ``z`` values; ``name`` its layer;
    ``positive``: ``x >= 0`` by construction (a ReLU's output), so the rules skip the terms of
    negative inputs, which are exactly zero there (half the products of zplus, alpha-beta, gamma)."""

    lin: Callable[[Array, Array], Array]
    weight: Array
    scale: Array | None
    shift: Array | None
    x: Array
    z: Array
    name: str = ""
    positive: bool = False


Rule = Callable[[Layer, Array], Array]


def stabilise(z: Array, epsilon: float) -> Array:
    """``z + epsilon * sign(z)`` with ``sign(0) = 1`` (zennit's stabiliser)."""
    return z + epsilon * (jnp.sign(z) + (z == 0).astype(z.dtype))


def _part(w: Array, part: str) -> Array:
    if part == "id":
        return w
    if part == "pos":
        return jnp.maximum(w, 0)
    if part == "neg":
        return jnp.minimum(w, 0)
    if part == "sq":
        return w * w
    return jnp.ones_like(w)


def product(layer: Layer, x: Array, mix: Mix) -> Array:
    """``scale * lin(x, W')`` for ``W' = sum c * part(W)`` (``"one"`` parts ignore ``scale``, the
    weights of a merged batch norm being replaced by ones); a per-output scale is carried through
    the parts of ``W`` by its sign (``(sW)+ = s+ W+ + s- W-``)."""
    if layer.scale is None or all(part == "one" for _, part in mix):
        return layer.lin(x, sum(c * _part(layer.weight, p) for c, p in mix))
    s = layer.scale
    out = jnp.zeros_like(layer.z)
    for c, part in mix:
        if part == "id":
            out = out + c * s * layer.lin(x, layer.weight)
        elif part == "sq":
            out = out + c * s * s * layer.lin(x, layer.weight * layer.weight)
        elif part == "one":
            out = out + c * layer.lin(x, jnp.ones_like(layer.weight))
        else:
            p, n = layer.lin(x, _part(layer.weight, "pos")), layer.lin(x, _part(layer.weight, "neg"))
            sp, sn = jnp.maximum(s, 0), jnp.minimum(s, 0)
            out = out + c * (sp * p + sn * n if part == "pos" else sp * n + sn * p)
    return out


def bias(layer: Layer, mix: Mix) -> Array | float:
    """The shift's parts ``sum c * part(b)`` (0 without a shift or for ``ZERO``)."""
    if layer.shift is None or not mix:
        return 0.0
    return sum(c * (_part(layer.shift, p) if p != "one" else 0.0) for c, p in mix)


def output(layer: Layer, x: Array, w: Mix, b: Mix) -> Array:
    return product(layer, x, w) + bias(layer, b)


def back(layer: Layer, x: Array, w: Mix, g: Array) -> Array:
    """``lin(., W')^T g``: the transposed product at ``x`` (linear, so at any point)."""
    return jax.vjp(lambda v: product(layer, v, w), x)[1](g)[0]


def epsilon(epsilon: float = 1e-6) -> Rule:
    """LRP-epsilon: ``x * W^T (R / (z + epsilon sign(z)))``; the bias absorbs its share."""
    def rule(layer: Layer, r: Array) -> Array:
        return layer.x * back(layer, layer.x, ID, r / stabilise(layer.z, epsilon))
    return rule


def zero() -> Rule:
    """LRP-0: ``x * W^T (R / z)``, no relevance where ``z == 0``."""
    def rule(layer: Layer, r: Array) -> Array:
        z = layer.z
        safe = jnp.where(z == 0, jnp.ones_like(z), z)
        return layer.x * back(layer, layer.x, ID, jnp.where(z == 0, jnp.zeros_like(r), r / safe))
    return rule


def alpha_beta(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> Rule:
    """LRP-alpha-beta: positive contributions weighted ``alpha``, negative ``beta``, each
    normalised by its own sum (``alpha - beta = 1`` conserves relevance)."""
    if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9:
        raise InputError(f"alpha_beta needs alpha, beta >= 0 and alpha - beta = 1, got alpha={alpha}, beta={beta}")

    def rule(layer: Layer, r: Array) -> Array:
        xp, xn = jnp.maximum(layer.x, 0), jnp.minimum(layer.x, 0)
        if layer.positive:
            gp = r / stabilise(output(layer, xp, POS, POS), stabilizer)
            pos = xp * back(layer, xp, POS, gp)
            if not beta:
                return alpha * pos
            gn = r / stabilise(output(layer, xp, NEG, NEG), stabilizer)
            return alpha * pos - beta * (xp * back(layer, xp, NEG, gn))
        zp = output(layer, xp, POS, POS) + output(layer, xn, NEG, ZERO)
        zn = output(layer, xp, NEG, NEG) + output(layer, xn, POS, ZERO)
        gp, gn = r / stabilise(zp, stabilizer), r / stabilise(zn, stabilizer)
        pos = xp * back(layer, xp, POS, gp) + xn * back(layer, xn, NEG, gp)
        neg = xp * back(layer, xp, NEG, gn) + xn * back(layer, xn, POS, gn)
        return alpha * pos - beta * neg if beta else alpha * pos
    return rule


def zplus(stabilizer: float = 1e-6) -> Rule:
    """LRP-z+: ``alpha_beta(1, 0)``, negative inputs through the negative weights."""
    def rule(layer: Layer, r: Array) -> Array:
        xp, xn = jnp.maximum(layer.x, 0), jnp.minimum(layer.x, 0)
        if layer.positive:
            return xp * back(layer, xp, POS, r / stabilise(output(layer, xp, POS, POS), stabilizer))
        z = output(layer, xp, POS, POS) + output(layer, xn, NEG, ZERO)
        g = r / stabilise(z, stabilizer)
        return xp * back(layer, xp, POS, g) + xn * back(layer, xn, NEG, g)
    return rule


def gamma(gamma: float = 0.25, stabilizer: float = 1e-6) -> Rule:
    """Generalised LRP-gamma (zennit's ``Gamma``): where ``z > 0`` the positive contributions
    (``x+`` through ``W + gamma W+``, ``x-`` through ``W + gamma W-``) are boosted, where ``z < 0``
    the negative ones."""
    up: Mix = ((1.0, "id"), (gamma, "pos"))
    down: Mix = ((1.0, "id"), (gamma, "neg"))

    def rule(layer: Layer, r: Array) -> Array:
        xp, xn = jnp.maximum(layer.x, 0), jnp.minimum(layer.x, 0)
        if layer.positive and layer.scale is None:
            # x >= 0: with P = lin(x, W+) and lin(x, W) = z - b, W + gW- = (1 + g) W - g W+ gives both
            # sums and both transposed products from P and W alone (4 products a layer, not 5).
            lin_w = layer.z if layer.shift is None else layer.z - layer.shift
            p = product(layer, layer.x, POS)
            zp = lin_w + gamma * p + bias(layer, up)
            zn = (1 + gamma) * lin_w - gamma * p + bias(layer, down)
            gp = (layer.z > 0).astype(r.dtype) * r / stabilise(zp, stabilizer)
            gn = (layer.z < 0).astype(r.dtype) * r / stabilise(zn, stabilizer)
            return layer.x * (back(layer, layer.x, ID, gp + (1 + gamma) * gn) + gamma * back(layer, layer.x, POS, gp - gn))
        if layer.positive:
            gp = (layer.z > 0).astype(r.dtype) * r / stabilise(output(layer, xp, up, up), stabilizer)
            gn = (layer.z < 0).astype(r.dtype) * r / stabilise(output(layer, xp, down, down), stabilizer)
            return xp * back(layer, xp, up, gp) + xp * back(layer, xp, down, gn)
        zp = output(layer, xp, up, up) + output(layer, xn, down, ZERO)
        zn = output(layer, xp, down, down) + output(layer, xn, up, ZERO)
        gp = (layer.z > 0).astype(r.dtype) * r / stabilise(zp, stabilizer)
        gn = (layer.z < 0).astype(r.dtype) * r / stabilise(zn, stabilizer)
        return (xp * back(layer, xp, up, gp) + xn * back(layer, xn, down, gp)
                + xp * back(layer, xp, down, gn) + xn * back(layer, xn, up, gn))
    return rule


def zbox(low: Any, high: Any, stabilizer: float = 1e-6) -> Rule:
    """LRP-z^B for inputs bounded by ``low <= x <= high`` (per channel ``[C]`` or scalars)."""
    def rule(layer: Layer, r: Array) -> Array:
        lo = jnp.broadcast_to(jnp.asarray(low, layer.x.dtype), layer.x.shape)
        hi = jnp.broadcast_to(jnp.asarray(high, layer.x.dtype), layer.x.shape)
        z = output(layer, layer.x, ID, ID) - output(layer, lo, POS, POS) - output(layer, hi, NEG, NEG)
        g = r / stabilise(z, stabilizer)
        return layer.x * back(layer, layer.x, ID, g) - lo * back(layer, lo, POS, g) - hi * back(layer, hi, NEG, g)
    return rule


def flat(stabilizer: float = 1e-6) -> Rule:
    """LRP-flat: every input of an output's receptive field gets an equal share."""
    ones: Mix = ((1.0, "one"),)

    def rule(layer: Layer, r: Array) -> Array:
        x1 = jnp.ones_like(layer.x)
        return back(layer, x1, ones, r / stabilise(product(layer, x1, ones), stabilizer))
    return rule


def wsquare(stabilizer: float = 1e-6) -> Rule:
    """LRP-w^2: shares by the squared weights (and squared bias in the denominator)."""
    sq: Mix = ((1.0, "sq"),)

    def rule(layer: Layer, r: Array) -> Array:
        x1 = jnp.ones_like(layer.x)
        return back(layer, x1, sq, r / stabilise(output(layer, x1, sq, sq), stabilizer))
    return rule


def passing() -> Rule:
    """Relevance passes unchanged (a layer whose input and output have one shape)."""
    def rule(layer: Layer, r: Array) -> Array:
        if layer.x.shape != r.shape:
            raise InputError(f"rule 'pass' at layer {layer.name!r}: its input {layer.x.shape} and output {r.shape} "
                             "differ in shape; pass suits only layers that keep the shape")
        return r
    return rule


RULES: dict[str, Callable[..., Rule]] = {
    "epsilon": epsilon,
    "zero": zero,
    "z": zero,
    "zplus": zplus,
    "alpha_beta": alpha_beta,
    "gamma": gamma,
    "zbox": zbox,
    "flat": flat,
    "wsquare": wsquare,
    "pass": passing,
}


def parse(spec: Any, *, box: tuple[Any, Any] | None = None) -> Rule:
    """A rule from ``"epsilon"``, ``"epsilon(0.25)"``, ``"alpha_beta(2, 1)"``, ``"gamma(gamma=0.5)"``,
    ``"zbox"`` (bounds ``box``, or ``"zbox(low, high)"``) or a rule function itself."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise InputError(f"an LRP rule is a name such as 'epsilon(0.25)' or a function, got {spec!r}")
    text = spec.strip()
    name, args, kwargs = text, [], {}
    if "(" in text:
        if not text.endswith(")"):
            raise InputError(f"cannot read LRP rule {spec!r}: expected name(arguments)")
        name = text[: text.index("(")].strip()
        try:
            call = ast.parse(f"f{text[text.index('('):]}", mode="eval").body
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError) as e:
            raise InputError(f"cannot read LRP rule {spec!r}: {e}") from None
    if name not in RULES:
        raise InputError(f"unknown LRP rule {name!r}; rules: {', '.join(sorted(RULES))}")
    if name == "zbox" and not args and "low" not in kwargs:
        if box is None:
            raise InputError("rule 'zbox' needs bounds: zbox(low, high), or a model whose preprocessing gives them")
        args = list(box)
    try:
        return RULES[name](*args, **kwargs)
    except TypeError as e:
        raise InputError(f"LRP rule {spec!r}: {e}") from None


def names() -> Sequence[str]:
    return sorted(RULES)
