"""Each metric beside Quantus 0.6 in the pytest-benchmark suite: the tiny model (32x32), batch 8,
the reduced settings of ``benchmarks/metrics_vs_quantus.py`` (which also runs VGG16 and the
reference settings). The comparison is ``jaxplain.timing``'s method (``benchmarks.sides.compare``:
warm-up, calls under 0.5 s repeated, 5 interleaved rounds); extra_info records both sides'
images/s, the ratio (``None`` when noisy) and ``Comparison.as_dict()``; the benchmark's own
timing is ours, 3 rounds. Not in ``--quick``."""

import functools

import pytest

from jaxplain import METRICS, timing

pytest.importorskip("quantus")
from benchmarks import sides  # noqa: E402
from benchmarks.metrics_vs_quantus import PAIRS, build_model, calls, make_inputs  # noqa: E402


@functools.lru_cache(maxsize=1)
def setup():
    model, net = build_model("tiny")
    timing.equal_threads()
    return model, net, make_inputs(model, 8)


@pytest.mark.parametrize("name", list(PAIRS))
def test_vs_quantus(benchmark, device, name):
    if name not in METRICS:
        pytest.skip(f"{name} is not in jaxplain.METRICS yet")
    model, net, inp = setup()
    c = calls(model, net, inp, name, "reduced")
    benchmark.group = f"vs quantus {name}"
    c.ours()  # compile
    c.theirs()  # Quantus' first call
    b = len(inp.x)
    cmp, counts = sides.compare(c.ours, c.theirs, names=("jaxplain", "quantus"), items=b, rounds=5)
    benchmark.pedantic(c.ours, rounds=3, iterations=1)
    benchmark.extra_info.update(device, metric=name, quantus=c.pair.quantus, batch=b,
                                settings=repr(c.ours_settings), quantus_settings=repr(c.quantus_settings),
                                images_per_s=cmp.per_s("jaxplain").median, quantus_images_per_s=cmp.per_s("quantus").median,
                                vs_quantus=None if cmp.noisy else cmp.ratio.median, vs_quantus_text=cmp.ratio_text(),
                                calls_per_round=counts, comparison=cmp.as_dict())
