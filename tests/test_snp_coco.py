"""CoCo guest SNP evidence JSON <-> binary report: real sample verifies, round trips, strict rejection."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from kbs import native
from kbs.errors import MalformedEvidence, UsageError
from kbs.evidence.snp.coco import CHECK, report_from_coco, report_to_coco
from kbs.evidence.snp.verify import verify_snp
from kbs.trust.x509 import load_certificates, parse_certificate
from tests.conftest import SnpVector, vectors_dir

AT = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
Json = dict[str, Any]


def _e2e_path() -> Path:
    return vectors_dir() / "trustee" / "evidence" / "snp" / "e2e-snp-evidence.json"


@pytest.fixture(scope="module")
def e2e_source() -> Json:
    path = _e2e_path()
    if not path.is_file():
        pytest.skip(f"trustee e2e SNP evidence not found at {path} (set KBS_VECTORS)")
    data: Json = json.loads(path.read_text())
    return data


@pytest.fixture
def e2e(e2e_source: Json) -> Json:
    """A fresh copy each test may mutate."""
    return copy.deepcopy(e2e_source)


# --- the real sample ------------------------------------------------------------------------------

def test_e2e_signature_verifies_with_embedded_vcek(e2e: Json) -> None:
    coco = report_from_coco(e2e)
    assert len(coco.report) == native.SNP_REPORT_SIZE
    assert [kind for kind, _ in coco.certificates] == ["VCEK"]
    vcek = parse_certificate(dict(coco.certificates)["VCEK"])
    assert vcek.subject_cn == "SEV-VCEK"
    native.snp_verify(coco.report, vcek.public_key_bits)


def test_e2e_passes_verify_snp_with_genoa_chain(e2e: Json) -> None:
    chain_file = vectors_dir() / "snp" / "chains" / "genoa_vcek_cert_chain.pem"
    if not chain_file.is_file():
        pytest.skip(f"Genoa chain not found at {chain_file}")
    coco = report_from_coco(e2e)
    certs = coco.x509_certificates() + load_certificates(chain_file.read_bytes())
    result = verify_snp(coco.report, certs, AT)
    assert result.product == "Genoa"
    ar = e2e["attestation_report"]
    claims = result.claims()
    assert claims["measurement"] == bytes(ar["measurement"]).hex()
    assert claims["report_data"] == bytes(ar["report_data"]).hex()
    assert claims["chip_id"] == bytes(ar["chip_id"]).hex()
    tcb = ar["reported_tcb"]
    assert result.tcbs["reported"].parts() == {"bl": tcb["bootloader"], "tee": tcb["tee"], "snp": tcb["snp"],
                                               "ucode": tcb["microcode"]}


def test_e2e_json_round_trips(e2e: Json) -> None:
    coco = report_from_coco(e2e)
    back = report_to_coco(coco.report, coco.certificates)
    original = e2e["attestation_report"]
    assert {k: back["attestation_report"][k] for k in original} == original
    # sev 7 adds the mitigation vectors; a v3 report has none.
    assert back["attestation_report"]["launch_mit_vector"] is None
    assert back["cert_chain"] == e2e["cert_chain"]


def test_absent_optional_fields_are_null(e2e: Json) -> None:
    """sev's Option fields may be absent (serde default); a v3 report still needs its CPUID."""
    e2e.pop("cert_chain")
    for tcb in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        del e2e["attestation_report"][tcb]["fmc"]
    assert report_from_coco(e2e).certificates == ()
    del e2e["attestation_report"]["cpuid_step"]
    with pytest.raises(MalformedEvidence, match=r"attestation_report\.cpuid_step must be an integer"):
        report_from_coco(e2e)


# --- round trips over every real binary report ----------------------------------------------------

def _family_of(vector: SnpVector) -> str:
    if vector.name.startswith("turin"):
        return "Turin"
    return "Genoa" if vector.name.startswith(("genoa", "siena")) else "Milan"


def test_binary_round_trip(snp_vector: SnpVector) -> None:
    as_json = report_to_coco(snp_vector.report, family=_family_of(snp_vector))
    json.dumps(as_json)  # plain JSON types only
    assert report_from_coco(json.loads(json.dumps(as_json))).report == snp_vector.report


def test_v2_turin_layout_follows_fmc(e2e: Json) -> None:
    ar = e2e["attestation_report"]
    ar.update(version=2, cpuid_fam_id=None, cpuid_mod_id=None, cpuid_step=None)
    for i, tcb in enumerate(("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")):
        ar[tcb]["fmc"] = i
    report = report_from_coco(e2e).report
    assert report[0x38:0x40] == bytes([0, 10, 0, 23, 0, 0, 0, 25])
    assert report_to_coco(report, family="Turin")["attestation_report"] == {
        **ar, "launch_mit_vector": None, "current_mit_vector": None}
    # Read with the wrong family, the Turin bytes land in reserved Milan bytes: refused, not garbled.
    with pytest.raises(MalformedEvidence, match="reserved bytes"):
        report_to_coco(report, family="Milan")
    ar["launch_tcb"]["fmc"] = None
    with pytest.raises(MalformedEvidence, match=r"launch_tcb\.fmc is null"):
        report_from_coco(e2e)


def test_fmc_must_match_cpuid_layout(e2e: Json) -> None:
    e2e["attestation_report"]["committed_tcb"]["fmc"] = 0
    with pytest.raises(MalformedEvidence, match=r"committed_tcb\.fmc is set, but CPUID family 0x19"):
        report_from_coco(e2e)


def test_v5_mitigation_vectors(e2e: Json) -> None:
    ar = e2e["attestation_report"]
    ar.update(version=5, launch_mit_vector=1, current_mit_vector=3)
    report = report_from_coco(e2e).report
    assert native.snp_parse(report).current_mit_vector == 3
    del ar["current_mit_vector"]  # sev 6.x does not carry them: zero, left to the signature
    assert native.snp_parse(report_from_coco(e2e).report).current_mit_vector == 0
    ar.update(version=3)
    with pytest.raises(MalformedEvidence, match=r"launch_mit_vector must be null before report version 5"):
        report_from_coco(e2e)


def test_report_to_coco_usage() -> None:
    report = bytes(native.SNP_REPORT_SIZE)
    with pytest.raises(UsageError):
        report_to_coco(report, family="Rome")
    with pytest.raises(MalformedEvidence):
        report_to_coco(report)


def test_cert_types(e2e: Json) -> None:
    der = bytes(e2e["cert_chain"][0]["data"])
    guid = "11111111-2222-3333-4444-555555555555"
    e2e["cert_chain"] = [{"cert_type": "ASK", "data": [1, 2]}, {"cert_type": {"OTHER": guid.upper()}, "data": []},
                         {"cert_type": "VCEK", "data": list(der)}]
    coco = report_from_coco(e2e)
    assert coco.certificates == (("ASK", b"\x01\x02"), (guid, b""), ("VCEK", der))
    back = report_to_coco(coco.report, [*coco.certificates, ("63DA758D-E664-4564-ADC5-F4B93BE8ACCD", b"")])
    assert [c["cert_type"] for c in back["cert_chain"]] == ["ASK", {"OTHER": guid}, "VCEK", "VCEK"]
    with pytest.raises(UsageError):
        report_to_coco(coco.report, [("vcek", der)])


# --- strict rejection ----------------------------------------------------------------------------

def _ar(mutate: Callable[[Json], None]) -> Callable[[Json], None]:
    return lambda ev: mutate(ev["attestation_report"])


NEGATIVE: dict[str, tuple[Callable[[Json], None], str]] = {
    "missing field": (_ar(lambda a: a.pop("measurement")), r"attestation_report\.measurement is missing"),
    "array one short": (_ar(lambda a: a["report_data"].pop()), r"attestation_report\.report_data must have "
                                                               r"exactly 64 elements, got 63"),
    "element 256": (_ar(lambda a: a["chip_id"].__setitem__(3, 256)), r"attestation_report\.chip_id\[3\]"),
    "negative integer": (_ar(lambda a: a.__setitem__("guest_svn", -1)), r"attestation_report\.guest_svn"),
    "u32 overflow": (_ar(lambda a: a.__setitem__("vmpl", 1 << 32)), r"attestation_report\.vmpl"),
    "string for int": (_ar(lambda a: a.__setitem__("vmpl", "0")), r"attestation_report\.vmpl must be an integer"),
    "bool for int": (_ar(lambda a: a.__setitem__("sig_algo", True)), r"attestation_report\.sig_algo"),
    "float for int": (_ar(lambda a: a.__setitem__("policy", 196608.0)), r"attestation_report\.policy"),
    "unknown tcb member": (_ar(lambda a: a["current_tcb"].__setitem__("spl4", 0)),
                           r"attestation_report\.current_tcb has unknown field\(s\) 'spl4'"),
    "tcb component 256": (_ar(lambda a: a["launch_tcb"].__setitem__("microcode", 256)),
                          r"attestation_report\.launch_tcb\.microcode"),
    "firmware member missing": (_ar(lambda a: a["current"].pop("major")), r"attestation_report\.current\.major"),
    "signature r short": (_ar(lambda a: a["signature"]["r"].pop()), r"attestation_report\.signature\.r"),
    "cpuid null on v3": (_ar(lambda a: a.__setitem__("cpuid_fam_id", None)), r"attestation_report\.cpuid_fam_id"),
    "cpuid on v2": (_ar(lambda a: a.__setitem__("version", 2)), r"attestation_report\.cpuid_fam_id must be null"),
    "unknown report field": (_ar(lambda a: a.__setitem__("_reserved_0", 0)), r"unknown field\(s\) '_reserved_0'"),
    "unknown top-level field": (lambda ev: ev.__setitem__("extra", 1), r"evidence has unknown field\(s\) 'extra'"),
    "cert data element": (lambda ev: ev["cert_chain"][0]["data"].__setitem__(0, -1), r"cert_chain\[0\]\.data\[0\]"),
    "bool in a byte array": (_ar(lambda a: a["measurement"].__setitem__(5, True)),
                             r"attestation_report\.measurement\[5\] must be an integer 0\.\.255, got bool"),
    "false in cert data": (lambda ev: ev["cert_chain"][0]["data"].__setitem__(7, False),
                           r"cert_chain\[0\]\.data\[7\] must be an integer 0\.\.255, got bool"),
    "cert type unknown": (lambda ev: ev["cert_chain"][0].__setitem__("cert_type", "PEK"),
                          r"cert_chain\[0\]\.cert_type"),
    "cert chain object": (lambda ev: ev.__setitem__("cert_chain", {}), r"cert_chain must be an array or null"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_malformed_json_names_the_field(e2e: Json, case: str) -> None:
    mutate, message = NEGATIVE[case]
    mutate(e2e)
    with pytest.raises(MalformedEvidence, match=message) as info:
        report_from_coco(e2e)
    assert info.value.check == CHECK


@pytest.mark.parametrize(("mutate", "check", "message"), [
    (lambda a: a.__setitem__("policy", a["policy"] | 1 << 40), "report.policy", "reserved bits 63:26"),
    (lambda a: a.__setitem__("policy", a["policy"] & ~(1 << 17)), "report.policy", "bit 17"),
    (lambda a: a.__setitem__("key_info", 3 << 2), "report.signer_info", "reserved value"),
    (lambda a: a.__setitem__("version", 6), "report.version", "version"),
    (lambda a: a["signature"]["s"].__setitem__(60, 1), "report.signature_format", "signature s"),
])
def test_c_core_rejects_with_its_reason(e2e: Json, mutate: Callable[[Json], None], check: str,
                                        message: str) -> None:
    mutate(e2e["attestation_report"])
    with pytest.raises(MalformedEvidence, match=message) as info:
        report_from_coco(e2e)
    assert info.value.check == check
    assert "attestation_report, re-encoded" in str(info.value)


# --- property: mutations never escape as anything but MalformedEvidence --------------------------

Path_ = tuple[str | int, ...]


def _paths(node: object, prefix: Path_ = ()) -> list[Path_]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        # every element of the short arrays, a sample of the 1347-byte certificate
        step = 1 if len(node) <= 72 else 97
        for i in range(0, len(node), step):
            out += _paths(node[i], (*prefix, i))
    return out


_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) \
    | st.text(max_size=4)
_JSON_VALUES = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


# small steps that stay in range, bits the C core owns (signer info, policy), and width overflows
_DELTAS = [-1, 1, 1, 2, 1 << 2, 1 << 5, 1 << 17, 1 << 26, 1 << 40, 255, 256, 1 << 32, 1 << 64, -(1 << 63)]


def _mutate(doc: Json, path: Path_, op: str, value: object, delta: int) -> None:
    if not path:
        return
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "drop":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "nudge" and type(parent[last]) is int:
        parent[last] += delta
    elif op == "nudge":
        parent[last] = delta


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutations_raise_only_malformed(e2e_source: Json, data: st.DataObject) -> None:
    paths = _paths(e2e_source)
    doc = copy.deepcopy(e2e_source)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        op = data.draw(st.sampled_from(["drop", "replace", "nudge", "nudge"]), label="op")
        value = data.draw(_JSON_VALUES, label="value") if op == "replace" else None
        delta = data.draw(st.sampled_from(_DELTAS), label="delta")
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier mutation moved the parent
            _mutate(doc, path, op, value, delta)
    try:
        coco = report_from_coco(doc)
    except MalformedEvidence as exc:
        event(f"rejected: {exc.check}")
        return
    event("converted")
    assert len(coco.report) == native.SNP_REPORT_SIZE
    native.snp_parse(coco.report)
    turin_v2 = doc["attestation_report"]["current_tcb"].get("fmc") is not None
    back = report_to_coco(coco.report, coco.certificates, family="Turin" if turin_v2 else "Milan")
    assert report_from_coco(back).report == coco.report
