"""The chain walker: from a leaf, through untrusted candidates, to a root pinned by SHA-256 fingerprint.

Every certificate the walker sees is untrusted transport (from the evidence, a certificate table, a
vendor service or a cache) until the path it builds ends at a pinned root.  Roots are trusted by the
SHA-256 of their DER, never by name (`PinnedRoots`); an operator-supplied root set replaces the pins
in labs and tests.

The walk, in order of cost:

1. **Build** leaf to root by issuer name (exact DER bytes).  Where several candidates carry the
   issuer's name, their signatures decide (a pinned candidate first, then one valid at the time).
   The walk stops at the first pinned certificate; a self-issued certificate that is not pinned ends
   it with `chain.root` (with its own message when it has a pinned root's name); a bound on the
   length (`depth` exactly, or `max_depth`) ends it with `chain.depth`.
2. **Pin first.**  Nothing is verified for the cache, and nothing is cached, before the path ends at a
   pinned root, so a flood of attacker-rooted chains cannot evict good entries.
3. **Time-independent checks**, cached by the exact DER of the path (and the profile): every link's
   signature (root first, with both copies of each algorithm identifier identical and the algorithm
   in the caller's profile), basicConstraints cA on every issuer, its pathLenConstraint, keyCertSign
   where keyUsage is present, and no critical extension the walker does not understand.
4. **Validity of every certificate at the given time**, on every call.

Every refusal is a `ChainInvalid` whose `check` names the failed check: `chain.issuer_missing`,
`chain.root`, `chain.depth`, `chain.candidates`, `chain.signature`, `chain.signature_algorithm`,
`chain.key_type`, `chain.ca`, `chain.critical_extension`, `chain.validity`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid
from kbs.trust.signature import Profile, SignatureAlgorithm, verify_link
from kbs.trust.x509 import OID_BASIC_CONSTRAINTS, OID_EXTENDED_KEY_USAGE, OID_KEY_USAGE, Certificate

MAX_DEPTH = 8  # certificates in a path, leaf and root included (vendor chains are 3-5)
MAX_CANDIDATES = 64  # distinct candidate certificates offered for one walk

# Extensions the walker itself enforces or that carry no constraint on the path (identifiers,
# names, pointers).  A critical extension outside this set (nameConstraints, policy constraints,
# anything unknown) is refused: RFC 5280 §4.2 says a certificate with a critical extension the
# verifier does not process must be rejected.
UNDERSTOOD_CRITICAL = frozenset({
    OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_EXTENDED_KEY_USAGE,
    "2.5.29.14",  # subjectKeyIdentifier
    "2.5.29.35",  # authorityKeyIdentifier
    "2.5.29.17",  # subjectAltName
    "2.5.29.31",  # cRLDistributionPoints
    "1.3.6.1.5.5.7.1.1",  # authorityInfoAccess
})

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def short_fingerprint(fingerprint: str) -> str:
    return f"{fingerprint[:8]}…{fingerprint[-4:]}"


@dataclass(frozen=True)
class Pin:
    """A trusted root: SHA-256 of its DER (lowercase hex) and its subject CN (for messages, and to
    recognise a root that copies the name of a pinned one)."""

    fingerprint: str
    name: str

    def __post_init__(self) -> None:
        if not _FINGERPRINT.fullmatch(self.fingerprint):
            raise ValueError(f"pin for {self.name!r} is not 64 lowercase hex digits: {self.fingerprint!r}")


@dataclass(frozen=True)
class PinnedRoots:
    """The roots a chain may end at.

    `pins` are SHA-256 fingerprints of root certificates; `certificates` are root certificates at hand
    (an operator's file, a vendor download checked against the pin), each of which must match a pin.
    A path may end at a pinned certificate found among the candidates too, so no root needs shipping.
    `description` completes the sentence "root X is not …" in errors.
    """

    pins: tuple[Pin, ...]
    certificates: tuple[Certificate, ...] = ()
    description: str = "a pinned root"

    def __post_init__(self) -> None:
        if not self.pins:
            raise ValueError("PinnedRoots needs at least one pin")
        for cert in self.certificates:
            if cert.fingerprint not in self._by_fingerprint:
                raise ValueError(f"root certificate {cert.subject_cn!r} (SHA-256 "
                                 f"{short_fingerprint(cert.fingerprint)}) matches no pin")

    @classmethod
    def from_certificates(cls, certificates: Iterable[Certificate],
                          description: str = "a configured trust root") -> PinnedRoots:
        """Trust exactly these certificates (an operator's roots replacing the vendor pins)."""
        certs = tuple({c.fingerprint: c for c in certificates}.values())
        return cls(tuple(Pin(c.fingerprint, c.subject_cn) for c in certs), certs, description)

    @functools.cached_property
    def _by_fingerprint(self) -> dict[str, Pin]:
        return {pin.fingerprint: pin for pin in self.pins}

    def pin_of(self, cert: Certificate) -> Pin | None:
        return self._by_fingerprint.get(cert.fingerprint)

    def namesake(self, cert: Certificate) -> tuple[Pin, Certificate | None] | None:
        """The pin (and root certificate, when at hand) whose name `cert` carries, if any."""
        for root in self.certificates:
            if root.subject_der == cert.subject_der:
                return self._by_fingerprint[root.fingerprint], root
        for pin in self.pins:
            if pin.name == cert.subject_cn:
                return pin, None
        return None


@dataclass(frozen=True)
class VerifiedChain:
    """A path whose links, CA constraints and root pin were checked, and whose certificates were
    valid at the time it was verified at."""

    certificates: tuple[Certificate, ...]  # leaf first, root last
    pin: Pin

    @property
    def leaf(self) -> Certificate:
        return self.certificates[0]

    @property
    def root(self) -> Certificate:
        return self.certificates[-1]

    @property
    def intermediates(self) -> tuple[Certificate, ...]:
        return self.certificates[1:-1]


def _names(path: Sequence[Certificate]) -> str:
    return " <- ".join(repr(c.subject_cn) for c in path)


def _not_a_root(cert: Certificate, roots: PinnedRoots) -> ChainInvalid:
    seen = f"root {cert.subject_cn!r} (SHA-256 {short_fingerprint(cert.fingerprint)}) is not {roots.description}"
    namesake = roots.namesake(cert)
    if namesake is None:
        return ChainInvalid(seen, check="chain.root")
    pin, root = namesake
    if root is not None and root.spki_der == cert.spki_der:
        differs = "the same key in other certificate bytes"
    elif root is not None:
        differs = "another key"
    else:
        differs = "other bytes"
    return ChainInvalid(f"{seen}: it has the name of the trusted root {pin.name!r} (SHA-256 "
                        f"{short_fingerprint(pin.fingerprint)}) but {differs}; roots are trusted by "
                        "fingerprint, never by name", check="chain.root")


def _valid_at(cert: Certificate, at: datetime) -> bool:
    return cert.not_before <= at <= cert.not_after


def _pool(roots: PinnedRoots, candidates: Iterable[Certificate]) -> list[Certificate]:
    """Root certificates first, then candidates, each once."""
    pool: dict[str, Certificate] = {}
    for cert in (*roots.certificates, *candidates):
        pool.setdefault(cert.fingerprint, cert)
        if len(pool) > MAX_CANDIDATES:
            raise ChainInvalid(f"more than {MAX_CANDIDATES} candidate certificates were offered for one chain",
                               check="chain.candidates")
    return list(pool.values())


def _choose_issuer(cert: Certificate, pool: list[Certificate], path: list[Certificate], roots: PinnedRoots,
                   at: datetime, allowed: Profile | None, verified: set[tuple[str, str]]) -> Certificate:
    in_path = {c.fingerprint for c in path}
    named = [c for c in pool if c.subject_der == cert.issuer_der and c.fingerprint not in in_path]
    if not named:
        raise ChainInvalid(f"the issuer {cert.issuer_cn!r} of {cert.subject_cn!r} was not supplied",
                           check="chain.issuer_missing")
    if len(named) == 1:
        return named[0]
    # Several certificates carry the issuer's name: the one whose key signed `cert` is the issuer.
    # No backtracking: a pinned one is preferred, then one valid at the time.
    signers: list[Certificate] = []
    first_error: ChainInvalid | None = None
    for candidate in named:
        try:
            verify_link(cert, candidate, allowed)
        except ChainInvalid as exc:
            first_error = first_error or exc
            continue
        verified.add((cert.fingerprint, candidate.fingerprint))
        signers.append(candidate)
    if not signers:
        assert first_error is not None
        raise first_error
    signers.sort(key=lambda c: (roots.pin_of(c) is None, not _valid_at(c, at)))
    return signers[0]


def _build(leaf: Certificate, pool: list[Certificate], roots: PinnedRoots, at: datetime, limit: int,
           allowed: Profile | None, verified: set[tuple[str, str]]) -> tuple[list[Certificate], Pin]:
    path = [leaf]
    while True:
        cert = path[-1]
        pin = roots.pin_of(cert)
        if pin is not None:
            return path, pin
        if cert.issuer_der == cert.subject_der:
            raise _not_a_root(cert, roots)
        if len(path) >= limit:
            raise ChainInvalid(f"no trusted root within {limit} certificates: {_names(path)} <- "
                               f"{cert.issuer_cn!r} …", check="chain.depth")
        path.append(_choose_issuer(cert, pool, path, roots, at, allowed, verified))


def _check_ca(path: Sequence[Certificate]) -> None:
    """Every issuer is a CA: basicConstraints cA, pathLenConstraint, keyCertSign if keyUsage is present."""
    for index in range(1, len(path)):
        issuer, issued = path[index], path[index - 1]
        constraints = issuer.basic_constraints()
        if constraints is None:
            raise ChainInvalid(f"{issuer.subject_cn} issued {issued.subject_cn} but has no basicConstraints: "
                               "it is not a CA certificate", check="chain.ca")
        is_ca, path_len = constraints
        if not is_ca:
            raise ChainInvalid(f"{issuer.subject_cn} issued {issued.subject_cn} but its basicConstraints say "
                               "cA FALSE", check="chain.ca")
        below = index - 1  # intermediate CAs between this issuer and the leaf
        if path_len is not None and below > path_len:
            raise ChainInvalid(f"{issuer.subject_cn} allows {path_len} intermediate CA certificate(s) below it, "
                               f"the chain has {below}", check="chain.ca")
        usage = issuer.key_usage()
        if usage is not None and "keyCertSign" not in usage:
            raise ChainInvalid(f"{issuer.subject_cn} issued {issued.subject_cn} but its keyUsage lacks "
                               "keyCertSign", check="chain.ca")


def _check_critical(path: Sequence[Certificate], understood: frozenset[str]) -> None:
    for cert in path:
        unknown = sorted(cert.critical_extensions - understood)
        if unknown:
            raise ChainInvalid(f"{cert.subject_cn} has critical extension(s) {', '.join(unknown)} that are not "
                               "understood", check="chain.critical_extension")


def _check_path(path: tuple[Certificate, ...], allowed: Profile | None, understood: frozenset[str],
                verified: set[tuple[str, str]]) -> None:
    """Every time-independent check of a built path.  Signatures root first, like the AMD chain always was."""
    root = path[-1]
    if root.issuer_der == root.subject_der:
        verify_link(root, root, allowed)  # a pinned root proves nothing by it, but must fit the profile
    for index in range(len(path) - 2, -1, -1):
        cert, issuer = path[index], path[index + 1]
        if (cert.fingerprint, issuer.fingerprint) not in verified:
            verify_link(cert, issuer, allowed)
    _check_ca(path)
    _check_critical(path, understood)


def check_validity(certificates: Iterable[Certificate], at: datetime) -> None:
    """Each certificate's notBefore <= at <= notAfter (RFC 5280: both ends inclusive)."""
    for cert in certificates:
        if at < cert.not_before:
            raise ChainInvalid(f"{cert.subject_cn} is not valid before {cert.not_before.isoformat()}, "
                               f"verification time is {at.isoformat()}", check="chain.validity")
        if at > cert.not_after:
            raise ChainInvalid(f"{cert.subject_cn} expired at {cert.not_after.isoformat()}, "
                               f"verification time is {at.isoformat()}", check="chain.validity")


# A verified path holds its parsed certificates (about 6x their DER each, see x509).
PATH_CACHE_BYTES = 8 * 1024 * 1024
_CacheKey = tuple[frozenset[SignatureAlgorithm] | None, frozenset[str], tuple[bytes, ...]]


def _path_cost(path: tuple[Certificate, ...]) -> int:
    return 512 + sum(2048 + 6 * len(c.der) for c in path)


_paths: ByteBoundedCache[_CacheKey, tuple[Certificate, ...]] = ByteBoundedCache(PATH_CACHE_BYTES, _path_cost)


def configure_path_cache(max_bytes: int) -> None:
    """Replace the verified-path cache with an empty one of this budget (0 disables it)."""
    global _paths
    _paths = ByteBoundedCache(max_bytes, _path_cost)


def walk_chain(leaf: Certificate, candidates: Iterable[Certificate], roots: PinnedRoots, at: datetime, *,
               depth: int | None = None, max_depth: int = MAX_DEPTH, algorithms: Profile | None = None,
               understood_extensions: Iterable[str] = ()) -> VerifiedChain:
    """Build and verify the path from `leaf` to one of `roots`, valid at `at`.

    `candidates` are untrusted certificates (intermediates, and roots to be checked against the pins);
    `depth` asks for exactly that many certificates, leaf and root included; `algorithms` narrows the
    signature algorithms accepted on every link (None: any supported one); `understood_extensions`
    adds critical extensions the caller checks itself.  Raises ChainInvalid naming the check.
    """
    if depth is not None and depth < 1:
        raise ValueError("depth counts certificates, leaf and root included: at least 1")
    allowed = frozenset(algorithms) if algorithms is not None else None
    understood = UNDERSTOOD_CRITICAL | frozenset(understood_extensions)
    verified: set[tuple[str, str]] = set()
    pool = _pool(roots, candidates)
    built, pin = _build(leaf, pool, roots, at, depth if depth is not None else max_depth, allowed, verified)
    if depth is not None and len(built) != depth:
        raise ChainInvalid(f"chain {_names(built)} has {len(built)} certificate(s), wanted {depth}",
                           check="chain.depth")
    path = tuple(built)
    key: _CacheKey = (allowed, understood, tuple(c.der for c in path))
    cache = _paths
    if cache.get(key) is None:
        _check_path(path, allowed, understood, verified)
        cache.put(key, path)
    check_validity(reversed(path), at)
    return VerifiedChain(path, pin)
