"""`database_url = "postgresql://..."` end to end: two `kbs serve` replicas, each with its own state
directory (as on two hosts) but one KEK and one PostgreSQL database, serve a synthetic SNP guest:
/auth on one, /attest on the other, the key from either; one nonce raced to both is used once; the
release log, written by both, verifies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from kbs.keys.jwe import decrypt, generate_tee_key
from kbs.store.schema import SCHEMA_VERSION
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, attest, attestation, auth, get_resource, jar, run_broker
from tests.postgres import PostgresServer

SECRET = b"pg-disk-key:" + bytes(range(16))
MEASUREMENT = b"\x5a" * 48
POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "snp.measurement", "in": {"ref": "measurements"}},
    {"claim": "submod.ear\\.status", "equals": "affirming"}]}]})


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database("kbs_e2e")
    yield url
    postgres.drop_database(url)


async def admin(broker: Broker, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"{broker.url}{path}", headers=broker.admin_headers(), **kwargs) as r:
        return r.status, await r.json(content_type=None)


async def provision(broker: Broker) -> None:
    status, body = await admin(broker, "PUT", "/kbs/v0/admin/refs/measurements", json={"values": [MEASUREMENT.hex()]})
    assert status == 200, body
    status, body = await admin(broker, "PUT", "/kbs/v0/admin/policies/snp-prod", data=POLICY)
    assert status == 200, body
    status, body = await admin(broker, "POST", "/kbs/v0/resource/prod/key/disk?policy=snp-prod", data=SECRET)
    assert status == 200 and body["version"] == 1, body


@contextmanager
def two_replicas(tmp_path: Path, database: str) -> Iterator[tuple[Broker, Broker, SnpGuest]]:
    """Two `kbs serve` on the one database, each with its own state directory (as on two hosts) and one KEK, and
    a synthetic SNP guest their verifiers trust."""
    pki = SyntheticAmd("Milan")
    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    one_state, two_state = tmp_path / "host-one", tmp_path / "host-two"

    def config(kek: str = "") -> str:
        return (f'database_url = "{database}"\n{kek}[verifiers.snp]\ntrust_roots = ["{tmp_path / "ark.pem"}"]\n'
                f'offline = true\ncache_dir = "{tmp_path / "kds"}"\n')

    with run_broker(tmp_path, config(), state_dir=one_state) as one, \
            run_broker(tmp_path, config(f'kek_file = "{one_state / "kek"}"\n'), state_dir=two_state) as two:
        assert not (one_state / "kbs.sqlite3").exists() and not (two_state / "kbs.sqlite3").exists()
        yield one, two, SnpGuest(pki, measurement=MEASUREMENT)


def test_two_replicas_on_one_postgresql(tmp_path: Path, database: str) -> None:
    with two_replicas(tmp_path, database) as (one, two, guest):

        async def go() -> None:
            await provision(one)
            key = generate_tee_key("EC-P256")
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, one.url, "snp")
                cookie = {c.key: c.value for c in http.cookie_jar}
            # Distinct valid evidence per request (each binds another TEE key): the same evidence again is
            # an idempotent retry answered with the same token, so only distinct evidence tests the race.
            keys = [key, *(generate_tee_key("EC-P256") for _ in range(3))]
            bodies = [attestation(nonce, k, "snp", guest) for k in keys]
            async with aiohttp.ClientSession(cookies=cookie) as a, aiohttp.ClientSession(cookies=cookie) as b:
                raced = await asyncio.gather(*(attest(http, url, body) for http, url, body in
                                               zip((a, b, a, b), (two.url, one.url, two.url, one.url), bodies,
                                                   strict=True)))
            won = [(k, reply) for k, (status, reply) in zip(keys, raced, strict=True) if status == 200]
            assert len(won) == 1, raced  # one nonce, one attestation, whichever replica got it first
            key, token = won[0][0], won[0][1]["token"]
            for replica in (one, two):
                async with aiohttp.ClientSession() as fresh:
                    status, out = await get_resource(fresh, replica.url, "prod/key/disk", token=token)
                assert status == 200, out
                assert decrypt(out, key.private_key) == SECRET
            # A change on one replica decides the other's next request (its release is written only if the store
            # is still at the generation of the inputs it decided on, and a refusal stands only if it is).
            status, body = await admin(one, "PUT", "/kbs/v0/admin/refs/measurements", json={"values": ["00" * 48]})
            assert status == 200, body
            async with aiohttp.ClientSession() as fresh:
                status, out = await get_resource(fresh, two.url, "prod/key/disk", token=token)
            assert status == 401 and "denied" in out["detail"], out
            status, body = await admin(one, "PUT", "/kbs/v0/admin/refs/measurements",
                                       json={"values": [MEASUREMENT.hex()]})
            assert status == 200, body
            async with aiohttp.ClientSession() as fresh:
                status, out = await get_resource(fresh, two.url, "prod/key/disk", token=token)
            assert status == 200 and decrypt(out, key.private_key) == SECRET, out
            redone = await _counted(two)  # the release refused at its write, the refusal whose generation moved
            assert (redone["redone release"], redone["redone refusal"]) == (1, 1), redone
            # A NUL (valid JSON, which PostgreSQL text cannot hold) in a logged field: refused and logged, not a
            # 503; a lone surrogate is not JSON at all (400), and logged as well.
            for hostile, expected in ((b'{"version": "0.4\\u0000", "tee": "snp", "extra-params": {}}', 401),
                                      (b'{"version": "0.4\\udc80", "tee": "snp", "extra-params": {}}', 400)):
                async with aiohttp.ClientSession() as http, \
                        http.post(f"{two.url}/kbs/v0/auth", data=hostile) as r:
                    refused = await r.json(content_type=None)
                    assert r.status == expected, refused
                status, refusals = await admin(one, "GET", "/kbs/v0/admin/release-log?chain=refusal&limit=1000")
                assert status == 200 and [e["ref"] for e in refusals].count(refused["reference"]) == 1, refusals
            status, verified = await admin(one, "GET", "/kbs/v0/admin/release-log/verify")
            assert status == 200, verified
            heads = {h["chain"]: h for h in verified["heads"]}
            assert heads["release"]["entries"] >= 2  # both releases (plus the admin changes)
        asyncio.run(go())
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT decision, resource FROM release_log WHERE decision = 'release'").fetchall()
        assert rows == [("release", "prod/key/disk")] * 3
        assert conn.execute("SELECT version FROM kbs_schema").fetchone() == (SCHEMA_VERSION,)


async def _counted(broker: Broker) -> dict[str, float]:
    """The replica's verifications, batches run again (kbs_store_batch_retries_total) and decisions made again
    (kbs_release_decisions_redone_total, by outcome)."""
    async with aiohttp.ClientSession() as http, http.get(f"{broker.url}/metrics") as r:
        text = await r.text()
    counts = {"verifications": 0.0, "retries": 0.0, "redone release": 0.0, "redone refusal": 0.0}
    for line in text.splitlines():
        value = float(line.rsplit(" ", 1)[1]) if line and not line.startswith("#") else 0.0
        if line.startswith("kbs_verification_seconds_count{"):
            counts["verifications"] += value
        elif line.startswith("kbs_store_batch_retries_total "):
            counts["retries"] += value
        elif line.startswith("kbs_release_decisions_redone_total{"):
            counts["redone " + line.split('outcome="', 1)[1].split('"', 1)[0]] += value
    return counts


def test_a_captured_attest_replayed_at_another_replica_is_verified_and_written_once(tmp_path: Path,
                                                                                      database: str) -> None:
    """A guest's /attest (cookie and evidence) replayed at the other replica: the first replay is verified and
    loses the nonce there (on PostgreSQL its batch runs again call by call); the replica then knows the session
    is attested, and every later replay is answered (the same token for the same evidence, refused for other
    evidence) without a verification or a write.  Without that, each replay of one captured request would cost
    a verification and a whole batch run again."""
    with two_replicas(tmp_path, database) as (one, two, guest):

        async def go() -> None:
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, one.url, "snp")
                captured = attestation(nonce, generate_tee_key("EC-P256"), "snp", guest)
                status, first = await attest(http, one.url, captured)
                assert status == 200, first
                cookie = {c.key: c.value for c in http.cookie_jar}
            before = await _counted(two)
            async with aiohttp.ClientSession(cookies=cookie) as replayer:
                replies = [await attest(replayer, two.url, captured) for _ in range(12)]
                other = await attest(replayer, two.url, attestation(nonce, generate_tee_key("EC-P256"), "snp", guest))
            after = await _counted(two)
            assert [(s, r.get("token")) for s, r in replies] == [(200, first["token"])] * 12, replies
            assert other[0] == 401 and "already attested" in other[1]["detail"], other
            assert after["verifications"] - before["verifications"] == 1, (before, after)
            assert after["retries"] - before["retries"] <= 1, (before, after)
        asyncio.run(go())
    with psycopg.connect(database) as conn:
        attests = conn.execute("SELECT count(*) FROM release_log WHERE decision = 'attest'").fetchone()
    assert attests == (1,)
