"""A synthetic AMD PKI signs reports: each chain and appraisal check broken on its own.

These tests need no shared vectors, so the suite checks the verifier everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kbs.errors import ChainInvalid, CollateralUnavailable, EvidenceError
from kbs.evidence.snp.report import parse_report
from kbs.evidence.snp.verify import appraise, verify_snp
from kbs.trust.amd.certs import CertBundle, verify_chain
from kbs.trust.x509 import Certificate, parse_certificate
from tests.amd_synth import NOW, SyntheticAmd, Vek, build_report, sign_report, tcb_value

CHIP = bytes(range(1, 65))
TURIN_CHIP = bytes(range(1, 9)) + bytes(56)


def _certs(synth: SyntheticAmd, vek: Vek) -> list[Certificate]:
    return [parse_certificate(d) for d in (vek.der, synth.ask_der, synth.ark_der)]


def _roots(synth: SyntheticAmd) -> list[Certificate]:
    return [parse_certificate(synth.ark_der)]


def _milan_report(vek: Vek, **fields: Any) -> bytes:
    assert vek.private_key is not None
    fields.setdefault("chip_id", CHIP)
    return sign_report(build_report(**fields), vek.private_key)


def _expect(synth: SyntheticAmd, report: bytes, vek: Vek, check: str, match: str,
            extra: list[Certificate] | None = None) -> None:
    with pytest.raises(EvidenceError, match=match) as info:
        verify_snp(report, [*_certs(synth, vek), *(extra or [])], NOW, trust_roots=_roots(synth))
    assert info.value.check == check


def test_synthetic_report_verifies_with_its_root_and_not_without(synth_milan: SyntheticAmd) -> None:
    vek = synth_milan.issue_vek(hwid=CHIP)
    report = _milan_report(vek, measurement=b"\xaa" * 48, report_data=b"nonce")
    result = verify_snp(report, _certs(synth_milan, vek), NOW, trust_roots=_roots(synth_milan))
    claims = result.claims()
    assert claims["measurement"] == "aa" * 48 and claims["product"] == "Milan"
    assert claims["report_data"].startswith(b"nonce".hex())
    assert claims["reported_tcb_bootloader"] == 2 and claims["reported_tcb_microcode"] == 68
    with pytest.raises(ChainInvalid, match="not the pinned AMD root") as info:
        verify_snp(report, _certs(synth_milan, vek), NOW)
    assert info.value.check == "chain.root"


def test_turin_layout_and_eight_byte_hwid(synth_turin: SyntheticAmd) -> None:
    vek = synth_turin.issue_vek(hwid=TURIN_CHIP[:8])
    assert vek.private_key is not None
    tcb = tcb_value({"fmc": 0, "bl": 1, "tee": 0, "snp": 2, "ucode": 71}, True)
    fields = {"version": 5, "chip_id": TURIN_CHIP, "reported_tcb": tcb, "current_tcb": tcb,
              "committed_tcb": tcb, "launch_tcb": tcb}
    report = sign_report(build_report(cpuid=(0x1A, 0x02, 1), **fields), vek.private_key)
    result = verify_snp(report, _certs(synth_turin, vek), NOW, trust_roots=_roots(synth_turin))
    assert result.claims()["reported_tcb_fmc"] == 0 and result.tcbs["reported"].ucode == 71
    # CHIP_ID bytes after the 8-byte Turin hwID must be zero.
    bad_chip = TURIN_CHIP[:8] + b"\x01" + bytes(55)
    report = sign_report(build_report(cpuid=(0x1A, 0x02, 1), **{**fields, "chip_id": bad_chip}),
                         vek.private_key)
    _expect(synth_turin, report, vek, "vek.chip_id", "does not match the VCEK hwID")
    # A Turin VEK without fmcSPL cannot vouch for a Turin TCB.
    no_fmc = synth_turin.issue_vek(vek.private_key.public_key(), hwid=TURIN_CHIP[:8],
                                   tcb={"bl": 1, "tee": 0, "snp": 2, "ucode": 71})
    report = sign_report(build_report(cpuid=(0x1A, 0x02, 1), **fields), vek.private_key)
    _expect(synth_turin, report, no_fmc, "vek.tcb", "lacks fmcSPL")


def test_masked_chip_id_skips_hwid_binding(synth_milan: SyntheticAmd) -> None:
    vek = synth_milan.issue_vek(hwid=CHIP)
    report = _milan_report(vek, chip_id=bytes(64))
    assert verify_snp(report, _certs(synth_milan, vek), NOW, trust_roots=_roots(synth_milan))


def test_vlek_report_needs_vlek_and_vcek_report_needs_vcek(synth_milan: SyntheticAmd,
                                                           synth_milan_vlek: SyntheticAmd) -> None:
    vlek = synth_milan_vlek.issue_vek()
    assert vlek.private_key is not None
    report = sign_report(build_report(signer_info=1 << 2, chip_id=bytes(64)), vlek.private_key)
    result = verify_snp(report, _certs(synth_milan_vlek, vlek), NOW, trust_roots=_roots(synth_milan_vlek))
    assert result.chain.kind == "VLEK"
    with pytest.raises(CollateralUnavailable, match="no VCEK certificate"):
        verify_snp(_milan_report(vlek), _certs(synth_milan_vlek, vlek), NOW,
                   trust_roots=_roots(synth_milan_vlek))
    # check_signer on its own: a VLEK-signed report appraised against a VCEK chain.
    vcek = synth_milan.issue_vek(vlek.private_key.public_key(), hwid=CHIP)
    chain = verify_chain(parse_certificate(vcek.der), CertBundle.of(_certs(synth_milan, vcek)), NOW,
                         _roots(synth_milan))
    with pytest.raises(ChainInvalid, match="signed by the VLEK, the certificate supplied is a VCEK") as i:
        appraise(parse_report(report), chain)
    assert i.value.check == "report.signer"


@pytest.mark.parametrize(("cpuid", "match"), [((0x19, 0x11, 1), "CPUID says Genoa"),
                                              ((0x17, 0x31, 0), "not a supported SEV-SNP product")])
def test_cpuid_product_must_match_chain(synth_milan: SyntheticAmd, cpuid: tuple[int, int, int],
                                        match: str) -> None:
    vek = synth_milan.issue_vek(hwid=CHIP)
    assert vek.private_key is not None
    report = sign_report(build_report(cpuid=cpuid, chip_id=CHIP), vek.private_key)
    _expect(synth_milan, report, vek, "report.product", match)


def test_v2_report_takes_product_from_chain(synth_genoa: SyntheticAmd) -> None:
    vek = synth_genoa.issue_vek(hwid=CHIP)
    report = _milan_report(vek, version=2, cpuid=None)
    result = verify_snp(report, _certs(synth_genoa, vek), NOW, trust_roots=_roots(synth_genoa))
    assert result.product == "Genoa" and result.claims()["cpuid"] is None


OTHER_RSA = rsa.generate_private_key(65537, 2048)

VEK_DEFECTS: list[tuple[str, dict[str, object], str, str]] = [
    ("signed by another key", {"signer": OTHER_RSA}, "chain.signature", "signature does not verify"),
    ("PKCS#1 v1.5 signature", {"rsa_padding": padding.PKCS1v15()}, "chain.signature_algorithm",
     "wanted RSASSA-PSS"),
    ("PSS salt 32", {"rsa_padding": padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=32)},
     "chain.signature_algorithm", "salt 48"),
    ("productName Genoa", {"product_name": "Genoa"}, "vek.product", "productName is 'Genoa'"),
    ("no blSPL", {"omit": ("3.1",)}, "vek.extensions", "lacks the blSPL"),
    ("no productName", {"omit": ("2",)}, "vek.extensions", "lacks the productName"),
    ("no hwID", {"omit": ("4",)}, "vek.extensions", "VCEK must carry hwID"),
    ("cspID on a VCEK", {"csp_id": "CN=x"}, "vek.extensions", "VCEK must carry hwID and no cspID"),
    ("10-byte hwID", {"hwid": bytes(10)}, "vek.extensions", "hwID is 10 bytes"),
    ("not yet valid", {"not_before": NOW + dt.timedelta(days=1)}, "chain.validity", "not valid before"),
    ("expired", {"not_after": NOW - dt.timedelta(days=1), "not_before": NOW - dt.timedelta(days=9)},
     "chain.validity", "expired at"),
    ("wrong CN", {"cn": "VCEK"}, "chain.names", "not an AMD SEV certificate"),
    ("CN of an intermediate", {"cn": "SEV-ABC"}, "collateral.vek", "no VCEK certificate was supplied"),
]


@pytest.mark.parametrize(("defect", "kwargs", "check", "match"), VEK_DEFECTS, ids=[d[0] for d in VEK_DEFECTS])
def test_vek_defect_rejected(synth_milan: SyntheticAmd, defect: str, kwargs: dict[str, Any],
                             check: str, match: str) -> None:
    good = synth_milan.issue_vek(hwid=CHIP)
    assert good.private_key is not None
    kwargs = {"hwid": CHIP, **kwargs}
    bad = synth_milan.issue_vek(good.private_key.public_key(), **kwargs)
    _expect(synth_milan, _milan_report(good), bad, check, match)


def test_p256_vek_key_rejected(synth_milan: SyntheticAmd) -> None:
    good = synth_milan.issue_vek(hwid=CHIP)
    p256 = synth_milan.issue_vek(ec.generate_private_key(ec.SECP256R1()).public_key(), hwid=CHIP)
    _expect(synth_milan, _milan_report(good), p256, "vek.key", "not an uncompressed ECDSA P-384 key")


def test_two_different_vceks_are_ambiguous(synth_milan: SyntheticAmd) -> None:
    one, two = synth_milan.issue_vek(hwid=CHIP), synth_milan.issue_vek(hwid=CHIP)
    _expect(synth_milan, _milan_report(one), one, "chain.ambiguous", "2 different VCEK",
            extra=[parse_certificate(two.der)])


def test_intermediate_from_other_product_rejected(synth_milan: SyntheticAmd,
                                                  synth_genoa: SyntheticAmd) -> None:
    vek = synth_milan.issue_vek(hwid=CHIP)
    certs = [parse_certificate(d) for d in (vek.der, synth_milan.ask_der, synth_genoa.ark_der)]
    with pytest.raises(CollateralUnavailable, match="root 'ARK-Milan' was not supplied"):
        verify_snp(_milan_report(vek), certs, NOW, trust_roots=_roots(synth_genoa))


def test_crl_checks(synth_milan: SyntheticAmd) -> None:
    vek = synth_milan.issue_vek(hwid=CHIP)
    report = _milan_report(vek)
    certs, roots = _certs(synth_milan, vek), _roots(synth_milan)
    ask_serial = certs[1].serial
    assert verify_snp(report, certs, NOW, roots, crl=synth_milan.crl((ask_serial + 5,)))
    cases = [
        (synth_milan.crl((ask_serial,)), "crl.revoked", "is revoked"),
        (synth_milan.crl(next_=NOW - dt.timedelta(hours=1), last=NOW - dt.timedelta(days=3)),
         "crl.validity", "CRL expired"),
        (synth_milan.crl(last=NOW + dt.timedelta(hours=1)), "crl.validity", "not valid before"),
        (synth_milan.crl(signer=OTHER_RSA), "crl.signature", "does not verify"),
        (b"\x30\x03\x02\x01\x00", "crl.der", "does not parse"),
    ]
    for crl, check, match in cases:
        with pytest.raises(EvidenceError, match=match) as info:
            verify_snp(report, certs, NOW, roots, crl=crl)
        assert info.value.check == check
