"""The admin API: Trustee's endpoints under /kbs/v0/ plus the broker's own under /kbs/v0/admin/.

Every request carries `Authorization: Bearer <JWT>` signed with Ed25519 (EdDSA) by one of the
configured admin keys; the key decides the role (`admin` may change things, `auditor` may only
read).  Unsigned, expired, wrongly signed or wrong-role requests get 401/403 and change nothing.
Tokens are short-lived and single use (`authenticate`); with `[tls] client_ca` the connection must
also carry a verified client certificate.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import secrets
import time
from argparse import ArgumentTypeError
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from aiohttp import web

from kbs import __version__
from kbs.audit.chain import CHAINS, REFUSALS, RELEASES
from kbs.errors import KbsError
from kbs.policy.claimcheck import check_policy_claims, enforce
from kbs.policy.lifecycle import PolicyNotFound, PolicyVersion
from kbs.policy.model import PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceValues, ReferenceValuesInvalid
from kbs.server import owned_guard
from kbs.server.config import Config
from kbs.server.decisions import DEFAULT_POLICY
from kbs.server.errors import ProtocolError
from kbs.server.protocol import SEGMENT, STATE
from kbs.server.state import AdminIdentity, BrokerState
from kbs.server.tls import require_admin_client_certificate
from kbs.store.base import LogQuery, ReleaseRecord, StoreError
from kbs.store.integrity import StoreIntegrityError
from kbs.timearg import rfc3339

log = logging.getLogger("kbs.admin")
routes = web.RouteTableDef()
MAX_KEY_BYTES = 64 * 1024
MAX_CHANGE_DETAIL = 2000
MAX_QUERY_VALUE = 512
MAX_SEQ = 2**63 - 1  # the largest log sequence number a store holds (SQLite INTEGER, PostgreSQL bigint)
STARTED = time.monotonic()  # this process's start, for the uptime in `kbs status`
Handler = Callable[[web.Request, BrokerState, AdminIdentity], Awaitable[web.StreamResponse]]


async def authenticate(st: BrokerState, request: web.Request) -> AdminIdentity:
    """The configured admin whose key signed the request's token, once every rule holds:

    - with `[tls] client_ca`, the connection carried a client certificate that verified against it;
    - the JWT is EdDSA-signed by a configured key; `exp` and `iat` are required, with no leeway;
    - `exp - now` and `exp - iat` are at most `[admin] max_token_lifetime_seconds`;
    - `aud`, a string or a list as in Trustee's tokens, names `[admin] audience`; a token without
      `aud` (legacy kbs-client) is accepted;
    - `jti` is used once, across replicas (the store); required unless `[admin] require_jti = false`.
    `iss`, `sub` and `role` may be present and grant nothing: the key decides the role.
    """
    require_admin_client_certificate(st.config, request)
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise ProtocolError("AdminAuthAccess", "admin endpoints need Authorization: Bearer <EdDSA JWT>",
                            reason="admin_auth")
    admin, claims = _signed_by(st.admins, header.removeprefix("Bearer ").strip())
    now = st.clock()
    jti = _check_token_rules(st.config, claims, now.timestamp())
    if jti is not None:
        expires_at = datetime.fromtimestamp(float(claims["exp"]), UTC)
        if not await st.run(st.store.use_token_id, jti, expires_at, now):
            log.warning("admin token replayed", extra={"admin": admin.name})
            raise ProtocolError("AdminAuthAccess", "admin token was already used (its jti is single use): "
                                "sign a fresh token for every request", reason="admin_replay")
    return admin


def _refuse(detail: str) -> ProtocolError:
    return ProtocolError("AdminAuthAccess", detail, reason="admin_auth")


def _signed_by(admins: list[AdminIdentity], token: str) -> tuple[AdminIdentity, dict[str, Any]]:
    """Signature, exp and iat (PyJWT, against the wall clock); `aud` is judged in _check_token_rules."""
    for admin in admins:
        try:
            claims = jwt.decode(token, admin.key, algorithms=["EdDSA"], leeway=0,
                                options={"require": ["exp", "iat"], "verify_aud": False})
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError as exc:
            raise _refuse("admin token has expired") from exc
        except jwt.PyJWTError as exc:
            raise _refuse(f"admin token is invalid: {exc}") from exc
        return admin, claims
    raise _refuse("admin token is not signed by a configured admin key")


def _check_token_rules(config: Config, claims: dict[str, Any], now: float) -> str | None:
    """Lifetime and audience; returns the `jti` to spend (None: a token without one, when allowed)."""
    longest = config.admin_max_token_lifetime
    exp, iat = float(claims["exp"]), float(claims["iat"])
    for what, seconds in (("lives", exp - iat), ("expires in", exp - now)):
        if seconds > longest:
            raise _refuse(f"admin token {what} {int(seconds)} s; this broker accepts admin tokens of at most "
                          f"{longest} s ([admin] max_token_lifetime_seconds)")
    if "aud" in claims:
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise _refuse("admin token aud must be a string or a list of strings")
        if config.admin_audience not in audiences:
            raise _refuse(f"admin token is for audience {aud!r}, not this broker's {config.admin_audience!r} "
                          "([admin] audience)")
    jti = claims.get("jti")
    if jti is None:
        if config.admin_require_jti:
            raise _refuse("admin token has no jti: every admin token must carry a unique jti (single use); "
                          "[admin] require_jti = false accepts legacy tokens without one")
        return None
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        raise _refuse("admin token jti must be a string of 1 to 256 characters")
    return jti


def admin_route(method: str, path: str, write: bool) -> Callable[[Handler], Handler]:
    """Register an admin handler behind authentication and the role check."""
    def wrap(handler: Handler) -> Handler:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            st = request.app[STATE]
            who = await authenticate(st, request)
            if write and who.role != "admin":
                raise ProtocolError("AdminAuthAccess", f"role {who.role!r} may not change anything",
                                    status=403, reason="admin_role")
            try:
                if write:  # the operator's limits on owned keys (issue 15)
                    await owned_guard.check(request, st, who, handler.__name__)
                response = await handler(request, st, who)
            except (PolicyInvalid, ReferenceValuesInvalid) as exc:
                raise ProtocolError("ParsePolicyError", str(exc), status=400, reason=exc.check) from exc
            except PolicyNotFound as exc:
                raise ProtocolError("PluginInternalError", str(exc), status=404, reason=exc.check) from exc
            except KbsError as exc:
                raise ProtocolError("PluginInternalError", f"{exc.check}: {exc}", status=409,
                                    reason=exc.check) from exc
            if write:
                await _log_change(st, who, handler.__name__, request, response)
            return response
        routes.route(method, path)(endpoint)
        return handler
    return wrap


async def _log_change(st: BrokerState, who: AdminIdentity, action: str, request: web.Request,
                      response: web.StreamResponse) -> None:
    """Every change goes into the release log (the transparency log), like the releases it governs.

    The change is committed by then; if the entry cannot be written the caller hears so (503)."""
    summary = response.text if isinstance(response, web.Response) and response.text else ""
    record = ReleaseRecord(at=st.clock(), decision="admin", reason=action, resource=request.path[:512],
                           version=None, session_id=None, tee=None, policy_id=None, policy_hash=None,
                           attestation_id=None, actor=who.name, detail=summary[:MAX_CHANGE_DETAIL])
    try:
        await st.run(st.store.append_log, RELEASES, record)
    except (StoreError, OSError) as exc:
        st.metrics.audit_failures.inc()
        log.error("admin change applied but not logged", extra={"admin": who.name, "action": action,
                                                                 "error": str(exc)})
        raise ProtocolError("PluginInternalError", "the change was applied but the release log could not record "
                            "it; check the store and `kbs log verify`", status=503, reason="log_unavailable") from exc
    log.info("admin change", extra={"admin": who.name, "action": action, "path": request.path})


def _path(request: web.Request) -> str:
    parts = (request.match_info["repo"], request.match_info["type"], request.match_info["tag"])
    if not all(SEGMENT.fullmatch(p) for p in parts):
        raise ProtocolError("InvalidRequestPath", "resource path must be repo/type/tag of [A-Za-z0-9_.-]",
                            status=404, reason="path")
    return "/".join(parts)


async def _store_resource(st: BrokerState, path: str, value: bytes, who: AdminIdentity,
                          policy_id: str | None) -> dict[str, Any]:
    if not value or len(value) > MAX_KEY_BYTES:
        raise ProtocolError("PluginInternalError", f"a resource must be 1..{MAX_KEY_BYTES} bytes", status=400,
                            reason="resource_size")
    current = await st.run(st.store.active_resource, path)
    policy = policy_id or (current.policy_id if current else DEFAULT_POLICY)
    await st.run(st.registry.current, policy)  # the policy must exist before a key is bound to it
    version = await st.run(st.store.put_resource, path, st.kek.seal(value, f"resource:{path}"), policy, who.name,
                           st.clock())
    return {"path": path, "version": version, "policy_id": policy}


# -- Trustee-compatible endpoints ---------------------------------------------------------

@admin_route("POST", "/kbs/v0/resource/{repo}/{type}/{tag}", write=True)
async def set_resource(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Write a resource (raw bytes): a new version; the previous one is disabled."""
    result = await _store_resource(st, _path(request), await request.read(), who, request.query.get("policy"))
    return web.json_response(result)


@admin_route("DELETE", "/kbs/v0/resource/{repo}/{type}/{tag}", write=True)
async def delete_resource(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    count = await st.run(st.store.delete_resource, _path(request))
    if not count:
        raise ProtocolError("PluginInternalError", f"resource not found: {_path(request)}", status=404,
                            reason="not_found")
    return web.json_response({"deleted_versions": count})


def _b64_policy(body: Any, field: str = "policy") -> str:
    if not isinstance(body, dict) or not isinstance(body.get(field), str):
        raise ProtocolError("ParsePolicyError", f'body must be {{"{field}": "<base64url policy>"}}', status=400,
                            reason="policy_format")
    text: str = body[field]
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("ParsePolicyError", "policy is not base64url of UTF-8 text", status=400,
                            reason="policy_format") from exc


def _version_json(v: PolicyVersion, with_text: bool = False) -> dict[str, Any]:
    out = {k: val for k, val in asdict(v).items() if with_text or k != "text"}
    out["created_at"] = v.created_at.isoformat()
    return out


def _claim_warnings(request: web.Request, st: BrokerState, text: str) -> list[dict[str, Any]]:
    """Claim paths no enabled verifier emits (kbs.policy.claimcheck); with ?strict=true, a refusal instead."""
    warnings = check_policy_claims(text, st.attestor.registry.names)
    enforce(warnings, strict=request.query.get("strict") == "true")
    return [w.to_json() for w in warnings]


@admin_route("POST", "/kbs/v0/resource-policy", write=True)
async def set_resource_policy(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Trustee's single resource policy is this broker's policy `default` (bound to new resources)."""
    text = _b64_policy(await request.json())
    warnings = _claim_warnings(request, st, text)
    version = await st.run(lambda: st.registry.put(DEFAULT_POLICY, text, created_by=who.name, at=st.clock()))
    return web.json_response({**_version_json(version), "warnings": warnings})


@admin_route("GET", "/kbs/v0/resource-policy", write=False)
async def list_policies(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    return web.json_response(await st.run(st.store.policy_ids))


@admin_route("POST", "/kbs/v0/attestation-policy", write=True)
async def set_attestation_policy(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    raise ProtocolError("PluginNotFound", "this broker appraises evidence with its own verifiers and does not run "
                        "Trustee attestation-service policies; express the conditions in the resource policy "
                        "(POST /kbs/v0/resource-policy or PUT /kbs/v0/admin/policies/<id>)", status=404,
                        reason="unsupported")


@admin_route("POST", "/kbs/v0/reference-value", write=True)
async def set_reference_value(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """RVPS 'sample' message: {"version": "0.1.0", "type": "sample", "payload": base64({"name": value|[values]})}."""
    body = await request.json()
    if not isinstance(body, dict) or body.get("type") != "sample" or not isinstance(body.get("payload"), str):
        raise ProtocolError("RvpsError", 'reference value message must be {"version": "0.1.0", "type": "sample", '
                            '"payload": "<base64 JSON>"}', status=400, reason="refs_format")
    try:
        document = json.loads(base64.b64decode(body["payload"]))
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("RvpsError", "payload is not base64 of a JSON object", status=400,
                            reason="refs_format") from exc
    if not isinstance(document, dict):
        raise ProtocolError("RvpsError", "payload must be a JSON object", status=400, reason="refs_format")
    refs = ReferenceValues.from_json({k: v if isinstance(v, list) else [v] for k, v in document.items()})
    for name in refs.names():
        ref = refs.get(name)
        assert ref is not None
        await st.run(st.registry.put_reference_set, ref)
    return web.json_response(sorted(refs.names()))


@admin_route("GET", "/kbs/v0/reference-value/{name}", write=False)
async def get_reference_value(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    refs = await st.run(lambda: st.registry.refs)
    ref = refs.get(request.match_info["name"])
    if ref is None:
        raise ProtocolError("RvpsError", f"no reference set {request.match_info['name']!r}", status=404,
                            reason="not_found")
    return web.json_response({ref.name: ref.to_json()})


# -- the broker's own endpoints -------------------------------------------------------------

@admin_route("GET", "/kbs/v0/admin/keys", write=False)
async def list_keys(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    out = []
    for path in await st.run(st.store.resource_paths):
        versions = await st.run(st.store.resource_versions, path)
        out.append({"path": path, "versions": [{"version": v.version, "state": v.state, "policy_id": v.policy_id,
                                                "created_by": v.created_by, "created_at": v.created_at.isoformat()}
                                               for v in versions]})
    return web.json_response(out)


@admin_route("POST", "/kbs/v0/admin/keys/{repo}/{type}/{tag}/generate", write=True)
async def generate_key(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """A fresh random key (default 32 bytes) as a new version: create and rotate in one."""
    return await _generate(request, st, who)


@admin_route("POST", "/kbs/v0/admin/keys/{repo}/{type}/{tag}/rotate", write=True)
async def rotate_key(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """A fresh random key as a new version of a key that exists (the previous version is disabled); a path
    with no key is refused, so that a typo never creates one."""
    path = _path(request)
    if not await st.run(st.store.resource_versions, path):
        raise ProtocolError("PluginInternalError", f"no key {path} to rotate; create it with `kbs key create "
                            f"{path} --generate`", status=404, reason="not_found")
    return await _generate(request, st, who)


async def _generate(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    size = int(request.query.get("size", "32"))
    if not 16 <= size <= 1024:
        raise ProtocolError("PluginInternalError", "size must be 16..1024 bytes", status=400, reason="resource_size")
    return web.json_response(await _store_resource(st, _path(request), secrets.token_bytes(size), who,
                                                   request.query.get("policy")))


async def _set_state(request: web.Request, st: BrokerState, state: str) -> web.Response:
    raw = request.query.get("version")
    version = int(raw) if raw else None
    count = await st.run(st.store.set_resource_state, _path(request), version, state)
    if not count:
        raise ProtocolError("PluginInternalError", "no such resource version (or none active to disable)",
                            status=404, reason="not_found")
    return web.json_response({"path": _path(request), "state": state, "version": version})


@admin_route("POST", "/kbs/v0/admin/keys/{repo}/{type}/{tag}/disable", write=True)
async def disable_key(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    return await _set_state(request, st, "disabled")


@admin_route("POST", "/kbs/v0/admin/keys/{repo}/{type}/{tag}/enable", write=True)
async def enable_key(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    return await _set_state(request, st, "active")


@admin_route("POST", "/kbs/v0/admin/keys/{repo}/{type}/{tag}/policy", write=True)
async def bind_key_policy(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    body = await request.json()
    policy_id = body.get("policy_id") if isinstance(body, dict) else None
    if not isinstance(policy_id, str):
        raise ProtocolError("PluginInternalError", 'body must be {"policy_id": "..."}', status=400,
                            reason="format")
    await st.run(st.registry.current, policy_id)
    count = await st.run(st.store.bind_policy, _path(request), policy_id)
    if not count:
        raise ProtocolError("PluginInternalError", "no such resource", status=404, reason="not_found")
    return web.json_response({"path": _path(request), "policy_id": policy_id})


@admin_route("PUT", "/kbs/v0/admin/policies/{policy_id}", write=True)
async def put_policy(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Body: the policy text (JSON or Rego, recognised from the text).  ?immutable=true sets the one-way flag."""
    text = (await request.read()).decode(errors="replace")
    immutable = request.query.get("immutable") == "true"
    warnings = _claim_warnings(request, st, text)
    version = await st.run(lambda: st.registry.put(request.match_info["policy_id"], text, created_by=who.name,
                                                   at=st.clock(), immutable=immutable))
    return web.json_response({**_version_json(version), "warnings": warnings})


@admin_route("POST", "/kbs/v0/admin/policies/{policy_id}/immutable", write=True)
async def make_immutable(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    version = await st.run(lambda: st.registry.make_immutable(request.match_info["policy_id"], created_by=who.name,
                                                              at=st.clock()))
    return web.json_response(_version_json(version))


@admin_route("DELETE", "/kbs/v0/admin/policies/{policy_id}", write=True)
async def delete_policy(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Every version of a policy; refused (409) for `default`, an immutable policy, or one a key is bound to."""
    policy_id = request.match_info["policy_id"]
    versions = await st.run(st.registry.delete, policy_id, DEFAULT_POLICY)
    return web.json_response({"deleted": policy_id, "versions": versions})


@admin_route("GET", "/kbs/v0/admin/policies/{policy_id}", write=False)
async def policy_history(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    history = await st.run(st.registry.history, request.match_info["policy_id"])
    if not history:
        raise ProtocolError("PluginInternalError", "no such policy", status=404, reason="not_found")
    return web.json_response({"current": _version_json(history[-1], with_text=True),
                              "history": [_version_json(v) for v in history]})


@admin_route("POST", "/kbs/v0/admin/policies/{policy_id}/dry-run", write=False)
async def dry_run(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Evaluate a policy against the claims of a stored attestation; nothing is released or logged."""
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("attestation_id"), str):
        raise ProtocolError("PluginInternalError", 'body must be {"attestation_id": "...", "resource": "r/t/t"}',
                            status=400, reason="format")
    record = await st.run(st.store.get_attestation, body["attestation_id"])
    if record is None:
        raise ProtocolError("PluginInternalError", "no such attestation", status=404, reason="not_found")
    policy = await st.run(st.registry.policy, request.match_info["policy_id"])
    refs = await st.run(lambda: st.registry.refs)
    req = ResourceRequest.parse(str(body.get("resource", "default/key/0")))
    decision = await st.run(policy.evaluate, record.claims, refs, req, st.clock())
    return web.json_response(decision.to_json())


@admin_route("GET", "/kbs/v0/admin/attestations/{attestation_id}", write=False)
async def get_attestation(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    record = await st.run(st.store.get_attestation, request.match_info["attestation_id"])
    if record is None:
        raise ProtocolError("PluginInternalError", "no such attestation", status=404, reason="not_found")
    return web.json_response({"attestation_id": record.attestation_id, "at": record.at.isoformat(),
                              "tee": record.tee, "claims": record.claims})


@admin_route("GET", "/kbs/v0/admin/release-log", write=False)
async def release_log(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """?chain=release (default: every release, deny and admin change) or refusal; ?after=SEQ&limit=N."""
    chain = request.query.get("chain", RELEASES)
    if chain not in CHAINS:
        raise ProtocolError("PluginInternalError", f"chain must be one of {', '.join(CHAINS)}", status=400,
                            reason="format")
    after = min(max(int(request.query.get("after", "0")), 0), MAX_SEQ)
    limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    records = await st.run(st.store.log_entries, chain, after, limit, _log_query(request))
    return web.json_response([{**asdict(r), "at": r.at.isoformat()} for r in records])


def _log_query(request: web.Request) -> LogQuery:
    """?resource=&decision=&reason=&tee= (exact) and ?since=&until= (RFC 3339, inclusive)."""
    text = {name: request.query.get(name) for name in ("resource", "decision", "reason", "tee", "since", "until")}
    if any(value is not None and len(value) > MAX_QUERY_VALUE for value in text.values()):
        raise ProtocolError("PluginInternalError", f"log filters are at most {MAX_QUERY_VALUE} characters",
                            status=400, reason="format")
    times: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        value = text[name]
        try:
            times[name] = rfc3339(value) if value is not None else None
        except ArgumentTypeError as exc:  # kbs.timearg's error, naming the problem
            raise ProtocolError("PluginInternalError", f"{name} must be an RFC 3339 time: {exc}", status=400,
                                reason="format") from exc
    return LogQuery(resource=text["resource"], decision=text["decision"], reason=text["reason"], tee=text["tee"],
                    since=times["since"], until=times["until"])


@admin_route("GET", "/kbs/v0/admin/status", write=False)
async def status(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Status at a glance: version, uptime, store, verifiers, what is stored, and the last hour's decisions
    (from this worker's view; counts come from the shared store)."""
    now = st.clock()
    paths, policies = await st.run(st.store.resource_paths), await st.run(st.store.policy_ids)
    refs = await st.run(lambda: st.registry.refs)
    hour = LogQuery(since=now - timedelta(hours=1))
    decisions = await st.run(st.store.log_counts, RELEASES, hour)
    refusals = await st.run(st.store.log_counts, REFUSALS, hour)
    return web.json_response({
        "version": __version__, "uptime_seconds": int(time.monotonic() - STARTED),
        "store": st.config.database_kind, "verifiers": list(st.attestor.registry.names),
        "trust_roots": {name: st.attestor.registry.get(name).describe_trust_roots()
                        for name in st.attestor.registry.names},
        "collateral_next_expiry": {source: None if math.isinf(at) else datetime.fromtimestamp(at, UTC).isoformat()
                                   for source, at in sorted(st.metrics.collateral_next_expiry().items())},
        "keys": len(paths), "policies": len(policies), "reference_sets": len(refs.names()),
        "last_hour": {"releases": decisions.get("release", 0), "denials": decisions.get("deny", 0),
                      "errors": decisions.get("error", 0), "admin_changes": decisions.get("admin", 0),
                      "refusals": sum(refusals.values())}})


@admin_route("GET", "/kbs/v0/admin/release-log/verify", write=False)
async def verify_log(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Check both logs from anchor to head (hashes and MACs) and report the heads to keep elsewhere."""
    try:
        heads = await st.run(st.store.verify_logs)
    except StoreIntegrityError as exc:
        raise ProtocolError("PluginInternalError", str(exc), status=409, reason=exc.check) from exc
    return web.json_response({"ok": True, "heads": [h.to_json() for h in heads]})


@admin_route("PUT", "/kbs/v0/admin/refs/{name}", write=True)
async def put_refs(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    refs = ReferenceValues.from_json({request.match_info["name"]: await request.json()})
    ref = refs.get(request.match_info["name"])
    assert ref is not None
    await st.run(st.registry.put_reference_set, ref)
    return web.json_response({ref.name: ref.to_json()})


@admin_route("POST", "/kbs/v0/admin/refs/{name}/{verb:add|remove}", write=True)
async def edit_refs(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """Body {"values": [...]}: added to the set (created if absent) or removed from it, in one transaction."""
    name = request.match_info["name"]
    values = ReferenceValues.from_json({name: await request.json()}).get(name)  # the values checked as in PUT
    assert values is not None
    if request.match_info["verb"] == "add":
        ref = await st.run(st.registry.add_reference_values, name, values.values)
    else:
        ref = await st.run(st.registry.remove_reference_values, name, values.values)
    return web.json_response({ref.name: ref.to_json()})


@admin_route("DELETE", "/kbs/v0/admin/refs/{name}", write=True)
async def delete_refs(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    refs = await st.run(lambda: st.registry.refs)
    if request.match_info["name"] not in refs:
        raise ProtocolError("RvpsError", f"no reference set {request.match_info['name']!r}", status=404,
                            reason="not_found")
    await st.run(st.registry.delete_reference_set, request.match_info["name"])
    return web.json_response({"deleted": request.match_info["name"]})


@admin_route("GET", "/kbs/v0/admin/refs", write=False)
async def list_refs(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    refs = await st.run(lambda: st.registry.refs)
    return web.json_response(refs.to_json())
