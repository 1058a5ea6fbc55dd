"""``jaxplain concepts``: each channel of a layer, its most relevant and most active pictures of a
folder, with crops where its conditional relevance lies (``jaxplain.runs.concepts``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from jaxplain.cli import common
from jaxplain.errors import InputError, JaxplainError
from jaxplain.propagation.composites import COMPOSITES


def channels_arg(text: str) -> list[int]:
    """``"0,3,5"`` -> ``[0, 3, 5]``: distinct channel indices >= 0."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes channel indices separated by commas, e.g. 0,3,5; got {text!r}") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"takes distinct channel indices >= 0 separated by commas, got {text!r}")
    return values


def check_layer(model: Any, layer: str, channels: list[int] | None, composite: str) -> list[int]:
    """The channels (``None``: all of the layer) after checking ``layer`` and the channels on the
    loaded model, and tracing the relevance walk to it: an ``InputError`` before any picture."""
    import jax

    from jaxplain.engine.shapes import check_layer as layer_shape
    from jaxplain.methods.relevance import box_for_model, channel_relevance

    h, w = model.input_size or (224, 224)
    shape = layer_shape(model, (h, w, model.channels), layer)
    k = shape[-1]
    bad = [c for c in channels or () if c >= k]
    if bad:
        raise InputError(f"--channels {', '.join(map(str, bad))} out of range: layer {layer!r} has {k} channels [0, {k})")
    chosen = list(channels) if channels else list(range(k))
    x = jax.ShapeDtypeStruct((h, w, model.channels), jax.numpy.float32)
    box = box_for_model(model.preprocess, model.channels)
    jax.eval_shape(lambda v: channel_relevance(model.apply, model.params, v, 0, layer=layer, channels=tuple(chosen),
                                               composite=composite, box=box), x)
    return chosen


def run(args: argparse.Namespace) -> int:
    created = not Path(args.out).exists()
    try:
        return _run(args)
    finally:  # a run refused before any work leaves no folder of its own behind
        if created and Path(args.out).is_dir() and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()


def _run(args: argparse.Namespace) -> int:
    from jaxplain.cli.explain import model_record
    from jaxplain.runs import concepts, inputs, outputs, report

    out = common.output_folder(args.out)
    if args.report:
        report.check_writable(out)
    found = inputs.expand(args.images, exclude=out)
    for problem in found.problems:
        print(f"jaxplain: failed {problem.argument}: {problem.message}", file=sys.stderr)
    config = {"model": model_record(args), "layer": args.layer, "channels": args.channels,
              "composite": args.composite, "top": args.top}
    lock = outputs.Lock(out / ".lock.p0", f"into {out}")
    try:
        state = concepts.start(out, config, overwrite=args.overwrite)
        if not found.files:
            print(f"jaxplain: nothing to look at, {len(found.problems)} input(s) refused (above)", file=sys.stderr)
            return 1
        return _concepts(args, out, found.files, state)
    finally:
        lock.release()


def _concepts(args: argparse.Namespace, out: Path, files: list, state: dict[str, Any]) -> int:
    import numpy as np

    from jaxplain.io import load_for_model, picture_mode
    from jaxplain.runs import concepts, record
    from jaxplain.runs.progress import Progress

    model = common.load_model(args)
    picture_mode(model)
    channels = check_layer(model, args.layer, args.channels, args.composite)
    if args.weights == "random":
        print("(random weights: the classes below are meaningless)")
    todo = []
    for path in files:
        key, content = os.path.realpath(path), record.fingerprint(path)
        seen = state["seen"].get(key)
        if seen is not None and seen["content"] == (list(content) if content else None):
            continue
        if seen is not None:  # changed since: its old scores go
            for tops in state["top"].values():
                for kind in concepts.KINDS:
                    tops[kind] = [e for e in tops[kind] if e[1] != key]
        todo.append((key, content))
    skipped = len(files) - len(todo)
    score = concepts.scorer(model, args.layer, channels, args.composite)
    counts = _Counts()
    progress = Progress(len(todo), counts)
    signals = common.Signals()
    try:
        for i in range(0, len(todo), args.batch_size):
            if signals.received is not None:
                counts.stopped = True
                break
            keys, images = [], []
            for key, content in todo[i:i + args.batch_size]:
                try:
                    images.append(load_for_model(key, model).image)
                    keys.append((key, content))
                except JaxplainError as e:
                    counts.failed += 1
                    state["failed"][key] = str(e)
                    progress.say(f"jaxplain: failed {e}")
                    progress.unreadable()
            if not images:
                continue
            n = len(images)
            batch = np.stack(images + [images[0]] * (args.batch_size - n))  # one compiled shape
            predicted, relevance, activation = (v[:n] for v in score(batch))
            paths = [k for k, _ in keys]
            for j, c in enumerate(channels):
                tops = state["top"].setdefault(str(c), {kind: [] for kind in concepts.KINDS})
                tops["relevance"] = concepts.merge(tops["relevance"], relevance[:, j], paths, args.top)
                tops["activation"] = concepts.merge(tops["activation"], activation[:, j], paths, args.top)
            for (key, content), p in zip(keys, predicted):
                state["seen"][key] = {"content": list(content) if content else None, "predicted": int(p)}
                state["failed"].pop(key, None)
            concepts.save(out, state)
            counts.done += n
            progress.update(n)
    finally:
        signals.restore()
        progress.close()
    if counts.stopped:
        print(f"jaxplain: {counts.done} scored, {skipped} skipped (already scored); stopped by a signal: rerun the "
              "command to finish", file=sys.stderr)
        return 128 + int(signals.received or 2)
    lines = concepts.write_crops(out, state, lambda p: load_for_model(p, model).image,
                                 {kind: concepts.mapper(model, args.layer, args.composite, kind)
                                  for kind in concepts.KINDS}, args.batch_size)
    concepts.save(out, state)
    if args.report:
        print(f"report: {concepts.write_report(out, state, lines)}")
    print(f"jaxplain: {counts.done} scored, {skipped} skipped (already scored), {counts.failed} failed; "
          f"{len(lines)} crops of {len(channels)} channels in {out}", file=sys.stderr)
    return 4 if counts.failed else 0


class _Counts:
    done = failed = unreadable = 0
    stopped = False


EPILOG = f"""composites (--composite): {', '.join(COMPOSITES)}

writes into --out: concepts.json (settings, pictures seen, the running top lists: a rerun goes on
from it), channel_NNNN/relevance_R.png and activation_R.png (the crops, rank R from 1),
concepts.jsonl (a line per crop: channel, kind, rank, score, picture, box) and, with --report,
index.html.

exit status: 0 all done; 1 nothing to look at; 2 an argument error; 4 done, but some pictures
unreadable; 130 or 143 stopped by a signal (rerun to finish)

examples:
  jaxplain concepts photos/ --layer block4_conv3 --channels 0,3,5 --top 8 --out concepts/ --report
  jaxplain concepts digits/ --model mynets.lenet:build --layer conv2 --out concepts/
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``jaxplain concepts``' subparser on ``sub``, run by ``run``."""
    p = sub.add_parser("concepts", help="each channel of a layer: its most relevant and most active pictures, cropped",
                       description="Relevance maximisation over a folder of pictures: for each channel of --layer, "
                       "the pictures where it is most relevant to the predicted class (LRP relevance at the layer) "
                       "and those where it is most active, with crops of where its conditional relevance (CRP) lies. "
                       "Streamed a batch at a time; a rerun goes on where the last one stopped.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_args(p)
    p.add_argument("--layer", required=True, help="the layer whose channels are the concepts (e.g. block4_conv3)")
    p.add_argument("--channels", type=channels_arg, default=None, metavar="0,3,5",
                   help="channel indices separated by commas (default: all of the layer)")
    p.add_argument("--top", type=common.positive, default=8, help="reference pictures per channel and kind (default 8)")
    p.add_argument("--composite", default="epsilon_plus", choices=tuple(COMPOSITES), metavar="COMPOSITE",
                   help="LRP composite (default epsilon_plus; list below)")
    p.add_argument("--out", required=True, help="folder for the results (created)")
    p.add_argument("--report", action="store_true", help="write OUT/index.html: each channel's reference crops")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUT of a run with other settings")
    p.add_argument("--batch-size", type=common.positive, default=8, help="pictures per compiled call (default 8)")
    p.set_defaults(run=run)
    return p
