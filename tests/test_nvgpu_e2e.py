"""Composite CPU+GPU attestation over HTTP against a running broker: a synthetic SNP guest with two
synthetic GPUs (device PKI, RIMs and OCSP responses of a synthetic NVIDIA) gets a key under policies, in the
JSON dialect and in Rego, that require both GPUs affirming with a minimum driver version; refused when a
GPU's report carries another session's nonce, when a GPU is swapped in from another guest, when a GPU
mismatches its RIM, and when the policy requires two GPUs and one is sent."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from kbs.evidence.binding import device_runtime_digest, primary_runtime_digest
from kbs.keys.jwe import TeeKey, decrypt, generate_tee_key
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, attest, auth, get_resource, jar, run_broker
from tests.gpu_synth import FleetGpu, SyntheticFleet
from tests.test_server_e2e import admin, broker_config, logged

SECRET = b"model-weights-key:" + bytes(range(24))
NOW = dt.datetime.now(dt.UTC)

JSON_POLICY = json.dumps({"version": "1.0.0", "allOf": [
    {"authority": "local:snp", "allOf": [{"claim": "submod.ear\\.status", "equals": "affirming"},
                                         {"claim": "submods.gpu1", "exists": True}]},
    {"authority": "local:nvgpu", "allOf": [
        {"claim": "submod.ear\\.status", "equals": "affirming"},
        {"claim": "nvidia.measres", "equals": "success"},
        {"claim": "nvidia.x-nvidia-gpu-driver-version", "versionGreaterOrEquals": "550.54"}]}]})
REGO_POLICY = """package policy
import rego.v1

default allow := false

gpus := [sub | sub := input.submods[name]; startswith(name, "gpu")]

good(sub) if {
    sub["ear.status"] == "affirming"
    claims := sub["ear.veraison.annotated-evidence"].nvidia
    claims.measres == "success"
    parts := split(claims["x-nvidia-gpu-driver-version"], ".")
    [to_number(parts[0]), to_number(parts[1])] >= [550, 54]
}

allow if {
    input.submods.cpu0["ear.status"] == "affirming"
    count(gpus) == 2
    count([sub | sub := gpus[_]; good(sub)]) == 2
}
"""


@pytest.fixture(scope="module")
def amd() -> SyntheticAmd:
    return SyntheticAmd("Milan")


@pytest.fixture(scope="module")
def fleet() -> SyntheticFleet:
    return SyntheticFleet(NOW)


@pytest.fixture(scope="module")
def gpus(fleet: SyntheticFleet) -> dict[str, FleetGpu]:
    return {"a": fleet.gpu(driver="550.90.07"), "b": fleet.gpu(driver="550.90.07"),
            "other guest's": fleet.gpu(driver="550.90.07"), "old driver": fleet.gpu(driver="535.86.09"),
            "mismatching": fleet.gpu(driver="555.42.02")}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, amd: SyntheticAmd, fleet: SyntheticFleet,
           gpus: dict[str, FleetGpu]) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("nvgpu")
    device_root, rim_root = fleet.write_roots(tmp)
    everyone = list(gpus.values())
    fleet.write_rims(tmp / "rims", everyone, mismatch=(gpus["mismatching"], 30))
    fleet.write_ocsp(tmp / "ocsp", everyone)
    nvgpu = (f'\n[verifiers]\nenabled = ["snp", "nvgpu"]\n[verifiers.nvgpu]\ntrust_roots = ["{device_root}"]\n'
             f'rim_roots = ["{rim_root}"]\nrim_dir = "{tmp / "rims"}"\nrim_url = ""\nocsp = "cached"\n'
             f'ocsp_dir = "{tmp / "ocsp"}"\noffline = true\n')
    with run_broker(tmp, broker_config(tmp, amd, extra=nvgpu)) as b:
        async def provision() -> None:
            for pid, text in (("two-gpus-json", JSON_POLICY), ("two-gpus-rego", REGO_POLICY)):
                status, body = await admin(b, "PUT", f"/kbs/v0/admin/policies/{pid}", data=text)
                assert status == 200, body
            for tag in ("json", "rego"):
                status, body = await admin(b, "POST", f"/kbs/v0/resource/ai/weights/{tag}?policy=two-gpus-{tag}",
                                           data=SECRET)
                assert status == 200, body
            status, body = await admin(b, "POST", "/kbs/v0/resource/ai/weights/default", data=SECRET)
            assert status == 200, body
        asyncio.run(provision())
        yield b


async def _attempt(broker: Broker, guest: SnpGuest, fleet: SyntheticFleet, sent: list[FleetGpu], path: str, *,
                   nonces: dict[int, bytes] | None = None) -> tuple[int, dict[str, Any], int, Any, TeeKey]:
    """One guest's exchange: /auth, /attest with its GPUs as additional evidence, then the resource."""
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, broker.url, "snp")
        gpu_nonce = device_runtime_digest(nonce, key.jwk)[:32]
        entries = [g.evidence_entry((nonces or {}).get(i, gpu_nonce)) for i, g in enumerate(sent)]
        additional = json.dumps({"nvidia": {"device_evidence_list": entries}}, separators=(",", ":"))
        digest = primary_runtime_digest(nonce, key.jwk, additional)
        body = {"init-data": None, "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
                "tee-evidence": {"primary_evidence": guest.evidence(digest + bytes(16)),
                                 "additional_evidence": additional}}
        status, answer = await attest(http, broker.url, body)
        if status != 200:
            return status, answer, 0, None, key
        released, resource = await get_resource(http, broker.url, path)
        return status, answer, released, resource, key


def _run(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet, sent: list[FleetGpu], path: str,
         **kwargs: Any) -> tuple[int, dict[str, Any], int, Any, TeeKey]:
    return asyncio.run(_attempt(broker, SnpGuest(amd), fleet, sent, path, **kwargs))


@pytest.mark.parametrize("dialect", ["json", "rego"])
def test_guest_with_two_gpus_gets_the_key(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet,
                                          gpus: dict[str, FleetGpu], dialect: str) -> None:
    status, body, released, resource, key = _run(broker, amd, fleet, [gpus["a"], gpus["b"]], f"ai/weights/{dialect}")
    assert status == 200, body
    assert released == 200, resource
    assert decrypt(resource, key.private_key) == SECRET
    # The default policy (every submod affirming) releases too.
    assert _run(broker, amd, fleet, [gpus["a"], gpus["b"]], "ai/weights/default")[2] == 200


@pytest.mark.parametrize("dialect", ["json", "rego"])
def test_policy_refuses_what_it_must(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet,
                                     gpus: dict[str, FleetGpu], dialect: str) -> None:
    path = f"ai/weights/{dialect}"
    # One GPU where the policy wants two: attested, but not released.
    status, _, released, _, _ = _run(broker, amd, fleet, [gpus["a"]], path)
    assert status == 200 and released == 401
    # Two GPUs, one with a driver older than the policy's minimum.
    status, _, released, _, _ = _run(broker, amd, fleet, [gpus["a"], gpus["old driver"]], path)
    assert status == 200 and released == 401


def test_another_sessions_nonce_is_refused(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet,
                                           gpus: dict[str, FleetGpu]) -> None:
    stale = device_runtime_digest("an-earlier-session-nonce", generate_tee_key("EC-P256").jwk)[:32]
    status, body, *_ = _run(broker, amd, fleet, [gpus["a"], gpus["b"]], "ai/weights/json", nonces={1: stale})
    assert status == 401 and "nvgpu.nonce" in body["detail"] and "GPU 1" in body["detail"], body
    assert logged(broker, body["reference"])["reason"] == "nvgpu.nonce"


def test_a_gpu_swapped_in_from_another_guest_is_refused(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet,
                                                        gpus: dict[str, FleetGpu]) -> None:
    """Another guest's GPU report (made for that guest's session and key) pasted into this attestation."""
    other_key = generate_tee_key("EC-P256")
    theirs = device_runtime_digest("their-session-nonce", other_key.jwk)[:32]
    status, body, *_ = _run(broker, amd, fleet, [gpus["a"], gpus["other guest's"]], "ai/weights/json",
                            nonces={1: theirs})
    assert status == 401 and "nvgpu.nonce" in body["detail"], body
    # Or the same GPU's report twice, to pass for two GPUs.
    status, body, *_ = _run(broker, amd, fleet, [gpus["a"], gpus["a"]], "ai/weights/json")
    assert status == 401 and "nvgpu.duplicate" in body["detail"], body


def test_a_gpu_mismatching_its_rim_is_refused(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet,
                                              gpus: dict[str, FleetGpu]) -> None:
    status, body, *_ = _run(broker, amd, fleet, [gpus["a"], gpus["mismatching"]], "ai/weights/json")
    assert status == 401 and "nvgpu.measurement" in body["detail"], body
    assert "RIM index 30" in body["detail"] and "GPU 1" in body["detail"]


def test_the_cpu_report_covers_the_gpu_evidence(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet,
                                                gpus: dict[str, FleetGpu]) -> None:
    """GPU evidence replaced after the CPU report was made: the CPU report data no longer matches."""
    async def go() -> tuple[int, dict[str, Any]]:
        key = generate_tee_key("EC-P256")
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            gpu_nonce = device_runtime_digest(nonce, key.jwk)[:32]
            signed = json.dumps({"nvidia": {"device_evidence_list": [gpus["a"].evidence_entry(gpu_nonce)]}})
            sent = json.dumps({"nvidia": {"device_evidence_list": [gpus["b"].evidence_entry(gpu_nonce)]}})
            digest = primary_runtime_digest(nonce, key.jwk, signed)
            body = {"init-data": None, "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
                    "tee-evidence": {"primary_evidence": SnpGuest(amd).evidence(digest + bytes(16)),
                                     "additional_evidence": sent}}
            return await attest(http, broker.url, body)
    status, body = asyncio.run(go())
    assert status == 401 and "binding.report_data" in body["detail"], body


def test_claims_name_each_gpu(broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet,
                              gpus: dict[str, FleetGpu]) -> None:
    status, body, *_ = _run(broker, amd, fleet, [gpus["a"], gpus["b"]], "ai/weights/json")
    assert status == 200
    import base64
    token = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
    submods = token["submods"]
    assert sorted(submods) == ["cpu0", "gpu0", "gpu1"] and token["kbs.status"] == "affirming"
    for name, gpu in (("gpu0", gpus["a"]), ("gpu1", gpus["b"])):
        claims = submods[name]["ear.veraison.annotated-evidence"]["nvidia"]
        assert claims["uuid"] == gpu.uuid and claims["measres"] == "success"
        assert submods[name]["kbs.verifier"] == "nvgpu"


def test_hostile_gpu_evidence_is_refused_and_the_broker_keeps_serving(
        broker: Broker, amd: SyntheticAmd, fleet: SyntheticFleet, gpus: dict[str, FleetGpu]) -> None:
    async def send(device_evidence: Any) -> tuple[int, dict[str, Any]]:
        key = generate_tee_key("EC-P256")
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            additional = json.dumps({"nvidia": device_evidence}, separators=(",", ":"))
            digest = primary_runtime_digest(nonce, key.jwk, additional)
            body = {"init-data": None, "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
                    "tee-evidence": {"primary_evidence": SnpGuest(amd).evidence(digest + bytes(16)),
                                     "additional_evidence": additional}}
            return await attest(http, broker.url, body)

    entry = gpus["a"].evidence_entry(bytes(32))
    for evidence, check in (({"device_evidence_list": [entry] * 17}, "nvgpu.evidence"),
                            ({"device_evidence_list": [{**entry, "evidence": "A" * 40000}]}, "nvgpu.evidence"),
                            ({"device_evidence_list": [{**entry, "certificate": "!" * 100}]}, "nvgpu.evidence"),
                            ({"device_evidence_list": [{**entry, "arch": "LS10"}]}, "nvgpu.evidence"),
                            ([[[[[]]]]], "nvgpu.evidence")):
        status, body = asyncio.run(send(evidence))
        assert status == 401 and check in body["detail"], (status, body)
    assert _run(broker, amd, fleet, [gpus["a"], gpus["b"]], "ai/weights/json")[2] == 200
