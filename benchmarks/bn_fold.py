"""What folding batch norm into the convolutions buys ResNet-50: the same network and weights with
batch norm as its own inference-mode layer after each (bias-free) convolution, as a framework
port without folding runs it, timed beside jaxplain's folded model, alternating, and checked to
give the same logits first:

    python -m benchmarks.bn_fold --methods gradient "integrated_gradients(steps=50)" --batch 1 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxplain import bench, models
from jaxplain.models.resnet import ResNet, ResNetConfig, random_raw


class ConvBN(nnx.Module):
    """A bias-free convolution followed by inference-mode batch norm (running statistics)."""

    def __init__(self, conv: nnx.Conv, raw: dict[str, np.ndarray], eps: float):
        self.conv = nnx.Conv(conv.in_features, conv.out_features, conv.kernel_size, strides=conv.strides,
                             padding=conv.padding, use_bias=False, rngs=nnx.Rngs(0))
        self.conv.kernel.value = jnp.asarray(raw["kernel"])
        c = raw["gamma"].shape[0]
        self.bn = nnx.BatchNorm(c, use_running_average=True, epsilon=eps, rngs=nnx.Rngs(0))
        self.bn.scale.value, self.bn.bias.value = jnp.asarray(raw["gamma"]), jnp.asarray(raw["beta"])
        self.bn.mean.value, self.bn.var.value = jnp.asarray(raw["mean"]), jnp.asarray(raw["var"])

    def __call__(self, x):
        return self.bn(self.conv(x))


def unfolded(config: ResNetConfig, seed: int = 0) -> models.Model:
    """``models.resnet50(None, seed=seed)``'s network with its batch norms unfolded."""
    raw = random_raw(config, seed)
    net = ResNet(config, rngs=nnx.Rngs(0))
    parents = [net] + [blk for s in range(1, len(config.blocks) + 1) for blk in getattr(net, f"layer{s}")]
    prefixes = [""] + [f"layer{s}.{b}." for s, n in enumerate(config.blocks, 1) for b in range(n)]
    for parent, prefix in zip(parents, prefixes):
        for part in ("conv1", "conv2", "conv3", "downsample"):
            conv = getattr(parent, part, None)
            if isinstance(conv, nnx.Conv):
                setattr(parent, part, ConvBN(conv, raw[prefix + part], config.eps))
    net.fc.kernel.value, net.fc.bias.value = jnp.asarray(raw["fc"]["kernel"]), jnp.asarray(raw["fc"]["bias"])
    graphdef, state = nnx.split(net)

    def apply(params, x, taps=None, relu=None):
        return nnx.merge(graphdef, params)(x, taps, relu)

    return models.resnet50(None, seed=seed).replace(apply=apply, params=state, name="resnet50 (batch norm unfolded)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["gradient", "integrated_gradients(steps=50)"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    folded = models.resnet50(None, seed=0)
    plain = unfolded(ResNetConfig())
    x = jax.random.normal(jax.random.key(1), (224, 224, 3))
    a, b = folded.apply(folded.params, x)[0], plain.apply(plain.params, x)[0]
    err = float(jnp.abs(a - b).max() / jnp.abs(b).max())
    print(f"{bench.device_info()['device_kind']}: folded vs unfolded logits, max relative difference {err:.1e}")
    rows = []
    for spec in args.methods:
        for batch in args.batch:
            cases = [bench.compile_case(m, spec, batch) for m in (folded, plain)]
            for case in cases:
                jax.block_until_ready(case.call())  # warm
            times: list[list[float]] = [[], []]
            for _ in range(args.rounds):  # alternating, so a busy moment hits both
                for i, case in enumerate(cases):
                    t = time.perf_counter()
                    jax.block_until_ready(case.call())
                    times[i].append(time.perf_counter() - t)
            f, u = (statistics.median(t) for t in times)
            rows.append({"method": cases[0].name, "batch": batch, "folded_s": f, "unfolded_s": u, "speedup": u / f})
            print(f"{cases[0].name:<22} batch {batch:>3}: folded {f:.3f} s, unfolded {u:.3f} s: {u / f:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"logits_rel_diff": err, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
