"""What every policy dialect shares: the request it judges, its decision and the explanation.

A decision always carries an explanation tree so an operator can see why a policy said
no: every condition with the value it saw and whether it held.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from kbs.errors import KbsError
from kbs.policy.refvalues import ReferenceValues


class PolicyInvalid(KbsError):
    """A policy was refused at upload: it does not parse or refers to something unknown."""

    check = "policy.invalid"

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class ResourceRequest:
    """What the guest asked for, as Trustee's resource policies see it in `data`."""

    plugin: str = "resource"
    path: tuple[str, ...] = ()
    query: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, resource: str, plugin: str = "resource") -> ResourceRequest:
        """'repo/type/tag' -> request; each segment non-empty."""
        parts = tuple(resource.strip("/").split("/"))
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"resource {resource!r} is not REPO/TYPE/TAG")
        return cls(plugin=plugin, path=parts)


@dataclass(frozen=True)
class Explanation:
    """One node of the evaluation: a condition, a group, or a whole policy."""

    kind: str  # policy, authority, anyOf, allOf, claim, rule
    ok: bool
    detail: str
    where: str = ""
    line: int | None = None
    claim: str | None = None
    operator: str | None = None
    expected: Any = None
    seen: Any = None
    children: tuple[Explanation, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "ok": self.ok, "detail": self.detail}
        for name in ("where", "line", "claim", "operator"):
            if getattr(self, name) not in (None, ""):
                out[name] = getattr(self, name)
        if self.kind == "claim":
            out["expected"] = self.expected
            out["seen"] = self.seen
        if self.children:
            out["children"] = [c.to_json() for c in self.children]
        return out

    def render(self, depth: int = 0) -> str:
        mark = "✓" if self.ok else "✗"
        where = f" [{self.where}" + (f", line {self.line}" if self.line else "") + "]" if self.where else ""
        lines = [f"{'  ' * depth}{mark} {self.detail}{where}"]
        lines += [c.render(depth + 1) for c in self.children]
        return "\n".join(lines)


class Decision:
    """Whether a policy allows, and why.  The explanation may be given, or built when first asked for: a JSON
    policy's allow (most decisions) never needs its tree of condition texts."""

    __slots__ = ("_explain", "_explanation", "allow")

    def __init__(self, allow: bool, explanation: Explanation | None = None, *,
                 explain: Callable[[], Explanation] | None = None) -> None:
        if (explanation is None) == (explain is None):
            raise TypeError("a Decision needs an explanation or a way to build one (not both)")
        self.allow = allow
        self._explanation = explanation
        self._explain = explain

    @property
    def explanation(self) -> Explanation:
        if self._explanation is None:
            assert self._explain is not None
            self._explanation, self._explain = self._explain(), None
        return self._explanation

    def __repr__(self) -> str:
        return f"Decision(allow={self.allow!r}, explanation={self.explanation!r})"

    def to_json(self) -> dict[str, Any]:
        return {"allow": self.allow, "explanation": self.explanation.to_json()}

    def __str__(self) -> str:
        return json.dumps(self.to_json())


class Policy(Protocol):
    """A parsed, validated policy of either dialect."""

    @property
    def dialect(self) -> str:
        """'json' or 'rego'."""

    def referenced_sets(self) -> frozenset[str]:
        """Names of the reference-value sets the policy uses (checked at upload)."""

    def evaluate(self, claims: Mapping[str, Any], refs: ReferenceValues, request: ResourceRequest,
                 at: datetime) -> Decision:
        """Never raises on any claims document: a failure is a deny with its reason."""
