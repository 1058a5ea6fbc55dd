"""The ``jaxplain`` command line: predict and explain images with a model of the zoo or your own
(``--model package.module:function``).

Every argument is checked before a model is loaded; an error is one line on stderr (exit 2),
a bad image one "failed" line while the others go on. ``explain``'s exit status: 0 all done, 1 some
work failed (a method or a write), 4 all done but some inputs unreadable (also ``predict``'s and
``evaluate``'s), 128 + N stopped by signal N."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from jaxplain.cli import bench, common, concepts, evaluate, explain, predict, report
from jaxplain.errors import InputError, JaxplainError
from jaxplain.registry import METRICS


def parser() -> argparse.ArgumentParser:
    """The ``jaxplain`` parser: one subparser per module of this package."""
    p = common.Parser(prog="jaxplain", description="Explain image classifiers: predict classes, write heat maps "
                "(PNG) and raw attributions (zarr arrays), and measure speed.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    for command in (predict, explain, concepts, report, evaluate, bench):
        command.add_parser(sub)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"jaxplain: warning: {message}", file=sys.stderr)


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other arguments (the weights of a model, ``evaluate``'s model and metrics)."""
    from jaxplain.models import zoo

    if getattr(args, "command", None) == "evaluate":
        args.model = args.model or ("vgg16" if args.images else common.SYNTHETIC)
    if getattr(args, "command", None) in ("predict", "explain", "concepts", "evaluate", "bench"):
        common.check_user_model(args)  # --model package.module:function imported (not called) here
    if getattr(args, "command", None) in ("predict", "explain", "concepts", "evaluate") and not common.is_spec(args.model):
        known = zoo.entry(args.model).weights
        args.weights = args.weights or known[0]
        if args.weights in {w for e in zoo.ZOO.values() for w in e.weights} - set(known):  # another model's
            raise InputError(f"--weights for {args.model} is {' or '.join(map(repr, (*known, 'random')))}, "
                             "or a weight file's path")
    if getattr(args, "command", None) == "evaluate":
        if args.metrics is None:
            from jaxplain.registry import settings_of

            masked = not args.images or bool(args.masks)
            args.metrics = [k for k, f in METRICS.items() if masked or "mask" not in settings_of(f)]
    if getattr(args, "source", None) is not None:
        zoo.check_source(args.model, args.source)
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
