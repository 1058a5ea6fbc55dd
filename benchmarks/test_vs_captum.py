"""Side by side with Captum: same method, settings, batch, VGG16 weights (copied across) and
device, in one session, alternating the two; extra_info records the ratio jaxplain / Captum.
Score-CAM's peer is pytorch-grad-cam's ScoreCAM algorithm in torch (``tests/grad_cam_reference.py``)."""

import functools

import jax
import numpy as np
import pytest

from jaxplain import bench, models
from jaxplain.registry import parse

torch = pytest.importorskip("torch")
pytest.importorskip("captum")
from benchmarks.peers import measure_captum  # noqa: E402
from benchmarks.torch_vgg import torch_vgg  # noqa: E402

QUICK = [("gradient", 1), ("gradient", 8), ("guided_backprop", 8), ("grad_cam", 8),
         ("integrated_gradients(steps=8)", 1), ("smoothgrad(samples=8)", 1),
         ("occlusion(window=(112, 112), strides=(56, 56))", 1)]
FULL = [(spec, b) for spec in ["gradient", "gradient_x_input", "guided_backprop", "deconvnet", "grad_cam",
                               "integrated_gradients(steps=50)", "smoothgrad(samples=50)", "occlusion", "score_cam"]
        for b in (1, 8, 32)]


def _params():
    cases = [pytest.param(s, b, marks=pytest.mark.quick, id=f"quick-{s}-{b}") for s, b in QUICK]
    return cases + [pytest.param(s, b, id=f"{s}-{b}") for s, b in FULL]


@functools.lru_cache(maxsize=1)
def pair():
    m = models.vgg16()
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    net = torch_vgg("vgg16", jax.tree.map(np.asarray, m.params), device=device)
    return m, net


@pytest.mark.parametrize("spec,batch", _params())
def test_vs_captum(benchmark, peak, device, spec, batch):
    m, net = pair()
    fn, settings = parse(spec)
    case = bench.compile_case(m, spec, batch)
    benchmark.group = f"vs captum {case.name}"
    call = lambda: jax.block_until_ready(case.call())  # noqa: E731
    call()
    benchmark.pedantic(call, rounds=3, iterations=1)
    ours = batch / benchmark.stats.stats.median
    theirs = measure_captum(net, fn.__name__, batch, case.settings, (224, 224), rounds=3, min_time=0)
    benchmark.extra_info.update(device, method=case.name, settings=repr(case.settings), batch=batch,
                                images_per_s=ours, vs_captum=ours / theirs["captum_images_per_s"], **theirs)
