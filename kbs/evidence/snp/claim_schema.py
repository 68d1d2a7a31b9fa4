"""The SNP verifier's claims (kbs.evidence.snp.verify.snp_claims), names and JSON types.

Plain data, imported by the policy checker without the verifier (kbs.evidence.claimschema).
Hex values are lower-case strings; TCB parts and versions are numbers."""

from __future__ import annotations

from kbs.evidence.claimschema import Schema

_TCB: Schema = {"raw": "string", "bl": "number", "tee": "number", "snp": "number", "ucode": "number",
                "fmc": "number"}
_FIRMWARE: Schema = {"major": "number", "minor": "number", "build": "number"}

CLAIMS: Schema = {
    # Trustee's names (its SNP verifier), so its policies work unchanged.
    "policy_abi_major": "number", "policy_abi_minor": "number", "policy_smt_allowed": "boolean",
    "policy_migrate_ma": "boolean", "policy_debug_allowed": "boolean", "policy_single_socket": "boolean",
    "reported_tcb_bootloader": "number", "reported_tcb_tee": "number", "reported_tcb_snp": "number",
    "reported_tcb_microcode": "number", "reported_tcb_fmc": "number",
    "platform_tsme_enabled": "boolean", "platform_smt_enabled": "boolean",
    "measurement": "string", "report_data": "string", "init_data": "string", "chip_id": "string",
    # Every other decoded field.
    "version": "number", "product": "string", "guest_svn": "number", "vmpl": "number", "allowed_vmpls": ["number"],
    "signing_key": "string", "author_key_en": "boolean", "mask_chip_key": "boolean",
    "policy": {"raw": "string", "abi_major": "number", "abi_minor": "number", "smt_allowed": "boolean",
               "migrate_ma_allowed": "boolean", "debug_allowed": "boolean", "single_socket_required": "boolean",
               "cxl_allowed": "boolean", "mem_aes_256_xts_required": "boolean", "rapl_disable_required": "boolean",
               "ciphertext_hiding_required": "boolean", "page_swap_disabled": "boolean"},
    "platform_info": {"raw": "string", "smt_enabled": "boolean", "tsme_enabled": "boolean", "ecc_enabled": "boolean",
                      "rapl_disabled": "boolean", "ciphertext_hiding_enabled": "boolean",
                      "alias_check_complete": "boolean", "tio_enabled": "boolean", "reserved_bits": "string"},
    "tcb": {"current": _TCB, "reported": _TCB, "committed": _TCB, "launch": _TCB},
    "firmware": {"current": _FIRMWARE, "committed": _FIRMWARE},
    "cpuid": ("null", {"family": "number", "model": "number", "stepping": "number"}),
    "family_id": "string", "image_id": "string", "host_data": "string", "id_key_digest": "string",
    "author_key_digest": "string", "report_id": "string", "report_id_ma": "string",
    "launch_mit_vector": "string", "current_mit_vector": "string",
    "vek": {"kind": "string", "product_name": "string", "csp_id": "string|null", "not_after": "string"},
}

# What names this evidence in the release log (kbs.store.tlog): the launch, the chip and its TCB.
IDENTITY = ("measurement", "chip_id", "product", "reported_tcb_bootloader", "reported_tcb_tee", "reported_tcb_snp",
            "reported_tcb_microcode", "reported_tcb_fmc", "host_data", "vmpl")
