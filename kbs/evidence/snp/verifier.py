"""The SNP verifier behind the registry: configuration, cheap checks first, collateral, appraisal.

Cheap checks come before anything costly or external: the CoCo JSON is re-encoded and parsed by
the C core, the report-data binding, VMPL and HOST_DATA are checked and the offered
certificates parsed, all on the verification pool; only then may KDS be asked for collateral,
and the chain and signature are checked on the pool again.  State (the KDS client and its
caches, the per-key P-384 tables) belongs to the instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from kbs import native
from kbs.evidence.base import (
    AFFIRMING,
    CPU,
    WARNING,
    Appraisal,
    Binding,
    Offload,
    VerifierConfigError,
    VerifierContext,
    describe_roots,
    load_trust_roots,
    read_table,
    trust_vector,
)
from kbs.evidence.binding import check_init_data, check_report_data
from kbs.evidence.snp.cli import SnpVerifyCommand
from kbs.evidence.snp.coco import CocoSnpEvidence, report_from_coco
from kbs.evidence.snp.coco_fast import decode_message
from kbs.evidence.snp.collateral import gather_snp_collateral
from kbs.evidence.snp.report import SnpReport, parse_report
from kbs.evidence.snp.verify import DEFAULT_VMPLS, check_vmpl, verify_snp
from kbs.trust.amd import kds
from kbs.trust.amd.certs import PINNED_ARKS, PRODUCTS
from kbs.trust.chain import Pin
from kbs.trust.x509 import Certificate

DEFAULTS: dict[str, Any] = {
    "trust_roots": [],  # PEM ARKs replacing the pinned AMD roots (labs, tests)
    "kds_url": kds.DEFAULT_BASE_URL,
    "cache_dir": "",  # default <state_dir>/kds
    "offline": False,
    "rate_per_second": kds.DEFAULT_RATE_PER_SECOND,
    "burst": kds.DEFAULT_BURST,
    "negative_ttl_seconds": kds.DEFAULT_NEGATIVE_TTL,
    "key_tables": 256,  # per-key P-384 tables kept, 24 KB each
    "allowed_vmpls": [0],
}


def snp_trust_vector(claims: Mapping[str, Any]) -> dict[str, int]:
    """What a report that passed every check proves.  Executables stay 0: whether a measurement is
    acceptable is the release policy's decision, against reference values.  A guest whose policy
    allows debugging or a migration agent cannot keep its memory to itself: configuration warns."""
    exposed = bool(claims.get("policy_debug_allowed")) or bool(claims.get("policy_migrate_ma"))
    return trust_vector(instance_identity=AFFIRMING, hardware=AFFIRMING,
                        configuration=WARNING if exposed else AFFIRMING)


def snp_appraisal(claims: Mapping[str, Any]) -> Appraisal:
    return Appraisal(tee=SnpVerifier.name, device_class=CPU, claims=claims, vector=snp_trust_vector(claims),
                     report_data=claims.get("report_data"), init_data=claims.get("init_data"))


@dataclass(frozen=True)
class _Prepared:
    """An SNP message after every check that needs no collateral (its certificates not yet parsed)."""

    evidence: CocoSnpEvidence
    report: SnpReport


class SnpVerifier:
    name: ClassVar[str] = "snp"
    device_class: ClassVar[str] = CPU

    def __init__(self, kds_client: kds.KdsClient, trust_roots: list[Certificate] | None = None,
                 allowed_vmpls: frozenset[int] = DEFAULT_VMPLS, key_tables: int = 256) -> None:
        self.kds = kds_client
        self.trust_roots = trust_roots or None
        self.allowed_vmpls = allowed_vmpls
        self.key_tables = native.P384KeyCache(max_tables=key_tables)

    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: VerifierContext) -> SnpVerifier:
        values = read_table(table, DEFAULTS, f"verifiers.{cls.name}", minimum={"key_tables": 1})
        vmpls = values["allowed_vmpls"]
        if not vmpls or not all(0 <= v <= 3 for v in vmpls):
            raise VerifierConfigError(f"[verifiers.{cls.name}] allowed_vmpls must be a non-empty list of 0..3")
        roots = load_trust_roots(values["trust_roots"], f"verifiers.{cls.name}")
        client = kds.KdsClient(values["kds_url"], cache_dir=Path(values["cache_dir"] or context.state_dir / "kds"),
                               offline=values["offline"], rate_per_second=values["rate_per_second"],
                               burst=values["burst"], negative_ttl=values["negative_ttl_seconds"])
        return cls(client, roots, frozenset(vmpls), values["key_tables"])

    def describe_trust_roots(self) -> list[dict[str, str]]:
        return describe_roots([Pin(PINNED_ARKS[product], f"ARK-{product}") for product in PRODUCTS], self.trust_roots)

    @classmethod
    def offline_appraisal(cls, claims: Mapping[str, Any]) -> Appraisal | None:
        """`kbs verify snp --json` output (it has the report's measurement and reported TCB)."""
        if "measurement" in claims and "reported_tcb_snp" in claims:
            return snp_appraisal(claims)
        return None

    @classmethod
    def verify_command(cls) -> SnpVerifyCommand:
        return SnpVerifyCommand()

    async def verify(self, evidence: Any, binding: Binding, at: datetime, offload: Offload) -> list[Appraisal]:
        # A host's reports come with the same certificates and VEK: from its second report on, every step
        # is short (cached certificates, cached chain, the VEK's table) and runs on the loop.
        prepared = await offload(self._prepare, evidence, binding, inline=True)
        coco = prepared.evidence
        offered = await offload(coco.x509_certificates, inline=coco.certificates_parsed())
        collateral = await gather_snp_collateral(prepared.report, offered, self.kds, self.trust_roots)
        verification = await offload(verify_snp, coco.report, collateral.certificates, at,
                                     self.trust_roots, collateral.crl, self.allowed_vmpls, self.key_tables,
                                     prepared.report, inline=self._has_table(collateral.certificates))
        return [snp_appraisal(verification.claims())]

    def decode_message(self, raw: bytes) -> dict[str, Any] | None:
        """The attestation message in one C pass, its CoCo JSON already a CocoSnpEvidence (composite.MessageDecoder),
        or None: the JSON path decodes it."""
        return decode_message(raw)

    def _prepare(self, evidence: Any, binding: Binding) -> _Prepared:
        """The report out of the CoCo JSON (bounded: a 1184-byte report, byte arrays decoded in C), unless
        `decode_message` did that already, and the checks that need nothing else."""
        coco = evidence if isinstance(evidence, CocoSnpEvidence) else report_from_coco(evidence)
        report = coco.parsed or parse_report(coco.report)
        check_report_data(report.raw.report_data, binding.report_data)
        check_vmpl(report, self.allowed_vmpls)
        if binding.init_data is not None:
            check_init_data(report.raw.host_data, binding.init_data, "HOST_DATA")
        return _Prepared(coco, report)

    def _has_table(self, certificates: Sequence[Certificate]) -> bool:
        """Whether a supplied VEK's key already has a precomputed table (so the signature is ~60 us)."""
        return any(self.key_tables.get(c.public_key_bits) is not None
                   for c in certificates if c.subject_cn in ("SEV-VCEK", "SEV-VLEK"))

    async def close(self) -> None:
        await self.kds.close()
