"""Pipelined inference: device segments of one micro-batch overlap enclave segments of another.

Each micro-batch runs the shielded model's one forward loop (:meth:`ShieldedModel._forward`) in
its own thread, with a :class:`StageGate` observer that makes every segment wait for its stage:
the device (one segment at a time) or the enclave session. The enclave keeps values between the
segments of one inference (a segment's ``keep`` list) under the value's name, not per request, so
when the plan keeps any value a micro-batch holds the enclave from its first enclave segment to
its last: its device segments in between still overlap with other micro-batches' device-free
time, but no other micro-batch enters the enclave meanwhile. Without kept values the enclave is
released after every segment and the two stages overlap fully. Threads overlap because the
enclave side waits on the channel and torch kernels release the GIL.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from taoism.backends import RunReply
from taoism.errors import ConfigError
from taoism.placement import EnclaveMode, Segment
from taoism.runtime.observe import Observer

if TYPE_CHECKING:
    from taoism.runtime.shielded import ShieldedModel


class StageGate(Observer):
    """Makes each segment of one micro-batch wait for its stage's lock; records busy time per side."""

    def __init__(self, device: threading.Lock, enclave: threading.Lock, segments: Sequence[Segment]) -> None:
        self._locks = {EnclaveMode.GPU: device, EnclaveMode.ENCLAVE: enclave}
        enc = [s.index for s in segments if s.side is EnclaveMode.ENCLAVE]
        keeps = any(s.keep for s in segments if s.side is EnclaveMode.ENCLAVE)
        # with kept values the enclave is held from the first enclave segment to the last
        self._release_enclave_after = enc[-1] if keeps and enc else None
        self._held: set[EnclaveMode] = set()
        self.busy: dict[str, float] = {"GPU": 0.0, "ENCLAVE": 0.0}

    def begin(self, seg: Segment) -> None:
        """Wait for the segment's stage (unless this micro-batch already holds it)."""
        if seg.side not in self._held:
            self._locks[seg.side].acquire()
            self._held.add(seg.side)

    def done(self, seg: Segment, seconds: float, reply: RunReply | None) -> None:
        """Release the stage (the enclave only after the last segment that needs its kept values)."""
        self.busy[seg.side.value] += seconds
        hold = (self._release_enclave_after is not None and seg.side is EnclaveMode.ENCLAVE
                and seg.index != self._release_enclave_after)
        if not hold:
            self._release(seg.side)

    def release_all(self) -> None:
        """Release whatever this micro-batch still holds (after an error)."""
        for side in list(self._held):
            self._release(side)

    def _release(self, side: EnclaveMode) -> None:
        if side in self._held:
            self._held.discard(side)
            self._locks[side].release()


def _as_inputs(batch: Any) -> tuple[torch.Tensor, ...]:
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)


def split_batches(batches: Any, micro_batch: int | None) -> tuple[list[tuple[torch.Tensor, ...]], list[int]]:
    """The micro-batches to run, and how many of them make up each input batch."""
    if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
        raise ConfigError(f"micro_batch must be a positive int or None, got {micro_batch!r}")
    if isinstance(batches, torch.Tensor) and micro_batch is None:
        raise ConfigError("map() got one tensor: give micro_batch=N to split it, or pass an "
                          "iterable of batches")
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


def run_pipelined(sm: "ShieldedModel", batches: Any, micro_batch: int | None = None,
                  record: PipelineRun | None = None) -> Any:
    """Run ``batches`` through ``sm`` pipelined; one output per input batch, in order.

    A single tensor with ``micro_batch`` gives one output (the micro-batches' outputs joined).
    """
    micro, counts = split_batches(batches, micro_batch)
    for xs in micro:
        sm._check_inputs(xs)
    device, enclave = threading.Lock(), threading.Lock()
    segments = sm.plan.segments
    gates = [StageGate(device, enclave, segments) for _ in micro]

    def one(i: int) -> Any:
        try:
            with torch.inference_mode():
                env = sm._forward(micro[i], gates[i])
            return sm._outputs(env, micro[i][0].device)
        finally:
            gates[i].release_all()

    t0 = time.perf_counter()
    with sm._lock:
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="taoism-pipeline")
        try:
            futures = [pool.submit(one, i) for i in range(len(micro))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    for g in futures:
                        g.cancel()
                    raise f.exception()  # type: ignore[misc]
            outs = [f.result() for f in futures]
        except BaseException as exc:
            if sm.plan.enclave_segments and sm._failed is None and not isinstance(exc, Exception):
                sm._fail_session(f"{type(exc).__name__} during map()")  # e.g. Ctrl-C mid-pipeline
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if record is not None:
        record.wall_s = time.perf_counter() - t0
        record.micro_batches = len(micro)
        for g in gates:
            for k, v in g.busy.items():
                record.busy[k] += v
    grouped, k = [], 0
    for n in counts:
        grouped.append(outs[k] if micro_batch is None else _join(outs[k:k + n]))
        k += n
    return grouped[0] if isinstance(batches, torch.Tensor) else grouped


__all__ = ["PipelineRun", "StageGate", "run_pipelined", "split_batches"]
