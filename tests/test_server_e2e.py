"""End to end over real HTTP on loopback: a synthetic SNP guest obtains a key through `kbs serve`,
and is refused (401, Trustee's error body) for each way the exchange can be wrong; every refusal
is in the release log and the metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kbs.keys.jwe import TeeKey, decrypt, generate_tee_key, jwk_thumbprint
from tests.amd_synth import SyntheticAmd
from tests.broker import (
    Broker,
    SnpGuest,
    attest,
    attestation,
    auth,
    full_flow,
    get_resource,
    jar,
    run_broker,
)

SECRET = b"disk-key:" + bytes(range(32))
ERRORS = "https://github.com/confidential-containers/kbs/errors/"
GOOD_MEASUREMENT = b"\x5a" * 48
SNP_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "snp.measurement", "in": {"ref": "measurements"}},
    {"claim": "snp.policy_debug_allowed", "equals": False},
    {"claim": "submod.ear\\.status", "equals": "affirming"}]}]})
SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})


def broker_config(tmp: Path, pki: SyntheticAmd, extra: str = "", snp: str = "") -> str:
    """A broker trusting the synthetic ARK, offline; `snp` adds lines to [verifiers.snp], `extra` other tables."""
    (tmp / "ark.pem").write_bytes(pki.ark_pem)
    return (f'[verifiers.snp]\ntrust_roots = ["{tmp / "ark.pem"}"]\noffline = true\ncache_dir = "{tmp / "kds"}"\n'
            f'{snp}{extra}')


async def admin(broker: Broker, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"{broker.url}{path}", headers=broker.admin_headers(), **kwargs) as r:
        return r.status, await r.json(content_type=None)


def provision(broker: Broker) -> None:
    async def go() -> None:
        status, _ = await admin(broker, "PUT", "/kbs/v0/admin/refs/measurements",
                                json={"values": [GOOD_MEASUREMENT.hex()]})
        assert status == 200
        for pid, text in (("snp-prod", SNP_POLICY), ("sample-ok", SAMPLE_POLICY)):
            status, body = await admin(broker, "PUT", f"/kbs/v0/admin/policies/{pid}", data=text)
            assert status == 200, body
        status, body = await admin(broker, "POST", "/kbs/v0/resource/prod/key/disk?policy=snp-prod", data=SECRET)
        assert status == 200 and body["version"] == 1, body
        status, _ = await admin(broker, "POST", "/kbs/v0/resource/lab/key/sample", data=b"default-policy-key")
        assert status == 200
    asyncio.run(go())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: SyntheticAmd) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("broker")
    with run_broker(tmp, broker_config(tmp, pki)) as b:
        provision(b)
        yield b


@pytest.fixture(scope="module")
def guest(pki: SyntheticAmd) -> SnpGuest:
    return SnpGuest(pki, measurement=GOOD_MEASUREMENT)


def joserfc_decrypt(jwe_obj: dict[str, str], key: TeeKey) -> bytes:
    from joserfc import jwe as joserfc_jwe
    from joserfc import jwk as joserfc_jwk

    pem = key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    key_class = joserfc_jwk.ECKey if key.jwk["kty"] == "EC" else joserfc_jwk.RSAKey
    result = joserfc_jwe.decrypt_json(cast(Any, jwe_obj), key_class.import_key(pem),
                                      algorithms=[key.jwk["alg"], "A256GCM"])
    return bytes(result.plaintext or b"")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("bearer", [False, True], ids=["cookie", "bearer"])
@pytest.mark.parametrize("kind", ["EC-P256", "EC-P521", "RSA-OAEP-256", "RSA1_5"])
def test_snp_guest_obtains_key(broker: Broker, guest: SnpGuest, kind: str, bearer: bool) -> None:
    status, body, key = asyncio.run(full_flow(broker.url, "snp", "prod/key/disk", kind, guest, bearer=bearer))
    assert status == 200, body
    assert set(body) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    header = base64.urlsafe_b64decode(body["protected"] + "==")
    assert header.startswith(b'{"alg":"' + key.jwk["alg"].encode() + b'","enc":"A256GCM"')
    assert joserfc_decrypt(body, key) == SECRET  # an independent JOSE implementation
    assert decrypt(body, key.private_key) == SECRET


def release_log(broker: Broker, chain: str = "release") -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        status, body = await admin(broker, "GET", f"/kbs/v0/admin/release-log?limit=1000&chain={chain}")
        assert status == 200
        return list(body)
    return asyncio.run(go())


def logged(broker: Broker, reference: str) -> dict[str, Any]:
    """The one log entry (release or refusal log) a guest's reference points to."""
    found = [e for chain in ("release", "refusal") for e in release_log(broker, chain) if e["ref"] == reference]
    assert len(found) == 1, (reference, found)
    return found[0]


def metric(broker: Broker, name: str, **labels: str) -> float:
    text = asyncio.run(_metrics(broker))
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0 if wanted else float("nan")


async def _verifications(broker: Broker) -> float:
    text = await _metrics(broker)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kbs_verification_seconds_count{"))


async def _metrics(broker: Broker) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{broker.url}/metrics") as r:
        return await r.text()


def assert_refused(broker: Broker, status: int, body: dict[str, Any], variant: str, detail: str, reason: str,
                   metric_before: float) -> dict[str, Any]:
    """A 401 of that variant, whose reference finds exactly one deny entry with that reason and detail."""
    assert status == 401, body
    assert body["type"] == ERRORS + variant and body["reference"] in body["detail"], body
    entry = logged(broker, body["reference"])
    assert entry["decision"] == "deny" and entry["reason"] == reason and detail in entry["detail"], entry
    assert metric(broker, "kbs_resource_requests_total", decision="deny", reason=reason) > metric_before
    return entry


def _deny_count(broker: Broker, reason: str) -> float:
    return metric(broker, "kbs_resource_requests_total", decision="deny", reason=reason)


def test_policy_denies_other_measurement(broker: Broker, pki: SyntheticAmd) -> None:
    m = _deny_count(broker, "policy")
    other = SnpGuest(pki, measurement=b"\x11" * 48)
    status, body, _ = asyncio.run(full_flow(broker.url, "snp", "prod/key/disk", guest=other))
    entry = assert_refused(broker, status, body, "PolicyDeny", "snp.measurement in", "policy", m)
    # The guest learns only that it was denied: not the policy's name, version or condition.
    assert "snp-prod" not in json.dumps(body) and "measurement" not in json.dumps(body)
    assert entry["policy_id"] == "snp-prod" and "policy 'snp-prod' (version 1) denied" in entry["detail"]


def test_report_data_must_bind_nonce_and_key(broker: Broker, guest: SnpGuest) -> None:
    m = _deny_count(broker, "binding.report_data")

    async def go() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            wrong = base64.b64encode(b"\x00" * 32).decode()
            return await attest(http, broker.url, attestation(nonce, generate_tee_key("EC-P256"), "snp", guest,
                                                              report_nonce=wrong))
    status, body = asyncio.run(go())
    assert_refused(broker, status, body, "AttestationError", "binding.report_data", "binding.report_data", m)


def test_replayed_nonce_refused(broker: Broker, guest: SnpGuest) -> None:
    """Once a session attested, the worker that stored it answers its /attest without verifying again: the same
    evidence gets the same token (an idempotent retry), other evidence a refusal."""
    async def go() -> list[tuple[int, dict[str, Any]]]:
        key = generate_tee_key("EC-P256")
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            first = attestation(nonce, key, "snp", guest)
            ok = await attest(http, broker.url, first)
            verified = await _verifications(broker)
            retried = await attest(http, broker.url, first)
            assert retried == ok, (retried, ok)
            again = await attest(http, broker.url, attestation(nonce, key, "snp", guest))  # other evidence
            assert await _verifications(broker) == verified  # neither answer verified the evidence again
            nonce2 = await auth(http, broker.url, "snp")  # new session, old message
            replay = await attest(http, broker.url, first)
            assert nonce2 != nonce
            return [ok, again, replay]
    m = _deny_count(broker, "replay")
    ok, again, replay = asyncio.run(go())
    assert ok[0] == 200
    assert_refused(broker, *again, "AttestationError", "already attested", "replay", m)
    assert replay[0] == 401 and "binding.nonce" in replay[1]["detail"]
    assert logged(broker, replay[1]["reference"])["reason"] == "binding.nonce"


def test_tampered_evidence_refused(broker: Broker, guest: SnpGuest) -> None:
    async def go() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            body = attestation(nonce, generate_tee_key("EC-P256"), "snp", guest)
            body["tee-evidence"]["primary_evidence"]["attestation_report"]["measurement"][0] ^= 1
            return await attest(http, broker.url, body)
    m = _deny_count(broker, "report.signature")
    status, body = asyncio.run(go())
    assert_refused(broker, status, body, "AttestationError", "report signature does not verify",
                   "report.signature", m)


def _forge(token: str) -> list[str]:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] += 3600
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    import jwt

    other_key = ec.generate_private_key(ec.SECP256R1())
    resigned = jwt.encode(claims, other_key, algorithm="ES256",
                          headers=json.loads(base64.urlsafe_b64decode(header + "==")))
    return [f"{header}.{forged_payload}.{sig}", resigned, "not-a-token"]


def test_forged_tokens_refused(broker: Broker, guest: SnpGuest) -> None:
    async def go() -> list[tuple[int, dict[str, Any]]]:
        key = generate_tee_key("EC-P256")
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            status, body = await attest(http, broker.url, attestation(nonce, key, "snp", guest))
            assert status == 200
        async with aiohttp.ClientSession() as fresh:
            return [await get_resource(fresh, broker.url, "prod/key/disk", token=t) for t in _forge(body["token"])]
    m = _deny_count(broker, "token")
    results = asyncio.run(go())
    for status, body in results:
        assert_refused(broker, status, body, "TokenVerifierError", "", "token", m)


def test_sample_tee_refused_by_default_policy_and_allowed_by_its_own(broker: Broker) -> None:
    m = _deny_count(broker, "policy")
    status, body, _ = asyncio.run(full_flow(broker.url, "sample", "lab/key/sample"))
    assert_refused(broker, status, body, "PolicyDeny", "policy 'default'", "policy", m)

    async def rebind() -> None:
        status, _ = await admin(broker, "POST", "/kbs/v0/admin/keys/lab/key/sample/policy",
                                json={"policy_id": "sample-ok"})
        assert status == 200
    asyncio.run(rebind())
    status, body, key = asyncio.run(full_flow(broker.url, "sample", "lab/key/sample"))
    assert status == 200 and decrypt(body, key.private_key) == b"default-policy-key"


def test_wrong_protocol_version_and_missing_cookie(broker: Broker) -> None:
    async def go() -> tuple[tuple[int, str], tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{broker.url}/kbs/v0/auth", json={"version": "0.2.0", "tee": "snp"}) as r:
                version = (r.status, (await r.json(content_type=None))["detail"])
            return version, await attest(http, broker.url, {})
    (status, detail), (status2, body2) = asyncio.run(go())
    assert status == 401 and "expect =0.4.0 while the request is 0.2.0" in detail
    assert status2 == 401 and "no kbs-session-id cookie" in body2["detail"]


def test_missing_resource_is_404_after_policy(broker: Broker, guest: SnpGuest) -> None:
    status, body, _ = asyncio.run(full_flow(broker.url, "snp", "prod/key/absent", guest=guest))
    # The default policy allows an affirming SNP guest; only then is the absence revealed.
    assert status == 404 and "resource not found" in body["detail"]
    status, body, _ = asyncio.run(full_flow(broker.url, "snp", "bad..path/x/.y", guest=guest))
    assert status == 404 and body["type"] == ERRORS + "InvalidRequestPath"


def test_short_lifetimes_expire_sessions_and_tokens(tmp_path: Path, pki: SyntheticAmd, guest: SnpGuest) -> None:
    extra = "[session]\nlifetime_seconds = 1\n[token]\nlifetime_seconds = 1\n"
    with run_broker(tmp_path, broker_config(tmp_path, pki, extra)) as b:
        provision(b)

        async def go() -> tuple[tuple[int, dict[str, Any]], tuple[int, dict[str, Any]]]:
            key = generate_tee_key("EC-P256")
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, b.url, "snp")
                cookie = {c.key: c.value for c in http.cookie_jar}
                assert cookie, "the session cookie must live its whole second at least"
                await asyncio.sleep(2.05)  # the expiry is rounded up to the next whole second
                # Send the cookie ourselves: the client's jar would drop it, the server must refuse it.
                async with aiohttp.ClientSession(cookies=cookie) as stale:
                    late = await attest(stale, b.url, attestation(nonce, key, "snp", guest))
                nonce = await auth(http, b.url, "snp")
                status, body = await attest(http, b.url, attestation(nonce, key, "snp", guest))
                assert status == 200, body
                await asyncio.sleep(1.2)
            async with aiohttp.ClientSession() as fresh:
                expired = await get_resource(fresh, b.url, "prod/key/disk", token=body["token"])
            return late, expired
        (s1, b1), (s2, b2) = asyncio.run(go())
        refusals = release_log(b, "refusal")
        assert s1 == 401 and "session expired" in b1["detail"]
        assert s2 == 401 and "token has expired" in b2["detail"]
        assert [r["reason"] for r in refusals if r["decision"] == "deny"] == ["session", "token"]
        assert metric(b, "kbs_resource_requests_total", decision="deny", reason="token") == 1


def test_admin_api_refuses_bad_tokens_and_changes_nothing(broker: Broker, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    async def go() -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer junk"},
                            {"Authorization": f"Bearer {broker.admin_token(key_path=stranger)}"},
                            {"Authorization": f"Bearer {broker.admin_token(lifetime=-10)}"}):
                async with http.post(f"{broker.url}/kbs/v0/resource/prod/key/disk", data=b"evil",
                                     headers=headers) as r:
                    statuses.append(r.status)
        status, keys = await admin(broker, "GET", "/kbs/v0/admin/keys")
        assert status == 200
        versions = next(k["versions"] for k in keys if k["path"] == "prod/key/disk")
        assert len(versions) == 1  # nothing changed
        return statuses
    assert asyncio.run(go()) == [401, 401, 401, 401]


def test_release_log_chain_and_no_key_in_logs(broker: Broker, guest: SnpGuest) -> None:
    status, _, _ = asyncio.run(full_flow(broker.url, "snp", "prod/key/disk", guest=guest))  # (tests run apart)
    assert status == 200

    async def verify() -> dict[str, Any]:
        status, body = await admin(broker, "GET", "/kbs/v0/admin/release-log/verify")
        assert status == 200, body
        return dict(body)
    heads = {h["chain"]: h for h in asyncio.run(verify())["heads"]}
    assert heads["release"]["entries"] > 0 and heads["refusal"]["head_seq"] >= heads["refusal"]["first_seq"] - 1
    assert SECRET.hex() not in broker.log() and "disk-key" not in broker.log()
    releases = [e for e in release_log(broker) if e["decision"] == "release"]
    assert all(e["ref"] for e in releases) and any(e["resource"] == "prod/key/disk" for e in releases)


def test_metrics_and_health(broker: Broker, guest: SnpGuest) -> None:
    status, _, _ = asyncio.run(full_flow(broker.url, "snp", "prod/key/disk", guest=guest))
    assert status == 200
    text = asyncio.run(_metrics(broker))
    assert "kbs_attestations_total{result=\"ok\",tee=\"snp\"}" in text
    assert "kbs_verification_seconds_bucket" in text and "kbs_build_info" in text
    assert "_created" not in text  # no creation-timestamp series (issue 13: they double a scrape for nothing)


def test_two_replicas_share_sessions(tmp_path: Path, pki: SyntheticAmd, guest: SnpGuest,
                                     broker: Broker) -> None:
    """/auth on one `kbs serve`, /attest on another, the resource from a third path: one state directory."""
    config = broker_config(tmp_path, pki)
    with run_broker(tmp_path, config, state_dir=broker.state_dir) as other:
        async def go() -> bytes:
            key = generate_tee_key("EC-P256")
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, broker.url, "snp")
                cookie = {c.key: c.value for c in http.cookie_jar}
                async with aiohttp.ClientSession(cookies=cookie) as http2:
                    status, body = await attest(http2, other.url, attestation(nonce, key, "snp", guest))
                    assert status == 200, body
            async with aiohttp.ClientSession() as fresh:
                status, out = await get_resource(fresh, broker.url, "prod/key/disk", token=body["token"])
                assert status == 200, out
            return decrypt(out, key.private_key)
        assert asyncio.run(go()) == SECRET
    time.sleep(0)  # the other replica is stopped; the shared broker keeps serving


def test_an_attested_session_is_remembered_by_its_worker_and_read_elsewhere(tmp_path: Path, pki: SyntheticAmd,
                                                                           guest: SnpGuest, broker: Broker) -> None:
    """The worker that stored a session as attested keeps it (with its token) for the guest's resource request;
    another `kbs serve` on the same store (here one that keeps nothing) reads the stored session.  Shown by
    deleting the stored row behind both: the remembering worker still serves the cookie, the other no longer."""
    config = broker_config(tmp_path, pki, "[limits]\nsession_cache_bytes = 0\n")
    key_jwk: list[dict[str, str]] = []
    session_ids: list[str] = []
    with run_broker(tmp_path, config, state_dir=broker.state_dir) as other:
        async def go() -> list[tuple[str, int, str]]:
            key = generate_tee_key("EC-P256")
            key_jwk.append(key.jwk)
            out = []
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, broker.url, "snp")
                issued = next(c.value for c in http.cookie_jar)
                status, body = await attest(http, broker.url, attestation(nonce, key, "snp", guest))
                assert status == 200, body
                assert next(c.value for c in http.cookie_jar) == issued  # /attest sets the same cookie again
                session_id = issued.split(".")[1]
                session_ids.append(session_id)
                for when in ("stored", "deleted"):
                    if when == "deleted":
                        with sqlite3.connect(broker.state_dir / "kbs.sqlite3") as db:
                            assert db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount == 1
                    for name, url in (("remembering", broker.url), ("reading", other.url)):
                        status, got = await get_resource(http, url, "prod/key/disk")
                        if status == 200:
                            assert decrypt(got, key.private_key) == SECRET
                        out.append((f"{when}/{name}", status, "" if status == 200 else got["detail"]))
            return out
        results = asyncio.run(go())
    assert [(w, s) for w, s, _ in results] == [("stored/remembering", 200), ("stored/reading", 200),
                                               ("deleted/remembering", 200), ("deleted/reading", 401)]
    assert "has not attested" in results[3][2]
    # The remembering worker logs the evidence identity and TEE key thumbprint it computed at /attest; the
    # other recomputes them from the token: the same values, the key's RFC 7638 thumbprint.
    with sqlite3.connect(broker.state_dir / "kbs.sqlite3") as db:
        logged = db.execute("SELECT evidence, tee_key FROM release_log WHERE decision = 'release' AND session_id = ?",
                            (session_ids[0],)).fetchall()
    assert len(logged) == 3 and len(set(logged)) == 1, logged
    assert logged[0][1] == jwk_thumbprint(key_jwk[0]) and '"submod":"cpu0"' in logged[0][0]


def test_init_data_bound_into_host_data(broker: Broker, guest: SnpGuest) -> None:
    import hashlib

    init = "version = '0.1.0'\nalgorithm = 'sha256'\n[data]\n\"aa.toml\" = 'x'\n"

    async def go(host_data: bytes) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            body = attestation(nonce, generate_tee_key("EC-P256"), "snp", guest, init_data=init, host_data=host_data)
            return await attest(http, broker.url, body)
    status, body = asyncio.run(go(hashlib.sha256(init.encode()).digest()))
    assert status == 200, body
    claims = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
    evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
    assert evidence["init_data_claims"] == {"aa.toml": "x"} and evidence["init_data"] == \
        hashlib.sha256(init.encode()).hexdigest()
    status, body = asyncio.run(go(bytes(32)))
    assert status == 401 and "binding.init_data" in body["detail"]


def test_resources_are_encrypted_at_rest(broker: Broker) -> None:
    assert SECRET not in (broker.state_dir / "kbs.sqlite3").read_bytes()
    wal = broker.state_dir / "kbs.sqlite3-wal"
    assert not wal.exists() or SECRET not in wal.read_bytes()


def test_request_body_limit(broker: Broker) -> None:
    async def go() -> int:
        async with aiohttp.ClientSession() as http, \
                http.post(f"{broker.url}/kbs/v0/auth", data=b"x" * (3 * 1024 * 1024)) as r:
            return r.status
    assert asyncio.run(go()) == 413


def test_auditor_role_reads_but_cannot_write(tmp_path: Path, pki: SyntheticAmd) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = {}
    for name in ("ops", "audit"):
        private = Ed25519PrivateKey.generate()
        (tmp_path / f"{name}.pem").write_bytes(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp_path / f"{name}.pub").write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        keys[name] = tmp_path / f"{name}.pem"
    extra = (f'[[admin.keys]]\nname = "ops"\npublic_key = "{tmp_path / "ops.pub"}"\nrole = "admin"\n'
             f'[[admin.keys]]\nname = "audit"\npublic_key = "{tmp_path / "audit.pub"}"\nrole = "auditor"\n')
    with run_broker(tmp_path, broker_config(tmp_path, pki, extra)) as b:
        async def go() -> list[int]:
            out = []
            async with aiohttp.ClientSession() as http:
                for key, method, path in (("audit", "GET", "/kbs/v0/admin/keys"),
                                          ("audit", "POST", "/kbs/v0/resource/a/b/c"),
                                          ("ops", "POST", "/kbs/v0/resource/a/b/c"),
                                          ("audit", "GET", "/kbs/v0/admin/keys")):
                    headers = {"Authorization": f"Bearer {b.admin_token(key_path=keys[key])}"}
                    async with http.request(method, f"{b.url}{path}", data=b"k" * 32, headers=headers) as r:
                        out.append(r.status)
                        if method == "GET":
                            out.append(len(await r.json()))
            return out
        assert asyncio.run(go()) == [200, 0, 403, 200, 200, 1]
        assert not (b.state_dir / "admin-key.pem").exists()  # configured keys: no dev admin key made


def test_a_disabled_key_is_refused_as_disabled_not_by_policy(broker: Broker) -> None:
    """The key's own policy allows the guest; its versions are disabled: the guest hears 404 and the log says
    `disabled` (not a policy denial by some other policy); enabled again, it is released."""
    async def go() -> tuple[int, dict[str, Any], int, dict[str, Any]]:
        assert (await admin(broker, "POST", "/kbs/v0/resource/lab/key/switch?policy=sample-ok",
                            data=b"switchable"))[0] == 200
        assert (await admin(broker, "POST", "/kbs/v0/admin/keys/lab/key/switch/disable"))[0] == 200
        status, out, _ = await full_flow(broker.url, "sample", "lab/key/switch")
        assert (await admin(broker, "POST", "/kbs/v0/admin/keys/lab/key/switch/enable?version=1"))[0] == 200
        again, released, _ = await full_flow(broker.url, "sample", "lab/key/switch")
        return status, out, again, released
    status, out, again, released = asyncio.run(go())
    assert status == 404 and out["detail"].startswith("resource not found: lab/key/switch"), out
    entry = logged(broker, out["reference"])
    assert (entry["decision"], entry["reason"], entry["policy_id"]) == ("deny", "disabled", "sample-ok"), entry
    assert "every version is disabled" in entry["detail"]
    assert again == 200 and "ciphertext" in released
