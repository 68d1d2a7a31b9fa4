"""Fuzz the C SNP report parser and the one-call verifier with arbitrary and mutated reports."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs import native
from kbs.errors import MalformedEvidence
from kbs.evidence.snp.report import parse_report
from tests.amd_synth import build_report
from tests.conftest import snp_vector_names, vectors_dir

SEEDS = [(vectors_dir() / "snp" / n / "report.bin").read_bytes() for n in snp_vector_names()]
SEEDS += [bytes(build_report()), bytes(build_report(version=2, cpuid=None)),
          bytes(build_report(version=5, launch_mit_vector=1))]
REAL_VCEK_POINT = b"\x04" + bytes(96)  # replaced below when the vectors are present
if snp_vector_names():
    from kbs.trust.x509 import load_certificates

    _gsg = vectors_dir() / "snp" / "milan-v2-gsg"
    REAL_REPORT = (_gsg / "report.bin").read_bytes()
    REAL_VCEK_POINT = load_certificates((_gsg / "vcek.der").read_bytes())[0].public_key_bits
else:
    REAL_REPORT = SEEDS[-1]


def _check_parse(data: bytes) -> None:
    try:
        report = parse_report(data)
    except MalformedEvidence as exc:
        assert exc.check.startswith("report.")
        return
    # Accepted: the decoded fields are the bytes at their offsets.
    raw = report.raw
    assert len(data) == native.SNP_REPORT_SIZE and 2 <= raw.version <= 5
    assert raw.measurement == data[0x90:0xC0] and raw.chip_id == data[0x1A0:0x1E0]
    assert raw.reported_tcb == int.from_bytes(data[0x180:0x188], "little")
    assert raw.signature_r == data[0x2A0:0x2D0][::-1] and not any(data[0x330:])


@given(st.binary(max_size=2 * 1184))
def test_arbitrary_bytes(data: bytes) -> None:
    _check_parse(data)


@given(st.binary(min_size=1184, max_size=1184))
def test_arbitrary_report_sized_bytes(data: bytes) -> None:
    _check_parse(data)


@given(mutated(SEEDS))
def test_mutated_reports(data: bytes) -> None:
    _check_parse(data)


@given(mutated([REAL_REPORT], max_edits=3))
def test_mutated_signed_report_never_verifies(data: bytes) -> None:
    status = native.snp_verify_status(data, REAL_VCEK_POINT)
    if data != REAL_REPORT and snp_vector_names():
        assert status != native.lib.KBS_OK


@given(st.binary(max_size=200), mutated([REAL_VCEK_POINT], max_edits=4))
def test_arbitrary_keys_never_crash(_: bytes, point: bytes) -> None:
    status = native.snp_verify_status(REAL_REPORT, point)
    if point != REAL_VCEK_POINT:
        assert status != native.lib.KBS_OK
