"""The inference server's typed, frozen configuration."""

from __future__ import annotations

from dataclasses import dataclass

from taoism.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, batches and bounds requests.

    ``max_batch``: most rows in one enclave call (requests are concatenated along dim 0 up to
    it; one request may carry at most this many rows). ``max_wait_ms``: how long the batching
    worker waits for more requests after the first one of a batch. ``max_body_bytes``: largest
    request body accepted (413 above). ``max_queue``: most requests waiting for the worker (503
    above). ``request_timeout_s``: longest a request waits for its answer (504 above).
    ``shutdown_timeout_s``: longest SIGTERM waits for in-flight requests.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_body_bytes: int = 8 << 20
    max_queue: int = 4096
    request_timeout_s: float = 60.0
    shutdown_timeout_s: float = 30.0
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(
                f"ServeConfig.port must be in 0..65535 (0 = any free port), got {self.port}"
            )
        if self.max_batch < 1:
            raise ConfigError(f"ServeConfig.max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"ServeConfig.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_body_bytes < 1024:
            raise ConfigError(
                f"ServeConfig.max_body_bytes must be >= 1024, got {self.max_body_bytes}"
            )
        if self.max_queue < 1:
            raise ConfigError(f"ServeConfig.max_queue must be >= 1, got {self.max_queue}")
        if self.request_timeout_s <= 0 or self.shutdown_timeout_s <= 0:
            raise ConfigError("ServeConfig timeouts must be > 0 seconds")
