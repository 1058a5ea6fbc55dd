"""Time to the first map in a fresh process, per model: ``import jaxplain``, load the model, then
``explain`` one 224x224 image with ``gradient`` and with ``grad_cam`` (the first call compiles and
runs, the second runs), cold (an empty compile cache folder) and warm (a second process on the
same folder: the persistent compile cache on by default, ``jaxplain.xla_cache``).

    python -m benchmarks.first_call [--models vgg16 resnet50 vit_b16] [--json out.json]

Each model's random weights are written once (by this process, with torch) in the published
layout as safetensors, the form jaxplain keeps a downloaded file in (torchvision's keys for VGG16
and ResNet-50, timm's for ViT-B/16), and each timed process reads them with jaxplain's loader.
``--model tiny`` (the tiny VGG, 32x32, built from seeded weights) is the quick form that
``benchmarks/test_first_call.py`` runs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("vgg16", "resnet50", "vit_b16")
METHODS = ("gradient", "grad_cam")

# The timed process: one line of JSON with its seconds. ``import`` is jaxplain's import (with
# JAX, Flax and NumPy), measured from the interpreter's first line.
CHILD = r"""
import time
t0 = time.perf_counter()
import json, sys
import numpy as np
import jax
import jaxplain
from jaxplain import models
out = {"import_s": time.perf_counter() - t0}
name, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if name == "tiny":
    cfg = models.VGGConfig(blocks=(1, 1, 2), widths=(4, 8, 8), fc=16, classes=10, grid=2, head="torchvision", name="tiny")
    model = models.build(cfg, models.random_params(cfg), source="torchvision").replace(input_size=(32, 32))
else:
    model = getattr(models, name)(path)
side = (model.input_size or (224, 224))[0]
image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
x = model.preprocess(image[None])
jax.block_until_ready(jax.tree.leaves(model.params))
out["load_s"] = time.perf_counter() - t
for method in sys.argv[3:]:
    for turn in ("first", "second"):
        t = time.perf_counter()
        jax.block_until_ready(jaxplain.explain(model, x, "predicted", method))
        out[f"{method}_{turn}_s"] = time.perf_counter() - t
out["cache"] = jax.config.jax_compilation_cache_dir
print(json.dumps(out))
"""


def write_weights(name: str, folder: Path) -> Path:
    """Seeded random weights of ``name`` as safetensors in the published keys, under ``folder``."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    path = folder / f"{name}.safetensors"
    if name == "tiny":
        return path  # built in the timed process
    if name.startswith("vgg"):
        from benchmarks.torch_vgg import state_dict
        from jaxplain.models import BLOCKS, VGGConfig, random_params

        config = VGGConfig(blocks=BLOCKS[name], head="torchvision", name=name)
        raw = state_dict(random_params(config), config)
    else:
        torch.manual_seed(0)
        if name == "resnet50":
            from tests.torch_reference import TorchResNet as Net
        else:
            from tests.torch_vit import TorchViT as Net
        raw = {k: v.detach().contiguous().numpy() for k, v in Net().eval().state_dict().items()}
    save_file({k: np.ascontiguousarray(v) for k, v in raw.items()}, str(path))
    return path


def fresh_process(name: str, weights: Path, home: Path, methods: tuple[str, ...] = METHODS,
                  timeout: float = 600) -> dict[str, Any]:
    """One timed process on the compile cache under ``home`` (``$JAXPLAIN_HOME``): its seconds,
    and ``wall_s``, the whole process from its start to its exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(JAXPLAIN_HOME=str(home), JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"))
    env.pop("JAXPLAIN_COMPILE_CACHE", None)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, name, str(weights), *methods], env=env,
                       capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"the timed process failed:\n{p.stderr[-3000:]}")
    return {**json.loads(p.stdout.splitlines()[-1]), "wall_s": wall}


def first_call(name: str, methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    """``{"cold": seconds, "warm": seconds}`` of two fresh processes of ``name`` on one new cache
    folder, and the cache folder's size after them."""
    with tempfile.TemporaryDirectory(prefix="jaxplain-first-call-") as d:
        weights = write_weights(name, Path(d))
        home = Path(d) / "home"
        cold = fresh_process(name, weights, home, methods)
        warm = fresh_process(name, weights, home, methods)
        size = sum(f.stat().st_size for f in (home / "xla").glob("*") if f.is_file())
    return {"model": name, "cold": cold, "warm": warm, "cache_bytes": size}


def table(rows: list[dict[str, Any]]) -> str:
    """The README's Markdown rows: seconds of each part, cold / warm."""
    lines = ["| model | cache | import | load | gradient: first map | second | grad_cam: first map | second | process total |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for kind in ("cold", "warm"):
            s = r[kind]
            cells = [s["import_s"], s["load_s"]] + [s[f"{m}_{t}_s"] for m in METHODS for t in ("first", "second")]
            lines.append(f"| {r['model']} | {kind} | " + " | ".join(f"{v:.1f}" for v in cells) + f" | {s['wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.first_call", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=(*MODELS, "tiny"))
    p.add_argument("--json", default=None, help="write the rows here too")
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        rows.append(first_call(name))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
