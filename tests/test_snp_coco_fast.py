"""The one-pass SNP message decoder (issue 12): real and synthetic messages take it with the Python path's
result, everything the Python path refuses is left to it (same error, in process and over HTTP), and the
C scanner's limits are the Python ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kbs import jsondoc, native
from kbs.errors import KbsError
from kbs.evidence.base import VerifierContext
from kbs.evidence.binding import primary_runtime_digest
from kbs.evidence.composite import AttestationMessage
from kbs.evidence.registry import VerifierRegistry
from kbs.evidence.snp import coco, verifier
from kbs.evidence.snp.coco import CocoSnpEvidence, report_from_coco, report_to_coco
from kbs.evidence.snp.coco_fast import decode_message
from kbs.keys.jwe import generate_tee_key
from kbs.server.attestation import Attestor
from kbs.trust.x509 import load_certificates
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, attestation, auth, jar, run_broker
from tests.conftest import SnpVector, vectors_dir

JWK = generate_tee_key("EC-P256").jwk
INIT_DATA = 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"policy.rego" = "package x\\n"\n'
Json = dict[str, Any]


def message(evidence: Json, *, nonce: str = "bm9uY2U", init_data: str | None = None, additional: str = "",
            indent: bool = False) -> bytes:
    body = {"init-data": {"format": "toml", "body": init_data} if init_data else None,
            "runtime-data": {"nonce": nonce, "tee-pubkey": JWK},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": additional}}
    return json.dumps(body, indent=2 if indent else None, separators=None if indent else (",", ":")).encode()


def python_path(raw: bytes) -> tuple[AttestationMessage, CocoSnpEvidence]:
    """What the broker did before: JSON, shape, message, report_from_coco."""
    msg = AttestationMessage.from_bytes(raw)
    return msg, report_from_coco(msg.primary_evidence)


def fast_path(raw: bytes) -> tuple[AttestationMessage, CocoSnpEvidence]:
    msg = AttestationMessage.from_bytes(raw, decode_message)
    evidence = msg.primary_evidence
    return msg, evidence if isinstance(evidence, CocoSnpEvidence) else report_from_coco(evidence)


def assert_fast_and_equal(raw: bytes) -> CocoSnpEvidence:
    assert decode_message(raw) is not None, "declined a message the fast path should take"
    fast_msg, fast = fast_path(raw)
    slow_msg, slow = python_path(raw)
    assert isinstance(fast_msg.primary_evidence, CocoSnpEvidence)
    assert (fast.report, fast.certificates) == (slow.report, slow.certificates)
    assert fast.parsed is not None and slow.parsed is not None and fast.parsed.raw == slow.parsed.raw
    assert (fast_msg.nonce, fast_msg.tee_pubkey, fast_msg.additional_evidence, fast_msg.init_data) == \
        (slow_msg.nonce, slow_msg.tee_pubkey, slow_msg.additional_evidence, slow_msg.init_data)
    return fast


def refusal(fn: Callable[[], object]) -> tuple[type[KbsError], str, str]:
    with pytest.raises(KbsError) as info:
        fn()
    return type(info.value), str(info.value), info.value.check


def assert_declined_with_same_error(raw: bytes, pattern: str) -> None:
    assert decode_message(raw) is None
    slow = refusal(lambda: python_path(raw))
    assert re.search(pattern, slow[1]), slow
    assert refusal(lambda: fast_path(raw)) == slow


def test_limits_are_the_python_paths() -> None:
    assert native.COCO_MAX_DEPTH == jsondoc.MAX_DEPTH
    assert native.COCO_MAX_NODES == jsondoc.MAX_NODES
    assert native.COCO_MAX_CERTS == coco.MAX_CERTIFICATES
    assert native.COCO_MAX_CERT_SIZE == coco.MAX_CERTIFICATE_SIZE
    assert sorted(native.COCO_CERT_TYPES.values()) == sorted(coco.CERT_TYPE_GUIDS)


# --- real evidence ------------------------------------------------------------------------------------

def _family_of(name: str) -> str:
    if name.startswith("turin"):
        return "Turin"
    return "Genoa" if name.startswith(("genoa", "siena")) else "Milan"


def _chain(vector: SnpVector) -> list[tuple[str, bytes]]:
    """The vector's VEK and its ASK and ARK, as a guest's cert_chain lists them."""
    certs = [c for f in vector.vek_files for c in load_certificates(f.read_bytes())]
    if len(certs) == 1 and vector.chain_file.is_file():
        certs += load_certificates(vector.chain_file.read_bytes())
    kinds = {"SEV-VCEK": "VCEK", "SEV-VLEK": "VLEK"}
    return [(kinds.get(c.subject_cn, "ARK" if c.subject_cn.startswith("ARK") else "ASK"), c.der) for c in certs]


def test_real_reports_take_the_fast_path(snp_vector: SnpVector) -> None:
    chain = _chain(snp_vector)
    evidence = report_to_coco(snp_vector.report, chain, family=_family_of(snp_vector.name))
    coco_evidence = assert_fast_and_equal(message(evidence))
    assert coco_evidence.report == snp_vector.report
    assert coco_evidence.certificates == tuple(chain)
    assert_fast_and_equal(message(evidence, indent=True, init_data=INIT_DATA, additional='{"nvgpu":[]}'))


def test_trustee_e2e_evidence_as_sev_serialised_it() -> None:
    path = vectors_dir() / "trustee" / "evidence" / "snp" / "e2e-snp-evidence.json"
    if not path.is_file():
        pytest.skip(f"trustee e2e SNP evidence not found at {path} (set KBS_VECTORS)")
    text = path.read_bytes().strip()
    raw = b'{"runtime-data":{"nonce":"abc","tee-pubkey":' + orjson.dumps(JWK) + \
        b'},"tee-evidence":{"primary_evidence":' + text + b',"additional_evidence":""}}'
    assert assert_fast_and_equal(raw).certificates[0][0] == "VCEK"


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_synthetic_guests_take_the_fast_path(product: str) -> None:
    guest = SnpGuest(SyntheticAmd(product))
    evidence = guest.evidence(bytes(64))
    assert_fast_and_equal(message(evidence))
    assert_fast_and_equal(message(evidence, init_data=INIT_DATA, additional='{"nvgpu": [{"a": "\\u00e9"}]}'))


# --- at and past the limits ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evidence() -> Json:
    return SnpGuest(SyntheticAmd("Milan")).evidence(bytes(64))


def _values(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_values(v) for v in value)
    return 1


def test_value_count_at_and_past_the_limit(evidence: Json) -> None:
    body = orjson.loads(message(evidence))
    body["padding"] = []
    body["padding"] = [0] * (jsondoc.MAX_NODES - _values(body))
    assert_fast_and_equal(orjson.dumps(body))
    body["padding"].append(0)
    assert_declined_with_same_error(orjson.dumps(body), "more than 100000 values")


def test_depth_at_and_past_the_limit(evidence: Json) -> None:
    for depth, ok in ((jsondoc.MAX_DEPTH, True), (jsondoc.MAX_DEPTH + 1, False)):
        nested = "[" * (depth - 1) + "]" * (depth - 1)  # the top object is level 1
        raw = message(evidence).replace(b'"init-data"', b'"padding":' + nested.encode() + b',"init-data"', 1)
        if ok:
            assert_fast_and_equal(raw)
        else:
            assert_declined_with_same_error(raw, "nested too deeply")


def test_certificate_count_and_size_at_and_past_the_limits(evidence: Json) -> None:
    big = dict(evidence, cert_chain=[{"cert_type": "VCEK", "data": [7] * coco.MAX_CERTIFICATE_SIZE}])
    assert_fast_and_equal(message(big))
    big["cert_chain"][0]["data"].append(7)
    assert_declined_with_same_error(message(big), "more than the 16384 a certificate may have")
    many = dict(evidence, cert_chain=[{"cert_type": "ARK", "data": [1]}] * coco.MAX_CERTIFICATES)
    assert_fast_and_equal(message(many))
    many["cert_chain"] = many["cert_chain"] + [{"cert_type": "ARK", "data": [1]}]
    assert_declined_with_same_error(message(many), "more than the 16 allowed")


# --- everything the Python path refuses is left to it ----------------------------------------------------

def _edit(fn: Callable[[Json], None]) -> Callable[[Json], bytes]:
    def apply(evidence: Json) -> bytes:
        copy = json.loads(json.dumps(evidence))
        fn(copy)
        return message(copy)
    return apply


def _ar(fn: Callable[[Json], None]) -> Callable[[Json], bytes]:
    return _edit(lambda e: fn(e["attestation_report"]))


REFUSED: dict[str, tuple[Callable[[Json], bytes], str]] = {
    "bool for an integer": (_ar(lambda a: a.__setitem__("vmpl", True)), r"attestation_report\.vmpl must be an integer"),
    "float": (_ar(lambda a: a.__setitem__("guest_svn", 1.0)), r"guest_svn must be an integer, got float"),
    "negative": (_ar(lambda a: a.__setitem__("guest_svn", -1)), r"guest_svn must be an integer 0\.\.4294967295"),
    "2^64": (_ar(lambda a: a.__setitem__("policy", 2**64)), r"policy must be an integer, got float"),
    "byte 256": (_ar(lambda a: a["measurement"].__setitem__(3, 256)), r"measurement\[3\] must be an integer 0\.\.255"),
    "short array": (_ar(lambda a: a["chip_id"].pop()), r"chip_id must have exactly 64 elements, got 63"),
    "unknown member": (_ar(lambda a: a.__setitem__("extra", 1)), r"unknown field\(s\) 'extra'"),
    "missing member": (_ar(lambda a: a.pop("host_data")), r"attestation_report\.host_data is missing"),
    "version 6": (_ar(lambda a: a.__setitem__("version", 6)), r"version is not 2, 3, 4 or 5"),
    "fmc on Milan": (_ar(lambda a: a["launch_tcb"].__setitem__("fmc", 1)),
                     r"launch_tcb\.fmc is set, but CPUID family 0x19 uses the Milan/Genoa TCB layout"),
    "v3 cpuid null": (_ar(lambda a: a.__setitem__("cpuid_mod_id", None)), r"cpuid_mod_id must be an integer"),
    "v3 mitigation vector": (_ar(lambda a: a.__setitem__("current_mit_vector", 1)),
                             r"current_mit_vector must be null before report version 5"),
    "v4 mitigation vector 0": (_edit(lambda e: e["attestation_report"].update(version=4, launch_mit_vector=0)),
                               r"launch_mit_vector must be null before report version 5, got int"),
    "v2 cpuid 0": (_edit(lambda e: e["attestation_report"].update(version=2, cpuid_fam_id=0)),
                   r"cpuid_fam_id must be null before report version 3, got int"),
    "firmware member": (_ar(lambda a: a["current"].pop("minor")), r"current\.minor is missing"),
    "signature length": (_ar(lambda a: a["signature"]["r"].append(0)), r"signature\.r must have exactly 72"),
    "format rule (policy bit 17)": (_ar(lambda a: a.__setitem__("policy", 0)),
                                    r"re-encoded, is not a valid SNP report: .*bit 17"),
    "OTHER cert_type": (_edit(lambda e: e["cert_chain"][0].__setitem__("cert_type", {"OTHER": "zz"})),
                        r"cert_chain\[0\]\.cert_type\.OTHER must be a GUID string"),
    "lowercase cert_type": (_edit(lambda e: e["cert_chain"][0].__setitem__("cert_type", "vcek")),
                            r"cert_chain\[0\]\.cert_type must be one of"),
    "cert byte bool": (_edit(lambda e: e["cert_chain"][1]["data"].__setitem__(0, False)),
                       r"cert_chain\[1\]\.data\[0\] must be an integer 0\.\.255, got bool"),
    "evidence member": (_edit(lambda e: e.__setitem__("extra", None)), r"evidence has unknown field"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_declined_where_the_python_path_refuses(evidence: Json, case: str) -> None:
    build, pattern = REFUSED[case]
    assert_declined_with_same_error(build(evidence), pattern)


@pytest.mark.parametrize("edit", [
    lambda raw: raw.replace(b'"vmpl"', b'"vmpl":true,"vmpl"', 1),  # orjson keeps the last one
    lambda raw: raw.replace(b'"vmpl"', b'"\\u0076mpl"', 1),
    lambda raw: raw.replace(b'"runtime-data"', b'"runtime-data":{},"runtime-data"', 1),
    lambda raw: raw.replace(b'"nonce":"bm9uY2U"', b'"nonce":"\xc3\xa9"', 1),
    lambda raw: raw.replace(b'"tee-evidence"', b'"extra":"\\ud83d\\ude00","tee-evidence"', 1),
    lambda raw: raw.replace(b'"tee-evidence"', b'"extra":-1.5e3,"tee-evidence"', 1),
], ids=["duplicate", "escaped name", "duplicate runtime-data", "non-ASCII", "surrogate pair", "float"])
def test_declined_json_the_python_path_accepts(evidence: Json, edit: Callable[[bytes], bytes]) -> None:
    raw = edit(message(evidence))
    assert decode_message(raw) is None
    assert fast_path(raw)[1] == python_path(raw)[1]


def test_declined_json_the_python_path_refuses(evidence: Json) -> None:
    raw = message(evidence)
    for cut in range(0, len(raw), 97):
        assert decode_message(raw[:cut]) is None
    assert_declined_with_same_error(raw[:-1], "the attestation message is not JSON")
    assert_declined_with_same_error(raw + b"x", "the attestation message is not JSON")
    assert_declined_with_same_error(b"[]", "the attestation message must be a JSON object")


def test_message_errors_after_a_fast_decode_are_the_python_paths(evidence: Json) -> None:
    """The scanner decodes the evidence; the message's own members are still checked by `parse`."""
    for raw, pattern in ((message(evidence, nonce="x" * 300), "runtime-data must be"),
                         (message(evidence).replace(b'"kty":"EC"', b'"kty":"XX"', 1), "kty"),
                         (message(evidence).replace(b'"additional_evidence":""', b'"additional_evidence":7', 1),
                          "additional_evidence must be a string"),
                         (message(evidence, init_data="not toml ="), "init-data is not valid TOML")):
        assert decode_message(raw) is not None
        slow = refusal(lambda: AttestationMessage.from_bytes(raw))  # noqa: B023 (called at once)
        assert re.search(pattern, slow[1]), slow
        assert refusal(lambda: AttestationMessage.from_bytes(raw, decode_message)) == slow  # noqa: B023


# --- the broker uses it -------------------------------------------------------------------------------------

def test_attestor_verifies_through_the_fast_path(pki: SyntheticAmd, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole verification in process, with report_from_coco made to fail: the fast path did the decoding."""
    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    registry = VerifierRegistry.from_config(
        ["snp", "sample"], {"snp": {"offline": True, "trust_roots": [str(tmp_path / "ark.pem")],
                                    "cache_dir": str(tmp_path / "kds")}}, VerifierContext(state_dir=tmp_path))
    key = generate_tee_key("EC-P256")
    nonce = "bm9uY2UtZmFzdA"
    raw = orjson.dumps(attestation(nonce, key, "snp", SnpGuest(pki)))

    def no_python_path(_: object) -> CocoSnpEvidence:
        raise AssertionError("report_from_coco called: the fast path was not taken")

    monkeypatch.setattr(verifier, "report_from_coco", no_python_path)
    with ThreadPoolExecutor(1) as pool:
        attestor = Attestor(registry, pool)
        assert attestor._decoder("sample") is None and attestor._decoder("no-such-tee") is None
        msg, appraisals = asyncio.run(attestor.verify("snp", raw, nonce, dt.datetime.now(dt.UTC)))
        asyncio.run(attestor.close())
    assert isinstance(msg.primary_evidence, CocoSnpEvidence)
    assert appraisals[0].tee == "snp"
    assert appraisals[0].report_data == primary_runtime_digest(nonce, key.jwk, "").hex() + "00" * 16


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: SyntheticAmd) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("broker")
    (tmp / "ark.pem").write_bytes(pki.ark_pem)
    config = f'[verifiers.snp]\ntrust_roots = ["{tmp / "ark.pem"}"]\noffline = true\ncache_dir = "{tmp / "kds"}"\n'
    with run_broker(tmp, config) as b:
        yield b


def test_attest_over_http_refuses_as_before(broker: Broker, pki: SyntheticAmd) -> None:
    """/attest answers a broken body with the Python path's error, and a good one with a token."""
    guest = SnpGuest(pki)

    async def post(edit: Callable[[Json], bytes] | None) -> tuple[int, Json, bytes]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            body = attestation(nonce, generate_tee_key("EC-P256"), "snp", guest)
            raw = orjson.dumps(body) if edit is None else edit(body)
            async with http.post(f"{broker.url}/kbs/v0/attest", data=raw,
                                 headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json(content_type=None), raw

    def evidence_edit(fn: Callable[[Json], None]) -> Callable[[Json], bytes]:
        def apply(body: Json) -> bytes:
            fn(body["tee-evidence"]["primary_evidence"]["attestation_report"])
            return orjson.dumps(body)
        return apply

    for accepted in (None, lambda body: orjson.dumps(body).replace(b'"vmpl":0', b'"vmpl":1,"vmpl":0', 1)):
        status, answer, raw = asyncio.run(post(accepted))  # the second declined, then accepted by Python
        assert status == 200 and "token" in answer, answer
    assert decode_message(raw) is None
    for edit in (evidence_edit(lambda a: a.__setitem__("vmpl", True)),
                 evidence_edit(lambda a: a["report_data"].pop()),
                 evidence_edit(lambda a: a.__setitem__("policy", 0)),
                 lambda body: orjson.dumps(body)[:-2]):
        status, answer, raw = asyncio.run(post(edit))
        _, message_text, check = refusal(lambda: python_path(raw))  # noqa: B023 (called at once)
        assert status in (400, 401) and message_text in answer["detail"] and check in answer["detail"], \
            (answer, message_text)
