"""pytest-benchmark suite; runs unchanged on CPU, GPU and TPU. ``--quick`` keeps a 2-core CPU run
to a few minutes: the tiny model for every method, VGG16 for the gradient family's anchors with
fewer steps. Without it: every method at its usual settings, batch 1/8/32/128 as memory allows."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# Torch runs beside JAX on the same GPU: JAX must not take 75% of its memory up front, and it
# keeps what it has allocated, so cap it (measured on an H200: Captum's IG at batch 32 ran out
# of memory beside JAX's default pool).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import pytest

from jaxplain import bench


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="a short CPU-sized run")


@pytest.fixture(scope="session")
def quick(request):
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def peak():
    """FLOP/s of a matrix product on this device, measured in this session."""
    return bench.matmul_peak()


@pytest.fixture(scope="session")
def device():
    return bench.device_info()


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--quick"):
        return
    keep = [i for i in items if "quick" in i.keywords]
    config.hook.pytest_deselected(items=[i for i in items if "quick" not in i.keywords])
    items[:] = keep


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: part of the --quick run")
