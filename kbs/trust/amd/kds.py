"""AMD's Key Distribution Service (KDS): its URLs and the checks of its answers, on the shared
cached fetcher (`kbs.trust.fetch`: memory and disk cache, single flight, retries, the request
limit and 429 window, offline mode).

URL forms are those of reference/snp.md §3 ("KDS endpoints"):

- VCEK, Milan/Genoa: ``/vcek/v1/{P}/{hex(CHIP_ID[0:64])}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``
- VCEK, Turin: ``/vcek/v1/Turin/{hex(CHIP_ID[0:8])}?fmcSPL=..&blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``
- ASK + ARK: ``/vcek/v1/{P}/cert_chain``; ASVK + ARK: ``/vlek/v1/{P}/cert_chain`` (PEM, ARK last)
- CRL: ``/vcek/v1/{P}/crl`` or ``/vlek/v1/{P}/crl`` (DER)

Everything KDS returns is checked for form before it is cached or returned (a VCEK must be for
the CHIP_ID and TCB asked for), and nothing that fails the check is cached.  This client does
**not** verify signatures: the chain is verified by `kbs.trust.amd.certs.verify_chain`, the CRL
by `check_crl` (`kbs collateral add` and `import` verify both before they cache anything).

VCEKs and certificate chains are immutable and cached forever; a CRL is served from the cache
while its nextUpdate lies ahead.  Requests to KDS can be caused by unauthenticated clients (a
report's CHIP_ID is chosen by whoever sends it, and the VCEK is fetched before the report's
signature can be checked), so the fetcher's guards apply: remembered failures (a 404 for
`negative_ttl`, a transient failure for `transient_ttl`), one token bucket for every request to
KDS (`rate_per_second`, `burst`; refused at once when empty, `kds.rate_limited`), at most
`max_in_flight` URLs at once (`kds.busy`), and a 429 stops every request until its Retry-After
(`kds.throttled`).  AMD allows about one VCEK per 10 s per client address.  The limits are per
client, so per broker process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from cryptography import x509 as pyca_x509

from kbs.errors import ChainInvalid, CollateralUnavailable, MalformedEvidence, UsageError
from kbs.trust.amd.certs import PRODUCTS, VCEK, VLEK, parse_vek_extensions
from kbs.trust.fetch import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MEMORY_CACHE_BYTES,
    DEFAULT_NEGATIVE_CACHE_BYTES,
    DEFAULT_NEGATIVE_TTL,
    DEFAULT_RETRY_AFTER,
    DEFAULT_TOTAL_TIMEOUT,
    DEFAULT_TRANSIENT_TTL,
    MAX_RETRY_AFTER,
    MIN_RETRY_AFTER,
    Request,
    ServiceClient,
)
from kbs.trust.x509 import Certificate, load_certificates

__all__ = [
    "CHIP_ID_SIZE", "DEFAULT_BASE_URL", "DEFAULT_BURST", "DEFAULT_MAX_IN_FLIGHT", "DEFAULT_MEMORY_CACHE_BYTES",
    "DEFAULT_NEGATIVE_CACHE_BYTES", "DEFAULT_NEGATIVE_TTL", "DEFAULT_RATE_PER_SECOND", "DEFAULT_RETRY_AFTER",
    "DEFAULT_TOTAL_TIMEOUT", "DEFAULT_TRANSIENT_TTL", "KIND_CERT_CHAIN", "KIND_CRL", "KIND_VCEK", "MAX_BODY",
    "MAX_RETRY_AFTER", "MIN_RETRY_AFTER", "SERVICE", "TURIN_HWID_SIZE", "KdsClient", "TcbVersion",
    "cert_chain_path", "check_crl_form", "check_vcek", "crl_path", "crl_valid_until", "parse_cert_chain",
    "vcek_url_path",
]

SERVICE = "kds"  # the fetcher's service name: cache subdirectory, check labels, logger kbs.kds
DEFAULT_BASE_URL = "https://kdsintf.amd.com"
CHIP_ID_SIZE = 64
TURIN_HWID_SIZE = 8
# Bodies are a few KiB (a VCEK ~1.3 KiB, a chain ~4 KiB, a CRL < 2 KiB); refuse anything huge.
MAX_BODY = 1 << 20
# AMD allows about one VCEK per 10 s per client address and answers 429 beyond that.
DEFAULT_RATE_PER_SECOND = 1.0
DEFAULT_BURST = 5
# Artefact kinds in the collateral cache (kbs.trust.collateral_cache).
KIND_VCEK = "amd.vcek"
KIND_CERT_CHAIN = "amd.cert_chain"
KIND_CRL = "amd.crl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_RATE_LIMIT_HINT = ("KDS throttles clients that ask faster (a guest can send its VCEK with the evidence "
                    "to need no fetch)")


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


def cert_chain_path(product: str, kind: str = VCEK) -> str:
    """``/vcek/v1/{P}/cert_chain`` (ASK + ARK) or ``/vlek/v1/{P}/cert_chain`` (ASVK + ARK)."""
    _check_product(product)
    return f"/{_check_kind(kind)}/v1/{product}/cert_chain"


def crl_path(product: str, kind: str = VCEK) -> str:
    """``/vcek/v1/{P}/crl`` (the ARK's CRL) or ``/vlek/v1/{P}/crl`` (for the ASVK)."""
    _check_product(product)
    return f"/{_check_kind(kind)}/v1/{product}/crl"


def _legacy_name(path: str) -> str:
    """The file name the flat cache of earlier versions used for a KDS path (read, then moved)."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:32]
    readable = _UNSAFE.sub("_", path.lstrip("/"))[:80].strip("._")
    return f"{readable}.{digest}"


class KdsClient(ServiceClient):
    """Fetch VCEKs, certificate chains and CRLs from AMD's KDS, through the cached fetcher.

    `retries` is the number of retries after the first attempt, for connection errors,
    timeouts and 5xx answers.  Delays grow as ``backoff * 2**n`` plus jitter, unless a
    5xx answer sends Retry-After; a fetch with its retries ends within `total_timeout`
    seconds.  404, 429 and other 4xx answers are not retried.

    Keyword-only knobs guard KDS against floods (module docstring): `rate_per_second` and
    `burst` (one token bucket for every request to KDS), `max_in_flight` (distinct URLs
    fetched at once), `negative_ttl` (seconds a 404 is remembered), `transient_ttl`
    (seconds a transient failure is remembered), `memory_cache_bytes` and
    `negative_cache_bytes` (budgets of the in-memory caches of answers and of failures).
    A TTL of 0 disables that memory.  `token_wait` lets a fetch wait that many seconds for a
    token instead of failing at once (command-line use).  `clock` (monotonic seconds) and `now`
    (wall clock, for CRL freshness) are for tests.  `fetcher` is the underlying `Fetcher`.
    """

    service, label, default_base_url = SERVICE, "KDS", DEFAULT_BASE_URL
    default_rate_per_second, default_burst = DEFAULT_RATE_PER_SECOND, DEFAULT_BURST
    max_body, rate_limit_hint = MAX_BODY, _RATE_LIMIT_HINT

    # -- requests (URLs and answer checks): also what `kbs collateral` looks up -----------

    @staticmethod
    def vcek_request(product: str, chip_id: bytes, tcb: TcbVersion) -> Request:
        path = vcek_url_path(product, chip_id, tcb)

        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            check_vcek(body, where, product, chip_id, tcb)

        return Request(path, "VCEK", KIND_VCEK, validate, legacy_name=_legacy_name(path))

    @staticmethod
    def cert_chain_request(product: str, kind: str = VCEK) -> Request:
        path = cert_chain_path(product, kind)

        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            parse_cert_chain(body, where, product, kind)

        return Request(path, f"{kind} certificate chain", KIND_CERT_CHAIN, validate, legacy_name=_legacy_name(path))

    @staticmethod
    def crl_request(product: str, kind: str = VCEK) -> Request:
        path = crl_path(product, kind)

        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            check_crl_form(body, where)

        return Request(path, f"{kind} CRL", KIND_CRL, validate, valid_until=crl_valid_until,
                       legacy_name=_legacy_name(path))

    # -- public API -----------------------------------------------------------------

    async def vcek(self, product: str, chip_id: bytes, tcb: TcbVersion) -> bytes:
        """DER of the VCEK for this chip at this TCB (pass the report's REPORTED_TCB)."""
        return (await self.fetcher.fetch(self.vcek_request(product, chip_id, tcb))).body

    async def cert_chain(self, product: str, kind: str = VCEK) -> list[bytes]:
        """DER certificates [ASK, ARK] (kind VCEK) or [ASVK, ARK] (kind VLEK)."""
        request = self.cert_chain_request(product, kind)
        body = (await self.fetcher.fetch(request)).body
        return [cert.der for cert in parse_cert_chain(body, request.path, product, kind)]

    async def crl(self, product: str, kind: str = VCEK) -> bytes:
        """DER CRL of the ARK (kind VCEK) or for the ASVK (kind VLEK); signature not checked."""
        return (await self.fetcher.fetch(self.crl_request(product, kind))).body



# -- form checks of KDS answers ---------------------------------------------------------

def check_vcek(body: bytes, url: str, product: str, chip_id: bytes, tcb: TcbVersion) -> None:
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


def parse_cert_chain(body: bytes, url: str, product: str, kind: str) -> list[Certificate]:
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


def check_crl_form(body: bytes, url: str) -> None:
    try:
        pyca_x509.load_der_x509_crl(body)
    except ValueError as exc:
        raise MalformedEvidence(f"CRL from {url} does not parse as DER: {exc}", check="kds.crl") from exc


def crl_valid_until(body: bytes, headers: Mapping[str, str]) -> datetime | None:
    """A CRL is current until its nextUpdate (one without is never served from the cache)."""
    try:
        return pyca_x509.load_der_x509_crl(body).next_update_utc
    except ValueError:
        return None
