"""Intel artefacts in the collateral cache (`kbs collateral`): TDX TCB info, TD QE identity, PCK CRLs and the
root CA CRL, stored as Intel PCS sends them (JSON and DER bodies, issuer chains percent-encoded in their
headers) under the keys `pcs.PcsClient` looks them up by.

Each kind's check is the client's own check of an answer (so whatever enters the cache is what the client
accepts from it), plus: the cache key must be the one the artefact belongs under (the FMSPC read from the
TCB info, the CA from the CRL's issuer), and it must be in force already.  The root CA CRL must also be
signed by a pinned root certificate at hand (from a cached or given issuer chain, or `--trust-root`).

`entries_from_collateral` and `entries_from_inputs` turn what an operator has (a `--collateral` directory,
a dcap-qvl bundle, PCS JSON bodies with their chains as PEM files, CRLs) into cache entries; nothing is
written until `CollateralCache.admit` has checked the whole batch.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kbs.errors import ChainInvalid, CollateralUnavailable, KbsError, MalformedEvidence
from kbs.trust import revocation
from kbs.trust.cachedir import CacheKey, Entry
from kbs.trust.collateral_cache import ArtefactKind, CheckContext
from kbs.trust.intel.certs import (
    INTEL_SIGNATURE_ALGORITHMS,
    ROOT_CA_NAME,
    TCB_SIGNING_CN,
    ca_type_of,
    intel_roots,
)
from kbs.trust.intel.collateral import (
    QE_IDENTITY_MEMBER,
    TCB_INFO_MEMBER,
    IntelCollateral,
    TcbInfo,
    frame,
    unverified_document,
)
from kbs.trust.intel.offline import load_dcap_qvl_bundle
from kbs.trust.intel.pcs import (
    KIND_PCK_CRL,
    KIND_QE_IDENTITY,
    KIND_ROOT_CA_CRL,
    KIND_TCB_INFO,
    PCK_CRL_CHAIN_HEADER,
    QE_IDENTITY_CHAIN_HEADER,
    ROOT_CA_CRL_URL,
    SERVICE,
    TCB_INFO_CHAIN_HEADER,
    TCB_INFO_CHAIN_HEADERS,
    check_pck_crl_answer,
    check_root_ca_crl_answer,
    check_signed_answer,
    crl_valid_until,
    document_valid_until,
    encode_issuer_chain,
    issuer_chain,
    pck_crl_path,
    qe_identity_path,
    tcb_info_path,
)
from kbs.trust.x509 import Certificate, load_certificates

INTEL_PREFIX = "Intel SGX "


def _expect_key(entry: Entry, path: str) -> None:
    wanted = CacheKey("GET", path)
    if entry.key != wanted:
        raise MalformedEvidence(f"stored under {entry.key}, but the artefact belongs under {wanted}",
                                check="collateral.key")


def _where(entry: Entry) -> str:
    return f"the cache entry {entry.key}"


def _in_force(what: str, since: datetime, context: CheckContext) -> None:
    if since > context.now:
        raise ChainInvalid(f"{what} is not in force before {since.isoformat()}", check="collateral.validity")


def check_document_entry(member: str, entry: Entry, context: CheckContext) -> None:
    """TCB info or QE identity: signed over its exact bytes by its header chain's TCB Signing certificate,
    chained to the pinned (or configured) root; stored under its FMSPC's (or the QE identity's) path."""
    document = check_signed_answer(member, entry.body, entry.headers, _where(entry),
                                   trust_roots=context.trust_roots)
    if isinstance(document, TcbInfo):
        _expect_key(entry, tcb_info_path(document.fmspc))
        what = f"TCB info for FMSPC {document.fmspc.hex()}"
    else:
        _expect_key(entry, qe_identity_path())
        what = "QE identity"
    _in_force(what, document.issue_date, context)


def check_tcb_info_entry(entry: Entry, context: CheckContext) -> None:
    check_document_entry(TCB_INFO_MEMBER, entry, context)


def check_qe_identity_entry(entry: Entry, context: CheckContext) -> None:
    check_document_entry(QE_IDENTITY_MEMBER, entry, context)


def check_pck_crl_entry(entry: Entry, context: CheckContext) -> None:
    """Issued and signed by the PCK CA its key names, whose header chain ends at the pinned root."""
    crl = revocation.parse_crl(entry.body)
    ca = ca_type_of(crl.issuer_cn)
    _expect_key(entry, pck_crl_path(ca))
    check_pck_crl_answer(entry.body, entry.headers, _where(entry), ca, trust_roots=context.trust_roots)
    _in_force(f"the PCK CRL of {crl.issuer_cn}", crl.this_update, context)


def check_root_ca_crl_entry(entry: Entry, context: CheckContext) -> None:
    """A CRL of the Intel SGX Root CA, signed by a pinned (or configured) root certificate at hand."""
    _expect_key(entry, ROOT_CA_CRL_URL)
    check_root_ca_crl_answer(entry.body, _where(entry))
    crl = revocation.parse_crl(entry.body)
    _in_force("the Intel SGX Root CA CRL", crl.this_update, context)
    roots = intel_roots(context.trust_roots)
    candidates = {c.der: c for c in (*roots.certificates, *context.certificates) if roots.pin_of(c) is not None}
    if not candidates:
        raise CollateralUnavailable("no pinned Intel SGX Root CA certificate is given or cached to check the root CA "
                                    "CRL against: add it with TCB info (its issuer chain carries the root) or the "
                                    "root's PEM", check="collateral.root")
    failure: ChainInvalid | None = None
    for root in candidates.values():
        try:  # authentic and well-formed; whether it is still current is the cache's valid_until
            revocation.check_crl(crl, root, [], crl.this_update, algorithms=INTEL_SIGNATURE_ALGORITHMS)
            return
        except ChainInvalid as exc:
            failure = exc
    assert failure is not None
    raise failure


def _header_certificates(headers: Mapping[str, str], names: Sequence[str]) -> Sequence[Certificate]:
    pem = issuer_chain(headers, names)
    if pem is None:
        return ()
    try:
        return load_certificates(pem)
    except KbsError:
        return ()


INTEL_KINDS = (
    ArtefactKind(KIND_TCB_INFO, SERVICE, "Intel TDX TCB info", check_tcb_info_entry,
                 valid_until=document_valid_until(TCB_INFO_MEMBER),
                 certificates=lambda entry: _header_certificates(entry.headers, TCB_INFO_CHAIN_HEADERS)),
    ArtefactKind(KIND_QE_IDENTITY, SERVICE, "Intel TD QE identity", check_qe_identity_entry,
                 valid_until=document_valid_until(QE_IDENTITY_MEMBER),
                 certificates=lambda entry: _header_certificates(entry.headers, (QE_IDENTITY_CHAIN_HEADER,))),
    ArtefactKind(KIND_PCK_CRL, SERVICE, "Intel PCK CRL", check_pck_crl_entry, valid_until=crl_valid_until,
                 certificates=lambda entry: _header_certificates(entry.headers, (PCK_CRL_CHAIN_HEADER,))),
    ArtefactKind(KIND_ROOT_CA_CRL, SERVICE, "Intel SGX Root CA CRL", check_root_ca_crl_entry,
                 valid_until=crl_valid_until),
)


# -- entries from what an operator has ---------------------------------------------------------------

def pem(certificates: Sequence[Certificate]) -> bytes:
    """Certificates as PEM, in order."""
    out = []
    for cert in certificates:
        text = base64.b64encode(cert.der)
        lines = b"\n".join(text[i:i + 64] for i in range(0, len(text), 64))
        out.append(b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n")
    return b"".join(out)


def _crl_der(data: bytes, source: str) -> bytes:
    try:
        return revocation.parse_crl(data).der
    except KbsError as exc:
        raise MalformedEvidence(f"{source}: the CRL does not parse: {exc}", check="collateral.file") from exc


def _pck_crl_entry(der: bytes, chain: bytes, source: str, now: datetime) -> Entry:
    ca = ca_type_of(revocation.parse_crl(der).issuer_cn)
    return Entry(SERVICE, KIND_PCK_CRL, CacheKey("GET", pck_crl_path(ca)), der, source, now,
                 headers={PCK_CRL_CHAIN_HEADER: encode_issuer_chain(chain)})


def _root_crl_entry(der: bytes, source: str, now: datetime) -> Entry:
    return Entry(SERVICE, KIND_ROOT_CA_CRL, CacheKey("GET", ROOT_CA_CRL_URL), der, source, now)


def _document_entry(member: str, body: bytes, chain: bytes, source: str, now: datetime) -> Entry:
    document = unverified_document(member, body)
    if isinstance(document, TcbInfo):
        return Entry(SERVICE, KIND_TCB_INFO, CacheKey("GET", tcb_info_path(document.fmspc)), body, source, now,
                     headers={TCB_INFO_CHAIN_HEADER: encode_issuer_chain(chain)})
    return Entry(SERVICE, KIND_QE_IDENTITY, CacheKey("GET", qe_identity_path()), body, source, now,
                 headers={QE_IDENTITY_CHAIN_HEADER: encode_issuer_chain(chain)})


def entries_from_collateral(collateral: IntelCollateral, source: str, now: datetime) -> list[Entry]:
    """Cache entries for a collateral set (a `--collateral` directory, a dcap-qvl bundle); checked later."""
    entries = [_document_entry(TCB_INFO_MEMBER, collateral.tcb_info, collateral.tcb_info_issuer_chain, source, now),
               _document_entry(QE_IDENTITY_MEMBER, collateral.qe_identity, collateral.qe_identity_issuer_chain,
                               source, now)]
    if collateral.pck_crl is not None:
        if not collateral.pck_crl_issuer_chain:
            raise CollateralUnavailable(f"{source}: the PCK CRL comes without its issuer chain "
                                        "(pck_crl_issuer_chain.pem)", check="collateral.issuer_chain")
        entries.append(_pck_crl_entry(_crl_der(collateral.pck_crl, source), collateral.pck_crl_issuer_chain, source,
                                      now))
    if collateral.root_ca_crl is not None:
        entries.append(_root_crl_entry(_crl_der(collateral.root_ca_crl, source), source, now))
    return entries


@dataclass
class IntelInputs:
    """Intel artefacts given to `kbs collateral add`, sorted by what they are."""

    collaterals: list[tuple[str, IntelCollateral]] = field(default_factory=list)
    documents: list[tuple[str, bytes]] = field(default_factory=list)  # PCS TCB info / QE identity bodies
    crls: list[tuple[str, bytes]] = field(default_factory=list)
    certificates: list[Certificate] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.collaterals or self.documents or self.crls or self.certificates)

    def add_json(self, source: str, data: bytes) -> None:
        """A PCS JSON body (TCB info or QE identity) or a dcap-qvl collateral bundle."""
        try:
            members = frame(data, what=source, check="collateral.file")
        except MalformedEvidence:
            members = {}
        if TCB_INFO_MEMBER in members or QE_IDENTITY_MEMBER in members:
            self.documents.append((source, data))
        elif "tcb_info" in members:
            self.collaterals.append((source, load_dcap_qvl_bundle(data)))
        else:
            names = ", ".join(sorted(members)) or "none readable"
            raise MalformedEvidence(f"{source} is JSON but neither a PCS TCB info or QE identity body nor a dcap-qvl "
                                    f"collateral bundle (its members: {names})", check="collateral.file")


def is_intel_certificate(cert: Certificate) -> bool:
    return cert.subject_cn.startswith(INTEL_PREFIX)


def is_intel_crl(data: bytes) -> bool:
    try:
        return revocation.parse_crl(data).issuer_cn.startswith(INTEL_PREFIX)
    except KbsError:
        return False


def _issuer_of(cert: Certificate, pool: Sequence[Certificate]) -> Certificate | None:
    """The certificate named as `cert`'s issuer, the pinned one first (the checks say whether it signed)."""
    roots = intel_roots(None)
    named = sorted((c for c in pool if c.subject_der == cert.issuer_der), key=lambda c: roots.pin_of(c) is None)
    return named[0] if named else None


def _signing_chain(body: bytes, member: str, source: str, pool: Sequence[Certificate]) -> bytes:
    """The TCB Signing certificate valid at the document's issue date, and its root, from the pool."""
    document = unverified_document(member, body)
    signers = [c for c in pool if c.subject_cn == TCB_SIGNING_CN]
    if not signers:
        raise CollateralUnavailable(f"{source}: give its issuer chain too (the TCB Signing certificate and root, e.g. "
                                    "tcb_info_issuer_chain.pem)", check="collateral.issuer_chain")
    signers.sort(key=lambda c: not c.not_before <= document.issue_date <= c.not_after)
    signer = signers[0]
    root = _issuer_of(signer, pool)
    if root is None:
        raise CollateralUnavailable(f"{source}: the {signer.issuer_cn} that issued its TCB Signing certificate is "
                                    "neither given nor cached", check="collateral.issuer_chain")
    return pem([signer, root])


def entries_from_inputs(inputs: IntelInputs, pool: Sequence[Certificate], now: datetime) -> list[Entry]:
    """Cache entries for Intel files: issuer chains come from the given (or cached, `pool`) certificates."""
    certificates = list({c.der: c for c in (*inputs.certificates, *pool)}.values())
    entries: list[Entry] = []
    for source, collateral in inputs.collaterals:
        entries += entries_from_collateral(collateral, source, now)
    for source, body in inputs.documents:
        member = TCB_INFO_MEMBER if TCB_INFO_MEMBER in frame(body, what=source, check="collateral.file") \
            else QE_IDENTITY_MEMBER
        entries.append(_document_entry(member, body, _signing_chain(body, member, source, certificates), source, now))
    for source, data in inputs.crls:
        der = _crl_der(data, source)
        crl = revocation.parse_crl(der)
        if crl.issuer_cn == ROOT_CA_NAME:
            entries.append(_root_crl_entry(der, source, now))
            continue
        ca_type_of(crl.issuer_cn)
        ca = next((c for c in certificates if c.subject_der == crl.issuer_der), None)
        root = _issuer_of(ca, certificates) if ca is not None else None
        if ca is None or root is None:
            raise CollateralUnavailable(f"{source}: give the {crl.issuer_cn} certificate and the root too (e.g. "
                                        "pck_crl_issuer_chain.pem)", check="collateral.issuer_chain")
        entries.append(_pck_crl_entry(der, pem([ca, root]), source, now))
    return entries
