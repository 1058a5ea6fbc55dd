"""LRP and CRP beside zennit and zennit-crp on the same weights and device, in one process:

    python -m benchmarks.lrp_vs_zennit [--models vgg16 resnet50] [--batch 8] [--rounds 5] [--compete 1] [--json out.json]

1. ``lrp`` (each ``--composites``) and ``gradient`` on each model, and zennit's ``Gradient``
   attributor with the same composite on the torch twin (``benchmarks/pairs.py``; batch norm merged
   by zennit's ``SequentialMergeBatchNorm``, ResNet's residual sums as zennit's ``Sum`` module, the
   effect of its ResNet canonizer); each pair (lrp and zennit, gradient and lrp) by the comparison
   method (``jaxplain.timing.side_by_side``: warmed, interleaved rounds, equal threads, median
   (min-max) and the ratio, or "noisy, rerun").
2. ``bfloat16``: ``lrp`` computing in bfloat16 (``precision="bfloat16"``) beside float32, and its
   largest difference from the float32 map (over the largest value of that map).
3. CRP: the conditional maps of ``--crp-channels`` channels of ``--crp-layer`` for one image, in one
   compiled program (method ``crp`` where registered, else the same computation: the LRP walk with
   the layer's relevance masked to one channel, vmapped over the channels), beside zennit-crp's
   ``CondAttribution`` looping over the channels one condition per call, and with
   ``--crp-per-call`` conditions per call (its batched conditions), each pair by the method.

``--compete N`` runs every section a second time beside N busy processes (``timing.competing``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jaxplain import bench, timing  # noqa: E402
from jaxplain.methods import relevance  # noqa: E402
from jaxplain.types import Model  # noqa: E402

# zennit's composite of the same name and how it is built from our settings
ZENNIT = {"epsilon_plus": "EpsilonPlus", "epsilon_gamma_box": "EpsilonGammaBox",
          "epsilon_alpha2_beta1": "EpsilonAlpha2Beta1", "epsilon_plus_flat": "EpsilonPlusFlat",
          "epsilon_alpha2_beta1_flat": "EpsilonAlpha2Beta1Flat"}
# our layer name -> the torch twin's module (torchvision's VGG16 indices)
TORCH_LAYER = {"block4_conv3": "features.21", "block5_conv3": "features.28", "block3_conv3": "features.14"}


def zennit_composite(name: str, net: Any, box: np.ndarray, device: str) -> Any:
    """zennit's composite ``name`` for ``net`` with canonizers doing what jaxplain's graph does:
    batch norm merged into the convolution before it, a ResNet block's sum a ``Sum`` module."""
    from tests.torch_reference import TorchBottleneck
    from tests.zennit_stub import zennit

    z = zennit()
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm

    def sum_module(_: str, module: Any) -> dict[str, Any] | None:
        if not isinstance(module, TorchBottleneck):
            return None

        def forward(self: Any, x: Any) -> Any:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(self.canonizer_sum(torch.stack([identity, out], dim=-1)))

        return {"forward": forward.__get__(module), "canonizer_sum": z.layer.Sum()}

    canonizers = [SequentialMergeBatchNorm(), AttributeCanonizer(sum_module)]
    cls = getattr(z.composites, ZENNIT[name])
    if name == "epsilon_gamma_box":
        low = torch.tensor(box[0], dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
        high = torch.tensor(box[1], dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
        return cls(low=low, high=high, canonizers=canonizers)
    return cls(canonizers=canonizers)


def zennit_call(net: Any, composite: Any, batch: int, size: tuple[int, int], device: str) -> Callable[[], Any]:
    """A no-argument call of zennit's ``Gradient`` attributor in its ``with`` block (canonizers and
    hooks registered, one batch, removed: one composite at a time on the net), relevance starting
    as the target's logit like ours."""
    from zennit.attribution import Gradient

    x = torch.randn(batch, 3, *size, device=device)
    onehot = torch.zeros(batch, 1000, device=device)
    onehot[:, 0] = 1.0

    def call() -> Any:
        with Gradient(net, composite) as attributor:
            _, rel = attributor(x, lambda out: out * onehot)
        if device == "cuda":
            torch.cuda.synchronize()
        return rel

    return call


def compared(first: Callable[[], Any], second: Callable[[], Any], names: tuple[str, str], rounds: int,
             batch: int, warmup: int = 1) -> timing.Comparison:
    """``timing.side_by_side`` of two calls, with a line of both sides' seconds and the ratio."""
    c = timing.side_by_side(first, second, names=names, items=batch, rounds=rounds, warmup=warmup)
    a, b = names
    print(f"  {a} {c.side(a).text('.3g', ' s')} vs {b} {c.side(b).text('.3g', ' s')}: speed {a} / {b} {c.ratio_text()}"
          f" (load {c.load_before:.1f} -> {c.load_after:.1f})", flush=True)
    return c


def blocked(case: bench.Case) -> Callable[[], Any]:
    return lambda: jax.block_until_ready(case.call())


def lrp_rows(name: str, model: Model, net: Any, args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """Section 1: per composite, lrp beside zennit and lrp beside gradient, each pair by the comparison method."""
    size = model.input_size or (224, 224)
    box = np.asarray(relevance.box_for_model(model.preprocess, model.channels))
    grad = bench.compile_case(model, "gradient", args.batch)
    rows = []
    for c in args.composites:
        case = bench.compile_case(model, f"lrp(composite={c!r})", args.batch)
        theirs = zennit_call(net, zennit_composite(c, net, box, device), args.batch, size, device)
        print(f"{name} {c} batch {args.batch}:", flush=True)
        vs_zennit = compared(blocked(case), theirs, ("lrp", "zennit"), args.rounds, args.batch)
        vs_grad = compared(blocked(grad), blocked(case), ("gradient", "lrp"), args.rounds, args.batch)
        row = {"model": name, "composite": c, "batch": args.batch, "lrp_s": vs_zennit.side("lrp").median,
               "gradient_s": vs_grad.side("gradient").median, "zennit_s": vs_zennit.side("zennit").median,
               "lrp_over_gradient": vs_grad.as_dict()["ratio"], "lrp_over_gradient_text": vs_grad.ratio_text(),
               "speedup_vs_zennit": vs_zennit.as_dict()["ratio"], "speedup_vs_zennit_text": vs_zennit.ratio_text(),
               "lrp_compile_s": case.compile_s, "gradient_compile_s": grad.compile_s,
               "vs_zennit": vs_zennit.as_dict(), "vs_gradient": vs_grad.as_dict()}
        rows.append(row)
        print(f"{name:<9} {c:<18} batch {args.batch}: lrp {vs_zennit.side('lrp').text('.3g', ' s')}, zennit "
              f"{vs_zennit.side('zennit').text('.3g', ' s')} (speed lrp / zennit {vs_zennit.ratio_text()}); time lrp / gradient "
              f"{vs_grad.ratio_text()}; compile {case.compile_s:.1f} s", flush=True)
    return rows


def bf16_rows(name: str, model: Model, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Section 2: lrp in bfloat16 beside float32 (the comparison method), and their largest difference."""
    rows = []
    for c in args.composites:
        spec = f"lrp(composite={c!r})"
        f32 = bench.compile_case(model, spec, args.batch)
        b16 = bench.compile_case(model, spec, args.batch, precision="bfloat16")
        print(f"{name} {c} bfloat16 batch {args.batch}:", flush=True)
        cmp = compared(blocked(b16), blocked(f32), ("bfloat16", "float32"), args.rounds, args.batch)
        a, b = np.asarray(f32.call(), np.float64), np.asarray(b16.call(), np.float64)
        scale = np.abs(a).reshape(len(a), -1).max(1)
        err = float((np.abs(a - b).reshape(len(a), -1).max(1) / scale).max())
        corr = float(np.mean([np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in zip(a, b)]))
        row = {"model": name, "composite": c, "batch": args.batch, "float32_s": cmp.side("float32").median,
               "bfloat16_s": cmp.side("bfloat16").median, "speedup": cmp.as_dict()["ratio"],
               "speedup_text": cmp.ratio_text(), "comparison": cmp.as_dict(),
               "max_error_over_max": err, "mean_correlation": corr}
        rows.append(row)
        print(f"{name:<9} {c:<18} bfloat16 batch {args.batch}: {cmp.side('bfloat16').text('.3g', ' s')} vs float32 "
              f"{cmp.side('float32').text('.3g', ' s')} (speed bfloat16 / float32 {cmp.ratio_text()}); max |difference| / max |map| {err:.3g}, "
              f"correlation {corr:.4f}", flush=True)
    return rows


def crp_fallback(apply: Any, params: Any, x: Any, target: Any, *, layer: str, channels: Any,
                 composite: str = "epsilon_plus", box: Any = None) -> Any:
    """``[K, H, W, C]``: the LRP map with ``layer``'s relevance kept to one channel, vmapped over
    ``channels`` (what method ``crp`` computes; used where it is not registered)."""
    from jaxplain.propagation import composites, walk
    from jaxplain.propagation import graph as graph_

    g = graph_.trace(apply, params, x)
    env = graph_.forward(g, params, x)
    choose = composites.chooser(g, composite, None, box=relevance.bounds(box))
    start = relevance.start_relevance(env[g.logits], target)
    width = g.tap_vars[layer].aval.shape[-1]
    masks = jax.nn.one_hot(jnp.asarray(channels), width, dtype=x.dtype)
    return jax.vmap(lambda m: walk.relevance(g, env, start, choose, masks={layer: m}))(masks)


def crp_case(model: Model, layer: str, channels: list[int], composite: str) -> tuple[Callable[[], Any], float, str]:
    """Ours: ``crp`` through the front door if registered, else ``crp_fallback`` jitted on one image."""
    if hasattr(relevance, "crp"):
        case = bench.compile_case(model, f"crp(layer={layer!r}, channels={channels}, composite={composite!r})", 1)
        return blocked(case), case.compile_s, "crp"
    h, w = model.input_size or (224, 224)
    x = jax.random.normal(jax.random.key(1), (h, w, model.channels), jnp.float32)
    fn = jax.jit(lambda p, i: crp_fallback(model.apply, p, i, jnp.int32(0), layer=layer, channels=channels,
                                           composite=composite))
    t = time.perf_counter()
    run = fn.lower(model.params, x).compile()
    return (lambda: jax.block_until_ready(run(model.params, x))), time.perf_counter() - t, "walk.relevance vmapped"


def crp_rows(model: Model, net: Any, args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """Section 3: CRP of ``--crp-channels`` channels beside zennit-crp's loop and its batched conditions."""
    from tests.zennit_stub import zennit

    zennit()
    from crp.attribution import CondAttribution

    channels = list(range(args.crp_channels))
    layer, torch_layer = args.crp_layer, TORCH_LAYER[args.crp_layer]
    size = model.input_size or (224, 224)
    box = np.asarray(relevance.box_for_model(model.preprocess, model.channels))
    ours, compile_s, how = crp_case(model, layer, channels, "epsilon_plus")
    composite = zennit_composite("epsilon_plus", net, box, device)
    attribution = CondAttribution(net, no_param_grad=True)
    x = torch.randn(1, 3, *size, device=device, requires_grad=True)

    def peer(per_call: int) -> Callable[[], Any]:
        def call() -> Any:
            out = []
            for i in range(0, len(channels), per_call):
                conds = [{"y": [0], torch_layer: [c]} for c in channels[i:i + per_call]]
                out.append(attribution(x, conds, composite).heatmap)
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        return call

    few = channels[:args.crp_per_call]  # torch's warm-up: one call of each kind, not the 64 channels
    attribution(x, [{"y": [0], torch_layer: [0]}], composite)
    attribution(x, [{"y": [0], torch_layer: [c]} for c in few], composite)
    ours()
    print(f"CRP {len(channels)} channels of {layer}:", flush=True)
    loop = compared(ours, peer(1), ("ours", "loop"), args.crp_rounds, 1, warmup=0)
    batched = compared(ours, peer(args.crp_per_call), ("ours", "batched"), args.crp_rounds, 1, warmup=0)
    row = {"model": "vgg16", "layer": layer, "channels": len(channels), "ours": how,
           "ours_s": loop.side("ours").median, "ours_compile_s": compile_s,
           "zennit_crp_loop_s": loop.side("loop").median, "zennit_crp_batched_s": batched.side("batched").median,
           "per_call": args.crp_per_call, "speedup_vs_loop": loop.as_dict()["ratio"],
           "speedup_vs_loop_text": loop.ratio_text(), "speedup_vs_batched": batched.as_dict()["ratio"],
           "speedup_vs_batched_text": batched.ratio_text(), "vs_loop": loop.as_dict(), "vs_batched": batched.as_dict()}
    print(f"CRP {len(channels)} channels of {layer} ({how}): {loop.side('ours').text('.3g', ' s')} (compile "
          f"{compile_s:.1f} s); zennit-crp loop {loop.side('loop').text('.3g', ' s')} ({loop.ratio_text()}), "
          f"{args.crp_per_call} conditions per call {batched.side('batched').text('.3g', ' s')} ({batched.ratio_text()})",
          flush=True)
    return [row]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lrp_vs_zennit", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    p.add_argument("--composites", nargs="+", default=["epsilon_plus", "epsilon_gamma_box"], choices=sorted(ZENNIT))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, help="input side (default: the model's, 224)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per pair (default 5)")
    p.add_argument("--sections", nargs="+", default=["lrp", "bf16", "crp"], choices=["lrp", "bf16", "crp"])
    p.add_argument("--crp-layer", default="block4_conv3", choices=sorted(TORCH_LAYER))
    p.add_argument("--crp-channels", type=int, default=64)
    p.add_argument("--crp-per-call", type=int, default=16)
    p.add_argument("--crp-rounds", type=int, default=5,
                   help="interleaved rounds of CRP beside each of zennit-crp's forms (default 5: minutes per round on a CPU)")
    p.add_argument("--compete", type=int, default=0, metavar="N",
                   help="also run every section beside N busy processes (the shared-machine regime)")
    p.add_argument("--json")
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks.pairs import pair
    from benchmarks.peers import torch_device

    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    device = torch_device()
    info = bench.device_info()
    threads = timing.equal_threads()
    print(f"{info['device_kind']} ({info['platform']}), jax {info['jax']}, torch {torch.__version__}, "
          f"threads {threads}, load {timing.load():.1f}; median (min-max) of {args.rounds} interleaved rounds", flush=True)
    out: dict[str, Any] = {"device": info, "torch": torch.__version__, "threads": threads, "load_before": timing.load(),
                           "lrp": [], "bf16": [], "crp": []}
    for name in args.models:
        model, net = pair(name, device, args.size)
        for busy in dict.fromkeys((0, args.compete)):
            if busy:
                print(f"beside {busy} busy process(es):", flush=True)
            with timing.competing(busy):
                if "lrp" in args.sections:
                    out["lrp"] += [{**r, "competing": busy} for r in lrp_rows(name, model, net, args, device)]
                if "bf16" in args.sections:
                    out["bf16"] += [{**r, "competing": busy} for r in bf16_rows(name, model, args)]
                if "crp" in args.sections and name in ("vgg16",):
                    out["crp"] += [{**r, "competing": busy} for r in crp_rows(model, net, args, device)]
    out["load_after"] = timing.load()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
