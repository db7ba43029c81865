"""Observers of the shielded model's one forward loop: what profiling records per segment and layer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from taoism.backends import RunReply
from taoism.placement import Segment

ChannelStats = Callable[[], Any]  # the backend's channel_stats(): a snapshot with crypto_s, copy_s


class Observer:
    """Hooks of :meth:`ShieldedModel._forward`; the base observes nothing and changes nothing."""

    profile_enclave = False  # ask the enclave for per-node times and its memory report

    def start(self) -> None:
        """A forward pass begins."""

    def begin(self, seg: Segment) -> None:
        """Segment ``seg`` is about to run (a pipeline waits here for its stage)."""

    def run_device(
        self, seg: Segment, gm: fx.GraphModule, args: Sequence[torch.Tensor]
    ) -> tuple[Any, ...]:
        """Run a device segment (an observer may time it node by node)."""
        return gm(*args)

    def done(self, seg: Segment, seconds: float, reply: RunReply | None) -> None:
        """Segment ``seg`` took ``seconds`` on the host's clock; ``reply`` for an enclave segment."""


class SegmentTimer(Observer):
    """Per segment: host-observed total, enclave compute, crypto (both sides) and host copies."""

    def __init__(self, segments: Sequence[Segment], channel_stats: ChannelStats | None) -> None:
        self.records: dict[int, dict[str, list[float]]] = {
            s.index: {k: [] for k in ("total", "enclave", "crypto", "copy")} for s in segments
        }
        self._chan = channel_stats
        self._last: Any = None

    def start(self) -> None:
        """Take the channel's counters at the start of the pass."""
        self._last = self._chan() if self._chan else None

    def done(self, seg: Segment, seconds: float, reply: RunReply | None) -> None:
        """Record the segment's times, and the host-side crypto and copy time it caused."""
        rec = self.records[seg.index]
        rec["total"].append(seconds)
        if reply is not None:
            rec["enclave"].append(reply.enclave_compute_s)
            rec["crypto"].append(reply.enclave_crypto_s)
        if not self._chan:
            return
        now = self._chan()
        if reply is not None:
            rec["crypto"][-1] += now.crypto_s - self._last.crypto_s
            rec["copy"].append(now.copy_s - self._last.copy_s)
        self._last = now


class LayerTimer(Observer):
    """Per node: device nodes timed one by one, enclave nodes timed inside the enclave."""

    profile_enclave = True

    def __init__(self, node_names: Sequence[str], sync: Callable[[], None]) -> None:
        self.times: dict[str, list[float]] = {n: [] for n in node_names}
        self.memory: dict[int, Any] = {}  # the enclave's memory report, per enclave segment
        self._sync = sync

    def run_device(
        self, seg: Segment, gm: fx.GraphModule, args: Sequence[torch.Tensor]
    ) -> tuple[Any, ...]:
        """Run the device segment node by node, timing each."""
        interp = _TimedInterpreter(gm, self._sync)
        outs = interp.run(*args)
        for name, dt in interp.times.items():
            self.times[name].append(dt)
        return outs

    def done(self, seg: Segment, seconds: float, reply: RunReply | None) -> None:
        """Record the per-node times and memory report the enclave sent back."""
        if reply is None:
            return
        for name, dt in zip(seg.nodes, reply.node_times or ()):
            self.times[name].append(dt)
        if reply.memory is not None:
            self.memory[seg.index] = reply.memory


class _TimedInterpreter(fx.Interpreter):
    """Runs a GraphModule node by node, recording each node's seconds (synchronised)."""

    def __init__(self, gm: fx.GraphModule, sync: Callable[[], None]) -> None:
        super().__init__(gm)
        self.sync = sync
        self.times: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        """Run one node, timing it unless it is a placeholder or the output."""
        if n.op in ("placeholder", "output"):
            return super().run_node(n)
        t0 = time.perf_counter()
        out = super().run_node(n)
        self.sync()
        self.times[n.name] = time.perf_counter() - t0
        return out


__all__ = ["LayerTimer", "Observer", "SegmentTimer"]
