"""The TDX verifier's claims (kbs.evidence.tdx.claims.tdx_claims), names and JSON types.

Plain data, imported by the policy checker without the verifier (kbs.evidence.claimschema).
Trustee's names first (its TDX verifier and DCAP claims), then ours."""

from __future__ import annotations

from kbs.evidence.claimschema import Schema

_BODY: Schema = {
    "tcb_svn": "string", "mr_seam": "string", "mrsigner_seam": "string", "seam_attributes": "string",
    "td_attributes": "string", "xfam": "string", "mr_td": "string", "mr_config_id": "string", "mr_owner": "string",
    "mr_owner_config": "string", "rtmr_0": "string", "rtmr_1": "string", "rtmr_2": "string", "rtmr_3": "string",
    "report_data": "string",
    "tee_tcb_svn2": "string", "mr_servicetd": "string",  # TD 1.5 bodies (quote v5, type 3)
}
_TD_ATTRIBUTES = ("debug", "hgs_plus_prof", "perf_prof", "pmt_prof", "icssd", "lass", "septve_disable", "migratable",
                  "protection_keys", "key_locker", "tpa", "perfmon")
_XFAM = ("x87", "sse", "avx", "mpx_bndregs", "mpx_bndcsr", "avx512_opmask", "avx512_zmm_hi256", "avx512_hi16_zmm",
         "pt", "pkru", "pasid", "cet_user", "cet_supervisor", "hdc", "uintr", "lbr", "hwp", "amx_tilecfg",
         "amx_tiledata", "apx")


def _bits(names: tuple[str, ...]) -> Schema:
    return {"raw": "string", **dict.fromkeys(names, "boolean"), "unknown_bits": "string"}


CLAIMS: Schema = {
    "quote": {"header": {"version": "string", "att_key_type": "string", "tee_type": "string", "reserved": "string",
                         "vendor_id": "string", "user_data": "string"},
              "body": _BODY, "type": "string", "size": "string"},
    "td_attributes": dict.fromkeys(("debug", "key_locker", "perfmon", "protection_keys", "septve_disable"),
                                   "boolean"),
    "report_data": "string", "init_data": "string", "platform_instance_id": "string",
    "uefi_event_logs": [{"index": "number", "type_name": "string", "event": "string", "digests":
                         [{"alg": "string", "digest": "string"}], "digest_matches_event": "boolean",
                         "details": "any"}],
    # From the DCAP verification: TCB status and collateral.
    "tcb_status": "string", "advisory_ids": ["string"], "collateral_expiration_status": "string",
    "tcb_status_current": "string", "advisory_ids_current": ["string"], "tcb_date": "string",
    "tcb_date_current": "string", "tcb_eval_num": "number", "earliest_issue_date": "string",
    "latest_issue_date": "string", "earliest_expiration_date": "string", "pck_crl_num": "number",
    "root_ca_crl_num": "number", "platform_provider_id": "string", "sgx_type": "string",
    "is_dynamic_platform": "boolean", "is_cached_keys": "boolean", "is_smt_enabled": "boolean",
    # Ours.
    "fmspc": "string", "pce_id": "string",
    "pck": {"fmspc": "string", "pce_id": "string", "ppid": "string", "platform_instance_id": "string",
            "sgx_type": "number", "cpu_svn": "string", "pce_svn": "number", "tcb_components": ["number"],
            "dynamic_platform": "boolean", "cached_keys": "boolean", "smt_enabled": "boolean"},
    "quote_version": "number", "body_type": "number", "tee_tcb_svn": ["number"], "tee_tcb_svn2": ("null", ["number"]),
    "mr_service_td": "string|null", "td_attributes_bits": _bits(_TD_ATTRIBUTES), "xfam": _bits(_XFAM),
    "eventlog": {"events": "number", "algorithms": ["string"], "rtmrs_match_quote": "boolean"},
}

# What names this evidence in the release log (kbs.store.tlog): the TD's measurements, the platform and its TCB.
IDENTITY = ("quote.body.mr_td", "quote.body.rtmr_0", "quote.body.rtmr_1", "quote.body.rtmr_2", "quote.body.rtmr_3",
            "quote.body.mr_config_id", "fmspc", "platform_instance_id", "tcb_status", "tcb_date", "tee_tcb_svn")
