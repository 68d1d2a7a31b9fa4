"""Health and readiness: /readyz says ready only while the store and the keys work."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from kbs.server.app import bootstrap_dev, make_app
from kbs.server.config import Config
from kbs.server.protocol import STATE
from kbs.store.base import StoreError


def test_readyz_follows_the_store(tmp_path: Path) -> None:
    async def go() -> list[tuple[int, str]]:
        app = make_app(bootstrap_dev(Config(state_dir=tmp_path, kds_offline=True)))
        out = []
        async with TestClient(TestServer(app)) as client:
            for path in ("/healthz", "/readyz"):
                r = await client.get(path)
                out.append((r.status, await r.text()))

            def broken() -> None:
                raise StoreError("database is locked")
            app[STATE].store.ping = broken  # type: ignore[method-assign]
            r = await client.get("/readyz")
            out.append((r.status, await r.text()))
            r = await client.get("/healthz")  # alive, just not ready
            out.append((r.status, await r.text()))
            r = await client.get("/metrics")
            out.append((r.status, r.headers["Content-Type"].split(";")[0]))
        return out
    assert asyncio.run(go()) == [(200, "ok"), (200, "ready"), (503, "not ready: StoreError"), (200, "ok"),
                                 (200, "text/plain")]
