"""The peers' code for the side-by-side benchmarks: Captum's equivalent of each method (and
pytorch-grad-cam's Score-CAM algorithm, and its Grad-CAM with a ``reshape_transform`` for a ViT's
token layer, which Captum's ``LayerGradCam`` does not read as a grid), run on a torch twin with
the same weights on the same device (``benchmarks/pairs.py``). Used by
``benchmarks/test_vs_captum.py`` and ``python -m benchmarks.compare``."""

from __future__ import annotations

import resource
from typing import Any, Callable

import torch
from captum import attr as ca

from jaxplain import registry
from jaxplain.bench import USUAL
from jaxplain.methods.perturb import per_axis
from tests.grad_cam_reference import score_cam as torch_score_cam

CAPTUM_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "guided_backprop",
                  "deconvnet", "grad_cam", "occlusion", "score_cam")  # score_cam: pytorch-grad-cam's, see below


def captum_call(net: Any, name: str, batch: int, settings: dict[str, Any], size: tuple[int, int]) -> Callable[[], Any]:
    """A no-argument call running Captum's equivalent of ``name`` on ``net`` (a torch module),
    with the same batch, input size and settings (``chunk`` -> Captum's internal batch size): pass
    the case's resolved settings (``Case.settings``), where explain may have sized the chunk."""
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
    elif name == "grad_cam" and hasattr(net, "blocks"):  # a ViT: jaxplain's default layer, blocks.{depth-2}
        run = lambda: vit_grad_cam(net, x, t, len(net.blocks) - 2, size)  # noqa: E731
    elif name == "grad_cam":  # VGG: the last conv layer's (post-ReLU) output; ResNet: layer4; upsampled like ours
        layer = net.layer4 if hasattr(net, "layer4") else net.features[-2]
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


def vit_grad_cam(net: Any, x: Any, t: Any, block: int, size: tuple[int, int]) -> Any:
    """pytorch-grad-cam's Grad-CAM on a ViT block's output with its ``reshape_transform`` (class
    token dropped, patch tokens as their grid): ``[B, 1, H, W]``. ``net`` records each block's
    output in ``net.tokens`` (``tests/torch_vit.py``)."""
    logits = net(x)
    tokens = net.tokens[block]
    grads, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), tokens)
    b, n, d = tokens.shape
    g = int(round((n - 1) ** 0.5))
    act, grad = tokens[:, 1:].reshape(b, g, g, d), grads[:, 1:].reshape(b, g, g, d)
    cam = torch.relu((act * grad.mean((1, 2), keepdim=True)).sum(-1, keepdim=True)).permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(cam.detach(), size, mode="bilinear", align_corners=False)


def has_counterpart(net: Any, name: str) -> bool:
    """Whether ``name`` has a peer here on ``net``: guided backprop and deconvnet need ReLU modules
    (a ViT has none, and jaxplain refuses them there too); Score-CAM's peer is written for VGG."""
    if name not in CAPTUM_METHODS:
        return False
    if name in ("guided_backprop", "deconvnet"):
        return any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    return name != "score_cam" or hasattr(net, "features")


def captum_fields(net: Any) -> dict[str, Any]:
    """The peer's own fields of a row, read after the rounds: torch's peak memory (on a GPU its
    allocator's peak since the case's call was made, on the CPU the process's peak resident set,
    both frameworks' together) and torch's version."""
    if next(net.parameters()).device.type == "cuda":
        return {"captum_peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
                "captum_peak_memory_kind": "torch.cuda.max_memory_allocated", "torch": torch.__version__}
    return {"captum_peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "captum_peak_memory_kind": "process peak RSS (both frameworks)", "torch": torch.__version__}


def torch_device() -> str:
    """The GPU when JAX runs on one, else the CPU."""
    import jax

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


class CaptumPeer:
    """The peer ``jaxplain.bench.run`` takes: ``peer(case)`` is a no-argument call of Captum's
    counterpart of ``case`` on ``net`` (``None`` without one); ``fields()`` the peer's own fields,
    read after the rounds."""

    def __init__(self, net: Any, size: tuple[int, int]):
        self.net, self.size = net, size

    def __call__(self, case: Any) -> Callable[[], Any] | None:
        if not has_counterpart(self.net, case.name):
            return None
        if next(self.net.parameters()).device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        return captum_call(self.net, case.name, case.batch, case.settings, self.size)

    def fields(self) -> dict[str, Any]:
        return captum_fields(self.net)


def captum_pair(args: Any) -> tuple[Any, CaptumPeer]:
    """For ``jaxplain.cli.bench.run``: the jaxplain model of ``args`` (``--model``, ``--size``)
    and the peer for ``jaxplain.bench.run``: Captum on the torch twin with the same weights on the
    same device."""
    from benchmarks.pairs import pair

    model, net = pair(args.model, torch_device(), args.size)
    return model, CaptumPeer(net, model.input_size or (224, 224))
