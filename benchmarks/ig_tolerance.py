"""Integrated gradients to a tolerance against fixed rules on VGG16 (issue 12):
``python -m benchmarks.ig_tolerance [--size 112] [--images 4]``.

VGG16, torchvision head, random weights with random non-zero biases (torchvision's zero biases
make a ReLU network homogeneous: f is linear along the path from 0 and every rule is exact),
noise images, the predicted class, baseline 0. Prints the relative completeness error
``|sum(attr) - (f(x) - f(0))| / |f(x) - f(0)|`` per image: (a) Gauss-Legendre at 16/25/50/100
steps; (b) the gradients ``tolerance=0.01`` needs per image against the smallest fixed
Gauss-Legendre and trapezoid steps (of those tried) within 1% on every image; (c) a 50-gradient
cap against Gauss-Legendre 50; seconds per image. A fixed rule's error is ``sum_i w_i F'(a_i) -
(F(1) - F(0))`` with ``F'`` by forward-mode differentiation, checked against the method once.

Measured at 112x112 (2-core AVX2 CPU, jax 0.10.2, another job on one core): GL 16/25/50/100
median / max 1.58/5.00%, 1.21/2.07%, 0.82/1.33%, 0.06/0.24%; tolerance=0.01 took 32, 24, 32,
32 gradients (errors 0.58, 0.70, 0.12, 0.65%) where GL needed 100 of those tried (64: 1.12%)
and the trapezoid 33; at 50 gradients 0.19-0.44% against GL-50's 0.18-1.33%. Seconds per
image: 24.1 at tolerance=0.01, 14.5 for GL-50 (host loop): a gradient in the while loop cost
about 2.8x one in a plain call here.
"""

import argparse
import dataclasses
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jaxplain
from jaxplain import models
from jaxplain.errors import ToleranceWarning
from jaxplain.methods.integrated import integrated_gradients, rule_nodes
from jaxplain.engine.runner import prepare, resolved

GL_STEPS = (16, 25, 32, 50, 64, 100)
TRAPEZOID_STEPS = (9, 17, 33, 65)  # nested: one set of slopes at 65 nodes serves all


def vgg16_with_biases(seed: int = 0) -> jaxplain.Model:
    """``models.vgg16`` (He-normal convolutions) with biases N(0, 0.1^2), fc1/fc2 He-normal by
    fan-in and the head N(0, 0.05^2), so the logits are O(1) (the test suite's VGG16 recipe)."""
    m = models.vgg16(weights=None, source="torchvision")
    assert not any(np.any(np.asarray(p["bias"])) for p in m.params.values())  # zero: draw them
    rng = np.random.default_rng(seed)

    def draw(name: str, p: dict) -> dict:
        k = np.asarray(p["kernel"])
        if k.ndim == 2:
            k = rng.standard_normal(k.shape, dtype=np.float32) * np.float32(0.05 if name == "predictions" else np.sqrt(2 / k.shape[0]))
        return {"kernel": jnp.asarray(k), "bias": jnp.asarray(rng.normal(0, 0.1, p["bias"].shape), jnp.float32)}

    return dataclasses.replace(m, params={n: draw(n, p) for n, p in m.params.items()})


def slopes(m: jaxplain.Model, x: np.ndarray, t: np.ndarray, alphas: np.ndarray, chunk: int = 16) -> np.ndarray:
    """``F'(a) = grad f(a x) . x`` for every image ``[B]`` and node ``[A]``: ``[B, A]``."""
    @jax.jit
    def part(v, c, a):
        return jax.vmap(lambda s: jax.jvp(lambda z: m.apply(m.params, z)[0][c], (s * v,), (v,))[1])(a)

    return np.stack([np.concatenate([np.asarray(part(jnp.asarray(v), c, jnp.asarray(alphas[i:i + chunk])))
                                     for i in range(0, len(alphas), chunk)]) for v, c in zip(x, t)])


def timed(m: jaxplain.Model, x: np.ndarray, t: np.ndarray, **settings):
    """explain's output for IG with ``settings`` and the seconds of its run, compiled ahead."""
    prep = prepare(integrated_gradients, m, jnp.asarray(x), resolved(integrated_gradients, m, jnp.asarray(x), settings))
    run, _ = prep.call.compile(m.params, jnp.asarray(x), jnp.asarray(t, jnp.int32), prep.keys, prep.per_image, prep.shared)
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    m = vgg16_with_biases()
    x = np.random.default_rng(1).normal(size=(args.images, args.size, args.size, 3)).astype(np.float32)
    logits, at0 = np.asarray(m(x), np.float64), np.asarray(m(np.zeros_like(x)), np.float64)
    t = logits.argmax(1)
    gap = logits[np.arange(len(x)), t] - at0[np.arange(len(x)), t]
    print(f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s); VGG16 {args.size}x{args.size}, "
          f"{len(x)} images, f(x) - f(0) = {np.round(gap, 3)}")
    rel = lambda delta: np.abs(np.asarray(delta, np.float64)) / np.abs(gap)  # noqa: E731
    fmt = lambda r: " ".join(f"{100 * v:6.2f}%" for v in r)  # noqa: E731

    fixed = {}
    for rule, steps_list in (("gausslegendre", GL_STEPS), ("riemann_trapezoid", TRAPEZOID_STEPS[-1:])):
        for steps in steps_list:
            a, w = rule_nodes(rule, steps)
            d = slopes(m, x, t, a)
            if rule == "riemann_trapezoid":
                for n in TRAPEZOID_STEPS:
                    sub = rule_nodes(rule, n)[1]
                    fixed[rule, n] = rel(d[:, :: (steps - 1) // (n - 1)] @ sub.astype(np.float64) - gap)
            else:
                fixed[rule, steps] = rel(d @ w.astype(np.float64) - gap)
    (_, gl50), secs_gl50 = timed(m, x, t, steps=50, return_delta=True)
    assert np.allclose(rel(gl50), fixed["gausslegendre", 50], atol=1e-4), (rel(gl50), fixed["gausslegendre", 50])

    print("(a) relative completeness error per image, then median / max")
    for steps in (16, 25, 50, 100):
        r = fixed["gausslegendre", steps]
        print(f"    Gauss-Legendre {steps:4d}: {fmt(r)}   | {100 * np.median(r):.2f}% / {100 * r.max():.2f}%")
    print("    (all tried)", {f"{k[0][:5]}{k[1]}": f"{100 * v.max():.2f}%" for k, v in fixed.items()})

    out, secs = timed(m, x, t, tolerance=0.01, return_delta=True)
    print(f"(b) tolerance=0.01 (per_round 8): gradients {np.asarray(out.evaluations)}, error {fmt(rel(out.delta))}")
    for rule in ("gausslegendre", "riemann_trapezoid"):
        ok = [n for (r, n), v in sorted(fixed.items()) if r == rule and v.max() <= 0.01]
        print(f"    {rule}: smallest steps tried within 1% on all: {min(ok) if ok else 'none'}; "
              f"within 1% at {ok} of {sorted(n for r, n in fixed if r == rule)}")
    print(f"    seconds per image: tolerance=0.01 {secs / len(x):.1f} s; Gauss-Legendre 50 {secs_gl50 / len(x):.1f} s")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ToleranceWarning)
        capped, secs_capped = timed(m, x, t, tolerance=1e-6, max_steps=50, per_round=10, return_delta=True)
    print(f"(c) 50 gradients (per_round 10): refined {fmt(rel(capped.delta))} in {secs_capped / len(x):.1f} s per image, "
          f"Gauss-Legendre 50 {fmt(fixed['gausslegendre', 50])}")


if __name__ == "__main__":
    main()
