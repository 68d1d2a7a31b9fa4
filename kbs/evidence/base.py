"""The seam every TEE plugs into: one Verifier interface, what it is given, what it returns.

A verifier gets the evidence exactly as the guest sent it, the binding the broker expects
(the report-data digest built from the broker's own nonce and the guest's TEE key, and the
init-data), the time to verify at, and a way to run CPU-bound work off the event loop.  It
returns one appraisal per attester it verified (a GPU verifier: one per GPU), each with the
claims and the AR4SI trust vector *it* computed: what evidence proves is the verifier's to say,
so nothing outside a TEE's package reads its claim names.  Anything wrong is a typed
EvidenceError naming the failed check.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from kbs.errors import KbsError
from kbs.evidence.binding import InitData
from kbs.trust.chain import Pin
from kbs.trust.x509 import Certificate, load_certificates

T = TypeVar("T")

# AR4SI trust-claim names and the values verifiers use (draft-ietf-rats-ar4si): 2 affirming,
# 32..95 warning, 96+ contraindicated, 0 no claim.
AR4SI_CLAIMS = ("instance-identity", "configuration", "executables", "file-system", "hardware",
                "runtime-opaque", "storage-opaque", "sourced-data")
AFFIRMING, WARNING, CONTRAINDICATED = 2, 32, 96

CPU, GPU = "cpu", "gpu"  # device classes: submods are numbered per class (cpu0, gpu0, gpu1, ...)


class Offload(Protocol):
    """Run a blocking, CPU-bound call on the verification pool (the C core releases the GIL).

    `inline=True` is the caller's word that this call is short and bounded (bounded input, cached
    certificates and key tables): it then runs on the event loop, since a thread hop (and the GIL
    hand-offs around it) would cost more than the call.  Cold work (certificates parsed for the first
    time, a chain walked, a key's table built) stays on the pool."""

    def __call__(self, fn: Callable[..., T], /, *args: Any, inline: bool = False) -> Awaitable[T]: ...


class VerifierConfigError(KbsError):
    """A `[verifiers.<tee>]` table is wrong; the message names the key."""

    check = "config"


@dataclass(frozen=True)
class Binding:
    """What the evidence must carry, rebuilt by the broker from its own session."""

    nonce: str
    tee_pubkey: Mapping[str, Any]
    report_data: bytes  # the digest the evidence's report data must hold (primary or device form)
    init_data: InitData | None = None


@dataclass(frozen=True)
class Appraisal:
    """One attester's verified claims and the trust vector its verifier computed."""

    tee: str  # the verifier's name: `local:<tee>` in policies
    device_class: str  # CPU or GPU
    claims: Mapping[str, Any]
    vector: Mapping[str, int]
    report_data: str | None = None
    init_data: str | None = None
    evidence_key: str | None = None  # the annotated-evidence key when it is not `tee` (Trustee's name)

    @property
    def annotation(self) -> str:
        """The key the claims sit under in the annotated evidence (`nvidia` for the `nvgpu` verifier)."""
        return self.evidence_key or self.tee


def trust_vector(**claims: int) -> dict[str, int]:
    """A full AR4SI vector: the given claims (hyphens as underscores), the rest 0 ("no claim")."""
    vector = dict.fromkeys(AR4SI_CLAIMS, 0)
    for name, value in claims.items():
        key = name.replace("_", "-")
        if key not in vector:
            raise ValueError(f"{key!r} is not an AR4SI trust claim")
        vector[key] = value
    return vector


@dataclass(frozen=True)
class VerifierContext:
    """What the broker gives every verifier it builds: where state lives, and the run mode."""

    state_dir: Path = Path(".kbs-state")
    dev_mode: bool = False
    verify_threads: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    """One TEE's verification.  Instances hold their own state (caches, collateral clients)."""

    name: ClassVar[str]
    device_class: ClassVar[str]

    async def verify(self, evidence: Any, binding: Binding, at: datetime, offload: Offload) -> list[Appraisal]:
        """Evidence as the guest sent it -> one appraisal per attester, or an EvidenceError."""
        ...

    async def close(self) -> None:
        """Release what the verifier holds (HTTP sessions)."""
        ...

    def describe_trust_roots(self) -> list[dict[str, str]]:
        """The roots its chains must end at (`kbs status`): see `describe_roots`."""
        ...


class VerifyCommand(Protocol):
    """`kbs verify <tee>`: the verifier's own arguments and a run that returns the claims."""

    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    async def run(self, args: argparse.Namespace) -> dict[str, Any]: ...

    def summary(self, claims: dict[str, Any]) -> str:
        """One line for stderr after a success."""
        ...


class VerifierType(Protocol):
    """What the registry knows of a TEE before any instance exists: the verifier's class itself."""

    @property
    def name(self) -> str: ...

    @property
    def device_class(self) -> str: ...

    def from_config(self, table: Mapping[str, Any], context: VerifierContext) -> Verifier:
        """Build from its `[verifiers.<name>]` table; unknown keys are refused by name."""
        ...

    def offline_appraisal(self, claims: Mapping[str, Any]) -> Appraisal | None:
        """The appraisal for claims this verifier printed earlier (`kbs verify <tee> --json`), else None."""
        ...

    def verify_command(self) -> VerifyCommand | None:
        """Its `kbs verify <tee>` command, if evidence of this kind can be verified from files."""
        ...


def read_table(table: Mapping[str, Any], defaults: Mapping[str, Any], where: str,
               minimum: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A `[verifiers.<tee>]` table against its defaults: unknown keys refused by name, each value of its
    default's type (an int is fine where a float is wanted; lists must hold the default's element type),
    numbers at least `minimum[key]` (default 0: no negative rates, sizes or times)."""
    unknown = sorted(set(table) - set(defaults))
    if unknown:
        raise VerifierConfigError(f"unknown configuration key [{where}] {unknown[0]}; known: "
                                  f"{', '.join(sorted(defaults))}")
    values = dict(defaults)
    for key, value in table.items():
        wanted = defaults[key]
        if isinstance(wanted, bool) or isinstance(value, bool):
            ok = isinstance(wanted, bool) and isinstance(value, bool)
        elif isinstance(wanted, float):
            ok = isinstance(value, int | float)
            value = float(value) if ok else value
        elif isinstance(wanted, list):
            kinds = {type(v) for v in wanted} or {str}
            ok = isinstance(value, list) and all(type(v) in kinds for v in value)
        else:
            ok = isinstance(value, type(wanted))
        if not ok:
            raise VerifierConfigError(f"[{where}] {key} must be like {wanted!r}, got {value!r}")
        least = (minimum or {}).get(key, 0)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < least:
            raise VerifierConfigError(f"[{where}] {key} must be at least {least}, got {value!r}")
        values[key] = value
    return values


def describe_roots(pins: Sequence[Pin], configured: Sequence[Certificate] | None,
                   role: str = "evidence") -> list[dict[str, str]]:
    """Roots as `kbs status` shows them: the operator's `trust_roots` when configured, else the vendor's pins;
    each by name and SHA-256 of its DER (what the vendor publishes), and what it anchors."""
    if configured:
        return [{"name": cert.subject_cn, "sha256": hashlib.sha256(cert.der).hexdigest(), "source": "configured",
                 "anchors": role} for cert in configured]
    return [{"name": pin.name, "sha256": pin.fingerprint, "source": "pinned", "anchors": role} for pin in pins]


def load_trust_roots(paths: Sequence[str], where: str) -> list[Certificate]:
    """The certificates in the PEM files a `trust_roots` key names (labs and tests replace pinned roots)."""
    roots: list[Certificate] = []
    for path in paths:
        try:
            roots += load_certificates(Path(path).read_bytes())
        except OSError as exc:
            raise VerifierConfigError(f"[{where}] trust_roots: cannot read {path}: {exc.strerror}") from exc
    return roots
