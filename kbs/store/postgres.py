"""PostgreSQL store: one database shared by broker replicas on several hosts.

The same tables (`schema.py`), row MACs, sealed values and logs as the SQLite store,
so what one backend would refuse the other refuses too.  Each method is one transaction on a
connection from a psycopg pool; the methods stay synchronous because the server already calls
the store from its I/O threads.

What SQLite gets from its single writer lock is made explicit here, and holds across replicas:

- a session's nonce, admin token ids and secrets are unique inserts (`ON CONFLICT DO NOTHING`): a
  second inserter of the same key waits for the first to commit and then inserts nothing;
- appends to a log lock its `log_heads` row (`SELECT ... FOR UPDATE`), so entries of one chain
  are written one at a time, each after the previous one committed: no gap, no fork;
- admin changes (resources, policies, reference sets) read, decide and write under one
  transaction-scoped advisory lock, as they would under SQLite's write lock;
- reads that must agree with each other (verifying a chain against its head) use one
  REPEATABLE READ snapshot.

A transaction that PostgreSQL aborts as a deadlock or serialization failure is retried from the
start (it changed nothing); any other database error is a StoreError, so the broker fails closed.
Commits are durable when they return with the server's default `synchronous_commit = on`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

import psycopg
import psycopg_pool
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from kbs.audit import chain as chains
from kbs.audit.chain import CHAINS, GENESIS, REFUSALS, RELEASES, Head
from kbs.owners import Approval, Contribution, Outcome, OwnedKey, Owner, Proposal, Referenced
from kbs.policy.lifecycle import PolicyConflict, PolicyVersion
from kbs.policy.refvalues import ReferenceSet
from kbs.store import kek_state, schema, tlog
from kbs.store import owners as owner_rows
from kbs.store.base import (
    AttestationRecord,
    BatchRowRefused,
    ReleaseRecord,
    ResourceVersion,
    Session,
    StoredCheckpoint,
    StoreError,
)
from kbs.store.integrity import RowAuthenticator
from kbs.store.kek_state import KekState, Reseal, Unseal, insert_statement
from kbs.store.reads import GENERATION_QUERY, StoreReads, check_generation, generation_in, generation_of
from kbs.store.rows import Rows, check_binding_change, policy_in_use, state_changes
from kbs.store.rows import log_table as _table
from kbs.store.rows import ts as _ts
from kbs.store.schema import SCHEMA_VERSION

log = logging.getLogger("kbs.store")

T = TypeVar("T")
Cursor = psycopg.Cursor[DictRow]

# Transaction-scoped advisory lock keys (64-bit, "kbs" in the high bytes): schema changes, admin changes.
_SCHEMA_LOCK = 0x6B6273_00000001
_ADMIN_LOCK = 0x6B6273_00000002
# The `log_tree` rows on the right edge of a log's tree as its head stands (kbs.audit.merkle.right_edge: for each
# set bit of the tree's size, the subtree ending there), read with the batch's BEGIN instead of once its size is known.
_RIGHT_EDGE = ("WITH edge AS MATERIALIZED (SELECT b.bit AS level, ((h.head_seq::bigint >> b.bit) - 1)::int AS idx "
               "FROM log_heads h CROSS JOIN generate_series(0, 62) AS b(bit) "
               "WHERE h.chain = %s AND ((h.head_seq::bigint >> b.bit) & 1) = 1) "
               "SELECT t.level, t.idx, t.hash FROM edge JOIN log_tree t ON t.level = edge.level AND t.idx = edge.idx")
_RETRIES = 5  # deadlocks and serialization failures: the transaction is rolled back whole, so retrying is safe
_CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise
# What a KEK rotation locks: every table holding sealed values or MACs, so no connection reads a half-rotated state.
_KEK_TABLES = ("secrets, resources, policies, reference_sets, attestations, release_log, refusal_log, log_heads, "
               "kek_state, owners, owned_resources, proposals, owner_contributions")


# Rows per INSERT statement at most.  Bigger statements cost memory that stays: in a 10,000-guest storm, two
# replicas peaked at 200-201 MB with one statement a table a batch, 197-201 with up to 32 rows, 195-196 with up
# to 8, against 192-195 with a statement a row (the buffers that carried them are kept, it seems, not freed).
_MAX_INSERT_ROWS = 8


@functools.lru_cache(maxsize=64)
def _insert_sql(into: str, width: int, count: int) -> str:
    """The statement for `count` rows, a power of two up to _MAX_INSERT_ROWS: a few texts a table, each prepared
    by psycopg once it is used often."""
    return insert_statement(into, width, count).replace("?", "%s")


class _Inserts:
    """A group-commit batch's inserts in its first run (no savepoint a call), held back and sent with its COMMIT,
    a few multi-row INSERTs per table (or before a read through the batch's `_Sql`, which must see them).  While
    the logs' heads are locked for every replica, each statement cost psycopg its Python and a wait on the socket
    (which lets go of the GIL and takes it back, against the event loop), and each round trip such a wait: a
    batch of 15 writes made about 50 statements in three round trips, now about 15 in two.  A row refused (a
    nonce used twice) fails its statement and so the COMMIT: the writer runs the batch again with a savepoint a
    call (kbs.store.base.BatchRowRefused)."""

    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[object, ...]]] = {}

    def add(self, into: str, rows: Sequence[tuple[object, ...]]) -> None:
        self._rows.setdefault(into, []).extend(rows)

    def send(self, cur: Cursor) -> None:
        held, self._rows = self._rows, {}
        for into, rows in held.items():  # the tables in the order of their first row
            _insert(cur, into, rows)

    def clear(self) -> None:
        self._rows = {}


def _insert(cur: Cursor, into: str, rows: Sequence[tuple[object, ...]]) -> None:
    """`rows` into `into` ("table (columns)" or a table), in statements of 8, 4, 2 or 1 rows."""
    start = 0
    while start < len(rows):
        size = min(1 << ((len(rows) - start).bit_length() - 1), _MAX_INSERT_ROWS)
        chunk = rows[start:start + size]
        cur.execute(_insert_sql(into, len(chunk[0]), size), [value for row in chunk for value in row])
        start += size


class _Sql:
    """A transaction's cursor as kbs.store.kek_state runs SQL on it (`?` placeholders become `%s`); its inserts
    held back in `inserts` when given."""

    def __init__(self, cur: Cursor, inserts: _Inserts | None = None) -> None:
        self._cur = cur
        self._inserts = inserts

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> list[DictRow]:
        if self._inserts is not None:  # a read sees the rows held back before it
            self._inserts.send(self._cur)
        return self._cur.execute(sql.replace("?", "%s"), args).fetchall()

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> None:
        self._cur.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, args: Sequence[tuple[object, ...]]) -> None:
        self._cur.executemany(sql.replace("?", "%s"), args)

    def insert(self, into: str, rows: Sequence[tuple[object, ...]]) -> None:
        if self._inserts is not None:
            self._inserts.add(into, rows)
        else:
            _insert(self._cur, into, rows)



def describe(url: str) -> str:
    """The database as errors name it: host, port and name, never the password the URL may hold."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql (unparseable URL)"
    host = str(params.get("host") or "localhost")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql database {params.get('dbname') or params.get('user') or '?'} on {host}{port}"


class PostgresStore(StoreReads):
    def __init__(self, url: str, row_key: bytes, *, pool_size: int = 8, pool_timeout: float = 30.0) -> None:
        """`url`: a libpq URL or conninfo (postgresql://user@host/db); libpq's PG* variables and
        ~/.pgpass fill what it leaves out, so passwords need not sit in the configuration."""
        self.name = describe(url)
        self._tails = tlog.Tails()  # where each log stands in the open batch's transaction (group commit)
        self._auth = RowAuthenticator(row_key)
        self._rows = Rows(self._auth)
        params = {} if "connect_timeout" in conninfo_to_dict(url) else {"connect_timeout": _CONNECT_TIMEOUT}
        conninfo = make_conninfo(url, **params)
        try:  # one direct connection first: an unreachable server is reported as such, not as a pool timeout
            with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
                self._create_schema(conn)
        except psycopg.Error as exc:
            raise StoreError(f"{self.name} is unavailable: {exc}") from exc
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            conninfo, connection_class=psycopg.Connection[DictRow], min_size=1, max_size=max(pool_size, 1),
            timeout=pool_timeout, kwargs={"autocommit": True, "row_factory": dict_row}, open=True,
            name="kbs-store")
        self._local = threading.local()
        self._batch_conn: psycopg.Connection[DictRow] | None = None  # the group-commit batch's, while open
        self._inserts = _Inserts()  # the batch's, in its first run
        self._batch_generation = 0  # the decision generation read as the batch began
        self._conninfo, self._timeout = conninfo, pool_timeout
        self._loop_conn: psycopg.AsyncConnection[DictRow] | None = None  # decision_generation_async's
        self._loop_connecting = asyncio.Lock()

    def _create_schema(self, conn: psycopg.Connection[DictRow]) -> None:
        """Create or upgrade the tables, once, even when several replicas start together."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            row = conn.execute("SELECT to_regclass('kbs_schema') IS NOT NULL AS present").fetchone()
            version = 0
            if row and row["present"]:
                found = conn.execute("SELECT version FROM kbs_schema WHERE id = 1").fetchone()
                version = found["version"] if found else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.name} has schema {version}, newer than this broker's {SCHEMA_VERSION}; "
                                 "upgrade the broker")
            if version < SCHEMA_VERSION:  # an up-to-date database needs no CREATE privilege from the broker
                conn.execute("CREATE TABLE IF NOT EXISTS kbs_schema "
                             "(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
                for statement in schema.statements("postgresql"):
                    conn.execute(statement)
                if 0 < version < 5:  # the decision context's columns; the release log's chain becomes the tree
                    for table in ("release_log", "refusal_log"):
                        for column, kind in schema.LOG_COLUMNS_V5:
                            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} "
                                         f"{schema.TYPES['postgresql'][kind]}")
                    tlog.migrate(_Sql(conn.cursor()), self._rows)
                conn.execute("INSERT INTO kbs_schema VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET version = %s",
                             (SCHEMA_VERSION, SCHEMA_VERSION))
            cur = conn.cursor()
            kek_state.check_at_open(_Sql(cur), self._rows, time.time())
            for chain in CHAINS:
                if not cur.execute("SELECT 1 FROM log_heads WHERE chain=%s", (chain,)).fetchone():
                    self._write_head(cur, Head(chain, 1, GENESIS, 0, chains.empty_head_hash(chain)))

    # -- connection and transactions -------------------------------------------------------

    # -- group commit (kbs.store.group_commit): the guest protocol's writes, a batch per transaction ------------

    calls_on_loop = False  # each call is network round trips: the writer runs a whole batch on its thread

    def try_begin_batch(self) -> bool:
        return False  # a batch begins on the writer's thread (a connection and a round trip)

    def begin_batch(self) -> None:
        """Open the batch's transaction and lock both logs' heads, in one order: batches of replicas follow one
        another on the heads (as single appends did), never deadlock on them, and each pays for the lock once.
        The decision generation is read with them (one round trip): the batch's releases are checked against it."""
        try:
            conn = self._pool.getconn()
        except psycopg_pool.PoolTimeout as exc:
            raise StoreError(f"{self.name} is unavailable: {exc}") from exc
        self._tails.reset()
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                heads = conn.execute("SELECT * FROM log_heads ORDER BY chain FOR UPDATE")
                newest = {chain: conn.execute(f"SELECT seq, entry_hash FROM {_table(chain)} ORDER BY seq DESC LIMIT 1")
                          for chain in CHAINS}
                edge = conn.execute(_RIGHT_EDGE, (RELEASES,))
                generation = conn.execute(GENERATION_QUERY)
            begun = {r["chain"]: r for r in heads.fetchall()}
            newest_rows = {chain: cur.fetchone() for chain, cur in newest.items()}
            edge_rows = edge.fetchall()
            row = generation.fetchone()
        except psycopg.Error as exc:
            self._end_batch(conn, "ROLLBACK")
            raise StoreError(f"{self.name} failed: {exc}") from exc
        try:
            batch_generation = generation_of(row)
        except StoreError:
            self._end_batch(conn, "ROLLBACK")
            raise
        for chain in CHAINS:  # each log's reads checked when an append first needs them: an edited log fails alone
            self._tails.begun(chain, functools.partial(self._begun_tail, chain, begun.get(chain), newest_rows[chain],
                                                       edge_rows))
        self._batch_conn, self._batch_generation = conn, batch_generation

    def _begun_tail(self, chain: str, head: DictRow | None, newest: DictRow | None, edge: list[DictRow]) -> tlog.Tail:
        return tlog.begun_tail(self._rows.head(chain, head),
                               (int(newest["seq"]), newest["entry_hash"]) if newest else None, edge)

    @contextmanager
    def batch_calls(self, savepoints: bool = True) -> Iterator[None]:
        """Store calls made by this thread inside this block join the open batch, each as a savepoint (undone alone
        if it fails), or without (`savepoints=False`: the caller rolls the whole batch back if one fails)."""
        conn = self._batch_conn
        self._local.batch, self._local.savepoints = conn, savepoints
        try:
            yield  # without savepoints, the calls send nothing: their rows wait for the COMMIT (_Inserts)
            if conn is not None and conn.info.transaction_status == TransactionStatus.INERROR:
                raise StoreError(f"{self.name}: a statement of the batch failed")  # and was swallowed: never COMMIT
        finally:
            self._local.batch = None

    def commit_batch(self) -> None:
        conn, self._batch_conn = self._batch_conn, None
        assert conn is not None
        try:
            if conn.info.transaction_status == TransactionStatus.INERROR:  # COMMIT would answer ROLLBACK, silently
                raise psycopg.OperationalError("a statement of the batch failed and its transaction is aborted")
            cur = conn.cursor()
            with conn.pipeline():  # the rows held back, the heads and the COMMIT in one round trip
                self._inserts.send(cur)
                self._tails.write_heads(lambda head: self._store_head(cur, head))
                conn.execute("COMMIT")
        except errors.IntegrityError as exc:  # a row held back was refused: the writer runs the batch again
            self._end_batch(conn, "ROLLBACK")
            raise BatchRowRefused(f"{self.name} refused a row of the batch: {exc}") from exc
        except psycopg.Error as exc:
            self._end_batch(conn, "ROLLBACK")
            raise StoreError(f"{self.name} could not commit: {exc}") from exc
        finally:
            self._tails.reset()
            self._inserts.clear()
        self._pool.putconn(conn)

    def rollback_batch(self) -> None:
        self._tails.reset()
        self._inserts.clear()
        conn, self._batch_conn = self._batch_conn, None
        if conn is not None:
            self._end_batch(conn, "ROLLBACK")

    def _end_batch(self, conn: psycopg.Connection[DictRow], statement: str) -> None:
        try:
            conn.execute(statement)
        except psycopg.Error:
            conn.close()  # the pool replaces a broken connection
        self._pool.putconn(conn)

    @contextmanager
    def _transaction(self, batch: psycopg.Connection[DictRow] | None) -> Iterator[Cursor]:
        """A transaction of its own, or inside the open batch a savepoint (undone alone if it fails, its appends'
        tails with it)."""
        if batch is not None:
            if not getattr(self._local, "savepoints", True):
                yield batch.cursor()
                return
            with self._tails.call(), batch.transaction():
                yield batch.cursor()
                if batch.info.transaction_status == TransactionStatus.INERROR:
                    # A statement failed and the call carried on: raised here, inside the savepoint, so that it is
                    # rolled back and this call fails alone (psycopg would only fail to RELEASE it, leaving the
                    # batch's transaction aborted for every call after it).
                    raise StoreError(f"{self.name}: a statement of this call failed (the call carried on)")
            return
        with self._pool.connection() as conn, conn.transaction():
            yield conn.cursor()

    def _tx(self, fn: Callable[[Cursor], T], *, snapshot: bool = False, lock: int | None = None) -> T:
        """Run `fn` in one transaction; `snapshot`: one consistent read-only view; `lock`: an advisory lock first.
        A write made by the group-commit writer's thread inside a batch is a savepoint of the batch instead (a
        deadlock rolls back only its own statement, so it is retried alone)."""
        batch = None if snapshot else getattr(self._local, "batch", None)
        # Without a savepoint a failed statement fails the batch's whole transaction: no retry here, the writer
        # runs the batch again with savepoints.
        retries = 1 if batch is not None and not getattr(self._local, "savepoints", True) else _RETRIES
        for attempt in range(retries):
            try:
                with self._transaction(batch) as cur:
                    if snapshot:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    if lock is not None:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                    return fn(cur)
            except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                if attempt == retries - 1:
                    raise StoreError(f"{self.name}: transaction kept conflicting with others: {exc}") from exc
                time.sleep(0.005 * (attempt + 1))
            except psycopg.Error as exc:
                raise StoreError(f"{self.name} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def _first_run(self, cur: Cursor) -> bool:
        """Whether `cur` is the batch's, in its first run without savepoints (rows held back to the COMMIT: a
        failure surfaces there and fails the whole run, which the writer then runs again with savepoints)."""
        return cur.connection is self._batch_conn and not getattr(self._local, "savepoints", True)

    def _select(self, sql: str, args: tuple[object, ...] = ()) -> list[DictRow]:
        """One statement, which is its own transaction (autocommit: one round trip, no BEGIN and COMMIT)."""
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql.replace("?", "%s"), args).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"{self.name} failed: {exc}") from exc

    def probe_write(self, now: datetime) -> None:
        """A real write transaction: readiness fails when the database refuses writes (read-only, full)."""
        self._tx(lambda cur: cur.execute("INSERT INTO health VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                                         "SET at = EXCLUDED.at", (_ts(now),)))

    def close(self) -> None:
        self._pool.close()

    async def decision_generation_async(self) -> int:
        """`decision_generation` on the event loop: a resource request with nothing in memory for its path, or a
        refusal decided on remembered inputs, asks it (through the I/O pool it cost a thread hop each).  One
        autocommit connection of this store's own, opened at first use and opened again once if it broke;
        bounded by the pool's timeout."""
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self._timeout):
                    async with self._loop_connecting:  # one connection, however many requests ask at once
                        if self._loop_conn is None or self._loop_conn.closed:
                            self._loop_conn = await psycopg.AsyncConnection.connect(
                                self._conninfo, autocommit=True, row_factory=dict_row)
                        conn = self._loop_conn
                    row = await (await conn.execute(GENERATION_QUERY)).fetchone()
            except (psycopg.OperationalError, TimeoutError) as exc:  # the connection broke, or the server is slow
                await self.aclose()
                if attempt == 2:
                    raise StoreError(f"{self.name} failed: {str(exc) or type(exc).__name__}") from exc
                continue
            except psycopg.Error as exc:
                raise StoreError(f"{self.name} failed: {exc}") from exc
            return generation_of(row)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the event loop's connection (before `close`, on the loop that used it)."""
        conn, self._loop_conn = self._loop_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    # -- sessions --------------------------------------------------------------------------

    def mark_attested(self, session: Session, evidence_digest: str, token: str, now: datetime,
                      record: AttestationRecord | None = None, summary: ReleaseRecord | None = None) -> bool:
        """Consume the session's nonce: true for exactly one caller across replicas, only while it is live;
        the winner's attestation `record` and its release-log `summary` are written in the same transaction."""
        if session.expires_at <= now:
            return False

        values = (session.session_id, session.tee, session.nonce, _ts(session.created_at), _ts(session.expires_at),
                  "attested", evidence_digest, token)

        def step(cur: Cursor) -> bool:
            if self._first_run(cur):
                # A batch's first run: the row goes with the batch's others at its COMMIT, without a round trip
                # of its own (one a call, on the logs' locked heads, was most of a batch's time).  If the nonce was
                # used, its unique key fails the COMMIT, and the batch runs again with a savepoint a call, where
                # the branch below answers false to this call alone.
                self._sql(cur).insert("sessions", [values])
                won = True
            else:  # RETURNING: the answer is read
                won = cur.execute("INSERT INTO sessions VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (session_id) "
                                  "DO NOTHING RETURNING 1", values).fetchone() is not None
            if won and record is not None:
                self._insert_attestation(cur, record)
            if won and summary is not None:
                self._append(cur, RELEASES, summary)
            return won
        return self._tx(step)

    def purge_expired_sessions(self, now: datetime) -> int:
        return self._tx(lambda cur: cur.execute("DELETE FROM sessions WHERE expires_at <= %s", (_ts(now),)).rowcount)

    # -- admin tokens ------------------------------------------------------------------------

    def use_token_id(self, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Record an admin token's `jti`: true the first time, false for a replay still in its lifetime.

        Expired ids are dropped with SKIP LOCKED, so replicas cleaning up at once never wait on (or
        deadlock with) each other; the unique insert decides the race for one id.
        """
        def step(cur: Cursor) -> bool:
            cur.execute("DELETE FROM admin_token_ids WHERE jti IN (SELECT jti FROM admin_token_ids "
                        "WHERE expires_at <= %s FOR UPDATE SKIP LOCKED)", (_ts(now),))
            cur.execute("INSERT INTO admin_token_ids VALUES (%s, %s) ON CONFLICT (jti) DO NOTHING",
                        (jti, _ts(expires_at)))
            return cur.rowcount == 1
        return self._tx(step)

    # -- the broker's own secrets (sealed under the KEK with their name as associated data) ----

    def get_or_create_secret(self, name: str, create: bytes) -> bytes:
        """The stored value, or `create` stored now: replicas starting together agree on one."""
        def step(cur: Cursor) -> bytes:
            cur.execute("INSERT INTO secrets VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, create))
            row = cur.execute("SELECT value FROM secrets WHERE name = %s", (name,)).fetchone()
            assert row is not None
            return bytes(row["value"])
        return self._tx(step)

    # -- resources -------------------------------------------------------------------------

    def _resources(self, cur: Cursor, path: str) -> list[ResourceVersion]:
        return [self._rows.resource(r) for r in cur.execute("SELECT * FROM resources WHERE path=%s ORDER BY version",
                                                       (path,)).fetchall()]

    def _rewrite_resources(self, cur: Cursor, versions: list[ResourceVersion]) -> None:
        """Write state and binding changes back with fresh MACs (callers checked the old ones)."""
        for v in versions:
            cur.execute("UPDATE resources SET state=%s, policy_id=%s, mac=%s WHERE path=%s AND version=%s",
                        (v.state, v.policy_id,
                         self._rows.resource_mac(v.path, v.version, v.state, v.sealed, v.policy_id, v.created_by,
                                                 _ts(v.created_at)),
                         v.path, v.version))

    def _check_binding_change(self, cur: Cursor, path: str, current: list[ResourceVersion], policy_id: str) -> None:
        check_binding_change(path, current, policy_id, lambda bound: self._policy_versions(cur, bound))

    def put_resource(self, path: str, sealed: bytes, policy_id: str, created_by: str, at: datetime) -> int:
        def step(cur: Cursor) -> int:
            current = self._resources(cur, path)
            self._check_binding_change(cur, path, current, policy_id)
            version = (current[-1].version if current else 0) + 1
            self._rewrite_resources(cur, [replace(v, state="disabled") for v in current if v.state == "active"])
            cur.execute("INSERT INTO resources VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                        (path, version, "active", sealed, policy_id, created_by, _ts(at),
                         self._rows.resource_mac(path, version, "active", sealed, policy_id, created_by, _ts(at))))
            return version
        return self._tx(step, lock=_ADMIN_LOCK)

    def set_resource_state(self, path: str, version: int | None, state: str) -> int:
        """Enable or disable one version (`rows.state_changes`)."""
        def step(cur: Cursor) -> int:
            changed, result = state_changes(self._resources(cur, path), version, state)
            self._rewrite_resources(cur, changed)
            return result
        return self._tx(step, lock=_ADMIN_LOCK)

    def delete_resource(self, path: str) -> int:
        return self._tx(lambda cur: cur.execute("DELETE FROM resources WHERE path=%s", (path,)).rowcount,
                        lock=_ADMIN_LOCK)

    def bind_policy(self, path: str, policy_id: str) -> int:
        def step(cur: Cursor) -> int:
            current = self._resources(cur, path)
            self._check_binding_change(cur, path, current, policy_id)
            self._rewrite_resources(cur, [replace(v, policy_id=policy_id) for v in current])
            return len(current)
        return self._tx(step, lock=_ADMIN_LOCK)

    # -- policies and reference values (kbs.policy.lifecycle.PolicyStore) ------------------

    def _policy_versions(self, cur: Cursor, policy_id: str) -> list[PolicyVersion]:
        return [self._rows.policy_version(r) for r in
                cur.execute("SELECT * FROM policies WHERE policy_id=%s ORDER BY version", (policy_id,)).fetchall()]

    def versions(self, policy_id: str) -> list[PolicyVersion]:
        return self._tx(lambda cur: self._policy_versions(cur, policy_id))

    def append(self, version: PolicyVersion) -> None:
        try:
            self._tx(lambda cur: cur.execute(
                "INSERT INTO policies VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (version.policy_id, version.version, version.dialect, version.text, version.content_hash,
                 version.created_by, _ts(version.created_at), int(version.immutable), self._rows.policy_mac(version))),
                lock=_ADMIN_LOCK)
        except StoreError as exc:
            if isinstance(exc.__cause__, errors.UniqueViolation):
                raise PolicyConflict(f"policy {version.policy_id!r} version {version.version} already exists "
                                     "(changed concurrently); retry") from exc
            raise

    def put_reference_set(self, ref: ReferenceSet) -> None:
        self._tx(lambda cur: self._write_reference_set(cur, ref), lock=_ADMIN_LOCK)

    def edit_reference_set(self, name: str, edit: Callable[[ReferenceSet | None], ReferenceSet]) -> ReferenceSet:
        """Read the set (None if there is none), apply `edit`, write the result, under the admin lock."""
        def step(cur: Cursor) -> ReferenceSet:
            rows = cur.execute("SELECT name, body, mac FROM reference_sets WHERE name=%s", (name,)).fetchall()
            ref = edit(self._rows.reference_values(rows).get(name))
            self._write_reference_set(cur, ref)
            return ref
        return self._tx(step, lock=_ADMIN_LOCK)

    def _write_reference_set(self, cur: Cursor, ref: ReferenceSet) -> None:
        body = json.dumps(ref.to_json())
        cur.execute("INSERT INTO reference_sets VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE "
                    "SET body = EXCLUDED.body, mac = EXCLUDED.mac",
                    (ref.name, body, self._rows.reference_set_mac(ref.name, body)))

    def delete_reference_set(self, name: str) -> None:
        self._tx(lambda cur: cur.execute("DELETE FROM reference_sets WHERE name=%s", (name,)), lock=_ADMIN_LOCK)

    def delete_policy(self, policy_id: str) -> int:
        def step(cur: Cursor) -> int:
            bound = cur.execute("SELECT DISTINCT path FROM resources WHERE policy_id=%s ORDER BY path",
                                (policy_id,)).fetchall()
            if bound:
                raise PolicyConflict(policy_in_use(policy_id, [r["path"] for r in bound]))
            return int(cur.execute("DELETE FROM policies WHERE policy_id=%s", (policy_id,)).rowcount)
        return self._tx(step, lock=_ADMIN_LOCK)

    # -- attestations ----------------------------------------------------------------------

    def record_attestation(self, record: AttestationRecord) -> None:
        self._tx(lambda cur: self._insert_attestation(cur, record))

    def _insert_attestation(self, cur: Cursor, record: AttestationRecord) -> None:
        self._sql(cur).insert("attestations", [self._rows.attestation_values(record)])

    def _sql(self, cur: Cursor) -> _Sql:
        """`cur` as kbs.store.tlog runs SQL on it: in a batch's first run, with its inserts held back."""
        return _Sql(cur, self._inserts if self._first_run(cur) else None)

    def purge_attestations(self, before: datetime) -> int:
        """Stored claims are for dry-runs and audits; they expire (the release log keeps the ids)."""
        return self._tx(lambda cur: cur.execute("DELETE FROM attestations WHERE at < %s", (_ts(before),)).rowcount)

    # -- owners, owned keys and proposals (kbs.store.owners), under the admin lock ---------------

    def add_owner(self, owner: Owner) -> None:
        self._tx(lambda cur: owner_rows.add_owner(_Sql(cur), self._auth, owner), lock=_ADMIN_LOCK)

    def remove_owner(self, name: str) -> bool:
        return self._tx(lambda cur: owner_rows.remove_owner(_Sql(cur), self._auth, name), lock=_ADMIN_LOCK)

    def create_owned_key(self, key: OwnedKey, sealed: bytes, policy_id: str, referenced: Referenced) -> int:
        return self._tx(lambda cur: owner_rows.create_owned(_Sql(cur), self._rows, key, sealed, policy_id,
                                                            referenced), lock=_ADMIN_LOCK)

    def add_proposal(self, proposal: Proposal, referenced: Referenced, actor: str) -> None:
        self._tx(lambda cur: owner_rows.add_proposal(_Sql(cur), self._rows, lambda r: self._append(cur, RELEASES, r),
                                                     proposal, referenced, actor), lock=_ADMIN_LOCK)

    def approve_proposal(self, pid: str, approval: Approval, now: datetime, referenced: Referenced,
                         sealed: bytes | None) -> Outcome:
        return self._tx(lambda cur: owner_rows.approve(_Sql(cur), self._rows, lambda r: self._append(cur, RELEASES, r),
                                                       pid, approval, now, referenced, sealed), lock=_ADMIN_LOCK)

    def add_contribution(self, contribution: Contribution, sealed_share: bytes,
                         entry: ReleaseRecord) -> tuple[int, int]:
        return self._tx(lambda cur: owner_rows.add_contribution(
            _Sql(cur), self._rows, lambda r: self._append(cur, RELEASES, r), contribution, sealed_share, entry),
            lock=_ADMIN_LOCK)

    def deposit(self, path: str, sealed: bytes, by: str, at: datetime, entry: ReleaseRecord) -> int:
        return self._tx(lambda cur: owner_rows.deposit(_Sql(cur), self._rows, lambda r: self._append(cur, RELEASES, r),
                                                       path, sealed, by, at, entry), lock=_ADMIN_LOCK)

    # -- the KEK (kbs.store.kek_state) -------------------------------------------------------

    def kek_state(self) -> KekState | None:
        """The kek_state row as stored (unchecked: for status and messages)."""
        found = self._tx(lambda cur: kek_state.peek_state(_Sql(cur)))
        return found[0] if found else None

    def other_users(self) -> list[str]:
        """Other client connections to this database (broker replicas on any host), as pg_stat_activity shows
        them.  Open this store with pool_size=1 when asking: the pool's own idle connections count too."""
        return self._tx(self._other_users)

    @staticmethod
    def _other_users(cur: Cursor) -> list[str]:
        rows = cur.execute("SELECT pid, application_name, host(client_addr) AS addr FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                           "AND backend_type = 'client backend' ORDER BY pid").fetchall()
        return [f"connection {r['pid']} ({r['application_name'] or 'no name'} from {r['addr'] or 'local'})"
                for r in rows]

    def _refuse_if_in_use(self, cur: Cursor) -> None:
        users = self._other_users(cur)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise StoreError(f"{self.name} has {len(users)} other connection(s): {shown} (running brokers?): stop "
                             "every broker replica before rotating the KEK")

    def begin_kek_rotation(self, new_id: str, now: datetime) -> None:
        """Record the rotation's target, committed on its own (kbs.store.kek_state)."""
        def step(cur: Cursor) -> None:
            self._refuse_if_in_use(cur)
            kek_state.begin_rotation(_Sql(cur), self._auth, new_id, _ts(now))
        self._tx(step)

    def rotate_kek(self, new_row_key: bytes, reseal: Reseal, unseal_new: Unseal, now: datetime,
                   tick: Callable[[], None] = lambda: None) -> dict[str, int]:
        """Everything re-sealed and re-MAC'd under the new KEK in one transaction (kbs.store.kek_state), with
        every table locked: a replica connecting meanwhile waits, then meets the new id.  This store keeps the
        old key: open a new one with the new key to use the database after."""
        def step(cur: Cursor) -> dict[str, int]:
            self._refuse_if_in_use(cur)
            cur.execute("SET LOCAL lock_timeout = '10s'")
            cur.execute(f"LOCK TABLE {_KEK_TABLES} IN ACCESS EXCLUSIVE MODE")
            return kek_state.rotate(_Sql(cur), self._rows, Rows(RowAuthenticator(new_row_key)), reseal, unseal_new,
                                    _ts(now), tick)
        return self._tx(step, lock=_ADMIN_LOCK)

    # -- the logs --------------------------------------------------------------------------

    def _head(self, cur: Cursor, chain: str, *, lock: bool = False) -> Head:
        """The recorded head; `lock` takes its row for the rest of the transaction (appends queue on it)."""
        if self._batch_conn is not None and cur.connection is self._batch_conn:
            self._tails.write_heads(lambda head: self._store_head(cur, head), chain)  # appends may have moved it
        locking = " FOR UPDATE" if lock else ""
        return self._rows.head(chain, cur.execute(f"SELECT * FROM log_heads WHERE chain=%s{locking}",
                                                  (chain,)).fetchone())

    def _write_head(self, cur: Cursor, head: Head) -> None:
        self._tails.moved(head.chain)
        self._store_head(cur, head)

    def _store_head(self, cur: Cursor, head: Head) -> None:
        cur.execute("INSERT INTO log_heads VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (chain) DO UPDATE SET "
                    "first_seq = EXCLUDED.first_seq, anchor_hash = EXCLUDED.anchor_hash, "
                    "head_seq = EXCLUDED.head_seq, head_hash = EXCLUDED.head_hash, mac = EXCLUDED.mac",
                    self._rows.head_values(head))

    def append_log(self, chain: str, record: ReleaseRecord, generation: int | None = None) -> ReleaseRecord:
        """Append to a log; durable when this returns.  The head row is locked first, so replicas append one at
        a time, each on the head the previous one committed; a log truncated or edited outside the broker
        stops every append (and so every release) until an operator looks (kbs.store.tlog).  `generation`:
        only while the decision generation is still that one (in a batch: as the batch began)."""
        _table(chain)  # an unknown log is refused before anything is written

        def step(cur: Cursor) -> ReleaseRecord:
            if generation is not None:
                in_batch = cur.connection is self._batch_conn
                check_generation(generation, self._batch_generation if in_batch else generation_in(cur))
            return self._append(cur, chain, record)
        return self._tx(step)

    def _append(self, cur: Cursor, chain: str, record: ReleaseRecord) -> ReleaseRecord:
        in_batch = cur.connection is self._batch_conn

        def read_head() -> Head:
            return self._head(cur, chain, lock=True)
        start = self._tails.start(chain, read_head) if in_batch else read_head()
        appended, tail = tlog.append_entry(self._sql(cur), self._rows, start, record.loggable())
        if in_batch:
            self._tails.appended(tail)  # its head row written once, at the batch's end
        else:
            self._write_head(cur, tail.head)
        return appended

    def add_log_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        return self._tx(lambda cur: tlog.add_checkpoint(_Sql(cur), checkpoint))

    def verify_logs(self) -> list[Head]:
        """Every chain from its anchor to its recorded head, read in one snapshot so appends in
        flight on other replicas cannot make the rows and the head disagree."""
        def step(cur: Cursor) -> list[Head]:
            return self._rows.verify_chains([(self._head(cur, chain), cur.execute(
                f"SELECT * FROM {_table(chain)} ORDER BY seq").fetchall()) for chain in CHAINS])
        return self._tx(step, snapshot=True)

    def purge_refusals(self, before: datetime) -> int:
        """Drop refusal-log entries older than `before` from the front; the anchor moves with them."""
        def step(cur: Cursor) -> int:
            head = self._head(cur, REFUSALS, lock=True)
            last = cur.execute("SELECT seq, entry_hash FROM refusal_log WHERE at < %s ORDER BY seq DESC LIMIT 1",
                               (_ts(before),)).fetchone()
            if last is None:
                return 0
            count = cur.execute("DELETE FROM refusal_log WHERE seq <= %s", (last["seq"],)).rowcount
            self._write_head(cur, Head(REFUSALS, last["seq"] + 1, last["entry_hash"], head.head_seq, head.head_hash))
            return count
        return self._tx(step)

