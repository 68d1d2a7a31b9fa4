"""Synthetic TDX DCAP quotes (v4, and v5 with a TD 1.5 body) signed by keys the tests hold.

The layout is reference/tdx.md §1: header (48) [+ v5 body descriptor (6)] + TD report body, then the
signature data: quote signature, attestation key, certification data type 6 holding the QE report,
its signature by the PCK key, the QE auth data and the type-5 PEM PCK chain.  The QE report binds
the attestation key: report_data = SHA-256(attestation key ‖ auth data) ‖ 32 zero bytes.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tests.intel_synth import (
    DEFAULT_TEE_TCB_SVN,
    TD_QE_ATTRIBUTES,
    TD_QE_MRSIGNER,
    IssuedPck,
    SyntheticIntel,
    raw_signature,
)

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TD10_SIZE, TD15_SIZE = 584, 648


def raw_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


@dataclass
class TdBody:
    """The TD report fields a test sets; the rest are zero (as Intel's TDQE leaves them)."""

    tee_tcb_svn: bytes = DEFAULT_TEE_TCB_SVN
    mr_seam: bytes = b"\x11" * 48
    mr_signer_seam: bytes = bytes(48)
    seam_attributes: bytes = bytes(8)
    td_attributes: int = 0x10000000  # SEPT_VE_DISABLE; bit 0 would be DEBUG
    xfam: int = 0x0006_02E7
    mr_td: bytes = b"\x22" * 48
    mr_config_id: bytes = bytes(48)
    mr_owner: bytes = bytes(48)
    mr_owner_config: bytes = bytes(48)
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48), bytes(48), bytes(48), bytes(48))
    report_data: bytes = bytes(64)
    tee_tcb_svn2: bytes | None = None  # TD 1.5 (v5 body type 3) only
    mr_service_td: bytes = bytes(48)

    def encode(self) -> bytes:
        body = (self.tee_tcb_svn + self.mr_seam + self.mr_signer_seam + self.seam_attributes
                + struct.pack("<QQ", self.td_attributes, self.xfam) + self.mr_td + self.mr_config_id + self.mr_owner
                + self.mr_owner_config + b"".join(self.rtmrs) + self.report_data)
        assert len(body) == TD10_SIZE
        if self.tee_tcb_svn2 is not None:
            body += self.tee_tcb_svn2 + self.mr_service_td
        return body


@dataclass
class QeReport:
    isv_svn: int = 4
    isv_prod_id: int = 2
    misc_select: int = 0
    attributes: bytes = TD_QE_ATTRIBUTES
    mr_signer: bytes = TD_QE_MRSIGNER
    mr_enclave: bytes = b"\x33" * 32
    cpu_svn: bytes = bytes(16)

    def encode(self, report_data: bytes) -> bytes:
        out = bytearray(384)
        out[0:16] = self.cpu_svn
        out[16:20] = struct.pack("<I", self.misc_select)
        out[48:64] = self.attributes
        out[64:96] = self.mr_enclave
        out[128:160] = self.mr_signer
        out[256:260] = struct.pack("<HH", self.isv_prod_id, self.isv_svn)
        out[320:384] = report_data
        return bytes(out)


@dataclass
class SyntheticQuote:
    """Everything that goes into one quote; `build()` makes the bytes."""

    pck_key: ec.EllipticCurvePrivateKey
    pck_chain_pem: bytes  # leaf, intermediate, root
    body: TdBody = field(default_factory=TdBody)
    qe: QeReport = field(default_factory=QeReport)
    version: int = 4
    attestation_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    qe_auth_data: bytes = bytes(range(32))
    user_data: bytes = b"\x5a" * 16 + bytes(4)
    padding: bytes = b""

    def build(self) -> bytes:
        body = self.body.encode()
        header = struct.pack("<HHI", self.version, 2, 0x81) + bytes(4) + INTEL_QE_VENDOR_ID + self.user_data
        if self.version == 5:
            body_type = 3 if self.body.tee_tcb_svn2 is not None else 2
            signed = header + struct.pack("<HI", body_type, len(body)) + body
        else:
            assert self.body.tee_tcb_svn2 is None, "a v4 quote carries a TD 1.0 body"
            signed = header + body
        key = raw_point(self.attestation_key)
        binding = hashlib.sha256(key + self.qe_auth_data).digest() + bytes(32)
        qe_report = self.qe.encode(binding)
        pem = self.pck_chain_pem + b"\x00"  # Intel's quotes count one NUL after the PEM
        inner = struct.pack("<HI", 5, len(pem)) + pem
        certification = (qe_report + raw_signature(self.pck_key, qe_report)
                         + struct.pack("<H", len(self.qe_auth_data)) + self.qe_auth_data + inner)
        signature_data = (raw_signature(self.attestation_key, signed) + key
                          + struct.pack("<HI", 6, len(certification)) + certification)
        return signed + struct.pack("<I", len(signature_data)) + signature_data + self.padding


@dataclass
class TdxGuest:
    """A synthetic TD: its platform's PCK (from `intel`) certifies the QE that signs every quote it makes."""

    intel: SyntheticIntel
    body: TdBody = field(default_factory=TdBody)
    pcesvn: int = 13
    pck: IssuedPck = field(init=False)

    def __post_init__(self) -> None:
        self.pck = self.intel.issue_pck(pcesvn=self.pcesvn)

    def quote(self, report_data: bytes, host_data: bytes = b"") -> bytes:
        body = replace(self.body, report_data=report_data.ljust(64, b"\0"),
                       mr_config_id=host_data.ljust(48, b"\0") if host_data else self.body.mr_config_id)
        return SyntheticQuote(self.pck.key, self.pck.pem_chain, body=body).build()

    def evidence(self, report_data: bytes, host_data: bytes = b"") -> dict[str, Any]:
        """The CoCo TDX attester's form: {"cc_eventlog": null, "quote": base64}."""
        return {"cc_eventlog": None, "quote": base64.b64encode(self.quote(report_data, host_data)).decode()}
