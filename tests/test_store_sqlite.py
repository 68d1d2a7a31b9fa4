"""What only the SQLite store does: private files, WAL with synchronous=FULL, the upgrade from schema 1.

Everything both backends must do (sessions consumed once, versions, policies, the hash-chained
logs, row MACs, races between replicas) is the store contract, tests/test_store_contract.py.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from kbs.audit.chain import RELEASES
from kbs.store.base import ReleaseRecord
from kbs.store.schema import SCHEMA_VERSION
from kbs.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
KEY = bytes(range(32))  # the row-MAC key (the daemon derives it from the KEK)


def entry(i: int, decision: str = "deny") -> ReleaseRecord:
    return ReleaseRecord(NOW, decision, "policy", f"r/t/{i}", 1, "s", "snp", "default", "hash", None)


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
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


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


def test_wal_with_full_sync(tmp_path: Path) -> None:
    """Committed means durable (power loss included), and readers never wait for the writer."""
    store = SqliteStore(tmp_path / "kbs.db", KEY)
    store.append_log(RELEASES, entry(1))
    db = store._connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
