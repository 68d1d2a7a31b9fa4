"""AMD artefacts in the collateral cache: VCEKs, ASK/ASVK + ARK chains and the ARK's CRLs.

Each is checked against the pinned ARKs (or the configured trust roots) before it is cached, and
its cache key is derived from the artefact itself, so it lands exactly where `KdsClient` looks:

- a VCEK: the chain ARK -> ASK -> VCEK verifies (`certs.verify_chain`, at the given time); its
  product comes from the chain, its hwID and SPLs from its extensions -> the VCEK URL path;
- an ASK (or ASVK) + ARK chain: the ARK is pinned (or a trust root), signs itself and the ASK,
  both are CAs and valid at the given time -> ``/vcek|vlek/v1/{P}/cert_chain``, stored as KDS
  serves it (two PEM certificates, ARK last);
- a CRL: issued and signed by a pinned (or trusted) ARK-{P}, already in force ->
  ``/vcek/v1/{P}/crl`` (or the VLEK path: which of the two a CRL is for cannot be read from it).

VLEKs are not cached: KDS serves none (only the cloud provider obtains them), so a guest sends its
VLEK with the evidence; the ASVK chain and CRL are cached like the ASK's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cryptography import x509 as pyca_x509
from cryptography.hazmat.primitives.serialization import Encoding

from kbs.errors import ChainInvalid, CollateralUnavailable, KbsError, MalformedEvidence, UsageError
from kbs.trust import revocation
from kbs.trust.amd.certs import (
    AMD_SIGNATURE_ALGORITHMS,
    PRODUCTS,
    VCEK,
    VLEK,
    AmdChain,
    CertBundle,
    amd_roots,
    parse_vek_extensions,
    verify_chain,
)
from kbs.trust.amd.kds import (
    CHIP_ID_SIZE,
    KIND_CERT_CHAIN,
    KIND_CRL,
    KIND_VCEK,
    SERVICE,
    cert_chain_path,
    check_crl_form,
    check_vcek,
    crl_path,
    crl_valid_until,
    parse_cert_chain,
    vcek_url_path,
)
from kbs.trust.cachedir import CacheKey, Entry
from kbs.trust.chain import walk_chain
from kbs.trust.collateral_cache import ArtefactKind, CheckContext
from kbs.trust.signature import verify_link
from kbs.trust.x509 import Certificate, load_certificates

_CHAIN_PATH = re.compile(r"^/(vcek|vlek)/v1/([A-Za-z]+)/cert_chain$")
_CRL_PATH = re.compile(r"^/(vcek|vlek)/v1/([A-Za-z]+)/crl$")


@dataclass(frozen=True)
class Sourced:
    """An input artefact and the file it came from."""

    source: str
    certificate: Certificate | None = None
    crl: bytes | None = None


def _pem(der: bytes) -> bytes:
    return pyca_x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def _anchored(ark: Certificate, product: str, trust_roots: Sequence[Certificate] | None) -> bool:
    """The ARK is the pinned AMD root of `product` (or one of the operator's roots)."""
    return ark.fingerprint in {pin.fingerprint for pin in amd_roots(product, trust_roots).pins}


def _issued(child: Certificate, issuer: Certificate) -> bool:
    try:
        verify_link(child, issuer, AMD_SIGNATURE_ALGORITHMS)
    except ChainInvalid:
        return False
    return True


def _arks(product: str, context: CheckContext) -> list[Certificate]:
    """Candidate ARK-{P} certificates, anchored ones only."""
    out = []
    for cert in context.certificates:
        if cert.subject_cn == f"ARK-{product}" and _anchored(cert, product, context.trust_roots):
            out.append(cert)
    return list({c.der: c for c in out}.values())


def _expect_key(entry: Entry, path: str) -> None:
    wanted = CacheKey("GET", path)
    if entry.key != wanted:
        raise MalformedEvidence(f"stored under {entry.key}, but the artefact belongs under {wanted}",
                                check="collateral.key")


def _product_kind(entry: Entry, pattern: re.Pattern[str]) -> tuple[str, str]:
    match = pattern.match(entry.key.path)
    if entry.key.method != "GET" or match is None or match.group(2) not in PRODUCTS:
        raise MalformedEvidence(f"{entry.key} is not a KDS {entry.kind} path", check="collateral.key")
    return match.group(2), match.group(1).upper()


# -- VCEK ----------------------------------------------------------------------------------

def vcek_chain(vek: Certificate, context: CheckContext) -> AmdChain:
    """The verified chain of a VCEK from the context's certificates: each ASK and ARK candidate is
    tried, since a cache may hold a lab's chain beside AMD's."""
    asks = [c for c in context.certificates if c.subject_cn == vek.issuer_cn]
    if not asks:
        raise CollateralUnavailable(f"the {vek.issuer_cn} that issued this {vek.subject_cn} is neither given nor "
                                    "cached: add its ASK + ARK chain too", check="collateral.ask")
    errors: list[KbsError] = []
    for ask in {c.der: c for c in asks}.values():
        for ark in {c.der: c for c in context.certificates if c.subject_cn == ask.issuer_cn}.values():
            try:
                return verify_chain(vek, CertBundle.of([vek, ask, ark]), context.at, context.trust_roots)
            except KbsError as exc:
                errors.append(exc)
    if not errors:
        raise CollateralUnavailable(f"the root {asks[0].issuer_cn} of this {vek.subject_cn}'s chain is neither "
                                    "given nor cached", check="collateral.ark")
    # A chain that verifies up to a root that is not trusted says more than a link that does not verify.
    raise next((e for e in errors if e.check == "chain.root"), errors[0])


def _vcek_path(vek: Certificate, product: str) -> tuple[str, bytes]:
    ext = parse_vek_extensions(vek)
    if ext.hwid is None:
        raise ChainInvalid("the VCEK carries no hwID", check="vek.extensions")
    chip_id = ext.hwid.ljust(CHIP_ID_SIZE, b"\0")
    return vcek_url_path(product, chip_id, ext), chip_id


def check_vcek_entry(entry: Entry, context: CheckContext) -> None:
    certs = load_certificates(entry.body)
    if len(certs) != 1 or certs[0].der != entry.body:
        raise MalformedEvidence("a cached VCEK must be exactly one DER certificate", check="collateral.form")
    vek = certs[0]
    if vek.subject_cn != "SEV-VCEK":
        raise MalformedEvidence(f"certificate {vek.subject_cn!r} is not a VCEK", check="collateral.form")
    chain = vcek_chain(vek, context)
    path, chip_id = _vcek_path(vek, chain.product)
    _expect_key(entry, path)
    check_vcek(entry.body, f"the cache entry {entry.key}", chain.product, chip_id, chain.extensions)


# -- certificate chain ---------------------------------------------------------------------

def check_chain_entry(entry: Entry, context: CheckContext) -> None:
    """ASK (or ASVK) issued by the ARK, the ARK pinned, both CAs valid at the time: the shared walker."""
    product, kind = _product_kind(entry, _CHAIN_PATH)
    ask, ark = parse_cert_chain(entry.body, f"the cache entry {entry.key}", product, kind)
    walk_chain(ask, [ark], amd_roots(product, context.trust_roots), context.at, depth=2,
               algorithms=AMD_SIGNATURE_ALGORITHMS)
    if not ask.is_ca():
        raise ChainInvalid(f"{ask.subject_cn} is not a CA certificate", check="chain.ca")


def chain_certificates(entry: Entry) -> Sequence[Certificate]:
    try:
        return load_certificates(entry.body)
    except KbsError:
        return ()


# -- CRL -----------------------------------------------------------------------------------

def check_crl_entry(entry: Entry, context: CheckContext) -> None:
    """Signed by the pinned ARK with AMD's algorithm, and current now (the shared CRL check)."""
    product, _ = _product_kind(entry, _CRL_PATH)
    check_crl_form(entry.body, f"the cache entry {entry.key}")
    arks = _arks(product, context)
    if not arks:
        raise CollateralUnavailable(f"no pinned (or trusted) ARK-{product} is given or cached to check the CRL "
                                    f"against: add the {product} ASK + ARK chain too", check="collateral.ark")
    crl = revocation.parse_crl(entry.body)
    if crl.this_update > context.now:
        raise ChainInvalid(f"the CRL is not in force before {crl.this_update.isoformat()}", check="crl.validity")
    failure: ChainInvalid | None = None
    for ark in arks:
        try:  # authentic and well-formed; whether it is still current is the cache's valid_until
            revocation.check_crl(crl, ark, [], crl.this_update, algorithms=AMD_SIGNATURE_ALGORITHMS)
            return
        except ChainInvalid as exc:
            failure = exc
    assert failure is not None
    raise failure


AMD_KINDS = (
    ArtefactKind(KIND_VCEK, SERVICE, "AMD VCEK certificate", check_vcek_entry),
    ArtefactKind(KIND_CERT_CHAIN, SERVICE, "AMD ASK/ASVK + ARK chain", check_chain_entry,
                 certificates=chain_certificates),
    ArtefactKind(KIND_CRL, SERVICE, "AMD ARK CRL", check_crl_entry, valid_until=crl_valid_until),
)


# -- entries from files (kbs collateral add) ------------------------------------------------

def entries_from_files(inputs: Sequence[Sourced], context: CheckContext, now: datetime,
                       crl_kind: str = VCEK) -> list[Entry]:
    """Cache entries for AMD certificates and CRLs: keys derived from the artefacts; checked later
    (`CollateralCache.admit`).  ASKs and ARKs given become one cert_chain entry per ASK/ASVK."""
    certs = [i for i in inputs if i.certificate is not None]
    bundle = CertBundle.of(i.certificate for i in certs if i.certificate is not None)
    source = {i.certificate.der: i.source for i in certs if i.certificate is not None}
    entries: list[Entry] = []
    for vek in bundle.veks:
        if vek.subject_cn == f"SEV-{VLEK}":
            raise UsageError(f"{source[vek.der]}: a VLEK is not cached: KDS serves none, so the guest sends it "
                             "with the evidence (its ASVK + ARK chain and CRL can be cached)", check="collateral.vlek")
        product = vek.issuer_cn.removeprefix("SEV-")
        if product not in PRODUCTS:
            raise ChainInvalid(f"{source[vek.der]}: VCEK issuer {vek.issuer_cn!r} is no AMD product's ASK",
                               check="chain.names")
        path, _ = _vcek_path(vek, product)
        entries.append(Entry(SERVICE, KIND_VCEK, CacheKey("GET", path), vek.der, source[vek.der], now))
    pool = [*bundle.roots, *context.certificates]
    for ask in bundle.intermediates:
        kind = VLEK if ask.subject_cn.startswith("SEV-VLEK-") else VCEK
        product = ask.subject_cn.removeprefix("SEV-VLEK-").removeprefix("SEV-")
        if product not in PRODUCTS:
            raise ChainInvalid(f"{source[ask.der]}: {ask.subject_cn!r} is no AMD product's ASK or ASVK",
                               check="chain.names")
        candidates = list({c.der: c for c in pool if c.subject_cn == ask.issuer_cn}.values())
        if not candidates:
            raise CollateralUnavailable(f"{source[ask.der]}: the {ask.issuer_cn} that issued {ask.subject_cn} is "
                                        "neither given nor cached: add the file with the ARK too",
                                        check="collateral.ark")
        # The ARK that signed this ASK, a trusted one first; the check (admit) says what is wrong otherwise.
        anchored = {c.der for c in _arks(product, replace(context, certificates=candidates))}
        ark = max(candidates, key=lambda c: (_issued(ask, c), c.der in anchored))
        body = _pem(ask.der) + _pem(ark.der)
        entries.append(Entry(SERVICE, KIND_CERT_CHAIN, CacheKey("GET", cert_chain_path(product, kind)), body,
                             source[ask.der], now))
    for item in inputs:
        if item.crl is None:
            continue
        crl = pyca_x509.load_der_x509_crl(item.crl)
        names = crl.issuer.get_attributes_for_oid(pyca_x509.NameOID.COMMON_NAME)
        issuer = str(names[0].value) if names else ""
        product = issuer.removeprefix("ARK-")
        if not issuer.startswith("ARK-") or product not in PRODUCTS:
            raise ChainInvalid(f"{item.source}: CRL issuer {issuer!r} is not an AMD ARK", check="crl.issuer")
        entries.append(Entry(SERVICE, KIND_CRL, CacheKey("GET", crl_path(product, crl_kind)), item.crl,
                             item.source, now))
    return entries


def read_inputs(path: Path, data: bytes) -> list[Sourced]:
    """The certificates or the CRL in one file: PEM or DER.  UsageError if it holds neither."""
    source = f"file:{path.resolve()}"
    if b"-----BEGIN X509 CRL-----" in data:
        try:
            crl = pyca_x509.load_pem_x509_crl(data)
        except ValueError as exc:
            raise UsageError(f"{path}: the PEM CRL does not parse: {exc}", check="collateral.file") from exc
        return [Sourced(source, crl=crl.public_bytes(Encoding.DER))]
    try:
        return [Sourced(source, certificate=c) for c in load_certificates(data)]
    except MalformedEvidence as cert_error:
        try:
            pyca_x509.load_der_x509_crl(data)
        except ValueError:
            raise UsageError(f"{path} holds neither certificates (PEM or DER) nor a CRL ({cert_error})",
                             check="collateral.file") from cert_error
        return [Sourced(source, crl=data)]

