"""Health and readiness: /readyz says ready only while the store takes writes and the keys work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from pathlib import Path
from typing import cast

from aiohttp.test_utils import TestClient, TestServer

from kbs.server.app import bootstrap_dev, make_app
from kbs.server.config import Config
from kbs.server.protocol import STATE
from kbs.store.base import StoreError
from kbs.store.sqlite import SqliteStore


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
            store = cast(SqliteStore, app[STATE].store)
            # One I/O thread whose connection is read-only: SELECT 1 works, every write fails.
            app[STATE].io = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            app[STATE].io.submit(lambda: setattr(store._local, "db", sqlite3.connect(
                f"file:{tmp_path / 'kbs.sqlite3'}?mode=ro", uri=True, isolation_level=None))).result()
            app[STATE].io.submit(store.ping).result()
            return ready, (await client.get("/readyz")).status
    assert asyncio.run(go()) == (200, 503)
