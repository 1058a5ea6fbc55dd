"""``jaxplain predict``: the top classes of each image."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from jaxplain.cli import common


def run(args: argparse.Namespace) -> int:
    from jaxplain.runs import inputs
    from jaxplain.runs.loop import softmax

    found = inputs.expand(args.images)
    for problem in found.problems:
        print(f"jaxplain: failed {problem.argument}: {problem.message}", file=sys.stderr)
    if not found.files:
        return 1
    model = common.load_model(args)
    labels = common.labels(model, args.model)
    if args.weights == "random":
        print("(random weights: the classes below are meaningless)")
    failed, said = len(found.problems), []
    for path in found.files:
        ok, arrays = common.images([str(path)], model, said)
        failed += not ok
        for img in arrays:
            logits = np.asarray(model(model.preprocess(img[None])), np.float64)
            print(path)
            probs = softmax(logits[0])
            for rank, c in enumerate(np.argsort(-probs, kind="stable")[: args.top], 1):
                ident, name = labels[c] if labels else (str(c), str(c))  # ImageNet's: (wnid, name)
                print(f"  {rank}. {name:<32} {ident}  {probs[c]:.4f}")
    return 4 if failed else 0  # all done, some inputs unreadable


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``jaxplain predict``'s subparser on ``sub`` (``add_subparsers``' result), run by ``run``."""
    pr = sub.add_parser("predict", help="print the model's top classes of each image",
                        description="Print the model's top classes of each image, with their probabilities.",
                        epilog="exit status: 0 all done; 1 no input found; 2 an argument error; 4 all done, but some "
                        "inputs unreadable (a 'failed' line each)")
    common.model_args(pr)
    pr.add_argument("--top", type=common.positive, default=5, help="how many classes (default 5)")
    pr.set_defaults(run=run)
    return pr
