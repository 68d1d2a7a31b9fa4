"""An async client for AMD's Key Distribution Service (KDS), with an on-disk cache.

URL forms are those of reference/snp.md §3 ("KDS endpoints"):

- VCEK, Milan/Genoa: ``/vcek/v1/{P}/{hex(CHIP_ID[0:64])}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``
- VCEK, Turin: ``/vcek/v1/Turin/{hex(CHIP_ID[0:8])}?fmcSPL=..&blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``
- ASK + ARK: ``/vcek/v1/{P}/cert_chain``; ASVK + ARK: ``/vlek/v1/{P}/cert_chain`` (PEM, ARK last)
- CRL: ``/vcek/v1/{P}/crl`` or ``/vlek/v1/{P}/crl`` (DER)

Everything the KDS returns is checked for form before it is cached or returned, and
nothing that fails the check is ever written to the cache.  This client does **not**
verify signatures: the chain is verified by `kbs.trust.amd.verify_chain`, the CRL by
`kbs.trust.amd.check_crl`.

Caching: VCEKs and certificate chains are immutable and kept forever; a CRL is served
from the cache only while its nextUpdate lies in the future.  Each cached file is
re-checked when read, so a damaged file is treated as a miss.  A byte-bounded in-memory
cache sits in front of the disk so that repeated identical requests (which AMD
throttles) are not re-sent even without a cache directory, and concurrent requests for
the same URL share one fetch.

Protecting KDS (and the broker's standing with it): a report's CHIP_ID is chosen by
whoever sends it, and the VCEK is fetched before the report's signature can be checked,
so every request to KDS is one an unauthenticated client can cause.  Hence:

- failures are remembered per URL: a 404 for `negative_ttl` seconds, a transient failure
  (5xx or connection errors after the retries, a malformed answer) for `transient_ttl`;
  a flood of the same request costs one fetch, and answers are served from memory;
- every request to KDS (retries included) takes a token from one bucket for all URLs
  (`rate_per_second`, `burst`); with none left a fetch fails at once (`kds.rate_limited`)
  instead of queueing, and at most `max_in_flight` distinct URLs are fetched at a time
  (`kds.busy`);
- a 429 is not retried: its Retry-After (or 10 s) stops every request to KDS until then,
  and every fetch in that window fails at once (`kds.throttled`) naming when KDS may be
  asked again;
- retries (exponential backoff with jitter) are for connection errors, timeouts and 5xx
  only, and one fetch with its retries takes at most `total_timeout` seconds.

The limits are per client, so per broker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hashlib
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Protocol

import aiohttp
from cryptography import x509 as pyca_x509
from yarl import URL

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, CollateralUnavailable, MalformedEvidence, UsageError
from kbs.trust.amd.certs import PRODUCTS, VCEK, VLEK, parse_vek_extensions
from kbs.trust.x509 import Certificate, load_certificates

log = logging.getLogger("kbs.kds")

DEFAULT_BASE_URL = "https://kdsintf.amd.com"
CHIP_ID_SIZE = 64
TURIN_HWID_SIZE = 8
# Bodies are a few KiB (a VCEK ~1.3 KiB, a chain ~4 KiB, a CRL < 2 KiB); refuse anything huge.
MAX_BODY = 1 << 20
# Defaults of the KdsClient knobs (see its docstring).  AMD allows about one VCEK per 10 s
# per client address and answers 429 beyond that.
DEFAULT_RATE_PER_SECOND = 1.0
DEFAULT_BURST = 5
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_TOTAL_TIMEOUT = 30.0
DEFAULT_NEGATIVE_TTL = 600.0
DEFAULT_TRANSIENT_TTL = 60.0
DEFAULT_MEMORY_CACHE_BYTES = 8 * 1024 * 1024
DEFAULT_NEGATIVE_CACHE_BYTES = 1024 * 1024
# A 429's Retry-After is clamped to this range; without a usable one, KDS is left alone this long.
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 600.0
DEFAULT_RETRY_AFTER = 10.0
_ENTRY_OVERHEAD = 256  # bytes charged per cache entry on top of its body or message
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def _check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise CollateralUnavailable(
            f"KDS serves no product {product!r}; known products are {', '.join(PRODUCTS)} "
            "(Siena and Bergamo are served as Genoa)", check="kds.product")


def _check_kind(kind: str) -> str:
    if kind not in (VCEK, VLEK):
        raise UsageError(f"certificate kind must be {VCEK!r} or {VLEK!r}, not {kind!r}",
                         check="kds.kind")
    return kind.lower()


class TcbVersion(Protocol):
    """The security patch levels a VCEK is issued for (the evidence's REPORTED_TCB has these)."""

    @property
    def bl(self) -> int: ...
    @property
    def tee(self) -> int: ...
    @property
    def snp(self) -> int: ...
    @property
    def ucode(self) -> int: ...
    @property
    def fmc(self) -> int | None: ...


def vcek_url_path(product: str, chip_id: bytes, tcb: TcbVersion) -> str:
    """The KDS path and query of the VCEK for this chip at this (REPORTED_)TCB.

    Milan/Genoa: all 64 CHIP_ID bytes as 128 lowercase hex characters, and
    blSPL/teeSPL/snpSPL/ucodeSPL.  Turin: the first 8 CHIP_ID bytes (16 hex characters)
    and fmcSPL in front.  SPLs are written in decimal.
    """
    _check_product(product)
    if len(chip_id) != CHIP_ID_SIZE:
        raise UsageError(f"CHIP_ID is {len(chip_id)} bytes, wanted {CHIP_ID_SIZE}", check="kds.chip_id")
    hwid = chip_id[:TURIN_HWID_SIZE] if product == "Turin" else chip_id
    if not any(hwid):
        raise CollateralUnavailable(
            "CHIP_ID is all zero (the guest policy or host masked it, MASK_CHIP_ID); "
            "KDS cannot issue a VCEK for a masked chip, so the VCEK must come with the "
            "evidence (certificate table) or the signing key must be a VLEK", check="kds.chip_id_masked")
    query = f"blSPL={tcb.bl}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.ucode}"
    if product == "Turin":
        if tcb.fmc is None:
            raise UsageError(
                "a Turin VCEK URL needs fmcSPL, but the TCB has no FMC field: it was decoded "
                "with a pre-Turin layout (decode the TCB with family 'Turin')", check="kds.tcb")
        query = f"fmcSPL={tcb.fmc}&{query}"
    return f"/vcek/v1/{product}/{hwid.hex()}?{query}"


def _cache_name(path: str) -> str:
    """A file name for a URL path: readable prefix plus a hash of the whole path."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:32]
    readable = _UNSAFE.sub("_", path.lstrip("/"))[:80].strip("._")
    return f"{readable}.{digest}"


def _crl_next_update(crl: pyca_x509.CertificateRevocationList) -> datetime | None:
    return crl.next_update_utc


@dataclass(frozen=True, slots=True)
class _Failure:
    """A failed fetch, remembered so that asking again within `until` costs no request."""

    error: type[CollateralUnavailable] | type[MalformedEvidence]
    message: str
    check: str
    until: float  # on the client's clock

    @property
    def cost(self) -> int:
        return _ENTRY_OVERHEAD + len(self.message)


class _TokenBucket:
    """`rate` tokens a second up to `burst`; a token may be reserved ahead (the level goes
    below zero) when the caller is willing to wait for it."""

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
        """Take a token: the seconds to wait before using it, or None (nothing taken) when
        that would be longer than `max_wait`."""
        wait = self.wait()
        if wait > max_wait:
            return None
        self._tokens -= 1.0
        return wait


class KdsClient:
    """Fetch VCEKs, certificate chains and CRLs from AMD's KDS, through a cache.

    `retries` is the number of retries after the first attempt, for connection errors,
    timeouts and 5xx answers.  Delays grow as ``backoff * 2**n`` plus jitter, unless a
    5xx answer sends Retry-After; a fetch with its retries ends within `total_timeout`
    seconds.  404, 429 and other 4xx answers are not retried.

    Keyword-only knobs guard KDS against floods (module docstring): `rate_per_second` and
    `burst` (one token bucket for every request to KDS), `max_in_flight` (distinct URLs
    fetched at once), `negative_ttl` (seconds a 404 is remembered), `transient_ttl`
    (seconds a transient failure is remembered), `memory_cache_bytes` and
    `negative_cache_bytes` (budgets of the in-memory caches of answers and of failures).
    A TTL of 0 disables that memory.  `clock` (monotonic seconds) is for tests.
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, cache_dir: Path | None = None,
                 offline: bool = False, session: aiohttp.ClientSession | None = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 1.0, *,
                 rate_per_second: float = DEFAULT_RATE_PER_SECOND, burst: int = DEFAULT_BURST,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
                 negative_ttl: float = DEFAULT_NEGATIVE_TTL, transient_ttl: float = DEFAULT_TRANSIENT_TTL,
                 memory_cache_bytes: int = DEFAULT_MEMORY_CACHE_BYTES,
                 negative_cache_bytes: int = DEFAULT_NEGATIVE_CACHE_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise UsageError(f"KDS base URL must be http(s), not {base_url!r}", check="kds.config")
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise UsageError("KDS retries and backoff must be >= 0 and timeout > 0", check="kds.config")
        if not rate_per_second > 0 or burst < 1 or max_in_flight < 1 or not total_timeout > 0:
            raise UsageError(f"KDS rate_per_second ({rate_per_second}) and total_timeout ({total_timeout}) "
                             f"must be > 0, burst ({burst}) and max_in_flight ({max_in_flight}) >= 1",
                             check="kds.config")
        if negative_ttl < 0 or transient_ttl < 0 or memory_cache_bytes < 0 or negative_cache_bytes < 0:
            raise UsageError("KDS negative_ttl, transient_ttl and cache sizes must be >= 0", check="kds.config")
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
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._bucket = _TokenBucket(rate_per_second, burst, clock)
        self._memory: ByteBoundedCache[str, bytes] = ByteBoundedCache(
            memory_cache_bytes, lambda body: _ENTRY_OVERHEAD + len(body))
        self._failures: ByteBoundedCache[str, _Failure] = ByteBoundedCache(
            negative_cache_bytes, lambda failure: failure.cost)
        self._flights: dict[str, asyncio.Future[bytes]] = {}
        self._fetching = 0  # distinct URLs being fetched from KDS now
        self._blocked_until = 0.0  # no request to KDS before this (client clock), after a 429
        self._blocked_wall = datetime.min.replace(tzinfo=UTC)
        self._blocked_cause = ""

    # -- public API -----------------------------------------------------------------

    async def vcek(self, product: str, chip_id: bytes, tcb: TcbVersion) -> bytes:
        """DER of the VCEK for this chip at this TCB (pass the report's REPORTED_TCB)."""
        path = vcek_url_path(product, chip_id, tcb)

        def check(body: bytes, url: str) -> None:
            _check_vcek(body, url, product, chip_id, tcb)

        return await self._get(path, "VCEK", check, expires=False)

    async def cert_chain(self, product: str, kind: str = VCEK) -> list[bytes]:
        """DER certificates [ASK, ARK] (kind VCEK) or [ASVK, ARK] (kind VLEK)."""
        _check_product(product)
        path = f"/{_check_kind(kind)}/v1/{product}/cert_chain"

        def check(body: bytes, url: str) -> None:
            _parse_chain(body, url, product, kind)

        body = await self._get(path, f"{kind} certificate chain", check, expires=False)
        return [cert.der for cert in _parse_chain(body, path, product, kind)]

    async def crl(self, product: str, kind: str = VCEK) -> bytes:
        """DER CRL of the ARK (kind VCEK) or for the ASVK (kind VLEK); signature not checked."""
        _check_product(product)
        path = f"/{_check_kind(kind)}/v1/{product}/crl"
        return await self._get(path, f"{kind} CRL", _check_crl_form, expires=True)

    async def close(self) -> None:
        """Cancel fetches in flight and close the HTTP session, but only if this client created it."""
        for flight in list(self._flights.values()):
            flight.cancel()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> KdsClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- cache ----------------------------------------------------------------------

    async def _get(self, path: str, what: str, check: Callable[[bytes, str], None],
                   *, expires: bool) -> bytes:
        """Memory, remembered failure, or one shared flight (disk, then KDS) per path."""
        body = self._memory_hit(path, expires)
        if body is not None:
            return body
        self._raise_if_remembered(path, what)
        flight = self._flights.get(path)
        if flight is None:
            flight = asyncio.ensure_future(self._get_uncached(path, what, check, expires=expires))
            self._flights[path] = flight
            flight.add_done_callback(functools.partial(self._flight_done, path))
        # Shielded: a caller that goes away does not cancel the fetch the others wait for.
        return await asyncio.shield(flight)

    def _flight_done(self, path: str, flight: asyncio.Future[bytes]) -> None:
        if self._flights.get(path) is flight:
            del self._flights[path]
        if not flight.cancelled():
            flight.exception()  # retrieved: no "never retrieved" warning when every waiter left

    def _memory_hit(self, path: str, expires: bool) -> bytes | None:
        body = self._memory.get(path)
        if body is None:
            return None
        if not self._fresh(body, expires):
            self._memory.pop(path)
            return None
        log.debug("KDS memory cache hit for %s", path)
        return body

    def _raise_if_remembered(self, path: str, what: str) -> None:
        failure = self._failures.get(path)
        if failure is None:
            return
        left = failure.until - self._clock()
        if left <= 0:
            self._failures.pop(path)
            return
        raise failure.error(f"{failure.message} [remembered: KDS is not asked for this {what} again "
                            f"for {_seconds(left)}]", check=failure.check)

    def _remember_failure(self, path: str, exc: CollateralUnavailable | MalformedEvidence) -> None:
        if isinstance(exc, MalformedEvidence):
            ttl = self.transient_ttl  # KDS answered garbage: a maintenance page, a proxy
        elif exc.check == "kds.not_found":
            ttl = self.negative_ttl
        elif exc.check in ("kds.http", "kds.unavailable"):
            ttl = self.transient_ttl
        else:
            return  # throttling and rate limits are not about this URL; no request was wasted
        if ttl > 0:
            self._failures.put(path, _Failure(type(exc), str(exc), exc.check, self._clock() + ttl))

    async def _get_uncached(self, path: str, what: str, check: Callable[[bytes, str], None],
                            *, expires: bool) -> bytes:
        cached = await self._cached(path, check, expires=expires)
        if cached is not None:
            return cached
        if self.offline:
            raise CollateralUnavailable(
                f"{what} at {path} is not in the KDS cache and offline mode is on "
                f"(cache directory: {self.cache_dir}"
                f"{', an expired CRL does not count' if expires else ''})", check="kds.offline")
        url = self.base_url + path
        try:
            body = await self._fetch(url, what)
            check(body, url)
        except (CollateralUnavailable, MalformedEvidence) as exc:
            self._remember_failure(path, exc)
            raise
        self._memory.put(path, body)
        if self.cache_dir is not None:
            await asyncio.to_thread(self._write_cache, path, body)
        return body

    def _fresh(self, body: bytes, expires: bool) -> bool:
        if not expires:
            return True
        next_update = _crl_next_update(pyca_x509.load_der_x509_crl(body))
        return next_update is not None and next_update > datetime.now(UTC)

    async def _cached(self, path: str, check: Callable[[bytes, str], None], *,
                      expires: bool) -> bytes | None:
        """The disk cache (the memory cache was asked before the flight started)."""
        if self.cache_dir is None:
            return None
        file = self.cache_dir / _cache_name(path)
        try:
            body = await asyncio.to_thread(file.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("KDS cache file %s for %s cannot be read (%s); treating as a miss",
                        file, path, exc)
            return None
        try:
            check(body, f"cache file {file}")
        except (MalformedEvidence, ChainInvalid) as exc:
            log.warning("KDS cache file %s for %s is damaged (%s); treating as a miss", file, path, exc)
            return None
        if not self._fresh(body, expires):
            log.info("KDS cached CRL for %s is past its nextUpdate; refetching", path)
            return None
        log.debug("KDS disk cache hit for %s", path)
        self._memory.put(path, body)
        return body

    def _write_cache(self, path: str, body: bytes) -> None:
        """Write atomically (temp file + os.replace); a failure is logged, not raised."""
        assert self.cache_dir is not None
        tmp: str | None = None
        try:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".kds-", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.cache_dir / _cache_name(path))
            tmp = None
        except OSError as exc:
            log.warning("KDS cache write for %s into %s failed: %s", path, self.cache_dir, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # -- network --------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base: float = self.backoff * 2.0 ** attempt
        return base + random.uniform(0.0, base / 2)

    def _check_not_throttled(self, url: str, what: str) -> None:
        left = self._blocked_until - self._clock()
        if left > 0:
            raise CollateralUnavailable(
                f"not asking KDS for {what} at {url}: KDS answered 429 Too Many Requests ({self._blocked_cause}), "
                f"so no request is sent to it before {_wall(self._blocked_wall)} (in {_seconds(left)})",
                check="kds.throttled")

    def _throttle(self, url: str, header: str | None) -> NoReturn:
        """A 429: stop every request to KDS for Retry-After (clamped), or a default without one."""
        asked = _retry_after(header)
        seconds = DEFAULT_RETRY_AFTER if asked is None else min(max(asked, MIN_RETRY_AFTER), MAX_RETRY_AFTER)
        until = self._clock() + seconds
        if until > self._blocked_until:
            self._blocked_until = until
            self._blocked_wall = datetime.now(UTC) + timedelta(seconds=seconds)
            self._blocked_cause = (f"Retry-After {header.strip()!r}" if header is not None
                                   else "no Retry-After") + f" for {url}"
        log.warning("KDS GET %s -> 429; no request to KDS for %s (Retry-After %r)", url, _seconds(seconds), header)
        raise CollateralUnavailable(
            f"KDS answered 429 Too Many Requests for {url} "
            f"({'Retry-After ' + repr(header.strip()) if header is not None else 'no Retry-After'}); "
            f"no request is sent to KDS before {_wall(self._blocked_wall)} (in {_seconds(seconds)})",
            check="kds.throttled")

    async def _fetch(self, url: str, what: str) -> bytes:
        """One fetch, admitted by the throttle window, the in-flight bound and the token bucket."""
        self._check_not_throttled(url, what)
        if self._fetching >= self.max_in_flight:
            raise CollateralUnavailable(
                f"not asking KDS for {what} at {url}: {self._fetching} other KDS fetches are in flight, "
                f"the most allowed (max_in_flight {self.max_in_flight}); try again shortly",
                check="kds.busy")
        if self._bucket.reserve(0.0) is None:
            raise CollateralUnavailable(
                f"not asking KDS for {what} at {url}: this broker's limit on requests to KDS "
                f"({self._bucket.rate:g}/s, burst {self._bucket.burst}) is used up, the next is allowed in "
                f"{_seconds(self._bucket.wait())}; KDS throttles clients that ask faster (a guest can send "
                "its VCEK with the evidence to need no fetch)", check="kds.rate_limited")
        self._fetching += 1
        try:
            return await self._attempts(url, what)
        finally:
            self._fetching -= 1

    async def _attempts(self, url: str, what: str) -> bytes:
        session = self._get_session()
        deadline = self._clock() + self.total_timeout
        attempts = self.retries + 1
        made = 0
        last = "no attempt made"
        stopped = ""
        retry_after: float | None = None
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
                    stopped = "; no more retries: the KDS request limit allows none in time"
                    break
                await asyncio.sleep(wait)
            retry_after = None
            made += 1
            remaining = max(deadline - self._clock(), 0.001)
            timeout = aiohttp.ClientTimeout(total=min(self.timeout, remaining))
            try:
                async with session.get(URL(url, encoded=True), timeout=timeout) as resp:
                    status = resp.status
                    log.info("KDS GET %s -> %d (attempt %d/%d)", url, status, attempt + 1, attempts)
                    if status == 200:
                        return await _read_body(resp, url)
                    if status == 404:
                        raise CollateralUnavailable(
                            f"KDS has no {what} at {url} (404 Not Found)", check="kds.not_found")
                    if status == 429:
                        self._throttle(url, resp.headers.get("Retry-After"))
                    if status < 500:
                        raise CollateralUnavailable(
                            f"KDS refused the request for {what} at {url} (HTTP {status})",
                            check="kds.http")
                    last = f"HTTP {status}"
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("KDS GET %s failed (attempt %d/%d): %s", url, attempt + 1, attempts, last)
        raise CollateralUnavailable(
            f"KDS could not supply {what} at {url} after {made} attempt{'s' if made != 1 else ''} "
            f"(last: {last}{stopped})", check="kds.unavailable")


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _wall(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _read_body(resp: aiohttp.ClientResponse, url: str) -> bytes:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_BODY:
            raise MalformedEvidence(f"KDS answer for {url} exceeds {MAX_BODY} bytes", check="kds.body")
    return bytes(body)


def _retry_after(value: str | None) -> float | None:
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
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# -- form checks of KDS answers ---------------------------------------------------------

def _check_vcek(body: bytes, url: str, product: str, chip_id: bytes, tcb: TcbVersion) -> None:
    """One DER certificate, CN SEV-VCEK, whose hwID and SPLs are the ones asked for."""
    try:
        certs = load_certificates(body)
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"VCEK from {url} does not parse: {exc}", check="kds.vcek") from exc
    if len(certs) != 1 or certs[0].der != body:
        raise MalformedEvidence(f"VCEK from {url} is not exactly one DER certificate", check="kds.vcek")
    cert = certs[0]
    if cert.subject_cn != "SEV-VCEK":
        raise MalformedEvidence(f"certificate from {url} has CN {cert.subject_cn!r}, wanted 'SEV-VCEK'",
                                check="kds.vcek")
    try:
        ext = parse_vek_extensions(cert)
    except ChainInvalid as exc:
        raise MalformedEvidence(f"VCEK from {url} has bad AMD extensions: {exc}", check="kds.vcek") from exc
    wanted_hwid = chip_id[:TURIN_HWID_SIZE] if product == "Turin" else chip_id
    if ext.hwid != wanted_hwid:
        raise MalformedEvidence(f"VCEK from {url} is for another chip (hwID differs from CHIP_ID)",
                                check="kds.vcek")
    seen = (ext.bl, ext.tee, ext.snp, ext.ucode, ext.fmc if product == "Turin" else None)
    wanted = (tcb.bl, tcb.tee, tcb.snp, tcb.ucode, tcb.fmc if product == "Turin" else None)
    if seen != wanted:
        raise MalformedEvidence(f"VCEK from {url} has SPLs (bl, tee, snp, ucode, fmc) {seen}, "
                                f"requested {wanted}", check="kds.vcek")


def _parse_chain(body: bytes, url: str, product: str, kind: str) -> list[Certificate]:
    """Exactly two PEM certificates: SEV-{P} (or SEV-VLEK-{P}) then ARK-{P}."""
    try:
        certs = load_certificates(body)
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"certificate chain from {url} does not parse: {exc}",
                                check="kds.cert_chain") from exc
    if b"-----BEGIN CERTIFICATE-----" not in body or len(certs) != 2:
        raise MalformedEvidence(f"certificate chain from {url} holds {len(certs)} certificate(s), "
                                "wanted exactly two PEM certificates (ASK or ASVK, then ARK)",
                                check="kds.cert_chain")
    ask, ark = certs
    want_ask = f"SEV-{product}" if kind == VCEK else f"SEV-VLEK-{product}"
    want_ark = f"ARK-{product}"
    if ask.subject_cn != want_ask or ark.subject_cn != want_ark or ask.issuer_cn != want_ark:
        raise MalformedEvidence(
            f"certificate chain from {url} names {ask.subject_cn!r} (issuer {ask.issuer_cn!r}) and "
            f"{ark.subject_cn!r}, wanted {want_ask!r} issued by {want_ark!r}, then {want_ark!r}",
            check="kds.cert_chain")
    return certs


def _check_crl_form(body: bytes, url: str) -> None:
    try:
        pyca_x509.load_der_x509_crl(body)
    except ValueError as exc:
        raise MalformedEvidence(f"CRL from {url} does not parse as DER: {exc}", check="kds.crl") from exc
