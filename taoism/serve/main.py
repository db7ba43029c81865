"""Entry points: :func:`serve` for any model factory, :func:`serve_package` for a sealed package."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn

from taoism.config import EnclaveConfig
from taoism.errors import ConfigError
from taoism.runtime.shielded import ShieldedModel
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
    from taoism.runtime import shield

    if not isinstance(example_input, torch.Tensor):
        raise ConfigError("the server takes models with one input tensor; pass one example tensor")
    _serve(
        lambda: shield(model_factory(), example_input, **shield_kwargs),
        lambda sm: sm.reload(model_factory()),
        config,
    )


def serve_package(
    path: str,
    keyserver: str,
    *,
    owner_public: str,
    platform_key: str | None = None,
    config: ServeConfig | None = None,
    device: str | None = None,
    enclave: EnclaveConfig | None = None,
) -> None:
    """Serve the sealed package at ``path`` (the deployment threat model) until SIGTERM or SIGINT.

    The enclave attests to ``keyserver`` and decrypts the shielded weights itself
    (:func:`taoism.deploy`); after an enclave failure it restarts from the package and attests
    again. The host never holds a shielded weight or the model key.
    """
    from taoism.runtime.deploy import DeployedModel, deploy

    _serve(
        lambda: deploy(
            path,
            keyserver,
            owner_public=owner_public,
            platform_key=platform_key,
            device=device,
            enclave=enclave,
        ),
        lambda sm: cast(DeployedModel, sm).reload(),
        config,
    )


def _serve(
    start: Callable[[], ShieldedModel],
    restart: Callable[[ShieldedModel], None],
    config: ServeConfig | None,
) -> None:
    """Start the shielded model, then serve it until a signal; ``restart`` after enclave failures."""
    import uvicorn

    from taoism.serve.app import create_app
    from taoism.serve.batcher import Batcher
    from taoism.serve.metrics import ServeMetrics

    config = config or ServeConfig()
    sm = start()
    batcher = None
    try:
        examples = sm.example_inputs(1)
        if len(examples) != 1:
            raise ConfigError(
                f"the server takes models with one input tensor; this one takes {len(examples)}"
            )
        example_input = examples[0]
        probe = sm(example_input)  # warms up, and refuses outputs the server cannot split
        if not isinstance(probe, torch.Tensor) or probe.shape[:1] != example_input.shape[:1]:
            raise ConfigError(
                "the server needs a model whose output is one tensor with the batch "
                f"in dim 0; this one returns {type(probe).__name__}"
            )
        metrics = ServeMetrics(config.max_batch)
        batcher = Batcher(
            sm,
            lambda: restart(sm),
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
    **server_options: Any,
) -> None:
    """Serve ``source`` (factory, example input) shielded as asked until SIGTERM; raises TaoismError.

    ``server_options`` are :class:`ServeConfig` fields (host, port, max_batch, ...).
    """
    config = ServeConfig(**server_options)
    kw = _placement_kwargs(strategy, placement, plan)
    enclave = (
        EnclaveConfig(threads=enclave_threads, tee=tee)
        if tee
        else EnclaveConfig(threads=enclave_threads)
    )
    torch.set_num_threads(threads)
    factory, example = source
    serve(factory, example, config, enclave=enclave, device=device, **kw)


def serve_package_source(
    package: str,
    keyserver: str,
    owner_public: str,
    platform_key: str | None = None,
    *,
    device: str | None = None,
    threads: int = 1,
    enclave_threads: int = 1,
    **server_options: Any,
) -> None:
    """:func:`serve_package` with the CLI's options (``server_options``: ServeConfig fields)."""
    config = ServeConfig(**server_options)
    torch.set_num_threads(threads)
    serve_package(
        package,
        keyserver,
        owner_public=owner_public,
        platform_key=platform_key,
        config=config,
        device=device,
        enclave=EnclaveConfig(threads=enclave_threads),
    )
