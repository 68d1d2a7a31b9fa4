"""NVIDIA GPU and NVSwitch attestation reports (native/spdm_report.c; reference/gpu.md §1).

A report is the 37-byte SPDM 1.1 GET_MEASUREMENTS request followed by the MEASUREMENTS response:
measurement blocks, the GPU's own (responder) nonce, NVIDIA's opaque TLVs and an ECDSA P-384 signature
by the device chain's leaf key over everything before it.  `spdm_parse` checks the format in C (no
cryptography); `spdm_verify` parses, hashes and verifies in one C call with the GIL released.  Format
errors are MalformedEvidence(check="nvgpu.parse") naming the field, its offset (and block or TLV), the
value seen and the value wanted; a bad key or signature is SignatureInvalid(check="nvgpu.signature").

The opaque TLVs are decoded here (properties of SpdmReport: driver and VBIOS versions, FWID, project,
SKUs, ...): that is format decoding, not judgement.  Whether a value is acceptable is the verifier's to
say.  Nothing here looks at certificates: the caller passes the leaf key it took from the chain.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from kbs.errors import MalformedEvidence
from kbs.native._ffi import ffi, lib, raise_for
from kbs.native.p384 import P384KeyCache

SPDM_REQUEST_SIZE: int = lib.KBS_SPDM_REQUEST_SIZE
SPDM_NONCE_SIZE: int = lib.KBS_SPDM_NONCE_SIZE
SPDM_SIGNATURE_SIZE: int = lib.KBS_SPDM_SIGNATURE_SIZE


class OpaqueType(IntEnum):
    """NVIDIA's opaque-data TLV types (gpu.md §1.4; 26 from nvat's NVSwitch parser).  The C parser refuses
    every other code, including 255 (INVALID), and any type that appears twice."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    SWITCH_GPU_PDIS = 26
    GPU_LINK_CONN = 32
    SYS_ENABLE_STATUS = 33
    OPAQUE_DATA_VERSION = 34
    CHIP_INFO = 35
    FEATURE_FLAG = 36


NVDEC0_ENABLED = 0xAA
NVDEC0_DISABLED = 0x55
FEATURE_FLAGS = {0: "SPT", 1: "MPT", 2: "PPCIE"}  # single GPU, multi-GPU pass-through, protected PCIe


@dataclass(frozen=True, slots=True)
class MeasurementBlock:
    """One DMTF measurement block: `index` 1-254 (RIM index i is block index i + 1), `spec` 0x01 (DMTF),
    `value_type` (bit 7 clear: a digest; bits 0-6 its kind), `value` (48 bytes of SHA-384 on every GPU)."""

    index: int
    spec: int
    value_type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class OpaqueField:
    """One NVIDIA opaque TLV: `type` (OpaqueType's codes) and its data; `offset` is where the data starts
    in the report (for messages; not compared)."""

    type: int
    value: bytes
    offset: int = field(default=0, compare=False)


def _malformed(what: str, f: OpaqueField, saw: str, wanted: str) -> MalformedEvidence:
    where = f"{OpaqueType(f.type).name} (type {f.type}, data at byte {f.offset})"
    return MalformedEvidence(f"GPU report opaque field {where} {what}: {saw}, wanted {wanted}", check="nvgpu.parse")


def _ascii(f: OpaqueField) -> str:
    """ASCII text, NUL-terminated or NUL-padded: the NULs at the end are dropped, none may come before."""
    text = f.value.rstrip(b"\0")
    if not all(0x20 <= b < 0x7F for b in text):
        raise _malformed("is not ASCII text", f, f"bytes {f.value.hex()}", "printable ASCII then NULs")
    return text.decode("ascii")


def _sized(f: OpaqueField, size: int) -> bytes:
    if len(f.value) != size:
        raise _malformed("has the wrong size", f, f"{len(f.value)} bytes", f"{size}")
    return f.value


@dataclass(frozen=True, slots=True)
class SpdmReport:
    """A parsed report: every field a copy of the report's bytes, or an integer the C core decoded.

    `request_nonce` is the caller's nonce (compare it with the expected one); `responder_nonce` is the
    GPU's own.  The signature covers the first `signed_size` bytes; `trailing_zero_bytes` is the zero
    padding accepted after it.  Each opaque type appears at most once (the C parser refuses a repeated
    type: two different values of, say, DRIVER_VERSION under one signature could only confuse), so
    `opaque_value` returns the one occurrence.
    """

    request_nonce: bytes
    request_attributes: int  # request Param1: 0x01, signature requested
    measurement_operation: int  # request Param2: 0xFF, all measurements
    slot_id: int  # request SlotIDParam, echoed as response Param2
    response_param1: int  # 0 (reserved)
    number_of_blocks: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: tuple[OpaqueField, ...]
    signed_size: int
    signature: bytes  # r || s, 48 bytes each, big-endian
    trailing_zero_bytes: int

    def opaque_field(self, type: int) -> OpaqueField | None:
        """The TLV of this type, or None when the report does not carry it."""
        for f in self.opaque:
            if f.type == type:
                return f
        return None

    def opaque_value(self, type: int) -> bytes | None:
        """The data of the TLV of this type (the only occurrence: repeats are refused), or None."""
        f = self.opaque_field(type)
        return None if f is None else f.value

    def measurement(self, index: int) -> bytes | None:
        """The value of the block with this SPDM index (1-based), or None."""
        for b in self.blocks:
            if b.index == index:
                return b.value
        return None

    @property
    def measurements(self) -> dict[int, bytes]:
        """Block index (1-based, as trustee's claims) -> value."""
        return {b.index: b.value for b in self.blocks}

    def _text(self, type: OpaqueType) -> str | None:
        f = self.opaque_field(type)
        return None if f is None else _ascii(f)

    def _uint(self, type: OpaqueType, size: int) -> int | None:
        f = self.opaque_field(type)
        return None if f is None else int.from_bytes(_sized(f, size), "little")

    @property
    def driver_version(self) -> str | None:
        """DRIVER_VERSION (3), ASCII NUL-terminated: "550.90.07"."""
        return self._text(OpaqueType.DRIVER_VERSION)

    @property
    def vbios_version(self) -> str | None:
        """VBIOS_VERSION (6).  A GPU sends 8 bytes b0..b7, printed "%02x.%02x.%02x.%02x.%02x" of b3, b2, b1,
        b0, b4 ("96.00.9f.00.01", as NVIDIA's verifier and trustee print it); an NVSwitch sends the version
        as ASCII text ("96.10.6D.00.01"), returned as it is."""
        f = self.opaque_field(OpaqueType.VBIOS_VERSION)
        if f is None:
            return None
        if len(f.value) == 8:
            b = f.value
            return f"{b[3]:02x}.{b[2]:02x}.{b[1]:02x}.{b[0]:02x}.{b[4]:02x}"
        return _ascii(f)

    @property
    def fwid(self) -> bytes | None:
        """FWID (20): the 48-byte SHA-384 the leaf certificate must carry; absent on old drivers (535.86.09)."""
        f = self.opaque_field(OpaqueType.FWID)
        return None if f is None else _sized(f, 48)

    @property
    def chip_info(self) -> str | None:
        """CHIP_INFO (35), ASCII NUL-terminated: "GB100" (Blackwell, opaque data version >= 1)."""
        return self._text(OpaqueType.CHIP_INFO)

    @property
    def project(self) -> str | None:
        """PROJECT (17), ASCII: "1010", "G520" (the VBIOS RIM id's first part)."""
        return self._text(OpaqueType.PROJECT)

    @property
    def project_sku(self) -> str | None:
        """PROJECT_SKU (18), ASCII: "0200"."""
        return self._text(OpaqueType.PROJECT_SKU)

    @property
    def chip_sku(self) -> str | None:
        """CHIP_SKU (15), ASCII, NUL-padded: "882"."""
        return self._text(OpaqueType.CHIP_SKU)

    @property
    def chip_sku_mod(self) -> str | None:
        """CHIP_SKU_MOD (16), ASCII: "0"."""
        return self._text(OpaqueType.CHIP_SKU_MOD)

    @property
    def nvdec0_status(self) -> int | None:
        """NVDEC0_STATUS (11): 0xAA (NVDEC0_ENABLED) or 0x55 (NVDEC0_DISABLED); one byte, nothing else."""
        f = self.opaque_field(OpaqueType.NVDEC0_STATUS)
        if f is None:
            return None
        value = _sized(f, 1)[0]
        if value not in (NVDEC0_ENABLED, NVDEC0_DISABLED):
            raise _malformed("is not a status", f, f"0x{value:02x}", "0xaa (enabled) or 0x55 (disabled)")
        return value

    @property
    def opaque_data_version(self) -> int:
        """OPAQUE_DATA_VERSION (34), uint16 LE; 0 when absent (older drivers)."""
        value = self._uint(OpaqueType.OPAQUE_DATA_VERSION, 2)
        return 0 if value is None else value

    @property
    def feature_flag(self) -> int | None:
        """FEATURE_FLAG (36), uint16 LE: 0 SPT, 1 MPT, 2 PPCIE (FEATURE_FLAGS); None when absent."""
        return self._uint(OpaqueType.FEATURE_FLAG, 2)

    @property
    def board_id(self) -> int | None:
        """BOARD_ID (14), uint32 LE."""
        return self._uint(OpaqueType.BOARD_ID, 4)

    @property
    def protected_pcie_status(self) -> int | None:
        """PROTECTED_PCIE_STATUS (21), one byte (0x55 single GPU, 0xAA PPCIe on the real samples)."""
        f = self.opaque_field(OpaqueType.PROTECTED_PCIE_STATUS)
        return None if f is None else _sized(f, 1)[0]

    @property
    def measurement_counts(self) -> tuple[int, ...] | None:
        """MSRSCNT (12): uint32 LE counters, the i-th for block index i + 1."""
        f = self.opaque_field(OpaqueType.MSRSCNT)
        if f is None:
            return None
        if len(f.value) % 4:
            raise _malformed("is not a list of uint32", f, f"{len(f.value)} bytes", "a multiple of 4")
        return tuple(v for (v,) in struct.iter_unpack("<I", f.value))

    @property
    def switch_pdis(self) -> tuple[bytes, ...] | None:
        """SWITCH_PDI (22): 8-byte PDIs (18 NVLinks on HGX H100; a switch's own PDI on an NVSwitch)."""
        f = self.opaque_field(OpaqueType.SWITCH_PDI)
        if f is None:
            return None
        if len(f.value) % 8:
            raise _malformed("is not a list of 8-byte PDIs", f, f"{len(f.value)} bytes", "a multiple of 8")
        return tuple(f.value[i:i + 8] for i in range(0, len(f.value), 8))


# ---- C struct -> SpdmReport ----

def _layout(ctype: str, fmt_of: dict[str, str]) -> struct.Struct:
    """A struct.Struct reading one element of a C array in place, built from cffi's offsets (so it
    follows the compiler's padding)."""
    fields = sorted((ffi.offsetof(ctype, name), name) for name in fmt_of)
    fmt, pos = "@", 0
    for offset, name in fields:
        fmt += "x" * (offset - pos) + fmt_of[name]
        pos = offset + struct.calcsize("@" + fmt_of[name])
    fmt += "x" * (ffi.sizeof(ctype) - pos)
    layout = struct.Struct(fmt)
    assert layout.size == ffi.sizeof(ctype), (ctype, fmt)
    return layout


_BLOCK = _layout("struct kbs_spdm_block", {"index": "B", "spec": "B", "value_type": "B", "value_size": "H",
                                           "value_offset": "N"})
_TLV = _layout("struct kbs_spdm_opaque", {"type": "H", "length": "H", "offset": "N"})
_BLOCK_FIELDS = [name for _, name in sorted((ffi.offsetof("struct kbs_spdm_block", n), n)
                                            for n in ("index", "spec", "value_type", "value_size", "value_offset"))]
_TLV_FIELDS = [name for _, name in sorted((ffi.offsetof("struct kbs_spdm_opaque", n), n)
                                          for n in ("type", "length", "offset"))]
# Where each field lands in an unpacked tuple.
_B_INDEX, _B_SPEC, _B_TYPE, _B_SIZE, _B_OFF = (_BLOCK_FIELDS.index(n) for n in
                                               ("index", "spec", "value_type", "value_size", "value_offset"))
_T_TYPE, _T_LEN, _T_OFF = (_TLV_FIELDS.index(n) for n in ("type", "length", "offset"))


def _from_struct(data: bytes, c: Any) -> SpdmReport:
    blocks = tuple(MeasurementBlock(b[_B_INDEX], b[_B_SPEC], b[_B_TYPE], data[b[_B_OFF]:b[_B_OFF] + b[_B_SIZE]])
                   for b in _BLOCK.iter_unpack(ffi.buffer(c.blocks, int(c.block_count) * _BLOCK.size)))
    opaque = tuple(OpaqueField(t[_T_TYPE], data[t[_T_OFF]:t[_T_OFF] + t[_T_LEN]], t[_T_OFF])
                   for t in _TLV.iter_unpack(ffi.buffer(c.opaque, int(c.opaque_count) * _TLV.size)))
    nonce, rnonce, sig = int(c.request_nonce_offset), int(c.responder_nonce_offset), int(c.signature_offset)
    return SpdmReport(
        request_nonce=data[nonce:nonce + SPDM_NONCE_SIZE], request_attributes=int(c.request_attributes),
        measurement_operation=int(c.request_operation), slot_id=int(c.slot_id),
        response_param1=int(c.response_param1), number_of_blocks=int(c.number_of_blocks), blocks=blocks,
        responder_nonce=data[rnonce:rnonce + SPDM_NONCE_SIZE], opaque=opaque,
        signed_size=int(c.signed_size), signature=data[sig:sig + SPDM_SIGNATURE_SIZE],
        trailing_zero_bytes=int(c.trailing_size))


# ---- where and what, for the message of each status ----

def _byte(off: int, seen: int, wanted: int, what: str) -> str:
    return f"{what} at byte {off} is 0x{seen:02x}, wanted 0x{wanted:02x}"


def _detail(status: int, c: Any) -> str:
    off, item, seen, wanted = int(c.error_offset), int(c.error_item), int(c.error_seen), int(c.error_wanted)
    blocks = int(c.number_of_blocks)
    block = f"block {item + 1} of {blocks}"
    tlv = f"opaque TLV {item + 1}"
    name = OpaqueType(seen).name if seen in OpaqueType._value2member_map_ else ""
    details = {
        lib.KBS_ERR_SPDM_FLAGS: f"flags 0x{seen:x}, known bits 0x{wanted:x}",
        lib.KBS_ERR_SPDM_REQUEST_TRUNCATED: f"the report is {seen} bytes, wanted at least {wanted}",
        lib.KBS_ERR_SPDM_REQUEST_VERSION: _byte(off, seen, wanted, "SPDMVersion"),
        lib.KBS_ERR_SPDM_REQUEST_CODE: _byte(off, seen, wanted, "RequestResponseCode"),
        lib.KBS_ERR_SPDM_REQUEST_ATTRIBUTES: _byte(off, seen, wanted, "Param1"),
        lib.KBS_ERR_SPDM_REQUEST_OPERATION: _byte(off, seen, wanted, "Param2"),
        lib.KBS_ERR_SPDM_REQUEST_SLOT: f"SlotIDParam at byte {off} is 0x{seen:02x}, wanted 0x00-0x{wanted:02x}",
        lib.KBS_ERR_SPDM_RESPONSE_TRUNCATED: f"{seen} bytes follow the request, wanted at least {wanted}",
        lib.KBS_ERR_SPDM_RESPONSE_VERSION: _byte(off, seen, wanted, "SPDMVersion"),
        lib.KBS_ERR_SPDM_RESPONSE_CODE: _byte(off, seen, wanted, "RequestResponseCode"),
        lib.KBS_ERR_SPDM_RESPONSE_PARAM1: _byte(off, seen, wanted, "Param1"),
        lib.KBS_ERR_SPDM_RESPONSE_SLOT: f"Param2 at byte {off} is {seen}, wanted the request's slot {wanted}",
        lib.KBS_ERR_SPDM_NO_BLOCKS: f"NumberOfBlocks at byte {off} is 0, wanted at least {wanted}",
        lib.KBS_ERR_SPDM_RECORD_TRUNCATED: f"MeasurementRecordLength at byte {off} is {seen}, but only {wanted} "
                                           "bytes follow the response header",
        lib.KBS_ERR_SPDM_BLOCK_TRUNCATED: f"{block} at byte {off}: {seen} bytes left in the record, wanted {wanted}",
        lib.KBS_ERR_SPDM_BLOCK_INDEX: f"{block} at byte {off} has index {seen}, wanted 1-{wanted}",
        lib.KBS_ERR_SPDM_BLOCK_DUPLICATE: f"{block} at byte {off} has index {seen}, already the index of block "
                                          f"{wanted + 1}",
        lib.KBS_ERR_SPDM_BLOCK_SPEC: f"{block}: " + _byte(off, seen, wanted, "MeasurementSpecification"),
        lib.KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE: f"{block}: MeasurementSize at byte {off} is {seen}, wanted at "
                                                 f"least {wanted}",
        lib.KBS_ERR_SPDM_BLOCK_VALUE_TYPE: f"{block}: DMTFSpecMeasurementValueType at byte {off} is 0x{seen:02x}, "
                                           f"wanted bit 7 clear (0x{wanted:02x})",
        lib.KBS_ERR_SPDM_BLOCK_VALUE_SIZE: f"{block}: DMTFSpecMeasurementValueSize at byte {off} is {seen}, wanted "
                                           f"{wanted}",
        lib.KBS_ERR_SPDM_BLOCK_COUNT: f"the record ends at byte {off} after {seen} blocks, NumberOfBlocks is "
                                      f"{wanted}",
        lib.KBS_ERR_SPDM_RECORD_TRAILING: f"{seen} bytes left at byte {off} after block {item} of {blocks}, "
                                          "wanted 0",
        lib.KBS_ERR_SPDM_NONCE_TRUNCATED: f"{seen} bytes left at byte {off}, wanted {wanted}",
        lib.KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED: f"{seen} bytes left at byte {off}, wanted {wanted}",
        lib.KBS_ERR_SPDM_OPAQUE_TRUNCATED: f"OpaqueLength at byte {off} is {seen}, but only {wanted} bytes follow "
                                           "it",
        lib.KBS_ERR_SPDM_TLV_TRUNCATED: f"{tlv} at byte {off}: {seen} bytes left in the opaque data, wanted "
                                        f"{wanted}",
        lib.KBS_ERR_SPDM_TLV_OVERRUN: f"{tlv}: DataSize at byte {off} is {seen}, but only {wanted} bytes are left "
                                      "in the opaque data",
        lib.KBS_ERR_SPDM_TLV_TYPE: f"{tlv} at byte {off} has type {seen} (0x{seen:04x}), wanted 1-26 or 32-36",
        lib.KBS_ERR_SPDM_TLV_DUPLICATE: f"{tlv} at byte {off} has type {seen} ({name}), already the type of "
                                        f"TLV {wanted + 1}",
        lib.KBS_ERR_SPDM_SIGNATURE_TRUNCATED: f"{seen} bytes left at byte {off}, wanted {wanted}",
        lib.KBS_ERR_SPDM_TRAILING_BYTES: f"byte {off} is 0x{seen:02x}, wanted 0x00",
        lib.KBS_ERR_SPDM_PADDING: f"{seen} zero bytes from byte {off}, wanted none",
        lib.KBS_ERR_SPDM_KEY: f"the key is {seen} bytes, wanted 0x04 || X || Y ({wanted} bytes) on P-384",
        lib.KBS_ERR_SPDM_SIG_RANGE: f"signature at byte {off}",
        lib.KBS_ERR_SPDM_SIG_INVALID: f"signature at byte {off} over bytes 0-{off - 1}",
    }
    return details.get(status, "")


def _raise_for(status: int, c: Any) -> None:
    if status != lib.KBS_OK:
        raise_for(status, detail=_detail(status, c))


def _flags(no_padding: bool) -> int:
    return int(lib.KBS_SPDM_NO_PADDING) if no_padding else 0


def spdm_parse(data: bytes, *, no_padding: bool = False) -> SpdmReport:
    """Parse and format-check a report; raises MalformedEvidence(check="nvgpu.parse") naming the field.

    Zero bytes after the signature are accepted as padding (and counted) unless `no_padding`, NVIDIA's
    C++ SDK's rule; any other byte after it is refused.
    """
    data = bytes(data)
    out = ffi.new("struct kbs_spdm_report *")
    _raise_for(int(lib.kbs_spdm_parse(data, len(data), _flags(no_padding), out)), out)
    return _from_struct(data, out)


def _verify_into(out: Any, data: bytes, point: bytes, flags: int, cache: P384KeyCache | None) -> int:
    """kbs_spdm_verify into `out`, through the leaf key's table when the cache has one.

    The table is only looked up before the call; a key's sighting is counted (and its table built on the
    cache's build_after-th) only once a report verified with it, so a key that never signed anything
    never gets a table nor pushes a real one out of the cache.
    """
    if cache is not None:
        table = cache.get(point)
        if table is not None:
            return int(lib.kbs_spdm_verify_with_table(data, len(data), flags, table.c_pointer(), out))
    status = int(lib.kbs_spdm_verify(data, len(data), flags, point, len(point), out))
    if status == lib.KBS_OK and cache is not None:
        cache.table_for(point)
    return status


def spdm_verify(data: bytes, leaf_point: bytes, cache: P384KeyCache | None = None, *,
                no_padding: bool = False) -> SpdmReport:
    """Parse, then verify the signature over SHA-384 of the signed bytes with the leaf key (the 97-byte
    uncompressed point of the device chain's first certificate), in one GIL-released C call.

    Format errors are MalformedEvidence(check="nvgpu.parse"); a key that is not a P-384 point, r or s out
    of range, or a signature that does not verify are SignatureInvalid(check="nvgpu.signature").  With
    `cache` the key verifies through its table once it has earned one (a GPU signs every report it makes).
    """
    data, point = bytes(data), bytes(leaf_point)
    out = ffi.new("struct kbs_spdm_report *")
    _raise_for(_verify_into(out, data, point, _flags(no_padding), cache), out)
    return _from_struct(data, out)


def spdm_verify_signature(data: bytes, leaf_point: bytes, cache: P384KeyCache | None = None, *,
                          no_padding: bool = False) -> None:
    """`spdm_verify`'s checks and errors without building the SpdmReport (a caller that parsed it already)."""
    data = bytes(data)
    out = ffi.new("struct kbs_spdm_report *")
    _raise_for(_verify_into(out, data, bytes(leaf_point), _flags(no_padding), cache), out)


def spdm_verify_status(data: bytes, leaf_point: bytes, cache: P384KeyCache | None = None, *,
                       no_padding: bool = False) -> int:
    """The raw kbs_status of `spdm_verify` without building Python objects (hot loops, benchmarks)."""
    out = ffi.new("struct kbs_spdm_report *")
    return _verify_into(out, bytes(data), bytes(leaf_point), _flags(no_padding), cache)
