"""The group-commit writer: concurrent writes share transactions, each call still succeeds or fails alone,
a failed COMMIT fails every call of its batch, and no caller is answered before its batch is durable."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import rfc8785

from kbs.audit import merkle
from kbs.audit.chain import REFUSALS, RELEASES
from kbs.store.base import AttestationRecord, ReleaseRecord, Session, StoreError
from kbs.store.group_commit import GroupCommitWriter, can_batch
from kbs.store.integrity import StoreIntegrityError
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

    async def storm() -> tuple[list[bool | BaseException], GroupCommitWriter]:
        writer = GroupCommitWriter(store)
        calls = [writer.write(_attested, store, i) for i in range(300)]
        calls.append(writer.write(_attested, store, 300, 7))  # a duplicate attestation id: fails alone
        results = await asyncio.gather(*calls, return_exceptions=True)
        await writer.close()
        return results, writer
    results, writer = asyncio.run(storm())
    assert results[:300] == [True] * 300 and isinstance(results[300], StoreError)
    assert all(store.get_session(f"{i:032x}") is not None for i in range(300))
    assert store.get_session(f"{300:032x}") is None  # undone with the failed insert after it
    assert writer.writes == 301 and writer.batches < 150, (writer.batches, writer.writes)

    async def race() -> list[bool]:  # the insert still decides single use inside a batch: one winner
        writer = GroupCommitWriter(store)
        won = await asyncio.gather(*(writer.write(store.mark_attested, _session(1000), f"d{i}", "t", NOW)
                                     for i in range(20)))
        await writer.close()
        return list(won)
    assert sorted(asyncio.run(race())) == [False] * 19 + [True]


class _Recorder:
    """A store whose batch steps are recorded (with the thread each ran on), whose write lock can be
    busy (so the writer must wait for it on its thread), and whose COMMIT can be made to fail."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.threads: dict[str, set[str]] = {}
        self.fail_commit = False
        self.fail_rollback = False
        self.lock_busy = False
        self.gate: threading.Event | None = None
        self.commit_gate: threading.Event | None = None

    def _on(self, step: str) -> None:
        self.threads.setdefault(step, set()).add(threading.current_thread().name)

    def try_begin_batch(self) -> bool:
        self._on("try_begin")
        if self.lock_busy:
            return False
        self.events.append("begin")
        return True

    def begin_batch(self) -> None:
        self._on("begin")
        if self.gate is not None:  # another process holds the lock until the test lets go
            assert self.gate.wait(5)
        self.events.append("begin (waited)")

    @contextmanager
    def batch_calls(self, savepoints: bool = True) -> Iterator[None]:
        self._on("calls")
        self.events.append("calls" if savepoints else "calls without savepoints")
        yield

    def commit_batch(self) -> None:
        self._on("commit")
        if self.commit_gate is not None:  # the fsync takes until the test lets go
            assert self.commit_gate.wait(5)
        if self.fail_commit:
            raise StoreError("disk full")
        self.events.append("commit")

    def rollback_batch(self) -> None:
        self.events.append("rollback")
        if self.fail_rollback:
            raise StoreError("connection lost")

    def put(self, value: str) -> str:
        self._on("put")
        if value == "bad":
            raise ValueError("bad value")
        self.events.append(f"put {value}")
        return value


def test_answers_come_after_the_commit_and_a_failed_commit_fails_all() -> None:
    store = _Recorder()

    async def go() -> None:
        writer = GroupCommitWriter(store)

        async def one(value: str) -> str:
            result = await writer.write(store.put, value)
            store.events.append(f"answered {value}")
            return result
        assert await one("a") == "a"
        assert store.events == ["begin", "calls without savepoints", "put a", "commit", "answered a"]
        del store.events[:]
        results = await asyncio.gather(one("x"), one("bad"), one("y"), return_exceptions=True)
        assert results[0] == "x" and isinstance(results[1], ValueError) and results[2] == "y"
        # "bad" failed without savepoints: all undone, then the batch again with a savepoint per call.
        assert store.events[:8] == ["begin", "calls without savepoints", "put x", "rollback", "begin", "calls",
                                    "put x", "put y"]
        assert writer.retried == 1
        store.fail_commit = True
        results = await asyncio.gather(one("x"), one("bad"), one("y"), return_exceptions=True)
        assert isinstance(results[0], StoreError) and isinstance(results[2], StoreError)
        assert store.events.count("answered x") == 1  # from the first round only
        store.fail_commit, store.lock_busy = False, True
        assert await one("z") == "z"
        assert store.events[-5:] == ["begin (waited)", "calls without savepoints", "put z", "commit", "answered z"]
        await writer.close()
    asyncio.run(go())
    # The calls run on the loop's thread; waiting for the lock and the COMMIT's fsync on the writer's thread.
    main = threading.current_thread().name
    assert store.threads["put"] == store.threads["calls"] == store.threads["try_begin"] == {main}
    assert store.threads["commit"] == store.threads["begin"] and main not in store.threads["commit"]


@pytest.mark.parametrize("calls_on_loop", [True, False], ids=["calls on the loop", "whole batch on the thread"])
def test_writes_that_arrive_while_a_batch_waits_for_the_lock_join_it(calls_on_loop: bool) -> None:
    """The batch's writes are taken once its transaction is open: those that came while it waited for another
    process's lock (or, on PostgreSQL, the logs' heads) go in with it, not a whole batch later."""
    store = _Recorder()
    store.lock_busy, store.gate = True, threading.Event()
    store.calls_on_loop = calls_on_loop  # type: ignore[attr-defined]

    async def go() -> list[str]:
        writer = GroupCommitWriter(store)
        first = asyncio.ensure_future(writer.write(store.put, "a"))
        while "begin" not in store.threads:  # the batch is waiting for the lock on the writer's thread
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(writer.write(store.put, v)) for v in ("b", "c")]
        await asyncio.sleep(0.01)
        assert store.gate is not None
        store.gate.set()  # let go of the lock
        results = await asyncio.gather(first, *later)
        assert (writer.batches, writer.writes) == (1, 3)
        await writer.close()
        return results
    assert asyncio.run(go()) == ["a", "b", "c"]
    assert store.events == ["begin (waited)", "calls without savepoints", "put a", "put b", "put c", "commit"]


@pytest.mark.parametrize("calls_on_loop", [True, False], ids=["calls on the loop", "whole batch on the thread"])
def test_a_batch_stopped_while_waiting_for_the_lock_gives_it_back_once_it_has_it(calls_on_loop: bool) -> None:
    """The broker stops (its tasks are cancelled) while a batch waits for another process's lock on the writer's
    thread: the waiting callers fail at once, and when the thread gets the lock it is rolled back and let go,
    never kept by a batch nobody will finish.  A whole batch on the thread finds its jobs gone (the loop failed
    them): it writes none of them."""
    store = _Recorder()
    store.lock_busy, store.gate = True, threading.Event()
    store.calls_on_loop = calls_on_loop  # type: ignore[attr-defined]

    async def go() -> Any:
        writer = GroupCommitWriter(store)
        write = asyncio.ensure_future(writer.write(store.put, "a"))
        while "begin" not in store.threads:
            await asyncio.sleep(0.001)
        assert writer._flushing is not None
        writer._flushing.cancel()  # what the loop's shutdown does to the writer's task
        outcome = await asyncio.gather(write, return_exceptions=True)
        assert store.gate is not None
        store.gate.set()
        for _ in range(500):
            if "rollback" in store.events:
                break
            await asyncio.sleep(0.002)
        return outcome[0]
    outcome = asyncio.run(go())
    assert isinstance(outcome, StoreError) and "stopped" in str(outcome)
    assert store.events == ["begin (waited)", "rollback"]


@pytest.mark.parametrize("calls_on_loop", [True, False], ids=["calls on the loop", "whole batch on the thread"])
def test_a_batch_stopped_during_its_commit_fails_its_callers_at_once(calls_on_loop: bool) -> None:
    """The broker stops while a batch's COMMIT runs on the thread: its callers (and the writes queued behind it)
    are answered with an error at once, not left waiting; the COMMIT itself finishes on its thread."""
    store = _Recorder()
    store.commit_gate = threading.Event()
    store.calls_on_loop = calls_on_loop  # type: ignore[attr-defined]

    async def go() -> list[Any]:
        writer = GroupCommitWriter(store)
        writes = [asyncio.ensure_future(writer.write(store.put, "a"))]
        while "commit" not in store.threads:
            await asyncio.sleep(0.001)
        writes.append(asyncio.ensure_future(writer.write(store.put, "b")))  # queued behind the batch
        await asyncio.sleep(0)
        assert writer._flushing is not None
        writer._flushing.cancel()
        outcome = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 5)
        assert store.commit_gate is not None
        store.commit_gate.set()
        for _ in range(500):
            if "commit" in store.events:
                break
            await asyncio.sleep(0.002)
        return outcome
    outcome = asyncio.run(go())
    assert all(isinstance(o, StoreError) for o in outcome), outcome
    # The batch's caller is told its write may be durable (its COMMIT was under way); the one queued behind it
    # that it was not.
    assert [str(o) for o in outcome] == ["the broker stopped during the write (it may be durable)",
                                         "the broker stopped before the write"]
    assert store.events[-1] == "commit"  # it finished on its thread


def test_a_batch_that_cannot_be_undone_fails_every_call_and_leaves_none_waiting() -> None:
    """A call fails in the savepoint-free run and the rollback fails too (the connection is gone): every call of
    the batch is answered with an error at once (none is left waiting, none committed), and the writer goes on."""
    store = _Recorder()
    store.fail_rollback = True

    async def go() -> list[Any]:
        writer = GroupCommitWriter(store)
        results = cast(list[Any], await asyncio.wait_for(asyncio.gather(
            writer.write(store.put, "x"), writer.write(store.put, "bad"), return_exceptions=True), 5))
        store.fail_rollback = False
        results.append(await writer.write(store.put, "after"))
        await writer.close()
        return results
    results = asyncio.run(go())
    assert [type(r) for r in results[:2]] == [StoreError, StoreError] and results[2] == "after"
    assert "commit" not in store.events[:store.events.index("put after")]


def test_a_writer_waits_for_another_process_lock_without_holding_the_loop(tmp_path: Path) -> None:
    """Another process (here: another store on the file) holds the write lock: the batch waits for it on the
    writer's thread while the loop keeps running, and goes ahead the moment it is released."""
    store = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    other = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    other.begin_batch()

    async def go() -> tuple[int, bool]:
        writer = GroupCommitWriter(store)
        write = asyncio.ensure_future(writer.write(_attested, store, 1))
        ticks = 0
        for _ in range(20):  # the loop keeps serving while the lock is held elsewhere
            await asyncio.sleep(0.01)
            ticks += 1
        waited = not write.done()
        await asyncio.get_running_loop().run_in_executor(None, other.commit_batch)
        assert await write
        await writer.close()
        return ticks, waited
    ticks, waited = asyncio.run(go())
    assert ticks == 20 and waited
    assert other.get_session(f"{1:032x}") is not None


def test_only_stores_with_batch_steps_get_a_writer(tmp_path: Path) -> None:
    class Plain:
        def put(self, value: int) -> int:
            return value * 2

    assert not can_batch(Plain()) and can_batch(SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32))


def test_each_committed_batch_is_observed_after_its_answers_and_a_failing_observer_changes_nothing() -> None:
    """The observer (the broker's metrics) hears of every committed batch: its size, the seconds it held the
    write lock, whether it was run again with savepoints; never of a batch whose COMMIT failed.  An observer that
    raises is logged: every caller is still answered."""
    store = _Recorder()
    seen: list[tuple[int, float, bool]] = []

    def observe(writes: int, seconds: float, retried: bool) -> None:
        store.events.append("observed")
        seen.append((writes, seconds, retried))
        if writes == 4:
            raise RuntimeError("a broken metrics backend")

    async def go() -> list[Any]:
        writer = GroupCommitWriter(store, observe=observe)
        results: list[Any] = [await writer.write(store.put, "a")]
        results += await asyncio.gather(*(writer.write(store.put, v) for v in ("x", "bad", "y")),
                                        return_exceptions=True)
        store.fail_commit = True
        results += await asyncio.gather(writer.write(store.put, "lost"), return_exceptions=True)
        store.fail_commit = False
        results += await asyncio.wait_for(asyncio.gather(*(writer.write(store.put, v) for v in "pqrs")), 5)
        await writer.close()
        return results
    results = asyncio.run(go())
    assert results[0] == "a" and results[1:4:2] == ["x", "y"] and isinstance(results[2], ValueError)
    assert isinstance(results[4], StoreError) and results[5:] == list("pqrs")
    assert [(writes, retried) for writes, _, retried in seen] == [(1, False), (3, True), (4, False)]
    assert all(0 <= seconds < 5 for _, seconds, _ in seen)
    assert store.events[store.events.index("commit"):][:2] == ["commit", "observed"]


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


def _entry(i: int) -> ReleaseRecord:
    return ReleaseRecord(NOW, "release", "policy", f"r/t/{i}", 1, None, "snp", "p", "h", None)


def test_appends_in_a_batch_start_from_the_batchs_own_tail(tmp_path: Path) -> None:
    """Inside a batch only the first append of each log reads and checks its head and tree edge; the rest start
    from what the batch wrote.  Calls undone in the middle take their appends with them, and the logs and the
    tree come out exactly as appends one by one would leave them."""
    store = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    store.append_log(RELEASES, _entry(0))
    expected = [0]

    def append_then_fail(i: int) -> None:
        with store._tx() as db:  # one store call: its savepoint is undone when it raises
            store._append(db, RELEASES, _entry(i))
            raise StoreError("undone")

    with store.batch():
        for i in range(1, 40):
            if i % 7 == 3:
                with pytest.raises(StoreError):
                    append_then_fail(i)
                continue
            store.append_log(RELEASES if i % 5 else REFUSALS, _entry(i))
            if i % 5:
                expected.append(i)
    reopened = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    assert {h.chain: h.entries for h in reopened.verify_logs()}[RELEASES] == len(expected)  # chains and MACs hold
    logged = reopened.log_entries(RELEASES, limit=100)
    assert [e.resource for e in logged] == [f"r/t/{i}" for i in expected]
    leaves = reopened.log_leaves(0, 100)
    assert leaves == [rfc8785.dumps(e.body()) for e in logged]
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    assert reopened.log_root(len(leaves)) == merkle.tree_hash(len(hashes), lambda wanted: [
        _mth(hashes[i << lv:(i + 1) << lv]) for lv, i in wanted])

    # A tree edited between batches is still caught, by the next batch's first append.
    level, index = merkle.right_edge(len(leaves))[0]  # what the next append reads
    sqlite3.connect(tmp_path / "kbs.sqlite3").execute("UPDATE log_tree SET hash = ? WHERE level = ? AND idx = ?",
                                                      (bytes(32), level, index)).connection.commit()
    with pytest.raises(StoreIntegrityError, match="tree does not give the root"), store.batch():
        store.append_log(RELEASES, _entry(99))


def test_a_batch_writes_each_moved_head_once_and_before_anything_reads_it(tmp_path: Path) -> None:
    """Appends inside a batch leave the logs' head rows to the batch's end, each written once before the COMMIT,
    or earlier when something in the batch reads it (a purge of the refusal log moves its anchor from the current
    head); a call that fails after such a read takes that write back with it, and the end writes it again."""
    store = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    store.append_log(RELEASES, _entry(0))
    store.begin_batch()
    store.rollback_batch()  # the batch's connection now exists: watch what it runs
    assert store._batch_db is not None
    statements: list[str] = []
    store._batch_db.set_trace_callback(statements.append)

    def head_writes() -> int:
        return sum(1 for sql in statements if sql.startswith("INSERT OR REPLACE INTO log_heads"))

    def read_then_fail() -> None:
        with store._tx() as db:
            store._head(db, RELEASES)
            raise StoreError("undone")

    with store.batch():
        for i in range(1, 11):
            store.append_log(RELEASES if i % 2 else REFUSALS, _entry(i))
        assert head_writes() == 0  # ten appends, no head row written yet
        assert store.purge_refusals(NOW + dt.timedelta(seconds=1)) == 5
        assert head_writes() == 2  # the refusal log's head, before the purge read it; the purge's own
        with pytest.raises(StoreError):
            read_then_fail()
        assert head_writes() == 3  # the release log's head, before the read; undone with the call
        for i in range(11, 14):
            store.append_log(REFUSALS, _entry(i))
    assert head_writes() == 5  # at the end: each log's head once
    reopened = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    heads = {h.chain: h for h in reopened.verify_logs()}  # hashes, MACs and heads agree with the rows
    assert (heads[RELEASES].entries, heads[REFUSALS].entries) == (6, 3)
    assert [e.resource for e in reopened.log_entries(REFUSALS, limit=10)] == [f"r/t/{i}" for i in (11, 12, 13)]
    leaves = reopened.log_leaves(0, 100)
    assert len(leaves) == 6 and reopened.log_root(6) == merkle.tree_hash(6, lambda wanted: [
        _mth([merkle.leaf_hash(leaf) for leaf in leaves][i << lv:(i + 1) << lv]) for lv, i in wanted])


def _mth(hashes: list[bytes]) -> bytes:
    """RFC 9162's MTH over leaf hashes, recursively (independent of the store's edge arithmetic)."""
    if len(hashes) == 1:
        return hashes[0]
    split = 1 << ((len(hashes) - 1).bit_length() - 1)
    return merkle.node_hash(_mth(hashes[:split]), _mth(hashes[split:]))
