"""The model parameter randomisation check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"; Quantus ``MPRT``): an explanation that depends on what the model learned changes when its
weights are replaced by random ones, layer by layer from the output down.

``evaluate`` runs ``model_randomisation`` once per stage (``marks.staged``): every stage is the
same compiled program given other weights. A passing explanation has a low similarity to the
re-explanation under randomised weights. Uninformative maps can pass too (Binder et al., CVPR
2023): a low score is necessary, not sufficient.

Against the references: the targets are the original model's in every stage (Quantus; Adebayo's
code explains each randomised model's own top class); layers are drawn from their own mean and
std (Adebayo re-runs each layer's initializer, Quantus' torch path ``reset_parameters``); the
Spearman maps are ``sum_c |a|`` without Adebayo's 99th-percentile clip; SSIM compares the same
maps scaled to [0, 1] with scikit-image's defaults (Adebayo: the signed maps, Gaussian window;
Quantus: flattened 1-D maps).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.methods.gradients import gradient
from jaxplain.baselines import named
from jaxplain.checks import as_key
from jaxplain.marks import better, method_function, per_image, staged, wraps_method
from jaxplain.types import ApplyFn, Array, Model, PyTree

from .common import pixel_map
from .similarity import spearman, ssim

MODES = ("cascading", "independent", "full")
_WEIGHTS = 2**32 - 1  # fold_in index of the weights' key: no image's (evaluate folds in image indices)


def _parts(keypath: tuple) -> tuple:
    """A pytree key path as plain parts: dict keys, attribute names, sequence indices."""
    out = []
    for k in keypath:
        for field in ("key", "name", "idx"):
            if hasattr(k, field):
                out.append(getattr(k, field))
                break
        else:
            out.append(str(k))
    return tuple(out)


def _leaf_paths(params: PyTree) -> list[tuple]:
    return [_parts(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _path(params: Any, name: str) -> tuple | None:
    """The parts that lead from ``params`` to layer ``name``'s weights: ``(name,)`` for a flat dict
    (``"layer4.2.conv3"``), or ``name``'s dotted parts (``"blocks.3"`` -> ``("blocks", 3)``),
    walked through any pytree: nested dicts, NNX state, an Equinox module's attributes, lists;
    Flax Linen variables are looked up under their ``"params"`` collection (``("params",
    "Conv_0")``; ``batch_stats`` are kept). ``None`` if it has none."""
    dotted = tuple(int(p) if p.isdigit() else p for p in name.split("."))
    leaves = [tuple(map(str, p)) for p in _leaf_paths(params)]
    for want in ((name,), dotted, ("params", name), ("params", *dotted)):
        text = tuple(map(str, want))
        for leaf in leaves:
            if leaf[: len(text)] == text:
                return want
    return None


def _under(leaf: tuple, path: tuple) -> bool:
    return tuple(map(str, leaf[: len(path)])) == tuple(map(str, path))


def _get(params: PyTree, path: tuple) -> list[Array]:
    """The leaves of ``params`` under ``path``, in tree order."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [leaf for kp, leaf in flat if _under(_parts(kp), path)]


def _put(params: PyTree, path: tuple, values: list[Array]) -> PyTree:
    """``params`` with the leaves under ``path`` replaced by ``values`` (in tree order)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    given = iter(values)
    return jax.tree.unflatten(treedef, [next(given) if _under(_parts(kp), path) else leaf for kp, leaf in flat])


def randomised_layers(model: Model) -> list[str]:
    """The layers whose weights are randomised: those of ``model.layers`` (forward order) with
    weights of their own in ``model.params`` (a key of a flat dict, or a dotted path into nested
    ones: a ViT's ``blocks.3``, an Equinox module's ``features.layers.0``), less any layer inside another such layer (``blocks.3.attn``
    within ``blocks.3``)."""
    return list(_layer_paths(model))


def _layer_paths(model: Model) -> dict[str, tuple]:
    """``randomised_layers`` with the path to each one's weights (``_path``)."""
    paths = {name: _path(model.params, name) for name in model.layers}
    found = [name for name, p in paths.items() if p is not None]
    inner = {n for n in found for m in found if m != n and paths[n][:len(paths[m])] == paths[m]}
    layers = {n: paths[n] for n in found if n not in inner}
    if layers:
        return layers
    raise InputError(f"{model.name} cannot be randomised layer by layer: none of its layers names weights in "
                     f"model.params (a key of a dict, or a dotted path into its nested dicts or attributes)")


def _one_key(key: Any) -> Array:
    """The weights' key: ``named(key, "model_randomisation")`` of one key (``baselines``' policy;
    no settings, so every mode draws the same weights), or an ``InputError``."""
    key = as_key(key, "model_randomisation draws random weights")
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if tuple(key.shape) == (() if typed else (2,)):
        return named(key, "model_randomisation")
    raise InputError(f"model_randomisation needs one key (the weights are drawn once for all images): "
                     f"an int seed or a jax.random.key(...), got {tuple(key.shape)}")


@jax.jit
def random_weights(layers: PyTree, key: Array) -> PyTree:
    """``layers`` with every float leaf replaced by a draw from ``N(mean(leaf), std(leaf))`` (its
    own scale stands in for the layer's initializer, which a params pytree does not carry); other
    leaves are kept. One ``normal(key, [n])`` for the ``n`` float weights, sliced in tree order
    (``jax.tree.leaves``): one random-number program per model, compiled once."""
    leaves, tree = jax.tree.flatten(layers)
    floats = [jnp.issubdtype(a.dtype, jnp.floating) for a in leaves]
    z = jax.random.normal(key, (sum(a.size for a, f in zip(leaves, floats) if f),), jnp.float32)
    out, at = [], 0
    for a, f in zip(leaves, floats):
        if f:
            w = a.astype(jnp.float32)
            out.append((w.mean() + w.std() * z[at: at + a.size].reshape(a.shape)).astype(a.dtype))
            at += a.size
        else:
            out.append(a)
    return jax.tree.unflatten(tree, out)


def stage_params(model: Model, settings: Mapping[str, Any]) -> list[tuple[str, PyTree]]:
    """The weights of each stage, ``(name, params)``: ``randomised_params`` of ``settings["key"]``
    and ``settings["mode"]`` (what ``evaluate`` runs, ``marks.staged``)."""
    return randomised_params(model, settings.get("key"), mode=settings.get("mode", "cascading"))


def randomised_params(model: Model, key: Any, *, mode: str = "cascading") -> list[tuple[str, PyTree]]:
    """The weights of each stage of ``model_randomisation``, ``(name, params)``, for the ``key``
    given to ``evaluate`` (one key or int seed: the weights are drawn once for all images) and
    ``mode``; ``params`` is ``model.params`` with the stage's layers replaced, for the same model
    elsewhere (Quantus' ``MPRT``: load them where it resets a layer's parameters).

    The layers of ``randomised_layers`` are drawn once, by ``random_weights`` from
    ``fold_in(named(key, "model_randomisation"), 2**32 - 1)``, so the stages (and modes) share their random layers.
    ``"cascading"``: stage ``s`` randomises the top ``s + 1`` layers (named by the last one
    randomised); ``"independent"``: only the ``s``-th from the top; ``"full"``: one stage, all
    layers (``"all"``), the last stage of ``"cascading"``."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    paths = _layer_paths(model)
    names = list(paths)
    fresh = random_weights({name: _get(model.params, paths[name]) for name in names},
                           jax.random.fold_in(_one_key(key), _WEIGHTS))

    def with_fresh(layers: list[str]) -> PyTree:
        params = model.params
        for n in layers:
            params = _put(params, paths[n], fresh[n])
        return params

    if mode == "full":
        return [("all", with_fresh(names))]
    top_down = names[::-1]
    chosen = [top_down[: s + 1] if mode == "cascading" else [name] for s, name in enumerate(top_down)]
    return [(name, with_fresh(layers)) for name, layers in zip(top_down, chosen)]


def summary(scores: Array, settings: Mapping[str, Any]) -> Array:
    """``[B]`` from the stages' scores ``[B, S]``: the mean over the stages for ``mode=
    "independent"`` (each stage randomises one layer; Quantus' MPRT ``return_average_correlation``),
    else the last stage, where every layer is random (``"cascading"``: Quantus'
    ``return_last_correlation``; ``"full"``: its one stage)."""
    return scores.mean(1) if settings.get("mode", "cascading") == "independent" else scores[:, -1]


def magnitude(attribution: Array) -> Array:
    """``[H, W]``: the absolute attribution summed over channels (Adebayo et al.'s grayscale map)."""
    return pixel_map(jnp.abs(attribution))


def unit(m: Array) -> Array:
    """``m`` scaled to [0, 1] by its minimum and maximum (zeros when constant)."""
    span = m.max() - m.min()
    return (m - m.min()) / jnp.where(span > 0, span, 1.0)


@better("lower")
@per_image(attribution=None)
@wraps_method(setting="method")
@staged(stage_params, label="layers")
def model_randomisation(apply: ApplyFn, params: PyTree, x: Array, target: Array, *, attribution: Array,
                        method: str | Callable = gradient, method_settings: Mapping[str, Any] | None = None,
                        mode: str = "cascading", key: Array | None = None) -> dict[str, Array]:
    """Model parameter randomisation (Adebayo et al. 2018): ``method`` (with ``method_settings``)
    re-explains ``target`` under ``params``, which ``evaluate`` sets per stage to the model's
    weights with layers randomised (``stage_params``: ``mode`` ``"cascading"`` from the output
    down, ``"independent"`` one layer at a time, or ``"full"``; weights drawn from ``key``
    (``randomised_params``), which a
    random method also receives, split per image alike in every stage, as ``explain`` would split it
    for that method: ``engine.settings.image_keys``). Compared with the
    ``attribution`` as absolute maps summed over channels (``magnitude``): ``"spearman"``, their
    rank correlation (ties averaged, as SciPy; 0 where either map is constant, such as the all-zero
    gradient of a randomised network whose ReLUs all went dead: it keeps nothing of the
    original's ranking, where SciPy says NaN), and ``"ssim"``, scikit-image's SSIM (7x7 uniform
    window) of the two maps each scaled to [0, 1]. ``evaluate`` returns ``"spearman"`` and
    ``"ssim"`` ``[B, S]``, ``"layers"`` ``[S]`` and ``"score"`` (``summary``): the fully randomised stage's Spearman
    (``"cascading"``, ``"full"``) or the mean over the stages (``"independent"``); lower is better
    (the explanation depends on the weights)."""
    method, wants_key = method_function(method, "method", "evaluate")
    settings = dict(method_settings or {})
    if wants_key:
        settings["key"] = key
    again = method(apply, params, x, target, **settings)
    a, b = magnitude(attribution), magnitude(again)
    if a.shape != b.shape:
        raise InputError(f"the attribution's map is {a.shape} but {getattr(method, '__name__', 'method')} returns "
                         f"{b.shape}: score an attribution of the same method")
    rho = spearman(a, b)
    rho = jnp.where(jnp.isnan(rho), 0.0, rho)
    return {"score": rho, "spearman": rho, "ssim": ssim(unit(a), unit(b))}


model_randomisation.summary = summary
model_randomisation.key_for_method = True  # its per-image keys are explain's for its method (engine.settings._owner)
