"""What folding batch norm into the convolutions buys ResNet-50: the same network and weights with
batch norm as its own inference-mode layer after each (bias-free) convolution, as a framework
port without folding runs it, timed beside jaxplain's folded model by the comparison method
(``jaxplain.timing.side_by_side``: warmed, interleaved rounds, median (min-max), the ratio or "noisy,
rerun"), and checked to give the same logits first:

    python -m benchmarks.bn_fold --methods gradient "integrated_gradients(steps=50)" --batch 1 8 [--compete 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxplain import bench, models, timing
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
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--compete", type=int, default=0, metavar="N", help="also time each case beside N busy processes")
    p.add_argument("--json")
    args = p.parse_args(argv)
    folded = models.resnet50(None, seed=0)
    plain = unfolded(ResNetConfig())
    x = jax.random.normal(jax.random.key(1), (224, 224, 3))
    a, b = folded.apply(folded.params, x)[0], plain.apply(plain.params, x)[0]
    err = float(jnp.abs(a - b).max() / jnp.abs(b).max())
    print(f"{bench.device_info()['device_kind']}: folded vs unfolded logits, max relative difference {err:.1e}; "
          f"threads {timing.threads()}, load {timing.load():.1f}; median (min-max) of {args.rounds} interleaved rounds")
    rows = []
    for spec in args.methods:
        for batch in args.batch:
            cases = [bench.compile_case(m, spec, batch) for m in (folded, plain)]
            folded_call, plain_call = (lambda c=c: jax.block_until_ready(c.call()) for c in cases)
            for busy in dict.fromkeys((0, args.compete)):
                with timing.competing(busy):
                    c = timing.side_by_side(folded_call, plain_call, names=("folded", "unfolded"), items=batch,
                                            rounds=args.rounds)
                f, u = c.side("folded"), c.side("unfolded")
                rows.append({"method": cases[0].name, "batch": batch, "competing": busy, "folded_s": f.median,
                             "unfolded_s": u.median, "speedup": c.as_dict()["ratio"], "speedup_text": c.ratio_text(),
                             "comparison": c.as_dict()})
                print(f"{cases[0].name:<22} batch {batch:>3}{f' beside {busy} busy' if busy else ''}: folded "
                      f"{f.text('.3g', ' s')}, unfolded {u.text('.3g', ' s')}: {c.ratio_text()} "
                      f"(load {c.load_before:.1f} -> {c.load_after:.1f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"logits_rel_diff": err, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
