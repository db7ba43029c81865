"""Pipelined inference: device segments of one micro-batch overlap enclave segments of another.

Each micro-batch runs the shielded model's one forward loop (:meth:`ShieldedModel._forward`) in
its own thread, with a :class:`StageGate` observer that makes every segment wait for its stage:
the device (one segment at a time) or the enclave session (one request at a time). The enclave
keeps values between the segments of one inference under the value's name, not per request, and
starts a new inference (dropping every held value, resetting its memory accounting) at the first
enclave segment. So micro-batch ``i`` runs an enclave segment only once micro-batch ``i - 1`` has
run every enclave segment that still reads a name this one writes, and its first enclave segment
only once ``i - 1`` has left the enclave (:func:`enclave_order`). Where two segments write one
name, a micro-batch holds the enclave from its first enclave segment to its last instead. In
effect one micro-batch at a time is inside the enclave: a plan whose enclave segments are one
block (a first-half split) overlaps fully, while one that alternates device and enclave segments
with values kept in between (TEESlice) overlaps only the device work outside that span. Threads
overlap because the enclave side waits on the channel and torch kernels release the GIL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import torch

from taoism.backends import RunReply
from taoism.errors import ConfigError
from taoism.placement import EnclaveMode, Segment
from taoism.runtime.observe import Observer

if TYPE_CHECKING:
    from taoism.runtime.shielded import ShieldedModel


def enclave_order(segments: Sequence[Segment]) -> dict[int, int] | None:
    """Per enclave segment ``s``: the segment the micro-batch ahead must have finished before this
    one may run ``s`` (so that ``s`` overwrites no value it still reads from the enclave); None
    when two segments write the same name (then a micro-batch holds the enclave for its span)."""
    enc = [g for g in segments if g.side is EnclaveMode.ENCLAVE]
    writes = {g.index: set(g.keep) | set(g.send_in) | set(g.nodes) for g in enc}
    reads = {g.index: set(g.inputs) - set(g.send_in) for g in enc}
    seen: set[str] = set()
    for w in writes.values():
        if seen & w:
            return None
        seen |= w
    order = {s: max([s] + [t for t in reads if reads[t] & w]) for s, w in writes.items()}
    if enc:  # the enclave drops every held value when an inference's first segment starts
        order[enc[0].index] = enc[-1].index
    return order


class Schedule:
    """What the micro-batches of one ``map`` share: the device lock, a lock per enclave session,
    and enclave progress; micro-batch ``i`` uses session ``i % sessions``."""

    def __init__(self, segments: Sequence[Segment], n: int, sessions: int = 1) -> None:
        self.device = threading.Lock()
        self.enclaves = [threading.Lock() for _ in range(max(1, sessions))]
        self.order = enclave_order(segments)
        enc = [g.index for g in segments if g.side is EnclaveMode.ENCLAVE]
        self.last_enclave = enc[-1] if enc else -1
        self.progress = [-1] * n  # per micro-batch: the last enclave segment it finished
        self.changed = threading.Condition()


class StageGate(Observer):
    """Makes each segment of micro-batch ``i`` wait for its stage; records busy seconds per side.

    Enclave segments follow :func:`enclave_order` behind the micro-batch ahead on the same session,
    ``i - sessions`` (or, when that order is None, micro-batch ``i`` holds its session from its
    first enclave segment to its last).
    """

    def __init__(self, schedule: Schedule, i: int) -> None:
        self._s, self._i = schedule, i
        k = len(schedule.enclaves)
        self._ahead = i - k  # the micro-batch before this one on its session
        self._locks = {
            EnclaveMode.GPU: schedule.device,
            EnclaveMode.ENCLAVE: schedule.enclaves[i % k],
        }
        self._held: set[EnclaveMode] = set()
        self.busy: dict[str, float] = {"GPU": 0.0, "ENCLAVE": 0.0}

    def begin(self, seg: Segment) -> None:
        """Wait for the segment's stage (and, in the enclave, for the micro-batch ahead)."""
        s = self._s
        if seg.side in self._held:
            return
        if seg.side is EnclaveMode.ENCLAVE and s.order is not None and self._ahead >= 0:
            need = s.order[seg.index]
            with s.changed:
                s.changed.wait_for(lambda: s.progress[self._ahead] >= need)
        self._locks[seg.side].acquire()
        self._held.add(seg.side)

    def done(self, seg: Segment, seconds: float, reply: RunReply | None) -> None:
        """Release the stage; after an enclave segment, tell the micro-batch behind."""
        s = self._s
        self.busy[seg.side.value] += seconds
        if seg.side is EnclaveMode.ENCLAVE:
            if s.order is None and seg.index != s.last_enclave:
                return  # span mode: keep the enclave until the last enclave segment
            self._advance(seg.index)
        self._release(seg.side)

    def release_all(self) -> None:
        """Release whatever this micro-batch still holds and let the ones behind go on."""
        for side in list(self._held):
            self._release(side)
        self._advance(1 << 62)

    def _advance(self, index: int) -> None:
        with self._s.changed:
            self._s.progress[self._i] = index
            self._s.changed.notify_all()

    def _release(self, side: EnclaveMode) -> None:
        if side in self._held:
            self._held.discard(side)
            self._locks[side].release()


def _as_inputs(batch: Any) -> tuple[torch.Tensor, ...]:
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)


def split_batches(
    batches: Any, micro_batch: int | None
) -> tuple[list[tuple[torch.Tensor, ...]], list[int]]:
    """The micro-batches to run, and how many of them make up each input batch."""
    if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
        raise ConfigError(f"micro_batch must be a positive int or None, got {micro_batch!r}")
    if isinstance(batches, torch.Tensor) and micro_batch is None:
        raise ConfigError(
            "map() got one tensor: give micro_batch=N to split it, or pass an iterable of batches"
        )
    whole = isinstance(batches, torch.Tensor)
    items: Iterable[Any] = [batches] if whole else batches
    micro: list[tuple[torch.Tensor, ...]] = []
    counts: list[int] = []
    for b in items:
        xs = _as_inputs(b)
        if micro_batch is None:
            micro.append(xs)
            counts.append(1)
            continue
        parts = [torch.split(x, micro_batch) if isinstance(x, torch.Tensor) else [x] for x in xs]
        n = len(parts[0])
        micro.extend(tuple(p[i] for p in parts) for i in range(n))
        counts.append(n)
    return micro, counts


def _join(outs: list[Any]) -> Any:
    return torch.cat(outs) if all(isinstance(o, torch.Tensor) for o in outs) else outs


class PipelineRun:
    """Timings of the last :func:`run_pipelined` call: wall seconds and busy seconds per side."""

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.busy: dict[str, float] = {"GPU": 0.0, "ENCLAVE": 0.0}
        self.micro_batches = 0


def _run(
    sm: ShieldedModel,
    micro: list[tuple[torch.Tensor, ...]],
    sessions: Sequence[Any],
    gates: list[StageGate],
) -> list[Any]:
    """Run every micro-batch in its own pool thread behind its gate; outputs in order."""
    schedule = Schedule(sm.plan.segments, len(micro), len(sessions))
    gates.extend(StageGate(schedule, i) for i in range(len(micro)))

    def one(i: int) -> Any:
        try:
            with torch.inference_mode():
                backend = sessions[i % len(sessions)] if sessions else None
                env = sm._forward(micro[i], gates[i], backend=backend)
            return sm._outputs(env, micro[i][0].device)
        finally:
            gates[i].release_all()

    pool = ThreadPoolExecutor(
        max_workers=len(schedule.enclaves) + 1, thread_name_prefix="taoism-pipeline"
    )
    try:
        futures = [pool.submit(one, i) for i in range(len(micro))]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            if f.done() and f.exception() is not None:
                for other in futures:
                    other.cancel()
                raise f.exception()  # type: ignore[misc]
        return [f.result() for f in futures]
    except BaseException as exc:
        if sm.plan.enclave_segments and sm._failed is None and not isinstance(exc, Exception):
            sm._fail_session(f"{type(exc).__name__} during map()")  # e.g. Ctrl-C mid-pipeline
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_pipelined(
    sm: ShieldedModel,
    batches: Any,
    micro_batch: int | None = None,
    record: PipelineRun | None = None,
) -> Any:
    """Run ``batches`` through ``sm`` pipelined; one output per input batch, in order.

    A single tensor with ``micro_batch`` gives one output (the micro-batches' outputs joined).
    """
    micro, counts = split_batches(batches, micro_batch)
    for xs in micro:
        sm._check_inputs(xs)
    gates: list[StageGate] = []
    t0 = time.perf_counter()
    with sm._exclusive() as sessions:
        outs = _run(sm, micro, sessions, gates)
    if record is not None:
        record.wall_s = time.perf_counter() - t0
        record.micro_batches = len(micro)
        for side in record.busy:
            record.busy[side] += sum(g.busy[side] for g in gates)
    grouped, k = [], 0
    for n in counts:
        grouped.append(outs[k] if micro_batch is None else _join(outs[k : k + n]))
        k += n
    return grouped[0] if isinstance(batches, torch.Tensor) else grouped


__all__ = [
    "PipelineRun",
    "Schedule",
    "StageGate",
    "enclave_order",
    "run_pipelined",
    "split_batches",
]
