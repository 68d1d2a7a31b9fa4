"""NVIDIA's OCSP responder: its requests and the checks of its answers, on the shared cached fetcher
(`kbs.trust.fetch`: memory and disk cache, single flight, retries, the request limit and 429 window,
offline mode).

A request is what NVIDIA's verifier sends (reference/gpu.md §2.1): an OCSPRequest for one certificate
with a SHA-384 CertID, POSTed as ``application/ocsp-request`` to ``https://ocsp.ndis.nvidia.com/``,
carrying a fresh 32-byte nonce extension marked critical, as NVIDIA's verifier marks it (``nonce=False``
leaves it out, for responders that do not echo one).

Caching.  A response is cached under its certificate's SHA-384 CertID (the path
``/certid/sha384/<issuer name hash>/<issuer key hash>/<serial>``, the request body left out of the key,
since every request carries another nonce), until its nextUpdate, in the fetcher's byte-bounded memory
cache and in the collateral cache directory (service ``nvidia-ocsp``, kind ``nvidia.ocsp``).  The
certificate and its issuers up to the root are recorded with it (`CHAIN_HEADER`, base64 DER, never
sent), so a cached copy can be checked on its own by `kbs collateral`.  Before anything is cached, an
answer must be an authentic response about that certificate: successful, signed by the issuer or a
responder the issuer delegated to, with ECDSA-SHA384, matching the CertID (checked at the response's
own thisUpdate: whether it is current is the caller's check, at the verification time); an answer
from the network must also echo the nonce sent.  Answers that fail are not cached, and are refused as
MalformedEvidence with the failed check's own label (`ocsp.der`, `ocsp.status`, `ocsp.cert_id`,
`ocsp.signature`, `ocsp.responder`, `ocsp.nonce`, …); fetch failures carry the fetcher's labels
(`nvidia-ocsp.not_found`, `.rate_limited`, `.throttled`, `.busy`, `.unavailable`, `.offline`, `.body`).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Unpack

from cryptography import x509 as pyca_x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from kbs.errors import ChainInvalid, KbsError, MalformedEvidence
from kbs.trust import revocation
from kbs.trust.cachedir import CacheKey
from kbs.trust.fetch import Fetched, FetchKnobs, Request, ServiceClient
from kbs.trust.nvidia.certs import NVIDIA_SIGNATURE_ALGORITHMS
from kbs.trust.revocation import CertId, cert_id_of
from kbs.trust.x509 import MAX_CERTIFICATE_SIZE, Certificate, parse_certificate

SERVICE = "nvidia-ocsp"  # the fetcher's service: cache subdirectory, check labels, logger kbs.nvidia-ocsp
KIND_OCSP = "nvidia.ocsp"  # the artefact kind in the collateral cache
DEFAULT_BASE_URL = "https://ocsp.ndis.nvidia.com"
CONTENT_TYPE = "application/ocsp-request"
CHAIN_HEADER = "X-Kbs-Certificate-Chain"  # recorded with a cached response, never sent
NONCE_SIZE = 32
MAX_BODY = revocation.MAX_OCSP_SIZE  # NVIDIA's responses are 1.3 KB with their responder certificate
MAX_CHAIN = 5  # a certificate and its issuers up to the root: at most a device chain
# Three responses per GPU (BROM, ICA, identity), the two CAs shared by every GPU of a model: a boot of an
# 8-GPU host asks for 10 at most, and each answer is good for 24 hours.
DEFAULT_RATE_PER_SECOND = 2.0
DEFAULT_BURST = 10
_RATE_LIMIT_HINT = ("responses are good for 24 hours: fill the cache with `kbs collateral add` or give an OCSP "
                    "directory to need no request")


def cert_id_path(cert_id: CertId) -> str:
    """Where a response about `cert_id` is cached: ``/certid/<hash>/<name hash>/<key hash>/<serial>`` (hex)."""
    return (f"/certid/{cert_id.hash}/{cert_id.issuer_name_hash.hex()}/{cert_id.issuer_key_hash.hex()}/"
            f"{cert_id.serial:x}")


def cache_key(cert: Certificate, issuer: Certificate) -> CacheKey:
    """The cache key of the response about `cert` (issued by `issuer`): its SHA-384 CertID."""
    return CacheKey("POST", cert_id_path(cert_id_of(cert, issuer, "sha384")))


def build_request(cert: Certificate, issuer: Certificate, nonce: bytes | None) -> bytes:
    """A DER OCSPRequest for `cert` with a SHA-384 CertID, and a critical nonce extension when given."""
    cert_id = cert_id_of(cert, issuer, "sha384")
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        cert_id.issuer_name_hash, cert_id.issuer_key_hash, cert_id.serial, hashes.SHA384())
    if nonce is not None:
        builder = builder.add_extension(pyca_x509.OCSPNonce(nonce), critical=True)
    return builder.build().public_bytes(Encoding.DER)


def encode_chain(certificates: Sequence[Certificate]) -> str:
    """Certificates as `CHAIN_HEADER` records them: base64 DER, space-separated, the certificate first."""
    return " ".join(base64.b64encode(cert.der).decode("ascii") for cert in certificates)


def decode_chain(value: str) -> list[Certificate]:
    """The certificates `encode_chain` recorded; MalformedEvidence if they are not 2..5 certificates."""
    parts = value.split()
    if not 2 <= len(parts) <= MAX_CHAIN:
        raise MalformedEvidence(f"{CHAIN_HEADER} holds {len(parts)} certificates, wanted 2 to {MAX_CHAIN} (the "
                                "certificate asked about and its issuers)", check="collateral.form")
    certs = []
    for part in parts:
        if len(part) > MAX_CERTIFICATE_SIZE * 4 // 3 + 4:
            raise MalformedEvidence(f"{CHAIN_HEADER} holds a certificate larger than {MAX_CERTIFICATE_SIZE} bytes",
                                    check="collateral.form")
        try:
            certs.append(parse_certificate(base64.b64decode(part, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise MalformedEvidence(f"{CHAIN_HEADER} is not base64 DER certificates", check="collateral.form") from exc
    return certs


def this_update(body: bytes) -> datetime:
    """The thisUpdate of a response's first single response (parsed and bounded, nothing verified)."""
    loaded = revocation.load_ocsp_response(body)
    if loaded.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise MalformedEvidence(f"OCSP responder answered {loaded.response_status.name}, not SUCCESSFUL",
                                check="ocsp.status")
    singles = list(loaded.responses)
    if not singles:
        raise MalformedEvidence("OCSP response answers for no certificate", check="ocsp.der")
    return singles[0].this_update_utc


def response_valid_until(body: bytes, headers: Mapping[str, str]) -> datetime | None:
    """A response is current until its nextUpdate (one without is never served from a cache)."""
    try:
        loaded = revocation.load_ocsp_response(body)
        if loaded.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        updates = [single.next_update_utc for single in loaded.responses]
    except KbsError:
        return None
    if not updates or any(update is None for update in updates):
        return None
    return min(update for update in updates if update is not None)


def verify_authentic(body: bytes, cert: Certificate, issuer: Certificate) -> revocation.OcspResult:
    """Every check of a response about `cert` except its freshness now: it is verified at its own thisUpdate
    (the responder's certificate must have been valid then).  ChainInvalid/MalformedEvidence naming the check."""
    return revocation.verify_ocsp_response(body, cert, issuer, this_update(body),
                                           algorithms=NVIDIA_SIGNATURE_ALGORITHMS)


class OcspClient(ServiceClient):
    """Ask NVIDIA's OCSP responder about certificates of verified chains, through the cached fetcher.

    `nonce` sends (and then requires echoed) a fresh nonce with every request.  The other knobs are the
    fetcher's (`kbs.trust.fetch.Fetcher`): `rate_per_second`, `burst`, `max_in_flight`, `negative_ttl`,
    `transient_ttl`, `memory_cache_bytes` (the byte-bounded cache of responses by CertID), `token_wait`, …
    """

    service, label, default_base_url = SERVICE, "NVIDIA OCSP", DEFAULT_BASE_URL
    default_rate_per_second, default_burst = DEFAULT_RATE_PER_SECOND, DEFAULT_BURST
    max_body, rate_limit_hint = MAX_BODY, _RATE_LIMIT_HINT

    def __init__(self, base_url: str | None = None, cache_dir: Path | None = None, offline: bool = False, *,
                 nonce: bool = True, **knobs: Unpack[FetchKnobs]) -> None:
        super().__init__(base_url, cache_dir, offline, **knobs)
        self.nonce = nonce

    def request(self, chain: Sequence[Certificate], index: int) -> Request:
        """The request about `chain[index]` (issued by `chain[index + 1]`); `chain` must be verified."""
        cert, issuer = _pair(chain, index)
        nonce = os.urandom(NONCE_SIZE) if self.nonce else None
        key = cache_key(cert, issuer)
        where = f"{cert.subject_cn!r} serial {cert.serial:#x}"

        # Refusals keep the failed check's label (ocsp.cert_id, ocsp.signature, …); MalformedEvidence, so the
        # fetcher neither caches the answer nor asks again before its transient_ttl.
        def validate(body: bytes, headers: Mapping[str, str], source: str) -> None:
            try:
                verify_authentic(body, cert, issuer)
            except (ChainInvalid, MalformedEvidence) as exc:
                raise MalformedEvidence(f"the answer from {source} about {where} is refused: {exc}",
                                        check=exc.check) from exc

        def check_nonce(body: bytes, headers: Mapping[str, str], source: str) -> None:
            assert nonce is not None
            try:
                revocation.verify_ocsp_response(body, cert, issuer, this_update(body), nonce=nonce,
                                                algorithms=NVIDIA_SIGNATURE_ALGORITHMS)
            except (ChainInvalid, MalformedEvidence) as exc:
                raise MalformedEvidence(f"the answer from {source} about {where} is refused: {exc}",
                                        check=exc.check) from exc

        return Request(key.path, f"OCSP response about {where}", KIND_OCSP, validate,
                       valid_until=response_valid_until, method="POST", body=build_request(cert, issuer, nonce),
                       headers=(("Content-Type", CONTENT_TYPE), ("Accept", "application/ocsp-response")),
                       url=self.base_url + "/", keyed_by_path=True,
                       recorded_headers=((CHAIN_HEADER, encode_chain(chain[index:])),),
                       check_network=check_nonce if nonce is not None else None)

    async def fetch(self, chain: Sequence[Certificate], index: int) -> Fetched:
        """The response about `chain[index]`: cached, or asked for (unless offline)."""
        return await self.fetcher.fetch(self.request(chain, index))

    async def stored(self, chain: Sequence[Certificate], index: int) -> Fetched | None:
        """The cached response about `chain[index]`, if any is current by the wall clock; never asks."""
        return await self.fetcher.lookup(self.request(chain, index))


def _pair(chain: Sequence[Certificate], index: int) -> tuple[Certificate, Certificate]:
    if not 0 <= index < len(chain) - 1:
        raise ValueError(f"OCSP index {index} is outside a chain of {len(chain)} certificates (the last has no issuer "
                         "in it)")
    return chain[index], chain[index + 1]
