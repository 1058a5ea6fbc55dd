"""``explain()``, the one front door, and ``predict()``. Validates, batches (vmap), compiles
(jit, cached), slices large inputs into fixed-size calls, shards each call's batch across all
local devices, and on the CPU's host loop runs a method's chunks one compiled call each."""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxplain import registry
from jaxplain.engine import settings as st
from jaxplain.engine.cost import warn_if_costly
from jaxplain.engine.derived import derived
from jaxplain.errors import CostWarning, InputError
from jaxplain import chunks, xla_cache
from jaxplain.marks import uses_target
from jaxplain.engine.precision import with_precision
from jaxplain.engine.shapes import check_images, num_classes, params_struct
from jaxplain.engine.tokens import grid_view
from jaxplain.types import Array, Model, PyTree, forward

Targets = int | Sequence[int] | np.ndarray | Array | str | None
Tick = Callable[[], None]


class Stage(NamedTuple):
    """One host-loop step: ``chunk`` items summed; ``adds`` to a running total it is given;
    ``finishes`` the method (the last step, which returns the method's output)."""

    chunk: int
    adds: bool
    finishes: bool


@functools.lru_cache(maxsize=64)
def _batched(fn: Callable, apply: Callable, static: st.Frozen, keyed: bool, loop: str,
             stage: Stage | None = None) -> Callable:
    """jit(vmap(method)) for one (method, model, static settings); jit caches per shape and dtype.

    The call is ``(params, images, targets, keys, per_image, shared[, acc, start])``: ``per_image``
    maps setting paths to arrays with a leading batch axis, ``shared`` to arrays every image uses.
    ``stage=None`` is the whole method, its chunks looped by ``loop`` (``scan`` or ``unroll``).
    Otherwise one step of the host loop (``chunks.Window``), returning ``acc``: the running total
    and the values the method ``keep``s, or the method's output for the last step; ``acc`` is
    donated to the next step."""
    static_kw = st.thaw(static)

    def batched(params: PyTree, images: Array, targets: Array, keys: Array | None, per_image: dict,
                arrays: dict, acc: PyTree = None, start: Array | int = 0) -> PyTree:
        def one(x: Array, t: Array, k: Array | None, mine: dict, a: PyTree) -> PyTree:
            kw = st.assemble(static_kw, {**arrays, **mine})
            if keyed:
                kw["key"] = k
            if stage is None:
                return fn(apply, params, x, t, **kw)
            total, kept = a if a is not None else (None, None)
            with chunks.window(chunks.Window(start=start, size=stage.chunk, acc=total, kept=kept,
                                             finishes=stage.finishes)) as w:
                out = fn(apply, params, x, t, **kw)
            return out if stage.finishes else (w.total, tuple(w.kept_out))

        axes = (0, 0, 0 if keyed else None, 0, 0 if acc is not None else None)
        return jax.vmap(one, in_axes=axes)(images, targets, keys, per_image, acc)

    mid = stage is not None and stage.adds and not stage.finishes  # total in, total out: reuse the buffer
    return jax.jit(batched, donate_argnums=(6,) if mid else ())


@dataclasses.dataclass(frozen=True)
class Calls:
    """The jitted calls that explain one batch: ``first`` alone, or a host loop over chunks:
    ``first`` sums chunk 0, ``mid`` adds each chunk at ``starts[:-1]``, ``last`` adds the chunk
    at ``starts[-1]`` and finishes the method. ``until_done``: the steps are the rounds of a
    ``chunks.rounds`` loop, and the mids stop early once no image has work left
    (``chunks.still_going``). Call as ``(params, images, targets, keys, per_image, shared)``;
    ``tick``, if given, is called after each step has finished (or been skipped)."""

    first: Callable
    mid: Callable | None = None
    last: Callable | None = None
    starts: tuple[int, ...] = ()
    until_done: bool = False

    def steps(self) -> list[tuple[Callable, int | None]]:
        """``(jitted, start)`` in call order (``start=None``: the first call, without a total)."""
        mids = [(self.mid, s) for s in self.starts[:-1]]
        return [(self.first, None), *mids, *([(self.last, self.starts[-1])] if self.starts else [])]

    def _drive(self, pick: Callable[[Callable], Callable], args: tuple, tick: Tick | None = None) -> PyTree:
        """Run the steps in order, each through ``pick(jitted)``, threading the running total."""
        out = None
        for jitted, start in self.steps():
            if self.until_done and jitted is self.mid and not chunks.still_going(out[0]):
                if tick is not None:
                    tick()
                continue
            f = pick(jitted)
            out = f(*args) if start is None else f(*args, out, jnp.int32(start))
            if tick is not None:
                jax.block_until_ready(out)
                tick()
        return out

    def __call__(self, params: PyTree, images: Array, targets: Array, keys: Array | None, per_image: dict,
                 shared: dict, tick: Tick | None = None) -> PyTree:
        return self._drive(lambda jitted: jitted, (params, images, targets, keys, per_image, shared), tick)

    def compile(self, params: PyTree, images: Array, targets: Array, keys: Array | None, per_image: dict,
                shared: dict) -> tuple[Callable[[], PyTree], float]:
        """Ahead of time: ``(run, flops)``, ``run()`` one compiled call, ``flops`` XLA's count for it."""
        args = (params, images, targets, keys, per_image, shared)
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
def _chunking(fn: Callable, apply: Callable, static: st.Frozen, keyed: bool, struct: Any,
              image_shape: tuple[int, ...], arrays: tuple[tuple[st.Path, jax.ShapeDtypeStruct], ...]) -> tuple[int, int] | None:
    """``(n, chunk, looped)`` of the method's one outermost ``sum_chunks`` or ``chunks.rounds``
    (``looped``; traced once, not compiled), or ``None`` when it has none or several. ``arrays``: one image's array settings by path."""
    static_kw = st.thaw(static)
    params = jax.tree.unflatten(struct[0], struct[1])

    def one(p: PyTree, x: Array, arrs: dict) -> PyTree:
        extra = {"key": jax.random.key(0)} if keyed else {}
        return fn(apply, p, x, jnp.int32(0), **st.assemble(static_kw, arrs), **extra)

    with chunks.window(chunks.Window()) as w:
        jax.eval_shape(one, params, jax.ShapeDtypeStruct(image_shape, jnp.float32), dict(arrays))
    return (w.n, w.chunk, w.looped) if w.calls == 1 else None


def _slices(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _pad(a: Array, size: int) -> Array:
    """Pad the leading axis to ``size`` by repeating the last row (keeps shapes static)."""
    if a.shape[0] == size:
        return a
    return jnp.concatenate([a, jnp.repeat(a[-1:], size - a.shape[0], axis=0)])


@functools.lru_cache(maxsize=1)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.array(devices), ("b",))


def _per_device(size: int) -> int:
    """Images per device in a call of ``size`` images (``run_batches`` rounds ``size`` up to fill every device)."""
    return -(-size // len(jax.local_devices()))


def _call_size(size: int) -> int:
    """The images of one call of ``run_batches``: ``size`` rounded up to a multiple of the devices."""
    return _per_device(size) * len(jax.local_devices())


def call_images(k: int, size: int) -> int:
    """The images a call of ``run_batches`` computes for ``k`` real ones, ``size`` at most (a
    multiple of the devices, ``_call_size``): the devices times the smallest power of two that
    holds ``k`` spread over them, capped at ``size``. A short call (a run smaller than the batch,
    the last slice of one) pays for at most twice its images, and a batch size needs at most
    ``log2(size) + 2`` compiled programs."""
    devices = len(jax.local_devices())
    per_device = -(-k // devices)
    return min(size, devices * (1 << (per_device - 1).bit_length()))


def run_batches(call: Callable[..., PyTree], params: PyTree, batch: tuple, n: int, size: int) -> PyTree:
    """Call ``call(params, *part)`` on slices of ``size`` images of ``batch`` (pytrees whose
    leaves have a leading axis ``n``; ``None`` passes through), a shorter slice padded to
    ``call_images``, and join the results."""
    devices = tuple(jax.local_devices())  # in a multi-process run, each process uses its own
    size = _call_size(size)
    mesh = _mesh(devices) if len(devices) > 1 else None
    if mesh is not None:  # replicated once per weights' values (jaxplain.engine.derived)
        params = derived(("replicated", mesh), params, lambda p: jax.device_put(p, NamedSharding(mesh, PartitionSpec())))
        shard = NamedSharding(mesh, PartitionSpec("b"))
    outs = []
    for lo, hi in _slices(n, size):
        part = jax.tree.map(lambda a, k=call_images(hi - lo, size): _pad(a[lo:hi], k), batch)
        if mesh is not None:
            part = jax.tree.map(lambda a: jax.device_put(a, shard), part)
        out = call(params, *part)
        outs.append(jax.tree.map(lambda o, k=hi - lo: o[:k], out))
    if len(outs) == 1:
        return outs[0]
    return jax.tree.map(lambda *o: jnp.concatenate(o), *outs)


def predict(model: Model, images: Array, *, batch_size: int | None = None) -> Array:
    """Logits ``[B, K]`` of preprocessed ``images``, in slices of ``batch_size``."""
    return _logits(model, check_images(model, images), batch_size)


def _logits(model: Model, images: Array, batch_size: int | None) -> Array:
    """``predict`` of ``images`` already checked (``check_images``, which warns once per call)."""
    check_batch_size(batch_size)
    xla_cache.ensure()
    n = images.shape[0]
    return run_batches(forward(model.apply), model.params, (images,), n, batch_size or n)


def check_batch_size(batch_size: Any) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")


def target_ids(model: Model, images: Array, targets: Targets, batch_size: int | None) -> Array:
    """``[B]`` int32 class indices from ``targets`` (ints, ``"predicted"``: the top class, or
    ``None``: zeros, for methods that ignore the target), checked against the model's classes."""
    n = images.shape[0]
    if targets is None:  # for methods that ignore the target (checked by explain)
        return jnp.zeros((n,), jnp.int32)
    k = num_classes(model, images.shape[1:])
    if isinstance(targets, str):
        if targets != "predicted":
            raise InputError(f"targets must be ints or 'predicted', got {targets!r}")
        return jnp.argmax(_logits(model, images, batch_size), axis=-1).astype(jnp.int32)
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


class Prepared(NamedTuple):
    """What ``prepare`` hands the caller: ``call`` (the jitted steps), per-image ``keys``,
    ``per_image`` and ``shared`` array settings by path, and the resolved settings without arrays (``static``)."""

    call: Calls
    keys: Array | None
    per_image: dict[st.Path, Array]
    shared: dict[st.Path, Array]
    static: dict[str, Any]


def resolved(fn: Callable, model: Model, images: Array, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as given checked (``registry.resolve``) and resolved for ``model`` and
    ``images`` (``settings.resolve_for_model``): what ``prepare`` and ``run`` take. For callers
    that start from a method and its settings (``bench``, tests); ``explain`` does the same."""
    return st.resolve_for_model(fn, model, tuple(images.shape[1:]), registry.resolve(fn, dict(settings)), images)


def prepare(fn: Callable, model: Model, images: Array, settings: dict[str, Any],
            per_call: int | None = None) -> Prepared:
    """Everything ``explain`` needs to run ``fn`` on ``images`` with ``settings`` resolved once
    for the call (``resolved``: checked and resolved for the model): per-image keys, array
    settings passed as arguments (one per image where the method marks them so and they have a
    batch axis), the rest closed over; ``call(params, images, targets, keys, per_image, shared)``
    runs the jitted method.
    One with a ``chunk`` setting runs chunk by chunk in a host loop where ``chunks.loop_mode()``
    says ``host``; there a method whose chunk counts images (``chunks.counts_images``) and whose
    chunk is not set gets ``chunks.host_chunk`` for ``per_call`` images per call and device
    (default: all of ``images``). A method's ``cost_note`` is warned (``CostWarning``) here.
    A transformer's token layers are shown to the method as their patch grid (``tokens.grid_view``)."""
    xla_cache.ensure()
    model = grid_view(model)
    n, image_shape = images.shape[0], tuple(images.shape[1:])
    settings = dict(settings)
    keys = st.image_keys(settings.get("key"), n, fn, settings)  # baselines' policy: named, then per image
    note = getattr(fn, "cost_note", None)
    message = note(model, image_shape, settings) if note else None
    if message:
        warnings.warn(message, CostWarning, stacklevel=3)
    loop = chunks.loop_mode()
    if loop == "host" and hasattr(fn, "chunk_call_pixels") and "chunk" not in settings:
        settings["chunk"] = chunks.host_chunk(per_call or n, image_shape[0] * image_shape[1], fn.chunk_call_pixels)
    settings.pop("key", None)
    parts = st.split(fn, settings, n)
    static = st.frozen(parts.static)
    keyed = keys is not None
    chunking = None
    if loop == "host" and "chunk" in registry.settings_of(fn):
        one = {**{p: jax.ShapeDtypeStruct(a.shape, a.dtype) for p, a in parts.shared.items()},
               **{p: jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for p, a in parts.per_image.items()}}
        chunking = _chunking(fn, model.apply, static, keyed, params_struct(model), image_shape, tuple(sorted(one.items())))
    if chunking is None or (chunking[0] <= chunking[1] and not chunking[2]):
        call = Calls(_batched(fn, model.apply, static, keyed, "unroll" if loop == "unroll" else "scan"))
    elif chunking[2]:  # rounds of a loop: the first round, one call per further round, then the finish
        stage, most = functools.partial(_batched, fn, model.apply, static, keyed, loop), chunking[0]
        call = Calls(first=stage(Stage(1, False, False)), mid=stage(Stage(1, True, False)) if most > 1 else None,
                     last=stage(Stage(0, True, True)), starts=tuple(range(1, most + 1)), until_done=True)
    else:
        total, chunk, _ = chunking
        steps = chunks.plan(total, chunk)
        stage = functools.partial(_batched, fn, model.apply, static, keyed, loop)
        call = Calls(first=stage(Stage(chunk, False, False)), mid=stage(Stage(chunk, True, False)) if len(steps) > 2 else None,
                     last=stage(Stage(steps[-1][1], True, True)), starts=tuple(s for s, _ in steps[1:]))
    return Prepared(call, keys, parts.per_image, parts.shared, parts.static)


def _check_target_use(fn: Callable, settings: dict[str, Any], targets: Targets) -> None:
    """``targets=None`` for a method or metric (``settings`` resolved) that reads its target is an error."""
    if targets is None and uses_target(fn, settings):
        kind, table = ("metrics", registry.METRICS) if fn in registry.METRICS.values() else ("methods", registry.METHODS)
        free = sorted(name for name, f in table.items() if not uses_target(f, {}))
        name = getattr(fn, "__name__", f"this {kind[:-1]}")
        raise InputError(f"targets=None is only for {kind} that ignore the target ({', '.join(free)}); {name} "
                         f"{'explains' if kind == 'methods' else 'scores'} a class: pass class indices or 'predicted'")


Progress = bool | Callable[[int, int], Any]


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="call", file=sys.stderr, leave=False, dynamic_ncols=True)


def check_progress(progress: Any) -> None:
    if not (isinstance(progress, bool) or callable(progress)):
        raise InputError(f"progress must be True, False or a function called with (done, total), got {progress!r}")


def _ticker(progress: Progress, total: int, desc: str) -> tuple[Tick | None, Callable[[], None]]:
    """``(tick, close)``: ``tick()``, called after each compiled call has finished, moves a bar
    on stderr (``progress=True``) or calls ``progress(done, total)`` (counts of compiled calls)."""
    if progress is False:
        return None, lambda: None
    bar = _progress_bar(total, desc) if progress is True else None
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update()
        else:
            progress(done, total)

    return tick, bar.close if bar is not None else (lambda: None)


def explain(
    model: Model,
    images: Any,
    targets: Targets = "predicted",
    method: str | Callable = "gradient",
    *,
    batch_size: int | None = None,
    precision: str | None = None,
    progress: Progress = False,
    **settings: Any,
) -> PyTree:
    """Explain ``model``'s ``targets`` on a batch of preprocessed ``images [B, H, W, C]``.

    ``targets``: class indices, ``"predicted"`` (the top class), or ``None`` for methods that
    ignore it. ``method``: a registered name (``jaxplain.METHODS``), a string with settings such as
    ``"integrated_gradients(steps=64)"``, or a method function. ``settings`` go to the method;
    an array setting the method takes per image (a ``baseline``) may be one for all images or one
    per image ``[B, ...]``. ``key`` (a ``jax.random`` key or an int seed) is split per image by
    its index, so results do not depend on ``batch_size`` or device count; ``B`` keys give each
    image its own. ``batch_size`` images go through each compiled call; a shorter call (the last,
    or all of a run smaller than ``batch_size``) is padded only to the next power of two. On
    the CPU's host loop an unset ``chunk`` of a method that sums over images (IG points, noise
    samples, windows, masks) is sized to put about sixteen 224x224 images through each call,
    eight for forward passes only (``chunks.host_chunk``); results do not depend on it.
    ``precision``: ``"float32"``, ``"tensorfloat32"`` or ``"bfloat16"`` for the model's arithmetic
    (``jaxplain.engine.precision``); ``None`` is JAX's default. ``progress``: ``True`` for a progress
    bar of compiled calls on stderr, or a function called as ``progress(done, total)`` after each
    compiled call (one per chunk on the CPU's host loop, so it moves within a call's seconds even
    when one batch takes minutes). Returns ``[B, ...]`` float32 (for the gradient family ``[B, H, W, C]``), or
    the method's tuple (``return_delta=True``) with a leading ``B`` on each part.
    """
    fn, parsed = registry.parse(method)
    settings = registry.resolve(fn, {**parsed, **settings})
    images = check_images(model, images)
    settings = st.with_image_keys(fn, settings, images.shape[0])
    settings = st.resolve_for_model(fn, model, tuple(images.shape[1:]), settings, images)
    return run(fn, model, images, targets, settings, batch_size=batch_size, precision=precision, progress=progress)


def run(fn: Callable, model: Model, images: Array, targets: Targets, settings: dict[str, Any], *,
        batch_size: int | None = None, precision: str | None = None, progress: Progress = False) -> PyTree:
    """``fn`` (a method, or a metric with its ``attribution`` among the ``settings``) on every
    image of ``images`` (checked by ``check_images``): what ``explain`` and ``evaluate`` share.
    ``settings`` are resolved once by the caller (``registry.resolve``, then
    ``settings.resolve_for_model``, as ``resolved`` does) and used as they are."""
    check_batch_size(batch_size)
    check_progress(progress)
    _check_target_use(fn, settings, targets)
    model = with_precision(model, precision)
    n = images.shape[0]
    warn_if_costly(fn, model, tuple(images.shape[1:]), settings, n)  # before anything compiles
    ids = target_ids(model, images, targets, batch_size)
    size = batch_size or n
    prep = prepare(fn, model, images, settings, _per_device(call_images(min(n, size), _call_size(size))))
    tick, close = _ticker(progress, len(_slices(n, _call_size(size))) * len(prep.call.steps()),
                          f"{getattr(fn, '__name__', 'method')} on {n} image{'s' * (n > 1)}")
    try:
        return run_batches(lambda p, x, t, k, mine: prep.call(p, x, t, k, mine, prep.shared, tick), model.params,
                           (images, ids, prep.keys, prep.per_image), n, size)
    finally:
        close()
