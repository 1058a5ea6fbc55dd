"""``jaxplain bench``: images/s, % of the matmul peak and memory per method."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from jaxplain.cli import common
from jaxplain.engine.precision import PRECISIONS
from jaxplain.errors import InputError

MIN_ROUNDS = 5  # interleaved rounds a ratio beside a peer needs


def bench_model(name: str, size: int | None = None):
    """The model ``bench`` times, the zoo's ``name`` at input side ``size`` (default its own; a
    size takes the zoo's ``any_size`` source, VGG's torchvision head): seeded random weights
    (speed does not depend on their values)."""
    from jaxplain.models import zoo

    _check_size(name, size)
    model = zoo.load(name, None, zoo.entry(name).any_size if size else None)
    return model.replace(input_size=(size, size)) if size else model


def _check_size(name: str, size: int | None) -> None:
    """An ``InputError`` if ``bench --size`` asks a model of a fixed input size for another."""
    from jaxplain.models.zoo import entry

    if size and entry(name).any_size is None:
        raise InputError(f"--size: {name} takes its own input size only (no weights of it take other sizes)")


def run(args: argparse.Namespace, pair: Callable | None = None) -> int:
    """``jaxplain bench``; ``pair(args)``, if given, returns ``(model, peer)``: the model to time
    and the peer for ``bench.run`` (``peer(case)``: a no-argument call of the peer's counterpart on
    a twin with the same weights, timed beside ours by ``jaxplain.timing.side_by_side``; ``python
    -m benchmarks.compare`` passes Captum's)."""
    import json

    from jaxplain import bench

    if pair is not None and args.rounds < MIN_ROUNDS:
        raise InputError(f"--rounds: a ratio beside a peer needs at least {MIN_ROUNDS} interleaved rounds, "
                         f"not {args.rounds}")
    if common.is_spec(args.model):  # your own model (jaxplain bench only): as it comes, at its own input size
        model, peer = common.load_model(args), None
    else:
        _check_size(args.model, args.size)
        model, peer = pair(args) if pair else (bench_model(args.model, args.size), None)
    rows = bench.run(model, args.methods, args.batch, precision=args.precision, rounds=args.rounds,
                     warmup=args.warmup, min_time=args.min_time, compete=args.compete, peer=peer)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        info = {k: rows[0][k] for k in ("platform", "device_kind", "device_count", "jax", "jaxlib", "host")}
        Path(args.json).write_text(json.dumps({"device": info, "peak_flops_per_s": rows[0]["peak_flops_per_s"], "rows": rows}, indent=1, default=str))
    return 0


def bench_args(be: argparse.ArgumentParser, own_models: bool = False) -> None:
    """``bench``'s options, on its subcommand and on ``python -m benchmarks.compare``'s own parser
    (``own_models``: ``--model`` also takes ``package.module:function`` with ``--model-arg``)."""
    from jaxplain.models.zoo import ZOO

    be.add_argument("--methods", nargs="+", default=["gradient", "integrated_gradients", "smoothgrad", "guided_backprop"])
    be.add_argument("--batch", nargs="+", type=common.positive, default=[1, 8])
    if own_models:
        be.add_argument("--model", default="vgg16", type=common.model_name, metavar="MODEL",
                        help=common.MODEL_HELP.format(default=" (default vgg16), with seeded random weights",
                                                      zoo=", ".join(ZOO)))
        be.add_argument("--model-arg", action="append", type=common.model_arg, metavar="KEY=VALUE",
                        help=common.MODEL_ARG_HELP)
    else:
        be.add_argument("--model", default="vgg16", choices=tuple(ZOO), help="with seeded random weights (default vgg16)")
    be.add_argument("--size", type=common.positive, default=None, help="input side (VGG: torchvision's head; resnet50); "
                    "default the model's own (VGG: 224, Keras' head)")
    be.add_argument("--rounds", type=common.positive, default=5,
                    help=f"timed rounds per case (default 5; beside a peer interleaved, at least {MIN_ROUNDS})")
    be.add_argument("--warmup", type=common.count, default=1, help="warm-up calls of each side before the rounds (default 1)")
    be.add_argument("--min-time", type=float, default=0.0,
                    help="seconds of further warm-up calls (each side in turn) before the rounds (default 0)")
    be.add_argument("--compete", type=common.count, default=0, metavar="N",
                    help="also time every case beside N busy processes (the shared-machine regime): "
                    "each case quiet, then busy")
    be.add_argument("--precision", choices=PRECISIONS, help="the model's arithmetic (default: JAX's)")
    be.add_argument("--json", help="write every measured field here")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``jaxplain bench``'s subparser on ``sub`` (``add_subparsers``' result), run by ``run``."""
    be = sub.add_parser("bench", help="measure images/s, %% of the matmul peak and memory",
                        description="Measure images/s, the fraction of a matmul probe's FLOP/s and memory per method "
                        "(python -m benchmarks.compare adds Captum alongside).")
    bench_args(be, own_models=True)
    be.set_defaults(run=run)
    return be
