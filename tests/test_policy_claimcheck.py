"""Policy upload checks the claim paths a policy names against the claims the verifiers publish."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kbs.policy.claimcheck import ClaimWarning, PolicyClaimsUnknown, check_policy_claims, enforce
from tests.conftest import vectors_dir


def policy(*conditions: dict[str, Any], authority: str = "local:snp") -> str:
    return json.dumps({"version": "1.0.0", "allOf": [{"authority": authority, "allOf": list(conditions)}]}, indent=1)


def messages(text: str, enabled: list[str] | None = None) -> list[str]:
    return [w.message for w in check_policy_claims(text, enabled)]


def test_a_misspelt_claim_is_named_with_its_line_and_the_right_name() -> None:
    text = policy({"claim": "snp.measurement", "in": {"ref": "m"}}, {"claim": "snp.measurment", "in": {"ref": "m"}})
    [warning] = check_policy_claims(text)
    assert warning.claim == "snp.measurment"
    lines = text.splitlines()  # the warning names the line the condition's object opens on
    assert warning.line is not None and lines[warning.line - 1].strip() == "{" and "measurment" in lines[warning.line]
    assert warning.message.endswith("no such claim in a local:snp block, so this condition never holds "
                                    "(did you mean snp.measurement?)")


@pytest.mark.parametrize(("condition", "expected"), [
    ({"claim": "snp.vmpl", "equals": "0"}, 'snp.vmpl is a number, so equals "0" (a string) never holds'),
    ({"claim": "snp.vmpl", "notEquals": "0"}, 'snp.vmpl is a number, so notEquals "0" (a string) never fails'),
    ({"claim": "snp.measurement", "greater": 1}, "snp.measurement is a string, so greater 1 (a number) never holds"),
    ({"claim": "snp.vmpl", "in": {"ref": "m"}}, "snp.vmpl is a number, so in reference set 'm' (strings) never holds"),
    ({"claim": "snp.policy_debug_allowed", "in": ["false"]},
     'snp.policy_debug_allowed is a boolean, so in ["false"] (a list of string) never holds'),
    ({"claim": "snp.tcb", "equals": 3}, "snp.tcb is an object, so equals 3 (a number) never holds"),
    ({"claim": "snp.product", "versionGreaterOrEquals": "1.2"}, None),  # a string: versions are fine
    ({"claim": "snp.vmpl", "equals": 0}, None),
    ({"claim": "snp.cpuid.family", "equals": 25}, None),  # inside a value that may be null
    ({"claim": "snp.tcb.reported.bl", "lessOrEquals": 9}, None),
    ({"claim": "snp.allowed_vmpls.0", "equals": 0}, None),  # an array element by index
    ({"claim": "snp.nosuch", "exists": False}, "snp.nosuch: no such claim in a local:snp block, so this "
                                               "condition never holds"),
    ({"claim": "submod.ear\\.status", "equals": "affirming"}, None),
    ({"claim": "submod.ear\\.trustworthiness-vector.hardware", "lessOrEquals": 2}, None),
    ({"claim": "submod.ear\\.statuz", "equals": "affirming"}, "did you mean submod.ear\\.status?"),
    ({"claim": "kbs\\.status", "equals": "affirming"}, None),
    ({"claim": "kbs.status", "equals": "affirming"}, "kbs.status: no such claim"),  # unescaped: two segments
    ({"claim": "runtime_data_claims.anything.below", "equals": 1}, None),  # the guest's own document
    ({"claim": "init_data", "equals": "00"}, None),
    ({"claim": "tdx.quote.body.mr_td", "equals": "00"}, "tdx.quote.body.mr_td: no such claim in a local:snp block"),
])
def test_types_and_paths_in_an_snp_block(condition: dict[str, Any], expected: str | None) -> None:
    found = messages(policy(condition))
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_each_verifier_reads_its_own_claims_under_its_annotation() -> None:
    assert messages(policy({"claim": "nvidia.measres", "equals": "success"},
                           {"claim": "nvidia.measurements.7", "equals": "ab"},
                           {"claim": "nvidia.x-nvidia-gpu-driver-version", "versionGreaterOrEquals": "550"},
                           authority="local:nvgpu")) == []
    [wrong] = messages(policy({"claim": "nvgpu.measres", "equals": "success"}, authority="local:nvgpu"))
    assert "nvgpu.measres: no such claim in a local:nvgpu block" in wrong
    assert messages(policy({"claim": "tdx.tcb_status", "equals": "UpToDate"},
                           {"claim": "tdx.uefi_event_logs.0.digests.0.alg", "equals": "SHA-384"},
                           {"claim": "tdx.uefi_event_logs.0.details.anything", "exists": True},
                           authority="local:tdx")) == []


def test_authorities_unknown_or_not_enabled() -> None:
    [unknown] = messages(policy({"claim": "x.y", "exists": True}, authority="local:sgx"))
    assert unknown.startswith("local:sgx: no verifier of that name, so this block never holds; known: local:snp")
    text = policy({"claim": "tdx.tcb_status", "equals": "UpToDate"}, authority="local:tdx")
    assert messages(text, enabled=["tdx"]) == [] == messages(text)
    [disabled] = messages(text, enabled=["snp", "nvgpu"])
    assert "this broker does not enable the tdx verifier ([verifiers] enabled)" in disabled


def test_rego_paths_into_a_verifiers_claims_are_checked_by_name() -> None:
    text = '''package policy
default allow := false
evidence := input.submods.cpu0["ear.veraison.annotated-evidence"]
allow if {
    input.submods.cpu0["ear.veraison.annotated-evidence"]["snp"]["measurement"] == data.reference.m
    input.submods.cpu0["ear.veraison.annotated-evidence"].snp.reported_tcb_snp >= 8
    input.submods.cpu0["ear.veraison.annotated-evidence"].snp.measurment == "x"
    input.submods.gpu0["ear.veraison.annotated-evidence"]["nvidia"]["measres"] == "success"
    input.submods.cpu0["ear.veraison.annotated-evidence"]["init_data_claims"]["anything"] == 1
    input.submods.cpu0["ear.veraison.annotated-evidence"]["spn"]["measurement"] == "x"
}
'''
    warnings = check_policy_claims(text)
    assert [(w.line, w.claim) for w in warnings] == [(7, "snp.measurment"), (10, "spn.measurement")]
    assert "(did you mean snp.measurement?)" in warnings[0].message
    assert "did you mean snp?" in warnings[1].message


def test_trustees_own_policies_name_only_claims_we_emit() -> None:
    folder = vectors_dir() / "trustee" / "policies" / "resource"
    if not folder.is_dir():
        pytest.skip(f"no Trustee policies under KBS_VECTORS={vectors_dir()}")
    default = (folder / "default.rego").read_text()
    assert check_policy_claims(default) == []


def test_strict_refuses_with_every_warning_and_a_label() -> None:
    warnings = check_policy_claims(policy({"claim": "snp.measurment", "exists": True},
                                          {"claim": "snp.vmpl", "equals": "0"}))
    enforce(warnings, strict=False)
    with pytest.raises(PolicyClaimsUnknown) as caught:
        enforce(warnings, strict=True)
    assert caught.value.check == "policy.claims"
    assert "snp.measurment" in str(caught.value) and "snp.vmpl" in str(caught.value)
    enforce([], strict=True)


def test_invalid_or_huge_policies() -> None:
    assert check_policy_claims("{not json") == []  # the upload refuses it on its own, with its line
    many = policy(*({"claim": f"snp.no{i}", "exists": True} for i in range(500)))
    assert len(check_policy_claims(many)) == 50
    assert isinstance(check_policy_claims(many)[0], ClaimWarning)
