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


class TorchBottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5: the stride in ``conv2``), module names as there."""

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    """torchvision's ``ResNet`` with bottleneck blocks (ResNet-50 by default), module names as
    there (timm's ``resnet50`` uses the same ones); random weights and random batch-norm
    statistics (not the identity) so that folding them is tested."""

    def __init__(self, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem: int = 64, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = stem
        for s, (n, width) in enumerate(zip(blocks, widths), 1):
            stride = 1 if s == 1 else 2
            layers = []
            for b in range(n):
                down = None
                if b == 0 and (stride != 1 or cin != width * 4):
                    down = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(width * 4))
                layers.append(TorchBottleneck(cin, width, stride if b == 0 else 1, down))
                cin = width * 4
            setattr(self, f"layer{s}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        self.stages = len(blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.0)
                    m.bias.normal_(0, 0.1)
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.normal_(m.bias, 0, 0.1)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(1, self.stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
