"""The extended-report certificate table (reference/snp.md §4): GUID -> blob.

The table is untrusted transport: it only offers certificates, which must then chain
to a pinned root like any other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from kbs import native
from kbs.errors import MalformedEvidence
from kbs.trust.x509 import Certificate, parse_certificate

# GUIDs stored as their 16 bytes in RFC 4122 string order.
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes  # also carries the ASVK
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes
GUID_CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea").bytes

CERT_GUIDS = {GUID_VCEK: "VCEK", GUID_VLEK: "VLEK", GUID_ASK: "ASK", GUID_ARK: "ARK"}


@dataclass(frozen=True)
class CertTable:
    certificates: tuple[Certificate, ...]
    crl: bytes | None
    extras: dict[str, bytes]  # unknown GUIDs (string form) -> blob, kept for policies


def parse_cert_table(table: bytes) -> CertTable:
    certs: list[Certificate] = []
    crl = None
    extras: dict[str, bytes] = {}
    seen: set[bytes] = set()
    for entry in native.snp_certtable_parse(table):
        if entry.guid in seen:
            raise MalformedEvidence(f"certificate table repeats GUID {uuid.UUID(bytes=entry.guid)}",
                                    check="certtable.format")
        seen.add(entry.guid)
        blob = table[entry.offset:entry.offset + entry.length]
        if entry.guid in CERT_GUIDS:
            try:
                certs.append(parse_certificate(blob))
            except MalformedEvidence as exc:
                raise MalformedEvidence(f"certificate table {CERT_GUIDS[entry.guid]} entry: {exc}",
                                        check="certtable.certificate") from exc
        elif entry.guid == GUID_CRL:
            crl = blob
        else:
            extras[str(uuid.UUID(bytes=entry.guid))] = blob
    return CertTable(certificates=tuple(certs), crl=crl, extras=extras)


def build_cert_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """Lay out (GUID, blob) pairs as a table: the host's job, used by the guest client and tests."""
    header = 24 * (len(entries) + 1)
    out = bytearray()
    blobs = bytearray()
    for guid, blob in entries:
        out += guid + (header + len(blobs)).to_bytes(4, "little") + len(blob).to_bytes(4, "little")
        blobs += blob
    return bytes(out + bytes(24) + blobs)
