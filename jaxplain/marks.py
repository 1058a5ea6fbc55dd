"""What ``explain`` needs to know of a method beyond its signature, set by small decorators:

- ``@output("map")``: the kind of result, ``"pixels"`` (``[H, W, C]``, the default), ``"map"``
  (``[H, W]``: CAMs, RISE), ``"layer"`` (a layer's shape) or ``"concepts"`` (``[K, H, W, C]``, a
  pixel map per concept: CRP); pictures reduce only ``"pixels"`` (and draw ``"map"``).
- ``@per_image(baseline=3)``: array settings that may come one per image: a value of that rank is
  shared by the batch, one of rank + 1 with a leading ``B`` is split per image like ``images``;
  rank ``None``: always one per image (a metric's ``attribution``).
- ``@better("lower")``: which way a metric's score improves (tables print it).
- ``@targetless``: the method ignores ``target`` (neurons, Eigen-CAM), so ``targets=None`` is fine.
- ``@wraps_method``: the method runs another one, named by its ``base`` setting with
  ``base_settings`` (the noise wrappers); what holds for that one holds inside.
  ``@wraps_method(setting="method")``: the same under other names (``method``/``method_settings``:
  the metrics that re-explain).
- ``@host_settings(resolve)``: settings computed on the host from the batch before compiling
  (``resolve(model, images, settings, defaults) -> settings``: segment label maps of the pictures).
- ``@cost(passes)``: model passes per image, ``passes(settings, image_shape) -> int`` of the
  method's settings (defaults filled, resolved: a wrapped ``base`` is a function);
  ``forward_only=True`` where no pass goes backward. Unmarked: one pass. ``explain`` warns
  before a call of too many (``jaxplain.engine.cost``); ``bench`` reports passes/s from it.
- ``@staged(stages)``: a metric ``evaluate`` runs once per stage, each time with other weights
  (``stages(model, settings) -> [(name, params), ...]``), stacking the outputs (randomisation checks).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from jaxplain.errors import InputError

OUTPUTS = ("pixels", "map", "layer", "concepts")


def output(kind: str) -> Callable[[Callable], Callable]:
    """Mark what a method returns for one image (see ``OUTPUTS``)."""
    if kind not in OUTPUTS:
        raise ValueError(f"output kind must be one of {OUTPUTS}, not {kind!r}")

    def mark(fn: Callable) -> Callable:
        fn.output = kind
        return fn

    return mark


def per_image(**ranks: int | None) -> Callable[[Callable], Callable]:
    """Mark array settings that may be given one per image: ``name=rank`` of one image's value
    (``None``: always one per image, any rank)."""

    def mark(fn: Callable) -> Callable:
        fn.per_image = dict(ranks)
        return fn

    return mark


def better(direction: str) -> Callable[[Callable], Callable]:
    """Mark which way a metric's ``"score"`` improves: ``"higher"`` or ``"lower"``."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', not {direction!r}")

    def mark(fn: Callable) -> Callable:
        fn.better = direction
        return fn

    return mark


def targetless(fn: Callable) -> Callable:
    """Mark a method that does not use its ``target``."""
    fn.targetless = True
    return fn


def wraps_method(fn: Callable | None = None, *, setting: str = "base") -> Callable:
    """Mark a function that runs the method named by its ``setting`` with ``{setting}_settings``.
    Use as ``@wraps_method`` or ``@wraps_method(setting="method")``."""

    def mark(f: Callable) -> Callable:
        f.wraps_method = setting
        return f

    return mark if fn is None else mark(fn)


def host_settings(resolve: Callable[..., dict[str, Any]]) -> Callable[[Callable], Callable]:
    """Mark a method whose settings ``explain`` completes on the host, once per batch:
    ``resolve(model, images [B, H, W, C], settings, defaults) -> settings``."""

    def mark(fn: Callable) -> Callable:
        fn.host_settings = resolve
        return fn

    return mark


Passes = Callable[[dict[str, Any], tuple[int, ...]], int]


def cost(passes: Passes, *, forward_only: bool = False) -> Callable[[Callable], Callable]:
    """Mark a method's model passes per image: ``passes(settings, image_shape)``, ``settings``
    all of the method's (defaults filled in) as ``registry.resolve`` leaves them; each pass a
    forward and a backward one unless ``forward_only``."""

    def mark(fn: Callable) -> Callable:
        fn.cost = passes
        fn.forward_only = forward_only
        return fn

    return mark


def passes(fn: Callable, settings: dict[str, Any], image_shape: tuple[int, ...]) -> int:
    """Model passes per image that ``fn`` makes with ``settings`` (resolved; missing ones take
    their defaults) on one image of ``image_shape``: its ``cost`` mark, else 1."""
    mark = getattr(fn, "cost", None)
    if mark is None:
        return 1
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return int(mark({**defaults, **settings}, tuple(image_shape)))


Stages = Callable[[Any, dict[str, Any]], list[tuple[str, Any]]]


def staged(stages: Stages, *, label: str = "stages") -> Callable[[Callable], Callable]:
    """Mark a metric that ``evaluate`` runs once per stage of ``stages(model, settings)``, a list of
    ``(name, params)`` with the model's parameter structure: every stage runs the same compiled
    program with its own params; the stage names come back under ``label``."""

    def mark(fn: Callable) -> Callable:
        fn.stages = stages
        fn.stage_label = label
        return fn

    return mark


def wrapped(fn: Callable) -> tuple[str, str] | None:
    """The names ``(method setting, its settings' setting)`` of a wrapping function, else ``None``."""
    name = getattr(fn, "wraps_method", None)
    return (name, f"{name}_settings") if name else None


def inner(fn: Callable, settings: dict[str, Any]) -> tuple[Callable, dict[str, Any]] | None:
    """``(base method, its settings)`` of a wrapping method whose base is resolved to a
    function, else ``None``."""
    names = wrapped(fn)
    if names is None:
        return None
    base = settings.get(names[0], inspect.signature(fn).parameters[names[0]].default)
    return (base, dict(settings.get(names[1]) or {})) if callable(base) else None


def method_function(fn: Any, setting: str, front_door: str) -> tuple[Callable, bool]:
    """``(fn, whether it takes a key)`` for the method a wrapper runs, or an ``InputError`` when
    ``fn`` is not a function (``front_door``, ``"explain"`` or ``"evaluate"``, resolves names)."""
    if not callable(fn):
        raise InputError(f"{setting} must be a method function here, got {fn!r}: jaxplain.{front_door} resolves "
                         "registered names")
    return fn, "key" in inspect.signature(fn).parameters


def output_of(fn: Callable, settings: dict[str, Any]) -> str:
    """What ``fn`` with ``settings`` returns per image: its own mark, else (a wrapper without one,
    such as smoothgrad) what its base returns."""
    if hasattr(fn, "output"):
        return fn.output
    nested = inner(fn, settings)
    return output_of(*nested) if nested else "pixels"


def uses_target(fn: Callable, settings: dict[str, Any]) -> bool:
    """Whether ``fn`` with ``settings`` reads its target (a wrapper: whether its base does)."""
    nested = inner(fn, settings)
    return uses_target(*nested) if nested else not getattr(fn, "targetless", False)
