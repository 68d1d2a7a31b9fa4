"""NVIDIA RIMs (Reference Integrity Manifests): `verify_rim` turns the bytes of a signed SWID tag into a
`VerifiedRim` or raises naming the failed check (reference/gpu.md §3.1).

In the order trust flows:

1. **Parse safely** (`rim_xml.parse_xml`): bounded size, no DTD, no entities, no network.
2. **Profile** (`rim_signature.signature_element`): one enveloped XML-DSig over the whole document,
   C14N 1.1, ECDSA-SHA384, SHA-384 digests, the signing chain in KeyInfo/X509Data.
3. **Chain**: the embedded certificates, minus the RIM's own root (a trailing self-issued certificate, as
   NVIDIA's verifier drops it), walked by the shared walker (`kbs.trust.chain.walk_chain`) to the pinned
   CoRIM signing root (`rim_roots`), ECDSA-SHA384 on every link, every certificate valid at `at`.  The
   signer must be issued by a root, not be one, and hold a P-384 key fit for signatures.  A RIM whose own
   root is another one (NVIDIA's "CoRIM L1 Root CA Debug Only") is refused, saying so.
4. **Signature** (`rim_signature.verify_signed_document`): signxml, with the walked signer as the only key.
5. **Read** (`rim_xml.read_document`) the signed document signxml returns, never the parsed input.

Verified RIMs are cached by their exact bytes (and the roots they were verified against) in a byte-bounded
LRU, with the window in which every certificate of their chain is valid: a warm check at a time inside the
window is one lookup; outside it everything runs again, so the refusal names what expired.

Labels: `nvgpu.rim.parse` (size, XML, SWID fields), `nvgpu.rim.signature` (profile, signxml),
`nvgpu.rim.chain` (certificates, the walk, the signer); `nvgpu.rim.missing` is the store's.  Messages name
the RIM (its id when the caller gives it, else its tagId) and what was seen against what was wanted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, MalformedEvidence
from kbs.trust.chain import Pin, PinnedRoots, VerifiedChain, short_fingerprint, walk_chain
from kbs.trust.nvidia.rim_roots import RIM_SIGNATURE_ALGORITHMS, rim_roots
from kbs.trust.nvidia.rim_signature import CHAIN, embedded_certificates, signature_element, verify_signed_document
from kbs.trust.nvidia.rim_xml import MAX_RIM_BYTES, PARSE, GoldenEntry, parse_xml, read_document
from kbs.trust.x509 import OID_EC_PUBLIC_KEY, OID_SECP384R1, Certificate, parse_certificate

__all__ = ["GoldenEntry", "VerifiedRim", "cached_rim", "configure_rim_cache", "verify_rim", "verify_rim_authentic"]

MAX_CHAIN = 6  # certificates from signer to root; NVIDIA's chains have 4
RIM_CACHE_BYTES = 4 * 1024 * 1024  # about 100 RIMs (about 37 KB each): a fleet's drivers and VBIOS versions


@dataclass(frozen=True)
class VerifiedRim:
    """A RIM whose signature, chain (to `pin`) and fields were checked, valid at the time it was verified."""

    id: str  # SoftwareIdentity/@tagId
    name: str  # SoftwareIdentity/@name, the chip ("GH100")
    colloquial_version: str  # Meta/@colloquialVersion: the driver or VBIOS version it describes
    firmware_manufacturer_id: str | None  # Meta/@FirmwareManufacturerId ("5703")
    entries: tuple[GoldenEntry, ...]  # every Resource, in index order
    chain: tuple[Certificate, ...]  # the signer first, the pinned (or configured) root last
    pin: Pin
    sha256: str  # of the RIM's bytes

    @property
    def active_entries(self) -> tuple[GoldenEntry, ...]:
        return tuple(entry for entry in self.entries if entry.active)

    @property
    def signer(self) -> Certificate:
        return self.chain[0]

    @property
    def revocation_targets(self) -> tuple[tuple[Certificate, Certificate], ...]:
        """(certificate, its issuer) for every chain certificate below the root: the ones NVIDIA checks by
        OCSP (indices 0..2 of a 4-certificate chain: signer, L3, CA)."""
        return tuple(zip(self.chain[:-1], self.chain[1:], strict=True))

    @property
    def not_before(self) -> datetime:
        """The latest notBefore of the chain: the RIM verifies from then on."""
        return max(cert.not_before for cert in self.chain)

    @property
    def not_after(self) -> datetime:
        """The earliest notAfter of the chain (NVIDIA's x-nvidia-cert-expiration-date)."""
        return min(cert.not_after for cert in self.chain)

    def valid_at(self, at: datetime) -> bool:
        return self.not_before <= at <= self.not_after


_CacheKey = tuple[bytes, frozenset[str]]


@dataclass(frozen=True)
class _Cached:
    rim: VerifiedRim
    cost: int  # charged for the key's XML as well as the entries (the certificates live in the x509 cache)


def _cached(xml: bytes, rim: VerifiedRim) -> _Cached:
    entries = sum(160 + len(e.name) + sum(len(h) for h in e.alternatives) for e in rim.entries)
    return _Cached(rim, 2048 + len(xml) + entries)


_verified: ByteBoundedCache[_CacheKey, _Cached] = ByteBoundedCache(RIM_CACHE_BYTES, lambda item: item.cost)


def configure_rim_cache(max_bytes: int) -> None:
    """Replace the verified-RIM cache with an empty one of this budget (0 disables it)."""
    global _verified
    _verified = ByteBoundedCache(max_bytes, lambda item: item.cost)


def _key(xml: bytes, roots: PinnedRoots) -> _CacheKey:
    return xml, frozenset(pin.fingerprint for pin in roots.pins)


def cached_rim(xml: bytes, at: datetime, *, trust_roots: Sequence[Certificate] | None = None) -> VerifiedRim | None:
    """The RIM `verify_rim` would return from its cache (None: it would have to verify), so async callers
    can take the one-lookup path on the event loop and send only cold verifications to a thread."""
    if len(xml) > MAX_RIM_BYTES:
        return None
    cached = _verified.get(_key(bytes(xml), rim_roots(trust_roots)))
    return cached.rim if cached is not None and cached.rim.valid_at(at) else None


def _name(what: str, rim_id: str | None, tag_id: str | None) -> str:
    if rim_id:
        return f"RIM {rim_id}"
    if tag_id:
        return f"RIM tagId {tag_id[:16]}…" if len(tag_id) > 20 else f"RIM tagId {tag_id}"
    return what


def _certificates(ders: Sequence[bytes], what: str) -> list[Certificate]:
    certs = []
    for number, der in enumerate(ders):
        try:
            certs.append(parse_certificate(der))
        except MalformedEvidence as exc:
            raise ChainInvalid(f"{what}: embedded certificate #{number} does not parse: {exc}", check=CHAIN) from exc
    return certs


def _check_signer(signer: Certificate, what: str) -> None:
    if signer.spki_algorithm != OID_EC_PUBLIC_KEY or signer.spki_curve != OID_SECP384R1:
        raise ChainInvalid(f"{what} signer {signer.subject_cn!r} does not have a P-384 key (RIMs are signed with "
                           "ECDSA P-384)", check=CHAIN)
    constraints = signer.basic_constraints()
    if constraints is not None and constraints[0]:
        raise ChainInvalid(f"{what} signer {signer.subject_cn!r} is a CA certificate (cA TRUE); a RIM is signed by "
                           "an end-entity signer", check=CHAIN)
    usage = signer.key_usage()
    if usage is not None and "digitalSignature" not in usage:
        raise ChainInvalid(f"{what} signer {signer.subject_cn!r} keyUsage is {sorted(usage)}, which lacks "
                           "digitalSignature", check=CHAIN)


def _walk(certs: list[Certificate], roots: PinnedRoots, at: datetime, what: str) -> VerifiedChain:
    """The signer (first embedded certificate) walked to a trusted root, without the RIM's own root."""
    signer, rest = certs[0], certs[1:]
    own_root = rest.pop() if rest and rest[-1].issuer_der == rest[-1].subject_der else None
    try:
        walked = walk_chain(signer, rest, roots, at, max_depth=MAX_CHAIN, algorithms=RIM_SIGNATURE_ALGORITHMS)
    except ChainInvalid as exc:
        note = ""
        if own_root is not None and roots.pin_of(own_root) is None:
            debug = " (a debug-only root: debug-signed RIMs are never accepted)" \
                if "debug" in own_root.subject_cn.lower() else ""
            note = (f"; the RIM carries the root {own_root.subject_cn!r} (SHA-256 "
                    f"{short_fingerprint(own_root.fingerprint)}), which is not {roots.description}{debug}")
        raise ChainInvalid(f"{what} signing chain is not trusted: {exc} [{exc.check}]{note}", check=CHAIN) from exc
    if len(walked.certificates) < 2:
        raise ChainInvalid(f"{what} is signed by {signer.subject_cn!r}, which is itself a trust root; a RIM "
                           "signer must be issued by one", check=CHAIN)
    _check_signer(signer, what)
    return walked


def verify_rim(xml: bytes, at: datetime, *, trust_roots: Sequence[Certificate] | None = None,
               rim_id: str | None = None) -> VerifiedRim:
    """Verify a RIM's bytes at `at` (module docstring).  `trust_roots` replace the pinned CoRIM root (labs,
    tests); `rim_id` (the id it was looked up by) names it in messages.  Raises MalformedEvidence,
    SignatureInvalid or ChainInvalid with a `nvgpu.rim.*` label."""
    what = _name("RIM", rim_id, None)
    if len(xml) > MAX_RIM_BYTES:
        raise MalformedEvidence(f"{what} is {len(xml)} bytes, more than the {MAX_RIM_BYTES} allowed", check=PARSE)
    xml = bytes(xml)
    roots = rim_roots(trust_roots)
    key = _key(xml, roots)
    cache = _verified
    cached = cache.get(key)
    if cached is not None and cached.rim.valid_at(at):
        return cached.rim
    root = parse_xml(xml, what)
    what = _name(what, rim_id, root.get("tagId"))  # unverified: only to name the RIM in messages
    signature = signature_element(root, what)
    certs = _certificates(embedded_certificates(signature, what), what)
    chain = _walk(certs, roots, at, what)
    signed = verify_signed_document(xml, chain.leaf.der, at, what)
    document = read_document(signed, what)
    rim = VerifiedRim(id=document.tag_id, name=document.name, colloquial_version=document.colloquial_version,
                      firmware_manufacturer_id=document.firmware_manufacturer_id, entries=document.entries,
                      chain=chain.certificates, pin=chain.pin, sha256=hashlib.sha256(xml).hexdigest())
    cache.put(key, _cached(xml, rim))
    return rim


def verify_rim_authentic(xml: bytes, *, trust_roots: Sequence[Certificate] | None = None,
                         rim_id: str | None = None) -> VerifiedRim:
    """Verify a RIM at the start of its chain's validity (the latest notBefore of the certificates it
    carries and the roots): is it NVIDIA's, whatever the time?  For caches that must not admit forgeries
    but hold RIMs for verification at other times; whether it is valid at a given time is `verify_rim`'s."""
    what = _name("RIM", rim_id, None)
    if len(xml) > MAX_RIM_BYTES:
        raise MalformedEvidence(f"{what} is {len(xml)} bytes, more than the {MAX_RIM_BYTES} allowed", check=PARSE)
    root = parse_xml(bytes(xml), what)
    what = _name(what, rim_id, root.get("tagId"))
    certs = _certificates(embedded_certificates(signature_element(root, what), what), what)
    start = max(cert.not_before for cert in (*certs, *rim_roots(trust_roots).certificates))
    return verify_rim(xml, start, trust_roots=trust_roots, rim_id=rim_id)
