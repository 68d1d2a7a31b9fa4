"""SEV-SNP evidence in the JSON form Confidential Containers guests send, to and from the binary report.

guest-components' attestation agent does not send the 1184-byte report: it sends
`{"attestation_report": <serde JSON of virtee/sev's AttestationReport>, "cert_chain": [...] | null}`
(reference/trustee-kbs.md §2.4).  The C core verifies bytes, so the JSON is re-encoded into
the ABI layout (reference/snp.md §1-2); the signature then checks whether that was exact.

Field names and their serde shapes are virtee/sev's (`src/firmware/guest/types/snp.rs`,
`firmware/host` `TcbVersion` and `CertTableEntry`, `certs/snp/ecdsa` `Signature`), as
serialized by sev 6.x/7.x and seen in trustee's real e2e sample.  See `_FIELDS` for the map.

Decisions:
- Strict: every field is type- and range-checked, byte arrays have their exact length, unknown
  fields are rejected.  Fields that are `Option` in sev (cpuid_*, *_mit_vector, tcb `fmc`,
  `cert_chain`) may be absent, as serde allows; everything else must be present.
- TCB layout (Turin's carries FMC): on v3+ it follows CPUID, Turin layout iff cpuid_fam_id >= 0x1A
  (Turin, Venice; as virtee/sev), and each TCB's `fmc` must then be set (Turin) or null (Milan,
  Genoa), so no value is silently dropped.  v2 has no CPUID: the layout follows `fmc`, which must
  be set in all four TCBs or in none.
- Reserved bytes are written as zero; format errors in the result come from the C core.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from kbs import native
from kbs.errors import MalformedEvidence, UsageError
from kbs.evidence.snp.report import SnpReport, TcbVersion, parse_report
from kbs.trust import x509
from kbs.trust.x509 import Certificate, is_parsed, parse_certificate

CHECK = "evidence.snp_json"
TURIN_CPUID_FAMILY = 0x1A  # Turin and every later family use the TCB layout with FMC
FAMILIES = ("Milan", "Genoa", "Turin", "Venice")
_TURIN_LAYOUT_FAMILIES = ("Turin", "Venice")

# sev's CertType: unit variants serialize as their name, OTHER(uuid) as {"OTHER": "<uuid>"}.
CERT_TYPE_GUIDS = {
    "Empty": "00000000-0000-0000-0000-000000000000",
    "ARK": "c0b406a4-a803-4952-9743-3fb6014cd0ae",
    "ASK": "4ab7b379-bbac-4fe4-a02f-05aef327c782",
    "VCEK": "63da758d-e664-4564-adc5-f4b93be8accd",
    "VLEK": "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
    "CRL": "92f81bc3-5811-4d3d-97ff-d19f88dc67ea",
}
_NAME_OF_GUID = {guid: name for name, guid in CERT_TYPE_GUIDS.items()}
_CERTIFICATE_TYPES = ("ARK", "ASK", "VCEK", "VLEK")
MAX_CERTIFICATES = 16  # a chain is VEK, ASK, ARK (+ CRL); the cap bounds work on hostile input
MAX_CERTIFICATE_SIZE = x509.MAX_CERTIFICATE_SIZE  # refused before any per-byte work


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # sev serde name
    offset: int  # in the binary report
    kind: str  # uint | bytes | tcb | firmware | cpuid | mit | signature
    size: int


_FIELDS = (
    _Field("version", 0x000, "uint", 4),
    _Field("guest_svn", 0x004, "uint", 4),
    _Field("policy", 0x008, "uint", 8),
    _Field("family_id", 0x010, "bytes", 16),
    _Field("image_id", 0x020, "bytes", 16),
    _Field("vmpl", 0x030, "uint", 4),
    _Field("sig_algo", 0x034, "uint", 4),
    _Field("current_tcb", 0x038, "tcb", 8),
    _Field("plat_info", 0x040, "uint", 8),
    _Field("key_info", 0x048, "uint", 4),  # SIGNER_INFO in the ABI
    _Field("report_data", 0x050, "bytes", 64),
    _Field("measurement", 0x090, "bytes", 48),
    _Field("host_data", 0x0C0, "bytes", 32),
    _Field("id_key_digest", 0x0E0, "bytes", 48),
    _Field("author_key_digest", 0x110, "bytes", 48),
    _Field("report_id", 0x140, "bytes", 32),
    _Field("report_id_ma", 0x160, "bytes", 32),
    _Field("reported_tcb", 0x180, "tcb", 8),
    _Field("cpuid_fam_id", 0x188, "cpuid", 1),
    _Field("cpuid_mod_id", 0x189, "cpuid", 1),
    _Field("cpuid_step", 0x18A, "cpuid", 1),
    _Field("chip_id", 0x1A0, "bytes", 64),
    _Field("committed_tcb", 0x1E0, "tcb", 8),
    _Field("current", 0x1E8, "firmware", 3),  # bytes: build, minor, major
    _Field("committed", 0x1EC, "firmware", 3),
    _Field("launch_tcb", 0x1F0, "tcb", 8),
    _Field("launch_mit_vector", 0x1F8, "mit", 8),
    _Field("current_mit_vector", 0x200, "mit", 8),
    _Field("signature", 0x2A0, "signature", 144),  # r, s: 72 bytes little-endian each
)
_REPORT_MEMBERS = tuple(f.name for f in _FIELDS)
_OPTIONAL = frozenset(f.name for f in _FIELDS if f.kind in ("cpuid", "mit"))
_TCB_MEMBERS = ("fmc", "bootloader", "tee", "snp", "microcode")
_FIRMWARE_MEMBERS = ("major", "minor", "build")
_SIG_PART = 72


@dataclass(frozen=True, slots=True)
class CocoSnpEvidence:
    """A CoCo guest's SNP evidence: the re-encoded binary report and the certificates it sent."""

    report: bytes  # exactly 1184 bytes, format-checked by the C core
    certificates: tuple[tuple[str, bytes], ...] = ()  # (sev cert_type name or "<guid>", DER)
    parsed: SnpReport | None = dataclasses.field(default=None, compare=False)  # the report as that check parsed it

    def x509_certificates(self) -> list[Certificate]:
        """The ARK, ASK, VCEK and VLEK entries, parsed; raises MalformedEvidence on bad DER."""
        return [parse_certificate(der) for kind, der in self.certificates if kind in _CERTIFICATE_TYPES]

    def certificates_parsed(self) -> bool:
        """Whether every certificate `x509_certificates` would return is parsed already (cached)."""
        return all(is_parsed(der) for kind, der in self.certificates if kind in _CERTIFICATE_TYPES)

    @property
    def crl(self) -> bytes | None:
        return next((der for kind, der in self.certificates if kind == "CRL"), None)


def _fail(message: str) -> MalformedEvidence:
    return MalformedEvidence(message, check=CHECK)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(value: object, path: str, members: Sequence[str], optional: frozenset[str] = frozenset()
             ) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(f"{path} must be an object, got {_kind(value)}")
    unknown = sorted(str(k) for k in value if k not in members)
    if unknown:
        raise _fail(f"{path} has unknown field(s) {', '.join(map(repr, unknown[:5]))}")
    for name in members:
        if name not in value and name not in optional:
            raise _fail(f"{path}.{name} is missing")
    return value


def _show(value: int) -> str:
    # Huge ints are summarised: str() of one beyond 4300 digits raises, and messages stay short.
    return str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"


def _uint(value: object, bits: int, path: str) -> int:
    # type() rather than isinstance(): JSON true/false arrive as bool, a subclass of int.
    if type(value) is not int:
        raise _fail(f"{path} must be an integer, got {_kind(value)}")
    if not 0 <= value < 1 << bits:
        raise _fail(f"{path} must be an integer 0..{(1 << bits) - 1}, got {_show(value)}")
    return value


def _byte_array(value: object, length: int | None, path: str, limit: int = MAX_CERTIFICATE_SIZE) -> bytes:
    if not isinstance(value, list | tuple):
        raise _fail(f"{path} must be an array of integers 0..255, got {_kind(value)}")
    if length is not None and len(value) != length:
        raise _fail(f"{path} must have exactly {length} elements, got {len(value)}")
    if len(value) > limit:
        raise MalformedEvidence(f"{path} has {len(value)} bytes, more than the {limit} a certificate may have",
                                check="certificate.size")
    try:  # the common case at C speed: bytes() takes only integers 0..255, and bools (refused below)
        data = bytes(value)
    except (TypeError, ValueError):
        pass  # the loop below names the bad element
    else:
        encoded = orjson.dumps(value)  # integers only, unless a JSON true/false came as a bool
        if b"t" not in encoded and b"f" not in encoded:
            return data
    for i, element in enumerate(value):
        if type(element) is not int or not 0 <= element <= 0xFF:
            shown = _show(element) if type(element) is int else _kind(element)
            raise _fail(f"{path}[{i}] must be an integer 0..255, got {shown}")
    return bytes(value)


def _tcb_from_json(value: object, path: str) -> tuple[int | None, int, int, int, int]:
    obj = _mapping(value, path, _TCB_MEMBERS, frozenset({"fmc"}))
    fmc = obj.get("fmc")
    bl, tee, snp, ucode = (_uint(obj[m], 8, f"{path}.{m}") for m in _TCB_MEMBERS[1:])
    return (None if fmc is None else _uint(fmc, 8, f"{path}.fmc"), bl, tee, snp, ucode)


def _tcb_bytes(tcb: tuple[int | None, int, int, int, int], turin: bool) -> bytes:
    fmc, bl, tee, snp, ucode = tcb
    if turin:
        return bytes([fmc or 0, bl, tee, snp, 0, 0, 0, ucode])
    return bytes([bl, tee, 0, 0, 0, 0, snp, ucode])


def _turin_layout(ar: Mapping[str, Any], version: int,
                  tcbs: dict[str, tuple[int | None, int, int, int, int]]) -> bool:
    """Which TCB layout the report uses, and that every TCB's fmc agrees with it."""
    if version >= 3:
        family = _uint(ar.get("cpuid_fam_id"), 8, "attestation_report.cpuid_fam_id")
        turin = family >= TURIN_CPUID_FAMILY
        layout = "the Turin TCB layout, which carries" if turin else "the Milan/Genoa TCB layout, which has no"
        why = f"CPUID family {family:#x} uses {layout} FMC"
    else:
        turin = tcbs["current_tcb"][0] is not None
        why = f"attestation_report.current_tcb.fmc is {'set' if turin else 'null'} in this version 2 report"
    for name, tcb in tcbs.items():
        if (tcb[0] is not None) != turin:
            raise _fail(f"attestation_report.{name}.fmc is {'null' if turin else 'set'}, but {why}")
    return turin


def _nullable(ar: Mapping[str, Any], field: _Field, present: bool, why: str) -> bytes:
    value = ar.get(field.name)
    path = f"attestation_report.{field.name}"
    if not present:
        if value is not None:
            raise _fail(f"{path} must be null {why}, got {_kind(value)}")
        return bytes(field.size)
    # A missing mitigation vector (sev 6.x does not carry them) is written as zero: the
    # signature covers these bytes, so a wrong zero fails verification rather than pass.
    if value is None and field.kind == "mit":
        return bytes(field.size)
    return _uint(value, 8 * field.size, path).to_bytes(field.size, "little")


def _c_core_check(report: bytes) -> SnpReport:
    try:
        return parse_report(report)
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"attestation_report, re-encoded, is not a valid SNP report: {exc}",
                                check=exc.check) from exc


def _encode_report(value: object) -> SnpReport:
    ar = _mapping(value, "attestation_report", _REPORT_MEMBERS, _OPTIONAL)
    buf = bytearray(native.SNP_REPORT_SIZE)
    version = _uint(ar["version"], 32, "attestation_report.version")
    buf[0:4] = version.to_bytes(4, "little")
    if not 2 <= version <= 5:
        _c_core_check(bytes(buf))  # the C core names an unsupported version before our rules run
    tcbs = {f.name: _tcb_from_json(ar[f.name], f"attestation_report.{f.name}") for f in _FIELDS if f.kind == "tcb"}
    turin = _turin_layout(ar, version, tcbs)
    for field in _FIELDS:
        path = f"attestation_report.{field.name}"
        value = ar.get(field.name)
        if field.kind == "uint":
            data = _uint(value, 8 * field.size, path).to_bytes(field.size, "little")
        elif field.kind == "bytes":
            data = _byte_array(value, field.size, path)
        elif field.kind == "tcb":
            data = _tcb_bytes(tcbs[field.name], turin)
        elif field.kind == "firmware":
            fw = _mapping(value, path, _FIRMWARE_MEMBERS)
            data = bytes(_uint(fw[m], 8, f"{path}.{m}") for m in ("build", "minor", "major"))
        elif field.kind == "cpuid":
            data = _nullable(ar, field, version >= 3, "before report version 3")
        elif field.kind == "mit":
            data = _nullable(ar, field, version >= 5, "before report version 5")
        else:
            sig = _mapping(value, path, ("r", "s"))
            data = _byte_array(sig["r"], _SIG_PART, f"{path}.r") + _byte_array(sig["s"], _SIG_PART, f"{path}.s")
        buf[field.offset:field.offset + field.size] = data
    return _c_core_check(bytes(buf))


def _cert_type_from_json(value: object, path: str) -> str:
    if isinstance(value, str):
        if value not in CERT_TYPE_GUIDS:
            raise _fail(f"{path} must be one of {', '.join(CERT_TYPE_GUIDS)} or {{\"OTHER\": guid}}, "
                        f"got {value[:40]!r}")
        return value
    other = _mapping(value, path, ("OTHER",))["OTHER"]
    if not isinstance(other, str):
        raise _fail(f"{path}.OTHER must be a GUID string, got {_kind(other)}")
    try:
        return str(uuid.UUID(other))
    except ValueError as exc:
        raise _fail(f"{path}.OTHER must be a GUID string, got {other[:40]!r}") from exc


def _certificates_from_json(value: object) -> tuple[tuple[str, bytes], ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise _fail(f"cert_chain must be an array or null, got {_kind(value)}")
    if len(value) > MAX_CERTIFICATES:
        raise _fail(f"cert_chain has {len(value)} entries, more than the {MAX_CERTIFICATES} allowed")
    out = []
    for i, item in enumerate(value):
        entry = _mapping(item, f"cert_chain[{i}]", ("cert_type", "data"))
        out.append((_cert_type_from_json(entry["cert_type"], f"cert_chain[{i}].cert_type"),
                    _byte_array(entry["data"], None, f"cert_chain[{i}].data")))
    return tuple(out)


def report_from_coco(evidence: Mapping[str, Any]) -> CocoSnpEvidence:
    """A CoCo guest's SNP evidence JSON (parsed) -> binary report + certificates.

    Raises MalformedEvidence: check "evidence.snp_json" naming the JSON field, or the C core's
    check (e.g. "report.policy") when the re-encoded report breaks a format rule.
    """
    obj = _mapping(evidence, "evidence", ("attestation_report", "cert_chain"), frozenset({"cert_chain"}))
    report = _encode_report(obj["attestation_report"])
    return CocoSnpEvidence(report=report.data, certificates=_certificates_from_json(obj.get("cert_chain")),
                           parsed=report)


def _tcb_to_json(raw: int, turin: bool, name: str) -> dict[str, Any]:
    b = raw.to_bytes(8, "little")
    reserved = b[4:7] if turin else b[2:6]
    if any(reserved):
        layout = "Turin" if turin else "Milan/Genoa"
        raise MalformedEvidence(f"{name} {raw:#018x} has reserved bytes set in the {layout} TCB layout; the "
                                "CoCo JSON form cannot carry them (wrong family for a version 2 report?)",
                                check=CHECK)
    tcb = TcbVersion.decode(raw, "Turin" if turin else "Milan")
    return {"fmc": tcb.fmc, "bootloader": tcb.bl, "tee": tcb.tee, "snp": tcb.snp, "microcode": tcb.ucode}


def _cert_type_to_json(kind: str) -> str | dict[str, str]:
    if kind in CERT_TYPE_GUIDS:
        return kind
    try:
        guid = str(uuid.UUID(kind))
    except ValueError as exc:
        raise UsageError(f"certificate type {kind!r} is neither a sev CertType name nor a GUID",
                         check="usage") from exc
    return _NAME_OF_GUID.get(guid) or {"OTHER": guid}


def report_to_coco(report: bytes, certificates: Sequence[tuple[str, bytes]] = (), *,
                   family: str = "Milan") -> dict[str, Any]:
    """Binary report (+ certificates) -> the evidence JSON a CoCo guest sends, for any CoCo KBS.

    The TCB layout follows CPUID on v3+; a v2 report has none, so `family` says it (and is
    ignored otherwise).  Certificate types are sev names (VCEK, ASK, ...) or GUIDs.
    """
    if family not in FAMILIES:
        raise UsageError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}", check="usage")
    raw = native.snp_parse(report)
    version = raw.version
    turin = raw.cpuid_fam_id >= TURIN_CPUID_FAMILY if version >= 3 else family in _TURIN_LAYOUT_FAMILIES
    ar: dict[str, Any] = {}
    for field in _FIELDS:
        data = report[field.offset:field.offset + field.size]
        if field.kind == "uint":
            ar[field.name] = int.from_bytes(data, "little")
        elif field.kind == "bytes":
            ar[field.name] = list(data)
        elif field.kind == "tcb":
            ar[field.name] = _tcb_to_json(int.from_bytes(data, "little"), turin, field.name)
        elif field.kind == "firmware":
            ar[field.name] = {"major": data[2], "minor": data[1], "build": data[0]}
        elif field.kind == "cpuid":
            ar[field.name] = data[0] if version >= 3 else None
        elif field.kind == "mit":
            ar[field.name] = int.from_bytes(data, "little") if version >= 5 else None
        else:
            ar[field.name] = {"r": list(data[:_SIG_PART]), "s": list(data[_SIG_PART:])}
    chain = [{"cert_type": _cert_type_to_json(kind), "data": list(der)} for kind, der in certificates]
    return {"attestation_report": ar, "cert_chain": chain or None}
