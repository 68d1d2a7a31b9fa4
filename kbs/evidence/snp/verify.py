"""SEV-SNP evidence: report + certificates + time -> claims, or a typed error.

Three separate steps, each with its own tests:
  parse    bytes -> SnpReport                      (snp_report.parse_report, C core)
  verify   report + VEK key -> signature checked   (one C call: parse, SHA-384, ECDSA P-384)
  appraise report + chain + time -> claims         (chain, TCB, chip id, product; this module)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kbs import native
from kbs.errors import ChainInvalid, EvidenceError, SignatureInvalid
from kbs.evidence.snp.report import SnpReport, TcbVersion, parse_report
from kbs.trust.amd.certs import VCEK, AmdChain, CertBundle, check_crl, verify_chain
from kbs.trust.x509 import Certificate


@dataclass(frozen=True)
class SnpVerification:
    """Everything known about a report that passed every check."""

    report: SnpReport
    chain: AmdChain
    product: str
    tcbs: dict[str, TcbVersion]
    allowed_vmpls: frozenset[int] = frozenset({0})

    def claims(self) -> dict[str, Any]:
        return snp_claims(self)


# A report from VMPL > 0 was requested by software below the guest's most privileged level (a
# paravisor's guest, or anything the VMPL 0 code let ask): Trustee requires VMPL 0, and so do we
# unless the operator allows more.
DEFAULT_VMPLS = frozenset({0})

def verify_signature(report: SnpReport, chain: AmdChain, key_tables: native.P384KeyCache | None = None) -> None:
    """The report's ECDSA P-384 signature, checked in C with the VEK's key.

    With `key_tables` (the verifier's per-key precomputed tables: one VCEK signs every report of
    its host, so from its second report on it verifies ~3x faster), the key's table is used."""
    try:
        native.snp_check_signature(report.data, chain.vek_public_point, key_tables)
    except SignatureInvalid as exc:
        raise SignatureInvalid(f"report signature does not verify with the {chain.kind} key ({exc})",
                               check=exc.check) from exc


def check_signer(report: SnpReport, chain: AmdChain) -> None:
    if report.signer.signing_key != chain.kind:
        raise ChainInvalid(f"report says it is signed by the {report.signer.signing_key}, "
                           f"the certificate supplied is a {chain.kind}", check="report.signer")


def check_product(report: SnpReport, chain: AmdChain) -> str:
    """The product family: from CPUID on v3+ (must agree with the chain), else from the chain."""
    if report.version >= 3:
        family = report.cpuid_family
        if family is None:
            raise ChainInvalid(f"report CPUID family {report.raw.cpuid_fam_id:#x} model "
                               f"{report.raw.cpuid_mod_id:#x} is not a supported SEV-SNP product",
                               check="report.product")
        if family != chain.product:
            raise ChainInvalid(f"report CPUID says {family}, the certificate chain is {chain.product}",
                               check="report.product")
    return chain.product


def check_tcb(reported: TcbVersion, chain: AmdChain) -> None:
    """REPORTED_TCB must equal the TCB the VEK was issued for, component by component."""
    ext = chain.extensions
    cert_parts = {"bl": ext.bl, "tee": ext.tee, "snp": ext.snp, "ucode": ext.ucode}
    if chain.product == "Turin":
        if ext.fmc is None:
            raise ChainInvalid(f"Turin {chain.kind} lacks fmcSPL", check="vek.tcb")
        cert_parts["fmc"] = ext.fmc
    for name, cert_value in cert_parts.items():
        report_value = reported.parts()[name]
        if cert_value != report_value:
            raise ChainInvalid(f"{chain.kind} {name}SPL is {cert_value}, report's reported_tcb has "
                               f"{report_value}", check="vek.tcb")


def check_chip_id(report: SnpReport, chain: AmdChain) -> None:
    """A VCEK is bound to one chip: CHIP_ID must equal hwID unless the host masks it (zero)."""
    if chain.kind != VCEK or report.chip_id_zero:
        return
    hwid = chain.extensions.hwid or b""
    chip_id = report.raw.chip_id
    if chain.product == "Turin":
        # Turin's hwID is 8 bytes; the report carries it in CHIP_ID[0:8], the rest zero.
        matches = len(hwid) == 8 and chip_id[:8] == hwid and not any(chip_id[8:])
    else:
        matches = len(hwid) == 64 and chip_id == hwid
    if not matches:
        raise ChainInvalid(f"report CHIP_ID {chip_id[:8].hex()}… does not match the VCEK hwID "
                           f"{hwid[:8].hex()}…", check="vek.chip_id")


def check_vmpl(report: SnpReport, allowed: frozenset[int]) -> None:
    if report.raw.vmpl not in allowed:
        raise EvidenceError(f"report was requested at VMPL {report.raw.vmpl}; allowed: "
                            f"{', '.join(map(str, sorted(allowed)))} (verifier setting allowed_vmpls)",
                            check="report.vmpl")


def appraise(report: SnpReport, chain: AmdChain, allowed_vmpls: frozenset[int] = DEFAULT_VMPLS) -> SnpVerification:
    check_vmpl(report, allowed_vmpls)
    check_signer(report, chain)
    product = check_product(report, chain)
    tcbs = report.tcbs(product)
    check_tcb(tcbs["reported"], chain)
    check_chip_id(report, chain)
    return SnpVerification(report=report, chain=chain, product=product, tcbs=tcbs, allowed_vmpls=allowed_vmpls)


def verify_snp(data: bytes, certificates: Iterable[Certificate], at: datetime,
               trust_roots: Sequence[Certificate] | None = None, crl: bytes | None = None,
               allowed_vmpls: frozenset[int] = DEFAULT_VMPLS,
               key_tables: native.P384KeyCache | None = None, parsed: SnpReport | None = None) -> SnpVerification:
    """The whole SNP pipeline.  Raises an EvidenceError subclass naming the failed check.  `parsed` is
    `parse_report(data)` when the caller has it already."""
    report = parsed if parsed is not None and parsed.data == data else parse_report(data)
    bundle = CertBundle.of(certificates)
    vek = bundle.vek(report.signer.signing_key if report.signer.signing_key != "NONE" else VCEK)
    chain = verify_chain(vek, bundle, at, trust_roots)
    if crl is not None:
        check_crl(crl, chain, at)
    verify_signature(report, chain, key_tables)
    return appraise(report, chain, allowed_vmpls)


def snp_claims(v: SnpVerification) -> dict[str, Any]:
    """Trustee's SNP claim names (so its policies work unchanged) plus every decoded field."""
    r = v.report.raw
    policy, platform, reported = v.report.policy, v.report.platform, v.tcbs["reported"]
    claims: dict[str, Any] = {
        # Trustee names (deps/verifier/src/snp): native JSON types, hex digests.
        "policy_abi_major": policy.abi_major,
        "policy_abi_minor": policy.abi_minor,
        "policy_smt_allowed": policy.smt_allowed,
        "policy_migrate_ma": policy.migrate_ma_allowed,
        "policy_debug_allowed": policy.debug_allowed,
        "policy_single_socket": policy.single_socket_required,
        "reported_tcb_bootloader": reported.bl,
        "reported_tcb_tee": reported.tee,
        "reported_tcb_snp": reported.snp,
        "reported_tcb_microcode": reported.ucode,
        "platform_tsme_enabled": platform.tsme_enabled,
        "platform_smt_enabled": platform.smt_enabled,
        "measurement": r.measurement.hex(),
        "report_data": r.report_data.hex(),
        "init_data": r.host_data.hex(),
        "chip_id": r.chip_id.hex(),
    }
    if reported.fmc is not None:
        claims["reported_tcb_fmc"] = reported.fmc
    claims.update({
        "version": r.version,
        "product": v.product,
        "guest_svn": r.guest_svn,
        "vmpl": r.vmpl,
        "allowed_vmpls": sorted(v.allowed_vmpls),
        "signing_key": v.report.signer.signing_key,
        "author_key_en": v.report.signer.author_key_en,
        "mask_chip_key": v.report.signer.mask_chip_key,
        "policy": {"raw": f"{policy.raw:#x}", "abi_major": policy.abi_major, "abi_minor": policy.abi_minor,
                   "smt_allowed": policy.smt_allowed, "migrate_ma_allowed": policy.migrate_ma_allowed,
                   "debug_allowed": policy.debug_allowed,
                   "single_socket_required": policy.single_socket_required,
                   "cxl_allowed": policy.cxl_allowed,
                   "mem_aes_256_xts_required": policy.mem_aes_256_xts_required,
                   "rapl_disable_required": policy.rapl_disable_required,
                   "ciphertext_hiding_required": policy.ciphertext_hiding_required,
                   "page_swap_disabled": policy.page_swap_disabled},
        "platform_info": {"raw": f"{platform.raw:#x}", "smt_enabled": platform.smt_enabled,
                          "tsme_enabled": platform.tsme_enabled, "ecc_enabled": platform.ecc_enabled,
                          "rapl_disabled": platform.rapl_disabled,
                          "ciphertext_hiding_enabled": platform.ciphertext_hiding_enabled,
                          "alias_check_complete": platform.alias_check_complete,
                          "tio_enabled": platform.tio_enabled,
                          "reserved_bits": f"{platform.reserved_bits:#x}"},
        "tcb": {name: {"raw": f"{tcb.raw:#018x}", **tcb.parts()} for name, tcb in v.tcbs.items()},
        "firmware": {
            "current": {"major": r.current_major, "minor": r.current_minor, "build": r.current_build},
            "committed": {"major": r.committed_major, "minor": r.committed_minor,
                          "build": r.committed_build},
        },
        "cpuid": ({"family": r.cpuid_fam_id, "model": r.cpuid_mod_id, "stepping": r.cpuid_step}
                  if r.version >= 3 else None),
        "family_id": r.family_id.hex(),
        "image_id": r.image_id.hex(),
        "host_data": r.host_data.hex(),
        "id_key_digest": r.id_key_digest.hex(),
        "author_key_digest": r.author_key_digest.hex(),
        "report_id": r.report_id.hex(),
        "report_id_ma": r.report_id_ma.hex(),
        "launch_mit_vector": f"{r.launch_mit_vector:#x}",
        "current_mit_vector": f"{r.current_mit_vector:#x}",
        "vek": {"kind": v.chain.kind, "product_name": v.chain.extensions.product_name,
                "csp_id": v.chain.extensions.csp_id,
                "not_after": v.chain.vek.not_after.isoformat()},
    })
    return claims
