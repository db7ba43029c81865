"""Summary statistics for repeated timings (defined in :mod:`taoism.runtime.stats`, which profiling uses)."""

from taoism.runtime.stats import Stat

__all__ = ["Stat"]
