"""The only place that knows TEE names: the verifiers the broker ships, by name, and the instances a broker enables.

`/attest`, `kbs verify <tee>` and the claims document all go through here.  A new TEE is one
package under `evidence/` and one entry in `KNOWN`; tests (and embedders) may add their own
verifier types when building a registry (`extra_types`: classes, already imported).

Verifiers are imported lazily.  `KNOWN` holds a reference per verifier ("module:Class") with the
facts the configuration and the CLI need before any import (name, device class, the evidence keys
guests use for it); the class itself is imported by `KnownVerifier.load`, which checks those facts
against it.  A broker worker imports only the verifiers its `[verifiers] enabled` names: the NVIDIA
one alone would bring signxml, lxml and kbs.trust.nvidia (about 5 MB per worker), TDX kbs.trust.intel.
`kbs verify <tee>` and offline appraisals (`kbs policy eval` on `kbs verify --json` output) import
what they use: the CLI is not the daemon.

Configuration: the name of every `[verifiers.<name>]` table and every enabled name must be a known
verifier (or an extra type), so a misspelt TEE is refused at start whether enabled or not.  The table
of an enabled verifier is validated in full by its verifier (`from_config`); the table of a known but
disabled verifier is kept as written and checked by name only, since validating it would import the
verifier it configures: its keys are validated on the day it is enabled.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kbs.errors import KbsError
from kbs.evidence.base import CPU, GPU, Appraisal, Verifier, VerifierConfigError, VerifierContext, VerifierType
from kbs.evidence.claimschema import Schema


@dataclass(frozen=True)
class KnownVerifier:
    """A verifier the broker ships, by reference: what is known of it without importing its module."""

    name: str  # `[verifiers] enabled`, `local:<name>` in policies, the TEE a guest names
    device_class: str  # CPU (a guest's primary evidence) or GPU (additional evidence)
    target: str  # "package.module:Class", imported by `load`
    claims: str  # "package.module:CLAIMS": its claim schema, in a module that imports nothing heavy
    aliases: tuple[str, ...] = ()  # evidence keys guests send for it that are not its name
    annotation: str = ""  # the key its claims sit under in the annotated evidence, when not its name

    def claim_schema(self) -> Schema:
        """The names and types of the claims it emits (kbs.evidence.claimschema), without importing it."""
        module, _, attribute = self.claims.partition(":")
        schema: Schema = getattr(importlib.import_module(module), attribute)
        return schema

    def identity(self) -> tuple[str, ...]:
        """The dotted claim paths that name a piece of its evidence in the release log (beside its schema)."""
        paths: tuple[str, ...] = importlib.import_module(self.claims.partition(":")[0]).IDENTITY
        return paths

    def load(self) -> VerifierType:
        """Import the verifier's module and return its class (the facts above are checked against it)."""
        module, _, attribute = self.target.partition(":")
        verifier_type: VerifierType = getattr(importlib.import_module(module), attribute)
        if (verifier_type.name, verifier_type.device_class) != (self.name, self.device_class):
            raise RuntimeError(f"kbs.evidence.registry says {self.target} is {self.name!r} ({self.device_class}); "
                               f"the class says {verifier_type.name!r} ({verifier_type.device_class})")
        return verifier_type


KNOWN: Mapping[str, KnownVerifier] = {known.name: known for known in (
    KnownVerifier("snp", CPU, "kbs.evidence.snp.verifier:SnpVerifier", "kbs.evidence.snp.claim_schema:CLAIMS"),
    KnownVerifier("tdx", CPU, "kbs.evidence.tdx.verifier:TdxVerifier", "kbs.evidence.tdx.claim_schema:CLAIMS"),
    # CoCo guests send GPUs as `nvidia` (Trustee's name; kbs.evidence.nvgpu.verifier.EVIDENCE_KEY).
    KnownVerifier("nvgpu", GPU, "kbs.evidence.nvgpu.verifier:NvgpuVerifier", "kbs.evidence.nvgpu.claim_schema:CLAIMS",
                  aliases=("nvidia",), annotation="nvidia"),
    KnownVerifier("sample", CPU, "kbs.evidence.sample:SampleVerifier", "kbs.evidence.sample:CLAIMS"),
)}
# Evidence keys guests use that are not a verifier's name.
ALIASES: Mapping[str, str] = {alias: known.name for known in KNOWN.values() for alias in known.aliases}
# Enabled when the configuration does not say: `sample` has no hardware behind it, so only in dev mode.
DEFAULT_ENABLED = ("snp", "tdx")
DEV_ENABLED = (*DEFAULT_ENABLED, "sample")
# The verifier whose table took over [trust] snp_roots, [kds] * and [limits] key_tables (kbs.server.config).
MOVED_KEYS_TEE = "snp"


def verifier_type(name: str) -> VerifierType:
    """A known verifier's class, imported now (KeyError for an unknown name)."""
    return KNOWN[name].load()


def verifier_types() -> Iterator[VerifierType]:
    """Every known verifier's class, each imported as it is reached (the CLI's listings)."""
    for known in KNOWN.values():
        yield known.load()


class TeeNotEnabled(KbsError):
    """The evidence names a TEE this broker does not verify (unknown, or not enabled)."""

    check = "attestation.tee"


class VerifierRegistry:
    def __init__(self, verifiers: Mapping[str, Verifier]) -> None:
        self._verifiers = dict(verifiers)

    @classmethod
    def from_config(cls, enabled: Sequence[str], tables: Mapping[str, Mapping[str, Any]],
                    context: VerifierContext, extra_types: Sequence[VerifierType] = ()) -> VerifierRegistry:
        """Build the enabled verifiers from their `[verifiers.<name>]` tables, importing only those.

        Every name, enabled or a table's, must be known (a typo is refused now, not when enabled); a
        disabled verifier's table is not validated, as that would import it (see the module's docstring)."""
        extra = {t.name: t for t in extra_types}
        for name in [*enabled, *tables]:
            if name not in KNOWN and name not in extra:
                raise VerifierConfigError(f"unknown TEE(s) {name!r} in [verifiers]; this broker verifies "
                                          f"{', '.join(sorted({*KNOWN, *extra}))}")
        verifiers = {}
        for name in enabled:
            kind = extra[name] if name in extra else KNOWN[name].load()
            verifiers[name] = kind.from_config(tables.get(name, {}), context)
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
    """The appraisal for claims a `kbs verify <tee> --json` printed, from whichever verifier recognises them
    (verifiers imported in turn until one does: a CLI path, never the broker's)."""
    if not isinstance(claims, Mapping):  # read from a user's file: anything JSON can hold
        return None
    for kind in verifier_types():
        appraisal = kind.offline_appraisal(claims)
        if appraisal is not None:
            return appraisal
    return None
