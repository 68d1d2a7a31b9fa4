"""Golden-measurement matching: a GPU report's measurement blocks against its driver and VBIOS RIMs
(reference/gpu.md §3.3).  Pure comparison: no I/O, no time, no signatures (the RIMs come verified).

The rules, as NVIDIA's verifiers apply them:

1. Only **active** entries count.  A driver and a VBIOS entry both active at one index is a conflict:
   `index_no_conflict` is False (NVIDIA's `x-nvidia-gpu-vbios-index-no-conflict`) and the match fails.
2. More active golden entries than the report has blocks fails.
3. RIM index i (0-based) is SPDM block i+1.  An entry matches when **any** of its alternatives equals
   the block's value **and** its `size` equals the value's length; a block the report lacks is a mismatch.
4. Index 35 is skipped when NVDEC0_STATUS is 0x55 (NVDEC disabled).  This follows nvat (`verify.cpp`);
   NVIDIA's Python verifier 2.7.3 compares the status bytes with an Enum member, so it never skips: a bug.
5. Each RIM's colloquialVersion is compared case-insensitively with the report's version: the
   `*_version_match` flags (NVIDIA's `x-nvidia-gpu-*-rim-version-match`).  They do not change `measres`;
   what they mean for a decision is the evidence verifier's to say.

`measres` is a tri-state: "success" only when both RIMs were given and every active entry matched with no
conflict; "fail" when anything failed; "not_checked" otherwise (no RIMs at all, or only one and nothing
in it failed).  So missing RIMs never read as success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kbs.trust.nvidia.rim import VerifiedRim
from kbs.trust.nvidia.rim_xml import GoldenEntry

NVDEC_INDEX = 35  # RIM index of the NVDEC measurement (SPDM block 36)
NVDEC_DISABLED = b"\x55"  # NVDEC0_STATUS opaque field: 0xAA enabled, 0x55 disabled

Measres = Literal["success", "fail", "not_checked"]
Source = Literal["driver", "vbios"]
SUCCESS: Measres = "success"
FAIL: Measres = "fail"
NOT_CHECKED: Measres = "not_checked"


@dataclass(frozen=True)
class Mismatch:
    """One active golden entry the report does not match."""

    index: int  # RIM index, 0-based (the SPDM block is index + 1)
    source: Source
    seen: bytes | None  # the block's value; None when the report has no such block
    wanted: tuple[bytes, ...]  # the entry's alternatives
    size: int  # the entry's size

    def __str__(self) -> str:
        wanted = " or ".join(h.hex() for h in self.wanted)
        where = f"{self.source} RIM index {self.index} (SPDM block {self.index + 1})"
        if self.seen is None:
            return f"{where}: the report has no such block, wanted {wanted} ({self.size} bytes)"
        return f"{where}: measured {self.seen.hex()} ({len(self.seen)} bytes), wanted {wanted} ({self.size} bytes)"


@dataclass(frozen=True)
class GoldenResult:
    """The outcome of `compare`, with everything an explanation needs."""

    measres: Measres
    index_no_conflict: bool
    conflicts: tuple[int, ...]  # RIM indices active in both RIMs
    mismatches: tuple[Mismatch, ...]
    matched: tuple[int, ...]  # RIM indices that matched
    skipped: tuple[int, ...]  # RIM indices not compared (index 35 with NVDEC disabled)
    driver_version_match: bool | None  # None: no driver RIM, or no report version to compare with
    vbios_version_match: bool | None
    problems: tuple[str, ...]  # why it failed or was not checked, in words

    @property
    def success(self) -> bool:
        return self.measres == SUCCESS

    def explain(self) -> str:
        lines = [f"measres {self.measres}: {len(self.matched)} matched, {len(self.mismatches)} mismatched"
                 + (f", skipped {list(self.skipped)}" if self.skipped else "")]
        lines += self.problems
        lines += [str(m) for m in self.mismatches]
        return "\n".join(lines)


def _version_match(rim: VerifiedRim | None, reported: str | None) -> bool | None:
    if rim is None or reported is None:
        return None
    return rim.colloquial_version.strip().casefold() == reported.replace("\x00", "").strip().casefold()


def _matches(entry: GoldenEntry, value: bytes) -> bool:
    return entry.size == len(value) and value in entry.alternatives


def compare(blocks: Mapping[int, bytes], driver: VerifiedRim | None, vbios: VerifiedRim | None, *,
            nvdec0_status: bytes | None, driver_version: str | None = None,
            vbios_version: str | None = None) -> GoldenResult:
    """Compare the report's measurement `blocks` (SPDM 1-based index -> measured value) with the active
    entries of the driver and VBIOS RIMs (module docstring).  `nvdec0_status` is the NVDEC0_STATUS opaque
    field (None when absent); `driver_version` / `vbios_version` are the report's, for the version flags."""
    golden: list[tuple[Source, GoldenEntry]] = []
    if driver is not None:
        golden += [("driver", entry) for entry in driver.active_entries]
    if vbios is not None:
        golden += [("vbios", entry) for entry in vbios.active_entries]
    golden.sort(key=lambda item: (item[1].index, item[0]))
    problems: list[str] = []
    driver_indices = {e.index for s, e in golden if s == "driver"}
    conflicts = tuple(sorted({e.index for s, e in golden if s == "vbios"} & driver_indices))
    if conflicts:
        problems.append(f"driver and VBIOS RIMs are both active at index(es) {list(conflicts)}")
    if len(golden) > len(blocks):
        problems.append(f"the RIMs have {len(golden)} active entries, more than the report's {len(blocks)} "
                        "measurement blocks")
    nvdec_disabled = nvdec0_status == NVDEC_DISABLED
    mismatches: list[Mismatch] = []
    matched: list[int] = []
    skipped: list[int] = []
    for source, entry in golden:
        if entry.index == NVDEC_INDEX and nvdec_disabled:
            skipped.append(entry.index)
            continue
        value = blocks.get(entry.index + 1)
        if value is not None and _matches(entry, value):
            matched.append(entry.index)
        else:
            mismatches.append(Mismatch(entry.index, source, value, entry.alternatives, entry.size))
    if mismatches:
        problems.append(f"{len(mismatches)} active golden measurement(s) do not match, at RIM index(es) "
                        f"{sorted({m.index for m in mismatches})}")
    if problems:
        measres = FAIL
    elif driver is None or vbios is None:
        measres = NOT_CHECKED
        missing = [name for name, rim in (("driver", driver), ("VBIOS", vbios)) if rim is None]
        problems.append(f"no {' and no '.join(missing)} RIM: the measurements were not (all) checked")
    else:
        measres = SUCCESS
    return GoldenResult(measres=measres, index_no_conflict=not conflicts, conflicts=conflicts,
                        mismatches=tuple(mismatches), matched=tuple(matched), skipped=tuple(skipped),
                        driver_version_match=_version_match(driver, driver_version),
                        vbios_version_match=_version_match(vbios, vbios_version), problems=tuple(problems))
