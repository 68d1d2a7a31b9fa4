"""Owners, owned keys and quorum-approved proposals over HTTP (issue 15, items 1, 2 and 5).

The operator (an admin token) registers owners and creates owned keys, and may propose changes; owners hold no
token: their Ed25519 signature over a proposal's id is what authenticates an approval (and a proposal an owner
submits, which it approves at once).  The owners' routes are open and rate-limited like the guest protocol's.
Every proposal, approval, application and refusal is a release-log entry (decision `owner`); no value is in any
entry or answer (a value change asks the broker to generate the value).
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Any

from aiohttp import web

from kbs import owners as rules
from kbs.errors import KbsError
from kbs.owners import Approval, OwnedKey, Owner, OwnerError, Proposal
from kbs.policy.model import PolicyInvalid
from kbs.policy.refvalues import ReferenceValues, ReferenceValuesInvalid
from kbs.server import owned_guard
from kbs.server.admin import MAX_KEY_BYTES, _path, admin_route, authenticate
from kbs.server.errors import ProtocolError
from kbs.server.protocol import STATE, _json, read_body
from kbs.server.state import AdminIdentity, BrokerState

log = logging.getLogger("kbs.owners")
routes = web.RouteTableDef()
MAX_LIST = 1000
KEYS = "/kbs/v0/owners/keys/{repo}/{type}/{tag}"
PROPOSALS = "/kbs/v0/owners/proposals"
PROPOSAL = "/kbs/v0/owners/proposals/{proposal_id}"
APPROVALS = "/kbs/v0/owners/proposals/{proposal_id}/approvals"
OPEN_ROUTES = (KEYS, PROPOSALS, PROPOSAL, APPROVALS)  # rate-limited per client (kbs.server.app)
# How a refused approval is answered: (status, variant).
_REFUSALS = {"stale": (409, "ProposalStale"), "expired": (409, "ProposalExpired"), "closed": (409, "ProposalClosed")}


def _bad(exc: KbsError | str, status: int = 400, variant: str = "OwnerRequestInvalid") -> ProtocolError:
    reason = exc.check if isinstance(exc, KbsError) else "owner.invalid"
    return ProtocolError(variant, str(exc), status=status, reason=reason)


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"the body must be a JSON object: {what}")
    return body


async def json_body(request: web.Request, what: str) -> dict[str, Any]:
    """A JSON object body, bounded in size ([limits] max_body_bytes), depth and count as the guests' are
    (these routes take no token)."""
    raw = await read_body(request, request.app[STATE].config.max_body_bytes)
    return _object(_json(raw, "the body"), what)


def _referenced(st: BrokerState) -> rules.Referenced:
    return st.registry.referenced_sets


def _owner_json(o: Owner) -> dict[str, Any]:
    return {"name": o.name, "public_key": o.public_key, "created_by": o.created_by,
            "created_at": o.created_at.isoformat()}


def _key_json(key: OwnedKey, state: dict[str, Any] | None) -> dict[str, Any]:
    return {"path": key.path, "owners": list(key.owners), "threshold": key.threshold, "kind": key.kind,
            "contributed": key.contributed, "created_by": key.created_by, "created_at": key.created_at.isoformat(),
            "state": state, "state_hash": rules.digest(state) if state is not None else None}


def _proposal_json(p: Proposal, approvals: list[Approval], threshold: int | None) -> dict[str, Any]:
    return {"id": p.id, "proposal": p.document, "status": p.status, "resource": p.resource,
            "change": p.change["kind"], "created_by": p.created_by, "created_at": p.created_at.isoformat(),
            "expires_at": p.expires_at.isoformat(),
            "closed_at": p.closed_at.isoformat() if p.closed_at else None,
            "approvals": [{"owner": a.owner, "at": a.at.isoformat()} for a in approvals], "threshold": threshold}




# -- the operator: owners and owned keys ---------------------------------------------------------------------

@admin_route("POST", "/kbs/v0/admin/owners", write=True)
async def add_owner(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Body {"name", "public_key": PEM Ed25519}: registered for good (an owner's key is never replaced)."""
    body = await json_body(request, '{"name": "...", "public_key": "<PEM>"}')
    try:
        name = rules.check_name(body.get("name"))
        pem = body.get("public_key")
        if not isinstance(pem, str) or len(pem) > 4096:
            raise OwnerError("public_key must be the owner's Ed25519 public key in PEM")
        key = rules.load_public_key(pem)
    except OwnerError as exc:
        raise _bad(exc) from exc
    raw = rules.public_pem(key)
    if any(rules.public_pem(admin.key) == raw for admin in st.admins):
        raise _bad("this is an admin key: an owner's key must be its own (an admin never approves a proposal)",
                   status=409)
    owner = Owner(name, raw, who.name, st.clock())
    await st.run(st.store.add_owner, owner)
    return web.json_response(_owner_json(owner))


@admin_route("GET", "/kbs/v0/admin/owners", write=False)
async def list_owners(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    return web.json_response([_owner_json(o) for o in await st.run(st.store.list_owners)])


@admin_route("DELETE", "/kbs/v0/admin/owners/{name}", write=True)
async def remove_owner(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Refused (409) while an owned key names the owner."""
    name = request.match_info["name"]
    if not await st.run(st.store.remove_owner, name):
        raise _bad(f"no owner {name[:64]!r}", status=404)
    return web.json_response({"deleted": name})


@admin_route("POST", "/kbs/v0/admin/keys/{repo}/{type}/{tag}/owned", write=True)
async def create_owned_key(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Body {"owners": [...], "threshold": k, "policy_id": ID, "generate": SIZE} (the broker makes the value: no
    one sees it), {..., "value": base64} (imported: whoever held the file saw it), {..., "contributed": true}
    (derived from every owner's share: kbs.server.contributions) or {..., "deposit": true} (an empty slot)."""
    path = _path(request)
    body = await json_body(request, '{"owners": [...], "threshold": k, "policy_id": "...", "generate": 32}')
    try:
        names, threshold = rules.check_owner_set(body.get("owners"), body.get("threshold"))
    except OwnerError as exc:
        raise _bad(exc) from exc
    policy_id = body.get("policy_id")
    if not isinstance(policy_id, str) or not policy_id or policy_id == "default":
        raise _bad("policy_id must name the key's own policy (not 'default', which the operator manages)")
    if set(body) - {"owners", "threshold", "policy_id", "generate", "value", "contributed", "deposit"}:
        raise _bad("unknown fields; the body has owners, threshold, policy_id and one of generate, value, "
                   "contributed or deposit")
    value, kind = _initial_value(body)
    await st.run(st.registry.current, policy_id)  # 404 when there is no such policy
    key = OwnedKey(path, names, threshold, kind, kind == "contributed", who.name, st.clock())
    version = await st.run(st.store.create_owned_key, key, st.kek.seal(value, f"resource:{path}"), policy_id,
                           _referenced(st))
    state = await st.run(st.store.owned_state, path, _referenced(st))
    return web.json_response({**_key_json(key, state), "version": version, "policy_id": policy_id})


def _initial_value(body: dict[str, Any]) -> tuple[bytes, str]:
    import base64
    import binascii

    given = [f for f in ("generate", "value", "contributed", "deposit") if f in body]
    if len(given) != 1:
        raise _bad("give exactly one of generate (a size in bytes), value (base64), contributed (true: derived "
                   "from the owners' shares) or deposit (true: an empty slot an attested TEE fills once)")
    if given[0] in rules.EMPTY_KINDS:  # no value yet: the slot's version holds its binding, never released
        if body[given[0]] is not True:
            raise _bad(f"{given[0]} must be true")
        return b"", given[0]
    if "generate" in body:
        size = body["generate"]
        if not isinstance(size, int) or isinstance(size, bool) or not rules.MIN_GENERATE <= size <= rules.MAX_GENERATE:
            raise _bad(f"generate must be a size in bytes, {rules.MIN_GENERATE}..{rules.MAX_GENERATE}")
        return secrets.token_bytes(size), "generated"
    try:
        value = base64.b64decode(str(body["value"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("value must be base64") from exc
    if not 0 < len(value) <= MAX_KEY_BYTES:
        raise _bad(f"a value is 1..{MAX_KEY_BYTES} bytes")
    return value, "imported"


@admin_route("GET", "/kbs/v0/admin/proposals", write=False)
async def list_proposals(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """?resource=PATH&status=open|applied|stale|expired&limit=N"""
    status = request.query.get("status")
    if status is not None and status not in rules.STATUSES:
        raise _bad(f"status must be one of {', '.join(rules.STATUSES)}")
    resource = request.query.get("resource")
    if resource is not None and len(resource) > 512:
        raise _bad("resource is at most 512 characters")
    limit = min(max(int(request.query.get("limit", "100")), 1), MAX_LIST)
    found = await st.run(st.store.list_proposals, resource, status, limit)
    return web.json_response([_proposal_json(p, [], None) for p in found])


# -- the owners' routes (no token) -----------------------------------------------------------------------------

@routes.get(KEYS)
async def owned_key(request: web.Request) -> web.Response:
    """An owned key's owners, threshold and state (what a proposal's `replaces` hashes); never its value."""
    st = request.app[STATE]
    path = _path(request)
    key = await st.run(st.store.owned_key, path)
    if key is None:
        raise _bad(f"no owned key {path}", status=404)
    return web.json_response(_key_json(key, await st.run(st.store.owned_state, path, _referenced(st))))


@routes.post(PROPOSALS)
async def create_proposal(request: web.Request) -> web.Response:
    """Body {"proposal": DOC, "approval": {"owner", "signature"}}: with an admin token (role admin), the approval
    may be left out and `proposed_by` is "operator"; without one, the approval of the owner named in
    `proposed_by` authenticates the proposal."""
    st = request.app[STATE]
    admin = await authenticate(st, request) if "Authorization" in request.headers else None
    if admin is not None and admin.role != "admin":
        raise ProtocolError("AdminAuthAccess", f"role {admin.role!r} may not propose", status=403,
                            reason="admin_role")
    body = await json_body(request, '{"proposal": {...}, "approval": {"owner": ..., "signature": ...}}')
    if set(body) - {"proposal", "approval"}:
        raise _bad("the body has proposal and, optionally, approval")
    try:
        document, expires = rules.check_proposal(body.get("proposal"), st.clock(), st.config.max_body_bytes)
    except OwnerError as exc:
        raise _bad(exc, status=409 if exc.check == "proposal.expired" else 400) from exc
    approval = body.get("approval")
    proposer = rules.OPERATOR if admin is not None else None
    if approval is not None:
        approval = _object(approval, '{"owner": "...", "signature": "<base64>"}')
        if admin is None:
            proposer = str(approval.get("owner"))
    if proposer is None:
        raise ProtocolError("OwnerSignature", "a proposal is submitted with an admin token, or approved by the owner "
                            "who proposes it", status=401, reason="owner.signature")
    if document["proposed_by"] != proposer:
        raise _bad(f"proposed_by must be {proposer!r} (who submits it)")
    path = document["resource"]
    key = await st.run(st.store.owned_key, path)
    if key is None:
        raise _bad(f"no owned key {path[:512]}", status=404)
    pid = rules.proposal_id(document)
    if admin is None:  # the owner's signature is checked before anything is stored
        await _check_signer(st, key, pid, approval or {}, path)
    await _check_meaning(st, document["change"])
    now = st.clock()
    proposal = Proposal(pid, path, document, "open", admin.name if admin else proposer, now, expires)
    try:
        await st.run(st.store.add_proposal, proposal, _referenced(st), proposal.created_by)
    except OwnerError as exc:
        raise _bad(exc, status=409, variant="ProposalRefused") from exc
    log.info("proposal", extra={"proposal": pid, "resource": path, "by": proposal.created_by})
    if approval is not None:
        return await _approve(st, pid, approval)
    return web.json_response(_proposal_json(proposal, [], key.threshold))


async def _check_meaning(st: BrokerState, change: dict[str, Any]) -> None:
    """What the broker can judge before storing: a policy text parses and names sets that exist, a reference set's
    values are valid, a policy to bind to exists."""
    try:
        if change["kind"] == "policy":
            await st.run(st.registry.validate, change["text"])
        elif change["kind"] == "refs":
            ReferenceValues.from_json({change["name"]: {"values": change["values"]}})
        elif change["kind"] == "bind":
            await st.run(st.registry.current, change["policy_id"])
    except (PolicyInvalid, ReferenceValuesInvalid) as exc:
        raise _bad(f"{exc.check}: {exc}") from exc
    except KbsError as exc:
        raise _bad(exc, status=409, variant="ProposalRefused") from exc


async def _check_signer(st: BrokerState, key: OwnedKey | None, pid: str, approval: dict[str, Any], path: str) -> str:
    """The approval's owner is registered and signed `pid`, and owns the key (None: the key is gone, and the
    proposal with it: the store says so); else logged and refused."""
    owner_name, signature = approval.get("owner"), approval.get("signature")
    shown = owner_name if isinstance(owner_name, str) and rules.NAME.fullmatch(owner_name) else "?"
    try:
        rules.check_signature_field(signature)
    except OwnerError as exc:
        raise _bad(exc) from exc
    assert isinstance(signature, str)
    registered = await st.run(st.store.get_owner, owner_name) if shown != "?" else None
    if registered is None or not rules.signature_valid(rules.load_public_key(registered.public_key), pid, signature):
        await owned_guard.log_owner_event(st, "refused", path, shown,
                                          f"proposal {pid}: approval refused: the signature is not {shown}'s")
        raise ProtocolError("OwnerSignature", "the signature does not verify under that owner's registered key",
                            status=401, reason="owner.signature")
    if key is not None and shown not in key.owners:
        await owned_guard.log_owner_event(st, "refused", path, shown,
                                          f"proposal {pid}: approval refused: {shown} is not an owner")
        raise ProtocolError("NotAnOwner", f"{shown} is not an owner of {path}", status=403, reason="owner.not_owner")
    return shown


@routes.get(PROPOSAL)
async def get_proposal(request: web.Request) -> web.Response:
    """A proposal (its document, whose SHA-256 is the id an owner signs), its status and approvals."""
    st = request.app[STATE]
    found = await _proposal(st, request.match_info["proposal_id"])
    key = await st.run(st.store.owned_key, found[0].resource)
    return web.json_response(_proposal_json(*found, key.threshold if key else None))


async def _proposal(st: BrokerState, pid: str) -> tuple[Proposal, list[Approval]]:
    found = await st.run(st.store.get_proposal, pid) if rules.ID.fullmatch(pid) else None
    if found is None:
        raise _bad("no such proposal", status=404)
    return found


@routes.post(APPROVALS)
async def approve(request: web.Request) -> web.Response:
    """Body {"owner", "signature"}: base64 Ed25519 over "kbs-proposal-approval:" + id (kbs proposal sign)."""
    st = request.app[STATE]
    pid = request.match_info["proposal_id"]
    await _proposal(st, pid)  # 404 first
    body = await json_body(request, '{"owner": "...", "signature": "<base64>"}')
    if set(body) != {"owner", "signature"}:
        raise _bad("the body has exactly owner and signature")
    return await _approve(st, pid, body)


async def _approve(st: BrokerState, pid: str, body: dict[str, Any]) -> web.Response:
    proposal, _ = await _proposal(st, pid)
    key = await st.run(st.store.owned_key, proposal.resource)
    owner = await _check_signer(st, key, pid, body, proposal.resource)
    sealed = None
    change = proposal.change
    if change["kind"] == "value":  # made now, sealed at once; stored only if the change applies
        sealed = st.kek.seal(secrets.token_bytes(change["generate"]), f"resource:{proposal.resource}")
    if change["kind"] == "policy" and proposal.status == "open":
        await _check_meaning(st, change)
    now: datetime = st.clock()
    try:
        outcome = await st.run(st.store.approve_proposal, pid, Approval(pid, owner, body["signature"], now), now,
                               _referenced(st), sealed)
    except OwnerError as exc:
        raise _bad(exc, status=409, variant="ProposalRefused") from exc
    log.info("approval", extra={"proposal": pid, "owner": owner, "result": outcome.result})
    if outcome.result in _REFUSALS:
        status, variant = _REFUSALS[outcome.result]
        why = {"stale": "the key's state changed since the proposal was made: propose again",
               "expired": "the proposal expired", "closed": f"the proposal is {outcome.proposal.status}"}
        raise ProtocolError(variant, f"approval refused: {why[outcome.result]}", status=status,
                            reason=f"proposal.{outcome.result}")
    answer = _proposal_json(outcome.proposal, outcome.approvals, outcome.threshold)
    return web.json_response({**answer, "result": outcome.result, "counted": outcome.counted})
