"""Entry points: :func:`serve` for any model factory, :func:`main_serve` for a zoo model."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from taoism.config import EnclaveConfig
from taoism.errors import ConfigError, TaoismError
from taoism.serve.codec import InputSpec
from taoism.serve.config import ServeConfig

log = logging.getLogger("taoism.serve")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc}; choose another --port (0 picks a free one)"
        ) from None
    sock.listen(2048)
    return sock


def _after_shutdown(sig: int, frame: Any) -> None:
    """The signal uvicorn raises again once its graceful shutdown is done: nothing left to do."""


def serve(
    model_factory: Callable[[], nn.Module],
    example_input: torch.Tensor,
    config: ServeConfig | None = None,
    **shield_kwargs: Any,
) -> None:
    """Shield ``model_factory()`` and serve it over HTTP until SIGTERM or SIGINT.

    ``model_factory`` is called again for every enclave restart, so the host keeps no copy of
    the model between restarts. ``shield_kwargs`` go to :func:`taoism.shield` (placement,
    strategy, enclave, device...). Prints ``taoism serve: listening on http://HOST:PORT`` to
    stdout once requests are accepted.
    """
    import uvicorn

    from taoism.runtime import shield
    from taoism.serve.app import create_app
    from taoism.serve.batcher import Batcher
    from taoism.serve.metrics import ServeMetrics

    config = config or ServeConfig()
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError("the server takes models with one input tensor; pass one example tensor")
    sm = shield(model_factory(), example_input, **shield_kwargs)
    batcher = None
    try:
        probe = sm(example_input)  # warms up, and refuses outputs the server cannot split
        if not isinstance(probe, torch.Tensor) or probe.shape[:1] != example_input.shape[:1]:
            raise ConfigError(
                "the server needs a model whose output is one tensor with the batch "
                f"in dim 0; this one returns {type(probe).__name__}"
            )
        metrics = ServeMetrics(config.max_batch)
        batcher = Batcher(
            sm,
            model_factory,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            metrics=metrics,
        )
        spec = InputSpec(example_input.dtype, tuple(example_input.shape[1:]), config.max_batch)
        app = create_app(batcher, spec, config, metrics)
        sock = _bind(config.host, config.port)
        host, port = sock.getsockname()[:2]
        print(f"taoism serve: listening on http://{host}:{port}", flush=True)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level=config.log_level,
                lifespan="on",
                access_log=False,
                timeout_graceful_shutdown=int(config.shutdown_timeout_s) or 1,
            )
        )
        # uvicorn handles SIGTERM/SIGINT gracefully, restores the handlers it found and raises
        # the signal again; a no-op handler here lets us finish cleanly and exit 0
        main = threading.current_thread() is threading.main_thread()
        previous = {
            sig: signal.signal(sig, _after_shutdown)
            for sig in ((signal.SIGTERM, signal.SIGINT) if main else ())
        }
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        if batcher is not None:
            batcher.stop(config.shutdown_timeout_s)  # idempotent: the lifespan stops it first
        sm.close()
        print("taoism serve: stopped; the enclave is closed", flush=True)


def _placement_kwargs(strategy: str | None, placement: Any, plan: str | None) -> dict[str, Any]:
    given = [n for n, v in (("strategy", strategy), ("placement", placement), ("plan", plan)) if v]
    if len(given) > 1:
        raise ConfigError(f"give one of strategy, placement or plan, not {' and '.join(given)}")
    if strategy:
        return {"strategy": strategy}
    if plan:
        return {"placement": plan}
    if isinstance(placement, str) and placement.strip().startswith("{"):
        try:
            placement = json.loads(placement)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"placement is not valid JSON: {exc}") from None
    # the safe default for a server: the whole model in the enclave
    return {"placement": placement or {"_default": "ENCLAVE"}}


def zoo_source(
    model: str = "resnet18",
    dataset_shape: str = "cifar",
    *,
    num_classes: int | None = None,
    weights: str | None = None,
) -> tuple[Callable[[], nn.Module], torch.Tensor]:
    """A zoo model's factory and example input: the model source a package source replaces."""
    from taoism.zoo import example_input, get_model

    def factory() -> nn.Module:
        return get_model(
            model, dataset_shape=dataset_shape, num_classes=num_classes, weights=weights
        )

    return factory, example_input(model, dataset_shape, batch=1)


def serve_source(
    source: tuple[Callable[[], nn.Module], torch.Tensor],
    *,
    strategy: str | None = None,
    placement: Any = None,
    plan: str | None = None,
    tee: str | None = None,
    device: str | None = None,
    threads: int = 1,
    enclave_threads: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = 8 << 20,
    max_queue: int = 4096,
    request_timeout_s: float = 60.0,
    shutdown_timeout_s: float = 30.0,
    log_level: str = "warning",
) -> None:
    """Serve ``source`` (factory, example input) shielded as asked until SIGTERM; raises TaoismError."""
    config = ServeConfig(
        host=host,
        port=port,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_body_bytes=max_body_bytes,
        max_queue=max_queue,
        request_timeout_s=request_timeout_s,
        shutdown_timeout_s=shutdown_timeout_s,
        log_level=log_level,
    )
    kw = _placement_kwargs(strategy, placement, plan)
    enclave = (
        EnclaveConfig(threads=enclave_threads, tee=tee)
        if tee
        else EnclaveConfig(threads=enclave_threads)
    )
    torch.set_num_threads(threads)
    factory, example = source
    serve(factory, example, config, enclave=enclave, device=device, **kw)


def main_serve(
    model: str = "resnet18",
    dataset_shape: str = "cifar",
    *,
    num_classes: int | None = None,
    weights: str | None = None,
    **options: Any,
) -> int:
    """``python -m taoism.serve``: serve a zoo model (options of :func:`serve_source`); exit code."""
    logging.basicConfig(level=logging.WARNING, format="taoism serve: %(levelname)s %(message)s")
    try:
        serve_source(
            zoo_source(model, dataset_shape, num_classes=num_classes, weights=weights), **options
        )
    except TaoismError as exc:
        print(f"taoism serve: error: {exc}", file=sys.stderr)
        return 2
    return 0
