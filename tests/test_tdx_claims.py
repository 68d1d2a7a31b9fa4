"""TDX claims: Trustee's expected claims for its sample quote and CC event log, reproduced exactly;
our decoded fields beside them; the trust vector (a DEBUG TD is never affirming).

Quotes are parsed by the C core (`kbs.native.tdx_parse`); Trustee's vectors are read in place from
KBS_VECTORS.  `platform_instance_id` comes from the PCK certificate inside the quote, read here with
a few lines of pyasn1 (the trust layer's own reader is someone else's module).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pyasn1.codec.der import decoder

from kbs import native
from kbs.errors import EvidenceError
from kbs.evidence.base import AFFIRMING, CONTRAINDICATED, WARNING
from kbs.evidence.tdx.claims import (
    TD_ATTRIBUTE_BITS,
    PckInput,
    TcbInput,
    TdxQuoteFields,
    tdx_claims,
    tdx_trust_vector,
)
from kbs.evidence.tdx.eventlog import parse_eventlog
from tests import ccel_synth as cs
from tests.conftest import vector_file

if not hasattr(native, "tdx_parse"):
    pytest.skip("kbs.native.tdx_parse is not built into this tree yet", allow_module_level=True)

SGX_EXTENSION = "1.2.840.113741.1.13.1"
TRUSTEE_TOP = {"init_data", "quote", "report_data", "td_attributes", "uefi_event_logs", "platform_instance_id",
               # from Trustee's DCAP verification (intel_dcap/claims.rs)
               "tcb_status", "advisory_ids", "collateral_expiration_status", "tcb_date", "tcb_eval_num",
               "tcb_status_current", "advisory_ids_current", "tcb_date_current", "earliest_issue_date",
               "latest_issue_date", "earliest_expiration_date", "pck_crl_num", "root_ca_crl_num",
               "platform_provider_id", "sgx_type", "is_dynamic_platform", "is_cached_keys", "is_smt_enabled",
               "root_key_id"}
OURS = {"quote_version", "body_type", "tee_tcb_svn", "tee_tcb_svn2", "mr_service_td", "td_attributes_bits",
        "xfam", "fmspc", "pce_id", "pck", "eventlog"}


def _vector(name: str) -> Path:
    return vector_file("trustee", "evidence", "tdx", name)


@pytest.fixture(scope="module")
def quote4() -> native.TdxQuote:
    return native.tdx_parse(_vector("tdx_quote_4.dat").read_bytes())


@pytest.fixture(scope="module")
def quote5_bytes() -> bytes:
    return _vector("tdx_quote_5.dat").read_bytes()


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_vector("parse_tdx_claims_expected.json").read_text())
    return document


def pck_values(quote: native.TdxQuote) -> dict[str, str]:
    """FMSPC, PCE-ID and PlatformInstanceID (OIDs .4, .3, .6) from the PCK leaf's SGX extension, as
    the certificate holds them."""
    leaf = x509.load_pem_x509_certificates(quote.pck_chain_pem)[0]
    raw = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION)).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    sequence, _ = decoder.decode(raw.value)
    names = {"4": "fmspc", "3": "pce_id", "6": "platform_instance_id"}
    out = {}
    for item in sequence:
        oid = str(item[0])
        suffix = oid.removeprefix(SGX_EXTENSION + ".")
        if suffix in names:
            out[names[suffix]] = bytes(item[1]).hex()
    return out


def trustee_part(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k in TRUSTEE_TOP}


# --- Trustee's sample ---------------------------------------------------------------------------------

def test_trustee_expected_claims_are_reproduced_exactly(quote4: native.TdxQuote, expected: dict[str, Any]) -> None:
    log = parse_eventlog(_vector("CCEL_data").read_bytes())
    pck = pck_values(quote4)
    claims = tdx_claims(quote4, eventlog=log, pck={"platform_instance_id": pck["platform_instance_id"]})
    assert trustee_part(claims) == expected
    assert set(claims) - set(expected) <= OURS
    assert claims["pck"]["platform_instance_id"] == pck["platform_instance_id"]
    json.dumps(claims).encode()


def test_trustee_prints_the_platform_instance_id_reversed(quote4: native.TdxQuote, expected: dict[str, Any]) -> None:
    """The certificate's OCTET STRING is 021ac64d…5482; Trustee's claim is those 16 bytes reversed."""
    raw = bytes.fromhex(pck_values(quote4)["platform_instance_id"])
    assert raw.hex() != expected["platform_instance_id"]
    assert raw[::-1].hex() == expected["platform_instance_id"]


def test_our_fields_for_the_sample(quote4: native.TdxQuote) -> None:
    pck: PckInput = {"fmspc": pck_values(quote4)["fmspc"], "pce_id": pck_values(quote4)["pce_id"]}
    claims = tdx_claims(quote4, pck=pck)
    assert claims["quote_version"] == 4 and claims["body_type"] == 2
    assert claims["tee_tcb_svn"] == [3, 0, 5] + [0] * 13
    assert claims["tee_tcb_svn2"] is None and claims["mr_service_td"] is None
    bits = claims["td_attributes_bits"]
    assert bits["raw"] == "0x0000000010000001" and bits["debug"] and bits["septve_disable"]
    assert not bits["migratable"] and bits["unknown_bits"] == "0x0"
    assert claims["xfam"]["raw"] == "0x00000000000642e7"
    assert claims["xfam"]["x87"] and claims["xfam"]["amx_tiledata"] and not claims["xfam"]["pt"]
    assert len(claims["fmspc"]) == 12 and len(claims["pce_id"]) == 4
    assert "eventlog" not in claims and "uefi_event_logs" not in claims and "tcb_status" not in claims


def test_the_sample_pair_does_not_replay_and_the_claims_say_so(quote4: native.TdxQuote) -> None:
    claims = tdx_claims(quote4, eventlog=parse_eventlog(_vector("CCEL_data").read_bytes()))
    assert claims["eventlog"] == {"events": 5, "algorithms": ["SHA-384"], "rtmrs_match_quote": False}


def test_v5_td15_quote(quote5_bytes: bytes) -> None:
    """Trustee's v5 names, checked against the bytes at tdx.md §1.3 offsets (no expected JSON for v5)."""
    claims = tdx_claims(native.tdx_parse(quote5_bytes))
    body, raw = claims["quote"]["body"], quote5_bytes[54:54 + 648]
    assert claims["quote"]["header"]["version"] == "0500"
    assert claims["quote"]["type"] == "0300" and claims["quote"]["size"] == "88020000"  # 3, 648
    assert body["tee_tcb_svn2"] == raw[584:600].hex() and body["mr_servicetd"] == raw[600:648].hex()
    assert body["mr_td"] == raw[136:184].hex() and body["rtmr_3"] == raw[472:520].hex()
    assert body["td_attributes"] == raw[120:128].hex() and body["xfam"] == raw[128:136].hex()
    assert claims["report_data"] == raw[520:584].hex() and claims["init_data"] == raw[184:232].hex()
    assert claims["quote_version"] == 5 and claims["body_type"] == 3
    assert claims["tee_tcb_svn2"] == list(raw[584:600]) and claims["mr_service_td"] == raw[600:648].hex()
    assert claims["td_attributes"] == {"debug": False, "key_locker": False, "perfmon": False,
                                       "protection_keys": False, "septve_disable": True}


def test_v5_td10_body_has_type_and_size_but_no_td15_fields(quote4: native.TdxQuote) -> None:
    td10_v5 = dataclasses.replace(quote4, version=5)
    claims = tdx_claims(td10_v5)
    assert claims["quote"]["type"] == "0200" and claims["quote"]["size"] == "48020000"
    assert "tee_tcb_svn2" not in claims["quote"]["body"] and "mr_servicetd" not in claims["quote"]["body"]


def test_the_native_quote_is_what_the_claims_read(quote4: native.TdxQuote) -> None:
    fields: TdxQuoteFields = quote4  # type-checked: kbs.native.TdxQuote has every field the claims read
    assert fields.rtmrs[0] == quote4.raw_body[328:376]


# --- TCB and PCK values from the trust layer ------------------------------------------------------------

def test_tcb_and_pck_values(quote4: native.TdxQuote) -> None:
    tcb: TcbInput = {"status": "SWHardeningNeeded", "advisory_ids": ["INTEL-SA-00615", "INTEL-SA-00837"],
                     "tcb_date": "2024-03-13T00:00:00Z", "tcb_eval_num": 17}
    pck: PckInput = {"fmspc": "90C06F000000", "pce_id": "0000", "platform_instance_id": None,
                     "sgx_type": "Scalable", "dynamic_platform": True, "cached_keys": False, "smt_enabled": True,
                     "ppid": "27e0ea63c5bc76685225c63a3d844170", "tcb_components": (1, 2, 3)}
    claims = tdx_claims(quote4, tcb=tcb, pck=pck)
    assert claims["tcb_status"] == "SWHardeningNeeded"
    assert claims["advisory_ids"] == ["INTEL-SA-00615", "INTEL-SA-00837"]
    assert claims["collateral_expiration_status"] == "0" and claims["tcb_date"] == "2024-03-13T00:00:00Z"
    assert claims["tcb_eval_num"] == 17
    assert claims["fmspc"] == "90c06f000000" and claims["pce_id"] == "0000"
    assert "platform_instance_id" not in claims  # a processor-CA PCK has none
    assert claims["sgx_type"] == "Scalable" and claims["is_dynamic_platform"] and not claims["is_cached_keys"]
    assert claims["platform_provider_id"] == "27e0ea63c5bc76685225c63a3d844170"
    assert claims["pck"]["tcb_components"] == [1, 2, 3]
    assert set(claims) <= TRUSTEE_TOP | OURS
    json.dumps(claims)


def test_values_as_the_intel_trust_layer_holds_them(quote4: native.TdxQuote) -> None:
    """Dates as datetimes and the SGX type as QVL spells it (or its number) come out as Trustee prints them."""
    tcb: TcbInput = {"status": "UpToDate", "tcb_date": datetime(2024, 3, 13, tzinfo=UTC),
                     "earliest_expiration_date": datetime(2025, 9, 23, 17, 2, 5, tzinfo=timezone(timedelta(hours=2)))}
    claims = tdx_claims(quote4, tcb=tcb, pck={"sgx_type": "ScalableWithIntegrity"})
    assert claims["tcb_date"] == "2024-03-13T00:00:00Z"
    assert claims["earliest_expiration_date"] == "2025-09-23T15:02:05Z"
    assert claims["sgx_type"] == "Scalable with Integrity"
    assert tdx_claims(quote4, pck={"sgx_type": 0})["sgx_type"] == "Standard"
    assert tdx_claims(quote4, pck={"sgx_type": 7})["sgx_type"] == "Unknown (7)"


def test_td15_current_tcb(quote5_bytes: bytes) -> None:
    tcb: TcbInput = {"status": "TDRelaunchAdvised", "status_current": "UpToDate", "advisory_ids": ["INTEL-SA-1"],
                     "advisory_ids_current": [], "tcb_date_current": "2025-01-01T00:00:00Z"}
    claims = tdx_claims(native.tdx_parse(quote5_bytes), tcb=tcb)
    assert claims["tcb_status"] == "TDRelaunchAdvised" and claims["tcb_status_current"] == "UpToDate"
    assert claims["advisory_ids_current"] == [] and claims["tcb_date_current"] == "2025-01-01T00:00:00Z"


def test_bound_init_data_and_report_data(quote4: native.TdxQuote) -> None:
    digest = bytes(range(32))
    quote = dataclasses.replace(quote4, mr_config_id=digest + bytes(16))
    claims = tdx_claims(quote, init_data_hex=digest.hex(), report_data_hex=quote4.report_data.hex())
    assert claims["init_data"] == digest.hex() and claims["report_data"] == quote4.report_data.hex()
    assert claims["quote"]["body"]["mr_config_id"] == (digest + bytes(16)).hex()  # the quote's own field
    with pytest.raises(EvidenceError) as info:
        tdx_claims(quote, init_data_hex=bytes(32).hex())
    assert info.value.check == "binding.init_data"
    with pytest.raises(EvidenceError) as info:
        tdx_claims(quote4, report_data_hex=(b"\x01" + quote4.report_data[1:]).hex())
    assert info.value.check == "binding.report_data"


# --- trust vector ---------------------------------------------------------------------------------------

def _with(quote: native.TdxQuote, td_attributes: int) -> native.TdxQuote:
    return dataclasses.replace(quote, td_attributes=td_attributes)


UP_TO_DATE: TcbInput = {"status": "UpToDate"}
SEPT_VE_DISABLE = 1 << TD_ATTRIBUTE_BITS["septve_disable"]


def test_debug_td_is_never_affirming(quote4: native.TdxQuote) -> None:
    """Trustee's sample TD has DEBUG set: it verifies, its claims say so, its vector warns."""
    claims = tdx_claims(quote4, tcb=UP_TO_DATE)
    assert claims["td_attributes"]["debug"] is True
    vector = tdx_trust_vector(claims)
    assert vector["configuration"] == WARNING and vector["hardware"] == AFFIRMING
    assert vector["instance-identity"] == AFFIRMING and vector["executables"] == 0


def test_production_td_up_to_date_is_affirming(quote4: native.TdxQuote) -> None:
    vector = tdx_trust_vector(tdx_claims(_with(quote4, SEPT_VE_DISABLE), tcb=UP_TO_DATE))
    assert vector == {"instance-identity": AFFIRMING, "configuration": AFFIRMING, "executables": 0,
                      "file-system": 0, "hardware": AFFIRMING, "runtime-opaque": 0, "storage-opaque": 0,
                      "sourced-data": 0}


@pytest.mark.parametrize(("bits", "configuration"), [
    (0, AFFIRMING),
    (1 << TD_ATTRIBUTE_BITS["debug"], WARNING),
    (1 << TD_ATTRIBUTE_BITS["perf_prof"], WARNING),  # a TD-under-debug bit
    (1 << 3, WARNING),  # an unnamed TUD bit
    (1 << TD_ATTRIBUTE_BITS["migratable"], WARNING),
    (1 << 40, WARNING),  # a bit nobody has named yet
    (1 << TD_ATTRIBUTE_BITS["protection_keys"] | 1 << TD_ATTRIBUTE_BITS["key_locker"], AFFIRMING),
    (1 << TD_ATTRIBUTE_BITS["perfmon"] | 1 << TD_ATTRIBUTE_BITS["lass"], AFFIRMING),
])
def test_configuration_by_td_attributes(quote4: native.TdxQuote, bits: int, configuration: int) -> None:
    claims = tdx_claims(_with(quote4, SEPT_VE_DISABLE | bits), tcb=UP_TO_DATE)
    assert tdx_trust_vector(claims)["configuration"] == configuration


@pytest.mark.parametrize(("status", "hardware"), [
    ("UpToDate", AFFIRMING),
    ("SWHardeningNeeded", WARNING), ("ConfigurationNeeded", WARNING),
    ("ConfigurationAndSWHardeningNeeded", WARNING),
    ("OutOfDate", WARNING), ("OutOfDateConfigurationNeeded", WARNING),
    ("TDRelaunchAdvised", WARNING), ("TDRelaunchAdvisedConfigurationNeeded", WARNING),
    ("Revoked", CONTRAINDICATED),
    ("uptodate", 97), ("SomethingNew", 97),
])
def test_hardware_by_tcb_status(quote4: native.TdxQuote, status: str, hardware: int) -> None:
    claims = tdx_claims(_with(quote4, SEPT_VE_DISABLE), tcb={"status": status})
    assert tdx_trust_vector(claims)["hardware"] == hardware


def test_no_tcb_evaluation_is_not_affirming(quote4: native.TdxQuote) -> None:
    assert tdx_trust_vector(tdx_claims(_with(quote4, SEPT_VE_DISABLE)))["hardware"] == 97


def test_vector_from_trustee_shaped_claims(expected: dict[str, Any]) -> None:
    """Claims Trustee printed (no fields of ours) still give a vector: DEBUG from quote.body.td_attributes."""
    assert tdx_trust_vector({**expected, "tcb_status": "UpToDate"})["configuration"] == WARNING
    assert tdx_trust_vector({"tcb_status": "UpToDate"})["configuration"] == CONTRAINDICATED


def test_synthetic_log_in_claims_replays(quote4: native.TdxQuote) -> None:
    data, rtmrs = cs.sample_log()
    quote = dataclasses.replace(quote4, rtmrs=rtmrs)
    claims = tdx_claims(quote, eventlog=parse_eventlog(data))
    assert claims["eventlog"]["rtmrs_match_quote"] is True
    assert [e["index"] for e in claims["uefi_event_logs"]] == [1, 1, 1, 2, 2, 2, 3, 4]
    assert claims["quote"]["body"]["rtmr_3"] == rtmrs[3].hex()
