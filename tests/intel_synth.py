"""A synthetic Intel DCAP PKI for tests: what Intel's PCS would serve, under a root the tests hold.

`SyntheticIntel` makes an "Intel SGX Root CA" (a test root: trust it with `trust_roots=intel.trust_roots`),
the PCK Platform and Processor CAs and the TCB Signing certificate, all ECDSA P-256 with Intel's names.
It issues PCK leaves carrying the SGX extension (OID 1.2.840.113741.1.13.1, built as raw DER so tests can
also build broken ones) for chosen SVNs, FMSPC and PCE-ID (`issue_pck`, which returns the leaf's key and
the PEM chain a quote carries), signs TCB info and QE identity documents for chosen levels
(`sign_tcb_info`, `sign_qe_identity`: PCS response bodies, signed over their exact compact bytes), and
makes both CRLs.  `collateral()` bundles a full set; `FakePcs` serves one over loopback.

Defaults describe one platform that is UpToDate: PCK SGX components `DEFAULT_SGX`, PCESVN 13, FMSPC
`DEFAULT_FMSPC`, a TDX_01 module at minor SVN 6 (`DEFAULT_TEE_TCB_SVN`), and Intel's real TD QE
(`qe_values()`, ISVSVN 4).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from kbs.trust.intel import pcs
from kbs.trust.intel.certs import CaType
from kbs.trust.intel.collateral import IntelCollateral, TcbInfo, unverified_document
from kbs.trust.intel.offline import save_collateral_dir
from kbs.trust.intel.tcb import QeReportValues
from kbs.trust.x509 import Certificate, parse_certificate
from tests import der as dertools
from tests import fake_http
from tests.fake_http import Reply, scripted

SGX = "1.2.840.113741.1.13.1"
TD_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
TD_QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")
DEFAULT_FMSPC = bytes.fromhex("90c06f000000")
DEFAULT_PCE_ID = bytes(2)
DEFAULT_SGX = (4, 4, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
DEFAULT_PCESVN = 13
DEFAULT_TEE_TCB_SVN = bytes([6, 1, 4]) + bytes(13)  # TDX_01 module, minor SVN 6; late microcode 4
LEVEL_DATE = "2024-03-13T00:00:00Z"
OLD_DATE = "2018-01-04T00:00:00Z"
DAY = dt.timedelta(days=1)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def intel_name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
                      x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
                      x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                      x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])


def raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256/SHA-256 as Intel's JSON and quotes carry it: r ‖ s, 32 bytes each."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- the SGX extension as raw DER -----------------------------------------------------------------------

def der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return dertools.tlv(0x06, bytes(body))


def der_int(value: int, tag: int = 0x02) -> bytes:
    """A minimal DER INTEGER (or ENUMERATED with tag 0x0A): 255 is 02 02 00 FF."""
    return dertools.tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def der_octets(data: bytes) -> bytes:
    return dertools.tlv(0x04, data)


def der_bool(value: bool) -> bytes:
    return bytes([0x01, 0x01, 0xFF if value else 0x00])


def item(oid: str, value: bytes) -> bytes:
    return dertools.tlv(0x30, der_oid(oid) + value)


def seq(*items: bytes) -> bytes:
    return dertools.tlv(0x30, b"".join(items))


def tcb_items(svns: Sequence[int] = DEFAULT_SGX, pcesvn: int = DEFAULT_PCESVN,
              cpusvn: bytes | None = None) -> list[bytes]:
    items = [item(f"{SGX}.2.{i}", der_int(svn)) for i, svn in enumerate(svns, 1)]
    items.append(item(f"{SGX}.2.17", der_int(pcesvn)))
    items.append(item(f"{SGX}.2.18", der_octets(cpusvn if cpusvn is not None else bytes(svns))))
    return items


def sgx_extension_items(*, svns: Sequence[int] = DEFAULT_SGX, pcesvn: int = DEFAULT_PCESVN, cpusvn: bytes | None = None,
                        fmspc: bytes = DEFAULT_FMSPC, pce_id: bytes = DEFAULT_PCE_ID, sgx_type: int = 1,
                        platform: bool = True, ppid: bytes = bytes(range(16)),
                        platform_instance_id: bytes = bytes(range(16, 32)),
                        configuration: tuple[bool, bool, bool] = (True, False, True)) -> list[bytes]:
    """The items of the SGX extension in Intel's order (a test may drop, repeat or replace one)."""
    items = [item(f"{SGX}.1", der_octets(ppid)), item(f"{SGX}.2", seq(*tcb_items(svns, pcesvn, cpusvn))),
             item(f"{SGX}.3", der_octets(pce_id)), item(f"{SGX}.4", der_octets(fmspc)),
             item(f"{SGX}.5", der_int(sgx_type, 0x0A))]
    if platform:
        flags = [item(f"{SGX}.7.{i}", der_bool(v)) for i, v in enumerate(configuration, 1)]
        items += [item(f"{SGX}.6", der_octets(platform_instance_id)), item(f"{SGX}.7", seq(*flags))]
    return items


def sgx_extension(**kwargs: Any) -> bytes:
    return seq(*sgx_extension_items(**kwargs))


# -- collateral documents -------------------------------------------------------------------------------

def components(svns: Sequence[int]) -> list[dict[str, Any]]:
    return [{"svn": svn} for svn in svns]


def platform_level(status: str = "UpToDate", *, sgx: Sequence[int] = DEFAULT_SGX, pcesvn: int = DEFAULT_PCESVN,
                   tdx: Sequence[int] = (0, 0, 4) + (0,) * 13, date: str = LEVEL_DATE,
                   advisories: Sequence[str] | None = None) -> dict[str, Any]:
    level: dict[str, Any] = {"tcb": {"sgxtcbcomponents": components(sgx), "pcesvn": pcesvn,
                                     "tdxtcbcomponents": components(tdx)},
                             "tcbDate": date, "tcbStatus": status}
    if advisories is not None:
        level["advisoryIDs"] = list(advisories)
    return level


def isv_level(isvsvn: int, status: str = "UpToDate", date: str = LEVEL_DATE,
              advisories: Sequence[str] | None = None) -> dict[str, Any]:
    """A TDX module identity's or QE identity's level."""
    level: dict[str, Any] = {"tcb": {"isvsvn": isvsvn}, "tcbDate": date, "tcbStatus": status}
    if advisories is not None:
        level["advisoryIDs"] = list(advisories)
    return level


def module_identity(identity: str = "TDX_01", levels: Sequence[dict[str, Any]] | None = None, *,
                    mrsigner: bytes = bytes(48), attributes: bytes = bytes(8),
                    mask: bytes = b"\xff" * 8) -> dict[str, Any]:
    return {"id": identity, "mrsigner": mrsigner.hex().upper(), "attributes": attributes.hex().upper(),
            "attributesMask": mask.hex().upper(),
            "tcbLevels": list(levels) if levels is not None else [isv_level(6), isv_level(2, "OutOfDate", OLD_DATE)]}


def default_platform_levels() -> list[dict[str, Any]]:
    return [platform_level(),
            platform_level("OutOfDate", sgx=(2,) * 8 + (0,) * 8, pcesvn=5, tdx=(0, 0, 2) + (0,) * 13, date=OLD_DATE,
                           advisories=["INTEL-SA-00106", "INTEL-SA-00115"])]


def qe_values(**overrides: Any) -> QeReportValues:
    """The QE report fields of Intel's TD QE at ISVSVN 4 (what the default QE identity wants)."""
    values: dict[str, Any] = {"misc_select": 0, "attributes": TD_QE_ATTRIBUTES, "mr_signer": TD_QE_MRSIGNER,
                              "isv_prod_id": 2, "isv_svn": 4}
    values.update(overrides)
    return QeReportValues(**values)


# -- the PKI --------------------------------------------------------------------------------------------

@dataclass
class Node:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @property
    def parsed(self) -> Certificate:
        return parse_certificate(self.der)


@dataclass
class IssuedPck:
    """A PCK leaf, its private key (it signs QE reports) and the PEM chain a quote carries."""

    key: ec.EllipticCurvePrivateKey
    der: bytes
    pem_chain: bytes  # leaf, PCK CA, root
    serial: int

    @property
    def public_point(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


_CA_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
_LEAF_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                            encipher_only=False, decipher_only=False)
ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


class SyntheticIntel:
    """An Intel-shaped DCAP PKI under a test root (module docstring).  `now` anchors every date."""

    def __init__(self, now: dt.datetime | None = None, *, root_cn: str = "Intel SGX Root CA") -> None:
        self.now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        self._serial = 0x10_0000
        self.root = self._issue(root_cn, None, ca=True, path_length=1)
        self.platform_ca = self._issue("Intel SGX PCK Platform CA", self.root, ca=True, path_length=0)
        self.processor_ca = self._issue("Intel SGX PCK Processor CA", self.root, ca=True, path_length=0)
        self.tcb_signing = self._issue("Intel SGX TCB Signing", self.root, ca=False)

    # -- certificates --------------------------------------------------------------------------------

    def _issue(self, cn: str, issuer: Node | None, *, ca: bool, path_length: int | None = None,
               key: ec.EllipticCurvePrivateKey | None = None, extra: Sequence[x509.ExtensionType] = (),
               serial: int | None = None, not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None, signer: ec.EllipticCurvePrivateKey | None = None) -> Node:
        key = key or ec.generate_private_key(ec.SECP256R1())
        if serial is None:
            self._serial += 1
            serial = self._serial
        builder = (x509.CertificateBuilder().subject_name(intel_name(cn))
                   .issuer_name(issuer.cert.subject if issuer is not None else intel_name(cn))
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(not_before or self.now - 365 * DAY)
                   .not_valid_after(not_after or self.now + 5 * 365 * DAY)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
                   .add_extension(_CA_USAGE if ca else _LEAF_USAGE, critical=True)
                   .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                       [x509.UniformResourceIdentifier(ROOT_CRL_URL)], None, None, None)]), critical=False))
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        signing_key = signer or (issuer.key if issuer is not None else key)
        return Node(key, builder.sign(signing_key, hashes.SHA256()))

    def ca(self, ca: CaType = "platform") -> Node:
        return self.platform_ca if ca == "platform" else self.processor_ca

    @property
    def trust_roots(self) -> list[Certificate]:
        """Trust this PKI's root in place of the pinned Intel root."""
        return [self.root.parsed]

    @property
    def tcb_chain_pem(self) -> bytes:
        return self.tcb_signing.pem + self.root.pem

    def pck_ca_chain_pem(self, ca: CaType = "platform") -> bytes:
        return self.ca(ca).pem + self.root.pem

    def issue_pck(self, *, svns: Sequence[int] = DEFAULT_SGX, pcesvn: int = DEFAULT_PCESVN,
                  fmspc: bytes = DEFAULT_FMSPC, pce_id: bytes = DEFAULT_PCE_ID, sgx_type: int = 1,
                  ca: CaType = "platform", cpusvn: bytes | None = None, extension: bytes | None = None,
                  key: ec.EllipticCurvePrivateKey | None = None, serial: int | None = None,
                  not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
                  cn: str = "Intel SGX PCK Certificate") -> IssuedPck:
        """A PCK leaf for these TCB values (or with `extension` as the SGX extension's raw DER)."""
        if extension is None:
            extension = sgx_extension(svns=svns, pcesvn=pcesvn, cpusvn=cpusvn, fmspc=fmspc, pce_id=pce_id,
                                      sgx_type=sgx_type, platform=ca == "platform")
        issuer = self.ca(ca)
        node = self._issue(cn, issuer, ca=False, key=key, serial=serial, not_before=not_before,
                           not_after=not_after or self.now + 7 * 365 * DAY,
                           extra=[x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX), extension)])
        return IssuedPck(node.key, node.der, node.pem + issuer.pem + self.root.pem, node.cert.serial_number)

    # -- signed documents ----------------------------------------------------------------------------

    def tcb_info_document(self, levels: Sequence[dict[str, Any]] | None = None, *, fmspc: bytes = DEFAULT_FMSPC,
                          pce_id: bytes = DEFAULT_PCE_ID, issue_date: dt.datetime | None = None,
                          next_update: dt.datetime | None = None,
                          module_identities: Sequence[dict[str, Any]] | None = None,
                          evaluation: int = 17) -> dict[str, Any]:
        """A TDX TCB info document (a dict a test may still edit) for `levels` (default: UpToDate + OutOfDate)."""
        document: dict[str, Any] = {
            "id": "TDX", "version": 3, "issueDate": iso(issue_date or self.now - DAY),
            "nextUpdate": iso(next_update or self.now + 29 * DAY), "fmspc": fmspc.hex().upper(),
            "pceId": pce_id.hex().upper(), "tcbType": 0, "tcbEvaluationDataNumber": evaluation,
            "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8},
            "tdxModuleIdentities": list(module_identities) if module_identities is not None else [
                module_identity("TDX_03", [isv_level(3)]), module_identity("TDX_01")],
            "tcbLevels": list(levels) if levels is not None else default_platform_levels()}
        if module_identities == []:
            del document["tdxModuleIdentities"]
        return document

    def qe_identity_document(self, levels: Sequence[dict[str, Any]] | None = None, *,
                             issue_date: dt.datetime | None = None, next_update: dt.datetime | None = None,
                             mrsigner: bytes = TD_QE_MRSIGNER, isvprodid: int = 2, miscselect: str = "00000000",
                             miscselect_mask: str = "FFFFFFFF", attributes: str = "11000000000000000000000000000000",
                             attributes_mask: str = "FBFFFFFFFFFFFFFF0000000000000000",
                             evaluation: int = 17) -> dict[str, Any]:
        return {"id": "TD_QE", "version": 2, "issueDate": iso(issue_date or self.now - DAY),
                "nextUpdate": iso(next_update or self.now + 29 * DAY), "tcbEvaluationDataNumber": evaluation,
                "miscselect": miscselect, "miscselectMask": miscselect_mask, "attributes": attributes,
                "attributesMask": attributes_mask, "mrsigner": mrsigner.hex().upper(), "isvprodid": isvprodid,
                "tcbLevels": list(levels) if levels is not None else [
                    isv_level(4), isv_level(2, "OutOfDate", OLD_DATE)]}

    def sign(self, member: str, document: dict[str, Any] | bytes, *,
             key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """A PCS response body: the document's compact JSON (or these exact bytes) and its signature."""
        signed = document if isinstance(document, bytes) else json.dumps(document, separators=(",", ":")).encode()
        signature = raw_signature(key or self.tcb_signing.key, signed)
        return b'{"' + member.encode() + b'":' + signed + b',"signature":"' + signature.hex().encode() + b'"}'

    def sign_tcb_info(self, levels: Sequence[dict[str, Any]] | None = None, **kwargs: Any) -> bytes:
        return self.sign("tcbInfo", self.tcb_info_document(levels, **kwargs))

    def sign_qe_identity(self, levels: Sequence[dict[str, Any]] | None = None, **kwargs: Any) -> bytes:
        return self.sign("enclaveIdentity", self.qe_identity_document(levels, **kwargs))

    # -- CRLs ----------------------------------------------------------------------------------------

    def _crl(self, issuer: Node, revoked: Sequence[int], this_update: dt.datetime | None,
             next_update: dt.datetime | None, signer: ec.EllipticCurvePrivateKey | None) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
                   .last_update(this_update or self.now - DAY).next_update(next_update or self.now + 29 * DAY)
                   .add_extension(x509.CRLNumber(1), critical=False))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(self.now - 2 * DAY)
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
        return builder.sign(signer or issuer.key, hashes.SHA256()).public_bytes(Encoding.DER)

    def pck_crl(self, revoked: Sequence[int] = (), *, ca: CaType = "platform", this_update: dt.datetime | None = None,
                next_update: dt.datetime | None = None, signer: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        return self._crl(self.ca(ca), revoked, this_update, next_update, signer)

    def root_crl(self, revoked: Sequence[int] = (), *, this_update: dt.datetime | None = None,
                 next_update: dt.datetime | None = None, signer: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        return self._crl(self.root, revoked, this_update, next_update, signer)

    # -- collateral sets -----------------------------------------------------------------------------

    def collateral(self, *, tcb_info: bytes | None = None, qe_identity: bytes | None = None,
                   pck_crl: bytes | None = b"", root_crl: bytes | None = b"",
                   ca: CaType = "platform") -> IntelCollateral:
        """A full collateral set (defaults: `sign_tcb_info()`, `sign_qe_identity()`, empty current CRLs;
        None leaves a CRL out)."""
        return IntelCollateral(
            tcb_info=tcb_info if tcb_info is not None else self.sign_tcb_info(),
            tcb_info_issuer_chain=self.tcb_chain_pem,
            qe_identity=qe_identity if qe_identity is not None else self.sign_qe_identity(),
            qe_identity_issuer_chain=self.tcb_chain_pem,
            pck_crl=self.pck_crl(ca=ca) if pck_crl == b"" else pck_crl,
            pck_crl_issuer_chain=self.pck_ca_chain_pem(ca),
            root_ca_crl=self.root_crl() if root_crl == b"" else root_crl)

    def write_dir(self, directory: Path, collateral: IntelCollateral | None = None) -> Path:
        """The collateral in the layout `kbs verify tdx --collateral DIR` reads."""
        save_collateral_dir(collateral or self.collateral(), directory)
        return directory


# -- a fake PCS over loopback -----------------------------------------------------------------------------

Route = tuple[str, tuple[tuple[str, str], ...]]


def _route(path_and_query: str) -> Route:
    path, _, query = path_and_query.partition("?")
    pairs = []
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        pairs.append((name, value))
    return path, tuple(sorted(pairs))


@dataclass
class FakePcs:
    """Serves scripted answers per path (query order ignored), counts requests; unknown paths answer 404."""

    routes: dict[Route, list[Reply]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    base: str = ""

    def add(self, path_and_query: str, *replies: Reply) -> None:
        self.routes[_route(path_and_query)] = list(replies)

    def serve_collateral(self, collateral: IntelCollateral, *, ca: CaType = "platform") -> None:
        """The answers PCS gives for a collateral set (issuer chains percent-encoded in their headers)."""
        document = unverified_document("tcbInfo", collateral.tcb_info)
        assert isinstance(document, TcbInfo)
        fmspc = document.fmspc
        self.add(pcs.tcb_info_path(fmspc), (200, collateral.tcb_info, {
            pcs.TCB_INFO_CHAIN_HEADER: pcs.encode_issuer_chain(collateral.tcb_info_issuer_chain)}))
        self.add(pcs.qe_identity_path(), (200, collateral.qe_identity, {
            pcs.QE_IDENTITY_CHAIN_HEADER: pcs.encode_issuer_chain(collateral.qe_identity_issuer_chain)}))
        if collateral.pck_crl is not None and collateral.pck_crl_issuer_chain is not None:
            self.add(pcs.pck_crl_path(ca), (200, collateral.pck_crl, {
                pcs.PCK_CRL_CHAIN_HEADER: pcs.encode_issuer_chain(collateral.pck_crl_issuer_chain)}))
        if collateral.root_ca_crl is not None:
            self.add("/IntelSGXRootCA.der", (200, collateral.root_ca_crl, {}))

    @property
    def root_ca_crl_url(self) -> str:
        return f"{self.base}/IntelSGXRootCA.der"

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path_qs] += 1
        return scripted(self.routes.get((request.path, tuple(sorted(request.query.items())))))


@contextlib.asynccontextmanager
async def serve(fake: FakePcs) -> AsyncIterator[str]:
    async with fake_http.serve(fake.handle, "GET") as base:
        fake.base = base
        yield base


@contextlib.contextmanager
def pcs_in_thread(fake: FakePcs) -> Iterator[FakePcs]:
    """`fake` served from a thread of its own, for code that runs its own event loop (the CLI)."""
    with fake_http.in_thread(lambda: serve(fake)):
        yield fake
