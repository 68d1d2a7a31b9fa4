"""The generic chain walker over synthetic PKIs of every algorithm, each check broken on its own,
and over the real AMD, Intel and NVIDIA chains (when the shared vectors are present)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbs.errors import ChainInvalid, EvidenceError
from kbs.trust import chain as chain_module
from kbs.trust.amd.certs import AMD_SIGNATURE_ALGORITHMS, PINNED_ARKS
from kbs.trust.chain import (
    MAX_CANDIDATES,
    PATH_CACHE_BYTES,
    Pin,
    PinnedRoots,
    VerifiedChain,
    configure_path_cache,
    walk_chain,
)
from kbs.trust.signature import (
    ECDSA_SHA256,
    ECDSA_SHA384,
    RSA_PKCS1_SHA256,
    RSA_PSS_SHA384,
    SignatureAlgorithm,
    certificate_algorithm,
    verify_link,
)
from kbs.trust.signature import verify_link as real_verify_link
from kbs.trust.x509 import Certificate, load_certificates, parse_certificate
from tests import der as dertools
from tests.pki_synth import ALGORITHMS, DAY, NOW, Algorithm, Node, Pki, fresh_key, key_kind, key_usage, name

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors"))

EXPECTED_ALGORITHM: dict[Algorithm, str] = {
    "rsa-pss-sha256": "RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32)",
    "rsa-pss-sha384": "RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48)",
    "rsa-pss-sha512": "RSASSA-PSS (SHA-512, MGF1-SHA-512, salt 64)",
    "rsa-pkcs1-sha256": "RSA PKCS#1 v1.5 with SHA-256",
    "rsa-pkcs1-sha384": "RSA PKCS#1 v1.5 with SHA-384",
    "rsa-pkcs1-sha512": "RSA PKCS#1 v1.5 with SHA-512",
    "ecdsa-p256-sha256": "ECDSA with SHA-256",
    "ecdsa-p384-sha384": "ECDSA with SHA-384",
    "ecdsa-p256-sha384": "ECDSA with SHA-384",
}


@pytest.fixture(scope="module", params=ALGORITHMS)
def pki(request: pytest.FixtureRequest) -> Pki:
    return Pki(request.param)


@pytest.fixture(scope="module")
def ec() -> Pki:
    return Pki("ecdsa-p256-sha256")


@pytest.fixture
def fresh_path_cache() -> Iterator[None]:
    configure_path_cache(PATH_CACHE_BYTES)
    yield
    configure_path_cache(PATH_CACHE_BYTES)


def pins(*roots: Node, description: str = "the synthetic pinned root") -> PinnedRoots:
    return PinnedRoots(tuple(Pin(r.parsed.fingerprint, r.cn) for r in roots), description=description)


def walk(leaf: Node, *candidates: Node, roots: PinnedRoots, at: dt.datetime = NOW,
         **kwargs: object) -> VerifiedChain:
    return walk_chain(leaf.parsed, [c.parsed for c in candidates], roots, at, **kwargs)  # type: ignore[arg-type]


def refused(check: str, match: str, leaf: Node, *candidates: Node, roots: PinnedRoots,
            at: dt.datetime = NOW, **kwargs: object) -> ChainInvalid:
    with pytest.raises(ChainInvalid, match=match) as info:
        walk(leaf, *candidates, roots=roots, at=at, **kwargs)
    assert info.value.check == check, str(info.value)
    return info.value


def with_outer_algorithm(der: bytes, algorithm_der: bytes) -> bytes:
    """`der` with its unsigned signatureAlgorithm replaced (the signed copy in the tbs stays)."""
    tbs, _, signature = dertools.split(dertools.contents(der))
    return dertools.tlv(0x30, tbs + algorithm_der + signature)


def outer_algorithm(der: bytes) -> bytes:
    return dertools.split(dertools.contents(der))[1]


# -- every algorithm: a good chain, and each link, pin and date broken on its own -------------------

def test_chain_of_each_algorithm_verifies(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    verified = walk(leaf, intermediate, pki.root, roots=pins(pki.root), depth=3)
    assert [c.subject_cn for c in verified.certificates] == ["Synthetic Leaf", "Synthetic Intermediate CA",
                                                              "Synthetic Root CA"]
    assert verified.pin.name == "Synthetic Root CA" and verified.root.der == pki.root.der
    assert verified.intermediates == (intermediate.parsed,) and verified.leaf.der == leaf.der
    assert str(certificate_algorithm(leaf.parsed)) == EXPECTED_ALGORITHM[pki.algorithm]
    # The root may come from the operator instead of the candidates.
    operator = PinnedRoots.from_certificates([pki.root.parsed])
    assert walk(leaf, intermediate, roots=operator).root.der == pki.root.der


def test_link_signed_by_another_key_is_refused(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    forged_leaf = pki.issue("Synthetic Leaf", intermediate, ca=False, signer=fresh_key(key_kind(pki.algorithm)))
    refused("chain.signature", "Synthetic Leaf signature does not verify with Synthetic Intermediate CA's key",
            forged_leaf, intermediate, pki.root, roots=pins(pki.root))
    forged_intermediate = pki.issue("Synthetic Intermediate CA", pki.root, key=intermediate.key, path_length=0,
                                    signer=fresh_key(key_kind(pki.algorithm)))
    refused("chain.signature", "Synthetic Intermediate CA signature does not verify with Synthetic Root CA's key",
            leaf, forged_intermediate, pki.root, roots=pins(pki.root))


@pytest.mark.parametrize("which", ["leaf", "intermediate", "root"])
@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_each_certificate_must_be_valid_at_the_time(pki: Pki, which: str, when: str) -> None:
    intermediate, leaf = pki.chain()
    dates = ({"not_before": NOW - 10 * DAY, "not_after": NOW - DAY} if when == "expired"
             else {"not_before": NOW + DAY, "not_after": NOW + 10 * DAY})
    root = pki.root
    if which == "leaf":
        leaf = pki.issue("Synthetic Leaf", intermediate, key=leaf.key, ca=False, **dates)  # type: ignore[arg-type]
    elif which == "intermediate":
        intermediate = pki.issue("Synthetic Intermediate CA", root, key=intermediate.key, path_length=0,
                                 **dates)  # type: ignore[arg-type]
    else:
        root = pki.issue("Synthetic Root CA", None, key=root.key, serial=0x1001, **dates)  # type: ignore[arg-type]
    cn = {"leaf": "Synthetic Leaf", "intermediate": "Synthetic Intermediate CA", "root": "Synthetic Root CA"}[which]
    match = f"{cn} expired at" if when == "expired" else f"{cn} is not valid before"
    refused("chain.validity", match, leaf, intermediate, root, roots=pins(root))


def test_validity_bounds_are_inclusive_and_time_is_an_input(ec: Pki) -> None:
    intermediate, _ = ec.chain()
    leaf = ec.issue("Synthetic Leaf", intermediate, key=ec.key(2), ca=False, not_after=NOW + 10 * DAY)
    end = leaf.cert.not_valid_after_utc
    assert walk(leaf, intermediate, ec.root, roots=pins(ec.root), at=end)
    refused("chain.validity", "Synthetic Leaf expired at", leaf, intermediate, ec.root, roots=pins(ec.root),
            at=end + dt.timedelta(seconds=1))
    start = leaf.cert.not_valid_before_utc
    assert walk(leaf, intermediate, ec.root, roots=pins(ec.root), at=start)


def test_root_with_the_pinned_name_and_another_key(pki: Pki) -> None:
    impostor = Pki(pki.algorithm, slot=7)  # same names, other keys
    intermediate, leaf = impostor.chain()
    error = refused("chain.root", "is not the synthetic pinned root: it has the name of the trusted root "
                    "'Synthetic Root CA' .* but other bytes; roots are trusted by fingerprint, never by name",
                    leaf, intermediate, impostor.root, roots=pins(pki.root))
    assert impostor.root.parsed.fingerprint[:8] in str(error)
    # With the real root at hand, the message says what differs; the real root among the candidates
    # does not help a chain it did not sign.
    operator = PinnedRoots.from_certificates([pki.root.parsed])
    refused("chain.root", "not a configured trust root: .* but another key", leaf, intermediate, impostor.root,
            roots=operator)
    refused("chain.root", "but another key", leaf, intermediate, impostor.root, pki.root, roots=operator)
    # Re-issued with the pinned root's own key: same name and key, other bytes.  Where the pinned
    # certificate is at hand it completes the chain instead; alone, the re-issue is refused.
    reissued = pki.issue("Synthetic Root CA", None, key=pki.root.key, serial=0x1999)
    real_intermediate, real_leaf = pki.chain()
    assert walk(real_leaf, real_intermediate, reissued, roots=operator).root.der == pki.root.der
    refused("chain.root", "the same key in other certificate bytes", reissued, roots=operator)


def test_root_of_another_name_is_just_not_pinned(ec: Pki) -> None:
    other = Pki("ecdsa-p256-sha256", root_cn="Other Root", slot=3)
    intermediate, leaf = other.chain()
    error = refused("chain.root", r"root 'Other Root' \(SHA-256 [0-9a-f]{8}…[0-9a-f]{4}\) is not the synthetic "
                    "pinned root$", leaf, intermediate, other.root, roots=pins(ec.root))
    assert "name" not in str(error)


def test_missing_intermediate_is_named(pki: Pki) -> None:
    _, leaf = pki.chain()
    refused("chain.issuer_missing", "the issuer 'Synthetic Intermediate CA' of 'Synthetic Leaf' was not supplied",
            leaf, pki.root, roots=pins(pki.root))


def test_depth_exact_and_bounded(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    roots = pins(ec.root)
    refused("chain.depth", "no trusted root within 2 certificates", leaf, intermediate, ec.root, roots=roots,
            depth=2)
    refused("chain.depth", "has 3 certificate", leaf, intermediate, ec.root, roots=roots, depth=4)
    refused("chain.depth", "no trusted root within 2 certificates", leaf, intermediate, ec.root, roots=roots,
            max_depth=2)
    # A long chain: the default bound is 8 certificates.
    issuers = [ec.root]
    for level in range(7):
        issuers.append(ec.issue(f"CA level {level}", issuers[-1], key=ec.key(4 + level % 2), serial=0x6000 + level))
    eight = ec.issue("Deep leaf", issuers[-2], key=ec.key(2), ca=False)  # leaf, 6 CAs, root
    assert len(walk(eight, *issuers, roots=roots).certificates) == 8
    nine = ec.issue("Deep leaf", issuers[-1], key=ec.key(2), ca=False)  # leaf, 7 CAs, root
    refused("chain.depth", "no trusted root within 8 certificates", nine, *issuers, roots=roots)
    with pytest.raises(ValueError):
        walk(leaf, intermediate, ec.root, roots=roots, depth=0)


def test_a_pinned_leaf_is_a_chain_of_one(ec: Pki) -> None:
    assert walk(ec.root, roots=pins(ec.root), depth=1).certificates == (ec.root.parsed,)


# -- algorithms: profiles, both copies, unsupported ones, keys that do not fit -----------------------

def test_profile_narrows_the_algorithms(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    others = {RSA_PSS_SHA384, ECDSA_SHA256, RSA_PKCS1_SHA256, ECDSA_SHA384} - {certificate_algorithm(leaf.parsed)}
    refused("chain.signature_algorithm", f"is signed with {re.escape(EXPECTED_ALGORITHM[pki.algorithm])}, wanted ",
            leaf, intermediate, pki.root, roots=pins(pki.root), algorithms=others)
    assert walk(leaf, intermediate, pki.root, roots=pins(pki.root),
                algorithms={certificate_algorithm(leaf.parsed)})


def test_amd_profile_refuses_what_amd_does_not_sign_with(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    refused("chain.signature_algorithm", r"wanted RSASSA-PSS \(SHA-384, MGF1-SHA-384, salt 48\)", leaf,
            intermediate, ec.root, roots=pins(ec.root), algorithms=AMD_SIGNATURE_ALGORITHMS)


@pytest.mark.parametrize(("one", "other"), [("rsa-pss-sha256", "rsa-pss-sha384"),
                                            ("ecdsa-p256-sha256", "ecdsa-p256-sha384"),
                                            ("rsa-pkcs1-sha256", "rsa-pkcs1-sha384")])
def test_both_copies_of_the_algorithm_must_be_identical(one: Algorithm, other: Algorithm) -> None:
    first, second = Pki(one), Pki(other)
    intermediate, leaf = first.chain()
    _, other_leaf = second.chain()
    swapped = with_outer_algorithm(leaf.der, outer_algorithm(other_leaf.der))
    forged = Node(leaf.cn, leaf.key, x509.load_der_x509_certificate(swapped), leaf.algorithm)
    refused("chain.signature_algorithm", "signed copy of the signature algorithm .* differs from the unsigned",
            forged, intermediate, first.root, roots=pins(first.root))


def _raw_leaf(issuer: Node, sign: object) -> Node:
    key = fresh_key("p256")
    builder = (x509.CertificateBuilder().subject_name(name("Raw Leaf")).issuer_name(issuer.cert.subject)
               .public_key(key.public_key()).serial_number(7).not_valid_before(NOW - DAY)
               .not_valid_after(NOW + DAY))
    cert = sign(builder)  # type: ignore[operator]
    return Node("Raw Leaf", key, cert, "ecdsa-p256-sha256")


def test_unsupported_algorithms_are_refused_by_name() -> None:
    rsa_pki = Pki("rsa-pkcs1-sha256")
    intermediate, _ = rsa_pki.chain()
    # cryptography no longer signs with SHA-1: rename sha256WithRSAEncryption in both copies.
    sha256_der = _raw_leaf(intermediate, lambda b: b.sign(intermediate.key, hashes.SHA256())).der
    oid = bytes.fromhex("06092a864886f70d01010b")
    assert sha256_der.count(oid) == 2
    sha1_cert = x509.load_der_x509_certificate(sha256_der.replace(oid, oid[:-1] + b"\x05"))
    sha1 = Node("Raw Leaf", intermediate.key, sha1_cert, "rsa-pkcs1-sha256")
    refused("chain.signature_algorithm", "Raw Leaf is signed with sha1WithRSAEncryption, which is not accepted",
            sha1, intermediate, rsa_pki.root, roots=pins(rsa_pki.root))
    ed_key = cast(Any, ed25519.Ed25519PrivateKey.generate())  # Pki is typed for RSA and EC keys
    ed_ca = Node("Ed CA", ed_key, rsa_pki.issue("Ed CA", rsa_pki.root, key=ed_key, path_length=0).cert,
                 "ecdsa-p256-sha256")  # its own algorithm is irrelevant: it signs by hand below
    ed_leaf = _raw_leaf(ed_ca, lambda b: b.sign(ed_key, None))
    refused("chain.signature_algorithm", "is signed with Ed25519, which is not accepted", ed_leaf, ed_ca,
            rsa_pki.root, roots=pins(rsa_pki.root))


def test_the_issuer_key_must_fit_the_algorithm() -> None:
    ec384, rsa_pss = Pki("ecdsa-p384-sha384"), Pki("rsa-pss-sha384", slot=2)
    intermediate, _ = ec384.chain()
    # A leaf naming the EC intermediate as issuer, signed RSASSA-PSS by some RSA key.
    impostor_signer = Node(intermediate.cn, rsa_pss.key(5), intermediate.cert, "rsa-pss-sha384")
    leaf = rsa_pss.issue("Synthetic Leaf", impostor_signer, ca=False)
    refused("chain.key_type", r"is signed with RSASSA-PSS .*, but Synthetic Intermediate CA's key is an EC key on "
            "P-384", leaf, intermediate, ec384.root, roots=pins(ec384.root))
    for kind, match in [("p521", "EC key on 1.3.132.0.35"), ("rsa1024", "RSA key has 1024 bits, wanted at least 2048")]:
        pki = Pki("rsa-pkcs1-sha256" if kind.startswith("rsa") else "ecdsa-p384-sha384", slot=4)
        weak = pki.issue("Weak CA", pki.root, key=fresh_key(kind), path_length=0)
        weak_leaf = pki.issue("Weak Leaf", weak, ca=False)
        refused("chain.key_type", match, weak_leaf, weak, pki.root, roots=pins(pki.root))


def test_verify_link_reports_the_algorithm(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    algorithm = verify_link(leaf.parsed, intermediate.parsed)
    assert isinstance(algorithm, SignatureAlgorithm) and str(algorithm) == EXPECTED_ALGORITHM[pki.algorithm]
    with pytest.raises(ChainInvalid) as info:
        verify_link(leaf.parsed, pki.root.parsed)  # the root did not sign the leaf
    assert info.value.check == "chain.signature"


# -- CA constraints and critical extensions ---------------------------------------------------------

def test_issuers_must_be_cas(ec: Pki) -> None:
    root = ec.root
    leaf_key = ec.key(2)

    def chain_under(intermediate: Node) -> Node:
        return ec.issue("Synthetic Leaf", intermediate, key=leaf_key, ca=False)

    no_bc = ec.issue("Synthetic Intermediate CA", root, key=ec.key(1), ca=None)
    refused("chain.ca", "Synthetic Intermediate CA issued Synthetic Leaf but has no basicConstraints",
            chain_under(no_bc), no_bc, root, roots=pins(root))
    not_ca = ec.issue("Synthetic Intermediate CA", root, key=ec.key(1), ca=False, key_usage=None)
    refused("chain.ca", "basicConstraints say cA FALSE", chain_under(not_ca), not_ca, root, roots=pins(root))
    no_cert_sign = ec.issue("Synthetic Intermediate CA", root, key=ec.key(1),
                            key_usage=key_usage(digital_signature=True, crl_sign=True))
    refused("chain.ca", "keyUsage lacks keyCertSign", chain_under(no_cert_sign), no_cert_sign, root,
            roots=pins(root))
    # pathLenConstraint 0 on the root: no intermediate CA may sit below it.
    strict_root = ec.issue("Synthetic Root CA", None, key=root.key, path_length=0, serial=0x1002)
    intermediate, leaf = ec.chain()
    refused("chain.ca", "Synthetic Root CA allows 0 intermediate CA certificate.s. below it, the chain has 1",
            leaf, intermediate, strict_root, roots=pins(strict_root))
    # pathLenConstraint 0 on an intermediate with another intermediate below it.
    lower = ec.issue("Lower CA", intermediate, key=ec.key(4))
    lower_leaf = ec.issue("Lower Leaf", lower, key=leaf_key, ca=False)
    refused("chain.ca", "Synthetic Intermediate CA allows 0", lower_leaf, lower, intermediate, root, roots=pins(root))
    relaxed = ec.issue("Synthetic Intermediate CA", root, key=ec.key(1), path_length=1)
    assert walk(lower_leaf, lower, relaxed, root, roots=pins(root), depth=4)


def test_unknown_critical_extensions_are_refused(ec: Pki) -> None:
    root = ec.root
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    intermediate = ec.issue("Synthetic Intermediate CA", root, key=ec.key(1), path_length=0, extra=((odd, True),))
    leaf = ec.issue("Synthetic Leaf", intermediate, key=ec.key(2), ca=False)
    refused("chain.critical_extension", "Synthetic Intermediate CA has critical extension.s. 1.3.6.1.4.1.99999.1",
            leaf, intermediate, root, roots=pins(root))
    assert walk(leaf, intermediate, root, roots=pins(root), understood_extensions={"1.3.6.1.4.1.99999.1"})
    constraints = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None)
    constrained = ec.issue("Synthetic Intermediate CA", root, key=ec.key(1), path_length=0,
                           extra=((constraints, True),))
    refused("chain.critical_extension", "2.5.29.30", leaf, constrained, root, roots=pins(root))
    non_critical = ec.issue("Synthetic Intermediate CA", root, key=ec.key(1), path_length=0, extra=((odd, False),))
    assert walk(leaf, non_critical, root, roots=pins(root))


# -- building: candidates, same names, bounds --------------------------------------------------------

def test_of_several_certificates_with_the_issuer_name_the_signer_is_chosen(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    decoy = ec.issue("Synthetic Intermediate CA", ec.root, key=fresh_key("p256"), path_length=0, serial=0x3001)
    for order in ((decoy, intermediate), (intermediate, decoy)):
        verified = walk(leaf, *order, ec.root, roots=pins(ec.root))
        assert verified.intermediates[0].der == intermediate.der
    # A re-issued intermediate (same name and key): the one valid at the time is chosen.
    expired = ec.issue("Synthetic Intermediate CA", ec.root, key=intermediate.key, path_length=0, serial=0x3002,
                       not_before=NOW - 100 * DAY, not_after=NOW - DAY)
    for order in ((expired, intermediate), (intermediate, expired)):
        assert walk(leaf, *order, ec.root, roots=pins(ec.root)).intermediates[0].der == intermediate.der
    # No candidate with the name signed it.
    refused("chain.signature", "does not verify", leaf, decoy, decoy, ec.root, roots=pins(ec.root))
    forged = ec.issue("Synthetic Leaf", intermediate, key=leaf.key, ca=False, signer=fresh_key("p256"))
    refused("chain.signature", "Synthetic Leaf signature does not verify", forged, decoy, intermediate, ec.root,
            roots=pins(ec.root))


def test_candidates_are_bounded(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    junk = [ec.issue(f"Junk {i}", ec.root, key=ec.key(6), ca=False, serial=0x7000 + i) for i in range(MAX_CANDIDATES)]
    refused("chain.candidates", f"more than {MAX_CANDIDATES} candidate", leaf, intermediate, ec.root, *junk,
            roots=pins(ec.root))
    assert walk(leaf, intermediate, ec.root, *junk[:MAX_CANDIDATES - 2], roots=pins(ec.root))


def test_pinned_roots_are_validated(ec: Pki) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Pin("69D063B4", "ARK-Milan")
    with pytest.raises(ValueError, match="at least one pin"):
        PinnedRoots(())
    intermediate, _ = ec.chain()
    with pytest.raises(ValueError, match="matches no pin"):
        PinnedRoots(pins(ec.root).pins, certificates=(intermediate.parsed,))
    duplicate = PinnedRoots.from_certificates([ec.root.parsed, ec.root.parsed])
    assert len(duplicate.pins) == 1 and duplicate.description == "a configured trust root"


# -- the cache: time-independent results by exact DER, pins first, validity every time -------------

def _count_links(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = real_verify_link

    def counting(cert: Certificate, issuer: Certificate, allowed: object = None) -> SignatureAlgorithm:
        calls.append(cert.subject_cn)
        return real(cert, issuer, allowed)  # type: ignore[arg-type]

    monkeypatch.setattr(chain_module, "verify_link", counting)
    return calls


def test_time_independent_checks_are_cached_by_exact_bytes(ec: Pki, monkeypatch: pytest.MonkeyPatch,
                                                              fresh_path_cache: None) -> None:
    intermediate, leaf = ec.chain()
    calls = _count_links(monkeypatch)
    for _ in range(3):
        walk(leaf, intermediate, ec.root, roots=pins(ec.root))
    assert calls == ["Synthetic Root CA", "Synthetic Intermediate CA", "Synthetic Leaf"]  # once, root first
    refused("chain.validity", "expired at", leaf, intermediate, ec.root, roots=pins(ec.root), at=NOW + 400 * DAY)
    # The profile is part of the key: a path cached under any algorithm is still judged under a narrow one.
    refused("chain.signature_algorithm", "wanted RSASSA-PSS", leaf, intermediate, ec.root, roots=pins(ec.root),
            algorithms={RSA_PSS_SHA384})
    # Another copy of the leaf (other bytes) is verified again.
    before = len(calls)
    other_leaf = ec.issue("Synthetic Leaf", intermediate, key=leaf.key, ca=False, serial=0x4001)
    walk(other_leaf, intermediate, ec.root, roots=pins(ec.root))
    assert calls[before:] == ["Synthetic Root CA", "Synthetic Intermediate CA", "Synthetic Leaf"]


def test_attacker_rooted_chains_are_refused_before_any_signature_or_cache(ec: Pki, monkeypatch: pytest.MonkeyPatch,
                                                                           fresh_path_cache: None) -> None:
    intermediate, leaf = ec.chain()
    walk(leaf, intermediate, ec.root, roots=pins(ec.root))
    cached = chain_module._paths.bytes_used
    calls = _count_links(monkeypatch)
    for slot in range(8, 12):
        impostor = Pki("ecdsa-p256-sha256", slot=slot)
        other_intermediate, other_leaf = impostor.chain()
        refused("chain.root", "has the name of the trusted root", other_leaf, other_intermediate, impostor.root,
                roots=pins(ec.root))
    assert calls == [] and chain_module._paths.bytes_used == cached


def test_path_cache_is_bounded_by_bytes(ec: Pki, fresh_path_cache: None) -> None:
    intermediate, leaf = ec.chain()
    one = chain_module._path_cost((leaf.parsed, intermediate.parsed, ec.root.parsed))
    budget = 3 * one + 200  # ECDSA signatures differ in length by a byte or two
    configure_path_cache(budget)
    for serial in range(8):
        other = ec.issue("Synthetic Leaf", intermediate, key=leaf.key, ca=False, serial=0x4100 + serial)
        walk(other, intermediate, ec.root, roots=pins(ec.root))
    assert len(chain_module._paths) == 3 and chain_module._paths.bytes_used <= budget


# -- hostile bytes: any single-byte change to any certificate fails, with a typed error ---------------

@pytest.fixture(scope="module")
def flip_chains() -> dict[str, tuple[list[bytes], PinnedRoots]]:
    out: dict[str, tuple[list[bytes], PinnedRoots]] = {}
    algorithms: tuple[Algorithm, ...] = ("ecdsa-p256-sha256", "rsa-pss-sha384")
    for algorithm in algorithms:
        pki = Pki(algorithm)
        intermediate, leaf = pki.chain()
        out[algorithm] = ([leaf.der, intermediate.der, pki.root.der], pins(pki.root))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(algorithm=st.sampled_from(["ecdsa-p256-sha256", "rsa-pss-sha384"]), which=st.integers(0, 2),
       position=st.integers(0, 1 << 20), mask=st.integers(1, 255))
def test_a_changed_byte_never_passes_the_walker(flip_chains: dict[str, tuple[list[bytes], PinnedRoots]],
                                                algorithm: str, which: int, position: int, mask: int) -> None:
    ders, roots = flip_chains[algorithm]
    assert walk_chain(parse_certificate(ders[0]), [parse_certificate(d) for d in ders[1:]], roots, NOW)
    changed = bytearray(ders[which])
    changed[position % len(changed)] ^= mask
    ders = [*ders[:which], bytes(changed), *ders[which + 1:]]
    with pytest.raises(EvidenceError):
        certs = [parse_certificate(d) for d in ders]
        walk_chain(certs[0], certs[1:], roots, NOW, depth=3)


# -- the real chains of the three vendors -----------------------------------------------------------

INTEL_ROOT = Pin("44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3", "Intel SGX Root CA")
NVIDIA_DEVICE_ROOT = Pin("102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
                         "NVIDIA Device Identity CA")


def vector(relative: str) -> list[Certificate]:
    path = VECTORS / relative
    if not path.is_file():
        pytest.skip(f"{relative} not found under KBS_VECTORS={VECTORS}")
    return load_certificates(path.read_bytes())


@pytest.mark.parametrize("relative", ["gpu/nvtrust/hopperCertChain.txt",
                                      "gpu/attestation-sdk/unit-tests/sample_attestation_data/gpu/blackwellCertChain.txt"])
def test_nvidia_device_chains_walk_to_the_pinned_root(relative: str) -> None:
    certs = vector(relative)
    roots = PinnedRoots((NVIDIA_DEVICE_ROOT,), description="the pinned NVIDIA device root")
    at = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    verified = walk_chain(certs[0], certs[1:], roots, at, depth=5, algorithms={ECDSA_SHA384})
    assert verified.root.subject_cn == "NVIDIA Device Identity CA" and len(verified.intermediates) == 3
    # NVIDIA drops the device-supplied root: the walk needs only the pin and the root from elsewhere.
    operator_root = vector("gpu/roots/nvidia_device_identity_ca.pem")
    with_file = PinnedRoots((NVIDIA_DEVICE_ROOT,), certificates=tuple(operator_root))
    assert walk_chain(certs[0], certs[1:4], with_file, at, depth=5).root.der == operator_root[0].der
    with pytest.raises(ChainInvalid) as info:
        walk_chain(certs[0], certs[1:], PinnedRoots((INTEL_ROOT,)), at)
    assert info.value.check == "chain.root"


@pytest.mark.parametrize("relative", ["tdx/certs/pck_platform_ca_chain.pem", "tdx/certs/tcb_signing_chain_2025.pem"])
def test_intel_chains_walk_to_the_pinned_root(relative: str) -> None:
    certs = vector(relative)
    roots = PinnedRoots((INTEL_ROOT,), description="the pinned Intel SGX Root CA")
    verified = walk_chain(certs[0], certs[1:], roots, NOW, depth=2, algorithms={ECDSA_SHA256})
    assert verified.pin == INTEL_ROOT
    with pytest.raises(ChainInvalid) as info:
        walk_chain(certs[0], certs[1:], roots, dt.datetime(2050, 1, 1, tzinfo=dt.UTC))
    assert info.value.check == "chain.validity"


def test_intel_test_root_with_the_real_name_is_refused() -> None:
    """Intel's test PKI reuses the name 'Intel SGX Root CA': only the fingerprint tells them apart."""
    fake = Pki("ecdsa-p256-sha256", root_cn="Intel SGX Root CA", slot=5)
    intermediate = fake.issue("Intel SGX PCK Platform CA", fake.root, key=fake.key(1), path_length=0)
    with pytest.raises(ChainInvalid, match="has the name of the trusted root 'Intel SGX Root CA'") as info:
        walk_chain(intermediate.parsed, [fake.root.parsed], PinnedRoots((INTEL_ROOT,)), NOW)
    assert info.value.check == "chain.root"


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_amd_ask_walks_to_the_pinned_ark(product: str) -> None:
    ask, ark = vector(f"snp/chains/{product.lower()}_vcek_cert_chain.pem")
    roots = PinnedRoots((Pin(PINNED_ARKS[product], f"ARK-{product}"),))
    verified = walk_chain(ask, [ark], roots, NOW, depth=2, algorithms=AMD_SIGNATURE_ALGORITHMS)
    assert verified.root.fingerprint == PINNED_ARKS[product]


def test_real_certificates_round_trip_through_pyca() -> None:
    """The walker's notion of the root matches pyca's bytes (the pins are over exact DER)."""
    certs = vector("tdx/certs/pck_platform_ca_chain.pem")
    root = x509.load_der_x509_certificate(certs[1].der)
    assert root.fingerprint(hashes.SHA256()).hex() == INTEL_ROOT.fingerprint
    assert root.public_bytes(Encoding.DER) == certs[1].der
