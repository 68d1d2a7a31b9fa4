"""Owners, owned keys and proposals in the store, written once over `kbs.store.kek_state.Sql` for every backend.

Each function runs inside the caller's transaction (SQLite: under its writer lock; PostgreSQL: under the admin
advisory lock, the lock every admin change takes), so an approval reads the proposal, the key's state and the
approvals, and applies the change, with nothing moving underneath: of two replicas taking the k-th approval at
once, exactly one applies it and the other finds the proposal closed.  The release-log entries of a proposal,
an approval, its application or its refusal are appended in the same transaction (`Append`).

Rows carry MACs under the KEK's row key like every security-relevant row: an owner's key or an owned key's owner
set edited in the database is refused when read.  Approvals carry no MAC: each one's signature is verified again,
against the owner's MAC'd key, every time approvals are counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from kbs import owners as rules
from kbs.owners import Approval, Contribution, Outcome, OwnedKey, Owner, OwnerError, Proposal, Referenced
from kbs.policy.lifecycle import BindingLocked, PolicyVersion, content_hash
from kbs.policy.loader import dialect_of
from kbs.policy.refvalues import ReferenceSet, ReferenceValues, ReferenceValuesInvalid
from kbs.store.base import ReleaseRecord, ResourceVersion
from kbs.store.integrity import RowAuthenticator, StoreIntegrityError, digest
from kbs.store.kek_state import Sql, pages
from kbs.store.rows import Row, Rows, check_binding_change, dt, ts

# The tables' MAC'd columns (every column but the MAC, bulky ones by digest) and their keys, for reads and KEK
# rotation alike.
MACCED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "owners": (("name",), ("name", "public_key", "created_by", "created_at")),
    "owned_resources": (("path",), ("path", "owners", "threshold", "kind", "contributed", "created_by",
                                    "created_at")),
    "proposals": (("id",), ("id", "resource", "document", "status", "created_by", "created_at", "expires_at",
                            "closed_at")),
    "owner_contributions": (("path", "owner"), ("path", "owner", "policy", "signature", "created_at")),
}
_DIGESTED = {"document", "policy"}

# Appends a release-log entry in the caller's transaction.
Append = Callable[[ReleaseRecord], ReleaseRecord]


def _macced(table: str, r: Row | dict[str, Any]) -> list[Any]:
    return [digest(r[c]) if c in _DIGESTED and r[c] is not None else r[c] for c in MACCED[table][1]]


def mac(auth: RowAuthenticator, table: str, r: Row | dict[str, Any]) -> str:
    return auth.mac(table, *_macced(table, r))


def checked(auth: RowAuthenticator, table: str, r: Row) -> Row:
    key = "/".join(str(r[c]) for c in MACCED[table][0])
    auth.check(r["mac"], f"{table} row {key}", table, *_macced(table, r))
    return r


def _insert(sql: Sql, auth: RowAuthenticator, table: str, values: dict[str, Any]) -> None:
    columns = [*MACCED[table][1], "mac"]
    sql.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                (*(values[c] for c in MACCED[table][1]), mac(auth, table, values)))


def rotate(sql: Sql, old: RowAuthenticator, new: RowAuthenticator) -> dict[str, int]:
    """KEK rotation (kbs.store.kek_state): every owner, owned-key and proposal row checked under the old key and
    re-MAC'd under the new one."""
    counts = {}
    for table, (key, _) in MACCED.items():
        n = 0
        for page in pages(sql, table, key):
            sql.executemany(f"UPDATE {table} SET mac = ? WHERE {' AND '.join(f'{k} = ?' for k in key)}",
                            [(mac(new, table, checked(old, table, r)), *(r[k] for k in key)) for r in page])
            n += len(page)
        counts[table] = n
    return counts


def read_back(sql: Sql, new: RowAuthenticator) -> None:
    for table, (key, _) in MACCED.items():
        for page in pages(sql, table, key):
            for r in page:
                checked(new, table, r)


# -- rows to records --------------------------------------------------------------------------------------------

def owner(auth: RowAuthenticator, r: Row) -> Owner:
    checked(auth, "owners", r)
    return Owner(r["name"], r["public_key"], r["created_by"], dt(r["created_at"]))


def owned_key(auth: RowAuthenticator, r: Row) -> OwnedKey:
    checked(auth, "owned_resources", r)
    return OwnedKey(r["path"], tuple(json.loads(r["owners"])), int(r["threshold"]), r["kind"],
                    bool(r["contributed"]), r["created_by"], dt(r["created_at"]))


def proposal(auth: RowAuthenticator, r: Row) -> Proposal:
    checked(auth, "proposals", r)
    return Proposal(r["id"], r["resource"], json.loads(r["document"]), r["status"], r["created_by"],
                    dt(r["created_at"]), dt(r["expires_at"]), dt(r["closed_at"]) if r["closed_at"] is not None
                    else None)


def contribution(auth: RowAuthenticator, r: Row) -> Contribution:
    checked(auth, "owner_contributions", r)
    return Contribution(r["path"], r["owner"], r["policy"], r["signature"], dt(r["created_at"]))


def _approval(r: Row) -> Approval:
    return Approval(r["proposal_id"], r["owner"], r["signature"], dt(r["at"]))


# -- reads (also used inside transactions) ---------------------------------------------------------------------

def get_owner(sql: Sql, auth: RowAuthenticator, name: str) -> Owner | None:
    rows = sql.rows("SELECT * FROM owners WHERE name = ?", (name,))
    return owner(auth, rows[0]) if rows else None


def list_owners(sql: Sql, auth: RowAuthenticator) -> list[Owner]:
    return [owner(auth, r) for r in sql.rows("SELECT * FROM owners ORDER BY name")]


def get_owned(sql: Sql, auth: RowAuthenticator, path: str) -> OwnedKey | None:
    rows = sql.rows("SELECT * FROM owned_resources WHERE path = ?", (path,))
    return owned_key(auth, rows[0]) if rows else None


def list_owned(sql: Sql, auth: RowAuthenticator) -> list[OwnedKey]:
    return [owned_key(auth, r) for r in sql.rows("SELECT * FROM owned_resources ORDER BY path")]


def get_proposal(sql: Sql, auth: RowAuthenticator, pid: str) -> tuple[Proposal, list[Approval]] | None:
    rows = sql.rows("SELECT * FROM proposals WHERE id = ?", (pid,))
    if not rows:
        return None
    approvals = [_approval(r) for r in sql.rows("SELECT * FROM proposal_approvals WHERE proposal_id = ? ORDER BY at, "
                                                "owner", (pid,))]
    return proposal(auth, rows[0]), approvals


def contributions(sql: Sql, auth: RowAuthenticator, path: str) -> list[Contribution]:
    return [contribution(auth, r) for r in sql.rows("SELECT * FROM owner_contributions WHERE path = ? ORDER BY owner",
                                                    (path,))]


def sealed_shares(sql: Sql, auth: RowAuthenticator, path: str) -> list[tuple[Contribution, bytes]]:
    """Each contribution with its share as sealed under the KEK (opened only to derive a release)."""
    out = []
    for c in contributions(sql, auth, path):
        found = sql.rows("SELECT value FROM secrets WHERE name = ?", (rules.share_secret(path, c.owner),))
        if not found:
            raise StoreIntegrityError(f"{path}: {c.owner}'s contribution has no share: removed outside the broker")
        out.append((c, bytes(found[0]["value"])))
    return out


def list_proposals(sql: Sql, auth: RowAuthenticator, resource: str | None, status: str | None,
                   limit: int) -> list[Proposal]:
    where, args = "", []
    for column, value in (("resource", resource), ("status", status)):
        if value is not None:
            where += f" AND {column} = ?"
            args.append(value)
    rows = sql.rows(f"SELECT * FROM proposals WHERE 1=1{where} ORDER BY created_at, id LIMIT ?", (*args, limit))
    return [proposal(auth, r) for r in rows]


def _resources(sql: Sql, rows: Rows, path: str) -> list[ResourceVersion]:
    return [rows.resource(r) for r in sql.rows("SELECT * FROM resources WHERE path = ? ORDER BY version", (path,))]


def _policy_versions(sql: Sql, rows: Rows, policy_id: str) -> list[PolicyVersion]:
    return [rows.policy_version(r) for r in sql.rows("SELECT * FROM policies WHERE policy_id = ? ORDER BY version",
                                                     (policy_id,))]


def _ref_digests(sql: Sql, rows: Rows, names: frozenset[str]) -> dict[str, str]:
    out = {}
    for name in sorted(names):
        found = sql.rows("SELECT name, body, mac FROM reference_sets WHERE name = ?", (name,))
        ref = rows.reference_values(found).get(name)
        if ref is not None:
            out[name] = rules.digest(ref.to_json())
    return out


def bound_policy(versions: Sequence[ResourceVersion]) -> str | None:
    """The policy a key's releases are decided by (kbs.server.decisions): the active version's, else the newest's."""
    active = [v for v in versions if v.state == "active"]
    return (active[-1] if active else versions[-1]).policy_id if versions else None


def state(sql: Sql, rows: Rows, path: str, referenced: Referenced) -> dict[str, Any] | None:
    """The owned key's state document (kbs.owners.state_document); None if `path` is not an owned key."""
    key = get_owned(sql, rows.auth, path)
    if key is None:
        return None
    versions = _resources(sql, rows, path)
    active = [v.version for v in versions if v.state == "active"]
    policy_id = bound_policy(versions) or ""
    policies = _policy_versions(sql, rows, policy_id)
    current = policies[-1] if policies else None
    names = referenced(current.text) if current else frozenset()
    if key.contributed:  # the owners' own policies decide too: the sets they use are part of the state
        for c in contributions(sql, rows.auth, path):
            names |= referenced(c.policy) if c.policy is not None else frozenset()
    shares = {c.owner: c.policy_hash for c in contributions(sql, rows.auth, path)} if key.contributed else None
    return rules.state_document(key, active[-1] if active else None, policy_id,
                                current.content_hash if current else None, _ref_digests(sql, rows, names), shares)


def owned_policies(sql: Sql, rows: Rows, *, besides: str | None = None) -> dict[str, str]:
    """Policy id -> the owned key bound to it, for every owned key (but `besides`)."""
    out = {}
    for key in list_owned(sql, rows.auth):
        policy_id = bound_policy(_resources(sql, rows, key.path))
        if key.path != besides and policy_id is not None:
            out[policy_id] = key.path
    return out


def owned_sets(sql: Sql, rows: Rows, referenced: Referenced, *, besides: str | None = None) -> dict[str, str]:
    """Reference set name -> an owned key whose policy uses it (but `besides`)."""
    out: dict[str, str] = {}
    for policy_id, path in owned_policies(sql, rows, besides=besides).items():
        versions = _policy_versions(sql, rows, policy_id)
        if versions:
            for name in referenced(versions[-1].text):
                out.setdefault(name, path)
    return out


# -- writes -----------------------------------------------------------------------------------------------------

def add_owner(sql: Sql, auth: RowAuthenticator, new: Owner) -> None:
    if get_owner(sql, auth, new.name) is not None:
        raise OwnerError(f"owner {new.name!r} exists; an owner's key is never replaced (register another name)",
                         check="owner.exists")
    same = [o.name for o in list_owners(sql, auth) if o.public_key.strip() == new.public_key.strip()]
    if same:
        raise OwnerError(f"owner {same[0]!r} has this public key already", check="owner.exists")
    _insert(sql, auth, "owners", {"name": new.name, "public_key": new.public_key, "created_by": new.created_by,
                                  "created_at": ts(new.created_at)})


def remove_owner(sql: Sql, auth: RowAuthenticator, name: str) -> bool:
    holding = [k.path for k in list_owned(sql, auth) if name in k.owners]
    if holding:
        raise OwnerError(f"owner {name!r} owns {', '.join(holding[:5])}: change those keys' owners by proposal first",
                         check="owner.in_use")
    if not sql.rows("SELECT 1 FROM owners WHERE name = ?", (name,)):
        return False
    sql.execute("DELETE FROM owners WHERE name = ?", (name,))
    return True


def _owned_values(key: OwnedKey) -> dict[str, Any]:
    return {"path": key.path, "owners": json.dumps(list(key.owners)), "threshold": key.threshold, "kind": key.kind,
            "contributed": int(key.contributed), "created_by": key.created_by, "created_at": ts(key.created_at)}


def _check_owners_registered(sql: Sql, auth: RowAuthenticator, names: Sequence[str]) -> None:
    missing = [n for n in names if get_owner(sql, auth, n) is None]
    if missing:
        raise OwnerError(f"no registered owner {', '.join(map(repr, missing))} (kbs owner add)", check="owner.unknown")


def create_owned(sql: Sql, rows: Rows, key: OwnedKey, sealed: bytes, policy_id: str,
                 referenced: Referenced) -> int:
    """A new owned key: its first version and its owners, in one transaction.  The path must be new, its
    owners registered, its policy one no other owned key is bound to."""
    if sql.rows("SELECT 1 FROM resources WHERE path = ? LIMIT 1", (key.path,)):
        raise OwnerError(f"{key.path} exists: an owned key is created new (its earlier versions would stay "
                         "outside its owners' hands)", check="owner.exists")
    _check_owners_registered(sql, rows.auth, key.owners)
    _check_policy_free(sql, rows, policy_id, key.path, referenced)
    at = ts(key.created_at)
    # An empty slot (contributed, deposit) keeps its binding in a version with no value that is never released.
    first = rules.PENDING if key.kind in rules.EMPTY_KINDS else "active"
    sql.execute("INSERT INTO resources VALUES (?,?,?,?,?,?,?,?)",
                (key.path, 1, first, sealed, policy_id, key.created_by, at,
                 rows.resource_mac(key.path, 1, first, sealed, policy_id, key.created_by, at)))
    _insert(sql, rows.auth, "owned_resources", _owned_values(key))
    return 1


def _check_policy_free(sql: Sql, rows: Rows, policy_id: str, path: str, referenced: Referenced) -> None:
    versions = _policy_versions(sql, rows, policy_id)
    if not versions:
        raise OwnerError(f"no policy {policy_id!r}", check="policy.not_found")
    other = owned_policies(sql, rows, besides=path).get(policy_id)
    if other is not None:
        raise OwnerError(f"policy {policy_id!r} governs the owned key {other}: each owned key has a policy of its "
                         "own, so one key's owners never change another's conditions", check="owner.policy_shared")


def add_proposal(sql: Sql, rows: Rows, append: Append, new: Proposal, referenced: Referenced, actor: str) -> None:
    """Store a proposal whose `replaces` is the key's current state (OwnerError proposal.stale otherwise)."""
    current = state(sql, rows, new.resource, referenced)
    if current is None:
        raise OwnerError(f"{new.resource} is not an owned key", check="owner.not_owned")
    if rules.digest(current) != new.document["replaces"]:
        raise OwnerError("the proposal's replaces is not the key's current state: get the state again "
                         "(kbs proposal create does)", check="proposal.stale")
    _check_change(sql, rows, new, referenced)
    if sql.rows("SELECT 1 FROM proposals WHERE id = ?", (new.id,)):
        raise OwnerError(f"proposal {new.id} exists", check="proposal.exists")
    _insert(sql, rows.auth, "proposals", _proposal_values(new))
    append(_entry(new, "proposal", actor, new.created_at))


def _proposal_values(p: Proposal) -> dict[str, Any]:
    return {"id": p.id, "resource": p.resource, "document": json.dumps(p.document, sort_keys=True),
            "status": p.status, "created_by": p.created_by, "created_at": ts(p.created_at),
            "expires_at": ts(p.expires_at), "closed_at": ts(p.closed_at) if p.closed_at is not None else None}


def _entry(p: Proposal, reason: str, actor: str, at: datetime, note: str = "") -> ReleaseRecord:
    """A release-log entry about a proposal: its id and change kind, never a value (a policy's text is not
    secret, but the entry names its hash only, as other entries do)."""
    detail = f"proposal {p.id} change {p.change['kind']}" + (f": {note}" if note else "")
    return ReleaseRecord(at=at, decision="owner", reason=reason, resource=p.resource, version=None, session_id=None,
                         tee=None, policy_id=None, policy_hash=None, attestation_id=None, actor=actor,
                         detail=detail[:2000])


def _close(sql: Sql, auth: RowAuthenticator, p: Proposal, status: str, at: datetime) -> Proposal:
    closed = replace(p, status=status, closed_at=at)
    values = _proposal_values(closed)
    sql.execute("UPDATE proposals SET status = ?, closed_at = ?, mac = ? WHERE id = ?",
                (status, values["closed_at"], mac(auth, "proposals", values), p.id))
    return closed


def _counted(sql: Sql, auth: RowAuthenticator, key: OwnedKey, approvals: Sequence[Approval], pid: str) -> int:
    """Distinct owners of the key whose signature verifies under their registered key, checked now."""
    valid = set()
    for a in approvals:
        found = get_owner(sql, auth, a.owner) if a.owner in key.owners else None
        if found is not None and rules.signature_valid(rules.load_public_key(found.public_key), pid, a.signature):
            valid.add(a.owner)
    return len(valid)


def approve(sql: Sql, rows: Rows, append: Append, pid: str, approval: Approval, now: datetime,
            referenced: Referenced, sealed: bytes | None) -> Outcome:
    """Record one owner's approval (its signature was checked by the caller and is checked again when counted);
    apply the change when the k-th distinct owner approves and the key's state is still the one replaced.
    `sealed`: a value change's new value, sealed (made by the caller, used only if the change applies)."""
    found = get_proposal(sql, rows.auth, pid)
    if found is None:
        raise OwnerError(f"no proposal {pid}", check="proposal.not_found")
    p, approvals = found
    key = get_owned(sql, rows.auth, p.resource)
    threshold = key.threshold if key else 0

    def refused(result: str, status: str | None, note: str) -> Outcome:
        closed = _close(sql, rows.auth, p, status, now) if status else p
        append(_entry(p, result, approval.owner, now, note))
        return Outcome(result, closed, approvals, 0, threshold)

    if p.status != "open":
        return refused("closed", None, f"approval refused: the proposal is {p.status}")
    if now >= p.expires_at:
        return refused("expired", "expired", "approval refused: the proposal expired")
    current = state(sql, rows, p.resource, referenced)
    if key is None or current is None or rules.digest(current) != p.document["replaces"]:
        return refused("stale", "stale", "approval refused: the key's state changed since the proposal was made")
    if approval.owner not in key.owners:
        raise OwnerError(f"{approval.owner!r} is not an owner of {p.resource}", check="owner.not_owner")
    again = any(a.owner == approval.owner for a in approvals)
    if not again:
        sql.execute("INSERT INTO proposal_approvals (proposal_id, owner, signature, at) VALUES (?, ?, ?, ?)",
                    (pid, approval.owner, approval.signature, ts(now)))
        approvals = [*approvals, approval]
    counted = _counted(sql, rows.auth, key, approvals, pid)
    append(_entry(p, "approve", approval.owner, now, f"{counted} of {key.threshold}"
                  + ("; approved before, counted once" if again else "")))
    if counted < key.threshold:
        return Outcome("again" if again else "counted", p, approvals, counted, key.threshold)
    _check_change(sql, rows, p, referenced)
    applied_to = _apply(sql, rows, key, p, now, sealed)
    closed = _close(sql, rows.auth, p, "applied", now)
    append(_entry(p, "apply", approval.owner, now, f"approved by {rules.names(sorted({a.owner for a in approvals}))}"
                  + (f"; {applied_to}" if applied_to else "")))
    return Outcome("applied", closed, approvals, counted, key.threshold)


def _check_change(sql: Sql, rows: Rows, p: Proposal, referenced: Referenced) -> None:
    """The change's meaning against the store as it is (again at application: things move)."""
    change = p.change
    kind = change["kind"]
    key = get_owned(sql, rows.auth, p.resource)
    if key is not None and key.contributed and kind in ("value", "owners"):
        raise OwnerError(f"{p.resource} is derived from its owners' shares: a {kind} change would make another key "
                         "(create a new contributed key instead)", check="owner.contributed")
    versions = _resources(sql, rows, p.resource)
    bound = bound_policy(versions) or ""
    if kind == "bind":
        if change["policy_id"] == "default":
            raise OwnerError("an owned key is not bound to 'default', which the operator manages",
                             check="owner.policy_shared")
        _check_policy_free(sql, rows, change["policy_id"], p.resource, referenced)
        try:
            check_binding_change(p.resource, versions, change["policy_id"],
                                 lambda other: _policy_versions(sql, rows, other))
        except BindingLocked as exc:
            raise OwnerError(str(exc), check="policy.immutable") from exc
    if kind == "policy":
        current = _policy_versions(sql, rows, bound)
        if current and current[-1].immutable:
            raise OwnerError(f"policy {bound!r} is immutable: bind the key to another policy instead",
                             check="policy.immutable")
    if kind == "refs":
        current = _policy_versions(sql, rows, bound)
        used = referenced(current[-1].text) if current else frozenset()
        if change["name"] not in used:
            raise OwnerError(f"reference set {change['name']!r} is not used by the key's policy {bound!r}",
                             check="owner.not_owned")
        other = owned_sets(sql, rows, referenced, besides=p.resource).get(change["name"])
        if other is not None:
            raise OwnerError(f"reference set {change['name']!r} is also used by the owned key {other}: its owners "
                             "would see their conditions change", check="owner.policy_shared")
        try:
            ReferenceValues.from_json({change["name"]: {"values": change["values"]}})
        except ReferenceValuesInvalid as exc:
            raise OwnerError(str(exc), check="refvalues.invalid") from exc
    if kind == "owners":
        _check_owners_registered(sql, rows.auth, change["owners"])


def _apply(sql: Sql, rows: Rows, key: OwnedKey, p: Proposal, now: datetime, sealed: bytes | None) -> str:
    change, path, at = p.change, p.resource, ts(now)
    by = f"proposal {p.id[:16]}"
    versions = _resources(sql, rows, path)
    bound = bound_policy(versions) or ""
    kind = change["kind"]
    if kind == "policy":
        current = _policy_versions(sql, rows, bound)
        text = change["text"]
        version = PolicyVersion(bound, (current[-1].version if current else 0) + 1, dialect_of(text), text,
                                content_hash(text), by, now, False)
        sql.execute("INSERT INTO policies VALUES (?,?,?,?,?,?,?,?,?)",
                    (version.policy_id, version.version, version.dialect, version.text, version.content_hash,
                     version.created_by, at, 0, rows.policy_mac(version)))
        return f"policy {bound!r} version {version.version}"
    if kind == "bind":
        _rewrite(sql, rows, [replace(v, policy_id=change["policy_id"]) for v in versions])
        return f"bound to policy {change['policy_id']!r}"
    if kind == "refs":
        ref = ReferenceValues.from_json({change["name"]: {"values": change["values"]}}).get(change["name"])
        assert isinstance(ref, ReferenceSet)
        body = json.dumps(ref.to_json())
        sql.execute("INSERT INTO reference_sets VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET body = "
                    "EXCLUDED.body, mac = EXCLUDED.mac", (ref.name, body, rows.reference_set_mac(ref.name, body)))
        return f"reference set {ref.name!r} replaced"
    if kind == "value":
        if sealed is None:
            raise OwnerError("a value change needs its new value", check="owner.invalid")
        _rewrite(sql, rows, [replace(v, state="disabled") for v in versions if v.state == "active"])
        version_no = (versions[-1].version if versions else 0) + 1
        sql.execute("INSERT INTO resources VALUES (?,?,?,?,?,?,?,?)",
                    (path, version_no, "active", sealed, bound, by, at,
                     rows.resource_mac(path, version_no, "active", sealed, bound, by, at)))
        return f"version {version_no}"
    if kind == "owners":
        names, threshold = rules.check_owner_set(change["owners"], change["threshold"])
        updated = _owned_values(replace(key, owners=names, threshold=threshold))
        sql.execute("UPDATE owned_resources SET owners = ?, threshold = ?, mac = ? WHERE path = ?",
                    (updated["owners"], threshold, mac(rows.auth, "owned_resources", updated), path))
        return f"owners {rules.names(names)}, threshold {threshold}"
    sql.execute("DELETE FROM resources WHERE path = ?", (path,))  # delete
    sql.execute("DELETE FROM owned_resources WHERE path = ?", (path,))
    for c in contributions(sql, rows.auth, path):  # a contributed key's shares go with it
        sql.execute("DELETE FROM secrets WHERE name = ?", (rules.share_secret(path, c.owner),))
    sql.execute("DELETE FROM owner_contributions WHERE path = ?", (path,))
    return f"deleted ({len(versions)} versions)"


def _rewrite(sql: Sql, rows: Rows, versions: Sequence[ResourceVersion]) -> None:
    for v in versions:
        at = ts(v.created_at)
        sql.execute("UPDATE resources SET state = ?, policy_id = ?, mac = ? WHERE path = ? AND version = ?",
                    (v.state, v.policy_id, rows.resource_mac(v.path, v.version, v.state, v.sealed, v.policy_id,
                                                             v.created_by, at), v.path, v.version))


# -- contributed keys and deposits (issue 15, items 3 and 4) ---------------------------------------------------

def add_contribution(sql: Sql, rows: Rows, append: Append, new: Contribution, sealed_share: bytes,
                     entry: ReleaseRecord) -> tuple[int, int]:
    """One owner's share (sealed under the KEK with `share_secret` as context) and its own policy, once: a
    contribution is final (a replaced share would make another key, and a TEE may hold the first).  Returns
    (contributions now, owners)."""
    key = get_owned(sql, rows.auth, new.path)
    if key is None or not key.contributed:
        raise OwnerError(f"{new.path} is not a contributed key", check="owner.not_contributed")
    if new.owner not in key.owners:
        raise OwnerError(f"{new.owner!r} is not an owner of {new.path}", check="owner.not_owner")
    if sql.rows("SELECT 1 FROM owner_contributions WHERE path = ? AND owner = ?", (new.path, new.owner)):
        raise OwnerError(f"{new.owner} has contributed to {new.path} already: a contribution is final (the key "
                         "derived from it may have been released); to start over, delete the key by proposal and "
                         "create another", check="contribution.exists")
    sql.execute("DELETE FROM secrets WHERE name = ?", (rules.share_secret(new.path, new.owner),))  # a stale one
    sql.execute("INSERT INTO secrets (name, value) VALUES (?, ?)", (rules.share_secret(new.path, new.owner),
                                                                   sealed_share))
    _insert(sql, rows.auth, "owner_contributions", {"path": new.path, "owner": new.owner, "policy": new.policy,
                                                    "signature": new.signature,
                                                    "created_at": ts(new.created_at)})
    done = len(contributions(sql, rows.auth, new.path))
    append(replace(entry, detail=f"{entry.detail}; {done} of {len(key.owners)} owners contributed"[:2000]))
    return done, len(key.owners)


def deposit(sql: Sql, rows: Rows, append: Append, path: str, sealed: bytes, by: str, at: datetime,
            entry: ReleaseRecord) -> int:
    """Fill a deposit slot once: its pending version becomes active with the value (sealed under the KEK) and
    the entry is appended in the same transaction.  OwnerError deposit.exists when it holds a value already."""
    key = get_owned(sql, rows.auth, path)
    if key is None or key.kind != "deposit":
        raise OwnerError(f"{path} is not a deposit slot", check="deposit.not_slot")
    versions = _resources(sql, rows, path)
    pending = [v for v in versions if v.state == rules.PENDING]
    if not pending or len(pending) != len(versions):
        raise OwnerError(f"{path} holds a deposited value already: a slot is filled once", check="deposit.exists")
    slot = pending[0]
    when = ts(at)
    sql.execute("UPDATE resources SET state = ?, sealed = ?, created_by = ?, created_at = ?, mac = ? "
                "WHERE path = ? AND version = ?",
                ("active", sealed, by, when, rows.resource_mac(path, slot.version, "active", sealed, slot.policy_id,
                                                               by, when), path, slot.version))
    append(replace(entry, version=slot.version))
    return slot.version
