"""The GPU evidence a CoCo guest sends beside its CPU evidence (reference/trustee-kbs.md §2.4):

    {"device_evidence_list": [{"arch": "HOPPER" | "BLACKWELL", "uuid": "GPU-…" (optional),
                               "evidence": base64 (older guests: hex) of the SPDM report,
                               "certificate": base64 of the PEM device chain}, …]}

Decoding is bounded before anything is decoded (GPUs per attestation, characters per field), and every
refusal names the GPU's position and the field (`nvgpu.evidence`).  NVSwitch (LS10) entries are refused
by name: this verifier appraises GPUs.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kbs.errors import MalformedEvidence
from kbs.trust.nvidia.rim_ids import ARCHITECTURES

CHECK = "nvgpu.evidence"
MAX_GPUS = 16  # an HGX board has 8; NVIDIA's largest systems 8 GPUs per CVM
MAX_REPORT_BYTES = 16 * 1024  # real reports are 4.0-4.3 KB
MAX_CHAIN_BYTES = 32 * 1024  # real PEM chains are 4.8-4.9 KB
MAX_UUID_CHARS = 96
_HEX = re.compile(r"[0-9a-fA-F]+")
_FIELDS = frozenset({"arch", "uuid", "evidence", "certificate", "nonce"})


@dataclass(frozen=True)
class GpuEvidence:
    """One GPU's report and device chain, as the guest sent them (nothing verified)."""

    position: int  # in device_evidence_list: the GPU's number in messages and submods
    arch: str
    uuid: str | None
    report: bytes
    chain_pem: bytes


def _bad(position: int, message: str) -> MalformedEvidence:
    return MalformedEvidence(f"GPU {position}: {message}", check=CHECK)


def _report(position: int, text: Any) -> bytes:
    if not isinstance(text, str) or not text:
        raise _bad(position, "evidence must be the report as base64 (or hex) text")
    if len(text) > 2 * MAX_REPORT_BYTES:
        raise _bad(position, f"evidence is over {MAX_REPORT_BYTES} bytes")
    try:
        # Older guests sent hex; a base64 report (it starts 0x11 0xE0: "EeA") is never all hex digits.
        data = bytes.fromhex(text) if _HEX.fullmatch(text) else base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(position, "evidence is neither base64 nor hex") from exc
    if len(data) > MAX_REPORT_BYTES:
        raise _bad(position, f"evidence is {len(data)} bytes, over {MAX_REPORT_BYTES}")
    return data


def _chain(position: int, text: Any) -> bytes:
    if not isinstance(text, str) or not text:
        raise _bad(position, "certificate must be the PEM device chain as base64 text")
    if len(text) > MAX_CHAIN_BYTES * 4 // 3 + 4:
        raise _bad(position, f"certificate is over {MAX_CHAIN_BYTES} bytes")
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode("ascii", "replace")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(position, "certificate is not base64 (of the PEM device chain)") from exc


def _entry(position: int, item: Any) -> GpuEvidence:
    if not isinstance(item, Mapping):
        raise _bad(position, "each device_evidence_list item must be an object {arch, uuid, evidence, certificate}")
    unknown = sorted(set(item) - _FIELDS, key=str)
    if unknown:
        raise _bad(position, f"unknown field {str(unknown[0])[:40]!r}; known: {', '.join(sorted(_FIELDS))}")
    arch = item.get("arch")
    if not isinstance(arch, str) or arch.upper() not in ARCHITECTURES:
        shown = repr(arch)[:40]
        what = " (NVSwitch evidence is not appraised by this verifier)" if arch == "LS10" else ""
        raise _bad(position, f"arch is {shown}{what}; wanted one of {', '.join(ARCHITECTURES)}")
    uuid = item.get("uuid")
    if uuid is not None and (not isinstance(uuid, str) or len(uuid) > MAX_UUID_CHARS):
        raise _bad(position, f"uuid must be a string of at most {MAX_UUID_CHARS} characters")
    return GpuEvidence(position, arch.upper(), uuid, _report(position, item.get("evidence")),
                       _chain(position, item.get("certificate")))


def decode_evidence(evidence: Any) -> list[GpuEvidence]:
    """Trustee's `nvidia` evidence (or its bare list) -> the GPUs in it, at least one, at most MAX_GPUS."""
    items = evidence.get("device_evidence_list") if isinstance(evidence, Mapping) else evidence
    if isinstance(evidence, Mapping) and set(evidence) != {"device_evidence_list"}:
        raise MalformedEvidence('NVIDIA evidence must be {"device_evidence_list": [...]}', check=CHECK)
    if not isinstance(items, list) or not items:
        raise MalformedEvidence('NVIDIA evidence must be {"device_evidence_list": [one item per GPU, ...]} '
                                "with at least one GPU", check=CHECK)
    if len(items) > MAX_GPUS:
        raise MalformedEvidence(f"NVIDIA evidence lists {len(items)} GPUs, more than the {MAX_GPUS} allowed",
                                check=CHECK)
    return [_entry(position, item) for position, item in enumerate(items)]

