"""Synthetic CC event logs (TCG crypto-agile format) built by the tests, with the RTMRs they replay to.

    Spec ID event   u32 index · u32 EV_NO_ACTION · 20 zero bytes · u32 size · TCG_EfiSpecIDEvent
    event           u32 index · u32 type · u32 count · {u16 alg, digest} * count · u32 size · data
    end             eight 0xFF bytes (the CoCo attester's end marker)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

SHA256, SHA384, SHA512, SM3, SHA1 = 0xB, 0xC, 0xD, 0x12, 0x4
SIZES = {SHA1: 20, SHA256: 32, SHA384: 48, SHA512: 64, SM3: 32}
HASHES = {SHA256: "sha256", SHA384: "sha384", SHA512: "sha512", SM3: "sm3", SHA1: "sha1"}
EV_NO_ACTION, EV_SEPARATOR, EV_EVENT_TAG, EV_PLATFORM_CONFIG_FLAGS, EV_IPL = 0x3, 0x4, 0x6, 0xA, 0xD
EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000001, 0x80000003
EV_EFI_ACTION, EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x80000007, 0x8000000A
END = b"\xff" * 8
AAEL = 0x4141454C


def spec_id_event(algorithms: Sequence[tuple[int, int]] = ((SHA384, 48),), *, vendor: bytes = b"kbs-test",
                  signature: bytes = b"Spec ID Event03\x00", index: int = 0, extra: bytes = b"") -> bytes:
    body = signature + struct.pack("<IBBBB", 0, 0, 2, 0, 2) + struct.pack("<I", len(algorithms))
    body += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms)
    body += bytes([len(vendor)]) + vendor + extra
    return struct.pack("<II", index, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body


def digest_of(data: bytes, algorithm: int = SHA384) -> bytes:
    return hashlib.new(HASHES[algorithm], data).digest()


def event(index: int, event_type: int, data: bytes, digests: Iterable[tuple[int, bytes]] | None = None) -> bytes:
    """One TCG_PCR_EVENT2; by default with the SHA-384 digest of its data."""
    listed = list(digests) if digests is not None else [(SHA384, digest_of(data))]
    out = struct.pack("<III", index, event_type, len(listed))
    out += b"".join(struct.pack("<H", alg) + value for alg, value in listed)
    return out + struct.pack("<I", len(data)) + data


def build_log(events: Iterable[bytes], *, header: bytes | None = None, end: bytes = END) -> bytes:
    return (spec_id_event() if header is None else header) + b"".join(events) + end


def replay(extends: Iterable[tuple[int, bytes]]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 from (MR index 1..4, SHA-384 digest) pairs, computed here independently of the parser."""
    rtmrs = [bytes(48)] * 4
    for index, digest in extends:
        rtmrs[index - 1] = hashlib.sha384(rtmrs[index - 1] + digest).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def tagged(tag: int, data: bytes) -> bytes:
    return struct.pack("<II", tag, len(data)) + data


def aael(domain: str, operation: str, content: str) -> bytes:
    return tagged(AAEL, f"{domain} {operation} {content}".encode())


def efi_variable(guid: bytes, name: str, value: bytes) -> bytes:
    encoded = name.encode("utf-16-le")
    return guid + struct.pack("<QQ", len(name), len(value)) + encoded + value


def device_node(node_type: int, sub_type: int, data: bytes) -> bytes:
    return struct.pack("<BBH", node_type, sub_type, 4 + len(data)) + data


def file_node(path: str) -> bytes:
    return device_node(4, 4, (path + "\x00").encode("utf-16-le"))


END_NODE = device_node(0x7F, 0xFF, b"")


def image_load(nodes: Sequence[bytes], *, location: int = 0x7D000000, length: int = 0xA5A200) -> bytes:
    path = b"".join(nodes) + END_NODE
    return struct.pack("<QQQQ", location, length, 0, len(path)) + path


def sample_log() -> tuple[bytes, tuple[bytes, bytes, bytes, bytes]]:
    """A small log touching every RTMR and several decoders, and the RTMRs it replays to."""
    entries = [
        (1, EV_PLATFORM_CONFIG_FLAGS, b"td_hob\x00\x00\x10\x00\x00config"),
        (1, EV_EFI_VARIABLE_DRIVER_CONFIG, efi_variable(bytes(range(16)), "SecureBoot", b"\x00")),
        (1, EV_SEPARATOR, bytes(4)),
        (2, EV_EFI_BOOT_SERVICES_APPLICATION, image_load([file_node("kernel")])),
        (2, EV_EVENT_TAG, tagged(0xEC2C0000, b"LOADED_IMAGE::LoadOptions\x00")),
        (2, EV_SEPARATOR, bytes(4)),
        (3, EV_IPL, b"grub_cmd: linux /vmlinuz\x00"),
        (4, EV_EVENT_TAG, aael("github.com/confidential-containers", "PullImage",
                               '{"image": "busybox", "digest": "sha256:00"}')),
    ]
    log = build_log(event(i, t, d) for i, t, d in entries)
    return log, replay((i, digest_of(d)) for i, _, d in entries)
