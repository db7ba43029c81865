"""A CIFAR-style ResNet (He et al. 2016, Sec. 4.2) with a global-average-pooled head.

The victims of the S&P'24 evaluation are ResNets and VGGs whose classifier is a small part of
the model; :class:`~taoism.zoo.small.SmallCNN`'s ``fc`` holds most of its parameters (76% on
Fashion-MNIST), which makes ``deep:1`` (shield only the last layer) hide most of the model.
``GapResNet`` keeps the classifier small (``gap_resnet20`` on 62 classes: fc ~1.5% of the
parameters), so ``deep:k`` shields what DarkneTZ shields.

Layout: ``conv1``/``bn1``/``relu`` (3x3, ``widths[0]`` channels), ``layer1..3`` of
``blocks`` :class:`~taoism.zoo.resnet.BasicBlock` each (stride 1, 2, 2), ``avgpool``
(global average), ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taoism.errors import ConfigError
from taoism.zoo.resnet import BasicBlock

__all__ = ["GapResNet", "gap_resnet20"]


class GapResNet(nn.Module):
    """ResNet-(6 * ``blocks`` + 2) with three stages of ``widths`` channels and a GAP head."""

    layer1: nn.Sequential  # set in __init__'s loop
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        blocks: int = 3,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if blocks < 1 or len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise ConfigError(
                f"GapResNet needs blocks >= 1 and three positive widths, got "
                f"blocks={blocks!r}, widths={widths!r}"
            )
        w = [int(v) for v in widths]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU()
        cin = w[0]
        for i, (width, stride) in enumerate(zip(w, (1, 2, 2)), start=1):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(cin, width, stride if b == 0 else 1))
                cin = width
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def taoism_units(self) -> list[tuple[str, ...]]:
        """The stem, each residual block, then (``avgpool``, ``fc``)."""
        blocks = [
            (f"layer{i}.{b}",) for i in (1, 2, 3) for b in range(len(getattr(self, f"layer{i}")))
        ]
        return [("conv1", "bn1", "relu"), *blocks, ("avgpool", "fc")]


def gap_resnet20(num_classes: int = 10, in_channels: int = 1) -> GapResNet:
    """ResNet-20 (3 blocks per stage, 16/32/64 channels) with a global-average-pooled head."""
    return GapResNet(num_classes, in_channels, blocks=3)
