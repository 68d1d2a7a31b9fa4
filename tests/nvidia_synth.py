"""A synthetic NVIDIA device PKI for tests: GPUs whose chains look like NVIDIA's, under a root the tests hold.

    nvidia = SyntheticNvidia(now)
    gpu = nvidia.issue_gpu("HOPPER", fwid=digest)        # SyntheticGpu(key, pem_chain, fwid, certificates, ...)
    chain = verify_device_chain(gpu.pem_chain, now, trust_roots=nvidia.trust_roots)
    answer = nvidia.ocsp_response(gpu.certificates[1])   # good, from the ICA's delegated responder

The PKI mirrors NVIDIA's (reference/gpu.md §2): a self-signed "NVIDIA Device Identity CA" (P-384), the
architecture's identity CA and provisioner ICA, a BROM per device and the "GH100 A01 GSP FMC LF" leaf (or
GB100 for Blackwell), every link ECDSA-SHA384, CAs valid until 9999-12-31 like NVIDIA's.  The leaf carries
the FWID in the Hopper composite-device-id encoding (2.23.133.5.4.1) or the Blackwell DICE TcbInfo one
(2.23.133.5.4.1.1), built as raw DER so tests can also break it.  `SyntheticGpu.key` is the leaf's P-384
private key: tests/spdm_synth.py signs reports with it.

OCSP: each issuer gets a delegated responder ("NVIDIA OCSP Responder …", id-kp-OCSPSigning) the first time
one is needed, and `ocsp_response` makes a signed response about any certificate of the PKI with every
defect a test needs (status good, revoked, unknown or on hold; stale or early windows; another
certificate's CertID; signed by the issuer itself, by a responder another CA issued, or by a key that is
not the responder's).  `FakeOcspResponder` answers OCSP requests over loopback with such responses.
Nothing here comes from the shared vectors.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kbs.trust.x509 import Certificate
from tests import der as dertools
from tests import fake_http
from tests.fake_http import Reply, scripted
from tests.intel_synth import der_int, der_octets, der_oid, seq
from tests.pki_synth import NOW, Algorithm, Hash, Node, Pki, fresh_key, key_usage, resign_ocsp, shared_key

HOPPER: Final = "HOPPER"
BLACKWELL: Final = "BLACKWELL"
Arch = Literal["HOPPER", "BLACKWELL"]
Encoding_ = Literal["composite", "tcbinfo", "both", "none"]
Status = Literal["good", "revoked", "unknown", "hold"]
Signer = Literal["responder", "issuer", "foreign", "forged"]
SHA384_OID = "2.16.840.1.101.3.4.2.2"
OID_COMPOSITE = "2.23.133.5.4.1"
OID_TCB_INFO = "2.23.133.5.4.1.1"
FOREVER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
ALGORITHM: Algorithm = "ecdsa-p384-sha384"
_CHIPS = {HOPPER: "GH100", BLACKWELL: "GB100"}
_ICAS = {HOPPER: "NVIDIA GH100 Provisioner ICA 1", BLACKWELL: "NVIDIA GB100 Provisioner ICA 00000"}


def nvidia_name(cn: str, *, organization: str = "NVIDIA Corporation", serial: str | None = None,
                country: bool = True) -> x509.Name:
    """A name in NVIDIA's order: devices [serialNumber, C, O, CN], CAs [CN, O(, C)] (as the real chains)."""
    common = x509.NameAttribute(NameOID.COMMON_NAME, cn)
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)
    us = [x509.NameAttribute(NameOID.COUNTRY_NAME, "US")] if country else []
    if serial is not None:
        return x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial), *us, org, common])
    return x509.Name([common, org, *us])


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def composite_device_id(fwid: bytes, device_key: ec.EllipticCurvePrivateKey, *, version: int = 1,
                        hash_oid: str = SHA384_OID) -> bytes:
    """Hopper's FWID extension value: SEQUENCE { version, SubjectPublicKeyInfo, SEQUENCE { hash OID, fwid } }."""
    return seq(der_int(version), spki(device_key), seq(der_oid(hash_oid), der_octets(fwid)))


def tcb_info(fwid: bytes, *, model: str = "GB100 A01 GSP", fwids: Sequence[bytes] | None = None,
             hash_oid: str = SHA384_OID) -> bytes:
    """Blackwell's FWID extension value: a DICE TcbInfo with fwids = [fwid, zeros] like NVIDIA's."""
    digests = list(fwids) if fwids is not None else [fwid, bytes(48)]
    fwid_list = b"".join(seq(der_oid(hash_oid), der_octets(d)) for d in digests)
    return dertools.tlv(0x30, b"".join((
        dertools.tlv(0x80, b"NVIDIA"), dertools.tlv(0x81, model.encode()), dertools.tlv(0x82, b"01"),
        dertools.tlv(0x83, b"\x01"), dertools.tlv(0x84, b"\x00"), dertools.tlv(0x85, b"\x00"),
        dertools.tlv(0xA6, fwid_list), dertools.tlv(0x87, b"\x00\x80\x00\x00\x01"), dertools.tlv(0x88, b"\xc0"),
        dertools.tlv(0x89, b"\x00"))))


def pem(certificates: Sequence[Certificate]) -> bytes:
    return b"".join(x509.load_der_x509_certificate(c.der).public_bytes(Encoding.PEM) for c in certificates)


@dataclass(frozen=True)
class SyntheticGpu:
    """A device: the leaf's private key (signs reports), its PEM chain as a GPU sends it (leaf first, root
    last), the FWID in its leaf, and the parsed certificates in the same order."""

    key: ec.EllipticCurvePrivateKey
    pem_chain: bytes
    fwid: bytes
    certificates: tuple[Certificate, ...]
    arch: str
    nodes: tuple[Node, ...] = field(repr=False)  # the same certificates with their subjects' private keys

    @property
    def leaf(self) -> Certificate:
        return self.certificates[0]


class SyntheticNvidia:
    """An NVIDIA-shaped device PKI (module docstring).  `now` is when everything is current."""

    def __init__(self, now: dt.datetime = NOW, *, root_cn: str = "NVIDIA Device Identity CA", slot: int = 0) -> None:
        self.now = now
        self._slot = slot
        self._serial = 0x1000
        self._nodes: dict[str, Node] = {}  # by SHA-256 of the DER
        self.root = self._issue(nvidia_name(root_cn, organization="NVIDIA", country=False), None, self._key(0),
                                ca=True, not_before=now - dt.timedelta(days=3 * 365))
        self._cas: dict[str, tuple[Node, Node]] = {}
        self._responders: dict[str, Node] = {}

    # -- the PKI ----------------------------------------------------------------------------------

    def _key(self, offset: int) -> ec.EllipticCurvePrivateKey:
        key = shared_key("p384", 100 + self._slot * 16 + offset)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def _next_serial(self) -> int:
        self._serial += 1
        return (self._slot << 64) | self._serial

    def _issue(self, subject: x509.Name, issuer: Node | None, key: ec.EllipticCurvePrivateKey, *, ca: bool | None,
               not_before: dt.datetime | None = None, not_after: dt.datetime = FOREVER,
               usage: x509.KeyUsage | None = None, eku: bool = False, serial: int | None = None,
               extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
               signer: ec.EllipticCurvePrivateKey | None = None, digest: Hash | None = None) -> Node:
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer.cert.subject if issuer is not None else subject)
                   .public_key(key.public_key()).serial_number(serial or self._next_serial())
                   .not_valid_before(not_before or self.now - dt.timedelta(days=365)).not_valid_after(not_after)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if ca is not None:
            builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        builder = builder.add_extension(usage or (key_usage(key_cert_sign=True, crl_sign=True) if ca
                                                  else key_usage(digital_signature=True)), critical=True)
        # NVIDIA's leaves have no basicConstraints: `ca` None leaves it out.
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        for extension, critical in extra:
            builder = builder.add_extension(extension, critical=critical)
        signing_key = signer or (issuer.key if issuer is not None else key)
        assert isinstance(signing_key, ec.EllipticCurvePrivateKey)
        cert = builder.sign(signing_key, digest or hashes.SHA384())
        cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        node = Node(str(cn), key, cert, ALGORITHM)
        self._nodes[node.parsed.fingerprint] = node
        return node

    def cas(self, arch: Arch = HOPPER) -> tuple[Node, Node]:
        """(identity CA, provisioner ICA) of an architecture, made once."""
        if arch not in self._cas:
            offset = 1 if arch == HOPPER else 3
            identity = self._issue(nvidia_name(f"NVIDIA {_CHIPS[arch]} Identity", country=False), self.root,
                                   self._key(offset), ca=True)
            ica = self._issue(nvidia_name(_ICAS[arch]), identity, self._key(offset + 1), ca=True)
            self._cas[arch] = (identity, ica)
        return self._cas[arch]

    @property
    def trust_roots(self) -> list[Certificate]:
        """The synthetic root: pass as `trust_roots` in place of NVIDIA's pin."""
        return [self.root.parsed]

    def node(self, cert: Certificate) -> Node:
        """The node (certificate and subject key) of a certificate this PKI issued."""
        return self._nodes[cert.fingerprint]

    def issue_gpu(self, arch: Arch = HOPPER, fwid: bytes | None = None, *, encoding: Encoding_ | None = None,
                  fwid_value: bytes | None = None, leaf_not_after: dt.datetime = FOREVER,
                  leaf_usage: x509.KeyUsage | None = None, leaf_ca: bool | None = None,
                  leaf_key: ec.EllipticCurvePrivateKey | None = None, leaf_digest: Hash | None = None,
                  leaf_signer: ec.EllipticCurvePrivateKey | None = None, brom_ca: bool = True,
                  leaf_extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
                  brom_extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
                  leaf_not_before: dt.datetime | None = None) -> SyntheticGpu:
        """A device of `arch` whose leaf carries `fwid` (default: a digest of its serial).

        `encoding` picks the FWID extension (default: the architecture's; "both" or "none" to break it);
        `fwid_value` replaces the extension's DER value as given.  The `leaf_*` and `brom_ca` knobs break
        one thing each (`leaf_key` may be of another curve; `leaf_signer` forges the BROM's signature)."""
        identity, ica = self.cas(arch)
        chip = _CHIPS[arch]
        device = self._next_serial()
        brom_key = fresh_key("p384")
        key = leaf_key or fresh_key("p384")
        assert isinstance(brom_key, ec.EllipticCurvePrivateKey) and isinstance(key, ec.EllipticCurvePrivateKey)
        digest = fwid if fwid is not None else hashlib.sha384(b"firmware of device %d" % device).digest()
        brom = self._issue(nvidia_name(f"{chip} A01 GSP BROM", serial=f"{device:018X}"), ica, brom_key,
                           ca=brom_ca if not brom_extra else None, usage=key_usage(key_cert_sign=True),
                           extra=brom_extra)
        chosen = encoding or ("composite" if arch == HOPPER else "tcbinfo")
        values = {"composite": [(OID_COMPOSITE, composite_device_id(digest, brom_key))],
                  "tcbinfo": [(OID_TCB_INFO, tcb_info(digest, model=f"{chip} A01 GSP"))],
                  "both": [(OID_COMPOSITE, composite_device_id(digest, brom_key)),
                           (OID_TCB_INFO, tcb_info(digest, model=f"{chip} A01 GSP"))],
                  "none": []}[chosen]
        if fwid_value is not None:
            values = [(values[0][0] if values else OID_COMPOSITE, fwid_value)]
        extra: list[tuple[x509.ExtensionType, bool]] = [
            (x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), False) for oid, value in values]
        extra += leaf_extra
        leaf_serial = self._next_serial() << 64 | device
        leaf = self._issue(nvidia_name(f"{chip} A01 GSP FMC LF", serial=f"{leaf_serial:X}"), brom, key, ca=leaf_ca,
                           not_before=leaf_not_before or self.now - dt.timedelta(days=30), not_after=leaf_not_after,
                           usage=leaf_usage, serial=leaf_serial, extra=extra, signer=leaf_signer, digest=leaf_digest)
        nodes = (leaf, brom, ica, identity, self.root)
        certificates = tuple(n.parsed for n in nodes)
        return SyntheticGpu(key, pem(certificates), digest, certificates, arch, nodes)

    # -- OCSP -----------------------------------------------------------------------------------

    def responder(self, issuer: Certificate | Node) -> Node:
        """The delegated OCSP responder of `issuer`, made once."""
        node = issuer if isinstance(issuer, Node) else self.node(issuer)
        fingerprint = node.parsed.fingerprint
        if fingerprint not in self._responders:
            key = fresh_key("p384")
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self._responders[fingerprint] = self._issue(nvidia_name(f"NVIDIA OCSP Responder for {node.cn}"), node, key,
                                                        ca=False, eku=True)
        return self._responders[fingerprint]

    def issuer_of(self, cert: Certificate) -> Node:
        return next(n for n in self._nodes.values() if n.cert.subject.public_bytes() == cert.issuer_der
                    and n.parsed.is_ca())

    def ocsp_response(self, cert: Certificate, status: Status = "good", *, this_update: dt.datetime | None = None,
                      next_update: dt.datetime | None = None, reason: x509.ReasonFlags | None = None,
                      signer: Signer = "responder", about: Certificate | None = None, nonce: bytes | None = None,
                      cert_id_hash: hashes.HashAlgorithm | None = None,
                      digest: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None) -> bytes:
        """A DER OCSP response about `cert` (thisUpdate an hour ago, 24 hours long, like NVIDIA's).

        `status` "hold" is revoked with reason certificateHold; `about` puts another certificate's CertID
        in it; `signer`: "responder" (the issuer's delegated responder), "issuer" (the issuer's own key),
        "foreign" (a responder issued by another CA), "forged" (claims the responder, signed by another key);
        `digest` signs with another hash than SHA-384.  `brom_extra` (of `issue_gpu`) replaces the BROM's
        basicConstraints by what it lists."""
        target = self.node(about or cert)
        issuer = self.issuer_of(about or cert)
        this = this_update or self.now - dt.timedelta(hours=1)
        nxt = next_update or this + dt.timedelta(hours=24)
        statuses = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                    "hold": ocsp.OCSPCertStatus.REVOKED, "unknown": ocsp.OCSPCertStatus.UNKNOWN}
        if status == "hold":
            reason = x509.ReasonFlags.certificate_hold
        elif status == "revoked" and reason is None:
            reason = x509.ReasonFlags.key_compromise
        responder: Node | None = None
        if signer in ("responder", "forged"):
            responder = self.responder(issuer)
        elif signer == "foreign":
            other = self.root if issuer.parsed.fingerprint != self.root.parsed.fingerprint else self.cas()[0]
            responder = self.responder(other)
        answer = Pki.ocsp(target, issuer, statuses[status], responder=responder, this_update=this, next_update=nxt,
                          revocation_time=this - dt.timedelta(days=2) if status in ("revoked", "hold") else None,
                          reason=reason, nonce=nonce, cert_id_hash=cert_id_hash or hashes.SHA384(), digest=digest)
        # pyca signs only with the responder's own key: a forgery is the same response signed again.
        return resign_ocsp(answer, fresh_key("p384"), ALGORITHM) if signer == "forged" else answer

    def good_responses(self, gpu: SyntheticGpu, indices: Sequence[int] = (1, 2, 3)) -> list[bytes]:
        return [self.ocsp_response(gpu.certificates[i]) for i in indices]


@dataclass
class FakeOcspResponder:
    """NVIDIA's OCSP responder over loopback: answers each request with `pki.ocsp_response(<the certificate
    asked about>, **answer)`, echoing the request's nonce (unless `echo_nonce` is off), or, when `script`
    has replies (404, 429, garbage…), with those, in order, the last repeating.  Counts requests."""

    pki: SyntheticNvidia
    script: list[Reply] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=dict)
    echo_nonce: bool = True
    hits: Counter[str] = field(default_factory=Counter)
    requests: list[ocsp.OCSPRequest] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hits[request.path] += 1
        if self.script:
            return scripted(self.script)  # in order, the last one repeating
        asked = ocsp.load_der_ocsp_request(body)
        self.requests.append(asked)
        target = next(n for n in self.pki._nodes.values() if n.cert.serial_number == asked.serial_number)
        nonce = None
        if self.echo_nonce:
            with contextlib.suppress(x509.ExtensionNotFound):
                nonce = asked.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        answer = self.pki.ocsp_response(target.parsed, nonce=nonce, **self.answer)
        return web.Response(body=answer, content_type="application/ocsp-response")

    @property
    def total(self) -> int:
        return sum(self.hits.values())


@contextlib.asynccontextmanager
async def serve(fake: FakeOcspResponder) -> AsyncIterator[str]:
    async with fake_http.serve(fake.handle, "POST") as base:
        fake.base = base
        yield base


@contextlib.contextmanager
def responder_in_thread(fake: FakeOcspResponder) -> Iterator[FakeOcspResponder]:
    """`fake` served from a thread of its own, for code that runs its own event loop (the CLI)."""
    with fake_http.in_thread(lambda: serve(fake)):
        yield fake
