"""Gather what an SNP report needs to be verified: VEK, ASK/ASVK, ARK and optionally the CRL.

Certificates offered with the evidence are used first; whatever is missing is fetched
from AMD's KDS (or its on-disk cache in offline mode).  Everything fetched is as
untrusted as what was offered: the chain is checked against the pins afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kbs.errors import CollateralUnavailable
from kbs.evidence.snp.report import SnpReport
from kbs.trust.amd.certs import VCEK, VLEK, CertBundle
from kbs.trust.amd.kds import KdsClient
from kbs.trust.x509 import Certificate, load_certificates, parse_certificate


@dataclass(frozen=True)
class SnpCollateral:
    certificates: tuple[Certificate, ...]
    crl: bytes | None


def candidate_products(report: SnpReport) -> list[str]:
    """Products whose KDS may hold this report's VCEK: CPUID says on v3+; v2 has to guess."""
    if report.cpuid_family is not None:
        return [report.cpuid_family]
    if not any(report.raw.chip_id[8:]):
        return ["Turin"]  # only Turin's CHIP_ID is 8 bytes long
    return ["Milan", "Genoa"]


async def gather_snp_collateral(report: SnpReport, offered: Sequence[Certificate], kds: KdsClient,
                                trust_roots: Sequence[Certificate] | None = None,
                                want_crl: bool = False) -> SnpCollateral:
    kind = VLEK if report.signer.signing_key == VLEK else VCEK
    certs = list(offered)
    bundle = CertBundle.of(certs)
    if not any(c.subject_cn == f"SEV-{kind}" for c in bundle.veks):
        if kind == VLEK:
            raise CollateralUnavailable("the report is VLEK-signed and no VLEK certificate was supplied; "
                                        "only the cloud provider can obtain it (it comes in the "
                                        "extended report's certificate table)", check="collateral.vek")
        certs.append(await _fetch_vcek(report, kds))
        bundle = CertBundle.of(certs)
    vek = bundle.vek(kind)
    product = vek.issuer_cn.removeprefix("SEV-VLEK-").removeprefix("SEV-")
    have_ask = any(c.subject_cn == vek.issuer_cn for c in bundle.intermediates)
    have_ark = any(c.subject_cn == f"ARK-{product}" for c in [*bundle.roots, *(trust_roots or ())])
    if not (have_ask and have_ark):
        for der in await kds.cert_chain(product, kind):
            certs.append(parse_certificate(der))
    crl = await kds.crl(product, kind) if want_crl else None
    return SnpCollateral(tuple(certs), crl)


# The client refused to ask KDS at all (its request limit, its in-flight bound, or KDS's own
# 429 window): another candidate product would be refused the same way, so stop, and keep the label.
_NOT_ASKED = ("kds.rate_limited", "kds.busy", "kds.throttled")


async def _fetch_vcek(report: SnpReport, kds: KdsClient) -> Certificate:
    errors = []
    for product in candidate_products(report):
        try:
            der = await kds.vcek(product, report.raw.chip_id, report.tcbs(product)["reported"])
        except CollateralUnavailable as exc:
            if exc.check in _NOT_ASKED:
                raise
            errors.append(str(exc))
            continue
        return load_certificates(der)[0]
    raise CollateralUnavailable("; ".join(errors) or "no VCEK could be fetched", check="collateral.vek")
