"""A CoCo guest's SNP attestation message split in one C pass (native/snp_coco_json.c).

`snp_coco_decode` returns the re-encoded report (format not yet checked), the certificates and the
JSON text of the members Python still reads, or None: the message is not on the fast path and the
Python path (kbs.evidence.composite, kbs.evidence.snp.coco) must decode it and name any error.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbs.native._ffi import ffi, lib

# kbs_snp_coco_cert.cert_type -> sev's CertType name (KBS_SNP_COCO_CERT_* in kbs_native.h)
COCO_CERT_TYPES: dict[int, str] = {
    lib.KBS_SNP_COCO_CERT_EMPTY: "Empty",
    lib.KBS_SNP_COCO_CERT_ARK: "ARK",
    lib.KBS_SNP_COCO_CERT_ASK: "ASK",
    lib.KBS_SNP_COCO_CERT_VCEK: "VCEK",
    lib.KBS_SNP_COCO_CERT_VLEK: "VLEK",
    lib.KBS_SNP_COCO_CERT_CRL: "CRL",
}
# The C scanner's bounds, which must be kbs.jsondoc's and kbs.evidence.snp.coco's (a test holds them so).
COCO_MAX_DEPTH: int = lib.KBS_SNP_COCO_MAX_DEPTH
COCO_MAX_NODES: int = lib.KBS_SNP_COCO_MAX_NODES
COCO_MAX_CERTS: int = lib.KBS_SNP_COCO_MAX_CERTS
COCO_MAX_CERT_SIZE: int = lib.KBS_SNP_COCO_MAX_CERT_SIZE


@dataclass(frozen=True, slots=True)
class CocoSnpMessage:
    """What the scanner split out of a message: JSON texts are the members' values as sent."""

    report: bytes  # 1184 bytes, not yet format-checked (kbs_snp_parse)
    certificates: tuple[tuple[str, bytes], ...]  # (sev cert_type name, DER)
    runtime_data: bytes  # JSON text of "runtime-data"
    init_data: bytes | None  # JSON text of "init-data", None when absent
    additional_evidence: bytes | None  # JSON text of tee-evidence's "additional_evidence", None when absent


def snp_coco_decode(body: bytes) -> CocoSnpMessage | None:
    """The message split in one call with the GIL released, or None when it is not on the fast path."""
    out = ffi.new("struct kbs_snp_coco_message *")
    certs = bytearray(len(body))  # DER takes at least one body byte per byte: always room
    status = lib.kbs_snp_coco_decode(body, len(body), ffi.from_buffer(certs), len(certs), out)
    if status != lib.KBS_OK:
        return None
    cert_list = [(COCO_CERT_TYPES[c.cert_type], bytes(certs[c.offset:c.offset + c.length]))
                 for c in out.certs[0:out.cert_count]]
    init, additional = out.init_data_length, out.additional_evidence_length
    return CocoSnpMessage(
        report=bytes(ffi.buffer(out.report)),
        certificates=tuple(cert_list),
        runtime_data=body[out.runtime_data_offset:out.runtime_data_offset + out.runtime_data_length],
        init_data=body[out.init_data_offset:out.init_data_offset + init] if init else None,
        additional_evidence=(body[out.additional_evidence_offset:out.additional_evidence_offset + additional]
                             if additional else None))
