"""Path methods on one image: integrated gradients and its rules, expected gradients, blur IG, guided IG."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.types import ApplyFn, Array, PyTree

from .blur import blur_difference, gaussian_blur
from .checks import positive_int, real
from .chunks import counts_images, sum_chunks
from .gradients import score
from .marks import per_image

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
BASELINES = ("zeros", "black", "blur", "uniform")


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


def resolve_baseline(baseline: str | Array, x: Array, key: Array | None, blur_sigma: float = 10.0) -> Array:
    """The baseline image for ``x``: ``"zeros"``, ``"blur"`` (Gaussian, ``blur_sigma`` px),
    ``"uniform"`` (noise in ``x``'s value range; needs ``key``) or an array of ``x``'s shape.
    ``"black"`` (the preprocessed black image) depends on the model and is resolved by ``explain``."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return jnp.zeros_like(x)
        if baseline == "blur":
            return gaussian_blur(x, blur_sigma).astype(x.dtype)
        if baseline == "uniform":
            if key is None:
                raise InputError("baseline='uniform' is random: pass key=jax.random.key(...)")
            return jax.random.uniform(key, x.shape, x.dtype, jnp.min(x), jnp.max(x))
        if baseline == "black":
            raise InputError("baseline='black' needs the model's preprocessing: use jaxplain.explain, or pass the array")
        raise InputError(f"unknown baseline {baseline!r}; expected one of {BASELINES} or an array")
    b = jnp.asarray(baseline)
    if b.shape != x.shape:
        raise InputError(f"baseline has shape {b.shape}, the image {x.shape}")
    return b.astype(x.dtype)


def _path_integral(apply: ApplyFn, params: PyTree, x: Array, target: Array, base: Array,
                   alphas: Array, weights: Array, chunk: int | None) -> Array:
    """``sum_i w_i * grad f(base + a_i (x - base))``: one batched backward pass per chunk."""
    f = score(apply, params, target)
    diff = x - base

    def part(aw: tuple[Array, Array]) -> Array:
        a, w = aw
        pts = base + a.reshape((-1,) + (1,) * x.ndim) * diff
        return jax.grad(lambda p: jnp.sum(w * jax.vmap(f)(p)))(pts).sum(axis=0)

    return sum_chunks(part, (alphas, weights), chunk)


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
) -> Array | tuple[Array, Array]:
    """Integrated gradients (Sundararajan et al. 2017), ``[H, W, C]``:
    ``(x - b) * integral_0^1 grad f(b + a (x - b)) da`` by the quadrature ``rule``.

    With ``return_delta``, also the completeness error ``sum(attr) - (f(x) - f(b))``.
    """
    base = resolve_baseline(baseline, x, key)
    a, w = rule_nodes(rule, steps)
    attr = (x - base) * _path_integral(apply, params, x, target, base, jnp.asarray(a), jnp.asarray(w), chunk)
    if not return_delta:
        return attr
    f = score(apply, params, target)
    return attr, jnp.sum(attr) - (f(x) - f(base))


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
    base = resolve_baseline(baseline, x, key)
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
