"""Path methods on one image: integrated gradients and its rules, expected gradients, blur IG, guided IG."""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError, ToleranceWarning
from jaxplain.types import ApplyFn, Array, PyTree

from .blur import blur_difference, gaussian_blur
from jaxplain.baselines import baseline_image
from jaxplain.checks import positive_int, real
from jaxplain.chunks import counts_images, finishing, rounds, sum_chunks
from .gradients import score
from jaxplain.marks import cost, per_image

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def _legendre(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(P_n(x), P_n'(x))`` by the three-term recurrence, in place: memory linear in ``len(x)``."""
    p0, p1, t = np.ones_like(x), x.copy(), np.empty_like(x)
    for j in range(2, n + 1):
        np.multiply(x, p1, out=t)
        t *= (2 * j - 1) / j
        p0 *= (j - 1) / j
        t -= p0
        p0, p1, t = p1, t, p0
    return p1, n * (x * p1 - p0) / (x * x - 1)


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes (ascending) and weights on [-1, 1] in float64.

    Up to 1000 nodes NumPy's ``leggauss`` (as Captum); beyond, whose companion matrix would need
    ``8 n^2`` bytes (75 GB at 100000), Newton's method on ``P_n`` from Tricomi's asymptotic
    guesses, iterated per node until its step is below 1e-15: linear memory, about 12 s at
    100000 nodes on a 2-core CPU (it agrees with ``leggauss`` to 1e-15 in the nodes and 2e-10 of
    the largest weight at 3000)."""
    if n <= 1000:
        return np.polynomial.legendre.leggauss(n)
    theta = (4 * np.arange(1, (n + 1) // 2 + 1) - 1) * np.pi / (4 * n + 2)
    x = (1 - (n - 1) / (8.0 * n**3) - (39 - 28 / np.sin(theta) ** 2) / (384.0 * n**4)) * np.cos(theta)
    slope = np.empty_like(x)
    todo = np.arange(len(x))
    while todo.size:  # the largest nodes, descending
        p, d = _legendre(x[todo], n)
        step = p / d
        x[todo] -= step
        slope[todo] = d
        todo = todo[np.abs(step) > 1e-15]
    w = 2 / ((1 - x * x) * slope * slope)
    return np.concatenate([-x, x[::-1][n % 2:]]), np.concatenate([w, w[::-1][n % 2:]])


def rule_nodes(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas [steps], weights [steps])`` of a quadrature rule on [0, 1] (Captum's names).

    Riemann left/right/middle: ``steps`` points, each weight ``1/steps``. Trapezoid: the true rule
    on ``linspace(0, 1, steps)`` (weights ``1/(steps-1)``, ends halved); Captum's version is this
    times ``(steps-1)/steps``. Gauss-Legendre: Legendre nodes and weights mapped to [0, 1].
    """
    n = positive_int(steps, "steps")
    if rule == "riemann_left":
        a, w = np.linspace(0, 1 - 1 / n, n), np.full(n, 1 / n)
    elif rule == "riemann_right":
        a, w = np.linspace(1 / n, 1, n), np.full(n, 1 / n)
    elif rule == "riemann_middle":
        a, w = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n), np.full(n, 1 / n)
    elif rule == "riemann_trapezoid":
        if n < 2:
            raise InputError("riemann_trapezoid needs steps >= 2")
        a, w = np.linspace(0, 1, n), np.full(n, 1 / (n - 1))
        w[[0, -1]] /= 2
    elif rule == "gausslegendre":
        nodes, weights = gauss_legendre(n)
        a, w = (nodes + 1) / 2, weights / 2
    else:
        raise InputError(f"unknown integration rule {rule!r}; expected one of {RULES}")
    return a.astype(np.float32), w.astype(np.float32)


def path_integral(f: Callable[[Array], Array], start: Array, diff: Array, rule: str, steps: int,
                  chunk: int | None) -> Array:
    """``sum_i w_i grad f(start + a_i diff)``, ``[*S]`` as ``start`` and ``diff``, by the quadrature
    ``rule`` (``rule_nodes``): one batched backward pass per chunk of nodes (``sum_chunks``)."""
    a, w = rule_nodes(rule, steps)

    def part(aw: tuple[Array, Array]) -> Array:
        alphas, weights = aw
        pts = start + alphas.reshape((-1,) + (1,) * diff.ndim) * diff
        return jax.grad(lambda p: jnp.sum(weights * jax.vmap(f)(p)))(pts).sum(axis=0)

    return sum_chunks(part, (jnp.asarray(a), jnp.asarray(w)), chunk)


class Refined(NamedTuple):
    """Integrated gradients to a ``tolerance`` with ``return_delta=True``, one image (a leading
    ``B`` on each field through ``explain``). ``F`` is the score along the path, ``F(0)`` at the
    baseline, ``F(1)`` at the input."""

    attribution: Array  # [*S]: the input's shape, or the layer's for layer IG
    delta: Array  # []: sum(attribution) - (F(1) - F(0)), the completeness error
    evaluations: Array  # [] int32: gradients computed for this image (at most max_steps)
    converged: Array  # [] bool: reached the tolerance (else max_steps stopped it)


class _Nodes(NamedTuple):
    """The path's nodes in evaluation order; a slot not (yet) used has ``alpha = inf``."""

    alpha: Array  # [M] path fractions in [0, 1]
    value: Array  # [M] F(alpha)
    slope: Array  # [M] dF/dalpha = grad . diff
    grad: Array  # [M, *S] gradient at the path point
    used: Array  # [] int32: slots filled, the gradient evaluations so far


def _sorted(nodes: _Nodes) -> tuple[Array, Array, Array, Array]:
    """``(order, interval widths [M-1], errors [M-1], gap)`` of the nodes in path order. Interval
    ``j`` runs between the ``j``-th and ``j+1``-th node; its error, trapezoid minus exact, is
    ``h/2 (F'(a_j) + F'(a_j+1)) - (F(a_j+1) - F(a_j))``; both are 0 past the last node."""
    order = jnp.argsort(nodes.alpha)
    a, v, d = nodes.alpha[order], nodes.value[order], nodes.slope[order]
    real = jnp.isfinite(a[1:])
    h = jnp.where(real, a[1:] - a[:-1], 0)
    err = jnp.where(real, h / 2 * (d[1:] + d[:-1]) - (v[1:] - v[:-1]), 0)
    return order, h, err, jnp.sum(jnp.where(real, v[1:] - v[:-1], 0))


def _within(err: Array, gap: Array, tolerance: float) -> Array:
    """Whether the completeness error ``sum(err)`` and every interval's own error are within
    ``tolerance |gap|`` (the second keeps errors of opposite sign from passing by cancelling)."""
    limit = tolerance * jnp.abs(gap)
    return (jnp.abs(jnp.sum(err)) <= limit) & (jnp.max(jnp.abs(err)) <= limit)


def _evaluate(f: Callable[[Array], Array], start: Array, diff: Array, nodes: _Nodes, alpha: Array,
              keep: Array) -> _Nodes:
    """``nodes`` with ``alpha [r]`` evaluated in one batched pass and written to the next ``r``
    slots (a lane not in ``keep`` is computed but its slot stays unused)."""
    value, grad = jax.vmap(lambda a: jax.value_and_grad(f)(start + a * diff))(alpha)
    slope = jnp.sum((grad * diff).reshape(len(alpha), -1), axis=1)

    def put(buf: Array, new: Array) -> Array:
        return jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), nodes.used, axis=0)

    alpha = jnp.where(keep, alpha, jnp.inf)
    return _Nodes(put(nodes.alpha, alpha), put(nodes.value, value), put(nodes.slope, slope),
                  put(nodes.grad, grad), nodes.used + len(alpha))


def refine_path(f: Callable[[Array], Array], start: Array, diff: Array, *, tolerance: float,
                max_steps: int, per_round: int) -> Refined:
    """Integrated gradients of the scalar ``f`` along ``z(a) = start + a diff`` (``[*S]`` each,
    ``a`` in [0, 1]) to a stated completeness, for one image; ``F(a) = f(z(a))``.

    Trapezoid rule on nodes refined where needed: as ``F`` comes with each gradient, each
    interval's error is known exactly (``_sorted``), and the completeness error is their sum. The
    first round evaluates ``per_round`` equally spaced nodes (0 and 1 among them); each next round
    ``per_round`` new nodes, cutting intervals into equal parts where that cuts most of the
    attribution's error, estimated per interval as ``h/2 sum |diff * (grad_right - grad_left)|``
    (its L1 bound where each component jumps once inside; an interval cut in ``k + 1`` parts is
    taken to keep ``1/(k + 1)`` of it, as at a kink), until the completeness error and each
    interval's own are within ``tolerance |F(1) - F(0)|`` (``_within``) or another round would
    pass ``max_steps`` evaluations. Float32 rounding of ``F`` puts a floor near
    ``1e-7 |F| / |F(1) - F(0)|`` under what a tolerance can ask. Each node's gradient is kept
    (``max_steps x S`` floats) and weighted once at the end, so none is computed twice.

    The rounds are a ``chunks.rounds`` loop (at most ``max_steps // per_round``): a
    ``lax.while_loop`` under the user's own ``jit`` and in ``scan`` mode; on the CPU's host loop
    one compiled call per round, the nodes carried on the device, because there a gradient inside
    a loop body runs about 2-3x slower than in a plain call (VGG16: the backward convolutions
    leave YNNPACK). Either way, under ``vmap`` the rounds go on until the batch's slowest image
    stops (the others' lanes are computed and discarded); ``evaluations`` counts each image's own.
    """
    r = per_round
    empty = _Nodes(jnp.full(max_steps, jnp.inf, diff.dtype), jnp.zeros(max_steps, diff.dtype),
                   jnp.zeros(max_steps, diff.dtype), jnp.zeros((max_steps, *diff.shape), diff.dtype), jnp.int32(0))

    def todo(nodes: _Nodes) -> Array:
        _, _, err, gap = _sorted(nodes)
        return (nodes.used == 0) | (~_within(err, gap, tolerance) & (nodes.used + r <= max_steps))

    def refine(nodes: _Nodes) -> _Nodes:
        order, h, _, _ = _sorted(nodes)
        g = nodes.grad[order]
        size = h / 2 * jnp.sum(jnp.abs((g[1:] - g[:-1]) * diff).reshape(len(h), -1), axis=1)
        k = jnp.arange(1, r + 1, dtype=h.dtype)  # cutting interval j in k + 1 equal parts saves
        gain = jnp.where(h > 0, size, -1)[:, None] / (k * (k + 1))  # this much more than in k
        top, pick = jax.lax.top_k(gain.ravel(), r)
        j, same = pick // r, (pick // r)[:, None] == (pick // r)[None, :]
        i = jnp.sum(same & (pick[None, :] < pick[:, None]), axis=1) + 1  # this lane's node of interval j
        a = nodes.alpha[order]
        new = a[j] + h[j] * i.astype(h.dtype) / (jnp.sum(same, axis=1) + 1).astype(h.dtype)
        keep = (top >= 0) & (a[j] < new) & (new < a[j + 1])
        first = nodes.used == 0  # the first round: equally spaced
        new = jnp.where(first, jnp.linspace(0, 1, r, dtype=diff.dtype), jnp.where(keep, new, 1))
        return _evaluate(f, start, diff, nodes, new, first | keep)

    nodes = rounds(todo, refine, empty, max_steps // r)
    order, h, err, gap = _sorted(nodes)
    weight = jnp.zeros_like(nodes.alpha).at[order].set((jnp.append(h, 0) + jnp.append(0, h)) / 2)
    attr = diff * jnp.tensordot(weight, nodes.grad, axes=1)
    return Refined(attr, jnp.sum(attr) - gap, nodes.used, _within(err, gap, tolerance))


def _warn(name: str, tolerance: float, max_steps: int) -> Callable[[Array, Array], None]:
    def report(converged: Array, error: Array) -> None:
        if not converged:
            warnings.warn(f"{name}: max_steps={max_steps} gradients did not reach tolerance={tolerance:g} (the "
                          f"completeness error is {float(error):.3g} of |F(1) - F(0)|); raise max_steps, or see "
                          f"each image's with return_delta=True", ToleranceWarning, stacklevel=1)

    return report


def to_tolerance(name: str, f: Callable[[Array], Array], start: Array, diff: Array, *, tolerance: object,
                 max_steps: object, per_round: object, return_delta: bool) -> Array | Refined:
    """``refine_path`` with its settings checked (``InputError`` naming the bad one); a
    ``ToleranceWarning`` where the cap stopped it above the tolerance; the attribution, or all of
    ``Refined`` with ``return_delta``. ``name`` is the method's, for the warning."""
    tolerance = real(tolerance, "tolerance", above=0)
    max_steps, per_round = positive_int(max_steps, "max_steps"), positive_int(per_round, "per_round")
    if per_round < 2 or max_steps < per_round:
        raise InputError(f"integrated gradients to a tolerance needs 2 <= per_round <= max_steps, "
                         f"got per_round={per_round}, max_steps={max_steps}")
    out = refine_path(f, start, diff, tolerance=tolerance, max_steps=max_steps, per_round=per_round)
    out = jax.lax.optimization_barrier(out)  # else XLA:CPU fails on the callback when only the attribution is used
    if finishing():  # not in a host loop's rounds before the last call
        gap = jnp.sum(out.attribution) - out.delta
        jax.debug.callback(_warn(name, tolerance, max_steps), out.converged, jnp.abs(out.delta / gap))
    return out if return_delta else out.attribution


def check_multiply(name: str, multiply_by_inputs: object, tolerance: object, return_delta: object) -> bool:
    """``multiply_by_inputs`` as a bool; ``False`` with a ``tolerance`` or ``return_delta`` is an
    ``InputError``: both measure completeness, ``sum(attr) = f(end) - f(start)``, which only the
    multiplied attribution has (the path-averaged gradient's sum is not a difference of scores)."""
    if not isinstance(multiply_by_inputs, (bool, np.bool_)):
        raise InputError(f"{name}: multiply_by_inputs must be True or False, not {multiply_by_inputs!r}")
    if not multiply_by_inputs:
        given = [s for s, v in (("tolerance", tolerance is not None), ("return_delta", bool(return_delta))) if v]
        if given:
            raise InputError(f"{name}: multiply_by_inputs=False cannot take {' or '.join(given)}: "
                             f"{'they measure' if len(given) > 1 else 'it measures'} completeness, sum(attr) = "
                             f"f(x) - f(baseline), which holds only for the attribution multiplied by x - baseline "
                             f"(multiply_by_inputs=True)")
    return bool(multiply_by_inputs)


def integrate(name: str, f: Callable[[Array], Array], start: Array, end: Array, *, rule: str, steps: int,
              chunk: int | None, return_delta: bool, tolerance: float | None, max_steps: int,
              per_round: int, multiply_by_inputs: bool = True) -> Array | tuple[Array, Array] | Refined:
    """``(end - start) * integral_0^1 grad f(start + a (end - start)) da`` by the quadrature
    ``rule`` or, with ``tolerance``, refined (``to_tolerance``); with ``return_delta`` also the
    completeness error ``sum(attr) - (f(end) - f(start))``: the common tail of the IG methods.
    ``multiply_by_inputs=False``: the integral alone, the path-averaged gradient (``check_multiply``)."""
    diff = end - start
    if not check_multiply(name, multiply_by_inputs, tolerance, return_delta):
        return path_integral(f, start, diff, rule, steps, chunk)
    if tolerance is not None:
        return to_tolerance(name, f, start, diff, tolerance=tolerance, max_steps=max_steps, per_round=per_round,
                            return_delta=return_delta)
    attr = diff * path_integral(f, start, diff, rule, steps, chunk)
    return (attr, jnp.sum(attr) - (f(end) - f(start))) if return_delta else attr


def path_passes(settings: dict, image_shape: tuple[int, ...]) -> int:
    """Gradients per image of a path method: ``steps``, or at most ``max_steps`` to a ``tolerance``."""
    return settings["max_steps"] if settings.get("tolerance") is not None else settings["steps"]


@cost(path_passes)
@per_image(baseline=3)
@counts_images
def integrated_gradients(
    apply: ApplyFn,
    params: PyTree,
    x: Array,
    target: Array,
    *,
    steps: int = 50,
    rule: str = "gausslegendre",
    baseline: str | Array = "zeros",
    key: Array | None = None,
    chunk: int | None = 16,
    return_delta: bool = False,
    tolerance: float | None = None,
    max_steps: int = 128,
    per_round: int = 8,
    multiply_by_inputs: bool = True,
) -> Array | tuple[Array, Array] | Refined:
    """Integrated gradients (Sundararajan et al. 2017), ``[H, W, C]``:
    ``(x - b) * integral_0^1 grad f(b + a (x - b)) da`` by the quadrature ``rule``.
    ``multiply_by_inputs=False`` (Captum's option of that name): the integral alone, the gradient
    averaged along the path, without the factor ``x - b``; it has no completeness, so it takes
    neither ``tolerance`` nor ``return_delta`` (an ``InputError``).

    With ``return_delta``, also the completeness error ``sum(attr) - (f(x) - f(b))``.
    With ``tolerance`` (e.g. 0.01), ``steps``, ``rule`` and ``chunk`` are not used: the path is
    refined until ``|delta| <= tolerance |f(x) - f(b)|``, and each interval's share of it too
    (``refine_path``), ``per_round`` gradients per batched pass, at most ``max_steps`` (a
    ``ToleranceWarning`` if an image stops there); ``return_delta`` then gives ``Refined``
    (with each image's gradient count). Memory: ``max_steps`` gradients per image are kept.
    """
    base, f = baseline_image(baseline, x, key), score(apply, params, target)
    return integrate("integrated_gradients", f, base, x, rule=rule, steps=steps, chunk=chunk, return_delta=return_delta,
                     tolerance=tolerance, max_steps=max_steps, per_round=per_round,
                     multiply_by_inputs=multiply_by_inputs)


@cost(lambda s, _: s["samples"])
@counts_images
def expected_gradients(
    apply: ApplyFn,
    params: PyTree,
    x: Array,
    target: Array,
    *,
    references: Array | None = None,
    samples: int = 32,
    key: Array | None = None,
    chunk: int | None = 16,
) -> Array:
    """Expected gradients / gradient SHAP (Erion et al. 2021; Captum ``GradientShap``), ``[H, W, C]``:
    the mean over ``samples`` of ``(x - r) * grad f(r + a (x - r))``, ``r`` drawn from the
    reference batch ``references [R, H, W, C]`` and ``a ~ U(0, 1)``."""
    if references is None:
        raise InputError("expected_gradients needs references=[R, H, W, C], a batch of baseline images")
    if key is None:
        raise InputError("expected_gradients is random: pass key=jax.random.key(...)")
    samples = positive_int(samples, "samples")
    refs = jnp.asarray(references, x.dtype)
    if refs.ndim != x.ndim + 1 or refs.shape[1:] != x.shape:
        raise InputError(f"references must be [R, *{x.shape}], got {refs.shape}")
    k_idx, k_alpha = jax.random.split(key)
    idx = jax.random.randint(k_idx, (samples,), 0, refs.shape[0])
    alphas = jax.random.uniform(k_alpha, (samples,), x.dtype)
    f = score(apply, params, target)

    def part(ia: tuple[Array, Array]) -> Array:
        i, a = ia
        r = refs[i]
        pts = r + a.reshape((-1,) + (1,) * x.ndim) * (x - r)
        g = jax.grad(lambda p: jnp.sum(jax.vmap(f)(p)))(pts)
        return jnp.sum((x - r) * g, axis=0)

    return sum_chunks(part, (idx, alphas), chunk) / samples


@cost(lambda s, _: s["steps"])
@counts_images
def blur_ig(
    apply: ApplyFn,
    params: PyTree,
    x: Array,
    target: Array,
    *,
    max_sigma: float = 50.0,
    steps: int = 100,
    grad_step: float = 0.01,
    sqrt: bool = False,
    chunk: int | None = 16,
) -> Array:
    """Blur integrated gradients (Xu, Venugopalan, Sundararajan et al. 2020), ``[H, W, C]``: the
    path runs from ``x`` blurred with ``max_sigma`` to ``x`` by shrinking the blur; the attribution
    is ``-sum_i (s_{i+1} - s_i) * dL/ds(x, s_i) * grad f(L(x, s_i))`` with ``s_i = i * max_sigma /
    steps`` (or its square root), ``dL/ds`` a forward difference of ``grad_step``."""
    steps = positive_int(steps, "steps")
    max_sigma, grad_step = real(max_sigma, "max_sigma", above=0), real(grad_step, "grad_step", above=0)
    s = np.arange(steps + 1, dtype=np.float64) * max_sigma / steps
    sigmas = np.sqrt(s) if sqrt else s
    f = score(apply, params, target)

    def part(sd: tuple[Array, Array]) -> Array:
        sig, dsig = sd
        bound = float(np.max(sigmas))
        pts = jax.vmap(lambda s: gaussian_blur(x, s, bound))(sig)
        dblur = jax.vmap(lambda s: blur_difference(x, s, grad_step, bound))(sig) / grad_step
        g = jax.grad(lambda p: jnp.sum(jax.vmap(f)(p)))(pts)
        return jnp.sum(dsig.reshape((-1,) + (1,) * x.ndim) * dblur * g, axis=0)

    xs = (jnp.asarray(sigmas[:-1], jnp.float32), jnp.asarray(np.diff(sigmas), jnp.float32))
    return -sum_chunks(part, xs, chunk)


@cost(lambda s, _: s["steps"])
@per_image(baseline=3)
def guided_ig(
    apply: ApplyFn,
    params: PyTree,
    x: Array,
    target: Array,
    *,
    baseline: str | Array = "zeros",
    steps: int = 200,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    key: Array | None = None,
    max_inner: int = 64,
) -> Array:
    """Guided integrated gradients (Kapishnikov et al. 2021), ``[H, W, C]``.

    The path is chosen as it is walked: at each of ``steps`` steps the ``fraction`` of features
    with the smallest |gradient| move towards ``x`` first, each feature kept within ``max_dist``
    (in path fraction) of the straight line, until the step's share of the L1 distance is covered.
    Sequential by nature: one gradient per step, ``steps`` in all (``max_inner`` bounds the moves
    within one step).
    """
    steps, max_inner = positive_int(steps, "steps"), positive_int(max_inner, "max_inner")
    fraction = real(fraction, "fraction", above=0, at_most=1)
    max_dist = real(max_dist, "max_dist (a fraction of the path)", at_least=0, at_most=1)
    base = baseline_image(baseline, x, key)
    grad_f = jax.grad(score(apply, params, target))
    diff = x - base
    total = jnp.sum(jnp.abs(diff))
    inf = jnp.asarray(jnp.inf, x.dtype)
    eps = 1e-9

    def outer(step: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        cur, attr = carry
        g_actual = grad_f(cur)
        alpha = (step + 1.0) / steps
        x_min = base + diff * jnp.maximum(alpha - max_dist, 0.0)
        x_max = base + diff * jnp.minimum(alpha + max_dist, 1.0)
        l1_target = total * (1.0 - alpha)
        alpha_min = jnp.maximum(alpha - max_dist, 0.0)

        def cond(state: tuple) -> Array:
            _, _, _, gamma, done, it = state
            return (gamma > 1.0) & ~done & (it < max_inner)

        def body(state: tuple) -> tuple:
            cur, attr, grad, _, _, it = state
            old = cur
            safe = jnp.where(diff != 0, diff, 1.0)
            x_alpha = jnp.where(diff != 0, (cur - base) / safe, jnp.minimum(alpha + max_dist, 1.0))
            cur = jnp.where(x_alpha < alpha_min, x_min, cur)
            l1_cur = jnp.sum(jnp.abs(cur - x))
            close = jnp.abs(l1_target - l1_cur) <= jnp.maximum(eps * jnp.maximum(jnp.abs(l1_target), jnp.abs(l1_cur)), eps)
            grad = jnp.where(cur == x_max, inf, grad)
            threshold = jnp.quantile(jnp.abs(grad).ravel(), fraction, method="lower")
            sel = (jnp.abs(grad) <= threshold) & (grad != inf)
            l1_sel = jnp.sum(jnp.where(sel, jnp.abs(cur - x_max), 0.0))
            gamma = jnp.where(l1_sel > 0, (l1_cur - l1_target) / jnp.where(l1_sel > 0, l1_sel, 1.0), inf)
            moved = jnp.where(gamma > 1.0, x_max, cur + (x_max - cur) * gamma)
            cur = jnp.where(sel & ~close, moved, cur)
            attr = attr + (cur - old) * g_actual
            return cur, attr, grad, gamma, close | (l1_sel <= 0), it + 1

        init = (cur, attr, g_actual, inf, jnp.asarray(False), jnp.asarray(0))
        cur, attr, *_ = jax.lax.while_loop(cond, body, init)
        return cur, attr

    _, attr = jax.lax.fori_loop(0, steps, outer, (base, jnp.zeros_like(x)))
    return attr
