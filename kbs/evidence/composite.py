"""The attestation message (KBS protocol 0.4.0) and its evidence: primary plus additional.

    {"init-data": null | {"format": "toml", "body": ...},
     "runtime-data": {"nonce": N, "tee-pubkey": JWK},
     "tee-evidence": {"primary_evidence": {...}, "additional_evidence": "<JSON text of {tee: evidence}>" | ""}}

The primary (CPU) evidence is bound to SHA-384(JCS({"additional-evidence", "nonce", "tee-pubkey"})),
every additional (device) evidence to SHA-384(JCS({"nonce", "tee-pubkey"})), both rebuilt from the
broker's own nonce.  Each verifier returns its appraisals; together they become the submods
cpu0, gpu0, gpu1, ... of the claims document.

A primary verifier may offer a `MessageDecoder` (SNP's one-pass C scanner): it decodes the whole
message faster than the JSON path, or declines, and the JSON path (the reference, and the source of
every error message) runs as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kbs import jsondoc
from kbs.errors import KbsError, MalformedEvidence
from kbs.evidence.base import CPU, GPU, Appraisal, Binding, Offload
from kbs.evidence.binding import InitData, device_runtime_digest, parse_init_data, primary_runtime_digest
from kbs.evidence.registry import VerifierRegistry
from kbs.keys.jwe import parse_tee_jwk

MAX_NONCE_CHARS = 256
MAX_DEVICE_EVIDENCE = 16  # TEE entries in additional_evidence (a GPU verifier covers all its GPUs)


class MessageDecoder(Protocol):
    """A primary verifier's fast decoder of a whole attestation message (its `decode_message`, optional)."""

    def __call__(self, raw: bytes) -> dict[str, Any] | None:
        """The body exactly as `jsondoc.loads` would return it, but for `tee-evidence.primary_evidence`,
        already decoded into what the verifier's `verify` takes; or None, and the JSON path decodes it.
        It must decline every message the JSON path would refuse."""
        ...


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

    @classmethod
    def from_bytes(cls, raw: bytes, decoder: MessageDecoder | None = None) -> AttestationMessage:
        body = decoder(raw) if decoder is not None else None
        if body is None:
            body = jsondoc.loads(raw, what="the attestation message", check="attestation.format")
        return cls.parse(body)

    def devices(self) -> dict[str, Any]:
        """additional_evidence as {tee: evidence}; empty when the guest sent ""."""
        if not self.additional_evidence:
            return {}
        devices = jsondoc.loads(self.additional_evidence, what="additional_evidence", check="attestation.format")
        if not isinstance(devices, dict) or len(devices) > MAX_DEVICE_EVIDENCE:
            raise MalformedEvidence(f"additional_evidence must be JSON text of an object {{tee: evidence}} with at "
                                    f"most {MAX_DEVICE_EVIDENCE} entries", check="attestation.format")
        return devices


async def appraise(registry: VerifierRegistry, tee: str, message: AttestationMessage, session_nonce: str,
                   at: datetime, offload: Offload) -> list[Appraisal]:
    """Every attester in the message, primary first; the binding is checked by each verifier."""
    if message.nonce != session_nonce:
        raise AttestationRefused("runtime-data nonce is not this session's nonce", check="binding.nonce")
    primary = registry.get(tee, CPU)
    devices = {name: (registry.get(name, GPU), evidence) for name, evidence in message.devices().items()}
    binding = Binding(session_nonce, message.tee_pubkey, init_data=message.init_data,
                      report_data=primary_runtime_digest(session_nonce, message.tee_pubkey,
                                                         message.additional_evidence))
    appraisals = await primary.verify(message.primary_evidence, binding, at, offload)
    if not devices:
        return appraisals
    device_binding = Binding(session_nonce, message.tee_pubkey,
                             report_data=device_runtime_digest(session_nonce, message.tee_pubkey))
    for verifier, evidence in devices.values():
        appraisals += await verifier.verify(evidence, device_binding, at, offload)
    return appraisals
