"""Iterative proxy pruning: which proxies to drop at each step (the artifact's rule)."""

from __future__ import annotations

from taoism.teeslice.student import SlicedNet

__all__ = ["first_prune", "next_prune"]


def first_prune(
    model: SlicedNet, threshold: float, fraction: float, cap: float = 0.8
) -> list[tuple[str, int]]:
    """The artifact's first step: every proxy whose gate is below ``threshold``, and at least
    the ``fraction`` with the lowest gates; when every gate is below ``threshold``, only the
    lowest ``cap`` share (lowest first)."""
    gates = model.proxy_gates()
    order = [p for _, p in sorted((g, p) for p, g in gates.items())]
    if gates and all(g < threshold for g in gates.values()):
        return order[: int(cap * len(order))]
    low = [p for p in order if gates[p] < threshold]
    return order[: max(len(low), int(fraction * len(order)))]


def next_prune(model: SlicedNet, fraction: float) -> list[tuple[str, int]]:
    """The ``fraction`` of the remaining proxies with the lowest gates (at least one)."""
    gates = model.proxy_gates()
    n = max(1, round(fraction * len(gates))) if gates else 0
    return [p for _, p in sorted((g, p) for p, g in gates.items())[:n]]
