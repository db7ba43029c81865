"""Eviction choices: what to seal, and how to chunk a layer, to move the fewest bytes."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from taoism.enclave.exec.base import CHUNK_PENALTY_BYTES, ChunkPlan, Executor

NEVER = 1 << 30  # the next use of a value nobody reads again


class NextUse:
    """Position of each value's next use after node ``i`` (computed on demand)."""

    __slots__ = ("uses", "i", "keep_ret", "end")

    def __init__(self, uses: Mapping[str, list[int]], i: int, keep_ret: set[str], end: int) -> None:
        self.uses, self.i, self.keep_ret, self.end = uses, i, keep_ret, end

    def get(self, k: str, default: int | None = None) -> int | None:
        """The next position that reads ``k`` (``end + 1`` for a kept or returned value)."""
        v = self.uses.get(k)
        if v is None:
            return default
        j = bisect.bisect_right(v, self.i)
        if j < len(v):
            return v[j]
        return self.end + 1 if k in self.keep_ret else NEVER


@dataclass
class Evictable:
    """A resident value (or a module's weights) that could be sealed to free ``nbytes``."""

    name: str
    nbytes: int
    cost: int  # bytes moved by sealing it now and unsealing it later
    weight: bool = False


@dataclass(frozen=True)
class Choice:
    """How to run a chunked layer: what to evict first, whether its output is sealed, the plan."""

    evict: tuple[Evictable, ...]
    out_sealed: bool
    plan: ChunkPlan


def best_choice(ex: Executor, evs: Sequence[Evictable], free0: float) -> Choice | None:
    """The cheapest (evictions, output sealed?, plan) for ``ex`` with ``free0`` bytes free.

    Evicting the first k candidates (k in 0, 1, 2, 4, ... all) is weighed against chunking finer:
    the cost counts evictions (seal + later unseal), the layer's own traffic (its sealed inputs
    and weights, re-reads included, and sealing its output), the later read of a sealed output,
    and a per-chunk overhead.
    """
    best: tuple[float, Choice] | None = None
    prefix, ecosts = [0], [0]
    for e in evs:
        prefix.append(prefix[-1] + e.nbytes)
        ecosts.append(ecosts[-1] + e.cost)
    for k in sorted({k for k in (0, 1, 2, 4, 8, 16, len(evs)) if k <= len(evs)}):
        if best is not None and ecosts[k] >= best[0]:
            break
        for sealed in (False, True):
            p = ex.plan(free0 + prefix[k], sealed)
            if p is None:
                continue
            c = (
                ecosts[k]
                + p.traffic
                + (ex.out_bytes if sealed else 0)
                + (p.chunks - 1) * CHUNK_PENALTY_BYTES
            )
            if best is None or c < best[0]:
                best = (c, Choice(tuple(evs[:k]), sealed, p))
    return best[1] if best is not None else None


__all__ = ["Choice", "Evictable", "NEVER", "NextUse", "best_choice"]
