"""The service's Prometheus metrics, in a registry of its own (two services in one process,
as in the tests, never share counters)."""

from __future__ import annotations

try:  # the serve extra; serving.app refuses to start without it
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError:  # pragma: no cover
    CollectorRegistry = Counter = Gauge = Histogram = generate_latest = None  # type: ignore[assignment,misc]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """Requests by endpoint and status, errors by kind, request latency, batch sizes and the
    time a batch takes, images scored, requests in flight."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("efficientad_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter(
            "efficientad_request_errors",
            "requests answered with an error (client: 4xx, server: 5xx)",
            ["kind"],
            registry=r,
        )
        self.latency = Histogram(
            "efficientad_request_latency_seconds",
            "time from a request's arrival to its answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "efficientad_batch_size", "images per batch the model ran", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "efficientad_batch_seconds", "time one batch took to score", buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("efficientad_images_scored", "images scored", registry=r)
        self.in_flight = Gauge("efficientad_requests_in_flight", "requests being answered", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 500:
            self.errors.labels("server").inc()
        elif status >= 400:
            self.errors.labels("client").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
