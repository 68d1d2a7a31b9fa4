"""TCB info, QE identity and whole collateral sets (kbs.trust.intel.collateral, .offline) on a synthetic
Intel PKI: exact-bytes signatures, strict reading, signing chains, validity windows, the verified cache,
CRLs, and the `--collateral DIR` layout."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kbs.errors import CollateralUnavailable, KbsError, MalformedEvidence
from kbs.trust.intel import collateral as collateral_module
from kbs.trust.intel.certs import PckChain, check_pck_crl, verify_pck_chain
from kbs.trust.intel.collateral import (
    IntelCollateral,
    frame,
    verify_collateral,
    verify_qe_identity,
    verify_tcb_info,
)
from kbs.trust.intel.offline import (
    PCK_CRL_FILE,
    ROOT_CA_CRL_FILE,
    TCB_INFO_FILE,
    load_collateral_dir,
    load_dcap_qvl_bundle,
    save_collateral_dir,
)
from kbs.trust.revocation import CertificateRevoked
from kbs.trust.signature import verify_signature
from tests.intel_synth import SyntheticIntel, isv_level, platform_level

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def intel() -> SyntheticIntel:
    return SyntheticIntel(NOW)


@pytest.fixture(scope="module")
def pck(intel: SyntheticIntel) -> PckChain:
    return verify_pck_chain(intel.issue_pck().pem_chain, NOW, trust_roots=intel.trust_roots)


def tcb(intel: SyntheticIntel, body: bytes, at: dt.datetime = NOW) -> Any:
    return verify_tcb_info(body, intel.tcb_chain_pem, at, trust_roots=intel.trust_roots)[0]


def refused_tcb(intel: SyntheticIntel, body: bytes, check: str) -> KbsError:
    with pytest.raises(KbsError) as info:
        tcb(intel, body)
    assert info.value.check == check, str(info.value)
    return info.value


def edited(intel: SyntheticIntel, **changes: Any) -> bytes:
    """A signed TCB info whose document has these members changed (None deletes one)."""
    document = intel.tcb_info_document()
    for key, value in changes.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    return intel.sign("tcbInfo", document)


# -- exact bytes ---------------------------------------------------------------------------------------

def test_signature_covers_the_exact_bytes_not_a_re_encoding(intel: SyntheticIntel) -> None:
    pretty = json.dumps(intel.tcb_info_document(), indent=3).encode()  # what no compact re-encoding gives back
    body = intel.sign("tcbInfo", pretty).replace(b'{"tcbInfo":', b'{ "tcbInfo" :\n', 1)
    assert tcb(intel, body).fmspc == bytes.fromhex("90c06f000000")
    compact = json.dumps(json.loads(pretty), separators=(",", ":")).encode()
    forged = body.replace(pretty, compact)  # same JSON value, other bytes: the signature no longer holds
    refused_tcb(intel, forged, "collateral.signature")


def test_framing_is_string_aware(intel: SyntheticIntel) -> None:
    level = platform_level(advisories=['INTEL-SA-"}]{[', "\\\"}"])
    body = intel.sign_tcb_info([level])
    assert tcb(intel, body).tcb_levels[0].advisory_ids == ('INTEL-SA-"}]{[', '\\"}')
    members = frame(b' {"a" : {"b":"}"} , "c":[1,{"d":"]"}], "e":-1.5e3}\n', what="x", check="y")
    assert members == {"a": b'{"b":"}"}', "c": b'[1,{"d":"]"}]', "e": b"-1.5e3"}


@pytest.mark.parametrize("body", [
    b'{"tcbInfo":{},"tcbInfo":{},"signature":"00"}',  # a member twice
    b'{"tcbInfo":{"id":"TDX"}',  # unterminated
    b'{"tcbInfo":{"id":"TDX"]}',  # mismatched brackets
    b'{"tcbInfo":{"id":"TDX}}',  # unterminated string
    b'{"tcbInfo":{}} trailing',
    b'["tcbInfo"]',
    b'{"tcbInfo":' + b"[" * 40 + b"]" * 40 + b"}",  # deeper than 32
])
def test_framing_refuses_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedEvidence) as info:
        frame(body, what="TCB info", check="collateral.tcb_info")
    assert info.value.check == "collateral.tcb_info"


def test_body_members_are_exact(intel: SyntheticIntel) -> None:
    body = intel.sign_tcb_info()
    refused_tcb(intel, body[:-1] + b',"extra":1}', "collateral.tcb_info")
    refused_tcb(intel, body.replace(b'"signature":"', b'"signature":"00', 1), "collateral.tcb_info")
    refused_tcb(intel, body.replace(b"tcbInfo", b"enclaveIdentity", 1), "collateral.tcb_info")
    # A key twice inside the signed document: signed, but refused (a parser would keep one of them).
    doubled = json.dumps(intel.tcb_info_document(), separators=(",", ":")).encode()
    doubled = doubled.replace(b'"version":3,', b'"version":3,"version":2,', 1)
    error = refused_tcb(intel, intel.sign("tcbInfo", doubled), "collateral.tcb_info")
    assert "twice" in str(error)


def test_bit_flips_in_the_signed_document_are_refused(intel: SyntheticIntel) -> None:
    """PCS's layout is framed from both ends, so a flip anywhere inside the document (a quote, a bracket,
    a byte that breaks UTF-8) reaches the signature check, which refuses it."""
    body = intel.sign_tcb_info()
    start = body.index(b":") + 2  # inside the document's braces
    end = body.index(b',"signature"') - 1
    checks = set()
    for position in range(start, end, 3):
        flipped = bytearray(body)
        flipped[position] ^= 1 << (position % 8)
        with pytest.raises(KbsError) as info:
            tcb(intel, bytes(flipped))
        checks.add(info.value.check)
    assert checks == {"collateral.signature"}
    # Flips in the signature: another hex digit fails the signature, anything else the form.
    signature_at = body.index(b'"signature":"') + 13
    for position, check in ((signature_at, "collateral.signature"), (signature_at + 1, "collateral.tcb_info")):
        flipped = bytearray(body)
        flipped[position] = ord("0") if flipped[position] != ord("0") else ord("1")
        if check == "collateral.tcb_info":
            flipped[position] = ord("g")
        refused_tcb(intel, bytes(flipped), check)


def test_signature_by_another_key_or_chain(intel: SyntheticIntel) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    refused_tcb(intel, intel.sign("tcbInfo", intel.tcb_info_document(), key=other), "collateral.signature")
    body = intel.sign_tcb_info()
    with pytest.raises(CollateralUnavailable) as missing:
        verify_tcb_info(body, b"", NOW, trust_roots=intel.trust_roots)
    assert missing.value.check == "collateral.issuer_chain"
    with pytest.raises(KbsError) as wrong:  # the PCK CA's chain is no TCB Signing chain
        verify_tcb_info(body, intel.pck_ca_chain_pem(), NOW, trust_roots=intel.trust_roots)
    assert wrong.value.check == "chain.names"
    with pytest.raises(KbsError) as namesake:  # the synthetic root is not the pinned Intel root
        verify_tcb_info(body, intel.tcb_chain_pem, NOW)
    assert namesake.value.check == "chain.root"


def test_validity_window(intel: SyntheticIntel) -> None:
    body = intel.sign_tcb_info()
    issue, next_update = NOW - DAY, NOW + 29 * DAY
    assert tcb(intel, body, issue).issue_date == issue
    tcb(intel, body, next_update - dt.timedelta(seconds=1))
    for at, word in ((next_update, "expired"), (issue - dt.timedelta(seconds=1), "issued at")):
        with pytest.raises(KbsError) as info:
            tcb(intel, body, at)
        assert info.value.check == "collateral.validity" and word in str(info.value)


MALFORMED_TCB_INFO: dict[str, dict[str, Any]] = {
    "version 2": {"version": 2},
    "id SGX": {"id": "SGX"},
    "tcbType 1": {"tcbType": 1},
    "fmspc of 5 bytes": {"fmspc": "90C06F0000"},
    "pceId not hex": {"pceId": "00G0"},
    "issueDate without Z": {"issueDate": "2026-01-14T12:00:00"},
    "nextUpdate missing": {"nextUpdate": None},
    "tcbLevels empty": {"tcbLevels": []},
    "tcbLevels missing": {"tcbLevels": None},
    "tdxModule missing": {"tdxModule": None},
    "evaluation number as a string": {"tcbEvaluationDataNumber": "17"},
    "version as true": {"version": True},
}


@pytest.mark.parametrize("case", sorted(MALFORMED_TCB_INFO))
def test_strict_tcb_info(intel: SyntheticIntel, case: str) -> None:
    refused_tcb(intel, edited(intel, **MALFORMED_TCB_INFO[case]), "collateral.tcb_info")


@pytest.mark.parametrize(("case", "level"), [
    ("SVN 256", platform_level(sgx=(256,) + (0,) * 15)),
    ("15 SGX components", {**platform_level(), "tcb": {**platform_level()["tcb"],
                                                       "sgxtcbcomponents": [{"svn": 1}] * 15}}),
    ("PCESVN negative", platform_level(pcesvn=-1)),
    ("status unknown", platform_level("Fine")),
    ("status TDRelaunchAdvised", platform_level("TDRelaunchAdvised")),
    ("advisories not strings", platform_level(advisories=[1])),  # type: ignore[list-item]
    ("svn 1.0", {**platform_level(), "tcb": {**platform_level()["tcb"], "pcesvn": 13.0}}),
])
def test_strict_tcb_levels(intel: SyntheticIntel, case: str, level: dict[str, Any]) -> None:
    refused_tcb(intel, intel.sign_tcb_info([level]), "collateral.tcb_info")


def test_duplicate_levels_and_module_identities(intel: SyntheticIntel) -> None:
    error = refused_tcb(intel, intel.sign_tcb_info([platform_level(), platform_level("OutOfDate")]),
                        "collateral.tcb_info")
    assert "identical TCB levels" in str(error)
    modules = intel.tcb_info_document()["tdxModuleIdentities"]
    refused_tcb(intel, edited(intel, tdxModuleIdentities=[modules[1], {**modules[1], "id": "tdx_01"}]),
                "collateral.tcb_info")
    refused_tcb(intel, edited(intel, tdxModuleIdentities=[{**modules[1], "tcbLevels": [isv_level(1, "Fine")]}]),
                "collateral.tcb_info")
    refused_tcb(intel, edited(intel, tdxModuleIdentities=[{**modules[1], "tcbLevels": [
        isv_level(1, "ConfigurationNeeded")]}]), "collateral.tcb_info")  # not a module status
    refused_tcb(intel, edited(intel, tdxModuleIdentities=[]), "collateral.tcb_info")


def test_qe_identity_is_read_strictly(intel: SyntheticIntel) -> None:
    good = intel.qe_identity_document()
    identity, _ = verify_qe_identity(intel.sign("enclaveIdentity", good), intel.tcb_chain_pem, NOW,
                                     trust_roots=intel.trust_roots)
    assert identity.miscselect_mask == 0xFFFFFFFF and identity.isvprodid == 2 and identity.tcb_levels[0].isvsvn == 4
    for changes in ({"id": "QE"}, {"version": 1}, {"mrsigner": "00" * 48}, {"miscselect": "000000"},
                    {"attributesMask": "FF" * 8}, {"tcbLevels": [isv_level(4), isv_level(4)]},
                    {"tcbLevels": [isv_level(4, "SWHardeningNeeded")]}, {"isvprodid": 70000}):
        with pytest.raises(KbsError) as info:
            verify_qe_identity(intel.sign("enclaveIdentity", good | changes), intel.tcb_chain_pem, NOW,
                               trust_roots=intel.trust_roots)
        assert info.value.check == "collateral.qe_identity", changes
    # QVL allows one ISVSVN twice with different dates; the later date sorts first.
    twice = good | {"tcbLevels": [isv_level(4, date="2023-01-01T00:00:00Z"), isv_level(4, "OutOfDate")]}
    identity, _ = verify_qe_identity(intel.sign("enclaveIdentity", twice), intel.tcb_chain_pem, NOW,
                                     trust_roots=intel.trust_roots)
    assert identity.tcb_levels[0].status == "OutOfDate"


def test_warm_verification_parses_and_verifies_nothing(intel: SyntheticIntel, monkeypatch: pytest.MonkeyPatch) -> None:
    body = intel.sign_tcb_info(evaluation=99)  # bytes no other test verified
    calls = {"parse": 0, "signature": 0}
    parse, signature = collateral_module.parse_tcb_info, verify_signature

    def counting_parse(signed: bytes) -> Any:
        calls["parse"] += 1
        return parse(signed)

    def counting_signature(*args: Any, **kwargs: Any) -> None:
        calls["signature"] += 1
        signature(*args, **kwargs)

    monkeypatch.setattr(collateral_module, "verify_signature", counting_signature)
    monkeypatch.setitem(collateral_module._KINDS, "tcbInfo", ("TCB info", "collateral.tcb_info", counting_parse))
    first = tcb(intel, body)
    assert calls == {"parse": 1, "signature": 1}
    assert tcb(intel, body) is first and calls == {"parse": 1, "signature": 1}
    with pytest.raises(KbsError) as info:  # time checks still run on a cached document
        tcb(intel, body, NOW + 40 * DAY)
    assert info.value.check == "collateral.validity" and calls == {"parse": 1, "signature": 1}


# -- whole collateral sets ----------------------------------------------------------------------------

def test_verify_collateral(intel: SyntheticIntel, pck: PckChain) -> None:
    verified = verify_collateral(intel.collateral(), pck, NOW, trust_roots=intel.trust_roots)
    assert verified.tcb_info.fmspc == pck.info.fmspc and verified.qe_identity.id == "TD_QE"
    assert verified.pck_crl.issuer_cn == "Intel SGX PCK Platform CA"
    assert verified.root_ca_crl.issuer_cn == "Intel SGX Root CA"
    assert verified.tcb_info_signer.leaf.subject_cn == "Intel SGX TCB Signing"


def test_a_verified_set_is_remembered_with_its_window(intel: SyntheticIntel, pck: PckChain,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    collateral = intel.collateral(tcb_info=intel.sign_tcb_info(evaluation=77))  # bytes no other test verified
    calls: list[object] = []
    real = check_pck_crl

    def counting(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(collateral_module, "check_pck_crl", counting)
    first = verify_collateral(collateral, pck, NOW, trust_roots=intel.trust_roots)
    assert verify_collateral(collateral, pck, NOW + 20 * DAY, trust_roots=intel.trust_roots) is first
    assert len(calls) == 1
    # Outside the window (the PCK CRL's nextUpdate), every check runs again and names what expired.
    with pytest.raises(KbsError) as info:
        verify_collateral(collateral, pck, NOW + 29 * DAY, trust_roots=intel.trust_roots)
    assert info.value.check == "collateral.pck_crl" and len(calls) == 2
    with pytest.raises(KbsError) as info:
        verify_collateral(collateral, pck, NOW - 2 * DAY, trust_roots=intel.trust_roots)  # before thisUpdate
    assert info.value.check == "collateral.pck_crl"
    # Another PCK (the key holds the chain's bytes) is checked afresh, and may be the one revoked.
    other = verify_pck_chain(intel.issue_pck().pem_chain, NOW, trust_roots=intel.trust_roots)
    revoking = IntelCollateral(**{**collateral.__dict__, "pck_crl": intel.pck_crl((other.leaf.serial,))})
    verify_collateral(revoking, pck, NOW, trust_roots=intel.trust_roots)
    with pytest.raises(CertificateRevoked):
        verify_collateral(revoking, other, NOW, trust_roots=intel.trust_roots)


def _flip_last_signature_digit(signed: bytes) -> bytes:
    """The document with the last hex digit of its signature changed (always a different digit)."""
    digit = signed[-3:-2]
    return signed[:-3] + (b"1" if digit == b"0" else b"0") + signed[-2:]


def test_collateral_refusals(intel: SyntheticIntel, pck: PckChain) -> None:
    signing = intel.tcb_signing.parsed.serial
    stale = NOW - 40 * DAY
    cases: dict[str, tuple[IntelCollateral, str]] = {
        "no PCK CRL": (intel.collateral(pck_crl=None), "collateral.pck_crl"),
        "stale PCK CRL": (intel.collateral(pck_crl=intel.pck_crl(this_update=stale, next_update=NOW - DAY)),
                          "collateral.pck_crl"),
        "no root CA CRL": (intel.collateral(root_crl=None), "collateral.root_ca_crl"),
        "stale root CA CRL": (intel.collateral(root_crl=intel.root_crl(this_update=stale, next_update=NOW)),
                              "collateral.root_ca_crl"),
        "PCK revoked": (intel.collateral(pck_crl=intel.pck_crl((pck.leaf.serial,))), "crl.revoked"),
        "PCK CA revoked": (intel.collateral(root_crl=intel.root_crl((pck.intermediate.serial,))), "crl.revoked"),
        "TCB Signing revoked": (intel.collateral(root_crl=intel.root_crl((signing,))), "crl.revoked"),
        "expired TCB info": (intel.collateral(tcb_info=intel.sign_tcb_info(issue_date=stale, next_update=NOW)),
                             "collateral.validity"),
        "expired QE identity": (intel.collateral(qe_identity=intel.sign_qe_identity(issue_date=stale,
                                                                                     next_update=NOW - DAY)),
                                "collateral.validity"),
        "forged QE identity": (intel.collateral(qe_identity=_flip_last_signature_digit(intel.sign_qe_identity())),
                               "collateral.signature"),
    }
    for name, (collateral, check) in cases.items():
        with pytest.raises(KbsError) as info:
            verify_collateral(collateral, pck, NOW, trust_roots=intel.trust_roots)
        assert info.value.check == check, (name, str(info.value))
        if check == "crl.revoked":
            assert isinstance(info.value, CertificateRevoked)


def test_collateral_directory_round_trip(intel: SyntheticIntel, pck: PckChain, tmp_path: Path) -> None:
    collateral = intel.collateral()
    files = save_collateral_dir(collateral, tmp_path / "dir")
    assert sorted(p.name for p in files) == sorted(["tcb_info.json", "tcb_info_issuer_chain.pem", "qe_identity.json",
                                                    "qe_identity_issuer_chain.pem", "pck_crl.der",
                                                    "pck_crl_issuer_chain.pem", "root_ca_crl.der"])
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    loaded = load_collateral_dir(tmp_path / "dir")
    assert loaded == collateral
    verify_collateral(loaded, pck, NOW, trust_roots=intel.trust_roots)
    # CRLs may be absent from the directory, but then verification refuses, naming the missing one.
    (tmp_path / "dir" / PCK_CRL_FILE).unlink()
    (tmp_path / "dir" / ROOT_CA_CRL_FILE).unlink()
    loaded = load_collateral_dir(tmp_path / "dir")
    assert loaded.pck_crl is None and loaded.root_ca_crl is None
    with pytest.raises(CollateralUnavailable) as info:
        verify_collateral(loaded, pck, NOW, trust_roots=intel.trust_roots)
    assert info.value.check == "collateral.pck_crl"
    (tmp_path / "dir" / TCB_INFO_FILE).unlink()
    with pytest.raises(CollateralUnavailable) as info:
        load_collateral_dir(tmp_path / "dir")
    assert info.value.check == "collateral.missing" and "tcb_info.json" in str(info.value)
    with pytest.raises(CollateralUnavailable):
        load_collateral_dir(tmp_path / "nowhere")


def test_dcap_qvl_bundle(intel: SyntheticIntel, pck: PckChain) -> None:
    collateral = intel.collateral()
    tcb_members = frame(collateral.tcb_info, what="x", check="y")
    qe_members = frame(collateral.qe_identity, what="x", check="y")
    assert collateral.pck_crl is not None and collateral.root_ca_crl is not None
    bundle = {"tcb_info": tcb_members["tcbInfo"].decode(), "tcb_info_signature": json.loads(tcb_members["signature"]),
              "tcb_info_issuer_chain": collateral.tcb_info_issuer_chain.decode(),
              "qe_identity": qe_members["enclaveIdentity"].decode(),
              "qe_identity_signature": json.loads(qe_members["signature"]),
              "qe_identity_issuer_chain": collateral.qe_identity_issuer_chain.decode(),
              "pck_crl": collateral.pck_crl.hex(), "pck_crl_issuer_chain": intel.pck_ca_chain_pem().decode(),
              "root_ca_crl": collateral.root_ca_crl.hex()}
    loaded = load_dcap_qvl_bundle(json.dumps(bundle).encode())
    assert loaded == collateral  # the PCS bodies are rebuilt around the exact signed bytes
    verify_collateral(loaded, pck, NOW, trust_roots=intel.trust_roots)
    for broken in ({**bundle, "pck_crl": "zz"}, {**bundle, "tcb_info": 5}, {"tcb_info": "{}"}):
        with pytest.raises(MalformedEvidence) as info:
            load_dcap_qvl_bundle(json.dumps(broken).encode())
        assert info.value.check == "collateral.bundle"
    with pytest.raises(MalformedEvidence):
        load_dcap_qvl_bundle(b"[]")
