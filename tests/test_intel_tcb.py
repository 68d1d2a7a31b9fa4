"""Intel QVL's TCB status algorithm (kbs.trust.intel.tcb) driven by a synthetic Intel PKI: every status,
every downgrade, the TD relaunch rule and every refusal, each through signed and verified collateral."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import pytest

from kbs.errors import ChainInvalid, KbsError, MalformedEvidence
from kbs.trust.intel.certs import PckChain, PckInfo, verify_pck_chain
from kbs.trust.intel.collateral import (
    MAX_MEMO_EVALUATIONS,
    QeIdentity,
    TcbInfo,
    VerifiedCollateral,
    verify_qe_identity,
    verify_tcb_info,
)
from kbs.trust.intel.tcb import QeReportValues, TcbEvaluation, evaluate_tcb, evaluate_tcb_cached, relaunch_status
from tests.intel_synth import (
    DEFAULT_SGX,
    DEFAULT_TEE_TCB_SVN,
    OLD_DATE,
    SyntheticIntel,
    isv_level,
    module_identity,
    platform_level,
    qe_values,
)

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
PLATFORM_STATUSES = ["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                     "OutOfDate", "OutOfDateConfigurationNeeded"]
DOWNGRADED = {"UpToDate": "OutOfDate", "SWHardeningNeeded": "OutOfDate",
              "ConfigurationNeeded": "OutOfDateConfigurationNeeded",
              "ConfigurationAndSWHardeningNeeded": "OutOfDateConfigurationNeeded",
              "OutOfDate": "OutOfDate", "OutOfDateConfigurationNeeded": "OutOfDateConfigurationNeeded"}


def svn(minor: int, major: int = 1, microcode: int = 4) -> bytes:
    return bytes([minor, major, microcode]) + bytes(13)


@pytest.fixture(scope="module")
def intel() -> SyntheticIntel:
    return SyntheticIntel(NOW)


@functools.cache
def _pck(intel: SyntheticIntel, svns: tuple[int, ...], pcesvn: int, fmspc: bytes, pce_id: bytes,
         cpusvn: bytes | None) -> PckChain:
    issued = intel.issue_pck(svns=svns, pcesvn=pcesvn, fmspc=fmspc, pce_id=pce_id, cpusvn=cpusvn)
    return verify_pck_chain(issued.pem_chain, NOW, trust_roots=intel.trust_roots)


def pck(intel: SyntheticIntel, *, svns: Sequence[int] = DEFAULT_SGX, pcesvn: int = 13,
        fmspc: bytes = bytes.fromhex("90c06f000000"), pce_id: bytes = bytes(2), cpusvn: bytes | None = None) -> PckInfo:
    return _pck(intel, tuple(svns), pcesvn, fmspc, pce_id, cpusvn).info


def documents(intel: SyntheticIntel, *, levels: Sequence[dict[str, Any]] | None = None,
              modules: Sequence[dict[str, Any]] | None = None, qe_levels: Sequence[dict[str, Any]] | None = None,
              tcb: dict[str, Any] | None = None, qe: dict[str, Any] | None = None) -> tuple[TcbInfo, QeIdentity]:
    """TCB info and QE identity, signed by the synthetic TCB Signing key and verified as a verifier would."""
    tcb_body = intel.sign_tcb_info(levels, module_identities=modules, **(tcb or {}))
    qe_body = intel.sign_qe_identity(qe_levels, **(qe or {}))
    tcb_info, _ = verify_tcb_info(tcb_body, intel.tcb_chain_pem, NOW, trust_roots=intel.trust_roots)
    qe_identity, _ = verify_qe_identity(qe_body, intel.tcb_chain_pem, NOW, trust_roots=intel.trust_roots)
    return tcb_info, qe_identity


def evaluate(intel: SyntheticIntel, *, platform: PckInfo | None = None, tee: bytes = DEFAULT_TEE_TCB_SVN,
             tee2: bytes | None = None, body_type: int = 2, mr_signer_seam: bytes = bytes(48),
             seam_attributes: bytes = bytes(8), report: QeReportValues | None = None,
             **docs: Any) -> TcbEvaluation:
    tcb_info, qe_identity = documents(intel, **docs)
    return evaluate_tcb(tcb_info, qe_identity, platform or pck(intel), tee_tcb_svn=tee, tee_tcb_svn2=tee2,
                        body_type=body_type, mr_signer_seam=mr_signer_seam, seam_attributes=seam_attributes,
                        qe=report or qe_values())


def refused(intel: SyntheticIntel, check: str, **kwargs: Any) -> KbsError:
    with pytest.raises(KbsError) as info:
        evaluate(intel, **kwargs)
    assert info.value.check == check, str(info.value)
    return info.value


# -- statuses returned -------------------------------------------------------------------------------

def test_default_platform_is_up_to_date_with_every_level_reported(intel: SyntheticIntel) -> None:
    result = evaluate(intel)
    assert result.status == "UpToDate" and result.current is None
    launch = result.launch
    assert (launch.platform_status, launch.platform_level, launch.module_id, launch.module_status,
            launch.module_level, launch.qe_status, launch.qe_level) == ("UpToDate", 0, "TDX_01", "UpToDate", 0,
                                                                        "UpToDate", 0)
    assert result.tcb_date == dt.datetime(2024, 3, 13, tzinfo=dt.UTC) and result.advisory_ids == ()
    assert result.fmspc == "90c06f000000" and result.tcb_evaluation_data_number == 17


@pytest.mark.parametrize("status", PLATFORM_STATUSES)
def test_every_platform_status_is_returned(intel: SyntheticIntel, status: str) -> None:
    result = evaluate(intel, levels=[platform_level(status, advisories=[f"INTEL-SA-{status}"])])
    assert result.status == status and result.launch.platform_status == status
    assert result.advisory_ids == (f"INTEL-SA-{status}",)


@pytest.mark.parametrize("platform_status", PLATFORM_STATUSES)
def test_module_out_of_date_downgrades(intel: SyntheticIntel, platform_status: str) -> None:
    # TDX_01 levels: minor 6 UpToDate, minor 2 OutOfDate; minor 3 lands on the OutOfDate one.
    result = evaluate(intel, levels=[platform_level(platform_status)], tee=svn(3))
    assert (result.launch.module_status, result.launch.module_level) == ("OutOfDate", 1)
    assert result.status == DOWNGRADED[platform_status]
    assert result.tcb_date == dt.datetime(2018, 1, 4, tzinfo=dt.UTC)  # the module level's, the earliest


@pytest.mark.parametrize("platform_status", PLATFORM_STATUSES)
def test_qe_out_of_date_downgrades(intel: SyntheticIntel, platform_status: str) -> None:
    # QE levels: ISVSVN 4 UpToDate, 2 OutOfDate; a QE at ISVSVN 3 lands on the OutOfDate one.
    result = evaluate(intel, levels=[platform_level(platform_status)], report=qe_values(isv_svn=3))
    assert (result.launch.qe_status, result.launch.qe_level) == ("OutOfDate", 1)
    assert result.status == DOWNGRADED[platform_status]


def test_td_relaunch_advised(intel: SyntheticIntel) -> None:
    result = evaluate(intel, tee=svn(3), tee2=svn(6), body_type=3)
    assert result.launch.status == "OutOfDate" and result.current is not None
    assert result.current.status == "UpToDate" and result.status == "TDRelaunchAdvised"
    # The launch evaluation's date and advisories are the ones reported, as QVL reports them.
    assert result.tcb_date == result.launch.tcb_date != result.current.tcb_date


def test_td_relaunch_advised_configuration_needed(intel: SyntheticIntel) -> None:
    result = evaluate(intel, levels=[platform_level("ConfigurationNeeded")], tee=svn(3), tee2=svn(6), body_type=3)
    assert result.launch.status == "OutOfDateConfigurationNeeded" and result.current is not None
    assert result.current.status == "ConfigurationNeeded"
    assert result.status == "TDRelaunchAdvisedConfigurationNeeded"


def test_td_relaunch_only_when_the_current_module_is_current(intel: SyntheticIntel) -> None:
    assert evaluate(intel, tee=svn(3), tee2=svn(3), body_type=3).status == "OutOfDate"  # still out of date
    # Launched current, now out of date: QVL reports the launch status.
    assert evaluate(intel, tee=svn(6), tee2=svn(3), body_type=3).status == "UpToDate"
    assert evaluate(intel, tee=svn(6), tee2=svn(6), body_type=4).status == "UpToDate"  # TD 1.5 "Ex" bodies too


@pytest.mark.parametrize(("launch", "current", "wanted"), [
    ("OutOfDate", "SWHardeningNeeded", "TDRelaunchAdvised"),
    ("OutOfDate", "ConfigurationAndSWHardeningNeeded", "TDRelaunchAdvisedConfigurationNeeded"),
    ("OutOfDateConfigurationNeeded", "UpToDate", "TDRelaunchAdvisedConfigurationNeeded"),
    ("OutOfDate", "OutOfDateConfigurationNeeded", "OutOfDate"),
    ("SWHardeningNeeded", "UpToDate", "SWHardeningNeeded"),
])
def test_relaunch_rule(launch: Any, current: Any, wanted: str) -> None:
    assert relaunch_status(launch, current) == wanted


def test_advisory_ids_union_and_earliest_date(intel: SyntheticIntel) -> None:
    platform = platform_level(advisories=["INTEL-SA-1", "INTEL-SA-2"], date="2024-05-01T00:00:00Z")
    result = evaluate(intel, levels=[platform],
                      modules=[module_identity("TDX_01", [isv_level(6, "UpToDate", "2024-04-01T00:00:00Z",
                                                                   ["INTEL-SA-2", "INTEL-SA-3"])])],
                      qe_levels=[isv_level(4, "UpToDate", "2024-06-01T00:00:00Z", ["INTEL-SA-4"])])
    # QVL's order: platform, then QE, then module; each once.
    assert result.advisory_ids == ("INTEL-SA-1", "INTEL-SA-2", "INTEL-SA-4", "INTEL-SA-3")
    assert result.tcb_date == dt.datetime(2024, 4, 1, tzinfo=dt.UTC)
    assert result.launch.platform_tcb_date == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def test_levels_are_taken_in_qvl_order_not_json_order(intel: SyntheticIntel) -> None:
    ascending = [platform_level("OutOfDate", sgx=(1,) * 16, pcesvn=1, date=OLD_DATE),
                 platform_level("SWHardeningNeeded", pcesvn=12), platform_level("UpToDate")]
    result = evaluate(intel, levels=ascending)
    assert result.status == "UpToDate" and result.launch.platform_level == 0


def test_the_16_component_svns_decide_not_the_raw_cpusvn(intel: SyntheticIntel) -> None:
    # CPUSVN bytes all zero, components at the level: matches.
    assert evaluate(intel, platform=pck(intel, cpusvn=bytes(16))).status == "UpToDate"
    # CPUSVN bytes high, one component below every level: no match.
    low = (*DEFAULT_SGX[:7], 1, *DEFAULT_SGX[8:])
    refused(intel, "tcb.not_supported", platform=pck(intel, svns=low, cpusvn=b"\xff" * 16),
            levels=[platform_level()])


def test_module_components_are_skipped_only_with_a_module_identity(intel: SyntheticIntel) -> None:
    level = platform_level(tdx=(9, 9, 4) + (0,) * 13)  # indices 0 and 1 above the quote's
    assert evaluate(intel, levels=[level]).status == "UpToDate"  # module version 1: they are the module's
    no_module = svn(5, major=0)
    refused(intel, "tcb.not_supported", levels=[level], tee=no_module)  # version 0: compared, 5 < 9
    assert evaluate(intel, levels=[platform_level(tdx=(5, 0, 4) + (0,) * 13)], tee=no_module).status == "UpToDate"


def test_module_identity_ids_compare_upper_cased(intel: SyntheticIntel) -> None:
    result = evaluate(intel, modules=[module_identity("tdx_0a", [isv_level(1)])], tee=svn(1, major=10))
    assert result.launch.module_id == "tdx_0a" and result.status == "UpToDate"


def test_without_module_identities_tdx_module_applies(intel: SyntheticIntel) -> None:
    result = evaluate(intel, modules=[], tee=svn(0, major=0), levels=[platform_level(tdx=(0,) * 16)])
    assert result.status == "UpToDate" and result.launch.module_id is None


# -- refusals ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["platform", "module", "qe", "current"])
def test_revoked_is_refused(intel: SyntheticIntel, where: str) -> None:
    cases: dict[str, dict[str, Any]] = {
        "platform": {"levels": [platform_level("Revoked")]},
        "module": {"modules": [module_identity("TDX_01", [isv_level(6, "Revoked")])]},
        "qe": {"qe_levels": [isv_level(4, "Revoked")]},
        # Only the current module is revoked: QVL would report the launch status; refused here.
        "current": {"modules": [module_identity("TDX_01", [isv_level(7, "Revoked"), isv_level(6)])],
                    "tee2": svn(7), "body_type": 3},
    }
    kwargs = cases[where]
    error = refused(intel, "tcb.revoked", **kwargs)
    assert "Revoked" in str(error)


def test_no_matching_level_is_refused(intel: SyntheticIntel) -> None:
    low = (3, 3, *DEFAULT_SGX[2:])
    error = refused(intel, "tcb.not_supported", platform=pck(intel, svns=low))
    assert "3,3,2,2,4,1,0,5" in str(error)
    refused(intel, "tcb.not_supported", platform=pck(intel, pcesvn=4))  # PCESVN below every level
    refused(intel, "tcb.not_supported", tee=svn(6, microcode=1))  # TDX component 2 below every level
    refused(intel, "tcb.not_supported", tee=svn(1))  # module minor SVN below every module level
    refused(intel, "tcb.not_supported", report=qe_values(isv_svn=1))  # QE below every QE level
    # TD 1.5: the current module's major version has no identity.
    refused(intel, "tcb.not_supported", tee2=svn(6, major=2), body_type=3)


def test_fmspc_and_pce_id_must_match(intel: SyntheticIntel) -> None:
    error = refused(intel, "tcb.fmspc", platform=pck(intel, fmspc=bytes.fromhex("00a06d080000")))
    assert "00a06d080000" in str(error) and "90c06f000000" in str(error)
    refused(intel, "tcb.pce_id", platform=pck(intel, pce_id=b"\x00\x01"))
    # FMSPC in lower case in the JSON is the same FMSPC.
    body = intel.sign("tcbInfo", intel.tcb_info_document() | {"fmspc": "90c06f000000"})
    tcb_info, _ = verify_tcb_info(body, intel.tcb_chain_pem, NOW, trust_roots=intel.trust_roots)
    _, qe_identity = documents(intel)
    assert evaluate_tcb(tcb_info, qe_identity, pck(intel), tee_tcb_svn=DEFAULT_TEE_TCB_SVN, tee_tcb_svn2=None,
                        body_type=2, mr_signer_seam=bytes(48), seam_attributes=bytes(8),
                        qe=qe_values()).status == "UpToDate"


def test_tdx_module_identity_and_seam_checks(intel: SyntheticIntel) -> None:
    error = refused(intel, "tcb.module", tee=svn(1, major=2))  # no TDX_02
    assert "TDX_02" in str(error)
    refused(intel, "tcb.module", mr_signer_seam=b"\x01" * 48)
    signer = b"\x42" * 48
    assert evaluate(intel, modules=[module_identity("TDX_01", mrsigner=signer)],
                    mr_signer_seam=signer).status == "UpToDate"
    refused(intel, "tcb.seam_attributes", seam_attributes=b"\x01" + bytes(7))
    # QVL: SEAMATTRIBUTES must be zero even when the identity's attributes are the same non-zero bytes.
    attributes = b"\x01" + bytes(7)
    refused(intel, "tcb.seam_attributes", modules=[module_identity("TDX_01", attributes=attributes)],
            seam_attributes=attributes)
    refused(intel, "tcb.seam_attributes", modules=[module_identity("TDX_01", attributes=attributes)])


def test_qe_report_must_match_the_qe_identity(intel: SyntheticIntel) -> None:
    refused(intel, "qe_identity.miscselect", report=qe_values(misc_select=1))
    assert evaluate(intel, report=qe_values(misc_select=1), qe={"miscselect_mask": "FEFFFFFF"}).status == "UpToDate"
    refused(intel, "qe_identity.attributes", report=qe_values(attributes=bytes(16)))
    # Bits outside Intel's mask (FBFF…FF 00…00) may differ: bit 2 of byte 0, and the whole upper half.
    for attributes in ("1100000000000000e700000000000000", "150000000000000000000000000000ff"):
        assert evaluate(intel, report=qe_values(attributes=bytes.fromhex(attributes))).status == "UpToDate"
    other_bit = bytes.fromhex("1501000000000000e7" + "00" * 7)
    refused(intel, "qe_identity.attributes", report=qe_values(attributes=other_bit))
    refused(intel, "qe_identity.mrsigner", report=qe_values(mr_signer=bytes(32)))
    refused(intel, "qe_identity.isvprodid", report=qe_values(isv_prod_id=1))


def test_malformed_inputs_are_refused(intel: SyntheticIntel) -> None:
    with pytest.raises(MalformedEvidence) as info:
        evaluate(intel, tee=bytes(15))
    assert info.value.check == "tcb.input"
    for kwargs in ({"body_type": 3}, {"body_type": 2, "tee2": DEFAULT_TEE_TCB_SVN}, {"body_type": 1},
                   {"mr_signer_seam": bytes(32)}, {"seam_attributes": bytes(16)}):
        with pytest.raises(MalformedEvidence) as info:
            evaluate(intel, **kwargs)
        assert info.value.check == "tcb.input", kwargs


def test_refusals_are_chain_errors(intel: SyntheticIntel) -> None:
    """The server maps ChainInvalid to a refusal: TCB refusals must be ChainInvalid, never a bare error."""
    with pytest.raises(ChainInvalid):
        evaluate(intel, levels=[platform_level("Revoked")])


# -- the memo in a verified set ------------------------------------------------------------------------

def _verified_set(intel: SyntheticIntel, **docs: Any) -> VerifiedCollateral:
    tcb_info, qe_identity = documents(intel, **docs)
    unused: Any = None  # signers and CRLs play no part in the evaluation
    return VerifiedCollateral(tcb_info, qe_identity, unused, unused, unused, unused)


def test_cached_evaluation_is_the_evaluation_and_is_reused(intel: SyntheticIntel) -> None:
    verified, platform = _verified_set(intel), pck(intel)
    values: dict[str, Any] = {"tee_tcb_svn": DEFAULT_TEE_TCB_SVN, "tee_tcb_svn2": None, "body_type": 2,
              "mr_signer_seam": bytes(48), "seam_attributes": bytes(8), "qe": qe_values()}
    first = evaluate_tcb_cached(verified, platform, **values)
    assert first == evaluate_tcb(verified.tcb_info, verified.qe_identity, platform, **values)
    assert evaluate_tcb_cached(verified, platform, **values) is first
    # Another quote field (the TDX module's SVN) is another evaluation, not the remembered one.
    other = evaluate_tcb_cached(verified, platform, **{**values, "tee_tcb_svn": svn(2)})
    assert other is not first and len(verified.evaluations) == 2


def test_cached_evaluation_is_bounded_and_refusals_are_not_kept(intel: SyntheticIntel) -> None:
    verified, platform = _verified_set(intel), pck(intel)
    values: dict[str, Any] = {"tee_tcb_svn2": None, "body_type": 2, "mr_signer_seam": bytes(48),
                              "seam_attributes": bytes(8), "qe": qe_values()}
    for minor in range(MAX_MEMO_EVALUATIONS + 5):
        evaluate_tcb_cached(verified, platform, tee_tcb_svn=svn(minor + 3), **values)
    assert len(verified.evaluations) == MAX_MEMO_EVALUATIONS
    before = dict(verified.evaluations)
    with pytest.raises(ChainInvalid) as info:
        evaluate_tcb_cached(verified, platform, tee_tcb_svn=DEFAULT_TEE_TCB_SVN,
                            **{**values, "seam_attributes": b"\x01" + bytes(7)})
    assert info.value.check == "tcb.seam_attributes" and verified.evaluations == before
