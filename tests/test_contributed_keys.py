"""Issue 15's must-show for contributed keys and outcome deposits (items 3 and 4), over HTTP against a real broker
with synthetic SNP guests: a contributed key is released only when every owner contributed and every owner's
own policy holds (a guest one owner's policy refuses is refused naming that owner), as derive(shares in owner
order, path) of the shares the test made; a deposit slot filled once by a TEE its pre-agreed policy admits and
released under that policy only, as exactly the deposited value; no share, deposit or derived key in any log
entry, answer, CLI output or the broker's log."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kbs.keys import jwe
from kbs.keys.shares import contribution_statement, derive, seal_share
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, attest, attestation, auth, full_flow, jar, run_broker
from tests.test_owned_keys import Kbs, _key, call, entries, policy
from tests.test_server_e2e import admin, broker_config, joserfc_decrypt

POOL = "pool/model/key"
SLOT = "pool/outcome/weights-key"
M_ALL = b"\x5a" * 48  # a TEE every owner's policy admits
M_NOT_EAST = b"\x61" * 48  # admitted by the key's policy, not by east's own
M_TRAINER = b"\x72" * 48  # the TEE the owners agreed may deposit and receive the outcome
M_OTHER = b"\x7e" * 48


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: SyntheticAmd) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("contributed")
    with run_broker(tmp, broker_config(tmp, pki)) as b:
        yield b


def release(broker: Broker, guest: SnpGuest, path: str) -> tuple[int, Any, bytes | None]:
    status, body, key = asyncio.run(full_flow(broker.url, "snp", path, guest=guest))
    return status, body, joserfc_decrypt(body, key) if status == 200 else None


def deposit(broker: Broker, guest: SnpGuest, path: str, value: bytes, *, bearer: bool) -> tuple[int, Any]:
    """A guest attests, then deposits `value` encrypted to the broker's share key (with its token or cookie)."""
    async def go() -> tuple[int, Any]:
        key = jwe.generate_tee_key("EC-P256")
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            status, token = await attest(http, broker.url, attestation(nonce, key, "snp", guest))
            assert status == 200, token
            async with http.get(f"{broker.url}/kbs/v0/owners/share-key") as r:
                share_key = await r.json()
            headers = {"Authorization": f"Bearer {token['token']}"} if bearer else {}
            client = aiohttp.ClientSession() if bearer else http  # bearer: no cookie at all
            try:
                async with client.put(f"{broker.url}/kbs/v0/deposit/{path}", headers=headers,
                                      json={"value": jwe.encrypt(value, share_key)}) as r:
                    return r.status, await r.json(content_type=None)
            finally:
                if bearer:
                    await client.close()
    return asyncio.run(go())


def forms(value: bytes) -> list[str]:
    return [f.rstrip("=") for f in (value.hex(), base64.b64encode(value).decode(),
                                    base64.urlsafe_b64encode(value).decode())]


def setup_owners(kbs: Kbs, broker: Broker, tmp_path: Path) -> None:
    for name in ("north", "south", "east", "west"):
        assert kbs("owner", "keygen", str(tmp_path / name), connect=False)[0] == 0
        code, _, err = kbs("owner", "add", name, "--public-key", str(tmp_path / f"{name}.pub"))
        assert code == 0 or "exists" in err, err


def test_a_contributed_key_leaves_only_when_every_owners_policy_holds(broker: Broker, pki: SyntheticAmd,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    kbs = Kbs(broker, capsys)
    setup_owners(kbs, broker, tmp_path)
    answers: list[Any] = []
    for name, values in (("pool-tees", [M_ALL.hex(), M_NOT_EAST.hex()]), ("east-tees", [M_ALL.hex()])):
        status, _ = asyncio.run(admin(broker, "PUT", f"/kbs/v0/admin/refs/{name}", json={"values": values}))
        assert status == 200
    (tmp_path / "pool.json").write_text(policy("pool-tees"))
    (tmp_path / "east.json").write_text(policy("east-tees"))
    assert kbs("policy", "put", "pool", str(tmp_path / "pool.json"))[0] == 0
    code, out, err = kbs("key", "create", POOL, "--contributed", "--owners", "north,south,east", "--threshold", "2",
                         "--policy", "pool", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["kind"] == "contributed" and created["contributed"] and created["state"]["value_version"] is None
    everyone, not_east = SnpGuest(pki, measurement=M_ALL), SnpGuest(pki, measurement=M_NOT_EAST)

    # no contribution yet, then two of three: incomplete, refused and logged
    status, body, _ = release(broker, everyone, POOL)
    assert status == 404 and "0 of 3" in body["detail"], body
    shares = {"north": os.urandom(32), "south": os.urandom(48), "east": os.urandom(64)}
    for name in ("north", "south"):
        (tmp_path / f"{name}.share").write_bytes(shares[name])
        code, out, err = kbs("key", "contribute", POOL, "--owner", name, "--owner-key", str(tmp_path / name),
                             "--share-file", str(tmp_path / f"{name}.share"), "--json")
        assert code == 0, err
    assert json.loads(out)["contributed"] == 2 and not json.loads(out)["complete"]
    status, body, _ = release(broker, everyone, POOL)
    assert status == 404 and "2 of 3" in body["detail"], body
    answers.append(body)

    # a contribution is final; a signature by another key and a non-owner are refused; each is logged
    code, _, err = kbs("key", "contribute", POOL, "--owner", "north", "--owner-key", str(tmp_path / "north"))
    assert code == 1 and "contributed" in err and "final" in err
    status, share_key = asyncio.run(call(broker, "GET", "/kbs/v0/owners/share-key"))
    assert status == 200 and share_key["kty"] == "EC" and "d" not in share_key
    sealed = seal_share(shares["east"], share_key)
    east_policy = policy("east-tees")
    forged = base64.b64encode(_key(tmp_path / "west").sign(contribution_statement(POOL, sealed, east_policy)))
    status, body = asyncio.run(call(broker, "POST", f"/kbs/v0/owners/keys/{POOL}/contributions",
                                    {"owner": "east", "share": sealed, "policy": east_policy,
                                     "signature": forged.decode()}))
    assert status == 401 and body["type"].endswith("/OwnerSignature"), body
    status, body = asyncio.run(call(broker, "POST", f"/kbs/v0/owners/keys/{POOL}/contributions",
                                    {"owner": "west", "share": sealed, "policy": east_policy,
                                     "signature": forged.decode()}))  # west's own, valid signature
    assert status == 403 and body["type"].endswith("/NotAnOwner"), body
    answers.append(body)

    # east contributes with its own policy (over HTTP, as the CLI would)
    signature = base64.b64encode(_key(tmp_path / "east").sign(contribution_statement(POOL, sealed, east_policy)))
    status, body = asyncio.run(call(broker, "POST", f"/kbs/v0/owners/keys/{POOL}/contributions",
                                    {"owner": "east", "share": sealed, "policy": east_policy,
                                     "signature": signature.decode()}))
    assert status == 200 and body["complete"] and body["contributed"] == 3, body
    answers.append(body)

    # the key's policy admits this guest, east's does not: refused, naming east
    status, body, _ = release(broker, not_east, POOL)
    assert status == 401 and "'east'" in body["detail"] and "north" not in body["detail"], body
    answers.append(body)
    refusal = [e for e in entries(broker, resource=POOL) if e["reason"] == "owner_policy"]
    assert len(refusal) == 1 and "'east'" in refusal[0]["detail"] and east_policy not in refusal[0]["detail"]

    # every policy admits this one: the value is the documented derivation of the test's shares
    status, _, value = release(broker, everyone, POOL)
    assert status == 200 and value == derive([shares["north"], shares["south"], shares["east"]], POOL)
    assert value != derive([shares["east"], shares["south"], shares["north"]], POOL)

    # nothing moves the shares: the operator cannot change east's set, a value change is refused
    status, body = asyncio.run(admin(broker, "PUT", "/kbs/v0/admin/refs/east-tees",
                                     json={"values": [M_NOT_EAST.hex()]}))
    assert status == 403 and "east" in body["detail"], body
    code, _, err = kbs("proposal", "create", POOL, "--generate", "32")
    assert code == 1 and "shares" in err
    assert release(broker, everyone, POOL)[2] == value

    reasons = [e["reason"] for e in entries(broker, resource=POOL)]
    assert reasons.count("contribute") == 3 and reasons.count("incomplete") == 2
    assert reasons.count("refused") >= 3 and reasons.count("owner_policy") == 1 and reasons.count("policy") == 2
    everything = json.dumps(entries(broker)) + json.dumps(entries(broker, chain="refusal")) + json.dumps(answers) \
        + "".join(kbs.outputs) + broker.log()
    for secret in (*shares.values(), value):
        for form in forms(secret):
            assert form not in everything


def test_an_outcome_goes_only_where_the_owners_agreed(broker: Broker, pki: SyntheticAmd, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    kbs = Kbs(broker, capsys)
    setup_owners(kbs, broker, tmp_path)
    status, _ = asyncio.run(admin(broker, "PUT", "/kbs/v0/admin/refs/trainer-tees", json={"values": [M_TRAINER.hex()]}))
    assert status == 200
    (tmp_path / "outcome.json").write_text(policy("trainer-tees"))
    assert kbs("policy", "put", "outcome", str(tmp_path / "outcome.json"))[0] == 0
    code, out, err = kbs("key", "create", SLOT, "--deposit", "--owners", "north,south", "--threshold", "2",
                         "--policy", "outcome", "--json")
    assert code == 0 and json.loads(out)["kind"] == "deposit", err
    trainer, other = SnpGuest(pki, measurement=M_TRAINER), SnpGuest(pki, measurement=M_OTHER)
    status, body, _ = release(broker, trainer, SLOT)
    assert status == 404 and "no value" in body["detail"], body  # nothing deposited yet

    outcome = os.urandom(32)
    status, body = deposit(broker, other, SLOT, os.urandom(32), bearer=True)  # a TEE the owners did not agree on
    assert status == 401 and body["type"].endswith("/PolicyDeny"), body
    status, body = deposit(broker, trainer, SLOT, outcome, bearer=False)
    assert status == 200 and body["version"] == 1, body
    answers: list[Any] = [body]
    status, body = deposit(broker, trainer, SLOT, os.urandom(32), bearer=True)  # once only
    assert status == 409 and body["type"].endswith("/DepositRefused"), body
    answers.append(body)
    status, body = deposit(broker, trainer, POOL, os.urandom(32), bearer=True)  # not a slot
    assert status == 404, body

    status, body, _ = release(broker, other, SLOT)
    assert status == 401, body
    status, _, value = release(broker, trainer, SLOT)
    assert status == 200 and value == outcome
    code, _, err = kbs("key", "create", SLOT, "--generate", "--policy", "default")  # the operator cannot replace it
    assert code == 1 and "owned key" in err

    log = entries(broker, resource=SLOT)
    reasons = [(e["decision"], e["reason"]) for e in log]
    assert reasons.count(("deposit", "deposited")) == 1 and ("deny", "deposit_policy") in reasons
    assert ("deny", "deposit_exists") in reasons and ("deny", "empty") in reasons
    assert reasons.count(("release", "policy")) == 1
    deposited = next(e for e in log if e["decision"] == "deposit")
    assert deposited["attestation_id"] and deposited["tee_key"] and deposited["policy_id"] == "outcome"
    everything = json.dumps(entries(broker)) + json.dumps(entries(broker, chain="refusal")) + json.dumps(answers) \
        + "".join(kbs.outputs) + broker.log()
    for form in forms(outcome):
        assert form not in everything
