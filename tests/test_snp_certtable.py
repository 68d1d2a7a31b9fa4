"""The extended-report certificate table, the chain cache and the claims document."""

from __future__ import annotations

import threading
import uuid

import pytest

from kbs import native
from kbs.errors import MalformedEvidence
from kbs.evidence.snp.certtable import (
    GUID_ARK,
    GUID_ASK,
    GUID_CRL,
    GUID_VCEK,
    build_cert_table,
    parse_cert_table,
)
from kbs.evidence.snp.verify import verify_snp
from kbs.trust import chain
from kbs.trust.signature import Profile, SignatureAlgorithm, verify_link
from kbs.trust.x509 import Certificate
from tests.amd_synth import NOW, SyntheticAmd
from tests.conftest import SnpVector, load_snp_vector
from tests.test_snp_verify import _at, certs_of

EXTRA = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6").bytes


def test_guid_bytes_are_rfc4122_order() -> None:
    assert GUID_VCEK.hex() == "63da758de6644564adc5f4b93be8accd"


def test_table_roundtrip_with_crl_and_unknown_guid(synth_milan: SyntheticAmd) -> None:
    vek = synth_milan.issue_vek()
    crl = synth_milan.crl()
    extra = b"\x08\0\0\0\x11\0\xa0\0"
    table = build_cert_table([(GUID_VCEK, vek.der), (GUID_ASK, synth_milan.ask_der),
                              (GUID_ARK, synth_milan.ark_der), (GUID_CRL, crl), (EXTRA, extra)])
    parsed = parse_cert_table(table)
    assert [c.subject_cn for c in parsed.certificates] == ["SEV-VCEK", "SEV-Milan", "ARK-Milan"]
    assert parsed.crl == crl
    assert parsed.extras == {str(uuid.UUID(bytes=EXTRA)): extra}


def test_empty_table_is_empty() -> None:
    parsed = parse_cert_table(b"")
    assert parsed.certificates == () and parsed.crl is None and parsed.extras == {}


@pytest.mark.parametrize(("table", "match"), [
    (bytes(23), "no all-zero terminating entry"),
    (GUID_VCEK + (24).to_bytes(4, "little") + (1).to_bytes(4, "little") + bytes(24), "into the table header"),
    (GUID_VCEK + (48).to_bytes(4, "little") + (100).to_bytes(4, "little") + bytes(24), "past the end"),
])
def test_malformed_tables(table: bytes, match: str) -> None:
    with pytest.raises(MalformedEvidence, match=match):
        parse_cert_table(table)


def test_repeated_guid_and_bad_certificate(synth_milan: SyntheticAmd) -> None:
    with pytest.raises(MalformedEvidence, match="repeats GUID"):
        parse_cert_table(build_cert_table([(GUID_ARK, synth_milan.ark_der), (GUID_ARK, synth_milan.ark_der)]))
    with pytest.raises(MalformedEvidence, match="certificate table VCEK entry") as info:
        parse_cert_table(build_cert_table([(GUID_VCEK, b"\x30\x03\x02\x01\x00")]))
    assert info.value.check == "certtable.certificate"


def test_chain_checks_are_cached_by_exact_bytes(synth_milan: SyntheticAmd,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.amd_synth import build_report, sign_report
    from tests.test_snp_synthetic import CHIP, _certs, _roots

    vek = synth_milan.issue_vek(hwid=CHIP)
    assert vek.private_key is not None
    report = sign_report(build_report(chip_id=CHIP), vek.private_key)
    calls: list[str] = []
    real = verify_link

    def counting(c: Certificate, s: Certificate, a: Profile | None = None) -> SignatureAlgorithm:
        calls.append(c.subject_cn)
        return real(c, s, a)
    monkeypatch.setattr(chain, "verify_link", counting)
    for _ in range(3):
        verify_snp(report, _certs(synth_milan, vek), NOW, trust_roots=_roots(synth_milan))
    assert calls == ["ARK-Milan", "SEV-Milan", "SEV-VCEK"]  # once, not three times
    # Time-dependent checks still run on every call, cached or not.
    with pytest.raises(Exception, match="expired"):
        verify_snp(report, _certs(synth_milan, vek), NOW.replace(year=2040), trust_roots=_roots(synth_milan))


TRUSTEE_SNP_CLAIMS = {
    "policy_abi_major": int, "policy_abi_minor": int, "policy_smt_allowed": bool, "policy_migrate_ma": bool,
    "policy_debug_allowed": bool, "policy_single_socket": bool, "reported_tcb_bootloader": int,
    "reported_tcb_tee": int, "reported_tcb_snp": int, "reported_tcb_microcode": int,
    "platform_tsme_enabled": bool, "platform_smt_enabled": bool, "measurement": str, "report_data": str,
    "init_data": str,
}


def test_claims_carry_trustee_names_and_decoded_fields(snp_vector: SnpVector) -> None:
    claims = verify_snp(snp_vector.report, certs_of(snp_vector), _at(snp_vector),
                        allowed_vmpls=snp_vector.vmpls).claims()
    for name, kind in TRUSTEE_SNP_CLAIMS.items():
        assert isinstance(claims[name], kind), name
    exp = snp_vector.expected
    assert claims["policy"]["raw"] == exp["policy"]
    assert claims["platform_info"]["raw"] == exp["platform_info"]
    assert claims["tcb"]["reported"]["raw"] == f"{int(str(exp['reported_tcb']), 16):#018x}"
    assert claims["init_data"] == exp["host_data"] and claims["report_data"] == exp["report_data"]
    assert ("reported_tcb_fmc" in claims) == (claims["product"] == "Turin")
    assert claims["policy_debug_allowed"] == bool(int(str(exp["policy"]), 16) >> 19 & 1)


def test_verification_is_correct_from_many_threads() -> None:
    """The C call releases the GIL; concurrent calls must still give exact answers."""
    v = load_snp_vector("genoa-v5-oak")
    point = certs_of(v)[0].public_key_bits
    bad = bytearray(v.report)
    bad[0x90] ^= 1
    results: list[tuple[int, int]] = []

    def work() -> None:
        for _ in range(50):
            good_status = native.snp_verify_status(v.report, point)
            results.append((good_status, native.snp_verify_status(bytes(bad), point)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200
    assert all(ok == native.lib.KBS_OK and no == native.lib.KBS_ERR_SIG_INVALID for ok, no in results)
