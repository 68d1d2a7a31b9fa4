"""Admission control: at most `[limits] max_in_flight` requests in flight per worker; beyond it a 503
with `Retry-After` at once, before the body is read.

In a boot storm this keeps each worker's memory and latency bounded: the excess waits in the kernel's
listen backlog or retries, instead of piling up as coroutines, buffered bodies and queued thread-pool
jobs.  Health, readiness and metrics never count and are never refused, so an overloaded worker
still answers its probes and its scrape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from kbs.server.errors import ProtocolError
from kbs.server.metrics import Metrics

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_SECONDS = 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Admission:
    """An aiohttp middleware counting this process's requests in flight (one event loop: no lock)."""

    __middleware_version__ = 1  # what @web.middleware marks: a new-style (request, handler) middleware

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self._metrics = metrics

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in EXEMPT:
            return await handler(request)
        if self.in_flight >= self.limit:
            self._metrics.overloaded.inc()
            response = ProtocolError("ServiceUnavailable", f"the broker is busy ({self.limit} requests in flight "
                                     f"here); retry in {RETRY_AFTER_SECONDS} s", status=503).response()
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        self.in_flight += 1
        self._metrics.in_flight_now = self.in_flight  # published to the shared gauge by Metrics.publish_live
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            self._metrics.in_flight_now = self.in_flight
