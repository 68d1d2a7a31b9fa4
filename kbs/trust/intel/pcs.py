"""Intel's Provisioning Certification Service (PCS, API v4): its URLs and the checks of its answers, on
the shared cached fetcher (`kbs.trust.fetch`: memory and disk cache, single flight, retries, the request
limit and 429 window, offline mode).  URL forms are those of reference/tdx.md §4:

- TDX TCB info: ``/tdx/certification/v4/tcb?fmspc={12 hex}``, issuer chain in `TCB-Info-Issuer-Chain`
  (API v3 and some PCCS: `SGX-TCB-Info-Issuer-Chain`);
- TD QE identity: ``/tdx/certification/v4/qe/identity``, chain in `SGX-Enclave-Identity-Issuer-Chain`;
- PCK CRL: ``/sgx/certification/v4/pckcrl?ca={platform|processor}&encoding=der``, chain in
  `SGX-PCK-CRL-Issuer-Chain`;
- Root CA CRL: ``https://certificates.trustedservices.intel.com/IntelSGXRootCA.der`` (the CRL
  distribution point of the root and the intermediates).  It is cached under that URL wherever it was
  fetched from (`root_ca_crl_url` names a mirror: a PCCS serves it at ``/sgx/certification/v4/rootcacrl``).

Issuer chains are percent-encoded PEM (signing or CA certificate, then the root).  Every answer is checked
before it is cached, and nothing that fails is cached: TCB info and QE identity must be signed over their
exact bytes by the TCB Signing certificate of their header chain, which must chain to the pinned root
(at the document's issueDate), and a TCB info must be for the FMSPC asked for; a PCK CRL must be issued
and signed by the PCK CA asked for, whose header chain ends at the pinned root; the root CA CRL must be
a CRL of the Intel SGX Root CA (its signature is checked with the root where it is used:
`collateral.verify_collateral`, and `kbs collateral` before it caches one).  Each is served from the cache
while its nextUpdate lies ahead.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Unpack

from kbs.errors import ChainInvalid, KbsError, MalformedEvidence, UsageError
from kbs.trust import revocation
from kbs.trust.fetch import (
    Fetched,
    FetchKnobs,
    Request,
    ServiceClient,
)
from kbs.trust.intel.certs import (
    CA_NAMES,
    INTEL_SIGNATURE_ALGORITHMS,
    PLATFORM,
    ROOT_CA_NAME,
    TCB_SIGNING_CN,
    CaType,
    verify_pck_ca_chain,
    verify_signing_chain,
)
from kbs.trust.intel.collateral import (
    QE_IDENTITY_MEMBER,
    TCB_INFO_MEMBER,
    IntelCollateral,
    QeIdentity,
    TcbInfo,
    unverified_document,
    verify_unchained,
)
from kbs.trust.x509 import Certificate, load_certificates

SERVICE = "pcs"  # the fetcher's service name: cache subdirectory, check labels, logger kbs.pcs
DEFAULT_BASE_URL = "https://api.trustedservices.intel.com"
ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
PCCS_ROOT_CA_CRL_PATH = "/sgx/certification/v4/rootcacrl"
TCB_INFO_CHAIN_HEADER = "TCB-Info-Issuer-Chain"
TCB_INFO_CHAIN_HEADER_V3 = "SGX-TCB-Info-Issuer-Chain"
QE_IDENTITY_CHAIN_HEADER = "SGX-Enclave-Identity-Issuer-Chain"
PCK_CRL_CHAIN_HEADER = "SGX-PCK-CRL-Issuer-Chain"
TCB_INFO_CHAIN_HEADERS = (TCB_INFO_CHAIN_HEADER, TCB_INFO_CHAIN_HEADER_V3)
# Artefact kinds in the collateral cache (kbs.trust.collateral_cache, kbs.trust.intel.cache_kinds).
KIND_TCB_INFO = "intel.tdx_tcb_info"
KIND_QE_IDENTITY = "intel.td_qe_identity"
KIND_PCK_CRL = "intel.pck_crl"
KIND_ROOT_CA_CRL = "intel.root_ca_crl"
MAX_BODY = 1 << 20  # answers are 1-20 KB
DEFAULT_RATE_PER_SECOND = 2.0
DEFAULT_BURST = 10
FMSPC_SIZE = 6
_RATE_LIMIT_HINT = "collateral changes monthly: fill the cache with `kbs collateral fetch` to need no fetch"


def parse_fmspc(value: str | bytes) -> bytes:
    """An FMSPC as 6 bytes, from 12 hex digits (either case) or the bytes themselves."""
    if isinstance(value, bytes):
        raw = value
    else:
        try:
            raw = bytes.fromhex(value)
        except ValueError as exc:
            raise UsageError(f"FMSPC {value!r} is not hex", check="pcs.fmspc") from exc
    if len(raw) != FMSPC_SIZE:
        raise UsageError(f"FMSPC is {len(raw)} bytes, wanted {FMSPC_SIZE} (12 hex digits)", check="pcs.fmspc")
    return raw


def tcb_info_path(fmspc: str | bytes) -> str:
    """``/tdx/certification/v4/tcb?fmspc=<12 lowercase hex>``."""
    return f"/tdx/certification/v4/tcb?fmspc={parse_fmspc(fmspc).hex()}"


def qe_identity_path() -> str:
    return "/tdx/certification/v4/qe/identity"


def pck_crl_path(ca: CaType) -> str:
    """``/sgx/certification/v4/pckcrl?ca=<platform|processor>&encoding=der``."""
    if ca not in CA_NAMES:
        raise UsageError(f"PCK CA must be 'platform' or 'processor', not {ca!r}", check="pcs.ca")
    return f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"


def encode_issuer_chain(pem: bytes) -> str:
    """A PEM chain as PCS sends it in a header: percent-encoded."""
    return urllib.parse.quote(pem.decode("ascii"), safe="")


def issuer_chain(headers: Mapping[str, str], names: Sequence[str]) -> bytes | None:
    """The PEM issuer chain of an answer from the first of the `names` headers present (None: absent)."""
    for name in names:
        value = headers.get(name)
        if value is not None:
            return urllib.parse.unquote(value).encode("ascii", errors="replace")
    return None


def _chain_certificates(headers: Mapping[str, str], names: Sequence[str], what: str, where: str) -> list[Certificate]:
    pem = issuer_chain(headers, names)
    if pem is None:
        raise MalformedEvidence(f"{what} from {where} came without its issuer chain (header {names[0]})",
                                check="pcs.issuer_chain")
    try:
        certs = load_certificates(pem)
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"{what} issuer chain from {where} does not parse: {exc}",
                                check="pcs.issuer_chain") from exc
    if b"-----BEGIN CERTIFICATE-----" not in pem or len(certs) != 2:
        raise MalformedEvidence(f"{what} issuer chain from {where} holds {len(certs)} certificate(s), wanted two PEM "
                                "certificates (signer, then root)", check="pcs.issuer_chain")
    return certs


def _refused(what: str, where: str, check: str, exc: KbsError) -> MalformedEvidence:
    """An answer that fails its check: the service sent something we will not cache."""
    return MalformedEvidence(f"{what} from {where} is refused: {exc.check}: {exc}", check=check)


def check_signed_answer(member: str, body: bytes, headers: Mapping[str, str], where: str, *,
                        trust_roots: Sequence[Certificate] | None = None) -> TcbInfo | QeIdentity:
    """A TCB info or QE identity answer: signed over its exact bytes by its header chain's TCB Signing
    certificate, which chains to the pinned root at the document's issueDate.  Returns the document."""
    what = "TCB info" if member == TCB_INFO_MEMBER else "QE identity"
    names = TCB_INFO_CHAIN_HEADERS if member == TCB_INFO_MEMBER else (QE_IDENTITY_CHAIN_HEADER,)
    certs = _chain_certificates(headers, names, what, where)
    signers = [c for c in certs if c.subject_cn == TCB_SIGNING_CN]
    check = f"{SERVICE}.{'tcb_info' if member == TCB_INFO_MEMBER else 'qe_identity'}"
    try:
        if len(signers) != 1:
            raise ChainInvalid(f"its issuer chain holds no {TCB_SIGNING_CN!r} certificate", check="chain.names")
        document = verify_unchained(member, body, signers[0])
        verify_signing_chain(certs, document.issue_date, what=what, trust_roots=trust_roots)
    except (ChainInvalid, MalformedEvidence) as exc:
        raise _refused(what, where, check, exc) from exc
    return document


def check_tcb_info_answer(body: bytes, headers: Mapping[str, str], where: str, fmspc: bytes, *,
                          trust_roots: Sequence[Certificate] | None = None) -> None:
    document = check_signed_answer(TCB_INFO_MEMBER, body, headers, where, trust_roots=trust_roots)
    assert isinstance(document, TcbInfo)
    if document.fmspc != fmspc:
        raise MalformedEvidence(f"TCB info from {where} is for FMSPC {document.fmspc.hex()}, asked for "
                                f"{fmspc.hex()}", check=f"{SERVICE}.tcb_info")


def check_pck_crl_answer(body: bytes, headers: Mapping[str, str], where: str, ca: CaType, *,
                         trust_roots: Sequence[Certificate] | None = None) -> None:
    """Issued and signed by the PCK CA asked for, whose header chain ends at the pinned root."""
    certs = _chain_certificates(headers, (PCK_CRL_CHAIN_HEADER,), "PCK CRL", where)
    check = f"{SERVICE}.pck_crl"
    try:
        crl = revocation.parse_crl(body)
        if crl.issuer_cn != CA_NAMES[ca]:
            raise ChainInvalid(f"it is issued by {crl.issuer_cn!r}, asked for the CRL of {CA_NAMES[ca]!r}",
                               check="crl.issuer")
        chain = verify_pck_ca_chain(certs, crl.this_update, trust_roots=trust_roots)
        revocation.check_crl(crl, chain.leaf, [], crl.this_update, algorithms=INTEL_SIGNATURE_ALGORITHMS)
    except (ChainInvalid, MalformedEvidence) as exc:
        raise _refused("PCK CRL", where, check, exc) from exc


def check_root_ca_crl_answer(body: bytes, where: str) -> None:
    """A CRL of the Intel SGX Root CA (its signature is checked with the pinned root where it is used)."""
    try:
        crl = revocation.parse_crl(body)
    except (ChainInvalid, MalformedEvidence) as exc:
        raise _refused("root CA CRL", where, f"{SERVICE}.root_ca_crl", exc) from exc
    if crl.issuer_cn != ROOT_CA_NAME:
        raise MalformedEvidence(f"root CA CRL from {where} is issued by {crl.issuer_cn!r}, not {ROOT_CA_NAME!r}",
                                check=f"{SERVICE}.root_ca_crl")


def document_valid_until(member: str) -> Callable[[bytes, Mapping[str, str]], datetime | None]:
    """The nextUpdate of a TCB info or QE identity body (None if it does not parse)."""
    def valid_until(body: bytes, headers: Mapping[str, str]) -> datetime | None:
        try:
            return unverified_document(member, body).next_update
        except KbsError:
            return None
    return valid_until


def crl_valid_until(body: bytes, headers: Mapping[str, str]) -> datetime | None:
    """A CRL is current until its nextUpdate (one without is never served from a cache)."""
    try:
        return revocation.parse_crl(body).next_update
    except KbsError:
        return None


@dataclass(frozen=True)
class PcsAnswer:
    """An answer with its issuer chain (PEM, decoded from the header; None for the root CA CRL)."""

    body: bytes
    issuer_chain: bytes | None
    fetched: Fetched


class PcsClient(ServiceClient):
    """Fetch TDX TCB info, TD QE identity, PCK CRLs and the root CA CRL through the cached fetcher.

    `trust_roots` replace the pinned Intel root in the answers' checks (labs, tests).  `root_ca_crl_url`
    fetches the root CA CRL from a mirror (it is cached under Intel's URL all the same).  The other
    knobs are the fetcher's (`kbs.trust.fetch.Fetcher`): retries, the request limit, remembered
    failures, memory budgets, `token_wait` for command-line use, and `clock`/`now` for tests."""

    service, label, default_base_url = SERVICE, "Intel PCS", DEFAULT_BASE_URL
    default_rate_per_second, default_burst = DEFAULT_RATE_PER_SECOND, DEFAULT_BURST
    max_body, rate_limit_hint = MAX_BODY, _RATE_LIMIT_HINT

    def __init__(self, base_url: str | None = None, cache_dir: Path | None = None, offline: bool = False, *,
                 root_ca_crl_url: str = ROOT_CA_CRL_URL, trust_roots: Sequence[Certificate] | None = None,
                 **knobs: Unpack[FetchKnobs]) -> None:
        if not root_ca_crl_url.startswith(("https://", "http://")):
            raise UsageError(f"root CA CRL URL must be http(s), not {root_ca_crl_url!r}", check="pcs.config")
        super().__init__(base_url, cache_dir, offline, **knobs)
        self.root_ca_crl_url = root_ca_crl_url
        self.trust_roots = tuple(trust_roots) if trust_roots is not None else None

    # -- requests (URLs and answer checks): also what `kbs collateral` looks up -----------

    def tcb_info_request(self, fmspc: str | bytes) -> Request:
        wanted = parse_fmspc(fmspc)
        roots = self.trust_roots

        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            check_tcb_info_answer(body, headers, where, wanted, trust_roots=roots)

        return Request(tcb_info_path(wanted), f"TDX TCB info for FMSPC {wanted.hex()}", KIND_TCB_INFO, validate,
                       valid_until=document_valid_until(TCB_INFO_MEMBER), keep_headers=TCB_INFO_CHAIN_HEADERS)

    def qe_identity_request(self) -> Request:
        roots = self.trust_roots

        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            check_signed_answer(QE_IDENTITY_MEMBER, body, headers, where, trust_roots=roots)

        return Request(qe_identity_path(), "TD QE identity", KIND_QE_IDENTITY, validate,
                       valid_until=document_valid_until(QE_IDENTITY_MEMBER), keep_headers=(QE_IDENTITY_CHAIN_HEADER,))

    def pck_crl_request(self, ca: CaType = PLATFORM) -> Request:
        path = pck_crl_path(ca)
        roots = self.trust_roots

        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            check_pck_crl_answer(body, headers, where, ca, trust_roots=roots)

        return Request(path, f"PCK CRL of the {CA_NAMES[ca]}", KIND_PCK_CRL, validate, valid_until=crl_valid_until,
                       keep_headers=(PCK_CRL_CHAIN_HEADER,))

    def root_ca_crl_request(self) -> Request:
        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            check_root_ca_crl_answer(body, where)

        mirror = None if self.root_ca_crl_url == ROOT_CA_CRL_URL else self.root_ca_crl_url
        return Request(ROOT_CA_CRL_URL, "Intel SGX Root CA CRL", KIND_ROOT_CA_CRL, validate,
                       valid_until=crl_valid_until, url=mirror)

    # -- public API -----------------------------------------------------------------

    async def _answer(self, request: Request, chain_headers: Sequence[str]) -> PcsAnswer:
        fetched = await self.fetcher.fetch(request)
        chain = issuer_chain(fetched.headers, chain_headers) if chain_headers else None
        return PcsAnswer(fetched.body, chain, fetched)

    async def tcb_info(self, fmspc: str | bytes) -> PcsAnswer:
        """The TDX TCB info body for an FMSPC and its issuer chain (checked as the module says)."""
        return await self._answer(self.tcb_info_request(fmspc), TCB_INFO_CHAIN_HEADERS)

    async def qe_identity(self) -> PcsAnswer:
        return await self._answer(self.qe_identity_request(), (QE_IDENTITY_CHAIN_HEADER,))

    async def pck_crl(self, ca: CaType = PLATFORM) -> PcsAnswer:
        return await self._answer(self.pck_crl_request(ca), (PCK_CRL_CHAIN_HEADER,))

    async def root_ca_crl(self) -> bytes:
        return (await self.fetcher.fetch(self.root_ca_crl_request())).body

    async def collateral(self, fmspc: str | bytes, ca: CaType = PLATFORM) -> IntelCollateral:
        """Everything a TDX quote of this FMSPC and PCK CA needs, fetched concurrently (or from the cache)."""
        tcb_info, qe_identity, pck_crl, root_ca_crl = await asyncio.gather(
            self.tcb_info(fmspc), self.qe_identity(), self.pck_crl(ca), self.root_ca_crl())
        assert tcb_info.issuer_chain is not None and qe_identity.issuer_chain is not None
        return IntelCollateral(tcb_info=tcb_info.body, tcb_info_issuer_chain=tcb_info.issuer_chain,
                               qe_identity=qe_identity.body, qe_identity_issuer_chain=qe_identity.issuer_chain,
                               pck_crl=pck_crl.body, pck_crl_issuer_chain=pck_crl.issuer_chain,
                               root_ca_crl=root_ca_crl)

