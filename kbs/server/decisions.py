"""What a release decision reads (the resource, its policy's current version, the reference values), kept
between requests for as long as none of it changed.

A decision needs three reads, and on PostgreSQL each was a network round trip (the policy's a whole
transaction).  The store keeps a decision generation that schema triggers bump, in the same transaction,
on every insert, update or delete of a resource, policy or reference set, by anyone (kbs.store.schema).
Each decision reads that one number first: when it is the number the cache was filled under, nothing a
decision depends on has changed since, and the cached inputs are the store's current ones; otherwise the
cache is emptied and refilled from the store.  Reading the generation before the inputs means the cache
never holds inputs older than its generation.

Rows are checked (MACs) when they are read from the store, as before; cached entries are charged their
sealed bytes, so the cache is bounded by bytes.
"""

from __future__ import annotations

import threading
from typing import TypeAlias

from kbs.cache import ByteBoundedCache
from kbs.errors import KbsError
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
        self.hits = 0  # tests read these
        self.misses = 0

    def get(self, path: str) -> ReleaseInputs:
        """The resource at `path`, its policy id, and the policy's current version, parsed, with the reference
        values (or why they could not be read: a policy failure, reported as such by the caller)."""
        generation = self._store.decision_generation()
        with self._lock:
            if generation != self._generation:
                self._cache.clear()
                self._refs = None
                self._generation = generation
            cached = self._cache.get(path)
            if cached is not None:
                self.hits += 1
                return cached
            self.misses += 1
        inputs = self._read(path, generation)
        with self._lock:
            if self._generation == generation:  # not emptied for a newer generation meanwhile
                self._cache.put(path, inputs)
        return inputs

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
