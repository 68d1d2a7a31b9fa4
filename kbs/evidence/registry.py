"""The only place that knows TEE names: verifier types by name, and the instances a broker enables.

`/attest`, `kbs verify <tee>` and the claims document all go through here.  A new TEE is one
package under `evidence/` and one entry in `AVAILABLE`; tests (and embedders) may add their own
verifier types when building a registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kbs.errors import KbsError
from kbs.evidence.base import Appraisal, Verifier, VerifierConfigError, VerifierContext, VerifierType
from kbs.evidence.nvgpu.verifier import EVIDENCE_KEY as NVIDIA_EVIDENCE_KEY
from kbs.evidence.nvgpu.verifier import NvgpuVerifier
from kbs.evidence.sample import SampleVerifier
from kbs.evidence.snp.verifier import SnpVerifier
from kbs.evidence.tdx.verifier import TdxVerifier

AVAILABLE: dict[str, VerifierType] = {t.name: t for t in (SnpVerifier, TdxVerifier, NvgpuVerifier, SampleVerifier)}
# Evidence keys guests use that are not a verifier's name: CoCo guests send GPUs as `nvidia`.
ALIASES = {NVIDIA_EVIDENCE_KEY: NvgpuVerifier.name}
# Enabled when the configuration does not say: `sample` has no hardware behind it, so only in dev mode.
DEFAULT_ENABLED = (SnpVerifier.name, TdxVerifier.name)
DEV_ENABLED = (SnpVerifier.name, TdxVerifier.name, SampleVerifier.name)


class TeeNotEnabled(KbsError):
    """The evidence names a TEE this broker does not verify (unknown, or not enabled)."""

    check = "attestation.tee"


class VerifierRegistry:
    def __init__(self, verifiers: Mapping[str, Verifier]) -> None:
        self._verifiers = dict(verifiers)

    @classmethod
    def from_config(cls, enabled: Sequence[str], tables: Mapping[str, Mapping[str, Any]],
                    context: VerifierContext, extra_types: Sequence[VerifierType] = ()) -> VerifierRegistry:
        """Build the enabled verifiers from their `[verifiers.<name>]` tables (a table for a known but
        disabled TEE is checked too, so a typo never waits for the day it is enabled)."""
        types = {**AVAILABLE, **{t.name: t for t in extra_types}}
        for name in [*enabled, *tables]:
            if name not in types:
                raise VerifierConfigError(f"unknown TEE(s) {name!r} in [verifiers]; this broker verifies "
                                          f"{', '.join(sorted(types))}")
        verifiers = {}
        for name in sorted(set(tables) - set(enabled)):
            types[name].from_config(tables[name], context)  # validated, then dropped
        for name in enabled:
            verifiers[name] = types[name].from_config(tables.get(name, {}), context)
        return cls(verifiers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._verifiers)

    def names_of_class(self, device_class: str) -> tuple[str, ...]:
        return tuple(n for n, v in self._verifiers.items() if v.device_class == device_class)

    def get(self, name: str, device_class: str | None = None) -> Verifier:
        verifier = self._verifiers.get(name) or self._verifiers.get(ALIASES.get(name, ""))
        if verifier is None or (device_class is not None and verifier.device_class != device_class):
            shown = name if len(name) <= 40 else name[:40] + "…"
            kinds = f"{device_class} " if device_class else ""
            enabled = ", ".join(self.names_of_class(device_class) if device_class else self.names) or "none"
            raise TeeNotEnabled(f"{kinds}TEE {shown!r} is not enabled on this broker; enabled: {enabled}")
        return verifier

    async def close(self) -> None:
        for verifier in self._verifiers.values():
            await verifier.close()


def offline_appraisal(claims: Mapping[str, Any]) -> Appraisal | None:
    """The appraisal for claims a `kbs verify <tee> --json` printed, from whichever verifier recognises them."""
    if not isinstance(claims, Mapping):  # read from a user's file: anything JSON can hold
        return None
    for verifier_type in AVAILABLE.values():
        appraisal = verifier_type.offline_appraisal(claims)
        if appraisal is not None:
            return appraisal
    return None
