"""``jaxplain explain``: a folder of pictures explained, streamed, resumed and reported (``jaxplain.runs``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from jaxplain.cli import common
from jaxplain.engine.precision import PRECISIONS
from jaxplain.errors import InputError
from jaxplain.reductions import REDUCTIONS
from jaxplain.registry import METHODS


def check_explain_args(args: argparse.Namespace) -> tuple[list, Any, Path]:
    """Everything about ``explain``'s arguments that can be checked without a model: the jobs,
    the target, the output folder (created)."""
    from jaxplain import viz
    from jaxplain.runs import record, report

    if args.coordinator and (args.num_processes is None or args.process_id is None):
        raise InputError("--coordinator needs --num-processes and --process-id")
    if not args.coordinator and (args.num_processes is not None or args.process_id is not None):
        raise InputError("--num-processes and --process-id need --coordinator HOST:PORT")
    if args.coordinator and not 0 <= args.process_id < args.num_processes:
        raise InputError(f"--process-id must be in [0, {args.num_processes}), got {args.process_id}")
    try:  # the methods the folder has: one with the same settings keeps its label
        recorded = (record.read(Path(args.out)) or {}).get("methods", []) if Path(args.out).is_dir() else []
    except InputError:
        if not args.overwrite:
            raise
        recorded = []
    jobs = record.jobs(args.method or ["gradient"], args.seed, recorded)
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
    out = common.output_folder(args.out)
    if args.report:
        report.check_writable(out)
    return jobs, target, out


def model_record(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies the weights of a run (a file by its path, size and time); of your own
    model, its spec and ``--model-arg`` values (``common.user_record``)."""
    from jaxplain.models.zoo import entry

    if common.is_spec(args.model):
        return common.user_record(args)
    record: dict[str, Any] = {"name": args.model, "weights": args.weights, "source": args.source}
    named = (*entry(args.model).weights, "random")
    if args.weights not in named:
        path = Path(args.weights)
        if not path.is_file():
            raise InputError(f"--weights {args.weights}: no such file (or {', '.join(map(repr, named))})")
        stat = path.stat()
        record.update(weights=str(path.resolve()), bytes=stat.st_size, modified=stat.st_mtime_ns)
    return record


def run(args: argparse.Namespace) -> int:
    created = not Path(args.out).exists()
    try:
        return _run(args)
    finally:  # a run refused or with nothing to explain leaves no folder of its own behind
        if created and Path(args.out).is_dir() and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()


def _run(args: argparse.Namespace) -> int:
    from jaxplain.runs import inputs, outputs, record

    jobs, target, out = check_explain_args(args)
    found = inputs.expand(args.images, exclude=out)  # never the results of an earlier run
    for problem in found.problems:
        print(f"jaxplain: failed {problem.argument}: {problem.message}", file=sys.stderr)
    weights = model_record(args)
    config = record.configuration(weights, jobs, target=target, dtype=args.dtype, reduce=args.reduce,
                                    colormaps={"unsigned": args.cmap, "signed": args.signed_cmap})
    if args.coordinator:
        from jaxplain import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax

    from jaxplain.runs import loop

    loop.check_values(jobs)  # setting values, on a stand-in network: before the model loads (after JAX's
    # multi-process start, which must come before any computation)

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
    from jaxplain.runs import inputs, record
    from jaxplain.runs import loop as pipeline
    from jaxplain.runs.join import join

    record.prepare(out, config, overwrite=args.overwrite, writer=False)  # refuses results of other settings
    counts = pipeline.Counts()
    if found.files:
        from jaxplain.engine.shapes import num_classes
        from jaxplain.io import picture_mode

        model = common.load_model(args)
        picture_mode(model)  # a model of neither 1 nor 3 channels takes arrays, not pictures: refused here
        h, w = model.input_size or (224, 224)
        pipeline.check_jobs(model, jobs, (h, w, model.channels))  # a layer, a neuron or a value refused here, before any image
        k = num_classes(model, (h, w, model.channels))
        if target != "predicted" and target >= k:
            raise InputError(f"--target {target} is outside [0, {k}) for {model.name}")
        config = record.prepare(out, config, overwrite=args.overwrite, writer=writer)
        distributed.barrier("jaxplain-prepared")
        if args.weights == "random":
            print("(random weights: the classes below are meaningless)")
        signals = common.Signals()
        try:
            counts = pipeline.run(model, found.files, inputs.output_names(found.files), jobs, out=out, config=config,
                                  target=target, class_names=common.class_names(model, args.model), batch_size=args.batch_size,
                                  precision=args.precision, stop=lambda: signals.received is not None,
                                  threads=args.decode_threads)
        finally:
            signals.restore()
        if counts.stopped and signals.received is not None:
            counts.stopped = signals.received
    distributed.barrier("jaxplain-finished")
    if writer:
        record.settle(out)  # the record names only methods with results
    if writer and not counts.stopped:
        join(out)
        if args.report:
            from jaxplain.runs import report

            print(f"report: {report.write(out)}")
    unreadable = counts.unreadable + (len(found.problems) if writer else 0)
    part = f" (process {jax.process_index()})" if jax.process_count() > 1 else ""
    said = f"{counts.done} explained, {counts.skipped} skipped (already complete), {counts.failed} failed"
    if counts.redone:
        said += f" ({counts.redone} explained again: changed since their results)"
    if counts.stopped:
        said += f"{f', {unreadable} unreadable' if unreadable else ''}; stopped by a signal: rerun the command to finish"
    elif not found.files:
        said = f"nothing to explain, {unreadable} input{'s' if unreadable != 1 else ''} refused (above): {said}"
    elif unreadable and not counts.failed:
        said = f"complete, {unreadable} unreadable: {said}"
    elif unreadable:
        said += f", {unreadable} unreadable"
    print(f"jaxplain{part}: {said}", file=sys.stderr)
    if counts.stopped:
        return 128 + int(counts.stopped)
    return 1 if counts.failed or not found.files else 4 if unreadable else 0  # nothing to explain is no success


EXPLAIN_EPILOG = f"""methods (settings in parentheses, e.g. --method "integrated_gradients(steps=64)"):
{common.columns(sorted(METHODS))}

reductions (--reduce, how a [H, W, C] attribution becomes the picture's map; CAMs and RISE
are maps already):
{common.columns(REDUCTIONS)}

exit status: 0 all done; 1 some work failed (a method or a write), or nothing was there to explain;
2 an argument error; 4 all done, but some inputs unreadable (listed in the report); 130 or 143
stopped by a signal (rerun to finish)

examples:
  jaxplain explain cat.jpg --method grad_cam --out out/
  jaxplain explain photos/*.jpg --method "smoothgrad(samples=32)" --batch-size 4 --out out/
  jaxplain explain scans/ --model mynets.lenet:build --model-arg width=16 --method grad_cam --out out/ --report
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``jaxplain explain``'s subparser on ``sub`` (``add_subparsers``' result), run by ``run``."""
    ex = sub.add_parser("explain", help="explain images, folders, globs or @lists: heat maps, attributions, a report",
                        description="Explain every image of the inputs with one or more methods. Writes into --out: "
                        "a PNG overlay per image and method over the original picture (METHOD/<path>.png), the raw "
                        "attributions in one zarr array per method (METHOD/attributions.zarr), results.jsonl (a line "
                        "per image and method) and, with --report, index.html. A rerun skips what is complete.",
                        epilog=EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_args(ex)
    ex.add_argument("--method", action="append", metavar="METHOD",
                    help="a method name, with settings if you like: \"integrated_gradients(steps=32)\"; repeat for "
                    "several methods (default gradient; list below)")
    ex.add_argument("--target", default="predicted", help="'predicted' (the top class, the default) or a class index")
    ex.add_argument("--out", required=True, help="folder for the results (created)")
    ex.add_argument("--report", action="store_true", help="write OUT/index.html: pictures, top-5 and heat maps "
                    "(only over a report of ours)")
    ex.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="of the stored attributions")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace the results in OUT that conflict with this run (a method's other settings; all of them "
                    "for another model, target, dtype, reduction or colour map); others stay (default: refuse)")
    ex.add_argument("--batch-size", type=common.positive, default=8, help="images per compiled call (default 8)")
    ex.add_argument("--seed", type=int, default=0, help="seed of random methods; each image's key also folds in its "
                    "file's path, so results do not depend on --batch-size or the other inputs (default 0)")
    ex.add_argument("--precision", choices=PRECISIONS, help="the model's arithmetic (default: JAX's)")
    ex.add_argument("--reduce", default="abs_max", choices=REDUCTIONS, metavar="REDUCTION",
                    help="how channels collapse for the picture (default abs_max; list below)")
    ex.add_argument("--cmap", default="inferno", help="matplotlib colour map of maps >= 0 (default inferno)")
    ex.add_argument("--signed-cmap", default="RdBu_r",
                    help="matplotlib colour map of maps with negative values (default RdBu_r)")
    ex.add_argument("--decode-threads", type=common.positive, default=None,
                    help="threads decoding images ahead of the model (default min(4, CPUs))")
    ex.add_argument("--coordinator", help="HOST:PORT of process 0, to split the images over several processes")
    ex.add_argument("--num-processes", type=common.positive, help="with --coordinator: how many processes")
    ex.add_argument("--process-id", type=int, help="with --coordinator: this process's index")
    ex.set_defaults(run=run)
    return ex
