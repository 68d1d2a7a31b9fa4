"""Intel's signed JSON collateral for TDX: TCB info v3 (id TDX) and QE identity v2 (id TD_QE), and the
check of a whole collateral set against a PCK chain (reference/tdx.md §3).

A PCS response body is ``{"tcbInfo":{…},"signature":"<128 hex>"}`` (or ``enclaveIdentity``).  The
signature (ECDSA P-256/SHA-256 by the Intel SGX TCB Signing key, r ‖ s in hex) covers the EXACT bytes of
the member's value as they appear in the body.  So the body is framed first, without a JSON library: a
string-aware scan finds each top-level member's value span (refusing duplicate members, unknown members,
nesting deeper than 32 and trailing bytes); the signature is verified over that span, and only then is
the span parsed (as UTF-8 JSON, duplicate keys refused) and read strictly: ids, versions, hex lengths,
dates, required fields, value ranges and statuses as Intel QVL reads them.  TCB levels are sorted the way
QVL sorts them (descending by SGX components, then PCESVN, then TDX components; module and QE levels by
ISVSVN) and duplicates are refused.  Nothing is re-encoded.

Verified documents are cached by (member, body bytes, signer's key) in a byte-bounded LRU, so a warm
verification costs no JSON parsing and no signature check; the signing chain (the walker's cache) and
the time checks (issueDate <= t < nextUpdate, certificates, CRLs) run on every call.  A whole set
verified for a PCK chain (`verify_collateral`) is remembered too, by the bytes of both, with the window
in which every certificate, CRL and document of it is valid: a warm quote costs one lookup and a time
comparison, and a time outside the window runs every check again, so a refusal names what expired.

Labels: `collateral.tcb_info` / `collateral.qe_identity` (malformed), `collateral.signature`,
`collateral.issuer_chain` (missing), `collateral.validity` (outside issueDate..nextUpdate), and those
of `certs` (chains, CRLs).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kbs.cache import ByteBoundedCache
from kbs.errors import ChainInvalid, CollateralUnavailable, MalformedEvidence
from kbs.trust.chain import VerifiedChain
from kbs.trust.intel.certs import (
    PckChain,
    check_pck_crl,
    check_root_ca_crl,
    verify_signing_chain,
)
from kbs.trust.revocation import Crl
from kbs.trust.signature import ECDSA_SHA256, verify_signature
from kbs.trust.x509 import Certificate

MAX_BODY = 1 << 20  # PCS bodies are 1-20 KB
MAX_DEPTH = 32  # as Intel QVL's MAX_TCB_INFO_JSON_DEPTH
SIGNATURE_HEX = 128

TcbStatus = Literal["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked"]
UP_TO_DATE: TcbStatus = "UpToDate"
SW_HARDENING_NEEDED: TcbStatus = "SWHardeningNeeded"
CONFIGURATION_NEEDED: TcbStatus = "ConfigurationNeeded"
CONFIGURATION_AND_SW_HARDENING_NEEDED: TcbStatus = "ConfigurationAndSWHardeningNeeded"
OUT_OF_DATE: TcbStatus = "OutOfDate"
OUT_OF_DATE_CONFIGURATION_NEEDED: TcbStatus = "OutOfDateConfigurationNeeded"
REVOKED: TcbStatus = "Revoked"
PLATFORM_STATUSES: tuple[TcbStatus, ...] = (UP_TO_DATE, SW_HARDENING_NEEDED, CONFIGURATION_NEEDED,
                                            CONFIGURATION_AND_SW_HARDENING_NEEDED, OUT_OF_DATE,
                                            OUT_OF_DATE_CONFIGURATION_NEEDED, REVOKED)
COMPONENT_STATUSES: tuple[TcbStatus, ...] = (UP_TO_DATE, OUT_OF_DATE, REVOKED)  # TDX module and QE identity levels

TCB_INFO_MEMBER = "tcbInfo"
QE_IDENTITY_MEMBER = "enclaveIdentity"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_HEX = re.compile(r"[0-9A-Fa-f]*")


# -- the documents -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlatformTcbLevel:
    """One `tcbLevels` entry of TCB info."""

    sgx_components: tuple[int, ...]  # 16 SVNs
    pcesvn: int
    tdx_components: tuple[int, ...]  # 16 SVNs
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleTcbLevel:
    """One `tcbLevels` entry of a TDX module identity (or a QE identity)."""

    isvsvn: int
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    """`tdxModule`: what MRSIGNERSEAM and SEAMATTRIBUTES must be without a module identity."""

    mrsigner: bytes  # 48
    attributes: bytes  # 8
    attributes_mask: bytes  # 8


@dataclass(frozen=True)
class TdxModuleIdentity:
    """One `tdxModuleIdentities` entry (`TDX_01`, `TDX_03`, …)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...]  # descending ISVSVN


@dataclass(frozen=True)
class TcbInfo:
    """A TDX TCB info document (version 3), as signed."""

    id: str  # "TDX"
    version: int  # 3
    issue_date: datetime
    next_update: datetime
    fmspc: bytes  # 6
    pce_id: bytes  # 2
    tcb_type: int  # 0
    tcb_evaluation_data_number: int
    tdx_module: TdxModule
    tdx_module_identities: tuple[TdxModuleIdentity, ...]  # () in older documents
    tcb_levels: tuple[PlatformTcbLevel, ...]  # sorted as Intel QVL sorts them: highest first

    def module_identity(self, version: int) -> TdxModuleIdentity | None:
        """The identity `TDX_%02X` of a module major version (ids compared upper-cased, as QVL does)."""
        wanted = f"TDX_{version:02X}"
        return next((m for m in self.tdx_module_identities if m.id.upper() == wanted), None)


@dataclass(frozen=True)
class QeIdentity:
    """A TD QE identity document (`enclaveIdentity`, version 2), as signed."""

    id: str  # "TD_QE"
    version: int  # 2
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int  # the 4 bytes as a little-endian u32, as the QE report holds MISCSELECT
    miscselect_mask: int
    attributes: bytes  # 16
    attributes_mask: bytes  # 16
    mrsigner: bytes  # 32
    isvprodid: int
    tcb_levels: tuple[ModuleTcbLevel, ...]  # descending (ISVSVN, tcbDate)


# -- framing: the exact bytes of each top-level member's value ----------------------------------------

_STRUCTURE = re.compile(rb'["{}\[\]]')
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\.)*"', re.S)
_SCALAR = re.compile(rb"[^\s,{}\[\]\"]+")
_SPACE = re.compile(rb"[ \t\r\n]*")


def _skip_space(body: bytes, pos: int) -> int:
    match = _SPACE.match(body, pos)
    assert match is not None
    return match.end()


def _value_end(body: bytes, pos: int, what: str, check: str) -> int:
    """The end of the JSON value starting at `pos` (string-aware bracket matching, bounded depth).
    The value's own syntax is checked later by the JSON parser; this only has to find where it ends."""
    first = body[pos:pos + 1]
    if first == b'"':
        match = _STRING.match(body, pos)
        if match is None:
            raise MalformedEvidence(f"{what} has an unterminated string", check=check)
        return match.end()
    if first not in (b"{", b"["):
        match = _SCALAR.match(body, pos)
        if match is None:
            raise MalformedEvidence(f"{what} has no value at byte {pos}", check=check)
        return match.end()
    stack = [first]
    index = pos + 1
    while stack:
        found = _STRUCTURE.search(body, index)
        if found is None:
            raise MalformedEvidence(f"{what} ends inside a value", check=check)
        token = found.group()
        if token == b'"':
            match = _STRING.match(body, found.start())
            if match is None:
                raise MalformedEvidence(f"{what} has an unterminated string", check=check)
            index = match.end()
            continue
        if token in (b"{", b"["):
            stack.append(token)
            if len(stack) > MAX_DEPTH:
                raise MalformedEvidence(f"{what} is nested deeper than {MAX_DEPTH} levels", check=check)
        elif (stack.pop(), token) not in ((b"{", b"}"), (b"[", b"]")):
            raise MalformedEvidence(f"{what} has mismatched brackets at byte {found.start()}", check=check)
        index = found.end()
    return index


def frame(body: bytes, *, what: str, check: str) -> dict[str, bytes]:
    """Each member of the top-level JSON object with the exact bytes of its value.  Refuses duplicate
    members and anything after the object.  The values are not parsed."""
    if len(body) > MAX_BODY:
        raise MalformedEvidence(f"{what} is {len(body)} bytes, more than the {MAX_BODY} allowed", check=check)
    pos = _skip_space(body, 0)
    if body[pos:pos + 1] != b"{":
        raise MalformedEvidence(f"{what} is not a JSON object", check=check)
    members: dict[str, bytes] = {}
    pos = _skip_space(body, pos + 1)
    if body[pos:pos + 1] == b"}":
        pos += 1
    else:
        while True:
            match = _STRING.match(body, pos)
            if match is None:
                raise MalformedEvidence(f"{what} has no member name at byte {pos}", check=check)
            try:
                name = json.loads(match.group().decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise MalformedEvidence(f"{what} has a malformed member name: {exc}", check=check) from exc
            pos = _skip_space(body, match.end())
            if body[pos:pos + 1] != b":":
                raise MalformedEvidence(f"{what}: no ':' after member {name!r}", check=check)
            start = _skip_space(body, pos + 1)
            end = _value_end(body, start, what, check)
            if name in members:
                raise MalformedEvidence(f"{what} has member {name!r} twice", check=check)
            members[name] = body[start:end]
            pos = _skip_space(body, end)
            separator = body[pos:pos + 1]
            pos += 1
            if separator == b"}":
                break
            if separator != b",":
                raise MalformedEvidence(f"{what}: expected ',' or '}}' at byte {pos - 1}", check=check)
            pos = _skip_space(body, pos)
    if _skip_space(body, pos) != len(body):
        raise MalformedEvidence(f"{what} has bytes after its JSON object", check=check)
    return members


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"member {key!r} appears twice")
        out[key] = value
    return out


def _json(raw: bytes, what: str, check: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedEvidence(f"{what} is not valid JSON: {exc}", check=check) from exc


@dataclass(frozen=True)
class Framed:
    """A signed collateral body: the exact signed bytes of its document and the raw r ‖ s signature."""

    signed: bytes
    signature: bytes


def _pcs_layout(member: str) -> re.Pattern[bytes]:
    space = rb"[ \t\r\n]*"
    return re.compile(space + rb'\{' + space + b'"' + member.encode() + b'"' + space + b":" + space + rb"(\{.*\})"
                      + space + b"," + space + b'"signature"' + space + b":" + space + rb'("[^"\\]*")' + space
                      + rb"\}" + space, re.S)


_LAYOUTS = {TCB_INFO_MEMBER: _pcs_layout(TCB_INFO_MEMBER), QE_IDENTITY_MEMBER: _pcs_layout(QE_IDENTITY_MEMBER)}


def frame_signed(body: bytes, member: str, *, what: str, check: str) -> Framed:
    """`{"<member>":{…},"signature":"<128 hex>"}`, exactly those two members.

    PCS's layout (the document, then the signature, last) is framed from both ends, so the document's
    bytes are found whatever they hold: a corrupted document fails its signature, not its framing.  Any
    other member order goes through the string-aware scan.  Either way the document's bytes must then
    parse as one JSON object (`parse_tcb_info`), so they are exactly one member's value."""
    if len(body) > MAX_BODY:
        raise MalformedEvidence(f"{what} is {len(body)} bytes, more than the {MAX_BODY} allowed", check=check)
    layout = _LAYOUTS.get(member)
    match = layout.fullmatch(body) if layout is not None else None
    if match is not None:
        signed, signature_json = match.group(1), match.group(2)
    else:
        members = frame(body, what=what, check=check)
        if set(members) != {member, "signature"}:
            raise MalformedEvidence(f"{what} has members {sorted(members)}, wanted exactly {member!r} and "
                                    "'signature'", check=check)
        signed, signature_json = members[member], members["signature"]
        if not signed.startswith(b"{"):
            raise MalformedEvidence(f"{what}: {member!r} is not a JSON object", check=check)
    signature = _json(signature_json, f"{what} signature", check)
    if not isinstance(signature, str) or len(signature) != SIGNATURE_HEX or not _HEX.fullmatch(signature):
        raise MalformedEvidence(f"{what} signature is not {SIGNATURE_HEX} hex digits", check=check)
    return Framed(signed, bytes.fromhex(signature))


# -- strict reading of the documents ------------------------------------------------------------------

class _Reader:
    """Reads one JSON object's members strictly, naming the path in every error."""

    def __init__(self, value: Any, path: str, what: str, check: str) -> None:
        if not isinstance(value, dict):
            raise MalformedEvidence(f"{what}: {path} is not an object", check=check)
        self.value: dict[str, Any] = value
        self.path = path
        self.what = what
        self.check = check

    def fail(self, name: str, message: str) -> MalformedEvidence:
        return MalformedEvidence(f"{self.what}: {self.path}.{name} {message}", check=self.check)

    def get(self, name: str) -> Any:
        if name not in self.value:
            raise MalformedEvidence(f"{self.what}: {self.path} lacks {name!r}", check=self.check)
        return self.value[name]

    def uint(self, name: str, highest: int = 0xFFFFFFFF) -> int:
        value = self.get(name)
        if type(value) is not int or not 0 <= value <= highest:
            raise self.fail(name, f"is {value!r}, wanted an integer 0..{highest}")
        return value

    def string(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise self.fail(name, f"is {value!r}, wanted a string")
        return value

    def hex(self, name: str, size: int) -> bytes:
        value = self.string(name)
        if len(value) != 2 * size or not _HEX.fullmatch(value):
            raise self.fail(name, f"is {value!r}, wanted {2 * size} hex digits")
        return bytes.fromhex(value)

    def date(self, name: str) -> datetime:
        value = self.string(name)
        if not _DATE.fullmatch(value):
            raise self.fail(name, f"is {value!r}, wanted YYYY-MM-DDTHH:MM:SSZ")
        try:
            return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError as exc:
            raise self.fail(name, f"is not a date: {exc}") from exc

    def array(self, name: str, *, size: int | None = None) -> list[Any]:
        value = self.get(name)
        if not isinstance(value, list) or not value:
            raise self.fail(name, "is not a non-empty array")
        if size is not None and len(value) != size:
            raise self.fail(name, f"has {len(value)} entries, wanted {size}")
        return value

    def optional_strings(self, name: str) -> tuple[str, ...]:
        if name not in self.value:
            return ()
        value = self.value[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, "is not an array of strings")
        return tuple(value)

    def optional_string(self, name: str) -> None:
        if name in self.value and not isinstance(self.value[name], str):
            raise self.fail(name, "is not a string")

    def status(self, name: str, allowed: Sequence[TcbStatus]) -> TcbStatus:
        value = self.string(name)
        for status in allowed:
            if value == status:
                return status
        raise self.fail(name, f"is {value!r}, wanted one of {', '.join(allowed)}")

    def child(self, name: str) -> _Reader:
        return _Reader(self.get(name), f"{self.path}.{name}", self.what, self.check)

    def item(self, items: list[Any], index: int, name: str) -> _Reader:
        return _Reader(items[index], f"{self.path}.{name}[{index}]", self.what, self.check)


T = TypeVar("T")


def _sorted_unique(levels: list[T], key: Any, what: str, check: str, where: str) -> tuple[T, ...]:
    ordered = sorted(levels, key=key, reverse=True)
    for higher, lower in itertools.pairwise(ordered):
        if key(higher) == key(lower):
            raise MalformedEvidence(f"{what}: {where} has two identical TCB levels", check=check)
    return tuple(ordered)


def _components(level: _Reader, name: str) -> tuple[int, ...]:
    items = level.array(name, size=16)
    out = []
    for index in range(16):
        component = level.item(items, index, name)
        out.append(component.uint("svn", 255))
        component.optional_string("category")
        component.optional_string("type")
    return tuple(out)


def _module_levels(parent: _Reader, statuses: Sequence[TcbStatus],
                   highest: int) -> list[ModuleTcbLevel]:
    items = parent.array("tcbLevels")
    out = []
    for index in range(len(items)):
        level = parent.item(items, index, "tcbLevels")
        tcb = level.child("tcb")
        out.append(ModuleTcbLevel(isvsvn=tcb.uint("isvsvn", highest), tcb_date=level.date("tcbDate"),
                                  status=level.status("tcbStatus", statuses),
                                  advisory_ids=level.optional_strings("advisoryIDs")))
    return out


def parse_tcb_info(signed: bytes) -> TcbInfo:
    """The signed `tcbInfo` value (exact bytes), read strictly.  Does not verify anything."""
    what, check = "TCB info", "collateral.tcb_info"
    doc = _Reader(_json(signed, what, check), TCB_INFO_MEMBER, what, check)
    if doc.string("id") != "TDX":
        raise doc.fail("id", f"is {doc.value['id']!r}, wanted 'TDX' (TDX TCB info)")
    if doc.uint("version") != 3:
        raise doc.fail("version", f"is {doc.value['version']!r}, wanted 3")
    tcb_type = doc.get("tcbType")
    if type(tcb_type) is not int or tcb_type != 0:
        raise doc.fail("tcbType", f"is {tcb_type!r}, wanted 0 (the only type Intel QVL supports)")
    module = doc.child("tdxModule")
    identities: list[TdxModuleIdentity] = []
    if "tdxModuleIdentities" in doc.value:
        items = doc.array("tdxModuleIdentities")
        for index in range(len(items)):
            entry = doc.item(items, index, "tdxModuleIdentities")
            module_levels = _module_levels(entry, COMPONENT_STATUSES, 0xFFFF)
            identities.append(TdxModuleIdentity(
                id=entry.string("id"), mrsigner=entry.hex("mrsigner", 48), attributes=entry.hex("attributes", 8),
                attributes_mask=entry.hex("attributesMask", 8),
                tcb_levels=_sorted_unique(module_levels, lambda lv: lv.isvsvn, what, check,
                                          f"tdxModuleIdentities[{index}].tcbLevels")))
        ids = [m.id.upper() for m in identities]
        if len(set(ids)) != len(ids):
            raise doc.fail("tdxModuleIdentities", "names one module identity twice")
    items = doc.array("tcbLevels")
    levels = []
    for index in range(len(items)):
        level = doc.item(items, index, "tcbLevels")
        tcb = level.child("tcb")
        levels.append(PlatformTcbLevel(
            sgx_components=_components(tcb, "sgxtcbcomponents"), pcesvn=tcb.uint("pcesvn", 0xFFFF),
            tdx_components=_components(tcb, "tdxtcbcomponents"), tcb_date=level.date("tcbDate"),
            status=level.status("tcbStatus", PLATFORM_STATUSES), advisory_ids=level.optional_strings("advisoryIDs")))
    return TcbInfo(
        id="TDX", version=3, issue_date=doc.date("issueDate"), next_update=doc.date("nextUpdate"),
        fmspc=doc.hex("fmspc", 6), pce_id=doc.hex("pceId", 2), tcb_type=0,
        tcb_evaluation_data_number=doc.uint("tcbEvaluationDataNumber"),
        tdx_module=TdxModule(module.hex("mrsigner", 48), module.hex("attributes", 8), module.hex("attributesMask", 8)),
        tdx_module_identities=tuple(identities),
        tcb_levels=_sorted_unique(levels, lambda lv: (lv.sgx_components, lv.pcesvn, lv.tdx_components), what, check,
                                  "tcbLevels"))


def parse_qe_identity(signed: bytes) -> QeIdentity:
    """The signed `enclaveIdentity` value (exact bytes), read strictly.  Does not verify anything."""
    what, check = "QE identity", "collateral.qe_identity"
    doc = _Reader(_json(signed, what, check), QE_IDENTITY_MEMBER, what, check)
    if doc.string("id") != "TD_QE":
        raise doc.fail("id", f"is {doc.value['id']!r}, wanted 'TD_QE' (the TD quoting enclave)")
    if doc.uint("version") != 2:
        raise doc.fail("version", f"is {doc.value['version']!r}, wanted 2")
    levels = _module_levels(doc, COMPONENT_STATUSES, 0xFFFF)
    return QeIdentity(
        id="TD_QE", version=2, issue_date=doc.date("issueDate"), next_update=doc.date("nextUpdate"),
        tcb_evaluation_data_number=doc.uint("tcbEvaluationDataNumber"),
        miscselect=int.from_bytes(doc.hex("miscselect", 4), "little"),
        miscselect_mask=int.from_bytes(doc.hex("miscselectMask", 4), "little"),
        attributes=doc.hex("attributes", 16), attributes_mask=doc.hex("attributesMask", 16),
        mrsigner=doc.hex("mrsigner", 32), isvprodid=doc.uint("isvprodid", 0xFFFF),
        tcb_levels=_sorted_unique(levels, lambda lv: (lv.isvsvn, lv.tcb_date), what, check, "tcbLevels"))


# -- verification -------------------------------------------------------------------------------------

# A parsed document costs about 12x its JSON in memory (dataclasses, tuples, datetimes); charged so.
VERIFIED_CACHE_BYTES = 8 * 1024 * 1024
_CacheKey = tuple[str, bytes, bytes]
_verified: ByteBoundedCache[_CacheKey, tuple[int, TcbInfo | QeIdentity]] = ByteBoundedCache(
    VERIFIED_CACHE_BYTES, lambda entry: entry[0])


def configure_collateral_cache(max_bytes: int) -> None:
    """Replace the verified-collateral cache with an empty one of this budget (0 disables it)."""
    global _verified
    _verified = ByteBoundedCache(max_bytes, lambda entry: entry[0])


_Parser = Callable[[bytes], TcbInfo | QeIdentity]
_KINDS: dict[str, tuple[str, str, _Parser]] = {
    TCB_INFO_MEMBER: ("TCB info", "collateral.tcb_info", parse_tcb_info),
    QE_IDENTITY_MEMBER: ("QE identity", "collateral.qe_identity", parse_qe_identity),
}


def _verified_document(member: str, body: bytes, signer: Certificate) -> TcbInfo | QeIdentity:
    """Frame, verify the signature over the exact bytes, then parse: cached by (member, body, signer key)."""
    what, check, parse = _KINDS[member]
    key = (member, body, signer.spki_der)
    cache = _verified
    hit = cache.get(key)
    if hit is not None:
        return hit[1]
    framed = frame_signed(body, member, what=what, check=check)
    r, s = int.from_bytes(framed.signature[:32], "big"), int.from_bytes(framed.signature[32:], "big")
    verify_signature(signer, ECDSA_SHA256, encode_dss_signature(r, s), framed.signed,
                     what=what, check="collateral.signature", key_check="collateral.signature")
    document = parse(framed.signed)
    cache.put(key, (2048 + 12 * len(body), document))
    return document


def check_window(what: str, issue_date: datetime, next_update: datetime, at: datetime) -> None:
    """issueDate <= at < nextUpdate, or ChainInvalid (`collateral.validity`) naming the document."""
    if at < issue_date:
        raise ChainInvalid(f"{what} was issued at {issue_date.isoformat()} (issueDate), after the verification "
                           f"time {at.isoformat()}", check="collateral.validity")
    if at >= next_update:
        raise ChainInvalid(f"{what} expired at {next_update.isoformat()} (nextUpdate), verification time is "
                           f"{at.isoformat()}; fetch a fresh one", check="collateral.validity")


def _signed(member: str, body: bytes, issuer_chain: bytes | Sequence[Certificate] | None, at: datetime,
            trust_roots: Sequence[Certificate] | None) -> tuple[TcbInfo | QeIdentity, VerifiedChain]:
    what = _KINDS[member][0]
    if not issuer_chain:
        raise CollateralUnavailable(f"{what} came without its issuer chain (TCB Signing certificate and root): "
                                    "PCS sends it in a response header", check="collateral.issuer_chain")
    chain = verify_signing_chain(issuer_chain, at, what=what, trust_roots=trust_roots)
    document = _verified_document(member, bytes(body), chain.leaf)
    check_window(what, document.issue_date, document.next_update, at)
    return document, chain


def verify_tcb_info(body: bytes, issuer_chain: bytes | Sequence[Certificate] | None, at: datetime, *,
                    trust_roots: Sequence[Certificate] | None = None) -> tuple[TcbInfo, VerifiedChain]:
    """A PCS TCB info body: signed by the Intel SGX TCB Signing key over the exact `tcbInfo` bytes, its
    issuer chain ending at the pinned root, all valid at `at` (issueDate <= at < nextUpdate).  The root
    CA CRL is checked by `verify_collateral`."""
    document, chain = _signed(TCB_INFO_MEMBER, body, issuer_chain, at, trust_roots)
    assert isinstance(document, TcbInfo)
    return document, chain


def verify_qe_identity(body: bytes, issuer_chain: bytes | Sequence[Certificate] | None, at: datetime, *,
                       trust_roots: Sequence[Certificate] | None = None) -> tuple[QeIdentity, VerifiedChain]:
    """A PCS QE identity body, checked as `verify_tcb_info` checks TCB info."""
    document, chain = _signed(QE_IDENTITY_MEMBER, body, issuer_chain, at, trust_roots)
    assert isinstance(document, QeIdentity)
    return document, chain


def verify_unchained(member: str, body: bytes, signer: Certificate) -> TcbInfo | QeIdentity:
    """The document of a body, its signature verified with `signer`'s key: no chain, no time.  For
    checking an answer before it is cached (the chain is checked where it is used)."""
    return _verified_document(member, bytes(body), signer)


def unverified_document(member: str, body: bytes) -> TcbInfo | QeIdentity:
    """The document of a body without any check of its signature (to read its dates for a cache whose
    entries were verified when they entered)."""
    what, check, parse = _KINDS[member]
    return parse(frame_signed(bytes(body), member, what=what, check=check).signed)


# -- a whole collateral set -----------------------------------------------------------------------------

@dataclass(frozen=True)
class IntelCollateral:
    """Collateral for TDX quotes as PCS (or a directory, or a bundle) supplies it: untrusted until verified.

    The JSON bodies are PCS response bodies; the issuer chains are PEM (signing or CA certificate, then
    the root), as PCS sends them URL-encoded in headers; CRLs are DER (or PEM)."""

    tcb_info: bytes
    tcb_info_issuer_chain: bytes
    qe_identity: bytes
    qe_identity_issuer_chain: bytes
    pck_crl: bytes | None = None
    pck_crl_issuer_chain: bytes | None = None
    root_ca_crl: bytes | None = None


@dataclass(frozen=True)
class VerifiedCollateral:
    """Collateral checked against one PCK chain at one time.

    `evaluations` is `tcb.evaluate_tcb_cached`'s memo: the TCB status depends only on this set (and
    so on its one PCK) and a few quote fields, so the quotes of a platform share it while the set is
    cached."""

    tcb_info: TcbInfo
    qe_identity: QeIdentity
    tcb_info_signer: VerifiedChain
    qe_identity_signer: VerifiedChain
    pck_crl: Crl
    root_ca_crl: Crl
    evaluations: dict[tuple[object, ...], object] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class _Window:
    """When a verified set stays valid: every certificate (both ends inclusive), CRL and document (nextUpdate
    exclusive) of it at once."""

    start: datetime
    end_inclusive: datetime
    end_exclusive: datetime

    def holds(self, at: datetime) -> bool:
        return self.start <= at <= self.end_inclusive and at < self.end_exclusive


_SetKey = tuple[IntelCollateral, bytes, bytes, bytes, tuple[str, ...] | None]
_sets: ByteBoundedCache[_SetKey, tuple[int, VerifiedCollateral, _Window]] = ByteBoundedCache(
    VERIFIED_CACHE_BYTES, lambda entry: entry[0])


def configure_collateral_set_cache(max_bytes: int) -> None:
    """Replace the verified-set cache with an empty one of this budget (0 disables it)."""
    global _sets
    _sets = ByteBoundedCache(max_bytes, lambda entry: entry[0])


# What one set's memo of TCB evaluations may hold (`VerifiedCollateral.evaluations`), and its charge.
MAX_MEMO_EVALUATIONS = 16
_MEMO_COST = MAX_MEMO_EVALUATIONS * 2048


def _set_cost(collateral: IntelCollateral) -> int:
    return 8192 + _MEMO_COST + 12 * sum(len(v) for v in (collateral.tcb_info, collateral.qe_identity)) + sum(
        2 * len(v or b"") for v in (collateral.tcb_info_issuer_chain, collateral.qe_identity_issuer_chain,
                                    collateral.pck_crl, collateral.pck_crl_issuer_chain, collateral.root_ca_crl))


def verify_collateral(collateral: IntelCollateral, pck: PckChain, at: datetime, *,
                      trust_roots: Sequence[Certificate] | None = None) -> VerifiedCollateral:
    """Every check of the collateral for a verified PCK chain at `at`, Intel QVL's order:

    1. the PCK CRL: issued by the PCK's issuer, signed by the chain's intermediate, current, not listing
       the PCK (missing: `collateral.pck_crl`);
    2. TCB info and QE identity: signature over the exact bytes, TCB Signing chain to the pinned root,
       issueDate <= at < nextUpdate;
    3. the Root CA CRL: signed by the root, current, listing neither the PCK intermediate nor a TCB
       Signing certificate (missing: `collateral.root_ca_crl`).

    The collateral's own PCK CRL issuer chain is not needed: the CRL is checked with the quote's
    intermediate.  FMSPC, PCE-ID, module and QE identity matches are `tcb.evaluate_tcb`'s.

    A set verified for a PCK chain is remembered by the bytes of both (and the trust roots) with the window
    in which all of it is valid: while `at` lies in that window, a warm call is one lookup and a time check;
    outside it, every check runs again and the first that fails says why."""
    key: _SetKey = (collateral, pck.leaf.der, pck.intermediate.der, pck.root.der,
                    tuple(c.fingerprint for c in trust_roots) if trust_roots is not None else None)
    cache = _sets
    hit = cache.get(key)
    if hit is not None and hit[2].holds(at):
        return hit[1]
    verified = _verify_collateral(collateral, pck, at, trust_roots)
    certificates = (pck.leaf, pck.intermediate, pck.root, *verified.tcb_info_signer.certificates,
                    *verified.qe_identity_signer.certificates)
    crls = (verified.pck_crl, verified.root_ca_crl)
    documents: tuple[TcbInfo | QeIdentity, ...] = (verified.tcb_info, verified.qe_identity)
    if all(crl.next_update is not None for crl in crls):
        window = _Window(
            start=max((*(c.not_before for c in certificates), *(crl.this_update for crl in crls),
                       *(d.issue_date for d in documents))),
            end_inclusive=min(c.not_after for c in certificates),
            end_exclusive=min((*(crl.next_update for crl in crls if crl.next_update is not None),
                               *(d.next_update for d in documents))))
        cache.put(key, (_set_cost(collateral), verified, window))
    return verified


def _verify_collateral(collateral: IntelCollateral, pck: PckChain, at: datetime,
                       trust_roots: Sequence[Certificate] | None) -> VerifiedCollateral:
    pck_crl = check_pck_crl(collateral.pck_crl, pck, at)
    tcb_info, tcb_signer = verify_tcb_info(collateral.tcb_info, collateral.tcb_info_issuer_chain, at,
                                           trust_roots=trust_roots)
    qe_identity, qe_signer = verify_qe_identity(collateral.qe_identity, collateral.qe_identity_issuer_chain, at,
                                                trust_roots=trust_roots)
    listed = list({c.der: c for c in (pck.intermediate, tcb_signer.leaf, qe_signer.leaf)}.values())
    if tcb_signer.root.der != pck.root.der or qe_signer.root.der != pck.root.der:
        raise ChainInvalid("the collateral's issuer chains end at another root than the PCK chain",
                           check="chain.root")
    root_ca_crl = check_root_ca_crl(collateral.root_ca_crl, pck.root, listed, at)
    return VerifiedCollateral(tcb_info, qe_identity, tcb_signer, qe_signer, pck_crl, root_ca_crl)
