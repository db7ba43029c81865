"""The enclave's memory manager: accounting, chunked execution and sealed paging for one program.

One :class:`EnclaveMemory` per loaded program holds the accountant, the sealer, the weight store
and the budgeted runner (:mod:`taoism.enclave.runner`), and keeps the per-inference and overall
peaks the STATS request reports. With ``meta=True`` it plans instead of running
(:func:`taoism.enclave.planning.plan_memory`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from taoism.enclave.exec.base import ExecContext
from taoism.enclave.exec.select import is_value
from taoism.enclave.memory import Accountant, MemoryReport, NodeMemory, ResidentValues, runtime_rss
from taoism.enclave.paged import PagedTensor
from taoism.enclave.pages import PageSealer
from taoism.enclave.program import SegmentProgram
from taoism.enclave.runner import BudgetedRunner, Value
from taoism.enclave.weights import WeightStore, choose_sealed_weights
from taoism.errors import MemoryBudgetError, ProgramError
from taoism.protocol.schema import MemorySection


@dataclass
class _FastEntry:
    """What a segment's first (interpreted) run recorded, replayed by its compiled runs."""

    peak: int
    peak_breakdown: dict[str, int]
    nodes: list[NodeMemory]


@dataclass(frozen=True)
class _Lane:
    """A stateless segment's replay for one input signature, taken while the enclave holds nothing."""

    specs: tuple[tuple[torch.Size, torch.dtype], ...]  # the inputs' shapes and dtypes
    fast: _FastEntry
    forward: Any  # the segment's replay forward
    n_ret: int


@dataclass
class InferenceStats:
    """Counters of the current inference (reset when its first segment starts)."""

    peak_bytes: int = 0
    peak_breakdown: dict[str, int] = field(default_factory=dict)
    sealed_bytes: int = 0
    unsealed_bytes: int = 0
    segments: int = 0


class EnclaveMemory:
    """Accounting, chunked execution and sealed paging for one loaded enclave program.

    ``budget`` None means unlimited (accounting only). The first run of a segment for a given
    input shape is interpreted node by node (so it is accounted); if nothing needed chunking or
    sealing, later runs with that shape take the segment's compiled GraphModule directly (no
    per-node Python) and replay the recorded accounting.
    """

    def __init__(
        self,
        root: nn.Module,
        programs: Mapping[int, SegmentProgram],
        spec: MemorySection | Mapping[str, Any] | None,
        constants: Sequence[str] = (),
        *,
        meta: bool = False,
    ) -> None:
        mem = spec if isinstance(spec, MemorySection) else MemorySection.parse(spec)
        self.section = mem
        self.tee = mem.tee
        budget = self.budget = mem.budget_bytes
        page = mem.page_bytes
        self.acct = Accountant(budget)
        self.sealer = PageSealer(meta=meta)
        self.sealer.on_bytes = self.acct.on_sealed
        self.ctx = ExecContext(self.acct, self.sealer, meta=meta, page_bytes=page)
        self.values = ResidentValues(self.acct)
        self.weights = WeightStore(root, constants, self.ctx, self.values)
        self.env: dict[str, Value] = {}
        self.runner = BudgetedRunner(self.ctx, self.values, self.weights, self.env)
        self.programs = dict(programs)
        self.first_segment = min(self.programs) if self.programs else None
        self.boundary_bytes = 0
        self._fast: dict[tuple[object, ...], _FastEntry] = {}
        self._lanes: dict[int, _Lane] = {}  # per stateless segment: its replay with nothing held
        self.node_peaks: dict[str, NodeMemory] = {}
        self.inference = InferenceStats()
        self.last_inference = InferenceStats()
        self.overall_peak = 0
        self.overall_breakdown: dict[str, int] = {}
        self.runs = 0
        self.fast_runs = 0
        self.last_report: MemoryReport | None = None
        # weights sealed at load: the host's choice, or the default policy
        sealable = self.weights.sealable()
        sizes = {k: self.weights.module_bytes(k) for k in self.weights.modules}
        if mem.sealed_modules is not None:
            bad = [n for n in mem.sealed_modules if n not in sealable]
            if bad:
                raise ProgramError(
                    f"memory section: sealed_modules lists {bad[:3]}, which are not "
                    f"sealable module keys (sealable: {sealable[:8]})"
                )
            to_seal = list(mem.sealed_modules)
        else:
            to_seal = choose_sealed_weights(sizes, sealable, budget, mem.resident_weight_fraction)
        for k in to_seal:
            self.weights.seal_module(k)
        self.load_peak = self.acct.peak
        # the boundary's reply staging buffer; the server reports the real size before each run
        self.set_boundary_bytes(mem.boundary_bytes)
        if budget is not None and self.acct.total + self.ctx.reserve > budget:
            paths = mem.module_paths
            fixed = sorted(
                (
                    (self.weights.module_bytes(k), paths.get(k, k), type(m).__name__)
                    for k, m in self.weights.modules.items()
                    if k not in self.weights.sealed and self.weights.module_bytes(k)
                ),
                reverse=True,
            )
            names = ", ".join(f"{p!r} ({t}, {n:,} bytes)" for n, p, t in fixed[:5])
            raise MemoryBudgetError(
                f"what the enclave must keep resident ({self.acct.total:,} bytes: {self.acct.current}; "
                f"weights of layers without a chunked form: {names or 'none'}; the boundary's "
                f"{self.boundary_bytes:,}-byte staging buffer) plus {self.ctx.reserve:,} bytes of "
                f"sealing headroom exceeds the memory budget of {budget:,} bytes"
            )

    def reset_peaks(self) -> None:
        """Forget the per-node and overall peaks (a planning pass starts over)."""
        self.node_peaks.clear()
        self.overall_peak = 0

    # -- boundary staging ------------------------------------------------------------------
    def set_boundary_bytes(self, n: int) -> None:
        """The channel's reply staging buffer (crypto, resident for the whole session)."""
        n = int(n)
        if n != self.boundary_bytes:
            s = self.acct.strict
            self.acct.strict = False
            self.acct.free("crypto", self.boundary_bytes)
            self.acct.alloc("crypto", n)
            self.acct.strict = s
            self.boundary_bytes = n

    def _rebase(self) -> None:
        """Reset the counters to what is resident between inferences (after a failed run too)."""
        acct = self.acct
        acct.current = {
            "weights": self.weights.resident_bytes,
            "activations": 0,
            "scratch": 0,
            "crypto": self.boundary_bytes,
        }
        acct.total = sum(acct.current.values())
        acct.node = None

    # -- running ---------------------------------------------------------------------------
    def run(
        self, prog: SegmentProgram, tensors: Sequence[torch.Tensor], profile: bool = False
    ) -> tuple[list[torch.Tensor], list[float]]:
        """Run one segment; returns (outputs to send, per-node times if ``profile``)."""
        if not profile and prog.stateless and not self.env:
            lane = self._lanes.get(prog.index)
            if (
                lane is not None
                and self.weights.all_resident
                and tuple([(t.shape, t.dtype) for t in tensors]) == lane.specs
            ):
                return self._run_lane(prog, lane, tensors)
        acct = self.acct
        if prog.index == self.first_segment:
            self.runner.clear()
            self._rebase()
            self.last_inference = self.inference
            self.inference = InferenceStats()
        if not prog.stateless:
            missing = [v for v in prog.inputs if v not in prog.send_in and v not in self.env]
            if missing:
                raise ProgramError(
                    f"segment {prog.index} needs value {missing[0]!r}, which the enclave does "
                    "not hold (segments must run in plan order)"
                )
        acct.reset_peak()
        sig = None
        if self.weights.all_resident:
            env = self.env
            sig = (
                prog.index,
                tuple([(t.shape, t.dtype) for t in tensors]),
                tuple(
                    sorted(
                        (k, tuple(v.shape), isinstance(v, PagedTensor))
                        for k, v in env.items()
                        if is_value(v)
                    )
                )
                if env
                else (),
            )
            fast = self._fast.get(sig)
            if fast is not None:
                if prog.stateless and not sig[2] and not profile:
                    self._lanes[prog.index] = _Lane(
                        sig[1], fast, prog.replay.forward, len(prog.returns)
                    )
                return self._run_fast(prog, tensors, fast, profile)
        nodes: list[NodeMemory] = []
        times: list[float] | None = [] if profile else None
        self.runner.arrival_overflow = 0
        inputs = list(tensors)
        if isinstance(tensors, list):
            tensors.clear()  # the caller's list (the request message) must not keep them alive
        outs = self.runner.run_segment(prog, inputs, nodes, times)
        report = self._finish(prog, nodes, fast_path=False)
        assert report is not None
        if sig is not None and self._cacheable(nodes):
            self._fast[sig] = _FastEntry(report.peak_bytes, dict(report.peak_breakdown), nodes)
        node_times = []
        if times is not None:
            by = {
                nm.name: t for nm, t in zip([n for n in nodes if not n.name.startswith("<")], times)
            }
            node_times = [by.get(n, 0.0) for n in prog.node_names]
        return outs, node_times

    def _cacheable(self, nodes: Sequence[NodeMemory]) -> bool:
        if self.ctx.meta or not self.weights.all_resident or self.runner.arrival_overflow:
            return False
        if any(isinstance(v, PagedTensor) for v in self.env.values()):
            return False
        return all(
            n.chunks == 1
            and not n.out_sealed
            and not n.evicted
            and not n.sealed_bytes
            and not n.unsealed_bytes
            for n in nodes
        )

    def _run_fast(
        self, prog: SegmentProgram, tensors: Sequence[torch.Tensor], fast: _FastEntry, profile: bool
    ) -> tuple[list[torch.Tensor], list[float]]:
        runner = self.runner
        if prog.stateless:
            # Binding the inputs and unbinding them after nets out: the enclave's values end as
            # they were, and the recorded peak below already covers the run (issue 9).
            args = prog.stateless_args(tensors)
        else:
            for v, t in zip(prog.send_in, tensors):
                runner.bind(v, t, strict=False)
            args = [self.env[v] for v in prog.inputs]
        times: list[float] = []
        if profile:
            outs, times = prog.run_timed(args)
        else:
            outs = prog.run(args)
        n_ret = len(prog.returns)
        if not prog.stateless:
            for v, t in zip(prog.keep, outs[n_ret:]):
                runner.bind(v, t, strict=False)
            for v in prog.free:
                if v not in prog.keep:
                    runner.unbind(v)
        self.fast_runs += 1
        self.acct.peak = max(self.acct.peak, fast.peak)
        if fast.peak >= self.acct.peak:
            self.acct.peak_breakdown = dict(fast.peak_breakdown)
        self._finish(prog, fast.nodes, fast_path=True, merge=False, report=profile)
        return list(outs[:n_ret]), times

    def _run_lane(
        self, prog: SegmentProgram, lane: _Lane, tensors: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[float]]:
        """:meth:`run` + :meth:`_run_fast` + :meth:`_finish` flattened, for a lane (issue 9).

        The same effects, in the same order: a new inference at the first segment, the peak
        reset then raised to the recorded one, and the counters; the enclave holds nothing
        before or after, so there is nothing to bind.
        """
        acct = self.acct
        if prog.index == self.first_segment:
            self._rebase()  # runner.clear() has nothing to drop: the enclave holds nothing
            self.last_inference = self.inference
            self.inference = InferenceStats()
        outs = lane.forward(*prog.stateless_args(tensors))
        fast = lane.fast
        if fast.peak >= acct.total:
            acct.peak, acct.peak_breakdown = fast.peak, dict(fast.peak_breakdown)
        else:
            acct.peak, acct.peak_breakdown = acct.total, dict(acct.current)
        acct.sealed_bytes = acct.unsealed_bytes = 0
        peak = acct.peak
        self.fast_runs += 1
        self.runs += 1
        inf = self.inference
        inf.segments += 1
        if peak >= inf.peak_bytes:
            inf.peak_bytes, inf.peak_breakdown = peak, dict(acct.peak_breakdown)
        if peak >= self.overall_peak:
            self.overall_peak, self.overall_breakdown = peak, dict(acct.peak_breakdown)
        return list(outs[: lane.n_ret]), []

    def _finish(
        self,
        prog: SegmentProgram,
        nodes: list[NodeMemory],
        *,
        fast_path: bool,
        merge: bool = True,
        report: bool = True,
    ) -> MemoryReport | None:
        """Fold the run into the inference's and overall peaks; the run's report if ``report``."""
        acct = self.acct
        self.runs += 1
        inf = self.inference
        inf.segments += 1
        if acct.peak >= inf.peak_bytes:
            inf.peak_bytes, inf.peak_breakdown = acct.peak, dict(acct.peak_breakdown)
        inf.sealed_bytes += acct.sealed_bytes
        inf.unsealed_bytes += acct.unsealed_bytes
        if acct.peak >= self.overall_peak:
            self.overall_peak, self.overall_breakdown = acct.peak, dict(acct.peak_breakdown)
        for nm in nodes if merge else ():
            cur = self.node_peaks.get(nm.name)
            if cur is None:
                cur = self.node_peaks[nm.name] = NodeMemory(nm.name)
            cur.merge_max(nm)
        if not report:  # a replayed run nobody profiles: the report is only read when profiled
            return None
        rep = MemoryReport(
            budget_bytes=self.budget,
            tee=self.tee,
            peak_bytes=acct.peak,
            peak_breakdown=dict(acct.peak_breakdown),
            sealed_bytes=acct.sealed_bytes,
            unsealed_bytes=acct.unsealed_bytes,
            weights_resident_bytes=self.weights.resident_bytes,
            weights_sealed_bytes=self.weights.sealed_bytes,
            nodes=list(nodes),
            fast_path=fast_path,
        )
        self.last_report = rep
        return rep

    # -- reporting -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Everything the STATS request reports about memory (JSON-ready)."""
        inf = self.inference if self.inference.segments else self.last_inference
        return {
            "tee": self.tee,
            "budget_bytes": self.budget,
            "peak_bytes": self.overall_peak,
            "peak_breakdown": dict(self.overall_breakdown),
            "within_budget": self.budget is None or self.overall_peak <= self.budget,
            "load_peak_bytes": self.load_peak,
            "arrival_overflow_bytes": self.runner.arrival_overflow,
            "last_inference": {
                "peak_bytes": inf.peak_bytes,
                "peak_breakdown": dict(inf.peak_breakdown),
                "sealed_bytes": inf.sealed_bytes,
                "unsealed_bytes": inf.unsealed_bytes,
                "segments": inf.segments,
            },
            "sealed_bytes_total": self.sealer.stats.sealed_bytes,
            "unsealed_bytes_total": self.sealer.stats.unsealed_bytes,
            "seal": self.sealer.stats.to_json(),
            "page_store_bytes": self.sealer.store.nbytes,
            "weights": self.weights.report(),
            "boundary_staging_bytes": self.boundary_bytes,
            "runs": self.runs,
            "fast_runs": self.fast_runs,
            "nodes": [n.to_json() for n in self.node_peaks.values()],
            "runtime_not_counted": runtime_rss(),
        }


__all__ = ["EnclaveMemory", "InferenceStats"]
