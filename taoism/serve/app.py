"""The ASGI application: ``POST /v1/predict``, ``GET /healthz``, ``GET /metrics``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taoism.errors import RequestError, ServiceUnavailable
from taoism.serve import codec
from taoism.serve.batcher import Batcher
from taoism.serve.config import ServeConfig
from taoism.serve.metrics import ServeMetrics


def _error(status: int, exc: BaseException) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(
        {"error": type(exc).__name__, "message": str(exc)}, status_code=status, headers=headers
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestError(
                f"the body is {declared} bytes; the server takes at most {limit}", 413
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the body is over {limit} bytes, the server's limit", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    batcher: Batcher, spec: codec.InputSpec, config: ServeConfig, metrics: ServeMetrics
) -> Starlette:
    """The server's routes around a running :class:`Batcher`; stopping the app stops it."""

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        metrics.in_flight.inc()
        try:
            response = await _predict(request)
        finally:
            metrics.in_flight.dec()
        metrics.observe(response.status_code, time.perf_counter() - t0)
        return response

    async def _predict(request: Request) -> Response:
        try:
            kind = codec.media_type(request.headers.get("content-type"))
            x = codec.decode(await _read_body(request, config.max_body_bytes), kind, spec)
            future = batcher.submit(x)
        except RequestError as exc:
            return _error(exc.status, exc)
        except ServiceUnavailable as exc:
            return _error(503, exc)
        except ClientDisconnect as exc:
            return _error(400, exc)
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(future), config.request_timeout_s)
        except asyncio.TimeoutError:
            return _error(
                504,
                ServiceUnavailable(
                    f"no answer within {config.request_timeout_s:g} s; the server is overloaded"
                ),
            )
        except ServiceUnavailable as exc:
            return _error(503, exc)
        except Exception as exc:  # the batch failed for a reason that is not the request's
            return JSONResponse(
                {
                    "error": "InternalError",
                    "message": (
                        f"the batch holding this request failed ({type(exc).__name__}); the enclave "
                        "was restarted, retry"
                    ),
                },
                status_code=500,
            )
        body, media = codec.encode(out, kind)
        return Response(body, media_type=media)

    async def healthz(request: Request) -> Response:
        ok = batcher.healthy and batcher.enclave_alive
        return JSONResponse(
            {
                "status": "ok" if ok else "unavailable",
                "enclave_alive": batcher.enclave_alive,
                "enclave_restarts": batcher.restarts,
                "max_batch": config.max_batch,
                "input_shape": list(spec.shape),
                "input_dtype": str(spec.dtype),
            },
            status_code=200 if ok else 503,
        )

    async def metrics_endpoint(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn runs this after in-flight requests have finished (SIGTERM included)
        await asyncio.to_thread(batcher.stop, config.shutdown_timeout_s)

    return Starlette(
        routes=[
            Route("/v1/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
