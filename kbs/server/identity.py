"""What a release-log entry says about the evidence behind a decision: per attester, its verifier and the
claims that identify it (each verifier names them: IDENTITY beside its claim schema), never a secret.

    [{"submod": "cpu0", "verifier": "<cpu verifier>", "<identifying claim>": "…", …},
     {"submod": "gpu0", "verifier": "<gpu verifier>", …}]

Written as compact JSON with sorted keys (the log entry's body embeds it; the tree hashes the body in
RFC 8785 form).  A claim a verifier did not emit for this attester is left out.  A verifier's list is read
the first time its evidence is seen, so a worker loads nothing of a verifier it does not enable.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from kbs.evidence.registry import KNOWN
from kbs.policy.ear import ANNOTATED_EVIDENCE, VERIFIER_KEY

_MISSING = object()


@functools.cache
def _identity(verifier: str) -> tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]:
    """(its annotated-evidence key, (dotted path, path parts) of each identifying claim); none if unknown."""
    known = KNOWN.get(verifier)
    if known is None:
        return "", ()
    return known.annotation or known.name, tuple((p, tuple(p.split("."))) for p in known.identity())


def _resolve(node: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def evidence_identity(document: Mapping[str, Any]) -> str:
    """The identity summary of an EAR claims document (kbs.policy.ear), as JSON text."""
    out = []
    submods = document.get("submods")
    for name, sub in (submods.items() if isinstance(submods, Mapping) else ()):
        if not isinstance(sub, Mapping):
            continue
        verifier = sub.get(VERIFIER_KEY)
        entry: dict[str, Any] = {"submod": name, "verifier": verifier}
        annotation, paths = _identity(verifier) if isinstance(verifier, str) else ("", ())
        evidence = sub.get(ANNOTATED_EVIDENCE)
        claims = evidence.get(annotation) if isinstance(evidence, Mapping) else None
        for dotted, parts in paths:
            value = _resolve(claims, parts)
            if value is not _MISSING and (value is None or isinstance(value, str | int | float | bool | list)):
                entry[dotted] = value
        out.append(entry)
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS).decode()
