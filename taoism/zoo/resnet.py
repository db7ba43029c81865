"""ResNet-18/34/50 with torchvision-compatible module names, in CIFAR and ImageNet shapes.

``stem="cifar"``: 3x3 stride-1 ``conv1``, no ``maxpool`` (input 3x32x32).
``stem="imagenet"``: 7x7 stride-2 ``conv1`` followed by ``maxpool`` (input 3x224x224).

Parameter and buffer names match ``torchvision.models.resnet`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``, ...), so torchvision state_dicts load
into the ImageNet variant. Every ReLU is its own module instance (``relu1``, ``relu2``,
``relu3`` inside blocks, the last one after the residual add), so each ``torch.fx`` node maps
to exactly one module; ReLUs are not in-place, so hooks see unmodified pre-activation outputs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from taoism.errors import ConfigError

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]

Stem = Literal["cifar", "imagenet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN ``downsample``) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(_conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
        self.stride = stride
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision "v1.5"), 1x1 expand (x4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = _conv1x1(planes, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(_conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
        self.stride = stride
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet(nn.Module):
    """ResNet (He et al., 2016) with a CIFAR or ImageNet stem.

    Units for layer-wise partitioning (``taoism_units``): the stem
    (``conv1``, ``bn1``, ``relu`` and ``maxpool`` if present), every residual block
    (``layer1.0``, ...), then ``avgpool`` + ``fc``. ResNet-18 has 10 units.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 10,
        stem: Stem = "cifar",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"ResNet stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.stem = stem
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool: nn.Module | None = None
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.num_features = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        mods = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def stem_names(self) -> tuple[str, ...]:
        """Names of the stem modules, in execution order."""
        names = ("conv1", "bn1", "relu")
        return names + ("maxpool",) if self.maxpool is not None else names

    def block_names(self) -> list[str]:
        """Qualified names of the residual blocks, in execution order."""
        return [
            f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(self, f"layer{i}")))
        ]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def taoism_units(self) -> list[tuple[str, ...]]:
        """Stem, each residual block, then (avgpool, fc)."""
        return [self.stem_names(), *((b,) for b in self.block_names()), ("avgpool", "fc")]


def resnet18(num_classes: int = 10, stem: Stem = "cifar", in_channels: int = 3) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, stem, in_channels)


def resnet34(num_classes: int = 10, stem: Stem = "cifar", in_channels: int = 3) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3])."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, stem, in_channels)


def resnet50(num_classes: int = 10, stem: Stem = "cifar", in_channels: int = 3) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3])."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, stem, in_channels)
