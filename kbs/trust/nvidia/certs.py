"""NVIDIA's device certificate chain (reference/gpu.md §2) and the two NVIDIA roots (§6).

    NVIDIA Device Identity CA (pinned by SHA-256)
      └─ NVIDIA GH100 Identity (GB100, …)           OCSP: chain index 3
          └─ NVIDIA GH100 Provisioner ICA 1          OCSP: index 2
              └─ GH100 A01 GSP BROM (per device)     OCSP: index 1; `hwmodel`
                  └─ GH100 A01 GSP FMC LF (leaf)     signs the report; FWID; `ueid`

The GPU sends exactly five PEM certificates, leaf first.  Every link is ECDSA P-384 with SHA-384,
every key is a P-384 key; the walk (pin, signatures, CA constraints and keyCertSign, critical
extensions, validity at the given time) is `kbs.trust.chain.walk_chain`.

**The device-supplied root.**  NVIDIA's verifier drops the fifth certificate and appends its pinned
root, so whatever the device sent there is ignored.  Here the fifth certificate must *be* the pinned
root (its SHA-256 is a pin; with `trust_roots`, one of those), and the chain is walked to the pin: a
genuine GPU's certificate slot holds NVIDIA's root byte for byte (every chain in the vectors does),
so anything else there means the chain was altered or does not come from a production GPU, and
refusing it costs nothing while telling the operator.  A root with NVIDIA's name and another key is
refused by the walker as not pinned ("roots are trusted by fingerprint, never by name").

The CoRIM signing root, which RIM chains end at, is pinned in `rim_roots` (`CORIM_ROOT_PIN`, re-exported
here); `nvidia_roots` trusts either root, for collateral that may belong to either chain (OCSP responses).

Every refusal is a `ChainInvalid` (or `MalformedEvidence` for bytes that do not parse) with check
`nvgpu.chain`, naming the certificate's index and CN and what was seen against what was wanted; the
walker's own label is kept in brackets.  `check_fwid` compares the report's FWID with the leaf's
(`nvgpu.fwid`).  Verified chains are cached by their exact PEM bytes (and the roots), so a warm
check costs one lookup plus the validity of five certificates at the given time.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, KbsError, MalformedEvidence
from kbs.trust.chain import Pin, PinnedRoots, check_validity, walk_chain
from kbs.trust.nvidia.fwid import FWID_OIDS, FWID_SIZE, LeafFwid, leaf_fwid
from kbs.trust.nvidia.rim_roots import CORIM_ROOT_NAME, CORIM_ROOT_PIN, CORIM_ROOT_SHA256, corim_root_certificate
from kbs.trust.signature import ECDSA_SHA384
from kbs.trust.x509 import OID_EC_PUBLIC_KEY, OID_SECP384R1, Certificate, load_certificates

__all__ = [
    "CHAIN_LENGTH", "CORIM_ROOT_NAME", "CORIM_ROOT_PIN", "CORIM_ROOT_SHA256", "DEVICE_PIN", "DEVICE_ROOT_NAME",
    "DEVICE_ROOT_SHA256", "MAX_CHAIN_BYTES", "NVIDIA_SIGNATURE_ALGORITHMS", "DeviceChain", "check_fwid",
    "configure_device_chain_cache", "device_roots", "nvidia_roots", "verify_device_chain",
]

DEVICE_ROOT_NAME = "NVIDIA Device Identity CA"
# SHA-256 of the DER NVIDIA Device Identity CA (reference/gpu.md §6; verifier_device_root.pem).
DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
DEVICE_PIN = Pin(DEVICE_ROOT_SHA256, DEVICE_ROOT_NAME)

# NVIDIA signs device and RIM certificates, and OCSP responses, with ECDSA P-384 and SHA-384.
NVIDIA_SIGNATURE_ALGORITHMS = frozenset({ECDSA_SHA384})
CHAIN_LENGTH = 5  # leaf, BROM, provisioner ICA, identity, root: NVIDIA's MAX_CERT_CHAIN_LENGTH
LEVELS = ("leaf", "BROM", "provisioner ICA", "identity CA", "root")
MAX_CHAIN_BYTES = 64 * 1024  # the real PEM chains are 4.8-4.9 KB
P384_POINT_SIZE = 97
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def device_roots(trust_roots: Sequence[Certificate] | None = None) -> PinnedRoots:
    """The roots a device chain may end at: the pinned NVIDIA Device Identity CA, or the operator's roots."""
    if trust_roots is not None:
        return PinnedRoots.from_certificates(trust_roots, description="a configured trust root")
    return PinnedRoots((DEVICE_PIN,), description="the pinned NVIDIA Device Identity CA")


def nvidia_roots(trust_roots: Sequence[Certificate] | None = None) -> PinnedRoots:
    """Either NVIDIA root (for collateral that may belong to a device or a RIM chain), or the operator's."""
    if trust_roots is not None:
        return PinnedRoots.from_certificates(trust_roots, description="a configured trust root")
    return PinnedRoots((DEVICE_PIN, CORIM_ROOT_PIN), (corim_root_certificate(),), description="a pinned NVIDIA root")


@dataclass(frozen=True)
class DeviceChain:
    """A verified device chain, as sent (leaf first, the pinned root last), and what its leaf says.

    Time-independent: the validity of each certificate is checked at every verification's time."""

    certificates: tuple[Certificate, ...]
    pin: Pin
    fwid_source: LeafFwid

    @property
    def leaf(self) -> Certificate:
        return self.certificates[0]

    @property
    def brom(self) -> Certificate:
        return self.certificates[1]

    @property
    def root(self) -> Certificate:
        return self.certificates[-1]

    @property
    def public_point(self) -> bytes:
        """The leaf's uncompressed P-384 point (97 bytes, 0x04 ‖ x ‖ y): the report's signing key."""
        return self.leaf.public_key_bits

    @property
    def fwid(self) -> bytes:
        """The leaf's FWID (48 bytes), which the report's FWID field must equal."""
        return self.fwid_source.digest

    @property
    def hwmodel(self) -> str:
        """The BROM certificate's CN (`GH100 A01 GSP BROM`): NVIDIA's `hwmodel` claim."""
        return self.brom.subject_cn

    @property
    def ueid(self) -> str:
        """The leaf's serial number in decimal: NVIDIA's `ueid` claim."""
        return str(self.leaf.serial)

    @property
    def not_after(self) -> datetime:
        """The earliest notAfter of the chain: NVIDIA's `x-nvidia-cert-expiration-date`."""
        return min(cert.not_after for cert in self.certificates)


def _where(index: int, cert: Certificate | None = None) -> str:
    name = f" {cert.subject_cn!r}" if cert is not None else ""
    return f"device certificate {index} ({LEVELS[index]}){name}"


def _names(certs: Sequence[Certificate]) -> str:
    return ", ".join(repr(c.subject_cn) for c in certs) or "nothing"


def _parse(pem_chain: bytes) -> list[Certificate]:
    """The PEM certificates, bounded before anything is decoded: size, then the count of PEM blocks."""
    if len(pem_chain) > MAX_CHAIN_BYTES:
        raise MalformedEvidence(f"device certificate chain is {len(pem_chain)} bytes, more than the "
                                f"{MAX_CHAIN_BYTES} allowed (a real one is about 4.8 KB)", check="nvgpu.chain")
    blocks = pem_chain.count(_PEM_BEGIN)
    if blocks > CHAIN_LENGTH:
        raise ChainInvalid(f"device certificate chain holds {blocks} PEM certificates, wanted exactly {CHAIN_LENGTH} "
                           "(leaf, BROM, provisioner ICA, identity CA, root)", check="nvgpu.chain")
    try:
        certs = load_certificates(pem_chain) if blocks else []
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"device certificate chain does not parse: {exc} [{exc.check}]",
                                check="nvgpu.chain") from exc
    if len(certs) != CHAIN_LENGTH:
        raise ChainInvalid(f"device certificate chain holds {len(certs)} certificate(s) ({_names(certs)}), wanted "
                           f"exactly {CHAIN_LENGTH}: leaf (GSP FMC LF), BROM, provisioner ICA, identity CA, "
                           f"{DEVICE_ROOT_NAME}{_gap(certs)}", check="nvgpu.chain")
    return certs


def _gap(certs: Sequence[Certificate]) -> str:
    """Where a short chain breaks, for the operator: a CA where the leaf belongs, or a missing issuer."""
    if certs and certs[0].is_ca():
        return f"; certificate 0 {certs[0].subject_cn!r} is a CA certificate, not the device leaf"
    for index in range(len(certs) - 1):
        cert, following = certs[index], certs[index + 1]
        if cert.issuer_der != following.subject_der:
            return (f"; certificate {index} {cert.subject_cn!r} is issued by {cert.issuer_cn!r}, but certificate "
                    f"{index + 1} is {following.subject_cn!r}")
    return ""


def _check_order(certs: Sequence[Certificate]) -> None:
    """As sent: each certificate is issued (by name) by the next one."""
    for index in range(CHAIN_LENGTH - 1):
        cert, issuer = certs[index], certs[index + 1]
        if cert.issuer_der != issuer.subject_der:
            raise ChainInvalid(f"{_where(index, cert)} is issued by {cert.issuer_cn!r}, but certificate {index + 1} "
                               f"is {issuer.subject_cn!r}", check="nvgpu.chain")


def _check_keys(certs: Sequence[Certificate]) -> None:
    for index, cert in enumerate(certs):
        if cert.spki_algorithm != OID_EC_PUBLIC_KEY or cert.spki_curve != OID_SECP384R1:
            raise ChainInvalid(f"{_where(index, cert)} has a key of type {cert.spki_algorithm} "
                               f"({cert.spki_curve or 'no curve'}), wanted ECDSA P-384", check="nvgpu.chain")
    point = certs[0].public_key_bits
    if len(point) != P384_POINT_SIZE or point[0] != 4:
        raise ChainInvalid(f"{_where(0, certs[0])} key is not an uncompressed P-384 point ({len(point)} bytes)",
                           check="nvgpu.chain")


def _check_leaf(leaf: Certificate) -> None:
    """The leaf signs reports: not a CA, and digitalSignature where it has keyUsage."""
    if leaf.is_ca():
        raise ChainInvalid(f"{_where(0, leaf)} is a CA certificate; the report's signing certificate is an end "
                           "entity", check="nvgpu.chain")
    usage = leaf.key_usage()
    if usage is not None and "digitalSignature" not in usage:
        raise ChainInvalid(f"{_where(0, leaf)} keyUsage is {', '.join(sorted(usage)) or 'empty'}, wanted "
                           "digitalSignature", check="nvgpu.chain")


def _located(exc: KbsError, certs: Sequence[Certificate]) -> str:
    """The failing certificate of a walker error: the one whose CN the message names first."""
    message = str(exc)
    found = [(message.find(c.subject_cn), -len(c.subject_cn), i)
             for i, c in enumerate(certs) if c.subject_cn and c.subject_cn in message]
    if not found:
        return "device certificate chain"
    index = min(found)[2]
    return _where(index, certs[index])


def _walk(certs: list[Certificate], roots: PinnedRoots, at: datetime) -> DeviceChain:
    _check_order(certs)
    try:
        walked = walk_chain(certs[0], certs[1:], roots, at, depth=CHAIN_LENGTH, algorithms=NVIDIA_SIGNATURE_ALGORITHMS,
                            understood_extensions=FWID_OIDS)
    except ChainInvalid as exc:
        raise ChainInvalid(f"{_located(exc, certs)}: {exc} [{exc.check}]", check="nvgpu.chain") from exc
    except MalformedEvidence as exc:  # an extension the walker decodes (basicConstraints, keyUsage)
        raise MalformedEvidence(f"{_located(exc, certs)}: {exc} [{exc.check}]", check="nvgpu.chain") from exc
    if list(walked.certificates) != certs:  # the walker chooses by name and signature; the order is the device's
        raise ChainInvalid(f"device certificate chain as sent ({_names(certs)}) is not the path that verifies "
                           f"({_names(walked.certificates)})", check="nvgpu.chain")
    _check_keys(certs)
    _check_leaf(certs[0])
    return DeviceChain(tuple(certs), walked.pin, leaf_fwid(certs[0]))


# A verified chain holds five parsed certificates (about 6x their DER each, see x509).
DEVICE_CHAIN_CACHE_BYTES = 8 * 1024 * 1024
_CacheKey = tuple[bytes, tuple[str, ...]]


def _cost(chain: DeviceChain) -> int:
    return 1024 + sum(2048 + 6 * len(c.der) for c in chain.certificates)


_chains: ByteBoundedCache[_CacheKey, DeviceChain] = ByteBoundedCache(DEVICE_CHAIN_CACHE_BYTES, _cost)


def configure_device_chain_cache(max_bytes: int) -> None:
    """Replace the verified-chain cache with an empty one of this budget (0 disables it)."""
    global _chains
    _chains = ByteBoundedCache(max_bytes, _cost)


def _check_validity(chain: DeviceChain, at: datetime) -> None:
    for index, cert in enumerate(chain.certificates):
        try:
            check_validity([cert], at)
        except ChainInvalid as exc:
            raise ChainInvalid(f"{_where(index, cert)}: {exc} [{exc.check}]", check="nvgpu.chain") from exc


def verify_device_chain(pem_chain: bytes, at: datetime, *,
                        trust_roots: Sequence[Certificate] | None = None) -> DeviceChain:
    """The GPU's (or NVSwitch's) PEM chain, verified as sent and valid at `at` (module docstring).

    `trust_roots` replace the pinned NVIDIA Device Identity CA (labs, tests).  Raises ChainInvalid or
    MalformedEvidence with check `nvgpu.chain`.  Cached by the exact bytes (and the roots); the
    validity of every certificate at `at` is checked on every call."""
    roots = device_roots(trust_roots)
    data = bytes(pem_chain)
    key = (data, tuple(pin.fingerprint for pin in roots.pins))
    cache = _chains
    chain = cache.get(key)
    if chain is None:
        chain = _walk(_parse(data), roots, at)
        cache.put(key, chain)
    _check_validity(chain, at)
    return chain


def check_fwid(chain: DeviceChain, report_fwid: bytes | None) -> bool:
    """The report's FWID (opaque field 20) equals the leaf's; ChainInvalid `nvgpu.fwid` naming both if not.

    A report without the field (drivers before about 550, such as the 535.86.09 sample) is not
    compared and False is returned, as NVIDIA's verifier skips the check then; True means compared
    and equal."""
    if report_fwid is None:
        return False
    leaf = chain.fwid_source
    if len(report_fwid) != FWID_SIZE:
        raise ChainInvalid(f"the report's FWID is {len(report_fwid)} bytes ({report_fwid.hex()}), wanted {FWID_SIZE}",
                           check="nvgpu.fwid")
    if not hmac.compare_digest(report_fwid, leaf.digest):
        raise ChainInvalid(f"the report's FWID is {report_fwid.hex()}, the leaf certificate {chain.leaf.subject_cn!r} "
                           f"says {leaf.digest.hex()} ({leaf.encoding}, extension {leaf.oid})", check="nvgpu.fwid")
    return True
