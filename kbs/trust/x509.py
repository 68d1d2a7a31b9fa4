"""X.509 certificates parsed with pyasn1 (their signatures are checked in `kbs.trust.signature`,
chains are walked in `kbs.trust.chain`).

AMD's VCEK and VLEK certificates have serial number 0, which pyca/cryptography's loader
only tolerates with a deprecation warning (and says it will refuse).  Parsing every
vendor certificate here keeps verification independent of that leniency: the exact
signed bytes (tbsCertificate as it appears on the wire, never re-encoded) are cut out of
the DER, and fields are decoded with pyasn1's strict DER decoder.

pyasn1 is slow (milliseconds per certificate, far more for a hostile one), so untrusted
bytes meet cheap checks first: the size is bounded, and a plain DER walk over the outer
structure counts the extensions, before pyasn1 decodes anything.  Parsed certificates are
cached by their exact bytes in a byte-bounded LRU.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1_modules import rfc5280

from kbs.cache import ByteBoundedCache
from kbs.errors import MalformedEvidence

OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_SECP384R1 = "1.3.132.0.34"
OID_SECP256R1 = "1.2.840.10045.3.1.7"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_COMMON_NAME = "2.5.4.3"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
OID_EXTENDED_KEY_USAGE = "2.5.29.37"
OID_KP_OCSP_SIGNING = "1.3.6.1.5.5.7.3.9"

# KeyUsage bit names in bit order (RFC 5280 §4.2.1.3).
KEY_USAGE_BITS = ("digitalSignature", "nonRepudiation", "keyEncipherment", "dataEncipherment", "keyAgreement",
                  "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly")

_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)

# Vendor certificates (AMD VCEK/ASK/ARK, Intel PCK, NVIDIA) are 1-3 KB with at most 11 extensions.
MAX_CERTIFICATE_SIZE = 16 * 1024
MAX_EXTENSIONS = 32
MAX_CERTIFICATES = 16  # per load_certificates input: a chain is 2-4, an operator's root file 1-3
# A parsed certificate costs about 6x its DER in memory (pyasn1 copies, dict, dataclass); charged so.
CERTIFICATE_CACHE_BYTES = 16 * 1024 * 1024
_CACHE_COST_BASE = 2048
_CACHE_COST_FACTOR = 6


def der_element(data: bytes, offset: int, limit: int | None = None, *, what: str = "certificate",
                check: str = "certificate.der") -> tuple[int, int]:
    """(start of contents, end of element) of the DER TLV at `offset`, bounds-checked against
    `limit` (default: the end of `data`).  Single-byte tags and definite lengths only.
    `what` and `check` name the object in the MalformedEvidence raised (CRLs, OCSP responses)."""
    limit = len(data) if limit is None else limit
    if offset + 2 > limit:
        raise MalformedEvidence(f"{what} DER is truncated", check=check)
    if data[offset] & 0x1F == 0x1F:
        raise MalformedEvidence(f"{what} DER uses a multi-byte tag", check=check)
    first_len = data[offset + 1]
    header = 2
    if first_len < 0x80:
        length = first_len
    else:
        count = first_len & 0x7F
        if count == 0 or count > 4 or offset + 2 + count > limit:
            raise MalformedEvidence(f"{what} DER has a bad length", check=check)
        length = int.from_bytes(data[offset + 2:offset + 2 + count], "big")
        header += count
    end = offset + header + length
    if end > limit:
        raise MalformedEvidence(f"{what} DER is truncated", check=check)
    return offset + header, end


def der_children(data: bytes, start: int, end: int, *, what: str = "certificate",
                 check: str = "certificate.der") -> Iterator[tuple[int, int, int]]:
    """(tag, start of contents, end) of each TLV in data[start:end], which they must fill exactly."""
    offset = start
    while offset < end:
        contents, element_end = der_element(data, offset, end, what=what, check=check)
        yield data[offset], contents, element_end
        offset = element_end


def _check_size(size: int) -> None:
    if size > MAX_CERTIFICATE_SIZE:
        raise MalformedEvidence(f"certificate is {size} bytes, more than the {MAX_CERTIFICATE_SIZE} allowed "
                                "(vendor certificates are 1-3 KB)", check="certificate.size")


def _precheck(der: bytes) -> bytes:
    """Cheap checks before pyasn1 sees the bytes: size, outer DER structure, extension count.

    Returns the tbsCertificate bytes exactly as they were signed.
    """
    _check_size(len(der))
    if not der or der[0] != 0x30:
        raise MalformedEvidence("certificate is not one DER SEQUENCE", check="certificate.der")
    contents, end = der_element(der, 0)
    if end != len(der):
        raise MalformedEvidence("certificate is not one DER SEQUENCE (trailing bytes)", check="certificate.der")
    if contents >= end or der[contents] != 0x30:
        raise MalformedEvidence("certificate's tbsCertificate is not a SEQUENCE", check="certificate.der")
    tbs_contents, tbs_end = der_element(der, contents, end)
    for tag, ext_contents, ext_end in der_children(der, tbs_contents, tbs_end):
        if tag != 0xA3:  # [3] EXPLICIT Extensions
            continue
        if ext_contents >= ext_end or der[ext_contents] != 0x30:
            raise MalformedEvidence("certificate extensions are not a SEQUENCE", check="certificate.der")
        list_contents, list_end = der_element(der, ext_contents, ext_end)
        count = sum(1 for _ in der_children(der, list_contents, list_end))
        if count > MAX_EXTENSIONS:
            raise MalformedEvidence(f"certificate has {count} extensions, more than the {MAX_EXTENSIONS} "
                                    "allowed (vendor certificates have at most 11)",
                                    check="certificate.extensions")
    return der[contents:tbs_end]


def _cn(name: rfc5280.Name) -> str:
    for rdn in name["rdnSequence"]:
        for attr in rdn:
            if str(attr["type"]) == OID_COMMON_NAME:
                value, _ = decoder.decode(bytes(attr["value"]))
                return str(value)
    return ""


@dataclass(frozen=True)
class Certificate:
    """The fields of one certificate that verification needs, plus its exact bytes."""

    der: bytes
    tbs: bytes
    version: int
    serial: int
    subject_cn: str
    issuer_cn: str
    subject_der: bytes
    issuer_der: bytes
    not_before: datetime
    not_after: datetime
    spki_der: bytes
    spki_algorithm: str
    spki_curve: str | None
    public_key_bits: bytes
    signature_algorithm: str
    signature_parameters: bytes
    tbs_signature_algorithm: str
    tbs_signature_parameters: bytes
    signature: bytes
    extensions: dict[str, bytes] = field(repr=False)
    critical_extensions: frozenset[str] = frozenset()

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, lowercase hex: the form roots are pinned by.

        Computed once: parsed certificates are shared (cached by bytes) across requests."""
        return hashlib.sha256(self.der).hexdigest()

    def is_ca(self) -> bool:
        constraints = self.basic_constraints()
        return constraints is not None and constraints[0]

    def basic_constraints(self) -> tuple[bool, int | None] | None:
        """(cA, pathLenConstraint) from basicConstraints, or None when the extension is absent."""
        raw = self.extensions.get(OID_BASIC_CONSTRAINTS)
        if raw is None:
            return None
        bc = self._decode_extension(raw, rfc5280.BasicConstraints(), "basicConstraints")
        path_len = int(bc["pathLenConstraint"]) if bc["pathLenConstraint"].hasValue() else None
        return bool(bc["cA"]), path_len

    def key_usage(self) -> frozenset[str] | None:
        """The KeyUsage bits set (names as in RFC 5280), or None when the extension is absent.

        Decoded once: a CRL check reads its issuer's keyUsage on every call."""
        return self._key_usage

    @functools.cached_property
    def _key_usage(self) -> frozenset[str] | None:
        raw = self.extensions.get(OID_KEY_USAGE)
        if raw is None:
            return None
        bits = self._decode_extension(raw, rfc5280.KeyUsage(), "keyUsage")
        return frozenset(name for i, name in enumerate(KEY_USAGE_BITS) if i < len(bits) and bits[i])

    def extended_key_usage(self) -> frozenset[str] | None:
        """The ExtendedKeyUsage purpose OIDs, or None when the extension is absent."""
        raw = self.extensions.get(OID_EXTENDED_KEY_USAGE)
        if raw is None:
            return None
        eku = self._decode_extension(raw, rfc5280.ExtKeyUsageSyntax(), "extendedKeyUsage")
        return frozenset(str(oid) for oid in eku)

    def _decode_extension(self, raw: bytes, spec: Any, name: str) -> Any:
        try:
            value, rest = decoder.decode(raw, asn1Spec=spec)
        except PyAsn1Error as exc:
            raise MalformedEvidence(f"{self.subject_cn} has a malformed {name} extension",
                                    check="certificate.extension") from exc
        if rest:
            raise MalformedEvidence(f"{self.subject_cn} {name} extension has trailing bytes",
                                    check="certificate.extension")
        return value


def _cache_cost(cert: Certificate) -> int:
    return _CACHE_COST_BASE + _CACHE_COST_FACTOR * len(cert.der)


_cache: ByteBoundedCache[bytes, Certificate] = ByteBoundedCache(CERTIFICATE_CACHE_BYTES, _cache_cost)


def configure_certificate_cache(max_bytes: int) -> None:
    """Replace the parsed-certificate cache with an empty one of this budget (0 disables it)."""
    global _cache
    _cache = ByteBoundedCache(max_bytes, _cache_cost)


def is_parsed(der: bytes) -> bool:
    """Whether `parse_certificate(der)` would be a cache hit (microseconds, not pyasn1's milliseconds)."""
    return _cache.get(bytes(der)) is not None


def parse_certificate(der: bytes) -> Certificate:
    """Parse a DER certificate; raise MalformedEvidence naming what is wrong.

    The size is checked first, then the cache, then the DER walk (size, extension count)
    before pyasn1 decodes anything.  Parsed certificates are cached by their exact bytes in
    a byte-bounded LRU: pyasn1 takes milliseconds per certificate, and the same VCEK, ASK
    and ARK arrive with every report of a host.
    """
    _check_size(len(der))
    der = bytes(der)
    cache = _cache
    cert = cache.get(der)
    if cert is None:
        cert = _parse_checked(der)
        cache.put(der, cert)
    return cert


def _parse_checked(der: bytes) -> Certificate:
    tbs = _precheck(der)
    try:
        return _parse(der, tbs)
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise MalformedEvidence(f"certificate does not parse as DER X.509: {exc}",
                                check="certificate.der") from exc


def _parse(der: bytes, tbs_bytes: bytes) -> Certificate:
    cert, rest = decoder.decode(der, asn1Spec=rfc5280.Certificate())
    if rest:
        raise MalformedEvidence("certificate has trailing bytes", check="certificate.der")
    tbs = cert["tbsCertificate"]
    spki = tbs["subjectPublicKeyInfo"]
    spki_alg = str(spki["algorithm"]["algorithm"])
    curve = None
    if spki_alg == OID_EC_PUBLIC_KEY and spki["algorithm"]["parameters"].hasValue():
        curve_oid, _ = decoder.decode(bytes(spki["algorithm"]["parameters"]))
        curve = str(curve_oid)
    extensions = {}
    critical = set()
    if tbs["extensions"].hasValue():
        for ext in tbs["extensions"]:
            oid = str(ext["extnID"])
            if oid in extensions:
                raise MalformedEvidence(f"certificate repeats extension {oid}", check="certificate.der")
            extensions[oid] = bytes(ext["extnValue"])
            if bool(ext["critical"]):
                critical.add(oid)
    if len(cert["signature"]) % 8:
        # DER signatures are whole bytes; unused bits would let two encodings carry one signature.
        raise MalformedEvidence("certificate signature BIT STRING has unused bits", check="certificate.der")
    sig_params = cert["signatureAlgorithm"]["parameters"]
    tbs_params = tbs["signature"]["parameters"]
    return Certificate(
        der=der,
        tbs=tbs_bytes,
        version=int(tbs["version"]) + 1,
        serial=int(tbs["serialNumber"]),
        subject_cn=_cn(tbs["subject"]),
        issuer_cn=_cn(tbs["issuer"]),
        subject_der=_encode(tbs["subject"]),
        issuer_der=_encode(tbs["issuer"]),
        not_before=tbs["validity"]["notBefore"].getComponent().asDateTime,
        not_after=tbs["validity"]["notAfter"].getComponent().asDateTime,
        spki_der=_encode(spki),
        spki_algorithm=spki_alg,
        spki_curve=curve,
        public_key_bits=spki["subjectPublicKey"].asOctets(),
        signature_algorithm=str(cert["signatureAlgorithm"]["algorithm"]),
        signature_parameters=bytes(sig_params) if sig_params.hasValue() else b"",
        tbs_signature_algorithm=str(tbs["signature"]["algorithm"]),
        tbs_signature_parameters=bytes(tbs_params) if tbs_params.hasValue() else b"",
        signature=cert["signature"].asOctets(),
        extensions=extensions,
        critical_extensions=frozenset(critical),
    )


def _encode(value: object) -> bytes:
    return bytes(encoder.encode(value))


def load_certificates(data: bytes) -> list[Certificate]:
    """Every certificate in a file: one or more PEM blocks (at most MAX_CERTIFICATES), or a
    single DER certificate.  Counts and sizes are checked before anything is decoded."""
    blocks: list[bytes] = []
    for match in _PEM_RE.finditer(data):
        if len(blocks) == MAX_CERTIFICATES:
            raise MalformedEvidence(f"input holds more than {MAX_CERTIFICATES} PEM certificates, "
                                    f"the most accepted at once", check="certificate.count")
        text = b"".join(match.group(1).split())
        _check_size(len(text) // 4 * 3 - text[-2:].count(b"="))  # the decoded size, before decoding
        blocks.append(text)
    if blocks:
        ders = []
        for block in blocks:
            try:
                ders.append(base64.b64decode(block, validate=True))
            except ValueError as exc:
                raise MalformedEvidence("PEM certificate block is not valid base64",
                                        check="certificate.pem") from exc
        return [parse_certificate(d) for d in ders]
    if data[:1] == b"\x30":
        return [parse_certificate(data)]
    raise MalformedEvidence("file holds neither PEM certificates nor a DER certificate",
                            check="certificate.pem")
