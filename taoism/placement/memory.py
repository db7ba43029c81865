"""Host-side memory plan: how each enclave layer will run within a TEE's memory budget.

:func:`memory_plan` asks the enclave's one planning entry point
(:func:`taoism.enclave.planning.plan_memory`) to run the enclave's own scheduler on meta
tensors, at the plan's example batch: no weights are copied and nothing is computed,
but every chunking, sealing and eviction decision, and the accounted peak, are exactly the ones
the enclave will make for that batch. ``shield(..., tee=...)`` calls it before starting the
enclave and refuses, with :class:`taoism.errors.MemoryBudgetError` naming the layer, a plan
that cannot fit; :func:`format_memory_plan` renders it for ``taoism plan``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from taoism.enclave.planning import TensorSpec, plan_memory
from taoism.errors import ConfigError, MemoryBudgetError
from taoism.placement.lowering import enclave_program
from taoism.protocol.schema import MemorySection
from taoism.tee import TeeProfile, format_bytes, get_profile


@dataclass(frozen=True)
class NodeMemoryPlan:
    """One node: how it runs and the enclave working set while it runs."""

    name: str
    kind: str
    mode: str  # whole | chunked | generic | alias | evict
    chunks: int
    grid: str
    peak_bytes: int
    node_bytes: int
    out_sealed: bool
    sealed_bytes: int
    unsealed_bytes: int
    evicted: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object."""
        return {
            "name": self.name,
            "kind": self.kind,
            "mode": self.mode,
            "chunks": self.chunks,
            "grid": self.grid,
            "peak_bytes": self.peak_bytes,
            "node_bytes": self.node_bytes,
            "out_sealed": self.out_sealed,
            "sealed_bytes": self.sealed_bytes,
            "unsealed_bytes": self.unsealed_bytes,
            "evicted": list(self.evicted),
        }


@dataclass(frozen=True)
class MemoryPlan:
    """Per-node chunking and the expected peak of the enclave's working set, at ``batch``."""

    tee: str
    budget_bytes: int | None
    batch: int
    peak_bytes: int
    peak_breakdown: Mapping[str, int]
    weights_bytes: int
    weights_resident_bytes: int
    weights_sealed_bytes: int
    sealed_modules: tuple[str, ...]
    resident_weight_fraction: float
    sealed_bytes: int  # per inference
    unsealed_bytes: int  # per inference
    nodes: tuple[NodeMemoryPlan, ...]
    page_bytes: int
    module_paths: Mapping[str, str] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        """True if the expected peak is within the budget."""
        return self.budget_bytes is None or self.peak_bytes <= self.budget_bytes

    @property
    def chunked_nodes(self) -> tuple[NodeMemoryPlan, ...]:
        """The nodes that run in more than one chunk."""
        return tuple(n for n in self.nodes if n.chunks > 1)

    def spec(self) -> dict[str, Any]:
        """The ``memory`` section of the enclave program description."""
        return {
            "tee": self.tee,
            "budget_bytes": self.budget_bytes,
            "page_bytes": self.page_bytes,
            "sealed_modules": list(self.sealed_modules),
            "resident_weight_fraction": self.resident_weight_fraction,
            "module_paths": dict(self.module_paths),
        }

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON object."""
        return {
            "format": "taoism-memory-plan/1",
            "tee": self.tee,
            "budget_bytes": self.budget_bytes,
            "batch": self.batch,
            "peak_bytes": self.peak_bytes,
            "peak_breakdown": dict(self.peak_breakdown),
            "fits": self.fits,
            "weights_bytes": self.weights_bytes,
            "weights_resident_bytes": self.weights_resident_bytes,
            "weights_sealed_bytes": self.weights_sealed_bytes,
            "sealed_modules": [self.module_paths.get(k, k) for k in self.sealed_modules],
            "resident_weight_fraction": self.resident_weight_fraction,
            "sealed_bytes_per_inference": self.sealed_bytes,
            "unsealed_bytes_per_inference": self.unsealed_bytes,
            "page_bytes": self.page_bytes,
            "nodes": [n.to_json() for n in self.nodes],
        }

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    def table(self) -> str:
        """The plan as a text table (:func:`format_memory_plan`)."""
        return format_memory_plan(self)

    def __str__(self) -> str:
        return self.table()


def format_memory_plan(mp: MemoryPlan, *, all_nodes: bool = True) -> str:
    """A text table of a memory plan (for ``taoism plan``): one row per enclave node."""
    head = (
        f"{'node':<28} {'kind':<13} {'mode':<8} {'chunks':>6} {'grid':<22} {'peak':>11} "
        f"{'sealed':>10} {'unsealed':>10}"
    )
    rows = [
        f"enclave memory plan: tee {mp.tee}, budget {format_bytes(mp.budget_bytes)}, "
        f"batch {mp.batch}",
        head,
        "-" * len(head),
    ]
    for n in mp.nodes:
        if not all_nodes and n.chunks <= 1 and not n.sealed_bytes and not n.unsealed_bytes:
            continue
        grid = n.grid if len(n.grid) <= 22 else n.grid[:21] + "~"
        rows.append(
            f"{n.name[:28]:<28} {n.kind[:13]:<13} {n.mode[:8]:<8} {n.chunks:>6} {grid:<22} "
            f"{format_bytes(n.peak_bytes):>11} {format_bytes(n.sealed_bytes):>10} "
            f"{format_bytes(n.unsealed_bytes):>10}"
            + ("  out sealed" if n.out_sealed else "")
            + (f"  evicts {','.join(n.evicted)[:40]}" if n.evicted else "")
        )
    rows.append("-" * len(head))
    b = mp.peak_breakdown
    rows.append(
        f"expected peak {format_bytes(mp.peak_bytes)} of {format_bytes(mp.budget_bytes)} "
        f"(weights {format_bytes(b.get('weights', 0))}, activations "
        f"{format_bytes(b.get('activations', 0))}, scratch {format_bytes(b.get('scratch', 0))}, "
        f"crypto {format_bytes(b.get('crypto', 0))}); {len(mp.chunked_nodes)} chunked node(s)"
    )
    rows.append(
        f"weights {format_bytes(mp.weights_bytes)}: {format_bytes(mp.weights_resident_bytes)} "
        f"resident, {format_bytes(mp.weights_sealed_bytes)} sealed "
        f"({len(mp.sealed_modules)} module(s)); per inference "
        f"{format_bytes(mp.sealed_bytes)} sealed, {format_bytes(mp.unsealed_bytes)} unsealed"
    )
    return "\n".join(rows)


def _budget_of(budget: Any) -> tuple[str, int | None]:
    """(tee name, bytes) from a profile name, TeeProfile, EnclaveConfig, int or None."""
    if budget is None:
        return "unlimited", None
    if isinstance(budget, TeeProfile):
        return budget.name, budget.memory_budget
    if isinstance(budget, str):
        prof = get_profile(budget)
        return prof.name, prof.memory_budget
    if hasattr(budget, "budget_bytes") and hasattr(budget, "tee"):  # EnclaveConfig
        return budget.tee, budget.budget_bytes
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return "custom", budget
    raise ConfigError(
        f"memory_plan: budget must be a TEE profile name, a TeeProfile, an "
        f"EnclaveConfig, a positive int of bytes or None, got {budget!r}"
    )


def memory_plan(
    plan: Any,
    budget: Any = "unlimited",
    captured: Any = None,
    *,
    program: tuple[Mapping[str, Any], Sequence[torch.Tensor]] | None = None,
    resident_weight_fraction: float | None = None,
) -> MemoryPlan:
    """Plan the enclave's memory for ``plan`` under ``budget``; raise if a layer cannot fit.

    ``budget``: a TEE profile name (``"sgx1-client"``...), a :class:`TeeProfile`, an
    :class:`EnclaveConfig`, bytes, or None (unlimited). The enclave program is built from
    ``captured`` (the :class:`CapturedGraph` the plan came from) unless ``program`` (the
    ``(description, tensors)`` pair of :func:`taoism.runtime.lowering.enclave_program`) is given;
    only tensor shapes are read. Raises :class:`MemoryBudgetError` naming the first layer that
    cannot run even at its smallest chunk, with the bytes it needs and the budget.
    """
    tee, nbytes = _budget_of(budget)
    if program is None:
        if captured is None:
            raise ConfigError(
                "memory_plan needs the captured graph (captured=) or the enclave "
                "program (program=(description, tensors)) to know layer shapes"
            )
        program = enclave_program(captured, plan)
    desc, tensors = program
    specs = {n: (tuple(t.shape), t.dtype) for n, t in zip(desc.get("tensors", []), tensors)}
    values = _value_specs(plan, captured, desc)
    # The resident-weight allowance is searched: half the budget first, then more if the run left
    # headroom, less if it had to seal; the plan moving the fewest bytes wins.
    queue = (
        [resident_weight_fraction]
        if resident_weight_fraction is not None
        else ([0.5] if nbytes is not None else [1.0])
    )
    tried: set[float] = set()
    best: tuple[tuple[int, int, int], MemoryPlan] | None = None
    first_error: MemoryBudgetError | None = None
    while queue and len(tried) < 6:
        frac = round(queue.pop(0), 4)
        if frac in tried:
            continue
        tried.add(frac)
        try:
            mp = _simulate(desc, specs, values, tee, nbytes, frac, plan.batch)
        except MemoryBudgetError as exc:
            first_error = first_error or exc
            if resident_weight_fraction is None and nbytes is not None:
                queue += [f for f in (0.25, 0.0) if f < frac]
            continue
        moved = mp.sealed_bytes + mp.unsealed_bytes
        score = (moved, sum(n.chunks for n in mp.nodes), -int(100 * frac))
        if best is None or score < best[0]:
            best = (score, mp)
        if moved == 0 or resident_weight_fraction is not None or nbytes is None:
            break
        headroom = nbytes - mp.peak_bytes
        if mp.weights_sealed_bytes and headroom > nbytes // 20:
            queue.append(min(1.0, (mp.weights_resident_bytes + 0.9 * headroom) / nbytes))
        queue += [f for f in (0.25, 0.0) if f < frac]
    if best is None:
        assert first_error is not None
        raise first_error
    return best[1]


def _value_specs(plan: Any, captured: Any, desc: Mapping[str, Any]) -> dict[str, TensorSpec]:
    """Shape and dtype of every value the enclave receives from the host."""
    out: dict[str, TensorSpec] = {}
    infos = captured.nodes if captured is not None else {l.info.name: l.info for l in plan.layers}
    for seg in desc.get("segments", []):
        for v in seg["send_in"]:
            info = infos.get(v)
            if info is None or not info.out_shapes:
                if captured is not None and v in plan.input_names:
                    i = plan.input_names.index(v)
                    out[v] = (tuple(captured.input_shapes[i]), captured.input_dtypes[i])
                    continue
                raise ConfigError(f"memory_plan: no shape known for value {v!r}; pass captured=")
            out[v] = (tuple(info.out_shapes[0]), getattr(torch, info.out_dtypes[0]))
    return out


def _simulate(
    desc: Mapping[str, Any],
    specs: Mapping[str, TensorSpec],
    values: Mapping[str, TensorSpec],
    tee: str,
    budget: int | None,
    frac: float,
    batch: int,
) -> MemoryPlan:
    paths = {k: m.get("path", k) for k, m in desc.get("modules", {}).items()}
    # parsed as the enclave parses it: the page size is derived from the budget the same way
    section = MemorySection.parse(
        {
            "tee": tee,
            "budget_bytes": budget,
            "resident_weight_fraction": frac,
            "module_paths": paths,
        }
    )
    pm = plan_memory(desc, specs, values, section)
    nodes = tuple(
        NodeMemoryPlan(
            n.name,
            n.kind,
            n.mode,
            n.chunks,
            n.grid,
            n.peak_bytes,
            n.node_bytes,
            n.out_sealed,
            n.sealed_bytes,
            n.unsealed_bytes,
            tuple(n.evicted),
        )
        for n in pm.nodes
    )
    return MemoryPlan(
        tee=tee,
        budget_bytes=budget,
        batch=batch,
        peak_bytes=pm.peak_bytes,
        peak_breakdown=dict(pm.peak_breakdown),
        weights_bytes=pm.weights_bytes,
        weights_resident_bytes=pm.weights_resident_bytes,
        weights_sealed_bytes=pm.weights_sealed_bytes,
        sealed_modules=pm.sealed_modules,
        resident_weight_fraction=frac,
        sealed_bytes=pm.sealed_bytes,
        unsealed_bytes=pm.unsealed_bytes,
        nodes=nodes,
        page_bytes=pm.page_bytes,
        module_paths=paths,
    )


__all__ = [
    "MemoryPlan",
    "NodeMemoryPlan",
    "attach_memory_plan",
    "format_memory_plan",
    "memory_plan",
]


def attach_memory_plan(
    desc: dict[str, Any],
    tensors: Sequence[torch.Tensor],
    plan: Any,
    config: Any,
    captured: Any = None,
) -> MemoryPlan | None:
    """Shield-time hook: plan memory under ``config``'s TEE budget and ship it in ``desc``.

    Raises :class:`MemoryBudgetError` (before any enclave is started) when a layer cannot run
    within the budget even at its smallest chunk. Without a budget nothing is simulated (the
    enclave still accounts its working set) and None is returned.
    """
    tee, budget = _budget_of(config)
    if budget is None:
        desc["memory"] = {"tee": tee, "budget_bytes": None}
        return None
    mp = memory_plan(plan, budget, captured, program=(desc, tensors))
    desc["memory"] = {**mp.spec(), "tee": tee}
    return mp
