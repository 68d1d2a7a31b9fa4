"""Prometheus metrics through the maintained client library, one registry per app.

Labels stay low-cardinality: no resource paths, session ids or key names.

With several worker processes (kbs.server.workers) the supervisor sets PROMETHEUS_MULTIPROC_DIR
before any worker imports prometheus_client: every worker then keeps its values in files there
and a scrape of any worker renders the sum over all of them (the client's multiprocess mode).
Gauges say how they combine across processes; none is computed at scrape time (`set_function`
sees only the scraped process), so the open-connection count is set as it changes.

Beyond the request path (issue 13, item 7):

- `process_*`: with one process, prometheus_client's ProcessCollector, read at scrape time.  With
  several workers that collector would show only the worker that happens to answer the scrape, so each
  worker copies its own readings (the same collector's, from /proc/self) into multiprocess metrics of the
  same names every REFRESH_SECONDS and just before it renders a scrape: resident and virtual memory and
  open descriptors are summed over live workers (`livesum`: what the broker holds now), CPU seconds are a
  counter (a dead worker's seconds stay in the total, so it never goes backwards), the start time and the
  descriptor limit are the live workers' minimum.  No label per worker or pid: restarts would mint new
  series.  Not counted: the lean supervisor (about 15 MB) and the Rego worker processes.
- collateral: every fetcher reports through `kbs.trust.observe` (a hook: `kbs.trust` never imports the
  server); fetches and cache lookups are counted by source and result, and the earliest `nextUpdate` of the
  collateral each worker holds that is still current is a timestamp gauge by source and `offline` (the live
  workers' minimum; +Inf when a source holds none that expires).  In offline mode nothing renews it: an
  alert on that gauge is the operator's cue to import fresh collateral.  Online, the broker refetches
  collateral when it expires, so what needs watching there is failed fetches.
- `kbs_policy_evaluation_seconds{dialect}`: the time a guest's resource request spends in its policy.
- `kbs_attested_sessions`: attested sessions whose lifetime has not ended, counted in the store by the
  worker answering the scrape (`livemostrecent`: the freshest count).  /auth stores nothing (its session
  lives in a signed cookie), so sessions that never attested are not counted; replicas sharing one
  database each report the same number (take the max, not the sum).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Hashable
from datetime import datetime
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from kbs import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# No `_created` series: a timestamp per counter and histogram that dashboards do not use and that doubles
# what a scrape carries (the multiprocess collector never renders them either).
disable_created_metrics()  # type: ignore[no-untyped-call]


REFRESH_SECONDS = 10.0  # how often each worker copies its process readings and collateral expiries
LIVE_SECONDS = 0.5  # how often each worker publishes its requests in flight and open connections (and at a scrape)
MAX_EXPIRIES = 4096  # expiring artefacts remembered per source (CRLs, TCB infos, OCSP responses)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # writes per batch (the writer takes at most 64)
BATCH_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
POLICY_BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)


M = TypeVar("M", Counter, Histogram)
MAX_CHILDREN = 512  # label sets remembered per metric (the code bounds them; the memo is bounded anyway)


class Labelled(Generic[M]):
    """A labelled metric whose children are looked up once per label set: prometheus_client's labels() costs
    ~2 us and a release calls it about ten times."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[tuple[str, str], ...], M] = {}

    def labels(self, **values: str) -> M:
        key = tuple(values.items())
        child = self._children.get(key)
        if child is None:
            child = self.metric.labels(**values)
            if len(self._children) < MAX_CHILDREN:
                self._children[key] = child
        return child


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process is one of several workers."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Labelled(Counter("kbs_http_requests_total", "HTTP requests by route and status",
                                         ["route", "method", "status"], registry=self.registry))
        self.attestations = Labelled(Counter("kbs_attestations_total", "Attestations by TEE and result (ok or the "
                                             "check that failed)", ["tee", "result"], registry=self.registry))
        self.releases = Labelled(Counter("kbs_resource_requests_total", "Resource requests by decision and reason",
                                         ["decision", "reason"], registry=self.registry))
        self.verify_seconds = Labelled(Histogram("kbs_verification_seconds", "Evidence verification latency", ["tee"],
                                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                          0.25, 1, 5), registry=self.registry))
        self.request_seconds = Labelled(Histogram("kbs_http_request_duration_seconds", "Request latency", ["route"],
                                                  registry=self.registry))
        # The group commit (kbs.store.group_commit): how many writes share a durable transaction, and how long each
        # holds the write lock; retried: batches run again with a savepoint per call after a call failed.
        self.batch_writes = Histogram("kbs_store_batch_writes", "Guest-protocol writes per committed batch",
                                      buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("kbs_store_batch_seconds", "A committed batch's time from BEGIN to the "
                                       "COMMIT's return (the write lock held)", buckets=BATCH_SECONDS_BUCKETS,
                                       registry=self.registry)
        self.batch_retries = Counter("kbs_store_batch_retries_total", "Batches run again with a savepoint per call "
                                     "after one of their calls failed", registry=self.registry)
        # Decisions on the inputs in memory whose store had moved on (kbs.server.decisions): a release refused at its
        # write (StaleDecision), or a refusal whose generation had moved; each was decided again on fresh inputs.
        self.decisions_redone = Labelled(Counter("kbs_release_decisions_redone_total", "Resource decisions made "
                                                 "again because a resource, policy or reference set changed "
                                                 "after the inputs in memory were read", ["outcome"],
                                                 registry=self.registry))
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
        self.in_flight_now = 0  # this worker's own counts, published by publish_live
        self.open_now = 0
        self.overloaded = Counter("kbs_overloaded_total", "Requests refused with 503 at once: the worker already "
                                  "had [limits] max_in_flight requests in flight", registry=self.registry)
        self.worker_starts = Counter("kbs_worker_starts_total", "Worker processes started (restarts included)",
                                     registry=self.registry)
        self.rego_events = Counter("kbs_rego_events_total", "Rego worker pool events: evaluations, checks, restarts "
                                   "and failures (rego.crash, rego.timeout, rego.memory, rego.busy, ...)", ["event"],
                                   registry=self.registry)
        self.collateral_fetch_counts = Counter(
            "kbs_collateral_fetches_total", "Collateral fetches from vendor services (AMD KDS, Intel PCS, NVIDIA RIM "
            "and OCSP) by source and result: ok or why not (kbs.trust.observe)", ["source", "result"],
            registry=self.registry)
        self.collateral_cache_counts = Counter(
            "kbs_collateral_cache_total", "Collateral cache lookups by source and result (hit, miss, negative: a "
            "remembered failure)", ["source", "result"], registry=self.registry)
        self.collateral_expiry_at = Gauge(
            "kbs_collateral_next_expiry_timestamp_seconds", "When the first of the expiring collateral held (CRLs, TCB "
            "info, QE identity, OCSP responses) stops being current, by source; +Inf when none",
            ["source", "offline"], registry=self.registry, multiprocess_mode="livemin")
        self.policy_seconds = Labelled(Histogram("kbs_policy_evaluation_seconds",
                                                 "Release policy evaluation time by dialect", ["dialect"],
                                                 buckets=POLICY_BUCKETS, registry=self.registry))
        self.store_errors = Counter("kbs_store_errors_total", "Store operations that failed (unavailable, conflict, "
                                    "integrity)", ["check"], registry=self.registry)
        self.sessions = Gauge("kbs_attested_sessions", "Attested sessions not yet expired (counted in the store at "
                              "scrape time)", registry=self.registry, multiprocess_mode="livemostrecent")
        self._expiries: dict[str, dict[Hashable, tuple[datetime, bool]]] = {}
        self._expiry_labels: set[tuple[str, str]] = set()
        self._process = _ProcessMetrics(self.registry)
        build = Gauge("kbs_build_info", "Build information", ["version"], registry=self.registry,
                      multiprocess_mode="max")
        build.labels(version=__version__).set(1)

    def publish_live(self) -> None:
        """This worker's requests in flight and open connections into the gauges the workers share.  Counted in
        plain integers as they change (kbs.server.admission, kbs.server.limits) and published every LIVE_SECONDS
        and before a scrape of this worker: a gauge write per change was several shared-memory writes a
        request."""
        self.in_flight.set(self.in_flight_now)
        self.connections.set(self.open_now)

    def connections_open(self, count: int) -> None:
        self.open_now = count

    def store_batch(self, writes: int, seconds: float, retried: bool) -> None:
        """A group-commit batch committed (kbs.store.group_commit.BatchObserver)."""
        self.batch_writes.observe(writes)
        self.batch_seconds.observe(seconds)
        if retried:
            self.batch_retries.inc()

    # -- kbs.trust.observe.CollateralObserver ----------------------------------------------------------

    def collateral_cache(self, source: str, result: str) -> None:
        self.collateral_cache_counts.labels(source=source, result=result).inc()

    def collateral_fetch(self, source: str, result: str) -> None:
        self.collateral_fetch_counts.labels(source=source, result=result).inc()

    def collateral_expiry(self, source: str, key: Hashable, valid_until: datetime, offline: bool) -> None:
        held = self._expiries.setdefault(source, {})
        held.pop(key, None)  # the newest copy of an artefact replaces the older one, and goes last
        held[key] = (valid_until, offline)
        if len(held) > MAX_EXPIRIES:
            del held[next(iter(held))]  # the artefact not seen for longest
        self._set_expiry(source, time.time())

    # -- refreshed values ----------------------------------------------------------------------------

    def _set_expiry(self, source: str, now: float) -> None:
        held = self._expiries.get(source, {})
        for key in [k for k, (until, _) in held.items() if until.timestamp() <= now]:
            del held[key]  # expired: from now on the broker refetches it, or (offline) fetches fail
        by_mode: dict[str, float] = {}
        for until, offline in held.values():
            mode = "true" if offline else "false"
            by_mode[mode] = min(by_mode.get(mode, math.inf), until.timestamp())
        for mode in {m for s, m in self._expiry_labels if s == source} | set(by_mode):
            self._expiry_labels.add((source, mode))
            self.collateral_expiry_at.labels(source=source, offline=mode).set(by_mode.get(mode, math.inf))

    def refresh(self) -> None:
        """Values that change without an event: this process's readings, and collateral that expired."""
        self._process.update()
        now = time.time()
        for source in list(self._expiries):
            self._set_expiry(source, now)

    def collateral_next_expiry(self) -> dict[str, float]:
        """Source -> when the first expiring collateral held by any worker stops being current (POSIX seconds;
        inf when none), as the scrape would say (`kbs status`)."""
        self.refresh()
        path = multiprocess_dir()
        registry = self.registry
        if path is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        out: dict[str, float] = {}
        for family in registry.collect():
            if family.name == "kbs_collateral_next_expiry_timestamp_seconds":
                for sample in family.samples:
                    source = sample.labels["source"]
                    out[source] = min(out.get(source, math.inf), sample.value)
        return out

    def render(self) -> bytes:
        self.refresh()  # the answering process's values are current; the others' are REFRESH_SECONDS old at most
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()  # read at each scrape: every worker's files, live and dead
        MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class _ProcessMetrics:
    """`process_*`: the library's collector with one process; with several, each worker's readings copied
    into multiprocess metrics of the same names (module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._reader = ProcessCollector(registry=None if multiprocess_dir() else registry)
        self._shared = multiprocess_dir() is not None
        if not self._shared:
            return
        self._cpu_reported = 0.0
        self._cpu = Counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds (all "
                            "worker processes, dead ones included)", registry=registry)
        self._gauges = {
            "process_resident_memory_bytes": Gauge("process_resident_memory_bytes", "Resident memory size in bytes "
                                                   "(sum over live workers)", registry=registry,
                                                   multiprocess_mode="livesum"),
            "process_virtual_memory_bytes": Gauge("process_virtual_memory_bytes", "Virtual memory size in bytes (sum "
                                                  "over live workers)", registry=registry, multiprocess_mode="livesum"),
            "process_open_fds": Gauge("process_open_fds", "Number of open file descriptors (sum over live workers)",
                                      registry=registry, multiprocess_mode="livesum"),
            "process_max_fds": Gauge("process_max_fds", "Maximum number of open file descriptors (per worker)",
                                     registry=registry, multiprocess_mode="livemin"),
            "process_start_time_seconds": Gauge("process_start_time_seconds", "Start time of the oldest live worker "
                                                "since unix epoch in seconds", registry=registry,
                                                multiprocess_mode="livemin"),
        }

    def update(self) -> None:
        if not self._shared:
            return  # the collector reads /proc at scrape time
        for family in self._reader.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    if sample.value > self._cpu_reported:
                        self._cpu.inc(sample.value - self._cpu_reported)
                        self._cpu_reported = sample.value
                elif sample.name in self._gauges:
                    self._gauges[sample.name].set(sample.value)
