"""ResNet-18/50 with torchvision's parameter names, a CIFAR stem option and a width option.

Keys match ``torchvision.models.resnet18/50`` (``conv1``, ``bn1``, ``layer1.0.conv1`` ...,
``downsample.0``) so torchvision, the paper's and solo-learn's weights load by name. The classifier
(``fc``) is not part of a backbone. ``width`` is the channel count of the first stage (64 in the
papers); smaller widths make CPU training affordable.

CIFAR stem (SimCLR, Appendix B.9): "replace the first 7x7 Conv of stride 2 with 3x3 Conv of stride 1,
and also remove the first max pooling operation". solo-learn pads that 3x3 conv by 2, not 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Stem = Literal["cifar", "imagenet"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def feature_dim(name: str, width: int = 64) -> int:
    """The width of a ResNet's pooled output: its last stage's channels (8 x width, x4 with bottlenecks)."""
    block, _ = ARCHITECTURES[name]
    return width * 2**3 * block.expansion


class ResNet(nn.Module):
    """A ResNet trunk ending in global average pooling; ``forward`` returns ``N×num_features``."""

    def __init__(
        self, name: str = "resnet18", stem: Stem = "cifar", width: int = 64, stem_padding: int = 1
    ) -> None:
        super().__init__()
        block, depths = ARCHITECTURES[name]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, 3, 1, stem_padding, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        stages = []
        for stage, depth in enumerate(depths):
            planes = width * 2**stage
            blocks = []
            for i in range(depth):
                blocks.append(block(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = feature_dim(name, width)
        for module in self.modules():
            # A model built on the meta device (checkpoint size checks) has no values to initialise,
            # and initialising a meta tensor imports torch._dynamo: about a second per analysis.
            if isinstance(module, nn.Conv2d) and module.weight.device.type != "meta":
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
