"""What the subcommands share: the parser class, the model arguments and loading, image loading,
class names, signals."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np

from jaxplain.errors import InputError, JaxplainError

SYNTHETIC = "synthetic_vgg"  # evaluate's model without images (the models, their weights and sources: models/zoo.py)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"jaxplain: error: {message} (see {self.prog} --help)\n")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _zoo_help(field: str) -> str:
    """Each model of the zoo with its named weights or its sources (the default first)."""
    from jaxplain.models.zoo import ZOO

    return "; ".join(f"{name}: {', '.join(getattr(e, field))}" for name, e in ZOO.items() if getattr(e, field))


def model_args(p: argparse.ArgumentParser) -> None:
    from jaxplain.models.zoo import ZOO, source_names

    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively), globs, or @list.txt (a path per line)")
    p.add_argument("--model", default="vgg16", choices=tuple(ZOO), metavar="MODEL",
                   help=f"the zoo's model (default vgg16): {', '.join(ZOO)}")
    p.add_argument(
        "--weights",
        default=None,
        help="the model's named weights (the first is the default; 'imagenet' downloads the published file), "
        f"a weight file path, or 'random' (seeded random weights, for trying the pipeline offline): {_zoo_help('weights')}",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--source", choices=source_names(), default=None,
                   help=f"whose weights and preprocessing (the first is the default; a file's own by default): "
                   f"{_zoo_help('sources')}")


def compile_cache() -> None:
    """Keep compiled programs under ``$JAXPLAIN_HOME/xla-cache``, so a repeated run does not
    recompile (``JAXPLAIN_COMPILE_CACHE=0`` turns this off; a ``JAX_COMPILATION_CACHE_DIR`` set in
    the environment is JAX's own setting and wins)."""
    import jax

    from jaxplain.models.weights import home

    if os.environ.get("JAXPLAIN_COMPILE_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", str(home() / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def load_model(args: argparse.Namespace):
    """The zoo's ``args.model`` with ``args.weights`` (``random``: seeded random weights) from ``args.source``."""
    from jaxplain.models import zoo
    from jaxplain.models.weights import OfflineError

    compile_cache()
    weights = None if args.weights == "random" else args.weights
    try:
        return zoo.load(args.model, weights, args.source)
    except OfflineError as e:
        raise e.with_argument("--weights") from None


def images(paths: Sequence[str], model) -> tuple[list[int], list[np.ndarray]]:
    """``(positions, arrays)`` of what loads; the rest is reported, one line each."""
    from jaxplain.io import load_image, picture_mode

    picture_mode(model)  # a model of neither 1 nor 3 channels: one error, not one per picture
    ok, arrays = [], []
    for i, path in enumerate(paths):
        try:
            arrays.append(load_image(path, model))
            ok.append(i)
        except JaxplainError as e:
            print(f"jaxplain: failed {e}", file=sys.stderr)
    return ok, arrays


def labels(model, name: str | None = None) -> tuple[tuple[str, str], ...] | None:
    """``(id, name)`` of each of ``model``'s classes from the zoo's line ``name`` (default
    ``model.name``); ``None`` where the zoo has none or its classifier has another count (a weight
    file's own head). A model without a classifier is an ``InputError``."""
    from jaxplain.engine.shapes import num_classes
    from jaxplain.models.zoo import ZOO

    k = num_classes(model, (*(model.input_size or (224, 224)), model.channels))
    e = ZOO.get(name or model.name)
    labels = e.labels() if e else ()
    return labels if len(labels) == k else None


def class_names(model, name: str | None = None) -> list[str] | None:
    """The names of ``model``'s classes (see ``_labels``)."""
    found = labels(model, name)
    return [n for _, n in found] if found else None


class Signals:
    """SIGINT / SIGTERM: the first asks the run to stop after the batch in flight, a second stops now."""

    def __init__(self, in_flight: str = "the batch in flight") -> None:
        import signal

        self.in_flight = in_flight
        self.received: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"jaxplain: stopping after {self.in_flight} (signal again to stop at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        import signal

        for s, h in self.previous.items():
            signal.signal(s, h)


def columns(names: Sequence[str], indent: str = "  ", width: int = 88) -> str:
    lines, line = [], indent
    for n in names:
        if len(line) + len(n) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += n + " "
    return "\n".join([*lines, line.rstrip()])


def output_folder(out: str) -> Path:
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
