"""The NVIDIA GPU verifier's claims per GPU (kbs.evidence.nvgpu.claims.gpu_claims), names and JSON types.

Plain data, imported by the policy checker without the verifier (kbs.evidence.claimschema).
Policies read them under `nvidia` (Trustee's annotated-evidence key) in a `local:nvgpu` block."""

from __future__ import annotations

from kbs.evidence.claimschema import Schema

_CERT_CHAIN: Schema = {"x-nvidia-cert-expiration-date": "string", "x-nvidia-cert-status": "string",
                       "x-nvidia-cert-ocsp-status": "string", "x-nvidia-cert-revocation-reason": "string|null"}
_OCSP: Schema = [{"index": "number", "subject": "string", "serial": "string", "status": "string",
                  "this_update": "string|null", "next_update": "string|null", "source": "string|null"}]


def _rim(kind: str) -> dict[str, Schema]:
    prefix = f"x-nvidia-gpu-{kind}-rim-"
    return {**{prefix + name: "boolean" for name in ("fetched", "schema-validated", "signature-verified",
                                                      "measurements-available", "version-match")},
            prefix + "cert-chain": _CERT_CHAIN}


CLAIMS: Schema = {
    # NVIDIA's names (claims 3.0).
    "measres": "string", "x-nvidia-gpu-arch-check": "boolean", "x-nvidia-gpu-driver-version": "string",
    "x-nvidia-gpu-vbios-version": "string", "x-nvidia-gpu-attestation-report-parsed": "boolean",
    "x-nvidia-gpu-attestation-report-nonce-match": "boolean",
    "x-nvidia-gpu-attestation-report-signature-verified": "boolean",
    "x-nvidia-gpu-attestation-report-cert-chain": _CERT_CHAIN,
    "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": "boolean",
    **_rim("driver"), **_rim("vbios"),
    "x-nvidia-gpu-vbios-index-no-conflict": "boolean",
    "secboot": "boolean", "dbgstat": "string", "hwmodel": "string", "ueid": "string", "oemid": "string",
    # Ours.
    "arch": "string", "uuid": "string|null", "nonce": "string", "fwid": "string", "opaque_data_version": "number",
    "feature_flag": "string|null", "chip_info": "string|null", "project": "string", "project_sku": "string",
    "chip_sku": "string", "driver_rim_id": "string|null", "vbios_rim_id": "string|null",
    "ocsp": _OCSP, "rim_ocsp": {"driver": _OCSP, "vbios": _OCSP},
    "measurements": {"*": "string"},  # SPDM index (1-based, as a string) -> hex, only without a RIM comparison
}

# What names this evidence in the release log (kbs.store.tlog): the GPU and the firmware it runs.
IDENTITY = ("ueid", "hwmodel", "arch", "x-nvidia-gpu-driver-version", "x-nvidia-gpu-vbios-version", "measres",
            "driver_rim_id", "vbios_rim_id")
