"""``jaxplain evaluate``: a table of methods x metrics, each cell kept as it finishes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxplain.cli import common
from jaxplain.errors import InputError
from jaxplain.registry import METHODS, METRICS

DEFAULT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "guided_backprop",
                   "grad_cam", "occlusion")


def _images_and_masks(paths: Sequence[str], mask_paths: Sequence[str] | None, model) -> tuple[list[int], list[np.ndarray], Any]:
    """``(positions, images, masks [N, H, W] or None)`` of the images that load, with their masks
    (white = the object, of its picture's size, brought to the input by the model's resize); the rest
    reported, one line each."""
    import jax.numpy as jnp

    from jaxplain.io import load_mask

    found = common.loaded(paths, model, also=(lambda i, picture: load_mask(mask_paths[i], picture, model))
                          if mask_paths else None)
    masks = [mask for _, _, mask in found]
    return ([i for i, _, _ in found], [image for _, image, _ in found],
            jnp.asarray(np.stack(masks)) if mask_paths and found else None)


def _files(arguments: Sequence[str] | None) -> list[str] | None:
    """The files ``arguments`` name, in order: a file as given (repeats kept), a folder, glob or
    ``@list.txt`` expanded as ``explain`` and ``predict`` do (sorted); one naming nothing stays, to
    fail as an unreadable image."""
    from jaxplain.runs import inputs

    if not arguments:
        return arguments
    files: list[str] = []
    for argument in arguments:
        found = [] if Path(argument).is_file() else inputs.expand([argument]).files
        files.extend([str(f) for f in found] or [argument])
    return files


def _check_evaluate_args(args: argparse.Namespace) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
    """``evaluate``'s arguments, checked before a model loads: ``(the JSON file's path, this run's
    configuration, the results already in that file or None)``; a file of other settings is refused."""
    import json

    from jaxplain.comparison import check_specs

    args.images, args.masks = _files(args.images), _files(args.masks)
    if args.masks and not args.images:
        raise InputError("--masks goes with your images; the synthetic benchmark brings its own masks")
    if args.masks and len(args.masks) != len(args.images):
        n, k = len(args.images), len(args.masks)
        raise InputError(f"--masks gives {k} mask{'s' * (k > 1)} for {n} image{'s' * (n > 1)}: one mask per image, in order")
    if not args.images and args.model != common.SYNTHETIC:
        raise InputError(f"--model {args.model} needs your images: the synthetic benchmark's 64x64 pictures are "
                         f"scored with synthetic_vgg (--weights random gives it random weights, a control)")
    check_specs(args.methods, args.metrics, has_masks=not args.images or bool(args.masks))
    out = Path(args.json)
    if out.is_dir():
        raise InputError(f"--json {args.json}: is a folder, not a file")
    common.output_folder(str(out.parent) if str(out.parent) else ".")
    data: dict[str, Any] = ({"images": [str(Path(p).resolve()) for p in args.images],
                             "masks": [str(Path(p).resolve()) for p in args.masks or []]} if args.images
                            else {"synthetic": args.n})
    config = {"model": args.model, "weights": args.weights, "source": args.source, "seed": args.seed, **data}
    if common.is_spec(args.model):  # your own model: the results are of these --model-arg values
        config["model_args"] = common.user_record(args)["args"]
    if not out.exists():
        return out, config, None
    try:
        found = json.loads(out.read_text())
        earlier = found["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"--json {args.json}: exists and holds no jaxplain evaluate results; pass another --json") from None
    if earlier != config:
        flags = {"synthetic": "-n", "images": "the images", "masks": "--masks", "model_args": "--model-arg"}
        changed = [k for k in {**earlier, **config} if earlier.get(k) != config.get(k)]
        what = "; ".join(flags.get(k, f"--{k}") + ("" if k in ("images", "masks") else
                                                   f" {_said(earlier.get(k))} there, {_said(config.get(k))} here")
                         for k in changed)
        raise InputError(f"--json {args.json} holds results of other settings ({what}); pass another "
                         f"--json or delete it")
    return out, config, found


def _said(value: Any) -> str:
    """A setting's value as a message gives it (``None`` is "none")."""
    return "none" if value is None else str(value)


def _write_json(out: Path, result: dict[str, Any]) -> None:
    """``result`` into ``out`` atomically (a finished file or the earlier one, never half of one);
    strict JSON: a number that does not exist (NaN: no interval of one image, a score of an empty
    mask) is ``null``."""
    import json

    from jaxplain.runs.outputs import write_atomic

    write_atomic(out, json.dumps(result, indent=1, allow_nan=False).encode())


def _number(value: float) -> float | None:
    """``value``, or ``None`` (JSON's ``null``) where it is NaN or infinite."""
    return float(value) if np.isfinite(value) else None


def _float(value: float | None) -> float:
    """A number read back from the JSON: ``null`` is NaN."""
    return np.nan if value is None else float(value)


def _identity(spec: str, kind: str) -> tuple[str, str]:
    """What a method or metric spec computes, whatever its spelling: ``(function name, its
    settings as sorted JSON)``, so ``"smoothgrad(samples=2, key=3)"`` is ``"smoothgrad(key=3,samples=2)"``."""
    import json

    from jaxplain import registry

    try:
        fn, settings = registry.parse(spec, kind)
    except InputError:  # a label this version does not know (an older file's): itself
        return spec, ""
    return getattr(fn, "__name__", spec), json.dumps(settings, sort_keys=True, default=repr)


def run(args: argparse.Namespace) -> int:
    out, config, earlier = _check_evaluate_args(args)
    import jax.numpy as jnp

    from jaxplain import models
    from jaxplain.baselines import path_id
    from jaxplain.comparison import Cell, compare, table

    common.compile_cache()
    weights = None if args.weights == "random" else "shipped"
    if args.images:
        model = common.load_model(args)
        found, arrays, masks = _images_and_masks(args.images, args.masks, model)
        failed = len(args.images) - len(found)
        if not found:
            raise InputError("none of the images could be read")
        x = model.preprocess(np.stack(arrays))
        ids = [path_id(config["images"][i]) for i in found]  # an image's key follows its file, not its place
        data = f"{len(found)} image{'s' * (len(found) > 1)}"
    else:
        failed = 0
        from jaxplain import synthetic

        model = models.synthetic_vgg(weights)
        bench = synthetic.make(args.n, seed=args.seed)
        x, masks = model.preprocess(bench.images), jnp.asarray(bench.masks)
        ids = None
        data = f"{args.n} synthetic images (seed {args.seed})"
    if args.weights == "random":
        print("(random weights: a control; its scores say what an explanation of no learned model gets)")
    result = {"config": config, "model": model.name, "data": data, "method_seconds": {}, "cells": []}
    # a method or metric already in the file with the same settings, however spelt, keeps its label there
    labels = {"method": {}, "metric": {}}
    for c in (earlier or {}).get("cells", []):
        for kind in labels:
            labels[kind].setdefault(_identity(c[kind], kind), c[kind])
    method_label = {m: labels["method"].get(_identity(m, "method"), m) for m in args.methods}
    metric_label = {k: labels["metric"].get(_identity(k, "metric"), k) for k in args.metrics}
    done: dict[tuple[str, str], Cell] = {}
    if earlier:
        result["method_seconds"] = dict(earlier.get("method_seconds", {}))
        result["cells"] = list(earlier.get("cells", []))
        stored = {(c["method"], c["metric"]): c for c in result["cells"]}
        for m in args.methods:
            for k in args.metrics:
                if (c := stored.get((method_label[m], metric_label[k]))) is not None:
                    done[m, k] = Cell(m, k, np.asarray([_float(v) for v in c["scores"]], np.float64), _float(c["mean"]),
                                      _float(c["low"]), _float(c["high"]), c["seconds"])
    seconds_so_far = {m: result["method_seconds"][method_label[m]] for m in args.methods
                      if method_label[m] in result["method_seconds"]}
    todo = sum((m, k) not in done for m in args.methods for k in args.metrics)
    print(f"{model.name} on {data}: {_count(len(args.methods), 'method')} x {_count(len(args.metrics), 'metric')}, "
          f"{_count(todo, 'cell')} to run"
          + (f" ({len(args.methods) * len(args.metrics) - todo} already in {out})" if earlier else "")
          + ("; the time left is printed after each cell" if todo else ""), flush=True)
    report = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731  (a line per cell, tty or log)

    def keep(cell: Cell, method_seconds: dict[str, float]) -> None:  # each cell on disk as it finishes
        result["method_seconds"].update({method_label[m]: s for m, s in method_seconds.items()})
        method, metric = method_label[cell.method], metric_label[cell.metric]
        result["cells"] = [c for c in result["cells"] if (c["method"], c["metric"]) != (method, metric)]
        result["cells"].append({"method": method, "metric": metric, "mean": _number(cell.mean),
                                "low": _number(cell.low), "high": _number(cell.high), "seconds": cell.seconds,
                                "scores": [_number(v) for v in cell.scores]})
        _write_json(out, result)

    signals = common.Signals("the cell in flight")
    try:
        method_seconds, cells = compare(
            model, x, "predicted", args.methods, args.metrics, masks=masks, batch_size=args.batch_size,
            seed=args.seed, ids=ids, done=done, method_seconds=seconds_so_far,
            on_cell=keep,
            stop=lambda: signals.received is not None, report=report)
    finally:
        signals.restore()
    if signals.received is not None:
        print(f"jaxplain: stopped by a signal; {_count(len(cells), 'cell')} {'is' if len(cells) == 1 else 'are'} in {out}: "
              "rerun the command to finish",
              file=sys.stderr)
        return 128 + int(signals.received)
    print(table(method_seconds, cells))
    result["method_seconds"].update({method_label[m]: s for m, s in method_seconds.items()})
    _write_json(out, result)
    print(f"wrote {out}")
    return 4 if failed else 0


def _count(n: int, noun: str) -> str:
    """``"1 cell"``, ``"4 cells"``."""
    return f"{n} {noun}{'s' * (n != 1)}"


EVALUATE_EPILOG = f"""methods (settings in parentheses, e.g. --methods "integrated_gradients(steps=64)"):
{common.columns(sorted(METHODS))}

metrics (settings in parentheses, e.g. --metrics "deletion(steps=16)"):
{common.columns(sorted(METRICS))}

exit status: 0 all done; 2 an argument error (or none of the images readable); 4 all done, but some
images unreadable (a 'failed' line each); 130 or 143 stopped by a signal (rerun to finish)

examples:
  jaxplain evaluate                                   # every metric, the default methods, the synthetic benchmark
  jaxplain evaluate --methods gradient grad_cam --metrics deletion insertion -n 50
  jaxplain evaluate photos/*.jpg --masks masks/*.png --model vgg16 --metrics pointing_game relevance_mass
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``jaxplain evaluate``'s subparser on ``sub`` (``add_subparsers``' result), run by ``run``."""
    from jaxplain.models.zoo import ZOO, source_names

    ev = sub.add_parser("evaluate", help="score methods with faithfulness, localisation and sanity metrics",
                        description="Explain images with each method, score each explanation with each metric, and "
                        "print the mean and a 95% interval over the images, with the seconds taken. Without images: "
                        "the synthetic ground-truth benchmark and its shipped model.", epilog=EVALUATE_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("images", nargs="*", metavar="IMAGE", help="your images: files, folders (searched recursively), "
                    "globs or @list.txt, as for explain (default: the synthetic benchmark)")
    ev.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                    help=f"methods, with settings if you like: \"smoothgrad(samples=8)\" (default: {' '.join(DEFAULT_METHODS)}; "
                    "list below)")
    ev.add_argument("--metrics", nargs="+", default=None, metavar="METRIC", help="default: all (those needing masks "
                    "only with masks)")
    ev.add_argument("--masks", nargs="+", metavar="MASK", help="one ground-truth mask picture per image (white = the "
                    "object), in the images' order; a folder of them is read sorted, as the images are")
    ev.add_argument("--model", default=None, type=common.model_name, metavar="MODEL",
                    help=common.MODEL_HELP.format(default=" (default: synthetic_vgg without images, vgg16 with)",
                                                  zoo=", ".join(ZOO)))
    ev.add_argument("--model-arg", action="append", type=common.model_arg, metavar="KEY=VALUE",
                    help=common.MODEL_ARG_HELP)
    ev.add_argument("--weights", default=None, help="as for explain (default: the model's first named weights; synthetic_vgg: shipped, "
                    "or random: the control, also for the synthetic benchmark)")
    ev.add_argument("--source", choices=source_names(), default=None, help="as for explain")
    ev.add_argument("-n", type=common.positive, default=200, help="synthetic images (default 200)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and of random methods and metrics")
    ev.add_argument("--batch-size", type=common.positive, default=32, help="images per compiled call (default 32)")
    ev.add_argument("--json", default="evaluation.json", help="where to write every score, each cell as it finishes; "
                    "the same command again finishes a stopped run (default evaluation.json)")
    ev.add_argument("--debug", action="store_true", help="show the traceback of an error")
    ev.set_defaults(run=run)
    return ev
