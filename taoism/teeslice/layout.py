"""Where TEESlice proxies go: the blocks of a backbone, as tsdp-strategies.md defines them.

ResNet and the GAP-head ResNet (``gap_resnet20``): the stem, then each residual block.
VGG / AlexNet / SmallCNN: each conv(-bn)-relu(-pool) group. The classifier (pooling + flatten
+ the FC layers) is the private head. A backbone of any other type is an :class:`~taoism.errors.UnsupportedBackbone`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from taoism.errors import UnsupportedBackbone

__all__ = ["BackboneLayout", "backbone_layout"]


@dataclass(frozen=True)
class BackboneLayout:
    """A backbone's blocks (module names, run in order) and the modules of its head."""

    blocks: tuple[tuple[str, ...], ...]
    pool: str | None  #: pooling module run before flatten (None: none)
    classifier: str  #: the classifier module (a Linear or a Sequential of FC layers)


def backbone_layout(backbone: nn.Module) -> BackboneLayout:
    """The blocks and head of a supported backbone, or :class:`UnsupportedBackbone`."""
    from taoism.zoo._units import group_sequential
    from taoism.zoo.gap import GapResNet
    from taoism.zoo.plain import VGG, AlexNet
    from taoism.zoo.resnet import ResNet
    from taoism.zoo.small import SmallCNN

    if isinstance(backbone, ResNet):
        blocks = [tuple(backbone.stem_names())] + [(n,) for n in backbone.block_names()]
        return BackboneLayout(tuple(blocks), "avgpool", "fc")
    if isinstance(backbone, GapResNet):  # its units: stem, each block, then (avgpool, fc)
        *blocks, head = backbone.taoism_units()
        return BackboneLayout(tuple(blocks), head[0], head[1])
    if isinstance(backbone, (VGG, AlexNet)):
        return BackboneLayout(
            tuple(group_sequential(backbone.features, "features")), "avgpool", "classifier"
        )
    if isinstance(backbone, SmallCNN):
        return BackboneLayout(tuple(group_sequential(backbone.features, "features")), None, "fc")
    raise UnsupportedBackbone(
        f"TEESlice cannot place proxies on a {type(backbone).__name__}: proxies are 1x1 conv + BN "
        "blocks attached to known conv blocks, and taoism only knows the block structure of "
        "ResNet and GapResNet (stem + residual blocks), VGG, AlexNet and SmallCNN (conv groups); use one of "
        "taoism.zoo's resnet18/34/50, gap_resnet20, vgg16_bn, alexnet or small_cnn as the public backbone"
    )
