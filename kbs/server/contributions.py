"""Contributed keys and deposit slots over HTTP (issue 15, items 3 and 4).

GET /kbs/v0/owners/share-key serves the broker's share key (kbs.keys.shares): owners encrypt their shares, and
TEEs their deposits, to it, so neither the transport nor the operator sees them.  An owner contributes once,
authenticated by its Ed25519 signature over the statement kbs.keys.shares.contribution_statement names (no
token); its share is opened and sealed under the KEK at once, never kept or shown in clear.  An attested TEE
whose claims satisfy a deposit slot's bound policy (the owners' pre-agreed one) fills it once with a value
encrypted to the same key.  Every contribution, deposit and refusal is a release-log entry (never a value).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from kbs import owners as rules
from kbs.errors import KbsError
from kbs.keys.shares import ShareKey, contribution_statement
from kbs.owners import Contribution, OwnerError
from kbs.policy.model import PolicyInvalid
from kbs.server.admin import MAX_KEY_BYTES, _path
from kbs.server.errors import ProtocolError
from kbs.server.owned_guard import log_owner_event
from kbs.server.owners import _bad, json_body
from kbs.server.protocol import (
    STATE,
    Entry,
    _first_failure,
    _json,
    attested_step,
    judge,
    policy_fields,
    read_body,
)
from kbs.server.state import BrokerState
from kbs.store.base import ReleaseRecord

log = logging.getLogger("kbs.owners")
routes = web.RouteTableDef()
SHARE_KEY = "/kbs/v0/owners/share-key"
CONTRIBUTIONS = "/kbs/v0/owners/keys/{repo}/{type}/{tag}/contributions"
DEPOSIT = "/kbs/v0/deposit/{repo}/{type}/{tag}"
OPEN_ROUTES = (SHARE_KEY, CONTRIBUTIONS, DEPOSIT)  # rate-limited per client (kbs.server.app)
MAX_SIGNATURE = 128
MAX_DEPOSIT_BODY = 4 * MAX_KEY_BYTES  # a JWE of the largest value, base64url, with its header


def _shares(st: BrokerState) -> ShareKey:
    if st.shares is None:  # built at start-up (kbs.server.app); absent only in a half-built app
        raise ProtocolError("PluginInternalError", "the broker's share key is not loaded", status=503,
                            reason="share_key", decision="error")
    return st.shares


@routes.get(SHARE_KEY)
async def share_key(request: web.Request) -> web.Response:
    """The public JWK owners encrypt shares (and TEEs deposits) to: ECDH-ES+A256KW, A256GCM."""
    return web.json_response(_shares(request.app[STATE]).public_jwk())


# -- contributions ---------------------------------------------------------------------------------------------

@routes.post(CONTRIBUTIONS)
async def contribute(request: web.Request) -> web.Response:
    """Body {"owner", "share": JWE, "policy"?: TEXT, "signature"}: the owner's share, once."""
    st = request.app[STATE]
    path = _path(request)
    body = await json_body(request, '{"owner": ..., "share": {JWE}, "policy": "...", "signature": ...}')
    if not {"owner", "share", "signature"} <= set(body) <= {"owner", "share", "policy", "signature"}:
        raise _bad("the body has owner, share, signature and, optionally, policy")
    owner, share, policy, signature = body["owner"], body["share"], body.get("policy"), body["signature"]
    if not isinstance(owner, str) or not rules.NAME.fullmatch(owner):
        raise _bad("owner must be an owner's name")
    if not isinstance(share, dict) or not all(isinstance(v, str) for v in share.values()):
        raise _bad("share must be a JWE (JSON object) encrypted to GET /kbs/v0/owners/share-key")
    if policy is not None and (not isinstance(policy, str) or not 0 < len(policy) <= st.config.max_body_bytes):
        raise _bad("policy must be the owner's own release policy text")
    if not isinstance(signature, str) or not 0 < len(signature) <= MAX_SIGNATURE:
        raise _bad("signature must be the base64 Ed25519 signature of the contribution statement")
    key = await st.run(st.store.owned_key, path)
    if key is None:
        raise _bad(f"no owned key {path}", status=404)
    registered = await st.run(st.store.get_owner, owner)
    statement = contribution_statement(path, share, policy)
    if registered is None or not rules.contribution_valid(rules.load_public_key(registered.public_key), statement,
                                                          signature):
        await log_owner_event(st, "refused", path, owner, f"contribution refused: the signature is not {owner}'s")
        raise ProtocolError("OwnerSignature", "the signature does not verify under that owner's registered key",
                            status=401, reason="owner.signature")
    if owner not in key.owners:
        await log_owner_event(st, "refused", path, owner, f"contribution refused: {owner} is not an owner")
        raise ProtocolError("NotAnOwner", f"{owner} is not an owner of {path}", status=403, reason="owner.not_owner")
    if not key.contributed:
        await log_owner_event(st, "refused", path, owner, "contribution refused: not a contributed key")
        raise _bad(f"{path} is not a contributed key (kbs key create --contributed)", status=409,
                   variant="ContributionRefused")
    if policy is not None:
        try:
            await st.run(st.registry.validate, policy)  # as an upload is checked, its reference sets included
        except PolicyInvalid as exc:
            raise _bad(f"{exc.check}: {exc}") from exc
    try:
        sealed = st.kek.seal(_shares(st).open(share), rules.share_secret(path, owner))
    except KbsError as exc:
        raise _bad(exc) from exc
    new = Contribution(path, owner, policy, signature, st.clock())
    policy_note = f"own policy sha256 {new.policy_hash}" if new.policy_hash else "no own policy"
    entry = ReleaseRecord(at=new.created_at, decision="owner", reason="contribute", resource=path, version=None,
                          session_id=None, tee=None, policy_id=None, policy_hash=new.policy_hash, attestation_id=None,
                          actor=owner, detail=f"contribution by {owner} ({policy_note})")
    try:
        done, total = await st.run(st.store.add_contribution, new, sealed, entry)
    except OwnerError as exc:
        await log_owner_event(st, "refused", path, owner, f"contribution refused: {exc}")
        raise _bad(exc, status=409, variant="ContributionRefused") from exc
    log.info("contribution", extra={"resource": path, "owner": owner, "contributed": done, "owners": total})
    return web.json_response({"path": path, "owner": owner, "policy_hash": new.policy_hash, "contributed": done,
                              "owners": total, "complete": done == total})


# -- deposits --------------------------------------------------------------------------------------------------

@routes.put(DEPOSIT)
async def deposit(request: web.Request) -> web.Response:
    """Body {"value": JWE to the share key}, with the TEE's attestation token (Bearer or the session cookie):
    a deposit slot filled once, by a TEE its bound policy admits."""
    return await attested_step(request, _deposit)


async def _deposit(request: web.Request, st: BrokerState, now: datetime, parts: tuple[str, str, str],
                   claims: dict[str, Any], entry: Entry) -> web.Response:
    path = "/".join(parts)
    owned = await st.read(st.decisions.owned, path)
    if owned is None or owned.key.kind != "deposit":
        raise ProtocolError("InvalidRequestPath", f"{path} is not a deposit slot", status=404,
                            reason="deposit_not_slot")
    _, policy_id, resolved, _ = await st.release_inputs(path)
    entry.update(**policy_fields(policy_id, resolved))  # every refusal from here on names the policy
    decision, version = await judge(st, request, "deposit", parts, policy_id, resolved, claims, now,
                                    "the slot's policy")
    if not decision.allow:
        raise ProtocolError("PolicyDeny", f"deposit refused: policy {policy_id!r} (version {version.version}) "
                            f"denied: {_first_failure(decision.explanation)}", reason="deposit_policy",
                            public="the slot's policy denied this deposit")
    body = _json(await read_body(request, MAX_DEPOSIT_BODY), "the deposit")
    if not isinstance(body, dict) or set(body) != {"value"} or not isinstance(body["value"], dict):
        raise ProtocolError("SerdeError", 'the body must be {"value": JWE encrypted to GET /kbs/v0/owners/share-key}',
                            status=400, reason="deposit_invalid")
    try:
        value = _shares(st).open_value(body["value"], MAX_KEY_BYTES)
    except KbsError as exc:
        raise ProtocolError("SerdeError", f"deposit refused: {exc}", status=400, reason="deposit_invalid") from exc
    sealed = st.kek.seal(value, f"resource:{path}")
    del value
    record = entry.record
    deposited = record.updated(decision="deposit", reason="deposited", detail="a value deposited by an attested TEE")
    by = f"deposit {record.attestation_id or uuid.uuid4().hex}"[:64]
    try:
        version_no = await st.run(st.store.deposit, path, sealed, by, now, deposited)
    except OwnerError as exc:
        raise ProtocolError("DepositRefused", f"deposit refused: {exc}", status=409,
                            reason="deposit_exists" if exc.check == "deposit.exists" else "deposit_not_slot") from exc
    st.metrics.releases.labels(decision="deposit", reason="deposited").inc()
    log.info("deposit", extra={"resource": path, "tee": record.tee, "attestation_id": record.attestation_id})
    return web.json_response({"path": path, "version": version_no, "deposited_at": now.isoformat()})
