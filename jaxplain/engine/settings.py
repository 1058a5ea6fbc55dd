"""A method's settings on their way into the compiled call: model-dependent values resolved,
per-image keys, and the split into what is compiled in (``static``), what every image shares
(arrays passed as arguments) and what comes one per image (split like the images).

Settings nest one level per wrapping method (``smoothgrad``'s ``base_settings``); an array sits
at a path such as ``("base_settings", "baseline")``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import baselines, registry
from jaxplain.frozen import Frozen, Sliced, freeze, thaw  # noqa: F401  (the engine's names for them)
from jaxplain.errors import InputError
from jaxplain.methods.layer import check_neuron, layer_key
from jaxplain.methods.relevance import box_for_model
from jaxplain.marks import inner, wrapped
from jaxplain.engine.shapes import check_layer, default_layer
from jaxplain.engine.tokens import grid_view
from jaxplain.types import Array, Model

Path = tuple[str, ...]


def is_array(v: Any) -> bool:
    return isinstance(v, (np.ndarray, jax.Array))


def assemble(static: dict[str, Any], arrays: dict[Path, Array]) -> dict[str, Any]:
    """The method's keyword settings: ``static`` with each array put back at its path."""
    out = dict(static)
    for path, a in arrays.items():
        node = out
        for k in path[:-1]:
            node[k] = node = dict(node.get(k) or {})
        node[path[-1]] = a
    return out


def resolve_for_model(fn: Callable, model: Model, image_shape: tuple[int, ...], settings: dict[str, Any],
                      images: Any = None) -> dict[str, Any]:
    """Settings that need the model, for ``fn`` and any method it wraps: a missing ``layer`` is
    the model's ``cam_layer`` or its last conv layer; layers and neurons are checked; a missing
    ``attention`` is the model's attention layers and a missing ``grid`` its token grid;
    ``baseline="black"`` or ``"white"`` (given or the default) is the preprocessed picture; a method marked
    ``host_settings`` completes its settings from the batch of ``images`` (segment label maps).
    ``attribute_to="input"`` reads the layer's input (``resolve_layer``).
    ``settings`` must come from ``registry.resolve``. A transformer's token layers are checked
    as their patch grid (``tokens.grid_view``), as the method sees them. ``explain`` and
    ``evaluate`` call this once per call and pass the result on."""
    model = grid_view(model)
    settings = dict(settings)
    known = registry.settings_of(fn)
    host = getattr(fn, "host_settings", None)
    if host is not None and images is not None:
        settings = host(model, images, settings, known)
    if "layer" in known:
        if settings.get("layer") is None:
            settings["layer"] = default_layer(model, image_shape)
        key = resolve_layer(model, settings["layer"], settings.get("attribute_to", known.get("attribute_to", "output")))
        shape = check_layer(model, image_shape, key, spatial=getattr(fn, "spatial_layer", False))
        if "neuron" in known:
            if settings.get("neuron") is None:
                name = getattr(fn, "__name__", "this method")
                raise InputError(f"{name} needs neuron=<channel> or neuron=(i, j, k): e.g. \"{name}(neuron=0)\"")
            check_neuron(shape, settings.get("neuron"), key)
    if "attention" in known:
        settings["attention"] = attention_layers(fn, model, image_shape, settings.get("attention"))
    if "grid" in known and settings.get("grid") is None:
        settings["grid"] = model.token_grid
    if "box" in known and settings.get("box") is None:
        settings["box"] = box_for_model(model.preprocess, model.channels)
    baseline = settings.get("baseline", known.get("baseline"))  # a default of "black" too
    if isinstance(baseline, str) and baseline in ("black", "white"):
        settings["baseline"] = baselines.for_model(baseline, model.preprocess, image_shape, model.name)
    nested = inner(fn, settings)
    if nested:
        settings[wrapped(fn)[1]] = resolve_for_model(nested[0], model, image_shape, nested[1], images)
    return settings


def resolve_layer(model: Model, layer: str, attribute_to: str = "output") -> str:
    """The ``acts`` key a layer method reads at ``layer``: the layer (``attribute_to="output"``)
    or ``input_key(layer)`` (``"input"``) when ``model.layer_inputs`` lists it; else an ``InputError``
    naming the model and the layers whose input it taps."""
    key = layer_key(layer, attribute_to)
    if attribute_to == "input" and layer not in model.layer_inputs:
        taps = (f"the layers whose input it taps: {', '.join(model.layer_inputs)}" if model.layer_inputs
                else "it declares no layer inputs (Model.layer_inputs)")
        raise InputError(f"attribute_to='input' at layer {layer!r}: {model.name} cannot tap that layer's input; {taps}")
    return key


def attention_layers(fn: Callable, model: Model, image_shape: tuple[int, ...],
                     given: Any) -> tuple[str, ...]:
    """The attention layers a method reads: ``given`` (checked) or the model's, or an ``InputError``."""
    name = getattr(fn, "__name__", "this method")
    if given is None:
        if not model.attention_layers:
            raise InputError(f"{name} needs a transformer's attention probabilities, and {model.name} declares no "
                             f"attention layers (Model.attention_layers); its layers: {', '.join(model.layers)}")
        return tuple(model.attention_layers)
    layers = (given,) if isinstance(given, str) else tuple(given)
    if not layers:
        raise InputError(f"{name}: attention must name at least one attention layer")
    for layer in layers:
        check_layer(model, image_shape, layer)
    return layers


def _owner(fn: Callable, settings: dict[str, Any]) -> tuple[Callable, dict[str, Any]]:
    """``(function, settings)`` whose ``baselines.named`` key a call of ``fn`` (``settings`` from
    ``registry.resolve``) draws from: ``fn``'s own, or for a metric that hands its key to the
    method it re-explains (marked ``key_for_method``: ``model_randomisation``) that method's, so
    the maps it redraws use the draws ``explain`` made."""
    names = wrapped(fn)
    if names and getattr(fn, "key_for_method", False):
        return settings.get(names[0], registry.settings_of(fn)[names[0]]), dict(settings.get(names[1]) or {})
    return fn, settings


def image_keys(key: Any, n: int, fn: Callable | None = None, settings: dict[str, Any] | None = None) -> Array | None:
    """One key per image (``baselines``' policy): for a single key (a ``jax.random`` key, typed or
    raw, or an int seed) image ``i``'s is ``per_image(named(key, fn, settings), i)`` (``fn``'s
    function and settings, or ``_owner``'s; without ``fn``, ``fold_in(key, i)``); ``n`` keys
    given are used as they are."""
    key = baselines.as_key(key)
    if key is None:
        return None
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    one = () if typed else (2,)
    if tuple(key.shape) == one:
        if fn is not None:
            key = baselines.named(key, *_owner(fn, dict(settings or {})))  # settings: from registry.resolve
        return baselines.per_image(key, np.arange(n))
    if tuple(key.shape) == (n, *one):
        return jnp.asarray(key)
    raise InputError(f"key must be one key or one per image ({n}), got shape {tuple(key.shape)}")


def with_image_keys(fn: Callable, settings: dict[str, Any], n: int) -> dict[str, Any]:
    """``settings`` (from ``registry.resolve``, before ``resolve_for_model``) with a single
    ``key`` made into ``n`` per-image keys (``image_keys``): the draws follow the settings as the
    user gave them, so the API, ``evaluate`` and the command line draw alike for one method."""
    if settings.get("key") is None:
        return settings
    return {**settings, "key": image_keys(settings["key"], n, fn, settings)}


class Split(NamedTuple):
    """``static``: the settings compiled in, without arrays; ``shared``: arrays every image uses;
    ``per_image``: arrays with a leading batch axis, one entry per image; both keyed by path."""

    static: dict[str, Any]
    shared: dict[Path, Array]
    per_image: dict[Path, Array]


def split(fn: Callable, settings: dict[str, Any], n: int, path: Path = ()) -> Split:
    """Sort ``settings`` (resolved) into a ``Split`` for a batch of ``n`` images. An array
    setting ``fn`` marks ``per_image`` (``methods.marks``) is per image when it has one axis more
    than one image's value; its leading axis must then be ``n``."""
    ranks = getattr(fn, "per_image", {})
    nested = inner(fn, settings)
    out = Split({}, {}, {})
    for k, v in settings.items():
        if nested and k == wrapped(fn)[1]:
            part = split(nested[0], nested[1], n, (*path, k))
            out.static[k] = part.static
            out.shared.update(part.shared)
            out.per_image.update(part.per_image)
        elif is_array(v):
            if k in ranks and (ranks[k] is None or np.ndim(v) == ranks[k] + 1):
                if v.shape[0] != n:
                    raise InputError(f"{k} has shape {tuple(v.shape)}: one per image needs {n} along its first axis "
                                     f"(the batch), or pass one {k} for all images")
                out.per_image[(*path, k)] = jnp.asarray(v)
            else:
                out.shared[(*path, k)] = jnp.asarray(v)
        else:
            out.static[k] = v
    return out


def frozen(static: dict[str, Any]) -> Frozen:
    """``static`` as a hashable cache key, or an ``InputError`` naming the setting that is not."""
    for k, v in static.items():
        try:
            hash(freeze(v))
        except TypeError:
            raise InputError(f"setting {k}={v!r} is neither a literal, a function nor an array") from None
    return freeze(static)
