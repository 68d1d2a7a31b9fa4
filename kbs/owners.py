"""Owners, owned keys and quorum-approved proposals (issue 15): the documents and the rules, with no I/O.

An owner is a name and an Ed25519 public key, registered by an admin and never replaced.  An owned key has an
owner set and a threshold k; every change to its release conditions is a proposal, an RFC 8785 JSON document
naming the key, the change, and the hash of the state it replaces (`state_hash`), identified by the SHA-256 of
its canonical bytes.  An owner approves by signing "kbs-proposal-approval:" + id with its key; the broker applies
the change when k distinct owners' valid signatures are there and the key's state is still the one replaced.

Used by the broker (kbs.server.owners, kbs.store.owners) and by `kbs proposal sign` offline: the signed message
depends on the id alone, and the id on the document alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kbs import canonical
from kbs.errors import KbsError

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # fullmatch
OPERATOR = "operator"  # `proposed_by` of a proposal made with an admin token
MAX_OWNERS = 32
MAX_LIFETIME = timedelta(days=30)
APPROVAL_PREFIX = "kbs-proposal-approval:"
PROPOSAL_VERSION = 1
ID = re.compile(r"[0-9a-f]{64}")  # a proposal id: SHA-256 hex
# What a value change may generate (bytes), as the admin API's generate.
MIN_GENERATE, MAX_GENERATE = 16, 1024
# An owned key's kind: how its value came to be.  "contributed": derived from every owner's share (item 3);
# "deposit": an empty slot an attested TEE fills once (item 4).  Both start with no value (a version "pending").
KINDS = ("generated", "imported", "contributed", "deposit")
EMPTY_KINDS = ("contributed", "deposit")
PENDING = "pending"  # the state of the version that holds an empty slot's binding but no value
CHANGE_KINDS = ("policy", "bind", "refs", "value", "owners", "delete")
STATUSES = ("open", "applied", "stale", "expired")


class OwnerError(KbsError):
    """A proposal, approval or owner registration that breaks a rule (the message names which)."""

    check = "owner.invalid"


@dataclass(frozen=True)
class Owner:
    name: str
    public_key: str  # PEM (SubjectPublicKeyInfo)
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class OwnedKey:
    """An owned resource: who owns it, how many must approve a change, and how its value came to be."""

    path: str
    owners: tuple[str, ...]  # in the order given at creation (item 3 derives the value in this order)
    threshold: int
    kind: str  # KINDS
    contributed: bool  # item 3: the value is derived from the owners' contributions
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class Contribution:
    """An owner's contribution to a contributed key: its share (sealed under the KEK in the store's secrets, by
    `share_secret`) and, optionally, its own release policy; the signature over kbs.keys.shares'
    contribution_statement authenticated it."""

    path: str
    owner: str
    policy: str | None  # the owner's own release policy (text), checked as an upload is
    signature: str  # base64 Ed25519
    created_at: datetime

    @property
    def policy_hash(self) -> str | None:
        return hashlib.sha256(self.policy.encode()).hexdigest() if self.policy is not None else None


def share_secret(path: str, owner: str) -> str:
    """The name a contributed share is kept under in the store's secrets (sealed with it as context, so a share
    copied under another owner's or key's name does not open, and KEK rotation re-seals it like any secret)."""
    return f"contribution:{path}:{owner}"


@dataclass(frozen=True)
class Proposal:
    id: str
    resource: str
    document: dict[str, Any]
    status: str  # STATUSES
    created_by: str  # who submitted it: an admin's name or an owner's
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None = None

    @property
    def change(self) -> dict[str, Any]:
        change: dict[str, Any] = self.document["change"]
        return change


@dataclass(frozen=True)
class Approval:
    proposal_id: str
    owner: str
    signature: str  # base64
    at: datetime


@dataclass(frozen=True)
class Outcome:
    """What an approval did: `result` counted, again (the owner had approved: counted once), applied, or a
    refusal (stale, expired, closed); the approvals that count now, and the proposal as it stands."""

    result: str
    proposal: Proposal
    approvals: list[Approval]
    counted: int
    threshold: int


# (a policy's text) -> the reference sets it names (the registry parses each text once)
Referenced = Callable[[str], frozenset[str]]


def check_name(name: object, what: str = "owner name") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise OwnerError(f"{what} must be 1..64 characters of [A-Za-z0-9_.-], got {str(name)[:80]!r}")
    if name == OPERATOR:
        raise OwnerError(f"{what} {OPERATOR!r} is reserved (it names proposals made with an admin token)")
    return name


def load_public_key(pem: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise OwnerError("public_key is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise OwnerError("public_key is not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def check_owner_set(owners: object, threshold: object) -> tuple[tuple[str, ...], int]:
    """Distinct names, 1..MAX_OWNERS of them, and 1 <= threshold <= their number."""
    if not isinstance(owners, list) or not 1 <= len(owners) <= MAX_OWNERS:
        raise OwnerError(f"owners must be a list of 1..{MAX_OWNERS} owner names")
    names = tuple(check_name(o) for o in owners)
    if len(set(names)) != len(names):
        raise OwnerError("owners must be distinct")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= len(names):
        raise OwnerError(f"threshold must be 1..{len(names)} (the number of owners)")
    return names, threshold


# -- the state a proposal replaces ------------------------------------------------------------------------------

def state_document(key: OwnedKey, value_version: int | None, policy_id: str, policy_hash: str | None,
                   refs: Mapping[str, str], contributions: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """What a proposal's `replaces` names: everything that decides where the key goes.  A contributed key's
    state also names who contributed and the content hash of each one's own policy (None: none)."""
    out = {"path": key.path, "owners": list(key.owners), "threshold": key.threshold, "value_version": value_version,
           "policy_id": policy_id, "policy_hash": policy_hash, "refs": dict(sorted(refs.items()))}
    if key.contributed:
        out["contributions"] = dict(sorted((contributions or {}).items()))
    return out


def digest(document: Any) -> str:
    """SHA-256 hex of a JSON value's RFC 8785 bytes (a state's hash, a proposal's id, a reference set's digest)."""
    return hashlib.sha256(canonical.dumps(document)).hexdigest()


# -- proposals --------------------------------------------------------------------------------------------------

def new_proposal(resource: str, replaces: str, change: Mapping[str, Any], expires: datetime,
                 proposed_by: str) -> dict[str, Any]:
    """A proposal document, with a fresh nonce (two identical changes are two proposals)."""
    return {"kbs_proposal": PROPOSAL_VERSION, "resource": resource, "replaces": replaces, "change": dict(change),
            "expires": rfc3339(expires), "proposed_by": proposed_by, "nonce": secrets.token_hex(16)}


def proposal_id(document: Mapping[str, Any]) -> str:
    return digest(dict(document))


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_proposal(document: object, now: datetime, max_text: int) -> tuple[dict[str, Any], datetime]:
    """The document's shape and bounds (not yet the key's state or owners): the document and its expiry."""
    fields = {"kbs_proposal", "resource", "replaces", "change", "expires", "proposed_by", "nonce"}
    if not isinstance(document, dict) or set(document) != fields:
        raise OwnerError(f"a proposal is an object with exactly the fields {', '.join(sorted(fields))}")
    if document["kbs_proposal"] != PROPOSAL_VERSION or isinstance(document["kbs_proposal"], bool):
        raise OwnerError(f"kbs_proposal must be {PROPOSAL_VERSION}")
    for field in ("resource", "replaces", "expires", "proposed_by", "nonce"):
        if not isinstance(document[field], str):
            raise OwnerError(f"{field} must be a string")
    if not ID.fullmatch(document["replaces"]):
        raise OwnerError("replaces must be the key's state hash (64 lowercase hex digits)")
    if not re.fullmatch(r"[0-9a-f]{32}", document["nonce"]):
        raise OwnerError("nonce must be 16 bytes in lowercase hex")
    if document["proposed_by"] != OPERATOR:
        check_name(document["proposed_by"], "proposed_by")
    try:
        expires = datetime.fromisoformat(document["expires"])
    except ValueError as exc:
        raise OwnerError("expires must be an RFC 3339 time") from exc
    if expires.tzinfo is None:
        raise OwnerError("expires must name its time zone (Z or an offset)")
    if expires <= now:
        raise OwnerError("the proposal has expired already", check="proposal.expired")
    if expires > now + MAX_LIFETIME:
        raise OwnerError(f"a proposal lives at most {MAX_LIFETIME.days} days")
    check_change(document["change"], max_text)
    return document, expires


def check_change(change: object, max_text: int) -> None:
    """One of CHANGE_KINDS, with exactly its fields, each of the right type (their meaning is checked later)."""
    if not isinstance(change, dict) or change.get("kind") not in CHANGE_KINDS:
        raise OwnerError(f"change must be an object whose kind is one of {', '.join(CHANGE_KINDS)}")
    kind = change["kind"]
    wanted = {"policy": {"text"}, "bind": {"policy_id"}, "refs": {"name", "values"}, "value": {"generate"},
              "owners": {"owners", "threshold"}, "delete": set()}[kind]
    if set(change) - {"kind"} != wanted:
        extra = " (a value in clear is never accepted: {\"generate\": SIZE} lets the broker make one)" \
            if kind == "value" else ""
        raise OwnerError(f"a {kind} change has exactly the fields kind{''.join(', ' + f for f in sorted(wanted))}"
                         f"{extra}")
    if kind == "policy" and (not isinstance(change["text"], str) or not 0 < len(change["text"]) <= max_text):
        raise OwnerError(f"text must be the policy text (1..{max_text} characters)")
    if kind == "bind" and (not isinstance(change["policy_id"], str) or not 0 < len(change["policy_id"]) <= 256):
        raise OwnerError("policy_id must be a policy id")
    if kind == "refs":
        if not isinstance(change["name"], str) or not 0 < len(change["name"]) <= 256:
            raise OwnerError("name must be a reference set's name")
        if not isinstance(change["values"], list) or not change["values"]:
            raise OwnerError("values must be a non-empty list")
    if kind == "value":
        size = change["generate"]
        if not isinstance(size, int) or isinstance(size, bool) or not MIN_GENERATE <= size <= MAX_GENERATE:
            raise OwnerError(f"generate must be a size in bytes, {MIN_GENERATE}..{MAX_GENERATE}")
    if kind == "owners":
        check_owner_set(change["owners"], change["threshold"])


# -- approvals --------------------------------------------------------------------------------------------------

def approval_message(pid: str) -> bytes:
    return (APPROVAL_PREFIX + pid).encode()


def sign_approval(key: Ed25519PrivateKey, pid: str) -> str:
    """What `kbs proposal sign` prints: base64 of the Ed25519 signature over the approval message."""
    if not ID.fullmatch(pid):
        raise OwnerError("a proposal id is 64 lowercase hex digits")
    return base64.b64encode(key.sign(approval_message(pid))).decode()


def signature_valid(public_key: Ed25519PublicKey, pid: str, signature: str) -> bool:
    """An owner's approval of proposal `pid` (base64 Ed25519 over the approval message)."""
    return _ed25519_valid(public_key, approval_message(pid), signature)


def _ed25519_valid(public_key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) != 64:
        return False
    try:
        public_key.verify(raw, message)
    except InvalidSignature:
        return False
    return True


def check_signature_field(signature: object) -> str:
    if not isinstance(signature, str) or not 0 < len(signature) <= 128:
        raise OwnerError("signature must be the base64 Ed25519 signature of the approval (kbs proposal sign)")
    return signature


def contribution_valid(public_key: Ed25519PublicKey, statement: bytes, signature: str) -> bool:
    """An owner's signature over kbs.keys.shares.contribution_statement (the key, its sealed share, its policy)."""
    return _ed25519_valid(public_key, statement, signature)


def names(owners: Sequence[str]) -> str:
    return ", ".join(owners)
