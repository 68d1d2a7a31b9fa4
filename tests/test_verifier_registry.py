"""The verifier seam: a TEE the broker has never heard of plugs in through the registry alone and a guest
obtains a key with it over HTTP; additional (device) evidence becomes gpu0, gpu1, ...; trust vectors are
each verifier's, so a debug SNP guest is not affirming."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from kbs.errors import EvidenceError, MalformedEvidence
from kbs.evidence.base import AFFIRMING, CPU, GPU, Appraisal, Binding, Offload, VerifierContext, trust_vector
from kbs.evidence.binding import device_runtime_digest, primary_runtime_digest
from kbs.evidence.snp.verifier import snp_trust_vector
from kbs.keys.jwe import decrypt, generate_tee_key
from kbs.policy.ear import status_of
from kbs.server.app import bootstrap_dev, make_app
from kbs.server.config import Config
from tests.amd_synth import SyntheticAmd
from tests.broker import SnpGuest, attest, attestation, auth, jar, run_broker
from tests.test_server_e2e import broker_config

SECRET = b"model-weights-key:" + bytes(range(14))
GOOD = trust_vector(instance_identity=AFFIRMING, hardware=AFFIRMING, configuration=AFFIRMING)


class FakeCpu:
    """A TEE the broker ships no code for: evidence {"quote": base64(report_data), "model": ...}."""

    name: ClassVar[str] = "fakecpu"
    device_class: ClassVar[str] = CPU

    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: VerifierContext) -> FakeCpu:
        return cls()

    @classmethod
    def offline_appraisal(cls, claims: Mapping[str, Any]) -> Appraisal | None:
        return None

    @classmethod
    def verify_command(cls) -> None:
        return None

    async def verify(self, evidence: Any, binding: Binding, at: datetime, offload: Offload) -> list[Appraisal]:
        if base64.b64decode(evidence["quote"]) != binding.report_data:
            raise EvidenceError("quote does not bind the nonce and TEE key", check="binding.report_data")
        return [Appraisal(tee=self.name, device_class=CPU, claims={"model": evidence["model"]}, vector=GOOD)]

    async def close(self) -> None:
        return None

    def describe_trust_roots(self) -> list[dict[str, str]]:
        return []


class FakeGpu(FakeCpu):
    """A device verifier: one piece of evidence covers several GPUs, one appraisal each."""

    name: ClassVar[str] = "fakegpu"
    device_class: ClassVar[str] = GPU

    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: VerifierContext) -> FakeGpu:
        return cls()

    async def verify(self, evidence: Any, binding: Binding, at: datetime, offload: Offload) -> list[Appraisal]:
        if not isinstance(evidence, list) or not evidence:
            raise MalformedEvidence("fakegpu evidence is a list of GPUs", check="evidence.fakegpu")
        out = []
        for gpu in evidence:
            if base64.b64decode(gpu["nonce"]) != binding.report_data:
                raise EvidenceError("GPU report does not bind the device digest", check="binding.device")
            vector = GOOD if gpu["cc_mode"] else trust_vector(hardware=AFFIRMING, configuration=96)
            out.append(Appraisal(tee=self.name, device_class=GPU, claims={"serial": gpu["serial"]}, vector=vector))
        return out


POLICY = json.dumps({"version": "1.0.0", "anyOf": [
    {"authority": "local:fakecpu", "allOf": [{"claim": "fakecpu.model", "equals": "m1"},
                                             {"claim": "submod.ear\\.status", "equals": "affirming"}]}]})
GPU_POLICY = json.dumps({"version": "1.0.0", "allOf": [
    {"authority": "local:fakecpu", "allOf": [{"claim": "submod.ear\\.status", "equals": "affirming"}]},
    {"authority": "local:fakegpu", "allOf": [{"claim": "submod.ear\\.status", "equals": "affirming"}]}]})


async def _admin(http: aiohttp.ClientSession, url: str, token: str, method: str, path: str, **kw: Any) -> int:
    async with http.request(method, url + path, headers={"Authorization": f"Bearer {token}"}, **kw) as r:
        return r.status


def _admin_token(state: Path) -> str:
    import time
    import uuid

    import jwt
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((state / "admin-key.pem").read_bytes(), None)
    now = int(time.time())
    return jwt.encode({"aud": "KBS", "jti": uuid.uuid4().hex, "iat": now, "exp": now + 60}, key,  # type: ignore[arg-type]
                      algorithm="EdDSA")


async def _guest(url: str, devices: dict[str, Any] | None, gpus_cc: list[bool]) -> tuple[int, dict[str, Any], Any]:
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "fakecpu")
        additional = ""
        if devices is not None:
            hd = base64.b64encode(device_runtime_digest(nonce, key.jwk)).decode()
            additional = json.dumps({"fakegpu": [{"nonce": hd, "serial": f"gpu-{i}", "cc_mode": cc}
                                                 for i, cc in enumerate(gpus_cc)]})
        hp = base64.b64encode(primary_runtime_digest(nonce, key.jwk, additional)).decode()
        status, body = await attest(http, url, {
            "init-data": None, "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
            "tee-evidence": {"primary_evidence": {"quote": hp, "model": "m1"}, "additional_evidence": additional}})
        if status != 200:
            return status, body, None
        claims = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
        async with http.get(f"{url}/kbs/v0/resource/models/key/llm") as r:
            released = await r.json(content_type=None)
            return r.status, released if r.status != 200 else {"claims": claims}, \
                decrypt(released, key.private_key) if r.status == 200 else claims


def test_a_new_tee_plugs_in_through_the_registry_alone(tmp_path: Path) -> None:
    """FakeCpu is registered with make_app; protocol, policy and store code are unchanged."""
    config = bootstrap_dev(Config(state_dir=tmp_path, verifiers_enabled=("fakecpu", "fakegpu")))

    async def go() -> tuple[Any, ...]:
        server = TestServer(make_app(config, verifier_types=[FakeCpu, FakeGpu]), host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        try:
            token = _admin_token(tmp_path)
            async with aiohttp.ClientSession() as http:
                assert await _admin(http, url, token, "PUT", "/kbs/v0/admin/policies/fake", data=POLICY) == 200
                assert await _admin(http, url, _admin_token(tmp_path), "POST",
                                    "/kbs/v0/resource/models/key/llm?policy=fake", data=SECRET) == 200
            plain = await _guest(url, None, [])
            async with aiohttp.ClientSession() as http:
                assert await _admin(http, url, _admin_token(tmp_path), "PUT", "/kbs/v0/admin/policies/fake",
                                    data=GPU_POLICY) == 200
            with_gpus = await _guest(url, {}, [True, True])
            bad_gpu = await _guest(url, {}, [True, False])
            async with aiohttp.ClientSession() as http, http.post(
                    f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "fakegpu"}) as r:
                device_as_primary = r.status
            return plain, with_gpus, bad_gpu, device_as_primary
        finally:
            await server.close()
    plain, with_gpus, bad_gpu, device_as_primary = asyncio.run(go())
    assert plain[0] == 200 and plain[2] == SECRET
    assert with_gpus[0] == 200 and with_gpus[2] == SECRET
    submods = with_gpus[1]["claims"]["submods"]
    assert sorted(submods) == ["cpu0", "gpu0", "gpu1"]
    assert submods["gpu1"]["ear.veraison.annotated-evidence"]["fakegpu"] == {"serial": "gpu-1"}
    assert bad_gpu[0] == 401  # one GPU out of confidential-computing mode: every GPU must hold
    assert bad_gpu[2]["submods"]["gpu1"]["ear.status"] == "contraindicated"
    assert device_as_primary == 401  # a device verifier is not a TEE a guest can /auth as


def test_device_evidence_for_a_tee_not_enabled_is_refused(tmp_path: Path) -> None:
    config = bootstrap_dev(Config(state_dir=tmp_path, verifiers_enabled=("fakecpu",)))

    async def go() -> tuple[int, dict[str, Any], Any]:
        server = TestServer(make_app(config, verifier_types=[FakeCpu, FakeGpu]), host="127.0.0.1")
        await server.start_server()
        try:
            return await _guest(str(server.make_url("")).rstrip("/"), {}, [True])
        finally:
            await server.close()
    status, body, _ = asyncio.run(go())
    assert status == 401 and "attestation.tee" in body["detail"]
    assert "gpu TEE 'fakegpu' is not enabled" in body["detail"]


def test_snp_verifier_decides_that_a_debug_guest_is_not_affirming() -> None:
    assert status_of(snp_trust_vector({"policy_debug_allowed": False, "policy_migrate_ma": False})) == "affirming"
    for exposed in ({"policy_debug_allowed": True}, {"policy_migrate_ma": True}):
        vector = snp_trust_vector(exposed)
        assert vector["configuration"] == 32 and status_of(vector) == "warning"


def test_debug_snp_guest_gets_a_warning_token_and_no_key(tmp_path: Path) -> None:
    pki = SyntheticAmd("Milan")
    debug = SnpGuest(pki, policy=0x30000 | 1 << 19)  # guest policy bit 19: debugging allowed
    with run_broker(tmp_path, broker_config(tmp_path, pki)) as b:
        async def go() -> tuple[dict[str, Any], int]:
            key = generate_tee_key("EC-P256")
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, b.url, "snp")
                status, body = await attest(http, b.url, attestation(nonce, key, "snp", debug))
                assert status == 200, body
                async with http.get(f"{b.url}/kbs/v0/resource/any/key/x") as r:
                    return json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "==")), r.status
        claims, status = asyncio.run(go())
    cpu0 = claims["submods"]["cpu0"]
    assert cpu0["ear.veraison.annotated-evidence"]["snp"]["policy_debug_allowed"] is True
    assert cpu0["ear.status"] == "warning" and cpu0["ear.trustworthiness-vector"]["configuration"] == 32
    assert status == 401  # the default policy wants every submod affirming


@pytest.mark.parametrize("name", ["policy_debug_allowed", "reported_tcb_snp", "policy_migrate_ma"])
def test_no_module_outside_the_snp_package_reads_snp_claim_names(name: str) -> None:
    root = Path(__file__).resolve().parent.parent / "kbs"
    readers = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if name in p.read_text() and "evidence/snp/" not in str(p)]
    assert readers == []
