"""Parse step: bytes -> fields, and every format check rejecting exactly its own defect."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from kbs import native
from kbs.errors import MalformedEvidence
from kbs.evidence.snp.report import PlatformInfo, TcbVersion, family_from_cpuid, parse_report
from tests.amd_synth import build_report
from tests.conftest import SnpVector


def test_decoded_fields_equal_expected(snp_vector: SnpVector) -> None:
    exp = snp_vector.expected
    report = parse_report(snp_vector.report)
    r = report.raw
    assert hashlib.sha384(snp_vector.report[:0x2A0]).hexdigest() == exp["sha384_signed_region_0x0_0x2a0"]
    assert native.sha384(snp_vector.report[:0x2A0]).hex() == exp["sha384_signed_region_0x0_0x2a0"]
    ints = {"version": r.version, "guest_svn": r.guest_svn, "policy": r.policy, "vmpl": r.vmpl,
            "sig_algo": r.signature_algo, "platform_info": r.platform_info, "signer_info": r.signer_info,
            "current_tcb": r.current_tcb, "reported_tcb": r.reported_tcb, "committed_tcb": r.committed_tcb,
            "launch_tcb": r.launch_tcb, "launch_mit_vector": r.launch_mit_vector,
            "current_mit_vector": r.current_mit_vector}
    for name, value in ints.items():
        assert value == int(str(exp[name]), 16), name
    for name in ("family_id", "image_id", "report_data", "measurement", "host_data", "id_key_digest",
                 "author_key_digest", "report_id", "report_id_ma", "chip_id"):
        assert getattr(r, name).hex() == exp[name], name
    assert [r.current_build, r.current_minor, r.current_major] == exp["current_build_minor_major"]
    assert [r.committed_build, r.committed_minor, r.committed_major] == exp["committed_build_minor_major"]
    cpuid = exp["cpuid_fam_mod_step"]
    assert (None if r.version < 3 else [r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step]) == cpuid
    # TCB decoded with the layout of the vector's product family.
    family = "Turin" if "fmc" in exp["reported_tcb_parts"] else "Milan"  # type: ignore[operator]
    assert report.tcbs(family)["reported"].parts() == exp["reported_tcb_parts"]


def test_signature_scalars_are_big_endian_reversals(snp_vector: SnpVector) -> None:
    r = parse_report(snp_vector.report).raw
    assert r.signature_r == snp_vector.report[0x2A0:0x2D0][::-1]
    assert r.signature_s == snp_vector.report[0x2E8:0x318][::-1]


def _set(offset: int, value: bytes) -> Callable[[bytearray], None]:
    def mutate(b: bytearray) -> None:
        b[offset:offset + len(value)] = value
    return mutate


def _or(offset: int, mask: int) -> Callable[[bytearray], None]:
    def mutate(b: bytearray) -> None:
        b[offset] |= mask
    return mutate


def _and(offset: int, mask: int) -> Callable[[bytearray], None]:
    def mutate(b: bytearray) -> None:
        b[offset] &= mask
    return mutate


# (defect, mutation, expected status) — each breaks exactly one format check.
FORMAT_DEFECTS = [
    ("version 1", _set(0, (1).to_bytes(4, "little")), "KBS_ERR_SNP_VERSION"),
    ("version 6", _set(0, (6).to_bytes(4, "little")), "KBS_ERR_SNP_VERSION"),
    ("signature algo 2", _set(0x34, (2).to_bytes(4, "little")), "KBS_ERR_SNP_SIG_ALGO"),
    ("policy bit 17 clear", _and(0x0A, 0xFD), "KBS_ERR_SNP_POLICY_BIT17"),
    ("policy bit 26 set", _or(0x0B, 0x04), "KBS_ERR_SNP_POLICY_RESERVED"),
    ("policy bit 63 set", _or(0x0F, 0x80), "KBS_ERR_SNP_POLICY_RESERVED"),
    ("signer info bit 5", _or(0x48, 0x20), "KBS_ERR_SNP_SIGNER_INFO_RESERVED"),
    ("signer info bit 31", _or(0x4B, 0x80), "KBS_ERR_SNP_SIGNER_INFO_RESERVED"),
    ("signing key 2", _set(0x48, bytes([2 << 2])), "KBS_ERR_SNP_SIGNING_KEY_RESERVED"),
    ("signing key 6", _set(0x48, bytes([6 << 2])), "KBS_ERR_SNP_SIGNING_KEY_RESERVED"),
    ("byte 0x04C", _or(0x4C, 1), "KBS_ERR_SNP_MBZ_04C"),
    ("byte 0x04F", _or(0x4F, 0x80), "KBS_ERR_SNP_MBZ_04C"),
    ("byte 0x18B", _or(0x18B, 1), "KBS_ERR_SNP_MBZ_188"),
    ("byte 0x19F", _or(0x19F, 1), "KBS_ERR_SNP_MBZ_188"),
    ("byte 0x1EB", _or(0x1EB, 1), "KBS_ERR_SNP_MBZ_1EB"),
    ("byte 0x1EF", _or(0x1EF, 1), "KBS_ERR_SNP_MBZ_1EF"),
    ("byte 0x208", _or(0x208, 1), "KBS_ERR_SNP_MBZ_208"),
    ("byte 0x29F", _or(0x29F, 1), "KBS_ERR_SNP_MBZ_208"),
    ("r byte 48", _or(0x2A0 + 48, 1), "KBS_ERR_SNP_SIG_R_HIGH"),
    ("r byte 71", _or(0x2A0 + 71, 1), "KBS_ERR_SNP_SIG_R_HIGH"),
    ("s byte 48", _or(0x2E8 + 48, 1), "KBS_ERR_SNP_SIG_S_HIGH"),
    ("s byte 71", _or(0x2E8 + 71, 1), "KBS_ERR_SNP_SIG_S_HIGH"),
    ("byte 0x330", _or(0x330, 1), "KBS_ERR_SNP_MBZ_330"),
    ("byte 0x49F", _or(0x49F, 1), "KBS_ERR_SNP_MBZ_330"),
]


def _status_of(data: bytes) -> str:
    out = native.ffi.new("struct kbs_snp_report *")
    return native.status_name(native.lib.kbs_snp_parse(data, len(data), out))


@pytest.mark.parametrize(("defect", "mutate", "status"), FORMAT_DEFECTS, ids=[d[0] for d in FORMAT_DEFECTS])
def test_format_defect_rejected_on_real_reports(snp_vector: SnpVector, defect: str,
                                                mutate: Callable[[bytearray], None], status: str) -> None:
    data = bytearray(snp_vector.report)
    assert _status_of(bytes(data)) == "KBS_OK"
    mutate(data)
    assert _status_of(bytes(data)) == status, defect
    with pytest.raises(MalformedEvidence) as info:
        parse_report(bytes(data))
    assert info.value.check.startswith("report.")


@pytest.mark.parametrize(("defect", "mutate", "status"), FORMAT_DEFECTS, ids=[d[0] for d in FORMAT_DEFECTS])
def test_format_defect_rejected_on_synthetic_report(defect: str, mutate: Callable[[bytearray], None],
                                                    status: str) -> None:
    data = build_report()
    assert _status_of(bytes(data)) == "KBS_OK"
    mutate(data)
    assert _status_of(bytes(data)) == status, defect


def test_v2_reserves_cpuid_bytes() -> None:
    data = build_report(version=2, cpuid=None)
    assert _status_of(bytes(data)) == "KBS_OK"
    data[0x188] = 0x19
    assert _status_of(bytes(data)) == "KBS_ERR_SNP_MBZ_188"


def test_mitigation_vectors_reserved_before_v5_and_decoded_from_v5() -> None:
    for version in (2, 3, 4):
        data = build_report(version=version, launch_mit_vector=1)
        assert _status_of(bytes(data)) == "KBS_ERR_SNP_MBZ_1F8", version
    data = build_report(version=5, launch_mit_vector=1, current_mit_vector=3)
    raw = parse_report(bytes(data)).raw
    assert (raw.launch_mit_vector, raw.current_mit_vector) == (1, 3)


def test_v4_uses_v3_layout() -> None:
    raw = parse_report(bytes(build_report(version=4, cpuid=(0x19, 0x11, 1)))).raw
    assert (raw.version, raw.cpuid_fam_id, raw.cpuid_mod_id) == (4, 0x19, 0x11)


@pytest.mark.parametrize("length", [0, 1, 1183, 1185, 2 * 1184])
def test_wrong_length_rejected(length: int) -> None:
    data = (bytes(build_report()) * 2)[:length]
    with pytest.raises(MalformedEvidence, match="exactly 1184 bytes") as info:
        parse_report(data)
    assert info.value.check == "report.length"


def test_signing_key_none_parses_but_never_verifies() -> None:
    data = bytes(build_report(signer_info=7 << 2))
    assert parse_report(data).signer.signing_key == "NONE"
    point = b"\x04" + bytes(96)
    with pytest.raises(Exception, match="not signed"):
        native.snp_verify(data, point)


def test_tcb_layouts_differ_by_family() -> None:
    milan = TcbVersion.decode(0x7308000000000003, "Milan")
    assert (milan.bl, milan.tee, milan.snp, milan.ucode, milan.fmc) == (3, 0, 8, 115, None)
    turin = TcbVersion.decode(0x4700000002000100, "Turin")
    assert (turin.fmc, turin.bl, turin.tee, turin.snp, turin.ucode) == (0, 1, 0, 2, 71)
    assert TcbVersion.decode(0x4700000002000100, "Milan").parts() != turin.parts()


@pytest.mark.parametrize(("family", "model", "product"), [
    (0x19, 0x01, "Milan"), (0x19, 0x11, "Genoa"), (0x19, 0xA0, "Genoa"), (0x19, 0xAF, "Genoa"),
    (0x1A, 0x02, "Turin"), (0x1A, 0x11, "Turin"), (0x1A, 0x50, "Venice"), (0x19, 0x20, None),
    (0x17, 0x31, None), (0x1A, 0x12, None)])
def test_family_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert family_from_cpuid(family, model) == product


def test_platform_info_bit6_is_reported_not_rejected() -> None:
    info = PlatformInfo.decode(0x67)
    assert info.smt_enabled and info.tsme_enabled and info.ecc_enabled and info.alias_check_complete
    assert info.reserved_bits == 0x40 and not info.tio_enabled
    assert PlatformInfo.decode(0x80).tio_enabled and PlatformInfo.decode(0x80).reserved_bits == 0
