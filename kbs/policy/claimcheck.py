"""Claim paths a policy names, checked against the claims the verifiers publish (kbs.evidence.claimschema).

A policy naming `snp.measurment` parses, and every guest is then denied.  At upload the broker
warns (and with `strict` refuses) where a policy
- names a claim no verifier emits there (with the closest names it does emit),
- compares a claim in a way its type can never satisfy (`snp.vmpl equals "0"`: a number against a string),
- has an authority block for a verifier that does not exist or that this broker does not enable.

JSON policies are checked in full: every condition sits in an authority block that says whose claims
it reads.  Rego is code, so only the paths written into a verifier's annotated evidence
(`["ear.veraison.annotated-evidence"]["snp"]["measurement"]`, or with dots) are checked, by name.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kbs.evidence.claimschema import Schema, json_type, leaf_types, lookup, names_at
from kbs.evidence.registry import KNOWN, KnownVerifier
from kbs.policy.ear import ANNOTATED_EVIDENCE, document_schema, evidence_schema, submod_schema
from kbs.policy.json_policy import COMPARISONS, VERSION_COMPARISONS, ClaimCondition, Group, JsonPolicy
from kbs.policy.loader import dialect_of
from kbs.policy.model import PolicyInvalid

MAX_WARNINGS = 50  # a policy of typos gets the first fifty, not a megabyte of them


@dataclass(frozen=True)
class ClaimWarning:
    line: int | None
    claim: str  # the path or authority concerned
    message: str

    def render(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "claim": self.claim, "message": self.message}


class PolicyClaimsUnknown(PolicyInvalid):
    """`strict`: the policy names claims no verifier emits, or compares them against the wrong type."""

    check = "policy.claims"

    def __init__(self, warnings: Sequence[ClaimWarning]) -> None:
        shown = "; ".join(w.render() for w in warnings[:10])
        more = f"; and {len(warnings) - 10} more" if len(warnings) > 10 else ""
        super().__init__(f"names claims the verifiers do not emit as written (strict): {shown}{more}")
        self.warnings = tuple(warnings)


def check_policy_claims(text: str, enabled: Sequence[str] | None = None) -> list[ClaimWarning]:
    """Warnings for a policy text (none for text that does not parse: its upload fails on its own).
    `enabled`: the verifiers of the broker that will run it (None: every known verifier)."""
    if dialect_of(text) == "rego":
        return list(_rego_warnings(text))[:MAX_WARNINGS]
    try:
        policy = JsonPolicy.parse(text)
    except PolicyInvalid:
        return []
    return list(_json_warnings(policy, enabled))[:MAX_WARNINGS]


def enforce(warnings: Sequence[ClaimWarning], strict: bool) -> None:
    if strict and warnings:
        raise PolicyClaimsUnknown(warnings)


# -- JSON ----------------------------------------------------------------------------------

def _json_warnings(policy: JsonPolicy, enabled: Sequence[str] | None) -> Iterator[ClaimWarning]:
    for block in policy.blocks:
        tee = block.authority.removeprefix("local:")
        known = KNOWN.get(tee)
        if known is None:
            yield ClaimWarning(block.line, block.authority, f"{block.authority}: no verifier of that name, so this "
                               f"block never holds; known: {', '.join('local:' + n for n in KNOWN)}")
            continue
        if enabled is not None and tee not in enabled:
            yield ClaimWarning(block.line, block.authority, f"{block.authority}: this broker does not enable the "
                               f"{tee} verifier ([verifiers] enabled), so this block never holds")
        context = _block_context(known)
        for condition in _conditions(block.body):
            yield from _condition_warnings(condition, context, block.authority)


def _block_context(known: KnownVerifier) -> Schema:
    """What a condition in an authority block resolves against (kbs.policy.json_policy._explain_block):
    the EAR document, the submod's annotated evidence on top, and the submod itself as `submod`."""
    own = {known.annotation or known.name: known.claim_schema()}
    return {**document_schema(_all_claims()), **evidence_schema(own), "submod": submod_schema(own)}


def _all_claims() -> dict[str, Schema]:
    return {known.annotation or known.name: known.claim_schema() for known in KNOWN.values()}


def _conditions(node: ClaimCondition | Group) -> Iterator[ClaimCondition]:
    if isinstance(node, ClaimCondition):
        yield node
    else:
        for child in node.children:
            yield from _conditions(child)


def _condition_warnings(cond: ClaimCondition, context: Schema, authority: str) -> Iterator[ClaimWarning]:
    found = lookup(context, cond.claim)
    if found is None:
        yield ClaimWarning(cond.line, cond.claim_text, f"{cond.claim_text}: no such claim in a {authority} block, "
                           f"so this condition never holds{_suggestion(context, cond.claim)}")
        return
    if cond.operator == "exists":
        return
    have = leaf_types(found)
    if "any" in have:
        return
    needed = _types_needed(cond)
    if needed is not None and not have & needed:
        yield ClaimWarning(cond.line, cond.claim_text, f"{cond.claim_text} is {_kinds(have)}, so {cond.operator} "
                           f"{_operand(cond.value)} never {'fails' if cond.operator == 'notEquals' else 'holds'}")


def _types_needed(cond: ClaimCondition) -> frozenset[str] | None:
    """The JSON types a claim must have for the condition to be able to hold (None: not checked)."""
    op, value = cond.operator, cond.value
    if op in ("equals", "notEquals"):
        return frozenset({json_type(value)})
    if op in COMPARISONS:
        return frozenset({"number"})
    if op in VERSION_COMPARISONS:
        return frozenset({"string", "number"})
    if op == "in":
        if isinstance(value, Mapping):  # a reference set: its values are strings
            return frozenset({"string"})
        return frozenset(json_type(v) for v in value)
    return None


def _kinds(types: frozenset[str]) -> str:
    names = sorted(types)
    article = "an" if names[0][0] in "aeiou" else "a"
    return f"{article} {' or '.join(names)}"


def _operand(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"reference set {value.get('ref')!r} (strings)"
    if isinstance(value, list):
        return f"{json.dumps(value)} (a list of {' or '.join(sorted({json_type(v) for v in value}))})"
    return f"{json.dumps(value)} (a {json_type(value)})"


def _suggestion(context: Schema, path: Sequence[str]) -> str:
    """ ' (did you mean snp.measurement?)' from the names at the deepest level the path reached."""
    for depth in range(len(path) - 1, -1, -1):
        parent = lookup(context, path[:depth])
        if parent is None:
            continue
        close = difflib.get_close_matches(path[depth], names_at(parent), n=3, cutoff=0.6)
        if not close:
            return ""
        prefix = ".".join(part.replace(".", "\\.") for part in path[:depth])
        shown = [f"{prefix}.{name.replace('.', chr(92) + '.')}" if prefix else name for name in close]
        return f" (did you mean {' or '.join(shown)}?)"
    return ""


# -- Rego ----------------------------------------------------------------------------------

_STEP = re.compile(r'\s*(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*"((?:[^"\\\n]|\\.){1,200})"\s*\])')
_ANCHOR = re.compile(r'\[\s*"' + re.escape(ANNOTATED_EVIDENCE) + r'"\s*\]')


def _rego_warnings(text: str) -> Iterator[ClaimWarning]:
    for anchor in _ANCHOR.finditer(text):
        steps, position = [], anchor.end()
        while (step := _STEP.match(text, position)) is not None:
            steps.append(step.group(1) or step.group(2))
            position = step.end()
        if not steps:
            continue
        line = text.count("\n", 0, anchor.start()) + 1
        schema = evidence_schema(_all_claims())
        if lookup(schema, steps) is None:
            path = ".".join(steps)
            yield ClaimWarning(line, path, f"{path}: no verifier emits this claim in the annotated evidence, so a "
                               f"rule reading it never matches{_suggestion(schema, steps)}")

