"""Values derived from a model's parameters (a bfloat16 copy, a copy replicated over devices),
made once per parameter values rather than once per call.

A cached value is reused only while the parameters hold the very same leaves: JAX arrays are
immutable, so the same leaves mean the same values, and the cache keeps them alive so no other
array can take their place. Replacing a leaf (``model.params["fc1"]["kernel"] = new``) makes a new
value; parameters with NumPy leaves, which can change in place, are never cached.
"""

from __future__ import annotations

from typing import Callable, Hashable

import jax

from jaxplain.types import PyTree

_memo: dict[Hashable, tuple[list, object, PyTree]] = {}


_TRACER = getattr(jax.core, "Tracer", ())  # a traced value is no stored array: never cached


def _immutable(leaf: object) -> bool:
    return isinstance(leaf, jax.Array) and not isinstance(leaf, _TRACER)


def derived(slot: Hashable, params: PyTree, make: Callable[[PyTree], PyTree]) -> PyTree:
    """``make(params)``, reused for the same ``slot`` while ``params`` holds the same leaves."""
    leaves, treedef = jax.tree.flatten(params)
    if not leaves or not all(map(_immutable, leaves)):
        return make(params)
    hit = _memo.get(slot)
    if hit is not None and hit[1] == treedef and len(hit[0]) == len(leaves) and all(a is b for a, b in zip(hit[0], leaves)):
        return hit[2]
    value = make(params)
    _memo[slot] = (leaves, treedef, value)
    return value
