"""Settings in hashable form, for ``jax.jit``'s static arguments and caches keyed by value: dicts
become ``Frozen`` (their sorted items), lists tuples, slices ``Sliced``; ``thaw`` undoes it."""

from __future__ import annotations

from typing import Any


class Frozen(tuple):
    """A dict setting in hashable form (its sorted items); ``thaw`` makes it a dict again."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Frozen and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((Frozen, tuple(self)))


class Sliced(tuple):
    """A ``slice`` setting in hashable form, ``(start, stop, step)`` (a slice is unhashable before Python 3.12)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Sliced and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((Sliced, tuple(self)))


def freeze(v: Any) -> Any:
    """A hashable stand-in for a static setting: dicts become ``Frozen``, lists tuples, slices ``Sliced``."""
    if isinstance(v, dict):
        return Frozen(sorted((k, freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    if isinstance(v, slice):
        return Sliced((v.start, v.stop, v.step))
    return v


def thaw(v: Any) -> Any:
    """The inverse of ``freeze`` (lists come back as tuples)."""
    if isinstance(v, Frozen):
        return {k: thaw(x) for k, x in v}
    if isinstance(v, Sliced):
        return slice(*v)
    if isinstance(v, tuple):
        return tuple(thaw(x) for x in v)
    return v
