"""The broker's OpenAPI 3.1 description: the guest protocol, the admin API, health, metrics and itself.

Built from the constants the handlers enforce (path segments, body and query bounds, error types) and
from the serving configuration (body limits, enabled TEEs, the admin token audience and lifetime), so
the document a broker serves at GET /openapi.json states that broker's own bounds.  It holds no secret
(no key, policy, resource name or client address), so it is served without authentication.

aiohttp answers HEAD wherever it answers GET (RFC 9110); HEAD is not listed separately.
tests/test_openapi.py checks the paths against the router; tests/test_schemathesis.py runs
schemathesis against a live broker with it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from kbs import __version__, owners
from kbs.audit.chain import CHAINS, RELEASES
from kbs.evidence.binding import MAX_INIT_DATA_BYTES
from kbs.evidence.composite import MAX_DEVICE_EVIDENCE, MAX_NONCE_CHARS
from kbs.keys import jwe
from kbs.server import admin, contributions, protocol
from kbs.server.config import Config
from kbs.server.errors import ERROR_TYPE
from kbs.store.base import ReleaseRecord

Schema = dict[str, Any]
PATH = "/openapi.json"
SEGMENT_PATTERN = f"^(?:{protocol.SEGMENT.pattern})$"
ANY_SEGMENT = "^[^/{}]+$"  # what aiohttp's {name} matches; the request line is at most 8190 bytes
POLICY_DIALECTS = ["json", "rego"]
MAX_BYTES = "x-max-bytes"  # on a request body: the most bytes the route reads (more: 400 or 413)

_ERROR_TEXT = {
    400: "The request is malformed: a body that is not the JSON asked for, or a parameter out of range.",
    401: "Not authenticated: the error's `type` says which check failed (Trustee's guests retry on 401).",
    403: "The admin key that signed the token has the `auditor` role, which may only read; or the change touches "
         "an owned key (its value, binding, policy or reference sets: only its owners' proposals change those); or "
         "the signer is not an owner of the key.",
    404: "No such route, resource, policy, reference set or attestation; or a path segment outside "
         "[A-Za-z0-9_.-] (1..128 characters, not starting with '.').",
    405: "This path does not take this method (the `Allow` header lists those it takes).",
    408: "The request did not complete within `[limits] request_timeout_seconds` plus the header timeout.",
    409: "Refused by a rule of the store or the policy registry (an immutable policy, a policy in use, "
         "a value a set does not hold), or the store failed.",
    413: "The body is larger than this route accepts.",
    429: "Too many requests from this client address (IPv6: its /64); retry after `Retry-After` seconds.",
    503: "The worker is busy (`[limits] max_in_flight`; retry after `Retry-After`), or the store or the "
         "release log is unavailable (nothing was released or changed unlogged).",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_ALLOW = {"Allow": {"description": "The methods this path takes.", "schema": {"type": "string"}}}
_WORKER_HEADERS = {"Kbs-Worker": {"description": "Index of the worker process that answered.",
                                  "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                   "Kbs-Worker-Pid": {"description": "Its process id.",
                                      "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_SET_COOKIE = {"Set-Cookie": {"description": f"`{protocol.COOKIE}=<sealed session>; Expires=...; HttpOnly`",
                              "schema": {"type": "string", "pattern": f"^{protocol.COOKIE}="}}}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str, headers: Schema | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _text(description: str, headers: Schema | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(*statuses: int) -> dict[str, Schema]:
    out = {}
    for status in statuses:
        headers = _RETRY_AFTER if status in (429, 503) else _ALLOW if status == 405 else None
        out[str(status)] = _json(_ref("Error"), _ERROR_TEXT[status], headers)
    return out


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, *, closed: bool = True) -> Schema:
    out: Schema = {"type": "object", "properties": properties,
                   "required": list(properties) if required is None else required}
    if closed:
        out["additionalProperties"] = False
    return out


def _segment(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": SEGMENT_PATTERN, "maxLength": 128}}


def _name(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": ANY_SEGMENT}}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


RESOURCE_PARAMS = [_segment("repo", "Repository: the first segment of the resource name."),
                   _segment("type", "Type: the second segment."),
                   _segment("tag", "Tag: the third segment.")]
POLICY_QUERY = _query("policy", {"type": "string"},
                      "Bind the new version to this policy (which must exist); absent or empty: the key's "
                      "current policy, else `default`.")


_FIELD_TYPES: dict[str, Schema] = {"datetime": {"type": "string", "format": "date-time"}, "str": {"type": "string"},
                                   "int": {"type": "integer"}, "str | None": _nullable("string"),
                                   "int | None": _nullable("integer")}


def _record_fields() -> tuple[dict[str, Schema], list[str]]:
    """A log entry as the release-log route writes it (dataclasses.asdict of ReleaseRecord), from its fields."""
    fields = dataclasses.fields(ReleaseRecord)
    return ({f.name: _FIELD_TYPES.get(str(f.type), {}) for f in fields},  # {}: any (tests/test_openapi.py)
            [f.name for f in fields if f.default is dataclasses.MISSING])


def _schemas(config: Config) -> dict[str, Schema]:
    value = {"type": ["string", "number", "boolean"]}
    ref_set = _obj({"values": {"type": "array", "items": value},
                    "expires": {"type": "string", "format": "date-time"},
                    "description": {"description": "Text; another JSON value is kept as its string form."}},
                   ["values"])
    policy_version = _obj({"policy_id": {"type": "string"}, "version": {"type": "integer", "minimum": 1},
                           "dialect": {"enum": POLICY_DIALECTS}, "content_hash": {"type": "string"},
                           "created_by": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
                           "immutable": {"type": "boolean"}})
    with_text = {**policy_version, "properties": {**policy_version["properties"], "text": {"type": "string"}},
                 "required": [*policy_version["required"], "text"]}
    record_fields, record_required = _record_fields()
    head = _obj({"chain": {"enum": list(CHAINS)}, "first_seq": {"type": "integer"},
                 "anchor_hash": {"type": "string"}, "head_seq": {"type": "integer"}, "head_hash": {"type": "string"},
                 "entries": {"type": "integer"}})
    explanation: Schema = {"type": "object", "required": ["kind", "ok", "detail"],
                           "properties": {"kind": {"type": "string"}, "ok": {"type": "boolean"},
                                          "detail": {"type": "string"}, "where": {"type": "string"},
                                          "line": {"type": "integer"}, "claim": {"type": "string"},
                                          "operator": {"type": "string"}, "expected": {}, "seen": {},
                                          "children": {"type": "array", "items": _ref("Explanation")}}}
    key_version = _obj({"version": {"type": "integer", "minimum": 1},
                        "state": {"enum": ["active", "disabled", owners.PENDING]},
                        "policy_id": {"type": "string"}, "created_by": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"}})
    return {
        "Error": _obj({"type": {"type": "string", "pattern": f"^{ERROR_TYPE}[A-Za-z]+$"},
                       "detail": {"type": "string"},
                       "reference": {"type": "string", "description": "Find the full story in the broker's log "
                                     "under this reference."}}, ["type", "detail"]),
        "Request": _obj({"version": {"const": protocol.PROTOCOL_VERSION,
                                     "description": "Any other version is refused with 401."},
                         "tee": {"type": "string", "enum": list(config.enabled_tees),
                                 "description": "A TEE this broker verifies (another gets 401)."},
                         "extra-params": {}}, ["version", "tee"], closed=False),
        "Challenge": _obj({"nonce": {"type": "string"}, "extra-params": {"type": "string"}}),
        "Attestation": _obj({
            "init-data": {"oneOf": [{"type": "null"}, _obj({
                "format": {"const": "toml"}, "body": {"type": "string", "maxLength": MAX_INIT_DATA_BYTES}},
                closed=False)]},
            "runtime-data": _obj({"nonce": {"type": "string", "maxLength": MAX_NONCE_CHARS,
                                            "description": "The nonce /kbs/v0/auth gave this session."},
                                  "tee-pubkey": _ref("TeePublicKey")}, closed=False),
            "tee-evidence": _obj({"primary_evidence": {"description": "The TEE's evidence, as its verifier reads it."},
                                  "additional_evidence": {"type": "string", "description": "JSON text of {tee: "
                                                          f"evidence}} (at most {MAX_DEVICE_EVIDENCE}), or empty."}},
                                 ["primary_evidence"], closed=False)},
            ["runtime-data", "tee-evidence"], closed=False),
        "TeePublicKey": {"description": "A public JWK; the resource is wrapped to it.", "oneOf": [
            _obj({"kty": {"const": "EC"}, "crv": {"enum": ["P-256", "P-521"]}, "alg": {"const": jwe.ECDH_ES_A256KW},
                  "x": {"type": "string"}, "y": {"type": "string"}}, closed=False),
            _obj({"kty": {"const": "RSA"}, "alg": {"enum": list(jwe.RSA_ALGS)}, "n": {"type": "string"},
                  "e": {"type": "string"}}, closed=False)]},
        "AttestationToken": _obj({"token": {"type": "string", "description": "An EAR JWT (ES256)."}}),
        "Jwe": _obj({"protected": {"type": "string"}, "encrypted_key": {"type": "string"}, "iv": {"type": "string"},
                     "ciphertext": {"type": "string"}, "tag": {"type": "string"}}),
        "StoredResource": _obj({"path": {"type": "string"}, "version": {"type": "integer", "minimum": 1},
                                "policy_id": {"type": "string"}}),
        "ResourceState": _obj({"path": {"type": "string"}, "state": {"enum": ["active", "disabled", owners.PENDING]},
                               "version": _nullable("integer")}),
        "KeyList": {"type": "array", "items": _obj({"path": {"type": "string"},
                                                    "versions": {"type": "array", "items": key_version}})},
        "PolicyVersion": policy_version,
        "PolicyVersionWithText": with_text,
        "PolicyStored": {**policy_version, "properties": {**policy_version["properties"], "warnings": {
            "type": "array", "description": "Claim paths no enabled verifier emits (`?strict=true`: refused, 400).",
            "items": _obj({"line": _nullable("integer"), "claim": {"type": "string"},
                           "message": {"type": "string"}})}}, "required": [*policy_version["required"], "warnings"]},
        "PolicyHistory": _obj({"current": _ref("PolicyVersionWithText"),
                               "history": {"type": "array", "items": _ref("PolicyVersion")}}),
        "Explanation": explanation,
        "Decision": _obj({"allow": {"type": "boolean"}, "explanation": _ref("Explanation")}),
        "ReferenceSet": ref_set,
        "ReferenceSets": {"type": "object", "additionalProperties": _ref("ReferenceSet")},
        "ReferenceSetBody": {"oneOf": [{"type": "array", "items": value}, ref_set],
                             "description": "A list of values, or a set with `values` and optional `expires` "
                                            "(RFC 3339 with a zone) and `description`."},
        "ReleaseRecord": _obj(record_fields, record_required),
        "AttestationRecord": _obj({"attestation_id": {"type": "string"}, "at": {"type": "string",
                                                                                 "format": "date-time"},
                                   "tee": {"type": "string"}, "claims": {"type": "object"}}),
        "LogHeads": _obj({"ok": {"const": True}, "heads": {"type": "array", "items": head}}),
        # Open: `kbs status` grows; the fields below are always there.
        "Status": _obj({"version": {"type": "string"}, "uptime_seconds": {"type": "integer", "minimum": 0},
                        "store": {"type": "string"}, "verifiers": {"type": "array", "items": {"type": "string"}},
                        "trust_roots": {"type": "object", "description": "Per verifier, the roots its chains end at.",
                                        "additionalProperties": {"type": "array", "items": {
                                            "type": "object", "additionalProperties": {"type": "string"}}}},
                        "keys": {"type": "integer"}, "policies": {"type": "integer"},
                        "reference_sets": {"type": "integer"},
                        "last_hour": _obj({name: {"type": "integer", "minimum": 0} for name in
                                           ("releases", "denials", "errors", "admin_changes", "refusals")})},
                       ["version", "uptime_seconds", "store", "verifiers", "keys", "policies", "reference_sets",
                        "last_hour"], closed=False),
        "Health": _obj({"status": {"type": "string"},
                        "worker": _obj({"index": {"type": "integer"}, "pid": {"type": "integer"}}),
                        "workers": {"type": "array", "items": {"type": "object"}}}),
    }


def _security(config: Config) -> dict[str, Schema]:
    return {
        "adminToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)",
                       "description": "A JWT signed with Ed25519 by a key in `[admin] keys`; the key decides the "
                       f"role (`admin` writes, `auditor` reads). `exp` and `iat` required, lifetime at most "
                       f"{config.admin_max_token_lifetime} s; `aud`, when present, names "
                       f"{config.admin_audience!r}; `jti` single use"
                       f"{'' if config.admin_require_jti else ' (may be absent here)'}. With `[tls] client_ca` the "
                       "connection must also present a client certificate from that CA."},
        "attestationToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EAR, ES256)",
                             "description": "The token /kbs/v0/attest returned."},
        "metricsToken": {"type": "http", "scheme": "bearer",
                         "description": "The token in `[metrics] token_file` (when set)."},
        "sessionCookie": {"type": "apiKey", "in": "cookie", "name": protocol.COOKIE,
                          "description": "Sealed by this broker at /kbs/v0/auth; after /attest it also "
                                         "stands for the session's attestation token."},
    }


def _op(summary: str, tag: str, ok: dict[str, Schema], errors: tuple[int, ...], *, op_id: str,
        security: list[Schema] | None = None, params: list[Schema] | None = None, body: Schema | None = None,
        description: str = "") -> Schema:
    out: Schema = {"operationId": op_id, "summary": summary, "tags": [tag],
                   "responses": {**ok, **_errors(*sorted(set(errors)))}}
    if description:
        out["description"] = description
    if security is not None:
        out["security"] = security
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = body
    return out


def _json_body(schema: Schema, limit: int, description: str = "") -> Schema:
    return {"required": True, "description": (description + " " if description else "") + f"At most {limit} bytes.",
            "content": {"application/json": {"schema": schema}}, MAX_BYTES: limit}


ADMIN: list[Schema] = [{"adminToken": []}]
# Every admin operation: no or a bad token (401), a body or parameter the handler refuses (400), a
# rule or store failure (409), a timeout (408), busy or the log unavailable (503), a body past
# `[limits] max_body_bytes` (413).
_ADMIN_READ = (400, 401, 408, 409, 503)
_ADMIN_WRITE = (*_ADMIN_READ, 403, 413)
# Guest routes: rate limits (429) and the middleware's bounds.
_GUEST = (408, 429, 503)


def _admin_op(summary: str, ok: dict[str, Schema], *, write: bool, op_id: str, extra: tuple[int, ...] = (),
              params: list[Schema] | None = None, body: Schema | None = None, description: str = "") -> Schema:
    errors = (*(_ADMIN_WRITE if write else _ADMIN_READ), *extra)
    return _op(summary, "admin", ok, errors, op_id=op_id, security=ADMIN, params=params, body=body,
               description=description)


def _paths(config: Config) -> dict[str, Schema]:
    cap = config.max_body_bytes
    resource_paths = "/kbs/v0/resource/{repo}/{type}/{tag}"
    keys = "/kbs/v0/admin/keys/{repo}/{type}/{tag}"
    policy = [_name("policy_id", "The policy's id.")]
    ref_name = [_name("name", "The reference set's name.")]
    stored = {"200": _json(_ref("StoredResource"), "The new version, active, and the policy it is bound to.")}
    policy_version = {"200": _json(_ref("PolicyVersion"), "The policy's new (or current) version.")}
    policy_stored = {"200": _json(_ref("PolicyStored"), "The policy's new version.")}
    strict = _query("strict", {"enum": ["true", "false"]},
                    "`true`: refuse a policy naming claims no enabled verifier emits (400).")
    ref_sets = {"200": _json(_ref("ReferenceSets"), "The set as stored.")}
    generate_params = [*RESOURCE_PARAMS,
                       _query("size", {"type": "integer", "minimum": 16, "maximum": 1024, "default": 32},
                              "Key length in bytes."), POLICY_QUERY]
    version_query = _query("version", {"type": "integer", "minimum": 1},
                           "Which version (default: enable the newest / disable the active one).")
    log_filters = [_query(name, {"type": "string", "maxLength": admin.MAX_QUERY_VALUE}, f"Exact {name}.")
                   for name in ("resource", "decision", "reason", "tee")]
    log_times = [_query(name, {"type": "string", "format": "date-time", "maxLength": admin.MAX_QUERY_VALUE},
                        f"RFC 3339 time, inclusive ({name}).") for name in ("since", "until")]
    all_query = [_query("all", {"type": "string"}, "Present (any value): answer JSON naming every worker; 503 "
                                                   "unless every worker is running.")]
    probe_ok = {"content": {"text/plain": {"schema": {"type": "string"}},
                            "application/json": {"schema": _ref("Health")}}, "headers": _WORKER_HEADERS}
    return {
        "/kbs/v0/auth": {"post": _op(
            "Start a session: a nonce, and the session in a cookie", "protocol",
            {"200": _json(_ref("Challenge"), "The challenge.", _SET_COOKIE)}, (400, 401, 413, *_GUEST),
            op_id="auth", security=[],
            body=_json_body(_ref("Request"), protocol.MAX_AUTH_BODY, "KBS protocol Request."))},
        "/kbs/v0/attest": {"post": _op(
            "Send evidence bound to the session's nonce; get an attestation token", "protocol",
            {"200": _json(_ref("AttestationToken"), "The session is attested.", _SET_COOKIE)},
            (400, 401, 413, *_GUEST), op_id="attest", security=[{"sessionCookie": []}],
            body=_json_body(_ref("Attestation"), config.max_attest_body_bytes,
                            "KBS protocol Attestation ([limits] max_attest_body_bytes)."))},
        resource_paths: {
            "get": _op("Fetch a resource, wrapped to the TEE's key, if its policy allows", "protocol",
                       {"200": _json(_ref("Jwe"), "The resource as a flattened JWE.")}, (401, 404, *_GUEST),
                       op_id="getResource", security=[{"attestationToken": []}, {"sessionCookie": []}],
                       params=RESOURCE_PARAMS, description="Query parameters, if any, are passed to the policy."),
            "post": _admin_op("Store a resource (raw bytes) as a new version", stored, write=True,
                              op_id="setResource", extra=(404,), params=[*RESOURCE_PARAMS, POLICY_QUERY],
                              body={"required": True, "description": f"The resource, 1..{admin.MAX_KEY_BYTES} "
                                    "bytes (400 outside that).", MAX_BYTES: admin.MAX_KEY_BYTES,
                                    "content": {"application/octet-stream": {"schema": {
                                        "type": "string", "format": "binary"}}}}),
            "delete": _admin_op("Delete every version of a resource",
                                {"200": _json(_obj({"deleted_versions": {"type": "integer", "minimum": 1}}),
                                              "Deleted.")}, write=True, op_id="deleteResource", extra=(404,),
                                params=RESOURCE_PARAMS)},
        "/kbs/v0/resource-policy": {
            "post": _admin_op("Replace the `default` policy (Trustee's resource policy)", policy_stored,
                              write=True, op_id="setResourcePolicy", params=[strict],
                              body=_json_body(_obj({"policy": {"type": "string", "pattern": "^[A-Za-z0-9_=-]*$",
                                                               "description": "base64url of the policy text"}}),
                                              cap)),
            "get": _admin_op("List policy ids", {"200": _json({"type": "array", "items": {"type": "string"}},
                                                              "Policy ids.")},
                             write=False, op_id="listPolicies")},
        "/kbs/v0/attestation-policy": {"post": _admin_op(
            "Not supported: express conditions in resource policies", {}, write=True, extra=(404,),
            op_id="setAttestationPolicy", description="Always 404 (PluginNotFound) once authenticated.")},
        "/kbs/v0/reference-value": {"post": _admin_op(
            "Store reference sets from an RVPS `sample` message",
            {"200": _json({"type": "array", "items": {"type": "string"}}, "Names of the sets stored.")},
            write=True, op_id="setReferenceValue",
            body=_json_body(_obj({"version": {"type": "string"}, "type": {"const": "sample"},
                                  "payload": {"type": "string", "contentEncoding": "base64",
                                              "description": "base64 of {\"name\": value or [values]}"}},
                                 ["type", "payload"], closed=False), cap))},
        "/kbs/v0/reference-value/{name}": {"get": _admin_op(
            "One reference set", ref_sets, write=False, op_id="getReferenceValue", extra=(404,), params=ref_name)},
        "/kbs/v0/admin/keys": {"get": _admin_op(
            "Every resource and its versions (never the values)", {"200": _json(_ref("KeyList"), "Keys.")},
            write=False, op_id="listKeys")},
        f"{keys}/generate": {"post": _admin_op(
            "Generate a random key as a new version (creating the key)", stored, write=True, op_id="generateKey",
            extra=(404,), params=generate_params)},
        f"{keys}/rotate": {"post": _admin_op(
            "Generate a new random version of an existing key", stored, write=True, op_id="rotateKey",
            extra=(404,), params=generate_params)},
        f"{keys}/disable": {"post": _admin_op(
            "Disable a version", {"200": _json(_ref("ResourceState"), "Disabled.")}, write=True,
            op_id="disableKey", extra=(404,), params=[*RESOURCE_PARAMS, version_query])},
        f"{keys}/enable": {"post": _admin_op(
            "Enable a version", {"200": _json(_ref("ResourceState"), "Enabled.")}, write=True,
            op_id="enableKey", extra=(404,), params=[*RESOURCE_PARAMS, version_query])},
        f"{keys}/policy": {"post": _admin_op(
            "Bind every version of a key to a policy",
            {"200": _json(_obj({"path": {"type": "string"}, "policy_id": {"type": "string"}}), "Bound.")},
            write=True, op_id="bindKeyPolicy", extra=(404,), params=RESOURCE_PARAMS,
            body=_json_body(_obj({"policy_id": {"type": "string", "minLength": 1}}, closed=False), cap))},
        "/kbs/v0/admin/policies/{policy_id}": {
            "put": _admin_op("Store a policy version (JSON or Rego, told from the text)", policy_stored,
                             write=True, op_id="putPolicy",
                             params=[*policy, _query("immutable", {"enum": ["true", "false"]},
                                                     "`true`: no version may follow this one."), strict],
                             body={"required": True, "description": f"The policy text. At most {cap} bytes.",
                                   MAX_BYTES: cap,
                                   "content": {"text/plain": {"schema": {"type": "string"}},
                                               "application/json": {"schema": {"type": "object"}}}}),
            "delete": _admin_op("Delete a policy and its history",
                                {"200": _json(_obj({"deleted": {"type": "string"}, "versions": {"type": "integer"}}),
                                              "Deleted.")}, write=True, op_id="deletePolicy", extra=(404,),
                                params=policy,
                                description="Refused (409) for `default`, an immutable policy, or one a key is "
                                            "bound to."),
            "get": _admin_op("A policy's current text and its history",
                             {"200": _json(_ref("PolicyHistory"), "History.")}, write=False, op_id="getPolicy",
                             extra=(404,), params=policy)},
        "/kbs/v0/admin/policies/{policy_id}/immutable": {"post": _admin_op(
            "Make a policy immutable (one way)", policy_version, write=True, op_id="makePolicyImmutable",
            extra=(404,), params=policy)},
        "/kbs/v0/admin/policies/{policy_id}/dry-run": {"post": _admin_op(
            "Evaluate a policy against a stored attestation's claims; nothing is released",
            {"200": _json(_ref("Decision"), "The decision and why.")}, write=False, op_id="dryRun",
            extra=(404, 413), params=policy,
            body=_json_body(_obj({"attestation_id": {"type": "string"},
                                  "resource": {"type": "string", "description": "repo/type/tag"}},
                                 ["attestation_id"], closed=False), cap))},
        "/kbs/v0/admin/attestations/{attestation_id}": {"get": _admin_op(
            "A stored attestation's claims", {"200": _json(_ref("AttestationRecord"), "The attestation.")},
            write=False, op_id="getAttestation", extra=(404,),
            params=[_name("attestation_id", "From the token's `kbs.attestation-id` claim.")])},
        "/kbs/v0/admin/release-log": {"get": _admin_op(
            "Entries of the release or the refusal log",
            {"200": _json({"type": "array", "items": _ref("ReleaseRecord")}, "Entries, oldest first.")},
            write=False, op_id="releaseLog",
            params=[_query("chain", {"enum": list(CHAINS), "default": RELEASES}, "Which log."),
                    _query("after", {"type": "integer", "default": 0}, "Entries after this sequence number."),
                    _query("limit", {"type": "integer", "default": 100},
                           "At most this many (clamped to 1..1000)."), *log_filters, *log_times])},
        "/kbs/v0/admin/release-log/verify": {"get": _admin_op(
            "Check both logs (the release log's Merkle tree, the refusal log's chain) and their MACs; the heads",
            {"200": _json(_ref("LogHeads"), "Both chains verify.")}, write=False, op_id="verifyLog",
            description="409 when a chain does not verify.")},
        "/kbs/v0/admin/status": {"get": _admin_op(
            "Status at a glance", {"200": _json(_ref("Status"), "Status.")}, write=False, op_id="status")},
        "/kbs/v0/admin/refs": {"get": _admin_op(
            "Every reference set", {"200": _json(_ref("ReferenceSets"), "Sets by name.")}, write=False,
            op_id="listRefs")},
        "/kbs/v0/admin/refs/{name}": {
            "put": _admin_op("Create or replace a reference set", ref_sets, write=True, op_id="putRefs",
                             params=ref_name, body=_json_body(_ref("ReferenceSetBody"), cap)),
            "delete": _admin_op("Delete a reference set (refused while a policy uses it)",
                                {"200": _json(_obj({"deleted": {"type": "string"}}), "Deleted.")}, write=True,
                                op_id="deleteRefs", extra=(404,), params=ref_name)},
        "/kbs/v0/admin/refs/{name}/{verb}": {"post": _admin_op(
            "Add values to a set (created if absent) or remove values from it", ref_sets, write=True,
            op_id="editRefs", extra=(404,),
            params=[*ref_name, {"name": "verb", "in": "path", "required": True, "schema": {"enum": ["add", "remove"]}}],
            body=_json_body(_ref("ReferenceSetBody"), cap))},
        "/healthz": {"get": _op("Liveness of the worker that answers", "operations",
                                {"200": {"description": "`ok`; with `?all`, JSON.", **probe_ok},
                                 "503": {"description": "With `?all`: some worker is not running.", **probe_ok}},
                                (408,), op_id="healthz", security=[], params=all_query)},
        "/readyz": {"get": _op("Readiness: the store takes a write, the KEK and the signing key work", "operations",
                               {"200": {"description": "`ready`; with `?all`, JSON.", **probe_ok},
                                "503": {"description": "`starting` or `not ready: <error type>`; with `?all`, "
                                                       "JSON.", **probe_ok}},
                               (408,), op_id="readyz", security=[], params=all_query)},
        **_metrics_path(config),
        **_log_paths(config),
        **_owner_paths(config),
        PATH: {"get": _op("This document", "operations",
                          {"200": _json({"type": "object"}, "OpenAPI 3.1 description of this broker.")},
                          (408, 503), op_id="openapi", security=[])},
    }


def _log_paths(config: Config) -> dict[str, Schema]:
    """The release log as a transparency log (kbs.server.tlog): public, or for admin/auditor tokens (`[log] read`)."""
    security: list[Schema] = ADMIN if config.log_read == "auditor" else []
    denied = (401,) if config.log_read == "auditor" else ()
    octets = {"description": "", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                     "format": "binary"}}}}
    hashes = {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}
    integer = {"type": "integer", "minimum": 0}

    def op(summary: str, ok: dict[str, Schema], errors: tuple[int, ...], op_id: str,
           params: list[Schema] | None = None, description: str = "") -> Schema:
        return _op(summary, "log", ok, (*errors, *denied, 408, 409, 503), op_id=op_id, security=security,
                   params=params, description=description or "409 when the stored tree was damaged behind the broker.")
    return {
        "/kbs/v0/log/checkpoint": {"get": op(
            "The newest signed checkpoint (C2SP tlog-checkpoint in a signed note)",
            {"200": _text("origin, tree size, base64 root hash; a blank line; the log's Ed25519 signature.")}, (),
            "logCheckpoint")},
        "/kbs/v0/log/key": {"get": op("The log's verifier key (signed-note vkey form)",
                                      {"200": _text("<name>+<key id>+<base64 key>")}, (), "logKey")},
        "/kbs/v0/log/tile/{path}": {"get": op(
            "A tile or an entry bundle (C2SP tlog-tiles: <L>/<N>[.p/<W>] or entries/<N>[.p/<W>])",
            {"200": {**octets, "description": "Hashes (32 bytes each) or uint16-length-prefixed entries."}}, (404,),
            "logTile", params=[{"name": "path", "in": "path", "required": True,
                                "schema": {"type": "string", "maxLength": 64}}],
            description="404 for a malformed path or a tile beyond the newest checkpoint.")},
        "/kbs/v0/log/entries/{index}": {"get": op(
            "One entry, as the tree holds it (RFC 8785 JSON)", {"200": _json({"type": "object"}, "The entry.")},
            (404,), "logEntry", params=[{"name": "index", "in": "path", "required": True,
                                         "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}}])},
        "/kbs/v0/log/proof/inclusion": {"get": op(
            "RFC 9162 inclusion proof of an entry in the tree of a checkpointed size",
            {"200": _json(_obj({"index": integer, "size": integer, "proof": hashes}), "The audit path.")},
            (400, 404), "logInclusion", params=[_query("index", integer, "The entry (0-based)."),
                                                 _query("size", integer, "A tree size a checkpoint has.")])},
        "/kbs/v0/log/proof/consistency": {"get": op(
            "RFC 9162 consistency proof between two tree sizes",
            {"200": _json(_obj({"old": integer, "new": integer, "proof": hashes}), "The proof.")},
            (400, 404), "logConsistency", params=[_query("old", integer, "The earlier size."),
                                                   _query("new", integer, "The later size.")])},
        "/kbs/v0/log/checkpoints": {"get": op(
            "Every signed checkpoint kept, oldest first",
            {"200": _json({"type": "array", "items": _obj({"size": integer, "at": {"type": "number"},
                                                            "note": {"type": "string"}})}, "Checkpoints.")},
            (400,), "logCheckpoints", params=[_query("after", integer, "Sizes above this."),
                                               _query("limit", integer, "At most this many (1..1000).")])},
        "/kbs/v0/admin/log/checkpoint": {"post": _admin_op(
            "Sign a checkpoint of the tree as it stands", {"200": _text("The signed checkpoint.")}, write=False,
            op_id="signLogCheckpoint", description="409 when the stored tree does not extend the newest checkpoint.")},
    }


def _owner_paths(config: Config) -> dict[str, Schema]:
    """Owners, owned keys and quorum-approved proposals (kbs.server.owners; issue 15)."""
    cap = config.max_body_bytes
    text, integer, when = {"type": "string"}, {"type": "integer"}, {"type": "string", "format": "date-time"}
    names = {"type": "array", "items": {"type": "string", "pattern": f"^{owners.NAME.pattern}$"}}
    owner = _obj({"name": text, "public_key": text, "created_by": text, "created_at": when})
    owned = _obj({"path": text, "owners": names, "threshold": integer, "kind": text, "contributed": {"type": "boolean"},
                  "created_by": text, "created_at": when,
                  "state": {"type": ["object", "null"], "description": "What a proposal's `replaces` hashes."},
                  "state_hash": _nullable("string")}, closed=False)
    document_ = _obj({"kbs_proposal": {"const": owners.PROPOSAL_VERSION}, "resource": text,
                      "replaces": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                      "change": {"type": "object", "properties": {"kind": {"enum": list(owners.CHANGE_KINDS)}},
                                 "required": ["kind"], "description": "policy {text}, bind {policy_id}, refs {name, "
                                 "values}, value {generate}, owners {owners, threshold} or delete {}."},
                      "expires": when, "proposed_by": text, "nonce": {"type": "string", "pattern": "^[0-9a-f]{32}$"}})
    approval = _obj({"owner": text, "signature": {"type": "string", "maxLength": 128, "description": "base64 "
                     f"Ed25519 signature over \"{owners.APPROVAL_PREFIX}\" + the proposal's id."}})
    proposal = _obj({"id": text, "proposal": {"type": "object"}, "status": {"enum": list(owners.STATUSES)},
                     "resource": text, "change": text, "created_by": text, "created_at": when, "expires_at": when,
                     "closed_at": {"type": ["string", "null"]},
                     "approvals": {"type": "array", "items": _obj({"owner": text, "at": when})},
                     "threshold": _nullable("integer"), "result": {"enum": ["counted", "again", "applied"]},
                     "counted": integer},
                    ["id", "proposal", "status", "resource", "approvals"])
    proposal_id = [{"name": "proposal_id", "in": "path", "required": True, "description": "SHA-256 hex of the "
                    "proposal's RFC 8785 bytes.", "schema": {"type": "string", "pattern": ANY_SEGMENT}}]
    owner_name = [_name("name", "The owner's name.")]
    public = (400, 401, 403, 404, 409, 413, *_GUEST)
    jwe_object = {"type": "object", "additionalProperties": {"type": "string"},
                  "description": "A flattened JWE (protected, encrypted_key, iv, ciphertext, tag)."}
    return {
        "/kbs/v0/admin/owners": {
            "post": _admin_op("Register an owner (name and Ed25519 public key; never replaced)",
                              {"200": _json(owner, "The owner.")}, write=True, op_id="addOwner",
                              body=_json_body(_obj({"name": text, "public_key": text}), cap)),
            "get": _admin_op("Every registered owner", {"200": _json({"type": "array", "items": owner}, "Owners.")},
                             write=False, op_id="listOwners")},
        "/kbs/v0/admin/owners/{name}": {"delete": _admin_op(
            "Remove an owner (refused while an owned key names it)",
            {"200": _json(_obj({"deleted": text}), "Removed.")}, write=True, op_id="removeOwner", extra=(404,),
            params=owner_name)},
        "/kbs/v0/admin/keys/{repo}/{type}/{tag}/owned": {"post": _admin_op(
            "Create an owned key: its owners, threshold and policy; a generated (or imported) value",
            {"200": _json(owned, "The owned key and its state.")}, write=True, op_id="createOwnedKey", extra=(404,),
            params=RESOURCE_PARAMS,
            body=_json_body(_obj({"owners": names, "threshold": {"type": "integer", "minimum": 1},
                                  "policy_id": text, "generate": {"type": "integer", "minimum": owners.MIN_GENERATE,
                                                                  "maximum": owners.MAX_GENERATE},
                                  "value": {"type": "string", "contentEncoding": "base64"},
                                  "contributed": {"const": True, "description": "No value: derived from every "
                                                  "owner's share (POST .../contributions)."},
                                  "deposit": {"const": True, "description": "No value: an empty slot an attested "
                                              "TEE fills once (PUT /kbs/v0/deposit/...)."}},
                                 ["owners", "threshold", "policy_id"]), cap),
            description="From then on the operator cannot change the key, its binding, its policy's text or the "
                        "reference sets the policy uses (403, logged): only an approved proposal does.")},
        "/kbs/v0/admin/proposals": {"get": _admin_op(
            "Proposals, oldest first", {"200": _json({"type": "array", "items": proposal}, "Proposals.")},
            write=False, op_id="listProposals",
            params=[_query("resource", {"type": "string", "maxLength": 512}, "Only this key's."),
                    _query("status", {"enum": list(owners.STATUSES)}, "Only proposals in this state."),
                    _query("limit", {"type": "integer", "default": 100}, "At most this many (clamped to 1..1000).")])},
        "/kbs/v0/owners/keys/{repo}/{type}/{tag}": {"get": _op(
            "An owned key's owners, threshold and state (never its value)", "owners",
            {"200": _json(owned, "The owned key.")}, (404, *_GUEST), op_id="getOwnedKey", security=[],
            params=RESOURCE_PARAMS)},
        "/kbs/v0/owners/proposals": {"post": _op(
            "Propose a change to an owned key", "owners", {"200": _json(proposal, "The proposal as stored.")},
            public, op_id="createProposal", security=[*ADMIN, {}],
            body=_json_body(_obj({"proposal": document_, "approval": approval}, ["proposal"]), cap),
            description="With an admin token `proposed_by` is \"operator\"; without one, the approval of the owner "
                        "named in `proposed_by` authenticates it (and counts).")},
        "/kbs/v0/owners/proposals/{proposal_id}": {"get": _op(
            "A proposal, its status and approvals", "owners", {"200": _json(proposal, "The proposal.")},
            (404, *_GUEST), op_id="getProposal", security=[], params=proposal_id)},
        "/kbs/v0/owners/share-key": {"get": _op(
            "The broker's share key (public JWK): owners' shares and TEEs' deposits are encrypted to it", "owners",
            {"200": _json(_obj({}, closed=False), "A P-256 public JWK (ECDH-ES+A256KW, A256GCM).")}, _GUEST,
            op_id="getShareKey", security=[])},
        "/kbs/v0/owners/keys/{repo}/{type}/{tag}/contributions": {"post": _op(
            "Contribute an owner's share (and optionally its own release policy) to a contributed key, once",
            "owners", {"200": _json(_obj({"path": text, "owner": text, "policy_hash": _nullable("string"),
                                          "contributed": integer, "owners": integer,
                                          "complete": {"type": "boolean"}}), "Stored.")},
            public, op_id="contribute", security=[], params=RESOURCE_PARAMS,
            body=_json_body(_obj({"owner": text, "share": jwe_object, "policy": text,
                                  "signature": {"type": "string", "maxLength": 128}},
                                 ["owner", "share", "signature"]), cap),
            description="`share`: 32..64 random bytes as a JWE to GET /kbs/v0/owners/share-key; `signature`: base64 "
                        "Ed25519 over \"kbs-contribution:\" + path + \":\" + SHA-256 hex of the JWE's members "
                        "(name=value, sorted, joined by |) + \":\" + SHA-256 hex of the policy (or of \"\"). 401: the "
                        "signature does not verify; 403: not an owner; 409: not a contributed key, or the owner "
                        "contributed already (a contribution is final). Each is logged.")},
        "/kbs/v0/deposit/{repo}/{type}/{tag}": {"put": _op(
            "Deposit a value into an owned slot, once, from an attested TEE its policy admits", "protocol",
            {"200": _json(_obj({"path": text, "version": integer, "deposited_at": when}), "Deposited.")},
            (400, 401, 404, 409, 413, *_GUEST), op_id="deposit",
            security=[{"attestationToken": []}, {"sessionCookie": []}], params=RESOURCE_PARAMS,
            body=_json_body(_obj({"value": jwe_object}, ["value"]), contributions.MAX_DEPOSIT_BODY),
            description="The value (1..65536 bytes) as a JWE to GET /kbs/v0/owners/share-key, so neither the "
                        "transport nor the operator sees it. 401: no valid token, or the slot's policy denies the "
                        "TEE; 404: not a deposit slot; 409: the slot holds a value already. Each is logged.")},
        "/kbs/v0/owners/proposals/{proposal_id}/approvals": {"post": _op(
            "Approve a proposal with an owner's signature", "owners",
            {"200": _json(proposal, "Counted (or applied, at the threshold).")}, public, op_id="approveProposal",
            security=[], params=proposal_id, body=_json_body(approval, cap),
            description="401: the signature does not verify; 403: not an owner of the key; 409: the proposal is "
                        "stale (the key's state changed), expired or closed. Each is logged.")},
    }


def _metrics_path(config: Config) -> dict[str, Schema]:
    """/metrics on the main listener as `[metrics]` has it (kbs.server.metrics_access): behind a bearer token,
    open, or refused (403); absent when it has a listener of its own."""
    if config.metrics_host_port is not None:
        return {}
    ok = {"200": _text("Prometheus text exposition format.")}
    if config.metrics_token_file is not None:
        responses = {**ok, "401": _text("No or a wrong token.", {"WWW-Authenticate": {
            "description": "The scheme and realm.", "schema": {"type": "string"}}})}
        security: list[Schema] = [{"metricsToken": []}]
    elif config.metrics_open:
        responses, security = ok, []
    else:
        responses, security = {"403": _text("Not public here: the text names the setting to add.")}, []
    return {"/metrics": {"get": _op("Prometheus metrics", "operations", responses, (408,), op_id="metrics",
                                    security=security)}}


def document(config: Config) -> Schema:
    """The OpenAPI 3.1 document for a broker serving with `config`."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "kbs: key broker for confidential computing", "version": __version__,
                 "description": __doc__.split("\n\n")[0] + "\n\nGuests speak Trustee's KBS protocol "
                 f"{protocol.PROTOCOL_VERSION}; errors are Trustee's `{{\"type\": \"{ERROR_TYPE}<Variant>\", "
                 "\"detail\": ...}`. HEAD is answered wherever GET is."},
        "servers": [{"url": "/"}],
        "tags": [{"name": "protocol", "description": "What guests call (KBS protocol)."},
                 {"name": "admin", "description": "Signed-token admin API (Trustee's endpoints and the broker's "
                                                  "own under /kbs/v0/admin/)."},
                 {"name": "log", "description": "The release log as a transparency log (C2SP tlog-tiles)."},
                 {"name": "owners", "description": "Owned keys and the proposals their owners approve (signed)."},
                 {"name": "operations", "description": "Probes, metrics and this document."}],
        "security": ADMIN,
        "paths": _paths(config),
        "components": {"schemas": _schemas(config), "securitySchemes": _security(config)},
    }


OPENAPI: web.AppKey[bytes] = web.AppKey("openapi", bytes)


def add_route(app: web.Application, config: Config) -> None:
    """Serve the document at GET /openapi.json, built once from the app's configuration."""
    app[OPENAPI] = json.dumps(document(config)).encode()
    app.router.add_get(PATH, endpoint)


async def endpoint(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
