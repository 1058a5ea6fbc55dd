"""Peak memory of integrated gradients (50 steps) on one batch, jaxplain or Captum, each in a
fresh process on the same twin weights (``benchmarks/pairs.py``), so neither counts the other's:

    python -m benchmarks.ig_memory --model resnet50 --batch 8 [--json out.json]

One call each: on a CPU, the process's peak resident set size, and that peak less the resident
size just before the call, with the model, its twin and the batch in memory (what the call adds;
for jaxplain, compilation included: freed memory stays with the process, so a second call's
growth says nothing); on a GPU also the device's peak bytes in use (JAX's
``peak_bytes_in_use``, torch's ``max_memory_allocated``).
jaxplain runs with its default chunking (``explain`` sizes the chunk of path points); Captum with
``--internal-batch-size`` (default: unset, Captum's default, every path point of the batch in
one pass: 400 ResNet-50 passes at batch 8, which a 24 GB machine cannot hold)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

STEPS = 50


def _rss() -> int:
    """The process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(model_name: str, framework: str, batch: int, internal: int | None = None) -> dict:
    """Run one IG call in this process and return its memory figures."""
    import jax
    import numpy as np
    import torch

    from benchmarks.pairs import pair
    from benchmarks.peers import torch_device

    device = torch_device()
    model, net = pair(model_name, device)
    h, w = model.input_size or (224, 224)
    x = np.random.default_rng(0).normal(size=(batch, h, w, 3)).astype(np.float32)
    t = np.zeros(batch, np.int64)
    if framework == "jaxplain":
        import jaxplain

        del net
        run = lambda: jax.block_until_ready(jaxplain.explain(model, x, t, "integrated_gradients", steps=STEPS))  # noqa: E731
    else:
        from captum.attr import IntegratedGradients

        del model
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
        tt = torch.from_numpy(t).to(device)
        run = lambda: IntegratedGradients(net).attribute(xt, baselines=0.0, target=tt, n_steps=STEPS,  # noqa: E731
                                                         internal_batch_size=internal)
    before = _rss()
    run()
    out = {"model": model_name, "framework": framework, "batch": batch, "steps": STEPS, "internal_batch_size": internal,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_before_bytes": before}
    out["added_bytes"] = out["peak_rss_bytes"] - before
    if jax.default_backend() == "gpu" and framework == "jaxplain":
        out["device_peak_bytes"] = jax.local_devices()[0].memory_stats()["peak_bytes_in_use"]
    if device == "cuda" and framework == "captum":
        out["device_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", choices=("vgg16", "resnet50", "vit_b16"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--internal-batch-size", type=int, default=None, help="Captum's (default: unset)")
    p.add_argument("--json")
    p.add_argument("--one", choices=("jaxplain", "captum"), help=argparse.SUPPRESS)  # the child's part
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.model, args.one, args.batch, args.internal_batch_size)))
        return 0
    rows, gib = [], 2.0**30
    print(f"IG, {STEPS} steps, {args.model}, batch {args.batch}", flush=True)
    for framework in ("jaxplain", "captum"):
        extra = ["--internal-batch-size", str(args.internal_batch_size)] if args.internal_batch_size else []
        r = subprocess.run([sys.executable, "-m", "benchmarks.ig_memory", "--model", args.model, "--batch", str(args.batch),
                            "--one", framework, *extra], capture_output=True, text=True)
        if r.returncode:
            why = f"killed by signal {-r.returncode} (out of memory?)" if r.returncode < 0 else r.stderr[-2000:]
            print(f"  {framework:<9} failed: {why}", flush=True)
            rows.append({"framework": framework, "failed": why})
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        dev = f", device peak {row['device_peak_bytes'] / gib:.2f} GiB" if "device_peak_bytes" in row else ""
        print(f"  {row['framework']:<9} the call added {row['added_bytes'] / gib:.2f} GiB to "
              f"{row['rss_before_bytes'] / gib:.2f} GiB resident (lifetime peak {row['peak_rss_bytes'] / gib:.2f} GiB){dev}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
