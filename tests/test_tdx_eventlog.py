"""The CC event log: Trustee's sample decoded as Trustee decodes it, RTMR replay, and hostile logs refused.

Trustee's sample (`CCEL_data`, a whole 1 MiB td-shim log area) is read in place from KBS_VECTORS.
Synthetic logs come from tests/ccel_synth.py, with RTMRs computed independently of the parser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from kbs.errors import EvidenceError, MalformedEvidence
from kbs.evidence.tdx import eventlog as el
from kbs.evidence.tdx.eventlog import check_rtmrs, decode_cc_eventlog, parse_eventlog, replay_rtmrs
from tests import ccel_synth as cs
from tests.conftest import vector_file


def _vector(name: str) -> Path:
    return vector_file("trustee", "evidence", "tdx", name)


@pytest.fixture(scope="module")
def ccel() -> bytes:
    return _vector("CCEL_data").read_bytes()


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_vector("parse_tdx_claims_expected.json").read_text())
    return document


def refused(data: bytes, check: str) -> MalformedEvidence:
    with pytest.raises(MalformedEvidence) as info:
        parse_eventlog(data)
    assert info.value.check == check, str(info.value)
    return info.value


# --- Trustee's sample ---------------------------------------------------------------------------------

def test_trustee_sample_events_are_decoded_as_trustee_decodes_them(ccel: bytes, expected: dict[str, Any]) -> None:
    log = parse_eventlog(ccel)
    assert log.algorithm_names == ["SHA-384"] and log.vendor_info == b"td-shim"
    assert log.claims() == expected["uefi_event_logs"]
    assert [e.type_name for e in log.events] == ["EV_PLATFORM_CONFIG_FLAGS", "EV_SEPARATOR", "EV_SEPARATOR",
                                                 "EV_EFI_PLATFORM_FIRMWARE_BLOB2", "EV_PLATFORM_CONFIG_FLAGS"]
    # The rest of the 1 MiB log area is the zero end marker and zero fill.
    assert log.end == 9822 and not any(ccel[log.end:])


def test_trustee_sample_replays_to_what_its_digests_say(ccel: bytes, expected: dict[str, Any]) -> None:
    """Replay computed here from the expected JSON's digests, independently of the parser."""
    extends = [(e["index"], bytes.fromhex(e["digests"][0]["digest"])) for e in expected["uefi_event_logs"]]
    want = cs.replay(extends)
    assert replay_rtmrs(parse_eventlog(ccel)) == want
    assert want[0].hex().startswith("2dc712306a963ead") and want[1].hex().startswith("0fa3be56af61208b")
    assert want[2] == want[3] == bytes(48)
    check_rtmrs(parse_eventlog(ccel), want)


def test_trustee_sample_log_is_not_the_sample_quotes_log(ccel: bytes, expected: dict[str, Any]) -> None:
    """Trustee pairs CCEL_data with tdx_quote_4.dat in its claims test, which never replays: the
    quote's RTMR0/RTMR1 (e940…, 559c…) are not what the log extends to, so its verifier (which does
    replay) would refuse the pair.  We refuse it too, naming RTMR0."""
    body = expected["quote"]["body"]
    quote_rtmrs = [bytes.fromhex(body[f"rtmr_{i}"]) for i in range(4)]
    log = parse_eventlog(ccel)
    assert replay_rtmrs(log)[0] != quote_rtmrs[0] and replay_rtmrs(log)[1] != quote_rtmrs[1]
    with pytest.raises(EvidenceError) as info:
        check_rtmrs(log, quote_rtmrs)
    assert info.value.check == "eventlog.rtmr" and "RTMR0" in str(info.value)


def test_the_attester_form_of_the_sample_parses_the_same(ccel: bytes) -> None:
    """The CoCo attester trims the log area at its end marker and ends with 0xFF * 8, base64."""
    full = parse_eventlog(ccel)
    trimmed = ccel[:full.end] + cs.END
    log = parse_eventlog(decode_cc_eventlog(base64.b64encode(trimmed).decode()))
    assert log.claims() == full.claims() and log.end == full.end


def test_every_truncation_of_the_sample_is_refused_or_a_prefix(ccel: bytes) -> None:
    full = parse_eventlog(ccel)
    boundaries = {e.offset: i for i, e in enumerate(full.events)} | {full.end: len(full.events)}
    for cut in range(full.end + 8):
        data = ccel[:cut]
        try:
            log = parse_eventlog(data)
        except MalformedEvidence as exc:
            assert exc.check.startswith("eventlog."), exc.check
            continue
        # Accepted only at an event boundary (a shorter, valid log: its replay will not match the quote).
        assert cut in boundaries or cut >= full.end + 8, cut
        assert log.events == full.events[:boundaries.get(cut, len(full.events))]


# --- synthetic logs: replay -----------------------------------------------------------------------------

def test_synthetic_log_replays_to_chosen_rtmrs() -> None:
    data, rtmrs = cs.sample_log()
    log = parse_eventlog(data)
    assert replay_rtmrs(log) == rtmrs
    check_rtmrs(log, rtmrs)
    assert all(e.digest_matches_event for e in log.events)
    assert [e.rtmr for e in log.events] == [0, 0, 0, 1, 1, 1, 2, 3]


@pytest.mark.parametrize("which", range(8))
def test_one_flipped_digest_is_refused_by_replay(which: int) -> None:
    data, rtmrs = cs.sample_log()
    log = parse_eventlog(data)
    offset = log.events[which].offset + 12 + 2  # index, type, count, algorithm id: the digest's first byte
    flipped = bytearray(data)
    flipped[offset] ^= 0x01
    bad = parse_eventlog(bytes(flipped))
    assert not bad.events[which].digest_matches_event
    with pytest.raises(EvidenceError) as info:
        check_rtmrs(bad, rtmrs)
    assert info.value.check == "eventlog.rtmr"
    assert f"RTMR{log.events[which].rtmr}" in str(info.value)


def test_a_flipped_rtmr_in_the_quote_is_refused() -> None:
    data, rtmrs = cs.sample_log()
    for i in range(4):
        quoted = list(rtmrs)
        quoted[i] = bytes([quoted[i][0] ^ 0x80]) + quoted[i][1:]
        with pytest.raises(EvidenceError) as info:
            check_rtmrs(parse_eventlog(data), quoted)
        assert info.value.check == "eventlog.rtmr" and f"RTMR{i}" in str(info.value)


def test_event_data_not_matching_its_digest_is_reported_not_refused() -> None:
    """Events whose digest is of something else (td_hob, kernel images) are normal: the digest, not the
    data, is what extends the RTMR.  Trustee reports digest_matches_event: false."""
    digest = hashlib.sha384(b"the kernel image").digest()
    data = cs.build_log([cs.event(2, cs.EV_EFI_BOOT_SERVICES_APPLICATION, cs.image_load([cs.file_node("kernel")]),
                                  [(cs.SHA384, digest)])])
    log = parse_eventlog(data)
    assert not log.events[0].digest_matches_event
    assert replay_rtmrs(log)[1] == cs.replay([(2, digest)])[1]


def test_multi_bank_log_replays_the_sha384_bank() -> None:
    header = cs.spec_id_event(((cs.SHA256, 32), (cs.SHA384, 48), (cs.SHA512, 64)))
    body = b"multi"
    digests = [(cs.SHA256, cs.digest_of(body, cs.SHA256)), (cs.SHA384, cs.digest_of(body)),
               (cs.SHA512, cs.digest_of(body, cs.SHA512))]
    log = parse_eventlog(cs.build_log([cs.event(1, cs.EV_EFI_ACTION, body, digests)], header=header))
    assert log.events[0].digest_matches_event
    assert [d["alg"] for d in log.claims()[0]["digests"]] == ["SHA-256", "SHA-384", "SHA-512"]
    assert replay_rtmrs(log)[0] == cs.replay([(1, cs.digest_of(body))])[0]


def test_aael_only_log_with_the_attesters_header() -> None:
    """With no CCEL, the CoCo attester writes a fixed header (zero signature, SHA-384 and SM3 banks)."""
    header = cs.spec_id_event(((cs.SHA384, 48), (cs.SM3, 32)), signature=bytes(16), vendor=b"")
    entry = cs.aael("github.com/confidential-containers", "CreateContainer", "not json {")
    log = parse_eventlog(cs.build_log([cs.event(4, cs.EV_EVENT_TAG, entry)], header=header))
    details = log.claims()[0]["details"]
    assert details == {"string": "github.com/confidential-containers CreateContainer not json {",
                       "unicode_name": "AAEL",
                       "data": {"domain": "github.com/confidential-containers", "operation": "CreateContainer",
                                "content": "not json {"}}


# --- event details, Trustee's way --------------------------------------------------------------------

def test_details_of_the_synthetic_log() -> None:
    log = parse_eventlog(cs.sample_log()[0])
    details = [e["details"] for e in log.claims()]
    assert details[0] == {"string": "td_hob config"}
    assert details[1] == {"unicode_name": "SecureBoot", "unicode_name_length": 10, "variable_data": "AA==",
                          "variable_data_length": 1, "variable_name": "00010203-0405-0607-0809-0a0b0c0d0e0f"}
    assert details[2] == {}
    assert details[3] == {"device_paths": ["File(kernel)"]}  # what Trustee's default policy looks for
    assert details[4] == {"string": "LOADED_IMAGE::LoadOptions"}
    assert details[6] == {"string": "grub_cmd: linux /vmlinuz"}
    assert details[7]["data"]["content"] == {"image": "busybox", "digest": "sha256:00"}


@pytest.mark.parametrize(("node", "text"), [
    (cs.device_node(1, 1, bytes([1, 0])), "Pci(1,0)"),
    (cs.device_node(2, 1, struct.pack("<II", 0x0A0341D0, 0)), "ACPI(PNP0A03,0)"),
    (cs.device_node(3, 5, bytes([2, 3])), "USB(2,3)"),
    (cs.device_node(4, 1, struct.pack("<IQQ", 15, 0x2800, 0x35000) + bytes(range(16)) + bytes([2, 2])),
     "HD(15,GPT,03020100-0504-0706-0809-0A0B0C0D0E0F,0x2800,0x35000)"),
    (cs.device_node(4, 1, struct.pack("<IQQ", 0, 1, 2) + struct.pack("<I", 0xABCD) + bytes(12) + bytes([1, 1])),
     "HD(0,MBR,0x0000abcd)"),
    (cs.device_node(4, 3, bytes(range(16)) + b"\xaa"), "VenMedia(03020100-0504-0706-0809-0A0B0C0D0E0F,aa)"),
    (cs.file_node("\\EFI\\BOOT\\BOOTX64.EFI"), "File(\\EFI\\BOOT\\BOOTX64.EFI)"),
    (cs.device_node(5, 1, struct.pack("<HH", 2, 1) + b"disk\x00"), "BBS(HARD_DRIVE,disk,1)"),
    (cs.device_node(3, 0x0C, struct.pack("<IIHHHBII", 0x0A000002, 0x0A000001, 0, 0, 6, 1, 0, 0)),
     "IPv4(10.0.0.1,TCP,Static,10.0.0.2)"),
    (cs.device_node(9, 9, b"\x01\x02"), "Path(9,9,0102)"),
    (cs.device_node(1, 1, b"\x01"), "Path(1,1,01)"),  # too short for Pci: printed raw, as Trustee does
])
def test_device_path_nodes(node: bytes, text: str) -> None:
    data = cs.build_log([cs.event(2, cs.EV_EFI_BOOT_SERVICES_APPLICATION, cs.image_load([node]))])
    assert parse_eventlog(data).claims()[0]["details"] == {"device_paths": [text]}


@pytest.mark.parametrize(("data", "string"), [
    (b"\x2e\x00" + "kernel cmdline".encode("utf-16-le") + b"\x00\x00", "kernel cmdline"),  # GCE's form
    (b"\x2e\x00" + b"\x00\xd8" + b"\x00\x00", "\ufffd"),  # a lone surrogate, replaced
    (b"\xff\xfe\x00", "fffe00"),  # not UTF-8: hex of the data
])
def test_ipl_details(data: bytes, string: str) -> None:
    log = parse_eventlog(cs.build_log([cs.event(3, cs.EV_IPL, data)]))
    assert log.claims()[0]["details"] == {"string": string}


@pytest.mark.parametrize("content", ['{"a": NaN}', '{"a": 1e999}', "[" * 200 + "]" * 200, '"\\ud800"'])
def test_aael_content_that_serde_json_refuses_stays_text(content: str) -> None:
    log = parse_eventlog(cs.build_log([cs.event(4, cs.EV_EVENT_TAG, cs.aael("d", "op", content))]))
    assert log.claims()[0]["details"]["data"]["content"] == content
    json.dumps(log.claims()).encode()  # still JSON, still UTF-8


# --- hostile logs --------------------------------------------------------------------------------------

def test_every_truncation_of_a_synthetic_log_is_refused_or_a_prefix() -> None:
    data, _ = cs.sample_log()
    full = parse_eventlog(data)
    boundaries = {e.offset for e in full.events} | {full.end}
    for cut in range(len(data)):
        try:
            log = parse_eventlog(data[:cut])
        except MalformedEvidence as exc:
            assert exc.check.startswith("eventlog."), exc.check
            continue
        assert cut in boundaries
        assert log.events == full.events[:len(log.events)]


def _u32_at(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


@pytest.mark.parametrize("value", [49, 0x1000, 2**31, 2**32 - 1])
def test_event_size_past_the_end(value: int) -> None:
    data = cs.build_log([cs.event(1, cs.EV_EFI_ACTION, b"abc")])
    size_at = len(cs.spec_id_event()) + 12 + 50
    refused(_u32_at(data, size_at, value), "eventlog.truncated")


@pytest.mark.parametrize("value", [2, 1000, 2**32 - 1])
def test_huge_digest_counts(value: int) -> None:
    data = cs.build_log([cs.event(1, cs.EV_EFI_ACTION, b"abc")])
    refused(_u32_at(data, len(cs.spec_id_event()) + 8, value), "eventlog.digest")


@pytest.mark.parametrize("value", [0, 9, 2**32 - 1])
def test_huge_algorithm_counts(value: int) -> None:
    refused(_u32_at(cs.build_log([]), 32 + 24, value), "eventlog.algorithms")


@pytest.mark.parametrize("value", [0, 30, 2**32 - 1])
def test_spec_id_size_wrong(value: int) -> None:
    refused(_u32_at(cs.build_log([]), 28, value),
            "eventlog.truncated" if value in (0, 30) or value > 1000 else "eventlog.header")


def test_spec_id_size_larger_than_its_fields() -> None:
    refused(cs.build_log([], header=cs.spec_id_event(extra=b"\x00")), "eventlog.header")


def test_too_many_events() -> None:
    one = cs.event(1, cs.EV_SEPARATOR, bytes(4))
    assert len(parse_eventlog(cs.build_log([one] * el.MAX_EVENTS)).events) == el.MAX_EVENTS
    refused(cs.build_log([one] * (el.MAX_EVENTS + 1)), "eventlog.count")


def test_too_large() -> None:
    refused(cs.build_log([]) + bytes(el.MAX_EVENTLOG_BYTES), "eventlog.size")
    refused(b"", "eventlog.size")


@pytest.mark.parametrize("index", [5, 16, 17, 2**31, 2**32 - 1])
def test_event_for_an_unknown_rtmr_index(index: int) -> None:
    refused(cs.build_log([cs.event(index, cs.EV_EFI_ACTION, b"x")]), "eventlog.index")


def test_index_zero_is_for_informational_events_only() -> None:
    refused(cs.build_log([cs.event(0, cs.EV_EFI_ACTION, b"x")]), "eventlog.index")
    refused(cs.build_log([cs.event(1, cs.EV_NO_ACTION, b"x", [(cs.SHA384, bytes(48))])]), "eventlog.index")
    refused(cs.build_log([cs.event(0, cs.EV_NO_ACTION, b"x")]), "eventlog.digest")  # non-zero digest
    log = parse_eventlog(cs.build_log([cs.event(0, cs.EV_NO_ACTION, b"SP800-155 Event3", [(cs.SHA384, bytes(48))])]))
    assert replay_rtmrs(log) == (bytes(48),) * 4 and log.events[0].rtmr is None


@pytest.mark.parametrize("event_type", [0x13, 0x7FFFFFFF, 0x80000011, 0x800000E3, 2**32 - 1])
def test_unknown_event_type(event_type: int) -> None:
    refused(cs.build_log([cs.event(1, event_type, b"x")]), "eventlog.event_type")


@pytest.mark.parametrize("digests", [
    [(cs.SHA256, bytes(32))],  # an algorithm the header does not list
    [(cs.SHA384, bytes(48)), (cs.SHA384, bytes(48))],  # twice
    [(0x99, bytes(48))],  # unknown
])
def test_bad_digest_lists(digests: list[tuple[int, bytes]]) -> None:
    refused(cs.build_log([cs.event(1, cs.EV_EFI_ACTION, b"x", digests)]), "eventlog.digest")


def test_rtmr_event_without_a_sha384_digest() -> None:
    header = cs.spec_id_event(((cs.SHA256, 32), (cs.SHA384, 48)))
    data = cs.build_log([cs.event(1, cs.EV_EFI_ACTION, b"x", [(cs.SHA256, cs.digest_of(b"x", cs.SHA256))])],
                        header=header)
    refused(data, "eventlog.digest")


@pytest.mark.parametrize("algorithms", [
    ((cs.SHA256, 32),),  # no SHA-384 bank
    ((cs.SHA384, 32),),  # wrong size
    ((cs.SHA384, 48), (cs.SHA384, 48)),
    ((cs.SHA1, 20), (cs.SHA384, 48)),  # SHA-1 banks are not supported (Trustee fails on them too)
    ((0x1, 48), (cs.SHA384, 48)),  # RSA is no hash
])
def test_bad_headers(algorithms: tuple[tuple[int, int], ...]) -> None:
    refused(cs.build_log([], header=cs.spec_id_event(algorithms)), "eventlog.algorithms")


def test_header_shapes() -> None:
    refused(cs.build_log([], header=cs.spec_id_event(signature=b"Spec ID Event02\x00")), "eventlog.header")
    refused(cs.build_log([], header=cs.event(0, cs.EV_SEPARATOR, bytes(4))), "eventlog.header")
    refused(b"CCEL" + bytes(52), "eventlog.header")  # the ACPI table, not the log area
    assert parse_eventlog(cs.build_log([], header=cs.spec_id_event(index=1))).events == ()  # TDVF's index


def test_end_markers_and_fill() -> None:
    one = [cs.event(1, cs.EV_SEPARATOR, bytes(4))]
    for end in (b"", cs.END, bytes(8), bytes(8) + bytes(100), cs.END + b"\xff\x00" * 50):
        assert len(parse_eventlog(cs.build_log(one, end=end)).events) == 1
    for end in (b"\x00", bytes(7), b"\xff" * 3):
        refused(cs.build_log(one, end=end), "eventlog.truncated")
    refused(cs.build_log(one, end=cs.END + b"\x00\x01"), "eventlog.trailing")
    refused(cs.build_log(one, end=cs.END + cs.event(1, cs.EV_SEPARATOR, bytes(4))), "eventlog.trailing")


@pytest.mark.parametrize(("event_type", "data"), [
    (cs.EV_EFI_ACTION, b"\xff"),  # not UTF-8
    (cs.EV_EFI_PLATFORM_FIRMWARE_BLOB2, b""),
    (cs.EV_EFI_PLATFORM_FIRMWARE_BLOB2, b"\x00abc"),
    (cs.EV_EFI_PLATFORM_FIRMWARE_BLOB2, b"\x09abc"),
    (cs.EV_EFI_VARIABLE_DRIVER_CONFIG, bytes(31)),
    (cs.EV_EFI_VARIABLE_DRIVER_CONFIG, bytes(16) + struct.pack("<QQ", 2**62, 0)),
    (cs.EV_EFI_VARIABLE_DRIVER_CONFIG, bytes(16) + struct.pack("<QQ", 1, 2**63) + b"A\x00"),
    (cs.EV_EFI_VARIABLE_DRIVER_CONFIG, bytes(16) + struct.pack("<QQ", 1, 0) + b"\x00\xd8"),  # lone surrogate
    (cs.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(31)),
    (cs.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(24) + struct.pack("<Q", 3)),
    (cs.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(24) + struct.pack("<Q", 2**64 - 1) + bytes(8)),
    (cs.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(24) + struct.pack("<Q", 6) + bytes(6)),  # 2-byte path
    (cs.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(24) + struct.pack("<Q", 12) + b"\x04\x04\x00\x00" + bytes(8)),
    (cs.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(24) + struct.pack("<Q", 12) + b"\x04\x04\xff\x00" + bytes(8)),
    (cs.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(24) + struct.pack("<Q", 10) + b"\x04\x04\x04\x00\x01\x02" + bytes(4)),
    (cs.EV_EVENT_TAG, bytes(7)),
    (cs.EV_EVENT_TAG, struct.pack("<II", 1, 100)),
    (cs.EV_EVENT_TAG, cs.tagged(cs.AAEL, b"no-spaces")),
    (cs.EV_EVENT_TAG, cs.tagged(cs.AAEL, b"one space")),
    (cs.EV_EVENT_TAG, cs.tagged(cs.AAEL, b"d op \xff")),
    (cs.EV_IPL, b"\x2e"),
    (cs.EV_IPL, b"\x2e\x00"),
    (cs.EV_IPL, b"\x2e\x00\x41"),
])
def test_event_data_its_decoder_rejects(event_type: int, data: bytes) -> None:
    """Trustee refuses the whole log when an event's decoder fails (or its Rust code panics); so do we."""
    refused(cs.build_log([cs.event(2, event_type, data)]), "eventlog.event")


@pytest.mark.parametrize("text", ["not base64!", "QUJD=", "QUJ", "QU JD", 5, None, "Q" * (el.MAX_EVENTLOG_BYTES * 2)])
def test_cc_eventlog_encoding(text: object) -> None:
    with pytest.raises(MalformedEvidence) as info:
        decode_cc_eventlog(text)
    assert info.value.check in ("eventlog.base64", "eventlog.size")


def test_check_rtmrs_wants_four() -> None:
    with pytest.raises(ValueError, match="4 RTMRs"):
        check_rtmrs(parse_eventlog(cs.build_log([])), [bytes(48)] * 3)
