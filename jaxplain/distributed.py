"""Many hosts: each process explains its own slice of the inputs on its local devices.

Set-up, once per process before any other JAX call::

    import jaxplain.distributed as dist
    dist.initialize("10.0.0.1:1234", num_processes=4, process_id=RANK)  # or no arguments on
    files = dist.my_share(all_files)      # TPU pods / SLURM, where JAX finds them itself
    ... jaxplain.explain(...) on the images of `files` ...

``explain`` shards each call over ``jax.local_devices()``, so processes never wait on each other;
together they cover every input exactly once. The command line does the same with
``jaxplain explain ... --coordinator HOST:PORT --num-processes N --process-id I``.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import jax

T = TypeVar("T")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` with the same arguments (``None``: discovered by JAX)."""
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def my_share(items: Sequence[T]) -> list[T]:
    """This process's slice of ``items``: every ``process_count``-th item from ``process_index``."""
    return list(items)[jax.process_index() :: jax.process_count()]


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
