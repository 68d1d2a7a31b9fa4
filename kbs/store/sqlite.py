"""SQLite store: the embedded default, shared safely by several processes on one host.

WAL journal with synchronous=FULL, so a committed transaction survives SIGKILL and power
loss; busy_timeout so concurrent replicas queue rather than fail.  One connection per
thread (sqlite3 objects are not shared across threads).  The database file (and so its WAL)
is created 0600 in a 0700 directory.

Security-relevant rows carry a MAC under a key derived from the KEK (`integrity.py`), checked
on every read; the release log is a Merkle tree and the refusal log a hash chain (`kbs.audit.chain`),
their heads MAC'd too, so editing, forging or truncating them without the KEK is detected.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from kbs.audit import chain as chains
from kbs.audit.chain import CHAINS, GENESIS, REFUSALS, RELEASES, Head
from kbs.owners import Approval, Contribution, Outcome, OwnedKey, Owner, Proposal, Referenced
from kbs.policy.lifecycle import PolicyConflict, PolicyVersion
from kbs.policy.refvalues import ReferenceSet
from kbs.store import kek_state, schema, tlog
from kbs.store import owners as owner_rows
from kbs.store.base import AttestationRecord, ReleaseRecord, ResourceVersion, Session, StoredCheckpoint, StoreError
from kbs.store.integrity import RowAuthenticator, digest
from kbs.store.kek_state import KekState, Reseal, Unseal, insert_statement
from kbs.store.reads import StoreReads, check_generation, generation_in
from kbs.store.rows import Rows, check_binding_change, policy_in_use, state_changes
from kbs.store.rows import dt as _dt
from kbs.store.rows import log_table as _table
from kbs.store.rows import ts as _ts
from kbs.store.schema import SCHEMA_VERSION

log = logging.getLogger("kbs.store")

# Version 1 had no MACs, no refusal log and hashed entries as SHA-256(prev ‖ JSON of the body).
_V1_COLUMNS = (("resources", "mac TEXT"), ("policies", "mac TEXT"), ("reference_sets", "mac TEXT"),
               ("attestations", "mac TEXT"), ("release_log", "ref TEXT"), ("release_log", "actor TEXT"),
               ("release_log", "detail TEXT"), ("release_log", "mac TEXT"))

# SQLite's wal-index "dead man switch" byte (in <db>-shm): every process with the database open in WAL mode
# holds a read lock on it (https://sqlite.org/walformat.html), so a write-lock query there names another user.
_SHM_DMS = 128
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid


class _Sql:
    """A transaction's connection as kbs.store.kek_state runs SQL on it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, args).fetchall()

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> None:
        self._db.execute(sql, args)

    def executemany(self, sql: str, args: Sequence[tuple[object, ...]]) -> None:
        self._db.executemany(sql, args)

    def insert(self, into: str, rows: Sequence[tuple[object, ...]]) -> None:
        self._db.execute(insert_statement(into, len(rows[0]), len(rows)), [v for row in rows for v in row])


def _set_wal(db: sqlite3.Connection, wait: float = 30.0) -> None:
    """Switch to WAL.  On a new file the switch needs the database to itself and SQLite answers "locked"
    at once, without its busy handler, while another replica starting at the same moment holds it: retry
    (bounded), as the busy handler would."""
    deadline = time.monotonic() + wait
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)



class SqliteStore(StoreReads):
    # WAL readers never wait for writers and read a local file: callers may read on their event loop.
    reads_inline = True

    def __init__(self, path: Path, row_key: bytes) -> None:
        self.path = path
        self._auth = RowAuthenticator(row_key)
        self._rows = Rows(self._auth)
        self._local = threading.local()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():  # SQLite gives the WAL and shm files the database file's mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._thread_writer = threading.Lock()
        self._batch_db: sqlite3.Connection | None = None  # group commit's own connection (see begin_batch)
        self._tails = tlog.Tails()  # where each log stands in the open batch's transaction
        self._lock_fd = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._shm_fd: int | None = None  # other_users' probe, kept open (see there)
        try:
            self._prepare()
        except BaseException:
            self.close()  # a store that failed to open (another KEK, a newer schema) keeps no connection open
            raise

    def _prepare(self) -> None:
        """Create or upgrade the tables, check the KEK, write the log heads a new database lacks."""
        path = self.path
        db = self._connection()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"database {path} has schema {version}, newer than this broker's "
                             f"{SCHEMA_VERSION}; upgrade the broker")
        with self._tx() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]  # re-read under the write lock
            fresh = not tx.execute("SELECT 1 FROM sqlite_master WHERE name='release_log'").fetchone()
            if version == 1 and not fresh:
                for table, column in _V1_COLUMNS:
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            if version < 5 and not fresh:
                for table in ("release_log", "refusal_log"):
                    present = {r["name"] for r in tx.execute(f"PRAGMA table_info({table})").fetchall()}
                    for column, kind in schema.LOG_COLUMNS_V5:
                        if present and column not in present:  # absent table: created whole below
                            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {schema.TYPES['sqlite'][kind]}")
            for statement in schema.statements("sqlite"):
                tx.execute(statement)
            if version < SCHEMA_VERSION:
                if version == 1 and not fresh:
                    self._migrate_v1(tx)
                if not fresh and version < 5:
                    self._build_tree(tx)
                tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            kek_state.check_at_open(_Sql(tx), self._rows, time.time())
            for chain in CHAINS:
                if not tx.execute("SELECT 1 FROM log_heads WHERE chain=?", (chain,)).fetchone():
                    self._write_head(tx, Head(chain, 1, GENESIS, 0, chains.empty_head_hash(chain)))

    # -- connection and transactions -------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._open(same_thread=True)
            self._local.db = db
        return db

    def _open(self, same_thread: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=same_thread)
        _set_wal(db)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        db.row_factory = sqlite3.Row
        return db

    # The right to write, across this process's threads and every process on the file.
    #
    # SQLite's own lock makes a losing writer sleep in its busy handler (1, 2, 5 ... 100 ms), which is what a
    # storm's p99 was made of.  Writers queue on a lock instead: a thread lock within the process, then an
    # exclusive flock on `<db>-writer.lock`, on which the kernel wakes the next waiter the moment the previous
    # one releases it.  SQLite's lock stays underneath (busy_timeout) for anything that writes without it.
    # Both locks may be released by another thread than the one that took them (a batch commits on a thread).

    def _lock_writer(self, blocking: bool = True) -> bool:
        if not self._thread_writer.acquire(blocking=blocking):
            return False
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            self._thread_writer.release()
            return False
        except BaseException:
            self._thread_writer.release()
            raise
        return True

    def _unlock_writer(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._thread_writer.release()

    @contextmanager
    def _writer(self) -> Iterator[None]:
        self._lock_writer()
        try:
            yield
        finally:
            self._unlock_writer()

    # -- batches (group commit) ---------------------------------------------------------------
    #
    # One transaction for several store calls (kbs.store.group_commit): each call's own transaction becomes a
    # savepoint, so a call that fails is undone alone, and nothing is durable, or visible to other
    # connections, before the one COMMIT at the end (which fails all of them if it fails).  A batch runs on
    # its own connection, so reads on other connections never see its uncommitted rows; its steps may run on
    # different threads, one at a time: begin (may wait for the lock), the calls, commit (waits for fsync).

    def try_begin_batch(self) -> bool:
        """Begin a batch if the write lock is free now (never waits); false if it is taken."""
        if not self._lock_writer(blocking=False):
            return False
        self._begin_locked()
        return True

    def begin_batch(self) -> None:
        """Begin a batch, waiting for the write lock."""
        self._lock_writer()
        self._begin_locked()

    def _begin_locked(self) -> None:
        try:
            if self._batch_db is None:
                self._batch_db = self._open(same_thread=False)
            self._tails.reset()
            self._batch_db.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._unlock_writer()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"database {self.path} is unavailable: {exc}") from exc
            raise

    @contextmanager
    def batch_calls(self, savepoints: bool = True) -> Iterator[None]:
        """Store calls made by this thread inside this block join the open batch, each as a savepoint (undone alone
        if it fails), or without (`savepoints=False`: the caller rolls the whole batch back if one fails)."""
        self._local.batch_db, self._local.savepoints = self._batch_db, savepoints
        try:
            yield
            if self._batch_db is not None and not self._batch_db.in_transaction:  # SQLite rolled it back (disk full)
                raise StoreError(f"database {self.path}: the batch's transaction was rolled back by SQLite")
        finally:
            self._local.batch_db = None

    def commit_batch(self) -> None:
        """Make the batch durable (fsync), then let the next writer in; StoreError if the COMMIT failed."""
        db = self._batch_db
        assert db is not None
        try:
            self._tails.write_heads(lambda head: self._store_head(db, head))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
                db.execute("ROLLBACK")
            raise StoreError(f"database {self.path} could not commit: {exc}") from exc
        finally:
            self._tails.reset()
            self._unlock_writer()

    def rollback_batch(self) -> None:
        db = self._batch_db
        assert db is not None
        try:
            if db.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
                db.execute("ROLLBACK")
        finally:
            self._tails.reset()
            self._unlock_writer()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """A whole batch on this thread: begin, the calls made inside the block, commit."""
        self.begin_batch()
        try:
            with self.batch_calls():
                yield
        except BaseException:
            self.rollback_batch()
            raise
        self.commit_batch()

    @contextmanager
    def _savepoint(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A store call inside a batch: undone alone if it fails (the logs' tails with it)."""
        with self._tails.call():
            db.execute("SAVEPOINT call")
            try:
                yield db
            except sqlite3.Error as exc:
                db.execute("ROLLBACK TO call")
                db.execute("RELEASE call")
                raise StoreError(f"database {self.path} write failed: {exc}") from exc
            except BaseException:
                db.execute("ROLLBACK TO call")
                db.execute("RELEASE call")
                raise
            db.execute("RELEASE call")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, taken after the writer lock: writers queue, readers never block.  Inside
        a batch on this thread, a savepoint of the batch's transaction instead."""
        batch_db: sqlite3.Connection | None = getattr(self._local, "batch_db", None)
        if batch_db is not None:
            if not self._local.savepoints:  # a failure fails the whole batch (kbs.store.group_commit)
                try:
                    yield batch_db
                except sqlite3.Error as exc:
                    raise StoreError(f"database {self.path} write failed: {exc}") from exc
                return
            with self._savepoint(batch_db) as inner:
                yield inner
            return
        db = self._connection()
        with self._writer():
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path} is unavailable: {exc}") from exc
            try:
                yield db
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StoreError(f"database {self.path} write failed: {exc}") from exc
            except BaseException:
                db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path} could not commit: {exc}") from exc

    def _select(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path} read failed: {exc}") from exc

    def probe_write(self, now: datetime) -> None:
        """A real write transaction: readiness fails when the disk is full or the file read-only."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO health VALUES (1, ?)", (_ts(now),))

    def __del__(self) -> None:
        for name in ("_lock_fd", "_shm_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        """Close this thread's connection (each I/O thread has its own; the writer lock file stays open), and
        the batch connection when no batch is open."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        if self._batch_db is not None and not self._batch_db.in_transaction:
            self._batch_db.close()
            self._batch_db = None

    # -- sessions --------------------------------------------------------------------------

    def mark_attested(self, session: Session, evidence_digest: str, token: str, now: datetime,
                      record: AttestationRecord | None = None, summary: ReleaseRecord | None = None) -> bool:
        """Consume the session's nonce: true for exactly one caller, only while the session is live; the
        winner's attestation `record` and its release-log `summary` are written in the same transaction (one
        durable write per /attest)."""
        if session.expires_at <= now:
            return False
        with self._tx() as db:
            cur = db.execute("INSERT INTO sessions VALUES (?,?,?,?,?,'attested',?,?) ON CONFLICT (session_id) "
                             "DO NOTHING", (session.session_id, session.tee, session.nonce, _ts(session.created_at),
                                            _ts(session.expires_at), evidence_digest, token))
            won = cur.rowcount == 1
            if won and record is not None:
                self._insert_attestation(db, record)
            if won and summary is not None:
                self._append(db, RELEASES, summary)
            return won

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

    # -- the broker's own secrets (sealed under the KEK with their name as associated data) ----

    def get_or_create_secret(self, name: str, create: bytes) -> bytes:
        """The stored value, or `create` stored now: replicas starting together agree on one."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (name, create))
            value: bytes = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()[0]
            return value

    # -- resources -------------------------------------------------------------------------

    def _resources(self, db: sqlite3.Connection, path: str) -> list[ResourceVersion]:
        return [self._rows.resource(r) for r in db.execute("SELECT * FROM resources WHERE path=? ORDER BY version",
                                                      (path,)).fetchall()]

    def _rewrite_resources(self, db: sqlite3.Connection, versions: list[ResourceVersion]) -> None:
        """Write state and binding changes back with fresh MACs (callers checked the old ones)."""
        for v in versions:
            created_at = _ts(v.created_at)
            db.execute("UPDATE resources SET state=?, policy_id=?, mac=? WHERE path=? AND version=?",
                       (v.state, v.policy_id, self._rows.resource_mac(v.path, v.version, v.state, v.sealed, v.policy_id,
                                                                 v.created_by, created_at), v.path, v.version))

    def _check_binding_change(self, db: sqlite3.Connection, path: str, current: list[ResourceVersion],
                              policy_id: str) -> None:
        check_binding_change(path, current, policy_id, lambda bound: self._policy_versions(db, bound))

    def put_resource(self, path: str, sealed: bytes, policy_id: str, created_by: str, at: datetime) -> int:
        with self._tx() as db:
            current = self._resources(db, path)
            self._check_binding_change(db, path, current, policy_id)
            version = (current[-1].version if current else 0) + 1
            self._rewrite_resources(db, [replace(v, state="disabled") for v in current if v.state == "active"])
            db.execute("INSERT INTO resources VALUES (?,?,?,?,?,?,?,?)",
                       (path, version, "active", sealed, policy_id, created_by, _ts(at),
                        self._rows.resource_mac(path, version, "active", sealed, policy_id, created_by, _ts(at))))
            return version

    def set_resource_state(self, path: str, version: int | None, state: str) -> int:
        """Enable or disable one version (`rows.state_changes`)."""
        with self._tx() as db:
            changed, result = state_changes(self._resources(db, path), version, state)
            self._rewrite_resources(db, changed)
            return result

    def delete_resource(self, path: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM resources WHERE path=?", (path,)).rowcount

    def bind_policy(self, path: str, policy_id: str) -> int:
        with self._tx() as db:
            current = self._resources(db, path)
            self._check_binding_change(db, path, current, policy_id)
            self._rewrite_resources(db, [replace(v, policy_id=policy_id) for v in current])
            return len(current)

    # -- policies and reference values (kbs.policy.lifecycle.PolicyStore) ------------------

    def _policy_versions(self, db: sqlite3.Connection, policy_id: str) -> list[PolicyVersion]:
        return [self._rows.policy_version(r) for r in
                db.execute("SELECT * FROM policies WHERE policy_id=? ORDER BY version", (policy_id,)).fetchall()]

    def versions(self, policy_id: str) -> list[PolicyVersion]:
        try:
            return self._policy_versions(self._connection(), policy_id)
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path} read failed: {exc}") from exc

    def append(self, version: PolicyVersion) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO policies VALUES (?,?,?,?,?,?,?,?,?)",
                           (version.policy_id, version.version, version.dialect, version.text,
                            version.content_hash, version.created_by, _ts(version.created_at),
                            int(version.immutable), self._rows.policy_mac(version)))
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise PolicyConflict(f"policy {version.policy_id!r} version {version.version} already exists "
                                     "(changed concurrently); retry") from exc
            raise

    def put_reference_set(self, ref: ReferenceSet) -> None:
        with self._tx() as db:
            self._write_reference_set(db, ref)

    def edit_reference_set(self, name: str, edit: Callable[[ReferenceSet | None], ReferenceSet]) -> ReferenceSet:
        """Read the set (None if there is none), apply `edit`, write the result: one transaction, so edits
        made together by several admins are applied one after the other, none lost."""
        with self._tx() as db:
            rows = db.execute("SELECT name, body, mac FROM reference_sets WHERE name=?", (name,)).fetchall()
            ref = edit(self._rows.reference_values(rows).get(name))
            self._write_reference_set(db, ref)
            return ref

    def _write_reference_set(self, db: sqlite3.Connection, ref: ReferenceSet) -> None:
        body = json.dumps(ref.to_json())
        db.execute("INSERT OR REPLACE INTO reference_sets VALUES (?, ?, ?)",
                   (ref.name, body, self._rows.reference_set_mac(ref.name, body)))

    def delete_reference_set(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM reference_sets WHERE name=?", (name,))

    def delete_policy(self, policy_id: str) -> int:
        with self._tx() as db:
            bound = db.execute("SELECT DISTINCT path FROM resources WHERE policy_id=? ORDER BY path",
                               (policy_id,)).fetchall()
            if bound:
                raise PolicyConflict(policy_in_use(policy_id, [r["path"] for r in bound]))
            return int(db.execute("DELETE FROM policies WHERE policy_id=?", (policy_id,)).rowcount)

    # -- attestations ----------------------------------------------------------------------

    def record_attestation(self, record: AttestationRecord) -> None:
        with self._tx() as db:
            self._insert_attestation(db, record)

    def _insert_attestation(self, db: sqlite3.Connection, record: AttestationRecord) -> None:
        db.execute("INSERT INTO attestations VALUES (?,?,?,?,?,?)", self._rows.attestation_values(record))

    def purge_attestations(self, before: datetime) -> int:
        """Stored claims are for dry-runs and audits; they expire (the release log keeps the ids)."""
        with self._tx() as db:
            return db.execute("DELETE FROM attestations WHERE at < ?", (_ts(before),)).rowcount

    # -- the logs --------------------------------------------------------------------------

    def _head(self, db: sqlite3.Connection, chain: str) -> Head:
        if db is self._batch_db:  # the batch's appends may have moved it: what is read must be current
            self._tails.write_heads(lambda head: self._store_head(db, head), chain)
        return self._rows.head(chain, db.execute("SELECT * FROM log_heads WHERE chain=?", (chain,)).fetchone())

    def _write_head(self, db: sqlite3.Connection, head: Head) -> None:
        self._tails.moved(head.chain)
        self._store_head(db, head)

    def _store_head(self, db: sqlite3.Connection, head: Head) -> None:
        db.execute("INSERT OR REPLACE INTO log_heads VALUES (?,?,?,?,?,?)", self._rows.head_values(head))

    def append_log(self, chain: str, record: ReleaseRecord, generation: int | None = None) -> ReleaseRecord:
        """Append to a log; durable when this returns (synchronous=FULL).  A log truncated or edited outside
        the broker stops every append (and so every release) until an operator looks (kbs.store.tlog).
        `generation`: only while the decision generation is still that (under the write lock, so no change
        commits between the check and the append)."""
        _table(chain)  # an unknown log is refused before anything is written
        with self._tx() as db:
            if generation is not None:
                check_generation(generation, generation_in(db))
            return self._append(db, chain, record)

    def _append(self, db: sqlite3.Connection, chain: str, record: ReleaseRecord) -> ReleaseRecord:
        # Inside a group commit's batch, the log's head and tree edge are read and checked by its first append;
        # the others start from the tail the batch's own transaction left (kbs.store.tlog.Tail).
        # The head row is then written once, at the batch's end (kbs.store.tlog.Tails).
        in_batch = db is self._batch_db
        start = self._tails.start(chain, lambda: self._head(db, chain)) if in_batch else self._head(db, chain)
        appended, tail = tlog.append_entry(_Sql(db), self._rows, start, record.loggable())
        if in_batch:
            self._tails.appended(tail)
        else:
            self._write_head(db, tail.head)
        return appended

    def add_log_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        with self._tx() as db:
            return tlog.add_checkpoint(_Sql(db), checkpoint)

    def verify_logs(self) -> list[Head]:
        """Every chain from its anchor to its recorded head: hashes, MACs, nothing missing at the end.

        Heads and rows are read in one read transaction (one WAL snapshot): read apart, an append
        committed in between by another thread or process would look like a truncated log.
        """
        db = self._connection()
        try:
            db.execute("BEGIN")
            try:
                snapshot = [(self._head(db, chain), db.execute(f"SELECT * FROM {_table(chain)} ORDER BY seq")
                             .fetchall()) for chain in CHAINS]
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path} read failed: {exc}") from exc
        return self._rows.verify_chains(snapshot)

    def purge_refusals(self, before: datetime) -> int:
        """Drop refusal-log entries older than `before` from the front; the anchor moves with them."""
        with self._tx() as db:
            head = self._head(db, REFUSALS)
            last = db.execute("SELECT seq, entry_hash FROM refusal_log WHERE at < ? ORDER BY seq DESC LIMIT 1",
                              (_ts(before),)).fetchone()
            if last is None:
                return 0
            count = db.execute("DELETE FROM refusal_log WHERE seq <= ?", (last["seq"],)).rowcount
            self._write_head(db, Head(REFUSALS, last["seq"] + 1, last["entry_hash"], head.head_seq, head.head_hash))
            return count

    # -- owners, owned keys and proposals (kbs.store.owners) -----------------------------------

    def add_owner(self, owner: Owner) -> None:
        with self._tx() as db:
            owner_rows.add_owner(_Sql(db), self._auth, owner)

    def remove_owner(self, name: str) -> bool:
        with self._tx() as db:
            return owner_rows.remove_owner(_Sql(db), self._auth, name)

    def create_owned_key(self, key: OwnedKey, sealed: bytes, policy_id: str, referenced: Referenced) -> int:
        with self._tx() as db:
            return owner_rows.create_owned(_Sql(db), self._rows, key, sealed, policy_id, referenced)

    def add_proposal(self, proposal: Proposal, referenced: Referenced, actor: str) -> None:
        with self._tx() as db:
            owner_rows.add_proposal(_Sql(db), self._rows, lambda r: self._append(db, RELEASES, r), proposal,
                                    referenced, actor)

    def approve_proposal(self, pid: str, approval: Approval, now: datetime, referenced: Referenced,
                         sealed: bytes | None) -> Outcome:
        with self._tx() as db:
            return owner_rows.approve(_Sql(db), self._rows, lambda r: self._append(db, RELEASES, r), pid, approval,
                                      now, referenced, sealed)

    def add_contribution(self, contribution: Contribution, sealed_share: bytes,
                         entry: ReleaseRecord) -> tuple[int, int]:
        with self._tx() as db:
            return owner_rows.add_contribution(_Sql(db), self._rows, lambda r: self._append(db, RELEASES, r),
                                               contribution, sealed_share, entry)

    def deposit(self, path: str, sealed: bytes, by: str, at: datetime, entry: ReleaseRecord) -> int:
        with self._tx() as db:
            return owner_rows.deposit(_Sql(db), self._rows, lambda r: self._append(db, RELEASES, r), path, sealed,
                                      by, at, entry)

    # -- the KEK (kbs.store.kek_state) -------------------------------------------------------

    def kek_state(self) -> KekState | None:
        """The kek_state row as stored (unchecked: for status and messages)."""
        found = kek_state.peek_state(_Sql(self._connection()))
        return found[0] if found else None

    def other_users(self) -> list[str]:
        """Other processes that have the database open (a running broker, a backup), by pid.

        Asks the kernel who holds SQLite's per-process read lock on the wal-index (F_GETLK: asking takes no
        lock, and never reports this process's own).  The probe's descriptor stays open for the store's life:
        closing any descriptor of a file drops all of this process's POSIX locks on it, SQLite's included.
        """
        if self._shm_fd is None:
            try:
                self._shm_fd = os.open(f"{self.path}-shm", os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return []
        answer = fcntl.fcntl(self._shm_fd, fcntl.F_GETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET,
                                                                       _SHM_DMS, 1, 0))
        kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
        return [] if kind == fcntl.F_UNLCK else [f"process {pid}"]

    def _refuse_if_in_use(self) -> None:
        users = self.other_users()
        if users:
            raise StoreError(f"database {self.path} is open in {', '.join(users)} (a running broker?): stop every "
                             "broker using it before rotating the KEK")

    def begin_kek_rotation(self, new_id: str, now: datetime) -> None:
        """Record the rotation's target, committed on its own (kbs.store.kek_state)."""
        with self._tx() as db:
            self._refuse_if_in_use()
            kek_state.begin_rotation(_Sql(db), self._auth, new_id, _ts(now))

    def rotate_kek(self, new_row_key: bytes, reseal: Reseal, unseal_new: Unseal, now: datetime,
                   tick: Callable[[], None] = lambda: None) -> dict[str, int]:
        """Everything re-sealed and re-MAC'd under the new KEK in one write transaction (kbs.store.kek_state).
        This store keeps the old key: open a new one with the new key to use the database after."""
        with self._tx() as db:
            self._refuse_if_in_use()  # again: a broker opening from now on waits for this lock, then meets the new id
            return kek_state.rotate(_Sql(db), self._rows, Rows(RowAuthenticator(new_row_key)), reseal, unseal_new,
                                    _ts(now), tick)

    # -- migration -------------------------------------------------------------------------

    def _build_tree(self, db: sqlite3.Connection) -> None:
        """Schema 5: the release log's chain, checked, becomes the Merkle tree (kbs.store.tlog.migrate)."""
        count, root = tlog.migrate(_Sql(db), self._rows)
        log.warning("database upgraded to schema 5: the release log is now a Merkle tree",
                    extra={"database": str(self.path), "entries": count, "root": root.hex()})

    def _migrate_v1(self, db: sqlite3.Connection) -> None:
        """Authenticate a version-1 database's rows and re-hash its release log in the new form.

        The broker vouches for the rows as they are at upgrade; the old head is kept in the log.
        """
        for r in db.execute("SELECT * FROM resources").fetchall():
            db.execute("UPDATE resources SET mac=? WHERE path=? AND version=?",
                       (self._rows.resource_mac(r["path"], r["version"], r["state"], r["sealed"], r["policy_id"],
                                           r["created_by"], r["created_at"]), r["path"], r["version"]))
        for r in db.execute("SELECT * FROM policies").fetchall():
            v = PolicyVersion(r["policy_id"], r["version"], r["dialect"], r["text"], r["content_hash"],
                              r["created_by"], _dt(r["created_at"]), bool(r["immutable"]))
            db.execute("UPDATE policies SET mac=? WHERE policy_id=? AND version=?",
                       (self._rows.policy_mac(v), v.policy_id, v.version))
        for r in db.execute("SELECT * FROM reference_sets").fetchall():
            db.execute("UPDATE reference_sets SET mac=? WHERE name=?",
                       (self._auth.mac("reference_sets", r["name"], r["body"]), r["name"]))
        for r in db.execute("SELECT * FROM attestations").fetchall():
            db.execute("UPDATE attestations SET mac=? WHERE attestation_id=?",
                       (self._auth.mac("attestations", r["attestation_id"], r["at"], r["session_id"], r["tee"],
                                       digest(r["claims"])), r["attestation_id"]))
        prev, seq, old_head = GENESIS, 0, GENESIS
        for r in db.execute("SELECT * FROM release_log ORDER BY seq").fetchall():
            old_head, seq = r["entry_hash"], r["seq"]
            hashed = chains.entry_hash(prev, chains.body_hash(self._rows.record(r).body()))
            db.execute("UPDATE release_log SET prev_hash=?, entry_hash=?, mac=? WHERE seq=?",
                       (prev, hashed, self._rows.log_mac(RELEASES, seq, prev, hashed), seq))
            prev = hashed
        db.execute("DELETE FROM log_heads")
        self._write_head(db, Head(RELEASES, 1, GENESIS, seq, prev))
        log.warning("database upgraded from schema 1: rows authenticated, release log re-hashed",
                    extra={"database": str(self.path), "entries": seq, "old_head": old_head, "new_head": prev})
