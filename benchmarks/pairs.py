"""A jaxplain model and its torch twin with the same weights, for the side-by-side benchmarks:
VGG (our random weights copied into torchvision's layout), ResNet-50 and ViT-B/16 (random torch
networks with torchvision's / timm's module names, written as the published file layout and read
back by jaxplain's own loaders: the path a user's downloaded file takes)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jaxplain import models
from jaxplain.cli.bench import bench_model
from jaxplain.types import Model

NEW = ("resnet50", "vit_b16")


def pair(name: str, device: str = "cpu", size: int | None = None) -> tuple[Model, Any]:
    """``(model, net)``: ``name`` (a VGG, ``"resnet50"`` or ``"vit_b16"``) in jaxplain and in
    torch (eval mode, float32, on ``device``) with the same random weights; ``size`` is the input
    side (VGG with torchvision's head, ResNet-50; ViT-B/16 is 224)."""
    import jax

    if name not in NEW:
        from benchmarks.torch_vgg import torch_vgg

        model = bench_model(name, size)
        return model, torch_vgg(model.name, jax.tree.map(np.asarray, model.params), device=device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        if name == "resnet50":
            from tests.torch_reference import TorchResNet

            net = TorchResNet().eval()
            torch.save(net.state_dict(), Path(d) / "resnet50.pth")
            model = models.resnet50(Path(d) / "resnet50.pth")
            if size:
                model = model.replace(input_size=(size, size))
        else:
            from safetensors.torch import save_file

            from tests.torch_vit import TorchViT

            net = TorchViT().eval()
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, Path(d) / "vit_b16.safetensors")
            model = models.vit_b16(Path(d) / "vit_b16.safetensors")
    return model, net.to(device)
