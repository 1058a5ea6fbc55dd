"""``evaluate()``, the twin of ``explain()``: a metric of the explanations of a batch, run by the
same machinery (``runner.run``: batching, jit cache, chunk loops, sharding)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import registry
from jaxplain.errors import InputError
from jaxplain.metrics.localisation import check_mask
from jaxplain.engine.precision import with_precision
from jaxplain.engine.runner import Targets, run, target_ids
from jaxplain.engine.settings import resolve_for_model, with_image_keys
from jaxplain.engine.shapes import check_images
from jaxplain.types import Array, Model


def check_attributions(images: Array, attributions: Any) -> Array:
    """``attributions`` as float32 ``[B, H, W, C]`` (pixels) or ``[B, H, W]`` (a map) for ``images
    [B, H, W, C]``, finite, or an ``InputError`` naming what is wrong."""
    if isinstance(attributions, (tuple, list)) and attributions and not np.isscalar(attributions[0]):
        raise InputError("attributions must be one array; explain(..., return_delta=True) returns a tuple: pass its [0]")
    a = attributions if isinstance(attributions, jax.Array) else np.asarray(attributions)
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
        raise InputError(f"attributions must be numbers, got dtype {a.dtype}")
    b, h, w, c = images.shape
    if tuple(a.shape) not in ((b, h, w, c), (b, h, w)):
        raise InputError(f"attributions must be [B, H, W, C] = {(b, h, w, c)} (pixels) or [B, H, W] = {(b, h, w)} "
                         f"(a map) for these images, got shape {tuple(a.shape)}; a layer's attributions cannot be "
                         f"scored against the image")
    a = jnp.asarray(a, jnp.float32)
    finite = np.asarray(jnp.isfinite(a).reshape(b, -1).all(-1))
    if not finite.all():
        raise InputError(f"attributions of images {np.nonzero(~finite)[0].tolist()[:8]} contain NaN or infinite values")
    return a


def evaluate(
    model: Model,
    images: Any,
    targets: Targets,
    attributions: Any,
    metric: str | Callable,
    *,
    batch_size: int | None = None,
    precision: str | None = None,
    progress: bool = False,
    **settings: Any,
) -> dict[str, Array]:
    """Score ``attributions`` of ``model``'s ``targets`` on preprocessed ``images [B, H, W, C]``.

    ``metric``: a registered name (``jaxplain.METRICS``), a string with settings such as
    ``"deletion(steps=56)"``, or a metric function. ``attributions``: ``[B, H, W, C]`` (what the
    gradient family returns) or ``[B, H, W]`` (a CAM's or RISE's map). ``targets``: class
    indices or ``"predicted"``. ``settings`` go to the metric (``key`` for random ones, split per
    image as in ``explain``; ``mask`` for the localisation metrics; ``method`` and
    ``method_settings`` for those that re-explain). ``batch_size``, ``precision`` and ``progress``
    as ``explain``. Returns a dict of arrays with a leading ``B``: ``"score"`` ``[B]`` and, where
    the metric has more, e.g. ``"curve"`` ``[B, S]``. A staged metric (``model_randomisation``)
    runs once per stage (see ``run_stages``) and adds the stage names ``[S]``.
    """
    fn, parsed = registry.parse_metric(metric)
    settings = registry.resolve(fn, {**parsed, **settings})
    images = check_images(model, images)
    a = check_attributions(images, attributions)
    if "mask" in registry.settings_of(fn):
        settings["mask"] = check_mask(images, settings.get("mask"), getattr(fn, "__name__", "this metric"))
    kw = dict(batch_size=batch_size, precision=precision, progress=progress)
    stages = getattr(fn, "stages", None)
    weights = stages(model, {**registry.settings_of(fn), **settings}) if stages is not None else None
    settings = resolve_for_model(fn, model, tuple(images.shape[1:]), with_image_keys(fn, settings, images.shape[0]),
                                 images)  # once per call, not per stage
    if weights is not None:
        return run_stages(fn, weights, model, images, targets, {**settings, "attribution": a}, **kw)
    return dict(run(fn, model, images, targets, {**settings, "attribution": a}, **kw))


def evaluate_keys(metric: str | Callable, key: Any, n: int, **settings: Any) -> Array:
    """``[n]`` keys: the key ``evaluate(..., metric, key=key, **settings)`` hands the metric for
    each of ``n`` images (``baselines``' policy: ``per_image(named(key, metric, settings), i)`` for
    image ``i``, its index in the batch; ``n`` keys given are used as they are). With a metric's
    draw function (``jaxplain.metrics``: ``mu_fidelity_draws``, ``sensitivity_noise``, ...) and
    the same settings, image ``i``'s key gives the draws ``evaluate`` made for it.
    ``model_randomisation``: the keys its method re-explains with (its weights:
    ``randomised_params`` of ``key`` itself)."""
    fn, parsed = registry.parse_metric(metric)
    settings = registry.resolve(fn, {**parsed, **settings, "key": key})
    n = int(n)
    if n < 1:
        raise InputError(f"n must be the number of images, at least 1, got {n}")
    if settings.get("key") is None:
        raise InputError("evaluate_keys needs a key: a jax.random.key(...) or an int seed")
    return with_image_keys(fn, settings, n)["key"]


def run_stages(fn: Callable, stages: list[tuple[str, Any]], model: Model, images: Array, targets: Targets,
               settings: dict[str, Any], *, batch_size: int | None = None, precision: str | None = None,
               progress: bool = False) -> dict[str, Array]:
    """A staged metric (``marks.staged``) on every image once per stage ``(name, params)``: the
    model with those params through ``run``, so every stage reuses one compiled program (same
    ``apply``, settings and shapes; only the weights, an argument, differ). ``"predicted"``
    targets are the original model's, found once. Each output is stacked to ``[B, S]``;
    ``"score"`` is ``fn.summary(scores [B, S], settings)`` where the metric has one, else the
    last stage's; the names come back under ``fn.stage_label`` as ``[S]``.
    ``images`` are checked (``check_images``), ``settings`` resolved (``resolve_for_model``)."""
    if isinstance(targets, str):
        targets = np.asarray(target_ids(with_precision(model, precision), images, targets, batch_size))
    outs = [run(fn, model.replace(params=params), images, targets, settings, batch_size=batch_size,
                precision=precision, progress=progress) for _, params in stages]
    out = {k: jnp.stack([o[k] for o in outs], axis=1) for k in outs[0]}
    out["score"] = fn.summary(out["score"], settings) if hasattr(fn, "summary") else out["score"][:, -1]
    out[fn.stage_label] = np.array([name for name, _ in stages])
    return out

