"""The SQLite store: sessions consumed once, versions, policies, the release-log hash chain, and
several processes sharing one database."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from kbs.policy.lifecycle import PolicyConflict, PolicyRegistry
from kbs.policy.refvalues import ReferenceSet
from kbs.store.base import AttestationRecord, ReleaseRecord, Session, StoreError
from kbs.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)


def session(sid: str = "a" * 32, expires: dt.datetime = NOW + dt.timedelta(minutes=5)) -> Session:
    return Session(sid, "snp", "nonce", NOW, expires, "authed")


def test_session_nonce_is_consumed_exactly_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db")
    store.create_session(session())
    assert store.mark_attested("a" * 32, "digest", "token", NOW)
    assert not store.mark_attested("a" * 32, "digest", "token", NOW)  # replay
    got = store.get_session("a" * 32)
    assert got is not None and got.state == "attested" and got.token == "token"
    store.create_session(session("b" * 32, expires=NOW))
    assert not store.mark_attested("b" * 32, "d", "t", NOW)  # expired
    assert store.purge_expired_sessions(NOW) == 1 and store.get_session("b" * 32) is None


def _race(path: str, sid: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = SqliteStore(Path(path))
    results.put(store.mark_attested(sid, "d", "t", NOW))


def test_two_processes_race_for_one_nonce(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db")
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
    one, two = SqliteStore(tmp_path / "kbs.db"), SqliteStore(tmp_path / "kbs.db")
    assert one.get_or_create_secret("signing", b"first") == b"first"
    assert two.get_or_create_secret("signing", b"second") == b"first"


def test_resource_versions_disable_enable_delete(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db")
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
    store = SqliteStore(tmp_path / "kbs.db")
    store.put_reference_set(ReferenceSet("m", ("aa",), expires=NOW))
    policy = '{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [' \
             '{"claim": "snp.measurement", "in": {"ref": "m"}}]}]}'
    PolicyRegistry(store).put("p", policy, created_by="a", at=NOW)
    other = PolicyRegistry(SqliteStore(tmp_path / "kbs.db"))  # another replica
    assert other.current("p").version == 1
    assert other.refs.get("m") is not None and other.refs.get("m").expires == NOW  # type: ignore[union-attr]
    stale = other.current("p")
    PolicyRegistry(store).put("p", policy, created_by="b", at=NOW)
    with pytest.raises(PolicyConflict, match="already exists"):
        store.append(stale)  # a writer that read version 1 cannot write version 1 again


def test_release_log_is_a_hash_chain(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db")
    for i in range(5):
        rec = store.append_release(ReleaseRecord(NOW, "release" if i % 2 else "deny", "policy", f"r/t/{i}", 1,
                                                 "s", "snp", "default", "hash", None))
        assert rec.seq == i + 1 and rec.entry_hash
    assert store.verify_release_chain() == 5
    assert [r.resource for r in store.release_log(after_seq=3)] == ["r/t/3", "r/t/4"]
    db = sqlite3.connect(tmp_path / "kbs.db")
    db.execute("UPDATE release_log SET decision='release' WHERE seq=1")
    db.commit()
    with pytest.raises(StoreError, match="entry 1 does not match"):
        store.verify_release_chain()


def test_attestation_records(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.db")
    store.record_attestation(AttestationRecord("att1", NOW, "s", "snp", {"submods": {}}))
    got = store.get_attestation("att1")
    assert got is not None and got.claims == {"submods": {}} and store.get_attestation("x") is None
    assert store.purge_attestations(NOW) == 0  # not older than NOW
    assert store.purge_attestations(NOW + dt.timedelta(seconds=1)) == 1 and store.get_attestation("att1") is None


def test_newer_schema_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "kbs.db")
    db = sqlite3.connect(tmp_path / "kbs.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    with pytest.raises(StoreError, match="newer than this broker"):
        SqliteStore(tmp_path / "kbs.db")
