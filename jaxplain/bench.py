"""Measure explanation throughput: compile time, images/s, achieved FLOP/s against a matmul
probe of the same device, and peak memory. Used by ``jaxplain bench`` and ``benchmarks/``."""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxplain import registry
from jaxplain.explain import prepare
from jaxplain.methods.chunks import loop_mode
from jaxplain.methods.perturb import per_axis, occlusion_windows
from jaxplain.precision import with_precision
from jaxplain.types import Model

# Settings a user would run each method with (the anchors' usual values).
USUAL: dict[str, dict[str, Any]] = {
    "integrated_gradients": dict(steps=50),
    "smoothgrad": dict(samples=50),
    "squaregrad": dict(samples=50),
    "vargrad": dict(samples=50),
    "expected_gradients": dict(samples=32),
    "blur_ig": dict(steps=100),
    "guided_ig": dict(steps=200),
    "neuron_gradient": dict(neuron=0),  # channel 0 of the last conv layer
    "neuron_integrated_gradients": dict(neuron=0),
}


def passes(name: str, settings: dict[str, Any], shape: tuple[int, int, int] = (224, 224, 3)) -> int:
    """Model passes per image a method makes for images of ``shape`` (forward+backward for the
    gradient family, forward only for the perturbation family; for passes/s)."""
    defaults = registry.settings_of(registry.lookup(name))
    s = {**defaults, **settings}
    if name in ("smoothgrad", "squaregrad", "vargrad"):
        base = s["base"] if isinstance(s["base"], str) else "gradient"
        return s["samples"] * passes(base, dict(s.get("base_settings") or {}), shape)
    if name == "occlusion":
        return 1 + occlusion_windows(shape, s["window"], s["strides"])
    for k in ("steps", "samples", "masks"):
        if k in s and isinstance(s[k], int):
            return s[k]
    return 1


def device_info() -> dict[str, Any]:
    d = jax.local_devices()[0]
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "device_count": jax.local_device_count(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
        "host": platform.node(),
    }


def _time(fn: Callable[[], Any], rounds: int, min_time: float = 0.0) -> list[float]:
    """Seconds per call after one warm call: at least ``rounds`` calls and ``min_time`` seconds
    (at most 100 calls). ``fn`` must finish its work before returning (block or synchronise)."""
    fn()  # warm
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < rounds or (time.perf_counter() - start < min_time and len(times) < 100):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def matmul_peak(dtype: Any = jnp.float32, n: int | None = None, rounds: int = 5) -> float:
    """Measured FLOP/s of an ``n x n`` matrix product (2048 on CPU, 8192 on accelerators)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / min(_time(lambda: jax.block_until_ready(f(a)), rounds))


def peak_memory() -> tuple[int, str]:
    """``(bytes, what)``: the device's peak bytes in use where the backend reports it, else the
    process's peak resident set size."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


@dataclasses.dataclass
class Case:
    """One compiled (model, method, batch) ready to time."""

    name: str
    batch: int
    settings: dict[str, Any]
    call: Callable[[], Any]
    compile_s: float
    flops: float
    precision: str | None = None
    shape: tuple[int, int, int] = (224, 224, 3)


def compile_case(model: Model, method: str, batch: int, *, precision: str | None = None, **settings: Any) -> Case:
    """Compile ``method`` for ``batch`` random images at the model's input size (compile timed),
    the model computing in ``precision`` (``jaxplain.precision``)."""
    model = with_precision(model, precision)
    fn, parsed = registry.parse(method)
    name = fn.__name__
    settings = {**USUAL.get(name, {}), **parsed, **settings}
    known = registry.settings_of(fn)
    if "key" in known:
        settings.setdefault("key", jax.random.key(0))
    h, w = model.input_size or (224, 224)
    images = jax.random.normal(jax.random.key(1), (batch, h, w, 3), jnp.float32)
    if "references" in known:
        settings.setdefault("references", images[:1] * 0.5)
    targets = jnp.zeros((batch,), jnp.int32)
    call, keys, shared, static = prepare(fn, model, images, settings)
    t = time.perf_counter()
    run, flops = call.compile(model.params, images, targets, keys, shared)
    compile_s = time.perf_counter() - t
    return Case(name, batch, static, run, compile_s, flops, precision, (h, w, 3))


def measure(case: Case, peak_flops: float, rounds: int = 3, min_time: float = 1.0) -> dict[str, Any]:
    """Steady-state timing of a compiled case, with the derived figures."""
    times = _time(lambda: jax.block_until_ready(case.call()), rounds, min_time)
    sec = statistics.median(times)
    mem, mem_kind = peak_memory()
    return {
        "method": case.name,
        "batch": case.batch,
        "settings": {k: repr(v) for k, v in case.settings.items()},
        "compile_s": case.compile_s,
        "s_per_call": sec,
        "images_per_s": case.batch / sec,
        "ms_per_image": 1e3 * sec / case.batch,
        "passes_per_s": case.batch * passes(case.name, case.settings, case.shape) / sec,
        "flops_per_call": case.flops,
        "flops_per_s": case.flops / sec,
        "peak_flops_per_s": peak_flops,
        "fraction_of_peak": case.flops / sec / peak_flops if peak_flops else None,
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "rounds": len(times),
        "dtype": "float32",
        "precision": case.precision or "default",
        "chunk_loop": loop_mode(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of measured rows."""
    head = f"{'method':<22}{'batch':>6}{'images/s':>11}{'ms/image':>11}{'% peak':>8}{'compile s':>11}{'vs Captum':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        frac = r.get("fraction_of_peak")
        vs = r.get("vs_captum")
        lines.append(
            f"{r['method']:<22}{r['batch']:>6}{r['images_per_s']:>11.3f}{r['ms_per_image']:>11.1f}"
            f"{(100 * frac if frac else float('nan')):>8.1f}{r['compile_s']:>11.1f}"
            f"{(f'{vs:.2f}x' if vs else '-'):>11}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- Captum, same weights, same device

CAPTUM_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "guided_backprop",
                  "deconvnet", "grad_cam", "occlusion", "score_cam")  # score_cam: pytorch-grad-cam's, see below
GRAD_CAM_BATCH = 16  # pytorch-grad-cam ScoreCAM's default masked images per forward call


def torch_score_cam(net: Any, x: Any, t: Any, batch: int = GRAD_CAM_BATCH) -> Any:
    """pytorch-grad-cam's ``ScoreCAM`` algorithm in plain torch, ``[B, H, W]``, as the peer for
    ``score_cam`` (the grad-cam package imports torchvision): the last conv layer's ReLU output,
    each channel upsampled (bilinear, half-pixel, as ours) and min-max normalised, masks the image;
    ``batch`` masked images per forward call; softmax over the channels' target logits."""
    import torch
    import torch.nn.functional as F

    size = tuple(x.shape[-2:])
    with torch.no_grad():
        acts = net.features[:-1](x)  # [B, K, h, w]
        up = F.interpolate(acts, size=size, mode="bilinear", align_corners=False)
        lo = up.flatten(2).min(-1)[0][..., None, None]
        hi = up.flatten(2).max(-1)[0][..., None, None]
        up = torch.where(hi > lo, (up - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
        scores = torch.stack([
            torch.cat([net(x[b] * up[b, i:i + batch, None])[:, t[b]] for i in range(0, up.shape[1], batch)])
            for b in range(x.shape[0])])
        cam = torch.relu((torch.softmax(scores, -1)[..., None, None] * acts).sum(1))
        return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def captum_call(net: Any, name: str, batch: int, settings: dict[str, Any], size: tuple[int, int]) -> Callable[[], Any]:
    """A no-argument call running Captum's equivalent of ``name`` on ``net`` (a torch module),
    with the same batch, input size and settings (``chunk`` -> Captum's internal batch size): pass
    the case's resolved settings (``Case.settings``), where explain may have sized the chunk."""
    import torch
    from captum import attr as ca

    device = next(net.parameters()).device
    x = torch.randn(batch, 3, *size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    s = {**registry.settings_of(registry.lookup(name)), **USUAL.get(name, {}), **settings}
    chunk = s.get("chunk")  # None: everything in one pass, as ours
    if name == "gradient":
        run = lambda: ca.Saliency(net).attribute(x, target=t, abs=False)  # noqa: E731
    elif name == "gradient_x_input":
        run = lambda: ca.InputXGradient(net).attribute(x, target=t)  # noqa: E731
    elif name == "integrated_gradients":
        run = lambda: ca.IntegratedGradients(net).attribute(  # noqa: E731
            x, baselines=0.0, target=t, n_steps=s["steps"], method=s["rule"], internal_batch_size=batch * chunk if chunk else None)
    elif name == "smoothgrad":
        std = float(s["sigma"]) * float(x.max() - x.min())
        run = lambda: ca.NoiseTunnel(ca.Saliency(net)).attribute(  # noqa: E731
            x, target=t, nt_type="smoothgrad", nt_samples=s["samples"], stdevs=std,
            nt_samples_batch_size=chunk, abs=False)
    elif name == "guided_backprop":
        run = lambda: ca.GuidedBackprop(net).attribute(x, target=t)  # noqa: E731
    elif name == "deconvnet":
        run = lambda: ca.Deconvolution(net).attribute(x, target=t)  # noqa: E731
    elif name == "grad_cam":  # at the last conv layer's (post-ReLU) output, upsampled like ours
        layer = net.features[-2]
        run = lambda: ca.LayerAttribution.interpolate(  # noqa: E731
            ca.LayerGradCam(net, layer).attribute(x, target=t, relu_attributions=True), size, "bilinear")
    elif name == "occlusion":  # Captum's default: one perturbation per forward call
        (wh, ww, wc), (sh, sw, sc) = (per_axis(s[k], k, 3) for k in ("window", "strides"))
        run = lambda: ca.Occlusion(net).attribute(  # noqa: E731
            x, sliding_window_shapes=(wc, wh, ww), strides=(sc, sh, sw), baselines=float(s["baseline"]), target=t)
    elif name == "score_cam":  # pytorch-grad-cam's ScoreCAM, 16 masked images per call
        run = lambda: torch_score_cam(net, x, t)  # noqa: E731
    else:
        raise KeyError(f"no Captum counterpart for {name}")

    def call() -> Any:
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def measure_captum(net: Any, name: str, batch: int, settings: dict[str, Any], size: tuple[int, int],
                   rounds: int = 3, min_time: float = 1.0) -> dict[str, Any]:
    import torch

    times = _time(captum_call(net, name, batch, settings, size), rounds, min_time)  # call() synchronises
    sec = statistics.median(times)
    cuda = next(net.parameters()).device.type == "cuda"
    mem = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"captum_images_per_s": batch / sec, "captum_s_per_call": sec, "captum_peak_memory_bytes": int(mem),
            "captum_rounds": len(times), "torch": torch.__version__}
