"""Iterative proxy pruning: which proxies to drop at each step (the artifact's rule)."""

from __future__ import annotations

import math

from taoism.teeslice.student import SlicedNet

__all__ = ["first_prune", "next_prune"]


def first_prune(model: SlicedNet, threshold: float, fraction: float) -> list[tuple[str, int]]:
    """Proxies whose gate is below ``threshold``, lowest first, at most ``fraction`` of them all."""
    gates = model.proxy_gates()
    low = sorted((g, p) for p, g in gates.items() if g < threshold)
    return [p for _, p in low[: math.floor(fraction * len(gates))]]


def next_prune(model: SlicedNet, fraction: float) -> list[tuple[str, int]]:
    """The ``fraction`` of the remaining proxies with the lowest gates (at least one)."""
    gates = model.proxy_gates()
    n = max(1, round(fraction * len(gates))) if gates else 0
    return [p for _, p in sorted((g, p) for p, g in gates.items())[:n]]
