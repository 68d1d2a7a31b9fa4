"""SEV-SNP attestation reports and extended-report certificate tables (native/snp_*.c).

Parsing and verification run in one C call each, with the GIL released; results are
frozen dataclasses holding the C structs' fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kbs.errors import SignatureInvalid
from kbs.native._ffi import MAX_CERTTABLE_ENTRIES, ffi, lib, raise_for
from kbs.native.p384 import P384KeyCache

SNP_REPORT_SIZE: int = lib.KBS_SNP_REPORT_SIZE
SNP_SIGNED_SIZE: int = lib.KBS_SNP_SIGNED_SIZE


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
    raise_for(lib.kbs_snp_parse(report, len(report), out))
    return _from_struct(out[0])


def snp_verify(report: bytes, public_key: bytes) -> RawSnpReport:
    """Parse, hash and verify the report's signature with an uncompressed P-384 point, in one C call."""
    out = ffi.new("struct kbs_snp_report *")
    raise_for(lib.kbs_snp_verify(report, len(report), public_key, len(public_key), out))
    return _from_struct(out[0])


def snp_verify_status(report: bytes, public_key: bytes) -> int:
    """The raw status of `snp_verify` without building Python objects (hot loops, benchmarks)."""
    out = ffi.new("struct kbs_snp_report *")
    return int(lib.kbs_snp_verify(report, len(report), public_key, len(public_key), out))


@dataclass(frozen=True, slots=True)
class CertTableEntry:
    guid: bytes
    offset: int
    length: int


def snp_certtable_parse(table: bytes) -> list[CertTableEntry]:
    """Parse an extended-report certificate table into (GUID, offset, length) entries."""
    entries = ffi.new("struct kbs_certtable_entry[]", MAX_CERTTABLE_ENTRIES)
    count = ffi.new("size_t *")
    raise_for(lib.kbs_snp_certtable_parse(table, len(table), entries, MAX_CERTTABLE_ENTRIES, count))
    return [CertTableEntry(bytes(ffi.buffer(e.guid)), int(e.offset), int(e.length))
            for e in entries[0:count[0]]]


def snp_verify_cached(report: bytes, public_key: bytes, cache: P384KeyCache) -> RawSnpReport:
    """`snp_verify`, using the key's precomputed table once the cache has one (a VCEK seen before)."""
    return _from_struct(_verified(report, public_key, cache)[0])


def snp_check_signature(report: bytes, public_key: bytes, cache: P384KeyCache | None = None) -> None:
    """`snp_verify_cached` (or `snp_verify` without a cache) for a caller that parsed the report already:
    the same checks, no Python objects built from the C parse."""
    _verified(report, public_key, cache)


def _verified(report: bytes, public_key: bytes, cache: P384KeyCache | None) -> Any:
    out = ffi.new("struct kbs_snp_report *")
    try:
        table = cache.table_for(public_key) if cache is not None else None
    except SignatureInvalid:
        table = None  # the cold path names the key problem
    if table is None:
        raise_for(lib.kbs_snp_verify(report, len(report), public_key, len(public_key), out))
    else:
        raise_for(lib.kbs_snp_verify_with_table(report, len(report), table.c_pointer(), out))
    return out
