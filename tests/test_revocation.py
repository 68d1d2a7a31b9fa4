"""CRLs and OCSP responses over synthetic PKIs of every algorithm, each check broken on its own, and
the real Intel CRLs and NVIDIA OCSP responses (when the shared vectors are present)."""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbs.errors import ChainInvalid, EvidenceError, MalformedEvidence
from kbs.trust import revocation
from kbs.trust.revocation import (
    CRL_CACHE_BYTES,
    MAX_CRL_SIZE,
    MAX_OCSP_SIZE,
    CertificateRevoked,
    OcspResult,
    cert_id_of,
    check_crl,
    check_ocsp,
    configure_crl_cache,
    load_ocsp_response,
    parse_crl,
    response_cert_ids,
    verify_ocsp_response,
)
from kbs.trust.signature import ECDSA_SHA384, RSA_PSS_SHA384, verify_signature
from kbs.trust.x509 import Certificate, load_certificates, parse_certificate
from tests import der as dertools
from tests.pki_synth import (
    ALGORITHMS,
    DAY,
    NOW,
    Algorithm,
    Node,
    Pki,
    fresh_key,
    key_kind,
    key_usage,
    resign_crl,
    resign_ocsp,
)

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors"))
HOUR = dt.timedelta(hours=1)
GOOD, REVOKED, UNKNOWN = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN


@pytest.fixture(scope="module", params=ALGORITHMS)
def pki(request: pytest.FixtureRequest) -> Pki:
    return Pki(request.param)


@pytest.fixture(scope="module")
def ec() -> Pki:
    return Pki("ecdsa-p384-sha384")


def labelled(info: pytest.ExceptionInfo[Exception], check: str) -> None:
    assert getattr(info.value, "check", None) == check, str(info.value)


def crl_refused(check: str, match: str, crl: bytes, issuer: Node, cert: Node, at: dt.datetime = NOW,
                **kwargs: object) -> None:
    with pytest.raises(EvidenceError, match=match) as info:
        check_crl(crl, issuer.parsed, [cert.parsed], at, **kwargs)  # type: ignore[arg-type]
    labelled(info, check)


def ocsp_refused(check: str, match: str, response: bytes, cert: Node, issuer: Node, at: dt.datetime = NOW,
                 **kwargs: object) -> EvidenceError:
    with pytest.raises(EvidenceError, match=match) as info:
        check_ocsp(response, cert.parsed, issuer.parsed, at, **kwargs)  # type: ignore[arg-type]
    labelled(info, check)
    return info.value


# -- CRLs ---------------------------------------------------------------------------------------

def test_crl_of_each_algorithm_passes_and_revokes(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    crl = check_crl(Pki.crl(intermediate, (0x4001, 0x4002)), intermediate.parsed, [leaf.parsed], NOW)
    assert crl.issuer_cn == "Synthetic Intermediate CA" and crl.next_update == NOW + 7 * DAY
    with pytest.raises(CertificateRevoked, match=r"Synthetic Leaf serial 0x4000 is revoked by the Synthetic "
                       r"Intermediate CA CRL since .* \(keyCompromise\)") as info:
        check_crl(Pki.crl(intermediate, (0x4001, 0x4000)), intermediate.parsed, [leaf.parsed], NOW)
    labelled(info, "crl.revoked")
    assert info.value.revocation_time == NOW - 2 * DAY and info.value.reason == "keyCompromise"
    # A root's CRL covers the intermediates it issued.
    check_crl(Pki.crl(pki.root), pki.root.parsed, [intermediate.parsed], NOW)
    crl_refused("crl.revoked", "Synthetic Intermediate CA serial 0x3000 is revoked", Pki.crl(pki.root, (0x3000,)),
                pki.root, intermediate)


def test_stale_or_early_crl_is_refused(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    stale = Pki.crl(intermediate, this_update=NOW - 3 * DAY, next_update=NOW - HOUR)
    crl_refused("crl.validity", "CRL expired at .* fetch a fresh one", stale, intermediate, leaf)
    crl_refused("crl.validity", "CRL is not valid before", Pki.crl(intermediate, this_update=NOW + HOUR),
                intermediate, leaf)


def test_crl_signed_by_another_key_is_refused(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    forged = Pki.crl(intermediate, signer=fresh_key(key_kind(pki.algorithm)))
    crl_refused("crl.signature", "CRL signature does not verify with Synthetic Intermediate CA's key", forged,
                intermediate, leaf)


def test_crl_validity_window_bounds(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    crl = Pki.crl(intermediate, this_update=NOW - DAY, next_update=NOW + DAY)
    check_crl(crl, intermediate.parsed, [leaf.parsed], NOW - DAY)  # thisUpdate <= at
    check_crl(crl, intermediate.parsed, [leaf.parsed], NOW + DAY - dt.timedelta(seconds=1))
    crl_refused("crl.validity", "CRL expired at", crl, intermediate, leaf, at=NOW + DAY)  # at < nextUpdate
    no_next = resign_crl(crl, intermediate.key, intermediate.algorithm, drop_next_update=True)
    assert x509.load_der_x509_crl(no_next).next_update_utc is None
    crl_refused("crl.validity", "has no nextUpdate", no_next, intermediate, leaf)
    check_crl(no_next, intermediate.parsed, [leaf.parsed], NOW, max_age=2 * DAY)
    crl_refused("crl.validity", "more than the maximum age of 1:00:00", no_next, intermediate, leaf, max_age=HOUR)
    crl_refused("crl.validity", "maximum age", crl, intermediate, leaf, max_age=HOUR)


def test_crl_issuer_must_be_the_certificates_issuer(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    crl_refused("crl.issuer", "CRL is issued by 'Synthetic Root CA', wanted 'Synthetic Intermediate CA'",
                Pki.crl(ec.root), intermediate, leaf)
    crl_refused("crl.issuer", "Synthetic Leaf was issued by 'Synthetic Intermediate CA', not by the CRL's issuer",
                Pki.crl(ec.root), ec.root, leaf)
    crl_refused("crl.signature", "does not verify", Pki.crl(ec.root, issuer_name=intermediate.cert.subject),
                intermediate, leaf)
    no_crl_sign = ec.issue("Synthetic Intermediate CA", ec.root, key=intermediate.key, path_length=0,
                           key_usage=key_usage(key_cert_sign=True))
    crl_refused("crl.issuer", "keyUsage lacks cRLSign", Pki.crl(intermediate), no_crl_sign, leaf)


def _swap_outer_algorithm(der: bytes, other: bytes) -> bytes:
    tbs, _, signature = dertools.split(dertools.contents(der))
    return dertools.tlv(0x30, tbs + dertools.split(dertools.contents(other))[1] + signature)


def test_crl_algorithm_checks() -> None:
    pss256, pss384 = Pki("rsa-pss-sha256"), Pki("rsa-pss-sha384", slot=1)
    intermediate, leaf = pss256.chain()
    crl = Pki.crl(intermediate)
    crl_refused("crl.signature_algorithm", r"wanted RSASSA-PSS \(SHA-384", crl, intermediate, leaf,
                algorithms={RSA_PSS_SHA384})
    swapped = _swap_outer_algorithm(crl, Pki.crl(pss384.chain()[0]))
    crl_refused("crl.signature_algorithm", "signed copy of the signature algorithm differs", swapped,
                intermediate, leaf)
    ec_pki = Pki("ecdsa-p256-sha256")
    ec_intermediate, ec_leaf = ec_pki.chain()
    sha256 = bytes.fromhex("06082a8648ce3d040302")
    ec_crl = Pki.crl(ec_intermediate)
    assert ec_crl.count(sha256) == 2
    ecdsa_sha224 = sha256[:-1] + b"\x01"  # 1.2.840.10045.4.3.1, same length
    crl_refused("crl.signature_algorithm", "ecdsa-with-SHA224, which is not accepted",
                ec_crl.replace(sha256, ecdsa_sha224), ec_intermediate, ec_leaf)


def test_crl_scope_must_cover_the_certificate(ec: Pki) -> None:
    intermediate, leaf = ec.chain()

    def idp(**kwargs: object) -> tuple[tuple[x509.ExtensionType, bool], ...]:
        fields: dict[str, object] = {"full_name": None, "relative_name": None, "only_contains_user_certs": False,
                                     "only_contains_ca_certs": False, "only_some_reasons": None,
                                     "indirect_crl": False, "only_contains_attribute_certs": False}
        fields.update(kwargs)
        return ((x509.IssuingDistributionPoint(**fields), True),)  # type: ignore[arg-type]

    crl_refused("crl.scope", "is a delta CRL", Pki.crl(intermediate, extensions=((x509.DeltaCRLIndicator(1), True),)),
                intermediate, leaf)
    crl_refused("crl.scope", "covers end-entity certificates only, Synthetic Intermediate CA is a CA",
                Pki.crl(ec.root, extensions=idp(only_contains_user_certs=True)), ec.root, intermediate)
    crl_refused("crl.scope", "covers CA certificates only",
                Pki.crl(intermediate, extensions=idp(only_contains_ca_certs=True)), intermediate, leaf)
    check_crl(Pki.crl(intermediate, extensions=idp(only_contains_user_certs=True)), intermediate.parsed,
              [leaf.parsed], NOW)
    crl_refused("crl.scope", "covers only part of its scope",
                Pki.crl(intermediate, extensions=idp(indirect_crl=True)), intermediate, leaf)
    uri = "http://crl.example/intermediate.crl"
    scoped = Pki.crl(intermediate, extensions=idp(full_name=[x509.UniformResourceIdentifier(uri)]))
    crl_refused("crl.scope", f"is the CRL of {uri}, which is not a distribution point of Synthetic Leaf", scoped,
                intermediate, leaf)
    points = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(uri)], None, None,
                                                                None)])
    pointed = ec.issue("Synthetic Leaf", intermediate, key=leaf.key, ca=False, extra=((points, False),))
    check_crl(scoped, intermediate.parsed, [pointed.parsed], NOW)
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"), b"\x05\x00")
    crl_refused("crl.scope", "critical extension 1.3.6.1.4.1.99999.2", Pki.crl(intermediate, extensions=((odd, True),)),
                intermediate, leaf)
    check_crl(Pki.crl(intermediate, extensions=((odd, False),)), intermediate.parsed, [leaf.parsed], NOW)


def test_crl_bytes_are_bounded_and_pem_is_accepted(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    crl = Pki.crl(intermediate)
    pem = x509.load_der_x509_crl(crl).public_bytes(Encoding.PEM)
    assert check_crl(pem, intermediate.parsed, [leaf.parsed], NOW).der == crl
    for garbage in (b"", b"\x30\x03\x02\x01\x00", crl[:-1], crl + b"\x00", b"-----BEGIN X509 CRL-----\n!!\n"
                    b"-----END X509 CRL-----\n"):
        with pytest.raises(MalformedEvidence) as info:
            parse_crl(garbage)
        labelled(info, "crl.der")
    with pytest.raises(MalformedEvidence, match="more than the") as info:
        parse_crl(b"\x30\x84" + bytes(MAX_CRL_SIZE + 10))
    labelled(info, "crl.der")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 1 << 16), mask=st.integers(1, 255))
def test_a_changed_byte_never_passes_the_crl_check(ec: Pki, position: int, mask: int) -> None:
    intermediate, leaf = ec.chain()
    crl = bytearray(Pki.crl(intermediate, this_update=NOW - DAY))
    crl[position % len(crl)] ^= mask
    with pytest.raises(EvidenceError):
        check_crl(bytes(crl), intermediate.parsed, [leaf.parsed], NOW)


# -- OCSP ---------------------------------------------------------------------------------------

def test_ocsp_good_from_the_issuer_and_from_a_delegated_responder(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    result = check_ocsp(Pki.ocsp(leaf, intermediate), leaf.parsed, intermediate.parsed, NOW)
    assert result == OcspResult(status="good", serial=0x4000, this_update=NOW - HOUR, next_update=NOW + DAY,
                                produced_at=result.produced_at, responder="Synthetic Intermediate CA",
                                delegated=False)
    responder = pki.responder(intermediate)
    delegated = check_ocsp(Pki.ocsp(leaf, intermediate, responder=responder), leaf.parsed, intermediate.parsed, NOW)
    assert delegated.delegated and delegated.responder == "Synthetic OCSP Responder"


def test_ocsp_revoked_and_unknown(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    revoked = Pki.ocsp(leaf, intermediate, REVOKED, reason=x509.ReasonFlags.key_compromise)
    error = ocsp_refused("ocsp.revoked", r"Synthetic Leaf serial 0x4000 is revoked since .* \(keyCompromise\), says "
                         "OCSP responder 'Synthetic Intermediate CA'", revoked, leaf, intermediate)
    assert isinstance(error, CertificateRevoked)
    assert error.revocation_time == NOW - 3 * DAY and error.reason == "keyCompromise"
    result = verify_ocsp_response(revoked, leaf.parsed, intermediate.parsed, NOW)
    assert result.status == "revoked" and result.revocation_reason == "keyCompromise"
    hold = Pki.ocsp(leaf, intermediate, REVOKED, reason=x509.ReasonFlags.certificate_hold)
    assert verify_ocsp_response(hold, leaf.parsed, intermediate.parsed, NOW).revocation_reason == "certificateHold"
    ocsp_refused("ocsp.unknown", "does not know Synthetic Leaf", Pki.ocsp(leaf, intermediate, UNKNOWN), leaf,
                 intermediate)
    assert verify_ocsp_response(Pki.ocsp(leaf, intermediate, UNKNOWN), leaf.parsed, intermediate.parsed,
                                NOW).status == "unknown"


def test_ocsp_for_another_certificate(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    other = pki.issue("Other Leaf", intermediate, key=leaf.key, ca=False, serial=0x4001)
    ocsp_refused("ocsp.cert_id", "is about serial 0x4001, not about Synthetic Leaf serial 0x4000",
                 Pki.ocsp(other, intermediate), leaf, intermediate)
    # The same serial under another issuer key (CertID issuer key hash differs), signed by the real issuer.
    decoy = pki.issue("Synthetic Intermediate CA", pki.root, key=fresh_key(key_kind(pki.algorithm)), serial=0x3001)
    twin = pki.issue("Synthetic Leaf", decoy, key=leaf.key, ca=False)
    answer = Pki.ocsp(twin, decoy, responder=intermediate, include=())
    ocsp_refused("ocsp.cert_id", "not about Synthetic Leaf serial 0x4000", answer, leaf, intermediate)


def test_stale_or_early_ocsp_is_refused(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    ocsp_refused("ocsp.stale", "expired at .*nextUpdate", Pki.ocsp(leaf, intermediate, this_update=NOW - DAY,
                                                                   next_update=NOW - HOUR), leaf, intermediate)
    ocsp_refused("ocsp.not_yet_valid", "not valid before", Pki.ocsp(leaf, intermediate, this_update=NOW + HOUR),
                 leaf, intermediate)


def test_ocsp_freshness_bounds_and_max_age(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    answer = Pki.ocsp(leaf, intermediate, this_update=NOW - HOUR, next_update=NOW + HOUR)
    check_ocsp(answer, leaf.parsed, intermediate.parsed, NOW - HOUR)
    ocsp_refused("ocsp.stale", "expired at", answer, leaf, intermediate, at=NOW + HOUR)
    no_next = Pki.ocsp(leaf, intermediate, next_update=None)
    ocsp_refused("ocsp.stale", "has no nextUpdate", no_next, leaf, intermediate)
    assert check_ocsp(no_next, leaf.parsed, intermediate.parsed, NOW, max_age=2 * HOUR).next_update is None
    ocsp_refused("ocsp.stale", "more than the maximum age of 0:30:00", no_next, leaf, intermediate,
                 max_age=dt.timedelta(minutes=30))
    ocsp_refused("ocsp.stale", "maximum age", answer, leaf, intermediate, max_age=dt.timedelta(minutes=30))


def test_unauthorised_responders_are_refused(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    no_eku = pki.responder(intermediate, eku=False)
    ocsp_refused("ocsp.responder", "lacks the id-kp-OCSPSigning extended key usage",
                 Pki.ocsp(leaf, intermediate, responder=no_eku), leaf, intermediate)
    by_root = pki.responder(pki.root)
    ocsp_refused("ocsp.responder", "was issued by 'Synthetic Root CA', not by 'Synthetic Intermediate CA'",
                 Pki.ocsp(leaf, intermediate, responder=by_root), leaf, intermediate)
    decoy = Node(intermediate.cn, fresh_key(key_kind(pki.algorithm)), intermediate.cert, intermediate.algorithm)
    by_decoy = pki.responder(decoy)  # the intermediate's name, another key
    ocsp_refused("ocsp.responder", "is not signed by 'Synthetic Intermediate CA'",
                 Pki.ocsp(leaf, intermediate, responder=by_decoy), leaf, intermediate)
    expired = pki.responder(intermediate, not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    ocsp_refused("ocsp.responder", "is valid from .* to .*, verification time is",
                 Pki.ocsp(leaf, intermediate, responder=expired), leaf, intermediate)
    cannot_sign = pki.responder(intermediate, key_usage=key_usage(key_encipherment=True))
    ocsp_refused("ocsp.responder", "keyUsage lacks digitalSignature",
                 Pki.ocsp(leaf, intermediate, responder=cannot_sign), leaf, intermediate)
    good = pki.responder(intermediate)
    ocsp_refused("ocsp.responder", "neither 'Synthetic Intermediate CA' nor a responder certificate",
                 Pki.ocsp(leaf, intermediate, responder=good, include=()), leaf, intermediate)


def _as_ocsp_signs(algorithm: Algorithm) -> Algorithm:
    """cryptography's OCSP builder signs RSA with PKCS#1 v1.5 only."""
    return cast(Algorithm, algorithm.replace("rsa-pss", "rsa-pkcs1"))


def test_ocsp_signature_and_algorithm(pki: Pki) -> None:
    intermediate, leaf = pki.chain()
    signs = _as_ocsp_signs(pki.algorithm)
    other_key = fresh_key(key_kind(pki.algorithm))
    answer = Pki.ocsp(leaf, intermediate)
    assert check_ocsp(resign_ocsp(answer, intermediate.key, signs), leaf.parsed,
                      intermediate.parsed, NOW)  # the surgery itself keeps a good response good
    ocsp_refused("ocsp.signature", "OCSP response about Synthetic Leaf signature does not verify with Synthetic "
                 "Intermediate CA's key", resign_ocsp(answer, other_key, signs), leaf, intermediate)
    responder = pki.responder(intermediate)
    delegated = Pki.ocsp(leaf, intermediate, responder=responder)
    ocsp_refused("ocsp.signature", "does not verify with Synthetic OCSP Responder's key",
                 resign_ocsp(delegated, other_key, signs), leaf, intermediate)
    ocsp_refused("ocsp.signature_algorithm", "OCSP response is signed with .*, wanted RSASSA-PSS",
                 Pki.ocsp(leaf, intermediate), leaf, intermediate, algorithms={RSA_PSS_SHA384})


@pytest.mark.parametrize("cert_id_hash", [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()],
                         ids=lambda h: h.name)
def test_cert_id_under_each_hash_and_responder_by_name(ec: Pki, cert_id_hash: hashes.HashAlgorithm) -> None:
    intermediate, leaf = ec.chain()
    responder = ec.responder(intermediate)
    for answer in (Pki.ocsp(leaf, intermediate, cert_id_hash=cert_id_hash),
                   Pki.ocsp(leaf, intermediate, cert_id_hash=cert_id_hash, by_name=True),
                   Pki.ocsp(leaf, intermediate, cert_id_hash=cert_id_hash, responder=responder, by_name=True)):
        assert check_ocsp(answer, leaf.parsed, intermediate.parsed, NOW, algorithms={ECDSA_SHA384}).status == "good"


def test_ocsp_nonce(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    nonce = bytes(range(32))
    assert check_ocsp(Pki.ocsp(leaf, intermediate, nonce=nonce), leaf.parsed, intermediate.parsed, NOW, nonce=nonce)
    ocsp_refused("ocsp.nonce", f"nonce is {bytes(32).hex()}, wanted {nonce.hex()}",
                 Pki.ocsp(leaf, intermediate, nonce=bytes(32)), leaf, intermediate, nonce=nonce)
    ocsp_refused("ocsp.nonce", "carries no nonce", Pki.ocsp(leaf, intermediate), leaf, intermediate, nonce=nonce)


def test_unsuccessful_or_malformed_ocsp(ec: Pki) -> None:
    intermediate, leaf = ec.chain()
    try_later = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    ocsp_refused("ocsp.status", "answered TRY_LATER, not SUCCESSFUL", try_later.public_bytes(Encoding.DER), leaf,
                 intermediate)
    good = Pki.ocsp(leaf, intermediate)
    for garbage in (b"", b"\x30\x03\x0a\x01\x00", good[:-1], good + b"\x00"):
        with pytest.raises(MalformedEvidence) as info:
            check_ocsp(garbage, leaf.parsed, intermediate.parsed, NOW)
        labelled(info, "ocsp.der")
    with pytest.raises(MalformedEvidence, match="more than the") as info:
        check_ocsp(bytes(MAX_OCSP_SIZE + 1), leaf.parsed, intermediate.parsed, NOW)
    labelled(info, "ocsp.der")


@pytest.fixture(scope="module")
def delegated_answer(ec: Pki) -> tuple[bytes, Certificate, Certificate]:
    intermediate, leaf = ec.chain()
    return Pki.ocsp(leaf, intermediate, responder=ec.responder(intermediate)), leaf.parsed, intermediate.parsed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 1 << 16), mask=st.integers(1, 255))
def test_a_changed_byte_never_passes_the_ocsp_check(delegated_answer: tuple[bytes, Certificate, Certificate],
                                                    position: int, mask: int) -> None:
    answer, leaf, intermediate = delegated_answer
    assert check_ocsp(answer, leaf, intermediate, NOW).delegated
    changed = bytearray(answer)
    changed[position % len(changed)] ^= mask
    with pytest.raises(EvidenceError):
        check_ocsp(bytes(changed), leaf, intermediate, NOW)


# -- real collateral: Intel's CRLs, NVIDIA's OCSP responses ----------------------------------------

def vector_bytes(relative: str) -> bytes:
    path = VECTORS / relative
    if not path.is_file():
        pytest.skip(f"{relative} not found under KBS_VECTORS={VECTORS}")
    return path.read_bytes()


def _certificate_named_by(issuer: Certificate, serial: int) -> Certificate:
    """A certificate carrying `issuer`'s name and `serial` (its signature is irrelevant to a CRL check)."""
    pki = Pki("ecdsa-p256-sha256", slot=6)
    name = x509.load_der_x509_certificate(issuer.der).subject
    return pki.issue("Some PCK", pki.root, ca=False, issuer_name=name, serial=serial).parsed


def test_intel_crls_verify_with_the_real_issuers() -> None:
    platform_ca, root = load_certificates(vector_bytes("tdx/certs/pck_platform_ca_chain.pem"))
    pck_crl = vector_bytes("tdx/go-tdx-guest/pckcrl_platform_2023-06-08.der")
    root_crl = vector_bytes("tdx/go-tdx-guest/rootcacrl_2023-04-03.der")
    at = dt.datetime(2023, 6, 20, tzinfo=dt.UTC)
    listed = next(iter(x509.load_der_x509_crl(pck_crl))).serial_number
    check_crl(pck_crl, platform_ca, [_certificate_named_by(platform_ca, listed + 1)], at)
    with pytest.raises(CertificateRevoked, match="keyCompromise") as info:
        check_crl(pck_crl, platform_ca, [_certificate_named_by(platform_ca, listed)], at)
    labelled(info, "crl.revoked")
    check_crl(root_crl, root, [platform_ca], at)
    with pytest.raises(ChainInvalid, match="CRL expired at 2023-07-08") as stale:
        check_crl(pck_crl, platform_ca, [], dt.datetime(2023, 7, 9, tzinfo=dt.UTC))
    labelled(stale, "crl.validity")
    with pytest.raises(ChainInvalid) as wrong:
        check_crl(pck_crl, root, [platform_ca], at)
    labelled(wrong, "crl.issuer")


NVIDIA_OCSP = "gpu/go-nvattest-tools/ocsp/test_gpu_certificate_{}_base64encoded_ocsp_response.dat"
NVIDIA_AT = dt.datetime(2025, 8, 21, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("level", "index", "responder"), [
    ("l4", 1, "NVIDIA OCSP Responder L3 GH100 ICA1 Identity"),
    ("l3", 2, "NVIDIA OCSP Responder L2 GH100 Identity"),
    ("l2", 3, "NVIDIA OCSP Responder L1-A 02"),
])
def test_nvidia_ocsp_responses_verify(level: str, index: int, responder: str) -> None:
    chain = load_certificates(vector_bytes("gpu/nvtrust/hopperCertChain.txt"))
    answer = base64.b64decode(vector_bytes(NVIDIA_OCSP.format(level)))
    cert, issuer = chain[index], chain[index + 1]
    result = check_ocsp(answer, cert, issuer, NVIDIA_AT, algorithms={ECDSA_SHA384})
    assert result.status == "good" and result.delegated and result.responder == responder
    assert result.next_update == result.this_update + DAY
    with pytest.raises(ChainInvalid) as stale:
        check_ocsp(answer, cert, issuer, NVIDIA_AT + DAY)
    labelled(stale, "ocsp.stale")
    with pytest.raises(ChainInvalid) as nonce:
        check_ocsp(answer, cert, issuer, NVIDIA_AT, nonce=bytes(32))
    labelled(nonce, "ocsp.nonce")


def test_nvidia_ocsp_response_for_another_level_is_refused() -> None:
    chain = load_certificates(vector_bytes("gpu/nvtrust/hopperCertChain.txt"))
    brom_answer = base64.b64decode(vector_bytes(NVIDIA_OCSP.format("l4")))
    with pytest.raises(ChainInvalid) as info:  # the BROM's answer, asked about the ICA
        check_ocsp(brom_answer, chain[2], chain[3], NVIDIA_AT)
    labelled(info, "ocsp.responder")
    other_brom = parse_certificate(load_certificates(vector_bytes(
        "gpu/attestation-sdk/unit-tests/hopperCertChain.txt"))[1].der)
    with pytest.raises(ChainInvalid) as other:  # another GPU's BROM under the same ICA
        check_ocsp(brom_answer, other_brom, chain[2], NVIDIA_AT)
    labelled(other, "ocsp.cert_id")


# -- CertIDs and the signature cache, shared with NVIDIA's OCSP store -------------------------------------

@pytest.mark.parametrize("name", ["sha1", "sha256", "sha384", "sha512"])
def test_cert_ids_name_what_a_response_answers_for(ec: Pki, name: str) -> None:
    intermediate, leaf = ec.chain()
    algorithm = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                 "sha512": hashes.SHA512()}[name]
    response = load_ocsp_response(Pki.ocsp(leaf, intermediate, cert_id_hash=algorithm))
    wanted = cert_id_of(leaf.parsed, intermediate.parsed, name)
    assert response_cert_ids(response) == [wanted]
    assert wanted.serial == leaf.parsed.serial and wanted.hash == name and str(wanted).startswith(f"{name}:")
    assert cert_id_of(leaf.parsed, leaf.parsed, name) != wanted  # the issuer's name and key are what is hashed
    with pytest.raises(ValueError, match="md5"):
        cert_id_of(leaf.parsed, intermediate.parsed, "md5")
    with pytest.raises(MalformedEvidence) as info:
        load_ocsp_response(b"\x30\x03\x0a\x01\x00" + b"junk")
    labelled(info, "ocsp.der")


def test_ocsp_signatures_are_verified_once(ec: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    configure_crl_cache(CRL_CACHE_BYTES)
    intermediate, leaf = ec.chain()
    responder = ec.responder(intermediate)
    answer = Pki.ocsp(leaf, intermediate, responder=responder, nonce=b"once")
    calls: list[str] = []
    real = verify_signature

    def counting(*args: object, **kwargs: object) -> None:
        calls.append(str(kwargs.get("what")))
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(revocation, "verify_signature", counting)
    for _ in range(3):
        assert check_ocsp(answer, leaf.parsed, intermediate.parsed, NOW).delegated
    assert len(calls) == 2  # the responder's certificate and the response, each once
    forged = resign_ocsp(answer, fresh_key("p384"), "ecdsa-p384-sha384")
    for _ in range(2):  # a failure is never remembered
        ocsp_refused("ocsp.signature", "does not verify", forged, leaf, intermediate)
    assert len(calls) == 4
    configure_crl_cache(0)
    check_ocsp(answer, leaf.parsed, intermediate.parsed, NOW)
    assert len(calls) == 6
    configure_crl_cache(CRL_CACHE_BYTES)
