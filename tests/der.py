"""DER surgery for tests: build and split TLVs to make objects the real builders refuse to make."""

from __future__ import annotations


def tlv(tag: int, body: bytes) -> bytes:
    """One DER element with a definite length."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def split(data: bytes) -> list[bytes]:
    """The whole TLVs that make up `data` (a SEQUENCE's contents), for well-formed DER."""
    out = []
    offset = 0
    while offset < len(data):
        first = data[offset + 1]
        header, length = 2, first
        if first & 0x80:
            count = first & 0x7F
            header, length = 2 + count, int.from_bytes(data[offset + 2:offset + 2 + count], "big")
        out.append(data[offset:offset + header + length])
        offset += header + length
    return out


def contents(element: bytes) -> bytes:
    """An element's contents (its header dropped)."""
    first = element[1]
    return element[2 + (first & 0x7F if first & 0x80 else 0):]
