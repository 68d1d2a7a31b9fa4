"""The SQLite store: sessions consumed once, versions, policies, the release-log hash chain, and
several processes sharing one database."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from kbs.audit.chain import REFUSALS, RELEASES
from kbs.policy.lifecycle import BindingLocked, PolicyConflict, PolicyRegistry
from kbs.policy.refvalues import ReferenceSet
from kbs.store.base import AttestationRecord, ReleaseRecord, Session, StoreError
from kbs.store.integrity import StoreIntegrityError
from kbs.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
KEY = bytes(range(32))  # the row-MAC key (the daemon derives it from the KEK)


def session(sid: str = "a" * 32, expires: dt.datetime = NOW + dt.timedelta(minutes=5)) -> Session:
    return Session(sid, "snp", "nonce", NOW, expires, "authed")


def test_session_nonce_is_consumed_exactly_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    store.create_session(session())
    assert store.mark_attested("a" * 32, "digest", "token", NOW)
    assert not store.mark_attested("a" * 32, "digest", "token", NOW)  # replay
    got = store.get_session("a" * 32)
    assert got is not None and got.state == "attested" and got.token == "token"
    store.create_session(session("b" * 32, expires=NOW))
    assert not store.mark_attested("b" * 32, "d", "t", NOW)  # expired
    assert store.purge_expired_sessions(NOW) == 1 and store.get_session("b" * 32) is None


def _race(path: str, sid: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = SqliteStore(Path(path), KEY)
    results.put(store.mark_attested(sid, "d", "t", NOW))


def test_two_processes_race_for_one_nonce(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    store.create_session(session())
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "kbs.db"), "a" * 32, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get(timeout=5) for _ in procs) == [False, False, False, True]


def test_secret_created_once(tmp_path: Path) -> None:
    one, two = SqliteStore(tmp_path / "kbs.db", KEY), SqliteStore(tmp_path / "kbs.db", KEY)
    assert one.get_or_create_secret("signing", b"first") == b"first"
    assert two.get_or_create_secret("signing", b"second") == b"first"


def test_resource_versions_disable_enable_delete(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    assert store.put_resource("r/t/k", b"v1", "default", "alice", NOW) == 1
    assert store.put_resource("r/t/k", b"v2", "default", "alice", NOW) == 2
    active = store.active_resource("r/t/k")
    assert active is not None and (active.version, active.sealed) == (2, b"v2")
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
    store.set_resource_state("r/t/k", None, "disabled")
    assert store.bind_policy("r/t/k", "strict") == 2
    assert {v.policy_id for v in store.resource_versions("r/t/k")} == {"strict"}
    assert store.resource_paths() == ["r/t/k"]
    assert store.delete_resource("r/t/k") == 2 and store.resource_paths() == []


def test_policy_registry_persists_and_detects_concurrent_writers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    store.put_reference_set(ReferenceSet("m", ("aa",), expires=NOW))
    policy = '{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [' \
             '{"claim": "snp.measurement", "in": {"ref": "m"}}]}]}'
    PolicyRegistry(store).put("p", policy, created_by="a", at=NOW)
    other = PolicyRegistry(SqliteStore(tmp_path / "kbs.db", KEY))  # another replica
    assert other.current("p").version == 1
    assert other.refs.get("m") is not None and other.refs.get("m").expires == NOW  # type: ignore[union-attr]
    stale = other.current("p")
    PolicyRegistry(store).put("p", policy, created_by="b", at=NOW)
    with pytest.raises(PolicyConflict, match="already exists"):
        store.append(stale)  # a writer that read version 1 cannot write version 1 again


def entry(i: int, decision: str = "deny") -> ReleaseRecord:
    return ReleaseRecord(NOW, decision, "policy", f"r/t/{i}", 1, "s", "snp", "default", "hash", None)


def test_release_log_is_a_hash_chain(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    for i in range(5):
        rec = store.append_log(RELEASES, entry(i, "release" if i % 2 else "deny"))
        assert rec.seq == i + 1 and rec.entry_hash
    [releases, refusals] = store.verify_logs()
    assert (releases.entries, releases.head_seq, refusals.entries) == (5, 5, 0)
    assert [r.resource for r in store.log_entries(RELEASES, after_seq=3)] == ["r/t/3", "r/t/4"]
    db = sqlite3.connect(tmp_path / "kbs.db")
    db.execute("UPDATE release_log SET decision='release' WHERE seq=1")
    db.commit()
    with pytest.raises(StoreIntegrityError, match="entry 1 was edited outside the broker"):
        store.verify_logs()
    with pytest.raises(StoreIntegrityError, match="entry 1 was edited"):
        store.log_entries(RELEASES)  # `kbs log` never shows an edited entry as genuine


def test_log_rewritten_with_recomputed_hashes_is_caught(tmp_path: Path) -> None:
    """Rewriting every release as a deny and recomputing the chain needs the KEK-derived MAC key."""
    from kbs.audit import chain as chains

    store = SqliteStore(tmp_path / "kbs.db", KEY)
    for i in range(3):
        store.append_log(RELEASES, entry(i, "release"))
    db = sqlite3.connect(tmp_path / "kbs.db")
    db.row_factory = sqlite3.Row
    prev = chains.GENESIS
    for row in db.execute("SELECT * FROM release_log ORDER BY seq").fetchall():
        body = {k: row[k] for k in ("at", "decision", "reason", "resource", "version", "session_id", "tee",
                                    "policy_id", "policy_hash", "attestation_id", "ref", "actor", "detail")}
        body["decision"] = "deny"  # the public formula, recomputed: only the MACs are missing
        hashed = chains.entry_hash(prev, chains.body_hash(body))
        db.execute("UPDATE release_log SET decision='deny', prev_hash=?, entry_hash=? WHERE seq=?",
                   (prev, hashed, row["seq"]))
        prev = hashed
    db.commit()
    with pytest.raises(StoreIntegrityError, match="fails authentication"):
        store.verify_logs()


def test_newest_entry_deleted_is_caught_and_stops_appends(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    for i in range(3):
        store.append_log(RELEASES, entry(i, "release"))
    db = sqlite3.connect(tmp_path / "kbs.db")
    db.execute("DELETE FROM release_log WHERE seq=3")
    db.commit()
    with pytest.raises(StoreIntegrityError, match="recorded head is entry 3: entries were removed"):
        store.verify_logs()
    with pytest.raises(StoreIntegrityError, match="newest entry is 2 but its recorded head is 3"):
        store.append_log(RELEASES, entry(9))  # fail closed: no release is logged, so none leaves


def test_refusal_log_retention_moves_the_anchor(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    old, new = NOW - dt.timedelta(days=40), NOW
    for i in range(4):
        store.append_log(REFUSALS, replace(entry(i), at=old if i < 3 else new))
    assert store.purge_refusals(NOW - dt.timedelta(days=30)) == 3
    heads = {h.chain: h for h in store.verify_logs()}
    assert (heads[REFUSALS].first_seq, heads[REFUSALS].head_seq, heads[REFUSALS].entries) == (4, 4, 1)
    store.append_log(REFUSALS, entry(5))
    assert [r.seq for r in store.log_entries(REFUSALS)] == [4, 5] and store.verify_logs()
    assert store.purge_refusals(NOW - dt.timedelta(days=30)) == 0


def test_rows_edited_or_forged_outside_the_broker_are_refused(tmp_path: Path) -> None:
    """Holding the database file is not enough to bind a key to an allow-all policy."""
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    registry = PolicyRegistry(store)
    strict = '{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [' \
             '{"claim": "snp.vmpl", "equals": 0}]}]}'
    registry.put("strict", strict, created_by="a", at=NOW)
    store.put_resource("r/t/k", b"sealed", "strict", "a", NOW)
    store.put_reference_set(ReferenceSet("m", ("aa",)))
    store.record_attestation(AttestationRecord("att1", NOW, "s", "snp", {"submods": {}}))
    db = sqlite3.connect(tmp_path / "kbs.db")
    db.execute("INSERT INTO policies SELECT 'open', 1, dialect, '{\"version\": \"1.0.0\", \"anyOf\": []}', "
               "content_hash, created_by, created_at, immutable, mac FROM policies WHERE policy_id='strict'")
    db.execute("UPDATE resources SET policy_id='open'")
    db.execute("UPDATE reference_sets SET body='{\"values\": [\"bb\"]}'")
    db.execute("UPDATE attestations SET claims='{\"submods\": {\"cpu0\": {}}}'")
    db.commit()
    with pytest.raises(StoreIntegrityError, match="resource r/t/k version 1 fails authentication"):
        store.active_resource("r/t/k")
    with pytest.raises(StoreIntegrityError, match="policy 'open' version 1 fails authentication"):
        registry.current("open")
    with pytest.raises(StoreIntegrityError, match="reference set 'm' fails authentication"):
        store.reference_values()
    with pytest.raises(StoreIntegrityError, match="attestation att1 fails authentication"):
        store.get_attestation("att1")
    with pytest.raises(StoreIntegrityError):
        SqliteStore(tmp_path / "kbs.db", bytes(32)).versions("strict")  # another KEK: nothing authenticates


def test_key_bound_to_an_immutable_policy_keeps_its_binding(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
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


def test_version_1_database_is_upgraded_and_authenticated(tmp_path: Path) -> None:
    path = tmp_path / "kbs.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO resources VALUES ('r/t/k', 1, 'active', x'00', 'default', 'a', 1.0)")
    db.execute("INSERT INTO release_log (at, decision, reason, resource, version, session_id, tee, policy_id, "
               "policy_hash, attestation_id, prev_hash, entry_hash) VALUES (1.0, 'release', 'policy', 'r/t/k', 1, "
               "NULL, 'snp', 'default', 'h', NULL, '00', 'old')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SqliteStore(path, KEY)
    assert store.active_resource("r/t/k") is not None
    [releases, _] = store.verify_logs()
    assert releases.entries == 1 and [r.resource for r in store.log_entries(RELEASES)] == ["r/t/k"]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_database_files_are_private(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state" / "kbs.db", KEY)
    store.append_log(RELEASES, entry(1))
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    for name in ("kbs.db", "kbs.db-wal", "kbs.db-shm"):
        assert (tmp_path / "state" / name).stat().st_mode & 0o777 == 0o600, name


V1_SCHEMA = """
CREATE TABLE sessions (session_id TEXT PRIMARY KEY, tee TEXT NOT NULL, nonce TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL, evidence_digest TEXT, token TEXT);
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE resources (path TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, sealed BLOB NOT NULL,
    policy_id TEXT NOT NULL, created_by TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (path, version));
CREATE TABLE policies (policy_id TEXT NOT NULL, version INTEGER NOT NULL, dialect TEXT NOT NULL, text TEXT NOT NULL,
    content_hash TEXT NOT NULL, created_by TEXT NOT NULL, created_at REAL NOT NULL, immutable INTEGER NOT NULL,
    PRIMARY KEY (policy_id, version));
CREATE TABLE reference_sets (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE attestations (attestation_id TEXT PRIMARY KEY, at REAL NOT NULL, session_id TEXT NOT NULL,
    tee TEXT NOT NULL, claims TEXT NOT NULL);
CREATE TABLE release_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, decision TEXT NOT NULL,
    reason TEXT NOT NULL, resource TEXT NOT NULL, version INTEGER, session_id TEXT, tee TEXT, policy_id TEXT,
    policy_hash TEXT, attestation_id TEXT, prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL);
"""


def test_attestation_records(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    store.record_attestation(AttestationRecord("att1", NOW, "s", "snp", {"submods": {}}))
    got = store.get_attestation("att1")
    assert got is not None and got.claims == {"submods": {}} and store.get_attestation("x") is None
    assert store.purge_attestations(NOW) == 0  # not older than NOW
    assert store.purge_attestations(NOW + dt.timedelta(seconds=1)) == 1 and store.get_attestation("att1") is None


def test_newer_schema_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "kbs.db", KEY)
    db = sqlite3.connect(tmp_path / "kbs.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    with pytest.raises(StoreError, match="newer than this broker"):
        SqliteStore(tmp_path / "kbs.db", KEY)
