"""The security review's findings, replayed against a running `kbs serve` over HTTP (or its database
file), each seen to hold: hostile guests, a careless admin, someone holding the database, slow and
abusive clients.  The broker's memory is measured (VmRSS) where the finding was memory."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs.evidence.binding import primary_runtime_digest
from kbs.keys.jwe import b64u, generate_tee_key
from tests.amd_synth import SyntheticAmd
from tests.broker import (
    Broker,
    SnpGuest,
    attest,
    attestation,
    auth,
    free_port,
    full_flow,
    get_resource,
    jar,
    run_broker,
    wait_ready,
)
from tests.test_server_e2e import admin, broker_config, logged, release_log

SECRET = b"attack-test-key:" + bytes(range(16))
ALLOW_SAMPLE = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})
ALLOW_SNP = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "submod.ear\\.status", "equals": "affirming"}]}]})


def rss_kib(broker: Broker) -> int:
    for line in Path(f"/proc/{broker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def put(broker: Broker, path: str, **kwargs: Any) -> tuple[int, Any]:
    method = kwargs.pop("method", "POST")
    return asyncio.run(admin(broker, method, path, **kwargs))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: SyntheticAmd) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("attack")
    # No per-client rate limits here (test_rate_limits_on_guest_routes has its own broker): these tests send
    # bursts from one address, and a 429 answered before a 900 KB body is read ends in a connection reset.
    limits = ("[limits]\ntoken_cache_bytes = 1048576\nmax_claims_bytes = 100000\n"
              "auth_per_second = 0\nattest_per_second = 0\nresource_per_second = 0\n")
    with run_broker(tmp, broker_config(tmp, pki, limits)) as b:
        assert put(b, "/kbs/v0/admin/policies/sample-ok", method="PUT", data=ALLOW_SAMPLE)[0] == 200
        assert put(b, "/kbs/v0/admin/policies/snp-ok", method="PUT", data=ALLOW_SNP)[0] == 200
        assert put(b, "/kbs/v0/resource/lab/key/sample?policy=sample-ok", data=SECRET)[0] == 200
        assert put(b, "/kbs/v0/resource/prod/key/snp?policy=snp-ok", data=SECRET)[0] == 200
        yield b


async def _attest_sample(url: str, mutate: Any = None, init_data: str | None = None) -> tuple[int, dict[str, Any]]:
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "sample")
        jwk = dict(key.jwk)
        if mutate:
            mutate(jwk)
        digest = primary_runtime_digest(nonce, jwk, "")
        body = {"init-data": {"format": "toml", "body": init_data} if init_data else None,
                "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
                                 "additional_evidence": ""}}
        return await attest(http, url, body)


# -- 1. memory exhaustion without credentials -------------------------------------------------

def test_jwk_with_extra_members_refused_and_memory_stays_bounded(broker: Broker) -> None:
    """30 attestations whose tee-pubkey carries 900 KB of members no JWK defines: all refused, RSS flat."""
    before = rss_kib(broker)

    def pad(jwk: dict[str, Any]) -> None:
        for i in range(90):
            jwk[f"x-pad-{i}"] = "A" * 10_000

    async def go() -> list[tuple[int, dict[str, Any]]]:
        return [await _attest_sample(broker.url, pad) for _ in range(30)]
    results = asyncio.run(go())
    assert all(status == 401 and "not defined for kty EC" in body["detail"] for status, body in results), results[0]
    assert logged(broker, results[0][1]["reference"])["reason"] == "jwe.key"
    growth = rss_kib(broker) - before
    assert growth < 60 * 1024, f"RSS grew by {growth} KiB"


def test_claims_document_and_token_cache_are_bounded(broker: Broker) -> None:
    """Large init-data: claims over [limits] max_claims_bytes (100000 here) are refused; tokens below it
    are cached within token_cache_bytes (1 MiB here) however many guests attest."""
    big = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\nblob = "' + "b" * 110_000 + '"\n'
    status, body = asyncio.run(_attest_sample(broker.url, init_data=big))
    assert status == 400 and "claims.size" in body["detail"] and "max_claims_bytes" in body["detail"]
    medium = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\nblob = "' + "m" * 9_000 + '"\n'

    async def many() -> list[int]:
        return [(await _attest_sample(broker.url, init_data=medium))[0] for _ in range(150)]
    before = rss_kib(broker)
    assert set(asyncio.run(many())) == {200}
    growth = rss_kib(broker) - before
    assert growth < 40 * 1024, f"RSS grew by {growth} KiB after 150 tokens of ~13 KB"


def test_init_data_too_large_or_too_deep_is_a_clear_4xx(broker: Broker) -> None:
    huge = 'algorithm = "sha256"\n[data]\nx = "' + "h" * 140_000 + '"\n'
    status, body = asyncio.run(_attest_sample(broker.url, init_data=huge))
    assert status == 401 and "init_data.size" in body["detail"]
    deep = 'algorithm = "sha256"\n[data]\nx = ' + "[" * 3000 + "]" * 3000 + "\n"
    status, body = asyncio.run(_attest_sample(broker.url, init_data=deep))
    assert status == 401 and "nested too deeply" in body["detail"]


def test_trustee_init_data_with_policy_gets_a_token_usable_as_bearer(broker: Broker) -> None:
    """Real guests send init-data with a policy (62 KB): the token carries it and still fits a Bearer header."""
    from tests.conftest import vectors_dir

    path = vectors_dir() / "trustee" / "initdata" / "init-data-with-policy.toml"
    if not path.exists():
        pytest.skip(f"init-data sample not found at {path}")
    status, body = asyncio.run(_attest_sample(broker.url, init_data=path.read_text()))
    assert status == 200, body
    assert len(body["token"]) > 80_000

    async def bearer() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            return await get_resource(http, broker.url, "lab/key/sample", token=body["token"])
    status, released = asyncio.run(bearer())
    assert status == 200 and set(released) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}


def test_a_connection_head_is_bounded_as_a_whole(broker: Broker) -> None:
    """Header fields are large enough for a token, but a head of many large fields is cut off."""
    port = int(broker.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(40):
                sock.sendall(f"X-Pad-{i}: {'p' * 15_000}\r\n".encode())
        except OSError:
            pass  # reset by the broker mid-way
        assert _closed(sock)
    assert 'limit="head_size"' in _metric_lines(broker, "kbs_connections_refused_total")[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as health:
        health.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in health.recv(4096)


# -- 2. enabled TEEs ----------------------------------------------------------------------------

def _production_config(tmp: Path, extra: str = "") -> str:
    """A config file without dev mode: KEK file (0600), one admin key."""
    kek = tmp / "kek"
    kek.write_bytes(bytes(range(32)))
    kek.chmod(0o600)
    admin_key = Ed25519PrivateKey.generate()
    (tmp / "admin.pem").write_bytes(admin_key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    (tmp / "admin.pub.pem").write_bytes(admin_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = (f'dev_mode = false\nkek_file = "{kek}"\n{extra}\n[[admin.keys]]\nname = "ops"\n'
              f'public_key = "{tmp / "admin.pub.pem"}"\nrole = "admin"\n')
    return config


def test_sample_is_off_in_production_and_unknown_tees_never_become_labels(tmp_path: Path) -> None:
    # /metrics is not public in production by default ([metrics]): opened here to measure its size.
    with run_broker(tmp_path, _production_config(tmp_path, "[metrics]\npublic = true\n")) as b:
        async def go() -> tuple[list[tuple[int, str]], int]:
            out = []
            async with aiohttp.ClientSession() as http:
                for tee in ("sample", "x" * 3000, "snp"):
                    async with http.post(f"{b.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": tee}) as r:
                        out.append((r.status, (await r.text())[:300]))
                for i in range(60):  # the review's 60 requests with a 200 KB name: now refused unread
                    long = {"version": "0.4.0", "tee": f"{i}" * 200_000}
                    try:
                        async with http.post(f"{b.url}/kbs/v0/auth", json=long) as r:
                            assert r.status == 413
                    except aiohttp.ClientError:
                        pass  # refused before the upload finished: the connection is closed under it
                async with http.get(f"{b.url}/metrics") as r:
                    assert r.status == 200
                    size = len(await r.read())
            return out, size
        (sample, long_name, snp), metrics_size = asyncio.run(go())
    assert sample[0] == 401 and "TEE 'sample' is not enabled on this broker; enabled: snp" in sample[1]
    assert long_name[0] == 401 and "not enabled" in long_name[1] and len(long_name[1]) < 300
    assert snp[0] == 200
    assert metrics_size < 64 * 1024


def test_sample_can_be_enabled_explicitly_and_snp_disabled(tmp_path: Path) -> None:
    with run_broker(tmp_path, '[verifiers]\nenabled = ["sample"]\n') as b:
        async def go() -> list[int]:
            statuses = []
            async with aiohttp.ClientSession() as http:
                for tee in ("sample", "snp"):
                    async with http.post(f"{b.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": tee}) as r:
                        statuses.append(r.status)
            return statuses
        assert asyncio.run(go()) == [200, 401]


def test_unknown_tee_in_configuration_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"unknown TEE\(s\) 'tdx-typo' in \[verifiers\]"), \
            run_broker(tmp_path, '[verifiers]\nenabled = ["snp", "tdx-typo"]\n'):
        pass


# -- 5. VMPL --------------------------------------------------------------------------------

def test_vmpl_3_report_refused_by_default_and_allowed_by_setting(broker: Broker, pki: SyntheticAmd,
                                                                 tmp_path: Path) -> None:
    high = SnpGuest(pki, vmpl=3)

    async def refused() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            return await attest(http, broker.url, attestation(nonce, generate_tee_key("EC-P256"), "snp", high))
    status, body = asyncio.run(refused())
    assert status == 401 and "report.vmpl" in body["detail"] and "VMPL 3; allowed: 0" in body["detail"]
    status, body, _ = asyncio.run(full_flow(broker.url, "snp", "prod/key/snp", guest=SnpGuest(pki)))
    assert status == 200  # the same guest at VMPL 0
    with run_broker(tmp_path, broker_config(tmp_path, pki, snp="allowed_vmpls = [0, 3]\n")) as b:
        assert put(b, "/kbs/v0/admin/policies/snp-ok", method="PUT", data=ALLOW_SNP)[0] == 200
        assert put(b, "/kbs/v0/resource/prod/key/snp?policy=snp-ok", data=SECRET)[0] == 200

        async def claims() -> dict[str, Any]:
            key = generate_tee_key("EC-P256")
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, b.url, "snp")
                status, body = await attest(http, b.url, attestation(nonce, key, "snp", high))
                assert status == 200, body
            payload = body["token"].split(".")[1]
            return dict(json.loads(base64.urlsafe_b64decode(payload + "==")))
        snp = asyncio.run(claims())["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["snp"]
        assert snp["vmpl"] == 3 and snp["allowed_vmpls"] == [0, 3]


# -- 6. immutable bindings, admin changes in the log ------------------------------------------

def test_key_bound_to_immutable_policy_cannot_be_rebound(broker: Broker, pki: SyntheticAmd) -> None:
    assert put(broker, "/kbs/v0/admin/policies/locked?immutable=true", method="PUT", data=ALLOW_SNP)[0] == 200
    assert put(broker, "/kbs/v0/resource/vault/key/locked?policy=locked", data=SECRET)[0] == 200
    status, body = put(broker, "/kbs/v0/admin/keys/vault/key/locked/policy", json={"policy_id": "sample-ok"})
    assert status == 409 and "policy.immutable" in body["detail"]
    status, body = put(broker, "/kbs/v0/resource/vault/key/locked?policy=sample-ok", data=b"other")
    assert status == 409 and "immutable" in body["detail"]
    status, body, _ = asyncio.run(full_flow(broker.url, "sample", "vault/key/locked"))
    assert status == 401  # the sample TEE cannot reach it through sample-ok
    changes = [e for e in release_log(broker) if e["decision"] == "admin"]
    bind = [e for e in changes if e["reason"] == "set_resource" and e["resource"].endswith("vault/key/locked")]
    assert bind and bind[0]["actor"] == "dev-admin" and '"policy_id": "locked"' in bind[0]["detail"]
    assert not [e for e in changes if e["reason"] == "bind_key_policy" and "vault/key/locked" in e["resource"]]


# -- 7. the database file ---------------------------------------------------------------------

def test_database_holder_cannot_rebind_a_key_or_rewrite_the_log(tmp_path: Path, pki: SyntheticAmd) -> None:
    with run_broker(tmp_path, broker_config(tmp_path, pki)) as b:
        assert put(b, "/kbs/v0/admin/policies/snp-ok", method="PUT", data=ALLOW_SNP)[0] == 200
        assert put(b, "/kbs/v0/admin/policies/sample-ok", method="PUT", data=ALLOW_SAMPLE)[0] == 200
        assert put(b, "/kbs/v0/resource/prod/key/disk?policy=snp-ok", data=SECRET)[0] == 200
        status, _, _ = asyncio.run(full_flow(b.url, "sample", "prod/key/disk"))
        assert status == 401
        db = sqlite3.connect(b.state_dir / "kbs.sqlite3")
        # The review's two statements: an allow-all policy, and the key bound to it.
        db.execute("INSERT INTO policies SELECT 'allow-all', 1, 'json', ?, content_hash, created_by, created_at, 0, "
                   "mac FROM policies WHERE policy_id='sample-ok'",
                   ('{"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": []}]}',))
        db.execute("UPDATE resources SET policy_id='sample-ok' WHERE path='prod/key/disk'")
        db.commit()
        status, body, _ = asyncio.run(full_flow(b.url, "sample", "prod/key/disk"))
        assert status == 503 and "nothing was released" in body["detail"] and "ciphertext" not in body
        entry = logged(b, body["reference"])
        assert entry["decision"] == "error" and entry["reason"] == "store.integrity"
        assert "prod/key/disk version 1 fails authentication" in entry["detail"]

        status, verified = asyncio.run(admin(b, "GET", "/kbs/v0/admin/release-log/verify"))
        assert status == 200 and verified["ok"]
        db.execute("DELETE FROM release_log WHERE seq = (SELECT MAX(seq) FROM release_log)")
        db.commit()
        status, verified = asyncio.run(admin(b, "GET", "/kbs/v0/admin/release-log/verify"))
        assert status == 409 and "entries were removed from its end" in verified["detail"]
        # A truncated log stops releases until an operator looks: already at /attest, whose summary goes in it.
        assert asyncio.run(attest_status(b.url, SnpGuest(pki))) == 503


def test_a_policy_edited_in_the_database_is_named_in_its_refusal(tmp_path: Path, pki: SyntheticAmd) -> None:
    """A database holder rewrites a policy's text: the policy no longer authenticates, nothing is released, and the
    release log's entry for the refused guest names that policy (what a key owner looks for)."""
    with run_broker(tmp_path, broker_config(tmp_path, pki)) as b:
        assert put(b, "/kbs/v0/admin/policies/snp-ok", method="PUT", data=ALLOW_SNP)[0] == 200
        assert put(b, "/kbs/v0/resource/prod/key/disk?policy=snp-ok", data=SECRET)[0] == 200
        status, _, _ = asyncio.run(full_flow(b.url, "snp", "prod/key/disk", guest=SnpGuest(pki)))
        assert status == 200
        with sqlite3.connect(b.state_dir / "kbs.sqlite3") as db:
            db.execute("UPDATE policies SET text = ? WHERE policy_id = 'snp-ok'",
                       ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": []}]}',))
        status, body, _ = asyncio.run(full_flow(b.url, "snp", "prod/key/disk", guest=SnpGuest(pki)))
        assert status == 401 and "could not be evaluated" in body["detail"] and "ciphertext" not in body
        entry = logged(b, body["reference"])
        assert (entry["decision"], entry["reason"], entry["policy_id"]) == ("error", "store.integrity", "snp-ok")


async def attest_status(url: str, guest: SnpGuest) -> int:
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "snp")
        status, _ = await attest(http, url, attestation(nonce, generate_tee_key("EC-P256"), "snp", guest))
        return status


# -- 8. slow and abusive clients ----------------------------------------------------------------

def _connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError, OSError):
        return True


def test_connection_cap_header_timeout_and_slowloris(tmp_path: Path) -> None:
    extra = ("[limits]\nmax_connections = 200\nmax_connections_per_client = 40\nheader_timeout_seconds = 1\n"
             "auth_per_second = 0\nattest_per_second = 0\nresource_per_second = 0\n")
    with run_broker(tmp_path, extra) as b:
        port = int(b.url.rsplit(":", 1)[1])
        idle = [_connect_from("127.0.0.2", port) for _ in range(1050)]  # the review's 1,050 idle sockets
        time.sleep(0.3)
        refused = sum(_closed(s) for s in idle[40:60])
        assert refused == 20  # past the per-client cap, closed at once
        # Another client is served meanwhile, /healthz included.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as health:
            health.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in health.recv(4096)
        time.sleep(1.5)
        assert all(_closed(s) for s in idle[:40])  # no complete request head within 1 s: closed
        for s in idle:
            s.close()
        slow = _connect_from("127.0.0.3", port)
        started = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.2 s
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 3:
                break
        assert closed or _closed(slow), "a slowloris client was not cut off"
        slow.close()
        status, text = _metric_lines(b, "kbs_connections_refused_total")
        assert status == 200 and 'limit="per_client"' in text


def _metric_lines(b: Broker, name: str) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.get(f"{b.url}/metrics") as r:
            text = await r.text()
            return r.status, "\n".join(line for line in text.splitlines() if line.startswith(name))
    return asyncio.run(go())


def test_rate_limits_on_guest_routes(tmp_path: Path) -> None:
    with run_broker(tmp_path, "[limits]\nauth_per_second = 2\nattest_per_second = 2\nrate_burst = 3\n") as b:
        async def go() -> list[tuple[int, str | None]]:
            out = []
            async with aiohttp.ClientSession() as http:
                for _ in range(8):
                    async with http.post(f"{b.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample"}) as r:
                        out.append((r.status, r.headers.get("Retry-After")))
            return out
        results = asyncio.run(go())
        assert [s for s, _ in results[:3]] == [200, 200, 200]
        limited = [(s, after) for s, after in results if s == 429]
        assert len(limited) >= 4 and all(after and int(after) >= 1 for _, after in limited)
        assert 'route="/kbs/v0/auth"' in _metric_lines(b, "kbs_rate_limited_total")[1]


def test_oversized_cookie_is_never_stored(broker: Broker) -> None:
    cookie = "c" * 8000

    async def go() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(cookies={"kbs-session-id": cookie}) as http:
            return await attest(http, broker.url, {})
    status, body = asyncio.run(go())
    assert status == 401 and "not one this broker issued" in body["detail"]
    entry = logged(broker, body["reference"])
    assert entry["session_id"] is None and entry["reason"] == "session"
    db = (broker.state_dir / "kbs.sqlite3").read_bytes() + (broker.state_dir / "kbs.sqlite3-wal").read_bytes()
    assert cookie.encode() not in db


# -- 10. the small ones ---------------------------------------------------------------------------

def test_deep_json_is_400_and_the_broker_keeps_serving(broker: Broker) -> None:
    deep = b"[" * 2000 + b"]" * 2000

    async def go() -> list[int]:
        out = []
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            async with http.post(f"{broker.url}/kbs/v0/auth", data=deep) as r:
                out.append(r.status)
            await auth(http, broker.url, "sample")
            async with http.post(f"{broker.url}/kbs/v0/attest", data=deep) as r:
                out.append(r.status)
            nested = {"runtime-data": {"nonce": "n", "tee-pubkey": {}}, "x": json.loads("[" * 100 + "]" * 100)}
            async with http.post(f"{broker.url}/kbs/v0/attest", json=nested) as r:
                out.append(r.status)
            async with http.get(f"{broker.url}/healthz") as r:
                out.append(r.status)
        return out
    assert asyncio.run(go()) == [400, 400, 400, 200]


def test_toml_datetime_in_init_data_is_accepted(broker: Broker) -> None:
    init = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\nissued = 2026-11-29T10:00:00Z\nday = 2026-11-29\n'
    status, body = asyncio.run(_attest_sample(broker.url, init_data=init))
    assert status == 200, body
    claims = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
    init_claims = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data_claims"]
    assert init_claims == {"issued": "2026-11-29T10:00:00+00:00", "day": "2026-11-29"}


def test_rsa_exponent_over_64_bits_refused_at_attest(broker: Broker) -> None:
    def big_e(jwk: dict[str, Any]) -> None:
        jwk.clear()
        key = generate_tee_key("RSA-OAEP-256").jwk
        jwk.update(key, e=b64u((2**80 + 1).to_bytes(11, "big")))
    status, body = asyncio.run(_attest_sample(broker.url, big_e))
    assert status == 401 and "exponent e is 81 bits" in body["detail"]
    assert logged(broker, body["reference"])["reason"] == "jwe.key"


def test_every_outcome_has_a_log_entry_and_paths_are_exact(broker: Broker) -> None:
    async def go() -> list[tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession() as http:
            out = [await get_resource(http, broker.url, "lab/key/sample%0A"),  # a trailing newline
                   await get_resource(http, broker.url, "lab/key/sample"),  # no token
                   await get_resource(http, broker.url, "lab/key/sample", token="x.y.z")]
        return out
    (s1, b1), (s2, b2), (s3, b3) = asyncio.run(go())
    assert s1 == 404 and b1["type"].endswith("InvalidRequestPath")
    assert (s2, s3) == (401, 401)
    assert [logged(broker, b["reference"])["reason"] for b in (b1, b2, b3)] == ["path", "token", "token"]


def test_state_files_private_and_public_kek_refused(broker: Broker, tmp_path: Path) -> None:
    state = broker.state_dir
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("kbs.sqlite3", "kbs.sqlite3-wal", "kek", "admin-key.pem"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    config = _production_config(tmp_path)
    (tmp_path / "kek").chmod(0o644)
    with pytest.raises(RuntimeError, match=r"readable or writable by others \(mode 0644\)"), \
            run_broker(tmp_path, config):
        pass


def test_two_dev_replicas_starting_at_once_agree(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.broker import REPO, write_config

    state = tmp_path / "shared-state"
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        config = write_config(tmp_path / f"r{i}.toml", port, state)
        log = open(tmp_path / f"r{i}.log", "wb")  # noqa: SIM115 - closed with the process below
        procs.append((subprocess.Popen([sys.executable, "-m", "kbs.cli", "serve", "--config", str(config)],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
        urls.append((f"http://127.0.0.1:{port}", tmp_path / f"r{i}.log"))
    try:
        for (proc, _), (url, log_path) in zip(procs, urls, strict=True):
            wait_ready(Broker(url, state, proc, log_path))
        for url, _ in urls:  # both use the one KEK and admin key: a key stored by one opens through the other
            status, _, _ = asyncio.run(full_flow(url, "sample", "no/such/key"))
            assert status == 401
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(15)
            log.close()
    assert sorted(p.name for p in state.iterdir() if p.name.startswith(".")) == []


def test_forged_session_cookies_are_refused_and_auth_writes_nothing(broker: Broker) -> None:
    """/auth's session lives in a signed cookie: a guest that edits its nonce or its expiry, or makes a cookie
    up, is refused before its evidence is verified; a flood of /auth requests stores no session."""
    def sessions_stored() -> int:
        with sqlite3.connect(broker.state_dir / "kbs.sqlite3") as db:
            return int(db.execute("SELECT count(*) FROM sessions").fetchone()[0])

    async def go() -> list[tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            for _ in range(50):
                nonce = await auth(http, broker.url, "sample")
            cookie = next(c.value for c in http.cookie_jar if c.key == "kbs-session-id")
        v, sid, tee, created, expires, nonce_hex, mac = cookie.split(".")
        later = str(int(expires) + 86400)
        mine = "0" * 64  # a nonce the guest chose itself (and bound into its evidence)
        forged = [f"{v}.{sid}.{tee}.{created}.{expires}.{mine}.{mac}",
                  f"{v}.{sid}.{tee}.{created}.{later}.{nonce_hex}.{mac}",
                  f"{v}.{sid}.{tee}.{created}.{expires}.{nonce_hex}.{'A' * 43}"]
        answers = []
        for value in forged:
            async with aiohttp.ClientSession(cookies={"kbs-session-id": value}) as http:
                answers.append(await attest(http, broker.url, attestation(
                    base64.b64encode(bytes(32)).decode(), generate_tee_key("EC-P256"), "sample")))
        async with aiohttp.ClientSession(cookies={"kbs-session-id": cookie}) as http:  # the real one still works
            answers.append(await attest(http, broker.url, attestation(nonce, generate_tee_key("EC-P256"), "sample")))
        return answers

    before = sessions_stored()
    *refused, (status, body) = asyncio.run(go())
    for status_forged, answer in refused:
        assert status_forged == 401 and "not one this broker issued" in answer["detail"], answer
        assert logged(broker, answer["reference"])["reason"] == "session"
    assert status == 200 and "token" in body
    assert sessions_stored() == before + 1  # 50 /auth, one attestation: one session row


# -- 9. the routes that take no admin token: owners', the log's, deposits ---------------------------------------

def test_an_auth_flood_keeps_remembered_cookies_bounded_and_only_exact_strings_open(broker: Broker) -> None:
    """2,000 /auth requests from one client without credentials, 50 at a time: the worker remembers only the newest
    cookies it sealed (128 KiB, tests/test_sessions.py proves the bound); over HTTP the broker keeps serving with
    RSS within 16 MB of where it was, a cookie pushed out of that memory still opens by its MAC, the newest opens,
    and the newest with one character of its MAC changed opens neither way (401, nothing attested)."""
    def sample_body(nonce: str) -> dict[str, Any]:
        jwk = generate_tee_key("EC-P256").jwk
        digest = primary_runtime_digest(nonce, jwk, "")
        return {"init-data": None, "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
                                 "additional_evidence": ""}}

    async def one_auth(http: aiohttp.ClientSession) -> tuple[str, str]:
        async with http.post(f"{broker.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample",
                                                                "extra-params": {}}) as r:
            assert r.status == 200
            return r.cookies["kbs-session-id"].value, (await r.json())["nonce"]

    async def go() -> list[tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            issued = [pair for _ in range(40) for pair in await asyncio.gather(*(one_auth(http) for _ in range(50)))]
        (oldest, oldest_nonce), (newest, newest_nonce) = issued[0], issued[-1]
        edited = newest[:-1] + ("A" if newest[-1] != "A" else "B")
        answers = []
        for cookie, nonce in ((edited, newest_nonce), (oldest, oldest_nonce), (newest, newest_nonce)):
            async with aiohttp.ClientSession(cookies={"kbs-session-id": cookie}) as http:
                answers.append(await attest(http, broker.url, sample_body(nonce)))
        return answers

    before = rss_kib(broker)
    (edited_status, edited_answer), (oldest_status, _), (newest_status, _) = asyncio.run(go())
    growth = rss_kib(broker) - before
    assert edited_status == 401 and "not one this broker issued" in edited_answer["detail"], edited_answer
    assert oldest_status == 200 and newest_status == 200
    assert growth < 16 * 1024, f"RSS grew by {growth} KiB after 2,000 sealed cookies"


def test_open_routes_refuse_deep_huge_and_forged_input_and_the_broker_stays_up(broker: Broker) -> None:
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    huge = b'{"owner": "' + b"x" * 3_000_000 + b'"}'
    before = rss_kib(broker)
    for path, method in (("/kbs/v0/owners/proposals", "POST"), ("/kbs/v0/owners/proposals/" + "a" * 64 + "/approvals",
                                                                "POST"),
                         ("/kbs/v0/owners/keys/lab/key/x/contributions", "POST"), ("/kbs/v0/deposit/lab/key/x", "PUT")):
        for body in (deep, huge, b"[1, 2", b"null"):
            try:
                status, answer = put(broker, path, method=method, data=body)
            except aiohttp.ClientOSError:  # the 413 came, and the connection closed, before the upload ended
                assert body is huge
                continue
            assert 400 <= status < 500, (path, status, answer)  # a clear refusal, never a 5xx
            assert "type" in answer and "detail" in answer
    forged = json.dumps({"owner": "north", "signature": base64.b64encode(bytes(64)).decode()}).encode()
    status, _ = put(broker, "/kbs/v0/owners/proposals/" + "b" * 64 + "/approvals", data=forged)
    assert status == 404  # no such proposal: nothing to sign
    for path in ("/kbs/v0/log/tile/0/" + "x999/" * 200 + "000", "/kbs/v0/log/entries/" + "9" * 400,
                 "/kbs/v0/log/proof/inclusion?index=" + "9" * 30 + "&size=1"):
        status, _ = put(broker, path, method="GET")
        assert 400 <= status < 500, (path, status)
    status, listed = put(broker, "/kbs/v0/log/checkpoints?limit=99999999", method="GET")
    assert status == 200 and len(listed) <= 1000  # clamped
    with urllib.request.urlopen(f"{broker.url}/readyz", timeout=10) as ready:
        assert ready.status == 200
    assert rss_kib(broker) - before < 64 * 1024  # bounded: no megabyte-sized body was kept


# -- this stop's hot path: the C message scanner and the cached TEE points ------------------------------

def test_snp_messages_crafted_against_the_scanner_and_many_tee_keys(broker: Broker, pki: SyntheticAmd) -> None:
    """SNP bodies at and past the one-pass scanner's limits (a 17th certificate, a certificate past 10,000
    bytes, 33 levels of init-data, escapes everywhere, every 97th truncation) get 4xx with JSON errors from
    a live broker; then 300 guests with 300 distinct TEE keys get their key: the point cache and the token
    cache stay within their byte budgets (RSS bounded)."""
    guest = SnpGuest(pki)

    async def post(edit: Any) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            raw = edit(attestation(nonce, generate_tee_key("EC-P256"), "snp", guest))
            async with http.post(f"{broker.url}/kbs/v0/attest", data=raw,
                                 headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json(content_type=None)

    def evidence(change: Any) -> Any:
        def apply(body: dict[str, Any]) -> bytes:
            change(body["tee-evidence"]["primary_evidence"])
            return json.dumps(body).encode()
        return apply

    def nested_init_data(body: dict[str, Any]) -> bytes:
        body["init-data"] = {"format": "toml", "body": "x"}
        for _ in range(33):
            body["init-data"] = {"format": "toml", "body": body["init-data"]}
        return json.dumps(body).encode()

    refused = [
        evidence(lambda e: e.__setitem__("cert_chain", e["cert_chain"] * 6)),  # 18 certificates
        evidence(lambda e: e["cert_chain"][0].__setitem__("data", [48] * 10_001)),
        evidence(lambda e: e["attestation_report"].__setitem__("measurement", [0] * 49)),
        evidence(lambda e: e["attestation_report"].__setitem__("version", 2**70)),
        nested_init_data,
        lambda body: json.dumps(body).replace('"version"', '"\\u0076ersion"').replace("[", "[ ").encode()[:-3],
        *(lambda body, cut=cut: json.dumps(body).encode()[:cut] for cut in range(1, 16_000, 97 * 17)),
    ]
    before = rss_kib(broker)
    for edit in refused:
        status, answer = asyncio.run(post(edit))
        assert status in (400, 401, 413) and answer.get("detail"), (status, answer)
    escaped = asyncio.run(post(lambda body: json.dumps(body).replace('"vmpl"', '"\\u0076mpl"').encode()))
    assert escaped[0] == 200, escaped  # declined by the scanner, accepted by the JSON path

    async def guests() -> list[int]:
        return [(await full_flow(broker.url, "snp", "prod/key/snp", guest=guest))[0] for _ in range(300)]
    assert set(asyncio.run(guests())) == {200}
    growth = rss_kib(broker) - before
    assert broker.process.poll() is None and growth < 48 * 1024, f"RSS grew by {growth} KiB"
