"""Issue 15's must-show for owned keys and quorum-approved proposals, over HTTP against a real broker with a
synthetic SNP guest: a 2-of-3 key released under its policy; the operator's every attempt to change it, its
policy or its reference set refused (403) and logged; one approval applies nothing, the second applies (and the
guest's next request meets the new policy); stale, expired, non-owner and wrong-key approvals refused and
logged; an owner approving twice counted once; `kbs proposal sign` offline; no value in any entry or answer."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kbs import owners as rules
from kbs.cli import main
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, full_flow, run_broker
from tests.test_server_e2e import GOOD_MEASUREMENT, admin, broker_config, joserfc_decrypt

PATH = "hospitals/model/key"


def policy(measurement_set: str) -> str:
    return json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
        {"claim": "snp.measurement", "in": {"ref": measurement_set}},
        {"claim": "submod.ear\\.status", "equals": "affirming"}]}]})


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: SyntheticAmd) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("owned")
    with run_broker(tmp, broker_config(tmp, pki)) as b:
        yield b


class Kbs:
    """`kbs ARGS` in-process against the broker; every output kept (to look for values in them)."""

    def __init__(self, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
        self.broker, self.capsys = broker, capsys
        self.outputs: list[str] = []

    def __call__(self, *argv: str, connect: bool = True) -> tuple[int, str, str]:
        self.capsys.readouterr()
        extra = ["--url", self.broker.url, "--admin-key", str(self.broker.state_dir / "admin-key.pem")] \
            if connect else []
        code = main([*argv, *extra])
        out, err = self.capsys.readouterr()
        self.outputs += [out, err]
        return code, out, err


async def call(broker: Broker, method: str, path: str, body: Any = None, token: bool = False) -> tuple[int, Any]:
    headers = broker.admin_headers() if token else {}
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"{broker.url}{path}", json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def release(broker: Broker, guest: SnpGuest) -> tuple[int, bytes | None]:
    status, body, key = asyncio.run(full_flow(broker.url, "snp", PATH, guest=guest))
    return status, joserfc_decrypt(body, key) if status == 200 else None


def entries(broker: Broker, **filters: str) -> list[dict[str, Any]]:
    status, body = asyncio.run(admin(broker, "GET", "/kbs/v0/admin/release-log", params={"limit": "1000", **filters}))
    assert status == 200, body
    return list(body)


def test_a_two_of_three_key_changes_only_by_its_owners(broker: Broker, pki: SyntheticAmd, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    kbs = Kbs(broker, capsys)
    guest = SnpGuest(pki, measurement=GOOD_MEASUREMENT)
    answers: list[Any] = []
    # three hospitals make their keys offline and the operator registers them; a fourth party is registered too
    for name in ("north", "south", "east", "west"):
        assert kbs("owner", "keygen", str(tmp_path / name), connect=False)[0] == 0
        assert kbs("owner", "add", name, "--public-key", str(tmp_path / f"{name}.pub"))[0] == 0
    asyncio.run(admin(broker, "PUT", "/kbs/v0/admin/refs/hospital-tees", json={"values": [GOOD_MEASUREMENT.hex()]}))
    asyncio.run(admin(broker, "PUT", "/kbs/v0/admin/refs/other-tees", json={"values": ["ab" * 48]}))
    (tmp_path / "policy.json").write_text(policy("hospital-tees"))
    assert kbs("policy", "put", "hospitals", str(tmp_path / "policy.json"))[0] == 0
    code, out, err = kbs("key", "create", PATH, "--generate", "--owners", "north,south,east", "--threshold", "2",
                         "--policy", "hospitals", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["owners"] == ["north", "south", "east"] and created["threshold"] == 2 and created["kind"] == \
        "generated"
    status, first = release(broker, guest)
    assert status == 200 and first is not None and len(first) == 32  # released to the TEE under its policy

    # the operator can read the key's metadata and log, and change nothing
    attempts: list[tuple[str, str, dict[str, Any]]] = [
                ("POST", f"/kbs/v0/resource/{PATH}", {"data": b"operator-chosen-value"}),
                ("POST", f"/kbs/v0/admin/keys/{PATH}/rotate", {}),
                ("POST", f"/kbs/v0/admin/keys/{PATH}/generate", {}),
                ("POST", f"/kbs/v0/admin/keys/{PATH}/disable", {}),
                ("POST", f"/kbs/v0/admin/keys/{PATH}/enable", {}),
                ("DELETE", f"/kbs/v0/resource/{PATH}", {}),
                ("POST", f"/kbs/v0/admin/keys/{PATH}/policy", {"json": {"policy_id": "default"}}),
                ("PUT", "/kbs/v0/admin/policies/hospitals", {"data": policy("other-tees")}),
                ("POST", "/kbs/v0/admin/policies/hospitals/immutable", {}),
                ("DELETE", "/kbs/v0/admin/policies/hospitals", {}),
                ("PUT", "/kbs/v0/admin/refs/hospital-tees", {"json": {"values": ["ab" * 48]}}),
                ("POST", "/kbs/v0/admin/refs/hospital-tees/add", {"json": {"values": ["cd" * 48]}}),
                ("DELETE", "/kbs/v0/admin/refs/hospital-tees", {}),
                ("POST", "/kbs/v0/reference-value", {"json": {"version": "0.1.0", "type": "sample", "payload":
                    base64.b64encode(json.dumps({"hospital-tees": ["ef" * 48]}).encode()).decode()}})]
    for method, path, kwargs in attempts:
        status, body = asyncio.run(admin(broker, method, path, **kwargs))
        assert status == 403 and body["type"].endswith("/OwnedKey"), (method, path, body)
        answers.append(body)
    refused = entries(broker, decision="owner", reason="refused")
    assert len(refused) == len(attempts) and {e["resource"] for e in refused} == {PATH}
    assert all(e["actor"] == "dev-admin" for e in refused)
    status, again = release(broker, guest)
    assert status == 200 and again == first  # nothing moved
    code, out, err = kbs("key", "create", PATH, "--generate", "--policy", "default")  # plain create: an overwrite
    assert code == 1 and "owned key" in err

    # two proposals made on the same state: a new value (by the operator) and a reference set (by an owner)
    code, out, err = kbs("proposal", "create", PATH, "--generate", "32", "--json")
    assert code == 0, err
    value_id = json.loads(out)["id"]
    code, out, err = kbs("proposal", "create", PATH, "--refs", "hospital-tees", "ab" * 48, "--owner", "south",
                         "--owner-key", str(tmp_path / "south"), "--json")
    assert code == 0, err
    refs_id = json.loads(out)["id"]
    assert json.loads(out)["approvals"][0]["owner"] == "south"  # an owner's proposal is its approval

    # one approval applies nothing; the same owner again counts once; a non-owner and a wrong key are refused
    code, signature, _ = kbs("proposal", "sign", value_id, "--owner-key", str(tmp_path / "north"), connect=False)
    assert code == 0 and len(base64.b64decode(signature.strip())) == 64  # offline: no broker was named
    code, out, err = kbs("proposal", "submit", value_id, "--owner", "north", "--signature", signature.strip(), "--json")
    assert code == 0 and json.loads(out)["result"] == "counted" and json.loads(out)["counted"] == 1, err
    assert release(broker, guest)[1] == first
    code, out, _ = kbs("proposal", "submit", value_id, "--owner", "north", "--signature", signature.strip(), "--json")
    assert code == 0 and json.loads(out)["result"] == "again" and json.loads(out)["counted"] == 1
    west = rules.sign_approval(_key(tmp_path / "west"), value_id)
    status, body = asyncio.run(call(broker, "POST", f"/kbs/v0/owners/proposals/{value_id}/approvals",
                                    {"owner": "west", "signature": west}))
    assert status == 403 and body["type"].endswith("/NotAnOwner"), body
    status, body = asyncio.run(call(broker, "POST", f"/kbs/v0/owners/proposals/{value_id}/approvals",
                                    {"owner": "east", "signature": west}))  # east's name, west's key
    assert status == 401 and body["type"].endswith("/OwnerSignature"), body
    answers += [body]
    assert release(broker, guest)[1] == first

    # the second owner's approval applies it: the guest's next request gets the new value
    code, out, err = kbs("proposal", "sign", value_id, "--owner-key", str(tmp_path / "east"), "--owner", "east",
                         "--submit", "--json")
    assert code == 0 and json.loads(out)["result"] == "applied" and json.loads(out)["status"] == "applied", err
    status, second = release(broker, guest)
    assert status == 200 and second is not None and len(second) == 32 and second != first

    # the other proposal replaced the state before: stale, refused and closed
    north = rules.sign_approval(_key(tmp_path / "north"), refs_id)
    status, body = asyncio.run(call(broker, "POST", f"/kbs/v0/owners/proposals/{refs_id}/approvals",
                                    {"owner": "north", "signature": north}))
    assert status == 409 and body["type"].endswith("/ProposalStale"), body
    code, out, _ = kbs("proposal", "show", refs_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "stale"

    # a new policy version, by two owners: the guest's next request meets it (and is refused by it)
    (tmp_path / "stricter.json").write_text(policy("other-tees"))
    code, out, err = kbs("proposal", "create", PATH, "--policy-file", str(tmp_path / "stricter.json"), "--owner",
                         "north", "--owner-key", str(tmp_path / "north"), "--json")
    assert code == 0, err
    policy_id_ = json.loads(out)["id"]
    assert release(broker, guest)[0] == 200  # one approval: nothing applied
    code, out, err = kbs("proposal", "sign", policy_id_, "--owner-key", str(tmp_path / "south"), "--owner", "south",
                         "--submit", "--json")
    assert code == 0 and json.loads(out)["result"] == "applied", err
    assert release(broker, guest)[0] == 401
    status, history = asyncio.run(admin(broker, "GET", "/kbs/v0/admin/policies/hospitals"))
    assert history["current"]["version"] == 2 and history["current"]["created_by"].startswith("proposal ")

    # an expired proposal is refused
    status, key = asyncio.run(call(broker, "GET", f"/kbs/v0/owners/keys/{PATH}"))
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    document = rules.new_proposal(PATH, key["state_hash"], {"kind": "delete"}, expires, rules.OPERATOR)
    status, body = asyncio.run(call(broker, "POST", "/kbs/v0/owners/proposals", {"proposal": document}, token=True))
    assert status == 200, body
    time.sleep(max(0.0, (dt.datetime.fromisoformat(document["expires"]) - dt.datetime.now(dt.UTC)).total_seconds()))
    pid = rules.proposal_id(document)
    status, body = asyncio.run(call(broker, "POST", f"/kbs/v0/owners/proposals/{pid}/approvals",
                                    {"owner": "north", "signature": rules.sign_approval(_key(tmp_path / "north"),
                                                                                       pid)}))
    assert status == 409 and body["type"].endswith("/ProposalExpired"), body
    code, out, _ = kbs("proposal", "list", "--resource", PATH, "--json")
    assert [p["status"] for p in json.loads(out)] == ["applied", "stale", "applied", "expired"]

    # every proposal, approval, application and refusal is in the release log, and no value anywhere
    log = entries(broker, decision="owner")
    reasons = [e["reason"] for e in log]
    assert reasons.count("proposal") == 4 and reasons.count("apply") == 2 and reasons.count("stale") == 1
    assert reasons.count("expired") == 1 and reasons.count("approve") == 6
    # the operator's (over HTTP and `kbs key create`), the non-owner's and the wrong key's
    assert reasons.count("refused") == len(attempts) + 3
    for pid in (value_id, refs_id, policy_id_):
        assert any(pid in (e["detail"] or "") for e in log)
    everything = json.dumps(entries(broker)) + json.dumps(answers) + "".join(kbs.outputs) + broker.log()
    for value in (first, second):
        for form in (value.hex(), base64.b64encode(value).decode(), base64.urlsafe_b64encode(value).decode()):
            assert form.rstrip("=") not in everything


def _key(path: Path) -> Any:
    from kbs.owner_cli import load_owner_key
    return load_owner_key(str(path))
