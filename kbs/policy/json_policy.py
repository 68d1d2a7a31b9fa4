"""The JSON policy dialect: Azure Secure Key Release's grammar, plus `in` and version comparison.

    policy    = {"version": "1.0.0", "anyOf" | "allOf": [authority, ...]}
    authority = {"authority": "local:<verifier>" (local:snp, local:tdx, local:nvgpu, local:sample, ...),
                 "anyOf" | "allOf": [condition, ...]}
    condition = {"claim": PATH, OPERATOR: VALUE} | {"anyOf": [...]} | {"allOf": [...]}

An authority block applies to the claims its verifier produced (named as the verifier names itself,
so this module knows no TEE): it holds when the document
has at least one submod from that verifier and the block holds for every such submod (all
eight GPUs of a machine, not just one).  Inside a block a claim PATH is dot-separated
(`\\.` for a literal dot) and is resolved against the EAR document, where the first segment
may also be a key of the submod's annotated evidence (`snp.measurement`; `nvidia.measres` in a
`local:nvgpu` block, Trustee's name for those claims) or `submod` (the submod itself, e.g.
`submod.ear\\.status`).

A missing claim makes its condition false; so does a type mismatch.  The policy is data:
no loops, no code, every condition explained.  Malformed policies are refused at upload
with the line of the offending object.
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kbs.evidence.claimschema import json_type
from kbs.policy.ear import submods_by_tee
from kbs.policy.model import Decision, Explanation, PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceValues

AUTHORITY = re.compile(r"local:([a-z][a-z0-9-]{0,31})")  # a verifier's name, as the registry has it
SCALARS = (str, int, float, bool)
_MISSING = object()

COMPARISONS = {"equals", "notEquals", "less", "lessOrEquals", "greater", "greaterOrEquals"}
VERSION_COMPARISONS = {"versionEquals", "versionLess", "versionLessOrEquals", "versionGreater",
                       "versionGreaterOrEquals"}
OPERATORS = COMPARISONS | VERSION_COMPARISONS | {"exists", "in"}

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "equals": lambda a, b: a == b, "notEquals": lambda a, b: a != b,
    "less": lambda a, b: a < b, "lessOrEquals": lambda a, b: a <= b,
    "greater": lambda a, b: a > b, "greaterOrEquals": lambda a, b: a >= b,
}


# -- parsing with line numbers -------------------------------------------------------------

class _Obj(dict[str, Any]):
    """A JSON object that remembers the line it started on."""

    line: int = 0


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _loads_with_lines(text: str) -> Any:
    decoder = json.JSONDecoder(object_pairs_hook=_pairs)
    original = decoder.parse_object  # type: ignore[attr-defined]

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[_Obj, int]:
        s, start = s_and_end
        try:
            obj, end = original(s_and_end, *args)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            raise PolicyInvalid(str(exc), line=s.count("\n", 0, start) + 1) from exc
        obj.line = s.count("\n", 0, start) + 1
        return obj, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    # The C scanner would bypass parse_object; the Python one calls it for every object.
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise PolicyInvalid(f"not valid JSON: {exc.msg}", line=exc.lineno) from exc


def split_path(path: str) -> tuple[str, ...]:
    """'a.b\\.c' -> ('a', 'b.c')."""
    return tuple(part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", path))


def parse_version(value: Any) -> tuple[int, ...] | None:
    """'550.144.03' -> (550, 144, 3); an int is a one-part version; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value,)
    if not isinstance(value, str) or not re.fullmatch(r"\d+([.-]\d+)*", value.strip()):
        return None
    return tuple(int(p) for p in re.split(r"[.-]", value.strip()))


# -- the validated policy tree -------------------------------------------------------------

@dataclass(frozen=True)
class ClaimCondition:
    claim: tuple[str, ...]
    claim_text: str
    operator: str
    value: Any  # scalar, list of scalars, {"ref": name} for `in`, bool for `exists`
    where: str
    line: int


@dataclass(frozen=True)
class Group:
    kind: str  # anyOf or allOf
    children: tuple[ClaimCondition | Group, ...]
    where: str
    line: int


@dataclass(frozen=True)
class AuthorityBlock:
    authority: str
    body: Group
    where: str
    line: int


def _fail(message: str, obj: Any) -> PolicyInvalid:
    return PolicyInvalid(message, line=getattr(obj, "line", None))


def _group_key(obj: _Obj, where: str) -> str:
    keys = [k for k in ("anyOf", "allOf") if k in obj]
    if len(keys) != 1:
        raise _fail(f"{where}: needs exactly one of anyOf or allOf", obj)
    if not isinstance(obj[keys[0]], list) or not obj[keys[0]]:
        raise _fail(f"{where}.{keys[0]}: must be a non-empty list", obj)
    return keys[0]


def _parse_group(obj: _Obj, where: str) -> Group:
    key = _group_key(obj, where)
    extra = set(obj) - {key}
    if extra:
        raise _fail(f"{where}: unexpected keys {sorted(extra)} beside {key}", obj)
    children = tuple(_parse_condition(child, f"{where}.{key}[{i}]", obj)
                     for i, child in enumerate(obj[key]))
    return Group(key, children, where, obj.line)


def _parse_condition(obj: Any, where: str, parent: _Obj) -> ClaimCondition | Group:
    if not isinstance(obj, _Obj):
        raise _fail(f"{where}: a condition must be an object", parent)
    if "claim" not in obj:
        return _parse_group(obj, where)
    claim = obj["claim"]
    if not isinstance(claim, str) or not claim or any(not p for p in split_path(claim)):
        raise _fail(f"{where}: claim must be a non-empty dotted path", obj)
    operators = [k for k in obj if k != "claim"]
    if len(operators) != 1:
        raise _fail(f"{where}: needs exactly one operator beside claim, found {sorted(operators)}", obj)
    op = operators[0]
    if op not in OPERATORS:
        raise _fail(f"{where}: unknown operator {op!r}; known: {', '.join(sorted(OPERATORS))}", obj)
    value = obj[op]
    _check_operand(op, value, where, obj)
    return ClaimCondition(split_path(claim), claim, op, value, where, obj.line)


def _check_operand(op: str, value: Any, where: str, obj: _Obj) -> None:
    if op == "exists":
        if not isinstance(value, bool):
            raise _fail(f"{where}: exists takes true or false", obj)
    elif op == "in":
        is_ref = isinstance(value, Mapping) and set(value) == {"ref"} and isinstance(value["ref"], str)
        is_list = isinstance(value, list) and value and all(isinstance(v, SCALARS) for v in value)
        if not (is_ref or is_list):
            raise _fail(f"{where}: in takes a non-empty list of values or {{\"ref\": \"<set name>\"}}", obj)
    elif op in VERSION_COMPARISONS:
        if parse_version(value) is None:
            raise _fail(f"{where}: {op} takes a version like \"1.55.43\", not {value!r}", obj)
    elif not isinstance(value, SCALARS):
        raise _fail(f"{where}: {op} takes a string, number or boolean (not an object or list)", obj)
    elif op not in ("equals", "notEquals") and json_type(value) != "number":
        raise _fail(f"{where}: {op} compares numbers; use versionGreaterOrEquals etc. for versions", obj)


def _refs_in(node: ClaimCondition | Group) -> set[str]:
    if isinstance(node, ClaimCondition):
        if node.operator == "in" and isinstance(node.value, Mapping):
            return {node.value["ref"]}
        return set()
    return set().union(*(_refs_in(c) for c in node.children))


# -- evaluation ----------------------------------------------------------------------------

def _resolve(context: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = context
    for part in path:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _same_kind(a: Any, b: Any) -> bool:
    return json_type(a) == json_type(b)


def _judge(cond: ClaimCondition, seen: Any, refs: ReferenceValues, at: datetime) -> tuple[bool, str]:
    """(held, why) for one condition on the value seen."""
    op, want = cond.operator, cond.value
    if op == "exists":
        present = seen is not _MISSING
        return present == want, ("claim is present" if present else "claim is missing")
    if seen is _MISSING:
        return False, "claim is missing"
    if op == "in":
        if isinstance(want, Mapping):
            values, reason = refs.lookup(want["ref"], at)
            if values is None:
                return False, reason
            want = values
        if not isinstance(seen, SCALARS):
            return False, f"type mismatch: claim is {json_type(seen)}, not a single value"
        held = any(_same_kind(seen, v) and seen == v for v in want)
        return held, "value is in the set" if held else "value is not in the set"
    if op in VERSION_COMPARISONS:
        have, need = parse_version(seen), parse_version(want)
        if have is None or need is None:
            return False, f"type mismatch: claim {seen!r} is not a version"
        width = max(len(have), len(need))
        have, need = have + (0,) * (width - len(have)), need + (0,) * (width - len(need))
        held = _ORDER[_unversioned(op)](have, need)
        return held, "version comparison holds" if held else "version comparison fails"
    if not _same_kind(seen, want):
        return False, f"type mismatch: claim is {json_type(seen)}, policy value is {json_type(want)}"
    held = _ORDER[op](seen, want)
    return held, "holds" if held else "does not hold"


def _unversioned(op: str) -> str:
    """'versionGreaterOrEquals' -> 'greaterOrEquals'."""
    base = op.removeprefix("version")
    return base[0].lower() + base[1:]


def _explain_condition(cond: ClaimCondition, context: Mapping[str, Any], refs: ReferenceValues,
                       at: datetime) -> Explanation:
    seen = _resolve(context, cond.claim)
    held, why = _judge(cond, seen, refs, at)
    shown = None if seen is _MISSING else seen
    return Explanation(kind="claim", ok=held, where=cond.where, line=cond.line, claim=cond.claim_text,
                       operator=cond.operator, expected=cond.value, seen=shown,
                       detail=f"{cond.claim_text} {cond.operator} {json.dumps(cond.value)}: saw "
                              f"{json.dumps(shown) if seen is not _MISSING else '(missing)'}; {why}")


def _holds_group(group: Group, context: Mapping[str, Any], refs: ReferenceValues, at: datetime) -> bool:
    """`_explain_group(...).ok` without building the explanation (every condition judged there too)."""
    results = [_judge(c, _resolve(context, c.claim), refs, at)[0] if isinstance(c, ClaimCondition)
               else _holds_group(c, context, refs, at) for c in group.children]
    return any(results) if group.kind == "anyOf" else all(results)


def _explain_group(group: Group, context: Mapping[str, Any], refs: ReferenceValues,
                   at: datetime) -> Explanation:
    children = tuple(_explain_condition(c, context, refs, at) if isinstance(c, ClaimCondition)
                     else _explain_group(c, context, refs, at) for c in group.children)
    held = any(c.ok for c in children) if group.kind == "anyOf" else all(c.ok for c in children)
    passed = sum(c.ok for c in children)
    return Explanation(kind=group.kind, ok=held, where=group.where, line=group.line, children=children,
                       detail=f"{group.kind}: {passed} of {len(children)} hold")


@dataclass(frozen=True)
class JsonPolicy:
    """A validated policy of the JSON dialect."""

    combine: str  # anyOf or allOf over the authority blocks
    line: int
    blocks: tuple[AuthorityBlock, ...]
    dialect: str = "json"

    @classmethod
    def parse(cls, text: str) -> JsonPolicy:
        doc = _loads_with_lines(text)
        if not isinstance(doc, _Obj):
            raise PolicyInvalid("a policy must be a JSON object", line=1)
        if doc.get("version") != "1.0.0":
            raise _fail("version must be \"1.0.0\"", doc)
        key = _group_key(doc, "policy")
        extra = set(doc) - {"version", key}
        if extra:
            raise _fail(f"policy: unexpected keys {sorted(extra)}", doc)
        blocks = []
        for i, obj in enumerate(doc[key]):
            where = f"{key}[{i}]"
            if not isinstance(obj, _Obj) or "authority" not in obj:
                raise _fail(f"{where}: each entry must be an authority block {{\"authority\": ..., "
                            "\"allOf\"|\"anyOf\": [...]}}", obj if isinstance(obj, _Obj) else doc)
            authority = obj["authority"]
            if not isinstance(authority, str) or not AUTHORITY.fullmatch(authority):
                raise _fail(f"{where}: unknown authority {authority!r}; an authority is local:<verifier>, "
                            "e.g. local:snp, local:tdx, local:nvgpu", obj)
            body = _Obj({k: v for k, v in obj.items() if k != "authority"})
            body.line = obj.line
            blocks.append(AuthorityBlock(authority, _parse_group(body, where), where, obj.line))
        return cls(key, doc.line, tuple(blocks))

    def referenced_sets(self) -> frozenset[str]:
        return frozenset(set().union(*(_refs_in(b.body) for b in self.blocks)))

    def evaluate(self, claims: Mapping[str, Any], refs: ReferenceValues, request: ResourceRequest,
                 at: datetime) -> Decision:
        """The decision now; its explanation (the same walk, with every node's text) when first asked for."""
        if not isinstance(claims, Mapping):
            claims = {}
        by_tee = submods_by_tee(claims)
        results = [self._holds_block(b, claims, by_tee, refs, at) for b in self.blocks]
        held = any(results) if self.combine == "anyOf" else all(results)
        return Decision(held, explain=lambda: self._explain(claims, by_tee, refs, at))

    def _explain(self, claims: Mapping[str, Any], by_tee: Mapping[str, list[Mapping[str, Any]]],
                 refs: ReferenceValues, at: datetime) -> Explanation:
        children = tuple(self._explain_block(b, claims, by_tee, refs, at) for b in self.blocks)
        held = any(c.ok for c in children) if self.combine == "anyOf" else all(c.ok for c in children)
        return Explanation(kind="policy", ok=held, where="policy", line=self.line, children=children,
                           detail=f"policy {'allows' if held else 'denies'} ({self.combine} over "
                                  f"{len(children)} authorit{'y' if len(children) == 1 else 'ies'})")

    @staticmethod
    def _contexts(block: AuthorityBlock, claims: Mapping[str, Any],
                  by_tee: Mapping[str, list[Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
        """What the block's claim paths resolve against, one per submod of its verifier.  Paths may start at the
        annotated evidence: the verifier's claims under its Trustee name (`snp.`, `tdx.`, `nvidia.` for
        local:nvgpu), `report_data`, `init_data_claims` …"""
        out: list[Mapping[str, Any]] = []
        for sub in by_tee.get(block.authority.removeprefix("local:"), []):
            evidence = sub.get("ear.veraison.annotated-evidence")
            out.append({**claims, **(evidence if isinstance(evidence, Mapping) else {}), "submod": sub})
        return out

    @classmethod
    def _holds_block(cls, block: AuthorityBlock, claims: Mapping[str, Any],
                     by_tee: Mapping[str, list[Mapping[str, Any]]], refs: ReferenceValues, at: datetime) -> bool:
        contexts = cls._contexts(block, claims, by_tee)
        return bool(contexts) and all([_holds_group(block.body, c, refs, at) for c in contexts])

    @classmethod
    def _explain_block(cls, block: AuthorityBlock, claims: Mapping[str, Any],
                       by_tee: Mapping[str, list[Mapping[str, Any]]], refs: ReferenceValues,
                       at: datetime) -> Explanation:
        contexts = cls._contexts(block, claims, by_tee)
        if not contexts:
            return Explanation(kind="authority", ok=False, where=block.where, line=block.line,
                               detail=f"{block.authority}: the claims hold no evidence from this verifier")
        per_sub = [_explain_group(block.body, context, refs, at) for context in contexts]
        held = all(e.ok for e in per_sub)
        return Explanation(kind="authority", ok=held, where=block.where, line=block.line,
                           children=tuple(per_sub),
                           detail=f"{block.authority}: holds for {sum(e.ok for e in per_sub)} of "
                                  f"{len(per_sub)} submod(s){'' if held else '; every one must'}")
