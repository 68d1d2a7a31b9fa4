"""The Rego dialect: Trustee's sample and test policies give Trustee's answers, reference values
via data.reference, refusal at upload with a line, fail-closed evaluation, random claims, threads.
Every check and evaluation runs in the worker processes of one pool per module."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbs.policy.ear import ear_document
from kbs.policy.model import Decision, PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceSet, ReferenceValues
from kbs.policy.rego import RegoPolicy
from kbs.policy.rego_pool import RegoWorkerPool
from tests.appraisals import gpu_sub, sample_sub, snp_sub
from tests.conftest import vectors_dir

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
REQUEST = ResourceRequest.parse("prod/key/disk")
NO_REFS = ReferenceValues()
SNP = {"measurement": "aa" * 48, "policy_debug_allowed": False, "policy_migrate_ma": False,
       "reported_tcb_snp": 22, "vmpl": 0, "report_data": "00" * 64}
GPU = {"driver_version": "550.144.03", "measres": "success"}


def resource_policy(name: str) -> str:
    path = vectors_dir() / "trustee" / "policies" / "resource" / name
    if not path.is_file():
        pytest.skip(f"Trustee policy {name} not found under KBS_VECTORS={vectors_dir()}")
    return path.read_text()


_PARSED: dict[str, RegoPolicy] = {}
_POOL: list[RegoWorkerPool] = []


@pytest.fixture(scope="module", autouse=True)
def _close_pool() -> Iterator[None]:
    yield
    while _POOL:
        _POOL.pop().close()


def parse(text: str) -> RegoPolicy:
    """Checked in (and later evaluated by) this module's pool; generous time: speed is the benchmark's."""
    if not _POOL:
        _POOL.append(RegoWorkerPool(workers=2, timeout=20.0))
    return RegoPolicy.parse(text, _POOL[0])


def vector(name: str) -> RegoPolicy:
    """Parse each vector policy once (a compile is a few ms)."""
    if name not in _PARSED:
        _PARSED[name] = parse(resource_policy(name))
    return _PARSED[name]


def snp_doc(snp: dict[str, Any] | None = None, gpus: int = 0) -> dict[str, Any]:
    subs = [snp_sub(SNP if snp is None else snp)] + [gpu_sub(GPU)] * gpus
    return ear_document(subs, issued_at=NOW)


def sample_doc() -> dict[str, Any]:
    return ear_document([sample_sub({"productId": "0", "svn": "1"})], issued_at=NOW)


def evaluate(policy: RegoPolicy, claims: Any, request: ResourceRequest = REQUEST,
             refs: ReferenceValues = NO_REFS, at: dt.datetime = NOW) -> Decision:
    return policy.evaluate(claims, refs, request, at)


# -- Trustee's policy-engine test table (vectors/trustee/SOURCES.md) ------------------------------

def trustee_claims(product: str, svn: int) -> dict[str, Any]:
    return {"submods": {"cpu0": {"ear.trustworthiness-vector": {"executables": 2, "hardware": 3},
                                 "ear.veraison.annotated-evidence": {"sample": {"productId": product,
                                                                                "svn": svn}}}}}


TRUSTEE_TABLE = [
    ("policy_1", "resource", "my_repo/Alice/key", "Alice", 1, True),
    ("policy_1", "another-plugin", "my_repo/Alice/key", "Alice", 1, False),
    ("policy_4", "resource", "my_repo/Alice/key", "Alice", 1, True),
    ("policy_1", "resource", "my_repo/Alice/key", "Bob", 1, False),
    ("policy_3", "resource", "my_repo/Alice/key", "Alice", 1, False),
    ("policy_5", "resource", "myrepo/secret/secret", "n", 2, False),
    ("policy_5", "resource", "myrepo/secret/secret1", "n", 1, False),
    ("policy_5", "resource", "myrepo/secret/secret2", "n", 2, False),
    ("policy_5", "resource", "myrepo/secret/secret3", "n", 3, False),
    ("policy_5", "resource", "a/b/secret2", "n", 3, False),
    ("policy_5", "abc", "", "n", 3, False),
    # Not upstream rows: policy_2 is `default allow = true`; policy_5's SVN thresholds met.
    ("policy_2", "resource", "my_repo/Alice/key", "Alice", 1, True),
    ("policy_5", "resource", "myrepo/secret/secret1", "n", 2, True),
    ("policy_5", "resource", "myrepo/secret/secret2", "n", 3, True),
]


@pytest.mark.parametrize(("name", "plugin", "path", "product", "svn", "allow"), TRUSTEE_TABLE)
def test_trustee_policy_engine_table(name: str, plugin: str, path: str, product: str, svn: int,
                                     allow: bool) -> None:
    policy = vector(f"policy-engine-test-{name}.rego")
    request = ResourceRequest(plugin=plugin, path=tuple(path.split("/")) if path else ())
    decision = evaluate(policy, trustee_claims(product, svn), request)
    assert decision.allow is allow, decision.explanation.render()


# -- Trustee's sample policies with claims built by kbs.policy.ear --------------------------------

def test_default_allows_real_tees_for_resource_only() -> None:
    policy = vector("default.rego")
    assert evaluate(policy, snp_doc(gpus=1)).allow
    assert not evaluate(policy, sample_doc()).allow
    other = evaluate(policy, snp_doc(), ResourceRequest(plugin="other", path=("a",)))
    assert not other.allow
    assert other.explanation.detail == "data.policy.allow is false"
    assert other.explanation.where == "data.policy.allow" and other.explanation.seen is False


def test_allow_all_and_deny_all() -> None:
    assert evaluate(vector("allow_all.rego"), sample_doc()).allow
    assert not evaluate(vector("allow_all.rego"), sample_doc(), ResourceRequest(plugin="x")).allow
    assert not evaluate(vector("deny_all.rego"), snp_doc()).allow
    assert not evaluate(vector("deny_all.rego"), {}).allow


def test_affirming() -> None:
    policy = vector("affirming.rego")
    assert evaluate(policy, snp_doc(gpus=2)).allow
    assert not evaluate(policy, snp_doc({**SNP, "policy_debug_allowed": True})).allow  # warning
    assert not evaluate(policy, sample_doc()).allow  # contraindicated
    assert not evaluate(policy, ear_document([], issued_at=NOW)).allow  # no submods at all


def test_guest_components_policy_allows_only_sample() -> None:
    policy = vector("guest-components-kbs_protocol-test-policy.rego")
    assert evaluate(policy, sample_doc()).allow
    assert not evaluate(policy, snp_doc()).allow


# -- reference values through data.reference ------------------------------------------------------

REF_POLICY = """package policy
import rego.v1

default allow := false

allow if {
    ev := input.submods.cpu0["ear.veraison.annotated-evidence"].snp
    ev.measurement in data.reference.measurements
    ev.reported_tcb_snp >= data.reference["min-tcb"][0]
}
"""


def refs_with(expires: dt.datetime | None = None) -> ReferenceValues:
    return ReferenceValues([ReferenceSet("measurements", ("bb" * 48, "aa" * 48), expires=expires),
                            ReferenceSet("min-tcb", (20,))])


def test_reference_values() -> None:
    policy = parse(REF_POLICY)
    assert policy.referenced_sets() == {"measurements", "min-tcb"}
    assert evaluate(policy, snp_doc(), refs=refs_with()).allow
    assert evaluate(policy, snp_doc(), refs=refs_with(NOW + dt.timedelta(days=1))).allow
    expired = evaluate(policy, snp_doc(), refs=refs_with(NOW - dt.timedelta(seconds=1)))
    assert not expired.allow
    assert not evaluate(policy, snp_doc({**SNP, "measurement": "cc" * 48}), refs=refs_with()).allow
    missing = {k: v for k, v in SNP.items() if k != "measurement"}
    assert not evaluate(policy, snp_doc(missing), refs=refs_with()).allow
    assert not evaluate(policy, snp_doc(), refs=NO_REFS).allow


def test_referenced_sets_ignores_comments() -> None:
    text = 'package policy\n# data.reference.commented\nallow if { input.x in data.reference.used }\n'
    assert parse(text).referenced_sets() == {"used"}


# -- refusal at upload ----------------------------------------------------------------------------

def test_policy_that_crashes_the_engine_is_refused() -> None:
    """regopy 1.5.2 aborts (std::terminate) compiling this valid Rego; the upload check runs it in a worker."""
    text = ("package policy\nimport rego.v1\nev := input.a\ninner if ev.b == 1\n"
            "allow if { inner with input as input.c }\n")
    with pytest.raises(PolicyInvalid, match="crashed"):
        parse(text)


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("package policy\n\ndefault allow := false\n\nallow if {\n    input.x ==\n}\n", 6, "Invalid boolean"),
    ("# héllo wörld\npackage policy\nallow if {\n    input.x ==\n}\n", 4, "Invalid boolean"),
    ("# no package here\n\ndefault allow := false\n", 3, "Syntax error"),
    ("package other\n\ndefault allow := false\n", 1, "package must be 'policy'"),
    ("# header\npackage policy.sub\ndefault allow := false\n", 2, "package must be 'policy'"),
    # rego-cpp reports this from the build; querying such a bundle would crash the process.
    ("package policy\nimport rego.v1\n\ndefault allow := false\ndefault allow := true\n", 5,
     "Multiple default rules"),
])
def test_malformed_policies_refused_with_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyInvalid) as info:
        parse(text)
    assert info.value.line == line
    assert reason in info.value.reason
    assert str(info.value).startswith(f"line {line}: ")


# -- fail-closed evaluation -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "detail"), [
    ('package policy\nallow := "yes"\n', 'data.policy.allow is not a boolean: "yes"'),
    ("package policy\nallow := 1\n", "data.policy.allow is not a boolean: 1"),
    ("package policy\nimport rego.v1\nallow if input.nothing\n", "data.policy.allow is undefined"),
    ("package policy\nother := true\n", "data.policy.allow is undefined"),
])
def test_non_true_allow_denies(text: str, detail: str) -> None:
    decision = evaluate(parse(text), snp_doc())
    assert not decision.allow
    assert decision.explanation.detail.startswith(detail)


@pytest.mark.parametrize(("text", "reason"), [
    ("package policy\nimport rego.v1\nallow if { 1 / count(input.nothing_here_is_empty) > 0 }\n"
     "default allow := false\n", None),
    ("package policy\nimport rego.v1\nallow if { 1 / input.zero > 0 }\n", "divide by zero"),
    ("package policy\nimport rego.v1\nallow if { to_number(input.text) > 0 }\n", "invalid syntax"),
    ("package policy\nimport rego.v1\nallow := input.a if input.a\nallow := input.b if input.b\n",
     "multiple outputs"),
    ("package policy\nimport rego.v1\nallow if { no_such_function(1) }\n", "Function not found"),
])
def test_evaluation_error_denies_with_reason(text: str, reason: str | None) -> None:
    claims = {"zero": 0, "text": "abc", "a": True, "b": 2, "nothing_here_is_empty": []}
    decision = evaluate(parse(text), claims)
    assert not decision.allow
    if reason is not None:
        assert "failed" in decision.explanation.detail
        assert reason in decision.explanation.detail


def test_error_in_unrelated_rule_does_not_change_allow() -> None:
    """Only allow is queried (as in Trustee): a rule allow does not need is never evaluated."""
    policy = parse("package policy\nimport rego.v1\nallow if input.ok\nbroken := 1 / input.zero\n"
                   "slow := count(numbers.range(1, 4000000000))\n")
    decision = evaluate(policy, {"ok": True, "zero": 0})
    assert decision.allow
    assert decision.explanation.detail == "data.policy.allow is true" and not decision.explanation.children


@pytest.mark.parametrize("claims", [
    {"a": "\ud800"}, {"deep": [[[[[[[[[[[[1]]]]]]]]]]]]}, {"big": 2**80}, {"nul\x00key": "\x00"},
    {"x": float("inf")}, {"x": object()}, [], "text", None, {1: 2},
])
def test_odd_claims_never_raise(claims: Any) -> None:
    decision = evaluate(vector("default.rego"), claims)
    assert isinstance(decision.allow, bool)


def test_decision_serialises() -> None:
    decision = evaluate(vector("affirming.rego"), snp_doc())
    out = decision.to_json()
    assert out["allow"] is True
    assert out["explanation"]["kind"] == "policy"
    assert out["explanation"]["where"] == "data.policy.allow"


# -- random claims documents ----------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
STATUS = st.sampled_from(["affirming", "warning", "contraindicated", "none"]) | JSON
SUBMOD = st.fixed_dictionaries({}, optional={
    "ear.status": STATUS,
    "ear.veraison.annotated-evidence": st.dictionaries(st.sampled_from(["sample", "snp", "tdx"]), JSON,
                                                       max_size=2) | JSON})
SUBMODS = st.dictionaries(st.sampled_from(["cpu0", "gpu0", "gpu1"]), SUBMOD | JSON, max_size=3) | JSON
CLAIMS = st.fixed_dictionaries({}, optional={"submods": SUBMODS, "iat": JSON}) | st.dictionaries(
    st.text(max_size=6), JSON, max_size=4)
MISSING = object()


def lookup(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def default_reading(claims: dict[str, Any], plugin: str) -> bool:
    """default.rego: plugin is resource and cpu0's evidence has no (non-false) `sample`."""
    sample = lookup(claims, "submods", "cpu0", "ear.veraison.annotated-evidence", "sample")
    return plugin == "resource" and (sample is MISSING or sample is False)


def affirming_reading(claims: dict[str, Any]) -> bool:
    """affirming.rego: at least one submod, and none whose ear.status is present and not "affirming"."""
    submods = lookup(claims, "submods")
    if isinstance(submods, dict):
        members = list(submods.values())
    elif isinstance(submods, list):
        members = submods
    else:  # count() of a string is its length but `some ... in` a string matches nothing
        return isinstance(submods, str) and len(submods) > 0
    bad = any(isinstance(m, dict) and "ear.status" in m and m["ear.status"] != "affirming" for m in members)
    return not bad and len(members) > 0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claims=CLAIMS, plugin=st.sampled_from(["resource", "other"]))
def test_random_claims_match_plain_python_reading(claims: dict[str, Any], plugin: str) -> None:
    request = ResourceRequest(plugin=plugin, path=("a", "b", "c"))
    default = evaluate(vector("default.rego"), claims, request)
    assert default.allow is default_reading(claims, plugin), default.explanation.render()
    affirming = evaluate(vector("affirming.rego"), claims, request)
    assert affirming.allow is affirming_reading(claims), affirming.explanation.render()


# -- threads --------------------------------------------------------------------------------------

def test_concurrent_evaluations_are_correct() -> None:
    affirming, default = vector("affirming.rego"), vector("default.rego")
    reference = parse(REF_POLICY)
    cases = [
        (affirming, snp_doc(gpus=1), NO_REFS, True), (affirming, sample_doc(), NO_REFS, False),
        (default, snp_doc(), NO_REFS, True), (default, sample_doc(), NO_REFS, False),
        (reference, snp_doc(), refs_with(), True),
        (reference, snp_doc(), refs_with(NOW - dt.timedelta(days=1)), False),
    ]
    failures: list[str] = []

    def worker(offset: int) -> None:
        for i in range(60):
            policy, claims, refs, expected = cases[(i + offset) % len(cases)]
            if evaluate(policy, claims, refs=refs).allow is not expected:
                failures.append(f"thread {offset} case {(i + offset) % len(cases)}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []

