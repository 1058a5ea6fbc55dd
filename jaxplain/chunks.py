"""Sums over many model evaluations (IG steps, noise samples, masks) in chunks of bounded size.

Memory depends on the chunk, never on the number of items. Three ways to loop over the chunks:

- ``"scan"``: a ``lax.scan`` inside the program. Flat memory; the only choice when a method is
  called directly under the user's own ``jit``. On XLA:CPU about 2x slower: inside a loop body
  part of the convolutions leave the fast YNNPACK kernels.
- ``"host"``: ``explain()`` compiles the method once per chunk position and loops in Python,
  carrying the running total on the device (donated from call to call). Flat memory and full
  speed on CPU. A method is traced with a ``Window`` that tells its outermost ``sum_chunks``
  which chunk to add; everything after the sum runs only in the last call. Code before the sum is
  traced in every call: a method wraps a costly value there (a forward pass) in ``keep``, which the
  first call computes and hands on to the next calls.
- ``"unroll"``: chunks written out in one program. Fast on CPU, but XLA keeps every chunk's
  buffers alive (VGG16 IG, batch 2: 3.4 GB at 16 steps, 9.2 GB at 64, 16.9 GB at 128).

``$JAXPLAIN_CHUNK_LOOP`` picks one; by default ``host`` on CPU and ``scan`` elsewhere.

A method may instead have one outermost ``rounds``, a ``lax.while_loop`` of at most a known number
of bodies (adaptive IG's refinement). On the host loop each body is one compiled call, the loop's
state carried on the device (donated) with each image's ``todo`` flag; the loop stops as soon as
no image of the call has work left, and a last call runs what follows the loop.

Writing a chunked method (see ``occlusion`` or ``layer_integrated_gradients``):

1. One outermost ``sum_chunks`` per method: the host loop splits that one sum across its calls
   (a second outermost sum is an error there; sums nested inside the summed function run whole).
   Give the method a ``chunk`` setting and pass it on; mark it ``@counts_images`` when a chunk
   item is a full model pass, so ``explain`` sizes an unset chunk to the call.
2. A costly value needed before the sum (a forward pass, a layer's activation) goes through
   ``keep(lambda: ...)``: the first call computes it and hands it to the later calls. Work after
   the sum runs in the last call only.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from jaxplain.errors import InputError
from jaxplain.types import Array, PyTree

LOOPS = ("host", "scan", "unroll")


def loop_mode() -> str:
    """The chunk loop ``explain()`` uses: ``$JAXPLAIN_CHUNK_LOOP``, else ``host`` on CPU, ``scan`` elsewhere."""
    mode = os.environ.get("JAXPLAIN_CHUNK_LOOP") or ("host" if jax.default_backend() == "cpu" else "scan")
    if mode not in LOOPS:
        raise InputError(f"JAXPLAIN_CHUNK_LOOP must be one of {', '.join(LOOPS)}, not {mode!r}")
    return mode


@dataclasses.dataclass
class Window:
    """One host-loop step: the outermost ``sum_chunks`` of the traced method adds items
    ``[start, start + size)`` of its ``n`` to ``acc`` and leaves the result in ``total``.
    ``size=None`` only records ``n`` and ``chunk`` (the plan) and sums as usual. ``kept``: the
    values of the method's ``keep`` calls, computed by the first call (``None`` there);
    ``kept_out`` collects them for the next call. ``finishes``: this call's output is the
    method's (else only ``total`` and ``kept_out`` are kept: see ``finishing``). For an outermost
    ``rounds`` instead: ``looped`` is set, ``n`` is its most bodies and ``chunk`` 1; ``size`` is
    the bodies this call runs (1, or 0 in the last call) and ``acc`` / ``total`` are
    ``(state, todo)``."""

    start: Array | int = 0
    size: int | None = None
    acc: PyTree | None = None
    total: PyTree | None = None
    n: int | None = None
    chunk: int | None = None
    calls: int = 0
    kept: tuple | None = None
    kept_out: list = dataclasses.field(default_factory=list)
    finishes: bool = True
    looped: bool = False


_window: contextvars.ContextVar[Window | None] = contextvars.ContextVar("jaxplain_window", default=None)


@contextlib.contextmanager
def window(w: Window) -> Iterator[Window]:
    """Trace a method under ``w`` (see ``Window``)."""
    token = _window.set(w)
    try:
        yield w
    finally:
        _window.reset(token)


@contextlib.contextmanager
def _outside_window() -> Iterator[None]:
    token = _window.set(None)  # sums nested inside the summed function run whole
    try:
        yield
    finally:
        _window.reset(token)


def keep(compute: Callable[[], PyTree]) -> PyTree:
    """``compute()``, a value a method needs before its sum (a forward pass, an activation),
    computed once per host loop: the first call computes it, the later calls receive it instead of
    recomputing it (``Window.kept``). Elsewhere simply ``compute()``. Sums inside ``compute``
    (a wrapped method's own) run whole: they are not the method's outermost sum."""
    w = _window.get()
    if w is None or w.size is None:
        with _outside_window():
            return compute()
    if w.kept is None:
        with _outside_window():
            value = compute()
    else:
        value = w.kept[len(w.kept_out)]
    w.kept_out.append(value)
    return value


def finishing() -> bool:
    """Whether the method's result is used in this trace: ``False`` in a host loop's calls before
    the last, whose only output is the running total. Side effects after the sum or loop (a
    warning's callback) belong under ``if finishing():``."""
    w = _window.get()
    return w is None or w.finishes


def rounds(todo: Callable[[PyTree], Array], body: Callable[[PyTree], PyTree], init: PyTree, most: int) -> PyTree:
    """``lax.while_loop(todo, body, init)`` for a loop that stops after at most ``most`` bodies.

    On the host loop, a method's one outermost loop (in place of an outermost ``sum_chunks``):
    each call runs one body on the state the last call left, where ``todo`` still holds (as
    ``while_loop`` does under ``vmap``), and hands on ``(state, todo(state))``; the driver
    (``still_going``) stops calling when no image has work left; the last call only finishes."""
    w = _window.get()
    if w is not None:
        w.calls += 1
        w.n, w.chunk, w.looped = most, 1, True
        if w.size is not None:
            if w.calls > 1:
                raise InputError("a host-looped method may have only one outermost sum_chunks or rounds")
            state = init if w.acc is None else w.acc[0]
            with _outside_window():
                if w.size:
                    go = todo(state)
                    state = jax.tree.map(lambda new, old: jnp.where(go, new, old), body(state), state)
                w.total = (state, todo(state))
            return state
    with _outside_window():
        return jax.lax.while_loop(todo, body, init)


def still_going(total: PyTree) -> bool:
    """Whether any image of a host-looped ``rounds``' running total ``(state, todo [B])`` has work left."""
    return bool(jnp.any(total[1]))


def _check_chunk(chunk: Any) -> None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise InputError(f"chunk must be a positive int or None, got {chunk!r}")


def sum_chunks(fn: Callable[[PyTree], PyTree], xs: PyTree, chunk: int | None) -> PyTree:
    """``sum_i fn(xs[i*chunk:(i+1)*chunk])`` over the leading axis ``n`` of every leaf of ``xs``.

    ``fn`` maps a chunk ``[c, ...]`` to a pytree already summed over its ``c`` items; the last
    chunk may be shorter. ``chunk=None`` evaluates all ``n`` at once.
    """
    _check_chunk(chunk)
    n = jax.tree.leaves(xs)[0].shape[0]
    chunk = n if chunk is None else min(chunk, n)
    w = _window.get()
    if w is not None:
        w.calls += 1
        w.n, w.chunk = n, chunk
        if w.size is not None:
            if w.calls > 1:
                raise InputError("a host-looped method may have only one outermost sum_chunks")
            part = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, w.start, w.size), xs)
            with _outside_window():
                here = fn(part)
            w.total = here if w.acc is None else jax.tree.map(jnp.add, w.acc, here)
            return w.total
    with _outside_window():
        return _sum_all(fn, xs, n, chunk, "unroll" if loop_mode() == "unroll" else "scan")


def along(fn: Callable[[Array], PyTree], n: int, chunk: int | None) -> PyTree:
    """``fn(i)`` for ``i = 0 .. n - 1`` stacked on a leading axis ``n`` (a pytree), ``chunk`` at a
    time under ``vmap``. This is the calling method's one outermost ``sum_chunks``: each chunk
    scatters its values into zeros, so the host loop adds the chunks up."""

    def part(ids: Array) -> PyTree:
        values = jax.vmap(fn)(ids)
        return jax.tree.map(lambda v: jnp.zeros((n, *v.shape[1:]), v.dtype).at[ids].set(v), values)

    return sum_chunks(part, jnp.arange(n), chunk)


def _sum_all(fn: Callable[[PyTree], PyTree], xs: PyTree, n: int, chunk: int, mode: str) -> PyTree:
    full, rest = divmod(n, chunk)
    head = jax.tree.map(lambda a: a[: full * chunk].reshape(full, chunk, *a.shape[1:]), xs)
    total = fn(jax.tree.map(lambda a: a[0], head))
    if full > 1 and mode == "scan":
        def body(acc: PyTree, part: PyTree) -> tuple[PyTree, None]:
            return jax.tree.map(jnp.add, acc, fn(part)), None

        total, _ = jax.lax.scan(body, total, jax.tree.map(lambda a: a[1:], head))
    else:
        for i in range(1, full):
            total = jax.tree.map(jnp.add, total, fn(jax.tree.map(lambda a, i=i: a[i], head)))
    if rest:
        total = jax.tree.map(jnp.add, total, fn(jax.tree.map(lambda a: a[full * chunk :], xs)))
    return total


# Images x pixels per host-loop call (per device) at which VGG16 on XLA:CPU ran fastest (2-core
# AVX2 CPU; larger calls leave the caches). Backward passes: per path point, IG at batch 8 took
# 0.45 s per image with 16 or 32 images per call, 0.52 s with 64, about 0.50 s with 128. Forward
# passes only: occlusion at batch 1 ran at 0.095 images/s with 4 or 8 windows per call, 0.078
# with 16; a plain forward pass at 5.0 images/s at batch 4 and 8, 4.45 at batch 16.
CALL_PIXELS = 16 * 224 * 224
FORWARD_CALL_PIXELS = 8 * 224 * 224


def counts_images(fn: Callable | None = None, *, forward_only: bool = False) -> Callable:
    """Mark ``fn``'s ``chunk`` as a count of full-size model passes (IG path points, noise samples,
    windows, masks): on the host loop, ``explain`` sizes a chunk the user did not set to the call,
    ``FORWARD_CALL_PIXELS`` for a method of ``forward_only`` passes, else ``CALL_PIXELS``.
    Use as ``@counts_images`` or ``@counts_images(forward_only=True)``."""
    def mark(f: Callable) -> Callable:
        f.chunk_call_pixels = FORWARD_CALL_PIXELS if forward_only else CALL_PIXELS
        return f

    return mark if fn is None else mark(fn)


def host_chunk(per_call: int, image_pixels: int, call_pixels: int = CALL_PIXELS) -> int:
    """The chunk that puts about ``call_pixels`` through one host-loop call of ``per_call`` images."""
    return max(1, call_pixels // (per_call * image_pixels))


def plan(n: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each chunk of ``n`` items."""
    return [(s, min(chunk, n - s)) for s in range(0, n, chunk)]
