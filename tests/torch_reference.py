"""A torch VGG with torchvision's exact module indices (torchvision does not import here).

``features``: conv(3x3, pad 1), ReLU per layer, MaxPool2d(2, 2) per block; ``avgpool``:
AdaptiveAvgPool2d((7, 7)); ``classifier``: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
(indices 0, 3, 6 carry weights), as in ``torchvision.models.vgg``.
"""

import torch
from torch import nn

CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class TorchVGG(nn.Module):
    def __init__(self, arch: str | list = "vgg16", num_classes: int = 1000, fc: int = 4096, grid: int = 7):
        super().__init__()
        layers, cin = [], 3
        for v in CFGS[arch] if isinstance(arch, str) else arch:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((grid, grid))
        self.classifier = nn.Sequential(
            nn.Linear(cin * grid * grid, fc), nn.ReLU(False), nn.Dropout(),
            nn.Linear(fc, fc), nn.ReLU(False), nn.Dropout(),
            nn.Linear(fc, num_classes),
        )
        for m in self.modules():  # small random weights that keep activations O(1)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.normal_(m.bias, 0, 0.1)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01 if fc == 4096 else (2 / m.in_features) ** 0.5)
                nn.init.normal_(m.bias, 0, 0.1)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def timm_state_dict(sd: dict) -> dict:
    """The same weights under timm's VGG keys: fc1/fc2 as conv kernels, ``head.fc``."""
    out = {k: v for k, v in sd.items() if k.startswith("features.")}
    w1 = sd["classifier.0.weight"]
    out["pre_logits.fc1.weight"] = w1.reshape(w1.shape[0], 512, 7, 7).clone()
    out["pre_logits.fc1.bias"] = sd["classifier.0.bias"]
    out["pre_logits.fc2.weight"] = sd["classifier.3.weight"][:, :, None, None].clone()
    out["pre_logits.fc2.bias"] = sd["classifier.3.bias"]
    out["head.fc.weight"] = sd["classifier.6.weight"]
    out["head.fc.bias"] = sd["classifier.6.bias"]
    return out


TINY_CFG = [4, "M", 8, "M", 8, 8, "M"]  # tests.conftest.TINY in torchvision's layout


def tiny_torch(seed: int = 0) -> TorchVGG:
    """The tiny VGG of the tests (32x32 in, 10 classes) in torch, random weights, eval mode."""
    torch.manual_seed(seed)
    return TorchVGG(TINY_CFG, num_classes=10, fc=16, grid=2).eval()
