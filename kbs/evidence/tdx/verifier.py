"""The TDX verifier behind the registry: a DCAP quote (v4/v5) with its PCK chain, judged against
Intel's collateral, cheapest checks first.

On the verification pool: the CoCo evidence is decoded (bounded), the quote parsed in C, its
REPORT_DATA binding, MRCONFIGID (init-data) and fixed TD_ATTRIBUTES/XFAM bits checked, the event
log parsed and replayed against the RTMRs, and the PCK chain walked to the pinned Intel root (cached
by its bytes).  Only then is collateral fetched (PCS, or the configured directory), and again on the
pool: the three signatures in one C call (quote by the attestation key, QE report by the PCK key,
QE report-data binding), the collateral (cached as a verified set while its window holds), and the
TCB status by Intel QVL's algorithm.  Claims and the trust vector come from `claims.py`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from kbs import native
from kbs.errors import EvidenceError, MalformedEvidence
from kbs.evidence.base import (
    CPU,
    Appraisal,
    Binding,
    Offload,
    VerifierConfigError,
    VerifierContext,
    describe_roots,
    load_trust_roots,
    read_table,
)
from kbs.evidence.binding import check_init_data, check_report_data
from kbs.evidence.tdx.claims import tdx_claims, tdx_trust_vector
from kbs.evidence.tdx.cli import TdxVerifyCommand
from kbs.evidence.tdx.eventlog import EventLog, check_rtmrs, decode_cc_eventlog, parse_eventlog
from kbs.trust.chain import Pin
from kbs.trust.intel import pcs
from kbs.trust.intel.certs import ROOT_CA_NAME, ROOT_CA_SHA256, PckChain, verify_pck_chain
from kbs.trust.intel.collateral import IntelCollateral, VerifiedCollateral, verify_collateral
from kbs.trust.intel.offline import load_collateral_dir
from kbs.trust.intel.tcb import QeReportValues, TcbEvaluation, evaluate_tcb_cached
from kbs.trust.x509 import Certificate

MAX_QUOTE_BYTES = 32 * 1024  # a quote with its PEM chain is ~5 KB; Intel's buffers are 8000 bytes
# Fixed bits every TD has (go-tdx-guest's always-on checks): XFAM must enable x87 and SSE and no
# feature outside this set; TD_ATTRIBUTES may carry only DEBUG, SEPT_VE_DISABLE, PKS and PERFMON.
XFAM_REQUIRED, XFAM_ALLOWED = 0x3, 0x0006_DBE7
TD_ATTRIBUTES_ALLOWED = (1 << 0) | (1 << 28) | (1 << 30) | (1 << 63)

DEFAULTS: dict[str, Any] = {
    "trust_roots": [],  # PEM roots replacing the pinned Intel SGX Root CA (labs, tests)
    "collateral_dir": "",  # a directory in `kbs verify tdx --collateral` layout: no PCS at all
    "pcs_url": pcs.DEFAULT_BASE_URL,
    "cache_dir": "",  # default <state_dir>/pcs
    "offline": False,
    "rate_per_second": pcs.DEFAULT_RATE_PER_SECOND,
    "burst": pcs.DEFAULT_BURST,
    "key_tables": 256,  # per-key P-256 tables kept (16 KB each; a key gets one from its second quote)
}


@dataclass(frozen=True)
class _Prepared:
    """A TDX message after every check that needs no collateral."""

    quote_bytes: bytes
    quote: native.TdxQuote
    pck: PckChain
    eventlog: EventLog | None


def tdx_appraisal(claims: Mapping[str, Any]) -> Appraisal:
    return Appraisal(tee=TdxVerifier.name, device_class=CPU, claims=claims, vector=tdx_trust_vector(claims),
                     report_data=claims.get("report_data"), init_data=claims.get("init_data"))


def decode_evidence(evidence: Any) -> tuple[bytes, bytes | None]:
    """CoCo's TDX evidence {"quote": base64, "cc_eventlog": base64 | null} -> (quote, event log)."""
    if not isinstance(evidence, Mapping) or not isinstance(evidence.get("quote"), str) or \
            set(evidence) - {"quote", "cc_eventlog"}:
        raise MalformedEvidence('TDX evidence must be {"quote": "<base64>", "cc_eventlog": "<base64>" | null}',
                                check="evidence.tdx")
    text = evidence["quote"]
    if len(text) > MAX_QUOTE_BYTES * 4 // 3 + 4:
        raise MalformedEvidence(f"the quote is over {MAX_QUOTE_BYTES} bytes", check="evidence.tdx")
    try:
        quote = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvidence("the quote is not base64", check="evidence.tdx") from exc
    log = evidence.get("cc_eventlog")
    return quote, (decode_cc_eventlog(log) if log else None)


def check_fixed_bits(quote: native.TdxQuote) -> None:
    if quote.xfam & XFAM_REQUIRED != XFAM_REQUIRED or quote.xfam & ~XFAM_ALLOWED:
        raise EvidenceError(f"XFAM {quote.xfam:#x} is not a valid TD's (x87 and SSE required, only "
                            f"{XFAM_ALLOWED:#x} allowed)", check="quote.xfam")
    if quote.td_attributes & ~TD_ATTRIBUTES_ALLOWED:
        raise EvidenceError(f"TD_ATTRIBUTES {quote.td_attributes:#x} set bits outside DEBUG, SEPT_VE_DISABLE, "
                            "PKS and PERFMON", check="quote.td_attributes")


def tcb_input(evaluation: TcbEvaluation, collateral: VerifiedCollateral) -> dict[str, Any]:
    """The TCB evaluation as the claims take it (plain values)."""
    documents = (collateral.tcb_info, collateral.qe_identity)
    out: dict[str, Any] = {
        "status": evaluation.status, "advisory_ids": list(evaluation.advisory_ids), "tcb_date": evaluation.tcb_date,
        "tcb_eval_num": evaluation.tcb_evaluation_data_number,
        "earliest_issue_date": min(d.issue_date for d in documents),
        "latest_issue_date": max(d.issue_date for d in documents),
        "earliest_expiration_date": min(d.next_update for d in documents)}
    if evaluation.current is not None:
        out.update(status_current=evaluation.current.status, advisory_ids_current=list(evaluation.current.advisory_ids),
                   tcb_date_current=evaluation.current.tcb_date)
    return out


def pck_input(pck: PckChain) -> dict[str, Any]:
    info = pck.info
    configuration = info.configuration
    return {"fmspc": info.fmspc.hex(), "pce_id": info.pce_id.hex(), "ppid": info.ppid.hex(),
            "platform_instance_id": info.platform_instance_id.hex() if info.platform_instance_id else None,
            "sgx_type": info.sgx_type, "cpu_svn": info.cpusvn.hex(), "pce_svn": info.pcesvn,
            "tcb_components": list(info.sgx_tcb_components),
            "dynamic_platform": configuration.dynamic_platform if configuration else None,
            "cached_keys": configuration.cached_keys if configuration else None,
            "smt_enabled": configuration.smt_enabled if configuration else None}


def prepare(evidence: Any, binding: Binding | None, at: datetime,
            trust_roots: list[Certificate] | None) -> _Prepared:
    """Every check before collateral; `binding` None (the command line) checks no binding."""
    quote_bytes, log_bytes = decode_evidence(evidence)
    quote = native.tdx_parse(quote_bytes)
    if binding is not None:
        check_report_data(quote.report_data, binding.report_data)
        if binding.init_data is not None:
            check_init_data(quote.mr_config_id, binding.init_data, "MRCONFIGID")
    check_fixed_bits(quote)
    log = parse_eventlog(log_bytes) if log_bytes is not None else None
    if log is not None:
        check_rtmrs(log, quote.rtmrs)
    pck = verify_pck_chain(quote.pck_chain_pem, at, trust_roots=trust_roots)
    return _Prepared(quote_bytes, quote, pck, log)


def appraise(prepared: _Prepared, collateral: IntelCollateral, at: datetime,
             trust_roots: list[Certificate] | None, key_tables: native.P256KeyCache | None = None) -> dict[str, Any]:
    """Signatures in C, collateral, TCB status; the claims of a quote that passed every check.

    With `key_tables` (the verifier's: a platform's PCK key and attestation key sign every quote it
    makes), both signatures verify through per-key tables once the keys have earned them."""
    quote = prepared.quote
    native.tdx_verify_signatures(prepared.quote_bytes, prepared.pck.info.public_point, cache=key_tables)
    verified = verify_collateral(collateral, prepared.pck, at, trust_roots=trust_roots)
    qe = quote.qe_report
    evaluation = evaluate_tcb_cached(verified, prepared.pck.info, tee_tcb_svn=quote.tee_tcb_svn,
                                     tee_tcb_svn2=quote.tee_tcb_svn2, body_type=quote.body_type,
                                     mr_signer_seam=quote.mr_signer_seam, seam_attributes=quote.seam_attributes,
                                     qe=QeReportValues(qe.misc_select, qe.attributes, qe.mr_signer,
                                                       qe.isv_prod_id, qe.isv_svn))
    return tdx_claims(quote, eventlog=prepared.eventlog, tcb=tcb_input(evaluation, verified),
                      pck=pck_input(prepared.pck))


class TdxVerifier:
    name: ClassVar[str] = "tdx"
    device_class: ClassVar[str] = CPU

    def __init__(self, collateral: IntelCollateral | pcs.PcsClient, trust_roots: list[Certificate] | None = None,
                 key_tables: int = 256) -> None:
        self.collateral = collateral
        self.trust_roots = trust_roots or None
        self.key_tables = native.P256KeyCache(max_tables=key_tables)

    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: VerifierContext) -> TdxVerifier:
        values = read_table(table, DEFAULTS, f"verifiers.{cls.name}", minimum={"key_tables": 1})
        roots = load_trust_roots(values["trust_roots"], f"verifiers.{cls.name}")
        if values["collateral_dir"]:
            try:
                return cls(load_collateral_dir(Path(values["collateral_dir"])), roots, values["key_tables"])
            except (OSError, EvidenceError) as exc:
                raise VerifierConfigError(f"[verifiers.{cls.name}] collateral_dir: {exc}") from exc
        client = pcs.PcsClient(values["pcs_url"], cache_dir=Path(values["cache_dir"] or context.state_dir / "pcs"),
                               offline=values["offline"], trust_roots=roots or None,
                               rate_per_second=values["rate_per_second"], burst=values["burst"])
        return cls(client, roots, values["key_tables"])

    @classmethod
    def offline_appraisal(cls, claims: Mapping[str, Any]) -> Appraisal | None:
        """`kbs verify tdx --json` output (Trustee's quote.header/quote.body, and our tcb_status)."""
        quote = claims.get("quote")
        if isinstance(quote, Mapping) and "body" in quote and "header" in quote and "td_attributes" in claims:
            return tdx_appraisal(claims)
        return None

    @classmethod
    def verify_command(cls) -> TdxVerifyCommand:
        return TdxVerifyCommand()

    async def collateral_for(self, pck: PckChain) -> IntelCollateral:
        if isinstance(self.collateral, IntelCollateral):
            return self.collateral
        return await self.collateral.collateral(pck.info.fmspc, pck.info.ca)

    async def verify(self, evidence: Any, binding: Binding, at: datetime, offload: Offload) -> list[Appraisal]:
        prepared = await offload(prepare, evidence, binding, at, self.trust_roots)
        collateral = await self.collateral_for(prepared.pck)
        claims = await offload(appraise, prepared, collateral, at, self.trust_roots, self.key_tables)
        return [tdx_appraisal(claims)]

    def describe_trust_roots(self) -> list[dict[str, str]]:
        return describe_roots([Pin(ROOT_CA_SHA256, ROOT_CA_NAME)], self.trust_roots)

    async def close(self) -> None:
        if isinstance(self.collateral, pcs.PcsClient):
            await self.collateral.close()
