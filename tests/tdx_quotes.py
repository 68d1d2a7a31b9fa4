"""TDX DCAP quotes for tests: the real ones of the shared vectors, and synthetic ones signed by test keys.

`real_quotes()` finds the real quotes in place under $KBS_VECTORS (tdx/**/*.dat, the Azure .bin,
trustee/evidence/tdx/tdx_quote_{4,5}.dat) with their entry of tdx/expected.json and the PCK point
of their own PCK leaf certificate.  The synthetic layout follows reference/tdx.md §1; nothing in it
comes from the vectors, so tests that use it run where the vectors are absent.  `build_quote`
returns the bytes and the keys that verify them (`QuoteKeys`: PCK and attestation key, so a test
can re-sign after an edit, e.g. a bad binding under a valid QE report signature); `layout` gives
the offset of every field.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass(frozen=True)
class RealQuote:
    name: str  # path under $KBS_VECTORS
    data: bytes
    expected: dict[str, Any]  # its entry of tdx/expected.json (matched by SHA-256)

    @property
    def pck_point(self) -> bytes:
        """The PCK leaf's public key (first certificate of the quote's own chain), 0x04 || X || Y."""
        return pck_point_of(self.data)


def pck_point_of(quote: bytes) -> bytes:
    """The uncompressed point of the first certificate in the quote's PEM chain (found by its markers)."""
    start = quote.index(b"-----BEGIN CERTIFICATE-----")
    end = quote.index(b"-----END CERTIFICATE-----", start) + len(b"-----END CERTIFICATE-----")
    cert = x509.load_pem_x509_certificate(quote[start:end])
    return cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def real_quotes(root: Path) -> list[RealQuote]:
    """Every real quote under `root` (the vectors directory), or [] when absent."""
    tdx = root / "tdx"
    if not (tdx / "expected.json").is_file():
        return []
    by_sha = {e["sha256"]: e for e in json.loads((tdx / "expected.json").read_text())["quotes"].values()}
    paths = sorted([*tdx.rglob("*.dat"), *tdx.rglob("*.bin")])
    paths += [root / "trustee" / "evidence" / "tdx" / f"tdx_quote_{i}.dat" for i in (4, 5)]
    found = []
    for path in paths:
        if path.is_file():
            data = path.read_bytes()
            expected = by_sha.get(hashlib.sha256(data).hexdigest())
            assert expected is not None, f"{path} has no entry in tdx/expected.json"
            found.append(RealQuote(str(path.relative_to(root)), data, expected))
    return found


def point_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def sign_raw(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256/SHA-256 as a quote carries it: 64 bytes r || s, big-endian."""
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class QuoteKeys:
    pck: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    attestation: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @property
    def pck_point(self) -> bytes:
        return point_of(self.pck)

    @property
    def attestation_key(self) -> bytes:
        """The raw x || y the quote carries."""
        return point_of(self.attestation)[1:]


@dataclass(frozen=True)
class Layout:
    """Absolute offsets of a built quote's parts."""

    body_offset: int
    signed_size: int
    sig_data_len_offset: int
    signature: int
    attestation_key: int
    cert_type: int
    cert_size: int
    qe_report: int
    qe_report_signature: int
    qe_auth_size: int
    qe_auth_data: int
    pck_type: int
    pck_size: int
    pck_chain: int
    end: int


def layout(version: int = 4, body_type: int = 2, auth_size: int = 32, chain_size: int = 0) -> Layout:
    body_offset = 48 if version == 4 else 54
    signed = body_offset + (648 if body_type == 3 else 584)
    sig = signed + 4
    qe = sig + 64 + 64 + 6
    auth = qe + 384 + 64 + 2
    chain = auth + auth_size + 6
    return Layout(body_offset, signed, signed, sig, sig + 64, sig + 128, sig + 130, qe, qe + 384, qe + 448,
                  auth, auth + auth_size, auth + auth_size + 2, chain, chain + chain_size)


def build_quote(keys: QuoteKeys | None = None, *, version: int = 4, body_type: int = 2,
                qe_auth_data: bytes = bytes(range(32)), pck_chain: bytes = b"-----BEGIN CERTIFICATE-----\n\0",
                padding: int = 0, body: bytes | None = None, header_user_data: bytes = bytes(range(1, 21)),
                report_data_tail: bytes = bytes(32)) -> tuple[bytes, QuoteKeys]:
    """A well-formed quote signed by `keys` (new ones if None); `report_data_tail` is what the QE report
    carries after the binding hash (32 zero bytes in a good quote)."""
    keys = keys or QuoteKeys()
    body_size = 648 if body_type == 3 else 584
    if body is None:
        body = bytes((7 * i + 1) % 256 for i in range(body_size))
    assert len(body) == body_size
    header = struct.pack("<HHI", version, 2, 0x81) + bytes(4) + INTEL_QE_VENDOR_ID + header_user_data
    descriptor = struct.pack("<HI", body_type, body_size) if version == 5 else b""
    signed = header + descriptor + body
    ak = keys.attestation_key
    qe_report = bytearray((5 * i + 2) % 256 for i in range(384))
    qe_report[320:384] = hashlib.sha256(ak + qe_auth_data).digest() + report_data_tail
    qe_report_sig = sign_raw(keys.pck, bytes(qe_report))
    inner = struct.pack("<HI", 5, len(pck_chain)) + pck_chain
    cert = bytes(qe_report) + qe_report_sig + struct.pack("<H", len(qe_auth_data)) + qe_auth_data + inner
    sig_data = sign_raw(keys.attestation, signed) + ak + struct.pack("<HI", 6, len(cert)) + cert
    return signed + struct.pack("<I", len(sig_data)) + sig_data + bytes(padding), keys
