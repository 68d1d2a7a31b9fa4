"""The store contract: every backend (SQLite, and a real PostgreSQL from tests/postgres.py) keeps it.

Sessions consumed once, versions, policies, the hash-chained logs, row MACs against edits made
straight in the database, and the races replicas run into: many threads and processes consuming
one nonce, appending to one chain, using one admin token id, adding versions of one key.
SQLite-only behaviour (file modes, WAL, the version-1 upgrade) stays in test_store_sqlite.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing
import re
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
import pytest
import rfc8785
from psycopg.rows import dict_row

from kbs import jsondoc
from kbs.audit import chain as chains
from kbs.audit import merkle
from kbs.audit.chain import REFUSALS, RELEASES
from kbs.policy.lifecycle import BindingLocked, PolicyConflict, PolicyRegistry
from kbs.policy.refvalues import ReferenceSet
from kbs.store import OpenStore, open_store
from kbs.store.base import (
    AttestationRecord,
    LogQuery,
    ReleaseRecord,
    Session,
    StaleDecision,
    StoredCheckpoint,
    StoreError,
)
from kbs.store.group_commit import BatchingStore, GroupCommitWriter, can_batch
from kbs.store.integrity import RowAuthenticator, StoreIntegrityError
from kbs.store.postgres import PostgresStore
from kbs.store.rows import Rows
from kbs.store.sqlite import SqliteStore
from tests.postgres import PostgresServer

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
KEY = bytes(range(32))  # the row-MAC key (the daemon derives it from the KEK)
T = TypeVar("T")


@dataclass
class Backend:
    """One fresh database of one kind: stores opened on it (as replicas would), and raw SQL beside them."""

    kind: str
    url: str
    opened: list[OpenStore] = field(default_factory=list)

    def open(self, key: bytes = KEY) -> OpenStore:
        store = open_store(self.url, key)
        self.opened.append(store)
        return store

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        """Change the database behind the broker's back (what someone holding it could do)."""
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url.removeprefix("sqlite://"))
            db.execute(sql, params)
            db.commit()
            db.close()
        else:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql.replace("?", "%s"), params)

    def query(self, sql: str) -> list[dict[str, Any]]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url.removeprefix("sqlite://"))
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(sql).fetchall()]
            db.close()
            return rows
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(sql).fetchall()

    def set_schema_version(self, version: int) -> None:
        if self.kind == "sqlite":
            self.execute(f"PRAGMA user_version = {version}")
        else:
            self.execute("UPDATE kbs_schema SET version = ?", (version,))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh database per test: a new SQLite file, or a new database on the test PostgreSQL server."""
    server: PostgresServer | None = None
    if request.param == "sqlite":
        b = Backend("sqlite", f"sqlite://{tmp_path / 'kbs.db'}")
    else:
        server = request.getfixturevalue("postgres")
        b = Backend("postgresql", server.create_database())
    try:
        yield b
    finally:
        for store in b.opened:
            store.close()
        if server is not None:
            server.drop_database(b.url)


@pytest.fixture
def store(backend: Backend) -> OpenStore:
    return backend.open()


def session(sid: str = "a" * 32, expires: dt.datetime = NOW + dt.timedelta(minutes=5)) -> Session:
    return Session(sid, "snp", "nonce", NOW, expires, "authed")


def entry(i: int, decision: str = "deny") -> ReleaseRecord:
    return ReleaseRecord(NOW, decision, "policy", f"r/t/{i}", 1, "s", "snp", "default", "hash", None)


def on_threads(count: int, fn: Callable[[int], T]) -> list[T]:
    """Run fn(0..count-1) on as many threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    results: list[T | None] = [None] * count
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            results[i] = fn(i)
        except BaseException as exc:  # collected and re-raised below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if failures:
        raise failures[0]
    return results  # type: ignore[return-value]


# -- sessions and single use ----------------------------------------------------------------

def test_session_nonce_is_consumed_exactly_once(store: OpenStore) -> None:
    """A session is stored when it attests (before, it lives in its cookie): that insert is the nonce's use."""
    assert store.get_session("a" * 32) is None
    assert store.mark_attested(session(), "digest", "token", NOW)
    assert not store.mark_attested(session(), "other", "token2", NOW)  # replay
    got = store.get_session("a" * 32)
    assert got is not None and got.state == "attested" and got.token == "token" and got.created_at == NOW
    assert got.evidence_digest == "digest"
    assert not store.mark_attested(session("b" * 32, expires=NOW), "d", "t", NOW)  # expired
    assert store.get_session("b" * 32) is None
    later = NOW + dt.timedelta(minutes=10)
    assert store.mark_attested(session("c" * 32, expires=later), "d", "t", NOW)
    assert store.purge_expired_sessions(NOW + dt.timedelta(minutes=5)) == 1
    assert store.get_session("a" * 32) is None and store.get_session("c" * 32) is not None


def test_the_winner_alone_records_its_attestation(store: OpenStore) -> None:
    """/attest's one write: the nonce consumed and the attestation recorded together, only for the winner."""
    first = AttestationRecord("att-won", NOW, "a" * 32, "snp", {"submods": {}})
    second = AttestationRecord("att-lost", NOW, "a" * 32, "snp", {"submods": {}})
    assert store.mark_attested(session(), "d1", "t1", NOW, first)
    assert not store.mark_attested(session(), "d2", "t2", NOW, second)
    assert store.get_attestation("att-won") == first and store.get_attestation("att-lost") is None


def test_many_threads_on_several_replicas_race_for_one_nonce(backend: Backend) -> None:
    replicas = [backend.open() for _ in range(3)]
    won = on_threads(24, lambda i: replicas[i % 3].mark_attested(session(), f"d{i}", f"t{i}", NOW))
    assert won.count(True) == 1
    winner = won.index(True)
    got = replicas[1].get_session("a" * 32)
    assert got is not None and (got.evidence_digest, got.token) == (f"d{winner}", f"t{winner}")


def _race(url: str, sid: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = open_store(url, KEY)
    results.put(store.mark_attested(session(sid), "d", "t", NOW))
    store.close()


def test_processes_race_for_one_nonce(backend: Backend, store: OpenStore) -> None:
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_race, args=(backend.url, "a" * 32, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(results.get(timeout=5) for _ in procs) == [False, False, False, True]


def test_admin_token_id_used_once_across_replicas(backend: Backend) -> None:
    replicas = [backend.open() for _ in range(2)]
    later = NOW + dt.timedelta(minutes=5)
    assert on_threads(16, lambda i: replicas[i % 2].use_token_id("jti-1", later, NOW)).count(True) == 1
    assert not replicas[0].use_token_id("jti-1", later, NOW + dt.timedelta(minutes=1))  # replay within its life
    assert replicas[1].use_token_id("jti-1", later, later)  # expired and dropped: the token itself is refused
    # many distinct ids at once, each also clearing expired ones: every first use wins, none waits forever
    for i in range(20):
        assert replicas[0].use_token_id(f"old-{i}", NOW, NOW - dt.timedelta(minutes=1))
    assert all(on_threads(16, lambda i: replicas[i % 2].use_token_id(f"new-{i}", later, NOW)))


def test_secret_created_once(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    value = bytes(range(256))  # sealed values are opaque bytes: every byte value round-trips
    assert one.get_or_create_secret("signing", value) == value
    assert two.get_or_create_secret("signing", b"second") == value
    agreed = on_threads(8, lambda i: (one, two)[i % 2].get_or_create_secret("other", bytes([i]) * 32))
    assert len(set(agreed)) == 1


# -- resources and policies -----------------------------------------------------------------

def test_resource_versions_disable_enable_delete(store: OpenStore) -> None:
    assert store.put_resource("r/t/k", b"v1", "default", "alice", NOW) == 1
    assert store.put_resource("r/t/k", b"v2", "default", "alice", NOW) == 2
    active = store.active_resource("r/t/k")
    assert active is not None and (active.version, active.sealed, active.created_at) == (2, b"v2", NOW)
    assert [v.state for v in store.resource_versions("r/t/k")] == ["disabled", "active"]
    store.set_resource_state("r/t/k", 1, "active")  # roll back to version 1
    active = store.active_resource("r/t/k")
    assert active is not None and active.version == 1
    assert store.set_resource_state("r/t/k", None, "disabled") == 1  # the active one (v1), not the latest
    assert store.active_resource("r/t/k") is None
    assert store.set_resource_state("r/t/k", None, "disabled") == 0  # nothing active left
    assert store.set_resource_state("r/t/k", None, "active") == 1
    active = store.active_resource("r/t/k")
    assert active is not None and active.version == 2  # enabling without a version: the latest
    assert store.set_resource_state("r/t/k", 7, "active") == 0 and store.set_resource_state("x/y/z", None,
                                                                                             "active") == 0
    store.set_resource_state("r/t/k", None, "disabled")
    assert store.bind_policy("r/t/k", "strict") == 2
    assert {v.policy_id for v in store.resource_versions("r/t/k")} == {"strict"}
    assert store.resource_paths() == ["r/t/k"]
    assert store.delete_resource("r/t/k") == 2 and store.resource_paths() == []


def test_concurrent_new_versions_of_one_key(backend: Backend) -> None:
    replicas = [backend.open() for _ in range(2)]
    versions = on_threads(8, lambda i: replicas[i % 2].put_resource("r/t/k", bytes([i]), "default", "a", NOW))
    assert sorted(versions) == list(range(1, 9))
    states = [v.state for v in replicas[0].resource_versions("r/t/k")]
    assert states.count("active") == 1 and states[-1] == "active"


def test_policy_registry_persists_and_detects_concurrent_writers(backend: Backend) -> None:
    store = backend.open()
    store.put_reference_set(ReferenceSet("m", ("aa",), expires=NOW))
    policy = '{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [' \
             '{"claim": "snp.measurement", "in": {"ref": "m"}}]}]}'
    PolicyRegistry(store).put("p", policy, created_by="a", at=NOW)
    other = PolicyRegistry(backend.open())  # another replica
    assert other.current("p").version == 1
    assert other.refs.get("m") is not None and other.refs.get("m").expires == NOW  # type: ignore[union-attr]
    stale = other.current("p")
    PolicyRegistry(store).put("p", policy, created_by="b", at=NOW)
    with pytest.raises(PolicyConflict, match="already exists"):
        store.append(stale)  # a writer that read version 1 cannot write version 1 again
    assert store.policy_ids() == ["p"] and [v.version for v in store.versions("p")] == [1, 2]
    store.put_reference_set(ReferenceSet("m", ("bb",)))  # replaced
    assert store.reference_values().get("m").values == ("bb",)  # type: ignore[union-attr]
    store.delete_reference_set("m")
    assert store.reference_values().get("m") is None


def test_key_bound_to_an_immutable_policy_keeps_its_binding(store: OpenStore) -> None:
    registry = PolicyRegistry(store)
    text = '{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [{"claim": "snp.vmpl", "equals": 0}]}]}'
    registry.put("locked", text, created_by="a", at=NOW, immutable=True)
    registry.put("open", text, created_by="a", at=NOW)
    store.put_resource("r/t/k", b"v1", "locked", "a", NOW)
    with pytest.raises(BindingLocked, match="bound to policy 'locked', which is immutable"):
        store.bind_policy("r/t/k", "open")
    with pytest.raises(BindingLocked):
        store.put_resource("r/t/k", b"v2", "open", "a", NOW)  # a new version cannot move it either
    assert store.put_resource("r/t/k", b"v2", "locked", "a", NOW) == 2  # rotation under the same policy
    assert store.bind_policy("r/t/k", "locked") == 2  # a no-op rebinding is fine
    assert {v.policy_id for v in store.resource_versions("r/t/k")} == {"locked"}


def test_attestation_records(store: OpenStore) -> None:
    store.record_attestation(AttestationRecord("att1", NOW, "s", "snp", {"submods": {"cpu0": {"x": [1, "é"]}}}))
    got = store.get_attestation("att1")
    assert got is not None and got.claims == {"submods": {"cpu0": {"x": [1, "é"]}}} and got.at == NOW
    assert store.get_attestation("x") is None
    # The claims already encoded by the caller (the token's payload) are stored as they are, and authenticate.
    claims = {"submods": {"cpu0": {"n": 2**40, "s": "\u2028"}}}
    store.record_attestation(AttestationRecord("att2", NOW, "s", "snp", claims, jsondoc.dumps(claims)))
    assert store.get_attestation("att2") == AttestationRecord("att2", NOW, "s", "snp", claims)
    assert store.purge_attestations(NOW) == 0  # not older than NOW
    assert store.purge_attestations(NOW + dt.timedelta(seconds=1)) == 2 and store.get_attestation("att1") is None


def test_replicas_starting_together_create_one_schema(backend: Backend) -> None:
    stores = on_threads(4, lambda i: backend.open())
    stores[0].append_log(RELEASES, entry(1))
    assert [h.entries for h in stores[3].verify_logs()] == [1, 0]


def test_health_probes(store: OpenStore) -> None:
    store.ping()
    store.probe_write(NOW)
    store.probe_write(NOW + dt.timedelta(seconds=1))  # the same row, rewritten


# -- the logs -------------------------------------------------------------------------------

def test_release_log_is_a_hash_chain(backend: Backend, store: OpenStore) -> None:
    for i in range(5):
        rec = store.append_log(RELEASES, entry(i, "release" if i % 2 else "deny"))
        assert rec.seq == i + 1 and rec.entry_hash
    [releases, refusals] = store.verify_logs()
    assert (releases.entries, releases.head_seq, refusals.entries) == (5, 5, 0)
    assert [r.resource for r in store.log_entries(RELEASES, after_seq=3)] == ["r/t/3", "r/t/4"]
    assert [r.seq for r in store.log_entries(RELEASES, limit=2)] == [1, 2]
    with pytest.raises(StoreError, match="no log"):
        store.append_log("other", entry(0))
    backend.execute("UPDATE release_log SET decision='release' WHERE seq=1")
    with pytest.raises(StoreIntegrityError, match="entry 1 was edited outside the broker"):
        store.verify_logs()
    with pytest.raises(StoreIntegrityError, match="entry 1 was edited"):
        store.log_entries(RELEASES)  # `kbs log` never shows an edited entry as genuine


def test_log_rewritten_with_recomputed_hashes_is_caught(backend: Backend, store: OpenStore) -> None:
    """Rewriting every release as a deny and recomputing the chain needs the KEK-derived MAC key."""
    for i in range(3):
        store.append_log(RELEASES, entry(i, "release"))
    prev = chains.GENESIS
    for row in backend.query("SELECT * FROM release_log ORDER BY seq"):
        body = {k: row[k] for k in ("at", "decision", "reason", "resource", "version", "session_id", "tee",
                                    "policy_id", "policy_hash", "attestation_id", "ref", "actor", "detail")}
        body["decision"] = "deny"  # the public formula, recomputed: only the MACs are missing
        hashed = chains.entry_hash(prev, chains.body_hash(body))
        backend.execute("UPDATE release_log SET decision='deny', prev_hash=?, entry_hash=? WHERE seq=?",
                        (prev, hashed, row["seq"]))
        prev = hashed
    with pytest.raises(StoreIntegrityError, match="fails authentication"):
        store.verify_logs()


def test_hostile_strings_are_logged_not_refused(store: OpenStore) -> None:
    """A refusal quoting what a client sent is logged on every backend, NUL characters included."""
    rec = store.append_log(REFUSALS, replace(entry(1), detail="version 0.4\x00\x01 'é' \u202e \udc80 😀",
                                             tee="\x00"))
    assert rec.detail == "version 0.4\ufffd\x01 'é' \u202e \ufffd 😀" and rec.tee == "\ufffd"
    [logged] = store.log_entries(REFUSALS)
    assert logged == rec and store.verify_logs()


def test_newest_entry_deleted_is_caught_and_stops_appends(backend: Backend, store: OpenStore) -> None:
    for i in range(3):
        store.append_log(RELEASES, entry(i, "release"))
    backend.execute("DELETE FROM release_log WHERE seq=3")
    with pytest.raises(StoreIntegrityError, match="recorded head is entry 3: entries were removed"):
        store.verify_logs()
    with pytest.raises(StoreIntegrityError, match="newest entry is 2 but its recorded head is 3"):
        store.append_log(RELEASES, entry(9))  # fail closed: no release is logged, so none leaves


def test_log_head_removed_is_caught(backend: Backend, store: OpenStore) -> None:
    store.append_log(RELEASES, entry(1))
    backend.execute("DELETE FROM log_heads WHERE chain='release'")
    with pytest.raises(StoreIntegrityError, match="no recorded head"):
        store.append_log(RELEASES, entry(2))


def test_refusal_log_retention_moves_the_anchor(store: OpenStore) -> None:
    old, new = NOW - dt.timedelta(days=40), NOW
    for i in range(4):
        store.append_log(REFUSALS, replace(entry(i), at=old if i < 3 else new))
    assert store.purge_refusals(NOW - dt.timedelta(days=30)) == 3
    heads = {h.chain: h for h in store.verify_logs()}
    assert (heads[REFUSALS].first_seq, heads[REFUSALS].head_seq, heads[REFUSALS].entries) == (4, 4, 1)
    store.append_log(REFUSALS, entry(5))
    assert [r.seq for r in store.log_entries(REFUSALS)] == [4, 5] and store.verify_logs()
    assert store.purge_refusals(NOW - dt.timedelta(days=30)) == 0


def test_concurrent_appends_from_several_replicas_keep_one_chain(backend: Backend) -> None:
    """Appends from many connections (threads of several stores) interleave into one chain per log:
    contiguous positions, each entry on the one before it, the head on the last; verification in
    flight never sees a head and rows that disagree."""
    replicas = [backend.open() for _ in range(4)]
    per_thread, threads = 15, 12
    stop = threading.Event()
    verified: list[int] = []
    alarms: list[Exception] = []

    def verify_meanwhile() -> None:
        while not stop.is_set():
            try:
                verified.append(sum(h.entries for h in replicas[0].verify_logs()))
            except Exception as exc:  # a false alarm: reported below
                alarms.append(exc)
                return

    watcher = threading.Thread(target=verify_meanwhile)
    watcher.start()
    try:
        appended = on_threads(threads, lambda t: [
            (chain, replicas[t % 4].append_log(chain, entry(t * 100 + i)))
            for i in range(per_thread) for chain in [RELEASES if (t + i) % 3 else REFUSALS]])
    finally:
        stop.set()
        watcher.join(60)
    assert not alarms and verified
    heads = {h.chain: h for h in replicas[1].verify_logs()}
    total = per_thread * threads
    assert heads[RELEASES].entries + heads[REFUSALS].entries == total
    for chain in (RELEASES, REFUSALS):
        acknowledged = sorted(rec.seq or 0 for batch in appended for c, rec in batch if c == chain)
        logged = replicas[2].log_entries(chain, limit=total)
        assert acknowledged == [e.seq for e in logged] == list(range(1, heads[chain].head_seq + 1))
        assert sorted(rec.resource for batch in appended for c, rec in batch if c == chain) == \
            sorted(e.resource for e in logged)  # every acknowledged append is in its log, once


def check_tree(store: OpenStore) -> int:
    """The stored tree is the RFC 9162 tree of the release log's entries, in order."""
    size = store.log_tree_size()
    leaves = store.log_leaves(0, size + 5)
    entries = store.log_entries(RELEASES, limit=size + 5)
    assert len(leaves) == len(entries) == size
    assert leaves == [rfc8785.dumps(e.body()) for e in entries]
    assert store.log_root(size) == reference_root(leaves)
    return size


def reference_root(leaves: list[bytes]) -> bytes:
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    stored = {(0, i): h for i, h in enumerate(hashes)}
    for i, leaf in enumerate(hashes):  # the same rule, on a dict: independent of the store's SQL
        stored.update({(lv, ix): h for lv, ix, h in merkle.hashes_to_store(i, leaf, lambda w: [stored[k] for k in w])})
    return merkle.tree_hash(len(hashes), lambda w: [stored[k] for k in w])


def test_the_release_log_is_a_merkle_tree_with_proofs_and_checkpoints(backend: Backend, store: OpenStore) -> None:
    assert store.log_tree_size() == 0 and store.log_root(0) == merkle.EMPTY_ROOT
    for i in range(37):
        store.append_log(RELEASES, entry(i, "release" if i % 3 else "deny"))
        store.append_log(REFUSALS, entry(1000 + i))  # refusals before a token: not in the tree
    assert check_tree(store) == 37
    root = store.log_root(37)
    for index in (0, 17, 36):
        merkle.verify_inclusion(merkle.leaf_hash(store.log_leaves(index, 1)[0]), index, 37,
                                store.log_inclusion_proof(index, 37), root)
    merkle.verify_consistency(20, 37, store.log_root(20), root, store.log_consistency_proof(20, 37))
    assert store.log_tree_hashes(0, 0, 37) == [merkle.leaf_hash(leaf) for leaf in store.log_leaves(0, 37)]
    assert store.log_tree_hashes(5, 0, 1) == [store.log_root(32)]  # level 5: subtrees of 32 leaves
    with pytest.raises(StoreIntegrityError):
        store.log_tree_hashes(0, 30, 10)  # past the end
    other = backend.open()  # another replica sees the same tree, and records a checkpoint once
    assert other.log_root(37) == root and other.latest_log_checkpoint() is None
    assert store.add_log_checkpoint(StoredCheckpoint(37, "note-37", 1.0))
    assert not other.add_log_checkpoint(StoredCheckpoint(37, "note-37", 2.0))
    assert other.add_log_checkpoint(StoredCheckpoint(20, "note-20", 3.0))
    assert store.latest_log_checkpoint() == StoredCheckpoint(37, "note-37", 1.0)
    assert [c.size for c in store.log_checkpoints()] == [20, 37] and store.log_checkpoints(20) == [
        StoredCheckpoint(37, "note-37", 1.0)]


def as_schema_4(backend: Backend) -> None:
    """Put the release log back the way schema 4 kept it: a hash chain (entries and head MAC'd under KEY), no tree."""
    rows = Rows(RowAuthenticator(KEY))
    prev = chains.GENESIS
    for r in backend.query("SELECT * FROM release_log ORDER BY seq"):
        hashed = chains.entry_hash(prev, chains.body_hash(Rows.record(r).body()))
        backend.execute("UPDATE release_log SET prev_hash = ?, entry_hash = ?, mac = ? WHERE seq = ?",
                        (prev, hashed, rows.log_mac(RELEASES, r["seq"], prev, hashed), r["seq"]))
        prev = hashed
    count = len(backend.query("SELECT seq FROM release_log"))
    head = chains.Head(RELEASES, 1, chains.GENESIS, count, prev)
    backend.execute("UPDATE log_heads SET head_seq = ?, head_hash = ?, mac = ? WHERE chain = ?",
                    (count, prev, rows.head_values(head)[-1], RELEASES))
    backend.execute("DELETE FROM log_tree")
    backend.set_schema_version(4)


def test_a_chained_log_becomes_a_tree_on_upgrade(backend: Backend, store: OpenStore) -> None:
    for i in range(11):
        store.append_log(RELEASES, entry(i))
    root = store.log_root(11)
    as_schema_4(backend)
    upgraded = backend.open()
    assert check_tree(upgraded) == 11 and upgraded.log_root(11) == root  # the same entries, the same tree
    [releases, _] = upgraded.verify_logs()
    assert (releases.head_seq, releases.head_hash) == (11, root.hex())
    upgraded.append_log(RELEASES, entry(11))
    assert check_tree(upgraded) == 12


def test_an_edited_chain_is_not_upgraded(backend: Backend, store: OpenStore) -> None:
    for i in range(5):
        store.append_log(RELEASES, entry(i))
    as_schema_4(backend)
    backend.execute("UPDATE release_log SET decision = 'release' WHERE seq = 3")
    with pytest.raises(StoreError, match="release log entry 3 was edited|does not match its hash chain"):
        backend.open()


@pytest.mark.parametrize(("edit", "message"), [
    ("UPDATE log_tree SET hash = ? WHERE level = 2 AND idx = 0", "tree does not give the root its recorded head"),
    ("DELETE FROM log_tree WHERE level = 1 AND idx = 2", "tree has no hash at level 1 index 2"),
    ("DELETE FROM release_log WHERE seq = 6", "newest entry is 5 but its recorded head is 6"),
    ("UPDATE log_heads SET head_seq = 7 WHERE chain = 'release'", "release log head"),
])
def test_an_edited_release_log_fails_its_appends_in_a_batch_alone(backend: Backend, store: OpenStore, edit: str,
                                                                   message: str) -> None:
    """Inside a group-commit batch (on PostgreSQL the logs' heads, newest rows and the tree's edge are read with
    its BEGIN): the release log edited behind the broker fails each release append, with the check that saw
    it; the refusal log's appends in the same batch commit."""
    for i in range(6):
        store.append_log(RELEASES, entry(i, "release"))
    backend.execute(edit, (bytes(32),) if "?" in edit else ())

    async def batch() -> list[ReleaseRecord | BaseException]:
        writer = GroupCommitWriter(cast(BatchingStore, store))
        results = await asyncio.gather(*(writer.write(store.append_log, RELEASES if i % 2 else REFUSALS,
                                                      entry(100 + i)) for i in range(6)), return_exceptions=True)
        await writer.close()
        return results
    results = asyncio.run(batch())
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, StoreError), result
            assert re.search(message, str(result)), result
        else:
            assert isinstance(result, ReleaseRecord), result
    assert [e.resource for e in store.log_entries(REFUSALS)] == ["r/t/100", "r/t/102", "r/t/104"]


def test_a_tree_edited_behind_the_broker_stops_appends(backend: Backend, store: OpenStore) -> None:
    for i in range(6):
        store.append_log(RELEASES, entry(i))
    backend.execute("UPDATE log_tree SET hash = ? WHERE level = 2 AND idx = 0", (bytes(32),))  # in the root of 6
    with pytest.raises(StoreIntegrityError, match="tree does not give the root its recorded head holds"):
        store.append_log(RELEASES, entry(6))


def test_concurrent_appends_keep_one_tree(backend: Backend) -> None:
    replicas = [backend.open() for _ in range(3)]
    on_threads(9, lambda t: [replicas[t % 3].append_log(RELEASES, entry(t * 100 + i)) for i in range(8)])
    assert check_tree(replicas[0]) == 72


def test_group_commit_batches_on_two_replicas(backend: Backend) -> None:
    """The guest protocol's writes through each replica's group-commit writer: each nonce consumed once across
    replicas, every acknowledged append in its log once, a failing call undone alone, one RFC 9162 tree."""
    replicas = [backend.open() for _ in range(2)]

    assert replicas[0].mark_attested(session("f" * 32), "d", "t", NOW, AttestationRecord("taken", NOW, "f" * 32,
                                                                                         "snp", {}))

    def attest_and_log(store: OpenStore, i: int) -> bool:  # every 17th fails at its last insert: undone alone
        attestation = "taken" if i % 17 == 5 else f"att-{i}"
        return store.mark_attested(session(f"{i % 60:032x}"), "d", "t", NOW,
                                   AttestationRecord(attestation, NOW, f"{i % 60:032x}", "snp", {}),
                                   entry(1000 + i, "attest"))

    async def storm() -> list[Any]:
        writers = [GroupCommitWriter(cast(BatchingStore, store)) for store in replicas]
        assert all(can_batch(store) for store in replicas)
        calls: list[Coroutine[Any, Any, object]] = [writers[i % 2].write(attest_and_log, replicas[i % 2], i)
                                                    for i in range(120)]
        calls += [writers[i % 2].write(replicas[i % 2].append_log, RELEASES, entry(i, "release")) for i in range(80)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for writer in writers:
            await writer.close()
        assert sum(w.batches for w in writers) < 200  # batched
        # Batches run without a savepoint per call; those with a failing call ran again with savepoints.
        assert 0 < sum(w.retried for w in writers) < sum(w.batches for w in writers)
        return results
    results = asyncio.run(storm())
    attested, appended = results[:120], results[120:]
    failed = {i for i in range(120) if i % 17 == 5}
    # A failing call lost its session to the other index first (False) or failed and was undone (StoreError)
    assert all(attested[i] is False or isinstance(attested[i], StoreError) for i in failed)
    assert any(isinstance(attested[i], StoreError) for i in failed)
    winners = sorted(i for i in range(120) if attested[i] is True)
    assert sorted({i % 60 for i in winners}) == list(range(60))  # each session's other index won if it failed
    assert len(winners) == len({i % 60 for i in winners})  # one winner per session, across the replicas
    assert all(isinstance(r, ReleaseRecord) for r in appended)
    logged = sorted(e.resource for e in replicas[1].log_entries(RELEASES, limit=500))
    assert logged == sorted([f"r/t/{1000 + i}" for i in winners] + [f"r/t/{i}" for i in range(80)])
    assert check_tree(replicas[0]) == len(winners) + 80
    assert {h.chain: h.entries for h in replicas[0].verify_logs()}[RELEASES] == len(winners) + 80


def test_a_statement_failing_inside_a_call_that_carries_on_never_commits_the_batch(backend: Backend) -> None:
    """A call that catches its own failed statement and returns: without savepoints, the batch's transaction may
    be unusable (PostgreSQL aborts it); the batch runs again with a savepoint per call, where that call's
    failure is its own, and everything else commits."""
    store = backend.open()

    def swallowing() -> str:
        if isinstance(store, SqliteStore):
            with store._tx() as db, contextlib.suppress(sqlite3.Error):
                db.execute("INSERT INTO no_such_table VALUES (1)")
        else:
            def step(cur: Any) -> None:
                with contextlib.suppress(psycopg.Error):
                    cur.execute("INSERT INTO no_such_table VALUES (1)")
            cast(PostgresStore, store)._tx(step)
        return "carried on"

    async def go() -> list[Any]:
        writer = GroupCommitWriter(cast(BatchingStore, store))
        calls = [writer.write(store.append_log, RELEASES, entry(1)), writer.write(swallowing),
                 writer.write(store.append_log, RELEASES, entry(2))]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await writer.close()
        # SQLite carries on after a failed statement; PostgreSQL aborts the transaction: the batch runs again.
        assert writer.retried == (0 if isinstance(store, SqliteStore) else 1)
        return results
    results = asyncio.run(go())
    # The swallowed failure fails its own call only (PostgreSQL: rolled back to its savepoint): the calls on
    # either side of it are acknowledged.
    assert isinstance(results[0], ReleaseRecord) and isinstance(results[2], ReleaseRecord)
    assert results[1] == "carried on" if isinstance(store, SqliteStore) else isinstance(results[1], StoreError)
    # Whatever failed was reported; every acknowledged append is in the log, and nothing else.
    acknowledged = [r.resource for r in results if isinstance(r, ReleaseRecord)]
    assert all(isinstance(r, ReleaseRecord | StoreError) or r == "carried on" for r in results)
    assert [e.resource for e in store.log_entries(RELEASES, limit=10)] == acknowledged
    assert {h.chain: h.entries for h in store.verify_logs()}[RELEASES] == len(acknowledged)


def _append(url: str, chain: str, count: int, tag: int) -> None:
    store = open_store(url, KEY)
    for i in range(count):
        store.append_log(chain, entry(tag * 1000 + i))
    store.close()


def test_processes_append_to_one_chain(backend: Backend, store: OpenStore) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(backend.url, RELEASES, 20, tag)) for tag in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    [releases, _] = store.verify_logs()
    assert releases.entries == 60 and len({e.resource for e in store.log_entries(RELEASES, limit=100)}) == 60


# -- rows changed outside the broker ---------------------------------------------------------

def test_rows_edited_or_forged_outside_the_broker_are_refused(backend: Backend, store: OpenStore) -> None:
    """Holding the database is not enough to bind a key to an allow-all policy."""
    registry = PolicyRegistry(store)
    strict = '{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [' \
             '{"claim": "snp.vmpl", "equals": 0}]}]}'
    registry.put("strict", strict, created_by="a", at=NOW)
    store.put_resource("r/t/k", b"sealed", "strict", "a", NOW)
    store.put_reference_set(ReferenceSet("m", ("aa",)))
    store.record_attestation(AttestationRecord("att1", NOW, "s", "snp", {"submods": {}}))
    backend.execute("INSERT INTO policies SELECT 'open', 1, dialect, '{\"version\": \"1.0.0\", \"anyOf\": []}', "
                    "content_hash, created_by, created_at, immutable, mac FROM policies WHERE policy_id='strict'")
    backend.execute("UPDATE resources SET policy_id='open'")
    backend.execute("UPDATE reference_sets SET body='{\"values\": [\"bb\"]}'")
    backend.execute("UPDATE attestations SET claims='{\"submods\": {\"cpu0\": {}}}'")
    with pytest.raises(StoreIntegrityError, match="resource r/t/k version 1 fails authentication"):
        store.active_resource("r/t/k")
    with pytest.raises(StoreIntegrityError, match="policy 'open' version 1 fails authentication"):
        registry.current("open")
    with pytest.raises(StoreIntegrityError, match="reference set 'm' fails authentication"):
        store.reference_values()
    with pytest.raises(StoreIntegrityError, match="attestation att1 fails authentication"):
        store.get_attestation("att1")
    with pytest.raises(StoreIntegrityError):
        backend.open(bytes(32)).versions("strict")  # another KEK: nothing authenticates


def test_newer_schema_refused(backend: Backend, store: OpenStore) -> None:
    backend.set_schema_version(99)
    with pytest.raises(StoreError, match="newer than this broker"):
        backend.open()
    backend.set_schema_version(2)
    assert backend.open().verify_logs()  # reopening an up-to-date database changes nothing


# -- the decision generation (kbs.server.decisions caches release inputs on it) --------------------------

POLICY_TEXT = ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": '
               '[{"claim": "snp.vmpl", "equals": 0}]}]}')

def test_every_change_to_decision_inputs_bumps_the_generation(backend: Backend, store: OpenStore) -> None:
    """Resources, policies and reference sets: each change moves the number, by trigger, whoever writes; the
    guest protocol's own writes (sessions, attestations, logs) do not."""
    other = backend.open()  # another replica sees the same number
    registry = PolicyRegistry(store)
    changes: list[tuple[str, Callable[[], object]]] = [
        ("policy", lambda: registry.put("p", POLICY_TEXT, created_by="a", at=NOW)),
        ("new key", lambda: store.put_resource("r/t/k", b"v1", "p", "a", NOW)),
        ("rotation", lambda: store.put_resource("r/t/k", b"v2", "p", "a", NOW)),
        ("disable", lambda: store.set_resource_state("r/t/k", 2, "disabled")),
        ("rebind", lambda: store.bind_policy("r/t/k", "default")),
        ("reference set", lambda: store.put_reference_set(ReferenceSet("m", ("aa",)))),
        ("reference set replaced", lambda: store.put_reference_set(ReferenceSet("m", ("bb",)))),
        ("reference set deleted", lambda: store.delete_reference_set("m")),
        ("key deleted", lambda: store.delete_resource("r/t/k")),
        ("raw SQL", lambda: backend.execute("UPDATE policies SET created_by = ? WHERE policy_id = ?", ("x", "p"))),
    ]
    seen = [store.decision_generation()]
    for name, change in changes:
        change()
        now = store.decision_generation()
        assert now != seen[-1], f"{name} did not change the decision generation"
        assert other.decision_generation() == now
        seen.append(now)
    assert store.mark_attested(session(), "d", "t", NOW, AttestationRecord("att", NOW, "a" * 32, "snp", {}))
    store.append_log(RELEASES, entry(1, "release"))
    store.append_log(REFUSALS, entry(2))
    assert store.decision_generation() == seen[-1]


def test_a_release_is_written_only_under_the_generation_it_was_decided_under(backend: Backend,
                                                                            store: OpenStore) -> None:
    """A release decided on inputs in memory carries their generation: written while the store is still there;
    after a change on another replica, refused as StaleDecision with nothing written, alone and inside a
    group-commit batch, where the other calls commit."""
    decided = store.decision_generation()
    store.append_log(RELEASES, entry(1, "release"), decided)
    PolicyRegistry(backend.open()).put("p", POLICY_TEXT, created_by="a", at=NOW)
    with pytest.raises(StaleDecision, match=f"decided under decision generation {decided}, the store is at "):
        store.append_log(RELEASES, entry(2, "release"), decided)
    current = store.decision_generation()

    async def batch() -> tuple[list[ReleaseRecord | BaseException], GroupCommitWriter]:
        writer = GroupCommitWriter(cast(BatchingStore, store))
        results = await asyncio.gather(*(writer.write(store.append_log, RELEASES, entry(10 + i, "release"),
                                                      decided if i == 3 else current) for i in range(6)),
                                       return_exceptions=True)
        await writer.close()
        return results, writer
    results, writer = asyncio.run(batch())
    assert isinstance(results[3], StaleDecision)
    assert all(isinstance(r, ReleaseRecord) for i, r in enumerate(results) if i != 3), results
    assert (writer.batches, writer.retried) == (1, 1)  # the stale call failed the first run; it alone failed
    logged = sorted(e.resource for e in store.log_entries(RELEASES, limit=50))
    assert logged == sorted(["r/t/1"] + [f"r/t/{10 + i}" for i in range(6) if i != 3])
    assert {h.chain: h.entries for h in store.verify_logs()}[RELEASES] == 6


def test_a_removed_decision_generation_row_fails_closed(backend: Backend, store: OpenStore) -> None:
    """The row deleted behind the broker: every read of the generation, and a release written against one (alone
    or in a batch), is a StoreError naming it; nothing is written."""
    decided = store.decision_generation()
    backend.execute("DELETE FROM decision_generation")
    removed = "no decision generation row: it was removed outside the broker"
    with pytest.raises(StoreError, match=removed):
        store.decision_generation()
    with pytest.raises(StoreError, match=removed):
        store.append_log(RELEASES, entry(1, "release"), decided)

    async def batch() -> list[ReleaseRecord | BaseException]:
        writer = GroupCommitWriter(cast(BatchingStore, store))
        results = await asyncio.gather(writer.write(store.append_log, RELEASES, entry(2, "release"), decided),
                                       return_exceptions=True)
        await writer.close()
        if backend.kind == "postgresql":
            with pytest.raises(StoreError, match=removed):
                await cast(PostgresStore, store).decision_generation_async()
            await cast(PostgresStore, store).aclose()
        return list(results)
    [result] = asyncio.run(batch())
    assert isinstance(result, StoreError) and removed in str(result), result
    assert store.log_entries(RELEASES) == []


def test_the_event_loop_reads_the_decision_generation_and_reconnects_once(backend: Backend) -> None:
    """PostgreSQL answers the generation on the event loop too (no thread hop per resource request), the same
    number as the pool's, moving with a change; a connection killed under it is opened again once."""
    if backend.kind != "postgresql":
        pytest.skip("SQLite reads on the loop anyway (kbs.server.state.BrokerState.read)")
    store = cast(PostgresStore, backend.open())
    on_loop = store.decision_generation_async

    async def go() -> list[int]:
        seen = [await on_loop()]
        PolicyRegistry(store).put("p", POLICY_TEXT, created_by="a", at=NOW)
        seen.append(await on_loop())
        first = store._loop_conn
        killed = backend.query("SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE pid <> "
                               "pg_backend_pid() AND datname = current_database() "
                               "AND query = 'SELECT value FROM decision_generation WHERE id = 1'")
        assert [r["killed"] for r in killed] == [True]  # the loop's connection, the only one that asked
        seen.append(await on_loop())  # a new connection answers
        assert store._loop_conn is not first
        await store.aclose()
        return seen
    seen = asyncio.run(go())
    assert seen[0] != seen[1] == seen[2] == store.decision_generation()


def test_a_policy_is_deleted_only_when_no_key_is_bound_to_it(store: OpenStore) -> None:
    registry = PolicyRegistry(store)
    registry.put("p", POLICY_TEXT, created_by="a", at=NOW)
    registry.put("p", POLICY_TEXT, created_by="a", at=NOW)
    store.put_resource("r/t/k", b"v1", "p", "a", NOW)
    with pytest.raises(PolicyConflict, match=r"bound to 1 key\(s\) \(r/t/k\)"):
        store.delete_policy("p")
    assert len(store.versions("p")) == 2
    store.bind_policy("r/t/k", "default")
    before = store.decision_generation()
    assert store.delete_policy("p") == 2 and store.versions("p") == [] and "p" not in store.policy_ids()
    assert store.decision_generation() != before
    assert store.delete_policy("p") == 0


def test_reference_set_edits_are_not_lost_across_replicas(backend: Backend) -> None:
    """Sixteen admins on two replicas each add a value at once: every value is in the set afterwards."""
    replicas = [PolicyRegistry(backend.open()) for _ in range(2)]
    on_threads(16, lambda i: replicas[i % 2].add_reference_values("m", (f"v{i:02d}",)))
    got = replicas[0].refs.get("m")
    assert got is not None and sorted(got.values) == [f"v{i:02d}" for i in range(16)]
    replicas[1].remove_reference_values("m", ("v03", "v07"))
    got = replicas[0].refs.get("m")
    assert got is not None and len(got.values) == 14 and "v03" not in got.values


def test_log_entries_filtered(store: OpenStore) -> None:
    later = NOW + dt.timedelta(hours=1)
    store.append_log(RELEASES, ReleaseRecord(NOW, "release", "policy", "r/t/a", 1, "s", "snp", "p", "h", None))
    store.append_log(RELEASES, ReleaseRecord(NOW, "deny", "disabled", "r/t/a", None, "s", "tdx", "p", "h", None))
    store.append_log(RELEASES, ReleaseRecord(later, "deny", "policy", "r/t/b", None, "s", "snp", "p", "h", None))

    def reasons(**query: Any) -> list[str]:
        return [e.reason for e in store.log_entries(RELEASES, 0, 100, LogQuery(**query))]
    assert reasons() == ["policy", "disabled", "policy"]
    assert reasons(resource="r/t/a") == ["policy", "disabled"]
    assert reasons(decision="deny", tee="snp") == ["policy"]
    assert reasons(reason="disabled") == ["disabled"]
    assert reasons(since=later) == ["policy"] and reasons(until=NOW) == ["policy", "disabled"]
    assert reasons(resource="r/t/a'; DROP TABLE release_log; --") == []  # values are bound, never spliced
    assert len(store.log_entries(RELEASES, 0, 100)) == 3


# -- owners, owned keys and proposals (issue 15) ----------------------------------------------

OWNED_POLICY = '{"version": "1.0.0", "allOf": [{"authority": "local:snp", "allOf": [{"claim": "snp.measurement", \
"equals": "%s"}]}]}'


def _owner_keys(count: int) -> list[tuple[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    return [(f"hospital-{i}", Ed25519PrivateKey.generate()) for i in range(count)]


def _owned_setup(store: OpenStore, threshold: int = 2) -> tuple[list[tuple[str, Any]], Any]:
    """Three registered owners and a 2-of-3 key bound to policy `owned` (refs none): the owners' private keys and
    a `referenced` callback."""
    from kbs import owners as rules
    registry = PolicyRegistry(store)
    registry.put("owned", OWNED_POLICY % "aa", created_by="a", at=NOW)
    keys = _owner_keys(3)
    for name, private in keys:
        store.add_owner(rules.Owner(name, rules.public_pem(private.public_key()), "admin", NOW))
    store.create_owned_key(rules.OwnedKey("r/t/owned", tuple(n for n, _ in keys), threshold, "generated", False,
                                          "admin", NOW), b"sealed-1", "owned", lambda text: frozenset())
    return keys, (lambda text: frozenset())


def _proposal(store: OpenStore, change: dict[str, Any], referenced: Any, *, expires: dt.datetime | None = None) -> str:
    from kbs import owners as rules
    state = store.owned_state("r/t/owned", referenced)
    assert state is not None
    expires = expires or NOW + dt.timedelta(days=1)
    doc = rules.new_proposal("r/t/owned", rules.digest(state), change, expires, rules.OPERATOR)
    pid = rules.proposal_id(doc)
    store.add_proposal(rules.Proposal(pid, "r/t/owned", doc, "open", "admin", NOW, expires), referenced, "admin")
    return pid


def _approval(keys: list[tuple[str, Any]], i: int, pid: str) -> Any:
    from kbs import owners as rules
    name, private = keys[i]
    return rules.Approval(pid, name, rules.sign_approval(private, pid), NOW)


def test_owned_key_quorum_applies_once_and_stale_proposals_are_refused(store: OpenStore) -> None:
    keys, referenced = _owned_setup(store)
    text = OWNED_POLICY % "bb"
    pid = _proposal(store, {"kind": "policy", "text": text}, referenced)
    other = _proposal(store, {"kind": "value", "generate": 32}, referenced)
    first = store.approve_proposal(pid, _approval(keys, 0, pid), NOW, referenced, None)
    assert (first.result, first.counted) == ("counted", 1) and PolicyRegistry(store).current("owned").version == 1
    again = store.approve_proposal(pid, _approval(keys, 0, pid), NOW, referenced, None)
    assert (again.result, again.counted) == ("again", 1)  # the same owner counts once
    applied = store.approve_proposal(pid, _approval(keys, 2, pid), NOW, referenced, None)
    assert applied.result == "applied" and applied.proposal.status == "applied"
    assert PolicyRegistry(store).current("owned").text == text
    closed = store.approve_proposal(pid, _approval(keys, 1, pid), NOW, referenced, None)
    assert closed.result == "closed" and PolicyRegistry(store).current("owned").version == 2
    stale = store.approve_proposal(other, _approval(keys, 1, other), NOW, referenced, b"sealed-2")
    assert stale.result == "stale" and store.get_proposal(other)[0].status == "stale"  # type: ignore[index]
    assert [v.version for v in store.resource_versions("r/t/owned")] == [1]  # the value did not change
    reasons = [(e.decision, e.reason) for e in store.log_entries(RELEASES)]
    assert reasons == [("owner", "proposal")] * 2 + [("owner", "approve")] * 3 + [("owner", "apply"),
                                                                                  ("owner", "closed"),
                                                                                  ("owner", "stale")]
    assert all("sealed" not in (e.detail or "") for e in store.log_entries(RELEASES))


def test_expired_proposal_is_refused_and_closed(store: OpenStore) -> None:
    keys, referenced = _owned_setup(store)
    pid = _proposal(store, {"kind": "delete"}, referenced, expires=NOW + dt.timedelta(minutes=1))
    late = NOW + dt.timedelta(minutes=2)
    out = store.approve_proposal(pid, _approval(keys, 0, pid), late, referenced, None)
    assert out.result == "expired" and store.get_proposal(pid)[0].status == "expired"  # type: ignore[index]
    assert store.resource_versions("r/t/owned")


def test_concurrent_approvals_from_two_replicas_apply_exactly_once(backend: Backend) -> None:
    replicas = [backend.open() for _ in range(2)]
    keys, referenced = _owned_setup(replicas[0])
    rounds = 4
    for n in range(rounds):
        pid = _proposal(replicas[0], {"kind": "value", "generate": 32}, referenced)
        # all three owners at once, on two replicas: two approvals reach the threshold of 2, one applies
        def approve(i: int, pid: str = pid) -> Any:
            return replicas[i % 2].approve_proposal(pid, _approval(keys, i, pid), NOW, referenced,
                                                    f"sealed-{pid[:8]}-{i}".encode())
        outcomes = on_threads(3, approve)
        results = sorted(o.result for o in outcomes)
        assert results.count("applied") == 1, results
        assert results in (["applied", "closed", "counted"], ["applied", "counted", "counted"]), results
        versions = replicas[1].resource_versions("r/t/owned")
        assert [v.version for v in versions] == list(range(1, n + 3))
        assert [v.state for v in versions].count("active") == 1
    applies = replicas[1].log_entries(RELEASES, limit=1000, query=LogQuery(reason="apply"))
    assert len(applies) == rounds
    replicas[1].verify_logs()


def test_owner_rows_are_authenticated(backend: Backend, store: OpenStore) -> None:
    _owned_setup(store)
    backend.execute("UPDATE owned_resources SET threshold = 1")
    with pytest.raises(StoreIntegrityError, match="owned_resources row r/t/owned"):
        store.owned_key("r/t/owned")
    backend.execute("UPDATE owners SET public_key = 'forged' WHERE name = 'hospital-0'")
    with pytest.raises(StoreIntegrityError, match="owners row hospital-0"):
        store.get_owner("hospital-0")


def test_owner_registry_rules(store: OpenStore) -> None:
    from kbs import owners as rules
    keys, referenced = _owned_setup(store)
    name, private = keys[0]
    with pytest.raises(rules.OwnerError, match="never replaced"):
        store.add_owner(rules.Owner(name, rules.public_pem(private.public_key()), "admin", NOW))
    with pytest.raises(rules.OwnerError, match="owns r/t/owned"):
        store.remove_owner(name)
    with pytest.raises(rules.OwnerError, match="exists"):  # an owned key is created new
        store.create_owned_key(rules.OwnedKey("r/t/owned", (name,), 1, "generated", False, "a", NOW), b"s",
                               "owned", referenced)
    with pytest.raises(rules.OwnerError, match="governs the owned key r/t/owned"):
        store.create_owned_key(rules.OwnedKey("r/t/other", (name,), 1, "generated", False, "a", NOW), b"s",
                               "owned", referenced)
    assert [o.name for o in store.list_owners()] == [n for n, _ in keys]


# -- contributed keys and deposit slots (issue 15, items 3-4) --------------------------------------------

def _empty_owned(store: OpenStore, kind: str, path: str) -> list[tuple[str, Any]]:
    from kbs import owners as rules
    PolicyRegistry(store).put(f"pol-{kind}", OWNED_POLICY % "aa", created_by="a", at=NOW)
    keys = _owner_keys(3)
    for name, private in keys:
        store.add_owner(rules.Owner(name, rules.public_pem(private.public_key()), "admin", NOW))
    store.create_owned_key(rules.OwnedKey(path, tuple(n for n, _ in keys), 2, kind, kind == "contributed", "admin",
                                          NOW), b"", f"pol-{kind}", lambda text: frozenset())
    return keys


def _entry(path: str, reason: str) -> ReleaseRecord:
    return ReleaseRecord(NOW, "owner", reason, path, None, None, None, None, None, None, actor="x", detail=reason)


def test_contributions_are_final_kept_in_owner_order_and_authenticated(backend: Backend, store: OpenStore) -> None:
    from kbs import owners as rules
    keys = _empty_owned(store, "contributed", "r/t/pool")
    replica = backend.open()
    for i in (2, 0, 1):  # contributed out of order, kept in the key's owner order
        name = keys[i][0]
        done = (store if i % 2 else replica).add_contribution(
            rules.Contribution("r/t/pool", name, None if i else OWNED_POLICY % "cc", f"sig-{i}", NOW),
            f"sealed-share-{i}".encode(), _entry("r/t/pool", "contribute"))
        assert done[1] == 3
    shares = replica.owner_contributions("r/t/pool")
    assert [c.owner for c, _ in shares] == [n for n, _ in keys]
    assert [s for _, s in shares] == [f"sealed-share-{i}".encode() for i in range(3)]
    assert shares[0][0].policy == OWNED_POLICY % "cc" and shares[1][0].policy is None
    with pytest.raises(rules.OwnerError, match="final"):
        store.add_contribution(rules.Contribution("r/t/pool", keys[0][0], None, "again", NOW), b"other",
                               _entry("r/t/pool", "contribute"))
    with pytest.raises(rules.OwnerError, match="not an owner"):
        store.add_contribution(rules.Contribution("r/t/pool", "mallory", None, "s", NOW), b"x",
                               _entry("r/t/pool", "contribute"))
    logged = [e for e in store.log_entries(RELEASES) if e.reason == "contribute"]
    assert len(logged) == 3 and not any(b"sealed-share" in (e.detail or "").encode() for e in logged)
    backend.execute("UPDATE owner_contributions SET policy = NULL")  # an owner's own policy dropped behind the broker
    with pytest.raises(StoreIntegrityError):
        store.owner_contributions("r/t/pool")


def test_a_deposit_slot_is_filled_once_across_replicas(backend: Backend, store: OpenStore) -> None:
    from kbs import owners as rules
    _empty_owned(store, "deposit", "r/t/outcome")
    assert [v.state for v in store.resource_versions("r/t/outcome")] == [rules.PENDING]
    replicas = [backend.open() for _ in range(2)]

    def fill(i: int) -> str:
        try:
            replicas[i % 2].deposit("r/t/outcome", f"sealed-{i}".encode(), f"tee-{i}", NOW,
                                    _entry("r/t/outcome", "deposit"))
            return "filled"
        except rules.OwnerError as exc:
            return exc.check
    results = on_threads(6, fill)
    assert sorted(results) == ["deposit.exists"] * 5 + ["filled"]
    [version] = store.resource_versions("r/t/outcome")
    assert version.state == "active" and version.sealed == f"sealed-{results.index('filled')}".encode()
    assert len([e for e in store.log_entries(RELEASES) if e.reason == "deposit"]) == 1
