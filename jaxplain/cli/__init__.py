"""The ``jaxplain`` command line: predict and explain images with a model of the zoo.

Every argument is checked before a model is loaded; an error is one line on stderr (exit 2),
a bad image one "skipped" line while the others go on (exit 1)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from jaxplain.errors import InputError, JaxplainError
from jaxplain.engine.precision import PRECISIONS
from jaxplain.reductions import REDUCTIONS
from jaxplain.registry import METHODS, METRICS

VGGS = ("vgg11", "vgg13", "vgg16", "vgg19")
MODELS = (*VGGS, "resnet50", "vit_b16")
# Whose weights each model can load (the first is the default).
SOURCES = {**{v: ("keras", "torchvision") for v in VGGS}, "resnet50": ("torchvision", "keras"),
           "vit_b16": ("timm", "google")}
SOURCE_NAMES = tuple(dict.fromkeys(s for names in SOURCES.values() for s in names))  # --source's choices
SYNTHETIC = "synthetic_vgg"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"jaxplain: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively), globs, or @list.txt (a path per line)")
    p.add_argument("--model", default="vgg16", choices=(*MODELS, SYNTHETIC))
    p.add_argument(
        "--weights",
        default=None,
        help="'imagenet' (download the published file, the default), a weight file path, "
        "or 'random' (seeded random weights, for trying the pipeline offline); resnet50 also 'IMAGENET1K_V1' or "
        "'IMAGENET1K_V2' (torchvision's releases; 'imagenet' is V2); synthetic_vgg: 'shipped' (default)",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--source", choices=SOURCE_NAMES, default=None,
                   help="whose ImageNet weights and preprocessing: keras or torchvision for VGG (default keras) "
                   "and resnet50 (default torchvision), timm (default) or google for vit_b16; a file's own by default")


def _compile_cache() -> None:
    """Keep compiled programs under ``$JAXPLAIN_HOME/xla-cache``, so a repeated run does not
    recompile (``JAXPLAIN_COMPILE_CACHE=0`` turns this off; a ``JAX_COMPILATION_CACHE_DIR`` set in
    the environment is JAX's own setting and wins)."""
    import jax

    from jaxplain.models.weights import home

    if os.environ.get("JAXPLAIN_COMPILE_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", str(home() / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _load_model(args: argparse.Namespace):
    from jaxplain import models

    _compile_cache()
    weights = None if args.weights == "random" else args.weights
    if args.model == SYNTHETIC:
        return models.synthetic_vgg(weights)
    if args.model == "resnet50":
        return models.resnet50(weights, args.source)
    if args.model == "vit_b16":
        return models.vit_b16(weights, args.source)
    return models.vgg(args.model, weights, args.source)


def _images(paths: Sequence[str], model) -> tuple[list[int], list[np.ndarray]]:
    """``(positions, arrays)`` of what loads; the rest is reported, one line each."""
    from jaxplain.io import load_image

    ok, arrays = [], []
    for i, path in enumerate(paths):
        try:
            arrays.append(load_image(path, model))
            ok.append(i)
        except JaxplainError as e:
            print(f"jaxplain: failed {e}", file=sys.stderr)
    return ok, arrays


def _predict(args: argparse.Namespace) -> int:
    from jaxplain.runs import inputs
    from jaxplain.models.imagenet import decode
    from jaxplain.runs.loop import softmax

    found = inputs.expand(args.images)
    for problem in found.problems:
        print(f"jaxplain: failed {problem.argument}: {problem.message}", file=sys.stderr)
    if not found.files:
        return 1
    model = _load_model(args)
    if model.name != SYNTHETIC and model.layers[-1] not in ("predictions", "fc", "head"):
        raise JaxplainError("predict needs a model with its classifier (a weight file with the top)")
    if args.weights == "random":
        print("(random weights: the classes below are meaningless)")
    names = _class_names(model)
    failed = len(found.problems)
    for path in found.files:
        ok, arrays = _images([str(path)], model)
        failed += not ok
        for img in arrays:
            logits = np.asarray(model(model.preprocess(img[None])), np.float64)
            print(path)
            if logits.shape[-1] == 1000:
                top = [(name, wnid, p) for wnid, name, p in decode(logits, top=args.top)[0]]
            else:
                probs = softmax(logits[0])
                top = [(names[c] if names else str(c), str(c), probs[c]) for c in np.argsort(-probs)[: args.top]]
            for rank, (name, ident, p) in enumerate(top, 1):
                print(f"  {rank}. {name:<32} {ident}  {p:.4f}")
    return 1 if failed else 0


def _output_folder(out: str) -> Path:
    """The results folder, created, or an error saying why it cannot be used."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out}: is an existing file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".jaxplain-check-"):
            pass
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return path


def _check_explain_args(args: argparse.Namespace) -> tuple[list, Any, Path]:
    """Everything about ``explain``'s arguments that can be checked without a model: the jobs,
    the target, the output folder (created)."""
    from jaxplain import viz
    from jaxplain.runs import loop as pipeline

    if args.coordinator and (args.num_processes is None or args.process_id is None):
        raise InputError("--coordinator needs --num-processes and --process-id")
    if not args.coordinator and (args.num_processes is not None or args.process_id is not None):
        raise InputError("--num-processes and --process-id need --coordinator HOST:PORT")
    if args.coordinator and not 0 <= args.process_id < args.num_processes:
        raise InputError(f"--process-id must be in [0, {args.num_processes}), got {args.process_id}")
    jobs = pipeline.jobs(args.method or ["gradient"], args.seed)
    if args.target == "predicted":
        target = "predicted"
    else:
        try:
            target = int(args.target)
        except ValueError:
            raise InputError(f"--target takes 'predicted' or a class index, not {args.target!r}") from None
        if target < 0:
            raise InputError(f"--target must be a class index >= 0, got {target}")
    for name in (args.cmap, args.signed_cmap):
        viz.colormap(name)
    return jobs, target, _output_folder(args.out)


def _model_record(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies the weights of a run (a file by its path, size and time)."""
    record: dict[str, Any] = {"name": args.model, "weights": args.weights, "source": args.source}
    if args.weights not in ("imagenet", "random", "shipped"):
        path = Path(args.weights)
        if not path.is_file():
            raise InputError(f"--weights {args.weights}: no such file (or 'imagenet', 'random')")
        stat = path.stat()
        record.update(weights=str(path.resolve()), bytes=stat.st_size, modified=stat.st_mtime_ns)
    return record


def _class_names(model) -> list[str] | None:
    from jaxplain.engine.shapes import num_classes

    k = num_classes(model, (*(model.input_size or (224, 224)), 3))
    if model.name == SYNTHETIC:
        from jaxplain.synthetic import CLASSES

        return list(CLASSES)
    if k == 1000:
        from jaxplain.models.imagenet import classes

        return [name for _, name in classes()]
    return None


class _Signals:
    """SIGINT / SIGTERM: the first asks the run to stop after the batch in flight, a second stops now."""

    def __init__(self) -> None:
        import signal

        self.received: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print("jaxplain: stopping after the batch in flight (signal again to stop at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        import signal

        for s, h in self.previous.items():
            signal.signal(s, h)


def _explain(args: argparse.Namespace) -> int:
    from jaxplain.runs import inputs
    from jaxplain.runs import outputs
    from jaxplain.runs import loop as pipeline

    jobs, target, out = _check_explain_args(args)
    found = inputs.expand(args.images, exclude=out)  # never the results of an earlier run
    for problem in found.problems:
        print(f"jaxplain: failed {problem.argument}: {problem.message}", file=sys.stderr)
    model_record = _model_record(args)
    config = pipeline.configuration(model_record, jobs, target=target, dtype=args.dtype, reduce=args.reduce,
                                    colormaps={"unsigned": args.cmap, "signed": args.signed_cmap})
    if args.coordinator:
        from jaxplain import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax

    writer = jax.process_index() == 0
    lock = outputs.Lock(out / f".lock.p{jax.process_index()}", f"into {out}")
    try:
        return _explain_locked(args, jobs, target, out, found, config, writer)
    finally:
        lock.release()


def _explain_locked(args: argparse.Namespace, jobs: list, target: Any, out: Path, found: Any, config: dict[str, Any],
                    writer: bool) -> int:
    import jax

    from jaxplain import distributed
    from jaxplain.runs import inputs
    from jaxplain.runs import loop as pipeline

    pipeline.prepare(out, config, overwrite=args.overwrite, writer=False)  # refuses results of other settings
    counts = pipeline.Counts()
    if found.files:
        from jaxplain.engine.settings import resolve_for_model
        from jaxplain.engine.shapes import num_classes

        model = _load_model(args)
        h, w = model.input_size or (224, 224)
        for job in jobs:  # an unknown layer or neuron fails here, before any image
            resolve_for_model(job.fn, model, (h, w, 3), job.settings)
        k = num_classes(model, (h, w, 3))
        if target != "predicted" and target >= k:
            raise InputError(f"--target {target} is outside [0, {k}) for {model.name}")
        config = pipeline.prepare(out, config, overwrite=args.overwrite, writer=writer)
        distributed.barrier("jaxplain-prepared")
        if args.weights == "random":
            print("(random weights: the classes below are meaningless)")
        signals = _Signals()
        try:
            counts = pipeline.run(model, found.files, inputs.output_names(found.files), jobs, out=out, config=config,
                                  target=target, class_names=_class_names(model), batch_size=args.batch_size,
                                  precision=args.precision, stop=lambda: signals.received is not None,
                                  threads=args.decode_threads)
        finally:
            signals.restore()
        if counts.stopped and signals.received is not None:
            counts.stopped = signals.received
    distributed.barrier("jaxplain-finished")
    if writer and not counts.stopped:
        pipeline.join(out)
        if args.report:
            from jaxplain.runs import report

            print(f"report: {report.write(out)}")
    failed = counts.failed + (len(found.problems) if writer else 0)
    part = f" (process {jax.process_index()})" if jax.process_count() > 1 else ""
    print(f"jaxplain{part}: {counts.done} explained, {counts.skipped} skipped (already complete), {failed} failed"
          f"{'; stopped by a signal: rerun the command to finish' if counts.stopped else ''}", file=sys.stderr)
    if counts.stopped:
        return 128 + int(counts.stopped)
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from jaxplain.runs import outputs
    from jaxplain.runs import loop as pipeline
    from jaxplain.runs import report

    out = Path(args.out)
    if not (out / pipeline.RUN).is_file():
        raise InputError(f"{args.out}: no jaxplain run here (no {pipeline.RUN})")
    lock = outputs.Lock(out / ".lock.p0", f"into {out}")
    try:
        pipeline.join(out)
        print(f"report: {report.write(out, page_size=args.page_size)}")
    finally:
        lock.release()
    return 0


DEFAULT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "guided_backprop",
                   "grad_cam", "occlusion")


def _images_and_masks(paths: Sequence[str], mask_paths: Sequence[str] | None, model) -> tuple[list[int], list[np.ndarray], Any]:
    """``(positions, images, masks [N, H, W] or None)`` of the images that load, with their masks
    (white = the object, brought to the input by the model's resize); the rest reported, one line each."""
    import jax.numpy as jnp

    from jaxplain.io import load_image

    found, arrays, masks = [], [], []
    for i, path in enumerate(paths):
        try:
            img = load_image(path, model)
            mask = load_image(mask_paths[i], model).max(-1) > 127 if mask_paths else None
        except JaxplainError as e:
            print(f"jaxplain: failed {e}", file=sys.stderr)
            continue
        found.append(i)
        arrays.append(img)
        masks.append(mask)
    return found, arrays, jnp.asarray(np.stack(masks)) if mask_paths and found else None


def _check_evaluate_args(args: argparse.Namespace) -> Path:
    """``evaluate``'s arguments, checked before a model loads; the JSON file's path."""
    from jaxplain.comparison import check_specs

    if args.masks and not args.images:
        raise InputError("--masks goes with your images; the synthetic benchmark brings its own masks")
    if args.masks and len(args.masks) != len(args.images):
        n, k = len(args.images), len(args.masks)
        raise InputError(f"--masks gives {k} mask{'s' * (k > 1)} for {n} image{'s' * (n > 1)}: one mask per image, in order")
    if args.model == SYNTHETIC and args.weights not in ("shipped", "random"):
        raise InputError("--weights for synthetic_vgg is 'shipped' or 'random'")
    check_specs(args.methods, args.metrics, has_masks=not args.images or bool(args.masks))
    out = Path(args.json)
    if out.is_dir():
        raise InputError(f"--json {args.json}: is a folder, not a file")
    _output_folder(str(out.parent) if str(out.parent) else ".")
    return out


def _evaluate(args: argparse.Namespace) -> int:
    import json

    out = _check_evaluate_args(args)
    import jax.numpy as jnp

    from jaxplain import models
    from jaxplain.comparison import compare, table

    _compile_cache()
    if args.images:
        if args.model == SYNTHETIC:
            model = models.synthetic_vgg(None if args.weights == "random" else "shipped")
        else:
            model = _load_model(args)
        found, arrays, masks = _images_and_masks(args.images, args.masks, model)
        failed = len(args.images) - len(found)
        if not found:
            raise InputError("none of the images could be read")
        x = model.preprocess(np.stack(arrays))
        data = f"{len(found)} image{'s' * (len(found) > 1)}"
    else:
        failed = 0
        from jaxplain import synthetic

        model = models.synthetic_vgg()
        bench = synthetic.make(args.n, seed=args.seed)
        x, masks = model.preprocess(bench.images), jnp.asarray(bench.masks)
        data = f"{args.n} synthetic images (seed {args.seed})"
    print(f"{model.name} on {data}: {len(args.methods)} methods x {len(args.metrics)} metrics", flush=True)
    report = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731  (a line per cell, tty or log)
    method_seconds, cells = compare(model, x, "predicted", args.methods, args.metrics, masks=masks,
                                    batch_size=args.batch_size, seed=args.seed, report=report)
    print(table(method_seconds, cells))
    result = {"model": model.name, "data": data, "method_seconds": method_seconds,
              "cells": [{"method": c.method, "metric": c.metric, "mean": c.mean, "low": c.low, "high": c.high,
                         "seconds": c.seconds, "scores": c.scores.tolist()} for c in cells]}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 1 if failed else 0


def bench_model(name: str, size: int | None = None):
    """The model ``bench`` times, ``name`` of ``MODELS`` at input side ``size`` (default 224; VGG
    then takes Keras' head, else torchvision's): seeded random weights (speed does not depend on
    their values)."""
    from jaxplain import models

    if name == "resnet50":
        model = models.resnet50(None)
    elif name == "vit_b16":
        model = models.vit_b16(None)
    else:
        model = models.vgg(name, None, "torchvision" if size else "keras")
    return model.replace(input_size=(size, size)) if size else model


def bench_command(args: argparse.Namespace, pair: Callable | None = None) -> int:
    """``jaxplain bench``; ``pair(args)``, if given, returns ``(model, peer)``: the model to time
    and the peer timing of ``bench.run`` on a twin with the same weights (``python -m
    benchmarks.compare`` passes Captum's)."""
    import json

    from jaxplain import bench

    if args.size and args.model == "vit_b16":
        raise InputError("--size: vit_b16 takes 224x224 inputs only (its position embeddings are for a 14x14 grid)")
    model, peer = pair(args) if pair else (bench_model(args.model, args.size), None)
    rows = bench.run(model, args.methods, args.batch, precision=args.precision, rounds=args.rounds,
                     min_time=args.min_time, peer=peer)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        info = {k: rows[0][k] for k in ("platform", "device_kind", "device_count", "jax", "jaxlib", "host")}
        Path(args.json).write_text(json.dumps({"device": info, "peak_flops_per_s": rows[0]["peak_flops_per_s"], "rows": rows}, indent=1, default=str))
    return 0


def _columns(names: Sequence[str], indent: str = "  ", width: int = 88) -> str:
    lines, line = [], indent
    for n in names:
        if len(line) + len(n) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += n + " "
    return "\n".join([*lines, line.rstrip()])


EXPLAIN_EPILOG = f"""methods (settings in parentheses, e.g. --method "integrated_gradients(steps=64)"):
{_columns(sorted(METHODS))}

reductions (--reduce, how a [H, W, C] attribution becomes the picture's map; CAMs and RISE
are maps already):
{_columns(REDUCTIONS)}

examples:
  jaxplain explain cat.jpg --method grad_cam --out out/
  jaxplain explain photos/*.jpg --method "smoothgrad(samples=32)" --batch-size 4 --out out/
"""


EVALUATE_EPILOG = f"""metrics (settings in parentheses, e.g. --metrics "deletion(steps=16)"):
{_columns(sorted(METRICS))}

examples:
  jaxplain evaluate                                   # every metric, the default methods, the synthetic benchmark
  jaxplain evaluate --methods gradient grad_cam --metrics deletion insertion -n 50
  jaxplain evaluate photos/*.jpg --masks masks/*.png --model vgg16 --metrics pointing_game relevance_mass
"""


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxplain", description="Explain image classifiers: predict classes, write heat maps "
                "(PNG) and raw attributions (NPY), and measure speed.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pr = sub.add_parser("predict", help="print the top ImageNet classes of each image",
                        description="Print the top ImageNet classes of each image.")
    _model_args(pr)
    pr.add_argument("--top", type=_positive, default=5, help="how many classes (default 5)")
    pr.set_defaults(run=_predict)
    ex = sub.add_parser("explain", help="explain images, folders, globs or @lists: heat maps, attributions, a report",
                        description="Explain every image of the inputs with one or more methods. Writes into --out: "
                        "a PNG overlay per image and method over the original picture (METHOD/<path>.png), the raw "
                        "attributions in one zarr array per method (METHOD/attributions.zarr), results.jsonl (a line "
                        "per image and method) and, with --report, index.html. A rerun skips what is complete.",
                        epilog=EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(ex)
    ex.add_argument("--method", action="append", metavar="METHOD",
                    help="a method name, with settings if you like: \"integrated_gradients(steps=32)\"; repeat for "
                    "several methods (default gradient; list below)")
    ex.add_argument("--target", default="predicted", help="'predicted' (the top class, the default) or a class index")
    ex.add_argument("--out", required=True, help="folder for the results (created)")
    ex.add_argument("--report", action="store_true", help="write OUT/index.html: pictures, top-5 and heat maps")
    ex.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="of the stored attributions")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace results in OUT made with other settings (default: refuse to mix them)")
    ex.add_argument("--batch-size", type=_positive, default=8, help="images per compiled call (default 8)")
    ex.add_argument("--seed", type=int, default=0, help="seed of random methods; each image's key also folds in its "
                    "file's path, so results do not depend on --batch-size or the other inputs (default 0)")
    ex.add_argument("--precision", choices=PRECISIONS, help="the model's arithmetic (default: JAX's)")
    ex.add_argument("--reduce", default="abs_max", choices=REDUCTIONS, metavar="REDUCTION",
                    help="how channels collapse for the picture (default abs_max; list below)")
    ex.add_argument("--cmap", default="inferno", help="matplotlib colour map of maps >= 0 (default inferno)")
    ex.add_argument("--signed-cmap", default="RdBu_r",
                    help="matplotlib colour map of maps with negative values (default RdBu_r)")
    ex.add_argument("--decode-threads", type=_positive, default=None,
                    help="threads decoding images ahead of the model (default min(4, CPUs))")
    ex.add_argument("--coordinator", help="HOST:PORT of process 0, to split the images over several processes")
    ex.add_argument("--num-processes", type=_positive, help="with --coordinator: how many processes")
    ex.add_argument("--process-id", type=int, help="with --coordinator: this process's index")
    ex.set_defaults(run=_explain)
    re_ = sub.add_parser("report", help="write OUT/index.html for the results of an explain run",
                         description="Join a multi-process run's parts and write OUT/index.html.")
    re_.add_argument("out", metavar="OUT", help="the --out folder of jaxplain explain")
    re_.add_argument("--page-size", type=_positive, default=50, help="images per page (default 50)")
    re_.add_argument("--debug", action="store_true", help="show the traceback of an error")
    re_.set_defaults(run=_report)
    ev = sub.add_parser("evaluate", help="score methods with faithfulness, localisation and sanity metrics",
                        description="Explain images with each method, score each explanation with each metric, and "
                        "print the mean and a 95% interval over the images, with the seconds taken. Without images: "
                        "the synthetic ground-truth benchmark and its shipped model.", epilog=EVALUATE_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("images", nargs="*", metavar="IMAGE", help="your images (default: the synthetic benchmark)")
    ev.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD")
    ev.add_argument("--metrics", nargs="+", default=None, metavar="METRIC", help="default: all (those needing masks "
                    "only with masks)")
    ev.add_argument("--masks", nargs="+", metavar="MASK", help="one ground-truth mask picture per image (white = the object)")
    ev.add_argument("--model", default=None, choices=(*MODELS, SYNTHETIC),
                    help="default: synthetic_vgg without images, vgg16 with")
    ev.add_argument("--weights", default=None, help="as for explain (default imagenet; synthetic_vgg: shipped)")
    ev.add_argument("--source", choices=SOURCE_NAMES, default=None, help="as for explain")
    ev.add_argument("-n", type=_positive, default=200, help="synthetic images (default 200)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and of random methods and metrics")
    ev.add_argument("--batch-size", type=_positive, default=32, help="images per compiled call (default 32)")
    ev.add_argument("--json", default="evaluation.json", help="where to write every score (default evaluation.json)")
    ev.add_argument("--debug", action="store_true", help="show the traceback of an error")
    ev.set_defaults(run=_evaluate)
    be = sub.add_parser("bench", help="measure images/s, %% of the matmul peak and memory",
                        description="Measure images/s, the fraction of a matmul probe's FLOP/s and memory per method "
                        "(python -m benchmarks.compare adds Captum alongside).")
    be.add_argument("--methods", nargs="+", default=["gradient", "integrated_gradients", "smoothgrad", "guided_backprop"])
    be.add_argument("--batch", nargs="+", type=_positive, default=[1, 8])
    be.add_argument("--model", default="vgg16", choices=MODELS, help="with seeded random weights (default vgg16)")
    be.add_argument("--size", type=_positive, default=None, help="input side (VGG: torchvision's head; resnet50); "
                    "default 224 (VGG: Keras' head)")
    be.add_argument("--rounds", type=_positive, default=3)
    be.add_argument("--min-time", type=float, default=1.0, help="seconds each case is timed for at least")
    be.add_argument("--precision", choices=PRECISIONS, help="the model's arithmetic (default: JAX's)")
    be.add_argument("--json", help="write every measured field here")
    be.set_defaults(run=bench_command)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"jaxplain: warning: {message}", file=sys.stderr)


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other arguments (the weights of a model, ``evaluate``'s model and metrics)."""
    if getattr(args, "command", None) in ("predict", "explain"):
        args.weights = args.weights or ("shipped" if args.model == SYNTHETIC else "imagenet")
        if args.model == SYNTHETIC and args.weights == "imagenet":
            raise InputError("--weights for synthetic_vgg is 'shipped', 'random' or a safetensors file")
    if getattr(args, "command", None) == "evaluate":
        args.model = args.model or ("vgg16" if args.images else SYNTHETIC)
        args.weights = args.weights or ("shipped" if args.model == SYNTHETIC else "imagenet")
        if args.metrics is None:
            from jaxplain.registry import settings_of

            masked = not args.images or bool(args.masks)
            args.metrics = [k for k, f in METRICS.items() if masked or "mask" not in settings_of(f)]
    source = getattr(args, "source", None)
    if source is not None and getattr(args, "model", None) in MODELS:
        allowed = SOURCES[args.model]
        if source not in allowed:
            raise InputError(f"--source {source} has no {args.model} weights; {args.model} takes {' or '.join(allowed)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        return args.run(_defaults(args))
    except JaxplainError as e:
        if debug:
            raise
        print(f"jaxplain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001  (a bug of ours or of a library: one line, the traceback with --debug)
        if debug:
            raise
        print(f"jaxplain: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
