"""First-call time in fresh processes (``benchmarks/first_call.py``): import, load, the first map
of gradient and Grad-CAM (compile and run) and the second, cold and with the persistent compile
cache warm. ``--quick``: the tiny VGG only."""

import pytest

from benchmarks.first_call import MODELS, first_call


@pytest.mark.parametrize("name", [pytest.param("tiny", marks=pytest.mark.quick), *MODELS])
def test_first_call(benchmark, device, name):
    benchmark.group = "first call (fresh processes, cold then warm cache)"
    row = benchmark.pedantic(lambda: first_call(name), rounds=1, iterations=1)
    benchmark.extra_info.update(device, **row)
    assert row["cold"]["cache"] == row["warm"]["cache"] and row["cache_bytes"] > 0
