"""The JSON (SKR-style) dialect: every operator allowing and denying, nesting, missing claims,
type mismatches, versions, reference sets and their expiry, and refusal at upload."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs.policy.ear import ear_document
from kbs.policy.json_policy import JsonPolicy
from kbs.policy.loader import validate_policy
from kbs.policy.model import PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceSet, ReferenceValues
from tests.appraisals import gpu_sub, snp_sub

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
REQUEST = ResourceRequest.parse("prod/key/disk")

SNP: dict[str, Any] = {"measurement": "aa" * 48, "policy_debug_allowed": False, "policy_migrate_ma": False,
                       "reported_tcb_snp": 22, "reported_tcb_microcode": 210, "vmpl": 0, "report_data": "00" * 64,
                       "init_data": "11" * 32, "firmware": {"current": {"major": 1, "minor": 55, "build": 40}},
                       "firmware_version": "1.55.40", "product": "Genoa", "chip_id": "cc" * 64}
GPU = {"driver_version": "550.144.03", "vbios_version": "96.00.9F.00.01", "measres": "success"}


def doc(snp: dict[str, Any] | None = None, gpus: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    subs = [snp_sub(snp if snp is not None else SNP)]
    subs += [gpu_sub(g) for g in (gpus if gpus is not None else [GPU])]
    return ear_document(subs, issued_at=NOW)


def policy(*conditions: dict[str, Any], authority: str = "local:snp", combine: str = "allOf") -> str:
    return json.dumps({"version": "1.0.0", "anyOf": [{"authority": authority, combine: list(conditions)}]},
                      indent=1)


def decide(text: str, claims: dict[str, Any] | None = None, refs: ReferenceValues | None = None,
           at: dt.datetime = NOW) -> bool:
    refs = refs or ReferenceValues()
    p = validate_policy(text, refs)
    decision = p.evaluate(claims if claims is not None else doc(), refs, REQUEST, at)
    assert decision.explanation.ok is decision.allow  # the explanation, built later, agrees with the decision
    return decision.allow


# (condition, allowed on SNP above) — each operator with a case that allows and one that denies.
OPERATOR_CASES: list[tuple[dict[str, Any], bool]] = [
    ({"claim": "snp.policy_debug_allowed", "equals": False}, True),
    ({"claim": "snp.policy_debug_allowed", "equals": True}, False),
    ({"claim": "snp.product", "notEquals": "Milan"}, True),
    ({"claim": "snp.product", "notEquals": "Genoa"}, False),
    ({"claim": "snp.reported_tcb_snp", "less": 23}, True),
    ({"claim": "snp.reported_tcb_snp", "less": 22}, False),
    ({"claim": "snp.reported_tcb_snp", "lessOrEquals": 22}, True),
    ({"claim": "snp.reported_tcb_snp", "lessOrEquals": 21}, False),
    ({"claim": "snp.reported_tcb_snp", "greater": 21}, True),
    ({"claim": "snp.reported_tcb_snp", "greater": 22}, False),
    ({"claim": "snp.reported_tcb_snp", "greaterOrEquals": 22}, True),
    ({"claim": "snp.reported_tcb_snp", "greaterOrEquals": 23}, False),
    ({"claim": "snp.firmware.current.minor", "greaterOrEquals": 55}, True),
    ({"claim": "snp.measurement", "exists": True}, True),
    ({"claim": "snp.no_such_claim", "exists": True}, False),
    ({"claim": "snp.no_such_claim", "exists": False}, True),
    ({"claim": "snp.measurement", "exists": False}, False),
    ({"claim": "snp.product", "in": ["Milan", "Genoa"]}, True),
    ({"claim": "snp.product", "in": ["Milan", "Turin"]}, False),
    ({"claim": "snp.firmware_version", "versionGreaterOrEquals": "1.55.29"}, True),
    ({"claim": "snp.firmware_version", "versionGreaterOrEquals": "1.55.41"}, False),
    ({"claim": "snp.firmware_version", "versionGreater": "1.9"}, True),  # 55 > 9: numeric, not lexical
    ({"claim": "snp.firmware_version", "versionLess": "1.100"}, True),
    ({"claim": "snp.firmware_version", "versionLess": "1.55.40"}, False),
    ({"claim": "snp.firmware_version", "versionLessOrEquals": "1.55.40"}, True),
    ({"claim": "snp.firmware_version", "versionEquals": "1.55.40.0"}, True),  # trailing zeros pad
    ({"claim": "snp.firmware_version", "versionEquals": "1.55.4"}, False),
    ({"claim": "submod.ear\\.status", "equals": "affirming"}, True),
    ({"claim": "submods.cpu0.ear\\.trustworthiness-vector.hardware", "lessOrEquals": 31}, True),
    ({"claim": "iss", "equals": "kbs"}, True),
]


@pytest.mark.parametrize(("condition", "allowed"), OPERATOR_CASES, ids=[
    f"{next(k for k in c if k != 'claim')}-{a}-{i}" for i, (c, a) in enumerate(OPERATOR_CASES)])
def test_operator(condition: dict[str, Any], allowed: bool) -> None:
    assert decide(policy(condition)) is allowed


def test_nesting_any_inside_all_inside_any() -> None:
    inner_any = {"anyOf": [{"claim": "snp.product", "equals": "Milan"},
                           {"allOf": [{"claim": "snp.product", "equals": "Genoa"},
                                      {"claim": "snp.reported_tcb_snp", "greaterOrEquals": 20}]}]}
    assert decide(policy(inner_any, {"claim": "snp.vmpl", "equals": 0}))
    assert not decide(policy(inner_any, {"claim": "snp.vmpl", "equals": 1}))
    assert decide(policy({"claim": "snp.vmpl", "equals": 1}, inner_any, combine="anyOf"))
    assert not decide(policy({"claim": "snp.vmpl", "equals": 1}, {"claim": "snp.product", "equals": "x"},
                             combine="anyOf"))


def test_top_level_any_of_authorities() -> None:
    text = json.dumps({"version": "1.0.0", "anyOf": [
        {"authority": "local:tdx", "allOf": [{"claim": "tdx.mr_td", "exists": True}]},
        {"authority": "local:snp", "allOf": [{"claim": "snp.vmpl", "equals": 0}]}]})
    assert decide(text)
    all_of = text.replace('"anyOf": [{"authority"', '"allOf": [{"authority"', 1)
    assert not decide(all_of)  # there is no TDX evidence


@pytest.mark.parametrize(("condition", "reason"), [
    ({"claim": "snp.absent", "equals": 1}, "claim is missing"),
    ({"claim": "snp.absent", "notEquals": 1}, "claim is missing"),  # missing never satisfies notEquals
    ({"claim": "snp.absent", "in": [1]}, "claim is missing"),
    ({"claim": "snp.firmware.current.patch", "greaterOrEquals": 0}, "claim is missing"),
    ({"claim": "snp.reported_tcb_snp", "equals": "22"}, "type mismatch: claim is number, policy value is string"),
    ({"claim": "snp.policy_debug_allowed", "equals": 0}, "type mismatch: claim is boolean"),
    ({"claim": "snp.vmpl", "equals": False}, "type mismatch: claim is number, policy value is boolean"),
    ({"claim": "snp.product", "greater": 1}, "type mismatch: claim is string"),
    ({"claim": "snp.firmware", "equals": "x"}, "type mismatch: claim is object"),
    ({"claim": "snp.firmware", "in": ["x"]}, "type mismatch: claim is object"),
    ({"claim": "snp.policy_debug_allowed", "in": [0, 1]}, "not in the set"),  # False is not 0
    ({"claim": "snp.product", "versionGreaterOrEquals": "1.0"}, "is not a version"),
])
def test_missing_claims_and_type_mismatches_deny_with_reason(condition: dict[str, Any], reason: str) -> None:
    refs = ReferenceValues()
    decision = validate_policy(policy(condition), refs).evaluate(doc(), refs, REQUEST, NOW)
    assert not decision.allow
    leaf = decision.explanation.children[0].children[0].children[0]
    assert leaf.kind == "claim" and reason in leaf.detail


def test_every_gpu_must_satisfy_its_authority_block() -> None:
    text = policy({"claim": "nvgpu.driver_version", "versionGreaterOrEquals": "550.90"}, authority="local:nvgpu")
    old = {**GPU, "driver_version": "535.86.09"}
    assert decide(text, doc(gpus=[GPU, GPU]))
    assert not decide(text, doc(gpus=[GPU, old]))
    assert not decide(text, doc(gpus=[]))  # no GPU evidence: the block cannot hold
    decision = JsonPolicy.parse(text).evaluate(doc(gpus=[GPU, old]), ReferenceValues(), REQUEST, NOW)
    assert "holds for 1 of 2 submod(s)" in decision.explanation.children[0].detail


def test_reference_sets_and_expiry() -> None:
    text = policy({"claim": "snp.measurement", "in": {"ref": "prod"}})
    refs = ReferenceValues([ReferenceSet("prod", ("bb" * 48, "aa" * 48), expires=NOW + dt.timedelta(days=1))])
    assert decide(text, refs=refs)
    assert not decide(text, refs=refs, at=NOW + dt.timedelta(days=2))  # expired: fails closed
    other = ReferenceValues([ReferenceSet("prod", ("bb" * 48,))])
    assert not decide(text, refs=other)
    decision = JsonPolicy.parse(text).evaluate(doc(), refs, REQUEST, NOW + dt.timedelta(days=2))
    assert "expired at" in decision.explanation.render()


def test_unknown_reference_set_refused_at_upload_with_line() -> None:
    text = policy({"claim": "snp.vmpl", "equals": 0}, {"claim": "snp.measurement", "in": {"ref": "nope"}})
    with pytest.raises(PolicyInvalid, match="unknown reference-value set 'nope'") as info:
        validate_policy(text, ReferenceValues([ReferenceSet("prod", ("x",))]))
    assert info.value.line == text.splitlines().index(next(ln for ln in text.splitlines() if "nope" in ln)) + 1


MALFORMED = [
    ('{"version": "1.0.0", "anyOf": [\n  {"authority": "local:snp", "allOf": [\n   {"claim": "a", "equal": 1}]}]}',
     3, "unknown operator 'equal'"),
    ('{"version": "1.0.0",\n "anyOf": [\n  {"authority": "local:snp", "allOf": []}]}', 3, "non-empty list"),
    ('{"version": "1.0.0",\n "anyOf": [{"authority": "maa", "allOf": [{"claim": "a", "exists": true}]}]}',
     2, "unknown authority 'maa'"),
    ('{"version": "2.0.0", "anyOf": []}', 1, 'version must be "1.0.0"'),
    ('{"version": "1.0.0",\n "anyOf": [\n  {"authority": "local:snp",\n   "allOf": [{"claim": "a", "equals": 1}],'
     '\n   "anyOf": [{"claim": "a", "equals": 1}]}]}', 3, "exactly one of anyOf or allOf"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n{"claim": "a", "equals": {"x": 1}}]}]}',
     2, "not an object or list"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n{"claim": "a", "greater": "5"}]}]}',
     2, "compares numbers"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n{"claim": "a", "in": []}]}]}',
     2, "non-empty list of values"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n{"claim": "a", "exists": 1}]}]}',
     2, "exists takes true or false"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n'
     '{"claim": "a", "versionLess": "1.x"}]}]}', 2, "takes a version"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n{"claim": "a", "equals": 1, '
     '"less": 2}]}]}', 2, "exactly one operator"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n{"claim": "", "equals": 1}]}]}',
     2, "non-empty dotted path"),
    ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [\n{"claim": "a", "equals": 1,'
     ' "claim": "b"}]}]}', 2, "duplicate key 'claim'"),
    ('{"version": "1.0.0",\n "anyOf": [\n  {"authority": "local:snp", "allOf": [{"claim": "a" "equals": 1}]}]}',
     3, "not valid JSON"),
    ('{"version": "1.0.0", "anyOf": [\n 5]}', 1, "authority block"),
    ('[1, 2]', 1, "must be a JSON object"),
]


@pytest.mark.parametrize(("text", "line", "reason"), MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_policy_refused_with_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyInvalid) as info:
        validate_policy(text, ReferenceValues())
    assert reason in str(info.value)
    assert info.value.line == line


def test_explanation_json_has_every_condition_and_value() -> None:
    text = policy({"claim": "snp.reported_tcb_snp", "greaterOrEquals": 23}, {"claim": "snp.vmpl", "equals": 0})
    decision = JsonPolicy.parse(text).evaluate(doc(), ReferenceValues(), REQUEST, NOW)
    out = decision.to_json()
    leaves = out["explanation"]["children"][0]["children"][0]["children"]
    assert [(x["claim"], x["seen"], x["ok"]) for x in leaves] == [("snp.reported_tcb_snp", 22, False),
                                                                   ("snp.vmpl", 0, True)]
    claim_line = next(i for i, ln in enumerate(text.splitlines(), 1) if "reported_tcb_snp" in ln)
    assert out["allow"] is False and leaves[0]["line"] == claim_line - 1  # the line of its "{"


def test_default_policy_wants_every_submod_affirming() -> None:
    """The broker's default policy: an SNP or TDX guest whose every attester (each GPU too) is affirming."""
    from kbs.evidence.base import GPU as GPU_CLASS
    from kbs.evidence.base import WARNING, Appraisal, trust_vector
    from kbs.policy.ear import Submod
    from kbs.server.app import DEFAULT_POLICY_TEXT

    warned = Submod(Appraisal(tee="nvgpu", device_class=GPU_CLASS, claims=GPU,
                              vector=trust_vector(instance_identity=2, hardware=WARNING)))
    alone, with_gpus = doc(gpus=[]), doc(gpus=[GPU, GPU])
    mixed = ear_document([snp_sub(SNP), gpu_sub(GPU), warned], issued_at=NOW)
    assert (alone["kbs.status"], with_gpus["kbs.status"], mixed["kbs.status"]) == ("affirming", "affirming", "warning")
    assert decide(DEFAULT_POLICY_TEXT, alone) and decide(DEFAULT_POLICY_TEXT, with_gpus)
    assert not decide(DEFAULT_POLICY_TEXT, mixed)


def test_hex_reference_values_match_in_any_case() -> None:
    """Verifiers emit lower-case hex: an upper-case digest pasted into a set is kept in lower case, so it
    matches; values that are not (long, even-length) hex stay as written."""
    measurement = SNP["measurement"]
    assert measurement == measurement.lower()
    text = policy({"claim": "snp.measurement", "in": {"ref": "prod"}})
    refs = ReferenceValues.from_json({"prod": [measurement.upper()]})
    assert refs.get("prod").values == (measurement,)  # type: ignore[union-attr]
    assert decide(text, refs=refs)
    kept = ["ABC", "Milan", "UpToDate", "8BE4DF61-93CA-11D2", "ABCDEF", "ABCDEF0", 7, True]
    assert list(ReferenceValues.from_json({"x": kept}).get("x").values) == kept  # type: ignore[union-attr]


_CONDITIONS = [c for c, _ in OPERATOR_CASES] + [{"claim": "nvidia.measres", "equals": "success"},
                                                {"claim": "nvidia.driver_version", "versionGreaterOrEquals": "550"}]


def _groups(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.sampled_from(_CONDITIONS)
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.builds(lambda kind, children: {kind: children}, st.sampled_from(["allOf", "anyOf"]),
                                     st.lists(_groups(depth - 1), min_size=1, max_size=4)))


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(st.tuples(st.sampled_from(["local:snp", "local:nvgpu", "local:tdx"]),
                                 st.sampled_from(["allOf", "anyOf"]), st.lists(_groups(2), min_size=1, max_size=4)),
                       min_size=1, max_size=3),
       combine=st.sampled_from(["allOf", "anyOf"]), gpus=st.integers(0, 2), debug=st.booleans())
def test_the_decision_is_what_its_explanation_says(blocks: list[tuple[str, str, list[dict[str, Any]]]],
                                                   combine: str, gpus: int, debug: bool) -> None:
    """A JSON policy decides without building its explanation; built afterwards, the explanation's verdict is the
    decision, for any nesting of groups and authorities, with or without GPUs."""
    text = json.dumps({"version": "1.0.0", combine: [{"authority": a, kind: body} for a, kind, body in blocks]})
    claims = doc(dict(SNP, policy_debug_allowed=debug), [GPU] * gpus)
    decision = JsonPolicy.parse(text).evaluate(claims, ReferenceValues(), REQUEST, NOW)
    assert decision.explanation.ok is decision.allow
