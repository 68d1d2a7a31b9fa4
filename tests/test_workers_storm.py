"""Several workers on one SQLite database under load: a nonce is consumed exactly once however many workers
race for it with distinct valid evidence, and a worker SIGKILLed mid-storm loses nothing it acknowledged:
every guest gets its key (retrying), every acknowledged release is in the log, and the log verifies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from kbs.keys.jwe import decrypt, generate_tee_key
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, attest, attestation, auth, get_resource, jar, run_broker
from tests.test_server_e2e import admin, broker_config
from tests.test_workers import running, until

SECRET = b"storm-secret:" + bytes(range(16))
POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "snp.policy_debug_allowed", "equals": False}]}]})
NO_RATE_LIMITS = "[limits]\nauth_per_second = 0\nattest_per_second = 0\nresource_per_second = 0\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: SyntheticAmd) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("storm")
    with run_broker(tmp, broker_config(tmp, pki, NO_RATE_LIMITS), workers=2) as b:
        async def provision() -> None:
            assert (await admin(b, "PUT", "/kbs/v0/admin/policies/storm", data=POLICY))[0] == 200
            assert (await admin(b, "POST", "/kbs/v0/resource/storm/key/disk?policy=storm", data=SECRET))[0] == 200
        asyncio.run(provision())
        until(lambda: running(b), "both workers running")
        yield b


async def on_each_worker(broker: Broker, per_worker: int, stack: contextlib.AsyncExitStack,
                         cookies: dict[str, str] | None = None) -> list[aiohttp.ClientSession]:
    """`per_worker` client sessions of one keep-alive connection each on worker 0, then as many on worker 1;
    closed with `stack`.  The workers share one accept queue, and an idle broker's connections mostly go to the
    same worker, so each worker's connections are made while the other is stopped (SIGSTOP): only it accepts.
    Each connection's /healthz names the worker that accepted it, which the test checks."""
    workers = {str(w["index"]): w["pid"] for w in until(lambda: running(broker), "both workers running")}
    sessions = []
    for index in sorted(workers):
        others = [pid for other, pid in workers.items() if other != index]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(per_worker):
                fresh = await stack.enter_async_context(
                    aiohttp.ClientSession(cookies=cookies, connector=aiohttp.TCPConnector(limit=1)))
                async with fresh.get(f"{broker.url}/healthz") as r:  # the same connection carries what follows
                    assert r.headers["Kbs-Worker"] == index, r.headers
                    await r.read()
                sessions.append(fresh)
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)
    return sessions


def test_one_nonce_many_workers_one_attestation(broker: Broker, pki: SyntheticAmd) -> None:
    """Twelve /attest with distinct valid evidence (each binds another TEE key) for one session, at once, six on
    connections worker 0 accepted and six on worker 1's (`on_each_worker`): exactly one is accepted."""
    guest = SnpGuest(pki)
    per_worker = 6

    async def go() -> list[int]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            cookie = {c.key: c.value for c in http.cookie_jar}
        bodies = [attestation(nonce, generate_tee_key("EC-P256"), "snp", guest) for _ in range(2 * per_worker)]
        async with contextlib.AsyncExitStack() as stack:
            sessions = await on_each_worker(broker, per_worker, stack, cookie)
            answers = await asyncio.gather(*(attest(s, broker.url, b) for s, b in zip(sessions, bodies, strict=True)))
        return [status for status, _ in answers]
    for _ in range(3):
        statuses = asyncio.run(go())
        assert statuses.count(200) == 1 and statuses.count(401) == 11, statuses


async def _guest(url: str, guest: SnpGuest, acknowledged: list[str]) -> bytes:
    """One guest's exchange, started over on a connection error or a 5xx (a worker that died under it)."""
    for _ in range(10):
        key = generate_tee_key("EC-P256")
        try:
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, url, "snp")
                status, body = await attest(http, url, attestation(nonce, key, "snp", guest))
                if status >= 500:
                    continue
                assert status == 200, body
                status, out = await get_resource(http, url, "storm/key/disk")
                if status >= 500:
                    continue
                assert status == 200, out
                token = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
                acknowledged.append(token["kbs.attestation-id"])
                return decrypt(out, key.private_key)
        except (TimeoutError, aiohttp.ClientConnectionError):
            await asyncio.sleep(0.05)
    raise AssertionError("a guest gave up after 10 attempts")


def test_sigkill_of_a_worker_mid_storm_loses_nothing_acknowledged(broker: Broker, pki: SyntheticAmd) -> None:
    guest = SnpGuest(pki)
    acknowledged: list[str] = []
    victim = running(broker)[0]["pid"]

    async def storm() -> list[bytes]:
        gate = asyncio.Semaphore(12)

        async def limited() -> bytes:
            async with gate:
                return await _guest(broker.url, guest, acknowledged)

        async def killer() -> None:
            deadline = time.monotonic() + 30
            while len(acknowledged) < 15 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            os.kill(victim, signal.SIGKILL)
        results = await asyncio.gather(*(limited() for _ in range(60)), killer())
        return [r for r in results if isinstance(r, bytes)]
    keys = asyncio.run(storm())
    assert keys == [SECRET] * 60 and len(acknowledged) == 60
    until(lambda: (view := running(broker)) and all(w["pid"] != victim for w in view), "the worker replaced")

    async def logged() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        after = 0
        while True:
            status, page = await admin(broker, "GET", f"/kbs/v0/admin/release-log?chain=release&after={after}"
                                                      "&limit=1000")
            assert status == 200
            if not page:
                break
            entries += page
            after = page[-1]["seq"]
        status, verified = await admin(broker, "GET", "/kbs/v0/admin/release-log/verify")
        assert status == 200, verified
        return entries, verified
    entries, _ = asyncio.run(logged())
    released = {e["attestation_id"] for e in entries if e["decision"] == "release"}
    missing = set(acknowledged) - released
    assert not missing, f"{len(missing)} acknowledged releases are not in the log"


def test_every_worker_sees_key_changes_at_once(broker: Broker, pki: SyntheticAmd) -> None:
    """Release inputs are cached per worker while the store's decision generation stands still: a rotation,
    a disable and an enable made through one worker are what the very next release on any worker sees."""
    guest = SnpGuest(pki)
    key = generate_tee_key("EC-P256")
    path = "storm/key/cached"

    async def go() -> None:
        assert (await admin(broker, "POST", f"/kbs/v0/resource/{path}?policy=storm", data=b"first"))[0] == 200
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            status, body = await attest(http, broker.url, attestation(nonce, key, "snp", guest))
            assert status == 200, body
        token = body["token"]

        async def releases() -> list[bytes | int]:
            """Eight GETs, four on connections to each worker (`on_each_worker`)."""
            out: list[bytes | int] = []
            async with contextlib.AsyncExitStack() as stack:
                for fresh in await on_each_worker(broker, 4, stack):
                    status, answer = await get_resource(fresh, broker.url, path, token)
                    out.append(decrypt(answer, key.private_key) if status == 200 else status)
            return out
        assert await releases() == [b"first"] * 8  # every worker has it cached now
        assert (await admin(broker, "POST", f"/kbs/v0/resource/{path}", data=b"second"))[0] == 200
        assert await releases() == [b"second"] * 8
        assert (await admin(broker, "POST", f"/kbs/v0/admin/keys/{path}/disable"))[0] == 200
        assert set(await releases()) == {404}
        assert (await admin(broker, "POST", f"/kbs/v0/admin/keys/{path}/enable?version=2"))[0] == 200
        assert await releases() == [b"second"] * 8
    asyncio.run(go())
