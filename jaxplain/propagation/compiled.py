"""An eager call of a propagation method as one compiled program.

The methods evaluate a traced graph equation by equation; called outside any trace, JAX would run
(and compile) each equation on its own, about 20 s for a tiny VGG. ``compiled`` runs such a call
under ``jax.jit`` instead, the non-array settings static; inside a caller's ``jit``, ``vmap`` or
``grad`` the method runs as written, part of the caller's program.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np

from jaxplain.frozen import freeze, thaw


def _traced(tree: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=32)
def _program(fn: Callable, apply: Callable, static: Any) -> Callable:
    def run(params: Any, x: Any, target: Any, arrays: dict[str, Any]) -> Any:
        return fn(apply, params, x, target, **thaw(static), **arrays)

    return jax.jit(run)


def compiled(fn: Callable) -> Callable:
    """``fn(apply, params, x, target, **settings)``, jitted when called eagerly (cached by the
    function, ``apply`` and the static settings' values)."""

    @functools.wraps(fn)
    def method(apply: Callable, params: Any, x: Any, target: Any, **settings: Any) -> Any:
        if _traced((params, x, target, settings)):
            return fn(apply, params, x, target, **settings)
        arrays = {k: v for k, v in settings.items() if isinstance(v, (np.ndarray, jax.Array))}
        static = freeze({k: v for k, v in settings.items() if k not in arrays})
        try:
            hash((apply, static))
        except TypeError:  # a setting that cannot be static (a tuple of arrays): as written
            return fn(apply, params, x, target, **settings)
        return _program(fn, apply, static)(params, x, target, arrays)

    return method
