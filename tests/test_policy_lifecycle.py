"""Policy envelopes, history, the one-way immutable flag, reference sets, and a policy over a real report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from kbs.cli import main
from kbs.evidence.snp.verify import verify_snp
from kbs.policy.ear import ear_document
from kbs.policy.lifecycle import PolicyConflict, PolicyRegistry, content_hash
from kbs.policy.loader import claims_document, validate_policy
from kbs.policy.model import PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceSet, ReferenceValues
from tests.appraisals import snp_sub
from tests.conftest import load_snp_vector
from tests.test_snp_verify import certs_of

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "snp.measurement", "in": {"ref": "measurements"}},
    {"claim": "snp.policy_debug_allowed", "equals": False}]}]})


def registry() -> PolicyRegistry:
    return PolicyRegistry(refs=ReferenceValues([ReferenceSet("measurements", ("aa" * 48,))]))


def test_versions_history_and_hash() -> None:
    reg = registry()
    v1 = reg.put("disk", POLICY, created_by="alice", at=NOW)
    v2 = reg.put("disk", POLICY.replace("false", "true"), created_by="bob", at=NOW + dt.timedelta(hours=1))
    assert (v1.version, v2.version) == (1, 2)
    assert [v.created_by for v in reg.history("disk")] == ["alice", "bob"]
    assert reg.current("disk") == v2 and v1.content_hash == content_hash(POLICY) != v2.content_hash
    assert v1.dialect == "json" and len(v1.content_hash) == 43


def test_invalid_upload_refused_and_history_unchanged() -> None:
    reg = registry()
    reg.put("disk", POLICY, created_by="alice", at=NOW)
    with pytest.raises(PolicyInvalid, match="unknown reference-value set 'other'"):
        reg.put("disk", POLICY.replace("measurements", "other"), created_by="mallory", at=NOW)
    with pytest.raises(PolicyInvalid, match="line 1"):
        reg.put("disk", "{not json", created_by="mallory", at=NOW)
    assert len(reg.history("disk")) == 1


def test_immutable_is_one_way() -> None:
    reg = registry()
    reg.put("model", POLICY, created_by="alice", at=NOW)
    frozen = reg.make_immutable("model", created_by="alice", at=NOW)
    assert frozen.immutable and frozen.version == 2 and frozen.text == POLICY
    with pytest.raises(PolicyConflict, match="immutable since version 2"):
        reg.put("model", POLICY, created_by="alice", at=NOW)
    with pytest.raises(PolicyConflict, match="immutable"):
        reg.put("model", POLICY, created_by="alice", at=NOW, immutable=False)
    assert reg.make_immutable("model", created_by="bob", at=NOW) == frozen  # idempotent, never cleared
    born = reg.put("other", POLICY, created_by="alice", at=NOW, immutable=True)
    assert born.immutable and born.version == 1


def test_reference_set_in_use_cannot_be_deleted() -> None:
    reg = registry()
    reg.put("disk", POLICY, created_by="alice", at=NOW)
    with pytest.raises(PolicyConflict, match="used by policy 'disk'"):
        reg.delete_reference_set("measurements")
    reg.put_reference_set(ReferenceSet("spare", ("x",)))
    reg.delete_reference_set("spare")
    assert reg.refs.names() == {"measurements"}


@pytest.fixture(scope="module")
def genoa_claims() -> dict[str, object]:
    v = load_snp_vector("genoa-v5-oak")
    return verify_snp(v.report, certs_of(v), NOW).claims()


def test_policy_on_real_report_allows_and_one_byte_denies(genoa_claims: dict[str, object]) -> None:
    measurement = str(genoa_claims["measurement"])
    claims = ear_document([snp_sub(genoa_claims)], issued_at=NOW)
    request = ResourceRequest.parse("prod/key/disk")
    good = ReferenceValues([ReferenceSet("measurements", (measurement,))])
    policy = validate_policy(POLICY, good)
    assert policy.evaluate(claims, good, request, NOW).allow
    flipped = measurement[:10] + ("0" if measurement[10] != "0" else "1") + measurement[11:]
    bad = ReferenceValues([ReferenceSet("measurements", (flipped,))])
    decision = policy.evaluate(claims, bad, request, NOW)
    assert not decision.allow and "value is not in the set" in decision.explanation.render()


def test_cli_check_and_eval(tmp_path: Path, genoa_claims: dict[str, object],
                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.json").write_text(POLICY)
    (tmp_path / "claims.json").write_text(json.dumps(genoa_claims))
    (tmp_path / "good.json").write_text(json.dumps({"measurements": [genoa_claims["measurement"]]}))
    (tmp_path / "bad.json").write_text(json.dumps({"measurements": {"values": [genoa_claims["measurement"]],
                                                                    "expires": "2026-01-01T00:00:00Z"}}))
    p, c = str(tmp_path / "p.json"), str(tmp_path / "claims.json")
    assert main(["policy", "check", p, "--refs", str(tmp_path / "good.json")]) == 0
    assert main(["policy", "check", p]) == 1  # unknown reference set
    assert main(["policy", "eval", p, c, "--refs", str(tmp_path / "good.json"), "--at", "2026-11-25T00:00:00Z"]) == 0
    capsys.readouterr()
    assert main(["policy", "eval", p, c, "--refs", str(tmp_path / "bad.json"), "--json",
                 "--at", "2026-11-25T00:00:00Z"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["allow"] is False and "expired at 2026-01-01" in json.dumps(out)
    assert main(["policy", "eval", p, c]) == 2  # a policy naming unknown sets is an error here
    (tmp_path / "x.json").write_text("[]")
    assert main(["policy", "eval", p, str(tmp_path / "x.json"), "--refs", str(tmp_path / "good.json")]) == 2


def test_claims_document_accepts_ear_or_verify_output(genoa_claims: dict[str, object]) -> None:
    wrapped = claims_document(genoa_claims, NOW)
    assert wrapped["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["snp"]["measurement"] \
        == genoa_claims["measurement"]
    assert claims_document(wrapped) == wrapped
    with pytest.raises(ValueError, match="neither"):
        claims_document({"x": 1})
