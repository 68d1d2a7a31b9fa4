"""Reference values: named sets of allowed values (measurements, MRTDs, driver versions...).

They are managed apart from policies and referenced by name from both dialects.  A set
may expire: after its expiry it is treated as absent, so conditions on it fail closed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kbs import canonical
from kbs.errors import KbsError

SCALAR_TYPES = (str, int, float, bool)


class ReferenceValuesInvalid(KbsError):
    check = "refvalues.invalid"


@dataclass(frozen=True)
class ReferenceSet:
    name: str
    values: tuple[Any, ...]
    expires: datetime | None = None
    description: str = ""

    def active(self, at: datetime) -> bool:
        return self.expires is None or at < self.expires

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"values": list(self.values)}
        if self.expires is not None:
            out["expires"] = self.expires.isoformat()
        if self.description:
            out["description"] = self.description
        return out


class ReferenceValues:
    """An immutable collection of named reference sets."""

    def __init__(self, sets: Iterable[ReferenceSet] = ()) -> None:
        self._sets = {s.name: s for s in sets}

    def __contains__(self, name: object) -> bool:
        return name in self._sets

    def with_set(self, ref: ReferenceSet) -> ReferenceValues:
        """A copy with `ref` added or replacing the set of the same name."""
        return ReferenceValues([*(s for n, s in self._sets.items() if n != ref.name), ref])

    def without(self, name: str) -> ReferenceValues:
        return ReferenceValues(s for n, s in self._sets.items() if n != name)

    def digest(self, names: Iterable[str]) -> str:
        """SHA-256 (hex) of the named sets as they stand (RFC 8785 JSON of {name: set}; absent ones left out):
        what the release log records of the reference values a decision used."""
        used = {name: found.to_json() for name in sorted(names) if (found := self.get(name)) is not None}
        return hashlib.sha256(canonical.dumps(used)).hexdigest()

    def names(self) -> frozenset[str]:
        return frozenset(self._sets)

    def get(self, name: str) -> ReferenceSet | None:
        return self._sets.get(name)

    def lookup(self, name: str, at: datetime) -> tuple[tuple[Any, ...] | None, str]:
        """(values, '') when usable at `at`; (None, why not) otherwise."""
        ref = self._sets.get(name)
        if ref is None:
            return None, f"reference set {name!r} does not exist"
        if not ref.active(at):
            assert ref.expires is not None
            return None, f"reference set {name!r} expired at {ref.expires.isoformat()}"
        return ref.values, ""

    def as_data(self, at: datetime) -> dict[str, list[Any]]:
        """The sets usable at `at`, as Rego's `data.reference` sees them (expired ones absent)."""
        return {name: list(s.values) for name, s in self._sets.items() if s.active(at)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ReferenceValues:
        """{"name": [values]} or {"name": {"values": [...], "expires": RFC3339, "description": ...}}."""
        if not isinstance(document, Mapping):
            raise ReferenceValuesInvalid("reference values must be a JSON object of named sets")
        return cls(_parse_set(name, body) for name, body in document.items())

    @classmethod
    def load(cls, data: bytes) -> ReferenceValues:
        try:
            document = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ReferenceValuesInvalid(
                f"reference values are not JSON: line {exc.lineno}: {exc.msg}") from exc
        return cls.from_json(document)

    def to_json(self) -> dict[str, Any]:
        return {name: s.to_json() for name, s in sorted(self._sets.items())}


def _parse_set(name: str, body: Any) -> ReferenceSet:
    if not isinstance(name, str) or not name:
        raise ReferenceValuesInvalid("a reference set needs a non-empty name")
    expires = None
    description = ""
    if isinstance(body, Mapping):
        unknown = set(body) - {"values", "expires", "description"}
        if unknown:
            raise ReferenceValuesInvalid(f"reference set {name!r} has unknown keys {sorted(unknown)}")
        values = body.get("values")
        if "expires" in body:
            try:
                expires = datetime.fromisoformat(str(body["expires"]))
            except ValueError as exc:
                raise ReferenceValuesInvalid(f"reference set {name!r} expiry is not RFC 3339") from exc
            if expires.tzinfo is None:
                raise ReferenceValuesInvalid(f"reference set {name!r} expiry has no time zone")
            expires = expires.astimezone(UTC)
        description = str(body.get("description", ""))
    else:
        values = body
    if not isinstance(values, list) or not all(isinstance(v, SCALAR_TYPES) for v in values):
        raise ReferenceValuesInvalid(
            f"reference set {name!r} must hold a list of strings, numbers or booleans")
    return ReferenceSet(name=name, values=tuple(_normal(v) for v in values), expires=expires, description=description)


# Digests, ids and keys: what verifiers emit as lower-case hex.  A value that is all hex digits (even length,
# 4 bytes or more) is kept in lower case, so an upper-case measurement pasted from a tool still matches.
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}){4,}")


def _normal(value: Any) -> Any:
    return value.lower() if isinstance(value, str) and _HEX.fullmatch(value) else value
