"""Verify and appraise steps on the real reports: outcomes, and each tampering rejected for its reason."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key

from kbs import native
from kbs.errors import ChainInvalid, EvidenceError, MalformedEvidence, SignatureInvalid
from kbs.evidence.snp.report import parse_report
from kbs.evidence.snp.verify import verify_snp
from kbs.trust.amd.certs import PINNED_ARKS
from kbs.trust.x509 import Certificate, load_certificates, parse_certificate
from tests.amd_synth import NOW, SyntheticAmd
from tests.conftest import SnpVector, load_snp_vector

VLEK_VECTOR = "milan-v3-vlek-aws-trustee"


def certs_of(v: SnpVector) -> list[Certificate]:
    certs = [c for f in v.vek_files for c in load_certificates(f.read_bytes())]
    return certs + load_certificates(v.chain_file.read_bytes())


def vek_of(v: SnpVector) -> Certificate:
    return next(c for c in certs_of(v) if c.subject_cn in ("SEV-VCEK", "SEV-VLEK"))


def test_real_report_outcome_matches_sources(snp_vector: SnpVector) -> None:
    """Every real report passes at the research time, except the VLEK that has expired."""
    if snp_vector.name == VLEK_VECTOR:
        with pytest.raises(ChainInvalid, match="SEV-VLEK expired at 2025-12-10") as info:
            verify_snp(snp_vector.report, certs_of(snp_vector), NOW, allowed_vmpls=snp_vector.vmpls)
        assert info.value.check == "chain.validity"
        return
    result = verify_snp(snp_vector.report, certs_of(snp_vector), NOW, allowed_vmpls=snp_vector.vmpls)
    expected = snp_vector.expected["verify_results"]
    assert isinstance(expected, dict)
    assert f"ARK-{result.product}" == expected["ark"]
    assert result.chain.ask.subject_cn == expected["ica"]
    assert result.tcbs["reported"].parts() == snp_vector.expected["reported_tcb_parts"]
    claims = result.claims()
    assert claims["measurement"] == snp_vector.expected["measurement"]
    assert claims["chip_id"] == snp_vector.expected["chip_id"]
    assert result.chain.ark.fingerprint == PINNED_ARKS[result.product]


def test_report_from_vmpl_above_zero_refused_by_default() -> None:
    """The real AWS report was requested at VMPL 1: refused unless the verifier allows VMPL 1."""
    v = load_snp_vector("milan-v3-vlek-aws-trustee")
    at = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert v.vmpls == {1}
    with pytest.raises(EvidenceError, match="VMPL 1; allowed: 0") as caught:
        verify_snp(v.report, certs_of(v), at)
    assert caught.value.check == "report.vmpl"
    claims = verify_snp(v.report, certs_of(v), at, allowed_vmpls=frozenset({0, 1})).claims()
    assert claims["vmpl"] == 1 and claims["allowed_vmpls"] == [0, 1]


def test_expired_vlek_passes_inside_its_validity() -> None:
    v = load_snp_vector(VLEK_VECTOR)
    at = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    result = verify_snp(v.report, certs_of(v), at, allowed_vmpls=v.vmpls)
    assert result.chain.kind == "VLEK" and result.product == "Milan"
    assert result.claims()["vek"]["csp_id"] == "CN=cc-us-east-2.amazonaws.com"
    with pytest.raises(ChainInvalid, match="not valid before"):
        verify_snp(v.report, certs_of(v), dt.datetime(2024, 1, 1, tzinfo=dt.UTC), allowed_vmpls=v.vmpls)


def _at(v: SnpVector) -> dt.datetime:
    return dt.datetime(2025, 6, 1, tzinfo=dt.UTC) if v.name == VLEK_VECTOR else NOW


def _point(v: SnpVector) -> bytes:
    return vek_of(v).public_key_bits


def test_every_bit_of_signed_region(snp_vector: SnpVector) -> None:
    """Each of the 5,376 single-bit flips in bytes 0x000-0x29F is rejected (format check or signature)."""
    point = _point(snp_vector)
    assert native.snp_verify_status(snp_vector.report, point) == native.lib.KBS_OK
    for bit in range(0x2A0 * 8):
        data = bytearray(snp_vector.report)
        data[bit // 8] ^= 1 << (bit % 8)
        assert native.snp_verify_status(bytes(data), point) != native.lib.KBS_OK, bit


def test_every_bit_of_r_and_s(snp_vector: SnpVector) -> None:
    point = _point(snp_vector)
    for base in (0x2A0, 0x2E8):
        for bit in range(48 * 8):
            data = bytearray(snp_vector.report)
            data[base + bit // 8] ^= 1 << (bit % 8)
            status = native.snp_verify_status(bytes(data), point)
            assert status in (native.lib.KBS_ERR_SIG_INVALID, native.lib.KBS_ERR_SIG_RANGE), (base, bit)


def test_signature_flip_is_reported_as_signature_failure(snp_vector: SnpVector) -> None:
    data = bytearray(snp_vector.report)
    data[0x090] ^= 0x01  # one measurement bit
    with pytest.raises(SignatureInvalid, match="report signature does not verify") as info:
        verify_snp(bytes(data), certs_of(snp_vector), _at(snp_vector), allowed_vmpls=snp_vector.vmpls)
    assert info.value.check == "report.signature"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_vek_certificate_signature_flip_rejected(snp_vector: SnpVector, where: str) -> None:
    vek = vek_of(snp_vector)
    index = {"first": 0, "middle": len(vek.signature) // 2, "last": len(vek.signature) - 1}[where]
    sig_at = vek.der.rindex(vek.signature)
    bad = bytearray(vek.der)
    bad[sig_at + index] ^= 0x80
    others = [c for c in certs_of(snp_vector) if c.fingerprint != vek.fingerprint]
    with pytest.raises(ChainInvalid, match="signature does not verify") as info:
        verify_snp(snp_vector.report, [parse_certificate(bytes(bad)), *others], _at(snp_vector),
                   allowed_vmpls=snp_vector.vmpls)
    assert info.value.check == "chain.signature"


@pytest.mark.parametrize("length", [1183, 1185, 1184 + 24])
def test_truncated_or_extended_report_rejected(snp_vector: SnpVector, length: int) -> None:
    data = (snp_vector.report + bytes(64))[:length]
    with pytest.raises(MalformedEvidence, match="exactly 1184 bytes"):
        verify_snp(data, certs_of(snp_vector), _at(snp_vector), allowed_vmpls=snp_vector.vmpls)


# --- The real report's own VEK key, re-certified by a synthetic AMD PKI -------------------------

def _product(v: SnpVector) -> str:
    return str(v.expected["verify_results"]["ark"]).removeprefix("ARK-")  # type: ignore[index]


def _recertify(v: SnpVector, synth: SyntheticAmd, **overrides: Any) -> list[Certificate]:
    """The real VEK's public key and extension values, issued by `synth` (overrides change one value)."""
    from kbs.trust.amd.certs import parse_vek_extensions

    real = vek_of(v)
    ext = parse_vek_extensions(real)
    tcb = {"bl": ext.bl, "tee": ext.tee, "snp": ext.snp, "ucode": ext.ucode}
    if ext.fmc is not None:
        tcb["fmc"] = ext.fmc
    tcb.update(overrides.pop("tcb", {}))
    kwargs: dict[str, object] = {"tcb": tcb, "product_name": ext.product_name,
                                 "struct_version": ext.struct_version}
    if ext.hwid is not None:
        kwargs["hwid"] = ext.hwid
    if ext.csp_id is not None:
        kwargs["csp_id"] = ext.csp_id
    kwargs.update(overrides)
    public = load_der_public_key(real.spki_der)
    issued = synth.issue_vek(public, **kwargs)  # type: ignore[arg-type]
    return [parse_certificate(d) for d in (issued.der, synth.ask_der, synth.ark_der)]


@pytest.fixture(scope="module")
def synth_for() -> dict[tuple[str, str], SyntheticAmd]:
    return {}


def _synth(cache: dict[tuple[str, str], SyntheticAmd], v: SnpVector) -> SyntheticAmd:
    kind = "VLEK" if v.name == VLEK_VECTOR else "VCEK"
    key = (_product(v), kind)
    if key not in cache:
        cache[key] = SyntheticAmd(*key)
    return cache[key]


def test_recertified_real_key_verifies_only_under_its_trust_root(
        snp_vector: SnpVector, synth_for: dict[tuple[str, str], SyntheticAmd]) -> None:
    synth = _synth(synth_for, snp_vector)
    certs = _recertify(snp_vector, synth)
    root = [parse_certificate(synth.ark_der)]
    result = verify_snp(snp_vector.report, certs, NOW, trust_roots=root, allowed_vmpls=snp_vector.vmpls)
    assert result.product == _product(snp_vector)
    with pytest.raises(ChainInvalid, match="is not the pinned AMD root") as info:
        verify_snp(snp_vector.report, certs, NOW, allowed_vmpls=snp_vector.vmpls)
    assert info.value.check == "chain.root"
    with pytest.raises(ChainInvalid, match="not a configured trust root"):
        verify_snp(snp_vector.report, certs_of(snp_vector), _at(snp_vector), trust_roots=root,
                   allowed_vmpls=snp_vector.vmpls)


@pytest.mark.parametrize("component", ["bl", "tee", "snp", "ucode", "fmc"])
def test_vek_tcb_mismatch_rejected(snp_vector: SnpVector, synth_for: dict[tuple[str, str], SyntheticAmd],
                                   component: str) -> None:
    reported = parse_report(snp_vector.report).tcbs(_product(snp_vector))["reported"].parts()
    if component not in reported:
        pytest.skip("fmc exists on Turin only")
    synth = _synth(synth_for, snp_vector)
    certs = _recertify(snp_vector, synth, tcb={component: (reported[component] + 1) % 256})
    wanted = f"{component}SPL is .*reported_tcb has {reported[component]}"
    with pytest.raises(ChainInvalid, match=wanted) as i:
        verify_snp(snp_vector.report, certs, NOW, trust_roots=[certs[2]], allowed_vmpls=snp_vector.vmpls)
    assert i.value.check == "vek.tcb"


def test_vcek_hwid_mismatch_rejected(snp_vector: SnpVector,
                                     synth_for: dict[tuple[str, str], SyntheticAmd]) -> None:
    report = parse_report(snp_vector.report)
    if snp_vector.name == VLEK_VECTOR or report.chip_id_zero:
        pytest.skip("a VLEK (or a masked CHIP_ID) is not bound to a chip")
    synth = _synth(synth_for, snp_vector)
    hwid = bytearray(vek_of(snp_vector).extensions["1.3.6.1.4.1.3704.1.4"])
    hwid[-1] ^= 1
    certs = _recertify(snp_vector, synth, hwid=bytes(hwid))
    with pytest.raises(ChainInvalid, match="does not match the VCEK hwID") as info:
        verify_snp(snp_vector.report, certs, NOW, trust_roots=[certs[2]], allowed_vmpls=snp_vector.vmpls)
    assert info.value.check == "vek.chip_id"


def test_missing_certificates_named(snp_vector: SnpVector) -> None:
    vek = vek_of(snp_vector)
    chain = load_certificates(snp_vector.chain_file.read_bytes())
    with pytest.raises(EvidenceError, match="certificate was supplied"):
        verify_snp(snp_vector.report, chain, _at(snp_vector), allowed_vmpls=snp_vector.vmpls)
    with pytest.raises(EvidenceError, match="intermediate .* was not supplied"):
        verify_snp(snp_vector.report, [vek, chain[1]], _at(snp_vector), allowed_vmpls=snp_vector.vmpls)
    with pytest.raises(EvidenceError, match="root .* was not supplied"):
        verify_snp(snp_vector.report, [vek, chain[0]], _at(snp_vector), allowed_vmpls=snp_vector.vmpls)


def test_cached_key_table_path_agrees_with_cold_path(snp_vector: SnpVector) -> None:
    point = _point(snp_vector)
    cache = native.P384KeyCache(max_tables=4, build_after=2)
    first = native.snp_verify_cached(snp_vector.report, point, cache)  # cold: first sighting
    assert len(cache) == 0
    second = native.snp_verify_cached(snp_vector.report, point, cache)  # builds and uses the table
    assert len(cache) == 1 and first == second == native.snp_verify(snp_vector.report, point)
    for offset in (0x050, 0x090, 0x2A0, 0x2E8):
        data = bytearray(snp_vector.report)
        data[offset] ^= 0x01
        with pytest.raises(SignatureInvalid):
            native.snp_verify_cached(bytes(data), point, cache)


def test_signature_check_without_a_parse_agrees_with_the_parsing_paths(snp_vector: SnpVector) -> None:
    """`snp_check_signature` (what the verifier uses: the report is parsed already) passes and fails exactly
    where `snp_verify` does, with a key table and without one."""
    point = _point(snp_vector)
    cache = native.P384KeyCache(max_tables=4, build_after=1)
    for tables in (None, cache, cache):  # the second run with the cache uses its table
        native.snp_check_signature(snp_vector.report, point, tables)
        for offset in (0x050, 0x090, 0x2A0, 0x2E8):
            data = bytearray(snp_vector.report)
            data[offset] ^= 0x01
            with pytest.raises(SignatureInvalid):
                native.snp_verify(bytes(data), point)
            with pytest.raises(SignatureInvalid):
                native.snp_check_signature(bytes(data), point, tables)
    assert len(cache) == 1
    with pytest.raises(EvidenceError):  # a truncated report: the parse inside the C call refuses it
        native.snp_check_signature(snp_vector.report[:-1], point, cache)
