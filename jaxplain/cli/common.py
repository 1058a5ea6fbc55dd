"""What the subcommands share: the parser class, the model arguments and loading (a zoo name, or your
own ``package.module:function`` with ``--model-arg KEY=VALUE``), image loading, class names, signals."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import reprlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from jaxplain.errors import InputError, JaxplainError

SYNTHETIC = "synthetic_vgg"  # evaluate's model without images (the models, their weights and sources: models/zoo.py)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"jaxplain: error: {message} (see {self.prog} --help)\n")


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive(text: str) -> int:
    """A whole number >= 1 (an argparse type)."""
    return _whole(text, 1)


def count(text: str) -> int:
    """A whole number >= 0 (an argparse type)."""
    return _whole(text, 0)


def _zoo_help(field: str) -> str:
    """Each model of the zoo with its named weights or its sources (the default first)."""
    from jaxplain.models.zoo import ZOO

    return "; ".join(f"{name}: {', '.join(getattr(e, field))}" for name, e in ZOO.items() if getattr(e, field))


MODEL_HELP = ("the zoo's model{default}: {zoo}; or your own, package.module:function, a function returning a "
              "jaxplain.Model (imported as python -m would, from the current folder first), called with the "
              "--model-arg values")
MODEL_ARG_HELP = ("KEY=VALUE, a keyword argument of --model package.module:function (repeat for several): the VALUE "
                  "is read as JSON where it is JSON (4, 0.5, true, null, [16, 16], {\"a\": 1}, \"4\" a string), "
                  "True, False and None as Python spells them, else it is the string as given")


def is_spec(model: str | None) -> bool:
    """Whether ``--model``'s value is an import spec ``package.module:function`` (not a zoo name)."""
    return model is not None and ":" in model


def model_name(text: str) -> str:
    """``--model``'s value (an argparse type): a zoo name, or ``package.module:function`` whose two
    parts are dotted Python names (the import itself waits for ``user_function``)."""
    from jaxplain.models.zoo import ZOO

    if not is_spec(text):
        if text not in ZOO:
            raise argparse.ArgumentTypeError(f"unknown model {text!r}: the zoo has {', '.join(ZOO)}; your own is "
                                             "package.module:function")
        return text
    module, _, attr = text.partition(":")
    if not all(part.isidentifier() for name in (module, attr) for part in name.split(".")):
        raise argparse.ArgumentTypeError(f"{text!r} is not package.module:function (dotted Python names, one ':')")
    return text


def model_arg(text: str) -> tuple[str, Any]:
    """``--model-arg KEY=VALUE`` (an argparse type) as ``(key, value)``: see ``MODEL_ARG_HELP`` for
    how the value is read."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python name, got {text!r}")
    return key, parse_value(value)


def parse_value(text: str) -> Any:
    """A ``--model-arg`` value: JSON where it is JSON (no NaN or Infinity), ``True``/``False``/``None``
    as Python spells them, else the string ``text``."""
    def no_constant(name: str) -> NoReturn:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError:
        return {"True": True, "False": False, "None": None}.get(text.strip(), text)


def user_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--model-arg`` values as keyword arguments; a key given twice is an ``InputError``."""
    kwargs: dict[str, Any] = {}
    for key, value in getattr(args, "model_arg", None) or ():
        if key in kwargs:
            raise InputError(f"--model-arg {key} is given twice")
        kwargs[key] = value
    return kwargs


def check_user_model(args: argparse.Namespace) -> None:
    """The arguments that go with ``--model``, checked before anything runs: ``--model-arg`` only
    with an import spec, ``--weights``/``--source``/``--size`` only with a zoo model (your function
    takes its weights as a ``--model-arg``), and the spec importable (``user_function``)."""
    if not is_spec(args.model):
        if getattr(args, "model_arg", None):
            raise InputError("--model-arg goes with --model package.module:function; the zoo's models take none")
        return
    for flag in ("weights", "source", "size"):
        if getattr(args, flag, None) is not None:
            raise InputError(f"--{flag} goes with a zoo model; give your function its own as --model-arg KEY=VALUE")
    user_kwargs(args)
    user_function(args.model)


def user_function(spec: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names, imported as ``python -m`` would (the current
    folder first on ``sys.path``), or an ``InputError`` saying what failed."""
    module_name, _, attr = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raised while importing
        raise InputError(f"--model {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from e
    for i, part in enumerate(attr.split(".")):
        if not hasattr(found, part):
            raise InputError(f"--model {spec}: {'.'.join([module_name, *attr.split('.')[:i]])} has no attribute {part!r}")
        found = getattr(found, part)
    if not callable(found):
        raise InputError(f"--model {spec}: {module_name}.{attr} is not callable (it is {type(found).__name__} "
                         f"{reprlib.repr(found)}); name a function that returns a jaxplain.Model")
    return found


def user_model(args: argparse.Namespace):
    """``--model package.module:function`` called with the ``--model-arg`` values: the ``Model`` it
    returns, or an ``InputError`` with what it raised or returned instead."""
    from jaxplain.types import Model

    fn, kwargs = user_function(args.model), user_kwargs(args)
    call = f"{args.model.partition(':')[2]}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = fn(**kwargs)
    except Exception as e:  # the user's code: its message, the traceback with --debug
        raise InputError(f"--model {args.model}: {call} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, Model):
        raise InputError(f"--model {args.model}: {call} returned a {type(model).__name__}, not a jaxplain.Model "
                         "(make one with jaxplain.from_flax or jaxplain.Model)")
    if model.input_size is None:  # a network trained at 28x28 would silently see 224x224 pictures
        print(f"jaxplain: {model.name} takes any size (input_size None): pictures are resized to 224x224; build it "
              "with input_size=(H, W) to run it at the size it was trained for", file=sys.stderr)
    return model


def user_record(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies a user's model in a run's record: the spec, the ``--model-arg`` values, and
    the size and time of each value that names a file (weights), so that a resume with other values
    or a changed file is refused."""
    kwargs = user_kwargs(args)
    files = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value and Path(value).is_file():
            stat = Path(value).stat()
            files[key] = {"path": str(Path(value).resolve()), "bytes": stat.st_size, "modified": stat.st_mtime_ns}
    return {"name": args.model, "args": json.loads(json.dumps(kwargs)), **({"files": files} if files else {})}


def model_args(p: argparse.ArgumentParser) -> None:
    from jaxplain.models.zoo import ZOO, source_names

    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively), globs, or @list.txt (a path per line)")
    p.add_argument("--model", default="vgg16", type=model_name, metavar="MODEL",
                   help=MODEL_HELP.format(default=" (default vgg16)", zoo=", ".join(ZOO)))
    p.add_argument("--model-arg", action="append", type=model_arg, metavar="KEY=VALUE", help=MODEL_ARG_HELP)
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
    """Keep compiled programs in jaxplain's persistent compile cache (``jaxplain.xla_cache``: a
    per-user folder; ``JAXPLAIN_COMPILE_CACHE=0`` turns it off; a ``JAX_COMPILATION_CACHE_DIR`` set
    in the environment is JAX's own setting and wins), so a repeated run does not recompile."""
    from jaxplain import xla_cache

    xla_cache.ensure()


def load_model(args: argparse.Namespace):
    """The zoo's ``args.model`` with ``args.weights`` (``random``: seeded random weights) from
    ``args.source``; or the ``Model`` your ``package.module:function`` returns (``user_model``)."""
    from jaxplain.models import zoo
    from jaxplain.models.weights import OfflineError

    compile_cache()
    if is_spec(args.model):
        return user_model(args)
    weights = None if args.weights == "random" else args.weights
    try:
        return zoo.load(args.model, weights, args.source)
    except OfflineError as e:
        raise e.with_argument("--weights") from None


def images(paths: Sequence[str], model, said: list | None = None) -> tuple[list[int], list[np.ndarray]]:
    """``(positions, arrays)`` of what loads; the rest is reported, one line each. A grayscale
    model's colour picture is said to be converted once (``said`` keeps that across calls)."""
    found = loaded(paths, model, said)
    return [i for i, _, _ in found], [image for _, image, _ in found]


def loaded(paths: Sequence[str], model, said: list | None = None,
           also: Callable[[int, Any], Any] | None = None) -> list[tuple[int, np.ndarray, Any]]:
    """``(position, image uint8 [H, W, C], also(position, loaded))`` of each picture that loads
    (``also``, e.g. its mask, may fail it too; ``None`` without ``also``); the rest reported, one
    line each, and a grayscale model's colour picture said to be converted once (``said`` keeps
    that across calls)."""
    from jaxplain.io import converted_line, load_for_model, picture_mode

    picture_mode(model)  # a model of neither 1 nor 3 channels: one error, not one per picture
    said = [] if said is None else said
    found = []
    for i, path in enumerate(paths):
        try:
            picture = load_for_model(path, model)
            extra = also(i, picture) if also is not None else None
        except JaxplainError as e:
            print(f"jaxplain: failed {e}", file=sys.stderr)
            continue
        if picture.converted and not said:
            said.append(path)
            print(converted_line(model, path), file=sys.stderr)
        found.append((i, picture.image, extra))
    return found


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
