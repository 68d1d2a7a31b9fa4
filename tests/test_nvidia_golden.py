"""Golden-measurement matching (kbs.trust.nvidia.golden): NVIDIA's real report against its real RIM pair,
NVIDIA's measurement-mismatch sample, and each rule of reference/gpu.md §3.3 broken on its own."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping
from pathlib import Path

import pytest

from kbs.trust.nvidia.golden import FAIL, NOT_CHECKED, SUCCESS, compare
from kbs.trust.nvidia.rim import VerifiedRim, verify_rim
from kbs.trust.nvidia.rim_store import RimStore
from kbs.trust.nvidia.rim_xml import GoldenEntry
from tests.conftest import vector_file
from tests.nvidia_rim_synth import Golden, SyntheticRims

AT = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)  # inside both real signers' windows
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DRIVER = "go-nvattest-tools/rim/NV_GPU_DRIVER_GH100_550.90.07.xml"
VBIOS = "go-nvattest-tools/rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"
SAMPLES = "attestation-sdk/unit-tests/sample_attestation_data/gpu"
NVDEC0_STATUS = 11
DRIVER_VERSION = 3


@dataclasses.dataclass(frozen=True)
class Report:
    blocks: dict[int, bytes]  # SPDM index (1-based) -> measured value
    opaque: dict[int, bytes]  # NVIDIA opaque TLV type -> value


def decode(path: str) -> Report:
    """A hex report: 37-byte request, 8-byte response header, blocks (4-byte header, 3-byte DMTF header,
    value), the responder nonce, OpaqueLength and the opaque TLVs (reference/gpu.md §1)."""
    raw = bytes.fromhex(vector_file("gpu", *path.split("/")).read_text().strip())
    response = raw[37:]
    record_length = int.from_bytes(response[5:8], "little")
    record, blocks, offset = response[8:8 + record_length], {}, 0
    while offset < len(record):
        size = int.from_bytes(record[offset + 2:offset + 4], "little")
        measurement = record[offset + 4:offset + 4 + size]
        blocks[record[offset]] = measurement[3:3 + int.from_bytes(measurement[1:3], "little")]
        offset += 4 + size
    start = 8 + record_length + 32
    opaque = response[start + 2:start + 2 + int.from_bytes(response[start:start + 2], "little")]
    fields, offset = {}, 0
    while offset < len(opaque):
        kind, size = int.from_bytes(opaque[offset:offset + 2], "little"), int.from_bytes(opaque[offset + 2:offset + 4],
                                                                                         "little")
        fields[kind] = opaque[offset + 4:offset + 4 + size]
        offset += 4 + size
    return Report(blocks, fields)


def real_rim(path: str, at: dt.datetime = AT) -> VerifiedRim:
    return verify_rim(vector_file("gpu", *path.split("/")).read_bytes(), at)


def with_entry(rim: VerifiedRim, index: int, **changes: object) -> VerifiedRim:
    entries = tuple(dataclasses.replace(e, **changes) if e.index == index else e for e in rim.entries)  # type: ignore[arg-type]
    return dataclasses.replace(rim, entries=entries)


# -- NVIDIA's vectors ---------------------------------------------------------------------------------

def test_real_report_matches_its_real_rim_pair() -> None:
    report = decode("nvtrust/hopperAttestationReport.txt")
    driver, vbios = real_rim(DRIVER), real_rim(VBIOS)
    assert len(report.blocks) == 64 and report.opaque[NVDEC0_STATUS] == b"\x55"
    # Without the NVDEC rule every one of the 33 active entries matches.
    result = compare(report.blocks, driver, vbios, nvdec0_status=None, driver_version="550.90.07",
                     vbios_version="96.00.9f.00.01")
    assert result.measres == SUCCESS and result.success and len(result.matched) == 33, result.explain()
    assert result.index_no_conflict and result.mismatches == () and result.problems == ()
    assert (result.driver_version_match, result.vbios_version_match) == (True, True)
    # The report says NVDEC is disabled (0x55): index 35 is skipped, as nvat does.
    nvdec = compare(report.blocks, driver, vbios, nvdec0_status=report.opaque[NVDEC0_STATUS])
    assert nvdec.measres == SUCCESS and nvdec.skipped == (35,) and len(nvdec.matched) == 32
    assert (nvdec.driver_version_match, nvdec.vbios_version_match) == (None, None)  # no report versions given


@pytest.mark.parametrize("index", [7, 21, 35, 40, 0, 12])
def test_one_changed_golden_value_is_a_mismatch_at_that_index(index: int) -> None:
    report = decode("nvtrust/hopperAttestationReport.txt")
    driver, vbios = real_rim(DRIVER), real_rim(VBIOS)
    wrong = (hashlib.sha384(b"not it").digest(),)
    if index in {e.index for e in driver.active_entries}:
        driver = with_entry(driver, index, alternatives=wrong)
    else:
        vbios = with_entry(vbios, index, alternatives=wrong)
    result = compare(report.blocks, driver, vbios, nvdec0_status=None)
    assert result.measres == FAIL and [m.index for m in result.mismatches] == [index]
    mismatch = result.mismatches[0]
    assert mismatch.seen == report.blocks[index + 1] and mismatch.wanted == wrong
    assert f"RIM index {index} (SPDM block {index + 1})" in str(mismatch) and wrong[0].hex() in str(mismatch)
    assert report.blocks[index + 1].hex() in result.explain()


def test_nvidias_measurement_mismatch_sample_fails_at_index_9_only() -> None:
    report = decode(f"{SAMPLES}/hopperAttestationReport.txt")
    vbios = real_rim("attestation-sdk/unit-tests/sample_rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_"
                     "measurement_mismatch.xml", dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    result = compare(report.blocks, None, vbios, nvdec0_status=report.opaque.get(NVDEC0_STATUS),
                     vbios_version="96.00.5e.00.01")
    assert result.measres == FAIL
    assert [(m.index, m.source) for m in result.mismatches] == [(9, "vbios")]
    assert len(result.matched) == 11 and result.vbios_version_match is True


def test_versions_are_compared_case_insensitively() -> None:
    report = decode("nvtrust/hopperAttestationReport.txt")
    driver, vbios = real_rim(DRIVER), real_rim(VBIOS)
    reported = report.opaque[DRIVER_VERSION].rstrip(b"\x00").decode()
    result = compare(report.blocks, driver, vbios, nvdec0_status=None, driver_version=reported + "\x00",
                     vbios_version="96.00.9F.00.01")
    assert (result.driver_version_match, result.vbios_version_match) == (True, True)
    other = compare(report.blocks, driver, vbios, nvdec0_status=None, driver_version="550.90.08",
                    vbios_version="96.00.9f.00.02")
    assert (other.driver_version_match, other.vbios_version_match) == (False, False)
    assert other.measres == SUCCESS  # the flags are the verifier's to weigh; measres is about measurements


# -- each rule on synthetic RIMs ----------------------------------------------------------------------

def digest(label: str) -> bytes:
    return hashlib.sha384(label.encode()).digest()


BLOCKS = {i: digest(f"block {i}") for i in range(1, 65)}
DRIVER_ENTRIES: dict[int, Golden] = {7: BLOCKS[8], 21: [digest("other"), BLOCKS[22]], 35: BLOCKS[36]}
VBIOS_ENTRIES = {0: BLOCKS[1], 9: BLOCKS[10]}


@pytest.fixture(scope="module")
def rims() -> SyntheticRims:
    return SyntheticRims(NOW)


@pytest.fixture(scope="module")
def pair(rims: SyntheticRims) -> tuple[VerifiedRim, VerifiedRim]:
    roots = rims.trust_roots
    return (verify_rim(rims.sign("NV_GPU_DRIVER_GH100_1.0", "1.0", DRIVER_ENTRIES), NOW, trust_roots=roots),
            verify_rim(rims.sign("NV_GPU_VBIOS_1_2_3_4", "4", VBIOS_ENTRIES), NOW, trust_roots=roots))


def run(blocks: Mapping[int, bytes], driver: VerifiedRim | None, vbios: VerifiedRim | None,
        nvdec: bytes | None = b"\xaa") -> tuple[str, list[int]]:
    result = compare(blocks, driver, vbios, nvdec0_status=nvdec)
    return result.measres, [m.index for m in result.mismatches]


def test_synthetic_pair_matches(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    result = compare(BLOCKS, *pair, nvdec0_status=b"\xaa")
    assert result.measres == SUCCESS and result.matched == (0, 7, 9, 21, 35) and result.skipped == ()


def test_any_alternative_matches(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    assert run({**BLOCKS, 22: digest("other")}, driver, vbios) == (SUCCESS, [])
    assert run({**BLOCKS, 22: digest("third")}, driver, vbios) == (FAIL, [21])


def test_inactive_entries_are_not_compared(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    assert run({**BLOCKS, 3: digest("anything")}, driver, vbios) == (SUCCESS, [])
    assert run(BLOCKS, with_entry(driver, 7, active=False, alternatives=(digest("x"),)), vbios) == (SUCCESS, [])


def test_rim_index_i_is_block_i_plus_1(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    shifted = {index - 1: value for index, value in BLOCKS.items() if index > 1}  # 0-based by mistake
    assert run(shifted, driver, vbios)[0] == FAIL


def test_size_must_equal_the_measured_length(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    short = with_entry(driver, 7, size=47)
    assert run(BLOCKS, short, vbios) == (FAIL, [7])
    truncated = {**BLOCKS, 8: BLOCKS[8][:47]}
    assert run(truncated, with_entry(driver, 7, alternatives=(BLOCKS[8][:47],)), vbios) == (FAIL, [7])


def test_a_missing_block_is_a_mismatch(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    blocks = {k: v for k, v in BLOCKS.items() if k != 10}
    result = compare(blocks, driver, vbios, nvdec0_status=None)
    assert result.measres == FAIL and result.mismatches[0].seen is None
    assert "the report has no such block" in str(result.mismatches[0])


def test_nvdec_index_35_is_skipped_only_when_disabled(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    blocks = {**BLOCKS, 36: digest("nvdec differs")}
    assert run(blocks, driver, vbios, nvdec=b"\x55") == (SUCCESS, [])
    assert run(blocks, driver, vbios, nvdec=b"\xaa") == (FAIL, [35])
    assert run(blocks, driver, vbios, nvdec=None) == (FAIL, [35])
    assert run(blocks, driver, vbios, nvdec=b"\x55\x55") == (FAIL, [35])


def test_an_index_active_in_both_rims_is_a_conflict(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    both = dataclasses.replace(vbios, entries=(*vbios.entries[:7], dataclasses.replace(
        driver.entries[7]), *vbios.entries[8:]))
    result = compare(BLOCKS, driver, both, nvdec0_status=None)
    assert result.measres == FAIL and not result.index_no_conflict and result.conflicts == (7,)
    assert result.mismatches == ()  # every value matches: the conflict alone fails it
    assert "both active at index(es) [7]" in result.explain()


def test_more_golden_entries_than_blocks_fails(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, vbios = pair
    few = {k: BLOCKS[k] for k in (1, 8, 10, 22)}  # 4 blocks, 5 active entries
    result = compare(few, driver, vbios, nvdec0_status=b"\x55")
    assert result.measres == FAIL and "more than the report's 4 measurement blocks" in result.explain()


def test_without_rims_nothing_reads_as_success(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, _ = pair
    none = compare(BLOCKS, None, None, nvdec0_status=None)
    assert none.measres == NOT_CHECKED and not none.success and none.matched == ()
    assert "no driver and no VBIOS RIM" in none.explain()
    only_driver = compare(BLOCKS, driver, None, nvdec0_status=None)
    assert only_driver.measres == NOT_CHECKED and only_driver.vbios_version_match is None
    assert compare({**BLOCKS, 8: digest("x")}, driver, None, nvdec0_status=None).measres == FAIL


def test_golden_entries_come_from_verified_rims(pair: tuple[VerifiedRim, VerifiedRim]) -> None:
    driver, _ = pair
    assert all(isinstance(e, GoldenEntry) for e in driver.entries)
    assert driver.entries[21].alternatives == (digest("other"), BLOCKS[22])


def test_a_synthetic_pair_for_a_synthetic_report(rims: SyntheticRims, tmp_path: Path) -> None:
    pair = rims.sign_pair(BLOCKS, driver_version="570.1", vbios_version="96.00.74.00.1a")
    assert sorted(pair) == ["NV_GPU_DRIVER_GH100_570.1", "NV_GPU_VBIOS_1010_0200_882_960074001A"]
    for rim_id, xml in pair.items():
        (tmp_path / f"{rim_id}.xml").write_bytes(xml)
    store = RimStore(directory=tmp_path, trust_roots=rims.trust_roots)
    driver = asyncio.run(store.get("NV_GPU_DRIVER_GH100_570.1", NOW))
    vbios = asyncio.run(store.get("NV_GPU_VBIOS_1010_0200_882_960074001A", NOW))
    result = compare(BLOCKS, driver, vbios, nvdec0_status=b"\xaa", driver_version="570.1",
                     vbios_version="96.00.74.00.1a")
    assert result.measres == SUCCESS and len(result.matched) == 33, result.explain()
    assert (result.driver_version_match, result.vbios_version_match) == (True, True)
