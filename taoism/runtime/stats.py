"""Summary statistics for repeated timings."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Stat:
    """Median and spread of repeated measurements (seconds unless said otherwise)."""

    median: float
    p10: float
    p90: float
    min: float
    max: float
    mean: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stat:
        """The statistics of ``xs`` (all zero for no measurement)."""
        if not xs:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
        s = sorted(xs)
        return cls(
            statistics.median(s),
            _quantile(s, 0.10),
            _quantile(s, 0.90),
            s[0],
            s[-1],
            statistics.fmean(s),
            len(s),
        )

    @property
    def spread(self) -> float:
        """Relative p10-p90 spread around the median."""
        return (self.p90 - self.p10) / self.median if self.median else 0.0

    def ms(self) -> str:
        """The median and p10/p90 in milliseconds, as text."""
        return f"{self.median * 1e3:.3f} ms [p10 {self.p10 * 1e3:.3f}, p90 {self.p90 * 1e3:.3f}]"

    def to_json(self) -> dict[str, float]:
        """The fields as a JSON object."""
        return asdict(self)


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


__all__ = ["Stat"]
