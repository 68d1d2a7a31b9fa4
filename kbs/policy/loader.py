"""Recognise a policy's dialect, parse it, and check it against the known reference sets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kbs.evidence.registry import offline_appraisal
from kbs.policy.ear import Submod, ear_document
from kbs.policy.json_policy import JsonPolicy
from kbs.policy.model import Policy, PolicyInvalid
from kbs.policy.refvalues import ReferenceValues

if TYPE_CHECKING:
    from kbs.policy.rego_pool import RegoWorkerPool


def dialect_of(text: str) -> str:
    """JSON starts with an object (or, wrongly, an array); Rego with a comment or `package`."""
    return "json" if text.lstrip()[:1] in ("{", "[") else "rego"


def parse_policy(text: str, rego: RegoWorkerPool | None = None) -> Policy:
    """JSON policies are parsed here; Rego ones are checked and later evaluated in `rego`'s workers."""
    if dialect_of(text) == "json":
        return JsonPolicy.parse(text)
    if rego is None:
        raise PolicyInvalid("Rego policies are not enabled here (no Rego worker pool)")
    from kbs.policy.rego import RegoPolicy

    return RegoPolicy.parse(text, rego)


def validate_policy(text: str, refs: ReferenceValues, rego: RegoWorkerPool | None = None) -> Policy:
    """Parse and check every referenced reference-value set exists: refused at upload, never at release."""
    policy = parse_policy(text, rego)
    for name in sorted(policy.referenced_sets()):
        if name not in refs:
            raise PolicyInvalid(f"references unknown reference-value set {name!r}; known: "
                                f"{', '.join(sorted(refs.names())) or '(none)'}", line=_line_of(text, name))
    return policy


def _line_of(text: str, name: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", line):
            return number
    return None


def claims_document(claims: Mapping[str, Any], at: datetime | None = None) -> dict[str, Any]:
    """An EAR claims document as is, or a verifier's `kbs verify <tee> --json` output wrapped into one
    (the verifier that recognises it supplies the trust vector)."""
    if "submods" in claims:
        return dict(claims)
    appraisal = offline_appraisal(claims)
    if appraisal is not None:
        return ear_document([Submod(appraisal)], issued_at=at or datetime.now(UTC))
    raise ValueError("claims are neither an EAR claims document (with 'submods') nor the output of "
                     "'kbs verify <tee> --json'")
