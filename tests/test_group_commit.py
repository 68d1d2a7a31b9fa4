"""The group-commit writer: concurrent writes share transactions, each call still succeeds or fails alone,
a failed COMMIT fails every call of its batch, and no caller is answered before its batch is durable."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kbs.store.base import AttestationRecord, Session, StoreError
from kbs.store.group_commit import GroupCommitWriter
from kbs.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)


def _session(i: int) -> Session:
    return Session(f"{i:032x}", "snp", "nonce", NOW, NOW + dt.timedelta(minutes=5), "authed")


def _attested(store: SqliteStore, i: int, attestation: int | None = None) -> bool:
    """Store session i as attested, with an attestation record (whose id must be unique)."""
    record = AttestationRecord(f"att-{attestation if attestation is not None else i}", NOW, f"{i:032x}", "snp", {})
    return store.mark_attested(_session(i), "d", "t", NOW, record)


def test_concurrent_writes_share_transactions(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    writer = GroupCommitWriter(store)

    async def storm() -> list[object]:
        calls = [writer.write(_attested, store, i) for i in range(300)]
        calls.append(writer.write(_attested, store, 300, 7))  # a duplicate attestation id: fails alone
        return await asyncio.gather(*calls, return_exceptions=True)
    results = asyncio.run(storm())
    writer.close()
    assert results[:300] == [True] * 300 and isinstance(results[300], StoreError)
    assert all(store.get_session(f"{i:032x}") is not None for i in range(300))
    assert store.get_session(f"{300:032x}") is None  # undone with the failed insert after it
    assert writer.writes == 301 and writer.batches < 150, (writer.batches, writer.writes)
    # The CAS still decides single use inside a batch: one winner among racers for one nonce.
    writer = GroupCommitWriter(store)

    async def race() -> list[bool]:
        return list(await asyncio.gather(*(writer.write(store.mark_attested, _session(1000), f"d{i}", "t", NOW)
                                           for i in range(20))))
    assert sorted(asyncio.run(race())) == [False] * 19 + [True]
    writer.close()


class _Recorder:
    """A store whose batches are recorded, and whose COMMIT can be made to fail."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail_commit = False
        self.lock = threading.Lock()

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.events.append("begin")
        yield
        if self.fail_commit:
            raise StoreError("disk full")
        self.events.append("commit")

    def put(self, value: str) -> str:
        if value == "bad":
            raise ValueError("bad value")
        self.events.append(f"put {value}")
        return value


def test_answers_come_after_the_commit_and_a_failed_commit_fails_all() -> None:
    store = _Recorder()
    writer = GroupCommitWriter(store)

    async def one(value: str) -> str:
        result = await writer.write(store.put, value)
        store.events.append(f"answered {value}")
        return result
    assert asyncio.run(one("a")) == "a"
    assert store.events == ["begin", "put a", "commit", "answered a"]

    async def batch_with_a_failure() -> list[object]:
        return await asyncio.gather(one("x"), one("bad"), one("y"), return_exceptions=True)
    results = asyncio.run(batch_with_a_failure())
    assert results[0] == "x" and isinstance(results[1], ValueError) and results[2] == "y"
    store.fail_commit = True
    results = asyncio.run(batch_with_a_failure())
    assert isinstance(results[0], StoreError) and isinstance(results[2], StoreError)
    assert "answered x" in store.events  # from the first round only
    assert store.events.count("answered x") == 1
    writer.close()


def test_a_store_without_batches_is_written_call_by_call() -> None:
    class Plain:
        def put(self, value: int) -> int:
            return value * 2

    writer = GroupCommitWriter(Plain())

    async def go() -> list[int]:
        return list(await asyncio.gather(*(writer.write(Plain().put, i) for i in range(50))))
    assert asyncio.run(go()) == [i * 2 for i in range(50)]
    writer.close()


def test_a_failed_call_leaves_the_rest_of_its_batch(tmp_path: Path) -> None:
    """A call that fails inside a batch is undone alone (its savepoint), the others are durable."""
    store = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    with store.batch():
        assert _attested(store, 1)
        with pytest.raises(StoreError):
            _attested(store, 2, attestation=1)  # its session row is undone with it
        assert _attested(store, 3)
    other = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    assert other.get_session(f"{1:032x}") is not None and other.get_session(f"{3:032x}") is not None
    assert other.get_session(f"{2:032x}") is None
