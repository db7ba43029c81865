"""The enclave's one planning entry point for the host: :func:`plan_memory`.

The host must know, before it starts an enclave, whether every layer fits the TEE's memory
budget and how it will run. Only the enclave's own scheduler can answer that exactly, so the
host does not re-implement it: it calls :func:`plan_memory`, which runs that scheduler on meta
tensors built from shapes alone (no weight, no activation, nothing computed) and returns a
plain summary. This is the only module of :mod:`taoism.enclave` the host may import
(``tests/test_imports.py`` enforces it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from taoism.enclave.budget import EnclaveMemory
from taoism.enclave.memory import NodeMemory
from taoism.enclave.program import build_meta_modules, build_program
from taoism.errors import ProgramError
from taoism.protocol.schema import MemorySection

TensorSpec = tuple[tuple[int, ...], torch.dtype]
_STEADY_STATE_TRIES = 3


@dataclass(frozen=True)
class PlannedMemory:
    """What the enclave's scheduler decided for one pass over every segment, at the given shapes."""

    peak_bytes: int
    peak_breakdown: Mapping[str, int]
    weights_bytes: int
    weights_resident_bytes: int
    weights_sealed_bytes: int
    sealed_modules: tuple[str, ...]
    sealed_bytes: int  # per inference
    unsealed_bytes: int  # per inference
    page_bytes: int
    nodes: tuple[NodeMemory, ...]  # per node, maxima over the planned pass


def plan_memory(
    desc: Mapping[str, Any],
    tensor_specs: Mapping[str, TensorSpec],
    value_specs: Mapping[str, TensorSpec],
    section: MemorySection,
) -> PlannedMemory:
    """Plan the program ``desc`` under ``section``'s budget from shapes only.

    ``tensor_specs``: shape and dtype of every weight/constant the description names;
    ``value_specs``: of every value a segment receives from the host (``send_in``). Raises
    :class:`taoism.errors.MemoryBudgetError` naming the first layer that cannot run even at
    its smallest chunk. Weights the scheduler seals mid-run are sealed at load by the real
    enclave, so the pass is repeated until that steady state is reached.
    """
    root = build_meta_modules(desc, tensor_specs)
    programs = {p.index: p for p in build_program(desc, root)}
    mem = EnclaveMemory(root, programs, section, desc.get("constants", []), meta=True)
    weights_total = mem.weights.resident_bytes + mem.weights.sealed_bytes
    for _ in range(_STEADY_STATE_TRIES):
        epoch = mem.weights.epoch
        mem.reset_peaks()
        for idx in sorted(programs):
            prog = programs[idx]
            missing = [v for v in prog.send_in if v not in value_specs]
            if missing:
                raise ProgramError(
                    f"plan_memory: no shape given for value {missing[0]!r} that segment "
                    f"{idx} receives from the host"
                )
            inputs = [
                torch.empty(value_specs[v][0], dtype=value_specs[v][1], device="meta")
                for v in prog.send_in
            ]
            with torch.inference_mode():
                mem.run(prog, inputs)
        if mem.weights.epoch == epoch:
            break
    return PlannedMemory(
        peak_bytes=mem.overall_peak,
        peak_breakdown=dict(mem.overall_breakdown),
        weights_bytes=weights_total,
        weights_resident_bytes=mem.weights.resident_bytes,
        weights_sealed_bytes=mem.weights.sealed_bytes,
        sealed_modules=tuple(sorted(mem.weights.sealed)),
        sealed_bytes=int(mem.inference.sealed_bytes),
        unsealed_bytes=int(mem.inference.unsealed_bytes),
        page_bytes=mem.ctx.page_bytes,
        nodes=tuple(mem.node_peaks.values()),
    )


__all__ = ["PlannedMemory", "TensorSpec", "plan_memory"]
