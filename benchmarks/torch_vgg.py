"""A PyTorch twin of a VGG with torchvision's module indices, built from jaxplain's parameters,
so Captum can run on exactly the same weights (the side-by-side benchmarks)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from jaxplain.models.vgg import BLOCKS, VGGConfig


def state_dict(params: dict, config: VGGConfig) -> dict[str, np.ndarray]:
    """Our parameters in torchvision's keys and layouts (the inverse of the importer)."""
    from jaxplain.models.vgg_weights import table

    out: dict[str, np.ndarray] = {}
    cin = config.widths[-1]
    g = config.grid
    for e in table(config, "torchvision"):
        a = np.asarray(params[e.layer][e.param])
        if e.param == "bias":
            out[e.key] = a
        elif a.ndim == 4:  # HWIO -> OIHW
            out[e.key] = a.transpose(3, 2, 0, 1)
        elif e.layer == "fc1":  # rows in H, W, C order -> torch's C, H, W
            out[e.key] = a.reshape(g, g, cin, -1).transpose(3, 2, 0, 1).reshape(a.shape[1], -1)
        else:
            out[e.key] = a.T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def torch_vgg(arch: str, params: dict, *, include_top: bool = True, device: str = "cpu"):
    """``torch.nn.Module`` VGG (eval mode, out-of-place ReLUs) holding ``params``."""
    config = VGGConfig(blocks=BLOCKS[arch], include_top=include_top, head="torchvision", name=arch)
    return torch_twin(config, params, device=device)


def torch_twin(config: VGGConfig, params: dict, *, device: str = "cpu"):
    """``torch.nn.Module`` twin of any ``VGGConfig`` (torchvision's head: an adaptive average pool to
    ``grid``, which a Keras-head model's input size makes the identity) holding ``params``."""
    config = dataclasses.replace(config, head="torchvision")
    layers: list[nn.Module] = []
    cin = 3
    for n, width in zip(config.blocks, config.widths):
        for _ in range(n):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=False)]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))
    modules: dict[str, nn.Module] = {"features": nn.Sequential(*layers)}
    if config.include_top:
        g, fc = config.grid, config.fc
        modules["avgpool"] = nn.AdaptiveAvgPool2d((g, g))
        modules["flatten"] = nn.Flatten(1)
        modules["classifier"] = nn.Sequential(
            nn.Linear(cin * g * g, fc), nn.ReLU(False), nn.Dropout(),
            nn.Linear(fc, fc), nn.ReLU(False), nn.Dropout(),
            nn.Linear(fc, config.classes),
        )
    net = nn.Sequential()
    for name, module in modules.items():
        net.add_module(name, module)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict(params, config).items()}  # writable copies
    net.load_state_dict(sd)
    return net.eval().to(device)
