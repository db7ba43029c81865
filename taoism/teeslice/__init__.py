"""TEESlice as published: partition-before-training with distillation and iterative pruning.

``train(victim, public_backbone, data, TeeSliceConfig(...))`` returns a :class:`SlicedNet`
(frozen public backbone + gated 1x1-conv proxy slices + private head) that deploys with
``taoism.shield(model, x, strategy="teeslice")``: backbone on the device, slices, merges and
head in the enclave. ``main_teeslice_train`` is the ``taoism teeslice train`` command.
"""

from taoism.teeslice.config import TeeSliceConfig
from taoism.teeslice.cost import tee_share
from taoism.teeslice.layout import BackboneLayout, backbone_layout
from taoism.teeslice.student import GatedSlice, Proxy, SlicedNet
from taoism.teeslice.train import SliceData, TeeSliceResult, sliced_victim, train

__all__ = [
    "BackboneLayout",
    "GatedSlice",
    "Proxy",
    "SliceData",
    "SlicedNet",
    "TeeSliceConfig",
    "TeeSliceResult",
    "backbone_layout",
    "main_teeslice_train",
    "sliced_victim",
    "tee_share",
    "train",
]


def main_teeslice_train(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    """Run ``taoism teeslice train`` (see :func:`taoism.teeslice.command.main_teeslice_train`)."""
    from taoism.teeslice.command import main_teeslice_train as run

    return run(*args, **kwargs)
