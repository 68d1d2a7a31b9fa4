"""What a stored row means, written once for every SQL backend: rows to records with their MACs checked,
records to the MACs stored beside them, and the log chains verified from their rows.

The backends (`sqlite`, `postgres`) differ in SQL, transactions and locking; none of that is here.  A row
is anything indexable by column name (sqlite3.Row, psycopg's dict rows).  Timestamps are the stored
floats (seconds since the epoch), as the MACs cover them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from kbs import jsondoc
from kbs.audit import chain as chains
from kbs.audit.chain import REFUSALS, RELEASES, ChainBroken, Head
from kbs.policy.lifecycle import BindingLocked, PolicyVersion
from kbs.policy.refvalues import ReferenceValues
from kbs.store.base import AttestationRecord, ReleaseRecord, ResourceVersion, Session, StoreError
from kbs.store.integrity import RowAuthenticator, StoreIntegrityError, digest


class Row(Protocol):
    """A stored row: its columns by name (sqlite3.Row, psycopg's dict rows)."""

    def __getitem__(self, key: str, /) -> Any: ...

LOG_TABLES = {RELEASES: "release_log", REFUSALS: "refusal_log"}


def ts(when: datetime) -> float:
    return when.timestamp()


def dt(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def policy_in_use(policy_id: str, paths: list[str]) -> str:
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return f"policy {policy_id!r} is bound to {len(paths)} key(s) ({shown}): bind them to another policy first"


def log_table(chain: str) -> str:
    if chain not in LOG_TABLES:
        raise StoreError(f"no log {chain!r}; logs: {', '.join(LOG_TABLES)}")
    return LOG_TABLES[chain]


class Rows:
    """Rows to records and back, under one row-MAC key."""

    def __init__(self, auth: RowAuthenticator) -> None:
        self.auth = auth

    # sessions (no MAC: a session grants nothing until its attestation is verified)
    @staticmethod
    def session(r: Row) -> Session:
        return Session(r["session_id"], r["tee"], r["nonce"], dt(r["created_at"]), dt(r["expires_at"]),
                       r["state"], r["evidence_digest"], r["token"])

    # resources
    def resource_mac(self, path: str, version: int, state: str, sealed: bytes, policy_id: str, created_by: str,
                     created_at: float) -> str:
        return self.auth.mac("resources", path, version, state, digest(sealed), policy_id, created_by, created_at)

    def resource(self, r: Row) -> ResourceVersion:
        sealed = bytes(r["sealed"])  # PostgreSQL's bytea comes as memoryview
        self.auth.check(r["mac"], f"resource {r['path']} version {r['version']}", "resources", r["path"],
                        r["version"], r["state"], digest(sealed), r["policy_id"], r["created_by"], r["created_at"])
        return ResourceVersion(r["path"], r["version"], r["state"], sealed, r["policy_id"], r["created_by"],
                               dt(r["created_at"]))

    # policies and reference values
    def policy_mac(self, v: PolicyVersion) -> str:
        return self.auth.mac("policies", v.policy_id, v.version, v.dialect, digest(v.text), v.content_hash,
                             v.created_by, ts(v.created_at), v.immutable)

    def policy_version(self, r: Row) -> PolicyVersion:
        v = PolicyVersion(r["policy_id"], r["version"], r["dialect"], r["text"], r["content_hash"],
                          r["created_by"], dt(r["created_at"]), bool(r["immutable"]))
        self.auth.check(r["mac"], f"policy {v.policy_id!r} version {v.version}", "policies", v.policy_id,
                        v.version, v.dialect, digest(v.text), v.content_hash, v.created_by, r["created_at"],
                        v.immutable)
        return v

    def reference_set_mac(self, name: str, body: str) -> str:
        return self.auth.mac("reference_sets", name, body)

    def reference_values(self, rows: Iterable[Row]) -> ReferenceValues:
        sets = {}
        for r in rows:
            self.auth.check(r["mac"], f"reference set {r['name']!r}", "reference_sets", r["name"], r["body"])
            sets[r["name"]] = json.loads(r["body"])
        return ReferenceValues.from_json(sets)

    # attestations
    def attestation_values(self, record: AttestationRecord) -> tuple[object, ...]:
        """The row of an attestation: its columns in table order, MAC last."""
        claims = (record.encoded or jsondoc.dumps(record.claims)).decode()
        return (record.attestation_id, ts(record.at), record.session_id, record.tee, claims,
                self.auth.mac("attestations", record.attestation_id, ts(record.at), record.session_id, record.tee,
                              digest(claims)))

    def attestation(self, r: Row) -> AttestationRecord:
        self.auth.check(r["mac"], f"attestation {r['attestation_id']}", "attestations", r["attestation_id"],
                        r["at"], r["session_id"], r["tee"], digest(r["claims"]))
        return AttestationRecord(r["attestation_id"], dt(r["at"]), r["session_id"], r["tee"], json.loads(r["claims"]))

    # the logs
    def head(self, chain: str, r: Row | None) -> Head:
        if r is None:
            raise StoreIntegrityError(f"the {chain} log has no recorded head: it was removed outside the broker")
        head = Head(chain, r["first_seq"], r["anchor_hash"], r["head_seq"], r["head_hash"])
        self.auth.check(r["mac"], f"the {chain} log head", "log_heads", *head.to_json().values())
        return head

    def head_values(self, head: Head) -> tuple[object, ...]:
        """The row of a head: its columns in table order, MAC last."""
        return (head.chain, head.first_seq, head.anchor_hash, head.head_seq, head.head_hash,
                self.auth.mac("log_heads", *head.to_json().values()))

    def log_mac(self, chain: str, seq: int, prev_hash: str, hashed: str) -> str:
        return self.auth.mac(log_table(chain), seq, prev_hash, hashed)

    @staticmethod
    def record(r: Row) -> ReleaseRecord:
        return ReleaseRecord(at=dt(r["at"]), decision=r["decision"], reason=r["reason"], resource=r["resource"],
                             version=r["version"], session_id=r["session_id"], tee=r["tee"],
                             policy_id=r["policy_id"], policy_hash=r["policy_hash"],
                             attestation_id=r["attestation_id"], ref=r["ref"], actor=r["actor"],
                             detail=r["detail"], evidence=r["evidence"], tee_key=r["tee_key"],
                             refs_hash=r["refs_hash"], seq=r["seq"], entry_hash=r["entry_hash"])

    def checked_record(self, chain: str, r: Row) -> ReleaseRecord:
        """An entry whose MAC and own hash hold (its place in the chain is `verify_chains`'s job)."""
        what = f"{chain} log entry {r['seq']}"
        self.auth.check(r["mac"], what, log_table(chain), r["seq"], r["prev_hash"], r["entry_hash"])
        record = self.record(r)
        if not chains.entry_matches(chain, r["prev_hash"], r["entry_hash"], record.body()):
            raise StoreIntegrityError(f"{what} was edited outside the broker: its content does not match its hash")
        return record

    def verify_chains(self, snapshot: Sequence[tuple[Head, Sequence[Row]]]) -> list[Head]:
        """Each chain's rows (read in one snapshot with its head) from its anchor to its head."""
        for head, rows in snapshot:
            try:
                chains.verify(head, ((r["seq"], self.checked_record(head.chain, r).body(), r["prev_hash"],
                                      r["entry_hash"]) for r in rows))
            except ChainBroken as exc:
                raise StoreIntegrityError(str(exc)) from exc
        return [head for head, _ in snapshot]


# -- resource rules, the same for every backend ---------------------------------------------------

def state_changes(current: Sequence[ResourceVersion], version: int | None,
                  state: str) -> tuple[list[ResourceVersion], int]:
    """The versions to rewrite to enable or disable one version (enabling disables the others), and what
    `set_resource_state` returns.  Without a version, disabling means "whatever is released now" (the
    active version) and enabling means the latest."""
    if version is None and state == "disabled":
        changed = [replace(v, state="disabled") for v in current if v.state == "active"]
        return changed, len(changed)
    if version is None:
        if not current:
            return [], 0
        version = current[-1].version
    if not any(v.version == version for v in current):
        return [], 0
    changed = [replace(v, state=state) for v in current if v.version == version]
    if state == "active":
        changed += [replace(v, state="disabled") for v in current if v.version != version and v.state != "disabled"]
    return changed, 1


def check_binding_change(path: str, current: Sequence[ResourceVersion], policy_id: str,
                         policy_versions: Callable[[str], Sequence[PolicyVersion]]) -> None:
    """A key bound to an immutable policy cannot move to another policy."""
    if not current or current[-1].policy_id == policy_id:
        return
    bound = current[-1].policy_id
    versions = policy_versions(bound)
    if versions and versions[-1].immutable:
        raise BindingLocked(f"{path} is bound to policy {bound!r}, which is immutable; the binding cannot "
                            f"change (to {policy_id!r} or any other policy)")
