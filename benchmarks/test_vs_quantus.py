"""Each metric beside Quantus 0.6 in the pytest-benchmark suite: the tiny model (32x32), batch 8,
the reduced settings of ``benchmarks/metrics_vs_quantus.py`` (which also runs VGG16 and the
reference settings); extra_info records Quantus' images/s and the ratio. Not in ``--quick``."""

import functools
import statistics

import pytest

from jaxplain import METRICS
from jaxplain.bench import timings

pytest.importorskip("quantus")
from benchmarks.metrics_vs_quantus import PAIRS, build_model, calls, make_inputs  # noqa: E402


@functools.lru_cache(maxsize=1)
def setup():
    model, net = build_model("tiny")
    return model, net, make_inputs(model, 8)


@pytest.mark.parametrize("name", list(PAIRS))
def test_vs_quantus(benchmark, device, name):
    if name not in METRICS:
        pytest.skip(f"{name} is not in jaxplain.METRICS yet")
    model, net, inp = setup()
    c = calls(model, net, inp, name, "reduced")
    benchmark.group = f"vs quantus {name}"
    c.ours()  # compile
    benchmark.pedantic(c.ours, rounds=3, iterations=1)
    ours = len(inp.x) / benchmark.stats.stats.median
    theirs = len(inp.x) / statistics.median(timings(c.theirs, 3))
    benchmark.extra_info.update(device, metric=name, quantus=c.pair.quantus, batch=len(inp.x),
                                settings=repr(c.ours_settings), quantus_settings=repr(c.quantus_settings),
                                images_per_s=ours, quantus_images_per_s=theirs, vs_quantus=ours / theirs)
