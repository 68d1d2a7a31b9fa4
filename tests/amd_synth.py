"""A synthetic AMD PKI and SNP report signer for tests.

It builds what AMD's KDS would: an RSA-PSS ARK and ASK/ASVK, and VCEK/VLEK certificates
carrying the AMD extensions (reference/snp.md §3).  A VEK certificate can be issued for
any P-384 public key, so a test can re-certify a *real* report's VCEK key with chosen
TCB or hwID values and see exactly one check fail.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tests import der as dertools

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
KDS = "1.3.6.1.4.1.3704.1."
NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
_DER = Encoding.DER
_PEM = Encoding.PEM


def amd_name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def der_ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode()


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


@dataclass
class Vek:
    der: bytes
    private_key: ec.EllipticCurvePrivateKey | None


@dataclass
class SyntheticAmd:
    """One product's ARK and ASK (or ASVK), generated fresh."""

    product: str = "Milan"
    kind: str = "VCEK"
    ark_key: rsa.RSAPrivateKey = field(init=False)
    ask_key: rsa.RSAPrivateKey = field(init=False)
    ark_der: bytes = field(init=False)
    ask_der: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.ark_key = rsa.generate_private_key(65537, 2048)
        self.ask_key = rsa.generate_private_key(65537, 2048)
        ark_name = amd_name(f"ARK-{self.product}")
        ask_cn = f"SEV-{self.product}" if self.kind == "VCEK" else f"SEV-VLEK-{self.product}"
        self.ark_der = self._ca(ark_name, ark_name, self.ark_key.public_key(), self.ark_key, 0x10000)
        self.ask_der = self._ca(amd_name(ask_cn), ark_name, self.ask_key.public_key(), self.ark_key, 0x10001)

    @staticmethod
    def _ca(subject: x509.Name, issuer: x509.Name, public: rsa.RSAPublicKey, signer: rsa.RSAPrivateKey,
            serial: int) -> bytes:
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                .serial_number(serial).not_valid_before(NOW - dt.timedelta(days=365))
                .not_valid_after(NOW + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(signer, hashes.SHA384(), rsa_padding=PSS))
        return cert.public_bytes(_DER)

    @property
    def ark_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.ark_der).public_bytes(_PEM)

    def issue_vek(self, public_key: ec.EllipticCurvePublicKey | None = None, *,
                  tcb: dict[str, int] | None = None, hwid: bytes | None = None,
                  product_name: str | None = None, struct_version: int | None = None,
                  csp_id: str | None = None, not_before: dt.datetime | None = None,
                  not_after: dt.datetime | None = None, cn: str | None = None,
                  omit: tuple[str, ...] = (), rsa_padding: padding.PSS | padding.PKCS1v15 | None = None,
                  signer: rsa.RSAPrivateKey | None = None) -> Vek:
        """A VCEK/VLEK for `public_key` (a fresh P-384 key if None) with the AMD extensions."""
        private = None
        if public_key is None:
            private = ec.generate_private_key(ec.SECP384R1())
            public_key = private.public_key()
        turin = self.product == "Turin"
        tcb = tcb or ({"fmc": 0, "bl": 1, "tee": 0, "snp": 2, "ucode": 71} if turin
                      else {"bl": 2, "tee": 0, "snp": 5, "ucode": 68})
        exts = {
            KDS + "1": der_int(struct_version if struct_version is not None else int(turin)),
            KDS + "2": der_ia5(product_name or (self.product if turin or self.kind == "VLEK"
                                                else f"{self.product}-B0")),
            KDS + "3.1": der_int(tcb["bl"]),
            KDS + "3.2": der_int(tcb["tee"]),
            KDS + "3.3": der_int(tcb["snp"]),
            KDS + "3.8": der_int(tcb["ucode"]),
        }
        if "fmc" in tcb:
            exts[KDS + "3.9"] = der_int(tcb["fmc"])
        if self.kind == "VCEK":
            exts[KDS + "4"] = hwid if hwid is not None else bytes(8 if turin else 64)
        else:
            exts[KDS + "5"] = der_ia5(csp_id or "CN=cloud.example")
        if hwid is not None and self.kind == "VLEK":
            exts[KDS + "4"] = hwid
        if csp_id is not None and self.kind == "VCEK":
            exts[KDS + "5"] = der_ia5(csp_id)
        ask_cn = f"SEV-{self.product}" if self.kind == "VCEK" else f"SEV-VLEK-{self.product}"
        builder = (x509.CertificateBuilder().subject_name(amd_name(cn or f"SEV-{self.kind}"))
                   .issuer_name(amd_name(ask_cn)).public_key(public_key).serial_number(1)
                   .not_valid_before(not_before or NOW - dt.timedelta(days=30))
                   .not_valid_after(not_after or NOW + dt.timedelta(days=7 * 365)))
        for oid, value in exts.items():
            if oid.removeprefix(KDS) not in omit:
                builder = builder.add_extension(_ext(oid, value), critical=False)
        cert = builder.sign(signer or self.ask_key, hashes.SHA384(), rsa_padding=rsa_padding or PSS)
        return Vek(der=cert.public_bytes(_DER), private_key=private)

    def crl(self, revoked_serials: tuple[int, ...] = (), *, last: dt.datetime | None = None,
            next_: dt.datetime | None = None, signer: rsa.RSAPrivateKey | None = None) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(amd_name(f"ARK-{self.product}"))
                   .last_update(last or NOW - dt.timedelta(days=1))
                   .next_update(next_ or NOW + dt.timedelta(days=7)))
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(NOW - dt.timedelta(days=2)).build())
        crl = builder.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        return crl.public_bytes(_DER)

# Offsets of the fields a test sets (reference/snp.md §1).
_FIELDS = {
    "version": (0x000, 4), "guest_svn": (0x004, 4), "policy": (0x008, 8), "vmpl": (0x030, 4),
    "signature_algo": (0x034, 4), "current_tcb": (0x038, 8), "platform_info": (0x040, 8),
    "signer_info": (0x048, 4), "reported_tcb": (0x180, 8), "committed_tcb": (0x1E0, 8),
    "launch_tcb": (0x1F0, 8), "launch_mit_vector": (0x1F8, 8), "current_mit_vector": (0x200, 8),
}
_BYTES = {"report_data": (0x050, 64), "measurement": (0x090, 48), "host_data": (0x0C0, 32),
          "chip_id": (0x1A0, 64), "report_id": (0x140, 32), "report_id_ma": (0x160, 32)}


def tcb_value(parts: dict[str, int], turin: bool) -> int:
    b = bytearray(8)
    if turin:
        b[0], b[1], b[2], b[3], b[7] = parts["fmc"], parts["bl"], parts["tee"], parts["snp"], parts["ucode"]
    else:
        b[0], b[1], b[6], b[7] = parts["bl"], parts["tee"], parts["snp"], parts["ucode"]
    return int.from_bytes(b, "little")


def build_report(*, cpuid: tuple[int, int, int] | None = (0x19, 0x01, 1), **fields: object) -> bytearray:
    """An unsigned report (signature zero); defaults: v3 Milan, policy 0x30000, VCEK, bl2 snp5 ucode68."""
    tcb = tcb_value({"bl": 2, "tee": 0, "snp": 5, "ucode": 68}, False)
    values: dict[str, object] = {"version": 3, "policy": 0x30000, "signature_algo": 1,
                                 "current_tcb": tcb, "reported_tcb": tcb, "committed_tcb": tcb,
                                 "launch_tcb": tcb, "report_id_ma": b"\xff" * 32,
                                 "current_build_minor_major": (3, 55, 1)}
    values.update(fields)
    out = bytearray(1184)
    for name, value in values.items():
        if name in _FIELDS:
            off, size = _FIELDS[name]
            assert isinstance(value, int)
            out[off:off + size] = value.to_bytes(size, "little")
        elif name in _BYTES:
            off, size = _BYTES[name]
            assert isinstance(value, bytes) and len(value) <= size
            out[off:off + len(value)] = value
        elif name == "current_build_minor_major":
            assert isinstance(value, tuple)
            out[0x1E8:0x1EB] = bytes(value)
            out[0x1EC:0x1EF] = bytes(value)
        else:
            raise KeyError(name)
    if cpuid is not None and values["version"] != 2:
        out[0x188:0x18B] = bytes(cpuid)
    return out


def sign_report(report: bytearray, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign bytes 0x000-0x29F and store r, s as 72-byte little-endian fields."""
    der = key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    out = bytearray(report)
    out[0x2A0:0x2E8] = r.to_bytes(72, "little")
    out[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(out)


# -- hostile certificates (DER surgery; signatures no longer verify) ----------------------------







# 1.2.3 with an empty value: 8 bytes
EMPTY_EXTENSION = dertools.tlv(0x30, dertools.tlv(0x06, b"\x2a\x03") + dertools.tlv(0x04, b""))


def distinct_empty_extensions(count: int) -> bytes:
    """`count` extensions with distinct OIDs 1.2.3.<i> (i < 16384) and empty values, 9-10 bytes each."""
    assert count < 1 << 14
    out = []
    for i in range(count):
        arc = bytes([i]) if i < 0x80 else bytes([0x80 | i >> 7, i & 0x7F])
        out.append(dertools.tlv(0x30, dertools.tlv(0x06, b"\x2a\x03" + arc) + dertools.tlv(0x04, b"")))
    return b"".join(out)


def with_extra_extensions(der: bytes, count: int, extension: bytes = EMPTY_EXTENSION) -> bytes:
    """`der` with `count` more copies of `extension` appended to its extensions.  The signature no longer
    verifies: such a certificate must be refused before anything looks at signatures."""
    tbs, algorithm, signature = dertools.split(dertools.contents(der))
    fields = dertools.split(dertools.contents(tbs))
    for i, part in enumerate(fields):
        if part[0] == 0xA3:
            extensions = dertools.split(dertools.contents(dertools.contents(part)))
            fields[i] = dertools.tlv(0xA3, dertools.tlv(0x30, b"".join(extensions) + extension * count))
            break
    else:
        fields.append(dertools.tlv(0xA3, dertools.tlv(0x30, extension * count)))
    return dertools.tlv(0x30, dertools.tlv(0x30, b"".join(fields)) + algorithm + signature)
