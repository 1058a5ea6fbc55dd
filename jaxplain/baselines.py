"""One vocabulary for every method and metric: baselines, scores and keys.

Baselines. ``baseline_image`` is the one resolver of a ``baseline`` (a method's) or substrate (a
metric's): the same name is the same image everywhere (``BASELINES``). ``"black"`` and ``"white"``
need the model's preprocessing and are resolved by ``explain`` / ``evaluate`` (``for_model``).

Scores. ``"logit"`` or ``"probability"`` (the softmax; ``"softmax"`` is accepted as the same),
one ``scorer`` for methods and metrics.

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

import inspect
import json
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.checks import as_key, like_image
from jaxplain.errors import InputError
from jaxplain.marks import wrapped
from jaxplain.methods.blur import gaussian_blur, rise_blur
from jaxplain.types import ApplyFn, Array, PyTree

# The baseline names and what each image is (besides a number, an [H, W, C] array, or through
# explain / evaluate one [B, H, W, C] array with one per image).
BASELINES = {
    "zeros": "all zeros (the number 0)",
    "black": "the model's preprocessing of a black picture (pixel value 0)",
    "white": "the model's preprocessing of a white picture (pixel value 255)",
    "mean": "each region's mean colour where the method has regions (lime's hide_color=None), else the image's",
    "uniform": "noise uniform in [min x, max x], drawn from the key",
    "blur": "a Gaussian blur, sigma 10 pixels, zero padding",
    "rise_blur": "the RISE code's blur: 11x11 kernel, sigma 5, zero padding (the insertion metric's default)",
}
BLUR_SIGMA = 10.0
SCORES = ("logit", "probability")  # "softmax" is accepted as "probability"


def _vocabulary() -> str:
    return f"a number, an [H, W, C] array or one of {', '.join(map(repr, BASELINES))}"


def baseline_image(value: float | str | Array, x: Array, key: Array | int | None = None, *,
                   labels: Array | np.ndarray | None = None, regions: int | None = None) -> Array:
    """``[H, W, C]``: the baseline ``value`` for the image ``x [H, W, C]``: a number, an array of
    ``x``'s shape or a name of ``BASELINES``; ``"uniform"`` needs ``key``; ``"mean"`` takes the mean
    colour of each of the ``regions`` of ``labels [H, W]`` (ids ``0 .. regions - 1``), of the whole
    image without them. ``"black"`` / ``"white"`` must come resolved (``for_model``)."""
    if not isinstance(value, str):
        return like_image(value, x)
    if value == "zeros":
        return jnp.zeros_like(x)
    if value == "blur":
        return gaussian_blur(x, BLUR_SIGMA).astype(x.dtype)
    if value == "rise_blur":
        return rise_blur(x).astype(x.dtype)
    if value == "uniform":
        k = as_key(key, "baseline='uniform' is random")
        return jax.random.uniform(k, x.shape, x.dtype, jnp.min(x), jnp.max(x))
    if value == "mean":
        if labels is None:
            return jnp.broadcast_to(x.mean(axis=(0, 1), keepdims=True), x.shape).astype(x.dtype)
        flat = labels.reshape(-1)
        sums = jax.ops.segment_sum(x.reshape(-1, x.shape[-1]), flat, num_segments=regions)
        counts = (jnp.asarray(np.bincount(flat, minlength=regions), x.dtype) if isinstance(flat, np.ndarray)
                  else jax.ops.segment_sum(jnp.ones_like(flat, x.dtype), flat, num_segments=regions))
        return (sums / jnp.maximum(counts, 1)[:, None])[labels]
    if value in ("black", "white"):
        raise InputError(f"baseline={value!r} needs the model's preprocessing: use jaxplain.explain or "
                         f"jaxplain.evaluate, or pass the array")
    raise InputError(f"unknown baseline {value!r}; a baseline is {_vocabulary()}")


def for_model(value: Any, preprocess: Any, image_shape: tuple[int, ...], model_name: str = "the model") -> Any:
    """``value`` with ``"black"`` / ``"white"`` resolved to ``preprocess`` of a black / white
    picture (uint8 ``[1, H, W, C]`` of 0 / 255, ``C`` from ``image_shape``) ``[H, W, C]`` float32;
    anything else as it is."""
    if not (isinstance(value, str) and value in ("black", "white")):
        return value
    if preprocess is None:
        raise InputError(f"baseline={value!r} needs {model_name}'s preprocess, which it lacks: pass a number or an array")
    picture = np.full((1, *image_shape[:2], image_shape[2] if len(image_shape) > 2 else 3), 255 if value == "white" else 0,
                      np.uint8)
    return jnp.asarray(preprocess(picture)[0], jnp.float32)


def check_score(score: str) -> str:
    """``"logit"`` or ``"probability"`` (``"softmax"`` is ``"probability"``), or an ``InputError``."""
    if score == "softmax":
        return "probability"
    if score not in SCORES:
        raise InputError(f"score must be one of {SCORES} (or 'softmax', the same as 'probability'), got {score!r}")
    return score


def score_of(logits: Array, target: Array, score: str) -> Array:
    """The target's logit or softmax probability (``score``) from ``logits [K]``."""
    return logits[target] if check_score(score) == "logit" else jax.nn.softmax(logits)[target]


def scorer(apply: ApplyFn, params: PyTree, target: Array, score: str) -> Callable[[Array], Array]:
    """``x [H, W, C] -> scalar``: the target's ``score`` (``"logit"`` or ``"probability"``), the
    one target score of every method and metric with a ``score`` setting."""
    score = check_score(score)
    return lambda v: score_of(apply(params, v)[0], target, score)


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


UNDRAWN = ("key", "chunk")  # settings that never change what is drawn: left out of a key's identity


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, jax.Array))


def _defaults(fn: Callable) -> dict[str, Any]:
    """``fn``'s keyword-only settings with their defaults (as ``registry.settings_of``)."""
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def chosen(fn: Callable | None, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings that make a method's or metric's draws: ``settings`` without ``UNDRAWN``, without
    arrays (data such as an attribution, a mask or a per-image baseline, so an image's draws do not
    depend on the images beside it), ``score="softmax"`` as ``"probability"`` and, where the function
    ``fn`` is given, without those equal to its defaults (so ``"smoothgrad"`` and
    ``"smoothgrad(samples=50)"`` draw alike); a wrapper's ``base_settings`` (a metric's
    ``method_settings``) likewise against its base where that is a function."""
    settings = dict(settings or {})
    defaults = _defaults(fn) if fn is not None else {}
    names = wrapped(fn) if fn is not None else None
    out = {}
    for k, v in settings.items():
        if k in UNDRAWN or _is_array(v) or (names and k == names[1]):
            continue
        if k == "score" and v == "softmax":  # one option, two spellings
            v = "probability"
        if k in defaults and _canonical(v) == _canonical(defaults[k]):
            continue
        out[k] = v
    if names:
        base = settings.get(names[0], defaults.get(names[0]))
        inner = chosen(base if callable(base) else None, settings.get(names[1]) or {})
        if inner:
            out[names[1]] = inner
    return out


def identity(name: str | Callable, settings: Mapping[str, Any] | None = None) -> int:
    """The stable 32-bit identity of a method or metric with its ``chosen`` settings: ``name`` is
    its registered name, or its function (whose defaults then do not count; its ``__name__`` is
    the registered name)."""
    fn = name if callable(name) else None
    label = getattr(fn, "__name__", "method") if fn is not None else name
    return stable_hash(json.dumps([label, _canonical(chosen(fn, settings))], sort_keys=True))


def named(key: Any, name: str | Callable, settings: Mapping[str, Any] | None = None) -> Any:
    """``fold_in(key, identity(name, settings))``: the key of one method or metric (``name``: its
    name or function; an int seed or a ``jax.random`` key in; a typed key out; ``None`` stays
    ``None``)."""
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
