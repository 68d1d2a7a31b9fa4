"""The claims document policies read: an EAR (draft-ietf-rats-ear) shaped like Trustee's.

    {"eat_profile": ..., "iat": ..., "exp": ..., "iss": ..., "kbs.status": "affirming",
     "submods": {"cpu0": {"ear.status": "affirming",
                          "ear.trustworthiness-vector": {...AR4SI claims...},
                          "ear.appraisal-policy-id": "default",
                          "ear.veraison.annotated-evidence": {"snp": {...verifier claims...},
                                                              "report_data": ..., "init_data": ...,
                                                              "runtime_data_claims": {...}}},
                 "gpu0": {...}}}

Using Trustee's shape means a Trustee resource policy (`input.submods.cpu0[...]`) keeps
working here.  Each submod is one verifier's appraisal: its claims under the verifier's name,
and the trust vector the verifier computed (this module reads no TEE's claim names).
`kbs.status` is the worst `ear.status` of all submods (the CPU and every GPU): the attestation as a
whole, for policies that must hold on every attester without naming each (the default policy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kbs.evidence.base import AR4SI_CLAIMS, Appraisal
from kbs.evidence.claimschema import Schema

EAT_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
ISSUER = "kbs"
# Keys of the annotated evidence that are not a verifier's claims.
ANNOTATION_KEYS = frozenset({"report_data", "init_data", "runtime_data_claims", "init_data_claims"})
# Which verifier appraised a submod (`local:<name>` in policies), beside Trustee's keys: the annotated
# evidence is keyed by Trustee's TEE name, which is not always ours (`nvidia` from `nvgpu`).
VERIFIER_KEY = "kbs.verifier"
OVERALL_STATUS = "kbs.status"  # the worst ear.status of all submods
ANNOTATED_EVIDENCE = "ear.veraison.annotated-evidence"


def tier(value: int) -> str:
    """rust-ear's tier of one trust-claim value."""
    magnitude = abs(value)
    if magnitude <= 1:
        return "none"
    if magnitude < 32:
        return "affirming"
    if magnitude < 96:
        return "warning"
    return "contraindicated"


_TIER_ORDER = ("none", "affirming", "warning", "contraindicated")


def status_of(vector: Mapping[str, int]) -> str:
    """ear.status: the worst tier among the vector's claims."""
    return max((tier(v) for v in vector.values()), key=_TIER_ORDER.index, default="none")


@dataclass(frozen=True)
class Submod:
    """One appraisal, with what the broker bound to it (the runtime data and the init-data claims)."""

    appraisal: Appraisal
    runtime_data_claims: Mapping[str, Any] | None = None
    init_data_claims: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        a = self.appraisal
        vector = dict(a.vector)
        evidence: dict[str, Any] = {a.annotation: dict(a.claims)}
        if a.report_data is not None:
            evidence["report_data"] = a.report_data
        if a.init_data is not None:
            evidence["init_data"] = a.init_data
        evidence["runtime_data_claims"] = dict(self.runtime_data_claims or {})
        evidence["init_data_claims"] = dict(self.init_data_claims) if self.init_data_claims else None
        return {"ear.status": status_of(vector), "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": "default", VERIFIER_KEY: a.tee, ANNOTATED_EVIDENCE: evidence}


def ear_document(submods: Iterable[Submod], issued_at: datetime,
                 lifetime: timedelta = timedelta(minutes=5)) -> dict[str, Any]:
    """Number submods per device class in order (cpu0, gpu0, gpu1...) and wrap them in the EAR envelope."""
    counters: dict[str, int] = {}
    out: dict[str, Any] = {}
    for sub in submods:
        cls = sub.appraisal.device_class
        index = counters.get(cls, 0)
        counters[cls] = index + 1
        out[f"{cls}{index}"] = sub.to_json()
    iat = int(issued_at.timestamp())
    overall = max((sub["ear.status"] for sub in out.values()), key=_TIER_ORDER.index, default="none")
    return {"eat_profile": EAT_PROFILE, "iat": iat, "exp": iat + int(lifetime.total_seconds()), "iss": ISSUER,
            "ear.verifier-id": {"developer": "kbs", "build": "kbs"}, OVERALL_STATUS: overall, "submods": out}


def evidence_schema(verifiers: Mapping[str, Schema]) -> dict[str, Schema]:
    """The schema of a submod's annotated evidence, given the claim schemas by annotation key."""
    return {**verifiers, "report_data": "string", "init_data": "string", "runtime_data_claims": "any",
            "init_data_claims": "any"}  # the last two are the guest's own documents


def submod_schema(verifiers: Mapping[str, Schema]) -> dict[str, Schema]:
    return {"ear.status": "string", "ear.trustworthiness-vector": dict.fromkeys(AR4SI_CLAIMS, "number"),
            "ear.appraisal-policy-id": "string", VERIFIER_KEY: "string", ANNOTATED_EVIDENCE: evidence_schema(verifiers)}


def document_schema(verifiers: Mapping[str, Schema]) -> dict[str, Schema]:
    """The schema of what `ear_document` builds (kbs.evidence.claimschema), for checking policies' paths."""
    return {"eat_profile": "string", "iat": "number", "exp": "number", "iss": "string",
            "ear.verifier-id": {"developer": "string", "build": "string"}, OVERALL_STATUS: "string",
            "submods": {"*": submod_schema(verifiers)}}


def submods_by_tee(document: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """Verifier name -> the submods it appraised (for authority blocks).  Documents stored before
    submods named their verifier are read by their annotated-evidence keys."""
    found: dict[str, list[Mapping[str, Any]]] = {}
    submods = document.get("submods")
    if not isinstance(submods, Mapping):
        return found
    for sub in submods.values():
        if not isinstance(sub, Mapping):
            continue
        verifier = sub.get(VERIFIER_KEY)
        evidence = sub.get("ear.veraison.annotated-evidence")
        if isinstance(verifier, str):
            found.setdefault(verifier, []).append(sub)
        elif isinstance(evidence, Mapping):
            for tee, claims in evidence.items():
                if tee not in ANNOTATION_KEYS and isinstance(claims, Mapping):
                    found.setdefault(tee, []).append(sub)
    return found
