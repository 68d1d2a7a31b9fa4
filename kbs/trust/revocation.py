"""Revocation: CRLs from any issuer, and OCSP responses (NVIDIA checks its device and RIM chains by OCSP).

Both are signed collateral, checked the way go-tdx-guest's `verifyResponse` checks any: the
signature (any algorithm `kbs.trust.signature` supports, narrowed by the caller's profile), the
issuer, and the validity window around the verification time, which is an input.  Both fail closed:
a CRL or response that does not cover the certificate, or cannot be shown current, is an error.

A CRL arrives with every report or quote of a platform, so parsed CRLs are cached by their exact
bytes and verified CRL signatures by (CRL bytes, signer key): a warm check costs no DER walk and no
signature verification, while the window and the listed serials are checked on every call.  OCSP
responses share that signature cache (the response's signature, and a delegated responder's
certificate signature by the issuer), so checking a cached response again costs no ECDSA.

CRL (`check_crl`): issued and signed by the certificate's issuer (both copies of the algorithm
identifier identical; keyUsage cRLSign where the issuer has keyUsage), a complete CRL for the
certificate (no delta CRL, no indirect or partial scope, an issuingDistributionPoint that names one of
the certificate's distribution points), thisUpdate <= at < nextUpdate (a CRL without nextUpdate only
with a maximum age), and no listed serial.  Labels: `crl.der`, `crl.issuer`, `crl.signature_algorithm`,
`crl.signature`, `crl.scope`, `crl.validity`, `crl.revoked`.

OCSP (`verify_ocsp_response`, `check_ocsp`): response status successful; signed by the issuer, or by
a responder certificate carried in the response that the issuer signed, with the id-kp-OCSPSigning
extended key usage, valid at the time; the single response matched to the certificate by CertID
(issuer name hash, issuer key hash, serial, under the response's hash algorithm); thisUpdate <= at <
nextUpdate (without nextUpdate only with a maximum age; a maximum age, when given, also bounds a
response that has one); the nonce, when one is expected.  The status is then data (`OcspResult`),
or for `check_ocsp` an error unless good.  `CertId` names what a response answers for (`cert_id_of`
for a certificate, `response_cert_ids` for a response), so stores of responses can be keyed by it.
Labels: `ocsp.der`, `ocsp.status`, `ocsp.signature_algorithm`, `ocsp.signature`, `ocsp.responder`,
`ocsp.cert_id`, `ocsp.not_yet_valid`, `ocsp.stale`, `ocsp.nonce`, `ocsp.revoked`, `ocsp.unknown`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509 as pyca_x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1_modules import rfc5280

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, MalformedEvidence
from kbs.trust.chain import UNDERSTOOD_CRITICAL
from kbs.trust.signature import (
    Profile,
    SignatureAlgorithm,
    algorithm_identifier,
    certificate_algorithm,
    check_allowed,
    signature_algorithm,
    verify_signature,
)
from kbs.trust.x509 import OID_KP_OCSP_SIGNING, Certificate, der_element, parse_certificate

MAX_CRL_SIZE = 2 * 1024 * 1024  # AMD's and Intel's CRLs are a few KB; NVIDIA's per-level CRLs are small too
MAX_OCSP_SIZE = 64 * 1024  # NVIDIA's responses are 1.3 KB with their one responder certificate
MAX_OCSP_CERTIFICATES = 4

OID_CRL_DISTRIBUTION_POINTS = "2.5.29.31"
OID_OCSP_NOCHECK = "1.3.6.1.5.5.7.48.1.5"
# What pyca's lazy decoders raise on hostile fields (a Name with a BIT STRING value is a TypeError).
_DECODE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, pyca_x509.InvalidVersion)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----\s*(.+?)\s*-----END X509 CRL-----", re.S)


class CertificateRevoked(ChainInvalid):
    """A CRL lists the certificate, or an OCSP responder says it is revoked."""

    check = "crl.revoked"

    def __init__(self, message: str, *, check: str, revocation_time: datetime | None,
                 reason: str | None) -> None:
        super().__init__(message, check=check)
        self.revocation_time = revocation_time
        self.reason = reason


def _short_cn(name: pyca_x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


@dataclass(frozen=True)
class _Signed:
    """The three parts of a signed DER object (SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING, ... })."""

    tbs: bytes
    algorithm_der: bytes
    signature: bytes
    rest: tuple[tuple[int, bytes], ...]  # further elements (tag, whole TLV): an OCSP response's certificates


def _tlvs(der: bytes, start: int, end: int, *, what: str, check: str) -> list[tuple[int, int, int, int]]:
    """(tag, start of the TLV, start of its contents, end) of each element filling der[start:end]."""
    out = []
    offset = start
    while offset < end:
        contents, element_end = der_element(der, offset, end, what=what, check=check)
        out.append((der[offset], offset, contents, element_end))
        offset = element_end
    return out


def _signed_parts(der: bytes, *, what: str, check: str, extra: int = 0) -> _Signed:
    if der[:1] != b"\x30":
        raise MalformedEvidence(f"{what} is not one DER SEQUENCE", check=check)
    contents, end = der_element(der, 0, what=what, check=check)
    if end != len(der):
        raise MalformedEvidence(f"{what} has trailing bytes", check=check)
    children = _tlvs(der, contents, end, what=what, check=check)
    if not 3 <= len(children) <= 3 + extra or [c[0] for c in children[:3]] != [0x30, 0x30, 0x03]:
        raise MalformedEvidence(f"{what} is not SEQUENCE {{ signed data, algorithm, signature }}", check=check)
    tbs, algorithm, signature = children[:3]
    if signature[2] >= signature[3] or der[signature[2]] != 0:
        raise MalformedEvidence(f"{what} signature BIT STRING has unused bits", check=check)
    return _Signed(tbs=der[tbs[1]:tbs[3]], algorithm_der=der[algorithm[1]:algorithm[3]],
                   signature=der[signature[2] + 1:signature[3]],
                   rest=tuple((tag, der[tlv:child_end]) for tag, tlv, _, child_end in children[3:]))


# -- CRLs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Crl:
    """A parsed CRL: its exact signed bytes and the fields the checks read.  Not yet verified."""

    der: bytes = field(repr=False)
    issuer_der: bytes = field(repr=False)
    issuer_cn: str
    this_update: datetime
    next_update: datetime | None
    algorithm: SignatureAlgorithm
    tbs: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    parsed: pyca_x509.CertificateRevocationList = field(repr=False, compare=False)

    def revoked_entry(self, serial: int) -> pyca_x509.RevokedCertificate | None:
        return self.parsed.get_revoked_certificate_by_serial_number(serial)


def _crl_der(data: bytes) -> bytes:
    """The DER of a PEM CRL (one block, nothing else), or `data` as it is."""
    text = data.strip()
    if not text.startswith(b"-----BEGIN X509 CRL-----"):
        return data
    match = _PEM_CRL.fullmatch(text)
    if match is None:
        raise MalformedEvidence("PEM CRL is not one BEGIN/END X509 CRL block", check="crl.der")
    try:
        return base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except ValueError as exc:
        raise MalformedEvidence("PEM CRL block is not valid base64", check="crl.der") from exc


# Parsed CRLs by their input bytes, and CRL signatures verified, by (CRL DER, signer's key, algorithm).
CRL_CACHE_BYTES = 8 * 1024 * 1024


def _crl_cost(crl: Crl) -> int:
    return 4096 + 4 * len(crl.der)


_crls: ByteBoundedCache[bytes, Crl] = ByteBoundedCache(CRL_CACHE_BYTES, _crl_cost)
_SignatureKey = tuple[bytes, bytes, SignatureAlgorithm]
_signatures: ByteBoundedCache[_SignatureKey, int] = ByteBoundedCache(CRL_CACHE_BYTES, lambda cost: cost)


def _verify_once(signer: Certificate, algorithm: SignatureAlgorithm, signature: bytes, data: bytes, signed: bytes, *,
                 what: str, check: str, key_check: str) -> None:
    """`verify_signature`, remembered by (the signed object's exact bytes, the signer's key, the algorithm):
    a CRL or OCSP response checked again costs a lookup.  Failures are not remembered."""
    key = (signed, signer.spki_der, algorithm)
    signatures = _signatures
    if signatures.get(key) is None:
        verify_signature(signer, algorithm, signature, data, what=what, check=check, key_check=key_check)
        signatures.put(key, 256 + len(signed) + len(signer.spki_der))


def configure_crl_cache(max_bytes: int) -> None:
    """Replace the parsed-CRL and verified-signature caches with empty ones of this budget (0 disables them)."""
    global _crls, _signatures
    _crls = ByteBoundedCache(max_bytes, _crl_cost)
    _signatures = ByteBoundedCache(max_bytes, lambda cost: cost)


def parse_crl(data: bytes) -> Crl:
    """A DER (or PEM) CRL, bounded in size, with both copies of its signature algorithm identical.
    Cached by the exact input bytes (failures are not)."""
    if len(data) > MAX_CRL_SIZE * 2:
        raise MalformedEvidence(f"CRL is {len(data)} bytes, more than the {MAX_CRL_SIZE} allowed", check="crl.der")
    data = bytes(data)
    cache = _crls
    parsed = cache.get(data)
    if parsed is None:
        parsed = _parse_crl(data)
        cache.put(data, parsed)
    return parsed


def _parse_crl(data: bytes) -> Crl:
    der = _crl_der(data)
    if len(der) > MAX_CRL_SIZE:
        raise MalformedEvidence(f"CRL is {len(der)} bytes, more than the {MAX_CRL_SIZE} allowed", check="crl.der")
    try:
        parts = _signed_parts(der, what="CRL", check="crl.der")
        inner = _crl_inner_algorithm(parts.tbs)
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"CRL does not parse as DER: {exc}", check="crl.der") from exc
    if inner != parts.algorithm_der:
        raise ChainInvalid("CRL: the signed copy of the signature algorithm differs from the unsigned one",
                           check="crl.signature_algorithm")
    oid, params = algorithm_identifier(parts.algorithm_der, what="CRL", check="crl.signature_algorithm")
    algorithm = signature_algorithm(oid, params, what="CRL", check="crl.signature_algorithm")
    try:
        parsed = pyca_x509.load_der_x509_crl(der)
        # pyca decodes fields lazily: touch every one read later, so a malformed one fails here.
        issuer = parsed.issuer
        fields = (issuer.public_bytes(), _short_cn(issuer), parsed.last_update_utc, parsed.next_update_utc)
        _ = parsed.extensions
    except _DECODE_ERRORS as exc:
        raise MalformedEvidence(f"CRL does not parse as DER: {exc}", check="crl.der") from exc
    issuer_der, issuer_cn, this_update, next_update = fields
    return Crl(der=der, issuer_der=issuer_der, issuer_cn=issuer_cn, this_update=this_update, next_update=next_update,
               algorithm=algorithm, tbs=parts.tbs, signature=parts.signature, parsed=parsed)


def _crl_inner_algorithm(tbs: bytes) -> bytes:
    """The AlgorithmIdentifier inside tbsCertList (after the optional version)."""
    contents, end = der_element(tbs, 0, what="CRL", check="crl.der")
    children = _tlvs(tbs, contents, end, what="CRL", check="crl.der")
    if children and children[0][0] == 0x02:
        children = children[1:]
    if not children or children[0][0] != 0x30:
        raise MalformedEvidence("CRL has no signature algorithm in its signed part", check="crl.der")
    return tbs[children[0][1]:children[0][3]]


def _distribution_point_uris(cert: Certificate) -> set[str]:
    raw = cert.extensions.get(OID_CRL_DISTRIBUTION_POINTS)
    if raw is None:
        return set()
    try:
        points, rest = decoder.decode(raw, asn1Spec=rfc5280.CRLDistributionPoints())
    except PyAsn1Error as exc:
        raise MalformedEvidence(f"{cert.subject_cn} has a malformed cRLDistributionPoints extension",
                                check="certificate.extension") from exc
    if rest:
        raise MalformedEvidence(f"{cert.subject_cn} cRLDistributionPoints extension has trailing bytes",
                                check="certificate.extension")
    uris = set()
    for point in points:
        name = point["distributionPoint"]
        if not name.hasValue() or name.getName() != "fullName":
            continue
        for general in name["fullName"]:
            if general.getName() == "uniformResourceIdentifier":
                uris.add(str(general["uniformResourceIdentifier"]))
    return uris


def _check_crl_scope(crl: Crl) -> pyca_x509.IssuingDistributionPoint | None:
    """A complete, direct CRL; returns its issuingDistributionPoint (per-certificate scope), if any."""
    idp: pyca_x509.IssuingDistributionPoint | None = None
    for ext in crl.parsed.extensions:
        if isinstance(ext.value, pyca_x509.DeltaCRLIndicator):
            raise ChainInvalid(f"CRL of {crl.issuer_cn} is a delta CRL; a complete CRL is needed", check="crl.scope")
        if isinstance(ext.value, pyca_x509.IssuingDistributionPoint):
            idp = ext.value
        elif ext.critical and not isinstance(ext.value, pyca_x509.CRLNumber | pyca_x509.AuthorityKeyIdentifier):
            raise ChainInvalid(f"CRL of {crl.issuer_cn} has critical extension {ext.oid.dotted_string} that is "
                               "not understood", check="crl.scope")
    if idp is not None and (idp.indirect_crl or idp.only_some_reasons or idp.only_contains_attribute_certs
                            or idp.relative_name is not None):
        raise ChainInvalid(f"CRL of {crl.issuer_cn} covers only part of its scope (indirect, some reasons, "
                           "attribute certificates or a relative name); a complete CRL is needed", check="crl.scope")
    return idp


def _check_covers(crl: Crl, idp: pyca_x509.IssuingDistributionPoint | None, cert: Certificate) -> None:
    if idp is None:
        return
    if idp.only_contains_user_certs and cert.is_ca():
        raise ChainInvalid(f"CRL of {crl.issuer_cn} covers end-entity certificates only, {cert.subject_cn} is a CA",
                           check="crl.scope")
    if idp.only_contains_ca_certs and not cert.is_ca():
        raise ChainInvalid(f"CRL of {crl.issuer_cn} covers CA certificates only, {cert.subject_cn} is not one",
                           check="crl.scope")
    if idp.full_name:
        scope = {n.value for n in idp.full_name if isinstance(n, pyca_x509.UniformResourceIdentifier)}
        if not scope & _distribution_point_uris(cert):
            raise ChainInvalid(f"CRL of {crl.issuer_cn} is the CRL of {', '.join(sorted(scope)) or 'another point'}, "
                               f"which is not a distribution point of {cert.subject_cn}", check="crl.scope")


def check_crl(crl: bytes | Crl, issuer: Certificate, certificates: Iterable[Certificate], at: datetime, *,
              algorithms: Profile | None = None, max_age: timedelta | None = None) -> Crl:
    """`issuer`'s CRL is authentic, current at `at`, covers each of `certificates` and lists none of them.

    `issuer` must already be trusted (verified by the chain walker).  `max_age` accepts a CRL without
    nextUpdate as long as it is younger than that (and, when given, bounds every CRL's age)."""
    parsed = crl if isinstance(crl, Crl) else parse_crl(crl)
    try:
        _check_crl(parsed, issuer, certificates, at, algorithms, max_age)
    except _DECODE_ERRORS as exc:  # a field pyca decodes lazily (entries, their extensions)
        raise MalformedEvidence(f"CRL does not parse as DER: {exc}", check="crl.der") from exc
    return parsed


def _check_crl(parsed: Crl, issuer: Certificate, certificates: Iterable[Certificate], at: datetime,
               algorithms: Profile | None, max_age: timedelta | None) -> None:
    if parsed.issuer_der != issuer.subject_der:
        raise ChainInvalid(f"CRL is issued by {parsed.issuer_cn!r}, wanted {issuer.subject_cn!r}", check="crl.issuer")
    usage = issuer.key_usage()
    if usage is not None and "cRLSign" not in usage:
        raise ChainInvalid(f"{issuer.subject_cn}'s keyUsage lacks cRLSign: it may not sign CRLs", check="crl.issuer")
    check_allowed(parsed.algorithm, algorithms, what=f"CRL of {issuer.subject_cn}", check="crl.signature_algorithm")
    _verify_once(issuer, parsed.algorithm, parsed.signature, parsed.tbs, parsed.der, what="CRL",
                 check="crl.signature", key_check="crl.signature")
    idp = _check_crl_scope(parsed)
    _check_window("CRL", parsed.this_update, parsed.next_update, at, max_age,
                  stale_check="crl.validity", early_check="crl.validity")
    for cert in certificates:
        if cert.issuer_der != issuer.subject_der:
            raise ChainInvalid(f"{cert.subject_cn} was issued by {cert.issuer_cn!r}, not by the CRL's issuer "
                               f"{issuer.subject_cn!r}", check="crl.issuer")
        _check_covers(parsed, idp, cert)
        entry = parsed.revoked_entry(cert.serial)
        if entry is not None:
            reason = _entry_reason(entry)
            raise CertificateRevoked(
                f"{cert.subject_cn} serial {cert.serial:#x} is revoked by the {issuer.subject_cn} CRL since "
                f"{entry.revocation_date_utc.isoformat()}" + (f" ({reason})" if reason else ""),
                check="crl.revoked", revocation_time=entry.revocation_date_utc, reason=reason)


def _entry_reason(entry: pyca_x509.RevokedCertificate) -> str | None:
    for ext in entry.extensions:
        if isinstance(ext.value, pyca_x509.CRLReason):
            return str(ext.value.reason.value)
    return None


def _check_window(what: str, this_update: datetime, next_update: datetime | None, at: datetime,
                  max_age: timedelta | None, *, stale_check: str, early_check: str) -> None:
    if at < this_update:
        raise ChainInvalid(f"{what} is not valid before {this_update.isoformat()} (thisUpdate), verification "
                           f"time is {at.isoformat()}", check=early_check)
    if next_update is not None and at >= next_update:
        raise ChainInvalid(f"{what} expired at {next_update.isoformat()} (nextUpdate), verification time is "
                           f"{at.isoformat()}; fetch a fresh one", check=stale_check)
    if next_update is None and max_age is None:
        raise ChainInvalid(f"{what} has no nextUpdate, so nothing says until when it holds (configure a "
                           "maximum age to accept such answers)", check=stale_check)
    if max_age is not None and at - this_update > max_age:
        raise ChainInvalid(f"{what} was issued at {this_update.isoformat()}, more than the maximum age of "
                           f"{max_age} before the verification time {at.isoformat()}", check=stale_check)


# -- OCSP ------------------------------------------------------------------------------------------

OcspStatus = Literal["good", "revoked", "unknown"]
_STATUS: dict[ocsp.OCSPCertStatus, OcspStatus] = {
    ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked",
    ocsp.OCSPCertStatus.UNKNOWN: "unknown"}
_CERT_ID_HASHES = frozenset({"sha1", "sha256", "sha384", "sha512"})


@dataclass(frozen=True, order=True)
class CertId:
    """What an OCSP single response answers for (RFC 6960 §4.1.1): the issuer's name and key hashed
    under `hash` ('sha1', 'sha256', 'sha384', 'sha512'), and the serial."""

    hash: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int

    def __str__(self) -> str:
        return f"{self.hash}:{self.issuer_name_hash.hex()[:8]}…/{self.issuer_key_hash.hex()[:8]}…/{self.serial:#x}"


def cert_id_of(cert: Certificate, issuer: Certificate, hash_name: str = "sha384") -> CertId:
    """The CertID of `cert` issued by `issuer` under `hash_name` (NVIDIA asks with SHA-384)."""
    if hash_name not in _CERT_ID_HASHES:
        raise ValueError(f"CertID hash {hash_name!r} is not one of {', '.join(sorted(_CERT_ID_HASHES))}")
    return CertId(hash_name, hashlib.new(hash_name, issuer.subject_der).digest(),
                  hashlib.new(hash_name, issuer.public_key_bits).digest(), cert.serial)


def response_cert_ids(response: ocsp.OCSPResponse) -> list[CertId]:
    """The CertIDs a (successful) response answers for, under hashes this module accepts."""
    out = []
    for single in response.responses:
        try:
            name = single.hash_algorithm.name
        except (ValueError, UnsupportedAlgorithm):
            continue
        if name in _CERT_ID_HASHES:
            out.append(CertId(name, single.issuer_name_hash, single.issuer_key_hash, single.serial_number))
    return out


@dataclass(frozen=True)
class OcspResult:
    """A verified OCSP answer for one certificate."""

    status: OcspStatus
    serial: int
    this_update: datetime
    next_update: datetime | None
    produced_at: datetime
    responder: str  # subject CN of the certificate whose key signed the response
    delegated: bool  # a responder certificate the issuer issued, rather than the issuer itself
    revocation_time: datetime | None = None
    revocation_reason: str | None = None


def load_ocsp_response(data: bytes) -> ocsp.OCSPResponse:
    """A DER OCSP response, bounded in size, with every field the checks read decoded (nothing verified).
    MalformedEvidence (`ocsp.der`) if it does not parse."""
    return _load_ocsp(data)


def _load_ocsp(data: bytes) -> ocsp.OCSPResponse:
    if len(data) > MAX_OCSP_SIZE:
        raise MalformedEvidence(f"OCSP response is {len(data)} bytes, more than the {MAX_OCSP_SIZE} allowed",
                                check="ocsp.der")
    try:
        loaded = ocsp.load_der_ocsp_response(bytes(data))
        if loaded.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
            # pyca decodes fields lazily: touch the ones read later, so a malformed one fails here.
            _ = (loaded.responder_name, loaded.responder_key_hash, loaded.produced_at_utc, loaded.extensions,
                 loaded.certificates)
            for single in loaded.responses:
                _ = (single.serial_number, single.issuer_name_hash, single.issuer_key_hash, single.this_update_utc,
                     single.next_update_utc, single.certificate_status, single.revocation_time_utc,
                     single.revocation_reason)
    except _DECODE_ERRORS as exc:
        raise MalformedEvidence(f"OCSP response does not parse as DER: {exc}", check="ocsp.der") from exc
    return loaded


def _basic_response(data: bytes) -> _Signed:
    """The BasicOCSPResponse inside OCSPResponse { status, [0] { type, OCTET STRING } }, cut out of the DER."""
    what, check = "OCSP response", "ocsp.der"
    contents, end = der_element(data, 0, what=what, check=check)
    if end != len(data):
        raise MalformedEvidence("OCSP response has trailing bytes", check=check)
    children = _tlvs(data, contents, end, what=what, check=check)
    if len(children) != 2 or children[1][0] != 0xA0:
        raise MalformedEvidence("OCSP response carries no response bytes", check=check)
    _, _, wrapper_contents, wrapper_end = children[1]
    seq_contents, seq_end = der_element(data, wrapper_contents, wrapper_end, what=what, check=check)
    parts = _tlvs(data, seq_contents, seq_end, what=what, check=check)
    if len(parts) != 2 or parts[1][0] != 0x04:
        raise MalformedEvidence("OCSP response bytes are not { type, OCTET STRING }", check=check)
    basic = data[parts[1][2]:parts[1][3]]
    signed = _signed_parts(basic, what=what, check=check, extra=1)
    if signed.rest and signed.rest[0][0] != 0xA0:
        raise MalformedEvidence("OCSP response has an unexpected element after its signature", check=check)
    return signed


def _embedded_certificates(signed: _Signed) -> list[Certificate]:
    """The certificates of BasicOCSPResponse's [0] EXPLICIT SEQUENCE OF Certificate, at most a few."""
    if not signed.rest:
        return []
    wrapper = signed.rest[0][1]
    what, check = "OCSP response", "ocsp.der"
    contents, end = der_element(wrapper, 0, what=what, check=check)
    if wrapper[contents:contents + 1] != b"\x30":
        raise MalformedEvidence("OCSP response certificates are not a SEQUENCE", check=check)
    seq_contents, seq_end = der_element(wrapper, contents, end, what=what, check=check)
    if seq_end != end:
        raise MalformedEvidence("OCSP response certificates have trailing bytes", check=check)
    children = _tlvs(wrapper, seq_contents, seq_end, what=what, check=check)
    if len(children) > MAX_OCSP_CERTIFICATES:
        raise MalformedEvidence(f"OCSP response carries {len(children)} certificates, more than the "
                                f"{MAX_OCSP_CERTIFICATES} allowed", check=check)
    try:
        return [parse_certificate(wrapper[tlv:child_end]) for _, tlv, _, child_end in children]
    except MalformedEvidence as exc:  # a response's own bytes: named as the response's
        raise MalformedEvidence(f"OCSP response carries a certificate that does not parse: {exc}",
                                check=check) from exc


def _responder_matches(response: ocsp.OCSPResponse, cert: Certificate) -> bool:
    if response.responder_key_hash is not None:
        return hmac.compare_digest(hashlib.sha1(cert.public_key_bits).digest(), response.responder_key_hash)
    name = response.responder_name
    return name is not None and name.public_bytes() == cert.subject_der


def _check_responder(responder: Certificate, issuer: Certificate, at: datetime, allowed: Profile | None) -> None:
    """A delegated responder: issued by `issuer`, for OCSP signing, valid at `at` (RFC 6960 §4.2.2.2)."""
    who = f"OCSP responder {responder.subject_cn!r}"
    if responder.issuer_der != issuer.subject_der:
        raise ChainInvalid(f"{who} was issued by {responder.issuer_cn!r}, not by {issuer.subject_cn!r}, the issuer "
                           "of the certificate asked about", check="ocsp.responder")
    try:
        algorithm = certificate_algorithm(responder)
        check_allowed(algorithm, allowed, what=responder.subject_cn)
        _verify_once(issuer, algorithm, responder.signature, responder.tbs, responder.der, what=responder.subject_cn,
                     check="chain.signature", key_check="chain.key_type")
    except ChainInvalid as exc:
        raise ChainInvalid(f"{who} is not signed by {issuer.subject_cn!r}: {exc}", check="ocsp.responder") from exc
    purposes = responder.extended_key_usage() or frozenset()
    if OID_KP_OCSP_SIGNING not in purposes:
        raise ChainInvalid(f"{who} lacks the id-kp-OCSPSigning extended key usage, so {issuer.subject_cn!r} did not "
                           "delegate OCSP to it", check="ocsp.responder")
    usage = responder.key_usage()
    if usage is not None and "digitalSignature" not in usage:
        raise ChainInvalid(f"{who} keyUsage lacks digitalSignature", check="ocsp.responder")
    unknown = sorted(responder.critical_extensions - UNDERSTOOD_CRITICAL - {OID_OCSP_NOCHECK})
    if unknown:
        raise ChainInvalid(f"{who} has critical extension(s) {', '.join(unknown)} that are not understood",
                           check="ocsp.responder")
    if not responder.not_before <= at <= responder.not_after:
        raise ChainInvalid(f"{who} is valid from {responder.not_before.isoformat()} to "
                           f"{responder.not_after.isoformat()}, verification time is {at.isoformat()}",
                           check="ocsp.responder")


def _signer(response: ocsp.OCSPResponse, signed: _Signed, issuer: Certificate, at: datetime,
            allowed: Profile | None) -> tuple[Certificate, bool]:
    if _responder_matches(response, issuer):
        return issuer, False
    for cert in _embedded_certificates(signed):
        if _responder_matches(response, cert):
            _check_responder(cert, issuer, at, allowed)
            return cert, True
    by = (f"key hash {response.responder_key_hash.hex()}" if response.responder_key_hash is not None
          else f"name {_short_cn(response.responder_name)!r}" if response.responder_name is not None else "nothing")
    raise ChainInvalid(f"OCSP response is signed by a responder identified by {by}, which is neither "
                       f"{issuer.subject_cn!r} nor a responder certificate carried in the response",
                       check="ocsp.responder")


def _cert_id_matches(single: ocsp.OCSPSingleResponse, cert: Certificate, issuer: Certificate) -> bool:
    try:
        name = single.hash_algorithm.name
    except (ValueError, UnsupportedAlgorithm):
        return False
    if name not in _CERT_ID_HASHES or single.serial_number != cert.serial:
        return False
    wanted = cert_id_of(cert, issuer, name)
    return (hmac.compare_digest(wanted.issuer_name_hash, single.issuer_name_hash)
            and hmac.compare_digest(wanted.issuer_key_hash, single.issuer_key_hash))


def _single_for(response: ocsp.OCSPResponse, cert: Certificate, issuer: Certificate) -> ocsp.OCSPSingleResponse:
    singles = list(response.responses)
    matching = [s for s in singles if _cert_id_matches(s, cert, issuer)]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise ChainInvalid(f"OCSP response answers {len(matching)} times for {cert.subject_cn} serial "
                           f"{cert.serial:#x}; wanted once", check="ocsp.cert_id")
    serials = ", ".join(f"{s.serial_number:#x}" for s in singles) or "nothing"
    raise ChainInvalid(f"OCSP response is about serial {serials}, not about {cert.subject_cn} serial {cert.serial:#x} "
                       f"issued by {issuer.subject_cn} (CertID: issuer name hash, issuer key hash, serial)",
                       check="ocsp.cert_id")


def _check_nonce(response: ocsp.OCSPResponse, nonce: bytes) -> None:
    try:
        found = response.extensions.get_extension_for_class(pyca_x509.OCSPNonce).value.nonce
    except pyca_x509.ExtensionNotFound:
        raise ChainInvalid("OCSP response carries no nonce, one was sent", check="ocsp.nonce") from None
    if not hmac.compare_digest(found, nonce):
        raise ChainInvalid(f"OCSP response nonce is {found.hex()}, wanted {nonce.hex()}", check="ocsp.nonce")


def verify_ocsp_response(response: bytes, cert: Certificate, issuer: Certificate, at: datetime, *,
                         nonce: bytes | None = None, max_age: timedelta | None = None,
                         algorithms: Profile | None = None) -> OcspResult:
    """Every check of an OCSP response about `cert` (issued by the trusted `issuer`), except its verdict:
    good, revoked and unknown are all returned.  Raises ChainInvalid/MalformedEvidence naming the check."""
    loaded = _load_ocsp(response)
    try:
        return _verify_ocsp(loaded, bytes(response), cert, issuer, at, nonce, max_age, algorithms)
    except _DECODE_ERRORS as exc:  # a field pyca decodes lazily
        raise MalformedEvidence(f"OCSP response does not parse as DER: {exc}", check="ocsp.der") from exc


def _verify_ocsp(loaded: ocsp.OCSPResponse, response: bytes, cert: Certificate, issuer: Certificate, at: datetime,
                 nonce: bytes | None, max_age: timedelta | None, algorithms: Profile | None) -> OcspResult:
    if loaded.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ChainInvalid(f"OCSP responder answered {loaded.response_status.name}, not SUCCESSFUL",
                           check="ocsp.status")
    signed = _basic_response(response)
    oid, params = algorithm_identifier(signed.algorithm_der, what="OCSP response", check="ocsp.signature_algorithm")
    algorithm = signature_algorithm(oid, params, what="OCSP response", check="ocsp.signature_algorithm")
    check_allowed(algorithm, algorithms, what="OCSP response", check="ocsp.signature_algorithm")
    signer, delegated = _signer(loaded, signed, issuer, at, algorithms)
    _verify_once(signer, algorithm, signed.signature, signed.tbs, response,
                 what=f"OCSP response about {cert.subject_cn}", check="ocsp.signature", key_check="ocsp.signature")
    if cert.issuer_der != issuer.subject_der:
        raise ChainInvalid(f"{cert.subject_cn} was issued by {cert.issuer_cn!r}, not by {issuer.subject_cn!r}",
                           check="ocsp.cert_id")
    single = _single_for(loaded, cert, issuer)
    _check_window(f"OCSP response about {cert.subject_cn}", single.this_update_utc, single.next_update_utc, at,
                  max_age, stale_check="ocsp.stale", early_check="ocsp.not_yet_valid")
    if nonce is not None:
        _check_nonce(loaded, nonce)
    status = _STATUS[single.certificate_status]
    reason = single.revocation_reason
    return OcspResult(status=status, serial=cert.serial, this_update=single.this_update_utc,
                      next_update=single.next_update_utc, produced_at=loaded.produced_at_utc,
                      responder=signer.subject_cn, delegated=delegated,
                      revocation_time=single.revocation_time_utc if status == "revoked" else None,
                      revocation_reason=str(reason.value) if reason is not None else None)


def check_ocsp(response: bytes, cert: Certificate, issuer: Certificate, at: datetime, *,
               nonce: bytes | None = None, max_age: timedelta | None = None,
               algorithms: Profile | None = None) -> OcspResult:
    """`verify_ocsp_response`, and the certificate must be good: revoked raises CertificateRevoked
    (`ocsp.revoked`, with the time and reason), unknown raises ChainInvalid (`ocsp.unknown`)."""
    result = verify_ocsp_response(response, cert, issuer, at, nonce=nonce, max_age=max_age, algorithms=algorithms)
    if result.status == "revoked":
        when = result.revocation_time.isoformat() if result.revocation_time else "an unknown time"
        reason = f" ({result.revocation_reason})" if result.revocation_reason else ""
        raise CertificateRevoked(f"{cert.subject_cn} serial {cert.serial:#x} is revoked since {when}{reason}, says "
                                 f"OCSP responder {result.responder!r}", check="ocsp.revoked",
                                 revocation_time=result.revocation_time, reason=result.revocation_reason)
    if result.status == "unknown":
        raise ChainInvalid(f"OCSP responder {result.responder!r} does not know {cert.subject_cn} serial "
                           f"{cert.serial:#x}", check="ocsp.unknown")
    return result
