"""Fuzz the CC event log parser: arbitrary bytes, mutations of Trustee's real log and of synthetic logs,
and logs built from random events.  Only typed errors (MalformedEvidence, check eventlog.*); whatever
is accepted replays, and its claims are JSON that encodes as UTF-8."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs.errors import MalformedEvidence
from kbs.evidence.tdx.eventlog import (
    EVENT_TYPES,
    EventLog,
    check_rtmrs,
    decode_cc_eventlog,
    parse_eventlog,
    replay_rtmrs,
)
from tests import ccel_synth as cs
from tests.conftest import vectors_dir

_REAL = vectors_dir() / "trustee" / "evidence" / "tdx" / "CCEL_data"
SEEDS = [cs.sample_log()[0], cs.build_log([]),
         cs.build_log([cs.event(4, cs.EV_EVENT_TAG, cs.aael("d", "op", '{"a": [1, 2.5, null]}'))],
                      header=cs.spec_id_event(((cs.SHA384, 48), (cs.SM3, 32)), signature=bytes(16), vendor=b""))]
if _REAL.is_file():
    _real = _REAL.read_bytes()
    SEEDS.append(_real[:parse_eventlog(_real).end + 8])  # the events and the end marker, not 1 MiB of zeros

HEADER = cs.spec_id_event()
TYPES = [*sorted(EVENT_TYPES), 0x13, 0x80000011, 0xFFFFFFFF]


def _check(data: bytes) -> EventLog | None:
    try:
        log = parse_eventlog(data)
    except MalformedEvidence as exc:
        assert exc.check.startswith("eventlog."), exc.check
        return None
    assert log.end <= len(data) and sum(len(e.data) for e in log.events) <= len(data)
    for event in log.events:
        assert 0 <= event.index <= 4
        assert (event.rtmr is None) == (event.event_type == 0x3)
        assert event.rtmr is None or event.digest() is not None
    check_rtmrs(log, replay_rtmrs(log))
    json.dumps(log.claims(), ensure_ascii=False).encode("utf-8")
    return log


@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@given(st.binary(max_size=4096))
def test_arbitrary_bytes_after_a_valid_header(data: bytes) -> None:
    _check(HEADER + data)


@given(mutated(SEEDS, max_edits=6))
def test_mutated_logs(data: bytes) -> None:
    _check(data)


_events = st.lists(st.tuples(st.integers(0, 6), st.sampled_from(TYPES), st.binary(max_size=96)), max_size=12)


@given(_events, st.sampled_from([cs.END, bytes(8), b"", b"\x00" * 3]))
def test_logs_of_random_events(entries: list[tuple[int, int, bytes]], end: bytes) -> None:
    data = cs.build_log([cs.event(i, t, d) for i, t, d in entries], end=end)
    log = _check(data)
    if log is not None:  # then every event was for RTMR0..3 and replays as computed independently
        assert replay_rtmrs(log) == cs.replay((i, cs.digest_of(d)) for i, _, d in entries)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=150).map(lambda b: base64.b64encode(b).decode())))
def test_cc_eventlog_text(text: str) -> None:
    try:
        data = decode_cc_eventlog(text)
    except MalformedEvidence as exc:
        assert exc.check.startswith("eventlog.")
        return
    _check(data)
