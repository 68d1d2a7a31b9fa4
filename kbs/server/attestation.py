"""/attest's work: check the binding, verify the evidence, and produce the claims document.

Verification runs in a thread pool: the C core releases the GIL, so reports verify on every
core while the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kbs.errors import KbsError, MalformedEvidence
from kbs.evidence.binding import (
    InitData,
    check_init_data,
    check_report_data,
    parse_init_data,
    primary_runtime_digest,
)
from kbs.evidence.sample import verify_sample
from kbs.evidence.snp import verify_snp
from kbs.evidence.snp_coco import report_from_coco
from kbs.evidence.snp_report import parse_report
from kbs.keys.jwe import parse_tee_jwk
from kbs.policy.ear import Submod
from kbs.trust.collateral import gather_snp_collateral
from kbs.trust.kds import KdsClient
from kbs.trust.x509 import Certificate

SUPPORTED_TEES = ("snp", "sample")


class AttestationRefused(KbsError):
    """The attestation message is wrong for this session (not the evidence itself)."""

    check = "attestation"


@dataclass(frozen=True)
class AttestationMessage:
    nonce: str
    tee_pubkey: dict[str, Any]
    primary_evidence: Any
    additional_evidence: str
    init_data: InitData | None

    @classmethod
    def parse(cls, body: Any) -> AttestationMessage:
        if not isinstance(body, Mapping):
            raise MalformedEvidence("the attestation message must be a JSON object", check="attestation.format")
        runtime = body.get("runtime-data")
        evidence = body.get("tee-evidence")
        if not isinstance(runtime, Mapping) or not isinstance(runtime.get("nonce"), str) or \
                not isinstance(runtime.get("tee-pubkey"), Mapping):
            raise MalformedEvidence('runtime-data must be {"nonce": "...", "tee-pubkey": {JWK}}',
                                    check="attestation.format")
        if not isinstance(evidence, Mapping) or "primary_evidence" not in evidence:
            raise MalformedEvidence('tee-evidence must be {"primary_evidence": ..., "additional_evidence": "..."}',
                                    check="attestation.format")
        additional = evidence.get("additional_evidence", "")
        if not isinstance(additional, str):
            raise MalformedEvidence("additional_evidence must be a string (JSON text or empty)",
                                    check="attestation.format")
        tee_pubkey = dict(runtime["tee-pubkey"])
        parse_tee_jwk(tee_pubkey)  # JweKeyInvalid names what is wrong with the key
        return cls(nonce=runtime["nonce"], tee_pubkey=tee_pubkey, primary_evidence=evidence["primary_evidence"],
                   additional_evidence=additional, init_data=parse_init_data(body.get("init-data")))


class EvidenceVerifier:
    def __init__(self, kds: KdsClient, executor: Executor, snp_roots: Sequence[Certificate] | None = None) -> None:
        self._kds = kds
        self._executor = executor
        self._snp_roots = list(snp_roots) if snp_roots else None

    async def verify(self, tee: str, message: AttestationMessage, session_nonce: str, now: datetime) -> Submod:
        if message.nonce != session_nonce:
            raise AttestationRefused("runtime-data nonce is not this session's nonce", check="binding.nonce")
        if message.additional_evidence:
            raise AttestationRefused("additional device evidence is not supported by this broker yet; "
                                     "send additional_evidence as \"\"", check="attestation.devices")
        digest = primary_runtime_digest(session_nonce, message.tee_pubkey, message.additional_evidence)
        runtime_claims = {"nonce": session_nonce, "tee-pubkey": message.tee_pubkey}
        init_claims = message.init_data.claims if message.init_data else None
        if tee == "sample":
            claims = verify_sample(message.primary_evidence, digest)
            return Submod(tee="sample", claims=claims, report_data=claims["report_data"],
                          runtime_data_claims=runtime_claims, init_data_claims=init_claims)
        if tee == "snp":
            claims = await self._verify_snp(message, digest, now)
            return Submod(tee="snp", claims=claims, report_data=claims["report_data"], init_data=claims["init_data"],
                          runtime_data_claims=runtime_claims, init_data_claims=init_claims)
        raise AttestationRefused(f"TEE {tee!r} is not supported; supported: {', '.join(SUPPORTED_TEES)}",
                                 check="attestation.tee")

    async def _verify_snp(self, message: AttestationMessage, digest: bytes, now: datetime) -> dict[str, Any]:
        evidence = report_from_coco(message.primary_evidence)
        report = parse_report(evidence.report)
        check_report_data(report.raw.report_data, digest)
        if message.init_data is not None:
            check_init_data(report.raw.host_data, message.init_data, "HOST_DATA")
        collateral = await gather_snp_collateral(report, evidence.x509_certificates(), self._kds, self._snp_roots)
        loop = asyncio.get_running_loop()
        verification = await loop.run_in_executor(
            self._executor, verify_snp, evidence.report, collateral.certificates, now, self._snp_roots,
            collateral.crl)
        return verification.claims()
