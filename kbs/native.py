"""The one module that touches the compiled core (`kbs._native`).

It turns status codes into typed exceptions and C structs into frozen dataclasses;
nothing else in the package imports the extension.  Every call below runs in C with
the GIL released (cffi API mode), so verification scales with threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kbs._native import ffi, lib
from kbs.errors import KbsError, MalformedEvidence, SignatureInvalid

SNP_REPORT_SIZE: int = lib.KBS_SNP_REPORT_SIZE
SNP_SIGNED_SIZE: int = lib.KBS_SNP_SIGNED_SIZE
P384_POINT_SIZE: int = lib.KBS_P384_POINT_SIZE
_MAX_CERTTABLE_ENTRIES = 64

# status code -> (exception class, check label, operator-facing message)
_STATUS: dict[int, tuple[type[KbsError], str, str]] = {
    lib.KBS_ERR_NULL_ARGUMENT: (KbsError, "internal", "native core called without a buffer"),
    lib.KBS_ERR_INTERNAL: (KbsError, "internal", "native core failed internally"),
    lib.KBS_ERR_SNP_LENGTH: (MalformedEvidence, "report.length",
                             f"SNP report must be exactly {SNP_REPORT_SIZE} bytes"),
    lib.KBS_ERR_SNP_VERSION: (MalformedEvidence, "report.version",
                              "SNP report version is not 2, 3, 4 or 5"),
    lib.KBS_ERR_SNP_SIG_ALGO: (MalformedEvidence, "report.signature_algo",
                               "SNP report signature algorithm is not 1 (ECDSA P-384 with SHA-384)"),
    lib.KBS_ERR_SNP_POLICY_BIT17: (MalformedEvidence, "report.policy",
                                   "SNP guest policy bit 17 (reserved, must be 1) is 0"),
    lib.KBS_ERR_SNP_POLICY_RESERVED: (MalformedEvidence, "report.policy",
                                      "SNP guest policy has reserved bits 63:26 set"),
    lib.KBS_ERR_SNP_SIGNER_INFO_RESERVED: (MalformedEvidence, "report.signer_info",
                                           "SNP signer info has reserved bits 31:5 set"),
    lib.KBS_ERR_SNP_SIGNING_KEY_RESERVED: (MalformedEvidence, "report.signer_info",
                                           "SNP signing key field is a reserved value (2-6)"),
    lib.KBS_ERR_SNP_MBZ_04C: (MalformedEvidence, "report.reserved",
                              "SNP report reserved bytes 0x04C-0x04F are not zero"),
    lib.KBS_ERR_SNP_MBZ_188: (MalformedEvidence, "report.reserved",
                              "SNP report reserved bytes before CHIP_ID (0x188/0x18B-0x19F) are not zero"),
    lib.KBS_ERR_SNP_MBZ_1EB: (MalformedEvidence, "report.reserved",
                              "SNP report reserved byte 0x1EB is not zero"),
    lib.KBS_ERR_SNP_MBZ_1EF: (MalformedEvidence, "report.reserved",
                              "SNP report reserved byte 0x1EF is not zero"),
    lib.KBS_ERR_SNP_MBZ_1F8: (MalformedEvidence, "report.reserved",
                              "SNP report bytes 0x1F8-0x207 are reserved before version 5 but not zero"),
    lib.KBS_ERR_SNP_MBZ_208: (MalformedEvidence, "report.reserved",
                              "SNP report reserved bytes 0x208-0x29F are not zero"),
    lib.KBS_ERR_SNP_SIG_R_HIGH: (MalformedEvidence, "report.signature_format",
                                 "SNP signature r has non-zero bytes above the 48-byte P-384 scalar"),
    lib.KBS_ERR_SNP_SIG_S_HIGH: (MalformedEvidence, "report.signature_format",
                                 "SNP signature s has non-zero bytes above the 48-byte P-384 scalar"),
    lib.KBS_ERR_SNP_MBZ_330: (MalformedEvidence, "report.reserved",
                              "SNP report reserved bytes 0x330-0x49F after the signature are not zero"),
    lib.KBS_ERR_SNP_UNSIGNED: (SignatureInvalid, "report.unsigned",
                               "SNP report says it is not signed (signing key NONE)"),
    lib.KBS_ERR_KEY_LENGTH: (SignatureInvalid, "key", "public key is not a 97-byte uncompressed P-384 point"),
    lib.KBS_ERR_KEY_FORMAT: (SignatureInvalid, "key", "public key is not an uncompressed point (0x04)"),
    lib.KBS_ERR_KEY_NOT_ON_CURVE: (SignatureInvalid, "key", "public key is not a point on P-384"),
    lib.KBS_ERR_SIG_RANGE: (SignatureInvalid, "report.signature",
                            "signature r or s is zero or not below the group order"),
    lib.KBS_ERR_SIG_INVALID: (SignatureInvalid, "report.signature", "signature does not verify with the key"),
    lib.KBS_ERR_CERTTABLE_UNTERMINATED: (MalformedEvidence, "certtable.format",
                                         "certificate table has no all-zero terminating entry"),
    lib.KBS_ERR_CERTTABLE_OFFSET: (MalformedEvidence, "certtable.format",
                                   "certificate table entry points into the table header"),
    lib.KBS_ERR_CERTTABLE_BOUNDS: (MalformedEvidence, "certtable.format",
                                   "certificate table entry extends past the end of the buffer"),
    lib.KBS_ERR_CERTTABLE_TOO_MANY: (MalformedEvidence, "certtable.format",
                                     f"certificate table has more than {_MAX_CERTTABLE_ENTRIES} entries"),
}


class NativeStatusError(KbsError):
    """A status the Python side does not know: a bug, never a verdict on evidence."""


def _raise_for(status: int, context: str = "") -> None:
    if status == lib.KBS_OK:
        return
    cls, check, message = _STATUS.get(
        status, (NativeStatusError, "internal", f"native core returned unknown status {status}"))
    raise cls(f"{context}{message}", check=check)


def status_name(status: int) -> str:
    """The C enum name of a status code (for tests and diagnostics)."""
    for name in dir(lib):
        if name.startswith("KBS_") and getattr(lib, name) == status and not name.endswith("_SIZE"):
            return name
    return str(status)


@dataclass(frozen=True, slots=True)
class RawSnpReport:
    """Every field of an SNP report exactly as the C core decoded it (integers, bytes)."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int
    current_mit_vector: int
    signature_r: bytes
    signature_s: bytes


_RAW_FIELDS = RawSnpReport.__dataclass_fields__


def _from_struct(c_report: object) -> RawSnpReport:
    values: dict[str, Any] = {}
    for name in _RAW_FIELDS:
        value = getattr(c_report, name)
        values[name] = value if isinstance(value, int) else bytes(ffi.buffer(value))
    return RawSnpReport(**values)


def snp_parse(report: bytes) -> RawSnpReport:
    """Parse and format-check an SNP report; raises MalformedEvidence naming the field."""
    out = ffi.new("struct kbs_snp_report *")
    _raise_for(lib.kbs_snp_parse(report, len(report), out))
    return _from_struct(out[0])


def snp_verify(report: bytes, public_key: bytes) -> RawSnpReport:
    """Parse, hash and verify the report's signature with an uncompressed P-384 point, in one C call."""
    out = ffi.new("struct kbs_snp_report *")
    _raise_for(lib.kbs_snp_verify(report, len(report), public_key, len(public_key), out))
    return _from_struct(out[0])


def snp_verify_status(report: bytes, public_key: bytes) -> int:
    """The raw status of `snp_verify` without building Python objects (hot loops, benchmarks)."""
    out = ffi.new("struct kbs_snp_report *")
    return int(lib.kbs_snp_verify(report, len(report), public_key, len(public_key), out))


def sha384(data: bytes) -> bytes:
    digest = ffi.new("uint8_t[48]")
    _raise_for(lib.kbs_sha384(data, len(data), digest))
    return bytes(digest)


def p384_verify_digest(public_key: bytes, digest: bytes, r: bytes, s: bytes) -> None:
    """Verify an ECDSA P-384 signature (48-byte big-endian r, s) over a 48-byte digest, or raise."""
    if len(digest) != 48 or len(r) != 48 or len(s) != 48:
        raise SignatureInvalid("digest, r and s must be 48 bytes each", check="signature")
    _raise_for(lib.kbs_p384_verify_digest(public_key, len(public_key), digest, r, s))


@dataclass(frozen=True, slots=True)
class CertTableEntry:
    guid: bytes
    offset: int
    length: int


def snp_certtable_parse(table: bytes) -> list[CertTableEntry]:
    """Parse an extended-report certificate table into (GUID, offset, length) entries."""
    entries = ffi.new("struct kbs_certtable_entry[]", _MAX_CERTTABLE_ENTRIES)
    count = ffi.new("size_t *")
    _raise_for(lib.kbs_snp_certtable_parse(table, len(table), entries, _MAX_CERTTABLE_ENTRIES, count))
    return [CertTableEntry(bytes(ffi.buffer(e.guid)), int(e.offset), int(e.length))
            for e in entries[0:count[0]]]


# ---------------------------------------------------------------------------------------------
# Fast ECDSA P-384 verification (issue 5): one cold key, a cached key table, or a batch.
#
# The C core (native/p384_*.c) is stateless; the only state is here: P384KeyCache, a bounded
# LRU of per-key tables guarded by a lock.  Every C call below releases the GIL.
# ---------------------------------------------------------------------------------------------

P384_SCALAR_SIZE = 48


def p384_implementation() -> str:
    """The field multiply this CPU runs: "mulx/adcx/adox asm" or the portable C fallback."""
    return str(ffi.string(lib.kbs_p384_implementation()).decode())


def _check_sig_lengths(r: bytes, s: bytes) -> None:
    if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
        raise SignatureInvalid("r and s must be 48 bytes each", check="signature")


def p384_verify_hash(public_key: bytes, hash_value: bytes, r: bytes, s: bytes) -> None:
    """Verify r, s (48-byte big-endian) over a hash of any length, or raise.

    The scalar is the hash's leftmost 384 bits (SHA-512 is truncated, SHA-256 used whole),
    as FIPS 186-5 says; `public_key` is an uncompressed SEC1 point (97 bytes).
    """
    _check_sig_lengths(r, s)
    _raise_for(lib.kbs_p384_verify_hash(public_key, len(public_key), hash_value, len(hash_value), r, s))


def p384_verify_digest_libcrypto(public_key: bytes, digest: bytes, r: bytes, s: bytes) -> None:
    """`p384_verify_digest` through the system libcrypto: the reference for tests and benchmarks."""
    if len(digest) != 48:
        raise SignatureInvalid("digest must be 48 bytes", check="signature")
    _check_sig_lengths(r, s)
    _raise_for(lib.kbs_p384_verify_digest_libcrypto(public_key, len(public_key), digest, r, s))


class P384KeyTable:
    """Precomputed multiples of one P-384 public key (24 KB): verifies ~2.5-3x faster than cold.

    Building it validates the key (raises SignatureInvalid like a verify would) and costs
    about two cold verifications.  Immutable once built, so threads may share it.
    """

    __slots__ = ("_table", "public_key")

    def __init__(self, public_key: bytes) -> None:
        self.public_key = bytes(public_key)
        self._table = ffi.new("struct kbs_p384_key_table *")
        _raise_for(lib.kbs_p384_key_precompute(self.public_key, len(self.public_key), self._table))

    def verify_status(self, digest: bytes, r: bytes, s: bytes) -> int:
        """The raw kbs_status of a verification over a 48-byte digest (0 is KBS_OK)."""
        if len(digest) != 48:
            raise SignatureInvalid("digest must be 48 bytes", check="signature")
        if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
            return int(lib.KBS_ERR_SIG_RANGE)
        return int(lib.kbs_p384_verify_digest_with_table(self._table, digest, r, s))

    def verify(self, digest: bytes, r: bytes, s: bytes) -> None:
        """Verify r, s over a 48-byte digest with this key, or raise SignatureInvalid."""
        _check_sig_lengths(r, s)
        _raise_for(self.verify_status(digest, r, s))

    def c_pointer(self) -> object:
        """The cffi pointer to the C table (for kbs_p384_verify_batch)."""
        return self._table


class P384KeyCache:
    """A bounded, thread-safe LRU of P384KeyTable, keyed by the public-key bytes.

    A table is built on the `build_after`-th sighting of a key (default 2: a key seen once,
    as most certificate keys are, costs nothing extra; a VCEK signing every report of its
    host gets a table on its second report).  At most `max_tables` tables (24 KB each) are
    kept; sightings of keys without a table are remembered for 8 * max_tables keys.
    """

    def __init__(self, max_tables: int = 256, build_after: int = 2) -> None:
        if max_tables < 1 or build_after < 1:
            raise ValueError("max_tables and build_after must be at least 1")
        self.max_tables = max_tables
        self.build_after = build_after
        self._lock = threading.Lock()
        self._tables: OrderedDict[bytes, P384KeyTable] = OrderedDict()
        self._sightings: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._tables)

    def table_for(self, public_key: bytes) -> P384KeyTable | None:
        """The key's table if it has (or now earns) one, else None after counting the sighting.

        Raises SignatureInvalid if a table is due but the key is not a valid P-384 point.
        """
        key = bytes(public_key)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
            seen = self._sightings.pop(key, 0) + 1
            if seen < self.build_after:
                self._sightings[key] = seen
                while len(self._sightings) > 8 * self.max_tables:
                    self._sightings.popitem(last=False)
                return None
        table = P384KeyTable(key)  # outside the lock: C work, GIL released
        with self._lock:
            table = self._tables.setdefault(key, table)
            self._tables.move_to_end(key)
            while len(self._tables) > self.max_tables:
                self._tables.popitem(last=False)
        return table

    def verify_status(self, public_key: bytes, digest: bytes, r: bytes, s: bytes) -> int:
        """The raw kbs_status of verifying r, s over a 48-byte digest, using a table when cached."""
        if len(public_key) != P384_POINT_SIZE:
            return int(lib.KBS_ERR_KEY_LENGTH)
        try:
            table = self.table_for(public_key)
        except SignatureInvalid:
            table = None  # let the cold path name the key problem
        if table is not None:
            return table.verify_status(digest, r, s)
        if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
            return int(lib.KBS_ERR_SIG_RANGE)
        if len(digest) != 48:
            raise SignatureInvalid("digest must be 48 bytes", check="signature")
        return int(lib.kbs_p384_verify_digest(public_key, len(public_key), digest, r, s))

    def verify(self, public_key: bytes, digest: bytes, r: bytes, s: bytes) -> None:
        """Verify r, s (48-byte big-endian) over a 48-byte digest, or raise SignatureInvalid."""
        _check_sig_lengths(r, s)
        _raise_for(self.verify_status(public_key, digest, r, s))


P384BatchItem = tuple["bytes | P384KeyTable", bytes, bytes, bytes]


def p384_verify_batch(items: Sequence[P384BatchItem], cache: P384KeyCache | None = None) -> list[int]:
    """Verify many (key, hash, r, s) items in one C call; returns each item's kbs_status (0 = OK).

    `key` is an uncompressed point or a P384KeyTable; with `cache`, point keys go through it.
    The hash may have any length (leftmost 384 bits are used).  Items with a wrong-sized key,
    r or s get KBS_ERR_KEY_LENGTH / KBS_ERR_SIG_RANGE without reaching C.
    """
    results = [0] * len(items)
    todo: list[int] = []
    digests, sigs, points, tables = [], [], [], []
    zero_point = bytes(P384_POINT_SIZE)
    for i, (key, hash_value, r, s) in enumerate(items):
        if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
            results[i] = int(lib.KBS_ERR_SIG_RANGE)
            continue
        table: P384KeyTable | None = None
        point = zero_point
        if isinstance(key, P384KeyTable):
            table = key
        elif len(key) != P384_POINT_SIZE:
            results[i] = int(lib.KBS_ERR_KEY_LENGTH)
            continue
        else:
            point = bytes(key)
            if cache is not None:
                try:
                    table = cache.table_for(point)
                except SignatureInvalid:
                    table = None  # the cold path in C names the key problem
        todo.append(i)
        digests.append(bytes(hash_value[:48]).rjust(48, b"\0"))
        sigs.append(bytes(r) + bytes(s))
        points.append(point if table is None else zero_point)
        tables.append(ffi.NULL if table is None else table.c_pointer())
    if not todo:
        return results
    out = ffi.new("int[]", len(todo))
    status = lib.kbs_p384_verify_batch(len(todo), b"".join(digests), b"".join(sigs), b"".join(points),
                                       ffi.new("struct kbs_p384_key_table *[]", tables), out)
    _raise_for(status)
    for slot, i in enumerate(todo):
        results[i] = int(out[slot])
    return results


def snp_verify_cached(report: bytes, public_key: bytes, cache: P384KeyCache) -> RawSnpReport:
    """`snp_verify`, using the key's precomputed table once the cache has one (a VCEK seen before)."""
    try:
        table = cache.table_for(public_key)
    except SignatureInvalid:
        table = None  # the cold path names the key problem
    if table is None:
        return snp_verify(report, public_key)
    out = ffi.new("struct kbs_snp_report *")
    _raise_for(lib.kbs_snp_verify_with_table(report, len(report), table.c_pointer(), out))
    return _from_struct(out[0])
