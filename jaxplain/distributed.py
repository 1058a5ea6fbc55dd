"""Many hosts: each process explains its own slice of the inputs on its local devices.

Set-up, once per process before any other JAX call::

    import jaxplain.distributed as dist
    dist.initialize("10.0.0.1:1234", num_processes=4, process_id=RANK)  # or no arguments on
    files = dist.my_share(all_files)      # TPU pods / SLURM, where JAX finds them itself
    ... jaxplain.explain(...) on the images of `files` ...

``explain`` shards each call over ``jax.local_devices()``, so processes never wait on each other;
together they cover every input exactly once. The command line does the same with
``jaxplain explain ... --coordinator HOST:PORT --num-processes N --process-id I``.

A process other than 0 waits at most ``JAXPLAIN_COORDINATOR_TIMEOUT`` seconds (default 120) for
the coordinator to answer, then raises an ``InputError`` naming the address.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Sequence, TypeVar

import jax

from jaxplain.errors import InputError

T = TypeVar("T")
TIMEOUT_VARIABLE = "JAXPLAIN_COORDINATOR_TIMEOUT"


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout: float | None = None) -> None:
    """``jax.distributed.initialize`` with the same arguments (``None``: discovered by JAX).

    A process other than 0 first waits up to ``timeout`` seconds (default: the environment's
    ``JAXPLAIN_COORDINATOR_TIMEOUT``, else 120) until ``coordinator`` accepts a connection;
    ``InputError`` if it never does (JAX itself would wait 5 minutes, then abort the process).
    """
    if timeout is None:
        text = os.environ.get(TIMEOUT_VARIABLE, "120")
        try:
            timeout = float(text)
        except ValueError:
            raise InputError(f"{TIMEOUT_VARIABLE}={text!r}: not a number of seconds") from None
    if timeout <= 0:
        raise InputError(f"the coordinator timeout must be positive seconds, got {timeout}")
    if coordinator is not None and process_id not in (None, 0):
        wait_for(coordinator, timeout)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=max(1, int(timeout)))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"coordinator {address!r}: not HOST:PORT (such as 10.0.0.1:1234)")
    return host.strip("[]"), int(port)


def wait_for(address: str, timeout: float) -> None:
    """Return once ``address`` (``HOST:PORT``) accepts a TCP connection; ``InputError`` after ``timeout`` s."""
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except socket.gaierror as e:
            raise InputError(f"coordinator {address}: unknown host {host!r} ({e.strerror or e})") from None
        except OSError as e:
            if time.monotonic() + 0.25 >= deadline:
                raise InputError(f"coordinator {address}: nothing answered there in {timeout:g} s ({e.strerror or e}); "
                                 "start process 0 first and check the address "
                                 f"({TIMEOUT_VARIABLE} sets the wait)") from None
        time.sleep(0.25)


def my_share(items: Sequence[T]) -> list[T]:
    """This process's slice of ``items``: every ``process_count``-th item from ``process_index``."""
    return list(items)[jax.process_index() :: jax.process_count()]


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
