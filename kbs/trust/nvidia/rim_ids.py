"""RIM ids from the values a GPU report carries (reference/gpu.md §3.2).  Plain values in, ids out: the
caller decodes the report.

- driver RIM: Hopper ``NV_GPU_DRIVER_GH100_<driver>``; Blackwell ``NV_GPU_CC_DRIVER_<CHIP_INFO>_<driver>``,
  with ``GB100`` when the report has no CHIP_INFO (opaque data version 0), as nvat does;
- VBIOS RIM: ``NV_GPU_VBIOS_<PROJECT>_<PROJECT_SKU>_<CHIP_SKU>_<VBIOS without dots, upper case>``.

Report strings are NUL-padded or NUL-terminated; NULs (and surrounding spaces) are stripped.  An id goes
into a URL path and a file name, and its parts come from evidence anyone can send, so every part must be
1-64 of ``A-Z a-z 0-9 . _ -`` (no ``..``); anything else is refused (`nvgpu.rim.id`) before it is used.
"""

from __future__ import annotations

import re

from kbs.errors import MalformedEvidence

HOPPER = "HOPPER"
BLACKWELL = "BLACKWELL"
ARCHITECTURES = (HOPPER, BLACKWELL)
HOPPER_CHIP = "GH100"
BLACKWELL_DEFAULT_CHIP = "GB100"  # nvat's fallback when CHIP_INFO is absent
CHECK = "nvgpu.rim.id"
MAX_RIM_ID = 200

_PART = re.compile(r"[A-Za-z0-9._-]{1,64}")
_RIM_ID = re.compile(r"NV_[A-Za-z0-9._-]{1,196}")
VBIOS_VERSION_SIZE = 8


def _text(value: str | bytes, what: str) -> str:
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MalformedEvidence(f"{what} is not ASCII: {raw[:32]!r}", check=CHECK) from exc
    return value.replace("\x00", " ").strip()


def _clean(value: str | bytes, what: str) -> str:
    text = _text(value, what)
    if not _PART.fullmatch(text) or ".." in text:
        raise MalformedEvidence(f"{what} is {text[:64]!r}; wanted 1-64 of A-Z, a-z, 0-9, '.', '_', '-'",
                                check=CHECK)
    return text


def check_rim_id(rim_id: str) -> str:
    """`rim_id` if it is safe to put into a URL path and a file name (NV_…, the characters above)."""
    if len(rim_id) > MAX_RIM_ID or not _RIM_ID.fullmatch(rim_id) or ".." in rim_id:
        raise MalformedEvidence(f"RIM id {rim_id[:80]!r} is not an NVIDIA RIM id (NV_ followed by A-Z, a-z, 0-9, "
                                "'.', '_', '-')", check=CHECK)
    return rim_id


def driver_rim_id(driver_version: str | bytes, arch: str, chip_info: str | bytes | None = None) -> str:
    """The driver RIM id for a report's DRIVER_VERSION, architecture and (Blackwell) CHIP_INFO."""
    version = _clean(driver_version, "driver version")
    architecture = arch.strip().upper()
    if architecture == HOPPER:
        return check_rim_id(f"NV_GPU_DRIVER_{HOPPER_CHIP}_{version}")
    if architecture == BLACKWELL:
        absent = chip_info is None or not _text(chip_info, "CHIP_INFO")
        chip = BLACKWELL_DEFAULT_CHIP if chip_info is None or absent else _clean(chip_info, "CHIP_INFO")
        return check_rim_id(f"NV_GPU_CC_DRIVER_{chip}_{version}")
    raise MalformedEvidence(f"architecture {arch!r} has no driver RIM; wanted one of {', '.join(ARCHITECTURES)}",
                            check=CHECK)


def format_vbios_version(raw: bytes) -> str:
    """The VBIOS_VERSION opaque field (8 bytes b0..b7) as NVIDIA prints it: b3.b2.b1.b0.b4 in hex."""
    if len(raw) != VBIOS_VERSION_SIZE:
        raise MalformedEvidence(f"VBIOS_VERSION is {len(raw)} bytes, wanted {VBIOS_VERSION_SIZE}", check=CHECK)
    return ".".join(f"{raw[i]:02x}" for i in (3, 2, 1, 0, 4))


def vbios_rim_id(project: str | bytes, project_sku: str | bytes, chip_sku: str | bytes,
                 vbios_version: str | bytes) -> str:
    """The VBIOS RIM id from PROJECT, PROJECT_SKU, CHIP_SKU and the VBIOS version ("96.00.9f.00.01")."""
    parts = [_clean(project, "PROJECT"), _clean(project_sku, "PROJECT_SKU"), _clean(chip_sku, "CHIP_SKU")]
    version = _clean(vbios_version, "VBIOS version").replace(".", "").upper()
    return check_rim_id(f"NV_GPU_VBIOS_{'_'.join(parts)}_{version}")
