"""The batching worker: one thread owns the ShieldedModel, so calls into it are serialised.

Requests wait in a bounded queue. The worker takes the first, collects more until the batch
holds ``max_batch`` rows or ``max_wait_ms`` has passed, concatenates them along dim 0, runs the
model once and splits the output back per request. If the enclave fails (EnclaveError,
BoundaryError, or anything unexpected) every request of that batch gets ServiceUnavailable (503)
and the worker starts a fresh enclave (``restart``: reload from the model factory, or from the
sealed package) before the next batch:
a request is answered with its own output or with an error, never with another's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from taoism.errors import BoundaryError, EnclaveError, ServiceUnavailable, TaoismError
from taoism.runtime import ShieldedModel
from taoism.serve.metrics import ServeMetrics

log = logging.getLogger("taoism.serve")


@dataclass
class _Pending:
    x: torch.Tensor
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class Batcher:
    """Dynamic batching in front of one ShieldedModel; :meth:`submit` from any thread."""

    def __init__(
        self,
        sm: ShieldedModel,
        restart: Callable[[], None],
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: ServeMetrics,
    ) -> None:
        self._sm = sm
        self._restart_enclave = restart
        self.max_batch = max_batch
        self._max_wait = max_wait_ms / 1e3
        self._queue: queue.Queue[_Pending] = queue.Queue(maxsize=max_queue)
        self._metrics = metrics
        self._carry: _Pending | None = None
        self._stopping = threading.Event()
        self._accepting = True
        self._submit_lock = threading.Lock()
        self.healthy = True
        self.restarts = 0
        self._thread = threading.Thread(target=self._loop, name="taoism-batcher", daemon=True)
        self._thread.start()

    # -- client side -------------------------------------------------------------------------
    def submit(self, x: torch.Tensor) -> Future:
        """Queue one request's input; the future resolves to its output rows or an error."""
        item = _Pending(x)
        with self._submit_lock:
            if not self._accepting:
                raise ServiceUnavailable("the server is shutting down; send the request elsewhere")
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                raise ServiceUnavailable(
                    f"the server's queue is full ({self._queue.maxsize} "
                    "requests waiting); retry later"
                ) from None
        return item.future

    @property
    def enclave_pid(self) -> int | None:
        """The enclave process id (None without one)."""
        backend = self._sm.backend
        return getattr(backend, "pid", None) if backend is not None else None

    @property
    def enclave_alive(self) -> bool:
        """Whether the enclave (if the plan has one) is running."""
        backend = self._sm.backend
        return backend is None or backend.alive

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, answer everything queued, then stop the enclave; idempotent."""
        with self._submit_lock:
            self._accepting = False
        self._stopping.set()
        self._thread.join(timeout)
        while True:  # the worker did not drain in time: fail what is left, never leave it hanging
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            _fail(item, ServiceUnavailable("the server stopped before this request ran"))
        self._sm.close()

    # -- worker ------------------------------------------------------------------------------
    def _next(self, timeout: float) -> _Pending | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _loop(self) -> None:
        while True:
            first = self._next(0.05)
            if first is None:
                if self._stopping.is_set() and self._queue.empty():
                    return
                continue
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self._max_wait
            while rows < self.max_batch:
                wait = deadline - time.monotonic()
                item = self._next(max(wait, 0.0))
                if item is None:
                    break
                if rows + item.rows > self.max_batch:
                    self._carry = item
                    break
                batch.append(item)
                rows += item.rows
            self._execute([p for p in batch if p.future.set_running_or_notify_cancel()])

    def _execute(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        if not self.healthy:
            self._restart()
            if not self.healthy:
                for p in batch:
                    _fail(
                        p,
                        ServiceUnavailable(
                            "the enclave is down and could not be restarted; retry later"
                        ),
                    )
                return
        x = batch[0].x if len(batch) == 1 else torch.cat([p.x for p in batch])
        try:
            out = self._sm(x)
            if not isinstance(out, torch.Tensor) or out.shape[0] != x.shape[0]:
                raise TypeError(
                    f"the model returned {type(out).__name__} without one row per "
                    "input row; the server needs a tensor output with the batch in dim 0"
                )
        except (EnclaveError, BoundaryError) as exc:
            log.warning(
                "enclave failed on a batch of %d request(s): %s",
                len(batch),
                str(exc).splitlines()[0],
            )
            err = ServiceUnavailable(
                f"the enclave failed while running this request "
                f"({type(exc).__name__}); it is being restarted, retry"
            )
            for p in batch:
                _fail(p, err)
            self._restart()
            return
        except Exception as exc:  # unknown state: answer 500, and start a fresh enclave
            log.exception("batch failed")
            for p in batch:
                _fail(p, exc)
            self._restart()
            return
        self._metrics.batch(int(x.shape[0]), len(batch))
        for p, part in zip(batch, out.split([p.rows for p in batch])):
            p.future.set_result(part.clone())

    def _restart(self) -> None:
        self.healthy = False
        try:
            self._restart_enclave()
        except TaoismError as exc:
            log.error("enclave restart failed: %s", exc)
            return
        self.healthy = True
        self.restarts += 1
        self._metrics.restarts.inc()
        log.warning("enclave restarted (restart %d)", self.restarts)


def _fail(item: _Pending, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
