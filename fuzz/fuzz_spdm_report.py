"""Fuzz the C NVIDIA GPU report parser (SPDM 1.1 GET_MEASUREMENTS + MEASUREMENTS) and its verifier:
arbitrary bytes, generic mutations of the real and synthetic reports, structure-aware edits of every
count, length, index and type field, and synthetic reports of random shapes.

A plain-Python model of the layout rules of reference/gpu.md §1 (`model` below, written from the
document, not from the C) must agree with the C core on every input: accept or refuse, the status, where
it says the error is (offset, block or TLV, value seen and wanted), and on acceptance every block, TLV
and offset.  Only typed errors may come out (MalformedEvidence labelled nvgpu.parse, SignatureInvalid
labelled nvgpu.signature), and a signed report edited anywhere but in its zero padding never verifies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs import native
from kbs.errors import EvidenceError, MalformedEvidence
from tests.conftest import vectors_dir
from tests.gpu_reports import real_reports
from tests.spdm_synth import Block, SyntheticSpdm, digest_blocks, hopper_opaque, point_of, sign

lib = native.lib
KNOWN_TYPES = frozenset([*range(1, 27), *range(32, 37)])


@dataclass
class Model:
    """What the layout rules say about some bytes: the status, where and what, and what was found."""

    status: int = 0
    offset: int = 0
    item: int = 0
    seen: int = 0
    wanted: int = 0
    blocks: list[tuple[int, int, int, bytes]] = field(default_factory=list)  # index, spec, type, value
    opaque: list[tuple[int, bytes, int]] = field(default_factory=list)  # type, value, offset
    responder_nonce_offset: int = 0
    signed_size: int = 0
    trailing: int = 0


class _Refused(Exception):
    def __init__(self, status: int, offset: int, item: int, seen: int, wanted: int) -> None:
        super().__init__(status)
        self.args5 = (status, offset, item, seen, wanted)


def model(data: bytes, no_padding: bool = False) -> Model:
    m = Model()
    try:
        _walk(data, no_padding, m)
    except _Refused as r:
        m.status, m.offset, m.item, m.seen, m.wanted = r.args5
    return m


def _walk(d: bytes, no_padding: bool, m: Model) -> None:
    def refuse(status: int, offset: int, seen: int, wanted: int, item: int = 0) -> None:
        raise _Refused(status, offset, item, seen, wanted)

    n = len(d)
    # The request: 0x11, GET_MEASUREMENTS, signature requested, all measurements, nonce, slot 0-7.
    if n < 37:
        refuse(lib.KBS_ERR_SPDM_REQUEST_TRUNCATED, 0, n, 37)
    for at, want, status in ((0, 0x11, lib.KBS_ERR_SPDM_REQUEST_VERSION), (1, 0xE0, lib.KBS_ERR_SPDM_REQUEST_CODE),
                             (2, 0x01, lib.KBS_ERR_SPDM_REQUEST_ATTRIBUTES),
                             (3, 0xFF, lib.KBS_ERR_SPDM_REQUEST_OPERATION)):
        if d[at] != want:
            refuse(status, at, d[at], want)
    slot = d[36]
    if slot > 7:
        refuse(lib.KBS_ERR_SPDM_REQUEST_SLOT, 36, slot, 7)
    # The response header.
    if n < 45:
        refuse(lib.KBS_ERR_SPDM_RESPONSE_TRUNCATED, 37, n - 37, 8)
    for at, want, status in ((37, 0x11, lib.KBS_ERR_SPDM_RESPONSE_VERSION),
                             (38, 0x60, lib.KBS_ERR_SPDM_RESPONSE_CODE), (39, 0, lib.KBS_ERR_SPDM_RESPONSE_PARAM1),
                             (40, slot, lib.KBS_ERR_SPDM_RESPONSE_SLOT)):
        if d[at] != want:
            refuse(status, at, d[at], want)
    count, record_length = d[41], int.from_bytes(d[42:45], "little")
    if count == 0:
        refuse(lib.KBS_ERR_SPDM_NO_BLOCKS, 41, 0, 1)
    record_end = 45 + record_length
    if record_end > n:
        refuse(lib.KBS_ERR_SPDM_RECORD_TRUNCATED, 42, record_length, n - 45)
    # Exactly `count` DMTF digest blocks fill the record; indices 1-254, each once.
    pos, first_use = 45, dict[int, int]()
    for i in range(count):
        left = record_end - pos
        if left == 0:
            refuse(lib.KBS_ERR_SPDM_BLOCK_COUNT, pos, i, count, i)
        if left < 4:
            refuse(lib.KBS_ERR_SPDM_BLOCK_TRUNCATED, pos, left, 4, i)
        index, spec, size = d[pos], d[pos + 1], int.from_bytes(d[pos + 2:pos + 4], "little")
        if not 1 <= index <= 254:
            refuse(lib.KBS_ERR_SPDM_BLOCK_INDEX, pos, index, 254, i)
        if index in first_use:
            refuse(lib.KBS_ERR_SPDM_BLOCK_DUPLICATE, pos, index, first_use[index], i)
        first_use[index] = i
        if spec != 1:
            refuse(lib.KBS_ERR_SPDM_BLOCK_SPEC, pos + 1, spec, 1, i)
        if size > left - 4:
            refuse(lib.KBS_ERR_SPDM_BLOCK_TRUNCATED, pos + 2, left - 4, size, i)
        if size < 3:
            refuse(lib.KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE, pos + 2, size, 3, i)
        value_type, value_size = d[pos + 4], int.from_bytes(d[pos + 5:pos + 7], "little")
        if value_type & 0x80:
            refuse(lib.KBS_ERR_SPDM_BLOCK_VALUE_TYPE, pos + 4, value_type, value_type & 0x7F, i)
        if value_size != size - 3:
            refuse(lib.KBS_ERR_SPDM_BLOCK_VALUE_SIZE, pos + 5, value_size, size - 3, i)
        m.blocks.append((index, spec, value_type, d[pos + 7:pos + 7 + value_size]))
        pos += 4 + size
    if pos != record_end:
        refuse(lib.KBS_ERR_SPDM_RECORD_TRAILING, pos, record_end - pos, 0, count)
    # Responder nonce, OpaqueLength, the TLVs (known types, each once, inside the opaque data).
    if n - record_end < 32:
        refuse(lib.KBS_ERR_SPDM_NONCE_TRUNCATED, record_end, n - record_end, 32)
    m.responder_nonce_offset, pos = record_end, record_end + 32
    if n - pos < 2:
        refuse(lib.KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED, pos, n - pos, 2)
    opaque_length = int.from_bytes(d[pos:pos + 2], "little")
    if opaque_length > n - pos - 2:
        refuse(lib.KBS_ERR_SPDM_OPAQUE_TRUNCATED, pos, opaque_length, n - pos - 2)
    pos += 2
    end, types = pos + opaque_length, dict[int, int]()
    while pos < end:
        i = len(m.opaque)
        if end - pos < 4:
            refuse(lib.KBS_ERR_SPDM_TLV_TRUNCATED, pos, end - pos, 4, i)
        kind, size = struct.unpack_from("<HH", d, pos)
        if kind not in KNOWN_TYPES:
            refuse(lib.KBS_ERR_SPDM_TLV_TYPE, pos, kind, 0, i)
        if kind in types:
            refuse(lib.KBS_ERR_SPDM_TLV_DUPLICATE, pos, kind, types[kind], i)
        types[kind] = i
        if size > end - pos - 4:
            refuse(lib.KBS_ERR_SPDM_TLV_OVERRUN, pos + 2, size, end - pos - 4, i)
        m.opaque.append((kind, d[pos + 4:pos + 4 + size], pos + 4))
        pos += 4 + size
    # The signature, then zero padding only (none at all with no_padding).
    if n - end < 96:
        refuse(lib.KBS_ERR_SPDM_SIGNATURE_TRUNCATED, end, n - end, 96)
    m.signed_size, m.trailing = end, n - end - 96
    for at in range(end + 96, n):
        if d[at]:
            refuse(lib.KBS_ERR_SPDM_TRAILING_BYTES, at, d[at], 0)
    if no_padding and m.trailing:
        refuse(lib.KBS_ERR_SPDM_PADDING, end + 96, m.trailing, 0)


def check(data: bytes, no_padding: bool = False) -> native.SpdmReport | None:
    """The C core and the model on the same bytes: the same verdict, the same where and what, the same
    report.  Returns the report when accepted."""
    m = model(data, no_padding)
    out = native.ffi.new("struct kbs_spdm_report *")
    status = int(lib.kbs_spdm_parse(data, len(data), int(no_padding), out))
    assert status == m.status, (native.status_name(status), native.status_name(m.status))
    if status != lib.KBS_OK:
        assert (int(out.error_offset), int(out.error_item), int(out.error_seen), int(out.error_wanted)) == \
            (m.offset, m.item, m.seen, m.wanted), native.status_name(status)
        try:
            native.spdm_parse(data, no_padding=no_padding)
        except MalformedEvidence as exc:
            assert exc.check == "nvgpu.parse" and str(exc)
        else:
            raise AssertionError("the C core refused, the Python API accepted")
        return None
    p = native.spdm_parse(data, no_padding=no_padding)
    assert [(b.index, b.spec, b.value_type, b.value) for b in p.blocks] == m.blocks
    assert [(f.type, f.value, f.offset) for f in p.opaque] == m.opaque
    assert (p.signed_size, p.trailing_zero_bytes, p.number_of_blocks) == (m.signed_size, m.trailing, len(m.blocks))
    assert p.request_nonce == data[4:36] and p.signature == data[m.signed_size:m.signed_size + 96]
    assert p.responder_nonce == data[m.responder_nonce_offset:m.responder_nonce_offset + 32]
    return p


KEY = ec.generate_private_key(ec.SECP384R1())
POINT = point_of(KEY)
SMALL = SyntheticSpdm(KEY, blocks=digest_blocks(3), opaque=[(3, b"570.1\0"), (6, bytes(8)), (11, b"\x55")])
SMALL_BYTES = SMALL.build()
SYNTHETIC = [SyntheticSpdm(KEY).build(), SMALL_BYTES, SyntheticSpdm(KEY, blocks=[Block(254, b"")], opaque=[],
                                                                        padding=bytes(3)).build()]
REAL = real_reports(vectors_dir())
SEEDS = [r.data for r in REAL[:6]] + [r.data for r in REAL if r.is_switch][:1] + SYNTHETIC
# (report, its key) pairs that verify: real ones and a synthetic one.
SIGNED = [(r.data, r.leaf_point) for r in REAL[:6] if r.genuine] + [(SYNTHETIC[1], POINT), (SYNTHETIC[2], POINT)]


@given(st.binary(max_size=1600))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)
    check(data, no_padding=True)


@given(st.sampled_from(SYNTHETIC), st.integers(0, 80), st.binary(max_size=600))
def test_arbitrary_bytes_behind_a_valid_prefix(seed: bytes, keep: int, tail: bytes) -> None:
    check(seed[:keep] + tail)


@given(mutated(SEEDS))
def test_mutated_reports(data: bytes) -> None:
    check(data)
    check(data, no_padding=True)


# Every count, length, index and type field of SMALL: (offset, width).
_S = 45 + 3 * 55 + 32
FIELDS = [(0, 1), (1, 1), (2, 1), (3, 1), (36, 1), (37, 1), (38, 1), (39, 1), (40, 1), (41, 1), (42, 3),
          *[(45 + 55 * i + k, w) for i in range(3) for k, w in ((0, 1), (1, 1), (2, 2), (4, 1), (5, 2))],
          (_S, 2), (_S + 2, 2), (_S + 4, 2), (_S + 12, 2), (_S + 14, 2), (_S + 24, 2), (_S + 26, 2)]
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 26, 27, 32, 36, 37, 47, 48, 51, 52, 55, 0x7F, 0x80, 0xFE, 0xFF, 0x100, 0xFFFF,
               0xFFFFFF]


@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(INTERESTING), st.integers(-2, 2)),
                min_size=1, max_size=3), st.integers(0, 40), st.booleans())
def test_structure_aware_fields(edits: list[tuple[tuple[int, int], int, int]], padding: int, resign: bool) -> None:
    """Each field set to an interesting value or nudged; re-signed or not.  Accepted only with its
    signature verifying if re-signed, never if not (the signed bytes changed)."""
    data = bytearray(SMALL.signed_part())
    for (offset, width), value, delta in edits:
        current = int.from_bytes(data[offset:offset + width], "little")
        new = value if delta == 0 else current + delta
        data[offset:offset + width] = (new % (1 << 8 * width)).to_bytes(width, "little")
    signed = bytes(data)
    changed = signed != SMALL.signed_part()
    report = signed + (sign(KEY, signed) if resign else SMALL_BYTES[len(signed):len(signed) + 96]) + bytes(padding)
    p = check(report)
    status = native.spdm_verify_status(report, POINT)
    if p is None:
        assert status == model(report).status
    elif p.signed_size == len(signed):
        assert status == (lib.KBS_OK if resign or not changed else lib.KBS_ERR_SPDM_SIG_INVALID)
    else:  # the signature is read from other bytes than the ones signed there
        assert status in (lib.KBS_ERR_SPDM_SIG_RANGE, lib.KBS_ERR_SPDM_SIG_INVALID)


@given(st.lists(st.tuples(st.integers(0, 255), st.sampled_from([0, 1, 2]), st.integers(0, 0xFF),
                          st.binary(max_size=60)), min_size=1, max_size=12),
       st.lists(st.tuples(st.sampled_from([0, 1, 3, 6, 11, 20, 26, 27, 31, 32, 36, 37, 255, 0xFFFF]),
                          st.binary(max_size=40)), max_size=8),
       st.integers(0, 255), st.integers(-3, 3), st.integers(-3, 3), st.integers(0, 7))
def test_synthetic_shapes(blocks: list[tuple[int, int, int, bytes]], opaque: list[tuple[int, bytes]], count: int,
                          record_delta: int, opaque_delta: int, slot: int) -> None:
    """Reports built with any indices, specifications, value types, TLV types (repeats included), and
    counts or lengths that may lie: the model and the C core agree, and what parses, verifies."""
    synth = SyntheticSpdm(KEY, slot=slot, blocks=[Block(i, v, spec=s, value_type=t) for i, s, t, v in blocks],
                          opaque=opaque, number_of_blocks=count if count % 4 else None)
    record = synth.record_bytes()
    synth.record_length = max(0, len(record) + record_delta)
    synth.opaque_length = max(0, len(synth.opaque_bytes()) + opaque_delta)
    data = synth.build()
    p = check(data)
    if p is not None and p.signed_size == len(synth.signed_part()):
        assert native.spdm_verify(data, POINT) == p


@given(st.sampled_from(range(len(SIGNED))), st.data())
def test_mutated_signed_reports_never_verify(which: int, draw: st.DataObject) -> None:
    good, point = SIGNED[which]
    data = draw.draw(mutated([good], max_edits=3))
    try:
        p = native.spdm_verify(data, point)
    except EvidenceError as exc:
        assert exc.check in ("nvgpu.parse", "nvgpu.signature"), exc.check
        return
    # Accepted: only zero padding may differ.
    assert data[:p.signed_size + 96] == good[:p.signed_size + 96] and not any(data[p.signed_size + 96:])


@given(mutated([POINT, b"\x04" + bytes(96)], max_edits=4), st.sampled_from(range(len(SIGNED))))
def test_arbitrary_keys_never_crash(point: bytes, which: int) -> None:
    good, real_point = SIGNED[which]
    status = native.spdm_verify_status(good, point)
    assert status == lib.KBS_OK if point == real_point else status in (
        lib.KBS_ERR_SPDM_KEY, lib.KBS_ERR_SPDM_SIG_INVALID)


def test_model_agrees_on_the_seeds() -> None:
    for seed in SEEDS:
        assert check(seed) is not None
    for good, _ in SIGNED:
        assert model(good).status == lib.KBS_OK
    assert model(SyntheticSpdm(KEY, opaque=[(27, b"")]).build()).status == lib.KBS_ERR_SPDM_TLV_TYPE
    assert model(SyntheticSpdm(KEY, opaque=hopper_opaque(extra=[(3, b"")])).build()).status == \
        lib.KBS_ERR_SPDM_TLV_DUPLICATE
