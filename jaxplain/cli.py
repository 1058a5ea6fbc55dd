"""The ``jaxplain`` command line: ``predict`` and ``explain`` images with a model of the zoo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxplain.errors import JaxplainError

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


def _load_model(args: argparse.Namespace):
    from jaxplain import models

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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxplain", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="print the top ImageNet classes of each image")
    _model_args(pr)
    pr.add_argument("--top", type=int, default=5)
    pr.set_defaults(run=_predict)
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
