"""A shielded inference server: HTTP in front of one ShieldedModel, with dynamic batching.

``POST /v1/predict`` takes JSON ``{"inputs": nested list}`` or safetensors bytes (a tensor
named ``inputs``; Content-Type ``application/vnd.safetensors`` or ``application/octet-stream``)
and answers ``{"outputs": ...}`` in the same format. ``GET /healthz`` says whether the enclave
runs; ``GET /metrics`` is Prometheus text (request counts by status, latency histogram and
p50/p90/p99, rows and requests per batch, enclave restarts, requests in flight).

Library choice: Starlette on uvicorn. Both are widely used and actively maintained; Starlette
is a small ASGI toolkit (routing, streaming bodies for size limits, lifespan hooks) with no ORM
or validation layer we would not use, and uvicorn gives graceful SIGTERM handling (stop
accepting, let in-flight requests finish, then run the shutdown hook that stops the enclave)
and serving on a pre-bound socket, so ``port=0`` picks a free port race-free. Metrics use
prometheus_client on a registry of the server's own; tensors cross HTTP as safetensors, a
format with no code execution on load (never pickle).

Concurrency model: requests are parsed and checked on the event loop; one worker thread owns
the ShieldedModel and is the only caller into it (see :mod:`taoism.serve.batcher`).
"""

from taoism.serve.batcher import Batcher
from taoism.serve.config import ServeConfig
from taoism.serve.main import (
    serve,
    serve_package,
    serve_package_source,
    serve_source,
    zoo_source,
)

__all__ = [
    "Batcher",
    "ServeConfig",
    "serve",
    "serve_package",
    "serve_package_source",
    "serve_source",
    "zoo_source",
]
