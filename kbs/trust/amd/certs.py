"""AMD's certificate chain for SEV-SNP: ARK -> ASK (or ASVK) -> VCEK (or VLEK).

Only AMD's specifics live here: the ARK pins (reference/snp.md §6), the profile AMD signs with
(RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48, on every link and on the CRL), the names of the three
certificates, the VEK extensions and the product named by the ARK.  The walk itself (pin first,
signatures, CA constraints, validity at the given time, the DER-keyed cache) is
`kbs.trust.chain.walk_chain`, and the CRL check is `kbs.trust.revocation.check_crl`.

The ARK is trusted only by SHA-256 fingerprint, or by an operator-supplied trust root that
replaces the pins (labs, tests).  AMD's own checks of a walked chain do not depend on time either,
so they are cached by the exact DER bytes too (in a byte-bounded LRU).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, CollateralUnavailable
from kbs.trust import revocation
from kbs.trust.chain import Pin, PinnedRoots, walk_chain
from kbs.trust.signature import RSA_PSS_SHA384
from kbs.trust.x509 import (
    OID_EC_PUBLIC_KEY,
    OID_SECP384R1,
    Certificate,
)

PRODUCTS = ("Milan", "Genoa", "Turin")

# SHA-256 over the DER ARK certificates (reference/snp.md §6).
PINNED_ARKS: dict[str, str] = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

_KDS_ARC = "1.3.6.1.4.1.3704.1."
OID_STRUCT_VERSION = _KDS_ARC + "1"
OID_PRODUCT_NAME = _KDS_ARC + "2"
OID_BL_SPL = _KDS_ARC + "3.1"
OID_TEE_SPL = _KDS_ARC + "3.2"
OID_SNP_SPL = _KDS_ARC + "3.3"
OID_UCODE_SPL = _KDS_ARC + "3.8"
OID_FMC_SPL = _KDS_ARC + "3.9"
OID_HWID = _KDS_ARC + "4"
OID_CSP_ID = _KDS_ARC + "5"

VCEK = "VCEK"
VLEK = "VLEK"

# AMD signs its ARK, ASK/ASVK, VCEK/VLEK and CRLs with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48.
AMD_SIGNATURE_ALGORITHMS = frozenset({RSA_PSS_SHA384})


@dataclass(frozen=True)
class VekExtensions:
    """The AMD extensions of a VCEK or VLEK certificate."""

    struct_version: int
    product_name: str
    bl: int
    tee: int
    snp: int
    ucode: int
    fmc: int | None
    hwid: bytes | None
    csp_id: str | None

    @property
    def family(self) -> str:
        """'Milan-B0' -> 'Milan'; the stepping suffix is unreliable (KDS quirk)."""
        return self.product_name.split("-", 1)[0]


def _der_int(raw: bytes, what: str) -> int:
    try:
        value, rest = decoder.decode(raw)
        number = int(value)
    except (PyAsn1Error, TypeError, ValueError) as exc:
        raise ChainInvalid(f"VEK extension {what} is not a DER INTEGER", check="vek.extensions") from exc
    if rest or not 0 <= number <= 255:
        raise ChainInvalid(f"VEK extension {what} is {number}, wanted 0..255", check="vek.extensions")
    return number


def _der_ia5(raw: bytes, what: str) -> str:
    if raw[:1] != b"\x16":
        raise ChainInvalid(f"VEK extension {what} is not an IA5String", check="vek.extensions")
    try:
        value, rest = decoder.decode(raw)
    except PyAsn1Error as exc:
        raise ChainInvalid(f"VEK extension {what} is malformed", check="vek.extensions") from exc
    if rest:
        raise ChainInvalid(f"VEK extension {what} has trailing bytes", check="vek.extensions")
    return str(value)


def _hwid(raw: bytes) -> bytes:
    """hwID is raw bytes (64 on Milan/Genoa, 8 on Turin); a tagged OCTET STRING is accepted too."""
    if len(raw) in (8, 64):
        return raw
    if raw[:1] == b"\x04" and len(raw) >= 2 and raw[1] == len(raw) - 2 and len(raw) - 2 in (8, 64):
        return raw[2:]
    raise ChainInvalid(f"VCEK hwID is {len(raw)} bytes, wanted 8 or 64", check="vek.extensions")


def parse_vek_extensions(cert: Certificate) -> VekExtensions:
    ext = cert.extensions
    required = {OID_STRUCT_VERSION: "structVersion", OID_PRODUCT_NAME: "productName",
                OID_BL_SPL: "blSPL", OID_TEE_SPL: "teeSPL", OID_SNP_SPL: "snpSPL",
                OID_UCODE_SPL: "ucodeSPL"}
    for oid, name in required.items():
        if oid not in ext:
            raise ChainInvalid(f"{cert.subject_cn} lacks the {name} extension ({oid})",
                               check="vek.extensions")
    struct_version = _der_int(ext[OID_STRUCT_VERSION], "structVersion")
    fmc = _der_int(ext[OID_FMC_SPL], "fmcSPL") if OID_FMC_SPL in ext else None
    return VekExtensions(
        struct_version=struct_version,
        product_name=_der_ia5(ext[OID_PRODUCT_NAME], "productName"),
        bl=_der_int(ext[OID_BL_SPL], "blSPL"),
        tee=_der_int(ext[OID_TEE_SPL], "teeSPL"),
        snp=_der_int(ext[OID_SNP_SPL], "snpSPL"),
        ucode=_der_int(ext[OID_UCODE_SPL], "ucodeSPL"),
        fmc=fmc,
        hwid=_hwid(ext[OID_HWID]) if OID_HWID in ext else None,
        csp_id=_der_ia5(ext[OID_CSP_ID], "cspID") if OID_CSP_ID in ext else None,
    )


@dataclass(frozen=True)
class AmdChain:
    """A chain whose signatures, names and extensions have been checked."""

    ark: Certificate
    ask: Certificate
    vek: Certificate
    kind: str  # VCEK or VLEK
    product: str  # Milan, Genoa or Turin
    extensions: VekExtensions

    @property
    def vek_public_point(self) -> bytes:
        """The VEK's uncompressed P-384 point (97 bytes), as the C core wants it."""
        return self.vek.public_key_bits


def _product_of_ark(ark: Certificate) -> str:
    name = ark.subject_cn.removeprefix("ARK-")
    if not ark.subject_cn.startswith("ARK-") or name not in PRODUCTS:
        raise ChainInvalid(f"root CN is {ark.subject_cn!r}, wanted ARK-Milan, ARK-Genoa or ARK-Turin",
                           check="chain.names")
    return name


def _vek_kind(vek: Certificate) -> str:
    if vek.subject_cn == "SEV-VCEK":
        return VCEK
    if vek.subject_cn == "SEV-VLEK":
        return VLEK
    raise ChainInvalid(f"VEK CN is {vek.subject_cn!r}, wanted SEV-VCEK or SEV-VLEK", check="chain.names")


# A verified chain holds three parsed certificates (about 6x their DER each, see x509).
CHAIN_CACHE_BYTES = 8 * 1024 * 1024


def _chain_cost(chain: AmdChain) -> int:
    return 1024 + sum(2048 + 6 * len(c.der) for c in (chain.ark, chain.ask, chain.vek))


_chains: ByteBoundedCache[tuple[bytes, bytes, bytes], AmdChain] = ByteBoundedCache(CHAIN_CACHE_BYTES, _chain_cost)


def configure_chain_cache(max_bytes: int) -> None:
    """Replace the verified-chain cache with an empty one of this budget (0 disables it)."""
    global _chains
    _chains = ByteBoundedCache(max_bytes, _chain_cost)


def _verified_chain(vek: Certificate, ask: Certificate, ark: Certificate) -> AmdChain:
    """AMD's time-independent checks of a walked chain.  Cached by exact bytes: a VCEK signs every
    report of its host, so a boot storm checks each chain once.  Failures are not cached."""
    key = (vek.der, ask.der, ark.der)
    cache = _chains
    chain = cache.get(key)
    if chain is None:
        chain = _amd_checks(vek, ask, ark)
        cache.put(key, chain)
    return chain


def _amd_checks(vek: Certificate, ask: Certificate, ark: Certificate) -> AmdChain:
    product = _product_of_ark(ark)
    kind = _vek_kind(vek)
    wanted_ask = f"SEV-{product}" if kind == VCEK else f"SEV-VLEK-{product}"
    if ask.subject_cn != wanted_ask:
        raise ChainInvalid(f"{kind} intermediate CN is {ask.subject_cn!r}, wanted {wanted_ask!r}",
                           check="chain.names")
    if ark.issuer_der != ark.subject_der:
        raise ChainInvalid(f"{ark.subject_cn} is not self-issued", check="chain.names")
    if vek.spki_algorithm != OID_EC_PUBLIC_KEY or vek.spki_curve != OID_SECP384R1 \
            or len(vek.public_key_bits) != 97 or vek.public_key_bits[0] != 4:
        raise ChainInvalid(f"{kind} key is not an uncompressed ECDSA P-384 key", check="vek.key")
    extensions = parse_vek_extensions(vek)
    if extensions.family != product:
        raise ChainInvalid(f"{kind} productName is {extensions.product_name!r}, chain is {product}",
                           check="vek.product")
    if kind == VCEK and (extensions.hwid is None or extensions.csp_id is not None):
        raise ChainInvalid("VCEK must carry hwID and no cspID", check="vek.extensions")
    if kind == VLEK and (extensions.csp_id is None or extensions.hwid is not None):
        raise ChainInvalid("VLEK must carry cspID and no hwID", check="vek.extensions")
    return AmdChain(ark=ark, ask=ask, vek=vek, kind=kind, product=product, extensions=extensions)


def amd_roots(product: str, trust_roots: Sequence[Certificate] | None = None) -> PinnedRoots:
    """The roots an AMD chain of `product` may end at: its pinned ARK, or the operator's roots."""
    if trust_roots is not None:
        return PinnedRoots.from_certificates(trust_roots, description="a configured trust root")
    return PinnedRoots((Pin(PINNED_ARKS[product], f"ARK-{product}"),),
                       description=f"the pinned AMD root for {product}")


@dataclass(frozen=True)
class CertBundle:
    """Untrusted certificates offered for a report, sorted by role."""

    veks: tuple[Certificate, ...]
    intermediates: tuple[Certificate, ...]
    roots: tuple[Certificate, ...]

    @classmethod
    def of(cls, certs: Iterable[Certificate]) -> CertBundle:
        veks, intermediates, roots = [], [], []
        for cert in certs:
            if cert.subject_cn in ("SEV-VCEK", "SEV-VLEK"):
                veks.append(cert)
            elif cert.subject_cn.startswith("ARK-"):
                roots.append(cert)
            elif cert.subject_cn.startswith("SEV-"):
                intermediates.append(cert)
            else:
                raise ChainInvalid(f"certificate {cert.subject_cn!r} is not an AMD SEV certificate",
                                   check="chain.names")
        return cls(tuple(_unique(veks)), tuple(_unique(intermediates)), tuple(_unique(roots)))

    def vek(self, kind: str) -> Certificate:
        wanted = f"SEV-{kind}"
        found = [c for c in self.veks if c.subject_cn == wanted]
        if not found:
            raise CollateralUnavailable(f"no {kind} certificate was supplied", check="collateral.vek")
        if len(found) > 1:
            raise ChainInvalid(f"{len(found)} different {kind} certificates were supplied; give one",
                               check="chain.ambiguous")
        return found[0]


def _unique(certs: list[Certificate]) -> list[Certificate]:
    return list({c.fingerprint: c for c in certs}.values())


def verify_chain(vek: Certificate, bundle: CertBundle, at: datetime,
                 trust_roots: Sequence[Certificate] | None = None) -> AmdChain:
    """Build and check ARK -> ASK/ASVK -> VEK from untrusted certificates plus the trust anchors."""
    ask = next((c for c in bundle.intermediates if c.subject_cn == vek.issuer_cn), None)
    if ask is None:
        raise CollateralUnavailable(f"the intermediate {vek.issuer_cn!r} that issued the "
                                    f"{vek.subject_cn} was not supplied", check="collateral.ask")
    candidates = [*bundle.roots, *(trust_roots or ())]
    ark = next((c for c in candidates if c.subject_cn == ask.issuer_cn), None)
    if ark is None:
        raise CollateralUnavailable(f"the root {ask.issuer_cn!r} was not supplied", check="collateral.ark")
    product = _product_of_ark(ark)
    walked = walk_chain(vek, [*bundle.intermediates, *bundle.roots], amd_roots(product, trust_roots), at,
                        depth=3, algorithms=AMD_SIGNATURE_ALGORITHMS)
    return _verified_chain(*walked.certificates)


def check_crl(crl_der: bytes, chain: AmdChain, at: datetime) -> None:
    """The ARK-signed CRL must be current at `at` and must not list the chain's ASK/ASVK."""
    revocation.check_crl(crl_der, chain.ark, [chain.ask], at, algorithms=AMD_SIGNATURE_ALGORITHMS)
