"""The FWID in the leaf of an NVIDIA device chain: the firmware digest the report's FWID field must equal
(reference/gpu.md §2.1).  Two encodings, each under its own extension:

- ``2.23.133.5.4.1`` (Hopper GPUs, NVSwitch LS10): the TCG DICE/RIoT composite device id,
  ``SEQUENCE { version INTEGER (1), deviceIdentity SubjectPublicKeyInfo, fwid SEQUENCE { hashAlg
  OBJECT IDENTIFIER, fwid OCTET STRING } }``; NVIDIA's verifier takes the last 48 bytes of the value,
  which are that OCTET STRING's contents;
- ``2.23.133.5.4.1.1`` (Blackwell): a DICE TcbInfo whose ``fwids [6]`` list holds SHA-384 digests;
  the FWID is ``fwids[0].digest`` (the second one is zero on every sample).

The parser follows the extension's OID, not the GPU's architecture: each OID carries one encoding,
NVIDIA's verifier accepts either OID on either architecture, and LS10 switches use the Hopper one, so
reading by OID accepts everything NVIDIA accepts while never reading one encoding as the other.  Both
are decoded with pyasn1 to their schema, must be canonical DER with nothing after them, and must
hold exactly one SHA-384 digest of 48 bytes where the FWID is; a leaf carrying both extensions is
refused as ambiguous.  Errors are `ChainInvalid` with check `nvgpu.chain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, constraint, namedtype, tag, univ
from pyasn1_modules import rfc5280

from kbs.errors import ChainInvalid
from kbs.trust.x509 import OID_SHA384, Certificate

OID_COMPOSITE_DEVICE_ID = "2.23.133.5.4.1"  # Hopper, LS10
OID_TCB_INFO = "2.23.133.5.4.1.1"  # Blackwell
FWID_OIDS = (OID_COMPOSITE_DEVICE_ID, OID_TCB_INFO)
FWID_SIZE = 48  # SHA-384
MAX_EXTENSION_SIZE = 4096  # the real values are 180-189 bytes


def _fwid() -> Any:
    """FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING }"""
    return univ.Sequence(componentType=namedtype.NamedTypes(
        namedtype.NamedType("hashAlg", univ.ObjectIdentifier()),
        namedtype.NamedType("digest", univ.OctetString())))


def composite_device_id_spec() -> Any:
    """CompositeDeviceID ::= SEQUENCE { version INTEGER, deviceIdentity SubjectPublicKeyInfo, fwid FWID }"""
    return univ.Sequence(componentType=namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("deviceIdentity", rfc5280.SubjectPublicKeyInfo()),
        namedtype.NamedType("fwid", _fwid())))


def _implicit(number: int, value: Any, constructed: bool = False) -> Any:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return value.subtype(implicitTag=tag.Tag(tag.tagClassContext, form, number))


def tcb_info_spec() -> Any:
    """DiceTcbInfo of the TCG DICE Attestation Architecture: every field optional, IMPLICIT tags."""
    fwids = univ.SequenceOf(componentType=_fwid(), subtypeSpec=constraint.ValueSizeConstraint(1, 16))
    return univ.Sequence(componentType=namedtype.NamedTypes(
        namedtype.OptionalNamedType("vendor", _implicit(0, char.UTF8String())),
        namedtype.OptionalNamedType("model", _implicit(1, char.UTF8String())),
        namedtype.OptionalNamedType("version", _implicit(2, char.UTF8String())),
        namedtype.OptionalNamedType("svn", _implicit(3, univ.Integer())),
        namedtype.OptionalNamedType("layer", _implicit(4, univ.Integer())),
        namedtype.OptionalNamedType("index", _implicit(5, univ.Integer())),
        namedtype.OptionalNamedType("fwids", _implicit(6, fwids, constructed=True)),
        namedtype.OptionalNamedType("flags", _implicit(7, univ.BitString())),
        namedtype.OptionalNamedType("vendorInfo", _implicit(8, univ.OctetString())),
        namedtype.OptionalNamedType("type", _implicit(9, univ.OctetString())),
        namedtype.OptionalNamedType("flagsMask", _implicit(10, univ.BitString()))))


@dataclass(frozen=True)
class LeafFwid:
    """The FWID of a device leaf and where it was read from."""

    digest: bytes  # 48 bytes
    oid: str  # the extension it came from
    encoding: str  # "composite device id" or "DICE TcbInfo"


def _bad(leaf: Certificate, oid: str, what: str) -> ChainInvalid:
    return ChainInvalid(f"device certificate 0 {leaf.subject_cn!r}: FWID extension {oid} {what}", check="nvgpu.chain")


def _decode(leaf: Certificate, oid: str, raw: bytes, spec: Any, name: str) -> Any:
    """`raw` decoded to `spec`, canonical DER and nothing after it (one encoding, one meaning)."""
    if len(raw) > MAX_EXTENSION_SIZE:
        raise _bad(leaf, oid, f"is {len(raw)} bytes, more than the {MAX_EXTENSION_SIZE} allowed")
    try:
        value, rest = decoder.decode(raw, asn1Spec=spec)
        canonical = bytes(encoder.encode(value))
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise _bad(leaf, oid, f"does not decode as {name} ({exc})") from exc
    if rest:
        raise _bad(leaf, oid, f"has {len(rest)} bytes after its value")
    if canonical != raw:
        raise _bad(leaf, oid, "is not canonical DER")
    return value


def _digest(leaf: Certificate, oid: str, fwid: Any, where: str) -> bytes:
    algorithm = str(fwid["hashAlg"])
    digest = bytes(fwid["digest"])
    if algorithm != OID_SHA384:
        raise _bad(leaf, oid, f"{where} is hashed with {algorithm}, wanted SHA-384 ({OID_SHA384})")
    if len(digest) != FWID_SIZE:
        raise _bad(leaf, oid, f"{where} is {len(digest)} bytes, wanted {FWID_SIZE}")
    return digest


def _composite_device_id(leaf: Certificate, raw: bytes) -> bytes:
    value = _decode(leaf, OID_COMPOSITE_DEVICE_ID, raw, composite_device_id_spec(), "a composite device id")
    if int(value["version"]) != 1:
        raise _bad(leaf, OID_COMPOSITE_DEVICE_ID, f"has version {int(value['version'])}, wanted 1")
    return _digest(leaf, OID_COMPOSITE_DEVICE_ID, value["fwid"], "its fwid")


def _tcb_info(leaf: Certificate, raw: bytes) -> bytes:
    value = _decode(leaf, OID_TCB_INFO, raw, tcb_info_spec(), "a DICE TcbInfo")
    fwids = value["fwids"]
    if not fwids.hasValue() or len(fwids) == 0:
        raise _bad(leaf, OID_TCB_INFO, "holds no fwids")
    return _digest(leaf, OID_TCB_INFO, fwids[0], "fwids[0]")


def leaf_fwid(leaf: Certificate) -> LeafFwid:
    """The FWID of a device leaf, read by the extension's OID (module docstring)."""
    present = [oid for oid in FWID_OIDS if oid in leaf.extensions]
    if not present:
        raise ChainInvalid(f"device certificate 0 {leaf.subject_cn!r} carries no FWID extension (wanted "
                           f"{OID_COMPOSITE_DEVICE_ID} or {OID_TCB_INFO})", check="nvgpu.chain")
    if len(present) > 1:
        raise ChainInvalid(f"device certificate 0 {leaf.subject_cn!r} carries both FWID extensions "
                           f"({' and '.join(present)}); one FWID is wanted", check="nvgpu.chain")
    oid = present[0]
    raw = leaf.extensions[oid]
    if oid == OID_COMPOSITE_DEVICE_ID:
        return LeafFwid(_composite_device_id(leaf, raw), oid, "composite device id")
    return LeafFwid(_tcb_info(leaf, raw), oid, "DICE TcbInfo")
