"""NVIDIA GPU evidence in the C core (SPDM 1.1 GET_MEASUREMENTS + MEASUREMENTS, reference/gpu.md §1):
every real report parses and verifies with its chain's leaf key, trustee's parsed claims are reproduced
by the decoders, each layout rule refuses with its own status, label and a message naming the field,
where it is, what it saw and what it wanted; synthetic reports (tests/spdm_synth.py) cover the shapes
real GPUs never send and keep the suite meaningful without the vectors.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs import native
from kbs.errors import EvidenceError, KbsError, MalformedEvidence, SignatureInvalid
from kbs.native import OpaqueType
from kbs.native.spdm import _detail
from tests.conftest import vectors_dir
from tests.gpu_reports import GpuReport, real_reports
from tests.spdm_synth import P384_N, Block, SyntheticSpdm, digest_blocks, hopper_opaque, point_of, sign, tlv
from tests.threads import on_threads

REAL = real_reports(vectors_dir())
GENUINE = [r for r in REAL if r.genuine]
needs_vectors = pytest.mark.skipif(not REAL, reason=f"no GPU vectors under KBS_VECTORS={vectors_dir()}")
KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_KEY = ec.generate_private_key(ec.SECP384R1())
POINT = point_of(KEY)
lib = native.lib


def real_param(reports: list[GpuReport]) -> Callable[[Callable[[GpuReport], None]], Callable[[GpuReport], None]]:
    return pytest.mark.parametrize("real", reports or [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no GPU vectors under KBS_VECTORS={vectors_dir()}"))], ids=[r.name for r in reports] or ["none"])


def refusal(fn: Callable[[], object]) -> EvidenceError:
    with pytest.raises(EvidenceError) as err:
        fn()
    assert str(err.value), "every refusal says what was wrong"
    return err.value


def status_of(data: bytes, flags: int = 0) -> int:
    return int(lib.kbs_spdm_parse(data, len(data), flags, native.ffi.new("struct kbs_spdm_report *")))


# --- the real reports ---

@needs_vectors
def test_every_real_report_is_found() -> None:
    """SOURCES.md: 6 genuine hex reports, 7 attestation-sdk JSON reports, 8 nvtrust PPCIe H100s, 8 Blackwell
    (MPT), 8 H100 + 4 LS10 switches (PPCIe); and the one with a deliberately bad signature."""
    assert len(GENUINE) == 41 and len(REAL) == 42
    assert sum(r.is_switch for r in REAL) == 4


@real_param(GENUINE)
def test_real_report_parses_and_verifies(real: GpuReport) -> None:
    data = real.data
    parsed = native.spdm_parse(data)
    verified = native.spdm_verify(data, real.leaf_point)
    assert parsed == verified
    assert native.spdm_verify_status(data, real.leaf_point) == 0
    assert parsed.request_nonce == real.nonce == data[4:36]
    assert (parsed.request_attributes, parsed.measurement_operation, parsed.slot_id) == (0x01, 0xFF, 0)
    assert parsed.response_param1 == 0 and data[37:39] == b"\x11\x60"
    assert parsed.number_of_blocks == len(parsed.blocks) == (31 if real.is_switch else 64)
    assert [b.index for b in parsed.blocks] == list(range(1, parsed.number_of_blocks + 1))
    assert all(b.spec == 1 and b.value_type == 1 and len(b.value) == 48 for b in parsed.blocks)
    # Layout (gpu.md §1.2): record at 45, then the responder nonce, OpaqueLength, TLVs, signature.
    record_length = int.from_bytes(data[42:45], "little")
    assert record_length == sum(7 + len(b.value) for b in parsed.blocks)
    assert parsed.responder_nonce == data[45 + record_length:77 + record_length]
    opaque_length = struct.unpack_from("<H", data, 77 + record_length)[0]
    assert parsed.signed_size == 79 + record_length + opaque_length
    assert sum(4 + len(f.value) for f in parsed.opaque) == opaque_length
    assert parsed.signature == data[parsed.signed_size:parsed.signed_size + 96]
    assert parsed.signed_size + 96 + parsed.trailing_zero_bytes == len(data)
    # What is signed, checked without the C core.
    r, s = int.from_bytes(parsed.signature[:48], "big"), int.from_bytes(parsed.signature[48:], "big")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), real.leaf_point)
    key.verify(utils.encode_dss_signature(r, s), data[:parsed.signed_size], ec.ECDSA(hashes.SHA384()))
    # Every decoder works on every real report (GPUs and switches).
    for name in ("driver_version", "vbios_version", "fwid", "chip_info", "project", "project_sku", "chip_sku",
                 "chip_sku_mod", "nvdec0_status", "opaque_data_version", "feature_flag", "board_id",
                 "protected_pcie_status", "measurement_counts", "switch_pdis"):
        getattr(parsed, name)


@needs_vectors
def test_decoded_values_match_sources_md() -> None:
    """Driver, VBIOS, opaque data version, feature flag and CHIP_INFO as SOURCES.md lists them."""
    want = {
        "nvtrust/hopperAttestationReport.txt": ("550.90.07", "96.00.9f.00.01", 0, None, None),
        "attestation-sdk/unit-tests/hopperAttestationReport.txt": ("580.159.03", "96.00.74.00.20", 1, 0, None),
        "attestation-sdk/unit-tests/sample_attestation_data/gpu/blackwellAttestationReport.txt":
            ("575.32", "97.00.88.00.0f", 0, None, None),
        "trustee/hopper_coco_report1.txt": ("580.95.05", "96.00.74.00.1a", 1, 0, None),
        "attestation-sdk/common-test-data/hopper_evidence.json[0]": ("590.12", "96.00.a5.00.01", 1, 2, None),
        "go-nvattest-tools/test_mpt_data.json[gpu 5]": ("590.48.01", "97.00.d9.00.35", 1, 1, "GB100"),
        "go-nvattest-tools/test_ppcie_data.json[gpu 0]": ("570.124.06", "96.00.cf.00.02", 0, None, None),
        "go-nvattest-tools/test_ppcie_data.json[switch 2]": (None, "96.10.6D.00.01", 0, None, None),
    }
    by_name = {r.name: r for r in REAL}
    for name, (driver, vbios, version, feature, chip) in want.items():
        p = native.spdm_parse(by_name[name].data)
        assert (p.driver_version, p.vbios_version, p.opaque_data_version, p.feature_flag, p.chip_info) == \
            (driver, vbios, version, feature, chip), name
    # The sample from driver 535.86.09 predates FWID (so the chain's FWID check is skipped for it).
    old = native.spdm_parse(by_name["attestation-sdk/unit-tests/sample_attestation_data/gpu/"
                                   "hopperAttestationReport.txt"].data)
    assert old.driver_version == "535.86.09" and old.fwid is None
    # VBIOS RIM id parts (gpu.md §3.2): NV_GPU_VBIOS_1010_0200_882_96009F0001.
    p = native.spdm_parse(by_name["nvtrust/hopperAttestationReport.txt"].data)
    assert f"{p.project}_{p.project_sku}_{p.chip_sku}_{p.vbios_version}".replace(".", "").upper() == \
        "1010_0200_882_96009F0001"


@needs_vectors
def test_trustee_claims_reproduced_field_by_field() -> None:
    """trustee/hopperAttestationReport-claims.txt: trustee's parse of the nvtrust report, every field."""
    claims = json.loads((vectors_dir() / "gpu" / "trustee" / "hopperAttestationReport-claims.txt").read_text())
    report = next(r for r in REAL if r.name == "nvtrust/hopperAttestationReport.txt")
    p = native.spdm_parse(report.data)
    assert {str(i): v.hex() for i, v in p.measurements.items()} == claims["measurements"]
    assert p.measurement_counts is not None and p.nvdec0_status is not None
    assert p.board_id is not None and p.protected_pcie_status is not None and p.fwid is not None

    def hex_of(t: OpaqueType) -> str:
        value = p.opaque_value(t)
        assert value is not None, t
        return value.hex()

    ours = {
        "board_id": p.board_id.to_bytes(4, "little").hex(),
        "chip_sku": p.chip_sku, "chip_sku_mod": p.chip_sku_mod, "cpr_info": hex_of(OpaqueType.CPRINFO),
        "driver_version": p.driver_version, "fwid": p.fwid.hex(), "gpu_info": hex_of(OpaqueType.GPU_INFO),
        "measurement_count": {str(i + 1): n for i, n in enumerate(p.measurement_counts)},
        "nvdec0_status": chr(p.nvdec0_status),  # this trustee version printed the byte as text: 0x55 "U"
        "project": p.project, "project_sku": p.project_sku, "project_sku_mod": hex_of(OpaqueType.PROJECT_SKU_MOD),
        "protected_pcie_status": chr(p.protected_pcie_status), "vbios_version": p.vbios_version,
    }
    assert ours == claims["config"]  # the same keys, every value equal
    assert p.nvdec0_status == native.spdm.NVDEC0_DISABLED


@needs_vectors
def test_bad_signature_report_fails_with_the_signature_status() -> None:
    bad = next(r for r in REAL if not r.genuine)
    p = native.spdm_parse(bad.data)  # the format is fine
    assert p.driver_version == "560.00" and p.vbios_version == "96.00.a5.00.01"
    err = refusal(lambda: native.spdm_verify(bad.data, bad.leaf_point))
    assert isinstance(err, SignatureInvalid) and err.check == "nvgpu.signature"
    assert f"signature at byte {p.signed_size}" in str(err)
    assert native.spdm_verify_status(bad.data, bad.leaf_point) == lib.KBS_ERR_SPDM_SIG_INVALID
    for other in GENUINE[:3]:  # nor with any other GPU's key
        assert native.spdm_verify_status(bad.data, other.leaf_point) == lib.KBS_ERR_SPDM_SIG_INVALID


@needs_vectors
def test_coco_report_trailing_zero_byte() -> None:
    """trustee's CoCo report has one 0x00 after its signature: located by parsing it verifies, as trustee
    accepts it; "the last 96 bytes" (NVIDIA's Python rule) would not; NO_PADDING (nvat's rule) refuses it."""
    coco = next(r for r in REAL if r.name == "trustee/hopper_coco_report1.txt")
    p = native.spdm_verify(coco.data, coco.leaf_point)
    assert p.trailing_zero_bytes == 1 and coco.data[-1] == 0 and p.signed_size == len(coco.data) - 97
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), coco.leaf_point)
    tail = coco.data[-96:]
    with pytest.raises(Exception):  # noqa: B017 - pyca's InvalidSignature
        key.verify(utils.encode_dss_signature(int.from_bytes(tail[:48], "big"), int.from_bytes(tail[48:], "big")),
                   coco.data[:-96], ec.ECDSA(hashes.SHA384()))
    err = refusal(lambda: native.spdm_verify(coco.data, coco.leaf_point, no_padding=True))
    assert err.check == "nvgpu.parse" and f"1 zero bytes from byte {len(coco.data) - 1}" in str(err)
    native.spdm_verify(coco.data[:-1], coco.leaf_point, no_padding=True)
    assert native.spdm_parse(coco.data + bytes(40)).trailing_zero_bytes == 41
    err = refusal(lambda: native.spdm_parse(coco.data + b"\x00\x07"))
    assert err.check == "nvgpu.parse" and f"byte {len(coco.data) + 1} is 0x07, wanted 0x00" in str(err)


@needs_vectors
def test_every_truncation_of_a_real_report() -> None:
    """Each cut names the part the buffer ends in."""
    real = GENUINE[0]
    p = native.spdm_parse(real.data)
    record_end = 45 + int.from_bytes(real.data[42:45], "little")
    opaque_at = record_end + 34
    bounds = [(37, lib.KBS_ERR_SPDM_REQUEST_TRUNCATED), (45, lib.KBS_ERR_SPDM_RESPONSE_TRUNCATED),
              (record_end, lib.KBS_ERR_SPDM_RECORD_TRUNCATED), (record_end + 32, lib.KBS_ERR_SPDM_NONCE_TRUNCATED),
              (opaque_at, lib.KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED), (p.signed_size, lib.KBS_ERR_SPDM_OPAQUE_TRUNCATED),
              (p.signed_size + 96, lib.KBS_ERR_SPDM_SIGNATURE_TRUNCATED)]
    for n in range(p.signed_size + 96):
        want = next(status for end, status in bounds if n < end)
        assert status_of(real.data[:n]) == want, n
    with pytest.raises(MalformedEvidence, match="shorter than the 37-byte"):
        native.spdm_parse(b"")


# --- synthetic reports: every rule, its status, label and message ---

def cut(n: int) -> Callable[[bytes], bytes]:
    return lambda data: data[:n]


GOOD = SyntheticSpdm(KEY)
GOOD_BYTES = GOOD.build()
RECORD_END = 45 + 64 * 55
SIG_AT = len(GOOD.signed_part())

# (id, the report (a SyntheticSpdm, or an edit of the good one), status, words the message must hold)
CASES: list[tuple[str, SyntheticSpdm | Callable[[bytes], bytes], int, str]] = [
    ("request-cut", cut(36), lib.KBS_ERR_SPDM_REQUEST_TRUNCATED, "the report is 36 bytes, wanted at least 37"),
    ("request-version", SyntheticSpdm(KEY, request_version=0x12), lib.KBS_ERR_SPDM_REQUEST_VERSION,
     "SPDMVersion at byte 0 is 0x12, wanted 0x11"),
    ("request-code", SyntheticSpdm(KEY, request_code=0x60), lib.KBS_ERR_SPDM_REQUEST_CODE,
     "RequestResponseCode at byte 1 is 0x60, wanted 0xe0"),
    ("no-signature-requested", SyntheticSpdm(KEY, attributes=0), lib.KBS_ERR_SPDM_REQUEST_ATTRIBUTES,
     "Param1 at byte 2 is 0x00, wanted 0x01"),
    ("reserved-attribute", SyntheticSpdm(KEY, attributes=3), lib.KBS_ERR_SPDM_REQUEST_ATTRIBUTES,
     "Param1 at byte 2 is 0x03"),
    ("count-only", SyntheticSpdm(KEY, operation=0), lib.KBS_ERR_SPDM_REQUEST_OPERATION,
     "Param2 at byte 3 is 0x00, wanted 0xff"),
    ("one-index", SyntheticSpdm(KEY, operation=5), lib.KBS_ERR_SPDM_REQUEST_OPERATION, "is 0x05"),
    ("slot-8", SyntheticSpdm(KEY, slot=8), lib.KBS_ERR_SPDM_REQUEST_SLOT,
     "SlotIDParam at byte 36 is 0x08, wanted 0x00-0x07"),
    ("response-cut", cut(44), lib.KBS_ERR_SPDM_RESPONSE_TRUNCATED, "7 bytes follow the request, wanted at least 8"),
    ("response-version", SyntheticSpdm(KEY, response_version=0x10), lib.KBS_ERR_SPDM_RESPONSE_VERSION,
     "SPDMVersion at byte 37 is 0x10, wanted 0x11"),
    ("response-code", SyntheticSpdm(KEY, response_code=0x7F), lib.KBS_ERR_SPDM_RESPONSE_CODE,
     "RequestResponseCode at byte 38 is 0x7f, wanted 0x60"),
    ("response-param1", SyntheticSpdm(KEY, response_param1=64), lib.KBS_ERR_SPDM_RESPONSE_PARAM1,
     "Param1 at byte 39 is 0x40, wanted 0x00"),
    ("response-slot", SyntheticSpdm(KEY, slot=2, response_slot=0), lib.KBS_ERR_SPDM_RESPONSE_SLOT,
     "Param2 at byte 40 is 0, wanted the request's slot 2"),
    ("no-blocks", SyntheticSpdm(KEY, number_of_blocks=0), lib.KBS_ERR_SPDM_NO_BLOCKS,
     "NumberOfBlocks at byte 41 is 0, wanted at least 1"),
    ("record-past-end", SyntheticSpdm(KEY, record_length=0xFFFFFF), lib.KBS_ERR_SPDM_RECORD_TRUNCATED,
     "MeasurementRecordLength at byte 42 is 16777215, but only"),
    ("record-one-long", SyntheticSpdm(KEY, record_length=64 * 55 + 1), lib.KBS_ERR_SPDM_RECORD_TRAILING,
     f"1 bytes left at byte {RECORD_END} after block 64 of 64, wanted 0"),
    ("record-one-short", SyntheticSpdm(KEY, record_length=64 * 55 - 1), lib.KBS_ERR_SPDM_BLOCK_TRUNCATED,
     f"block 64 of 64 at byte {RECORD_END - 53}: 50 bytes left in the record, wanted 51"),
    ("record-one-block-short", SyntheticSpdm(KEY, record_length=63 * 55), lib.KBS_ERR_SPDM_BLOCK_COUNT,
     f"the record ends at byte {RECORD_END - 55} after 63 blocks, NumberOfBlocks is 64"),
    ("count-too-high", SyntheticSpdm(KEY, number_of_blocks=65), lib.KBS_ERR_SPDM_BLOCK_COUNT,
     "after 64 blocks, NumberOfBlocks is 65"),
    ("count-too-low", SyntheticSpdm(KEY, number_of_blocks=63), lib.KBS_ERR_SPDM_RECORD_TRAILING,
     f"55 bytes left at byte {RECORD_END - 55} after block 63 of 63"),
    ("block-header-cut", SyntheticSpdm(KEY, record=b"\x01\x01\x33", number_of_blocks=1),
     lib.KBS_ERR_SPDM_BLOCK_TRUNCATED, "block 1 of 1 at byte 45: 3 bytes left in the record, wanted 4"),
    ("index-0", SyntheticSpdm(KEY, blocks=[Block(1), Block(0)]), lib.KBS_ERR_SPDM_BLOCK_INDEX,
     "block 2 of 2 at byte 100 has index 0, wanted 1-254"),
    ("index-255", SyntheticSpdm(KEY, blocks=[Block(255)]), lib.KBS_ERR_SPDM_BLOCK_INDEX,
     "has index 255, wanted 1-254"),
    ("duplicate-index", SyntheticSpdm(KEY, blocks=[Block(7), Block(2), Block(7)]), lib.KBS_ERR_SPDM_BLOCK_DUPLICATE,
     "block 3 of 3 at byte 155 has index 7, already the index of block 1"),
    ("spec-2", SyntheticSpdm(KEY, blocks=[Block(1, spec=2)]), lib.KBS_ERR_SPDM_BLOCK_SPEC,
     "block 1 of 1: MeasurementSpecification at byte 46 is 0x02, wanted 0x01"),
    ("spec-3", SyntheticSpdm(KEY, blocks=[Block(1, spec=3)]), lib.KBS_ERR_SPDM_BLOCK_SPEC, "is 0x03"),
    ("measurement-past-record", SyntheticSpdm(KEY, blocks=[Block(1, measurement_size=52)]),
     lib.KBS_ERR_SPDM_BLOCK_TRUNCATED, "block 1 of 1 at byte 47: 51 bytes left in the record, wanted 52"),
    ("measurement-size-2", SyntheticSpdm(KEY, blocks=[Block(1, value=b"", measurement_size=2), Block(2)]),
     lib.KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE, "block 1 of 2: MeasurementSize at byte 47 is 2, wanted at least 3"),
    ("raw-bit-stream", SyntheticSpdm(KEY, blocks=[Block(1), Block(2, value_type=0x81)]),
     lib.KBS_ERR_SPDM_BLOCK_VALUE_TYPE,
     "block 2 of 2: DMTFSpecMeasurementValueType at byte 104 is 0x81, wanted bit 7 clear (0x01)"),
    ("value-size-short", SyntheticSpdm(KEY, blocks=[Block(1, value_size=47)]), lib.KBS_ERR_SPDM_BLOCK_VALUE_SIZE,
     "block 1 of 1: DMTFSpecMeasurementValueSize at byte 50 is 47, wanted 48"),
    ("value-size-long", SyntheticSpdm(KEY, blocks=[Block(1, measurement_size=50), *digest_blocks(3)[1:]]),
     lib.KBS_ERR_SPDM_BLOCK_VALUE_SIZE, "DMTFSpecMeasurementValueSize at byte 50 is 48, wanted 47"),
    ("nonce-cut", cut(RECORD_END + 31), lib.KBS_ERR_SPDM_NONCE_TRUNCATED,
     f"31 bytes left at byte {RECORD_END}, wanted 32"),
    ("opaque-length-cut", cut(RECORD_END + 33), lib.KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED,
     f"1 bytes left at byte {RECORD_END + 32}, wanted 2"),
    ("opaque-past-end", SyntheticSpdm(KEY, opaque_length=0xFFFF), lib.KBS_ERR_SPDM_OPAQUE_TRUNCATED,
     f"OpaqueLength at byte {RECORD_END + 32} is 65535, but only"),
    ("opaque-one-short", SyntheticSpdm(KEY, opaque=[(3, b"1.0\0")], opaque_length=7), lib.KBS_ERR_SPDM_TLV_OVERRUN,
     f"opaque TLV 1: DataSize at byte {RECORD_END + 36} is 4, but only 3 bytes are left in the opaque data"),
    ("tlv-header-cut", SyntheticSpdm(KEY, opaque_data=tlv(3, b"1\0") + b"\x06\x00"), lib.KBS_ERR_SPDM_TLV_TRUNCATED,
     f"opaque TLV 2 at byte {RECORD_END + 40}: 2 bytes left in the opaque data, wanted 4"),
    ("tlv-overrun", SyntheticSpdm(KEY, opaque_data=tlv(3, b"1\0") + tlv(6, bytes(8), size=9)),
     lib.KBS_ERR_SPDM_TLV_OVERRUN, "opaque TLV 2: DataSize at byte"),
    ("tlv-type-0", SyntheticSpdm(KEY, opaque=[(0, b"")]), lib.KBS_ERR_SPDM_TLV_TYPE,
     f"opaque TLV 1 at byte {RECORD_END + 34} has type 0 (0x0000), wanted 1-26 or 32-36"),
    ("tlv-type-27", SyntheticSpdm(KEY, opaque=[(3, b"1\0"), (27, b"x")]), lib.KBS_ERR_SPDM_TLV_TYPE,
     "opaque TLV 2 at byte"),
    ("tlv-type-31", SyntheticSpdm(KEY, opaque=[(31, b"")]), lib.KBS_ERR_SPDM_TLV_TYPE, "has type 31 (0x001f)"),
    ("tlv-type-37", SyntheticSpdm(KEY, opaque=[(37, b"")]), lib.KBS_ERR_SPDM_TLV_TYPE, "has type 37"),
    ("tlv-type-invalid", SyntheticSpdm(KEY, opaque=[(255, b"")]), lib.KBS_ERR_SPDM_TLV_TYPE, "has type 255 (0x00ff)"),
    ("tlv-type-ffff", SyntheticSpdm(KEY, opaque=[(0xFFFF, b"")]), lib.KBS_ERR_SPDM_TLV_TYPE, "type 65535 (0xffff)"),
    ("tlv-repeated", SyntheticSpdm(KEY, opaque=hopper_opaque(extra=[(3, b"999.1\0")])),
     lib.KBS_ERR_SPDM_TLV_DUPLICATE, "opaque TLV 17 at byte"),
    ("tlv-repeated-message", SyntheticSpdm(KEY, opaque=[(3, b"1\0"), (11, b"\x55"), (3, b"1\0")]),
     lib.KBS_ERR_SPDM_TLV_DUPLICATE, "has type 3 (DRIVER_VERSION), already the type of TLV 1"),
    ("signature-cut", cut(len(GOOD_BYTES) - 1), lib.KBS_ERR_SPDM_SIGNATURE_TRUNCATED,
     f"95 bytes left at byte {SIG_AT}, wanted 96"),
    ("opaque-one-long", SyntheticSpdm(KEY, opaque=[(3, b"1\0")], opaque_length=7 + 96),
     lib.KBS_ERR_SPDM_OPAQUE_TRUNCATED, "but only 102 bytes follow it"),
    ("trailing-non-zero", SyntheticSpdm(KEY, padding=b"\0\0\x01"), lib.KBS_ERR_SPDM_TRAILING_BYTES,
     f"byte {len(GOOD_BYTES) + 2} is 0x01, wanted 0x00"),
    ("r-zero", lambda d: d[:SIG_AT] + bytes(48) + d[SIG_AT + 48:], lib.KBS_ERR_SPDM_SIG_RANGE,
     f"signature at byte {SIG_AT}"),
    ("s-n", lambda d: d[:SIG_AT + 48] + P384_N.to_bytes(48, "big"), lib.KBS_ERR_SPDM_SIG_RANGE, "signature at"),
    ("signature-flip", lambda d: d[:-1] + bytes([d[-1] ^ 1]), lib.KBS_ERR_SPDM_SIG_INVALID,
     f"signature at byte {SIG_AT} over bytes 0-{SIG_AT - 1}"),
    ("signed-byte-flip", lambda d: d[:120] + bytes([d[120] ^ 0x40]) + d[121:], lib.KBS_ERR_SPDM_SIG_INVALID,
     "does not verify with the leaf certificate's key"),
    ("other-signer", SyntheticSpdm(OTHER_KEY), lib.KBS_ERR_SPDM_SIG_INVALID, "over bytes"),
]


def case_bytes(report: SyntheticSpdm | Callable[[bytes], bytes]) -> bytes:
    return report.build() if isinstance(report, SyntheticSpdm) else report(GOOD_BYTES)


@pytest.mark.parametrize(("report", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_refuses_with_its_status(report: SyntheticSpdm | Callable[[bytes], bytes], status: int,
                                           words: str) -> None:
    data = case_bytes(report)
    assert native.spdm_verify_status(data, POINT) == status, native.status_name(status)
    err = refusal(lambda: native.spdm_verify(data, POINT))
    signature = status in (lib.KBS_ERR_SPDM_SIG_RANGE, lib.KBS_ERR_SPDM_SIG_INVALID)
    assert isinstance(err, SignatureInvalid if signature else MalformedEvidence)
    assert err.check == ("nvgpu.signature" if signature else "nvgpu.parse")
    assert words in str(err), str(err)
    if signature:
        native.spdm_parse(data)  # only the signature is wrong
    else:
        assert status_of(data) == status


def test_every_status_has_a_message_a_label_and_a_case() -> None:
    from kbs.native._ffi import _STATUS

    names = [n for n in dir(lib) if n.startswith("KBS_ERR_SPDM_")]
    assert len(names) == 36
    reached = {status for _, _, status, _ in CASES} | {lib.KBS_ERR_SPDM_FLAGS, lib.KBS_ERR_SPDM_PADDING,
                                                         lib.KBS_ERR_SPDM_KEY}  # tested below
    for name in names:
        status = getattr(lib, name)
        cls, check, message = _STATUS[status]
        assert message and status in reached, name
        if name == "KBS_ERR_SPDM_FLAGS":  # the caller's bug, never a verdict on evidence
            assert not issubclass(cls, EvidenceError) and check == "internal"
        elif name in ("KBS_ERR_SPDM_KEY", "KBS_ERR_SPDM_SIG_RANGE", "KBS_ERR_SPDM_SIG_INVALID"):
            assert cls is SignatureInvalid and check == "nvgpu.signature"
        else:
            assert cls is MalformedEvidence and check == "nvgpu.parse"
        assert _detail(status, _ErrorFields()), name  # every status says where and what


class _ErrorFields:
    error_offset, error_item, error_seen, error_wanted, number_of_blocks = 10, 1, 3, 4, 64


def test_flags_and_null_arguments() -> None:
    out = native.ffi.new("struct kbs_spdm_report *")
    assert lib.kbs_spdm_parse(GOOD_BYTES, len(GOOD_BYTES), 2, out) == lib.KBS_ERR_SPDM_FLAGS
    assert lib.kbs_spdm_parse(GOOD_BYTES, len(GOOD_BYTES), 1, out) == lib.KBS_OK
    assert lib.kbs_spdm_parse(native.ffi.NULL, 5, 0, out) == lib.KBS_ERR_NULL_ARGUMENT
    assert lib.kbs_spdm_verify(GOOD_BYTES, len(GOOD_BYTES), 0, native.ffi.NULL, 97, out) == lib.KBS_ERR_NULL_ARGUMENT
    assert lib.kbs_spdm_verify_with_table(GOOD_BYTES, len(GOOD_BYTES), 0, native.ffi.NULL, out) == \
        lib.KBS_ERR_NULL_ARGUMENT


def test_padding() -> None:
    padded = SyntheticSpdm(KEY, padding=bytes(5)).build()
    assert native.spdm_verify(padded, POINT).trailing_zero_bytes == 5
    err = refusal(lambda: native.spdm_verify(padded, POINT, no_padding=True))
    assert err.check == "nvgpu.parse" and f"5 zero bytes from byte {len(GOOD_BYTES)}, wanted none" in str(err)
    assert native.spdm_verify(GOOD_BYTES, POINT, no_padding=True).trailing_zero_bytes == 0


@pytest.mark.parametrize("point", [POINT[:96], POINT + b"\0", b"\x02" + POINT[1:], POINT[:-1] + bytes([POINT[-1] ^ 1]),
                                   b"\x04" + bytes(96)], ids=["short", "long", "prefix", "off-curve", "zero"])
def test_bad_leaf_keys(point: bytes) -> None:
    err = refusal(lambda: native.spdm_verify(GOOD_BYTES, point))
    assert isinstance(err, SignatureInvalid) and err.check == "nvgpu.signature"
    assert f"the key is {len(point)} bytes" in str(err)
    assert native.spdm_verify_status(GOOD_BYTES, point) == lib.KBS_ERR_SPDM_KEY


# --- shapes real GPUs do not send, accepted ---

def test_edge_shapes_accepted() -> None:
    shapes = {
        "one block": SyntheticSpdm(KEY, blocks=[Block(9)], opaque=[]),
        "254 blocks, every index, descending": SyntheticSpdm(KEY, blocks=digest_blocks(254)[::-1], opaque=[]),
        "every known TLV type once, empty values": SyntheticSpdm(KEY, opaque=[(t, b"") for t in OpaqueType]),
        "digests of other sizes": SyntheticSpdm(KEY, blocks=[Block(1, b""), Block(2, bytes(32)),
                                                              Block(3, bytes(64), value_type=0x7F)]),
        "slot 7": SyntheticSpdm(KEY, slot=7),
        "largest opaque field": SyntheticSpdm(KEY, opaque=[(22, bytes(range(256)) * 255)]),
    }
    for name, synth in shapes.items():
        data = synth.build()
        p = native.spdm_verify(data, POINT)
        assert len(p.blocks) == p.number_of_blocks == len(synth.blocks), name
        assert [(b.index, b.value, b.value_type) for b in p.blocks] == \
            [(b.index, b.value, b.value_type) for b in synth.blocks], name
        assert [(f.type, f.value) for f in p.opaque] == list(synth.opaque), name
    refused = SyntheticSpdm(KEY, blocks=[*digest_blocks(254), Block(255)], opaque=[]).build()
    assert status_of(refused) == lib.KBS_ERR_SPDM_BLOCK_INDEX  # 255 blocks cannot all have indices 1-254
    refused = SyntheticSpdm(KEY, blocks=[*digest_blocks(254), Block(1)], opaque=[]).build()
    assert status_of(refused) == lib.KBS_ERR_SPDM_BLOCK_DUPLICATE


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=64), st.integers(0, 0x7F)), min_size=1,
                max_size=40, unique_by=lambda b: b[0]),
       st.lists(st.tuples(st.sampled_from(list(OpaqueType)), st.binary(max_size=40)), max_size=31,
                unique_by=lambda t: t[0]),
       st.integers(0, 7), st.integers(0, 4))
def test_synthetic_round_trip(nonce: bytes, responder: bytes, blocks: list[tuple[int, bytes, int]],
                              opaque: list[tuple[OpaqueType, bytes]], slot: int, padding: int) -> None:
    """Whatever was built, the parse returns exactly, and the signature verifies."""
    synth = SyntheticSpdm(KEY, nonce=nonce, responder_nonce=responder, slot=slot, padding=bytes(padding),
                          blocks=[Block(i, v, value_type=t) for i, v, t in blocks],
                          opaque=[(int(t), v) for t, v in opaque])
    data = synth.build()
    p = native.spdm_verify(data, POINT)
    assert (p.request_nonce, p.responder_nonce, p.slot_id) == (nonce, responder, slot)
    assert p.blocks == tuple(native.MeasurementBlock(i, 1, t, v) for i, v, t in blocks)
    assert p.opaque == tuple(native.OpaqueField(int(t), v) for t, v in opaque)
    assert p.signed_size == len(synth.signed_part()) and p.trailing_zero_bytes == padding
    assert p.signature == data[p.signed_size:p.signed_size + 96]
    for f in p.opaque:
        assert data[f.offset:f.offset + len(f.value)] == f.value and p.opaque_value(f.type) == f.value


# --- the decoders ---

def report_with(*fields: tuple[int, bytes]) -> native.SpdmReport:
    return native.spdm_parse(SyntheticSpdm(KEY, opaque=list(fields)).build())


def test_decoders() -> None:
    p = report_with((3, b"570.124.06\0"), (6, bytes.fromhex("00cf009602000000")), (15, b"895\0\0\0\0\0\0"),
                    (16, b"0\0\0\0\0"), (17, b"G520\0"), (18, b"0280\0"), (35, b"GB100\0"), (11, b"\xaa"),
                    (34, b"\x01\x00"), (36, b"\x01\x00"), (14, b"\x3c\x05\0\0"), (21, b"\xaa"),
                    (20, bytes(range(48))), (12, struct.pack("<3I", 0, 7, 2**32 - 1)), (22, bytes(range(16))))
    assert (p.driver_version, p.vbios_version, p.chip_sku, p.chip_sku_mod, p.project, p.project_sku,
            p.chip_info) == ("570.124.06", "96.00.cf.00.02", "895", "0", "G520", "0280", "GB100")
    assert (p.nvdec0_status, p.opaque_data_version, p.feature_flag, p.board_id, p.protected_pcie_status) == \
        (native.spdm.NVDEC0_ENABLED, 1, 1, 0x53C, 0xAA)
    assert p.feature_flag is not None and native.spdm.FEATURE_FLAGS[p.feature_flag] == "MPT"
    assert p.fwid == bytes(range(48)) and p.measurement_counts == (0, 7, 2**32 - 1)
    assert p.switch_pdis == (bytes(range(8)), bytes(range(8, 16)))
    assert p.opaque_value(OpaqueType.CHIP_INFO) == b"GB100\0" and p.opaque_value(OpaqueType.SMC) is None
    empty = report_with()
    for name in ("driver_version", "vbios_version", "fwid", "chip_info", "project", "project_sku", "chip_sku",
                 "nvdec0_status", "feature_flag", "board_id", "measurement_counts", "switch_pdis"):
        assert getattr(empty, name) is None, name
    assert empty.opaque_data_version == 0  # absent means version 0 (gpu.md §1.4)
    assert report_with((3, b"595.58.03")).driver_version == "595.58.03"  # no terminator: still the text
    assert report_with((6, b"96.10.6D.00.01")).vbios_version == "96.10.6D.00.01"  # an NVSwitch's ASCII form
    assert report_with((11, b"\x55")).nvdec0_status == native.spdm.NVDEC0_DISABLED


@pytest.mark.parametrize(("field", "prop", "words"), [
    ((3, b"550\x0090\0"), "driver_version", "DRIVER_VERSION (type 3, data at byte"),
    ((3, b"\xff\xfe"), "driver_version", "is not ASCII text: bytes fffe"),
    ((6, bytes([1]) * 7), "vbios_version", "VBIOS_VERSION (type 6"),
    ((20, bytes(47)), "fwid", "has the wrong size: 47 bytes, wanted 48"),
    ((11, b""), "nvdec0_status", "wrong size: 0 bytes, wanted 1"),
    ((11, b"\x00"), "nvdec0_status", "is not a status: 0x00, wanted 0xaa (enabled) or 0x55 (disabled)"),
    ((34, b"\x01"), "opaque_data_version", "OPAQUE_DATA_VERSION (type 34"),
    ((36, b"\x01\x00\x00"), "feature_flag", "3 bytes, wanted 2"),
    ((12, bytes(5)), "measurement_counts", "is not a list of uint32: 5 bytes, wanted a multiple of 4"),
    ((22, bytes(9)), "switch_pdis", "a multiple of 8"),
    ((35, b"GB\n100"), "chip_info", "CHIP_INFO"),
])
def test_decoders_name_malformed_fields(field: tuple[int, bytes], prop: str, words: str) -> None:
    p = report_with(field)
    with pytest.raises(MalformedEvidence) as err:
        getattr(p, prop)
    assert err.value.check == "nvgpu.parse" and words in str(err.value), str(err.value)


# --- key tables and threads ---

def test_cache_tables_are_earned_by_verified_reports_only() -> None:
    cache = native.P384KeyCache(build_after=1)
    forged = SyntheticSpdm(OTHER_KEY).build()  # another key signed it: POINT never signed anything here
    for _ in range(3):
        assert native.spdm_verify_status(forged, POINT, cache) == lib.KBS_ERR_SPDM_SIG_INVALID
    assert len(cache) == 0
    assert native.spdm_verify(GOOD_BYTES, POINT, cache) == native.spdm_parse(GOOD_BYTES)
    assert len(cache) == 1 and cache.get(POINT) is not None
    # Through the table: the same verdicts, statuses and results as cold.
    assert native.spdm_verify(GOOD_BYTES, POINT, cache) == native.spdm_verify(GOOD_BYTES, POINT)
    for _, report, status, _ in CASES:
        data = case_bytes(report)
        assert native.spdm_verify_status(data, POINT, cache) == native.spdm_verify_status(data, POINT) == status
    cache2 = native.P384KeyCache()  # default build_after=2: the second verified report earns the table
    native.spdm_verify(GOOD_BYTES, POINT, cache2)
    assert len(cache2) == 0
    native.spdm_verify(SyntheticSpdm(KEY, nonce=bytes(32)).build(), POINT, cache2)
    assert len(cache2) == 1


def test_table_entry_point_in_c() -> None:
    table = native.P384KeyTable(POINT)
    out = native.ffi.new("struct kbs_spdm_report *")
    assert lib.kbs_spdm_verify_with_table(GOOD_BYTES, len(GOOD_BYTES), 0, table.c_pointer(), out) == lib.KBS_OK
    assert out.signed_size == SIG_AT and out.block_count == 64
    bad = GOOD_BYTES[:-1] + bytes([GOOD_BYTES[-1] ^ 1])
    assert lib.kbs_spdm_verify_with_table(bad, len(bad), 0, table.c_pointer(), out) == lib.KBS_ERR_SPDM_SIG_INVALID
    blank = native.ffi.new("struct kbs_p384_key_table *")  # never precomputed: the caller's bug
    assert lib.kbs_spdm_verify_with_table(GOOD_BYTES, len(GOOD_BYTES), 0, blank, out) == lib.KBS_ERR_INTERNAL
    with pytest.raises(KbsError):
        native.spdm._raise_for(lib.KBS_ERR_INTERNAL, out)


def test_threads_share_the_core() -> None:
    good, bad = GOOD_BYTES, GOOD_BYTES[:200] + b"\0" + GOOD_BYTES[201:]
    cache = native.P384KeyCache(build_after=1)
    def check() -> None:
        for _ in range(20):
            assert native.spdm_verify_status(good, POINT, cache) == 0
            assert native.spdm_verify_status(bad, POINT) == lib.KBS_ERR_SPDM_SIG_INVALID

    on_threads(check)


def test_signature_matches_an_independent_signer() -> None:
    """The builder signs with pyca; a signature made here from the digest alone verifies too."""
    signed = GOOD.signed_part()
    digest = hashlib.sha384(signed).digest()
    r, s = utils.decode_dss_signature(KEY.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA384()))))
    data = signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")
    assert native.spdm_verify(data, POINT).signature == data[-96:]
    assert sign(KEY, signed) != sign(KEY, signed)  # ECDSA is randomized: nothing depends on one signature
