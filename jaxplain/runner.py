"""explain(): the one front door. Validates, batches (vmap), compiles (jit, cached), slices
large inputs into fixed-size calls, and shards each call's batch across all local devices."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxplain import registry
from jaxplain.errors import InputError
from jaxplain.methods import chunks
from jaxplain.precision import with_precision
from jaxplain.types import Array, Model, PyTree

Targets = int | Sequence[int] | np.ndarray | Array | str | None


def _is_array(v: Any) -> bool:
    return isinstance(v, (np.ndarray, jax.Array))


def _freeze(v: Any) -> Any:
    """A hashable stand-in for a static setting (dicts and lists become sorted tuples)."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(static: tuple) -> dict[str, Any]:
    """The method's keyword settings from their frozen form (``base_settings`` back to a dict)."""
    return {k: (dict(v) if k == "base_settings" and v is not None else v) for k, v in static}


Stage = tuple[int, bool, bool] | None  # host-loop step: (chunk size, adds to a total, returns the output)


@functools.lru_cache(maxsize=64)
def _batched(fn: Callable, apply: Callable, static: tuple, array_names: tuple[str, ...], keyed: bool,
             loop: str, stage: Stage = None) -> Callable:
    """jit(vmap(method)) for one (method, model, static settings); jit caches per shape and dtype.

    ``stage=None`` is the whole method, its chunks looped by ``loop`` (``scan`` or ``unroll``).
    Otherwise one step of the host loop (``chunks.Window``): ``(params, images, targets, keys,
    arrays[, acc, start])`` -> ``acc``, the running total and the values the method ``keep``s,
    or the method's output for the last step; ``acc`` is donated to the next step."""
    static_kw = _thaw(static)

    def batched(params: PyTree, images: Array, targets: Array, keys: Array | None, arrays: tuple,
                acc: PyTree = None, start: Array | int = 0) -> PyTree:
        shared = dict(zip(array_names, arrays))

        def one(x: Array, t: Array, k: Array | None, a: PyTree) -> PyTree:
            extra = {"key": k} if keyed else {}
            if stage is None:
                return fn(apply, params, x, t, **static_kw, **shared, **extra)
            total, kept = a if a is not None else (None, None)
            with chunks.window(chunks.Window(start=start, size=stage[0], acc=total, kept=kept)) as w:
                out = fn(apply, params, x, t, **static_kw, **shared, **extra)
            return out if stage[2] else (w.total, tuple(w.kept_out))

        axes = (0, 0, 0 if keyed else None, 0 if acc is not None else None)
        return jax.vmap(one, in_axes=axes)(images, targets, keys, acc)

    mid = stage is not None and stage[1] and not stage[2]  # total in, total out: the buffer is reused
    return jax.jit(batched, donate_argnums=(5,) if mid else ())


@dataclasses.dataclass(frozen=True)
class Calls:
    """The jitted calls that explain one batch: ``first`` alone, or a host loop over chunks:
    ``first`` sums chunk 0, ``mid`` adds each chunk at ``starts[:-1]``, ``last`` adds the chunk
    at ``starts[-1]`` and finishes the method. Call as ``(params, images, targets, keys, shared)``."""

    first: Callable
    mid: Callable | None = None
    last: Callable | None = None
    starts: tuple[int, ...] = ()

    def steps(self) -> list[tuple[Callable, int | None]]:
        """``(jitted, start)`` in call order (``start=None``: the first call, without a total)."""
        mids = [(self.mid, s) for s in self.starts[:-1]]
        return [(self.first, None), *mids, *([(self.last, self.starts[-1])] if self.starts else [])]

    def _drive(self, pick: Callable[[Callable], Callable], args: tuple) -> PyTree:
        """Run the steps in order, each through ``pick(jitted)``, threading the running total."""
        out = None
        for jitted, start in self.steps():
            f = pick(jitted)
            out = f(*args) if start is None else f(*args, out, jnp.int32(start))
        return out

    def __call__(self, params: PyTree, images: Array, targets: Array, keys: Array | None, shared: tuple) -> PyTree:
        return self._drive(lambda jitted: jitted, (params, images, targets, keys, shared))

    def compile(self, params: PyTree, images: Array, targets: Array, keys: Array | None,
                shared: tuple) -> tuple[Callable[[], PyTree], float]:
        """Ahead of time: ``(run, flops)``, ``run()`` one compiled call, ``flops`` XLA's count for it."""
        args = (params, images, targets, keys, shared)
        acc = jax.eval_shape(self.first, *args) if self.starts else None
        compiled, cost = {}, {}
        for jitted, start in self.steps():
            if id(jitted) not in compiled:
                more = () if start is None else (acc, jax.ShapeDtypeStruct((), jnp.int32))
                compiled[id(jitted)] = jitted.lower(*args, *more).compile()
                c = compiled[id(jitted)].cost_analysis()
                c = c[0] if isinstance(c, (list, tuple)) else c
                cost[id(jitted)] = float((c or {}).get("flops", 0.0))
        flops = sum(cost[id(jitted)] for jitted, _ in self.steps())
        return lambda: self._drive(lambda jitted: compiled[id(jitted)], args), flops


@functools.lru_cache(maxsize=64)
def _chunking(fn: Callable, apply: Callable, static: tuple, array_names: tuple[str, ...], keyed: bool,
              params_struct: Any, image_shape: tuple[int, ...], arrays: tuple) -> tuple[int, int] | None:
    """``(n, chunk)`` of the method's one outermost ``sum_chunks`` (traced once, not compiled),
    or ``None`` when it has none or several."""
    static_kw = _thaw(static)
    params = jax.tree.unflatten(params_struct[0], params_struct[1])

    def one(p: PyTree, x: Array, arrs: tuple) -> PyTree:
        extra = {"key": jax.random.key(0)} if keyed else {}
        return fn(apply, p, x, jnp.int32(0), **static_kw, **dict(zip(array_names, arrs)), **extra)

    with chunks.window(chunks.Window()) as w:
        jax.eval_shape(one, params, jax.ShapeDtypeStruct(image_shape, jnp.float32), arrays)
    return (w.n, w.chunk) if w.calls == 1 else None


@functools.lru_cache(maxsize=64)
def _shapes(apply: Callable, params_struct: Any, shape: tuple[int, ...]) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """``(logits shape, {layer: activation shape})`` for one image, from one trace (no compile)."""
    params = jax.tree.unflatten(params_struct[0], params_struct[1])
    logits, acts = jax.eval_shape(lambda p, x: apply(p, x), params, jax.ShapeDtypeStruct(shape, jnp.float32))
    return logits.shape, {k: v.shape for k, v in acts.items()}


def _struct(model: Model) -> tuple:
    leaves, treedef = jax.tree.flatten(model.params)
    return (treedef, tuple(jax.ShapeDtypeStruct(l.shape, l.dtype) for l in leaves))


def layer_shapes(model: Model, image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every layer's activation shape for one image of ``image_shape`` (traced, not compiled)."""
    return _shapes(model.apply, _struct(model), tuple(image_shape))[1]


def default_layer(model: Model, image_shape: tuple[int, ...]) -> str:
    """The last convolutional layer the model names (the last spatial one if none says conv)."""
    shapes = layer_shapes(model, image_shape)
    spatial = [name for name in model.layers if len(shapes.get(name, ())) == 3]
    convs = [name for name in spatial if "conv" in name]
    if not (convs or spatial):
        raise InputError(f"{model.name} has no spatial layer [h, w, K]")
    return (convs or spatial)[-1]


def check_layer(model: Model, image_shape: tuple[int, ...], layer: str, *, spatial: bool = False) -> tuple[int, ...]:
    """The layer's activation shape, or an ``InputError`` naming the valid layers."""
    shapes = layer_shapes(model, image_shape)
    if layer not in shapes:
        raise InputError(f"unknown layer {layer!r}; {model.name}'s layers: {', '.join(model.layers)}")
    if spatial and len(shapes[layer]) != 3:
        raise InputError(f"layer {layer!r} has shape {shapes[layer]}: CAM methods need a spatial layer [h, w, K]")
    return shapes[layer]


def num_classes(model: Model, image_shape: tuple[int, ...]) -> int:
    """Number of logits ``model.apply`` gives for one image of ``image_shape`` (traced, not compiled)."""
    shape = _shapes(model.apply, _struct(model), tuple(image_shape))[0]
    if len(shape) != 1:
        raise InputError(f"{model.name} outputs {shape} per image, not a vector of logits: it has no classifier")
    return shape[0]


def check_images(model: Model, images: Any) -> Array:
    """Preprocessed float images ``[B, H, W, C]`` that fit ``model``, or an ``InputError``."""
    a = images if isinstance(images, jax.Array) else np.asarray(images)
    if a.ndim != 4:
        hint = " (add a batch axis: images[None])" if a.ndim == 3 else ""
        raise InputError(f"images must be a batch [B, H, W, C], got shape {a.shape}{hint}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise InputError(f"images must be preprocessed floats (model.preprocess), got dtype {a.dtype}")
    if a.shape[0] == 0:
        raise InputError("images is an empty batch")
    channels = getattr(model, "channels", 3)
    if a.shape[-1] != channels:
        raise InputError(f"{model.name} takes {channels} channels, got images of shape {a.shape}")
    hw = tuple(a.shape[1:3])
    if model.input_size is not None and hw != tuple(model.input_size):
        raise InputError(f"{model.name} takes {model.input_size[0]}x{model.input_size[1]} images, got {hw[0]}x{hw[1]}")
    if min(hw) < model.min_size:
        raise InputError(f"{model.name} needs images of at least {model.min_size}x{model.min_size}, got {hw[0]}x{hw[1]}")
    a = jnp.asarray(a, jnp.float32)
    if not bool(jnp.isfinite(a).all()):
        bad = np.unique(np.nonzero(~np.isfinite(np.asarray(a)))[0])
        raise InputError(f"images {bad.tolist()[:8]} contain NaN or infinite pixels")
    return a


def _slices(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _pad(a: Array | None, size: int) -> Array | None:
    """Pad the leading axis to ``size`` by repeating the last row (keeps shapes static)."""
    if a is None or a.shape[0] == size:
        return a
    return jnp.concatenate([a, jnp.repeat(a[-1:], size - a.shape[0], axis=0)])


@functools.lru_cache(maxsize=1)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.array(devices), ("b",))


_replicated: dict[tuple[int, int], tuple[PyTree, PyTree]] = {}


def _replicate(params: PyTree, mesh: Mesh) -> PyTree:
    key = (id(params), id(mesh))
    if key not in _replicated:
        _replicated.clear()
        _replicated[key] = (params, jax.device_put(params, NamedSharding(mesh, PartitionSpec())))
    return _replicated[key][1]


def _per_device(size: int) -> int:
    """Images per device in a call of ``size`` images (``_run`` rounds ``size`` up to fill every device)."""
    return -(-size // len(jax.local_devices()))


def _run(call: Callable[..., PyTree], params: PyTree, batch: tuple, n: int, size: int) -> PyTree:
    """Call ``call`` on fixed-size slices of ``batch`` (leading axis ``n``) and join the results."""
    devices = tuple(jax.local_devices())  # in a multi-process run, each process uses its own
    size = _per_device(size) * len(devices)
    mesh = _mesh(devices) if len(devices) > 1 else None
    if mesh is not None:
        params = _replicate(params, mesh)
        shard = NamedSharding(mesh, PartitionSpec("b"))
    outs = []
    for lo, hi in _slices(n, size):
        part = tuple(_pad(None if a is None else a[lo:hi], size) for a in batch)
        if mesh is not None:
            part = tuple(None if a is None else jax.device_put(a, shard) for a in part)
        out = call(params, *part)
        outs.append(jax.tree.map(lambda o, k=hi - lo: o[:k], out))
    if len(outs) == 1:
        return outs[0]
    return jax.tree.map(lambda *o: jnp.concatenate(o), *outs)


def predict(model: Model, images: Array, *, batch_size: int | None = None) -> Array:
    """Logits ``[B, K]`` of preprocessed ``images``, in slices of ``batch_size``."""
    images = check_images(model, images)
    n = images.shape[0]
    fwd = _forward(model.apply)
    return _run(lambda p, x: fwd(p, x), model.params, (images,), n, batch_size or n)


@functools.lru_cache(maxsize=16)
def _forward(apply: Callable) -> Callable:
    return jax.jit(jax.vmap(lambda p, x: apply(p, x)[0], in_axes=(None, 0)))


def _targets(model: Model, images: Array, targets: Targets, batch_size: int | None) -> Array:
    n = images.shape[0]
    if targets is None:  # for methods that ignore the target (neurons, Eigen-CAM)
        return jnp.zeros((n,), jnp.int32)
    k = num_classes(model, images.shape[1:])
    if isinstance(targets, str):
        if targets != "predicted":
            raise InputError(f"targets must be ints or 'predicted', got {targets!r}")
        return jnp.argmax(predict(model, images, batch_size=batch_size), axis=-1).astype(jnp.int32)
    t = np.asarray(targets)
    if not np.issubdtype(t.dtype, np.integer):
        raise InputError(f"targets must be integer class indices, got dtype {t.dtype}")
    if t.ndim == 0:
        t = np.full(n, t)
    if t.shape != (n,):
        raise InputError(f"targets must be one int or [B]={n} ints, got shape {t.shape}")
    bad = t[(t < 0) | (t >= k)]
    if bad.size:
        raise InputError(f"target {int(bad[0])} is outside [0, {k}) for {model.name}")
    return jnp.asarray(t, jnp.int32)


def _resolve_model_settings(fn: Callable, model: Model, images: Array, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that need the model: ``baseline="black"`` is the preprocessed black image; a
    missing ``layer`` is the last conv layer; layers and neurons are checked against the model."""
    from jaxplain.methods.layer import check_neuron

    if "layer" in registry.settings_of(fn):
        if settings.get("layer") is None:
            settings["layer"] = default_layer(model, images.shape[1:])
        shape = check_layer(model, images.shape[1:], settings["layer"], spatial=getattr(fn, "spatial_layer", False))
        if "neuron" in registry.settings_of(fn):
            check_neuron(shape, settings.get("neuron"))
    if isinstance(settings.get("baseline"), str) and settings["baseline"] == "black":
        black = np.zeros((1, *images.shape[1:3], 3), np.uint8)
        settings["baseline"] = jnp.asarray(model.preprocess(black)[0], jnp.float32)
    return settings


def prepare(fn: Callable, model: Model, images: Array, settings: dict[str, Any],
            per_call: int | None = None) -> tuple[Calls, Array | None, tuple, dict[str, Any]]:
    """``(call, keys, shared, static)`` for ``fn`` on ``images``: model-dependent settings resolved,
    per-image keys ``fold_in(key, index)``, array settings passed as arguments (``shared``), the
    rest (``static``) closed over; ``call(params, images, targets, keys, shared)`` runs the jitted
    method; one with a ``chunk`` setting runs chunk by chunk in a host loop where
    ``chunks.loop_mode()`` says ``host``. There a method whose chunk counts images
    (``chunks.counts_images``) and whose chunk is not set gets ``chunks.host_chunk`` for
    ``per_call`` images per call and device (default: all of ``images``)."""
    settings = _resolve_model_settings(fn, model, images, dict(settings))
    loop = chunks.loop_mode()
    if loop == "host" and hasattr(fn, "chunk_call_pixels") and "chunk" not in settings:
        settings["chunk"] = chunks.host_chunk(per_call or images.shape[0], images.shape[1] * images.shape[2],
                                              fn.chunk_call_pixels)
    key = settings.pop("key", None)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0])) if key is not None else None
    arrays = {k: v for k, v in settings.items() if _is_array(v)}
    static = {k: v for k, v in settings.items() if k not in arrays}
    frozen = tuple(sorted((k, _freeze(v)) for k, v in static.items()))
    names = tuple(sorted(arrays))
    shared = tuple(jnp.asarray(arrays[k]) for k in names)
    try:
        hash(frozen)
    except TypeError:
        raise InputError(f"settings must be literals, functions or arrays; got {frozen}") from None
    keyed = key is not None
    split = None
    if loop == "host" and "chunk" in registry.settings_of(fn):
        structs = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in shared)
        split = _chunking(fn, model.apply, frozen, names, keyed, _struct(model), tuple(images.shape[1:]), structs)
    if split is None or split[0] <= split[1]:
        return Calls(_batched(fn, model.apply, frozen, names, keyed, "unroll" if loop == "unroll" else "scan")), keys, shared, static
    n, chunk = split
    steps = chunks.plan(n, chunk)
    stage = functools.partial(_batched, fn, model.apply, frozen, names, keyed, loop)
    call = Calls(first=stage((chunk, False, False)), mid=stage((chunk, True, False)) if len(steps) > 2 else None,
                 last=stage((steps[-1][1], True, True)), starts=tuple(s for s, _ in steps[1:]))
    return call, keys, shared, static


def explain(
    model: Model,
    images: Any,
    targets: Targets = "predicted",
    method: str | Callable = "gradient",
    *,
    batch_size: int | None = None,
    precision: str | None = None,
    **settings: Any,
) -> PyTree:
    """Explain ``model``'s ``targets`` on a batch of preprocessed ``images [B, H, W, C]``.

    ``targets``: class indices, ``"predicted"`` (the top class), or ``None`` for methods that
    ignore it. ``method``: a registered name (``jaxplain.METHODS``), a string with settings such as
    ``"integrated_gradients(steps=64)"``, or a method function. ``settings`` go to the method;
    ``key`` (a ``jax.random`` key) is split per image by its index, so results do not depend on
    ``batch_size`` or device count. ``batch_size`` images go through each compiled call (the
    last call padded). On the CPU's host loop an unset ``chunk`` of a method that sums over images
    (IG points, noise samples, windows, masks) is sized to put about sixteen 224x224 images through
    each call, eight for forward passes only (``chunks.host_chunk``); results do not depend on it.
    ``precision``: ``"float32"``, ``"tensorfloat32"`` or ``"bfloat16"`` for the model's arithmetic
    (``jaxplain.precision``); ``None`` is JAX's default. Returns ``[B, ...]`` float32 (for the
    gradient family ``[B, H, W, C]``), or the method's tuple (``return_delta=True``) with a leading
    ``B`` on each part.
    """
    fn, parsed = registry.parse(method)
    settings = {**parsed, **settings}
    registry.check_settings(fn, settings)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    images = check_images(model, images)
    model = with_precision(model, precision)
    n = images.shape[0]
    target_ids = _targets(model, images, targets, batch_size)
    call, keys, shared, _ = prepare(fn, model, images, settings, _per_device(batch_size or n))
    return _run(lambda p, x, t, k: call(p, x, t, k, shared), model.params, (images, target_ids, keys), n, batch_size or n)
