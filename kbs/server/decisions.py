"""What a release decision reads (the resource, its policy's current version, the reference values), kept
between requests for as long as none of it changed.

A decision needs three reads, and on PostgreSQL each was a network round trip (the policy's a whole
transaction).  The store keeps a decision generation that schema triggers bump, in the same transaction,
on every insert, update or delete of a resource, policy or reference set, by anyone (kbs.store.schema).
Each decision reads that one number first: when it is the number the cache was filled under, nothing a
decision depends on has changed since, and the cached inputs are the store's current ones; otherwise the
cache is emptied and refilled from the store.  Reading the generation before the inputs means the cache
never holds inputs older than its generation.

A guest's release need not even read the number first (`latest`): it is decided on the inputs in memory, and
its release-log entry is written only if the store is still at their generation, checked in the write's own
transaction (on PostgreSQL, read once as each group-commit batch begins).  A release so refused was never
answered; it is decided again on inputs read from the store.  A refusal decided on remembered inputs stands
only if the generation read after it is theirs.

Rows are checked (MACs) when they are read from the store, as before; cached entries are charged their
sealed bytes, so the cache is bounded by bytes.

An owned key with no active value (a contributed key, an empty deposit slot: issue 15) needs more: its owners'
contributions and their own policies (`owned`).  Only a release that found no active version asks, so the
common path reads nothing more; the owned keys and contributions are in the generation's triggers too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TypeAlias

from kbs.cache import ByteBoundedCache
from kbs.errors import KbsError
from kbs.owners import EMPTY_KINDS, Contribution, OwnedKey
from kbs.policy.lifecycle import PolicyRegistry, PolicyVersion
from kbs.policy.model import Policy
from kbs.policy.refvalues import ReferenceValues
from kbs.store.base import ResourceVersion, Store

DEFAULT_POLICY = "default"
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024
ENTRY_OVERHEAD = 1024  # a ResourceVersion and the tuple around it, besides the sealed value

# (the policy's current version, parsed, the reference values, and the digest of the sets the policy uses)
Resolved: TypeAlias = tuple[PolicyVersion, Policy, ReferenceValues, str] | KbsError
# (the active version or None, its policy id, the policy resolved, whether the key exists with every version
# disabled: then the policy is the one the key is bound to, and a release it allows is refused as "disabled")
ReleaseInputs: TypeAlias = tuple[ResourceVersion | None, str, Resolved, bool]


@dataclass(frozen=True)
class OwnedInputs:
    """An owned key with no active value: its owners, and each contribution in owner order with its share
    (sealed under the KEK) and its own policy, parsed (or why it could not be: a failure of that owner's
    policy, fail closed)."""

    key: OwnedKey
    shares: tuple[tuple[Contribution, bytes], ...]
    policies: dict[str, Policy | KbsError]  # owner -> its own policy, for owners that gave one

    @property
    def missing(self) -> list[str]:
        given = {c.owner for c, _ in self.shares}
        return [o for o in self.key.owners if o not in given]


def _owned_cost(entry: tuple[OwnedInputs | None]) -> int:
    inputs = entry[0]
    return ENTRY_OVERHEAD + (sum(len(sealed) + len(c.policy or "") for c, sealed in inputs.shares) if inputs else 0)


def _cost(inputs: ReleaseInputs) -> int:
    resource = inputs[0]
    return ENTRY_OVERHEAD + (len(resource.sealed) if resource is not None else 0)


class DecisionInputs:
    def __init__(self, store: Store, registry: PolicyRegistry, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._store = store
        self._registry = registry
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._cache: ByteBoundedCache[str, ReleaseInputs] = ByteBoundedCache(max_bytes, _cost)
        self._refs: ReferenceValues | None = None
        self._owned: ByteBoundedCache[str, tuple[OwnedInputs | None]] = \
            ByteBoundedCache(max_bytes, _owned_cost)  # in a 1-tuple: None (not such a key) is cached too
        self._owned_keys: dict[str, OwnedKey] | None = None
        self.hits = 0  # tests read these
        self.misses = 0

    def get(self, path: str) -> ReleaseInputs:
        """The resource at `path`, its policy id, and the policy's current version, parsed, with the reference
        values (or why they could not be read: a policy failure, reported as such by the caller)."""
        return self.get_at(path, self._store.decision_generation())

    def cached(self, path: str, generation: int) -> ReleaseInputs | None:
        """`get`'s answer when it is in memory for `generation` (the store's current one, read by the caller)."""
        with self._lock:
            self._move_to(generation)
            cached = self._cache.get(path)
            if cached is not None:
                self.hits += 1
            return cached

    def latest(self, path: str) -> tuple[int, ReleaseInputs] | None:
        """The inputs in memory for `path` and the generation they were read under, without asking the store
        whether it moved on: a release decided on them must be written with that generation, which the store
        checks in the write's transaction (kbs.store.base.StaleDecision)."""
        with self._lock:
            generation = self._generation
            cached = self._cache.get(path) if generation is not None else None
            if generation is None or cached is None:
                return None
            self.hits += 1
            return generation, cached

    def get_at(self, path: str, generation: int) -> ReleaseInputs:
        """`get` for a generation the caller read from the store just before."""
        cached = self.cached(path, generation)
        if cached is not None:
            return cached
        with self._lock:
            self.misses += 1
        inputs = self._read(path, generation)
        with self._lock:
            if self._generation == generation:  # not emptied for a newer generation meanwhile
                self._cache.put(path, inputs)
        return inputs

    def _move_to(self, generation: int) -> None:
        """(Under the lock) empty everything read under another generation."""
        if generation != self._generation:
            self._cache.clear()
            self._owned.clear()
            self._refs = None
            self._owned_keys = None
            self._generation = generation

    def owned(self, path: str) -> OwnedInputs | None:
        """What a release of an owned key with no active value needs (None: `path` is no such key).  Asked
        only when `get` found no active version."""
        generation = self._store.decision_generation()
        with self._lock:
            self._move_to(generation)
            cached = self._owned.get(path)
            if cached is not None:
                return cached[0]
            owned_keys = self._owned_keys
        if owned_keys is None:
            owned_keys = {k.path: k for k in self._store.owned_keys() if k.kind in EMPTY_KINDS}
        inputs = self._read_owned(owned_keys.get(path))
        with self._lock:
            if self._generation == generation:
                self._owned_keys = owned_keys
                self._owned.put(path, (inputs,))
        return inputs

    def _read_owned(self, key: OwnedKey | None) -> OwnedInputs | None:
        if key is None:
            return None
        found = {c.owner: (c, sealed) for c, sealed in self._store.owner_contributions(key.path)}
        shares = tuple(found[o] for o in key.owners if o in found)
        policies: dict[str, Policy | KbsError] = {}
        for c, _ in shares:
            if c.policy is not None:
                try:
                    policies[c.owner] = self._registry.validate(c.policy)
                except KbsError as exc:
                    policies[c.owner] = exc
        return OwnedInputs(key, shares, policies)

    def _read(self, path: str, generation: int) -> ReleaseInputs:
        resource = self._store.active_resource(path)
        disabled = False
        if resource is not None:
            policy_id = resource.policy_id
        else:
            versions = self._store.resource_versions(path)
            disabled = bool(versions)
            policy_id = versions[-1].policy_id if versions else DEFAULT_POLICY
        try:
            version, policy = self._registry.resolve(policy_id)
            refs = self._reference_values(generation)
            return resource, policy_id, (version, policy, refs, refs.digest(policy.referenced_sets())), disabled
        except KbsError as exc:
            return resource, policy_id, exc, disabled

    def _reference_values(self, generation: int) -> ReferenceValues:
        """The reference values, read once per generation.  Kept only if the cache is still on the
        generation they were read under (another thread may have moved it on meanwhile)."""
        with self._lock:
            refs = self._refs if self._generation == generation else None
        if refs is None:
            refs = self._registry.refs
            with self._lock:
                if self._generation == generation:
                    self._refs = refs
        return refs
