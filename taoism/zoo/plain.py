"""VGG16-BN and AlexNet with torchvision-compatible module names, in CIFAR and ImageNet shapes.

Layer indices inside ``features`` and ``classifier`` match torchvision in both shapes
(``classifier.0/3/6`` are the three Linear layers), so ImageNet state_dicts from torchvision
load as they are. ReLUs are not in-place.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from taoism.errors import ConfigError
from taoism.zoo._units import group_sequential

__all__ = ["VGG", "AlexNet", "vgg16_bn", "alexnet"]

Shape = Literal["cifar", "imagenet"]

# Configuration "D" (VGG-16): output channels of each 3x3 conv, "M" = 2x2 max pooling.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _check_shape(shape: str) -> None:
    if shape not in ("cifar", "imagenet"):
        raise ConfigError(f"shape must be 'cifar' or 'imagenet', got {shape!r}")


def _classifier(
    in_features: int, hidden: int, num_classes: int, dropout_first: bool
) -> nn.Sequential:
    """Three Linear layers at indices 0, 3, 6 (torchvision layout)."""
    if dropout_first:  # AlexNet: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
        mods = [
            nn.Dropout(0.5),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        ]
    else:  # VGG: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
        mods = [
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        ]
    return nn.Sequential(*mods)


class _Sequential2D(nn.Module):
    """``features`` -> ``avgpool`` -> flatten -> ``classifier``, with layer-wise units."""

    _dropout_leads = False
    features: nn.Sequential
    avgpool: nn.Module
    classifier: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def taoism_units(self) -> list[tuple[str, ...]]:
        """Each conv(-bn)-relu(-pool) group, then each FC with its ReLU/dropout.

        ``avgpool`` joins the first FC unit.
        """
        return group_sequential(self.features, "features") + group_sequential(
            self.classifier, "classifier", lead=("avgpool",), dropout_leads=self._dropout_leads
        )


class VGG(_Sequential2D):
    """VGG16 with batch norm (Simonyan & Zisserman, 2015).

    ``imagenet``: 7x7 adaptive pool, classifier 25088-4096-4096-classes.
    ``cifar``: 1x1 adaptive pool, classifier 512-512-512-classes (same indices).
    Units: 13 conv groups + 3 FC = 16.
    """

    def __init__(self, num_classes: int = 10, shape: Shape = "cifar", in_channels: int = 3) -> None:
        super().__init__()
        _check_shape(shape)
        layers: list[nn.Module] = []
        cin = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [
                    nn.Conv2d(cin, int(v), kernel_size=3, padding=1),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(),
                ]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        if shape == "imagenet":
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = _classifier(512 * 7 * 7, 4096, num_classes, dropout_first=False)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = _classifier(512, 512, num_classes, dropout_first=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


class AlexNet(_Sequential2D):
    """AlexNet (Krizhevsky et al., 2012), torchvision's single-tower variant.

    ``imagenet``: torchvision layout (11x11/4 stem, 3x3/2 max pools, 6x6 adaptive pool,
    9216-4096-4096-classes). ``cifar`` (32x32): 3x3/1 stem, 2x2/2 max pools
    (32 -> 16 -> 8 -> 4), 2x2 adaptive pool, 1024-1024-1024-classes; same layer indices.
    Units: 5 conv groups + 3 FC = 8; each FC unit holds the Dropout before it.
    """

    _dropout_leads = True

    def __init__(self, num_classes: int = 10, shape: Shape = "cifar", in_channels: int = 3) -> None:
        super().__init__()
        _check_shape(shape)
        if shape == "imagenet":
            conv1 = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)

            def pool() -> nn.Module:
                return nn.MaxPool2d(kernel_size=3, stride=2)

            pool_out, hidden = 6, 4096
        else:
            conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)

            def pool() -> nn.Module:
                return nn.MaxPool2d(kernel_size=2, stride=2)

            pool_out, hidden = 2, 1024
        self.features = nn.Sequential(
            conv1,
            nn.ReLU(),
            pool(),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            pool(),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            pool(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((pool_out, pool_out))
        self.classifier = _classifier(
            256 * pool_out * pool_out, hidden, num_classes, dropout_first=True
        )


def vgg16_bn(num_classes: int = 10, shape: Shape = "cifar", in_channels: int = 3) -> VGG:
    """VGG16-BN."""
    return VGG(num_classes, shape, in_channels)


def alexnet(num_classes: int = 10, shape: Shape = "cifar", in_channels: int = 3) -> AlexNet:
    """AlexNet."""
    return AlexNet(num_classes, shape, in_channels)
