"""Limits on what one client can take: connections, and request rates on the guest routes.

A client is its IP address (IPv6: its /64, which one host usually holds whole).  Both tables
are bounded by entries (LRU), so many clients cost bounded memory too.  Idle and slow
connections are closed by aiohttp's keep-alive timer, which (since aiohttp 3.10) also runs
on a new connection and is not reset by partial data: a connection must deliver a complete
request head within `header_timeout_seconds` of connecting or of its previous response.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import cachetools
from aiohttp import web

MAX_TRACKED_CLIENTS = 65536


def client_key(peer: Any) -> str:
    """The rate-limit identity of a peer address tuple: its IPv4 address or IPv6 /64."""
    host = peer[0] if isinstance(peer, tuple | list) and peer else str(peer)
    if ":" not in host:  # IPv4 as the socket reports it: already canonical (and not worth parsing per request)
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter:
    """A token bucket per client: `rate` requests per second, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._clock = clock
        self._buckets: cachetools.LRUCache[str, tuple[float, float]] = cachetools.LRUCache(MAX_TRACKED_CLIENTS)
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        """0 when the request may go ahead; else the seconds until it would."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate


class ConnectionLimiter:
    """At most `total` open connections, and `per_client` from one client; others are closed at once.

    Between requests a connection may send at most `head_bytes` before a request reaches a
    handler: aiohttp bounds each header field and the number of fields, but fields must be large
    enough for a Bearer token, and this keeps a connection's unparsed head small all the same.
    """

    def __init__(self, total: int, per_client: int, head_bytes: int = 1 << 20,
                 on_refused: Callable[[str], None] = lambda why: None,
                 on_open: Callable[[int], None] = lambda count: None) -> None:
        self.total = total
        self.per_client = per_client
        self.head_bytes = head_bytes
        self.open = 0
        self._by_client: dict[str, int] = {}
        self._on_refused = on_refused
        self._on_open = on_open  # told the open count as it changes (a gauge shared across workers)

    def refused(self, why: str) -> None:
        self._on_refused(why)

    def admit(self, client: str) -> bool:
        if self.open >= self.total:
            self.refused("total")
            return False
        if self._by_client.get(client, 0) >= self.per_client:
            self.refused("per_client")
            return False
        self.open += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        self._on_open(self.open)
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        self._on_open(self.open)
        left = self._by_client.get(client, 1) - 1
        if left:
            self._by_client[client] = left
        else:
            self._by_client.pop(client, None)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that applies the limits around `factory`'s."""
        return lambda: _Limited(self, factory())


def connection_guard(request: web.BaseRequest) -> _Limited | None:
    """The limiter's view of the request's connection (None when served without one, as in tests)."""
    protocol = request.transport.get_protocol() if request.transport is not None else None
    return protocol if isinstance(protocol, _Limited) else None


class _Limited(asyncio.Protocol):
    """Delegates to the HTTP protocol, or closes the connection at once when over a limit."""

    def __init__(self, limiter: ConnectionLimiter, inner: asyncio.Protocol) -> None:
        self._limiter = limiter
        self._inner: asyncio.Protocol | None = inner
        self._client = ""
        self._transport: asyncio.Transport | None = None
        self._head = 0  # bytes received since the last request reached its handler
        self._in_request = False

    def request_started(self) -> None:
        """A request reached its handler: its head was parsed; its body is the handler's to bound."""
        self._head, self._in_request = 0, True

    def request_finished(self) -> None:
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = client_key(transport.get_extra_info("peername"))
        # A stream transport (asyncio's, or uvloop's, which implements the interface without subclassing it).
        stream = cast(asyncio.Transport, transport)
        if not self._limiter.admit(self._client):
            self._inner = None
            stream.abort()  # frees the descriptor now; the client sees a reset
            return
        assert self._inner is not None
        self._transport = stream
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limiter.release(self._client)
            self._inner.connection_lost(exc)
            self._inner = None

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self._in_request:
            self._head += len(data)
            if self._head > self._limiter.head_bytes and self._transport is not None:
                self._limiter.refused("head_size")
                self._transport.abort()
                return
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
