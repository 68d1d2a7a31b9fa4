"""SQLite store: the embedded default, shared safely by several processes on one host.

WAL journal with synchronous=FULL, so a committed transaction survives SIGKILL and power
loss; busy_timeout so concurrent replicas queue rather than fail.  One connection per
thread (sqlite3 objects are not shared across threads).  The release log is a hash chain:
each entry commits to the previous one, so an edited or deleted row is detectable.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from kbs.policy.lifecycle import PolicyConflict, PolicyVersion
from kbs.policy.refvalues import ReferenceSet, ReferenceValues
from kbs.store.base import AttestationRecord, ReleaseRecord, ResourceVersion, Session, StoreError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, tee TEXT NOT NULL, nonce TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL,
    evidence_digest TEXT, token TEXT);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    path TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, sealed BLOB NOT NULL,
    policy_id TEXT NOT NULL, created_by TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (path, version));
CREATE TABLE IF NOT EXISTS policies (
    policy_id TEXT NOT NULL, version INTEGER NOT NULL, dialect TEXT NOT NULL, text TEXT NOT NULL,
    content_hash TEXT NOT NULL, created_by TEXT NOT NULL, created_at REAL NOT NULL, immutable INTEGER NOT NULL,
    PRIMARY KEY (policy_id, version));
CREATE TABLE IF NOT EXISTS reference_sets (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attestations (
    attestation_id TEXT PRIMARY KEY, at REAL NOT NULL, session_id TEXT NOT NULL, tee TEXT NOT NULL,
    claims TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS attestations_at ON attestations(at);
CREATE TABLE IF NOT EXISTS release_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, decision TEXT NOT NULL, reason TEXT NOT NULL,
    resource TEXT NOT NULL, version INTEGER, session_id TEXT, tee TEXT, policy_id TEXT, policy_hash TEXT,
    attestation_id TEXT, prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS admin_token_ids (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL);
"""
GENESIS = "0" * 64


def _ts(when: datetime) -> float:
    return when.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def release_entry_hash(prev_hash: str, record: ReleaseRecord) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON (seq and hash excluded)."""
    body = {k: v for k, v in asdict(record).items() if k not in ("seq", "entry_hash")}
    body["at"] = record.at.timestamp()
    return hashlib.sha256((prev_hash + json.dumps(body, sort_keys=True)).encode()).hexdigest()


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connection()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"database {path} has schema {version}, newer than this broker's "
                             f"{SCHEMA_VERSION}; upgrade the broker")
        db.executescript(SCHEMA)  # idempotent; executescript manages its own transaction
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connection and transactions -------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: writers serialise on the database lock, readers never block."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path} is unavailable: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path} could not commit: {exc}") from exc

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        db = self._connection()
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path} read failed: {exc}") from exc

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- sessions --------------------------------------------------------------------------

    def create_session(self, session: Session) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?)",
                       (session.session_id, session.tee, session.nonce, _ts(session.created_at),
                        _ts(session.expires_at), session.state, session.evidence_digest, session.token))

    def get_session(self, session_id: str) -> Session | None:
        rows = self._read("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        if not rows:
            return None
        r = rows[0]
        return Session(r["session_id"], r["tee"], r["nonce"], _dt(r["created_at"]), _dt(r["expires_at"]),
                       r["state"], r["evidence_digest"], r["token"])

    def mark_attested(self, session_id: str, evidence_digest: str, token: str, now: datetime) -> bool:
        """Consume the session's nonce: true for exactly one caller, only while the session is live."""
        with self._tx() as db:
            cur = db.execute("UPDATE sessions SET state='attested', evidence_digest=?, token=? "
                             "WHERE session_id=? AND state='authed' AND expires_at > ?",
                             (evidence_digest, token, session_id, _ts(now)))
            return cur.rowcount == 1

    def purge_expired_sessions(self, now: datetime) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM sessions WHERE expires_at <= ?", (_ts(now),)).rowcount

    # -- admin tokens ------------------------------------------------------------------------

    def use_token_id(self, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Record an admin token's `jti`: true the first time, false for a replay still in its lifetime."""
        with self._tx() as db:
            db.execute("DELETE FROM admin_token_ids WHERE expires_at <= ?", (_ts(now),))
            cur = db.execute("INSERT OR IGNORE INTO admin_token_ids VALUES (?, ?)", (jti, _ts(expires_at)))
            return cur.rowcount == 1

    # -- the broker's own secrets ------------------------------------------------------------

    def get_or_create_secret(self, name: str, create: bytes) -> bytes:
        """The stored value, or `create` stored now: replicas starting together agree on one."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (name, create))
            value: bytes = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()[0]
            return value

    # -- resources -------------------------------------------------------------------------

    def put_resource(self, path: str, sealed: bytes, policy_id: str, created_by: str, at: datetime) -> int:
        with self._tx() as db:
            row = db.execute("SELECT MAX(version) FROM resources WHERE path = ?", (path,)).fetchone()
            version = (row[0] or 0) + 1
            db.execute("UPDATE resources SET state='disabled' WHERE path=? AND state='active'", (path,))
            db.execute("INSERT INTO resources VALUES (?,?,?,?,?,?,?)",
                       (path, version, "active", sealed, policy_id, created_by, _ts(at)))
            return version

    @staticmethod
    def _resource(r: sqlite3.Row) -> ResourceVersion:
        return ResourceVersion(r["path"], r["version"], r["state"], r["sealed"], r["policy_id"], r["created_by"],
                               _dt(r["created_at"]))

    def active_resource(self, path: str) -> ResourceVersion | None:
        rows = self._read("SELECT * FROM resources WHERE path=? AND state='active' ORDER BY version DESC LIMIT 1",
                          (path,))
        return self._resource(rows[0]) if rows else None

    def resource_versions(self, path: str) -> list[ResourceVersion]:
        return [self._resource(r) for r in self._read("SELECT * FROM resources WHERE path=? ORDER BY version",
                                                      (path,))]

    def resource_paths(self) -> list[str]:
        return [r["path"] for r in self._read("SELECT DISTINCT path FROM resources ORDER BY path")]

    def set_resource_state(self, path: str, version: int | None, state: str) -> int:
        """Enable or disable one version; enabling disables the others.

        Without a version, disabling means "whatever is being released now" (the active
        version) and enabling means the latest.
        """
        with self._tx() as db:
            if version is None and state == "disabled":
                return db.execute("UPDATE resources SET state='disabled' WHERE path=? AND state='active'",
                                  (path,)).rowcount
            if version is None:
                row = db.execute("SELECT MAX(version) FROM resources WHERE path=?", (path,)).fetchone()
                version = row[0]
                if version is None:
                    return 0
            if state == "active":
                db.execute("UPDATE resources SET state='disabled' WHERE path=? AND version<>?", (path, version))
            return db.execute("UPDATE resources SET state=? WHERE path=? AND version=?",
                              (state, path, version)).rowcount

    def delete_resource(self, path: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM resources WHERE path=?", (path,)).rowcount

    def bind_policy(self, path: str, policy_id: str) -> int:
        with self._tx() as db:
            return db.execute("UPDATE resources SET policy_id=? WHERE path=?", (policy_id, path)).rowcount

    # -- policies and reference values (kbs.policy.lifecycle.PolicyStore) ------------------

    def versions(self, policy_id: str) -> list[PolicyVersion]:
        rows = self._read("SELECT * FROM policies WHERE policy_id=? ORDER BY version", (policy_id,))
        return [PolicyVersion(r["policy_id"], r["version"], r["dialect"], r["text"], r["content_hash"],
                              r["created_by"], _dt(r["created_at"]), bool(r["immutable"])) for r in rows]

    def append(self, version: PolicyVersion) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO policies VALUES (?,?,?,?,?,?,?,?)",
                           (version.policy_id, version.version, version.dialect, version.text,
                            version.content_hash, version.created_by, _ts(version.created_at),
                            int(version.immutable)))
        except sqlite3.IntegrityError as exc:
            raise PolicyConflict(f"policy {version.policy_id!r} version {version.version} already exists "
                                 "(changed concurrently); retry") from exc

    def policy_ids(self) -> list[str]:
        return [r["policy_id"] for r in self._read("SELECT DISTINCT policy_id FROM policies ORDER BY policy_id")]

    def reference_values(self) -> ReferenceValues:
        rows = self._read("SELECT name, body FROM reference_sets")
        return ReferenceValues.from_json({r["name"]: json.loads(r["body"]) for r in rows})

    def put_reference_set(self, ref: ReferenceSet) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO reference_sets VALUES (?, ?)", (ref.name, json.dumps(ref.to_json())))

    def delete_reference_set(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM reference_sets WHERE name=?", (name,))

    # -- attestations and the release log --------------------------------------------------

    def record_attestation(self, record: AttestationRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO attestations VALUES (?,?,?,?,?)",
                       (record.attestation_id, _ts(record.at), record.session_id, record.tee,
                        json.dumps(record.claims)))

    def get_attestation(self, attestation_id: str) -> AttestationRecord | None:
        rows = self._read("SELECT * FROM attestations WHERE attestation_id=?", (attestation_id,))
        if not rows:
            return None
        r = rows[0]
        return AttestationRecord(r["attestation_id"], _dt(r["at"]), r["session_id"], r["tee"], json.loads(r["claims"]))

    def purge_attestations(self, before: datetime) -> int:
        """Stored claims are for dry-runs and audits; they expire (the release log keeps the ids)."""
        with self._tx() as db:
            return db.execute("DELETE FROM attestations WHERE at < ?", (_ts(before),)).rowcount

    def append_release(self, record: ReleaseRecord) -> ReleaseRecord:
        """Append to the hash chain; durable when this returns (synchronous=FULL)."""
        with self._tx() as db:
            row = db.execute("SELECT entry_hash FROM release_log ORDER BY seq DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            entry_hash = release_entry_hash(prev, record)
            cur = db.execute("INSERT INTO release_log (at, decision, reason, resource, version, session_id, tee, "
                             "policy_id, policy_hash, attestation_id, prev_hash, entry_hash) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                             (_ts(record.at), record.decision, record.reason, record.resource, record.version,
                              record.session_id, record.tee, record.policy_id, record.policy_hash,
                              record.attestation_id, prev, entry_hash))
            seq = cur.lastrowid
        return ReleaseRecord(**{**asdict(record), "seq": seq, "entry_hash": entry_hash})

    def release_log(self, after_seq: int = 0, limit: int = 100) -> list[ReleaseRecord]:
        rows = self._read("SELECT * FROM release_log WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        return [ReleaseRecord(at=_dt(r["at"]), decision=r["decision"], reason=r["reason"], resource=r["resource"],
                              version=r["version"], session_id=r["session_id"], tee=r["tee"],
                              policy_id=r["policy_id"], policy_hash=r["policy_hash"],
                              attestation_id=r["attestation_id"], seq=r["seq"], entry_hash=r["entry_hash"])
                for r in rows]

    def verify_release_chain(self) -> int:
        """Recompute the hash chain; return the number of entries, or raise naming the first bad one."""
        prev = GENESIS
        count = 0
        for r in self._read("SELECT * FROM release_log ORDER BY seq"):
            record = ReleaseRecord(at=_dt(r["at"]), decision=r["decision"], reason=r["reason"],
                                   resource=r["resource"], version=r["version"], session_id=r["session_id"],
                                   tee=r["tee"], policy_id=r["policy_id"], policy_hash=r["policy_hash"],
                                   attestation_id=r["attestation_id"])
            if r["prev_hash"] != prev or release_entry_hash(prev, record) != r["entry_hash"]:
                raise StoreError(f"release log entry {r['seq']} does not match the hash chain")
            prev = r["entry_hash"]
            count += 1
        return count
