"""The CC event log (CCEL) a TDX guest sends, parsed strictly, and the RTMRs it replays to.

What the guest sends (`cc_eventlog`, base64): the CCEL *log area* (Linux:
`/sys/firmware/acpi/tables/data/CCEL`), not the 56-byte CCEL ACPI table that points at it.  The
CoCo attester cuts the log area at its end marker, appends its own AAEL events (EV_EVENT_TAG) and
ends with eight 0xFF bytes; Trustee's sample `CCEL_data` is a whole 1 MiB log area, zero-filled after
the last event.  Both parse the same way: the log is a TCG crypto-agile event log (TCG PC Client
Platform Firmware Profile, `EFI_TCG2_EVENT_LOG_FORMAT_TCG_2`):

    TCG_PCR_EVENT    (the first event, SHA-1 format)  u32 index · u32 type = EV_NO_ACTION ·
                     20-byte digest · u32 size · TCG_EfiSpecIDEvent {signature "Spec ID Event03\\0",
                     u32 platform class, u8 minor, u8 major, u8 errata, u8 uintn size, u32 number of
                     algorithms, {u16 algorithm id, u16 digest size} * n, u8 vendor size, vendor bytes}
    TCG_PCR_EVENT2   (every later event)  u32 index · u32 type · u32 digest count ·
                     {u16 algorithm id, digest} * count · u32 size · event data
    end              eight 0x00 or eight 0xFF bytes where the next event would start, or the buffer's end

The index of an event is the CC measurement-register index (UEFI 2.11 §38): 0 is MRTD (built by the
TDX module, never extended from the log), 1..4 are RTMR0..3.  Each RTMR starts at 48 zero bytes and
every event for it extends it: RTMR = SHA-384(RTMR ‖ the event's SHA-384 digest).

Strict where Trustee (deps/eventlog) is lenient, so a log we accept replays the same under both:
  * every length is checked against the bytes left before it is used; at most MAX_EVENTS events and
    MAX_EVENTLOG_BYTES bytes; the loops are bounded by the input, nothing recurses on it;
  * the first event must be a crypto-agile Spec ID event ("Spec ID Event03", or the all-zero
    signature of the attester's own header for an AAEL-only log; its MR index means nothing: td-shim
    writes 0, TDVF 1) whose size covers exactly its fields; its algorithms must be distinct hashes
    of the right digest size (SHA-256, SHA-384, SHA-512, SM3 when this Python has it) and include
    SHA-384.  SHA-1 banks are refused (Trustee refuses them too, when it first compares such a digest);
  * an event names each algorithm at most once and only algorithms of the header; an event for
    RTMR0..3 must carry a SHA-384 digest (Trustee would silently not replay it);
  * index 0 holds only EV_NO_ACTION events with all-zero digests (informational, e.g. Google's
    SP800-155 events); EV_NO_ACTION is not allowed for RTMR0..3 (TCG says it is never extended,
    Trustee extends it: refusing it keeps the two replays equal); an index above 4 is refused;
  * an event type Trustee does not know is refused (as Trustee does), and so is event data its
    decoder for that type rejects;
  * after the end marker only 0x00/0xFF fill may follow; a partial marker (1..7 bytes) is refused.

Per-event details (`uefi_event_logs`) reproduce Trustee's JSON: `details` decoded per event type
(strings, UEFI variables, device paths, AAEL entries), `digest_matches_event` (every digest equals
the hash of the event data), `digests` with TCG algorithm names, `event` (standard base64),
`index`, `type_name`.  Errors are MalformedEvidence with a check label `eventlog.<what>`; a replay
that differs from the quote is EvidenceError `eventlog.rtmr`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kbs.errors import EvidenceError, MalformedEvidence

MAX_EVENTLOG_BYTES = 2 * 1024 * 1024  # decoded; a whole log area is 64 KiB..1 MiB, the attester's trimmed log far less
MAX_EVENTS = 4096  # real logs: 5 (td-shim) to ~100 (grub, AAEL)
MAX_ALGORITHMS = 8
RTMR_COUNT = 4
RTMR_SIZE = 48

EV_NO_ACTION = 0x3
AAEL_TAGGED_EVENT_ID = 0x4141454C  # ASCII "AAEL" as a big-endian u32

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
AAEL_HEADER_SIGNATURE = bytes(16)  # the CoCo attester's fixed header for an AAEL-only log

TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512, TPM_ALG_SM3 = 0x4, 0xB, 0xC, 0xD, 0x12
ALGORITHM_NAMES = {0x1: "RSA", 0x3: "TDES", TPM_ALG_SHA1: "SHA-1", TPM_ALG_SHA256: "SHA-256",
                   TPM_ALG_SHA384: "SHA-384", TPM_ALG_SHA512: "SHA-512", TPM_ALG_SM3: "SM3"}
_HASHLIB_NAMES = {TPM_ALG_SHA256: "sha256", TPM_ALG_SHA384: "sha384", TPM_ALG_SHA512: "sha512",
                  TPM_ALG_SM3: "sm3"}
DIGEST_SIZES = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48, TPM_ALG_SHA512: 64, TPM_ALG_SM3: 32}

# TCG PC Client PFP event types, named as Trustee names them (`type_name`).
EVENT_TYPES = {
    0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x2: "EV_UNUSED", 0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR", 0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION", 0x9: "EV_CPU_MICROCODE", 0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES", 0xC: "EV_COMPACT_HASH", 0xD: "EV_IPL", 0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE", 0x10: "EV_NONHOST_CONFIG", 0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000000: "EV_EFI_EVENT_BASE", 0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT", 0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER", 0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT", 0x80000007: "EV_EFI_ACTION", 0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES", 0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2", 0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT", 0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB", 0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


def _malformed(message: str, what: str) -> MalformedEvidence:
    return MalformedEvidence(f"CC event log: {message}", check=f"eventlog.{what}")


class _EventDataError(ValueError):
    """Event data its type's decoder rejects (Trustee refuses the whole log for it)."""


# --- the log -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EventDigest:
    algorithm: int  # TCG algorithm id
    digest: bytes

    @property
    def algorithm_name(self) -> str:
        return ALGORITHM_NAMES[self.algorithm]


@dataclass(frozen=True, slots=True)
class Event:
    """One TCG_PCR_EVENT2.  `index` is the CC MR index: 1..4 extend RTMR0..3, 0 is informational."""

    index: int
    event_type: int
    digests: tuple[EventDigest, ...]
    data: bytes
    offset: int  # where the event starts in the log
    details: dict[str, Any] = field(compare=False)
    digest_matches_event: bool = field(compare=False)

    @property
    def type_name(self) -> str:
        return EVENT_TYPES[self.event_type]

    @property
    def rtmr(self) -> int | None:
        """The RTMR this event extends (0..3), or None for an informational event."""
        return self.index - 1 if 1 <= self.index <= RTMR_COUNT else None

    def digest(self, algorithm: int = TPM_ALG_SHA384) -> bytes | None:
        return next((d.digest for d in self.digests if d.algorithm == algorithm), None)

    def claim(self) -> dict[str, Any]:
        """The event as Trustee reports it in `uefi_event_logs`."""
        return {
            "details": copy.deepcopy(self.details),
            "digest_matches_event": self.digest_matches_event,
            "digests": [{"alg": d.algorithm_name, "digest": d.digest.hex()} for d in self.digests],
            "event": base64.b64encode(self.data).decode("ascii"),
            "index": self.index,
            "type_name": self.type_name,
        }


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed CC event log: its header's algorithms and its events, in order."""

    algorithms: tuple[tuple[int, int], ...]  # (TCG algorithm id, digest size) from the Spec ID event
    spec_signature: bytes
    vendor_info: bytes
    events: tuple[Event, ...]
    end: int  # offset of the end marker (or the buffer's end): the log's own bytes are data[:end]

    @property
    def algorithm_names(self) -> list[str]:
        return [ALGORITHM_NAMES[a] for a, _ in self.algorithms]

    def replay(self) -> tuple[bytes, bytes, bytes, bytes]:
        return replay_rtmrs(self)

    def claims(self) -> list[dict[str, Any]]:
        return uefi_event_logs(self)


def decode_cc_eventlog(value: object) -> bytes:
    """`cc_eventlog` of the CoCo TDX evidence: canonical standard base64 (padded), size-bounded first.

    An absent log is the verifier's business: Trustee treats null and "" alike, as no log."""
    if not isinstance(value, str):
        raise _malformed(f"cc_eventlog must be a base64 string, got {type(value).__name__}", "base64")
    if len(value) > 4 * ((MAX_EVENTLOG_BYTES + 2) // 3):
        raise _malformed(f"cc_eventlog is {len(value)} base64 characters; at most "
                         f"{MAX_EVENTLOG_BYTES} bytes are accepted", "size")
    try:
        encoded = value.encode("ascii")
        data = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _malformed(f"cc_eventlog is not standard base64 ({exc})", "base64") from None
    if base64.b64encode(data) != encoded:  # one encoding per log: no extra padding, no stray bits
        raise _malformed("cc_eventlog is not canonical standard base64", "base64")
    return data


class _Reader:
    """Bounds-checked little-endian reads; running past the end is `eventlog.truncated`."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise _malformed(f"{what} at offset {self.pos} needs {size} bytes, {len(self.data) - self.pos} "
                             "are left", "truncated")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u16(self, what: str) -> int:
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value


def parse_eventlog(data: bytes) -> EventLog:
    """Parse a CC event log (bytes, already base64-decoded).  Raises MalformedEvidence(eventlog.*)."""
    data = bytes(data)
    if len(data) > MAX_EVENTLOG_BYTES:
        raise _malformed(f"{len(data)} bytes; at most {MAX_EVENTLOG_BYTES} are accepted", "size")
    if not data:
        raise _malformed("empty", "size")
    if data[:4] == b"CCEL":
        raise _malformed("starts with the CCEL ACPI table header; send the log area it points at "
                         "(/sys/firmware/acpi/tables/data/CCEL), as the CoCo attester does", "header")
    reader = _Reader(data)
    algorithms, signature, vendor = _spec_id_event(reader)
    sizes = dict(algorithms)
    events: list[Event] = []
    while True:
        left = len(data) - reader.pos
        if left == 0:
            end = reader.pos
            break
        if left < 8:
            raise _malformed(f"{left} bytes after the last event at offset {reader.pos}: neither an event "
                             "nor an 8-byte end marker", "truncated")
        marker = data[reader.pos:reader.pos + 8]
        if marker in (b"\x00" * 8, b"\xff" * 8):
            end = reader.pos
            _check_fill(data, reader.pos + 8)
            break
        if len(events) == MAX_EVENTS:
            raise _malformed(f"more than {MAX_EVENTS} events", "count")
        events.append(_event(reader, sizes))
    return EventLog(algorithms=algorithms, spec_signature=signature, vendor_info=vendor,
                    events=tuple(events), end=end)


def _check_fill(data: bytes, start: int) -> None:
    rest = data[start:]
    if rest.translate(None, b"\x00\xff"):
        first = next(i for i, b in enumerate(rest) if b not in (0, 0xFF))
        raise _malformed(f"byte {rest[first]:#04x} at offset {start + first} after the end marker; only "
                         "0x00/0xFF fill may follow it", "trailing")


def _spec_id_event(reader: _Reader) -> tuple[tuple[tuple[int, int], ...], bytes, bytes]:
    index = reader.u32("Spec ID event index")
    event_type = reader.u32("Spec ID event type")
    reader.take(20, "Spec ID event digest")
    size = reader.u32("Spec ID event size")
    if event_type != EV_NO_ACTION or index > RTMR_COUNT:  # its index means nothing: td-shim has 0, TDVF 1
        raise _malformed(f"the first event must be the Spec ID event (EV_NO_ACTION), it has MR index {index} and "
                         f"type {event_type:#x}", "header")
    body = _Reader(reader.take(size, "Spec ID event"))
    signature = body.take(16, "Spec ID signature")
    if signature not in (SPEC_ID_SIGNATURE, AAEL_HEADER_SIGNATURE):
        raise _malformed(f"Spec ID signature is {signature!r}, wanted 'Spec ID Event03' (crypto-agile log)",
                         "header")
    body.take(8, "Spec ID platform class and version")
    count = body.u32("Spec ID number of algorithms")
    if not 1 <= count <= MAX_ALGORITHMS:
        raise _malformed(f"Spec ID event lists {count} algorithms; 1..{MAX_ALGORITHMS} are accepted", "algorithms")
    algorithms: list[tuple[int, int]] = []
    for _ in range(count):
        algorithm = body.u16("Spec ID algorithm id")
        digest_size = body.u16("Spec ID digest size")
        name = ALGORITHM_NAMES.get(algorithm, f"{algorithm:#06x}")
        if algorithm not in _HASHLIB_NAMES:
            raise _malformed(f"algorithm {name} is not supported (SHA-256, SHA-384, SHA-512, SM3)", "algorithms")
        if algorithm == TPM_ALG_SM3 and "sm3" not in hashlib.algorithms_available:
            raise _malformed("the log has an SM3 bank and this Python's hashlib has no SM3", "algorithms")
        if digest_size != DIGEST_SIZES[algorithm]:
            raise _malformed(f"Spec ID event says {name} digests are {digest_size} bytes, they are "
                             f"{DIGEST_SIZES[algorithm]}", "algorithms")
        if any(a == algorithm for a, _ in algorithms):
            raise _malformed(f"Spec ID event lists {name} twice", "algorithms")
        algorithms.append((algorithm, digest_size))
    if not any(a == TPM_ALG_SHA384 for a, _ in algorithms):
        raise _malformed("the log has no SHA-384 bank, so it cannot be replayed against the RTMRs", "algorithms")
    vendor = body.take(body.take(1, "Spec ID vendor info size")[0], "Spec ID vendor info")
    if body.pos != len(body.data):
        raise _malformed(f"Spec ID event is {size} bytes, its fields take {body.pos}", "header")
    return tuple(algorithms), signature, vendor


def _event(reader: _Reader, sizes: dict[int, int]) -> Event:
    offset = reader.pos
    index = reader.u32("event index")
    event_type = reader.u32("event type")
    if event_type not in EVENT_TYPES:
        raise _malformed(f"event at offset {offset} has unknown type {event_type:#x}", "event_type")
    type_name = EVENT_TYPES[event_type]
    if index > RTMR_COUNT:
        raise _malformed(f"{type_name} event at offset {offset} is for MR index {index}; a TD has MRTD (0) and "
                         "RTMR0..3 (1..4)", "index")
    if index == 0 and event_type != EV_NO_ACTION:
        raise _malformed(f"{type_name} event at offset {offset} is for MR index 0 (MRTD), which no event extends",
                         "index")
    if index != 0 and event_type == EV_NO_ACTION:
        raise _malformed(f"EV_NO_ACTION event at offset {offset} is for RTMR{index - 1}; it extends nothing and "
                         "belongs to index 0", "index")
    count = reader.u32("event digest count")
    if not 1 <= count <= len(sizes):
        raise _malformed(f"{type_name} event at offset {offset} has {count} digests; the header has "
                         f"{len(sizes)} algorithms", "digest")
    digests: list[EventDigest] = []
    for _ in range(count):
        algorithm = reader.u16("digest algorithm")
        if algorithm not in sizes:
            raise _malformed(f"{type_name} event at offset {offset} has a digest of algorithm "
                             f"{ALGORITHM_NAMES.get(algorithm, hex(algorithm))}, which the header does not list",
                             "digest")
        if any(d.algorithm == algorithm for d in digests):
            raise _malformed(f"{type_name} event at offset {offset} has two {ALGORITHM_NAMES[algorithm]} digests",
                             "digest")
        digests.append(EventDigest(algorithm, reader.take(sizes[algorithm], "digest")))
    if event_type == EV_NO_ACTION:
        if any(any(d.digest) for d in digests):
            raise _malformed(f"EV_NO_ACTION event at offset {offset} has a non-zero digest", "digest")
    elif not any(d.algorithm == TPM_ALG_SHA384 for d in digests):
        raise _malformed(f"{type_name} event at offset {offset} for RTMR{index - 1} has no SHA-384 digest",
                         "digest")
    size = reader.u32("event data size")
    event_data = reader.take(size, f"{type_name} event data")
    try:
        matches = _digests_match(event_data, digests)
        details = _DECODERS.get(event_type, _blank)(event_data)
    except _EventDataError as exc:
        raise _malformed(f"{type_name} event at offset {offset}: {exc}", "event") from None
    return Event(index=index, event_type=event_type, digests=tuple(digests), data=event_data, offset=offset,
                 details=details, digest_matches_event=matches)


def _digests_match(data: bytes, digests: Sequence[EventDigest]) -> bool:
    """Trustee's `digest_matches_event`: every digest is the hash of the event data."""
    return all(hashlib.new(_HASHLIB_NAMES[d.algorithm], data).digest() == d.digest for d in digests)


# --- replay ------------------------------------------------------------------------------------------

def replay_rtmrs(log: EventLog) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 as the log's events extend them from 48 zero bytes (SHA-384 bank)."""
    rtmrs = [bytes(RTMR_SIZE)] * RTMR_COUNT
    for event in log.events:
        rtmr, digest = event.rtmr, event.digest(TPM_ALG_SHA384)
        if rtmr is not None and digest is not None:  # the parser guarantees a digest for RTMR events
            rtmrs[rtmr] = hashlib.sha384(rtmrs[rtmr] + digest).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def check_rtmrs(log: EventLog, quote_rtmrs: Sequence[bytes]) -> None:
    """The replayed RTMRs must equal the quote's, all four; else EvidenceError(check="eventlog.rtmr")."""
    if len(quote_rtmrs) != RTMR_COUNT:
        raise ValueError(f"a TD quote has {RTMR_COUNT} RTMRs, got {len(quote_rtmrs)}")
    for i, (replayed, quoted) in enumerate(zip(replay_rtmrs(log), quote_rtmrs, strict=True)):
        if replayed != bytes(quoted):
            count = sum(1 for e in log.events if e.rtmr == i)
            raise EvidenceError(f"event log replays RTMR{i} to {replayed.hex()[:16]}… ({count} events), the "
                                f"quote has {bytes(quoted).hex()[:16]}…", check="eventlog.rtmr")


def uefi_event_logs(log: EventLog) -> list[dict[str, Any]]:
    """Trustee's `uefi_event_logs` claim: every event after the Spec ID event, in order."""
    return [event.claim() for event in log.events]


# --- event data decoders (Trustee's `details`) -------------------------------------------------------

def _blank(_: bytes) -> dict[str, Any]:
    return {}


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _EventDataError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _utf16_lossy(data: bytes) -> str:
    """UTF-16LE with each unpaired surrogate replaced by U+FFFD (Rust's from_utf16_lossy)."""
    units = [data[i] | data[i + 1] << 8 for i in range(0, len(data) - 1, 2)]
    out: list[str] = []
    i = 0
    while i < len(units):
        unit = units[i]
        if 0xD800 <= unit < 0xDC00 and i + 1 < len(units) and 0xDC00 <= units[i + 1] < 0xE000:
            out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (units[i + 1] - 0xDC00)))
            i += 2
            continue
        out.append("\ufffd" if 0xD800 <= unit < 0xE000 else chr(unit))
        i += 1
    return "".join(out)


def _simple_string(data: bytes) -> dict[str, Any]:
    """EV_POST_CODE, EV_ACTION, EV_COMPACT_HASH, EV_OMIT_BOOT_DEVICE_EVENTS, EV_EFI_ACTION: UTF-8 text."""
    return {"string": _utf8(data, "event data")}


def _described_blob(data: bytes) -> dict[str, Any]:
    """EV_EFI_PLATFORM_FIRMWARE_BLOB2 / EV_EFI_HANDOFF_TABLES2: a u8 size, then a description whose
    last byte (a NUL) Trustee leaves out: it reports bytes 1..size."""
    if not data:
        raise _EventDataError("no description size")
    size = data[0]
    if size == 0:
        raise _EventDataError("description size is 0")
    if len(data) < size:
        raise _EventDataError(f"description of {size} bytes, {len(data)} bytes of event data")
    return {"string": _utf8(data[1:size], "description")}


def _platform_config_flags(data: bytes) -> dict[str, Any]:
    """EV_PLATFORM_CONFIG_FLAGS: UTF-8 text (else ""), 0x10 as a space, control characters dropped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    text = text.replace("\x10", " ")
    return {"string": "".join(c for c in text if not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F))}


def _ipl(data: bytes) -> dict[str, Any]:
    """EV_IPL: Google's UTF-16 form (prefix 2e 00, last unit dropped), else text up to the first NUL
    (hex of the whole data when that is not UTF-8)."""
    if len(data) < 2:
        raise _EventDataError("shorter than 2 bytes")
    if data[:2] == b"\x2e\x00":
        rest = len(data) - 2
        if rest == 0 or rest % 2:
            raise _EventDataError("UTF-16 IPL text of odd length")
        return {"string": _utf16_lossy(data[2:rest])}
    text = data.split(b"\x00", 1)[0]
    try:
        return {"string": text.decode("utf-8")}
    except UnicodeDecodeError:
        return {"string": data.hex()}


def _efi_variable(data: bytes) -> dict[str, Any]:
    """UEFI_VARIABLE_DATA {GUID VariableName; u64 UnicodeNameLength; u64 VariableDataLength;
    CHAR16 UnicodeName[]; BYTE VariableData[]} (EV_EFI_VARIABLE_* events)."""
    if len(data) < 32:
        raise _EventDataError(f"UEFI_VARIABLE_DATA needs 32 bytes, has {len(data)}")
    guid = data[:16]
    name_length, data_length = struct.unpack_from("<QQ", data, 16)
    name_end = 32 + 2 * name_length
    if name_end > len(data):
        raise _EventDataError(f"variable name of {name_length} characters runs past the event data")
    try:
        name = data[32:name_end].decode("utf-16-le")
    except UnicodeDecodeError:
        raise _EventDataError("variable name is not UTF-16") from None
    if name_end + data_length > len(data):
        raise _EventDataError(f"variable data of {data_length} bytes runs past the event data")
    value = data[name_end:name_end + data_length]
    return {
        "unicode_name": name,
        "unicode_name_length": name_length,
        "variable_data": base64.b64encode(value).decode("ascii") if data_length else "",
        "variable_data_length": data_length,
        "variable_name": "-".join(guid[a:b].hex() for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 16))),
    }


def _boot_services_application(data: bytes) -> dict[str, Any]:
    """UEFI_IMAGE_LOAD_EVENT {u64 location, u64 length, u64 link-time address, u64 device path length,
    device path}: the device path nodes as text, Trustee's way (the last 4 bytes, the end node, are
    not walked)."""
    if len(data) < 32:
        raise _EventDataError(f"UEFI_IMAGE_LOAD_EVENT needs 32 bytes, has {len(data)}")
    path_length: int = _U64.unpack_from(data, 24)[0]
    if path_length == 0:
        return {}
    if path_length < 4 or 32 + path_length - 4 > len(data):
        raise _EventDataError(f"device path of {path_length} bytes does not fit the event data")
    path = data[32:32 + path_length - 4]
    if len(path) < 4:
        raise _EventDataError("device path shorter than one node")
    nodes: list[str] = []
    pos = 0
    while pos < len(path):  # every node is at least 4 bytes, so this ends
        if len(path) - pos < 4:
            raise _EventDataError(f"{len(path) - pos} bytes left in the device path, a node header needs 4")
        node_type, sub_type, node_length = path[pos], path[pos + 1], _U16.unpack_from(path, pos + 2)[0]
        if node_length < 4 or node_length > len(path) - pos:
            raise _EventDataError(f"device path node of length {node_length} at byte {pos} of "
                                  f"{len(path)}")
        nodes.append(_device_path_node(node_type, sub_type, path[pos + 4:pos + node_length]))
        pos += node_length
    return {"device_paths": nodes}


def _event_tag(data: bytes) -> dict[str, Any]:
    """TCG_PCClientTaggedEvent {u32 id, u32 size, data}; an AAEL entry ("<domain> <operation> <content>")
    is also decoded into `data` (content as JSON when it is JSON)."""
    if len(data) < 8:
        raise _EventDataError(f"tagged event needs 8 bytes, has {len(data)}")
    tag, size = struct.unpack_from("<II", data)
    if 8 + size > len(data):
        raise _EventDataError(f"tagged event data of {size} bytes runs past the event data")
    tagged = data[8:8 + size]
    details: dict[str, Any] = {"string": tagged.decode("utf-8", errors="replace").replace("\x00", "")}
    if tag == AAEL_TAGGED_EVENT_ID:
        text = _utf8(tagged, "AAEL entry")
        first = text.find(" ")
        second = text.find(" ", first + 1) if first >= 0 else -1
        if second < 0:
            raise _EventDataError("AAEL entry is not '<domain> <operation> <content>'")
        details["unicode_name"] = "AAEL"
        details["data"] = {"domain": text[:first], "operation": text[first + 1:second],
                           "content": _json_or_string(text[second + 1:])}
    return details


_DECODERS: dict[int, Callable[[bytes], dict[str, Any]]] = {
    0x1: _simple_string, 0x4: _blank, 0x5: _simple_string, 0x6: _event_tag, 0xA: _platform_config_flags,
    0xC: _simple_string, 0xD: _ipl, 0x12: _simple_string,
    0x80000001: _efi_variable, 0x80000002: _efi_variable, 0x80000003: _boot_services_application,
    0x80000007: _simple_string, 0x8000000A: _described_blob, 0x8000000B: _described_blob,
    0x8000000C: _efi_variable, 0x800000E0: _efi_variable,
}


# AAEL content is JSON when serde_json (Trustee) would parse it, else the text itself.
_SERDE_MAX_DEPTH = 128
_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _serde_int(text: str) -> int | float:
    value = int(text)
    return value if _I64_MIN <= value <= _U64_MAX else _finite_float(text)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_or_string(text: str) -> Any:
    try:
        value = json.loads(text, parse_float=_finite_float, parse_int=_serde_int, parse_constant=_no_constants)
    except (ValueError, RecursionError, OverflowError):
        return text
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # serde_json's depth limit, and no lone surrogates (they are not UTF-8)
        node, depth = stack.pop()
        if isinstance(node, str):
            if any(0xD800 <= ord(c) < 0xE000 for c in node):
                return text
        elif isinstance(node, dict | list):
            if depth > _SERDE_MAX_DEPTH:
                return text
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return value


# --- UEFI device path nodes (UEFI 2.10 §10.3), as Trustee prints them ---------------------------------

def _uefi_guid(raw: bytes) -> str:
    d1, d2, d3 = struct.unpack_from("<IHH", raw)
    return f"{d1:08X}-{d2:04X}-{d3:04X}-{raw[8:10].hex().upper()}-{raw[10:16].hex().upper()}"


def _device_path_node(node_type: int, sub_type: int, data: bytes) -> str:
    """One node as text; a node Trustee has no printer for, or cannot print, is Path(type,sub,hex)."""
    printer = _NODE_PRINTERS.get((node_type, sub_type))
    text = printer(data) if printer is not None else None
    return text if text is not None else f"Path({node_type},{sub_type},{data.hex()})"


def _pci(data: bytes) -> str | None:
    return f"Pci({data[0]},{data[1]})" if len(data) >= 2 else None


def _acpi(data: bytes) -> str | None:
    if len(data) < 8:
        return None
    hid, uid = struct.unpack_from("<II", data)
    vendor = hid & 0xFFFF
    letters = "".join(chr(((vendor >> shift) & 0x1F) + 0x40) for shift in (10, 5, 0))
    return f"ACPI({letters}{hid >> 16:04X},{uid})"


def _fibre_ex(data: bytes) -> str | None:
    return f"FibreEx(0x{data[0:8].hex()},0x{data[8:16].hex()})" if len(data) >= 16 else None


def _usb(data: bytes) -> str | None:
    return f"USB({data[0]},{data[1]})" if len(data) >= 2 else None


def _mac(data: bytes) -> str | None:
    if len(data) != 33:
        return None
    return f"Mac({data[0:31].hex().rstrip('0').upper()},{data[32]:#04x})"


def _ipv4_text(value: int) -> str:
    return ".".join(str(value >> shift & 0xFF) for shift in (24, 16, 8, 0))


def _ipv4(data: bytes) -> str | None:
    if len(data) < 23:
        return None
    local, remote, _, _, protocol, origin, gateway, mask = struct.unpack_from("<IIHHHBII", data)
    proto = {6: "TCP", 17: "UDP"}.get(protocol, "")
    kind = {0: "DHCP", 1: "Static"}.get(origin, "")
    extra = f",{gateway},{mask}" if gateway or mask else ""
    return f"IPv4({_ipv4_text(remote)},{proto},{kind},{_ipv4_text(local)}{extra})"


def _hard_drive(data: bytes) -> str | None:
    if len(data) < 38:
        return None
    number, start, size = struct.unpack_from("<IQQ", data)
    signature, partition_format = data[20:36], data[36]
    if partition_format == 1:
        kind, sig = "MBR", f"{_U32.unpack_from(signature)[0]:#010x}"
    elif partition_format == 2:
        kind, sig = "GPT", _uefi_guid(signature)
    else:
        return None
    extent = f",{start:#x},{size:#x}" if number else ""
    return f"HD({number},{kind},{sig}{extent})"


def _vendor_media(data: bytes) -> str | None:
    return f"VenMedia({_uefi_guid(data)},{data[16:].hex()})" if len(data) >= 16 else None


def _file_path(data: bytes) -> str | None:
    if not data or len(data) % 2:
        return None
    return f"File({_utf16_lossy(data[:-2])})"


_BBS_TYPES = {0x01: "FLOPPY", 0x02: "HARD_DRIVE", 0x03: "CDROM", 0x04: "PCMCIA", 0x05: "USB",
              0x06: "EMBEDDED_NETWORK", 0x80: "DEV", 0xFF: "UNKNOWN"}


def _bbs(data: bytes) -> str | None:
    if len(data) < 4:
        return None
    device, status = struct.unpack_from("<HH", data)
    try:
        description = data[4:].split(b"\x00", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return f"BBS({_BBS_TYPES.get(device, str(device))},{description},{status})"


_NODE_PRINTERS: dict[tuple[int, int], Callable[[bytes], str | None]] = {
    (1, 0x01): _pci, (2, 0x01): _acpi, (3, 0x15): _fibre_ex, (3, 0x05): _usb, (3, 0x0B): _mac,
    (3, 0x0C): _ipv4, (4, 0x01): _hard_drive, (4, 0x03): _vendor_media, (4, 0x04): _file_path,
    (5, 0x01): _bbs,
}
