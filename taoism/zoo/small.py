"""A small CNN for grayscale 28x28 (Fashion-MNIST) and 8x8 (sklearn digits) inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taoism.errors import ConfigError
from taoism.zoo._units import group_sequential

__all__ = ["SmallCNN", "small_cnn"]


class SmallCNN(nn.Module):
    """``len(channels)`` x [3x3 conv, BN, ReLU, 2x2 max pool] + one Linear ``fc``.

    Module names: ``features.0..`` (4 per group) and ``fc``. Units: one per conv group, then
    ``fc``. With the defaults on 1x28x28: 16x14x14 -> 32x7x7 -> fc(1568 -> classes);
    on 1x8x8: -> 32x2x2 -> fc(128 -> classes).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        channels: Sequence[int] = (16, 32),
    ) -> None:
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ConfigError(
                f"SmallCNN channels must be a non-empty list of positive ints, got {channels!r}"
            )
        side = input_size // 2 ** len(channels)
        if side < 1:
            raise ConfigError(
                f"SmallCNN input_size={input_size} is too small for {len(channels)} 2x2 poolings; "
                f"use input_size >= {2 ** len(channels)} or fewer channels"
            )
        layers: list[nn.Module] = []
        cin = in_channels
        for c in channels:
            cout = int(c)
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin * side * side, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def taoism_units(self) -> list[tuple[str, ...]]:
        """Each conv-bn-relu-pool group, then ``fc``."""
        return group_sequential(self.features, "features") + [("fc",)]


def small_cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> SmallCNN:
    """The default two-group SmallCNN."""
    return SmallCNN(num_classes, in_channels, input_size)
