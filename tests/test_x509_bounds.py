"""Cheap checks first: certificate size, extension count and certificate count are bounded before
pyasn1 decodes anything, and the caches of parsed certificates and verified chains are bounded by bytes."""

from __future__ import annotations

import base64
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509 as pyca_x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyasn1.codec.der import decoder as pyasn1_decoder

from kbs.errors import MalformedEvidence
from kbs.trust import x509 as kx509
from kbs.trust.amd import certs as amd
from kbs.trust.amd.certs import CertBundle, verify_chain
from kbs.trust.x509 import (
    MAX_CERTIFICATE_SIZE,
    MAX_CERTIFICATES,
    MAX_EXTENSIONS,
    configure_certificate_cache,
    load_certificates,
    parse_certificate,
)
from tests import der as dertools
from tests.amd_synth import (
    EMPTY_EXTENSION,
    NOW,
    SyntheticAmd,
    distinct_empty_extensions,
    with_extra_extensions,
)

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors"))


@pytest.fixture
def no_pyasn1(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """pyasn1's DER decoder fails the test if called; yields nothing to count (it must stay unused)."""
    calls: list[int] = []

    def forbidden(*args: object, **kwargs: object) -> object:
        calls.append(1)
        raise AssertionError("pyasn1 decoded a certificate that cheap checks should have refused")

    monkeypatch.setattr(pyasn1_decoder, "decode", forbidden)
    yield calls
    assert calls == []


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    configure_certificate_cache(kx509.CERTIFICATE_CACHE_BYTES)
    amd.configure_chain_cache(amd.CHAIN_CACHE_BYTES)
    yield
    configure_certificate_cache(kx509.CERTIFICATE_CACHE_BYTES)
    amd.configure_chain_cache(amd.CHAIN_CACHE_BYTES)


def pem(der: bytes) -> bytes:
    text = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


# -- the attack of the review: 3,500 empty extensions ----------------------------------------

@pytest.mark.parametrize("extensions", [EMPTY_EXTENSION * 3500, distinct_empty_extensions(3500)],
                         ids=["same-oid", "distinct-oids"])
def test_3500_empty_extensions_refused_without_pyasn1(pki: SyntheticAmd, no_pyasn1: list[int],
                                                      extensions: bytes) -> None:
    hostile = with_extra_extensions(pki.issue_vek().der, 1, extensions)
    started = time.perf_counter()
    for _ in range(16):
        with pytest.raises(MalformedEvidence) as info:
            parse_certificate(hostile)
        assert info.value.check == "certificate.size"
        assert f"certificate is {len(hostile)} bytes, more than the {MAX_CERTIFICATE_SIZE} allowed" in str(info.value)
    assert time.perf_counter() - started < 0.5  # pyasn1 took 2.5 s for these sixteen


def test_too_many_extensions_within_the_size_refused_without_pyasn1(pki: SyntheticAmd,
                                                                      no_pyasn1: list[int]) -> None:
    base = pki.issue_vek().der  # 7 extensions
    hostile = with_extra_extensions(base, 1000)
    assert len(hostile) < MAX_CERTIFICATE_SIZE
    with pytest.raises(MalformedEvidence, match=f"certificate has 1007 extensions, more than the "
                                                f"{MAX_EXTENSIONS} allowed") as info:
        parse_certificate(hostile)
    assert info.value.check == "certificate.extensions"
    with pytest.raises(MalformedEvidence) as info:
        parse_certificate(with_extra_extensions(base, 1, distinct_empty_extensions(MAX_EXTENSIONS - 7 + 1)))
    assert info.value.check == "certificate.extensions"


def test_exactly_the_most_extensions_still_parse(pki: SyntheticAmd) -> None:
    der = with_extra_extensions(pki.issue_vek().der, 1, distinct_empty_extensions(MAX_EXTENSIONS - 7))
    cert = parse_certificate(der)
    assert len(cert.extensions) == MAX_EXTENSIONS


def test_oversized_certificate_refused_without_pyasn1(pki: SyntheticAmd, no_pyasn1: list[int]) -> None:
    big_value = dertools.tlv(0x30, dertools.tlv(0x06, b"\x2a\x03\x07")
                             + dertools.tlv(0x04, b"\x00" * MAX_CERTIFICATE_SIZE))
    hostile = with_extra_extensions(pki.issue_vek().der, 1, big_value)
    for data in (hostile, pem(hostile)):
        with pytest.raises(MalformedEvidence, match=f"more than the {MAX_CERTIFICATE_SIZE} allowed") as info:
            load_certificates(data)
        assert info.value.check == "certificate.size"
    with pytest.raises(MalformedEvidence) as info:
        parse_certificate(b"\x30\x84" + (1 << 30).to_bytes(4, "big") + bytes(MAX_CERTIFICATE_SIZE))
    assert info.value.check == "certificate.size"


def test_malformed_outer_structure_refused_without_pyasn1(pki: SyntheticAmd, no_pyasn1: list[int]) -> None:
    der = pki.issue_vek().der
    for data in (b"", b"\x30", b"\x30\x00", b"\x31" + der[1:], der + b"\x00", der[:-1], b"\x30\x80" + der[2:],
                 b"\x30\x03\x1f\x81\x00"):
        with pytest.raises(MalformedEvidence) as info:
            parse_certificate(data)
        assert info.value.check == "certificate.der", data[:8]


def test_certificate_count_is_bounded_before_decoding(pki: SyntheticAmd, no_pyasn1: list[int]) -> None:
    many = pem(pki.ark_der) * (MAX_CERTIFICATES + 1)
    with pytest.raises(MalformedEvidence, match=f"more than {MAX_CERTIFICATES} PEM certificates") as info:
        load_certificates(many)
    assert info.value.check == "certificate.count"


def test_the_most_certificates_still_load(pki: SyntheticAmd) -> None:
    assert len(load_certificates(pem(pki.ark_der) * MAX_CERTIFICATES)) == MAX_CERTIFICATES


# -- real certificates are unaffected --------------------------------------------------------

def vector_certificate_files() -> list[Path]:
    if not VECTORS.is_dir():
        pytest.skip(f"vectors not found at {VECTORS} (set KBS_VECTORS)")
    return sorted(p for p in VECTORS.rglob("*") if p.suffix in (".der", ".pem") and p.is_file())


def test_every_vector_certificate_still_parses() -> None:
    checked = 0
    for path in vector_certificate_files():
        data = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # serial 0 in AMD VCEKs
            try:
                expected = (pyca_x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE" in data
                            else [pyca_x509.load_der_x509_certificate(data)])
            except ValueError:
                continue  # a CRL, a key, not a certificate
        certs = load_certificates(data)
        assert [c.der for c in certs] == [e.public_bytes(Encoding.DER) for e in expected], path
        assert all(len(c.extensions) == len(e.extensions) for c, e in zip(certs, expected, strict=True)), path
        checked += len(certs)
    assert checked >= 30


# -- caches are bounded by bytes -------------------------------------------------------------

def test_parsed_certificate_cache_is_bounded_by_bytes(pki: SyntheticAmd, fresh_caches: None) -> None:
    budget = 64 * 1024
    configure_certificate_cache(budget)
    ders = [pki.issue_vek().der for _ in range(20)]
    for one in ders:
        parse_certificate(one)
    cache = kx509._cache
    assert 0 < len(cache) < 20 and cache.bytes_used <= budget
    assert parse_certificate(ders[-1]) is parse_certificate(ders[-1])  # recent ones are still shared


def test_verified_chain_cache_is_bounded_by_bytes(pki: SyntheticAmd, fresh_caches: None) -> None:
    roots = [parse_certificate(pki.ark_der)]
    budget = 3 * amd._chain_cost(verify_chain(parse_certificate(pki.issue_vek().der),
                                              CertBundle.of([parse_certificate(pki.ask_der)]), NOW, roots))
    amd.configure_chain_cache(budget)
    for _ in range(8):
        vek = parse_certificate(pki.issue_vek().der)
        verify_chain(vek, CertBundle.of([parse_certificate(pki.ask_der)]), NOW, roots)
    assert len(amd._chains) == 3 and amd._chains.bytes_used <= budget
