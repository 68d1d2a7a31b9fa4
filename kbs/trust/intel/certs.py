"""Intel's certificates for DCAP: the SGX Root CA pin, PCK chains and their SGX extension, the TCB Signing
chain, and the two CRLs (reference/tdx.md §2, §3.3, §3.6, §6).

    Intel SGX Root CA (pinned by SHA-256)
      ├─ Intel SGX PCK Platform CA (or Processor CA) ── Intel SGX PCK Certificate (signs QE reports)
      └─ Intel SGX TCB Signing (signs TCB info and QE identity)

Every link is ECDSA P-256 with SHA-256.  The walk (pin first, signatures, CA constraints, validity at
the given time, the DER-keyed cache) is `kbs.trust.chain.walk_chain`; CRLs go through
`kbs.trust.revocation.check_crl`.  Only Intel's specifics live here: names, the pin, the profile, the
key type and the SGX extension (OID 1.2.840.113741.1.13.1), which is decoded with pyasn1, checked to be
canonical DER (so SVN 255 is exactly ``02 02 00 FF``) and read strictly: every item Intel QVL requires,
none twice, none unknown, every value in range.  Parsed extensions are cached by the leaf's DER.

The root is trusted only by fingerprint: a root with Intel's name and another key (Intel QVL's sample
data ships one) is refused by the walker (`chain.root`).  Labels: `chain.*` (the walker), `chain.names`,
`pck.key`, `pck.extension`, `collateral.pck_crl` and `collateral.root_ca_crl` (missing or not current),
`crl.*` (`crl.revoked` for a listed certificate).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, CollateralUnavailable, MalformedEvidence
from kbs.trust import revocation
from kbs.trust.chain import Pin, PinnedRoots, VerifiedChain, walk_chain
from kbs.trust.revocation import Crl
from kbs.trust.signature import ECDSA_SHA256
from kbs.trust.x509 import OID_EC_PUBLIC_KEY, OID_SECP256R1, Certificate, load_certificates

ROOT_CA_NAME = "Intel SGX Root CA"
# SHA-256 of the DER Intel SGX Root CA (reference/tdx.md §6).
ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
PCK_CN = "Intel SGX PCK Certificate"
PLATFORM_CA_CN = "Intel SGX PCK Platform CA"
PROCESSOR_CA_CN = "Intel SGX PCK Processor CA"
TCB_SIGNING_CN = "Intel SGX TCB Signing"

CaType = Literal["platform", "processor"]
PLATFORM: CaType = "platform"
PROCESSOR: CaType = "processor"
CA_NAMES: dict[CaType, str] = {PLATFORM: PLATFORM_CA_CN, PROCESSOR: PROCESSOR_CA_CN}

# Intel signs every certificate, CRL and collateral document with ECDSA P-256 and SHA-256.
INTEL_SIGNATURE_ALGORITHMS = frozenset({ECDSA_SHA256})
P256_POINT_SIZE = 65

OID_SGX_EXTENSION = "1.2.840.113741.1.13.1"
OID_PPID = OID_SGX_EXTENSION + ".1"
OID_TCB = OID_SGX_EXTENSION + ".2"
OID_PCE_ID = OID_SGX_EXTENSION + ".3"
OID_FMSPC = OID_SGX_EXTENSION + ".4"
OID_SGX_TYPE = OID_SGX_EXTENSION + ".5"
OID_PLATFORM_INSTANCE_ID = OID_SGX_EXTENSION + ".6"
OID_CONFIGURATION = OID_SGX_EXTENSION + ".7"
OID_TCB_COMPONENTS = tuple(f"{OID_TCB}.{i}" for i in range(1, 17))
OID_PCESVN = OID_TCB + ".17"
OID_CPUSVN = OID_TCB + ".18"
OID_DYNAMIC_PLATFORM = OID_CONFIGURATION + ".1"
OID_CACHED_KEYS = OID_CONFIGURATION + ".2"
OID_SMT_ENABLED = OID_CONFIGURATION + ".3"

SGX_TYPES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}  # names as Intel QVL spells them

_NAMES = {OID_PPID: "PPID", OID_TCB: "TCB", OID_PCE_ID: "PCE-ID", OID_FMSPC: "FMSPC", OID_SGX_TYPE: "SGX Type",
          OID_PLATFORM_INSTANCE_ID: "PlatformInstanceID", OID_CONFIGURATION: "Configuration",
          OID_PCESVN: "PCESVN", OID_CPUSVN: "CPUSVN", OID_DYNAMIC_PLATFORM: "dynamicPlatform",
          OID_CACHED_KEYS: "cachedKeys", OID_SMT_ENABLED: "SMTEnabled",
          **{oid: f"SGX TCB Comp{i:02d} SVN" for i, oid in enumerate(OID_TCB_COMPONENTS, 1)}}
_REQUIRED = (OID_PPID, OID_TCB, OID_PCE_ID, OID_FMSPC, OID_SGX_TYPE)
_PLATFORM_ONLY = (OID_PLATFORM_INSTANCE_ID, OID_CONFIGURATION)
_TCB_ITEMS = (*OID_TCB_COMPONENTS, OID_PCESVN, OID_CPUSVN)
_CONFIGURATION_ITEMS = (OID_DYNAMIC_PLATFORM, OID_CACHED_KEYS, OID_SMT_ENABLED)


def intel_roots(trust_roots: Sequence[Certificate] | None = None) -> PinnedRoots:
    """The roots an Intel chain may end at: the pinned Intel SGX Root CA, or the operator's roots."""
    if trust_roots is not None:
        return PinnedRoots.from_certificates(trust_roots, description="a configured trust root")
    return PinnedRoots((Pin(ROOT_CA_SHA256, ROOT_CA_NAME),), description="the pinned Intel SGX Root CA")


# -- the SGX extension ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlatformConfiguration:
    """The Configuration item of a Platform-CA PCK certificate."""

    dynamic_platform: bool
    cached_keys: bool
    smt_enabled: bool


@dataclass(frozen=True)
class SgxExtension:
    """The SGX extension of a PCK certificate."""

    ppid: bytes  # 16
    sgx_tcb_components: tuple[int, ...]  # the 16 SGX TCB component SVNs (0-255), compared with sgxtcbcomponents
    pcesvn: int  # 0-65535
    cpusvn: bytes  # 16, raw; never compared (QVL uses the component SVNs)
    pce_id: bytes  # 2
    fmspc: bytes  # 6
    sgx_type: int  # 0 Standard, 1 Scalable, 2 ScalableWithIntegrity
    platform_instance_id: bytes | None  # 16, Platform-CA certificates only
    configuration: PlatformConfiguration | None  # Platform-CA certificates only


def _bad(message: str) -> ChainInvalid:
    return ChainInvalid(f"PCK SGX extension: {message}", check="pck.extension")


def _name(oid: str) -> str:
    return f"{_NAMES[oid]} ({oid})" if oid in _NAMES else oid


def _decode(raw: bytes) -> Any:
    """One canonical DER value: decoded, nothing after it, and re-encoding gives the same bytes (minimal
    INTEGERs, definite lengths, BOOLEAN TRUE as FF: anything else would give two encodings one meaning)."""
    try:
        value, rest = decoder.decode(raw)
        canonical = bytes(encoder.encode(value))
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise _bad(f"does not decode as DER ({exc})") from exc
    if rest:
        raise _bad("has trailing bytes")
    if canonical != raw:
        raise _bad("is not in canonical DER (an INTEGER or length is not minimal)")
    return value


def _is(value: Any, kind: type[Any]) -> bool:
    return bool(value.tagSet == kind.tagSet)


def _items(value: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    """SEQUENCE OF SEQUENCE { OBJECT IDENTIFIER, value }: each OID once, each one of `allowed`."""
    if not _is(value, univ.Sequence):
        raise _bad(f"{where} is not a SEQUENCE")
    out: dict[str, Any] = {}
    for index in range(len(value)):
        item = value[index]
        if not _is(item, univ.Sequence) or len(item) != 2 or not _is(item[0], univ.ObjectIdentifier):
            raise _bad(f"item {index} of {where} is not SEQUENCE {{ OBJECT IDENTIFIER, value }}")
        oid = str(item[0])
        if oid not in allowed:
            raise _bad(f"{where} has an unknown item {oid}")
        if oid in out:
            raise _bad(f"{where} has {_name(oid)} twice")
        out[oid] = item[1]
    missing = [_name(oid) for oid in allowed if oid not in out]
    if missing:
        raise _bad(f"{where} lacks {', '.join(missing)}")
    return out


def _octets(value: Any, oid: str, size: int) -> bytes:
    if not _is(value, univ.OctetString):
        raise _bad(f"{_name(oid)} is not an OCTET STRING")
    data = bytes(value)
    if len(data) != size:
        raise _bad(f"{_name(oid)} is {len(data)} bytes, wanted {size}")
    return data


def _number(value: Any, oid: str, kind: type[Any], highest: int) -> int:
    if not _is(value, kind):
        raise _bad(f"{_name(oid)} is not an {'ENUMERATED' if kind is univ.Enumerated else 'INTEGER'}")
    number = int(value)
    if not 0 <= number <= highest:
        raise _bad(f"{_name(oid)} is {number}, wanted 0..{highest}")
    return number


def _boolean(value: Any, oid: str) -> bool:
    if not _is(value, univ.Boolean):
        raise _bad(f"{_name(oid)} is not a BOOLEAN")
    return bool(value)


def parse_sgx_extension(raw: bytes, *, platform: bool) -> SgxExtension:
    """The SGX extension's DER value, strictly.  `platform`: issued by the Platform CA, whose
    certificates carry PlatformInstanceID and Configuration (the Processor CA's carry neither)."""
    allowed = (*_REQUIRED, *_PLATFORM_ONLY) if platform else _REQUIRED
    top = _items(_decode(raw), "the extension", allowed)
    tcb = _items(top[OID_TCB], "the TCB item", _TCB_ITEMS)
    configuration = None
    if platform:
        config = _items(top[OID_CONFIGURATION], "the Configuration item", _CONFIGURATION_ITEMS)
        configuration = PlatformConfiguration(*(_boolean(config[oid], oid) for oid in _CONFIGURATION_ITEMS))
    return SgxExtension(
        ppid=_octets(top[OID_PPID], OID_PPID, 16),
        sgx_tcb_components=tuple(_number(tcb[oid], oid, univ.Integer, 255) for oid in OID_TCB_COMPONENTS),
        pcesvn=_number(tcb[OID_PCESVN], OID_PCESVN, univ.Integer, 0xFFFF),
        cpusvn=_octets(tcb[OID_CPUSVN], OID_CPUSVN, 16),
        pce_id=_octets(top[OID_PCE_ID], OID_PCE_ID, 2),
        fmspc=_octets(top[OID_FMSPC], OID_FMSPC, 6),
        sgx_type=_number(top[OID_SGX_TYPE], OID_SGX_TYPE, univ.Enumerated, max(SGX_TYPES)),
        platform_instance_id=_octets(top[OID_PLATFORM_INSTANCE_ID], OID_PLATFORM_INSTANCE_ID, 16) if platform else None,
        configuration=configuration,
    )


# -- PCK certificates and chains ---------------------------------------------------------------------

@dataclass(frozen=True)
class PckInfo:
    """What a verified PCK leaf says: its SGX extension, the CA that issued it and its public key.

    `public_point` is the leaf's uncompressed P-256 point (65 bytes, 0x04 ‖ x ‖ y): the key the QE
    report signature is verified with."""

    ppid: bytes
    sgx_tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    configuration: PlatformConfiguration | None
    ca: CaType
    public_point: bytes
    serial: int

    @property
    def fmspc_hex(self) -> str:
        return self.fmspc.hex()

    @property
    def sgx_type_name(self) -> str:
        return SGX_TYPES[self.sgx_type]


@dataclass(frozen=True)
class PckChain:
    """A verified PCK chain (leaf, intermediate, pinned root) and what its leaf says."""

    leaf: Certificate
    intermediate: Certificate
    root: Certificate
    info: PckInfo
    pin: Pin


def ca_type_of(issuer_cn: str) -> CaType:
    """'platform' or 'processor' from the intermediate's CN; ChainInvalid (`chain.names`) otherwise."""
    for ca, name in CA_NAMES.items():
        if issuer_cn == name:
            return ca
    raise ChainInvalid(f"PCK issuer CN is {issuer_cn!r}, wanted {PLATFORM_CA_CN!r} or {PROCESSOR_CA_CN!r}",
                       check="chain.names")


def _check_p256(cert: Certificate) -> None:
    if cert.spki_algorithm != OID_EC_PUBLIC_KEY or cert.spki_curve != OID_SECP256R1:
        raise ChainInvalid(f"{cert.subject_cn}'s key is not an ECDSA P-256 key", check="pck.key")


# A parsed PckInfo is small; pyasn1 costs about a millisecond per extension, and one PCK signs every quote
# of its platform.
# Parsed PEM chains by their bytes too: a quote's PCK chain and the collateral's issuer chains come with
# every quote, and finding and decoding PEM blocks costs more than the rest of a warm check.
PCK_CACHE_BYTES = 4 * 1024 * 1024


def _chain_cost(certs: tuple[Certificate, ...]) -> int:
    return 512 + sum(2048 + 6 * len(c.der) for c in certs)


_pck_infos: ByteBoundedCache[bytes, PckInfo] = ByteBoundedCache(PCK_CACHE_BYTES, lambda info: 1024)
_pem_chains: ByteBoundedCache[bytes, tuple[Certificate, ...]] = ByteBoundedCache(PCK_CACHE_BYTES, _chain_cost)


def configure_pck_cache(max_bytes: int) -> None:
    """Replace the parsed-PCK and parsed-chain caches with empty ones of this budget (0 disables them)."""
    global _pck_infos, _pem_chains
    _pck_infos = ByteBoundedCache(max_bytes, lambda info: 1024)
    _pem_chains = ByteBoundedCache(max_bytes, _chain_cost)


def pck_info(leaf: Certificate) -> PckInfo:
    """The SGX extension and key of a PCK leaf (its issuer's CN says which CA).  Cached by the leaf's DER.

    Checks the leaf's form only: call it on a leaf `verify_pck_chain` has verified."""
    cache = _pck_infos
    info = cache.get(leaf.der)
    if info is None:
        info = _pck_info(leaf)
        cache.put(leaf.der, info)
    return info


def _pck_info(leaf: Certificate) -> PckInfo:
    if leaf.subject_cn != PCK_CN:
        raise ChainInvalid(f"PCK certificate CN is {leaf.subject_cn!r}, wanted {PCK_CN!r}", check="chain.names")
    ca = ca_type_of(leaf.issuer_cn)
    _check_p256(leaf)
    point = leaf.public_key_bits
    if len(point) != P256_POINT_SIZE or point[0] != 4:
        raise ChainInvalid("PCK key is not an uncompressed P-256 point", check="pck.key")
    raw = leaf.extensions.get(OID_SGX_EXTENSION)
    if raw is None:
        raise ChainInvalid(f"PCK certificate lacks the SGX extension ({OID_SGX_EXTENSION})", check="pck.extension")
    ext = parse_sgx_extension(raw, platform=ca == PLATFORM)
    return PckInfo(ppid=ext.ppid, sgx_tcb_components=ext.sgx_tcb_components, pcesvn=ext.pcesvn, cpusvn=ext.cpusvn,
                   pce_id=ext.pce_id, fmspc=ext.fmspc, sgx_type=ext.sgx_type,
                   platform_instance_id=ext.platform_instance_id, configuration=ext.configuration, ca=ca,
                   public_point=point, serial=leaf.serial)


def _certificates(chain: bytes | Iterable[Certificate], what: str) -> list[Certificate]:
    if isinstance(chain, bytes | bytearray | memoryview):
        data = bytes(chain)
        cache = _pem_chains
        certs = cache.get(data)
        if certs is None:
            try:
                certs = tuple(load_certificates(data))
            except MalformedEvidence as exc:
                raise MalformedEvidence(f"{what} does not parse: {exc}", check=exc.check) from exc
            cache.put(data, certs)
        return list(certs)
    return list(chain)


def verify_pck_chain(chain: bytes | Iterable[Certificate], at: datetime, *,
                     trust_roots: Sequence[Certificate] | None = None) -> PckChain:
    """PCK leaf -> PCK Platform (or Processor) CA -> the pinned Intel SGX Root CA, valid at `at`.

    `chain` is the PEM a quote carries (a trailing NUL is fine) or parsed certificates, in any order;
    exactly one must be a PCK leaf.  ECDSA-SHA256 on every link, exactly three certificates, P-256 keys,
    and the SGX extension parsed strictly.  `trust_roots` replace the pin (labs, tests)."""
    certs = _certificates(chain, "PCK certificate chain")
    leaves = [c for c in certs if c.subject_cn == PCK_CN]
    if len(leaves) != 1:
        raise ChainInvalid(f"PCK certificate chain holds {len(leaves)} {PCK_CN!r} certificates, wanted one "
                           f"(it holds {', '.join(repr(c.subject_cn) for c in certs) or 'nothing'})",
                           check="chain.names")
    leaf = leaves[0]
    ca_type_of(leaf.issuer_cn)
    walked = walk_chain(leaf, certs, intel_roots(trust_roots), at, depth=3, algorithms=INTEL_SIGNATURE_ALGORITHMS)
    _, intermediate, root = walked.certificates
    ca_type_of(intermediate.subject_cn)
    for cert in walked.certificates:
        _check_p256(cert)
    return PckChain(leaf=leaf, intermediate=intermediate, root=root, info=pck_info(leaf), pin=walked.pin)


def verify_signing_chain(chain: bytes | Iterable[Certificate], at: datetime, *, what: str,
                         trust_roots: Sequence[Certificate] | None = None) -> VerifiedChain:
    """Intel SGX TCB Signing -> the pinned root, valid at `at`: the issuer chain of TCB info and QE identity.
    `what` names the collateral it signs, for messages."""
    certs = _certificates(chain, f"{what} issuer chain")
    signers = [c for c in certs if c.subject_cn == TCB_SIGNING_CN]
    if len(signers) != 1:
        raise ChainInvalid(f"{what} issuer chain holds {len(signers)} {TCB_SIGNING_CN!r} certificates, wanted one "
                           f"(it holds {', '.join(repr(c.subject_cn) for c in certs) or 'nothing'})",
                           check="chain.names")
    walked = walk_chain(signers[0], certs, intel_roots(trust_roots), at, depth=2,
                        algorithms=INTEL_SIGNATURE_ALGORITHMS)
    for cert in walked.certificates:
        _check_p256(cert)
    return walked


def verify_pck_ca_chain(chain: bytes | Iterable[Certificate], at: datetime, *,
                        trust_roots: Sequence[Certificate] | None = None) -> VerifiedChain:
    """PCK Platform (or Processor) CA -> the pinned root, valid at `at`: the PCK CRL's issuer chain."""
    certs = _certificates(chain, "PCK CRL issuer chain")
    cas = [c for c in certs if c.subject_cn in CA_NAMES.values()]
    if len(cas) != 1:
        raise ChainInvalid(f"PCK CRL issuer chain holds {len(cas)} PCK CA certificates, wanted one "
                           f"(it holds {', '.join(repr(c.subject_cn) for c in certs) or 'nothing'})",
                           check="chain.names")
    walked = walk_chain(cas[0], certs, intel_roots(trust_roots), at, depth=2, algorithms=INTEL_SIGNATURE_ALGORITHMS)
    for cert in walked.certificates:
        _check_p256(cert)
    return walked


# -- CRLs --------------------------------------------------------------------------------------------

def _check(crl: bytes | Crl | None, issuer: Certificate, certificates: Sequence[Certificate], at: datetime, *,
           name: str, label: str) -> Crl:
    """A CRL through the shared check; a missing or stale one is refused as `label`, naming it."""
    if crl is None:
        raise CollateralUnavailable(f"no {name} was supplied; without it revocation cannot be checked, so "
                                    "nothing is accepted (fetch it from Intel PCS or add it to the collateral)",
                                    check=label)
    try:
        return revocation.check_crl(crl, issuer, certificates, at, algorithms=INTEL_SIGNATURE_ALGORITHMS)
    except revocation.CertificateRevoked:
        raise
    except ChainInvalid as exc:
        raise ChainInvalid(f"{name}: {exc}", check=label if exc.check == "crl.validity" else exc.check) from exc
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"{name}: {exc}", check=exc.check) from exc


def check_pck_crl(crl: bytes | Crl | None, chain: PckChain, at: datetime) -> Crl:
    """The PCK CRL: issued by the PCK leaf's issuer and signed by its key (the chain's intermediate),
    current at `at`, not listing the leaf.  Missing or stale: `collateral.pck_crl`."""
    return _check(crl, chain.intermediate, [chain.leaf], at, name=f"PCK CRL of {chain.intermediate.subject_cn}",
                  label="collateral.pck_crl")


def check_root_ca_crl(crl: bytes | Crl | None, root: Certificate, certificates: Sequence[Certificate],
                      at: datetime) -> Crl:
    """The Root CA CRL: signed by the (pinned, already verified) root, current at `at`, listing none of
    `certificates` (the PCK intermediate, the TCB Signing certificate).  Missing or stale:
    `collateral.root_ca_crl`."""
    return _check(crl, root, certificates, at, name=f"{root.subject_cn} CRL", label="collateral.root_ca_crl")
