"""Fuzz the C TDX quote parser and the one-call verifier: arbitrary bytes, generic mutations of the real
and synthetic quotes, and structure-aware edits of the length and type fields.

Only typed errors may come out (MalformedEvidence with a `quote.` check from the parser, EvidenceError
from the verifier), an accepted quote must be consistent with its bytes, and a quote edited anywhere
before its PCK chain must never verify.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs import native
from kbs.errors import EvidenceError, MalformedEvidence
from tests.conftest import vectors_dir
from tests.tdx_quotes import QuoteKeys, build_quote, layout, real_quotes

_KEYS = QuoteKeys()
SYNTHETIC = [build_quote(_KEYS, version=v, body_type=t, qe_auth_data=bytes(range(a)), pck_chain=b"PEM" * c,
                         padding=p)[0]
             for v, t, a, c, p in ((4, 2, 32, 3, 0), (5, 2, 0, 0, 5), (5, 3, 32, 1, 70), (5, 3, 1, 10, 0))]
REAL = real_quotes(vectors_dir())
SEEDS = [q.data for q in REAL] + SYNTHETIC
# (quote, its PCK point): the real ones (trailing bytes cut where they are not zero) and a synthetic one.
_PARSED = [(native.tdx_parse(q.data, allow_trailing_bytes=True), q.data, q.pck_point) for q in REAL[:4]]
SIGNED = [(d[:p.signed_size + 4 + p.signature_data_len] if p.extra_bytes else d, k) for p, d, k in _PARSED]
SIGNED.append((SYNTHETIC[2], _KEYS.pck_point))


def pck_data_offset(q: native.TdxQuote) -> int:
    """Where the inner (type 5) certification data starts: everything before it is structure or signed."""
    inner = q.signature_data_len - 134 - 384 - 64 - 2 - len(q.qe_auth_data) - 6
    return q.signed_size + 4 + q.signature_data_len - inner


def check_parse(data: bytes, allow_trailing_bytes: bool = False) -> native.TdxQuote | None:
    try:
        q = native.tdx_parse(data, allow_trailing_bytes=allow_trailing_bytes)
    except MalformedEvidence as exc:
        assert exc.check.startswith("quote."), exc.check
        return None
    end = q.signed_size + 4 + q.signature_data_len
    assert q.version in (4, 5) and q.att_key_type == 2 and q.tee_type == 0x81 and q.body_type in (2, 3)
    assert q.body_size == (648 if q.body_type == 3 else 584) and (q.version == 5 or q.body_type == 2)
    assert q.raw_header == data[:48] and q.raw_body == data[q.signed_size - q.body_size:q.signed_size]
    assert q.signature == data[q.signed_size + 4:q.signed_size + 68]
    assert q.qe_report.raw == data[q.signed_size + 138:q.signed_size + 522]
    chain_at = pck_data_offset(q)
    inner = end - chain_at
    assert struct.unpack_from("<I", data, chain_at - 4)[0] == inner and end <= len(data)
    assert data[chain_at:chain_at + len(q.pck_chain_pem)] == q.pck_chain_pem
    assert inner - len(q.pck_chain_pem) in (0, 1) and (inner == len(q.pck_chain_pem) or data[end - 1] == 0)
    assert q.padding + len(q.extra_bytes) == len(data) - end
    assert allow_trailing_bytes or (q.extra_bytes == b"" and not any(data[end:]))
    assert q.td_attributes == int.from_bytes(q.raw_body[120:128], "little")
    return q


@given(st.binary(max_size=1600))
def test_arbitrary_bytes(data: bytes) -> None:
    check_parse(data)
    check_parse(data, allow_trailing_bytes=True)


@given(st.sampled_from(SYNTHETIC[:3]), st.binary(max_size=1400))
def test_arbitrary_bytes_behind_a_valid_header(seed: bytes, tail: bytes) -> None:
    check_parse(seed[:54] + tail)
    check_parse(seed[:48] + tail)


@given(mutated(SEEDS))
def test_mutated_quotes(data: bytes) -> None:
    check_parse(data)
    check_parse(data, allow_trailing_bytes=True)


# Every length and type field of a quote with `chain` bytes of PCK data, as (offset, struct format).
def _fields(version: int, body_type: int, auth: int, chain: int) -> list[tuple[int, str]]:
    lay = layout(version, body_type, auth, chain)
    fields = [(0, "<H"), (2, "<H"), (4, "<I"), (lay.sig_data_len_offset, "<I"), (lay.cert_type, "<H"),
              (lay.cert_size, "<I"), (lay.qe_auth_size, "<H"), (lay.pck_type, "<H"), (lay.pck_size, "<I")]
    return fields + ([(48, "<H"), (50, "<I")] if version == 5 else [])


FIELDS = _fields(5, 3, 32, 3)
INTERESTING = [0, 1, 2, 3, 4, 5, 6, 7, 32, 383, 384, 584, 648, 0x7F, 0x80, 0xFF, 0xFFFF, 2**31, 2**32 - 1]


@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(INTERESTING), st.integers(-2, 2)),
                min_size=1, max_size=3), st.integers(0, 80))
def test_structure_aware_length_fields(edits: list[tuple[tuple[int, str], int, int]], padding: int) -> None:
    data = bytearray(SYNTHETIC[2] + bytes(padding))
    for (offset, fmt), value, delta in edits:
        width = struct.calcsize(fmt)
        current = struct.unpack_from(fmt, data, offset)[0]
        new = value if delta == 0 else current + delta  # an interesting value, or the true one nudged
        struct.pack_into(fmt, data, offset, new % (1 << 8 * width))
    q = check_parse(bytes(data))
    status = native.tdx_verify_status(bytes(data), _KEYS.pck_point)
    if q is None:
        assert native.lib.KBS_ERR_TDX_HEADER_TRUNCATED <= status <= native.lib.KBS_ERR_TDX_TRAILING_BYTES
    elif bytes(data[:q.signed_size]) != SYNTHETIC[2][:q.signed_size]:
        assert status != native.lib.KBS_OK


@given(st.sampled_from(range(len(SIGNED))), st.data())
def test_mutated_signed_quotes_never_verify(which: int, draw: st.DataObject) -> None:
    good, point = SIGNED[which]
    data = draw.draw(mutated([good], max_edits=3))
    try:
        q = native.tdx_verify(data, point)
    except EvidenceError as exc:
        assert exc.check.startswith("quote."), exc.check
        return
    # Accepted: only the PCK chain (unsigned here, judged by the trust layer) or zero padding differ.
    chain_at = pck_data_offset(q)
    assert data[:chain_at] == good[:chain_at] and not any(data[q.signed_size + 4 + q.signature_data_len:])


@given(mutated([b"\x04" + bytes(64), _KEYS.pck_point], max_edits=4), st.sampled_from(range(len(SIGNED))))
def test_arbitrary_pck_keys_never_crash(point: bytes, which: int) -> None:
    good, real_point = SIGNED[which]
    status = native.tdx_verify_status(good, point)
    assert status == native.lib.KBS_OK if point == real_point else status != native.lib.KBS_OK
