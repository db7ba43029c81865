"""Placement: which side each node runs on, and the segments and transfers that follow.

Works on the captured graph only; it moves no tensors and sees no enclave state.
"""

from taoism.placement.modes import EnclaveMode
from taoism.placement.plan import LayerPlan, Plan, Segment, build_plan
from taoism.placement.rules import PlacementRules, PlacementSpec

__all__ = [
    "EnclaveMode",
    "LayerPlan",
    "Plan",
    "PlacementRules",
    "PlacementSpec",
    "Segment",
    "build_plan",
]
