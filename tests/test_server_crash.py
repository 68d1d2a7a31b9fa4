"""SIGKILL in the middle of a stream of key creations and releases loses nothing that was acknowledged,
and the release log stays a consistent hash chain."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp

from kbs.audit.chain import RELEASES
from kbs.keys.jwe import decrypt
from kbs.keys.kek import load_kek
from kbs.store.integrity import ROW_MAC_PURPOSE
from kbs.store.sqlite import SqliteStore
from tests.broker import Broker, full_flow, run_broker

SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})


async def _stream(broker: Broker, created: dict[str, bytes], released: list[str], stop_after: float) -> None:
    """Create keys and release them until the broker dies; record only what it acknowledged."""
    deadline = time.monotonic() + stop_after
    i = 0
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{broker.url}/kbs/v0/admin/policies/sample-ok", data=SAMPLE_POLICY,
                            headers=broker.admin_headers()) as r:
            assert r.status == 200
        while time.monotonic() < deadline:
            path = f"crash/key/k{i}"
            value = f"value-{i}".encode()
            try:
                async with http.post(f"{broker.url}/kbs/v0/resource/{path}?policy=sample-ok", data=value,
                                     headers=broker.admin_headers()) as r:
                    if r.status == 200:
                        created[path] = value
                status, body, key = await full_flow(broker.url, "sample", path)
                if status == 200 and decrypt(body, key.private_key) == value:
                    released.append(path)
            except (aiohttp.ClientError, OSError):
                return  # the broker was killed mid-request: that request was never acknowledged
            i += 1


def test_sigkill_loses_no_acknowledged_key_or_release(tmp_path: Path) -> None:
    created: dict[str, bytes] = {}
    released: list[str] = []
    state = tmp_path / "state"
    with run_broker(tmp_path, state_dir=state) as broker:
        async def scenario() -> None:
            stream = asyncio.create_task(_stream(broker, created, released, stop_after=30))
            await asyncio.sleep(random.uniform(1.5, 3.0))
            broker.process.send_signal(signal.SIGKILL)
            await stream
        asyncio.run(scenario())
        broker.process.wait(10)
    assert len(created) >= 3 and released, (len(created), len(released))

    db = sqlite3.connect(state / "kbs.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    store = SqliteStore(state / "kbs.sqlite3", load_kek(state / "kek", None).derive(ROW_MAC_PURPOSE))
    [releases, _] = store.verify_logs()  # hashes, MACs and recorded heads agree after SIGKILL
    release_paths = [r.resource for r in store.log_entries(RELEASES, limit=100000) if r.decision == "release"]
    assert releases.entries >= len(released)
    assert set(released) <= set(release_paths)  # every acknowledged release was logged first

    with run_broker(tmp_path, state_dir=state) as again:  # and the restarted broker still serves them
        async def check() -> None:
            async with aiohttp.ClientSession() as http, \
                    http.get(f"{again.url}/kbs/v0/admin/keys", headers=again.admin_headers()) as r:
                keys = {k["path"] for k in await r.json()}
            assert set(created) <= keys
            path = random.choice(sorted(created))
            status, body, key = await full_flow(again.url, "sample", path)
            assert status == 200 and decrypt(body, key.private_key) == created[path]
        asyncio.run(check())
