"""The `sample` TEE: no hardware, for trying the broker.  Its claims are contraindicated and the
default policy refuses it; a policy must name `local:sample` explicitly to release anything to it,
and a production broker offers it only when `[verifiers] enabled` names it."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from kbs.errors import MalformedEvidence
from kbs.evidence.base import CPU, Appraisal, Binding, Offload, VerifierContext, read_table, trust_vector
from kbs.evidence.binding import check_report_data
from kbs.evidence.claimschema import Schema

CLAIMS: Schema = {"svn": "string", "report_data": "string", "launch_digest": "string",
                  "platform_version": {"major": "number", "minor": "number"}, "debug": "boolean"}
IDENTITY = ("svn", "launch_digest")
# Trustee's values for its sample TEE: contraindicated, never trusted by default.
SAMPLE_VECTOR = trust_vector(hardware=97, executables=33, configuration=2)


def verify_sample(evidence: Any, digest: bytes) -> dict[str, Any]:
    """{"svn": "1", "report_data": base64(digest)} -> Trustee's sample claims."""
    if not isinstance(evidence, Mapping) or not isinstance(evidence.get("report_data"), str) or \
            len(evidence["report_data"]) > 128 or not isinstance(evidence.get("svn", ""), str) or \
            len(evidence.get("svn", "")) > 64 or set(evidence) - {"svn", "report_data"}:
        raise MalformedEvidence('sample evidence must be {"svn": "<at most 64 characters>", "report_data": '
                                '"<base64>"} and nothing else', check="evidence.sample")
    try:
        report_data = base64.b64decode(evidence["report_data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvidence("sample report_data is not base64", check="evidence.sample") from exc
    check_report_data(report_data, digest, size=len(digest))
    return {"svn": evidence.get("svn", ""), "report_data": evidence["report_data"],
            "launch_digest": "abcde", "platform_version": {"major": 1, "minor": 4}, "debug": False}


class SampleVerifier:
    name: ClassVar[str] = "sample"
    device_class: ClassVar[str] = CPU

    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: VerifierContext) -> SampleVerifier:
        read_table(table, {}, f"verifiers.{cls.name}")
        return cls()

    @classmethod
    def offline_appraisal(cls, claims: Mapping[str, Any]) -> Appraisal | None:
        return None

    @classmethod
    def verify_command(cls) -> None:
        return None

    async def verify(self, evidence: Any, binding: Binding, at: datetime, offload: Offload) -> list[Appraisal]:
        claims = await offload(verify_sample, evidence, binding.report_data)
        return [Appraisal(tee=self.name, device_class=CPU, claims=claims, vector=SAMPLE_VECTOR,
                          report_data=claims["report_data"])]

    def describe_trust_roots(self) -> list[dict[str, str]]:
        return []  # nothing signs sample evidence

    async def close(self) -> None:
        return None
