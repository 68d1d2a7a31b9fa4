"""Policy envelopes and their history; reference-value sets managed beside them.

Every upload is validated first (it parses, and every reference set it names exists), so a
malformed policy is refused at upload with a line and a reason, never at release time.
A policy can be made immutable once; after that nothing about it changes again.
Storage sits behind a narrow protocol so the database backends (daemon issue) plug in.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from kbs.errors import KbsError
from kbs.policy.loader import dialect_of, parse_policy, validate_policy
from kbs.policy.model import Policy
from kbs.policy.refvalues import ReferenceSet, ReferenceValues

if TYPE_CHECKING:
    from kbs.policy.rego_pool import RegoWorkerPool


class PolicyConflict(KbsError):
    """The change is not allowed in the policy's current state (immutable, unknown, in use)."""

    check = "policy.conflict"


class PolicyNotFound(PolicyConflict):
    check = "policy.not_found"


class BindingLocked(PolicyConflict):
    """A key bound to an immutable policy keeps that binding: rebinding it would bypass immutability."""

    check = "policy.immutable"


def content_hash(text: str) -> str:
    """BASE64URL(SHA-256(policy bytes)), as Azure attestation names policies."""
    digest = hashlib.sha256(text.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class PolicyVersion:
    policy_id: str
    version: int
    dialect: str
    text: str
    content_hash: str
    created_by: str
    created_at: datetime
    immutable: bool


class PolicyStore(Protocol):
    def versions(self, policy_id: str) -> list[PolicyVersion]: ...
    def append(self, version: PolicyVersion) -> None:
        """Add a version; raise PolicyConflict if that version number exists (a concurrent writer won)."""
    def policy_ids(self) -> list[str]: ...
    def reference_values(self) -> ReferenceValues: ...
    def put_reference_set(self, ref: ReferenceSet) -> None: ...
    def delete_reference_set(self, name: str) -> None: ...
    def edit_reference_set(self, name: str, edit: Callable[[ReferenceSet | None], ReferenceSet]) -> ReferenceSet:
        """Apply `edit` to the set (None if absent) and store the result, atomically."""
    def delete_policy(self, policy_id: str) -> int:
        """Remove every version; PolicyConflict if a key is bound to it.  The number of versions removed."""


class MemoryPolicyStore:
    def __init__(self, refs: ReferenceValues | None = None) -> None:
        self._versions: dict[str, list[PolicyVersion]] = {}
        self._refs = refs or ReferenceValues()

    def versions(self, policy_id: str) -> list[PolicyVersion]:
        return list(self._versions.get(policy_id, []))

    def append(self, version: PolicyVersion) -> None:
        existing = self._versions.setdefault(version.policy_id, [])
        if len(existing) + 1 != version.version:
            raise PolicyConflict(f"policy {version.policy_id!r} version {version.version} already exists")
        existing.append(version)

    def policy_ids(self) -> list[str]:
        return sorted(self._versions)

    def reference_values(self) -> ReferenceValues:
        return self._refs

    def put_reference_set(self, ref: ReferenceSet) -> None:
        self._refs = self._refs.with_set(ref)

    def delete_reference_set(self, name: str) -> None:
        self._refs = self._refs.without(name)

    def delete_policy(self, policy_id: str) -> int:
        return len(self._versions.pop(policy_id, []))

    def edit_reference_set(self, name: str, edit: Callable[[ReferenceSet | None], ReferenceSet]) -> ReferenceSet:
        ref = edit(self._refs.get(name))
        self._refs = self._refs.with_set(ref)
        return ref


class PolicyRegistry:
    """Policies (versioned, hash-addressed) and reference values, with the rules that bind them."""

    def __init__(self, store: PolicyStore | None = None, refs: ReferenceValues | None = None, *,
                 rego: RegoWorkerPool | None = None) -> None:
        """`rego`: the worker pool Rego policies are checked and evaluated in (None: Rego is refused)."""
        self._store = store or MemoryPolicyStore(refs)
        self._rego = rego
        self._lock = threading.Lock()
        self._parsed: dict[str, Policy] = {}  # content hash -> parsed policy

    @property
    def refs(self) -> ReferenceValues:
        """Read from the store each time: another replica may have changed them."""
        return self._store.reference_values()

    def current(self, policy_id: str) -> PolicyVersion:
        versions = self._store.versions(policy_id)
        if not versions:
            raise PolicyNotFound(f"no policy {policy_id!r}")
        return versions[-1]

    def history(self, policy_id: str) -> list[PolicyVersion]:
        return self._store.versions(policy_id)

    def policy(self, policy_id: str) -> Policy:
        """The parsed current version (parsed once per content hash)."""
        return self.resolve(policy_id)[1]

    def resolve(self, policy_id: str) -> tuple[PolicyVersion, Policy]:
        """The current version and its parsed policy, from one read of the store."""
        version = self.current(policy_id)
        if version.content_hash not in self._parsed:
            self._parsed[version.content_hash] = parse_policy(version.text, self._rego)
        return version, self._parsed[version.content_hash]

    def validate(self, text: str) -> Policy:
        """Check a policy text as an upload is checked (PolicyInvalid), storing nothing."""
        return validate_policy(text, self.refs, self._rego)

    def referenced_sets(self, text: str) -> frozenset[str]:
        """The reference sets a stored policy's text names (parsed once per content hash)."""
        key = content_hash(text)
        if key not in self._parsed:
            self._parsed[key] = parse_policy(text, self._rego)
        return self._parsed[key].referenced_sets()

    def put(self, policy_id: str, text: str, *, created_by: str, at: datetime,
            immutable: bool = False) -> PolicyVersion:
        policy = validate_policy(text, self.refs, self._rego)  # PolicyInvalid with line and reason
        with self._lock:
            versions = self._store.versions(policy_id)
            if versions and versions[-1].immutable:
                raise PolicyConflict(f"policy {policy_id!r} is immutable since version "
                                     f"{versions[-1].version}; it cannot change")
            version = PolicyVersion(policy_id=policy_id, version=len(versions) + 1, dialect=dialect_of(text),
                                    text=text, content_hash=content_hash(text), created_by=created_by,
                                    created_at=at, immutable=immutable)
            self._store.append(version)
            self._parsed[version.content_hash] = policy
            return version

    def make_immutable(self, policy_id: str, *, created_by: str, at: datetime) -> PolicyVersion:
        """Set the one-way flag: a new version with the same text, and no change after it."""
        with self._lock:
            current = self.current(policy_id)
            if current.immutable:
                return current
            version = replace(current, version=current.version + 1, created_by=created_by, created_at=at,
                              immutable=True)
            self._store.append(version)
            return version

    def put_reference_set(self, ref: ReferenceSet) -> None:
        self._store.put_reference_set(ref)

    def add_reference_values(self, name: str, values: tuple[Any, ...]) -> ReferenceSet:
        """Add values to a set (created if absent); values it has already are kept once."""
        def edit(current: ReferenceSet | None) -> ReferenceSet:
            if current is None:
                return ReferenceSet(name, values)
            return replace(current, values=(*current.values, *(v for v in values if v not in current.values)))
        return self._store.edit_reference_set(name, edit)

    def remove_reference_values(self, name: str, values: tuple[Any, ...]) -> ReferenceSet:
        """Remove values from a set; refused for a set that does not exist, a value it does not hold (a typo
        must not pass for a removal), and the last values (delete the set instead)."""
        def edit(current: ReferenceSet | None) -> ReferenceSet:
            if current is None:
                raise PolicyNotFound(f"no reference set {name!r}")
            missing = [v for v in values if v not in current.values]
            if missing:
                raise PolicyConflict(f"reference set {name!r} does not hold {', '.join(map(repr, missing[:5]))}")
            kept = tuple(v for v in current.values if v not in values)
            if not kept:
                raise PolicyConflict(f"removing every value of reference set {name!r} would leave it empty; "
                                     "delete the set instead")
            return replace(current, values=kept)
        return self._store.edit_reference_set(name, edit)

    def delete(self, policy_id: str, default: str) -> int:
        """Remove a policy with its history (a mistaken one must not block its reference sets forever).
        Refused for `default` (the policy of keys bound to none: replace it instead), for an immutable
        policy (the flag is one way), and, by the store, while a key is bound to it."""
        if policy_id == default:
            raise PolicyConflict(f"policy {default!r} applies to keys bound to no other policy: replace it "
                                 "(kbs policy put) rather than delete it")
        current = self.current(policy_id)  # PolicyNotFound
        if current.immutable:
            raise PolicyConflict(f"policy {policy_id!r} is immutable since version {current.version}; it stays")
        return self._store.delete_policy(policy_id)

    def delete_reference_set(self, name: str) -> None:
        """Refused while a current policy names the set: deleting it would break releases silently."""
        with self._lock:
            for policy_id in self._store.policy_ids():
                if name in self.policy(policy_id).referenced_sets():
                    raise PolicyConflict(f"reference set {name!r} is used by policy {policy_id!r}")
            self._store.delete_reference_set(name)
