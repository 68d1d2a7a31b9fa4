"""Several workers on one SQLite database under load: a nonce is consumed exactly once however many workers
race for it with distinct valid evidence, and a worker SIGKILLed mid-storm loses nothing it acknowledged:
every guest gets its key (retrying), every acknowledged release is in the log, and the log verifies."""

from __future__ import annotations

import asyncio
import base64
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


def test_one_nonce_many_workers_one_attestation(broker: Broker, pki: SyntheticAmd) -> None:
    """Twelve /attest with distinct valid evidence (each binds another TEE key) for one session, each on its
    own connection so that the kernel spreads them over the workers: exactly one is accepted."""
    guest = SnpGuest(pki)

    async def go() -> list[int]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            cookie = {c.key: c.value for c in http.cookie_jar}
        bodies = [attestation(nonce, generate_tee_key("EC-P256"), "snp", guest) for _ in range(12)]

        async def one(body: dict[str, Any]) -> int:
            async with aiohttp.ClientSession(cookies=cookie) as fresh:  # a connection (and worker) each
                return (await attest(fresh, broker.url, body))[0]
        return list(await asyncio.gather(*(one(b) for b in bodies)))
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
            """Eight GETs, each on its own connection (spread over the workers by the kernel)."""
            out: list[bytes | int] = []
            for _ in range(8):
                async with aiohttp.ClientSession() as fresh:
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
