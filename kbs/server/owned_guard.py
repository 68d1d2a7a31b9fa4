"""What the operator may no longer do once a key is owned (issue 15): change the key, its binding, the text of
the policy it is bound to, or the reference sets that policy uses.  Checked for every admin write before its
handler runs; a refusal is a 403 (reason `owned`) and a release-log entry (decision `owner`, reason `refused`).

Only the owners change these, by a quorum-approved proposal (kbs.server.owners).  The check reads the store
before the change is made, not in its transaction: an owned key created while the same operator changes its
policy could miss it, which is why every proposal names the state it replaces (the owners see the state they
sign over).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging

from aiohttp import web

from kbs.audit.chain import RELEASES
from kbs.errors import KbsError
from kbs.server.decisions import DEFAULT_POLICY
from kbs.server.errors import ProtocolError
from kbs.server.protocol import SEGMENT
from kbs.server.state import AdminIdentity, BrokerState
from kbs.store import owners as owner_rows
from kbs.store.base import ReleaseRecord, StoreError

log = logging.getLogger("kbs.admin")

# Admin handlers by what they change: a key (its path), a policy (its id), reference sets (their names).
KEY_ACTIONS = frozenset({"set_resource", "delete_resource", "generate_key", "rotate_key", "disable_key",
                         "enable_key", "bind_key_policy"})
POLICY_ACTIONS = frozenset({"put_policy", "make_immutable", "delete_policy", "set_resource_policy"})
REF_ACTIONS = frozenset({"put_refs", "edit_refs", "delete_refs", "set_reference_value"})


async def check(request: web.Request, st: BrokerState, who: AdminIdentity, action: str) -> None:
    """ProtocolError 403, logged, when `action` on this request would change what an owned key's owners hold."""
    if action not in KEY_ACTIONS | POLICY_ACTIONS | REF_ACTIONS:
        return
    names = await _ref_names(request) if action in REF_ACTIONS else ()
    found = await st.run(_owned_target, st, request, action, names)
    if found is None:
        return
    path, what = found
    await log_owner_event(st, "refused", path, who.name, f"{action} refused: {what}")
    log.warning("admin change refused: an owned key", extra={"admin": who.name, "action": action, "path": path})
    raise ProtocolError("OwnedKey", f"{what}: only a proposal its owners approve changes it (kbs proposal create)",
                        status=403, reason="owned")


async def _ref_names(request: web.Request) -> tuple[str, ...]:
    if "name" in request.match_info:
        return (request.match_info["name"],)
    try:  # an RVPS message names its sets in a base64 payload; a malformed one is the handler's 400
        body = await request.json()
        document = json.loads(base64.b64decode(body["payload"])) if isinstance(body, dict) else None
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        return ()
    return tuple(str(k) for k in document) if isinstance(document, dict) else ()


def _owned_target(st: BrokerState, request: web.Request, action: str, names: tuple[str, ...]) -> tuple[str, str] | None:
    """(the owned key, what the change would touch), or None when it touches no owned key."""
    owned = st.store.owned_keys()
    if not owned:
        return None
    if action in KEY_ACTIONS:
        parts = [request.match_info.get(k, "") for k in ("repo", "type", "tag")]
        path = "/".join(parts)
        if all(SEGMENT.fullmatch(p) for p in parts) and any(k.path == path for k in owned):
            return path, f"{path} is an owned key"
        return None
    bound = {}
    for key in owned:
        policy_id = owner_rows.bound_policy(st.store.resource_versions(key.path))
        if policy_id is not None:
            bound[policy_id] = key.path
    if action in POLICY_ACTIONS:
        policy_id = DEFAULT_POLICY if action == "set_resource_policy" else request.match_info.get("policy_id", "")
        if policy_id in bound:
            return bound[policy_id], f"policy {policy_id!r} governs the owned key {bound[policy_id]}"
        return None
    for policy_id, path in bound.items():
        try:
            used = st.registry.referenced_sets(st.registry.current(policy_id).text)
        except KbsError:
            continue
        for name in names:
            if name in used:
                return path, (f"reference set {name!r} is used by policy {policy_id!r}, which governs the owned key "
                              f"{path}")
    for key in owned:  # a contributed key's owners' own policies (issue 15, item 3) decide its release too
        if not key.contributed:
            continue
        for contribution, _ in st.store.owner_contributions(key.path):
            used = st.registry.referenced_sets(contribution.policy) if contribution.policy else frozenset()
            for name in names:
                if name in used:
                    return key.path, (f"reference set {name!r} is used by {contribution.owner}'s own policy for "
                                      f"the contributed key {key.path}")
    return None


async def log_owner_event(st: BrokerState, reason: str, resource: str, actor: str, detail: str) -> None:
    """An owner-side event (a refusal, a proposal's fate) in the release log, durable before the answer: if it cannot
    be written, the request fails with 503 and says so."""
    record = ReleaseRecord(at=st.clock(), decision="owner", reason=reason, resource=resource[:512], version=None,
                           session_id=None, tee=None, policy_id=None, policy_hash=None, attestation_id=None,
                           actor=actor[:64], detail=detail[:2000])
    try:
        await st.run(st.store.append_log, RELEASES, record)
    except (StoreError, OSError) as exc:
        st.metrics.audit_failures.inc()
        raise ProtocolError("PluginInternalError", "refused, and the release log could not record the refusal",
                            status=503, reason="log_unavailable") from exc
