"""Side by side with Captum: same method, settings, batch, weights (``benchmarks/pairs.py``) and
device, in one session, by the comparison method (``jaxplain.timing.side_by_side``: both warmed,
5 interleaved rounds, equal threads). The benchmark's own time is the whole comparison (both
sides, every round); extra_info holds each side's images/s median (min-max), the ratio jaxplain /
Captum (None when a side's spread is over the limit: "noisy, rerun"), load, threads, the rounds.
VGG16 for every method with a peer; ResNet-50 and ViT-B/16 for saliency, IG and Grad-CAM (and
guided backprop on ResNet-50). Score-CAM's peer is pytorch-grad-cam's ScoreCAM algorithm in torch
(``tests/grad_cam_reference.py``), the ViT's Grad-CAM its Grad-CAM with a ``reshape_transform``."""

import functools

import jax
import pytest

from jaxplain import bench, timing

torch = pytest.importorskip("torch")
pytest.importorskip("captum")
from benchmarks.pairs import pair  # noqa: E402
from benchmarks.peers import captum_call, captum_fields, torch_device  # noqa: E402

QUICK = [("gradient", 1), ("gradient", 8), ("guided_backprop", 8), ("grad_cam", 8),
         ("integrated_gradients(steps=8)", 1), ("smoothgrad(samples=8)", 1),
         ("occlusion(window=(112, 112), strides=(56, 56))", 1)]
FULL = [(spec, b) for spec in ["gradient", "gradient_x_input", "guided_backprop", "deconvnet", "grad_cam",
                               "integrated_gradients(steps=50)", "smoothgrad(samples=50)", "occlusion", "score_cam"]
        for b in (1, 8, 32)]
BEYOND_VGG = [(model, spec, b) for model in ("resnet50", "vit_b16")
              for spec in ["gradient", "integrated_gradients(steps=50)", "grad_cam", "guided_backprop"]
              for b in (1, 8) if not (model == "vit_b16" and spec == "guided_backprop")]


def _params():
    cases = [pytest.param("vgg16", s, b, marks=pytest.mark.quick, id=f"quick-{s}-{b}") for s, b in QUICK]
    return (cases + [pytest.param("vgg16", s, b, id=f"{s}-{b}") for s, b in FULL]
            + [pytest.param(m, s, b, id=f"{m}-{s}-{b}") for m, s, b in BEYOND_VGG])


@functools.lru_cache(maxsize=1)
def twins(name):
    timing.equal_threads()  # torch is imported: its intra-op threads as many as XLA's
    return pair(name, torch_device())


@pytest.mark.parametrize("model_name,spec,batch", _params())
def test_vs_captum(benchmark, peak, device, model_name, spec, batch):
    m, net = twins(model_name)
    case = bench.compile_case(m, spec, batch)
    benchmark.group = f"vs captum {model_name} {case.name} (whole comparison)"
    ours = lambda: jax.block_until_ready(case.call())  # noqa: E731
    theirs = captum_call(net, case.name, batch, case.settings, m.input_size or (224, 224))
    c = benchmark.pedantic(lambda: timing.side_by_side(ours, theirs, names=("jaxplain", "captum"), items=batch, rounds=5),
                           rounds=1, iterations=1)
    d = c.as_dict()
    benchmark.extra_info.update(device, model=model_name, method=case.name, settings=repr(case.settings), batch=batch,
                                images_per_s=d["jaxplain"]["per_s"], captum_images_per_s=d["captum"]["per_s"],
                                vs_captum=d["ratio"], vs_captum_text=c.ratio_text(), comparison=d,
                                **captum_fields(net))
