"""The storage interface and the records it holds.

A PostgreSQL backend implements the same methods; callers never see SQL.  Every method
is one transaction.  Methods that must be single-use across replicas (consuming a
session's nonce) are compare-and-set operations that report whether they won.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol

from kbs.audit.chain import Head
from kbs.errors import KbsError
from kbs.owners import Approval, Contribution, Outcome, OwnedKey, Owner, Proposal, Referenced
from kbs.policy.lifecycle import PolicyStore

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


class StoreError(KbsError):
    """The store could not do what was asked (unavailable, conflict, corrupt)."""

    check = "store"


class BatchRowRefused(StoreError):
    """A row that a group-commit batch's first run held back to its COMMIT was refused there (a unique key: a nonce
    used twice): nothing of the batch is durable.  The writer runs the batch again, a savepoint a call, so that the
    call that made the row fails alone (kbs.store.group_commit)."""


class StaleDecision(KbsError):
    """A release decided under a decision generation the store has moved past (a resource, policy or reference
    set changed meanwhile): nothing was written; the caller decides again on what the store holds now."""

    check = "stale_decision"

    def __init__(self, decided: int, current: int) -> None:
        super().__init__(f"decided under decision generation {decided}, the store is at {current}")


@dataclass(frozen=True)
class Session:
    session_id: str
    tee: str
    nonce: str
    created_at: datetime
    expires_at: datetime
    state: str  # "authed" (in the /auth cookie) until /attest succeeds and stores it "attested"
    evidence_digest: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class ResourceVersion:
    path: str  # repo/type/tag
    version: int
    state: str  # active, disabled
    sealed: bytes  # AES-256-GCM under the KEK; never plaintext
    policy_id: str
    created_by: str
    created_at: datetime


_CONTEXT = ("evidence", "tee_key", "refs_hash")


@dataclass(frozen=True)
class ReleaseRecord:
    """One log entry, written before the response leaves: a decision on a request, or an admin change.

    Never holds key material.  `detail` is for operators (the failing condition, the error);
    guests only ever see `ref`, the reference under which the operator finds it.
    """

    at: datetime
    decision: str  # release, deny, error (requests); admin (changes)
    reason: str  # a short label: policy, not_found, binding.report_data, ... or the admin action
    resource: str
    version: int | None
    session_id: str | None
    tee: str | None
    policy_id: str | None
    policy_hash: str | None
    attestation_id: str | None
    ref: str | None = None
    actor: str | None = None  # the admin who made a change
    detail: str | None = None
    # What a release decision was about (no secret): the evidence's identity (per attester: its verifier and
    # identifying claims, RFC 8785 JSON), the TEE key's RFC 7638 thumbprint, and a digest of the reference
    # sets the policy used.  None where there was none (admin changes, refusals before a token).
    evidence: str | None = None
    tee_key: str | None = None
    refs_hash: str | None = None
    seq: int | None = None
    entry_hash: str | None = None

    def updated(self, **changes: Any) -> ReleaseRecord:
        """`dataclasses.replace` without re-running `__init__` (~1 us instead of ~5 for these 20 fields; a
        guest's release builds its record in five steps)."""
        unknown = changes.keys() - _RECORD_FIELD_SET
        if unknown:
            raise TypeError(f"ReleaseRecord has no field(s) {sorted(unknown)}")
        twin = object.__new__(ReleaseRecord)
        twin.__dict__.update(self.__dict__, **changes)
        return twin

    def loggable(self) -> ReleaseRecord:
        """The record as every store logs it: NUL and lone surrogates become U+FFFD.

        A refusal's detail may quote what a hostile client sent; PostgreSQL text cannot hold NUL,
        neither backend can encode a lone surrogate (which JSON's \\udXXX escapes can produce), and
        the entry must still be written, hashing the same on every backend, rather than fail.
        """
        texts = [v for v in map(self.__getattribute__, _RECORD_FIELDS) if isinstance(v, str)]
        if not _UNSTORABLE.search("\x01".join(texts)):  # the common case, in one search
            return self
        changes: dict[str, Any] = {k: _UNSTORABLE.sub("\ufffd", v) for k, v in self._fields().items()
                                   if isinstance(v, str) and _UNSTORABLE.search(v)}
        return self.updated(**changes)

    def body(self) -> dict[str, Any]:
        """What the hash chain and the Merkle tree commit to: every field but the position and the hash itself.
        The decision-context fields appear only when set, so entries written before them hash as they did."""
        out = {k: v for k, v in self._fields().items() if k not in ("seq", "entry_hash", *_CONTEXT)
               or (k in _CONTEXT and v is not None)}
        out["at"] = self.at.timestamp()
        if self.evidence is not None:
            out["evidence"] = json.loads(self.evidence)
        return out

    def _fields(self) -> dict[str, Any]:
        """The fields by name (all scalars: no deep copy, unlike dataclasses.asdict)."""
        return {name: getattr(self, name) for name in _RECORD_FIELDS}


_RECORD_FIELDS = tuple(f.name for f in fields(ReleaseRecord))
_RECORD_FIELD_SET = frozenset(_RECORD_FIELDS)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A signed checkpoint of the release log's Merkle tree (kbs.store.tlog)."""

    size: int
    note: str  # the signed note (kbs.audit.note), as served at /kbs/v0/log/checkpoint
    at: float


@dataclass(frozen=True)
class LogQuery:
    """Which log entries to list: each field that is set must match (`since` and `until` inclusive)."""

    resource: str | None = None
    decision: str | None = None
    reason: str | None = None
    tee: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def sql(self) -> tuple[str, tuple[object, ...]]:
        """' AND ...' conditions over the log columns with '?' placeholders, and their arguments."""
        parts: list[str] = []
        args: list[object] = []
        for column in ("resource", "decision", "reason", "tee"):
            value = getattr(self, column)
            if value is not None:
                parts.append(f" AND {column} = ?")
                args.append(value)
        if self.since is not None:
            parts.append(" AND at >= ?")
            args.append(self.since.timestamp())
        if self.until is not None:
            parts.append(" AND at <= ?")
            args.append(self.until.timestamp())
        return "".join(parts), tuple(args)


@dataclass(frozen=True)
class AttestationRecord:
    attestation_id: str
    at: datetime
    session_id: str
    tee: str
    claims: dict[str, Any]
    # The claims as kbs.jsondoc.dumps encodes them, when the caller has that already (the token's payload).
    encoded: bytes | None = field(default=None, compare=False, repr=False)


class Store(PolicyStore, Protocol):
    # sessions
    # A session exists in the store once it attested: /auth hands out a signed cookie (kbs.server.sessions)
    # and /attest stores the session, which consumes its nonce (an insert that exactly one caller wins).
    def get_session(self, session_id: str) -> Session | None: ...
    def mark_attested(self, session: Session, evidence_digest: str, token: str, now: datetime,
                      record: AttestationRecord | None = None, summary: ReleaseRecord | None = None) -> bool: ...
    def purge_expired_sessions(self, now: datetime) -> int: ...
    def count_live_sessions(self, now: datetime) -> int: ...  # attested, not yet expired (a metric)

    # admin tokens: single use of each `jti` across replicas
    def use_token_id(self, jti: str, expires_at: datetime, now: datetime) -> bool: ...

    # keys the broker itself holds (sealed under the KEK)
    def get_or_create_secret(self, name: str, create: bytes) -> bytes: ...

    # resources
    def put_resource(self, path: str, sealed: bytes, policy_id: str, created_by: str, at: datetime) -> int: ...
    def active_resource(self, path: str) -> ResourceVersion | None: ...
    def resource_versions(self, path: str) -> list[ResourceVersion]: ...
    def resource_paths(self) -> list[str]: ...
    def set_resource_state(self, path: str, version: int | None, state: str) -> int: ...
    def delete_resource(self, path: str) -> int: ...
    def bind_policy(self, path: str, policy_id: str) -> int: ...
    # changes with every change to resources, policies and reference sets (kbs.server.decisions caches on it)
    def decision_generation(self) -> int: ...

    # attestations and the logs (kbs.audit.chain: RELEASES kept forever, REFUSALS for a while)
    def record_attestation(self, record: AttestationRecord) -> None: ...
    def get_attestation(self, attestation_id: str) -> AttestationRecord | None: ...
    def purge_attestations(self, before: datetime) -> int: ...
    def append_log(self, chain: str, record: ReleaseRecord, generation: int | None = None) -> ReleaseRecord:
        """Append to a log, durable when this returns; with `generation`, only while the decision generation is
        still that one, checked in the append's own transaction (else StaleDecision, nothing written)."""
    def log_entries(self, chain: str, after_seq: int = 0, limit: int = 100,
                    query: LogQuery | None = None) -> list[ReleaseRecord]: ...
    def log_counts(self, chain: str, query: LogQuery | None = None) -> dict[str, int]:
        """Entries matching `query`, counted by decision."""
    def verify_logs(self) -> list[Head]: ...
    # The release log's Merkle tree and its signed checkpoints (kbs.store.tlog).
    def log_tree_size(self) -> int: ...
    def log_root(self, size: int) -> bytes: ...
    def log_tree_hashes(self, level: int, start: int, count: int) -> list[bytes]: ...
    def log_inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    def log_consistency_proof(self, old: int, new: int) -> list[bytes]: ...
    def log_leaves(self, start: int, count: int) -> list[bytes]: ...
    def add_log_checkpoint(self, checkpoint: StoredCheckpoint) -> bool: ...
    def latest_log_checkpoint(self) -> StoredCheckpoint | None: ...
    def log_checkpoints(self, after_size: int = -1, limit: int = 100) -> list[StoredCheckpoint]: ...
    def purge_refusals(self, before: datetime) -> int: ...

    # owners, owned keys and proposals (issue 15; kbs.store.owners)
    def add_owner(self, owner: Owner) -> None: ...
    def remove_owner(self, name: str) -> bool: ...
    def get_owner(self, name: str) -> Owner | None: ...
    def list_owners(self) -> list[Owner]: ...
    def create_owned_key(self, key: OwnedKey, sealed: bytes, policy_id: str, referenced: Referenced) -> int: ...
    def owned_key(self, path: str) -> OwnedKey | None: ...
    def owned_keys(self) -> list[OwnedKey]: ...
    def owned_state(self, path: str, referenced: Referenced) -> dict[str, Any] | None: ...
    def add_proposal(self, proposal: Proposal, referenced: Referenced, actor: str) -> None: ...
    def get_proposal(self, pid: str) -> tuple[Proposal, list[Approval]] | None: ...
    def list_proposals(self, resource: str | None, status: str | None, limit: int) -> list[Proposal]: ...
    def approve_proposal(self, pid: str, approval: Approval, now: datetime, referenced: Referenced,
                         sealed: bytes | None) -> Outcome: ...
    # contributed keys and deposit slots (issue 15, items 3-4): each write appends `entry` in its transaction
    def add_contribution(self, contribution: Contribution, sealed_share: bytes,
                         entry: ReleaseRecord) -> tuple[int, int]: ...
    def owner_contributions(self, path: str) -> list[tuple[Contribution, bytes]]: ...
    def deposit(self, path: str, sealed: bytes, by: str, at: datetime, entry: ReleaseRecord) -> int: ...

    def ping(self) -> None: ...
    def probe_write(self, now: datetime) -> None: ...
