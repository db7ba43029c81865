"""Host-side runtime: the executor that drives device and enclave segments, and profiling.

Holds only device segments and the plan: after :func:`shield` returns, no shielded weight is
reachable from here.
"""

from taoism.runtime.profile import LayerTiming, Profile, SegmentTiming
from taoism.runtime.shielded import ShieldedModel, default_device, shield

__all__ = ["LayerTiming", "Profile", "SegmentTiming", "ShieldedModel", "default_device", "shield"]
