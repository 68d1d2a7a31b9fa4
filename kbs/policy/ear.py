"""The claims document policies read: an EAR (draft-ietf-rats-ear) shaped like Trustee's.

    {"eat_profile": ..., "iat": ..., "exp": ..., "iss": ...,
     "submods": {"cpu0": {"ear.status": "affirming",
                          "ear.trustworthiness-vector": {...AR4SI claims...},
                          "ear.appraisal-policy-id": "default",
                          "ear.veraison.annotated-evidence": {"snp": {...verifier claims...},
                                                              "report_data": ..., "init_data": ...,
                                                              "runtime_data_claims": {...}}},
                 "gpu0": {...}}}

Using Trustee's shape means a Trustee resource policy (`input.submods.cpu0[...]`) keeps
working here.  Each evidence kind plugs in by naming its TEE and handing over its claims.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

EAT_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
ISSUER = "kbs"
AR4SI_CLAIMS = ("instance-identity", "configuration", "executables", "file-system", "hardware",
                "runtime-opaque", "storage-opaque", "sourced-data")
TEE_CLASS = {"snp": "cpu", "tdx": "cpu", "sample": "cpu", "nvgpu": "gpu", "sampledevice": "gpu"}
AUTHORITY_OF_TEE = {"snp": "local:snp", "tdx": "local:tdx", "nvgpu": "local:nvgpu", "sample": "local:sample",
                    "sampledevice": "local:sampledevice"}

# AR4SI values used below (draft-ietf-rats-ar4si): 2 affirming, 32+ warning, 96+ contraindicated.
AFFIRMING, WARNING = 2, 32


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


def trust_vector(tee: str, claims: Mapping[str, Any]) -> dict[str, int]:
    """What this broker's verifier vouches for after evidence passed every check.

    Executables stay 0 ("no claim"): whether a measurement is acceptable is the release
    policy's decision, made against reference values.
    """
    vector = dict.fromkeys(AR4SI_CLAIMS, 0)
    if tee == "sample":
        # Trustee's values for its sample TEE: contraindicated, never trusted by default.
        vector.update({"hardware": 97, "executables": 33, "configuration": 2})
        return vector
    vector["instance-identity"] = AFFIRMING
    vector["hardware"] = AFFIRMING
    debuggable = bool(claims.get("policy_debug_allowed")) or bool(claims.get("policy_migrate_ma"))
    vector["configuration"] = WARNING if debuggable else AFFIRMING
    return vector


@dataclass(frozen=True)
class Submod:
    """The verified claims of one piece of evidence."""

    tee: str
    claims: Mapping[str, Any]
    report_data: str | None = None
    init_data: str | None = None
    runtime_data_claims: Mapping[str, Any] | None = None
    init_data_claims: Mapping[str, Any] | None = None
    vector: Mapping[str, int] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        vector = dict(self.vector) if self.vector is not None else trust_vector(self.tee, self.claims)
        evidence: dict[str, Any] = {self.tee: dict(self.claims)}
        if self.report_data is not None:
            evidence["report_data"] = self.report_data
        if self.init_data is not None:
            evidence["init_data"] = self.init_data
        evidence["runtime_data_claims"] = dict(self.runtime_data_claims or {})
        evidence["init_data_claims"] = dict(self.init_data_claims) if self.init_data_claims else None
        return {"ear.status": status_of(vector), "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": "default", "ear.veraison.annotated-evidence": evidence}


def ear_document(submods: Iterable[Submod], issued_at: datetime,
                 lifetime: timedelta = timedelta(minutes=5)) -> dict[str, Any]:
    """Number submods per class in order (cpu0, gpu0, gpu1...) and wrap them in the EAR envelope."""
    counters: dict[str, int] = {}
    out: dict[str, Any] = {}
    for sub in submods:
        cls = TEE_CLASS.get(sub.tee, "cpu")
        index = counters.get(cls, 0)
        counters[cls] = index + 1
        out[f"{cls}{index}"] = sub.to_json()
    iat = int(issued_at.timestamp())
    return {"eat_profile": EAT_PROFILE, "iat": iat, "exp": iat + int(lifetime.total_seconds()), "iss": ISSUER,
            "ear.verifier-id": {"developer": "kbs", "build": "kbs"}, "submods": out}


def snp_submod(claims: Mapping[str, Any]) -> Submod:
    """The submod of verified SNP claims (as `kbs verify snp --json` prints them)."""
    return Submod(tee="snp", claims=claims, report_data=claims.get("report_data"),
                  init_data=claims.get("init_data"))


def submods_by_tee(document: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """TEE name -> the submods whose annotated evidence came from it (for authority blocks)."""
    found: dict[str, list[Mapping[str, Any]]] = {}
    submods = document.get("submods")
    if not isinstance(submods, Mapping):
        return found
    for sub in submods.values():
        evidence = sub.get("ear.veraison.annotated-evidence") if isinstance(sub, Mapping) else None
        if isinstance(evidence, Mapping):
            for tee in evidence:
                if tee in TEE_CLASS:
                    found.setdefault(tee, []).append(sub)
    return found
