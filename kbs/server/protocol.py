"""KBS protocol 0.4.0: /kbs/v0/auth, /kbs/v0/attest, GET /kbs/v0/resource/<repo>/<type>/<tag>.

Sessions (and their single-use nonces) live in the shared store, so /auth on one replica and
/attest on another work.  A resource is released only after the decision is written to the
release log; if that write fails, the request fails and no key leaves.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from kbs.errors import KbsError
from kbs.keys import jwe
from kbs.keys.kek import KekError
from kbs.policy.ear import ear_document
from kbs.policy.model import Decision, Explanation, ResourceRequest
from kbs.server.attestation import AttestationMessage
from kbs.server.errors import ProtocolError
from kbs.server.state import BrokerState
from kbs.server.tokens import TokenInvalid
from kbs.store.base import AttestationRecord, ReleaseRecord, Session, StoreError

PROTOCOL_VERSION = "0.4.0"
COOKIE = "kbs-session-id"
SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
DEFAULT_POLICY = "default"
ATTESTATION_ID_CLAIM = "kbs.attestation-id"

log = logging.getLogger("kbs.protocol")
routes = web.RouteTableDef()
STATE: web.AppKey[BrokerState] = web.AppKey("state", BrokerState)


def _state(request: web.Request) -> BrokerState:
    return request.app[STATE]


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("SerdeError", f"request body is not JSON: {exc}", reason="format") from exc


def _cookie(session: Session) -> str:
    expires = session.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
    return f"{COOKIE}={session.session_id}; Expires={expires}"


@routes.post("/kbs/v0/auth")
async def auth(request: web.Request) -> web.Response:
    st = _state(request)
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("tee"), str):
        raise ProtocolError("AttestationError", 'auth request must be {"version": "0.4.0", "tee": "...", '
                            '"extra-params": ...}', reason="format")
    version = body.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("AttestationError", f"Attestation error: RCAR handshake Auth failed: KBS Client "
                            f"Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {version}",
                            reason="version")
    now = st.clock()
    session = Session(session_id=uuid.uuid4().hex, tee=body["tee"],
                      nonce=base64.b64encode(secrets.token_bytes(32)).decode(), created_at=now,
                      expires_at=now + timedelta(seconds=st.config.session_lifetime), state="authed")
    await st.run(st.store.create_session, session)
    response = web.json_response({"nonce": session.nonce, "extra-params": ""})
    response.headers["Set-Cookie"] = _cookie(session)
    return response


async def _live_session(request: web.Request, now: datetime) -> Session:
    st = _state(request)
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise ProtocolError("AttestationError", "no kbs-session-id cookie: call /kbs/v0/auth first", reason="session")
    session = await st.run(st.store.get_session, session_id)
    if session is None:
        raise ProtocolError("AttestationError", "unknown session: call /kbs/v0/auth again", reason="session")
    if now >= session.expires_at:
        raise ProtocolError("AttestationError", "session expired: call /kbs/v0/auth again", reason="session")
    return session


@routes.post("/kbs/v0/attest")
async def attest(request: web.Request) -> web.Response:
    st = _state(request)
    now = st.clock()
    try:
        return await _attest(request, st, now)
    except ProtocolError as exc:
        # Every refusal is on record, not only resource decisions.
        await _log(st, ReleaseRecord(at=now, decision="deny", reason=exc.reason, resource="(attest)", version=None,
                                     session_id=request.cookies.get(COOKIE), tee=None, policy_id=None,
                                     policy_hash=None, attestation_id=None))
        raise


async def _attest(request: web.Request, st: BrokerState, now: datetime) -> web.Response:
    session = await _live_session(request, now)
    raw = await request.read()
    evidence_digest = hashlib.sha256(raw).hexdigest()
    if session.state == "attested":
        if session.evidence_digest == evidence_digest and session.token:
            return _token_response(session, session.token)  # idempotent, as Trustee
        raise ProtocolError("AttestationError", "this session is already attested with other evidence; "
                            "call /kbs/v0/auth again", reason="replay")
    try:
        body = json.loads(raw)
        message = AttestationMessage.parse(body)
        started = time.perf_counter()
        submod = await asyncio.wait_for(st.verifier.verify(session.tee, message, session.nonce, now),
                                        st.config.request_timeout)
        st.metrics.verify_seconds.labels(tee=session.tee).observe(time.perf_counter() - started)
    except TimeoutError as exc:
        st.metrics.attestations.labels(tee=session.tee, result="timeout").inc()
        raise ProtocolError("AttestationError", f"verification took longer than {st.config.request_timeout}s "
                            "(collateral service slow?)", reason="timeout") from exc
    except json.JSONDecodeError as exc:
        st.metrics.attestations.labels(tee=session.tee, result="attestation.format").inc()
        raise ProtocolError("SerdeError", f"attestation body is not JSON: {exc}", reason="format") from exc
    except KbsError as exc:
        st.metrics.attestations.labels(tee=session.tee, result=exc.check).inc()
        log.info("attestation refused", extra={"session": session.session_id, "tee": session.tee,
                                                "check": exc.check, "detail": str(exc)})
        raise ProtocolError("AttestationError", f"Attestation error: {exc.check}: {exc}", reason=exc.check) from exc
    attestation_id = uuid.uuid4().hex
    document = ear_document([submod], issued_at=now, lifetime=timedelta(seconds=st.config.token_lifetime))
    document[ATTESTATION_ID_CLAIM] = attestation_id
    token = st.signer.sign(document)
    await st.run(st.store.record_attestation,
                 AttestationRecord(attestation_id, now, session.session_id, session.tee, document))
    if not await st.run(st.store.mark_attested, session.session_id, evidence_digest, token, now):
        st.metrics.attestations.labels(tee=session.tee, result="replay").inc()
        raise ProtocolError("AttestationError", "the session's nonce was already used or expired; "
                            "call /kbs/v0/auth again", reason="replay")
    st.metrics.attestations.labels(tee=session.tee, result="ok").inc()
    log.info("attested", extra={"session": session.session_id, "tee": session.tee,
                                "attestation_id": attestation_id,
                                "status": document["submods"]["cpu0"]["ear.status"]})
    return _token_response(session, token)


def _token_response(session: Session, token: str) -> web.Response:
    response = web.json_response({"token": token})
    response.headers["Set-Cookie"] = _cookie(session)
    return response


async def _token_claims(request: web.Request, now: datetime) -> tuple[dict[str, Any], str | None]:
    """Claims of the Bearer token, or of the cookie session's token (re-verified either way)."""
    st = _state(request)
    header = request.headers.get("Authorization", "")
    session_id = None
    if header.startswith("Bearer "):
        token = header.removeprefix("Bearer ").strip()
    elif request.cookies.get(COOKIE):
        session = await _live_session(request, now)
        if session.state != "attested" or not session.token:
            raise ProtocolError("TokenNotFound", "this session has not attested: call /kbs/v0/attest",
                                reason="token")
        token, session_id = session.token, session.session_id
    else:
        raise ProtocolError("TokenNotFound", "no attestation token: send Authorization: Bearer <token> "
                            "or the kbs-session-id cookie", reason="token")
    try:
        return st.signer.verify(token, now), session_id
    except TokenInvalid as exc:
        raise ProtocolError("TokenVerifierError", str(exc), reason="token") from exc


def _tee_pubkey(claims: dict[str, Any]) -> dict[str, Any]:
    try:
        key = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"]["tee-pubkey"]
    except (KeyError, TypeError) as exc:
        raise ProtocolError("TokenVerifierError", "token carries no tee-pubkey", reason="token") from exc
    if not isinstance(key, dict):
        raise ProtocolError("TokenVerifierError", "token tee-pubkey is not a JWK", reason="token")
    return key


def _first_failure(explanation: Explanation) -> str:
    """Why a failing node failed: the first failing condition of an allOf, every branch of an anyOf."""
    failing = [c for c in explanation.children if not c.ok]
    if not failing:
        return explanation.detail
    if explanation.kind == "anyOf" or "(anyOf over" in explanation.detail:
        return " | ".join(_first_failure(c) for c in failing)
    return _first_failure(failing[0])


@routes.get("/kbs/v0/resource/{repo}/{type}/{tag}")
async def get_resource(request: web.Request) -> web.Response:
    st = _state(request)
    now = st.clock()
    parts = (request.match_info["repo"], request.match_info["type"], request.match_info["tag"])
    if not all(SEGMENT.match(p) for p in parts):
        raise ProtocolError("InvalidRequestPath", "resource path must be repo/type/tag of [A-Za-z0-9_.-]",
                            status=404, reason="path")
    path = "/".join(parts)
    try:
        claims, session_id = await _token_claims(request, now)
    except ProtocolError as exc:
        await _log(st, ReleaseRecord(at=now, decision="deny", reason=exc.reason, resource=path, version=None,
                                     session_id=request.cookies.get(COOKIE), tee=None, policy_id=None,
                                     policy_hash=None, attestation_id=None))
        raise
    tee_pubkey = _tee_pubkey(claims)
    tee = next(iter(claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]), None)
    record = ReleaseRecord(at=now, decision="deny", reason="", resource=path, version=None, session_id=session_id,
                           tee=tee, policy_id=None, policy_hash=None,
                           attestation_id=claims.get(ATTESTATION_ID_CLAIM))
    resource = await st.run(st.store.active_resource, path)
    policy_id = resource.policy_id if resource else DEFAULT_POLICY
    try:
        policy_version, policy = await st.run(st.registry.resolve, policy_id)
        refs = await st.run(lambda: st.registry.refs)
        req = ResourceRequest(plugin="resource", path=parts, query=dict(request.query))
        decision: Decision = await st.run(policy.evaluate, claims, refs, req, now)
    except KbsError as exc:
        await _log(st, record, decision="error", reason=exc.check, policy_id=policy_id)
        raise ProtocolError("PolicyEngineError", f"policy {policy_id!r} could not be evaluated: {exc}",
                            reason="policy_error") from exc
    record = replace(record, policy_id=policy_id, policy_hash=policy_version.content_hash)
    if not decision.allow:
        why = _first_failure(decision.explanation)
        await _log(st, record, decision="deny", reason="policy")
        raise ProtocolError("PolicyDeny", f"policy {policy_id!r} (version {policy_version.version}) denied: {why}",
                            reason="policy")
    if resource is None:
        await _log(st, record, decision="deny", reason="not_found")
        raise ProtocolError("PluginInternalError", f"resource not found: {path}", status=404, reason="not_found")
    try:
        plaintext = st.kek.unseal(resource.sealed, f"resource:{path}")
        body = jwe.encrypt(plaintext, tee_pubkey)
    except (KekError, jwe.JweKeyInvalid) as exc:
        await _log(st, record, decision="error", reason=exc.check)
        raise ProtocolError("JweError", f"cannot wrap the resource to the TEE key: {exc}", reason=exc.check) from exc
    await _log(st, record, decision="release", reason="policy", version=resource.version)
    return web.json_response(body)


async def _log(st: BrokerState, record: ReleaseRecord, **changes: Any) -> None:
    """Write the decision first; if the log cannot be written, the request fails closed."""
    final = replace(record, **changes)
    try:
        await st.run(st.store.append_release, final)
    except (StoreError, OSError) as exc:
        st.metrics.audit_failures.inc()
        log.error("release log write failed", extra={"resource": record.resource, "error": str(exc)})
        raise ProtocolError("PluginInternalError", "the release log is unavailable; nothing was released",
                            status=503, reason="log_unavailable") from exc
    st.metrics.releases.labels(decision=final.decision, reason=final.reason).inc()
