"""Differential fuzz of the one-pass SNP message decoder (native/snp_coco_json.c) against the Python path.

Messages are built from random, format-valid reports of every version (2-5) and TCB layout
(Milan/Genoa, Turin) with random certificates, through `coco.report_to_coco` as a guest sends them;
then mutated as JSON (members dropped, added, duplicated; bools, floats, negative and huge
integers, nulls, strings, wrong lengths; escapes, non-ASCII, whitespace, nesting; bytes flipped and
cut).  For each: when the fast path decodes, the Python path must accept the same message (JSON,
shape, report_from_coco) and give the same nonce, TEE key, additional evidence, init-data, report
and certificates, and the same error where `AttestationMessage.parse` refuses it; whenever the
Python path refuses the JSON or the evidence, the fast path must have declined.  Unmutated messages
must take the fast path.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs import jsondoc
from kbs.errors import KbsError
from kbs.evidence.composite import AttestationMessage
from kbs.evidence.snp.coco import CERT_TYPE_GUIDS, CocoSnpEvidence, report_from_coco, report_to_coco
from kbs.evidence.snp.coco_fast import decode_message
from kbs.keys.jwe import generate_tee_key

REPORT_SIZE = 1184
JWK = generate_tee_key("EC-P256").jwk
TCB_OFFSETS = (0x38, 0x180, 0x1E0, 0x1F0)
INIT_DATA = {"format": "toml", "body": 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"a.toml" = "b = 1"\n'}


@st.composite
def reports(draw: st.DrawFn) -> tuple[bytes, str]:
    """A report kbs_snp_parse accepts and the JSON form carries exactly, and the family for report_to_coco."""
    version = draw(st.integers(2, 5))
    family = draw(st.sampled_from(("Milan", "Genoa", "Turin", "Venice")))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    r = bytearray(rnd.randbytes(REPORT_SIZE))
    r[0:4] = version.to_bytes(4, "little")
    policy = rnd.getrandbits(26) | 1 << 17
    r[0x08:0x10] = policy.to_bytes(8, "little")
    r[0x34:0x38] = (1).to_bytes(4, "little")  # ECDSA P-384
    r[0x48:0x4C] = (rnd.getrandbits(2) | rnd.choice((0, 1)) << 2).to_bytes(4, "little")  # VCEK or VLEK
    r[0x4C:0x50] = bytes(4)
    if version >= 3:
        r[0x188] = {"Milan": 0x19, "Genoa": 0x19, "Turin": 0x1A, "Venice": 0x1B}[family]
    else:
        r[0x188:0x18B] = bytes(3)
    turin = family in ("Turin", "Venice")
    r[0x18B:0x1A0] = bytes(0x1A0 - 0x18B)
    r[0x1EB] = r[0x1EF] = 0
    if version < 5:
        r[0x1F8:0x208] = bytes(16)
    r[0x208:0x2A0] = bytes(0x2A0 - 0x208)
    r[0x2D0:0x2E8] = bytes(24)  # r and s: 48-byte scalars in 72-byte fields
    r[0x318:0x330] = bytes(24)
    r[0x330:] = bytes(REPORT_SIZE - 0x330)
    for off in TCB_OFFSETS:
        if turin:
            r[off + 4:off + 7] = bytes(3)
        else:
            r[off + 2:off + 6] = bytes(4)
    return bytes(r), family


CERT_KINDS = (*CERT_TYPE_GUIDS, "e1a5d8f2-6f1b-4e8a-9b6a-0c7a4d6f2b11")  # the last: OTHER
certificates = st.lists(st.tuples(st.sampled_from(CERT_KINDS), st.binary(max_size=300)), max_size=5)


@st.composite
def messages(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """(message, whether the fast path takes it: not with an {"OTHER": guid} certificate type)."""
    report, family = draw(reports())
    certs = draw(certificates)
    evidence = report_to_coco(report, certs, family=family)
    if evidence["cert_chain"] is None and draw(st.booleans()):
        del evidence["cert_chain"]  # serde's Option may be absent
    body: dict[str, Any] = {"runtime-data": {"nonce": draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-_",
                                                                      min_size=1, max_size=44)),
                                             "tee-pubkey": dict(JWK)},
                            "tee-evidence": {"primary_evidence": evidence}}
    init = draw(st.sampled_from(["absent", "null", "toml"]))
    if init != "absent":
        body["init-data"] = INIT_DATA if init == "toml" else None
    additional = draw(st.sampled_from(["absent", "", '{"nvgpu":[]}']))
    if additional != "absent":
        body["tee-evidence"]["additional_evidence"] = additional
    return body, all(kind in CERT_TYPE_GUIDS for kind, _ in certs)


# ---- mutations of the decoded JSON ------------------------------------------------------------------

BAD_VALUES: tuple[Any, ...] = (True, False, None, 1.0, 0.5, -1, 256, 2**32, 2**64 - 1, 2**64, 2**70, "7", "",
                               [], {}, [0], [True], [256], [-1], [1.5], {"OTHER": "x"}, "VCEK", "vcek",
                               {"OTHER": "63da758d-e664-4564-adc5-f4b93be8accd"}, 1e400)
# Values a rule turns on: versions, CPUID families either side of Turin, byte and word edges, null.
EDGE_VALUES: tuple[Any, ...] = (None, 0, 1, 2, 3, 4, 5, 6, 0x19, 0x1A, 0x1B, 255, 256, 2**32 - 1, 2**32, 2**64 - 1,
                                True, False)
# Members whose value decides other members' rules: the layout, the version's nullable fields, the chain.
RULE_MEMBERS = frozenset({"version", "cpuid_fam_id", "cpuid_mod_id", "cpuid_step", "launch_mit_vector",
                          "current_mit_vector", "fmc", "cert_chain", "cert_type"})
RULE_VALUES: tuple[Any, ...] = (None, 0, 2, 3, 4, 5, 0x19, 0x1A, True, "VCEK", [])
MEMBER_NAMES = ("zz", "fmc", "cpuid_step", "launch_mit_vector", "cert_chain", "OTHER", "extra", "r", "major")


def _containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a dict member or list element, depth first."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*path, key))
        out.extend(_containers(child, (*path, key)))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated_document(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = _containers(doc)
        # Mostly the evidence's members (each carries a rule), some byte-array elements, some of the rest.
        members = [p for p in paths if not isinstance(p[-1], int) and "primary_evidence" in p]
        rules = [p for p in members if p[-1] in RULE_MEMBERS]
        pool = draw(st.sampled_from(["rules", "rules", "members", "any"]))
        if pool == "rules" and rules:
            path = draw(st.sampled_from(rules))
            parent = _parent(doc, path)
            if draw(st.booleans()):
                parent[path[-1]] = draw(st.sampled_from(RULE_VALUES))
                continue
        elif pool != "any" and members:
            path = draw(st.sampled_from(members))
        else:
            path = draw(st.sampled_from(paths)) if paths else ()
        if not path:
            continue
        parent, key = _parent(doc, path), path[-1]
        op = draw(st.sampled_from(["edge", "edge", "bad", "drop", "add"]))
        if op == "edge":
            parent[key] = draw(st.sampled_from(EDGE_VALUES))
        elif op == "bad":
            parent[key] = draw(st.sampled_from(BAD_VALUES))
        elif op == "drop":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(MEMBER_NAMES))] = draw(st.sampled_from((0, None, [], {}, 0x1A)))
        else:
            parent.insert(key, draw(st.integers(0, 255)))
    return doc


# ---- serialisation with the text-level freedoms JSON allows -----------------------------------------

def _string(text: str, rnd: random.Random, escape: float) -> str:
    out = []
    for ch in text:
        if rnd.random() < escape:
            out.append(rnd.choice([f"\\u{ord(ch):04x}", f"\\u{ord(ch):04X}"]) if ch != "/" else "\\/")
        else:
            out.append(json.dumps(ch)[1:-1])
    return '"' + "".join(out) + '"'


def serialise(value: Any, rnd: random.Random, space: float, escape: float, duplicate: float) -> str:
    def ws() -> str:
        return rnd.choice([" ", "\n", "\t", "\r", "  "]) if rnd.random() < space else ""
    if isinstance(value, dict):
        members = []
        for k, v in value.items():
            member = f"{ws()}{_string(k, rnd, escape)}{ws()}:{ws()}{serialise(v, rnd, space, escape, duplicate)}"
            members.append(member)
            if rnd.random() < duplicate:
                members.append(member if rnd.random() < 0.5 else
                               f"{_string(k, rnd, 0)}:{serialise(rnd.choice(BAD_VALUES), rnd, 0, 0, 0)}")
        return "{" + ",".join(members) + ws() + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws() + serialise(v, rnd, space, escape, duplicate) for v in value) + ws() + "]"
    if isinstance(value, str):
        return _string(value, rnd, escape)
    return json.dumps(value)  # ints, floats (inf for 1e400: the Python path refuses it), bools, null


@st.composite
def message_bytes(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(message, whether it is a valid message as built that the fast path must take)."""
    doc, eligible = draw(messages())
    pristine = draw(st.integers(0, 3)) == 0
    if not pristine:
        doc = draw(mutated_document(doc))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    space = draw(st.sampled_from((0.0, 0.0, 0.05, 0.5)))
    escape = 0.0 if pristine else draw(st.sampled_from((0.0, 0.0, 0.0, 0.001, 0.01)))
    duplicate = 0.0 if pristine else draw(st.sampled_from((0.0, 0.0, 0.0, 0.002, 0.02)))
    text = serialise(doc, rnd, space, escape, duplicate)
    if not pristine and draw(st.integers(0, 3)) == 0:
        extra = draw(st.sampled_from(['"zz":' + "[" * 40 + "]" * 40, '"zz":' + "[" * 31 + "]" * 31, '"é":1',
                                      '"zz":"\\ud83d\\ude00"', '"zz":"\\ud800"', '"zz":"\\udc00"',
                                      '"zz":"\\ud800x"', '"zz":-0.5', '"zz":"\\u00e9"', '"zz":"\\uD7FF"']))
        text = "{" + extra + "," + text[1:] if text.startswith("{") and text != "{}" else text
    raw = text.encode()
    if not pristine and draw(st.integers(0, 4)) == 0:
        raw = draw(mutated([raw], max_edits=3))
    return raw, pristine and eligible


# ---- the two paths ------------------------------------------------------------------------------------

def _outcome(fn: Callable[[], AttestationMessage]) -> tuple[Any, ...]:
    try:
        m = fn()
    except KbsError as exc:
        return ("refused", type(exc), str(exc), exc.check)
    return ("accepted", m.nonce, m.tee_pubkey, m.additional_evidence, m.init_data)


def check(raw: bytes, pristine: bool) -> None:
    body = decode_message(raw)
    if pristine:
        assert body is not None, "a valid message as a guest sends it did not take the fast path"
    if body is None:
        event("fast path declined")
        return
    event("fast path decoded")
    fast = body["tee-evidence"]["primary_evidence"]
    assert isinstance(fast, CocoSnpEvidence) and fast.parsed is not None
    # The Python path accepts the JSON and the evidence, with the same result ...
    slow_body = jsondoc.loads(raw, what="the attestation message", check="attestation.format")
    slow = report_from_coco(slow_body["tee-evidence"]["primary_evidence"])
    assert fast.report == slow.report
    assert fast.certificates == slow.certificates
    assert slow.parsed is not None and fast.parsed.raw == slow.parsed.raw
    # ... and the message's other members give the same message, or the same refusal.
    assert _outcome(lambda: AttestationMessage.parse(body)) == _outcome(lambda: AttestationMessage.from_bytes(raw))


@given(message_bytes())
def test_fast_path_agrees_with_the_python_path(case: tuple[bytes, bool]) -> None:
    check(*case)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_declined(data: bytes) -> None:
    assert decode_message(data) is None
