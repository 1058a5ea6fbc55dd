"""The zoo: every model the command line offers, one line each.

A model is its file(s) plus one line here: ``jaxplain predict|explain|evaluate|bench``, their
``--model``, ``--weights`` and ``--source`` choices and checks, and the class names ``predict`` and
the report print all read this table.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple

from jaxplain.errors import InputError
from jaxplain.types import Model

from . import imagenet, resnet_weights, synthetic, vgg_weights, vit, vit_weights

Labels = tuple[tuple[str, str], ...]


class Entry(NamedTuple):
    """One model of the zoo.

    build: ``(weights, source) -> Model``, ``weights`` ``None`` (seeded random weights), a name of
      ``weights`` or a file's path; ``source`` one of ``sources`` or ``None`` (the default, or the
      file's own). A model without ``sources`` is built as ``build(weights)``.
    sources: whose weights (and preprocessing) it loads, the default first; ``()``: its own only.
    weights: the weights it knows by name, the default first.
    labels: ``(id, name)`` of each class of its classifier (ImageNet's ``(wnid, name)``).
    any_size: the source whose network takes any input size (``bench --size``); ``None``: the
      input size is fixed.
    """

    build: Callable[..., Model]
    sources: tuple[str, ...]
    weights: tuple[str, ...]
    labels: Callable[[], Labels]
    any_size: str | None = None


def _synthetic_labels() -> Labels:
    return tuple((str(i), name) for i, name in enumerate(synthetic.CLASSES))


ZOO: dict[str, Entry] = {
    "vgg11": Entry(functools.partial(vgg_weights.vgg, "vgg11"), vgg_weights.SOURCES, ("imagenet",), imagenet.classes, "torchvision"),
    "vgg13": Entry(functools.partial(vgg_weights.vgg, "vgg13"), vgg_weights.SOURCES, ("imagenet",), imagenet.classes, "torchvision"),
    "vgg16": Entry(functools.partial(vgg_weights.vgg, "vgg16"), vgg_weights.SOURCES, ("imagenet",), imagenet.classes, "torchvision"),
    "vgg19": Entry(functools.partial(vgg_weights.vgg, "vgg19"), vgg_weights.SOURCES, ("imagenet",), imagenet.classes, "torchvision"),
    "resnet50": Entry(resnet_weights.resnet50, resnet_weights.SOURCES, ("imagenet", *resnet_weights.RELEASES),
                      imagenet.classes, "torchvision"),
    "vit_b16": Entry(vit_weights.vit_b16, vit.SOURCES, ("imagenet",), imagenet.classes),
    "synthetic_vgg": Entry(synthetic.synthetic_vgg, (), ("shipped",), _synthetic_labels),
}


def entry(name: str) -> Entry:
    """The zoo's line for ``name``, or an ``InputError`` listing the models."""
    if name not in ZOO:
        raise InputError(f"unknown model {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name]


def source_names() -> tuple[str, ...]:
    """Every source some model of the zoo loads, in table order."""
    return tuple(dict.fromkeys(s for e in ZOO.values() for s in e.sources))


def check_source(name: str, source: str | None) -> None:
    """An ``InputError`` unless ``name`` loads ``source``'s weights (``None``: its default)."""
    allowed = entry(name).sources
    if source is not None and source not in allowed:
        takes = f"takes {' or '.join(allowed)}" if allowed else "has only its own"
        raise InputError(f"--source {source} has no {name} weights; {name} {takes}")


def load(name: str, weights: str | os.PathLike | None, source: str | None = None) -> Model:
    """The zoo's model ``name`` with ``weights`` (``None``: seeded random) from ``source``."""
    e = entry(name)
    check_source(name, source)
    return e.build(weights, source) if e.sources else e.build(weights)
