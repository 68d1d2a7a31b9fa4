"""/attest's work: parse the message, check the binding, verify the evidence, produce a submod.

Cheap checks come first and nothing runs on the event loop: the message is parsed (bounded
JSON, strict JWK), the report parsed in C, its report-data binding, VMPL and init-data checked
and the offered certificates parsed on the verification pool; only then may collateral be
fetched (KDS), and the chain and signature are verified on the pool again.  The C core
releases the GIL, so reports verify on every core while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kbs import jsondoc
from kbs.errors import KbsError, MalformedEvidence
from kbs.evidence.binding import (
    InitData,
    check_init_data,
    check_report_data,
    parse_init_data,
    primary_runtime_digest,
)
from kbs.evidence.sample import verify_sample
from kbs.evidence.snp.coco import CocoSnpEvidence, report_from_coco
from kbs.evidence.snp.collateral import gather_snp_collateral
from kbs.evidence.snp.report import SnpReport, parse_report
from kbs.evidence.snp.verify import DEFAULT_VMPLS, check_vmpl, verify_snp
from kbs.keys.jwe import parse_tee_jwk
from kbs.policy.ear import Submod
from kbs.trust.amd.kds import KdsClient
from kbs.trust.x509 import Certificate

SUPPORTED_TEES = ("snp", "sample")
MAX_NONCE_CHARS = 256


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
                not isinstance(runtime.get("tee-pubkey"), Mapping) or len(runtime["nonce"]) > MAX_NONCE_CHARS:
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


@dataclass(frozen=True)
class _SnpPrepared:
    """An SNP message after every check that needs no collateral."""

    message: AttestationMessage
    evidence: CocoSnpEvidence
    report: SnpReport
    offered: list[Certificate]


class EvidenceVerifier:
    def __init__(self, kds: KdsClient, executor: Executor, *, tees: Sequence[str] = SUPPORTED_TEES,
                 snp_roots: Sequence[Certificate] | None = None,
                 snp_vmpls: frozenset[int] = DEFAULT_VMPLS) -> None:
        unknown = [t for t in tees if t not in SUPPORTED_TEES]
        if unknown:
            raise ValueError(f"unknown TEE(s) {', '.join(map(repr, unknown))} in [verifiers] enabled; "
                             f"this broker verifies {', '.join(SUPPORTED_TEES)}")
        self._kds = kds
        self._executor = executor
        self._tees = tuple(tees)
        self._snp_roots = list(snp_roots) if snp_roots else None
        self._snp_vmpls = snp_vmpls

    @property
    def tees(self) -> tuple[str, ...]:
        """The TEEs this broker accepts (configuration: `[verifiers] enabled`)."""
        return self._tees

    async def verify(self, tee: str, raw: bytes, session_nonce: str, now: datetime) -> Submod:
        """The attestation message as the guest sent it -> the verified submod, or a KbsError."""
        if tee not in self._tees:
            raise AttestationRefused(f"TEE {tee!r} is not enabled on this broker", check="attestation.tee")
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._executor, self._prepare, tee, raw, session_nonce)
        if isinstance(prepared, Submod):
            return prepared
        collateral = await gather_snp_collateral(prepared.report, prepared.offered, self._kds, self._snp_roots)
        verification = await loop.run_in_executor(
            self._executor, verify_snp, prepared.evidence.report, collateral.certificates, now, self._snp_roots,
            collateral.crl, self._snp_vmpls)
        claims = verification.claims()
        message = prepared.message
        return Submod(tee="snp", claims=claims, report_data=claims["report_data"], init_data=claims["init_data"],
                      runtime_data_claims=_runtime_claims(message, session_nonce),
                      init_data_claims=message.init_data.claims if message.init_data else None)

    def _prepare(self, tee: str, raw: bytes, session_nonce: str) -> Submod | _SnpPrepared:
        """Everything before collateral, cheapest first (runs on the verification pool)."""
        message = AttestationMessage.parse(jsondoc.loads(raw, what="the attestation message",
                                                         check="attestation.format"))
        if message.nonce != session_nonce:
            raise AttestationRefused("runtime-data nonce is not this session's nonce", check="binding.nonce")
        if message.additional_evidence:
            raise AttestationRefused("additional device evidence is not supported by this broker yet; "
                                     "send additional_evidence as \"\"", check="attestation.devices")
        digest = primary_runtime_digest(session_nonce, message.tee_pubkey, message.additional_evidence)
        init_claims = message.init_data.claims if message.init_data else None
        if tee == "sample":
            claims = verify_sample(message.primary_evidence, digest)
            return Submod(tee="sample", claims=claims, report_data=claims["report_data"],
                          runtime_data_claims=_runtime_claims(message, session_nonce), init_data_claims=init_claims)
        evidence = report_from_coco(message.primary_evidence)
        report = parse_report(evidence.report)
        check_report_data(report.raw.report_data, digest)
        check_vmpl(report, self._snp_vmpls)
        if message.init_data is not None:
            check_init_data(report.raw.host_data, message.init_data, "HOST_DATA")
        return _SnpPrepared(message, evidence, report, evidence.x509_certificates())


def _runtime_claims(message: AttestationMessage, nonce: str) -> dict[str, Any]:
    return {"nonce": nonce, "tee-pubkey": message.tee_pubkey}
