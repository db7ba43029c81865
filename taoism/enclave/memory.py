"""Accounting of the enclave's data working set against its memory budget.

Counted (bytes, by category):

* ``weights``      resident module parameters/buffers and constants, plus weight chunks unsealed
                   for the layer that is running;
* ``activations``  values held between segments and inside a segment (inputs received from the
                   host, outputs of nodes, values kept for later nodes), and the input/output
                   chunks a chunked layer materialises;
* ``scratch``      per-layer temporaries, modelled: im2col for a convolution,
                   ``C_in_used x prod(kernel) x rows_out x cols_out x itemsize`` per sample of the
                   chunk (0 for a 1x1, stride-1, unpadded convolution);
* ``crypto``       sealing temporaries (a block decrypted to be sliced) and the boundary's staging
                   buffer for replies.

Not counted: the Python / torch runtime itself (its RSS is reported separately by
:func:`runtime_rss`), and sealed pages, which live outside the budget in untrusted memory.

Views share storage: a value is charged once per underlying storage, however many graph values
alias it.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from taoism.errors import MemoryBudgetError

CATEGORIES = ("weights", "activations", "scratch", "crypto")


def runtime_rss() -> dict[str, int]:
    """The enclave process's resident set (current and peak), the Python/torch runtime included.

    Reported next to the accounting, never counted in it.
    """
    cur = 0
    try:
        with open("/proc/self/statm") as fh:
            import os

            cur = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_bytes": cur, "max_rss_bytes": peak}


@dataclass
class NodeMemory:
    """What one node (layer) needed: its peak working set and how it ran."""

    name: str
    kind: str = ""
    mode: str = "whole"  # whole | chunked | generic | alias | fast
    chunks: int = 1
    grid: str = ""
    peak_bytes: int = 0  # the whole enclave working set while this node ran
    peak_breakdown: dict[str, int] = field(default_factory=dict)
    node_bytes: int = 0  # what the node itself added on top of what was resident before it
    sealed_bytes: int = 0
    unsealed_bytes: int = 0
    evicted: list[str] = field(default_factory=list)
    out_sealed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {
            "name": self.name,
            "kind": self.kind,
            "mode": self.mode,
            "chunks": self.chunks,
            "grid": self.grid,
            "peak_bytes": self.peak_bytes,
            "peak_breakdown": dict(self.peak_breakdown),
            "node_bytes": self.node_bytes,
            "sealed_bytes": self.sealed_bytes,
            "unsealed_bytes": self.unsealed_bytes,
            "evicted": list(self.evicted),
            "out_sealed": self.out_sealed,
        }

    def merge_max(self, other: NodeMemory) -> None:
        """Fold another run of the same node in, keeping maxima."""
        if other.peak_bytes >= self.peak_bytes:
            self.peak_bytes, self.peak_breakdown = other.peak_bytes, dict(other.peak_breakdown)
        self.node_bytes = max(self.node_bytes, other.node_bytes)
        self.sealed_bytes = max(self.sealed_bytes, other.sealed_bytes)
        self.unsealed_bytes = max(self.unsealed_bytes, other.unsealed_bytes)
        self.kind, self.mode, self.chunks, self.grid = (
            other.kind,
            other.mode,
            other.chunks,
            other.grid,
        )
        self.out_sealed = other.out_sealed
        self.evicted = list(other.evicted)


class Accountant:
    """Bytes in use by category, the peak, and per-node peaks, held to ``budget``.

    ``alloc`` raises :class:`MemoryBudgetError` if the total would exceed the budget
    (``strict``): the planner must never let that happen, so it is a self-check.
    """

    def __init__(self, budget: int | None, *, strict: bool = True) -> None:
        self.budget = budget
        self.strict = strict
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.peak = 0
        self.peak_breakdown = dict.fromkeys(CATEGORIES, 0)
        self.node: NodeMemory | None = None
        self._node_base = 0
        self.sealed_bytes = 0
        self.unsealed_bytes = 0

    # -- bookkeeping -----------------------------------------------------------------------
    def alloc(self, cat: str, n: int, strict: bool | None = None) -> None:
        """Charge ``n`` bytes to ``cat`` (MemoryBudgetError past the budget when strict)."""
        if n <= 0:
            return
        total = self.total + n
        if (
            (self.strict if strict is None else strict)
            and self.budget is not None
            and total > self.budget
        ):
            where = f" in node {self.node.name!r}" if self.node is not None else ""
            raise MemoryBudgetError(
                f"internal: enclave working set would reach {total:,} bytes{where} "
                f"({cat} +{n:,}), over the budget of {self.budget:,} bytes "
                f"(in use: {self.current})"
            )
        self.current[cat] += n
        self.total = total
        if total > self.peak:
            self.peak = total
            self.peak_breakdown = dict(self.current)
        node = self.node
        if node is not None and total > node.peak_bytes:
            node.peak_bytes = total
            node.peak_breakdown = dict(self.current)
            node.node_bytes = max(node.node_bytes, total - self._node_base)

    def free(self, cat: str, n: int) -> None:
        """Release ``n`` bytes of ``cat``."""
        if n <= 0:
            return
        self.current[cat] -= n
        self.total -= n
        assert self.current[cat] >= 0, (cat, n, self.current)

    def hold(self, cat: str, n: int) -> _Hold:
        """Context: ``n`` bytes of ``cat`` charged while it is open."""
        return _Hold(self, cat, n)

    def free_bytes(self) -> float:
        """Bytes the budget still leaves free (inf without a budget)."""
        return float("inf") if self.budget is None else self.budget - self.total

    def on_sealed(self, kind: str, n: int) -> None:
        """Sealer callback: count bytes sealed/unsealed (overall and for the running node)."""
        if kind == "sealed":
            self.sealed_bytes += n
            if self.node is not None:
                self.node.sealed_bytes += n
        else:
            self.unsealed_bytes += n
            if self.node is not None:
                self.node.unsealed_bytes += n

    # -- nodes -----------------------------------------------------------------------------
    def begin_node(self, node: NodeMemory) -> None:
        """Attribute what follows to ``node`` (its peak and sealing counters)."""
        self.node = node
        self._node_base = self.total
        if self.total > node.peak_bytes:
            node.peak_bytes = self.total
            node.peak_breakdown = dict(self.current)

    def end_node(self) -> None:
        """Stop attributing to a node."""
        self.node = None

    def reset_peak(self) -> None:
        """Start a new peak from what is in use now."""
        self.peak = self.total
        self.peak_breakdown = dict(self.current)
        self.sealed_bytes = self.unsealed_bytes = 0


class _Hold:
    __slots__ = ("acct", "cat", "n")

    def __init__(self, acct: Accountant, cat: str, n: int) -> None:
        self.acct, self.cat, self.n = acct, cat, n

    def __enter__(self) -> _Hold:
        self.acct.alloc(self.cat, self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        self.acct.free(self.cat, self.n)


def _roots(v: Any) -> Iterator[tuple[int, Any, int]]:
    """(key, object keeping it alive, bytes) of every storage ``v`` holds; views share their base's.

    Keyed by the storage itself, not ``tensor._base``: under ``torch.inference_mode`` (how the
    enclave runs) a view records no ``_base``, so a reshape would be charged as a new tensor.
    """
    if isinstance(v, torch.Tensor):
        try:
            st = v.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no plain storage (sparse, nested)
            yield id(v), v, v.nbytes
            return
        yield st._cdata, st, st.nbytes()
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _roots(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _roots(x)


class ResidentValues:
    """Charges graph values to ``activations`` once per storage, and releases them when dead.

    Storages registered with :meth:`own_weights` (parameters, constants) are never charged as
    activations: a value that aliases them is free.
    """

    def __init__(self, acct: Accountant) -> None:
        self.acct = acct
        self._refs: dict[int, list[Any]] = {}  # storage key -> [storage, bytes, refcount]
        self._owned: set[int] = set()
        self._by_value: dict[str, list[int]] = {}

    def own_weights(self, tensors: Any) -> None:
        """Mark the storages of ``tensors`` as weights (never charged as activations)."""
        for key, _, _ in _roots(tensors):
            self._owned.add(key)

    def disown_weights(self, tensors: Any) -> None:
        """Undo :meth:`own_weights` (the weights were sealed)."""
        for key, _, _ in _roots(tensors):
            self._owned.discard(key)

    def add(self, name: str, value: Any) -> None:
        """Hold ``value`` as ``name``, charging each new storage once."""
        if name in self._by_value:
            self.drop(name)
        ids = []
        for rid, keep, n in _roots(value):
            if rid in self._owned:
                continue
            ent = self._refs.get(rid)
            if ent is None:
                self.acct.alloc("activations", n)
                self._refs[rid] = [keep, n, 1]
            else:
                ent[2] += 1
            ids.append(rid)
        self._by_value[name] = ids

    def drop(self, name: str) -> None:
        """Release ``name``; storages nothing else holds are freed."""
        for rid in self._by_value.pop(name, ()):
            ent = self._refs[rid]
            ent[2] -= 1
            if ent[2] == 0:
                self.acct.free("activations", ent[1])
                del self._refs[rid]

    def holds(self, name: str) -> bool:
        """True if ``name`` is held."""
        return name in self._by_value

    def bytes_of(self, name: str) -> int:
        """Bytes that dropping ``name`` alone would release."""
        return sum(self._refs[r][1] for r in self._by_value.get(name, ()) if self._refs[r][2] == 1)

    def sharers(self, name: str) -> set[str]:
        """Other values sharing a storage with ``name``."""
        ids = set(self._by_value.get(name, ()))
        return {v for v, rs in self._by_value.items() if v != name and ids.intersection(rs)}

    def names(self) -> list[str]:
        """The names held, in insertion order."""
        return list(self._by_value)

    def clear(self) -> None:
        """Release every value."""
        for name in list(self._by_value):
            self.drop(name)


@dataclass
class MemoryReport:
    """Accounting of one segment run (or a whole inference): peaks and per-node detail."""

    budget_bytes: int | None
    tee: str
    peak_bytes: int
    peak_breakdown: dict[str, int]
    sealed_bytes: int
    unsealed_bytes: int
    weights_resident_bytes: int
    weights_sealed_bytes: int
    nodes: list[NodeMemory]
    fast_path: bool = False
    runtime: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {
            "budget_bytes": self.budget_bytes,
            "tee": self.tee,
            "peak_bytes": self.peak_bytes,
            "peak_breakdown": dict(self.peak_breakdown),
            "sealed_bytes": self.sealed_bytes,
            "unsealed_bytes": self.unsealed_bytes,
            "weights_resident_bytes": self.weights_resident_bytes,
            "weights_sealed_bytes": self.weights_sealed_bytes,
            "fast_path": self.fast_path,
            "nodes": [n.to_json() for n in self.nodes],
            "runtime_not_counted": dict(self.runtime),
        }


__all__ = [
    "Accountant",
    "CATEGORIES",
    "MemoryReport",
    "NodeMemory",
    "ResidentValues",
    "runtime_rss",
]
