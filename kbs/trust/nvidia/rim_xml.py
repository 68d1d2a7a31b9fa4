"""RIM documents (ISO/IEC 19770-2 SWID tags in NVIDIA's TCG RIM profile, reference/gpu.md §3.1): parsing
untrusted XML safely, and reading the fields the verifier uses from a document whose signature was checked.

Parsing refuses what an XML parser should never be asked to do for a key broker: a document over
`MAX_RIM_BYTES`, a DOCTYPE (so no internal or external DTD, hence no entity expansion: no "billion laughs",
no external entities, no network), a NUL byte (the documents are UTF-8; this keeps UTF-16 out of the byte
scan's blind spot), and anything lxml's hardened parser reports.  The scan for ``<!DOCTYPE``/``<!ENTITY``
runs before the parser sees a byte; the parsed tree is checked again for a DTD or entity nodes.

`read_document` reads strictly (label `nvgpu.rim.parse`): the root is ``SoftwareIdentity`` with a
``tagId``; one ``Meta`` with a ``colloquialVersion``; one ``Payload`` whose children are all
``Resource type="Measurement"`` with a unique 0-based ``index``, ``active`` True/False, ``alternatives``
k and exactly the attributes ``Hash0`` … ``Hash{k-1}`` (namespace xmlenc#sha384) of ``size`` bytes each.
It is given the tree signxml returns as signed, never the tree parsed from the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lxml import etree

from kbs.errors import MalformedEvidence

MAX_RIM_BYTES = 256 * 1024  # NVIDIA's RIMs are 18-22 KB
MAX_RESOURCES = 256  # 64 on every GPU; NVSwitch and later parts stay well below this
MAX_INDEX = 255
MAX_ALTERNATIVES = 16  # NVIDIA uses up to 4
MAX_SIZE = 64  # measurement values are SHA-384 digests (48 bytes)
MAX_TEXT = 256  # tagId, versions, names

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
TCG_RIM_NS = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/"
HASH_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
PARSE = "nvgpu.rim.parse"

_FORBIDDEN = (b"<!DOCTYPE", b"<!ENTITY")
_HASH_NAME = re.compile(r"Hash(0|[1-9][0-9]?)")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,3}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_RESOURCE_ATTRIBUTES = frozenset({"type", "index", "active", "alternatives", "name", "size"})


def _swid(tag: str) -> str:
    return f"{{{SWID_NS}}}{tag}"


def hardened_parser() -> Any:
    """A fresh lxml parser that loads no DTD, resolves no entity and touches no network (lxml parsers
    are not to be shared between threads, so each verification makes its own)."""
    return etree.XMLParser(resolve_entities=False, load_dtd=False, dtd_validation=False, no_network=True,
                           huge_tree=False, collect_ids=False)


def _bad(what: str, message: str) -> MalformedEvidence:
    return MalformedEvidence(f"{what}: {message}", check=PARSE)


def parse_xml(xml: bytes, what: str) -> Any:
    """The root element of `xml`, parsed safely (module docstring); MalformedEvidence otherwise."""
    if len(xml) > MAX_RIM_BYTES:
        raise _bad(what, f"is {len(xml)} bytes, more than the {MAX_RIM_BYTES} allowed (RIMs are about 20 KB)")
    if b"\x00" in xml:
        raise _bad(what, "holds a NUL byte: it is not UTF-8 XML")
    for token in _FORBIDDEN:
        if token in xml:
            raise _bad(what, f"has a {token.decode()} declaration; DTDs and entities are refused")
    try:
        root = etree.fromstring(xml, parser=hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise _bad(what, f"is not well-formed XML ({exc})") from exc
    refuse_dtd(root, what)
    return root


def refuse_dtd(root: Any, what: str) -> None:
    """No DTD and no entity reference anywhere in the tree (a second line behind the byte scan)."""
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        raise _bad(what, "has a document type declaration; DTDs are refused")
    for _ in root.iter(etree.Entity):
        raise _bad(what, "holds an entity reference; entities are refused")


@dataclass(frozen=True)
class GoldenEntry:
    """One ``Resource`` of a RIM: the reference values of one measurement index."""

    index: int  # 0-based RIM index; the report's SPDM block is index + 1
    active: bool
    alternatives: tuple[bytes, ...]  # any one of them matches
    size: int  # the measured value's length in bytes
    name: str


@dataclass(frozen=True)
class RimDocument:
    """The fields of a RIM the verifier uses, read from the signed document."""

    tag_id: str
    name: str  # SoftwareIdentity name: the chip ("GH100")
    colloquial_version: str  # the driver version, or the VBIOS version ("96.00.9F.00.01")
    firmware_manufacturer_id: str | None  # Meta/@FirmwareManufacturerId ("5703"), the oemid claim
    entries: tuple[GoldenEntry, ...]  # in index order


def _text(element: Any, name: str, what: str, where: str, *, required: bool = True) -> str | None:
    value = element.get(name)
    if value is None:
        if required:
            raise _bad(what, f"{where} lacks the attribute {name.rsplit('}', 1)[-1]!r}")
        return None
    if not value.strip() or len(value) > MAX_TEXT:
        raise _bad(what, f"{where} attribute {name.rsplit('}', 1)[-1]!r} is {value[:40]!r}, wanted 1-{MAX_TEXT} "
                         "characters")
    return str(value)


def _one(root: Any, tag: str, what: str) -> Any:
    found = root.findall(_swid(tag))
    if len(found) != 1:
        raise _bad(what, f"has {len(found)} {tag} elements, wanted exactly one")
    return found[0]


def _number(resource: Any, name: str, highest: int, what: str, where: str) -> int:
    value = _text(resource, name, what, where)
    assert value is not None
    if not _DECIMAL.fullmatch(value) or not 0 <= int(value) <= highest:
        raise _bad(what, f"{where} {name} is {value!r}, wanted a decimal 0..{highest}")
    return int(value)


def _boolean(resource: Any, what: str, where: str) -> bool:
    value = _text(resource, "active", what, where)
    assert value is not None
    if value.lower() not in ("true", "false"):
        raise _bad(what, f"{where} active is {value!r}, wanted True or False")
    return value.lower() == "true"


def _hashes(resource: Any, count: int, size: int, what: str, where: str) -> tuple[bytes, ...]:
    names: dict[int, str] = {}
    for attribute, value in resource.attrib.items():
        if attribute.startswith("{"):
            namespace, _, local = attribute[1:].partition("}")
            match = _HASH_NAME.fullmatch(local)
            if namespace != HASH_NS or match is None:
                raise _bad(what, f"{where} has an unknown attribute {attribute!r}")
            names[int(match.group(1))] = value
        elif attribute not in _RESOURCE_ATTRIBUTES:
            raise _bad(what, f"{where} has an unknown attribute {attribute!r}")
    if sorted(names) != list(range(count)):
        raise _bad(what, f"{where} says alternatives={count} but carries Hash{sorted(names)}; wanted Hash0.."
                         f"Hash{count - 1}")
    hashes = []
    for number in range(count):
        value = names[number]
        if not _HEX.fullmatch(value) or len(value) != 2 * size:
            raise _bad(what, f"{where} Hash{number} is {value[:24]!r}… ({len(value)} characters), wanted "
                             f"{2 * size} hex digits (size {size})")
        hashes.append(bytes.fromhex(value))
    return tuple(hashes)


def _entry(resource: Any, number: int, what: str) -> GoldenEntry:
    where = f"Resource #{number}"
    kind = resource.get("type")
    if kind != "Measurement":
        raise _bad(what, f"{where} has type {kind!r}, wanted 'Measurement'")
    index = _number(resource, "index", MAX_INDEX, what, where)
    where = f"Resource index {index}"
    alternatives = _number(resource, "alternatives", MAX_ALTERNATIVES, what, where)
    if alternatives < 1:
        raise _bad(what, f"{where} has alternatives=0, wanted at least 1")
    size = _number(resource, "size", MAX_SIZE, what, where)
    if size < 1:
        raise _bad(what, f"{where} has size 0")
    return GoldenEntry(index=index, active=_boolean(resource, what, where),
                       alternatives=_hashes(resource, alternatives, size, what, where), size=size,
                       name=_text(resource, "name", what, where, required=False) or "")


def read_document(root: Any, what: str) -> RimDocument:
    """The RIM fields of a (signed) SoftwareIdentity tree; MalformedEvidence (`nvgpu.rim.parse`) otherwise."""
    if root.tag != _swid("SoftwareIdentity"):
        raise _bad(what, f"root element is {root.tag!r}, wanted SoftwareIdentity of {SWID_NS}")
    tag_id = _text(root, "tagId", what, "SoftwareIdentity")
    name = _text(root, "name", what, "SoftwareIdentity")
    meta = _one(root, "Meta", what)
    version = _text(meta, "colloquialVersion", what, "Meta")
    manufacturer = _text(meta, f"{{{TCG_RIM_NS}}}FirmwareManufacturerId", what, "Meta", required=False)
    payload = _one(root, "Payload", what)
    resources = [child for child in payload if isinstance(child.tag, str)]  # elements, not comments or PIs
    if not resources:
        raise _bad(what, "Payload holds no Resource")
    if len(resources) > MAX_RESOURCES:
        raise _bad(what, f"Payload holds {len(resources)} elements, more than the {MAX_RESOURCES} allowed")
    entries: dict[int, GoldenEntry] = {}
    for number, resource in enumerate(resources):
        if resource.tag != _swid("Resource"):
            raise _bad(what, f"Payload holds a {resource.tag!r} element; only Resource is expected")
        entry = _entry(resource, number, what)
        if entry.index in entries:
            raise _bad(what, f"Payload has index {entry.index} twice")
        entries[entry.index] = entry
    assert tag_id is not None and name is not None and version is not None
    return RimDocument(tag_id=tag_id, name=name, colloquial_version=version, firmware_manufacturer_id=manufacturer,
                       entries=tuple(entries[i] for i in sorted(entries)))
