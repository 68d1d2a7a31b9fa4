"""Health and readiness: /readyz says ready only while the store takes writes and the keys work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from kbs.server.app import bootstrap_dev, make_app
from kbs.server.config import Config
from kbs.server.protocol import STATE
from kbs.store.base import StoreError


def test_readyz_follows_the_store(tmp_path: Path) -> None:
    async def go() -> list[tuple[int, str]]:
        app = make_app(bootstrap_dev(Config(state_dir=tmp_path, verifier_tables={"snp": {"offline": True}})))
        out = []
        async with TestClient(TestServer(app)) as client:
            for path in ("/healthz", "/readyz"):
                r = await client.get(path)
                out.append((r.status, await r.text()))

            def broken(now: object) -> None:
                raise StoreError("database is locked")
            app[STATE].store.probe_write = broken  # type: ignore[method-assign]
            r = await client.get("/readyz")
            out.append((r.status, await r.text()))
            r = await client.get("/healthz")  # alive, just not ready
            out.append((r.status, await r.text()))
            r = await client.get("/metrics")
            out.append((r.status, r.headers["Content-Type"].split(";")[0]))
        return out
    assert asyncio.run(go()) == [(200, "ok"), (200, "ready"), (503, "not ready: StoreError"), (200, "ok"),
                                 (200, "text/plain")]


def test_readyz_fails_when_writes_fail_but_reads_work(tmp_path: Path) -> None:
    """A read-only database answers SELECT 1; readiness probes a real write and says not ready."""
    async def go() -> tuple[int, int]:
        app = make_app(bootstrap_dev(Config(state_dir=tmp_path, verifier_tables={"snp": {"offline": True}})))
        async with TestClient(TestServer(app)) as client:
            ready = (await client.get("/readyz")).status
            store = app[STATE].store
            # One I/O thread whose connection is read-only: SELECT 1 works, every write fails.
            app[STATE].io = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            app[STATE].io.submit(lambda: setattr(store._local, "db", sqlite3.connect(
                f"file:{tmp_path / 'kbs.sqlite3'}?mode=ro", uri=True, isolation_level=None))).result()
            app[STATE].io.submit(store.ping).result()
            return ready, (await client.get("/readyz")).status
    assert asyncio.run(go()) == (200, 503)


def test_reads_beyond_the_guest_protocol_answer_after_a_wal_sync(tmp_path: Path) -> None:
    """On SQLite a batch's COMMIT is visible before its fsync: a log (or admin, or owner) read is answered only
    after a sync begun after it, and 503 if that sync fails.  The guest's /auth reads nothing and waits for none."""
    async def go() -> tuple[int, int, int, int, str]:
        app = make_app(bootstrap_dev(Config(state_dir=tmp_path, verifier_tables={"snp": {"offline": True}})))
        async with TestClient(TestServer(app)) as client:
            store = app[STATE].store
            syncs: list[str] = []
            real_sync = store.sync_committed

            def counted() -> None:
                syncs.append("sync")
                real_sync()
            store.sync_committed = counted  # type: ignore[method-assign]
            auth = await client.post("/kbs/v0/auth", data='{"version":"0.4.0","tee":"snp","extra-params":{}}')
            after_auth = len(syncs)
            await client.get("/kbs/v0/log/checkpoint")
            after_read = len(syncs)

            def failing() -> None:
                raise StoreError("syncing its WAL failed")
            store.sync_committed = failing  # type: ignore[method-assign]
            failed = await client.get("/kbs/v0/log/checkpoint")
            return auth.status, after_auth, after_read, failed.status, await failed.text()
    auth, after_auth, after_read, failed, text = asyncio.run(go())
    assert (auth, after_auth, after_read, failed) == (200, 0, 1, 503)
    assert "could not make its state durable" in text
