"""Each operation of a ViT-B/16 block alone, at its real shapes, in JAX and in torch, interleaved
with ``jaxplain.timing.side_by_side`` after ``equal_threads``: forward, and forward plus the
backward to the operation's input (what a gradient explanation runs; weights held fixed).
``python -m benchmarks.ops_alone [--batch 8] [--rounds 5] [--repeat 5] [--ops dense_qkv softmax ...]``
prints a Markdown table: milliseconds per call of each side (median and min-max) and torch's time
over JAX's (> 1: JAX is faster), or "noisy, rerun".

Shapes for ``batch`` images of 224x224 (``T = 197`` tokens, width 768, 12 heads of 64, MLP 3072):
the dense layers ``[batch*T, 768] -> 2304 / 3072`` and ``[batch*T, 3072] -> 768``, the attention
matmuls ``[batch, 12, T, 64] x [batch, 12, 64, T]`` and ``[batch, 12, T, T] x [batch, 12, T, 64]``,
the softmax over ``T`` of ``[batch, 12, T, T]``, the exact (erf) GELU of ``[batch*T, 3072]``,
layer norm over 768 of ``[batch*T, 768]`` and the 16x16 stride-16 patch embedding of
``[batch, 224, 224, 3]`` (JAX: as the model computes it, one matmul of the flattened patches; the
convolution too, for comparison)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxplain import timing
from jaxplain.models.vit import gelu, patchify

T, D, HEADS, MLP, PATCH = 197, 768, 12, 3072, 16


def _layer_norm(x: Any, scale: Any, bias: Any) -> Any:
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + 1e-6) * scale + bias


def cases(batch: int, rng: np.random.Generator) -> dict[str, tuple[Callable, Callable, list[np.ndarray]]]:
    """``name -> (jax_fn, torch_fn, inputs)``: the same function of the same numbers; the first
    input is the activation the backward runs to, the others are fixed weights (the same arrays on
    both sides; torch reads a dense kernel ``[in, out]`` as the transposed view of its ``[out, in]``)."""
    n = batch * T

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    def dense(i: int, o: int) -> tuple[Callable, Callable, list[np.ndarray]]:
        return (lambda x, w, b: x @ w + b, lambda x, w, b: torch.nn.functional.linear(x, w.T, b),
                [normal(n, i), normal(i, o, scale=i**-0.5), normal(o, scale=0.1)])

    q, k = normal(batch, HEADS, T, 64), normal(batch, HEADS, 64, T)
    p = np.asarray(jax.nn.softmax(normal(batch, HEADS, T, T), axis=-1))
    ln = [normal(n, D), 1 + normal(D, scale=0.1), normal(D, scale=0.1)]
    img, kernel, bias = normal(batch, 224, 224, 3), normal(PATCH, PATCH, 3, D, scale=(PATCH * PATCH * 3) ** -0.5), normal(D, scale=0.1)
    conv = jax.vmap(lambda x, w, b: jax.lax.conv_general_dilated(
        x[None], w, (PATCH, PATCH), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0].reshape(-1, D) + b,
        in_axes=(0, None, None))

    def torch_patches(x: Any, w: Any, b: Any) -> Any:
        y = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), b, stride=PATCH)
        return y.flatten(2).transpose(1, 2)

    return {
        "dense 768->2304 (qkv)": dense(D, 3 * D),
        "dense 768->3072 (fc1)": dense(D, MLP),
        "dense 3072->768 (fc2)": dense(MLP, D),
        "dense 768->768 (proj)": dense(D, D),
        "attention q k^T": (lambda a, b: a @ b, lambda a, b: a @ b, [q, k]),
        "attention probs v": (lambda a, b: a @ b, lambda a, b: a @ b, [p, q]),
        "softmax over 197": (lambda s: jax.nn.softmax(s, axis=-1), lambda s: torch.softmax(s, -1),
                             [normal(batch, HEADS, T, T)]),
        "GELU (erf)": (gelu, torch.nn.functional.gelu, [normal(n, MLP)]),
        "GELU (jax.nn.gelu, erfc)": (lambda x: jax.nn.gelu(x, approximate=False), torch.nn.functional.gelu, [normal(n, MLP)]),
        "layer norm 768": (_layer_norm, lambda x, s, b: torch.nn.functional.layer_norm(x, (D,), s, b, 1e-6), ln),
        "patch embedding (matmul)": (jax.vmap(patchify, in_axes=(0, None, None)),
                                     torch_patches, [img, kernel, bias]),
        "patch embedding (conv)": (conv, torch_patches, [img, kernel, bias]),
    }


def pair_calls(jf: Callable, tf: Callable, inputs: list[np.ndarray], backward: bool, repeat: int) -> tuple[Callable, Callable]:
    """No-argument calls running the op ``repeat`` times on each side, forward or forward plus the
    backward to the first input (for a random cotangent: the output and the input's gradient)."""
    xs = [jnp.asarray(a) for a in inputs]
    ts = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
    out = jax.eval_shape(jf, *xs)
    ct = np.random.default_rng(1).standard_normal(out.shape, dtype=np.float32)
    ctj, ctt = jnp.asarray(ct), torch.from_numpy(ct)
    if backward:
        def fwd_bwd(ct: Any, x: Any, *w: Any) -> Any:
            y, vjp = jax.vjp(lambda x: jf(x, *w), x)
            return y, vjp(ct)[0]
        step = jax.jit(functools.partial(fwd_bwd, ctj))
    else:
        step = jax.jit(jf)

    def jax_call() -> None:
        for _ in range(repeat):
            out = step(*xs)
        jax.block_until_ready(out)

    def torch_call() -> None:
        for _ in range(repeat):
            if backward:
                x = ts[0].clone().requires_grad_(True)
                y = tf(x, *ts[1:])
                torch.autograd.grad(y, x, ctt)
            else:
                with torch.no_grad():
                    tf(*ts)

    return jax_call, torch_call


def check(jf: Callable, tf: Callable, inputs: list[np.ndarray]) -> float:
    """Largest difference between the sides' forward outputs, relative to the largest output."""
    a = np.asarray(jax.jit(jf)(*[jnp.asarray(v) for v in inputs]))
    with torch.no_grad():
        b = tf(*[torch.from_numpy(np.ascontiguousarray(v)) for v in inputs]).numpy()
    return float(np.abs(a - b).max() / np.abs(b).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ops_alone", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5, help="op calls per timed call")
    p.add_argument("--ops", nargs="*", help="substrings of the op names to run (default: all)")
    p.add_argument("--forward-only", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    th = timing.equal_threads()
    print(f"batch {args.batch}, {args.rounds} rounds of {args.repeat} calls, threads {th}, load {timing.load():.2f}\n")
    print("| op | pass | JAX ms | torch ms | torch / JAX |\n| --- | --- | --- | --- | --- |")
    for name, (jf, tf, inputs) in cases(args.batch, np.random.default_rng(0)).items():
        if args.ops and not any(o in name for o in args.ops):
            continue
        err = check(jf, tf, inputs)
        if err > 1e-4:
            raise AssertionError(f"{name}: the sides differ by {err:.2g}")
        for backward in (False, True)[: 1 if args.forward_only else 2]:
            c = timing.side_by_side(*pair_calls(jf, tf, inputs, backward, args.repeat), names=("jax", "torch"),
                                    rounds=args.rounds)
            ms = {s: timing.Spread(*(v * 1e3 / args.repeat for v in (c.side(s).median, c.side(s).low, c.side(s).high)))
                  for s in ("jax", "torch")}
            print(f"| {name} | {'forward + backward' if backward else 'forward'} | {ms['jax'].text('.3g')} | "
                  f"{ms['torch'].text('.3g')} | {c.ratio_text()} |", flush=True)
    print(f"\nload after {timing.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
