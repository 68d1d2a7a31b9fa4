"""Fuzz the C certificate-table parser against a reference model of its rules, and the
certificate parser that reads what the table carries."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs import native
from kbs.errors import KbsError, MalformedEvidence
from kbs.evidence.snp.certtable import GUID_ARK, GUID_ASK, GUID_VCEK, build_cert_table
from kbs.trust.x509 import parse_certificate
from tests.conftest import vectors_dir

CERT_SEEDS = [p.read_bytes() for p in sorted((vectors_dir() / "snp").glob("*/vcek.der"))] or [b"\x30\x00"]


def model(table: bytes) -> list[tuple[bytes, int, int]] | str:
    """The table rules (reference/snp.md §4), written plainly in Python."""
    if not table:
        return []
    entries = []
    pos = 0
    while True:
        if pos + 24 > len(table):
            return "unterminated"
        if table[pos:pos + 24] == bytes(24):
            break
        entries.append(table[pos:pos + 24])
        pos += 24
    if len(entries) > 64:
        return "too many"
    header = pos + 24
    out = []
    for e in entries:
        offset, length = struct.unpack_from("<II", e, 16)
        if offset < header:
            return "offset"
        if offset + length > len(table):
            return "bounds"
        out.append((e[:16], offset, length))
    return out


def _compare(table: bytes) -> None:
    want = model(table)
    try:
        got = [(e.guid, e.offset, e.length) for e in native.snp_certtable_parse(table)]
    except MalformedEvidence as exc:
        assert isinstance(want, str), (want, exc)
        return
    assert got == want


TABLE_SEEDS = [build_cert_table([(GUID_VCEK, c), (GUID_ASK, c[:100]), (GUID_ARK, b"")]) for c in CERT_SEEDS]


@given(st.binary(max_size=400))
def test_arbitrary_tables(data: bytes) -> None:
    _compare(data)


@given(mutated(TABLE_SEEDS))
def test_mutated_tables(data: bytes) -> None:
    _compare(data)


@given(st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1)), max_size=70), st.binary(max_size=300))
def test_structured_tables(entries: list[tuple[bytes, int, int]], blobs: bytes) -> None:
    header = b"".join(g + struct.pack("<II", o, n) for g, o, n in entries)
    _compare(header + bytes(24) + blobs)


@given(mutated(CERT_SEEDS, max_edits=4))
def test_mutated_certificates_fail_cleanly(der: bytes) -> None:
    try:
        cert = parse_certificate(der)
    except KbsError:
        return
    assert cert.der == der and cert.tbs in der
