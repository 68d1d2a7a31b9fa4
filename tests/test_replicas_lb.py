"""Replicas behind a load balancer (deploy/haproxy.cfg).

Two `kbs serve` replicas, each with its own state directory (as on two hosts) but one PostgreSQL database, one KEK
and one admin key, behind haproxy with health checks on /readyz. A storm of synthetic SNP guests goes through
haproxy while operators create keys; one replica is SIGKILLed mid-storm. Guests that see a connection error or a
5xx start over with a fresh /auth, a bounded number of times, and every one gets its key; every acknowledged
release is in the release log under its session and attestation; every acknowledged key creation is served by the
survivor; the log verifies; no session's nonce was attested twice.

And what haproxy replays, shown without timing: a replica that reads each request and closes the connection
without answering (as one killed mid-request does) never costs a guest its exchange (the ~16 KiB /attest
body included: tune.bufsize), while an admin write sent to it is not replayed elsewhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs.audit import merkle
from kbs.keys.jwe import decrypt, generate_tee_key
from kbs.server.protocol import ATTESTATION_ID_CLAIM, COOKIE
from kbs.server.sessions import session_id_of
from tests import fake_http
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, attestation, jar, run_broker
from tests.fake_http import in_thread
from tests.haproxy import REPLICA_HEADER, Haproxy, run_haproxy
from tests.postgres import PostgresServer

SECRET = b"lb-disk-key:" + bytes(range(20))
RESOURCE = "prod/key/disk"
MEASUREMENT = b"\x5a" * 48
POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "snp.measurement", "in": {"ref": "measurements"}},
    {"claim": "submod.ear\\.status", "equals": "affirming"}]}]})

GUESTS = 80
CONCURRENCY = 12
KILL_AFTER = 20  # guests done when the victim is killed: the rest of the storm runs on one replica
ATTEMPTS = 8  # exchanges a guest starts before it gives up
REQUEST_SECONDS = 20.0  # one request through haproxy, on a loaded machine
STORM_SECONDS = 60.0  # the whole storm, a bound and never a target
CREATIONS_AFTER_KILL = 0.5  # operators keep creating keys this long after the kill
VICTIM, SURVIVOR = "kbs1", "kbs2"  # haproxy's server names


class StartOver(Exception):
    """A connection error, a timeout or a 5xx: the guest starts a new exchange."""


class Refused(Exception):
    """A 4xx: the broker refused the guest, which no replica dying should ever cause."""


@dataclass(frozen=True)
class Release:
    """An acknowledged release: the guest decrypted the secret."""

    guest: int
    session_id: str
    attestation_id: str
    nonce: str
    token: str
    replicas: tuple[str, str, str]  # who answered /auth, /attest, the resource
    attempts: int


@dataclass
class Tally:
    releases: list[Release] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    start_overs: Counter[str] = field(default_factory=Counter)
    created: dict[str, tuple[bytes, str, bool]] = field(default_factory=dict)  # path: value, replica, pre-kill
    creation_failures: Counter[str] = field(default_factory=Counter)
    killed_at: float | None = None
    served_at: list[float] = field(default_factory=list)  # when each guest got its key


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database("kbs_lb")
    yield url
    postgres.drop_database(url)


def admin_headers(replica: Broker, key: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {replica.admin_token(key_path=key)}"}  # a fresh jti each time


async def _answer(r: aiohttp.ClientResponse, step: str) -> Any:
    if r.status >= 500:
        raise StartOver(f"{step}: {r.status}")
    body = await r.json(content_type=None)
    if r.status != 200:
        raise Refused(f"{step}: {r.status} {body}")
    return body


async def exchange(url: str, guest: SnpGuest, index: int, attempt: int) -> Release:
    """/auth, /attest, the resource with the session cookie, each through haproxy; the key decrypted."""
    key = generate_tee_key("EC-P256")
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    try:
        async with aiohttp.ClientSession(cookie_jar=jar(), timeout=timeout) as http:
            async with http.post(f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "snp",
                                                             "extra-params": {}}) as r:
                nonce = (await _answer(r, "auth"))["nonce"]
                by_auth = r.headers.get(REPLICA_HEADER, "?")
            session_id = session_id_of(next(c.value for c in http.cookie_jar if c.key == COOKIE))
            assert session_id is not None
            async with http.post(f"{url}/kbs/v0/attest", json=attestation(nonce, key, "snp", guest)) as r:
                token = (await _answer(r, "attest"))["token"]
                by_attest = r.headers.get(REPLICA_HEADER, "?")
            async with http.get(f"{url}/kbs/v0/resource/{RESOURCE}") as r:
                wrapped = await _answer(r, "resource")
                by_resource = r.headers.get(REPLICA_HEADER, "?")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StartOver(f"{type(exc).__name__}: {exc}") from exc
    assert decrypt(wrapped, key.private_key) == SECRET
    return Release(index, session_id, _claims(token)[ATTESTATION_ID_CLAIM], nonce, token,
                   (by_auth, by_attest, by_resource), attempt)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


async def guest_until_served(url: str, guest: SnpGuest, index: int, tally: Tally) -> bool:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            tally.releases.append(await exchange(url, guest, index, attempt))
            tally.served_at.append(time.monotonic())
            return True
        except StartOver as exc:
            tally.start_overs[str(exc)[:120]] += 1
            await asyncio.sleep(min(0.1 * attempt, 1.0) * random.uniform(0.5, 1.5))
        except Refused as exc:
            tally.refused.append(f"guest {index}: {exc}")
            return False
    tally.gave_up.append(f"guest {index}: no key after {ATTEMPTS} exchanges")
    return False


async def create_keys(url: str, replica: Broker, admin_key: Path, tally: Tally, stop: asyncio.Event) -> None:
    """Operators write keys through haproxy until told to stop; only acknowledged ones are recorded."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    i = 0
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            path, value = f"prod/key/late-{i}", os.urandom(24)
            i += 1
            try:
                async with http.post(f"{url}/kbs/v0/resource/{path}?policy=snp-prod", data=value,
                                     headers=admin_headers(replica, admin_key)) as r:
                    if r.status == 200:
                        tally.created[path] = (value, r.headers.get(REPLICA_HEADER, "?"), tally.killed_at is None)
                    else:
                        tally.creation_failures[f"{r.status}"] += 1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                tally.creation_failures[type(exc).__name__] += 1
            await asyncio.sleep(0.005)


async def storm(lb: Haproxy, victim: Broker, operator: Broker, admin_key: Path, guests: list[SnpGuest]) -> Tally:
    """The guests and the operators, through haproxy; the victim is SIGKILLed once KILL_AFTER guests have their
    key."""
    tally = Tally()
    gate = asyncio.Semaphore(CONCURRENCY)
    enough_guests, stop_creating = asyncio.Event(), asyncio.Event()

    async def one(index: int) -> None:
        async with gate:
            await guest_until_served(lb.url, guests[index % len(guests)], index, tally)
            if len(tally.releases) >= KILL_AFTER:
                enough_guests.set()

    async def killer() -> None:
        await enough_guests.wait()
        # The victim's last words: a key written to it directly (not through haproxy) and acknowledged just
        # before the kill, whichever replica haproxy happened to send the operators' other writes to.
        path, value = "prod/key/last-word", os.urandom(24)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS)) as http, \
                http.post(f"{victim.url}/kbs/v0/resource/{path}?policy=snp-prod", data=value,
                          headers=admin_headers(victim, admin_key)) as r:
            assert r.status == 200, await r.text()
        victim.process.send_signal(signal.SIGKILL)
        tally.created[path] = (value, VICTIM, True)
        tally.killed_at = time.monotonic()
        await asyncio.sleep(CREATIONS_AFTER_KILL)
        stop_creating.set()

    creator = asyncio.create_task(create_keys(lb.url, operator, admin_key, tally, stop_creating))
    kill = asyncio.create_task(killer())
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(GUESTS))), STORM_SECONDS)
        await asyncio.wait({kill}, timeout=REQUEST_SECONDS)  # not killed yet only when guests failed
    finally:
        stop_creating.set()
        kill.cancel()
        await asyncio.wait_for(creator, REQUEST_SECONDS + 5)
        with contextlib.suppress(asyncio.CancelledError):
            await kill  # the victim's last words refused: that failure, not a later one
    return tally


async def admin_get(url: str, replica: Broker, admin_key: Path, path: str) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS)) as http, \
            http.get(f"{url}{path}", headers=admin_headers(replica, admin_key)) as r:
        body = await r.json(content_type=None)
        assert r.status == 200, (path, r.status, body)
        return body


async def release_log(url: str, replica: Broker, admin_key: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        after = entries[-1]["seq"] if entries else 0
        page = await admin_get(url, replica, admin_key, f"/kbs/v0/admin/release-log?chain=release&after={after}"
                                                        "&limit=1000")
        entries += page
        if len(page) < 1000:
            return entries


async def provision(url: str, replica: Broker, admin_key: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path, kwargs in (
                ("PUT", "/kbs/v0/admin/refs/measurements", {"json": {"values": [MEASUREMENT.hex()]}}),
                ("PUT", "/kbs/v0/admin/policies/snp-prod", {"data": POLICY}),
                ("POST", f"/kbs/v0/resource/{RESOURCE}?policy=snp-prod", {"data": SECRET})):
            async with http.request(method, f"{url}{path}", headers=admin_headers(replica, admin_key),
                                    **kwargs) as r:
                assert r.status == 200, (path, await r.text())


def replica_config(tmp: Path, database: str, name: str) -> str:
    """A production-shaped replica (no dev mode): the shared database, KEK and admin key; its own state."""
    return (f'database_url = "{database}"\nkek_file = "{tmp / "kek"}"\ndev_mode = false\n'
            f'[[admin.keys]]\nname = "ops"\npublic_key = "{tmp / "admin.pub.pem"}"\nrole = "admin"\n'
            f'[verifiers.snp]\ntrust_roots = ["{tmp / "ark.pem"}"]\noffline = true\n'
            f'cache_dir = "{tmp / name / "kds"}"\n')


def test_sigkill_of_a_replica_behind_haproxy_mid_storm(tmp_path: Path, database: str) -> None:
    pki = SyntheticAmd("Milan")
    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    kek = tmp_path / "kek"
    kek.write_bytes(os.urandom(32))
    kek.chmod(0o600)
    admin_key = tmp_path / "admin.pem"
    private = Ed25519PrivateKey.generate()
    admin_key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    (tmp_path / "admin.pub.pem").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    guests = [SnpGuest(pki, chip=bytes([n]) * 64, measurement=MEASUREMENT) for n in range(1, 5)]

    with ExitStack() as stack:
        replicas: dict[str, Broker] = {}
        for name in (VICTIM, SURVIVOR):  # one after the other: the first creates the schema (either may)
            (tmp_path / name).mkdir()
            replicas[name] = stack.enter_context(run_broker(tmp_path / name, replica_config(tmp_path, database, name),
                                                            state_dir=tmp_path / name / "state"))
        lb = stack.enter_context(run_haproxy(tmp_path, {name: r.url for name, r in replicas.items()}))
        victim, survivor = replicas[VICTIM], replicas[SURVIVOR]
        assert not any((tmp_path / name / "state" / "kbs.sqlite3").exists() for name in replicas)

        asyncio.run(provision(lb.url, survivor, admin_key))
        tally = asyncio.run(storm(lb, victim, survivor, admin_key, guests))
        assert victim.process.wait(10) == -signal.SIGKILL
        print(f"storm: {len(tally.releases)} releases, attempts {Counter(r.attempts for r in tally.releases)}, "
              f"start-overs {dict(tally.start_overs)}; {len(tally.created)} keys created "
              f"({sum(1 for _, by, pre in tally.created.values() if by == VICTIM and pre)} by the victim), "
              f"creation failures {dict(tally.creation_failures)}")
        context = (f"start-overs {dict(tally.start_overs)}, creation failures {dict(tally.creation_failures)}\n"
                   f"haproxy log tail:\n{lb.log()[-4000:]}")

        # Every guest got its key, through retries, and none was refused.
        assert not tally.refused, (tally.refused, context)
        assert not tally.gave_up, (tally.gave_up, context)
        assert sorted(r.guest for r in tally.releases) == list(range(GUESTS)), context
        assert tally.killed_at is not None, f"the victim was never killed: {context}"
        after_kill = sum(1 for t in tally.served_at if t > tally.killed_at)
        assert after_kill >= GUESTS // 4, f"only {after_kill} guests served after the kill: not mid-storm"
        # No stickiness: sessions live in the database, so the steps of one exchange went to either replica.
        assert any(len(set(r.replicas)) > 1 for r in tally.releases), [r.replicas for r in tally.releases]
        assert {VICTIM, SURVIVOR} <= {name for r in tally.releases for name in r.replicas}, context

        # Key creations acknowledged by the victim before it died (its last words at least) and by the survivor
        # are served afterwards.
        assert any(by == VICTIM and before for _, by, before in tally.created.values()), (tally.created, context)
        asyncio.run(served_after_kill(lb.url, guests[0], tally.created))

        # The release log, read through haproxy (the survivor), holds every acknowledged release and verifies.
        entries = asyncio.run(release_log(lb.url, survivor, admin_key))
        releases = [e for e in entries if e["decision"] == "release" and e["resource"] == RESOURCE]
        assert len(releases) >= len(tally.releases)
        logged = {(e["session_id"], e["attestation_id"]) for e in releases}
        missing = [r for r in tally.releases if (r.session_id, r.attestation_id) not in logged]
        assert not missing, missing
        verified = asyncio.run(admin_get(lb.url, survivor, admin_key, "/kbs/v0/admin/release-log/verify"))
        assert verified["ok"] is True
        head = next(h for h in verified["heads"] if h["chain"] == "release")
        assert head["entries"] == len(entries), (head, len(entries))
        builder = merkle.RootBuilder()  # the head is the Merkle root over every entry's leaf hash
        for e in entries:
            builder.push(bytes.fromhex(e["entry_hash"]))
        assert head["head_hash"] == builder.root().hex() and head["head_seq"] == entries[-1]["seq"]

        # No nonce used twice: every session released under one attestation only; distinct guests, distinct
        # nonces; and the token each guest holds is the one its session recorded when its nonce was consumed.
        by_session: dict[str, set[str]] = defaultdict(set)
        for e in entries:
            if e["decision"] == "release" and e["session_id"] is not None:
                by_session[e["session_id"]].add(e["attestation_id"])
        assert all(len(ids) == 1 for ids in by_session.values()), {s: i for s, i in by_session.items() if len(i) > 1}
        assert len({r.nonce for r in tally.releases}) == len({r.session_id for r in tally.releases}) == GUESTS
    with psycopg.connect(database) as conn:
        rows: dict[str, str] = dict(
            conn.execute("SELECT session_id, token FROM sessions WHERE state = 'attested'").fetchall())
        nonces = [n for (n,) in conn.execute("SELECT nonce FROM sessions").fetchall()]
    assert len(nonces) == len(set(nonces))
    for release in tally.releases:
        assert rows.get(release.session_id) == release.token, release


async def served_after_kill(url: str, guest: SnpGuest, created: dict[str, tuple[bytes, str, bool]]) -> None:
    """One guest, through haproxy after the kill, fetches every key whose creation was acknowledged."""
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar(), timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS)) as http:
        async with http.post(f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "snp", "extra-params": {}}) as r:
            nonce = (await _answer(r, "auth"))["nonce"]
        async with http.post(f"{url}/kbs/v0/attest", json=attestation(nonce, key, "snp", guest)) as r:
            await _answer(r, "attest")
        for path, (value, by, _) in sorted(created.items()):
            async with http.get(f"{url}/kbs/v0/resource/{path}") as r:
                assert r.status == 200, (path, by, await r.text())
                assert decrypt(await r.json(), key.private_key) == value, (path, by)
                assert r.headers.get(REPLICA_HEADER) == SURVIVOR


@contextmanager
def dying_replica() -> Iterator[tuple[str, Counter[str]]]:
    """A replica that is ready, but reads every other request to the end and closes the connection without
    a byte of answer; yields its URL and the paths it swallowed."""
    swallowed: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/readyz":
            return web.Response(text="ready")
        await request.read()
        kind = "resource" if request.path.startswith("/kbs/v0/resource/") else request.path.rsplit("/", 1)[-1]
        swallowed[f"{request.method} {kind}"] += 1
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError  # nothing is written: the connection is simply gone

    with in_thread(lambda: fake_http.serve(handler)) as url:
        yield url, swallowed


def test_haproxy_replays_guest_steps_and_never_admin_writes(tmp_path: Path) -> None:
    pki = SyntheticAmd("Milan")
    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    guest = SnpGuest(pki, measurement=MEASUREMENT)
    config = (f'[verifiers.snp]\ntrust_roots = ["{tmp_path / "ark.pem"}"]\noffline = true\n'
              f'cache_dir = "{tmp_path / "kds"}"\n')
    with dying_replica() as (dying_url, swallowed), run_broker(tmp_path, config) as real, \
            run_haproxy(tmp_path, {"dying": dying_url, "real": real.url}) as lb:
        admin_key = real.state_dir / "admin-key.pem"

        async def go() -> tuple[list[Release], dict[str, int]]:
            await provision(real.url, real, admin_key)
            served = []
            for i in range(6):  # haproxy alternates: about half of all requests first reach the dying replica
                served.append(await exchange(lb.url, guest, i, 1))  # no StartOver, no Refused: replayed
            outcomes: dict[str, int] = {}
            async with aiohttp.ClientSession() as http:
                for i in range(6):
                    path = f"prod/key/admin-{i}"
                    try:
                        async with http.post(f"{lb.url}/kbs/v0/resource/{path}", data=b"v" * 32,
                                             headers=admin_headers(real, admin_key)) as r:
                            outcomes[path] = r.status
                    except aiohttp.ClientError:
                        outcomes[path] = 0  # the connection closed without an answer
            return served, outcomes

        served, outcomes = asyncio.run(go())
        keys = {k["path"] for k in asyncio.run(admin_get(real.url, real, admin_key, "/kbs/v0/admin/keys"))}
        log = lb.log()
    assert len(served) == 6 and all(r.replicas == ("real", "real", "real") for r in served), served
    # Each guest step reached the dying replica at least once and was replayed to the real one.
    assert all(swallowed[step] for step in ("POST auth", "POST attest", "GET resource")), (swallowed, log)
    # Admin writes that reached the dying replica failed for their client (502, or on a kept-alive connection
    # the connection closed) and were not sent again to the real one; the others were served.
    failed = {path for path, status in outcomes.items() if status != 200}
    assert len(failed) == swallowed["POST resource"] > 0, (outcomes, swallowed, log)
    assert all(outcomes[p] in (0, 502) for p in failed), (outcomes, log)
    assert keys & failed == set() and set(outcomes) - failed <= keys, (outcomes, keys)
