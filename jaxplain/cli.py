"""The ``jaxplain`` command line: ``predict`` and ``explain`` images with a model of the zoo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxplain.errors import JaxplainError
from jaxplain.precision import PRECISIONS

MODELS = ("vgg11", "vgg13", "vgg16", "vgg19")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", default="vgg16", choices=MODELS)
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (download the published file, the default), a weight file path, "
        "or 'random' (seeded random weights, for trying the pipeline offline)",
    )
    p.add_argument("--source", choices=("keras", "torchvision"), default=None,
                   help="whose ImageNet weights and preprocessing (default: keras, or the file's own)")


def _compile_cache() -> None:
    """Keep compiled programs under ``$JAXPLAIN_HOME/xla-cache``, so a repeated run does not
    recompile (``JAXPLAIN_COMPILE_CACHE=0`` turns this off)."""
    import os

    import jax

    from jaxplain.models.weights import home

    if os.environ.get("JAXPLAIN_COMPILE_CACHE", "1") == "0":
        return
    jax.config.update("jax_compilation_cache_dir", str(home() / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _load_model(args: argparse.Namespace):
    from jaxplain import models

    _compile_cache()
    weights = None if args.weights == "random" else args.weights
    return models.vgg(args.model, weights, args.source)


def _images(paths: Sequence[str], model) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Load what loads; report the rest, one line each, and go on."""
    from jaxplain.io import load_image

    ok, arrays, failed = [], [], []
    for path in paths:
        try:
            arrays.append(load_image(path, model))
            ok.append(path)
        except JaxplainError as e:
            print(f"jaxplain: skipped {e}", file=sys.stderr)
            failed.append(path)
    return ok, arrays, failed


def _predict(args: argparse.Namespace) -> int:
    from jaxplain.models.imagenet import decode

    model = _load_model(args)
    if model.layers[-1] != "predictions":
        raise JaxplainError("predict needs a model with its classifier (a weight file with the top)")
    paths, arrays, failed = _images(args.images, model)
    if args.weights == "random":
        print("(random weights: the classes below are meaningless)")
    for path, img in zip(paths, arrays):
        logits = np.asarray(model(model.preprocess(img[None])))
        print(path)
        for rank, (wnid, name, p) in enumerate(decode(logits, top=args.top)[0], 1):
            print(f"  {rank}. {name:<32} {wnid}  {p:.4f}")
    return 1 if failed else 0


def _explain(args: argparse.Namespace) -> int:
    import jax

    from jaxplain import registry, viz
    from jaxplain.runner import explain, predict
    from jaxplain.io import save_png
    from jaxplain.models.imagenet import decode
    from jaxplain.reductions import reduce

    from jaxplain import distributed

    if args.coordinator:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        args.images = distributed.my_share(args.images)
    fn, settings = registry.parse(args.method)
    registry.check_settings(fn, settings)
    if "key" in registry.settings_of(fn) and "key" not in settings:
        settings["key"] = jax.random.key(args.seed)
    target = args.target if args.target == "predicted" else _int(args.target, "--target")
    model = _load_model(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.weights == "random":
        print("(random weights: the classes below are meaningless)")
    used: set[str] = set()
    failed = 0
    for lo in range(0, len(args.images), args.batch_size):  # finished images are written as they come
        paths, arrays, bad = _images(args.images[lo : lo + args.batch_size], model)
        failed += len(bad)
        if not paths:
            continue
        x = model.preprocess(np.stack(arrays))
        logits = np.asarray(predict(model, x))
        targets = logits.argmax(-1) if target == "predicted" else np.full(len(paths), target)
        attr = explain(model, x, targets, fn, precision=args.precision, **settings)
        if isinstance(attr, tuple):
            attr = attr[0]
        maps = np.asarray(reduce(attr, args.reduce))
        for path, img, a, m, lg, t in zip(paths, arrays, np.asarray(attr), maps, logits, targets):
            stem = Path(path).stem
            name = stem if stem not in used else f"{stem}-{lo}"
            used.add(name)
            np.save(out / f"{name}.npy", a)
            save_png(out / f"{name}.png", viz.overlay(img, m))
            label = ""
            if lg.shape[-1] == 1000:
                wnid, cls, p = decode(lg, top=1)[0][0]
                label = f"top class {cls} ({wnid}, p={p:.3f}); "
            print(f"{path}: {label}explained class {int(t)} -> {out / name}.png, {out / name}.npy")
    return 1 if failed else 0


def bench_command(args: argparse.Namespace, peer: Callable | None = None) -> int:
    """``jaxplain bench``; ``peer(model)``, if given, returns the peer timing of ``bench.run``
    (``python -m benchmarks.compare`` passes Captum's)."""
    import json

    from jaxplain import bench, models

    model = models.vgg(args.model, None, "torchvision" if args.size else "keras")
    if args.size:
        model = model.replace(input_size=(args.size, args.size))
    rows = bench.run(model, args.methods, args.batch, precision=args.precision, rounds=args.rounds,
                     min_time=args.min_time, peer=peer(model, rounds=args.rounds, min_time=args.min_time) if peer else None)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        info = {k: rows[0][k] for k in ("platform", "device_kind", "device_count", "jax", "jaxlib", "host")}
        Path(args.json).write_text(json.dumps({"device": info, "peak_flops_per_s": rows[0]["peak_flops_per_s"], "rows": rows}, indent=1, default=str))
    return 0


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise JaxplainError(f"{flag} takes 'predicted' or a class index, not {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxplain", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="print the top ImageNet classes of each image")
    _model_args(pr)
    pr.add_argument("--top", type=int, default=5)
    pr.set_defaults(run=_predict)
    ex = sub.add_parser("explain", help="write a heat map (.png) and the raw attribution (.npy) per image")
    _model_args(ex)
    ex.add_argument("--method", default="gradient",
                    help="a method name, with settings if you like: \"integrated_gradients(steps=32)\"")
    ex.add_argument("--target", default="predicted", help="'predicted' (the top class) or a class index")
    ex.add_argument("--out", required=True, help="folder for the results")
    ex.add_argument("--batch-size", type=int, default=8, help="images per compiled call")
    ex.add_argument("--seed", type=int, default=0, help="seed of the key for random methods")
    ex.add_argument("--precision", choices=PRECISIONS, help="the model's arithmetic (default: JAX's)")
    ex.add_argument("--reduce", default="abs_max", help="how channels collapse for the picture")
    ex.add_argument("--coordinator", help="HOST:PORT of process 0, to split the images over several processes")
    ex.add_argument("--num-processes", type=int, help="with --coordinator: how many processes")
    ex.add_argument("--process-id", type=int, help="with --coordinator: this process's index")
    ex.set_defaults(run=_explain)
    be = sub.add_parser("bench", help="measure images/s, %% of the matmul peak and memory, optionally against Captum")
    be.add_argument("--methods", nargs="+", default=["gradient", "integrated_gradients", "smoothgrad", "guided_backprop"])
    be.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    be.add_argument("--model", default="vgg16", choices=MODELS)
    be.add_argument("--size", type=int, default=None, help="input side (torchvision head); default 224 (Keras head)")
    be.add_argument("--rounds", type=int, default=3)
    be.add_argument("--min-time", type=float, default=1.0, help="seconds each case is timed for at least")
    be.add_argument("--precision", choices=PRECISIONS, help="the model's arithmetic (default: JAX's)")
    be.add_argument("--json", help="write every measured field here")
    be.set_defaults(run=bench_command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except JaxplainError as e:
        print(f"jaxplain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
