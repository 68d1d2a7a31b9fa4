"""Intel TDX DCAP quotes v4 and v5 (native/tdx_quote.c; reference/tdx.md §1).

`tdx_parse` checks the format (no cryptography); `tdx_verify` parses and checks, in one C call with
the GIL released, the QE report signature by the PCK key, the QE report binding of the attestation
key and the quote signature.  `tdx_verify_signatures` does the same checks for a caller that already
holds the parsed quote, without building it again.  With `cache=` (a P256KeyCache), the PCK key and
the attestation key -- both sign every quote of their platform -- verify through their key tables.
The C core returns offsets into the caller's buffer; the frozen dataclasses below hold copies of
those bytes.  The PCK certificate chain inside the quote is returned as PEM for the trust layer:
nothing here judges certificates or collateral.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kbs.native._ffi import ffi, lib, raise_for
from kbs.native.p256 import P256KeyCache, P256KeyTable

TDX_HEADER_SIZE: int = lib.KBS_TDX_HEADER_SIZE
TDX_QE_REPORT_SIZE: int = lib.KBS_TDX_QE_REPORT_SIZE
TDX_BODY_TD10_SIZE: int = lib.KBS_TDX_BODY_TD10_SIZE
TDX_BODY_TD15_SIZE: int = lib.KBS_TDX_BODY_TD15_SIZE
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# Offsets inside the TD report body (TD10 layout; TD 1.5 appends tee_tcb_svn2 and mr_service_td).
_RTMR0, _RTMR_SIZE = 328, 48

@dataclass(frozen=True, slots=True)
class TdxQeReport:
    """The Quoting Enclave's 384-byte SGX report body (its identity, judged against Intel's QE identity)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True, slots=True)
class TdxQuote:
    """Every field of a TDX quote as the C core delimited it.

    Byte fields are copies of the quote's bytes; integers are decoded little-endian.  The quote
    signature covers `raw_header` + (v5: the 6-byte body descriptor) + `raw_body`, i.e. the first
    `signed_size` bytes of the quote.
    """

    version: int
    att_key_type: int
    tee_type: int
    header_reserved: bytes  # bytes 8..12, opaque (QVL and go-tdx-guest disagree on their meaning)
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int  # 2 (TD report 1.0) for v4; v5: 2 or 3 (TD report 1.5)
    body_size: int
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: int  # u64 little-endian
    xfam: int  # u64 little-endian
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None  # body type 3 only
    mr_service_td: bytes | None  # body type 3 only
    signed_size: int
    signature: bytes  # 64 bytes r || s, big-endian
    attestation_key: bytes  # 64 raw bytes x || y
    qe_report: TdxQeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes  # the inner type-5 data, one trailing NUL removed if present
    padding: int  # zero bytes accepted after the signature data
    raw_header: bytes
    raw_body: bytes
    signature_data_len: int  # the stated (and checked) size of the signature data
    extra_bytes: bytes  # non-zero bytes after the signature data: only with allow_trailing_bytes

    @property
    def attestation_point(self) -> bytes:
        """The attestation key as an uncompressed SEC1 point (0x04 || x || y)."""
        return b"\x04" + self.attestation_key


def _qe_report(raw: bytes, q: Any) -> TdxQeReport:
    return TdxQeReport(
        raw=raw, cpu_svn=raw[0:16], misc_select=int(q.qe_misc_select),
        attributes=raw[48:64], mr_enclave=raw[64:96], mr_signer=raw[128:160],
        isv_prod_id=int(q.qe_isv_prod_id), isv_svn=int(q.qe_isv_svn),
        report_data=raw[320:384])


def _from_struct(data: bytes, c: Any) -> TdxQuote:
    """The quote from the C struct `c` (struct kbs_tdx_quote) and the buffer it points into."""
    view = memoryview(data)

    def cut(offset: int, size: int) -> bytes:
        return bytes(view[offset:offset + size])

    body = cut(int(c.body_offset), int(c.body_size))
    rtmrs = [body[_RTMR0 + i * _RTMR_SIZE:_RTMR0 + (i + 1) * _RTMR_SIZE] for i in range(4)]
    td15 = int(c.body_type) == 3
    trailing_size, all_zero = int(c.trailing_size), bool(c.trailing_all_zero)
    return TdxQuote(
        version=int(c.version), att_key_type=int(c.att_key_type), tee_type=int(c.tee_type),
        header_reserved=data[8:12], qe_vendor_id=data[12:28], user_data=data[28:48],
        body_type=int(c.body_type), body_size=int(c.body_size),
        tee_tcb_svn=body[0:16], mr_seam=body[16:64], mr_signer_seam=body[64:112], seam_attributes=body[112:120],
        td_attributes=int(c.td_attributes), xfam=int(c.xfam),
        mr_td=body[136:184], mr_config_id=body[184:232], mr_owner=body[232:280], mr_owner_config=body[280:328],
        rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]), report_data=body[520:584],
        tee_tcb_svn2=body[584:600] if td15 else None, mr_service_td=body[600:648] if td15 else None,
        signed_size=int(c.signed_size),
        signature=cut(int(c.signature_offset), 64),
        attestation_key=cut(int(c.attestation_key_offset), 64),
        qe_report=_qe_report(cut(int(c.qe_report_offset), TDX_QE_REPORT_SIZE), c),
        qe_report_signature=cut(int(c.qe_report_signature_offset), 64),
        qe_auth_data=cut(int(c.qe_auth_data_offset), int(c.qe_auth_data_size)),
        pck_chain_pem=cut(int(c.pck_chain_offset), int(c.pck_chain_len)),
        padding=trailing_size if all_zero else 0,
        raw_header=data[:TDX_HEADER_SIZE], raw_body=body,
        signature_data_len=int(c.signature_data_len),
        extra_bytes=b"" if all_zero else cut(int(c.end), trailing_size),
    )


def _flags(allow_trailing_bytes: bool) -> int:
    return int(lib.KBS_TDX_ALLOW_TRAILING_BYTES) if allow_trailing_bytes else 0


def tdx_parse(data: bytes, *, allow_trailing_bytes: bool = False) -> TdxQuote:
    """Parse and format-check a quote; raises MalformedEvidence(check="quote.<what>").

    Bytes after the signature data must be zero (padding) unless `allow_trailing_bytes`, in which
    case anything there is returned as `extra_bytes` (go-tdx-guest's ExtraBytes) and signs nothing.
    """
    data = bytes(data)
    out = ffi.new("struct kbs_tdx_quote *")
    raise_for(lib.kbs_tdx_parse(data, len(data), _flags(allow_trailing_bytes), out))
    return _from_struct(data, out[0])


def _table_pointer(table: P256KeyTable | None) -> Any:
    return ffi.NULL if table is None else table.c_pointer()


def _verify_into(out: Any, data: bytes, pck_point: bytes, flags: int, cache: P256KeyCache | None) -> int:
    """kbs_tdx_verify into `out`, through the cache's key tables when there is a cache.

    Tables are only looked up before the call; a key's sighting is counted (and its table built on
    the cache's build_after-th) only once the quote verified with it, so an attestation key from a
    forged quote never gets a table nor pushes a real one out of the cache.
    """
    if cache is None:
        return int(lib.kbs_tdx_verify(data, len(data), flags, pck_point, len(pck_point), out))
    pck_table, att_point, att_table = cache.get(pck_point), None, None
    if lib.kbs_tdx_parse(data, len(data), flags, out) == lib.KBS_OK:  # where the attestation key is
        offset = int(out.attestation_key_offset)
        att_point = b"\x04" + data[offset:offset + 64]
        att_table = cache.get(att_point)
    status = int(lib.kbs_tdx_verify_with_tables(data, len(data), flags, pck_point, len(pck_point),
                                                _table_pointer(pck_table), _table_pointer(att_table), out))
    if status == lib.KBS_OK:
        if pck_table is None:
            cache.table_for(pck_point)
        if att_table is None and att_point is not None:
            cache.table_for(att_point)
    return status


def tdx_verify(data: bytes, pck_public_point: bytes, *, allow_trailing_bytes: bool = False,
               cache: P256KeyCache | None = None) -> TdxQuote:
    """Parse, then verify in one GIL-released C call, in the order trust flows:

    the QE report signature by the PCK key (a 65-byte uncompressed point the caller took from the
    PCK certificate), SignatureInvalid(check="quote.qe_report_signature"); the QE report binding
    (report_data == SHA-256(attestation key || QE auth data) || 32 zero bytes),
    EvidenceError(check="quote.qe_binding"); the quote signature over header and body by the
    attestation key, SignatureInvalid(check="quote.signature").  Format errors are MalformedEvidence.
    With `cache`, both keys verify through their key tables once they have earned one.
    """
    data = bytes(data)
    out = ffi.new("struct kbs_tdx_quote *")
    raise_for(_verify_into(out, data, bytes(pck_public_point), _flags(allow_trailing_bytes), cache))
    return _from_struct(data, out[0])


def tdx_verify_signatures(data: bytes, pck_public_point: bytes, *, allow_trailing_bytes: bool = False,
                          cache: P256KeyCache | None = None) -> None:
    """The checks of `tdx_verify`, raising the same errors, for a quote the caller already parsed
    with `tdx_parse`: returns nothing, so the TdxQuote is not built a second time."""
    data = bytes(data)
    out = ffi.new("struct kbs_tdx_quote *")
    raise_for(_verify_into(out, data, bytes(pck_public_point), _flags(allow_trailing_bytes), cache))


def tdx_verify_status(data: bytes, pck_public_point: bytes, *, allow_trailing_bytes: bool = False,
                      cache: P256KeyCache | None = None) -> int:
    """The raw kbs_status of `tdx_verify` without building Python objects (hot loops, benchmarks)."""
    out = ffi.new("struct kbs_tdx_quote *")
    return _verify_into(out, bytes(data), bytes(pck_public_point), _flags(allow_trailing_bytes), cache)
