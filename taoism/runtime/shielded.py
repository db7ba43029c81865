"""The shielded model: runs device segments locally and enclave segments through the backend."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from taoism.backends import EnclaveBackend, get_backend
from taoism.capture import capture
from taoism.config import EnclaveConfig
from taoism.errors import ConfigError, EnclaveCrashed, InputError, SessionFailed
from taoism.placement import EnclaveMode, PlacementRules, PlacementSpec, Plan, build_plan
from taoism.placement.lowering import enclave_program
from taoism.placement.memory import attach_memory_plan
from taoism.runtime.lowering import device_segment
from taoism.runtime.observe import LayerTimer, Observer, SegmentTimer
from taoism.runtime.profile import LayerTiming, Profile, SegmentTiming
from taoism.runtime.stats import Stat


@dataclass(frozen=True)
class _Ref:
    name: str


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ShieldedModel:
    """A model split between the untrusted device and the enclave; call it like the model.

    The host side holds the device segments and the plan; the enclave's weights live only in the
    enclave. Use it as a context manager, or call :meth:`close`, to stop the enclave.

    Concurrency: one enclave session per model, guarded by one lock held for a whole inference,
    so any number of threads may call it; their inferences run one at a time and never interleave
    on the session (the enclave keeps values between segments). ``EnclaveConfig(sessions=N)``
    starts a pool of N enclave sessions (the same program, N times the enclave memory): each call
    takes an idle session for its whole inference, so N calls run at once; :meth:`map` uses them
    all. ``map``, ``profile``, ``stats``, ``reload`` and ``close`` take every session. An
    inference cut off between a request and its reply (an interrupt, a time-out, a reply that
    does not fit) stops the enclave (every session) and marks the model failed: every later call
    raises :class:`taoism.errors.SessionFailed` saying why, until :meth:`reload` starts fresh
    sessions (there is no automatic restart: the host keeps no copy of the shielded weights).
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor | Sequence[torch.Tensor],
        placement: PlacementSpec = None,
        *,
        strategy: Any = None,
        device: str | torch.device | None = None,
        enclave: EnclaveConfig | None = None,
        leaf_modules: Iterable[str | type[nn.Module]] = (),
        capture: str = "auto",
    ) -> None:
        self.capture = capture
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device='cuda' was asked for but torch sees no CUDA device; "
                "use device='cpu' or leave it unset"
            )
        self.enclave_config = enclave or EnclaveConfig()
        self._leaf_modules = tuple(leaf_modules)
        if strategy is not None and placement is not None:
            raise ConfigError("give either placement= or strategy=, not both")
        self.strategy = strategy
        self._rules = (
            placement
            if isinstance(placement, PlacementRules)
            else PlacementRules.from_spec(placement)
        )
        examples = (
            (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
        )
        self._input_specs = tuple((t.dtype, tuple(t.shape[1:])) for t in examples)
        self._backend: EnclaveBackend | None = None
        self._lock = threading.RLock()  # held for a whole inference: see the class docstring
        self._failed: str | None = None  # why the session was stopped mid-request
        self._pool: tuple[
            EnclaveBackend, ...
        ] = ()  # every enclave session (EnclaveConfig.sessions)
        self._free: queue.Queue[EnclaveBackend] | None = None
        self._build(model, examples)

    # -- construction ------------------------------------------------------------------------
    def _build(self, model: nn.Module, examples: tuple[torch.Tensor, ...]) -> None:
        if self.strategy is not None:
            # Re-applied on every build (reload too): fresh secrets, never the unprotected model.
            from taoism.strategies import apply_strategy

            model, placement = apply_strategy(
                model,
                self.strategy,
                leaf_modules=self._leaf_modules,
                capture=self.capture,
                example_inputs=examples,
            )
            self._rules = PlacementRules.from_spec(placement)
        captured = capture(model, examples, leaf_modules=self._leaf_modules, capture=self.capture)
        plan = build_plan(captured, self._rules)
        segments: dict[int, fx.GraphModule] = {}
        for seg in plan.segments:
            if seg.side is EnclaveMode.GPU:
                segments[seg.index] = device_segment(captured, seg, self.device)
        pool: list[EnclaveBackend] = []
        self.memory_plan = None  # a taoism.placement.memory.MemoryPlan under a TEE memory budget
        if plan.enclave_segments:
            desc, tensors = enclave_program(captured, plan)
            # refuses (MemoryBudgetError) before the enclave starts if a layer cannot fit
            self.memory_plan = attach_memory_plan(
                desc, tensors, plan, self.enclave_config, captured
            )
            cls = get_backend(self.enclave_config.backend, self.enclave_config)
            try:
                for _ in range(
                    self.enclave_config.sessions
                ):  # one session unless a pool is asked for
                    backend = cls(self.enclave_config)
                    pool.append(backend)
                    backend.start()
                    backend.load(desc, tensors)
            except BaseException:
                for b in pool:
                    b.close()
                raise
            del desc, tensors
        out_node = next(n for n in captured.gm.graph.nodes if n.op == "output")
        out_template = map_aggregate(
            out_node.args[0], lambda a: _Ref(a.name) if isinstance(a, fx.Node) else a
        )
        self._install(plan, segments, tuple(pool) if plan.enclave_segments else (), out_template)
        del captured  # the traced module shares the caller's parameters: keep none of it

    def _install(
        self,
        plan: Plan,
        segments: dict[int, fx.GraphModule],
        pool: tuple[EnclaveBackend, ...],
        out_template: Any,
    ) -> None:
        """Make a freshly built plan, device segments and enclave session(s) the live ones."""
        self.plan: Plan = plan
        self._segments = segments
        self._out_template = out_template
        self._backend = pool[0] if pool else None
        self._pool = pool
        self._free = None  # idle sessions, when there are several
        if len(pool) > 1:
            self._free = queue.Queue()
            for b in pool:
                self._free.put(b)
        self._failed = None
        shapes = {l.info.name: l.info.out_shapes for l in plan.layers}
        # per enclave segment, each returned value's (ndim, shape past the batch), when known
        self._reply_specs = {
            seg.index: tuple((v, _row_spec(shapes.get(v))) for v in seg.returns)
            for seg in plan.segments
            if seg.side is not EnclaveMode.GPU
        }

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zero tensors shaped like the inputs this model was shielded for."""
        return tuple(torch.zeros((batch, *shape), dtype=dt) for dt, shape in self._input_specs)

    def reload(self, model: nn.Module) -> None:
        """Start a fresh enclave from ``model`` (after a crash), keeping the same placement.

        With a strategy, the strategy is applied again (fresh secrets).
        """
        with self._lock:
            self.close()
            self._build(model, self.example_inputs(1))

    # -- inference ---------------------------------------------------------------------------
    def _check_inputs(self, inputs: tuple[Any, ...]) -> None:
        if len(inputs) != len(self._input_specs):
            raise InputError(
                f"the shielded model takes {len(self._input_specs)} input tensor(s), "
                f"got {len(inputs)}"
            )
        for i, (x, (dtype, shape)) in enumerate(zip(inputs, self._input_specs)):
            if not isinstance(x, torch.Tensor):
                raise InputError(f"input {i} must be a torch.Tensor, got {type(x).__name__}")
            if x.dtype != dtype:
                raise InputError(
                    f"input {i} has dtype {x.dtype}, the model was shielded for {dtype}; "
                    f"convert it with x.to({dtype})"
                )
            if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
                raise InputError(
                    f"input {i} has shape {tuple(x.shape)}, expected (batch, "
                    f"{', '.join(map(str, shape))}) as in the example input"
                )
            if x.shape[0] < 1:
                raise InputError(f"input {i} has an empty batch; pass at least one sample")

    def __call__(self, *inputs: torch.Tensor) -> Any:
        self._check_inputs(inputs)
        with self._session() as backend, torch.inference_mode():
            env = self._forward(inputs, backend=backend)
        return self._outputs(env, inputs[0].device)

    @contextmanager
    def _session(self) -> Iterator[EnclaveBackend | None]:
        """One enclave session for one inference (the only one, or an idle one of the pool)."""
        free = self._free
        if free is None:
            with self._lock:
                yield self._backend
            return
        backend = free.get()
        try:
            yield backend
        finally:
            free.put(backend)

    @contextmanager
    def _exclusive(self, timeout: float | None = None) -> Iterator[tuple[EnclaveBackend, ...]]:
        """Every session, idle (waits for running inferences; queue.Empty after ``timeout``)."""
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise queue.Empty
        free, taken = self._free, []
        try:
            if free is not None:
                for _ in self._pool:
                    taken.append(free.get(timeout=timeout))
            yield self._pool
        finally:
            for b in taken:
                free.put(b)  # type: ignore[union-attr]
            self._lock.release()

    def map(self, batches: Any, micro_batch: int | None = None) -> list[Any]:
        """Run many batches pipelined (device work of one overlaps enclave work of another), in order.

        ``batches``: an iterable of input batches (tensors or tuples of tensors), or one tensor
        split into ``micro_batch``-row pieces; see :mod:`taoism.runtime.pipeline`.
        """
        from taoism.runtime.pipeline import run_pipelined

        return run_pipelined(self, batches, micro_batch)

    def _outputs(self, env: dict[str, Any], out_device: torch.device) -> Any:
        """The model's output structure filled from the values of one forward."""
        return map_aggregate(
            self._out_template, lambda a: env[a.name].to(out_device) if isinstance(a, _Ref) else a
        )

    forward = __call__

    def _forward(
        self,
        inputs: Sequence[torch.Tensor],
        observer: Observer | None = None,
        backend: EnclaveBackend | None = None,
    ) -> dict[str, Any]:
        """The one forward loop: every segment in plan order; returns the host values the output needs.

        ``observer`` (profiling) may run device segments its own way, asks the enclave for per-node
        times, and is told each segment's host-observed time and enclave reply.
        """
        plan, backend = self.plan, backend if backend is not None else self._backend
        if self._failed is not None:
            raise SessionFailed(
                f"the enclave session was stopped because an earlier inference was cut off "
                f"between a request and its reply ({self._failed}); call reload(model) with the "
                "original model to start a fresh one"
            )
        if plan.enclave_segments and (backend is None or not backend.alive):
            raise EnclaveCrashed(
                "the enclave is not running (it crashed, timed out or was closed); call "
                "reload(model) with the original model to start a fresh one"
            )
        dev = self.device
        env: dict[str, Any] = {n: x.to(dev) for n, x in zip(plan.input_names, inputs)}
        if observer is not None:
            observer.start()
        sent = in_run = False  # an enclave segment was sent / a reply is awaited
        seg = plan.segments[0]
        if backend is not None and seg.side is EnclaveMode.GPU and plan.enclave_segments:
            backend.prepare()  # wake an idle enclave while the first device segment runs
        try:
            for seg in plan.segments:
                if observer is not None:
                    observer.begin(seg)
                t0 = time.perf_counter() if observer is not None else 0.0
                reply = None
                if seg.side is EnclaveMode.GPU:
                    gm, args = self._segments[seg.index], [env[v] for v in seg.inputs]
                    outs = gm(*args) if observer is None else observer.run_device(seg, gm, args)
                    env.update(zip(seg.outputs, outs))
                    if observer is not None:
                        self._sync()
                else:
                    assert backend is not None
                    sent = in_run = True
                    reply = backend.run(
                        seg.index,
                        [env[v] for v in seg.send_in],
                        profile=observer is not None and observer.profile_enclave,
                    )
                    in_run = False
                    self._check_reply(seg, reply.tensors)
                    for v, t in zip(seg.returns, reply.tensors):
                        env[v] = t.to(dev, non_blocking=True) if dev.type != "cpu" else t
                if observer is not None:
                    observer.done(seg, time.perf_counter() - t0, reply)
                for v in seg.host_free:
                    env.pop(v, None)
        except BaseException as exc:
            # A clean error reply (the backend still alive) leaves the session in step; anything
            # else once the enclave holds part of this inference does not.
            if (
                sent
                and not (in_run and backend is not None and backend.alive)
                and self._failed is None
            ):
                self._fail_session(f"{type(exc).__name__} at segment {seg.index}: {exc}")
            raise
        return env

    def _check_reply(self, seg: Any, tensors: Sequence[torch.Tensor]) -> None:
        """Refuse (SessionFailed) a reply whose tensor count or per-row shapes do not fit ``seg``."""
        problem = None
        specs = self._reply_specs[seg.index]
        if len(tensors) != len(specs):
            problem = f"{len(tensors)} tensor(s), expected {len(specs)}"
        else:
            for (v, spec), t in zip(specs, tensors):
                if spec is not None and (t.dim() != spec[0] or t.shape[1:] != spec[1]):
                    problem = f"{v!r} shaped {tuple(t.shape)}, expected (batch, *{spec[1]})"
                    break
        if problem is not None:
            raise self._fail_session(f"the enclave's reply to segment {seg.index} has {problem}")

    def _fail_session(self, reason: str) -> SessionFailed:
        """Stop the enclave and mark the session failed (later calls say why); returns the error."""
        self._failed = reason
        for b in self._pool:
            b.abort(reason)
        return SessionFailed(
            f"the enclave session was stopped: {reason}; call reload(model) with "
            "the original model to start a fresh one"
        )

    # -- measurement -------------------------------------------------------------------------
    def _sync(self) -> None:
        """Wait for the device (CUDA) to finish queued work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def profile(self, *inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> Profile:
        """Measure end-to-end latency and its per-segment and per-layer breakdown."""
        if repeats < 1 or warmup < 0:
            raise ConfigError("profile() needs repeats >= 1 and warmup >= 0")
        self._check_inputs(inputs)
        plan, backend = self.plan, self._backend
        with self._exclusive(), torch.inference_mode():
            for _ in range(warmup):
                self._forward(inputs)
            self._sync()
            e2e = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                self._forward(inputs)
                self._sync()
                e2e.append(time.perf_counter() - t0)
            # Pass 2: per-segment breakdown.
            seg_timer = SegmentTimer(plan.segments, getattr(backend, "channel_stats", None))
            for _ in range(repeats):
                self._forward(inputs, seg_timer)
            # Pass 3: per-layer times.
            layer_timer = LayerTimer([l.info.name for l in plan.layers], self._sync)
            for _ in range(repeats):
                self._forward(inputs, layer_timer)
        per_seg, layer_times, memory = seg_timer.records, layer_timer.times, layer_timer.memory
        seg_rows = []
        for s in plan.segments:
            rec = per_seg[s.index]
            total = Stat.of(rec["total"])
            med = lambda k: Stat.of(rec[k]).median if rec[k] else 0.0  # noqa: E731
            crossings = len(s.send_in) + len(s.returns)
            nbytes = sum(plan.value_bytes.get(v, 0) for v in s.send_in + s.returns)
            if s.side is EnclaveMode.GPU:
                seg_rows.append(
                    SegmentTiming(
                        s.index, s.side.value, len(s.nodes), total, device_compute=total.median
                    )
                )
            else:
                enc, crypto, copy_ = med("enclave"), med("crypto"), med("copy")
                wait = max(0.0, total.median - enc - crypto - copy_)
                seg_rows.append(
                    SegmentTiming(
                        s.index,
                        s.side.value,
                        len(s.nodes),
                        total,
                        enclave_compute=enc,
                        crypto=crypto,
                        copy=copy_,
                        wait=wait,
                        crossings=crossings,
                        bytes=nbytes * inputs[0].shape[0] // max(plan.batch, 1),
                    )
                )
        layers = tuple(
            LayerTiming(
                l.info.name,
                l.info.module_type or l.info.target.rsplit(".", 1)[-1],
                l.placement.value,
                l.segment,
                Stat.of(layer_times[l.info.name]),
            )
            for l in plan.layers
        )
        return Profile(
            batch=int(inputs[0].shape[0]),
            repeats=repeats,
            warmup=warmup,
            device=str(self.device),
            end_to_end=Stat.of(e2e),
            segments=tuple(seg_rows),
            layers=layers,
            meta={
                "threads": torch.get_num_threads(),
                "enclave_threads": self.enclave_config.threads,
                "backend": self.enclave_config.backend if backend else None,
                "tee": self.enclave_config.tee,
                "enclave_memory": {str(k): v for k, v in memory.items()},
            },
        )

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def backend(self) -> EnclaveBackend | None:
        """The enclave backend (None when nothing is placed in the enclave)."""
        return self._backend

    def host_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer the untrusted host holds, by its path in the model.

        This is exactly what an attacker who controls the host can read; shielded weights never
        appear here.
        """
        out: dict[str, torch.Tensor] = {}
        for gm in self._segments.values():
            for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
                out[name] = t.detach()
        return out

    def stats(self) -> dict[str, Any]:
        """Boundary and enclave counters (empty when nothing runs in the enclave)."""
        with self._exclusive():
            return (
                self._backend.stats() if self._backend is not None and self._backend.alive else {}
            )

    def close(self) -> None:
        """Stop the enclave; idempotent. Waits for a running inference up to the enclave time-out, then kills."""
        if self._backend is None:
            return
        try:
            with self._exclusive(timeout=self.enclave_config.timeout_s):
                for b in self._pool:
                    b.close()
            return
        except queue.Empty:
            pass
        for b in self._pool:  # an inference holds a session: stop the enclave under it
            b.abort("closed while an inference was running")

    def __enter__(self) -> ShieldedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        t = self.plan.totals()
        return (
            f"ShieldedModel({t['nodes']} nodes, {t['segments']} segments, "
            f"{t['enclave_nodes']} in the enclave, device={self.device})"
        )


def shield(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    placement: PlacementSpec = None,
    *,
    strategy: Any = None,
    backend: str | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    enclave: EnclaveConfig | None = None,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    tee: str | None = None,
    capture: str = "auto",
) -> ShieldedModel:
    """Deploy ``model`` with the placement (or TSDP ``strategy``) given; returns a ShieldedModel.

    ``placement`` maps module names, node names or ``"re:<regex>"`` to GPU/ENCLAVE/AUTO, with
    ``"_default"`` for the rest; it may also be a path to a JSON plan. ``backend`` and
    ``threads`` override the fields of ``enclave`` (an :class:`EnclaveConfig`), and so does
    ``tee`` (a TEE profile of :mod:`taoism.tee`, e.g. ``"sgx1-client"``: the enclave then keeps
    its working set within that profile's memory budget by chunking and sealed paging).
    ``capture`` is ``"fx"``, ``"export"`` or ``"auto"`` (fx when the model traces, else export).
    """
    cfg = enclave or EnclaveConfig()
    overrides = {
        k: v for k, v in (("backend", backend), ("threads", threads), ("tee", tee)) if v is not None
    }
    if overrides:
        cfg = EnclaveConfig(**{**cfg.__dict__, **overrides})
    return ShieldedModel(
        model,
        example_input,
        placement,
        strategy=strategy,
        device=device,
        enclave=cfg,
        leaf_modules=leaf_modules,
        capture=capture,
    )


def _row_spec(shapes: Any) -> tuple[int, tuple[int, ...]] | None:
    """(ndim, shape past the batch) of a value with one known output shape, else None."""
    if not shapes or len(shapes) != 1:
        return None
    return len(shapes[0]), tuple(shapes[0][1:])
