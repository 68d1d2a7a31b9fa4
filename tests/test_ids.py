"""Time-ordered ids (kbs.server.ids): what a guest's exchange inserts lands on its indexes' right edge, so a
group-commit batch writes fewer pages; the broker's sessions and attestations are made with them."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kbs.server.ids import time_ordered_id
from kbs.server.sessions import SessionCookies
from kbs.store.base import AttestationRecord, ReleaseRecord, Session
from kbs.store.sqlite import SqliteStore
from tests.amd_synth import SyntheticAmd
from tests.broker import SnpGuest, full_flow, run_broker
from tests.test_server_e2e import GOOD_MEASUREMENT, broker_config, provision, release_log

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
WAL_FRAME = 24 + 4096  # a frame's header and one page (SQLite's default page size)


def test_ids_are_32_hex_digits_unique_and_ordered_by_time() -> None:
    first = [time_ordered_id() for _ in range(5000)]
    time.sleep(0.003)
    later = time_ordered_id()
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first) and len(set(first)) == len(first)
    assert later > max(first)  # a later millisecond sorts after every id of the earlier ones
    assert abs(int(later[:12], 16) - time.time_ns() // 1_000_000) < 5_000  # the prefix is the time in ms
    assert len({i[12:] for i in first}) == len(first)  # the random part differs within a millisecond


def test_sessions_get_time_ordered_ids() -> None:
    cookies = SessionCookies(b"k" * 32, timedelta(minutes=5))
    before = time_ordered_id()
    time.sleep(0.002)
    ids = [cookies.new_session("snp", datetime.now(UTC)).session_id for _ in range(3)]
    time.sleep(0.002)
    assert before < min(ids) and max(ids) < time_ordered_id()


def _wal_frames_per_batch(path: Path, make_id: Callable[[], str], guests: int = 16) -> float:
    """WAL frames one group-commit batch of `guests` exchanges (an /attest's write and a release each) writes
    to a store already holding 4,000 of them."""
    store = SqliteStore(path, b"k" * 32)

    def exchange() -> None:
        session_id, attestation_id = make_id(), make_id()
        session = Session(session_id, "snp", "nonce", NOW, NOW + timedelta(hours=1), "authed")
        summary = ReleaseRecord(NOW, "attest", "affirming", "", None, session_id, "snp", None, None, attestation_id)
        assert store.mark_attested(session, "d", "t", NOW, AttestationRecord(attestation_id, NOW, session_id, "snp",
                                                                             {"claims": "c" * 1500}), summary)
        store.append_log("release", summary.updated(decision="release", reason="policy", resource="a/b/c"))

    for _ in range(40):
        with store.batch():
            for _ in range(100):
                exchange()
    checkpointer = sqlite3.connect(path)
    frames = []
    for _ in range(5):
        checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL starts empty: what follows is the batch's
        with store.batch():
            for _ in range(guests):
                exchange()
        frames.append((os.path.getsize(f"{path}-wal") - 32) / WAL_FRAME)
    checkpointer.close()
    store.close()
    return sum(frames) / len(frames)


def test_a_batch_of_time_ordered_inserts_writes_a_page_less_per_guest(tmp_path: Path) -> None:
    """With random ids each guest's session and attestation land on random leaves of their indexes (a page each
    in every batch's WAL write and fsync); time-ordered ones share the right edge."""
    guests = 16
    random_ids = _wal_frames_per_batch(tmp_path / "random.sqlite3", lambda: secrets.token_hex(16), guests)
    ordered = _wal_frames_per_batch(tmp_path / "ordered.sqlite3", time_ordered_id, guests)
    assert ordered <= random_ids - guests, (ordered, random_ids)


def test_the_broker_logs_time_ordered_session_and_attestation_ids(tmp_path: Path, pki: SyntheticAmd) -> None:
    guest = SnpGuest(pki, measurement=GOOD_MEASUREMENT)
    with run_broker(tmp_path, broker_config(tmp_path, pki)) as broker:
        provision(broker)
        for _ in range(2):
            status, body, _ = asyncio.run(full_flow(broker.url, "snp", "prod/key/disk", guest=guest))
            assert status == 200, body
            time.sleep(0.002)
        attests = [e for e in release_log(broker) if e["decision"] == "attest"]
    assert len(attests) == 2
    sessions, attestations = [e["session_id"] for e in attests], [e["attestation_id"] for e in attests]
    assert sessions == sorted(sessions) and attestations == sorted(attestations)
    assert all(abs(int(i[:12], 16) - time.time_ns() // 1_000_000) < 120_000 for i in sessions + attestations)
