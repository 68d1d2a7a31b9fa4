"""The Intel trust layer against the real TDX vectors (shared/vectors/tdx: SOURCES.md, expected.json):
every PCK chain walks to the pinned root, the collateral signatures and CRLs verify, and scenarios S1-S8
give the TCB status expected.json lists at the suggested time, and are refused a day after their window.

Quote fields come from expected.json; the PCK chain is cut out of the quote bytes by a tiny test-only
reader of the tdx.md §1 offsets (the quote parser proper is the C core's)."""

from __future__ import annotations

import datetime as dt
import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from kbs.errors import KbsError
from kbs.trust.intel.certs import (
    ROOT_CA_SHA256,
    check_root_ca_crl,
    verify_pck_ca_chain,
    verify_pck_chain,
    verify_signing_chain,
)
from kbs.trust.intel.collateral import (
    IntelCollateral,
    QeIdentity,
    TcbInfo,
    frame_signed,
    verify_collateral,
    verify_qe_identity,
    verify_tcb_info,
)
from kbs.trust.intel.offline import load_collateral_dir, load_dcap_qvl_bundle
from kbs.trust.intel.tcb import QeReportValues, TcbEvaluation, evaluate_tcb
from kbs.trust.revocation import check_crl, parse_crl
from kbs.trust.x509 import load_certificates
from tests.conftest import vectors_dir
from tests.intel_synth import SyntheticIntel

TDX = vectors_dir() / "tdx"
EXPIRED = {"collateral.validity", "collateral.pck_crl", "collateral.root_ca_crl", "chain.validity"}


@cache
def expected() -> dict[str, Any]:
    path = TDX / "expected.json"
    if not path.is_file():
        pytest.skip(f"TDX vectors not found under KBS_VECTORS={vectors_dir()}")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


@pytest.fixture(autouse=True)
def _vectors_present() -> None:
    expected()  # skips with the reason when the shared vectors are absent


def scenario_names() -> list[str]:
    path = TDX / "expected.json"
    return sorted(json.loads(path.read_text())["scenarios"]) if path.is_file() else ["(no vectors)"]


def quote_names() -> list[str]:
    path = TDX / "expected.json"
    return sorted(json.loads(path.read_text())["quotes"]) if path.is_file() else ["(no vectors)"]


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def quote_pck_chain(quote: bytes) -> bytes:
    """The PEM PCK chain of a DCAP quote (tdx.md §1.4), by its length fields.  Test-only."""
    version = struct.unpack_from("<H", quote, 0)[0]
    offset = 632 if version == 4 else 54 + struct.unpack_from("<I", quote, 50)[0]
    offset += 4 + 64 + 64  # signature data length, quote signature, attestation key
    outer_type, _ = struct.unpack_from("<HI", quote, offset)
    assert outer_type == 6
    offset += 6 + 384 + 64  # QE report and its signature
    offset += 2 + struct.unpack_from("<H", quote, offset)[0]  # QE auth data
    inner_type, size = struct.unpack_from("<HI", quote, offset)
    assert inner_type == 5
    return quote[offset + 6:offset + 6 + size]


def bundle(name: str) -> IntelCollateral:
    return load_dcap_qvl_bundle((TDX / "dcap-qvl" / name).read_bytes())


def linked_dir(directory: Path, files: dict[str, Path | bytes]) -> IntelCollateral:
    """A `--collateral` directory of symlinks to the vectors (read in place) or derived bytes."""
    directory.mkdir(parents=True)
    for name, source in files.items():
        if isinstance(source, bytes):
            (directory / name).write_bytes(source)
        else:
            (directory / name).symlink_to(source)
    return load_collateral_dir(directory)


def collateral_for(scenario: str, tmp_path: Path) -> IntelCollateral:
    gotdx, certs = TDX / "go-tdx-guest", TDX / "certs"
    if scenario.startswith("S1"):
        return bundle("quote_v4_b0c06f_collateral.json")
    if scenario.startswith("S2"):
        return bundle("near_quote_v4_20a06f_collateral.json")
    if scenario[:2] in ("S3", "S6", "S7"):
        return bundle("quote_v5_90c06f_collateral_2026-02-18.json")
    if scenario[:2] in ("S4", "S5"):
        return linked_dir(tmp_path / "collateral", {
            "tcb_info.json": gotdx / "tcbinfo_tdx_50806f000000_eval15.json",
            "qe_identity.json": gotdx / "qeidentity_td_qe_eval15.json",
            "tcb_info_issuer_chain.pem": certs / "tcb_signing_chain_2018.pem",
            "qe_identity_issuer_chain.pem": certs / "tcb_signing_chain_2018.pem",
            "pck_crl.der": gotdx / "pckcrl_platform_2023-06-08.der",
            "pck_crl_issuer_chain.pem": certs / "pck_platform_ca_chain.pem",
            "root_ca_crl.der": gotdx / "rootcacrl_2023-04-03.der"})
    assert scenario.startswith("S8")
    root_crl = bundle("quote_v4_b0c06f_collateral.json").root_ca_crl
    assert root_crl is not None
    return linked_dir(tmp_path / "collateral", {  # no PCK CRL exists for this window
        "tcb_info.json": TDX / "trustee" / "tcbinfo_tdx_00a06d080000_eval17.json",
        "qe_identity.json": TDX / "trustee" / "qeidentity_td_qe_eval17.json",
        "tcb_info_issuer_chain.pem": certs / "tcb_signing_chain_2025.pem",
        "qe_identity_issuer_chain.pem": certs / "tcb_signing_chain_2025.pem",
        "root_ca_crl.der": root_crl})


def quote_values(quote: dict[str, Any]) -> dict[str, Any]:
    report = quote["qe_report"]
    svn2 = quote["tee_tcb_svn2"]
    return {"tee_tcb_svn": bytes.fromhex(quote["tee_tcb_svn"]), "tee_tcb_svn2": bytes.fromhex(svn2) if svn2 else None,
            "body_type": quote["body_type"] or 2, "mr_signer_seam": bytes.fromhex(quote["mrsignerseam"]),
            "seam_attributes": bytes.fromhex(quote["seam_attributes"]),
            "qe": QeReportValues(misc_select=report["miscselect"], attributes=bytes.fromhex(report["attributes"]),
                                 mr_signer=bytes.fromhex(report["mrsigner"]), isv_prod_id=report["isvprodid"],
                                 isv_svn=report["isvsvn"])}


def run_scenario(name: str, at: dt.datetime, tmp_path: Path) -> TcbEvaluation:
    """Everything but the quote's own signatures: the PCK chain, the collateral (CRLs, signatures, windows)
    and the TCB status.  A scenario without a PCK CRL is refused for it (checked by the caller), and its
    status is evaluated from TCB info and QE identity verified on their own."""
    scenario = expected()["scenarios"][name]
    quote = expected()["quotes"][scenario["quote"]]
    chain = verify_pck_chain(quote_pck_chain((TDX / scenario["quote"]).read_bytes()), at)
    collateral = collateral_for(name, tmp_path)
    if collateral.pck_crl is None:
        with pytest.raises(KbsError) as info:
            verify_collateral(collateral, chain, at)
        assert info.value.check == "collateral.pck_crl", str(info.value)
        tcb_info, signer = verify_tcb_info(collateral.tcb_info, collateral.tcb_info_issuer_chain, at)
        qe_identity, _ = verify_qe_identity(collateral.qe_identity, collateral.qe_identity_issuer_chain, at)
        check_root_ca_crl(collateral.root_ca_crl, chain.root, [chain.intermediate, signer.leaf], at)
    else:
        verified = verify_collateral(collateral, chain, at)
        tcb_info, qe_identity = verified.tcb_info, verified.qe_identity
    return evaluate_tcb(tcb_info, qe_identity, chain.info, **quote_values(quote))


@pytest.mark.parametrize("name", scenario_names())
def test_scenario_status_at_the_suggested_time(name: str, tmp_path: Path) -> None:
    scenario = expected()["scenarios"][name]
    at = when(scenario["suggested_verification_time"])
    wanted = scenario["expected_status_intel_qvl_algorithm"]
    if wanted.startswith("TCB_NOT_SUPPORTED"):
        with pytest.raises(KbsError) as info:
            run_scenario(name, at, tmp_path)
        assert info.value.check == "tcb.not_supported", str(info.value)
        return
    result = run_scenario(name, at, tmp_path)
    assert result.status == wanted == scenario["final_status"]
    detail = scenario["detail"]
    launch = result.launch
    assert launch.platform_status == detail["platform_status"] and launch.qe_status == detail["qe_status"]
    assert launch.platform_tcb_date == when(detail["platform_level_tcbDate"])
    assert (launch.module_id, launch.module_status) == (detail.get("module_id"), detail.get("module_status"))
    assert launch.status == scenario["launch_status"]
    if "current_status(svn2)" in scenario:
        assert result.current is not None and result.current.status == scenario["current_status(svn2)"]
    else:
        assert result.current is None
    assert result.fmspc == scenario["pck_fmspc"]


@pytest.mark.parametrize("name", scenario_names())
def test_scenario_is_refused_a_day_after_its_window(name: str, tmp_path: Path) -> None:
    scenario = expected()["scenarios"][name]
    start, end = (when(t.strip()) for t in scenario["valid_window_utc"].split(".."))
    with pytest.raises(KbsError) as info:
        run_scenario(name, end + dt.timedelta(days=1), tmp_path / "after")
    assert info.value.check in EXPIRED, str(info.value)
    assert "expired" in str(info.value)
    with pytest.raises(KbsError) as info:
        run_scenario(name, start - dt.timedelta(days=1), tmp_path / "before")
    assert info.value.check in EXPIRED, str(info.value)


def test_s8_diverges_from_go_tdx_guest_as_qvl_says(tmp_path: Path) -> None:
    """PCESVN 11 < 13: the platform level is the 2018 OutOfDate one, the TDX_03 module is UpToDate.  QVL
    converges to OutOfDate (go-tdx-guest would report the module's UpToDate)."""
    [name] = [n for n in scenario_names() if n.startswith("S8")]
    result = run_scenario(name, when(expected()["scenarios"][name]["suggested_verification_time"]), tmp_path)
    assert (result.status, result.launch.module_status, result.launch.platform_level) == ("OutOfDate", "UpToDate", 1)
    assert result.tcb_date == dt.datetime(2018, 1, 4, tzinfo=dt.UTC)  # the platform level's date, the earliest


@pytest.mark.parametrize("name", quote_names())
def test_every_real_pck_chain_walks_to_the_pin(name: str) -> None:
    quote = expected()["quotes"][name]
    pck = quote["pck"]
    chain = verify_pck_chain(quote_pck_chain((TDX / name).read_bytes()), when(pck["not_before"]) + dt.timedelta(days=1))
    assert chain.pin.fingerprint == ROOT_CA_SHA256 == expected()["intel_sgx_root_ca_sha256_der"]
    info = chain.info
    assert (info.fmspc.hex(), info.pce_id.hex(), info.pcesvn, list(info.sgx_tcb_components), info.cpusvn.hex(),
            info.sgx_type, f"{info.serial:x}".rjust(len(pck["serial"]), "0")) == (
        pck["fmspc"], pck["pceid"], pck["pcesvn"], pck["sgx_tcb_comp_svns"], pck["cpusvn"], pck["sgx_type"],
        pck["serial"])
    assert info.ca == "platform" and chain.intermediate.subject_cn == pck["issuer_cn"]


def test_svn_255_of_the_near_quote() -> None:
    chain = verify_pck_chain(quote_pck_chain((TDX / "dcap-qvl" / "near_quote_v4_20a06f.dat").read_bytes()),
                             dt.datetime(2025, 9, 15, tzinfo=dt.UTC))
    assert chain.info.sgx_tcb_components[5] == 255  # encoded 02 02 00 FF


def test_stored_chains_and_root() -> None:
    certs = TDX / "certs"
    root = load_certificates((certs / "intel_sgx_root_ca.der").read_bytes())[0]
    assert root.fingerprint == ROOT_CA_SHA256
    old = verify_signing_chain((certs / "tcb_signing_chain_2018.pem").read_bytes(),
                               dt.datetime(2023, 7, 1, tzinfo=dt.UTC), what="TCB info")
    new = verify_signing_chain((certs / "tcb_signing_chain_2025.pem").read_bytes(),
                               dt.datetime(2026, 3, 1, tzinfo=dt.UTC), what="TCB info")
    assert old.leaf.serial == new.leaf.serial and old.leaf.spki_der == new.leaf.spki_der  # re-issued, same key
    with pytest.raises(KbsError) as info:  # the 2018 certificate expired in 2025: pin the root, not the signer
        verify_signing_chain((certs / "tcb_signing_chain_2018.pem").read_bytes(),
                             dt.datetime(2026, 3, 1, tzinfo=dt.UTC), what="TCB info")
    assert info.value.check == "chain.validity"
    verify_pck_ca_chain((certs / "pck_platform_ca_chain.pem").read_bytes(), dt.datetime(2024, 1, 1, tzinfo=dt.UTC))


def test_every_collateral_file_verifies_at_its_issue_time() -> None:
    for item in expected()["collateral"]:
        body = (TDX / item["file"]).read_bytes()
        chain = (TDX / item["checked_with"]).read_bytes()
        at = when(item["issueDate"]) + dt.timedelta(hours=1)
        document: TcbInfo | QeIdentity
        if item["id"] == "TDX":
            document, _ = verify_tcb_info(body, chain, at)
            assert document.fmspc.hex() == item["fmspc"].lower()
        else:
            document, _ = verify_qe_identity(body, chain, at)
        assert document.tcb_evaluation_data_number == item["tcbEvaluationDataNumber"]
        assert document.next_update == when(item["nextUpdate"])
        member = "tcbInfo" if item["id"] == "TDX" else "enclaveIdentity"
        assert len(frame_signed(body, member, what="x", check="y").signed) == item["signed_body_len"]


def test_every_crl_verifies() -> None:
    platform_ca = load_certificates((TDX / "certs" / "pck_platform_ca_chain.pem").read_bytes())
    issuers = {c.subject_cn: c for c in platform_ca}
    for item in expected()["crls"]:
        crl = parse_crl((TDX / item["file"]).read_bytes())
        assert crl.issuer_cn == item["issuer_cn"] and len(list(crl.parsed)) == item["revoked_count"]
        check_crl(crl, issuers[item["issuer_cn"]], [], when(item["this_update"]) + dt.timedelta(hours=1))


@pytest.mark.parametrize("member", ["tcbInfo", "enclaveIdentity"])
def test_bit_flips_in_real_collateral_are_refused(member: str) -> None:
    collateral = bundle("quote_v4_b0c06f_collateral.json")
    body = collateral.tcb_info if member == "tcbInfo" else collateral.qe_identity
    verify = verify_tcb_info if member == "tcbInfo" else verify_qe_identity
    at = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)
    verify(body, collateral.tcb_info_issuer_chain, at)
    start, end = body.index(b":") + 2, body.index(b',"signature"') - 1
    for position in range(start, end, 11):
        flipped = bytearray(body)
        flipped[position] ^= 1 << (position % 8)
        with pytest.raises(KbsError) as info:
            verify(bytes(flipped), collateral.tcb_info_issuer_chain, at)
        assert info.value.check == "collateral.signature", (position, str(info.value))


def test_a_root_with_intels_name_and_another_key_is_refused() -> None:
    real = quote_pck_chain((TDX / "dcap-qvl" / "quote_v4_b0c06f.dat").read_bytes())
    leaf, intermediate, root = load_certificates(real)
    impostor = SyntheticIntel()
    assert impostor.root.parsed.subject_der == root.subject_der  # the same name, byte for byte
    with pytest.raises(KbsError) as info:
        verify_pck_chain([leaf, intermediate, impostor.root.parsed], dt.datetime(2025, 7, 1, tzinfo=dt.UTC))
    assert info.value.check == "chain.root" and "other bytes" in str(info.value)
    assert "has the name of the trusted root 'Intel SGX Root CA'" in str(info.value)
    # Trusting the impostor instead does not make Intel's intermediate verify under it.
    with pytest.raises(KbsError) as info:
        verify_pck_chain([leaf, intermediate, impostor.root.parsed], dt.datetime(2025, 7, 1, tzinfo=dt.UTC),
                         trust_roots=impostor.trust_roots)
    assert info.value.check == "chain.signature"
