"""TEESlice models: a frozen public ResNet (or SmallCNN) backbone plus small private slices.

Reference: Zhang et al., "No Privacy Left Outside: On the (In-)Security of TEE-Shielded DNN
Partition for On-Device ML", IEEE S&P 2024 (TEESlice, partition-before-training).

Architecture (``TEESliceResNet``)::

    h_0 = backbone stem(x)                                   (conv1, bn1, relu[, maxpool])
    h_i = backbone block_i(h_{i-1})                          (public, frozen)
          + sum_j softmax(alphas_i)_j * proxy_ij(h_{i-j})    (private slice of block i)
    y   = fc(flatten(backbone.avgpool(h_last)))              (private classifier)

Block ``i`` (1-based over ``layer1.0``, ``layer1.1``, ...) has ``min(i, max_proxies)``
proxies (``max_proxies`` <= 3): proxy ``j`` (0-based) is fed by ``h_{i-1-j}``, the output of
one of the previous 1-3 blocks or of the stem. A proxy is a 1x1 conv + BN whose stride and
output width adapt the source to block ``i``'s output shape (``rank`` factors it into two
1x1 convs through ``rank`` channels; full rank by default). The proxies' outputs are mixed
by the softmax of the block's learnable ``alphas`` (initialised to 0: equal weights) and
added to the block's output.

Module names: ``backbone.*`` is the public part (a plain ``ResNet`` whose ``fc`` is an
``Identity``); ``slices.<block>.proxies.<j>.{conv,bn}``, ``slices.<block>.alphas`` (block
name with ``_`` for ``.``, e.g. ``slices.layer2_0``) and ``fc`` are private. A placement puts
``backbone`` on the device and ``slices`` + ``fc`` (plus the merge adds) in the enclave.
The forward is a Python loop over a fixed structure, so ``torch.fx`` traces it.

These zoo models are the directly trained variant. TEESlice as the artifact trains it (teacher
distillation, gated proxies mixed with every backbone block, expected-FLOPs term, iterative
pruning; any zoo backbone) is :func:`taoism.teeslice.train`, which returns a
:class:`taoism.teeslice.SlicedNet` built on :class:`_SlicedModel` below, so it deploys with
``strategy="teeslice"`` the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from taoism.errors import ConfigError
from taoism.zoo._weights import WeightsLike, load_checked, resolve_state_dict
from taoism.zoo.resnet import ResNet, Stem, resnet18, resnet34, resnet50

__all__ = [
    "ProxyBlock",
    "SliceGroup",
    "TEESliceResNet",
    "teeslice_resnet18",
    "teeslice_resnet34",
    "teeslice_resnet50",
    "TEESliceSmallCNN",
    "teeslice_small_cnn",
]


class ProxyBlock(nn.Module):
    """1x1 conv (stride and width adapt the source to the target shape) + BN.

    With ``rank`` the 1x1 conv is factored into ``reduce`` (in -> rank, carrying the stride)
    and ``conv`` (rank -> out), still linear, for wide backbones (ResNet-50).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, rank: int | None = None
    ) -> None:
        super().__init__()
        self.reduce: nn.Conv2d | None = None
        if rank is not None:
            self.reduce = nn.Conv2d(in_channels, rank, kernel_size=1, stride=stride, bias=False)
            in_channels, stride = rank, 1
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        for conv in (self.reduce, self.conv):
            if conv is not None:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce is not None:
            x = self.reduce(x)
        return self.bn(self.conv(x))


class SliceGroup(nn.Module):
    """The private slice of one backbone block: its proxies and their gate logits ``alphas``.

    ``offsets[j]`` says which earlier feature feeds ``proxies[j]``: 1 = the block's own input,
    2 = the one before, and so on. ``forward(*feats)`` takes one feature per proxy.
    """

    def __init__(
        self,
        offsets: tuple[int, ...],
        in_channels: tuple[int, ...],
        strides: tuple[int, ...],
        out_channels: int,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        if not offsets or not len(offsets) == len(in_channels) == len(strides):
            raise ConfigError(
                "SliceGroup needs one (offset, in_channels, stride) per proxy, at least one"
            )
        self.offsets = tuple(offsets)
        self.proxies = nn.ModuleList(
            ProxyBlock(c, out_channels, s, rank) for c, s in zip(in_channels, strides)
        )
        self.alphas = nn.Parameter(torch.zeros(len(offsets)))

    def gates(self) -> torch.Tensor:
        """Mixing weights: softmax over the proxies' ``alphas``."""
        return torch.softmax(self.alphas, dim=0)

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        gates = self.gates()
        out = gates[0] * self.proxies[0](feats[0])
        for j in range(1, len(self.proxies)):
            out = out + gates[j] * self.proxies[j](feats[j])
        return out

    def extra_repr(self) -> str:
        return f"offsets={self.offsets}"


class _SlicedModel(nn.Module):
    """What every TEESlice model shares: a public ``backbone``; private ``slices`` and ``fc``."""

    backbone: nn.Module

    @staticmethod
    def public_modules() -> tuple[str, ...]:
        """Top-level modules that may run outside the enclave."""
        return ("backbone",)

    @staticmethod
    def private_modules() -> tuple[str, ...]:
        """Top-level modules that must stay in the enclave."""
        return ("slices", "fc")

    def load_backbone(self, weights: WeightsLike | Mapping[str, torch.Tensor]) -> None:
        """Load the plain model's state_dict (or checkpoint path) into the public backbone.

        The source's ``fc.*`` entries are ignored (the classifier is private).
        """
        sd = {k: v for k, v in resolve_state_dict(weights).items() if not k.startswith("fc.")}
        load_checked(self.backbone, sd, what="TEESlice backbone")


class TEESliceResNet(_SlicedModel):
    """A frozen public ResNet ``backbone`` + private proxy ``slices`` + private ``fc``.

    See the module docstring for the architecture. The backbone's parameters have
    ``requires_grad=False`` and ``train()`` keeps the backbone in eval mode (its BN
    statistics stay frozen). Units: the backbone stem, then one unit per block holding
    ``backbone.<block>`` and ``slices.<block>``, then (``backbone.avgpool``, ``fc``).
    """

    def __init__(
        self, backbone: ResNet, num_classes: int = 10, max_proxies: int = 3, rank: int | None = None
    ) -> None:
        super().__init__()
        if not 1 <= max_proxies <= 3:
            raise ConfigError(f"max_proxies must be 1, 2 or 3, got {max_proxies}")
        if rank is not None and rank < 1:
            raise ConfigError(
                f"rank must be a positive int or None (full-rank proxies), got {rank}"
            )
        self.max_proxies = max_proxies
        backbone.fc = nn.Identity()
        self.backbone = backbone
        # (channels, total stride) of h_0 (stem output) .. h_n (last block output).
        feats = [(backbone.bn1.num_features, 1)]
        blocks: list[tuple[str, str]] = []
        self.slices = nn.ModuleDict()
        for i, name in enumerate(backbone.block_names(), start=1):
            block = backbone.get_submodule(name)
            feats.append((block.out_channels, feats[-1][1] * block.stride))
            offsets = tuple(range(1, min(i, max_proxies) + 1))
            srcs = [feats[i - o] for o in offsets]
            key = name.replace(".", "_")
            self.slices[key] = SliceGroup(
                offsets,
                tuple(c for c, _ in srcs),
                tuple(feats[i][1] // r for _, r in srcs),
                block.out_channels,
                rank,
            )
            blocks.append((name, key))
        self._blocks = tuple(blocks)
        self.fc = nn.Linear(backbone.num_features, num_classes)
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> TEESliceResNet:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone
        h = backbone.forward_stem(x)
        window = [h]  # the last max_proxies features, oldest first
        for name, key in self._blocks:
            group = self.slices[key]
            out = backbone.get_submodule(name)(window[-1])
            h = out + group(*[window[-o] for o in group.offsets])
            window = [*window, h][-self.max_proxies :]
        h = backbone.avgpool(h)
        h = torch.flatten(h, 1)
        return self.fc(h)

    def taoism_units(self) -> list[tuple[str, ...]]:
        """Backbone stem, each (backbone block, its slice), then (backbone.avgpool, fc)."""
        stem = tuple(f"backbone.{n}" for n in self.backbone.stem_names())
        blocks = [(f"backbone.{name}", f"slices.{key}") for name, key in self._blocks]
        return [stem, *blocks, ("backbone.avgpool", "fc")]


def _build(
    arch: Callable[..., ResNet], num_classes: int, stem: Stem, max_proxies: int, rank: int | None
) -> TEESliceResNet:
    return TEESliceResNet(arch(num_classes=num_classes, stem=stem), num_classes, max_proxies, rank)


def teeslice_resnet18(
    num_classes: int = 10, stem: Stem = "cifar", max_proxies: int = 3, rank: int | None = None
) -> TEESliceResNet:
    """TEESlice on a ResNet-18 backbone."""
    return _build(resnet18, num_classes, stem, max_proxies, rank)


def teeslice_resnet34(
    num_classes: int = 10, stem: Stem = "cifar", max_proxies: int = 3, rank: int | None = None
) -> TEESliceResNet:
    """TEESlice on a ResNet-34 backbone."""
    return _build(resnet34, num_classes, stem, max_proxies, rank)


def teeslice_resnet50(
    num_classes: int = 10, stem: Stem = "cifar", max_proxies: int = 3, rank: int | None = None
) -> TEESliceResNet:
    """TEESlice on a ResNet-50 backbone."""
    return _build(resnet50, num_classes, stem, max_proxies, rank)


class TEESliceSmallCNN(_SlicedModel):
    """TEESlice on a :class:`~taoism.zoo.small.SmallCNN`: the same design as
    :class:`TEESliceResNet`, with the backbone's conv groups as the blocks.

    ``h_0`` is the input image (SmallCNN has no stem); group ``i`` (1-based) computes
    ``h_i = backbone group_i(h_{i-1}) + sum_j softmax(alphas)_j * proxy_ij(h_{i-1-j})`` with
    ``min(i, max_proxies)`` strided 1x1 conv + BN proxies, and ``y = fc(flatten(h_last))``.

    Module names: ``backbone.features.*`` (public, frozen; a plain ``SmallCNN`` whose ``fc`` is
    an ``Identity``, so a plain small_cnn state_dict loads into it), ``slices.group<k>`` (0-based
    group index) and ``fc`` (private). Units: one per (backbone group, its slice), then ``fc``.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int = 10, input_size: int = 28, max_proxies: int = 3
    ) -> None:
        super().__init__()
        from taoism.zoo._units import group_sequential

        if not 1 <= max_proxies <= 3:
            raise ConfigError(f"max_proxies must be 1, 2 or 3, got {max_proxies}")
        groups = [
            tuple(n[len("features.") :] for n in u)
            for u in group_sequential(backbone.features, "features")
        ]
        if input_size % 2 ** len(groups):
            raise ConfigError(
                f"TEESliceSmallCNN needs input_size divisible by {2 ** len(groups)} "
                f"(one 2x2 pooling per conv group), got {input_size}"
            )
        self.max_proxies = max_proxies
        in_features = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        # (channels, total stride) of h_0 (input) .. h_n (last group output).
        feats = [(backbone.features[int(groups[0][0])].in_channels, 1)]
        plan: list[tuple[tuple[str, ...], str]] = []
        self.slices = nn.ModuleDict()
        for i, names in enumerate(groups, start=1):
            conv = backbone.features[int(names[0])]
            feats.append((conv.out_channels, feats[-1][1] * 2))
            offsets = tuple(range(1, min(i, max_proxies) + 1))
            srcs = [feats[i - o] for o in offsets]
            key = f"group{i - 1}"
            self.slices[key] = SliceGroup(
                offsets,
                tuple(c for c, _ in srcs),
                tuple(feats[i][1] // r for _, r in srcs),
                conv.out_channels,
            )
            plan.append((tuple(f"features.{n}" for n in names), key))
        self._groups = tuple(plan)
        self.fc = nn.Linear(in_features, num_classes)
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> TEESliceSmallCNN:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone
        h = x
        window = [h]  # the last max_proxies features, oldest first
        for names, key in self._groups:
            group = self.slices[key]
            out = window[-1]
            for name in names:
                out = backbone.get_submodule(name)(out)
            h = out + group(*[window[-o] for o in group.offsets])
            window = [*window, h][-self.max_proxies :]
        h = torch.flatten(h, 1)
        return self.fc(h)

    def taoism_units(self) -> list[tuple[str, ...]]:
        """Each (backbone conv group, its slice), then ``fc``."""
        return [
            (*(f"backbone.{n}" for n in names), f"slices.{key}") for names, key in self._groups
        ] + [("fc",)]


def teeslice_small_cnn(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, max_proxies: int = 3
) -> TEESliceSmallCNN:
    """TEESlice on the default two-group SmallCNN backbone."""
    from taoism.zoo.small import SmallCNN

    backbone = SmallCNN(num_classes, in_channels=in_channels, input_size=input_size)
    return TEESliceSmallCNN(backbone, num_classes, input_size, max_proxies)
