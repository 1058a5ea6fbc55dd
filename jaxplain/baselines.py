"""One vocabulary for every method and metric: baselines, scores and keys.

Keys. Every random method and metric draws from one policy, in the API, in folder runs and in
``evaluate``:

- a method's or metric's key folds in a stable hash of its name and settings (``named``), so two
  different methods, or the same method with other settings, never share draws by accident, and a
  method's draws do not depend on its position in a list;
- an image's key folds in the image's identity (``per_image``): its index in the API, a hash of its
  resolved path in a folder run (``path_id``), so results do not depend on the batch size, the
  device count or which images run beside it.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.checks import as_key
from jaxplain.types import Array


def stable_hash(text: str) -> int:
    """A 32-bit hash of ``text`` that is the same in every process and Python version (CRC-32)."""
    return zlib.crc32(text.encode())


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, bool, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # an array: its values, not its identity
        a = np.asarray(value)
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = np.asarray(jax.random.key_data(value))
        return {"shape": list(a.shape), "dtype": str(a.dtype), "crc": zlib.crc32(np.ascontiguousarray(a).tobytes())}
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return repr(value)


def identity(name: str, settings: Mapping[str, Any] | None = None) -> int:
    """The stable 32-bit identity of a method or metric with its settings (``key`` excluded)."""
    given = {k: v for k, v in (settings or {}).items() if k != "key"}
    return stable_hash(json.dumps([name, _canonical(given)], sort_keys=True))


def named(key: Any, name: str, settings: Mapping[str, Any] | None = None) -> Any:
    """``fold_in(key, identity(name, settings))``: the key of one method or metric (an int seed or
    a ``jax.random`` key in; a typed key out; ``None`` stays ``None``)."""
    if key is None:
        return None
    return jax.random.fold_in(as_key(key), identity(name, settings))


def path_id(path: str) -> int:
    """An image's identity in a folder run: the stable hash of its resolved path."""
    return stable_hash(str(path))


def per_image(key: Any, ids: Array) -> Array:
    """``[N]`` keys: ``fold_in(key, ids[i])`` for each image's identity (``ids``: ``[N]`` ints)."""
    k = as_key(key)
    return jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.asarray(np.asarray(ids, np.uint32)))
