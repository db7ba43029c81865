"""Server metrics in Prometheus text format, on a registry of the server's own (no globals)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

QUANTILES = (0.5, 0.9, 0.99)
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class ServeMetrics:
    """Request counts by status, latency histogram and p50/p90/p99, batch sizes, restarts."""

    def __init__(self, max_batch: int, window: int = 10_000) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "taoism_requests", "predict requests answered, by HTTP status", ["status"], registry=r
        )
        self.latency = Histogram(
            "taoism_request_latency_seconds",
            "predict latency of answered requests (seconds)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        buckets = sorted({1, *(2**i for i in range(max_batch.bit_length())), max_batch})
        self.batch_rows = Histogram(
            "taoism_batch_rows",
            "rows per enclave call (dynamic batching)",
            buckets=buckets,
            registry=r,
        )
        self.batch_requests = Histogram(
            "taoism_batch_requests", "requests per enclave call", buckets=buckets, registry=r
        )
        self.restarts = Counter(
            "taoism_enclave_restarts", "enclave restarts after a failure", registry=r
        )
        self.in_flight = Gauge(
            "taoism_requests_in_flight", "predict requests submitted, not answered", registry=r
        )
        self._window: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        r.register(_Quantiles(self._snapshot))

    def observe(self, status: int, seconds: float) -> None:
        """Count one answered predict request; successful ones feed the latency figures."""
        self.requests.labels(status=str(status)).inc()
        if status == 200:
            self.latency.observe(seconds)
            with self._lock:
                self._window.append(seconds)

    def batch(self, rows: int, requests: int) -> None:
        """Record one enclave call of ``rows`` rows from ``requests`` requests."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def _snapshot(self) -> list[float]:
        with self._lock:
            return sorted(self._window)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _Quantiles:
    """Latency quantiles over the most recent successful requests, computed at scrape time."""

    def __init__(self, snapshot: Callable[[], list[float]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        values = self._snapshot()
        fam = GaugeMetricFamily(
            "taoism_request_latency_quantile_seconds",
            "predict latency quantiles over recent successful requests",
            labels=["quantile"],
        )
        if values:
            for q in QUANTILES:
                fam.add_metric([str(q)], values[min(len(values) - 1, int(q * len(values)))])
        yield fam


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{label=value}': value}`` (for tests and the load benchmark)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[s.name + labels] = s.value
    return out
