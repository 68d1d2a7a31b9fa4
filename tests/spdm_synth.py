"""Synthetic NVIDIA GPU attestation reports (SPDM 1.1 GET_MEASUREMENTS request || MEASUREMENTS response),
signed by a test P-384 key, for tests of the GPU evidence path without real GPUs.

    key = ec.generate_private_key(ec.SECP384R1())
    report = SyntheticSpdm(key, nonce=expected_nonce).build()          # 64 SHA-384 blocks, Hopper-like TLVs
    native.spdm_verify(report, point_of(key))

    SyntheticSpdm(key, blocks=[Block(1, digest), Block(7, other)], opaque=[tlv(3, b"570.1\\0")]).build()

Every field has the value a real H100 sends unless given; each layout rule of reference/gpu.md §1 can be
broken on purpose (a wrong version or code, NumberOfBlocks or a record length that lies, a block with
another specification, a raw bit stream, a value size that disagrees, raw record or opaque bytes, an
opaque length that lies, a signature of your own, bytes after the signature).  The report is always
signed over exactly the bytes before its signature, so a test of one rule sees only that rule broken.
Nothing here comes from the shared vectors.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

P384_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


def point_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key's public point, 0x04 || X || Y (97 bytes), as spdm_verify takes it."""
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-384 over SHA-384 of `message`, as a report carries it: r || s, 48 bytes each, big-endian."""
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def tlv(type: int, data: bytes, size: int | None = None) -> bytes:
    """One opaque TLV: uint16 type, uint16 size (`size` to lie about it), the data."""
    return struct.pack("<HH", type, len(data) if size is None else size) + data


@dataclass(frozen=True)
class Block:
    """One DMTF measurement block.  `measurement_size` and `value_size` override the sizes written
    (by default 3 + len(value) and len(value))."""

    index: int
    value: bytes = bytes(48)
    spec: int = 0x01
    value_type: int = 0x01  # bit 7 clear: a digest; 1 = mutable firmware
    measurement_size: int | None = None
    value_size: int | None = None

    def encode(self) -> bytes:
        measurement_size = 3 + len(self.value) if self.measurement_size is None else self.measurement_size
        value_size = len(self.value) if self.value_size is None else self.value_size
        return struct.pack("<BBHBH", self.index, self.spec, measurement_size, self.value_type,
                           value_size) + self.value


def digest_blocks(count: int = 64, seed: bytes = b"gpu") -> list[Block]:
    """`count` blocks with indices 1..count and distinct SHA-384 values (every fourth all zero, as unused
    indices are on real GPUs)."""
    return [Block(i, bytes(48) if i % 4 == 0 else hashlib.sha384(seed + bytes([i % 256, i // 256])).digest())
            for i in range(1, count + 1)]


def hopper_opaque(driver: str = "550.90.07", vbios: bytes = bytes.fromhex("009f009601000000"), blocks: int = 64,
                  fwid: bytes | None = None, extra: Sequence[tuple[int, bytes]] = ()) -> list[tuple[int, bytes]]:
    """The TLVs of an H100 on a recent driver, in the order it sends them (types 6, 14-19, 3, 4, 12, 13,
    11, 20, 21, 34, 36), then `extra`."""
    fwid = hashlib.sha384(b"fwid").digest() if fwid is None else fwid
    return [
        (6, vbios), (14, bytes.fromhex("b1030000")), (15, b"882".ljust(9, b"\0")), (16, b"0".ljust(5, b"\0")),
        (17, b"1010\0"), (18, b"0200\0"), (19, bytes(2)), (3, driver.encode() + b"\0"),
        (4, bytes.fromhex("8001000000000000")), (12, struct.pack(f"<{blocks}I", *range(blocks))),
        (13, bytes.fromhex("00c00100")), (11, b"\x55"), (20, fwid), (21, b"\x55"), (34, b"\x01\x00"),
        (36, b"\x00\x00"), *extra,
    ]


@dataclass
class SyntheticSpdm:
    """A report to build: the request and response fields, each with the value a real GPU sends unless
    given.  `blocks` and `opaque` are encoded as given (order kept, nothing sorted or checked), so
    duplicates, odd indices, unknown TLV types and oversized values are all possible.

    Breaking the layout: `number_of_blocks`, `record_length` and `opaque_length` replace the stated
    counts and lengths (default: the true ones); `record` and `opaque_data` replace the encoded blocks or
    TLVs by raw bytes; `signature` replaces the signature (default: a valid one over the bytes before it);
    `padding` goes after the signature.
    """

    key: ec.EllipticCurvePrivateKey
    nonce: bytes = bytes(range(32))
    blocks: Sequence[Block] = field(default_factory=digest_blocks)
    opaque: Sequence[tuple[int, bytes]] = field(default_factory=hopper_opaque)
    responder_nonce: bytes = bytes(range(100, 132))
    slot: int = 0
    request_version: int = 0x11
    request_code: int = 0xE0
    attributes: int = 0x01
    operation: int = 0xFF
    response_version: int = 0x11
    response_code: int = 0x60
    response_param1: int = 0
    response_slot: int | None = None  # default: `slot`
    number_of_blocks: int | None = None
    record: bytes | None = None
    record_length: int | None = None
    opaque_data: bytes | None = None
    opaque_length: int | None = None
    signature: bytes | None = None
    padding: bytes = b""

    @property
    def point(self) -> bytes:
        return point_of(self.key)

    def request(self) -> bytes:
        if len(self.nonce) != 32:
            raise ValueError("the requester nonce is 32 bytes")
        return bytes([self.request_version, self.request_code, self.attributes, self.operation]) + self.nonce + \
            bytes([self.slot])

    def record_bytes(self) -> bytes:
        return b"".join(b.encode() for b in self.blocks) if self.record is None else self.record

    def opaque_bytes(self) -> bytes:
        return b"".join(tlv(t, d) for t, d in self.opaque) if self.opaque_data is None else self.opaque_data

    def signed_part(self) -> bytes:
        """Request || response up to the signature: the bytes the signature covers."""
        record, opaque = self.record_bytes(), self.opaque_bytes()
        count = len(self.blocks) if self.number_of_blocks is None else self.number_of_blocks
        record_length = len(record) if self.record_length is None else self.record_length
        opaque_length = len(opaque) if self.opaque_length is None else self.opaque_length
        if len(self.responder_nonce) != 32:
            raise ValueError("the responder nonce is 32 bytes")
        header = bytes([self.response_version, self.response_code, self.response_param1,
                        self.slot if self.response_slot is None else self.response_slot, count])
        return (self.request() + header + record_length.to_bytes(3, "little") + record + self.responder_nonce
                + struct.pack("<H", opaque_length) + opaque)

    def build(self) -> bytes:
        signed = self.signed_part()
        signature = sign(self.key, signed) if self.signature is None else self.signature
        return signed + signature + self.padding
