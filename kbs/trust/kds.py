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
re-checked when read, so a damaged file is treated as a miss.  A small in-memory
cache sits in front of the disk so that repeated identical requests (which AMD
throttles) are not re-sent even without a cache directory, and concurrent requests for
the same URL share one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import logging
import os
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import aiohttp
from cryptography import x509 as pyca_x509
from yarl import URL

from kbs.errors import ChainInvalid, CollateralUnavailable, MalformedEvidence, UsageError
from kbs.evidence.snp_report import TcbVersion
from kbs.trust.amd import PRODUCTS, VCEK, VLEK, parse_vek_extensions
from kbs.trust.x509 import Certificate, load_certificates

log = logging.getLogger("kbs.kds")

DEFAULT_BASE_URL = "https://kdsintf.amd.com"
CHIP_ID_SIZE = 64
TURIN_HWID_SIZE = 8
# Bodies are a few KiB (a VCEK ~1.3 KiB, a chain ~4 KiB, a CRL < 2 KiB); refuse anything huge.
MAX_BODY = 1 << 20
# Never sleep longer than this for one Retry-After, whatever the server asks.
MAX_RETRY_AFTER = 60.0
_MEMORY_ENTRIES = 256
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


class KdsClient:
    """Fetch VCEKs, certificate chains and CRLs from AMD's KDS, through a cache.

    `retries` is the number of retries after the first attempt, for connection errors,
    timeouts, 429 and 5xx answers.  Delays grow as ``backoff * 2**n`` plus jitter, unless
    the server sends Retry-After.  404 and other 4xx answers are not retried.
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, cache_dir: Path | None = None,
                 offline: bool = False, session: aiohttp.ClientSession | None = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 1.0) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise UsageError(f"KDS base URL must be http(s), not {base_url!r}", check="kds.config")
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise UsageError("KDS retries and backoff must be >= 0 and timeout > 0", check="kds.config")
        self.base_url = base_url.rstrip("/")
        self.cache_dir = cache_dir
        self.offline = offline
        self.retries = retries
        self.backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

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
        """Close the HTTP session, but only if this client created it."""
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
        lock = self._locks.setdefault(path, asyncio.Lock())
        try:
            async with lock:
                return await self._get_locked(path, what, check, expires=expires)
        finally:
            if not lock.locked() and self._locks.get(path) is lock:
                del self._locks[path]

    async def _get_locked(self, path: str, what: str, check: Callable[[bytes, str], None],
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
        body = await self._fetch(url, what)
        check(body, url)
        self._remember(path, body)
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
        body = self._memory.get(path)
        if body is not None:
            if self._fresh(body, expires):
                self._memory.move_to_end(path)
                log.debug("KDS memory cache hit for %s", path)
                return body
            del self._memory[path]
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
        self._remember(path, body)
        return body

    def _remember(self, path: str, body: bytes) -> None:
        self._memory[path] = body
        self._memory.move_to_end(path)
        while len(self._memory) > _MEMORY_ENTRIES:
            self._memory.popitem(last=False)

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
            return min(retry_after, MAX_RETRY_AFTER)
        base: float = self.backoff * 2.0 ** attempt
        return base + random.uniform(0.0, base / 2)

    async def _fetch(self, url: str, what: str) -> bytes:
        session = self._get_session()
        attempts = self.retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                async with session.get(URL(url, encoded=True), timeout=self._timeout) as resp:
                    status = resp.status
                    log.info("KDS GET %s -> %d (attempt %d/%d)", url, status, attempt + 1, attempts)
                    if status == 200:
                        return await _read_body(resp, url)
                    if status == 404:
                        raise CollateralUnavailable(
                            f"KDS has no {what} at {url} (404 Not Found)", check="kds.not_found")
                    if status != 429 and status < 500:
                        raise CollateralUnavailable(
                            f"KDS refused the request for {what} at {url} (HTTP {status})",
                            check="kds.http")
                    last = f"HTTP {status}"
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("KDS GET %s failed (attempt %d/%d): %s", url, attempt + 1, attempts, last)
            if attempt + 1 < attempts:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise CollateralUnavailable(
            f"KDS could not supply {what} at {url} after {attempts} attempts (last: {last})",
            check="kds.unavailable")


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
