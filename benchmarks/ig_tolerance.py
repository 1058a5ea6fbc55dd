"""Integrated gradients to a tolerance against fixed rules on VGG16 (issues 12 and 25):
``python -m benchmarks.ig_tolerance [--size 112] [--images 4]``; the timed comparisons at equal
completeness error (issue 25) with ``--equal-error`` and ``--time loop|gl`` (below).

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
about 2.8x one in a plain call here (before the refinement's rounds ran on the host loop).

Issue 25, three commands (the first finds the steps and fills a compile cache, not timed; the
other two time pairs with ``jaxplain.timing.side_by_side``, one warm-up call each, ``--rounds``
interleaved rounds, and load nothing but compiled programs from the cache)::

    python -m benchmarks.ig_tolerance --images 1 --equal-error          # prints N
    python -m benchmarks.ig_tolerance --images 1 --time loop --rounds 3
    python -m benchmarks.ig_tolerance --images 1 --time gl --gl-steps N --rounds 3

``--equal-error``: ``tolerance=0.01`` on the host loop, its completeness error per image, and
the fewest Gauss-Legendre steps (in ascending order from ``EQUAL_STEPS``) whose error is within
the refined one's on every image. ``--time loop``: the refinement's rounds on the host loop (one
compiled call per round) against the same method in one program (``lax.while_loop``,
``JAXPLAIN_CHUNK_LOOP=scan``), checked to use the same nodes. ``--time gl``: the host loop's
rounds against Gauss-Legendre at ``--gl-steps``. Measured (one image, 112x112, 2-core CPU, jax
0.10.2, normal priority beside work at nice 19): 32 gradients at 0.58% where Gauss-Legendre 32
reached 0.55%; 7.7 s per image on the host loop (7.1-13.7) against 21.2 s (20.1-21.9) in one
program, 3 rounds ("noisy, rerun": the host loop's first round was the slow one). The compile cache is ``--cache`` (default
``jaxplain-ig-tolerance`` in the temporary folder).
"""

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
import warnings

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxplain
from jaxplain import models
from jaxplain.errors import ToleranceWarning
from jaxplain.methods.integrated import integrated_gradients, rule_nodes
from jaxplain.engine.runner import prepare, resolved
from jaxplain.timing import side_by_side

GL_STEPS = (16, 25, 32, 50, 64, 100)
TRAPEZOID_STEPS = (9, 17, 33, 65)  # nested: one set of slopes at 65 nodes serves all
EQUAL_STEPS = (32, 48, 64, 80, 96, 128, 160, 192, 256)
ADAPTIVE = dict(tolerance=0.01, return_delta=True)  # max_steps 128, per_round 8: the defaults


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
    def part(params, v, c, a):  # the weights an argument: not constants in the program
        return jax.vmap(lambda s: jax.jvp(lambda z: m.apply(params, z)[0][c], (s * v,), (v,))[1])(a)

    return np.stack([np.concatenate([np.asarray(part(m.params, jnp.asarray(v), c, jnp.asarray(alphas[i:i + chunk])))
                                     for i in range(0, len(alphas), chunk)]) for v, c in zip(x, t)])


@contextlib.contextmanager
def chunk_loop(mode: str | None):
    """``$JAXPLAIN_CHUNK_LOOP`` set to ``mode`` inside the block (``None``: as it is)."""
    old = os.environ.get("JAXPLAIN_CHUNK_LOOP")
    if mode is not None:
        os.environ["JAXPLAIN_CHUNK_LOOP"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JAXPLAIN_CHUNK_LOOP", None)
        else:
            os.environ["JAXPLAIN_CHUNK_LOOP"] = old


def compiled(m: jaxplain.Model, x: np.ndarray, t: np.ndarray, loop: str | None = None, **settings):
    """``run()``: explain's compiled calls for IG with ``settings`` on ``x`` (``loop``: the chunk
    loop, default the platform's), blocking until the output is ready."""
    with chunk_loop(loop):
        prep = prepare(integrated_gradients, m, jnp.asarray(x), resolved(integrated_gradients, m, jnp.asarray(x), settings))
        run, _ = prep.call.compile(m.params, jnp.asarray(x), jnp.asarray(t, jnp.int32), prep.keys, prep.per_image,
                                   prep.shared)
    return lambda: jax.block_until_ready(run())


def timed(m: jaxplain.Model, x: np.ndarray, t: np.ndarray, **settings):
    """explain's output for IG with ``settings`` and the seconds of its run, compiled ahead."""
    run = compiled(m, x, t, **settings)
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def equal_error(m: jaxplain.Model, x: np.ndarray, t: np.ndarray, rel: Callable, fmt: Callable) -> None:
    """The refined error per image, and the fewest Gauss-Legendre steps of ``EQUAL_STEPS`` whose
    error is within it on every image; compiles (into the cache) what ``--time`` runs."""
    out = compiled(m, x, t, **ADAPTIVE)()
    target = rel(out.delta)
    print(f"tolerance=0.01 on the host loop: gradients {np.asarray(out.evaluations)}, error {fmt(target)}")
    for steps in EQUAL_STEPS:
        a, w = rule_nodes("gausslegendre", steps)
        r = rel(slopes(m, x, t, a) @ w.astype(np.float64) - gap_of(m, x, t))
        print(f"    Gauss-Legendre {steps:4d}: {fmt(r)}")
        if np.all(r <= target):
            print(f"equal error: Gauss-Legendre needs {steps} steps (N = {steps})")
            compiled(m, x, t, steps=steps)()
            break
    else:
        print(f"no Gauss-Legendre steps of {EQUAL_STEPS} reach it")
    compiled(m, x, t, loop="scan", **ADAPTIVE)()


def time_pair(m: jaxplain.Model, x: np.ndarray, t: np.ndarray, pair: str, gl_steps: int | None, rounds: int) -> None:
    """``side_by_side`` of the host loop's rounds against the in-program loop (``pair="loop"``) or
    Gauss-Legendre at ``gl_steps`` (``"gl"``), seconds per image."""
    host = compiled(m, x, t, **ADAPTIVE)
    if pair == "loop":
        other, name = compiled(m, x, t, loop="scan", **ADAPTIVE), "while_loop"
        a, b = host(), other()
        np.testing.assert_array_equal(a.evaluations, b.evaluations)  # the same nodes
        print(f"same gradients per image on both: {np.asarray(a.evaluations)}; attribution max |diff| / max "
              f"{float(np.abs(a.attribution - b.attribution).max() / np.abs(b.attribution).max()):.1e}")
    else:
        other, name = compiled(m, x, t, steps=gl_steps), f"gausslegendre_{gl_steps}"
    c = side_by_side(host, other, names=("host_rounds", name), items=len(x), rounds=rounds)
    for n in c.names:
        s = c.side(n)
        print(f"{n:>20}: {s.median / len(x):.2f} s per image ({s.low / len(x):.2f}-{s.high / len(x):.2f})")
    print(f"host_rounds speed over {name}: {c.ratio_text()}; {c.as_dict()}")


def gap_of(m: jaxplain.Model, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``f(x) - f(0)`` of each image's class ``t``, float64."""
    logits, at0 = np.asarray(m(x), np.float64), np.asarray(m(np.zeros_like(x)), np.float64)
    return logits[np.arange(len(x)), t] - at0[np.arange(len(x)), t]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--equal-error", action="store_true", help="find the Gauss-Legendre steps at equal error")
    ap.add_argument("--time", choices=("loop", "gl"), help="time one pair with side_by_side")
    ap.add_argument("--gl-steps", type=int, help="Gauss-Legendre's steps for --time gl")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "jaxplain-ig-tolerance"),
                    help="the compile cache's folder")
    args = ap.parse_args()
    if args.time == "gl" and not args.gl_steps:
        ap.error("--time gl needs --gl-steps (from --equal-error)")
    if args.equal_error or args.time:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    m = vgg16_with_biases()
    x = np.random.default_rng(1).normal(size=(args.images, args.size, args.size, 3)).astype(np.float32)
    logits, at0 = np.asarray(m(x), np.float64), np.asarray(m(np.zeros_like(x)), np.float64)
    t = logits.argmax(1)
    gap = logits[np.arange(len(x)), t] - at0[np.arange(len(x)), t]
    print(f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s), jax {jax.__version__}; VGG16 "
          f"{args.size}x{args.size}, {len(x)} images, f(x) - f(0) = {np.round(gap, 3)}, load {os.getloadavg()[0]:.1f}")
    rel = lambda delta: np.abs(np.asarray(delta, np.float64)) / np.abs(gap)  # noqa: E731
    fmt = lambda r: " ".join(f"{100 * v:6.2f}%" for v in r)  # noqa: E731
    if args.equal_error:
        return equal_error(m, x, t, rel, fmt)
    if args.time:
        return time_pair(m, x, t, args.time, args.gl_steps, args.rounds)

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
