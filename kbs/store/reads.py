"""The store's plain reads, written once for both backends.

Each is one SELECT whose rows `kbs.store.rows.Rows` turns into records (checking their MACs); the
backends differ only in how a statement is run and in the placeholder (`?` here; PostgreSQL's `_select`
rewrites it to `%s`).  Writes stay per backend: their transactions and locking differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kbs.audit import merkle
from kbs.owners import Approval, Contribution, OwnedKey, Owner, Proposal, Referenced
from kbs.policy.refvalues import ReferenceValues
from kbs.store import owners, tlog
from kbs.store.base import (
    AttestationRecord,
    LogQuery,
    ReleaseRecord,
    ResourceVersion,
    Session,
    StaleDecision,
    StoredCheckpoint,
    StoreError,
)
from kbs.store.rows import Row, Rows, ts
from kbs.store.rows import log_table as _table

GENERATION_QUERY = "SELECT value FROM decision_generation WHERE id = 1"


def generation_of(row: Any) -> int:
    """The decision generation in GENERATION_QUERY's row (None: the row is gone)."""
    if row is None:
        raise StoreError("the store has no decision generation row: it was removed outside the broker")
    return int(row["value"])


def generation_in(db: Any) -> int:
    """The decision generation as `db` (a connection or cursor, in the caller's transaction) sees it."""
    return generation_of(db.execute(GENERATION_QUERY).fetchone())


def check_generation(decided: int, current: int) -> None:
    """A release decided under generation `decided` may be written only while the store is still there."""
    if current != decided:
        raise StaleDecision(decided, current)


class _Reads:
    """Plain reads as kbs.store.tlog runs them: each its own statement (the tree's rows never change once
    written, so reads of a size already committed need no common snapshot)."""

    def __init__(self, store: StoreReads) -> None:
        self._store = store

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> Sequence[Row]:
        return self._store._select(sql, args)

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> None:
        raise TypeError("a read-only view of the store")

    def executemany(self, sql: str, args: Sequence[tuple[object, ...]]) -> None:
        raise TypeError("a read-only view of the store")

    def insert(self, into: str, rows: Sequence[tuple[object, ...]]) -> None:
        raise TypeError("a read-only view of the store")


class StoreReads:
    _rows: Rows

    def _select(self, sql: str, args: tuple[object, ...] = ()) -> Sequence[Row]:
        """Run one SELECT (`?` placeholders) as its own read; StoreError if the database fails."""
        raise NotImplementedError

    def ping(self) -> None:
        self._select("SELECT 1")

    def get_session(self, session_id: str) -> Session | None:
        rows = self._select("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return self._rows.session(rows[0]) if rows else None

    def count_live_sessions(self, now: datetime) -> int:
        """Attested sessions not yet expired (the sessions_expiry index answers it)."""
        return int(self._select("SELECT count(*) AS n FROM sessions WHERE expires_at > ?", (ts(now),))[0]["n"])

    def active_resource(self, path: str) -> ResourceVersion | None:
        rows = self._select("SELECT * FROM resources WHERE path=? AND state='active' ORDER BY version DESC LIMIT 1",
                            (path,))
        return self._rows.resource(rows[0]) if rows else None

    def resource_versions(self, path: str) -> list[ResourceVersion]:
        return [self._rows.resource(r) for r in self._select("SELECT * FROM resources WHERE path=? ORDER BY version",
                                                             (path,))]

    def resource_paths(self) -> list[str]:
        return [r["path"] for r in self._select("SELECT DISTINCT path FROM resources ORDER BY path")]

    def policy_ids(self) -> list[str]:
        return [r["policy_id"] for r in self._select("SELECT DISTINCT policy_id FROM policies ORDER BY policy_id")]

    def reference_values(self) -> ReferenceValues:
        return self._rows.reference_values(self._select("SELECT name, body, mac FROM reference_sets"))

    def get_attestation(self, attestation_id: str) -> AttestationRecord | None:
        rows = self._select("SELECT * FROM attestations WHERE attestation_id=?", (attestation_id,))
        return self._rows.attestation(rows[0]) if rows else None

    def decision_generation(self) -> int:
        """A number that changes with every change to resources, policies or reference sets (schema triggers)."""
        rows = self._select(GENERATION_QUERY)
        return generation_of(rows[0] if rows else None)

    def log_entries(self, chain: str, after_seq: int = 0, limit: int = 100,
                    query: LogQuery | None = None) -> list[ReleaseRecord]:
        where, args = (query or LogQuery()).sql()
        rows = self._select(f"SELECT * FROM {_table(chain)} WHERE seq > ?{where} ORDER BY seq LIMIT ?",
                            (after_seq, *args, limit))
        return [self._rows.checked_record(chain, r) for r in rows]

    # -- the release log's Merkle tree (kbs.store.tlog) ----------------------------------------

    def log_tree_size(self) -> int:
        return tlog.size(_Reads(self))

    def log_root(self, size: int) -> bytes:
        return tlog.root(_Reads(self), size)

    def log_tree_hashes(self, level: int, start: int, count: int) -> list[bytes]:
        return tlog.hashes(_Reads(self), level, start, count)

    def log_inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return merkle.inclusion_proof(index, size, tlog.reader(_Reads(self)))

    def log_consistency_proof(self, old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(old, new, tlog.reader(_Reads(self)))

    def log_leaves(self, start: int, count: int) -> list[bytes]:
        """Entries start .. start+count-1 (0-based) as the tree holds them (RFC 8785 JSON of each body)."""
        rows = self._select("SELECT * FROM release_log WHERE seq > ? AND seq <= ? ORDER BY seq",
                            (start, start + count))
        return [tlog.leaf_bytes(self._rows.record(r)) for r in rows]

    def latest_log_checkpoint(self) -> StoredCheckpoint | None:
        return tlog.latest_checkpoint(_Reads(self))

    def log_checkpoints(self, after_size: int = -1, limit: int = 100) -> list[StoredCheckpoint]:
        return tlog.checkpoints(_Reads(self), after_size, limit)

    def log_counts(self, chain: str, query: LogQuery | None = None) -> dict[str, int]:
        where, args = (query or LogQuery()).sql()
        rows = self._select(f"SELECT decision, count(*) AS n FROM {_table(chain)} WHERE 1=1{where} GROUP BY decision",
                            args)
        return {r["decision"]: int(r["n"]) for r in rows}

    # -- owners, owned keys and proposals (kbs.store.owners) -------------------------------------

    def get_owner(self, name: str) -> Owner | None:
        return owners.get_owner(_Reads(self), self._rows.auth, name)

    def list_owners(self) -> list[Owner]:
        return owners.list_owners(_Reads(self), self._rows.auth)

    def owned_key(self, path: str) -> OwnedKey | None:
        return owners.get_owned(_Reads(self), self._rows.auth, path)

    def owned_keys(self) -> list[OwnedKey]:
        return owners.list_owned(_Reads(self), self._rows.auth)

    def owned_state(self, path: str, referenced: Referenced) -> dict[str, Any] | None:
        """For display: several reads (the state an approval is held to is read again in its transaction)."""
        return owners.state(_Reads(self), self._rows, path, referenced)

    def get_proposal(self, pid: str) -> tuple[Proposal, list[Approval]] | None:
        return owners.get_proposal(_Reads(self), self._rows.auth, pid)

    def owner_contributions(self, path: str) -> list[tuple[Contribution, bytes]]:
        return owners.sealed_shares(_Reads(self), self._rows.auth, path)

    def list_proposals(self, resource: str | None, status: str | None, limit: int) -> list[Proposal]:
        return owners.list_proposals(_Reads(self), self._rows.auth, resource, status, limit)
