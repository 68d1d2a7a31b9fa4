"""Random claims documents and random policies never crash the evaluator; malformed policies are
refused at upload (PolicyInvalid), never at release time."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kbs.evidence.base import CPU, GPU, Appraisal
from kbs.policy.ear import Submod, ear_document
from kbs.policy.json_policy import OPERATORS, JsonPolicy
from kbs.policy.model import PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceSet, ReferenceValues
from tests.appraisals import AFFIRMED

NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
REQUEST = ResourceRequest.parse("a/b/c")
NAMES = ["measurement", "vmpl", "policy_debug_allowed", "driver_version", "x", "firmware"]
REFS = ReferenceValues([ReferenceSet("m", ("aa", "bb")), ReferenceSet("old", (1,), expires=NOW)])

scalars = st.one_of(st.booleans(), st.integers(-5, 300), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from(["aa", "bb", "1.55.40", "550.90", "", "x.y"]))
json_values = st.recursive(st.one_of(st.none(), scalars),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
                           max_leaves=8)
claims_dicts = st.dictionaries(st.sampled_from(NAMES), json_values, max_size=6)


def _submod(draw: st.DrawFn) -> Submod:
    tee = draw(st.sampled_from(["snp", "tdx", "nvgpu", "sample"]))
    return Submod(Appraisal(tee=tee, device_class=GPU if tee == "nvgpu" else CPU, claims=draw(claims_dicts),
                            vector=AFFIRMED))


@st.composite
def claim_documents(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object
    subs = [_submod(draw) for _ in range(draw(st.integers(0, 3)))]
    doc = ear_document(subs, issued_at=NOW)
    if draw(st.booleans()):
        doc["submods"]["cpu9"] = draw(json_values)  # a malformed submod
    return doc


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    if depth < 2 and draw(st.integers(0, 3)) == 0:
        return {draw(st.sampled_from(["anyOf", "allOf"])): draw(st.lists(conditions(depth + 1), min_size=1,
                                                                         max_size=3))}
    op = draw(st.sampled_from(sorted(OPERATORS)))
    tee = draw(st.sampled_from(["snp", "tdx", "nvgpu", "submod", "submods"]))
    claim = f"{tee}.{draw(st.sampled_from(NAMES))}"
    if op == "exists":
        value: Any = draw(st.booleans())
    elif op == "in":
        value = draw(st.one_of(st.just({"ref": "m"}), st.just({"ref": "old"}), st.lists(scalars, min_size=1)))
    elif op.startswith("version"):
        value = draw(st.sampled_from(["1.55.40", "550", "1.2.3.4"]))
    elif op in ("equals", "notEquals"):
        value = draw(scalars)
    else:
        value = draw(st.integers(-5, 300))
    return {"claim": claim, op: value}


@st.composite
def policies(draw: st.DrawFn) -> str:
    blocks = [{"authority": draw(st.sampled_from(["local:snp", "local:tdx", "local:nvgpu", "local:sample"])),
               draw(st.sampled_from(["anyOf", "allOf"])): draw(st.lists(conditions(), min_size=1, max_size=4))}
              for _ in range(draw(st.integers(1, 3)))]
    return json.dumps({"version": "1.0.0", draw(st.sampled_from(["anyOf", "allOf"])): blocks}, indent=1)


@given(policies(), claim_documents())
def test_valid_policies_never_crash_on_any_claims(text: str, claims: Any) -> None:
    policy = JsonPolicy.parse(text)
    decision = policy.evaluate(claims, REFS, REQUEST, NOW)
    assert isinstance(decision.allow, bool)
    assert decision.explanation.ok is decision.allow
    json.dumps(decision.to_json())  # the explanation is always serialisable


@given(st.recursive(st.one_of(st.none(), scalars, st.sampled_from(["1.0.0", "local:snp", "claim"])),
                    lambda inner: st.one_of(
                        st.lists(inner, max_size=3),
                        st.dictionaries(st.sampled_from(["version", "anyOf", "allOf", "authority", "claim",
                                                         *sorted(OPERATORS)]), inner, max_size=4)),
                    max_leaves=12), claim_documents())
def test_arbitrary_policy_json_is_refused_at_upload_or_evaluates(policy_json: Any, claims: Any) -> None:
    try:
        policy = JsonPolicy.parse(json.dumps(policy_json))
    except PolicyInvalid as exc:
        assert exc.reason
        return
    assert isinstance(policy.evaluate(claims, REFS, REQUEST, NOW).allow, bool)


@given(st.text(max_size=200))
def test_arbitrary_text_is_refused_with_a_reason(text: str) -> None:
    try:
        JsonPolicy.parse(text)
    except PolicyInvalid as exc:
        assert exc.reason
