"""KBS protocol 0.4.0: /kbs/v0/auth, /kbs/v0/attest, GET /kbs/v0/resource/<repo>/<type>/<tag>.

A session travels in its signed cookie until it attests, and is then stored (that insert consumes
its nonce: kbs.server.sessions), so /auth on one replica and /attest on another work.  Every
outcome of a guest request is written to a log before the answer leaves: refusals before a valid
token exists go to the refusal log (kept for `refusal_retention_days`), decisions on resources to
the release log (kept for good); a key is released only after its entry is durable, and if that
write fails nothing is released.
Guests learn what was wrong with their own request; what a policy checked, they do not: a
denial says "denied" with a reference under which the operator finds the failing condition.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from kbs import jsondoc
from kbs.audit.chain import REFUSALS, RELEASES
from kbs.errors import KbsError, MalformedEvidence
from kbs.keys import jwe
from kbs.keys.shares import derive
from kbs.owners import share_secret
from kbs.policy.ear import OVERALL_STATUS, Submod, ear_document
from kbs.policy.json_policy import JsonPolicy
from kbs.policy.lifecycle import PolicyVersion
from kbs.policy.model import Decision, Explanation, Policy, ResourceRequest
from kbs.policy.refvalues import ReferenceValues
from kbs.policy.rego_pool import FAILURE_LABELS
from kbs.server.decisions import OwnedInputs, ReleaseInputs, Resolved
from kbs.server.errors import ProtocolError
from kbs.server.identity import evidence_identity
from kbs.server.ids import time_ordered_id
from kbs.server.sessions import Attested, session_id_of
from kbs.server.state import BrokerState
from kbs.server.tokens import TokenInvalid
from kbs.store.base import AttestationRecord, ReleaseRecord, Session, StaleDecision, StoreError

PROTOCOL_VERSION = "0.4.0"
COOKIE = "kbs-session-id"
SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")  # used with fullmatch: no trailing newline
ATTESTATION_ID_CLAIM = "kbs.attestation-id"
MAX_AUTH_BODY = 4096
MAX_DETAIL = 2000  # characters of an operator-facing detail kept in the log
MAX_SHOWN = 40  # characters of a guest-chosen string echoed back
# JSON policies up to this size are evaluated on the event loop (tens of microseconds; the dialect has no
# loops); larger ones, and Rego, go to the policy pool so that no policy can hold the loop.
INLINE_POLICY_CHARS = 16 * 1024

log = logging.getLogger("kbs.protocol")
routes = web.RouteTableDef()
STATE: web.AppKey[BrokerState] = web.AppKey("state", BrokerState)


def _state(request: web.Request) -> BrokerState:
    return request.app[STATE]


def _show(text: str) -> str:
    return repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…")


def new_reference() -> str:
    return secrets.token_hex(8)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes before more is read (Content-Length or not)."""
    if request.content_length is not None and request.content_length > limit:
        raise ProtocolError("SerdeError", f"request body is {request.content_length} bytes; at most {limit}",
                            status=413, reason="body_size")
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise ProtocolError("SerdeError", f"request body exceeds {limit} bytes", status=413, reason="body_size")
    return bytes(body)


def json_response(value: Any) -> web.Response:
    """A JSON answer encoded by orjson (about half of aiohttp's json.dumps default on this hot path)."""
    return web.Response(body=jsondoc.dumps(value), content_type="application/json", charset="utf-8")


def _cookie(st: BrokerState, session: Session, sealed: str | None = None) -> str:
    """The Set-Cookie value carrying `session`; `sealed`: its cookie value as the guest sent it (the same string
    sealing would make: the MAC is a function of the fields)."""
    expires = session.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
    return f"{COOKIE}={sealed or st.sessions.seal(session)}; Expires={expires}; HttpOnly"


async def _log(st: BrokerState, chain: str, record: ReleaseRecord, generation: int | None = None) -> None:
    """Write the entry first; if the log cannot be written, the request fails closed (503).  `generation`: the
    decision generation the release was decided under; a StaleDecision (nothing written) if the store moved on."""
    try:
        await st.write(st.store.append_log, chain, record, generation)
    except (StoreError, OSError) as exc:
        st.metrics.audit_failures.inc()
        log.error("log write failed", extra={"log": chain, "resource": record.resource, "error": str(exc)})
        failure = ProtocolError("PluginInternalError", "the release log is unavailable; nothing was released",
                                status=503, reason="log_unavailable", decision="error")
        failure.logged = True
        raise failure from exc
    st.metrics.releases.labels(decision=record.decision, reason=record.reason).inc()
    log.info("decision", extra={"log": chain, "decision": record.decision, "reason": record.reason,
                                "resource": record.resource, "tee": record.tee, "policy": record.policy_id,
                                "reference": record.ref, "session": record.session_id})


async def _log_refusal(st: BrokerState, chain: str, record: ReleaseRecord, exc: ProtocolError) -> None:
    """Record a refusal (once) and give the guest its reference."""
    exc.reference = record.ref
    if exc.logged:
        return
    exc.logged = True
    await _log(st, chain, record.updated(decision=exc.decision, reason=exc.reason, detail=exc.detail[:MAX_DETAIL]))


def _failure(exc: Exception) -> ProtocolError:
    """What the guest hears when the broker, not the request, failed."""
    if isinstance(exc, StoreError):  # unreachable, or a row that fails authentication: nothing is released
        log.error("store failure", extra={"check": exc.check, "error": str(exc)})
        return ProtocolError("PluginInternalError", f"{exc.check}: {exc}", status=503, reason=exc.check,
                             decision="error", public="the broker's store failed; nothing was released")
    log.error("unexpected error", exc_info=exc)
    return ProtocolError("PluginInternalError", f"internal error: {type(exc).__name__}: {exc}", status=500,
                         reason="internal", decision="error", public="internal error; see the broker's log")


Step = Callable[[web.Request, BrokerState, datetime], Awaitable[web.Response]]


async def _refusals_logged(request: web.Request, resource: str, step: Step) -> web.Response:
    """Run a step before any token exists: whatever refuses the request is in the refusal log."""
    st = _state(request)
    now = st.clock()
    try:
        return await step(request, st, now)
    except Exception as exc:  # the record is made only now: most requests are not refused
        failure = exc if isinstance(exc, ProtocolError) else _failure(exc)
        await _log_refusal(st, REFUSALS, _refusal(now, resource, request, new_reference()), failure)
        if failure is exc:
            raise
        raise failure from exc


def _refusal(at: datetime, resource: str, request: web.Request, ref: str, tee: str | None = None) -> ReleaseRecord:
    return ReleaseRecord(at=at, decision="deny", reason="", resource=resource, version=None,
                         session_id=session_id_of(request.cookies.get(COOKIE)), tee=tee, policy_id=None,
                         policy_hash=None, attestation_id=None, ref=ref)


def _json(raw: bytes, what: str) -> Any:
    try:
        return jsondoc.loads(raw, what=what, check="format")
    except MalformedEvidence as exc:
        raise ProtocolError("SerdeError", str(exc), status=400, reason="format") from exc


# -- /auth ----------------------------------------------------------------------------------

@routes.post("/kbs/v0/auth")
async def auth(request: web.Request) -> web.Response:
    return await _refusals_logged(request, "(auth)", _auth)


async def _auth(request: web.Request, st: BrokerState, now: datetime) -> web.Response:
    body = _json(await read_body(request, MAX_AUTH_BODY), "the auth request")
    if not isinstance(body, dict) or not isinstance(body.get("tee"), str):
        raise ProtocolError("AttestationError", 'auth request must be {"version": "0.4.0", "tee": "...", '
                            '"extra-params": ...}', status=400, reason="format")
    version = body.get("version")
    if version != PROTOCOL_VERSION:
        shown = version[:MAX_SHOWN] if isinstance(version, str) else type(version).__name__
        raise ProtocolError("AttestationError", f"Attestation error: RCAR handshake Auth failed: KBS Client "
                            f"Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {shown}",
                            reason="version")
    tee = body["tee"]
    if tee not in st.attestor.tees:
        raise ProtocolError("AttestationError", f"TEE {_show(tee)} is not enabled on this broker; enabled: "
                            f"{', '.join(st.attestor.tees)}", reason="tee")
    session = st.sessions.new_session(tee, now)  # in the signed cookie: nothing is written
    response = json_response({"nonce": session.nonce, "extra-params": ""})
    response.headers["Set-Cookie"] = _cookie(st, session)
    return response


def _cookie_session(request: web.Request, now: datetime) -> Session:
    """The session the cookie carries (signed by this broker, not expired), as it was at /auth."""
    st = _state(request)
    value = request.cookies.get(COOKIE)
    if value is None:
        raise ProtocolError("AttestationError", "no kbs-session-id cookie: call /kbs/v0/auth first", reason="session")
    session = st.sessions.open(value)
    if session is None:
        raise ProtocolError("AttestationError", "the kbs-session-id cookie is not one this broker issued: "
                            "call /kbs/v0/auth again", reason="session")
    return _unexpired(session, now)


def _unexpired(session: Session, now: datetime) -> Session:
    if now >= session.expires_at:
        raise ProtocolError("AttestationError", "session expired: call /kbs/v0/auth again", reason="session")
    return session


async def _live_session(request: web.Request, now: datetime) -> tuple[Session, Attested | None]:
    """The cookie's session: as stored once it attested (remembered, with its token's evidence identity and TEE key
    thumbprint, by the worker that stored it), else as the cookie carries it."""
    st = _state(request)
    value = request.cookies.get(COOKIE)
    remembered = st.attested.get(value) if value is not None else None
    if remembered is not None:  # this very cookie string was opened (its MAC checked) at /attest here
        return _unexpired(remembered.session, now), remembered
    session = _cookie_session(request, now)
    stored = await st.read(st.store.get_session, session.session_id)
    return (stored if stored is not None else session), None


# -- /attest --------------------------------------------------------------------------------

@routes.post("/kbs/v0/attest")
async def attest(request: web.Request) -> web.Response:
    return await _refusals_logged(request, "(attest)", _attest)


async def _attest(request: web.Request, st: BrokerState, now: datetime) -> web.Response:
    # Not looked up in the store: a session is stored once it attested, and the write below (which
    # consumes the nonce) says whether it had; only then is the stored one read.
    session = _cookie_session(request, now)
    raw = await read_body(request, st.config.max_attest_body_bytes)
    evidence_digest = hashlib.sha256(raw).hexdigest()
    known = await _known_attested(request, st, session, evidence_digest)
    if known is not None:
        return known
    started = time.perf_counter()
    try:
        async with asyncio.timeout(st.config.request_timeout):  # no task of its own, unlike wait_for
            message, appraisals = await st.attestor.verify(session.tee, raw, session.nonce, now)
    except TimeoutError as exc:
        st.metrics.attestations.labels(tee=session.tee, result="timeout").inc()
        raise ProtocolError("AttestationError", f"verification took longer than {st.config.request_timeout}s "
                            "(collateral service slow?)", reason="timeout") from exc
    except KbsError as exc:
        st.metrics.attestations.labels(tee=session.tee, result=exc.check).inc()
        status = 400 if exc.check in ("attestation.format", "format") else 401
        raise ProtocolError("AttestationError" if status == 401 else "SerdeError",
                            f"Attestation error: {exc.check}: {exc}", status=status, reason=exc.check) from exc
    st.metrics.verify_seconds.labels(tee=session.tee).observe(time.perf_counter() - started)
    attestation_id = time_ordered_id()  # kbs.server.ids: inserts on the index's right edge
    tee_pubkey = message.tee_pubkey
    runtime = {"nonce": session.nonce, "tee-pubkey": tee_pubkey}
    init_claims = message.init_data.claims if message.init_data else None
    # The parsed message (an SNP message's byte arrays are ~50 KB of Python lists) and the body are not
    # kept while this request waits for its write's batch: in a storm hundreds wait at once.
    del message, raw
    submods = [Submod(a, runtime, init_claims if i == 0 else None) for i, a in enumerate(appraisals)]
    document = ear_document(submods, issued_at=now, lifetime=timedelta(seconds=st.config.token_lifetime))
    document[ATTESTATION_ID_CLAIM] = attestation_id
    payload = jsondoc.dumps(document)  # encoded once: bounded here, signed below
    size = len(payload)
    if size > st.config.max_claims_bytes:
        st.metrics.attestations.labels(tee=session.tee, result="claims.size").inc()
        raise ProtocolError("AttestationError", f"Attestation error: claims.size: the claims are {size} bytes; at most "
                            f"{st.config.max_claims_bytes} ([limits] max_claims_bytes): send smaller init-data",
                            status=400, reason="claims.size")
    token = st.signer.sign(document, payload)
    # One durable write: the nonce consumed and the attestation recorded together, or neither.
    record = AttestationRecord(attestation_id, now, session.session_id, session.tee, document, payload)
    # Its summary in the release log (the transparency log): which evidence, which TEE key, what status.
    identity, tee_key = evidence_identity(document), jwe.jwk_thumbprint(tee_pubkey)
    summary = ReleaseRecord(at=now, decision="attest", reason=document[OVERALL_STATUS], resource="", version=None,
                            session_id=session.session_id, tee=session.tee, policy_id=None, policy_hash=None,
                            attestation_id=attestation_id, evidence=identity, tee_key=tee_key)
    if not await st.write(st.store.mark_attested, session, evidence_digest, token, now, record, summary):
        st.attested.mark_used(session.session_id)
        return await _attested_in_store(st, session, evidence_digest)
    cookie = request.cookies[COOKIE]  # opened by _cookie_session above
    st.attested.remember(cookie, Attested(Session(session.session_id, session.tee, session.nonce, session.created_at,
                                                  session.expires_at, "attested", evidence_digest, token),  # as stored
                                          identity, tee_key))
    st.metrics.attestations.labels(tee=session.tee, result="ok").inc()
    log.info("attested", extra={"session": session.session_id, "tee": session.tee,
                                "attestation_id": attestation_id,
                                "status": document["submods"]["cpu0"]["ear.status"]})
    return _token_response(st, session, token, cookie)


async def _known_attested(request: web.Request, st: BrokerState, session: Session,
                          evidence_digest: str) -> web.Response | None:
    """The answer to an /attest for a session this worker knows is attested (it stored it, or found its nonce
    used), given before verifying the evidence again: a replay costs no verification and no write (on PostgreSQL a
    used nonce fails its batch's first run, which then runs again call by call, so each replay of one captured
    request would cost a whole batch's writes again)."""
    remembered = st.attested.get(request.cookies[COOKIE])  # opened by _cookie_session
    if remembered is not None:
        return _attested_before(st, session, remembered.session, evidence_digest)
    if st.attested.used(session.session_id):
        return await _attested_in_store(st, session, evidence_digest)
    return None


async def _attested_in_store(st: BrokerState, session: Session, evidence_digest: str) -> web.Response:
    """`_attested_before` for a session whose nonce was found used: as the store holds it."""
    return _attested_before(st, session, await st.read(st.store.get_session, session.session_id), evidence_digest)


def _attested_before(st: BrokerState, session: Session, stored: Session | None, evidence_digest: str) -> web.Response:
    """A session attested before this request: its token for the same evidence again (as Trustee), else refused."""
    if stored is not None and stored.evidence_digest == evidence_digest and stored.token:
        return _token_response(st, stored, stored.token)
    st.metrics.attestations.labels(tee=session.tee, result="replay").inc()
    raise ProtocolError("AttestationError", "this session is already attested with other evidence: its nonce "
                        "is already used; call /kbs/v0/auth again", reason="replay")


def _token_response(st: BrokerState, session: Session, token: str, sealed: str | None = None) -> web.Response:
    response = json_response({"token": token})
    response.headers["Set-Cookie"] = _cookie(st, session, sealed)
    return response


# -- resources ------------------------------------------------------------------------------

async def _token_claims(request: web.Request,
                       now: datetime) -> tuple[dict[str, Any], str | None, Attested | None]:
    """Claims of the Bearer token, or of the cookie session's token (re-verified either way); for a cookie session
    this worker remembers, the entry (its token's evidence identity and TEE key thumbprint, computed at /attest)."""
    st = _state(request)
    header = request.headers.get("Authorization", "")
    session_id, remembered = None, None
    if header.startswith("Bearer "):
        token = header.removeprefix("Bearer ").strip()
    elif request.cookies.get(COOKIE) is not None:
        session, remembered = await _live_session(request, now)
        if session.state != "attested" or not session.token:
            raise ProtocolError("TokenNotFound", "this session has not attested: call /kbs/v0/attest",
                                reason="token")
        token, session_id = session.token, session.session_id
    else:
        raise ProtocolError("TokenNotFound", "no attestation token: send Authorization: Bearer <token> "
                            "or the kbs-session-id cookie", reason="token")
    try:
        return st.signer.verify(token, now), session_id, remembered
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


@dataclass
class Entry:
    """The log entry of a request on a resource path, refined as its step learns more (the resource, the
    token's evidence, the policy): whatever refuses the request is logged with what is known by then."""

    record: ReleaseRecord

    def update(self, **changes: Any) -> None:
        self.record = self.record.updated(**changes)


# What a step for an attested guest does with the request, once the path is valid and the token verified; a
# refusal it raises is logged (once) by attested_step with the step's entry as it stands.
AttestedStep = Callable[[web.Request, BrokerState, datetime, tuple[str, str, str], dict[str, Any], Entry],
                        Awaitable[web.Response]]


async def attested_step(request: web.Request, step: AttestedStep) -> web.Response:
    """A request on a resource path from an attested guest (GET resource, a deposit): the path checked and the
    token verified first, everything refused until then in the refusal log, everything after (with the
    evidence's identity and the TEE key's thumbprint) in the release log, durable before the answer."""
    st, now = _state(request), _state(request).clock()
    entry = Entry(_refusal(now, "(invalid path)", request, new_reference()))
    chain = REFUSALS  # until the caller shows a valid token
    try:
        parts = (request.match_info["repo"], request.match_info["type"], request.match_info["tag"])
        if not all(SEGMENT.fullmatch(p) for p in parts):
            raise ProtocolError("InvalidRequestPath", "resource path must be repo/type/tag, each 1..128 of "
                                "[A-Za-z0-9_.-] not starting with '.'", status=404, reason="path")
        entry.update(resource="/".join(parts))
        claims, session_id, remembered = await _token_claims(request, now)
        cpu0 = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        if remembered is not None:  # computed at /attest from this token's claims
            identity, tee_key = remembered.identity, remembered.tee_key
        else:
            identity, tee_key = evidence_identity(claims), jwe.jwk_thumbprint(_tee_pubkey(claims))
        entry.update(session_id=session_id, tee=next(iter(cpu0), None), attestation_id=claims.get(ATTESTATION_ID_CLAIM),
                     evidence=identity, tee_key=tee_key)
        chain = RELEASES
        return await step(request, st, now, parts, claims, entry)
    except ProtocolError as exc:
        await _log_refusal(st, chain, entry.record, exc)
        raise
    except Exception as exc:
        failure = _failure(exc)
        await _log_refusal(st, chain, entry.record, failure)
        raise failure from exc


@routes.get("/kbs/v0/resource/{repo}/{type}/{tag}")
async def get_resource(request: web.Request) -> web.Response:
    return await attested_step(request, _release)


def policy_fields(policy_id: str, resolved: Resolved) -> dict[str, Any]:
    """What a log entry says of the policy deciding it: its id, and its version's hash and the digest of the
    reference sets it reads, once they could be read."""
    if isinstance(resolved, KbsError):
        return {"policy_id": policy_id}
    return {"policy_id": policy_id, "policy_hash": resolved[0].content_hash, "refs_hash": resolved[3]}


async def judge(st: BrokerState, request: web.Request, plugin: str, parts: tuple[str, str, str], policy_id: str,
                resolved: Resolved, claims: dict[str, Any], now: datetime,
                what: str) -> tuple[Decision, PolicyVersion]:
    """The decision of a resolved policy (kbs.server.decisions) on the claims, and its version; a policy that
    cannot be evaluated is a PolicyEngineError naming `what`."""
    try:
        if isinstance(resolved, KbsError):
            raise resolved
        version, policy, refs, _ = resolved
        req = ResourceRequest(plugin=plugin, path=parts, query=dict(request.query))
        return await _evaluate(st, policy, len(version.text), claims, refs, req, now), version
    except KbsError as exc:
        raise ProtocolError("PolicyEngineError", f"policy {policy_id!r} could not be evaluated: {exc}",
                            reason=exc.check, decision="error", public=f"{what} could not be evaluated") from exc


async def _evaluate(st: BrokerState, policy: Policy, chars: int, claims: dict[str, Any], refs: ReferenceValues,
                    req: ResourceRequest, now: datetime) -> Decision:
    started = time.perf_counter()
    try:
        if isinstance(policy, JsonPolicy) and chars <= INLINE_POLICY_CHARS:
            return policy.evaluate(claims, refs, req, now)  # tens of microseconds: on the loop
        return await st.evaluate(policy.evaluate, claims, refs, req, now)  # Rego: to its worker pool, off the loop
    finally:
        st.metrics.policy_seconds.labels(dialect=policy.dialect).observe(time.perf_counter() - started)


async def _release(request: web.Request, st: BrokerState, now: datetime, parts: tuple[str, str, str],
                   claims: dict[str, Any], entry: Entry) -> web.Response:
    """Decided on the inputs in memory when there are any, without asking the store first (kbs.server.decisions):
    a release is then written only if the store is still at their generation, and a refusal stands only if the
    generation read after it is theirs; otherwise (or with nothing in memory) decided on what the store holds."""
    remembered = st.decisions.latest(entry.record.resource)
    if remembered is not None:
        generation, inputs = remembered
        try:
            return await _decide_release(request, st, now, parts, claims, entry, inputs, generation)
        except StaleDecision:  # a resource, policy or reference set changed since: nothing was written or sent
            st.metrics.decisions_redone.labels(outcome="release").inc()
        except ProtocolError as exc:
            if exc.logged or await st.decision_generation() == generation:  # logged: the log failed, not a decision
                raise
            st.metrics.decisions_redone.labels(outcome="refusal").inc()
    inputs = await st.release_inputs(entry.record.resource)  # everything the decision reads: one call at most
    return await _decide_release(request, st, now, parts, claims, entry, inputs, None)


async def _decide_release(request: web.Request, st: BrokerState, now: datetime, parts: tuple[str, str, str],
                          claims: dict[str, Any], entry: Entry, inputs: ReleaseInputs,
                          generation: int | None) -> web.Response:
    path = entry.record.resource
    tee_pubkey = _tee_pubkey(claims)
    resource, policy_id, resolved, disabled = inputs
    entry.update(**policy_fields(policy_id, resolved))  # every refusal from here on names the policy
    decision, policy_version = await judge(st, request, "resource", parts, policy_id, resolved, claims, now,
                                           "the release policy")
    if not decision.allow:
        why = _first_failure(decision.explanation)
        engine_failure = why.split(":", 1)[0]  # a Rego worker that crashed, timed out, ran out of memory...
        raise ProtocolError("PolicyDeny", f"policy {policy_id!r} (version {policy_version.version}) denied: {why}",
                            reason=engine_failure if engine_failure in FAILURE_LABELS else "policy",
                            public="the release policy denied this request")
    if resource is None:
        owned = await st.read(st.decisions.owned, path)  # only keys with no active value get here
        if owned is not None:
            assert not isinstance(resolved, KbsError)  # judge() raised for it
            req = ResourceRequest(plugin="resource", path=parts, query=dict(request.query))
            return await _release_owned(st, now, owned, claims, resolved[2], req, entry, tee_pubkey, generation)
    if resource is None:  # logged with the policy that allowed the guest
        if disabled:  # the operator's doing, not the guest's: named so in the log
            raise ProtocolError("PluginInternalError", f"resource {path}: every version is disabled", status=404,
                                reason="disabled", public=f"resource not found: {path}")
        raise ProtocolError("PluginInternalError", f"resource not found: {path}", status=404, reason="not_found")
    try:
        plaintext = st.kek.unseal(resource.sealed, f"resource:{path}")
        body = jwe.encrypt(plaintext, tee_pubkey)
    except KbsError as exc:
        raise ProtocolError("JweError", f"cannot wrap the resource to the TEE key: {exc}", reason=exc.check,
                            decision="error") from exc
    await _log(st, RELEASES, entry.record.updated(decision="release", reason="policy", version=resource.version),
               generation)
    return json_response(body)


async def _release_owned(st: BrokerState, now: datetime, owned: OwnedInputs, claims: dict[str, Any],
                         refs: ReferenceValues, req: ResourceRequest, entry: Entry,
                         tee_pubkey: dict[str, Any], generation: int | None) -> web.Response:
    """An owned key with no active value, once its own policy allowed the guest (issue 15): a deposit slot not
    yet filled is refused; a contributed key is released only when every owner contributed and every owner's
    own policy allows the same claims, as the derivation of the shares in owner order (kbs.keys.shares)."""
    path = entry.record.resource
    if owned.key.kind == "deposit":
        raise ProtocolError("PluginInternalError", f"resource {path}: nothing deposited yet", status=404,
                            reason="empty", public=f"resource {path} holds no value yet")
    if owned.missing:
        given = len(owned.key.owners) - len(owned.missing)
        raise ProtocolError("PluginInternalError", f"resource {path}: {given} of {len(owned.key.owners)} owners "
                            f"contributed; waiting for {', '.join(owned.missing)}", status=404, reason="incomplete",
                            public=f"resource {path} is incomplete: {given} of {len(owned.key.owners)} owners "
                            "contributed")
    for contribution, _ in owned.shares:
        policy = owned.policies.get(contribution.owner)
        if policy is None:
            continue
        who = contribution.owner
        try:
            if isinstance(policy, KbsError):
                raise policy
            decision = await _evaluate(st, policy, len(contribution.policy or ""), claims, refs, req, now)
        except KbsError as exc:
            raise ProtocolError("PolicyEngineError", f"owner {who!r}'s policy could not be evaluated: {exc}",
                                reason="owner_policy", decision="error",
                                public=f"the policy of owner {who!r} could not be evaluated") from exc
        if not decision.allow:
            raise ProtocolError("PolicyDeny", f"owner {who!r}'s policy (sha256 {contribution.policy_hash}) "
                                f"denied: {_first_failure(decision.explanation)}", reason="owner_policy",
                                public=f"the policy of owner {who!r} denied this request")
    try:
        shares = [st.kek.unseal(sealed, share_secret(path, c.owner)) for c, sealed in owned.shares]
        body = jwe.encrypt(derive(shares, path), tee_pubkey)
    except KbsError as exc:
        raise ProtocolError("JweError", f"cannot derive or wrap the contributed key: {exc}", reason=exc.check,
                            decision="error") from exc
    del shares
    await _log(st, RELEASES, entry.record.updated(decision="release", reason="policy",
                                                  detail=f"derived from {len(owned.shares)} owners' shares"),
               generation)
    return json_response(body)
