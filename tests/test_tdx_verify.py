"""The TDX verifier: real quotes with their collateral through `kbs verify tdx` (scenarios S1-S8 of the
vectors), and synthetic ones through the verifier, each refusal with its check."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from kbs.cli import main
from kbs.errors import KbsError
from kbs.evidence.base import Binding
from kbs.evidence.binding import InitData
from kbs.evidence.tdx.verifier import appraise, prepare, tdx_appraisal
from kbs.native import P256KeyCache
from kbs.policy.ear import status_of
from kbs.trust.intel.offline import save_collateral_dir
from tests import ccel_synth
from tests.intel_synth import SyntheticIntel, default_platform_levels, platform_level
from tests.tdx_synth import SyntheticQuote, TdBody
from tests.test_intel_vectors import TDX, collateral_for, expected, scenario_names, when

STATUS = {"S1": "UpToDate", "S2": "UpToDate", "S3": "UpToDate", "S4": "UpToDate"}
REFUSED = {"S5": "quote.trailing_bytes", "S6": "tcb.not_supported", "S7": "tcb.not_supported",
           "S8": "collateral.pck_crl"}


def verify_cli(capsys: pytest.CaptureFixture[str], quote: Path, collateral: Path, at: dt.datetime,
               *extra: str) -> tuple[int, Any, str]:
    code = main(["verify", "tdx", str(quote), "--collateral", str(collateral), "--at", at.isoformat(), "--json",
                 *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out.splitlines()[-1]) if out.strip() else None, err


@pytest.mark.parametrize("name", scenario_names())
def test_real_quotes_through_the_cli(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = expected()["scenarios"][name]
    directory = tmp_path / "dir"
    save_collateral_dir(collateral_for(name, tmp_path), directory)
    quote = TDX / scenario["quote"]
    at = when(scenario["suggested_verification_time"])
    code, out, err = verify_cli(capsys, quote, directory, at)
    key = name[:2]
    if key in STATUS:
        assert code == 0, err
        assert out["tcb_status"] == STATUS[key] and out["fmspc"] == scenario["pck_fmspc"]
        assert out["quote"]["body"]["mr_td"] == expected()["quotes"][scenario["quote"]]["mrtd"]
    else:
        assert code == 1 and REFUSED[key] in err and err.count("\n") == 1, err
        assert out["error"]["check"] == REFUSED[key]


def test_s5_without_its_unsigned_trailing_bytes_is_not_supported(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The 39 ASCII bytes go-tdx-guest appended are refused; without them the TCB verdict is the vectors'."""
    name = next(n for n in scenario_names() if n.startswith("S5"))
    scenario = expected()["scenarios"][name]
    raw = (TDX / scenario["quote"]).read_bytes()
    stripped = tmp_path / "q.dat"
    stripped.write_bytes(raw[:-39])
    directory = tmp_path / "dir"
    save_collateral_dir(collateral_for(name, tmp_path), directory)
    code, out, err = verify_cli(capsys, stripped, directory, when(scenario["suggested_verification_time"]))
    assert code == 1 and out["error"]["check"] == "tcb.not_supported", err


@pytest.mark.parametrize("name", [n for n in scenario_names() if n[:2] in STATUS])
def test_a_day_after_the_window_the_same_quote_is_refused(name: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    scenario = expected()["scenarios"][name]
    directory = tmp_path / "dir"
    save_collateral_dir(collateral_for(name, tmp_path), directory)
    end = dt.datetime.fromisoformat(scenario["valid_window_utc"].split(" .. ")[1])
    code, out, err = verify_cli(capsys, TDX / scenario["quote"], directory, end + dt.timedelta(days=1))
    assert code == 1 and "expired" in err and out["error"]["check"].startswith(("collateral.", "chain.")), err


def test_a_dcap_qvl_bundle_is_collateral_too(capsys: pytest.CaptureFixture[str]) -> None:
    """`--collateral` takes a dcap-qvl QuoteCollateralV3 file as well as a directory (README example)."""
    folder = TDX / "dcap-qvl"
    quote, bundle = folder / "quote_v4_b0c06f.dat", folder / "quote_v4_b0c06f_collateral.json"
    code, out, err = verify_cli(capsys, quote, bundle, dt.datetime(2025, 7, 1, tzinfo=dt.UTC))
    assert code == 0 and out["tcb_status"] == "UpToDate" and out["fmspc"] == "b0c06f000000", err
    code, out, err = verify_cli(capsys, quote, bundle, dt.datetime(2025, 7, 20, tzinfo=dt.UTC))
    assert code == 1 and out["error"]["check"] == "collateral.pck_crl" and "expired" in err, err


# -- synthetic quotes through the verifier ----------------------------------------------------------

@pytest.fixture(scope="module")
def intel() -> SyntheticIntel:
    return SyntheticIntel()


def run(intel: SyntheticIntel, quote: bytes, *, binding: Binding | None = None, log: bytes | None = None,
        collateral: Any = None, tables: P256KeyCache | None = None) -> dict[str, Any]:
    evidence = {"quote": base64.b64encode(quote).decode(),
                "cc_eventlog": base64.b64encode(log).decode() if log else None}
    prepared = prepare(evidence, binding, intel.now, intel.trust_roots)
    return appraise(prepared, collateral or intel.collateral(), intel.now, intel.trust_roots, tables)


def refused(intel: SyntheticIntel, quote: bytes, **kwargs: Any) -> str:
    with pytest.raises(KbsError) as info:
        run(intel, quote, **kwargs)
    return info.value.check


def test_synthetic_quote_verifies_and_claims_carry_the_tcb(intel: SyntheticIntel) -> None:
    pck = intel.issue_pck()
    claims = run(intel, SyntheticQuote(pck.key, pck.pem_chain).build())
    assert claims["tcb_status"] == "UpToDate" and claims["fmspc"] == "90c06f000000"
    assert status_of(tdx_appraisal(claims).vector) == "affirming"


def test_debug_td_verifies_and_is_not_affirming(intel: SyntheticIntel) -> None:
    pck = intel.issue_pck()
    claims = run(intel, SyntheticQuote(pck.key, pck.pem_chain, body=TdBody(td_attributes=0x10000001)).build())
    assert claims["td_attributes"]["debug"] is True
    vector = tdx_appraisal(claims).vector
    assert vector["configuration"] == 32 and status_of(vector) == "warning"


@pytest.mark.parametrize("warm", [False, True], ids=["cold-keys", "key-tables"])
@pytest.mark.parametrize(("region", "check"), [
    ("body", "quote.signature"), ("signature", "quote.signature"), ("attestation_key", "quote.qe_binding"),
    ("qe_report", "quote.qe_report_signature"), ("qe_report_signature", "quote.qe_report_signature"),
    ("qe_auth_data", "quote.qe_binding")])
def test_one_flipped_bit_is_refused_with_its_check(intel: SyntheticIntel, region: str, check: str,
                                                   warm: bool) -> None:
    """Cold, and with both keys' tables built by two good quotes (the broker's steady state)."""
    pck = intel.issue_pck()
    good = SyntheticQuote(pck.key, pck.pem_chain).build()
    tables = P256KeyCache() if warm else None
    if tables is not None:
        for _ in range(2):
            run(intel, good, tables=tables)
        assert len(tables) == 2  # the PCK key and the attestation key
    quote = bytearray(good)
    offsets = {"body": 48 + 136, "signature": 636 + 10, "attestation_key": 700 + 5, "qe_report": 770 + 64,
               "qe_report_signature": 1154 + 7, "qe_auth_data": 1220 + 3}
    quote[offsets[region]] ^= 0x04
    assert refused(intel, bytes(quote), tables=tables) == check


def test_report_data_and_init_data_bind(intel: SyntheticIntel) -> None:
    pck = intel.issue_pck()
    digest = bytes(range(48))
    init = InitData(digest=bytes(range(100, 148)), algorithm="sha384", claims={})
    body = TdBody(report_data=digest + bytes(16), mr_config_id=init.digest)
    quote = SyntheticQuote(pck.key, pck.pem_chain, body=body).build()
    good = Binding("n", {}, report_data=digest, init_data=init)
    assert run(intel, quote, binding=good)["tcb_status"] == "UpToDate"
    assert refused(intel, quote, binding=dataclasses.replace(good, report_data=bytes(48))) == "binding.report_data"
    other = dataclasses.replace(init, digest=bytes(48))
    assert refused(intel, quote, binding=dataclasses.replace(good, init_data=other)) == "binding.init_data"


def test_fixed_td_bits_and_revoked_tcb_are_refused(intel: SyntheticIntel) -> None:
    pck = intel.issue_pck()
    assert refused(intel, SyntheticQuote(pck.key, pck.pem_chain, body=TdBody(xfam=0x2)).build()) == "quote.xfam"
    bad_attributes = TdBody(td_attributes=1 << 5)
    assert refused(intel, SyntheticQuote(pck.key, pck.pem_chain, body=bad_attributes).build()) == "quote.td_attributes"
    revoked = intel.collateral(tcb_info=intel.sign_tcb_info([platform_level("Revoked")]))
    assert refused(intel, SyntheticQuote(pck.key, pck.pem_chain).build(), collateral=revoked) == "tcb.revoked"
    listed = intel.collateral(pck_crl=intel.pck_crl([pck.serial]))
    assert refused(intel, SyntheticQuote(pck.key, pck.pem_chain).build(), collateral=listed) == "crl.revoked"
    assert default_platform_levels()  # the defaults the other tests rely on exist


def test_event_log_must_replay_to_the_quotes_rtmrs(intel: SyntheticIntel) -> None:
    pck = intel.issue_pck()
    events = [ccel_synth.event(1, 0x80000007, b"firmware"), ccel_synth.event(2, 0x0D, b"kernel")]
    log = ccel_synth.build_log(events)
    rtmrs = ccel_synth.replay([(1, ccel_synth.digest_of(b"firmware")), (2, ccel_synth.digest_of(b"kernel"))])
    body = TdBody(rtmrs=rtmrs)
    claims = run(intel, SyntheticQuote(pck.key, pck.pem_chain, body=body).build(), log=log)
    assert claims["eventlog"]["rtmrs_match_quote"] is True and len(claims["uefi_event_logs"]) >= 2
    assert refused(intel, SyntheticQuote(pck.key, pck.pem_chain).build(), log=log) == "eventlog.rtmr"
