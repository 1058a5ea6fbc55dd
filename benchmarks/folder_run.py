"""A folder run end to end against the kernel alone, interleaved in one process:

    python -m benchmarks.folder_run --images 500 --model vgg16 --method gradient --batch 8 --json OUT.json

writes ``--images`` seeded JPEGs of mixed sizes (160x120 to 1600x1200, landscape and portrait,
a few grayscale) into a temporary folder, then times, after compiling both on a few pictures:

- the kernel: ``jaxplain.explain(model, x, "predicted", method, batch_size=B)`` over the same
  pictures already decoded and preprocessed in memory, ``B`` at a time (``"predicted"`` runs the
  forward pass too, as the folder run does for its top-5);
- the folder run: what ``jaxplain explain FOLDER --method M --batch-size B --out OUT`` does
  (``jaxplain explain``'s calls, the command's defaults) into a fresh folder each time: decoding,
  overlays at each picture's own size, thumbnails, the zarr store and ``results.jsonl``.

Timed by ``jaxplain.timing``'s method: a warm-up of each on ``B + 1`` pictures, ``--rounds`` (5)
interleaved ABBA rounds, images/s median (min-max) of each and the ratio folder run / kernel
(min-max), or "noisy, rerun" over a 25% spread; the load before and after; ``--compete N`` runs N
busy processes beside it (the shared-machine regime).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks import sides
from jaxplain import timing

NAMES = ("folder run", "kernel")  # the ratio: the folder run's speed over the kernel's

# (width, height) of the landscape pictures; a portrait one is the same turned
SIZES = ((160, 120), (320, 240), (400, 300), (500, 375), (640, 480), (500, 500), (800, 600), (900, 600),
         (1024, 768), (1280, 720), (1280, 960), (1600, 1200))


def write_pictures(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs ``folder/<sub>/img_XXXX.jpg`` (two subfolders): smooth colour fields with
    texture, sizes drawn from ``SIZES``, about a third portrait and one in twelve grayscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = SIZES[rng.integers(len(SIZES))]
        if rng.random() < 0.3:
            w, h = h, w
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, np.float32) + rng.normal(0, 12, (h, w, 1)).astype(np.float32)
        picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if rng.random() < 1 / 12:
            picture = picture.convert("L")
        path = folder / f"part{i % 2}" / f"img_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def decoded(model, files: Sequence[Path]) -> np.ndarray:
    """The pictures as the folder run feeds them to the model: ``[N, H, W, 3]`` preprocessed."""
    from jaxplain.io import load_for_model

    return np.asarray(model.preprocess(np.stack([load_for_model(f, model).image for f in files])))


def kernel_seconds(model, x: np.ndarray, method: str, batch: int) -> float:
    """Seconds for ``jaxplain.explain`` over ``x``, ``batch`` images per call, results on the host."""
    import jaxplain

    start = time.perf_counter()
    for i in range(0, len(x), batch):
        np.asarray(jaxplain.explain(model, x[i : i + batch], "predicted", method, batch_size=batch))
    return time.perf_counter() - start


def folder_seconds(model, model_name: str, folder: Path, out: Path, method: str, batch: int) -> tuple[float, Any]:
    """Seconds for ``jaxplain explain folder --method method --batch-size batch --out out`` on the
    built ``model`` (``jaxplain explain``'s steps after loading it), and the run's counts."""
    from jaxplain import cli
    from jaxplain.runs import inputs, record
    from jaxplain.runs import loop as pipeline
    from jaxplain.runs.join import join

    args = cli.parser().parse_args(["explain", str(folder), "--model", model_name,
                                    "--weights", "shipped" if model_name == cli.common.SYNTHETIC else "random",
                                    "--method", method, "--batch-size", str(batch), "--out", str(out)])
    said = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        jobs, target, out_dir = cli.explain.check_explain_args(args)
        found = inputs.expand(args.images)
        config = record.configuration(cli.explain.model_record(args), jobs, target=target, dtype=args.dtype,
                                        reduce=args.reduce, colormaps={"unsigned": args.cmap, "signed": args.signed_cmap})
        record.prepare(out_dir, config, overwrite=args.overwrite, writer=False)
        config = record.prepare(out_dir, config, overwrite=args.overwrite, writer=True)
        counts = pipeline.run(model, found.files, inputs.output_names(found.files), jobs, out=out_dir, config=config,
                              target=target, class_names=cli.common.class_names(model), batch_size=args.batch_size,
                              precision=args.precision, threads=args.decode_threads)
        join(out_dir)
    seconds = time.perf_counter() - start
    if counts.failed or counts.done != len(found.files):
        raise RuntimeError(f"the folder run failed on some pictures ({counts}):\n{said.getvalue()[-2000:]}")
    return seconds, counts


def build(name: str):
    from jaxplain import models

    return models.synthetic_vgg() if name == "synthetic" else models.vgg(name, None)


def measure(model, model_name: str, files: Sequence[Path], method: str, batch: int, rounds: int, work: Path,
            warm: int | None = None) -> dict[str, Any]:
    """Warm both up on ``warm`` pictures (default ``batch + 1``: the compile, a full batch and a
    partial one), then the folder run beside the kernel over ``files`` (in ``work``'s folder
    ``pictures``) by ``jaxplain.timing.side_by_side``, ``rounds`` interleaved ABBA rounds. Each
    folder run writes a fresh folder (removed at the end, not between rounds: that would be timed)."""
    folder = files[0].parent.parent
    x = decoded(model, files)
    warm_folder = work / "warm"
    for f in files[: warm or batch + 1]:
        (warm_folder / f.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, warm_folder / f.name)
    kernel_seconds(model, x[: batch + 1], method, batch)
    folder_seconds(model, model_name, warm_folder, work / "out-warm", method, batch)
    outs = (work / f"out-{i}" for i in itertools.count())
    c = timing.side_by_side(lambda: folder_seconds(model, model_name, folder, next(outs), method, batch),
                            lambda: kernel_seconds(model, x, method, batch), names=NAMES, items=len(files), rounds=rounds,
                            warmup=0)
    for r, (f, k) in enumerate(zip(c.seconds["folder run"], c.seconds["kernel"])):
        print(f"  round {r + 1}/{rounds}: folder run {len(files) / f:.3f} images/s, kernel {len(files) / k:.3f} images/s, "
              f"ratio {k / f:.3f}", flush=True)
    for out in work.glob("out-*"):
        shutil.rmtree(out, ignore_errors=True)
    folder_rate, kernel = c.per_s("folder run"), c.per_s("kernel")
    return {"images": len(files), "model": model_name, "method": method, "batch": batch, "rounds": rounds,
            "kernel_images_per_s": kernel.median, "folder_images_per_s": folder_rate.median,
            "ratio": None if c.noisy else c.ratio.median, "ratio_text": c.ratio_text(),
            "kernel_images_per_s_text": sides.rate(c, "kernel"), "folder_images_per_s_text": sides.rate(c, "folder run"),
            "timing": c.as_dict(), "loadavg_before": c.load_before, "loadavg_after": c.load_after,
            "machine": sides.machine()}


def table(result: dict[str, Any]) -> str:
    head = ("images", "model", "method", "batch", "rounds", "kernel img/s", "folder run img/s", "ratio (folder/kernel)")
    row = (result["images"], result["model"], result["method"], result["batch"], result["rounds"],
           result["kernel_images_per_s_text"], result["folder_images_per_s_text"], result["ratio_text"])
    widths = [max(len(str(a)), len(str(b))) for a, b in zip(head, row)]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(line, widths)) for line in (head, row)]
    lines.append(sides.footer([result["timing"]]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=500, help="pictures the benchmark writes (default 500)")
    p.add_argument("--model", default="vgg16", help="vgg16 (random weights) or synthetic (the shipped small model)")
    p.add_argument("--method", default="gradient")
    p.add_argument("--batch", type=int, default=8)
    sides.add_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="of the pictures")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    model_name = "synthetic_vgg" if args.model == "synthetic" else args.model
    model = build(args.model)
    timing.equal_threads()
    print(sides.header(args.compete, args.rounds), flush=True)
    with tempfile.TemporaryDirectory(prefix="jaxplain-folder-run-") as tmp:
        work = Path(tmp)
        files = write_pictures(work / "pictures", args.images, args.seed)
        print(f"{args.images} pictures written; compiling, then {args.rounds} rounds", flush=True)
        with sides.regime(args.compete):
            result = measure(model, model_name, files, args.method, args.batch, args.rounds, work)
    result["compete"] = args.compete
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
