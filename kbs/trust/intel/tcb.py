"""The TCB status of a TDX platform, by Intel QVL's algorithm (reference/tdx.md §3.4; QVL
`QuoteVerifier::verify` steps 4.1.2.5.11-12 and 16, `EvaluateTcb.cpp` `tdxEvaluateTCB`,
`TdxModuleCheck.cpp`, `TDRelaunchCheck.cpp`, `EnclaveReportVerifier.cpp`).

It takes plain values (what a PCK leaf says, and the fields of a quote) and verified collateral, never
a parsed quote, so it stands apart from the quote parser.

1. FMSPC and PCE-ID of the PCK equal those of the TCB info (`tcb.fmspc`, `tcb.pce_id`).
2. The TDX module: with `tee_tcb_svn[1]` (the module's major version) above 0, the module identity
   ``TDX_%02X`` must exist (`tcb.module`) and replaces `tdxModule`; MRSIGNERSEAM must equal its
   mrsigner (`tcb.module`) and every SEAMATTRIBUTES byte must be 0 and equal its attributes
   (`tcb.seam_attributes`; QVL's rule: the mask is not applied).
3. The QE report against the QE identity: (MISCSELECT & mask) == miscselect, (ATTRIBUTES & mask) ==
   attributes bytewise, MRSIGNER and ISVPRODID equal (`qe_identity.miscselect`, `.attributes`,
   `.mrsigner`, `.isvprodid`).
4. The platform level: the first TCB level (QVL's order, highest first) whose 16 SGX component SVNs
   the PCK's 16 SGX TCB component SVNs all reach (not the raw CPUSVN bytes), whose PCESVN the PCK's
   reaches, and whose TDX components `tee_tcb_svn` reaches from index 2 on when a module identity
   applies (indices 0 and 1 are the module's, judged by its own levels) or from 0 otherwise.
5. The module level (major version > 0): the first level of the identity with `tee_tcb_svn[0]` >= its
   ISVSVN; the QE level: the first level with the QE report's ISVSVN >= its ISVSVN.  Either missing,
   or no platform level: TCB not supported (`tcb.not_supported`).
6. Convergence: a component (module, QE) OutOfDate turns UpToDate and SWHardeningNeeded into
   OutOfDate, ConfigurationNeeded and ConfigurationAndSWHardeningNeeded into
   OutOfDateConfigurationNeeded; a Revoked component makes Revoked.  The TCB date is the earliest of
   the levels' dates; the advisory ids are the platform's, then the QE's, then the module's, each once.
7. TD 1.5 (body type 3 and up): steps 4-6 again with `tee_tcb_svn2` (the module running now, after
   TD-preserving updates).  Launch OutOfDate or OutOfDateConfigurationNeeded with a current status
   that is not (UpToDate, SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded)
   gives TDRelaunchAdvised, or TDRelaunchAdvisedConfigurationNeeded when either involves configuration;
   otherwise the launch status stands.

Revoked (at launch, or now: stricter than QVL, which reports the launch status when only the current
TCB is revoked) is a refusal (`tcb.revoked`); every other status is returned for policy to judge,
spelled as in PCS JSON.  Where go-tdx-guest and dcap-qvl differ, this follows QVL: go-tdx-guest returns
the module level alone when a module identity applies (so S8 is UpToDate there, OutOfDate here), applies
the attributes mask to SEAMATTRIBUTES and formats module ids in lower case; dcap-qvl compares the raw
CPUSVN bytes and all 16 TDX components, trusts the JSON order of levels, masks SEAMATTRIBUTES, merges
statuses by severity (module OutOfDate with ConfigurationNeeded gives OutOfDate, not
OutOfDateConfigurationNeeded) and has no relaunch rule.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from kbs.errors import ChainInvalid, MalformedEvidence
from kbs.trust.intel.certs import PckInfo
from kbs.trust.intel.collateral import (
    CONFIGURATION_AND_SW_HARDENING_NEEDED,
    CONFIGURATION_NEEDED,
    MAX_MEMO_EVALUATIONS,
    OUT_OF_DATE,
    OUT_OF_DATE_CONFIGURATION_NEEDED,
    REVOKED,
    SW_HARDENING_NEEDED,
    UP_TO_DATE,
    ModuleTcbLevel,
    QeIdentity,
    TcbInfo,
    TcbStatus,
    VerifiedCollateral,
)

Status = Literal["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                 "OutOfDate", "OutOfDateConfigurationNeeded", "TDRelaunchAdvised",
                 "TDRelaunchAdvisedConfigurationNeeded"]
TD_RELAUNCH_ADVISED: Status = "TDRelaunchAdvised"
TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED: Status = "TDRelaunchAdvisedConfigurationNeeded"
STATUSES: tuple[Status, ...] = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                                "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded",
                                "TDRelaunchAdvised", "TDRelaunchAdvisedConfigurationNeeded")

BODY_TD10 = 2  # TD report 1.0: every v4 quote, and v5 body type 2
BODY_TD15 = 3  # TD report 1.5: carries tee_tcb_svn2
BODY_TD15_EX = 4  # QVL knows it; evaluated as TD 1.5
_CONFIGURATION = frozenset({CONFIGURATION_NEEDED, OUT_OF_DATE_CONFIGURATION_NEEDED,
                            CONFIGURATION_AND_SW_HARDENING_NEEDED, TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED})
_CURRENT_FINE = frozenset({UP_TO_DATE, SW_HARDENING_NEEDED, CONFIGURATION_NEEDED,
                           CONFIGURATION_AND_SW_HARDENING_NEEDED})


@dataclass(frozen=True)
class QeReportValues:
    """The fields of the quote's QE report the QE identity judges."""

    misc_select: int  # u32 (little-endian in the report)
    attributes: bytes  # 16
    mr_signer: bytes  # 32
    isv_prod_id: int
    isv_svn: int


@dataclass(frozen=True)
class LevelMatch:
    """One evaluation (of `tee_tcb_svn` at launch, or of `tee_tcb_svn2` now): the levels chosen and what
    they converge to.  Indices point into `TcbInfo.tcb_levels`, the identity's and the QE identity's
    `tcb_levels` (all in QVL's order, highest first)."""

    status: TcbStatus  # converged
    tcb_date: datetime  # the earliest date of the levels involved
    advisory_ids: tuple[str, ...]
    platform_status: TcbStatus
    platform_level: int
    platform_tcb_date: datetime
    module_id: str | None  # "TDX_01", or None when tee_tcb_svn[1] is 0
    module_status: TcbStatus | None
    module_level: int | None
    module_tcb_date: datetime | None
    qe_status: TcbStatus
    qe_level: int
    qe_tcb_date: datetime


@dataclass(frozen=True)
class TcbEvaluation:
    """The TCB status of a quote's platform, for policy to judge (never Revoked: that is a refusal)."""

    status: Status
    advisory_ids: tuple[str, ...]  # of the launch evaluation, as QVL reports them
    tcb_date: datetime  # of the launch evaluation
    launch: LevelMatch
    current: LevelMatch | None  # TD 1.5 quotes only
    fmspc: str  # lowercase hex
    tcb_evaluation_data_number: int  # of the TCB info
    qe_evaluation_data_number: int


def _refuse(message: str, check: str) -> ChainInvalid:
    return ChainInvalid(message, check=check)


def _check_size(value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        raise MalformedEvidence(f"{name} is {len(value)} bytes, wanted {size}", check="tcb.input")


def _svns(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _check_module(tcb_info: TcbInfo, tee_tcb_svn: bytes, mr_signer_seam: bytes, seam_attributes: bytes) -> None:
    """QVL 4.1.2.5.12: MRSIGNERSEAM and SEAMATTRIBUTES against the module identity (or tdxModule)."""
    version = tee_tcb_svn[1]
    expected = tcb_info.tdx_module
    name = "tdxModule"
    if version > 0:
        identity = tcb_info.module_identity(version)
        if identity is None:
            known = ", ".join(m.id for m in tcb_info.tdx_module_identities) or "none"
            raise _refuse(f"TDX module major version {version} (tee_tcb_svn[1]) has no module identity "
                          f"TDX_{version:02X} in the TCB info (it has {known})", "tcb.module")
        mrsigner, attributes, name = identity.mrsigner, identity.attributes, identity.id
    else:
        mrsigner, attributes = expected.mrsigner, expected.attributes
    if mr_signer_seam != mrsigner:
        raise _refuse(f"MRSIGNERSEAM is {mr_signer_seam.hex()}, {name} wants {mrsigner.hex()}", "tcb.module")
    if any(seam_attributes) or seam_attributes != attributes:
        raise _refuse(f"SEAMATTRIBUTES is {seam_attributes.hex()}; it must be zero and equal {name}'s attributes "
                      f"{attributes.hex()}", "tcb.seam_attributes")


def _check_qe_report(qe_identity: QeIdentity, qe: QeReportValues) -> None:
    """QVL 4.1.2.9.5-8: the QE report is the TD quoting enclave the identity describes."""
    masked = qe.misc_select & qe_identity.miscselect_mask
    if masked != qe_identity.miscselect:
        raise _refuse(f"QE report MISCSELECT {qe.misc_select:#010x} masked with {qe_identity.miscselect_mask:#010x} "
                      f"is {masked:#010x}, the QE identity wants {qe_identity.miscselect:#010x}",
                      "qe_identity.miscselect")
    attributes = bytes(a & m for a, m in zip(qe.attributes, qe_identity.attributes_mask, strict=True))
    if attributes != qe_identity.attributes:
        raise _refuse(f"QE report ATTRIBUTES {qe.attributes.hex()} masked with {qe_identity.attributes_mask.hex()} "
                      f"is {attributes.hex()}, the QE identity wants {qe_identity.attributes.hex()}",
                      "qe_identity.attributes")
    if qe.mr_signer != qe_identity.mrsigner:
        raise _refuse(f"QE report MRSIGNER is {qe.mr_signer.hex()}, the QE identity wants "
                      f"{qe_identity.mrsigner.hex()}", "qe_identity.mrsigner")
    if qe.isv_prod_id != qe_identity.isvprodid:
        raise _refuse(f"QE report ISVPRODID is {qe.isv_prod_id}, the QE identity wants {qe_identity.isvprodid}",
                      "qe_identity.isvprodid")


def _first(levels: Sequence[ModuleTcbLevel], svn: int) -> int | None:
    return next((i for i, level in enumerate(levels) if svn >= level.isvsvn), None)


def _converge(platform: TcbStatus, components: Sequence[TcbStatus]) -> TcbStatus:
    """QVL `convergeTcbStatuses`."""
    status = platform
    if OUT_OF_DATE in components:
        if platform in (UP_TO_DATE, SW_HARDENING_NEEDED):
            status = OUT_OF_DATE
        elif platform in (CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
            status = OUT_OF_DATE_CONFIGURATION_NEEDED
    if REVOKED in components:
        status = REVOKED
    return status


def _evaluate(tcb_info: TcbInfo, qe_identity: QeIdentity, pck: PckInfo, svn: bytes, qe_svn: int,
              which: str) -> LevelMatch:
    """QVL `tdxEvaluateTCB` for one TEE TCB SVN."""
    start = 2 if svn[1] > 0 else 0
    platform = next((i for i, level in enumerate(tcb_info.tcb_levels)
                     if all(p >= w for p, w in zip(pck.sgx_tcb_components, level.sgx_components, strict=True))
                     and pck.pcesvn >= level.pcesvn
                     and all(svn[i] >= level.tdx_components[i] for i in range(start, 16))), None)
    if platform is None:
        lowest = tcb_info.tcb_levels[-1]
        raise _refuse(
            f"no TCB level of the TCB info (FMSPC {tcb_info.fmspc.hex()}, evaluation data number "
            f"{tcb_info.tcb_evaluation_data_number}) matches: the PCK has SGX components "
            f"{_svns(pck.sgx_tcb_components)} and PCESVN {pck.pcesvn}, {which} is {svn.hex()}; the lowest level "
            f"wants SGX components {_svns(lowest.sgx_components)}, PCESVN {lowest.pcesvn} and TDX components "
            f"{_svns(lowest.tdx_components)}", "tcb.not_supported")
    level = tcb_info.tcb_levels[platform]
    components: list[TcbStatus] = []
    dates = [level.tcb_date]
    module_id: str | None = None
    module_status: TcbStatus | None = None
    module_level: int | None = None
    module_date: datetime | None = None
    module_advisories: tuple[str, ...] = ()
    if svn[1] > 0:
        identity = tcb_info.module_identity(svn[1])
        if identity is None:
            raise _refuse(f"{which} names TDX module major version {svn[1]}, which has no module identity "
                          f"TDX_{svn[1]:02X} in the TCB info", "tcb.not_supported")
        module_level = _first(identity.tcb_levels, svn[0])
        if module_level is None:
            raise _refuse(f"TDX module {identity.id} SVN {svn[0]} ({which}[0]) is below every level of its "
                          f"identity (lowest: {identity.tcb_levels[-1].isvsvn})", "tcb.not_supported")
        chosen = identity.tcb_levels[module_level]
        module_id, module_status, module_date = identity.id, chosen.status, chosen.tcb_date
        module_advisories = chosen.advisory_ids
        components.append(chosen.status)
        dates.append(chosen.tcb_date)
    qe_level = _first(qe_identity.tcb_levels, qe_svn)
    if qe_level is None:
        raise _refuse(f"QE report ISVSVN {qe_svn} is below every level of the QE identity (lowest: "
                      f"{qe_identity.tcb_levels[-1].isvsvn})", "tcb.not_supported")
    qe = qe_identity.tcb_levels[qe_level]
    components.append(qe.status)
    dates.append(qe.tcb_date)
    advisories = tuple(dict.fromkeys((*level.advisory_ids, *qe.advisory_ids, *module_advisories)))
    return LevelMatch(status=_converge(level.status, components), tcb_date=min(dates), advisory_ids=advisories,
                      platform_status=level.status, platform_level=platform, platform_tcb_date=level.tcb_date,
                      module_id=module_id, module_status=module_status, module_level=module_level,
                      module_tcb_date=module_date, qe_status=qe.status, qe_level=qe_level, qe_tcb_date=qe.tcb_date)


def relaunch_status(launch: TcbStatus, current: TcbStatus) -> Status:
    """QVL `checkForRelaunch`: a TD launched on an out-of-date module that now runs a current one."""
    if launch in (OUT_OF_DATE, OUT_OF_DATE_CONFIGURATION_NEEDED) and current in _CURRENT_FINE:
        if launch in _CONFIGURATION or current in _CONFIGURATION:
            return TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
        return TD_RELAUNCH_ADVISED
    return _reportable(launch)


_REPORTABLE: dict[TcbStatus, Status] = {
    "UpToDate": "UpToDate", "SWHardeningNeeded": "SWHardeningNeeded", "ConfigurationNeeded": "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded": "ConfigurationAndSWHardeningNeeded", "OutOfDate": "OutOfDate",
    "OutOfDateConfigurationNeeded": "OutOfDateConfigurationNeeded"}


def _reportable(status: TcbStatus) -> Status:
    reportable = _REPORTABLE.get(status)
    if reportable is None:
        raise _refuse(f"the TCB is {status}", "tcb.revoked")
    return reportable


def evaluate_tcb(tcb_info: TcbInfo, qe_identity: QeIdentity, pck: PckInfo, *, tee_tcb_svn: bytes,
                 tee_tcb_svn2: bytes | None, body_type: int, mr_signer_seam: bytes, seam_attributes: bytes,
                 qe: QeReportValues) -> TcbEvaluation:
    """The TCB status of a quote (module docstring), from verified collateral and plain values.

    `body_type` is 2 for TD report 1.0 bodies (every v4 quote), 3 (or 4) for TD 1.5 bodies, which must
    come with `tee_tcb_svn2`.  Refusals are ChainInvalid naming the check; malformed inputs are
    MalformedEvidence (`tcb.input`)."""
    _check_size(tee_tcb_svn, 16, "tee_tcb_svn")
    _check_size(mr_signer_seam, 48, "MRSIGNERSEAM")
    _check_size(seam_attributes, 8, "SEAMATTRIBUTES")
    _check_size(qe.attributes, 16, "QE report ATTRIBUTES")
    _check_size(qe.mr_signer, 32, "QE report MRSIGNER")
    if body_type not in (BODY_TD10, BODY_TD15, BODY_TD15_EX):
        raise MalformedEvidence(f"TD report body type {body_type} is not 2, 3 or 4", check="tcb.input")
    td15 = body_type >= BODY_TD15
    if td15 != (tee_tcb_svn2 is not None):
        raise MalformedEvidence(f"tee_tcb_svn2 comes with TD 1.5 bodies (type 3 and 4) and only with them; "
                                f"body type is {body_type}", check="tcb.input")
    if tee_tcb_svn2 is not None:
        _check_size(tee_tcb_svn2, 16, "tee_tcb_svn2")
    if pck.fmspc != tcb_info.fmspc:
        raise _refuse(f"the PCK's FMSPC is {pck.fmspc.hex()}, the TCB info is for FMSPC {tcb_info.fmspc.hex()}",
                      "tcb.fmspc")
    if pck.pce_id != tcb_info.pce_id:
        raise _refuse(f"the PCK's PCE-ID is {pck.pce_id.hex()}, the TCB info is for PCE-ID {tcb_info.pce_id.hex()}",
                      "tcb.pce_id")
    _check_module(tcb_info, tee_tcb_svn, mr_signer_seam, seam_attributes)
    _check_qe_report(qe_identity, qe)
    launch = _evaluate(tcb_info, qe_identity, pck, tee_tcb_svn, qe.isv_svn, "tee_tcb_svn")
    current = _evaluate(tcb_info, qe_identity, pck, tee_tcb_svn2, qe.isv_svn, "tee_tcb_svn2") \
        if tee_tcb_svn2 is not None else None
    for match, which in ((launch, "at launch (tee_tcb_svn)"), (current, "now (tee_tcb_svn2)")):
        if match is not None and match.status == REVOKED:
            parts = [f"platform level {match.platform_tcb_date.date()} {match.platform_status}",
                     *([f"module {match.module_id} {match.module_status}"] if match.module_id else []),
                     f"QE {match.qe_status}"]
            raise _refuse(f"the TCB {which} is Revoked ({', '.join(parts)})", "tcb.revoked")
    status = relaunch_status(launch.status, current.status) if current is not None else _reportable(launch.status)
    return TcbEvaluation(status=status, advisory_ids=launch.advisory_ids, tcb_date=launch.tcb_date, launch=launch,
                         current=current, fmspc=tcb_info.fmspc.hex(),
                         tcb_evaluation_data_number=tcb_info.tcb_evaluation_data_number,
                         qe_evaluation_data_number=qe_identity.tcb_evaluation_data_number)


_memo_lock = threading.Lock()


def evaluate_tcb_cached(verified: VerifiedCollateral, pck: PckInfo, *, tee_tcb_svn: bytes,
                        tee_tcb_svn2: bytes | None, body_type: int, mr_signer_seam: bytes, seam_attributes: bytes,
                        qe: QeReportValues) -> TcbEvaluation:
    """`evaluate_tcb` against a verified set, remembered in the set: the status is a function of the
    collateral, the PCK and these quote fields, so a platform's later quotes skip the evaluation.
    Refusals are not remembered (each runs the checks again and says why); at most
    MAX_MEMO_EVALUATIONS per set, oldest dropped first."""
    key = (pck, tee_tcb_svn, tee_tcb_svn2, body_type, mr_signer_seam, seam_attributes, qe)
    memo = verified.evaluations
    hit = memo.get(key)
    if isinstance(hit, TcbEvaluation):
        return hit
    evaluation = evaluate_tcb(verified.tcb_info, verified.qe_identity, pck, tee_tcb_svn=tee_tcb_svn,
                              tee_tcb_svn2=tee_tcb_svn2, body_type=body_type, mr_signer_seam=mr_signer_seam,
                              seam_attributes=seam_attributes, qe=qe)
    with _memo_lock:
        while len(memo) >= MAX_MEMO_EVALUATIONS:
            del memo[next(iter(memo))]
        memo[key] = evaluation
    return evaluation
