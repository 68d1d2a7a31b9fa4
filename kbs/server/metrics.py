"""Prometheus metrics through the maintained client library, one registry per app.

Labels stay low-cardinality: no resource paths, session ids or key names.

With several worker processes (kbs.server.workers) the supervisor sets PROMETHEUS_MULTIPROC_DIR
before any worker imports prometheus_client: every worker then keeps its values in files there
and a scrape of any worker renders the sum over all of them (the client's multiprocess mode).
Gauges say how they combine across processes; none is computed at scrape time (`set_function`
sees only the scraped process), so the open-connection count is set as it changes.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from kbs import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# No `_created` series: a timestamp per counter and histogram that dashboards do not use and that doubles
# what a scrape carries (the multiprocess collector never renders them either).
disable_created_metrics()  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process is one of several workers."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kbs_http_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.attestations = Counter("kbs_attestations_total", "Attestations by TEE and result (ok or the check "
                                    "that failed)", ["tee", "result"], registry=self.registry)
        self.releases = Counter("kbs_resource_requests_total", "Resource requests by decision and reason",
                                ["decision", "reason"], registry=self.registry)
        self.verify_seconds = Histogram("kbs_verification_seconds", "Evidence verification latency", ["tee"],
                                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
                                        registry=self.registry)
        self.request_seconds = Histogram("kbs_http_request_duration_seconds", "Request latency", ["route"],
                                         registry=self.registry)
        self.audit_failures = Counter("kbs_release_log_write_failures_total",
                                      "Release log writes that failed (the request failed too)",
                                      registry=self.registry)
        self.rate_limited = Counter("kbs_rate_limited_total", "Guest requests refused with 429 by the per-client "
                                    "rate limit", ["route"], registry=self.registry)
        self.connections_refused = Counter("kbs_connections_refused_total", "Connections closed at once: over the "
                                           "total or the per-client cap", ["limit"], registry=self.registry)
        self.connections = Gauge("kbs_open_connections", "Open client connections", registry=self.registry,
                                 multiprocess_mode="livesum")
        self.in_flight = Gauge("kbs_requests_in_flight", "Requests being served (health and metrics excluded)",
                               registry=self.registry, multiprocess_mode="livesum")
        self.overloaded = Counter("kbs_overloaded_total", "Requests refused with 503 at once: the worker already "
                                  "had [limits] max_in_flight requests in flight", registry=self.registry)
        self.worker_starts = Counter("kbs_worker_starts_total", "Worker processes started (restarts included)",
                                     registry=self.registry)
        self.rego_events = Counter("kbs_rego_events_total", "Rego worker pool events: evaluations, checks, restarts "
                                   "and failures (rego.crash, rego.timeout, rego.memory, rego.busy, ...)", ["event"],
                                   registry=self.registry)
        build = Gauge("kbs_build_info", "Build information", ["version"], registry=self.registry,
                      multiprocess_mode="max")
        build.labels(version=__version__).set(1)

    def render(self) -> bytes:
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()  # read at each scrape: every worker's files, live and dead
        MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
