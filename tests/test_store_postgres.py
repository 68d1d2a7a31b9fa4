"""What only the PostgreSQL store does: run as a role with no more than DML rights once the schema
exists, name the database in errors without the URL's password, and read database_url."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from kbs.audit import merkle
from kbs.audit.chain import RELEASES
from kbs.server.config import ConfigError, parse_config
from kbs.store import open_store
from kbs.store.base import ReleaseRecord, Session, StoreError
from tests.postgres import PostgresServer

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
KEY = bytes(range(32))


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def test_runs_with_dml_rights_only_once_the_schema_exists(database: str) -> None:
    open_store(database, KEY).close()  # the owner creates the tables
    role = f"kbs_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    try:
        store = open_store(as_user(database, role), KEY)
        try:
            assert store.mark_attested(Session("s" * 32, "snp", "n", NOW, NOW + dt.timedelta(minutes=5), "authed"),
                                       "d", "t", NOW)
            store.append_log(RELEASES, ReleaseRecord(NOW, "release", "policy", "r/t/k", 1, "s", "snp", "p", "h",
                                                     None))
            assert store.use_token_id("jti", NOW + dt.timedelta(minutes=1), NOW)
            store.probe_write(NOW)
            assert [h.entries for h in store.verify_logs()] == [1, 0]
        finally:
            store.close()
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_unreachable_database_named_without_its_password() -> None:
    with pytest.raises(StoreError) as info:
        open_store("postgresql://kbs:hunter2@127.0.0.1:1/kbs?connect_timeout=2", KEY)
    assert "postgresql database kbs on 127.0.0.1:1 is unavailable" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_database_url_kinds() -> None:
    pg = parse_config({"database_url": "postgresql://kbs@db:5432/kbs"})
    assert (pg.database_kind, pg.database) == ("postgresql", "postgresql://kbs@db:5432/kbs")
    lite = parse_config({"database_url": "sqlite:///srv/kbs.db"})
    assert (lite.database_kind, lite.database) == ("sqlite", Path("/srv/kbs.db"))
    assert parse_config({}).database == Path(".kbs-state/kbs.sqlite3")
    with pytest.raises(ConfigError, match="scheme 'mysql'") as info:
        parse_config({"database_url": "mysql://root:secret@db/kbs"})
    assert "secret" not in str(info.value)
    with pytest.raises(StoreError, match="no store for database 'mysql'"):
        open_store("mysql://db/kbs", KEY)


def test_a_batch_reads_the_trees_edge_by_index_whatever_its_size(database: str) -> None:
    """The right edge read with each batch's BEGIN probes the tree's primary key for each (level, index): a plan
    that scanned a level (its own filter on idx) would read every leaf of the release log in each batch."""
    from kbs.store.postgres import _RIGHT_EDGE
    store = open_store(database, KEY)
    for i in range(1501):  # an odd size: level 0 is on the edge, the level with a row per entry
        store.append_log(RELEASES, ReleaseRecord(NOW, "release", "policy", f"r/t/{i}", 1, "s", "snp", "default",
                                                 "hash", None))
    store.close()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("ANALYZE")
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF) " + _RIGHT_EDGE, (RELEASES,)).fetchall())
        edge = conn.execute(_RIGHT_EDGE, (RELEASES,)).fetchall()
    assert "Index Cond: ((level = edge.level) AND (idx = edge.idx))" in plan, plan
    assert "Join Filter" not in plan.split("CTE Scan on edge")[1], plan
    assert sorted((level, idx) for level, idx, _ in edge) == sorted(merkle.right_edge(1501))  # the SQL's = Python's


def test_a_batchs_first_run_sends_its_rows_with_its_commit(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group-commit batch's first run holds its rows back and sends them with its COMMIT (one round trip fewer
    while the logs' heads are locked): nothing is in the transaction before it.  A row refused there (a nonce used
    already) runs the batch again, a savepoint a call, where only its own call fails."""
    import asyncio

    from kbs.store.group_commit import GroupCommitWriter
    from kbs.store.postgres import PostgresStore
    store = open_store(database, KEY)
    assert isinstance(store, PostgresStore)
    in_transaction_at_commit: list[int] = []
    commit = store.commit_batch

    def counted_commit() -> None:
        conn = store._batch_conn
        assert conn is not None
        row = conn.execute("SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM release_log) AS n"
                           ).fetchone()
        in_transaction_at_commit.append(int(row["n"]) if row else -1)
        commit()
    monkeypatch.setattr(store, "commit_batch", counted_commit)

    def session(i: int) -> Session:
        return Session(f"{i:032x}", "snp", f"nonce-{i}", NOW, NOW + dt.timedelta(minutes=5), "authed")

    def entry(i: int) -> ReleaseRecord:
        return ReleaseRecord(NOW, "release", "policy", f"r/t/{i}", 1, f"{i:032x}", "snp", "p", "h", None)

    async def batch(ids: list[int]) -> list[bool]:
        writer = GroupCommitWriter(store)
        results = await asyncio.gather(*[writer.write(store.mark_attested, session(i), "d", "t", NOW, None, entry(i))
                                         for i in ids])
        await writer.close()
        assert writer.batches == 1
        return results

    try:
        assert asyncio.run(batch([1, 2, 3])) == [True, True, True]
        assert in_transaction_at_commit == [0]  # the first run sent none of its 6 rows before the COMMIT
        assert asyncio.run(batch([4, 2, 5])) == [True, False, True]  # session 2's nonce is used: its call alone
        # Its first run sent none of its rows before its COMMIT (the 6 committed before are all there is), which
        # refused them; the second sent each call's rows as it ran: sessions 4 and 5 with their log entries.
        assert in_transaction_at_commit == [0, 6, 10]
        assert [h.entries for h in store.verify_logs()] == [5, 0]
    finally:
        store.close()


def test_a_read_inside_a_first_run_sees_the_rows_held_back(database: str) -> None:
    """Rows held back to the COMMIT are sent before any read in the batch (kbs.store.tlog reads through the same
    `Sql`): a read never misses what its own transaction wrote."""
    from kbs.store.postgres import PostgresStore
    store = open_store(database, KEY)
    assert isinstance(store, PostgresStore)
    try:
        store.begin_batch()
        with store.batch_calls(savepoints=False):
            for i in range(3):
                store.append_log(RELEASES, ReleaseRecord(NOW, "release", "policy", f"r/t/{i}", 1, "s", "snp", "p",
                                                         "h", None))
            conn = store._batch_conn
            assert conn is not None
            held = conn.execute("SELECT count(*) AS n FROM release_log").fetchone()
            seen = store._sql(conn.cursor()).rows("SELECT count(*) AS n FROM release_log")
        store.commit_batch()
        assert held is not None and held["n"] == 0  # nothing sent while the calls ran
        assert seen[0]["n"] == 3  # the read through the batch's Sql sent them first
        assert [h.entries for h in store.verify_logs()] == [3, 0]
    finally:
        store.close()
