"""Throughput of every registered method: compile time in its own group, then steady-state calls
(compiled first, blocked on). extra_info holds device, versions, dtype, images/s, passes/s,
achieved FLOP/s (XLA cost analysis), its fraction of the measured matmul peak, and peak memory."""

import functools

import jax
import pytest

from benchmarks.cases import cases
import jaxplain
from jaxplain import bench, models
from jaxplain.chunks import loop_mode


@functools.lru_cache(maxsize=4)
def model(name):
    if name == "tiny":
        cfg = models.VGGConfig(blocks=(1, 1, 2), widths=(4, 8, 8), fc=16, classes=10, grid=2, head="torchvision", name="tiny")
        return models.build(cfg, models.random_params(cfg), source="torchvision").replace(input_size=(32, 32))
    return {"resnet50": models.resnet50, "vit_b16": models.vit_b16}.get(name, models.vgg16)()


@pytest.mark.parametrize("model_name,spec,batch", cases())
def test_throughput(benchmark, peak, device, model_name, spec, batch):
    m = model(model_name)
    case = bench.compile_case(m, spec, batch)
    benchmark.group = f"{model_name} {case.name}"
    call = lambda: jax.block_until_ready(case.call())  # noqa: E731
    call()
    benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=0)
    sec = benchmark.stats.stats.median
    mem, mem_kind = bench.peak_memory()
    benchmark.extra_info.update(
        device, model=model_name, method=case.name, settings={k: repr(v) for k, v in case.settings.items()},
        batch=batch, dtype="float32", compile_s=case.compile_s, images_per_s=batch / sec,
        passes_per_s=batch * bench.passes(case.name, case.settings, case.shape) / sec,
        flops_per_call=case.flops, flops_per_s=case.flops / sec, peak_flops_per_s=peak,
        fraction_of_peak=case.flops / sec / peak, peak_memory_bytes=mem, peak_memory_kind=mem_kind,
        precision=case.precision or "default", chunk_loop=loop_mode(),
    )


@pytest.mark.quick
@pytest.mark.parametrize("spec", ["gradient", "integrated_gradients(steps=8)"])
def test_compile(benchmark, device, spec):
    """Compile time of VGG16 at batch 8 (a fresh trace and compile each round)."""
    m = model("vgg16")
    benchmark.group = "compile vgg16"
    result = benchmark.pedantic(lambda: bench.compile_case(m, spec, 8), rounds=1, iterations=1)
    benchmark.extra_info.update(device, method=spec, batch=8, flops_per_call=result.flops)


@pytest.mark.quick
@pytest.mark.parametrize("n,batch_size", [(1, 8), (1, 1)])
def test_short_run(benchmark, device, n, batch_size):
    """A run smaller than its batch size through ``jaxplain.explain``: VGG16's gradient of ``n``
    images at ``batch_size`` computes ``runner.call_images(n, batch_size)`` images, so one image
    at batch 8 costs about what it costs at batch 1 (it cost the whole batch when every call was
    padded to ``batch_size``)."""
    from jaxplain.engine.runner import call_images

    m = model("vgg16")
    x = jax.random.normal(jax.random.key(1), (n, 224, 224, 3))
    benchmark.group = "vgg16 gradient, short run"
    call = lambda: jax.block_until_ready(jaxplain.explain(m, x, 0, "gradient", batch_size=batch_size))  # noqa: E731
    call()
    benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=0)
    sec = benchmark.stats.stats.median
    benchmark.extra_info.update(device, model="vgg16", method="gradient", images=n, batch_size=batch_size,
                                images_computed=call_images(n, batch_size), images_per_s=n / sec, dtype="float32",
                                chunk_loop=loop_mode())
