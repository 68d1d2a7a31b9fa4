"""Hostile Rego policies against a running broker: each passes upload (its rule is guarded by the input)
and misbehaves at evaluation.  Each is a deny naming the engine failure, the broker stays up, and a slow
rule does not hold up /auth (the database has its own threads; Rego runs in worker processes)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from kbs.evidence.binding import primary_runtime_digest
from kbs.keys.jwe import generate_tee_key
from tests.broker import Broker, attest, auth, get_resource, jar, run_broker
from tests.test_attack_daemon import rss_kib
from tests.test_server_e2e import admin, logged

GUARDED = "package policy\nimport rego.v1\ndefault allow := false\n"
CLAIMS = 'input.submods.cpu0["ear.veraison.annotated-evidence"].init_data_claims'
POLICIES = {
    "json-bomb": GUARDED + f"allow if {{ s := {CLAIMS}.s; json.unmarshal(s) }}\n",
    "yaml-bomb": GUARDED + f"allow if {{ s := {CLAIMS}.s; yaml.unmarshal(s) }}\n",
    "range-bomb": GUARDED + f"allow if {{ {CLAIMS}.go; count(numbers.range(1, 4000000000)) > 0 }}\n",
    "slow": GUARDED + (f'allow if {{ {CLAIMS}.go; xs := numbers.range(1, 3000); some a in xs; some b in xs; '
                       'sprintf("%d-%d", [a, b]) == "x" }\n'),
    "fine": GUARDED + f"allow if {CLAIMS}.go == true\n",
}
DEEP = "[" * 6000 + "]" * 6000
INIT_DATA = f'algorithm = "sha256"\nversion = "0.1.0"\n[data]\ngo = true\ns = "{DEEP}"\n'


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("hostile-policies")
    # The timeout leaves a loaded machine (CI runs two test processes) time to hit the memory limit first.
    with run_broker(tmp, "[policy]\nrego_timeout_seconds = 3\n") as b:
        async def provision() -> None:
            for name, text in POLICIES.items():
                status, body = await admin(b, "PUT", f"/kbs/v0/admin/policies/{name}", data=text)
                assert status == 200, body  # upload passes: the rules are guarded by the input
                status, body = await admin(b, "POST", f"/kbs/v0/resource/lab/key/{name}?policy={name}",
                                           data=b"secret-" + name.encode())
                assert status == 200, body
        asyncio.run(provision())
        yield b


async def token(url: str) -> str:
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "sample")
        digest = primary_runtime_digest(nonce, key.jwk, "")
        status, body = await attest(http, url, {
            "init-data": {"format": "toml", "body": INIT_DATA},
            "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
            "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
                             "additional_evidence": ""}})
        assert status == 200, body
        return str(body["token"])


async def fetch(url: str, name: str, bearer: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        return await get_resource(http, url, f"lab/key/{name}", token=bearer)


@pytest.mark.parametrize(("name", "label"), [("json-bomb", "rego.crash"), ("yaml-bomb", "rego.crash"),
                                             ("range-bomb", "rego.memory"), ("slow", "rego.timeout")])
def test_hostile_policy_is_a_deny_and_the_broker_survives(broker: Broker, name: str, label: str) -> None:
    before = rss_kib(broker)
    bearer = asyncio.run(token(broker.url))
    status, body = asyncio.run(fetch(broker.url, name, bearer))
    assert status == 401 and body["type"].endswith("PolicyDeny"), body
    entry = logged(broker, body["reference"])
    assert entry["reason"] == label and label in entry["detail"], entry
    assert broker.process.poll() is None  # the broker process is alive
    status, body = asyncio.run(fetch(broker.url, "fine", bearer))
    assert status == 200, body  # and the next evaluation is correct
    assert rss_kib(broker) - before < 50 * 1024  # the bomb's memory was the worker's, not the broker's


def test_a_slow_rule_does_not_hold_up_auth(broker: Broker) -> None:
    bearer = asyncio.run(token(broker.url))
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        async def go() -> None:
            async with aiohttp.ClientSession() as http:
                while not stop.is_set():
                    started = time.monotonic()
                    async with http.post(f"{broker.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample"}) as r:
                        assert r.status == 200
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)
        asyncio.run(go())
    thread = threading.Thread(target=probe)
    thread.start()
    try:
        async def slow_requests() -> list[tuple[int, dict[str, Any]]]:
            return list(await asyncio.gather(*(fetch(broker.url, "slow", bearer) for _ in range(4))))
        results = asyncio.run(slow_requests())
    finally:
        stop.set()
        thread.join(10)
    assert all(status == 401 for status, _ in results)
    assert len(latencies) >= 5 and max(latencies) < 1.0, f"/auth took up to {max(latencies):.2f} s"


def test_rego_failures_are_counted(broker: Broker) -> None:
    async def metrics() -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{broker.url}/metrics") as r:
            return await r.text()
    bearer = asyncio.run(token(broker.url))
    asyncio.run(fetch(broker.url, "json-bomb", bearer))
    text = asyncio.run(metrics())
    assert 'kbs_rego_events_total{event="rego.crash"}' in text
    assert 'kbs_resource_requests_total{decision="deny",reason="rego.crash"}' in text
