"""A cached fetcher for vendors' collateral services: AMD KDS, Intel PCS, NVIDIA's RIM service and
OCSP responders.  Vendor modules keep the URLs and the checks of the answers (as go-sev-guest keeps
`kds` apart from `trust.HTTPSGetter`); this module does the fetching, once for all of them.

One `Fetcher` serves one service (a base URL).  A `Request` names a path (GET, or POST with a
body), what the artefact is, a validation callback and, for artefacts that expire, a callback
that reads "valid until" from the artefact itself (a CRL's or OCSP response's nextUpdate, a TCB
info's nextUpdate).  `fetch` answers a `Fetched`: the body, the response headers the request
asked to keep (PCS sends issuer chains in headers), where it came from and until when it is good.

Caching.  An answer is validated before anything is cached, and nothing that fails is ever
stored.  A byte-bounded memory cache sits in front of the disk cache (`kbs.trust.cachedir`: the
directory format `kbs collateral` also reads and writes); immutable artefacts (VCEKs, certificate
chains, RIMs) never expire, the others are served while their own date lies ahead.  Disk entries
are re-validated when read, so a damaged file is a miss.  The cache key is the method, the path
and, for a POST, the SHA-256 of the request body, unless the request says its path alone names the
artefact (an OCSP request carries a fresh nonce each time, so it is cached under its CertID).  A
request may record headers with its answer (never sent: what a cached copy needs to be checked on
its own, such as the certificates an OCSP response is about), and may hold answers from the network
to a further check that cached copies are not held to (the nonce an OCSP response must echo).
Concurrent requests for one key share one fetch, shielded so that a caller who goes away does not
cancel it for the others.  In offline mode nothing is sent, and a miss names the cache directory;
`lookup` serves what the caches hold without ever asking the service.
Cache lookups, fetches and the expiry of what is served are reported through `kbs.trust.observe` (the
server's metrics watch them).

Protecting the service.  Requests may be caused by unauthenticated clients (a report's CHIP_ID
is chosen by whoever sends it), so per service:

- failures are remembered per key: "not found" (404) for `negative_ttl` seconds, transient ones
  (5xx or connection errors after the retries, an answer that fails validation) for `transient_ttl`;
- every request (retries included) takes a token from one bucket (`rate_per_second`, `burst`);
  with none left a fetch fails at once (`<service>.rate_limited`) unless the caller allows waiting
  (`token_wait` seconds, for command-line use), and at most `max_in_flight` keys are fetched at once
  (`<service>.busy`);
- a 429 is not retried: its Retry-After (clamped; 10 s without one) stops every request to the
  service, and fetches in that window fail at once (`<service>.throttled`) saying until when;
- retries (exponential backoff with jitter, or a 5xx's Retry-After) are for connection errors,
  timeouts and 5xx only, and one fetch with its retries ends within `total_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, NoReturn, Self, TypedDict, Unpack

import aiohttp
from yarl import URL

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, CollateralUnavailable, MalformedEvidence, UsageError
from kbs.trust import observe
from kbs.trust.cachedir import CacheDir, CacheKey, DamagedEntry, Entry, check_service

# Raises MalformedEvidence (or ChainInvalid) if (body, kept headers) from `where` is not the artefact asked for.
Validator = Callable[[bytes, Mapping[str, str], str], None]
# When the artefact stops being current, read from the artefact; None if it carries no usable date.
ValidUntil = Callable[[bytes, Mapping[str, str]], datetime | None]

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
DEFAULT_TOTAL_TIMEOUT = 30.0
DEFAULT_RATE_PER_SECOND = 1.0
DEFAULT_BURST = 5
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_NEGATIVE_TTL = 600.0
DEFAULT_TRANSIENT_TTL = 60.0
DEFAULT_MEMORY_CACHE_BYTES = 8 * 1024 * 1024
DEFAULT_NEGATIVE_CACHE_BYTES = 1024 * 1024
DEFAULT_MAX_BODY = 1 << 20
# A 429's Retry-After is clamped to this range; without a usable one, the service is left alone this long.
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 600.0
DEFAULT_RETRY_AFTER = 10.0
_ENTRY_OVERHEAD = 256  # bytes charged per memory-cache entry on top of its body, headers or message


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Request:
    """One artefact to fetch: where, how to check it, and whether (and when) it expires."""

    path: str  # path and query under the service's base URL, or an absolute http(s) URL
    what: str  # for messages: "VCEK", "TDX TCB info"
    kind: str  # artefact kind recorded in the cache ("amd.vcek"); see kbs.trust.collateral_cache
    validate: Validator
    valid_until: ValidUntil | None = None  # None: immutable, cached forever
    method: str = "GET"
    body: bytes | None = None  # a POST's body (part of the cache key)
    headers: tuple[tuple[str, str], ...] = ()  # request headers (Content-Type, Accept, ...); not in the key
    keep_headers: tuple[str, ...] = ()  # response headers returned with the body and cached with it
    legacy_name: str | None = None  # a file directly under the cache directory that older versions wrote
    # Where to fetch from when not the service's base URL + path (a mirror of an artefact that has its own
    # canonical URL, such as Intel's root CA CRL served by a PCCS); the cache key stays `path`.
    url: str | None = None
    # The path alone names the artefact: a POST is cached without its body (an OCSP request with a nonce,
    # cached under the CertID its path spells).
    keyed_by_path: bool = False
    # Headers recorded with the answer as if the service had sent them (never sent), so that a cached
    # copy can be checked on its own.
    recorded_headers: tuple[tuple[str, str], ...] = ()
    # A further check of an answer from the network only, after `validate` (an OCSP response must echo
    # this request's nonce); copies served from the caches are not held to it.
    check_network: Validator | None = None

    def __post_init__(self) -> None:
        if self.method == "GET" and self.body is not None:
            raise ValueError("a GET request has no body")
        if not (self.path.startswith("/") or self.path.startswith(("https://", "http://"))):
            raise ValueError(f"request path {self.path!r} must start with '/' or be an http(s) URL")
        if self.url is not None and not self.url.startswith(("https://", "http://")):
            raise ValueError(f"request URL {self.url!r} must be an http(s) URL")

    @property
    def key(self) -> CacheKey:
        keyed_by_body = self.method == "POST" and not self.keyed_by_path
        return CacheKey.of(self.method, self.path, (self.body or b"") if keyed_by_body else None)


@dataclass(frozen=True)
class Fetched:
    """An artefact with its kept response headers, where it came from and until when it is good."""

    body: bytes
    headers: Mapping[str, str]
    source: str  # the URL it was fetched from (for a cached copy: when it was first fetched)
    fetched_at: datetime
    valid_until: datetime | None  # None: never expires
    origin: str  # "network", "disk" or "memory"

    @property
    def cost(self) -> int:
        return (_ENTRY_OVERHEAD + len(self.body) + len(self.source)
                + sum(len(k) + len(v) for k, v in self.headers.items()))

    def fresh(self, now: datetime) -> bool:
        return self.valid_until is None or self.valid_until > now


@dataclass(frozen=True, slots=True)
class _Failure:
    """A failed fetch, remembered so that asking again within `until` costs no request."""

    error: type[CollateralUnavailable] | type[MalformedEvidence]
    message: str
    check: str
    until: float  # on the fetcher's clock

    @property
    def cost(self) -> int:
        return _ENTRY_OVERHEAD + len(self.message)


class TokenBucket:
    """`rate` tokens a second up to `burst`; a token may be reserved ahead (the level goes below
    zero) when the caller is willing to wait for it."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait(self) -> float:
        """Seconds until a token is free (0 if one is free now)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def reserve(self, max_wait: float) -> float | None:
        """Take a token: the seconds to wait before using it, or None (nothing taken) when that
        would be longer than `max_wait`."""
        wait = self.wait()
        if wait > max_wait:
            return None
        self._tokens -= 1.0
        return wait


@dataclass
class _Circuit:
    """After a 429: no request to the service before `until` (fetcher clock)."""

    until: float = 0.0
    wall: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))
    cause: str = ""


class Fetcher:
    """Fetch artefacts of one service through a memory and disk cache (module docstring).

    `service` names the cache subdirectory, the check labels (`<service>.not_found`, ...) and the
    logger (`kbs.<service>`); `label` is how messages name the service ("KDS").  `retries` counts
    retries after the first attempt; delays grow as ``backoff * 2**n`` plus jitter.  `token_wait`
    is how long a fetch may wait for a rate-limit token (0: refuse at once, as a server should).
    `clock` (monotonic seconds) and `now` (wall clock: freshness, Retry-After dates) are for tests.
    """

    def __init__(self, service: str, base_url: str, *, label: str | None = None, cache_dir: Path | None = None,
                 offline: bool = False, session: aiohttp.ClientSession | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF,
                 total_timeout: float = DEFAULT_TOTAL_TIMEOUT, rate_per_second: float = DEFAULT_RATE_PER_SECOND,
                 burst: int = DEFAULT_BURST, token_wait: float = 0.0, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 negative_ttl: float = DEFAULT_NEGATIVE_TTL, transient_ttl: float = DEFAULT_TRANSIENT_TTL,
                 memory_cache_bytes: int = DEFAULT_MEMORY_CACHE_BYTES,
                 negative_cache_bytes: int = DEFAULT_NEGATIVE_CACHE_BYTES, max_body: int = DEFAULT_MAX_BODY,
                 rate_limit_hint: str = "", clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = _utcnow) -> None:
        try:
            check_service(service)
        except ValueError as exc:
            raise UsageError(str(exc), check="fetch.config") from exc
        self.service = service
        self.label = label or service
        config = f"{service}.config"
        if not base_url.startswith(("https://", "http://")):
            raise UsageError(f"{self.label} base URL must be http(s), not {base_url!r}", check=config)
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise UsageError(f"{self.label} retries and backoff must be >= 0 and timeout > 0", check=config)
        if not rate_per_second > 0 or burst < 1 or max_in_flight < 1 or not total_timeout > 0:
            raise UsageError(f"{self.label} rate_per_second ({rate_per_second}) and total_timeout ({total_timeout}) "
                             f"must be > 0, burst ({burst}) and max_in_flight ({max_in_flight}) >= 1", check=config)
        if negative_ttl < 0 or transient_ttl < 0 or memory_cache_bytes < 0 or negative_cache_bytes < 0 \
                or token_wait < 0 or max_body < 1:
            raise UsageError(f"{self.label} negative_ttl, transient_ttl, token_wait and cache sizes must be >= 0",
                             check=config)
        self.base_url = base_url.rstrip("/")
        self.cache_dir = cache_dir
        self.offline = offline
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.max_in_flight = max_in_flight
        self.negative_ttl = negative_ttl
        self.transient_ttl = transient_ttl
        self.token_wait = token_wait
        self.max_body = max_body
        self.rate_limit_hint = rate_limit_hint
        self.log = logging.getLogger(f"kbs.{service}")
        self._disk = CacheDir(cache_dir, max_body) if cache_dir is not None else None
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._now = now
        self._bucket = TokenBucket(rate_per_second, burst, clock)
        self._memory: ByteBoundedCache[CacheKey, Fetched] = ByteBoundedCache(memory_cache_bytes, lambda f: f.cost)
        self._failures: ByteBoundedCache[CacheKey, _Failure] = ByteBoundedCache(
            negative_cache_bytes, lambda failure: failure.cost)
        self._flights: dict[CacheKey, asyncio.Future[Fetched]] = {}
        self._fetching = 0  # distinct keys being fetched from the service now
        self._circuit = _Circuit()

    # -- public API -----------------------------------------------------------------

    async def fetch(self, request: Request) -> Fetched:
        """The artefact: from memory, from a remembered failure, or one shared flight (disk, then network)."""
        key = request.key
        hit = self._memory_hit(key)
        if hit is not None:
            observe.cache(self.service, "hit")
            return hit
        try:
            self._raise_if_remembered(key, request.what)
        except (CollateralUnavailable, MalformedEvidence):
            observe.cache(self.service, "negative")
            raise
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch_uncached(request))
            self._flights[key] = flight
            flight.add_done_callback(functools.partial(self._flight_done, key))
        # Shielded: a caller that goes away does not cancel the fetch the others wait for.
        return await asyncio.shield(flight)

    async def lookup(self, request: Request) -> Fetched | None:
        """What `fetch` would serve without asking the service: a fresh copy from memory or disk, or None.
        Never sends a request and never raises for a miss (a caller that must not fetch)."""
        hit = self._memory_hit(request.key)
        if hit is not None:
            observe.cache(self.service, "hit")
            return hit
        fetched, _ = await self._from_disk(request)
        observe.cache(self.service, "miss" if fetched is None else "hit")
        return fetched

    @property
    def memory_bytes(self) -> int:
        """Bytes charged to the memory cache of answers now."""
        return self._memory.bytes_used

    async def close(self) -> None:
        """Cancel fetches in flight and close the HTTP session, but only if this fetcher created it."""
        for flight in list(self._flights.values()):
            flight.cancel()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- memory, failures, flights ------------------------------------------------------

    def _flight_done(self, key: CacheKey, flight: asyncio.Future[Fetched]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: no "never retrieved" warning when every waiter left

    def _memory_hit(self, key: CacheKey) -> Fetched | None:
        fetched = self._memory.get(key)
        if fetched is None:
            return None
        if not fetched.fresh(self._now()):
            self._memory.pop(key)
            return None
        self.log.debug("%s memory cache hit for %s", self.label, key)
        return replace(fetched, origin="memory")

    def _raise_if_remembered(self, key: CacheKey, what: str) -> None:
        failure = self._failures.get(key)
        if failure is None:
            return
        left = failure.until - self._clock()
        if left <= 0:
            self._failures.pop(key)
            return
        raise failure.error(f"{failure.message} [remembered: {self.label} is not asked for this {what} again "
                            f"for {_seconds(left)}]", check=failure.check)

    def _remember_failure(self, key: CacheKey, exc: CollateralUnavailable | MalformedEvidence) -> None:
        if isinstance(exc, MalformedEvidence):
            ttl = self.transient_ttl  # the service answered garbage: a maintenance page, a proxy
        elif exc.check == f"{self.service}.not_found":
            ttl = self.negative_ttl
        elif exc.check in (f"{self.service}.http", f"{self.service}.unavailable"):
            ttl = self.transient_ttl
        else:
            return  # throttling and rate limits are not about this key; no request was wasted
        if ttl > 0:
            self._failures.put(key, _Failure(type(exc), str(exc), exc.check, self._clock() + ttl))

    async def _fetch_uncached(self, request: Request) -> Fetched:
        fetched, stale = await self._from_disk(request)
        observe.cache(self.service, "miss" if fetched is None else "hit")
        if fetched is not None:
            return fetched
        if self.offline:
            observe.fetched(self.service, "offline")
            where = f"cache directory: {self.cache_dir}" if self.cache_dir is not None else \
                "no cache directory is configured"
            raise CollateralUnavailable(
                f"{request.what} at {request.path} is not in the {self.label} cache and offline mode is on "
                f"({where}{'; ' + stale if stale else ''})", check=f"{self.service}.offline")
        url = request.url or (request.path if request.path.startswith(("https://", "http://"))
                              else self.base_url + request.path)
        try:
            body, headers = await self._fetch(request, url)
            headers.update(request.recorded_headers)
            request.validate(body, headers, url)
            if request.check_network is not None:
                request.check_network(body, headers, url)
        except (CollateralUnavailable, MalformedEvidence) as exc:
            self._remember_failure(request.key, exc)
            observe.fetched(self.service, "invalid" if isinstance(exc, MalformedEvidence)
                            else exc.check.removeprefix(f"{self.service}."))
            raise
        except Exception:
            observe.fetched(self.service, "error")
            raise
        observe.fetched(self.service, "ok")
        fetched = self._fetched(request, body, headers, url, self._now(), "network")
        observe.expiry(self.service, request.key, fetched.valid_until, self.offline)
        if fetched.fresh(self._now()):
            self._memory.put(request.key, fetched)
            if self._disk is not None:
                await asyncio.to_thread(self._write, request, fetched)
        else:
            self.log.warning("%s answered %s for %s already expired (valid until %s); not cached",
                             self.label, request.what, url, fetched.valid_until)
        return fetched

    def _fetched(self, request: Request, body: bytes, headers: Mapping[str, str], source: str,
                 fetched_at: datetime, origin: str) -> Fetched:
        valid_until = None
        if request.valid_until is not None:
            # An expiring artefact without a usable date is good for this one answer only.
            valid_until = request.valid_until(body, headers) or fetched_at
        return Fetched(body, dict(headers), source, fetched_at, valid_until, origin)

    # -- disk -----------------------------------------------------------------------

    async def _from_disk(self, request: Request) -> tuple[Fetched | None, str]:
        """A fresh, valid disk entry (or None), and a note on a stale one for the offline message."""
        if self._disk is None:
            return None, ""
        disk = self._disk
        key = request.key
        try:
            entry = await asyncio.to_thread(disk.read, self.service, key)
        except (DamagedEntry, OSError) as exc:
            self.log.warning("%s cache entry for %s is unusable (%s); treating it as a miss", self.label, key, exc)
            return None, ""
        if entry is None:
            return await self._from_legacy(request), ""
        where = f"cache file {disk.paths(self.service, key)[0]}"
        try:
            request.validate(entry.body, entry.headers, where)
            fetched = self._fetched(request, entry.body, entry.headers, entry.source, entry.added_at, "disk")
        except (MalformedEvidence, ChainInvalid, CollateralUnavailable, ValueError) as exc:
            self.log.warning("%s %s is damaged (%s); treating it as a miss", self.label, where, exc)
            return None, ""
        if not fetched.fresh(self._now()):
            assert fetched.valid_until is not None
            self.log.info("%s cached %s for %s expired at %s; refetching", self.label, request.what, key,
                          _wall(fetched.valid_until))
            return None, f"the cached copy expired at {_wall(fetched.valid_until)}"
        self.log.debug("%s disk cache hit for %s", self.label, key)
        self._memory.put(key, fetched)
        observe.expiry(self.service, key, fetched.valid_until, self.offline)
        return fetched, ""

    async def _from_legacy(self, request: Request) -> Fetched | None:
        """An artefact in the flat layout older versions wrote (body only), moved into the current one."""
        if self.cache_dir is None or request.legacy_name is None:
            return None
        file = self.cache_dir / request.legacy_name
        try:
            body = await asyncio.to_thread(_read_limited, file, self.max_body)
        except (OSError, ValueError):
            return None
        try:
            request.validate(body, {}, f"cache file {file}")
            fetched = self._fetched(request, body, {}, f"file:{file}", self._now(), "disk")
        except (MalformedEvidence, ChainInvalid, CollateralUnavailable, ValueError) as exc:
            self.log.warning("%s cache file %s is damaged (%s); treating it as a miss", self.label, file, exc)
            return None
        if not fetched.fresh(self._now()):
            return None
        self._memory.put(request.key, fetched)
        observe.expiry(self.service, request.key, fetched.valid_until, self.offline)
        await asyncio.to_thread(self._write, request, fetched)
        return fetched

    def _write(self, request: Request, fetched: Fetched) -> None:
        """Store atomically; a failure is logged, not raised (the answer is good either way)."""
        assert self._disk is not None
        entry = Entry(self.service, request.kind, request.key, fetched.body, fetched.source, fetched.fetched_at,
                      fetched.valid_until, fetched.headers)
        try:
            self._disk.write(entry)
        except OSError as exc:
            self.log.warning("%s cache write for %s into %s failed: %s", self.label, request.key, self.cache_dir, exc)

    # -- network --------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._owns_session = True
        return self._session

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base: float = self.backoff * 2.0 ** attempt
        return base + random.uniform(0.0, base / 2)

    def _check_not_throttled(self, url: str, what: str) -> None:
        left = self._circuit.until - self._clock()
        if left > 0:
            raise CollateralUnavailable(
                f"not asking {self.label} for {what} at {url}: {self.label} answered 429 Too Many Requests "
                f"({self._circuit.cause}), so no request is sent to it before {_wall(self._circuit.wall)} "
                f"(in {_seconds(left)})", check=f"{self.service}.throttled")

    def _throttle(self, url: str, header: str | None) -> NoReturn:
        """A 429: stop every request to the service for Retry-After (clamped), or a default without one."""
        asked = _retry_after(header, self._now())
        seconds = DEFAULT_RETRY_AFTER if asked is None else min(max(asked, MIN_RETRY_AFTER), MAX_RETRY_AFTER)
        until = self._clock() + seconds
        said = f"Retry-After {header.strip()!r}" if header is not None else "no Retry-After"
        if until > self._circuit.until:
            self._circuit = _Circuit(until, self._now() + timedelta(seconds=seconds), f"{said} for {url}")
        self.log.warning("%s %s -> 429; no request to %s for %s (%s)", self.label, url, self.label,
                         _seconds(seconds), said)
        raise CollateralUnavailable(
            f"{self.label} answered 429 Too Many Requests for {url} ({said}); no request is sent to "
            f"{self.label} before {_wall(self._circuit.wall)} (in {_seconds(seconds)})",
            check=f"{self.service}.throttled")

    async def _fetch(self, request: Request, url: str) -> tuple[bytes, dict[str, str]]:
        """One fetch, admitted by the 429 window, the in-flight bound and the token bucket."""
        what = request.what
        self._check_not_throttled(url, what)
        if self._fetching >= self.max_in_flight:
            raise CollateralUnavailable(
                f"not asking {self.label} for {what} at {url}: {self._fetching} other {self.label} fetches are "
                f"in flight, the most allowed (max_in_flight {self.max_in_flight}); try again shortly",
                check=f"{self.service}.busy")
        wait = self._bucket.reserve(self.token_wait)
        if wait is None:
            hint = f"; {self.rate_limit_hint}" if self.rate_limit_hint else ""
            raise CollateralUnavailable(
                f"not asking {self.label} for {what} at {url}: this broker's limit on requests to {self.label} "
                f"({self._bucket.rate:g}/s, burst {self._bucket.burst}) is used up, the next is allowed in "
                f"{_seconds(self._bucket.wait())}{hint}", check=f"{self.service}.rate_limited")
        self._fetching += 1
        try:
            if wait > 0:
                await asyncio.sleep(wait)
                self._check_not_throttled(url, what)  # a 429 may have come in meanwhile
            return await self._attempts(request, url)
        finally:
            self._fetching -= 1

    async def _attempts(self, request: Request, url: str) -> tuple[bytes, dict[str, str]]:
        session = self._get_session()
        deadline = self._clock() + self.total_timeout
        attempts = self.retries + 1
        made = 0
        last = "no attempt made"
        stopped = ""
        retry_after: float | None = None
        what, service = request.what, self.service
        for attempt in range(attempts):
            if attempt > 0:
                delay = self._delay(attempt - 1, retry_after)
                if self._clock() + delay >= deadline:
                    stopped = f"; no more retries: the next would end after the {self.total_timeout:g} s allowed"
                    break
                await asyncio.sleep(delay)
                self._check_not_throttled(url, what)  # another fetch may have met a 429 meanwhile
                wait = self._bucket.reserve(deadline - self._clock())
                if wait is None:
                    stopped = f"; no more retries: the {self.label} request limit allows none in time"
                    break
                await asyncio.sleep(wait)
            retry_after = None
            made += 1
            remaining = max(deadline - self._clock(), 0.001)
            timeout = aiohttp.ClientTimeout(total=min(self.timeout, remaining))
            try:
                async with session.request(request.method, URL(url, encoded=True), data=request.body,
                                           headers=dict(request.headers), timeout=timeout) as resp:
                    status = resp.status
                    self.log.info("%s %s %s -> %d (attempt %d/%d)", self.label, request.method, url, status,
                                  attempt + 1, attempts)
                    if status == 200:
                        body = await self._read_body(resp, url)
                        kept = {name: ", ".join(resp.headers.getall(name)) for name in request.keep_headers
                                if name in resp.headers}
                        return body, kept
                    if status == 404:
                        raise CollateralUnavailable(f"{self.label} has no {what} at {url} (404 Not Found)",
                                                    check=f"{service}.not_found")
                    if status == 429:
                        self._throttle(url, resp.headers.get("Retry-After"))
                    if status < 500:
                        raise CollateralUnavailable(
                            f"{self.label} refused the request for {what} at {url} (HTTP {status})",
                            check=f"{service}.http")
                    last = f"HTTP {status}"
                    retry_after = _retry_after(resp.headers.get("Retry-After"), self._now())
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.log.warning("%s %s %s failed (attempt %d/%d): %s", self.label, request.method, url,
                                 attempt + 1, attempts, last)
        raise CollateralUnavailable(
            f"{self.label} could not supply {what} at {url} after {made} attempt{'s' if made != 1 else ''} "
            f"(last: {last}{stopped})", check=f"{service}.unavailable")

    async def _read_body(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > self.max_body:
                raise MalformedEvidence(f"{self.label} answer for {url} exceeds {self.max_body} bytes",
                                        check=f"{self.service}.body")
        return bytes(body)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _wall(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_limited(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class FetchKnobs(TypedDict, total=False):
    """What a service client passes through to its `Fetcher` (see there)."""

    session: aiohttp.ClientSession | None
    timeout: float
    retries: int
    backoff: float
    total_timeout: float
    rate_per_second: float
    burst: int
    token_wait: float
    max_in_flight: int
    negative_ttl: float
    transient_ttl: float
    memory_cache_bytes: int
    negative_cache_bytes: int
    clock: Callable[[], float]
    now: Callable[[], datetime]


class ServiceClient:
    """The base of one collateral service's client (AMD KDS, Intel PCS, …): a `Fetcher` with the
    service's name, label, default URL and request rate, body limit and throttling hint, closed with
    the client, which is also an async context manager.  Subclasses add the service's requests."""

    service: ClassVar[str]
    label: ClassVar[str]
    default_base_url: ClassVar[str]
    default_rate_per_second: ClassVar[float] = DEFAULT_RATE_PER_SECOND
    default_burst: ClassVar[int] = DEFAULT_BURST
    max_body: ClassVar[int] = DEFAULT_MAX_BODY
    rate_limit_hint: ClassVar[str] = ""

    def __init__(self, base_url: str | None = None, cache_dir: Path | None = None, offline: bool = False,
                 **knobs: Unpack[FetchKnobs]) -> None:
        options: dict[str, Any] = {"rate_per_second": self.default_rate_per_second, "burst": self.default_burst,
                                   **knobs}
        self.fetcher = Fetcher(self.service, base_url or self.default_base_url, label=self.label,
                               cache_dir=cache_dir, offline=offline, max_body=self.max_body,
                               rate_limit_hint=self.rate_limit_hint, **options)

    @property
    def base_url(self) -> str:
        return self.fetcher.base_url

    @property
    def cache_dir(self) -> Path | None:
        return self.fetcher.cache_dir

    @property
    def offline(self) -> bool:
        return self.fetcher.offline

    async def close(self) -> None:
        """Cancel fetches in flight and close the HTTP session, but only if this client created it."""
        await self.fetcher.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
