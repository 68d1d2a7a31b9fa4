"""The one package that touches the compiled core (`kbs._native`).

It turns status codes into typed exceptions and C structs into frozen dataclasses;
nothing else in the package imports the extension.  Every call below runs in C with
the GIL released (cffi API mode), so verification scales with threads.

One module per C concern: `_ffi` (the loaded library and the status-code -> exception map),
`snp` (SEV-SNP reports and certificate tables), `snp_coco` (a CoCo guest's SNP attestation
message in one pass), `tdx` (Intel TDX quotes), `spdm` (NVIDIA GPU and NVSwitch
attestation reports: SPDM 1.1 GET_MEASUREMENTS + MEASUREMENTS), `p384` (ECDSA P-384:
key tables, key cache, batch), `p256` (ECDSA P-256: key tables, key cache), `keycache` (the LRU of
key tables both curves use), `hashing` (SHA-384, SHA-256).
Callers import from here: `from kbs import native`.
"""

from kbs.native._ffi import NativeStatusError, ffi, lib, status_name
from kbs.native.hashing import sha256, sha384
from kbs.native.keycache import KeyTableCache
from kbs.native.p256 import (
    P256_POINT_SIZE,
    P256_SCALAR_SIZE,
    P256_SIGNATURE_SIZE,
    P256KeyCache,
    P256KeyTable,
    p256_verify,
    p256_verify_digest,
    p256_verify_digest_libcrypto,
    p256_verify_hash,
    p256_verify_status,
)
from kbs.native.p384 import (
    P384_POINT_SIZE,
    P384_SCALAR_SIZE,
    P384BatchItem,
    P384KeyCache,
    P384KeyTable,
    p384_implementation,
    p384_verify_batch,
    p384_verify_digest,
    p384_verify_digest_libcrypto,
    p384_verify_hash,
)
from kbs.native.snp import (
    SNP_REPORT_SIZE,
    SNP_SIGNED_SIZE,
    CertTableEntry,
    RawSnpReport,
    snp_certtable_parse,
    snp_check_signature,
    snp_parse,
    snp_verify,
    snp_verify_cached,
    snp_verify_status,
)
from kbs.native.snp_coco import (
    COCO_CERT_TYPES,
    COCO_MAX_CERT_SIZE,
    COCO_MAX_CERTS,
    COCO_MAX_DEPTH,
    COCO_MAX_NODES,
    CocoSnpMessage,
    snp_coco_decode,
)
from kbs.native.spdm import (
    SPDM_NONCE_SIZE,
    SPDM_REQUEST_SIZE,
    SPDM_SIGNATURE_SIZE,
    MeasurementBlock,
    OpaqueField,
    OpaqueType,
    SpdmReport,
    spdm_parse,
    spdm_verify,
    spdm_verify_signature,
    spdm_verify_status,
)
from kbs.native.tdx import (
    INTEL_QE_VENDOR_ID,
    TDX_BODY_TD10_SIZE,
    TDX_BODY_TD15_SIZE,
    TDX_HEADER_SIZE,
    TDX_QE_REPORT_SIZE,
    TdxQeReport,
    TdxQuote,
    tdx_parse,
    tdx_verify,
    tdx_verify_signatures,
    tdx_verify_status,
)

__all__ = [
    "COCO_CERT_TYPES",
    "COCO_MAX_CERTS",
    "COCO_MAX_CERT_SIZE",
    "COCO_MAX_DEPTH",
    "COCO_MAX_NODES",
    "INTEL_QE_VENDOR_ID",
    "P256_POINT_SIZE",
    "P256_SCALAR_SIZE",
    "P256_SIGNATURE_SIZE",
    "P384_POINT_SIZE",
    "P384_SCALAR_SIZE",
    "SNP_REPORT_SIZE",
    "SNP_SIGNED_SIZE",
    "SPDM_NONCE_SIZE",
    "SPDM_REQUEST_SIZE",
    "SPDM_SIGNATURE_SIZE",
    "TDX_BODY_TD10_SIZE",
    "TDX_BODY_TD15_SIZE",
    "TDX_HEADER_SIZE",
    "TDX_QE_REPORT_SIZE",
    "CertTableEntry",
    "CocoSnpMessage",
    "KeyTableCache",
    "MeasurementBlock",
    "NativeStatusError",
    "OpaqueField",
    "OpaqueType",
    "P256KeyCache",
    "P256KeyTable",
    "P384BatchItem",
    "P384KeyCache",
    "P384KeyTable",
    "RawSnpReport",
    "SpdmReport",
    "TdxQeReport",
    "TdxQuote",
    "ffi",
    "lib",
    "p256_verify",
    "p256_verify_digest",
    "p256_verify_digest_libcrypto",
    "p256_verify_hash",
    "p256_verify_status",
    "p384_implementation",
    "p384_verify_batch",
    "p384_verify_digest",
    "p384_verify_digest_libcrypto",
    "p384_verify_hash",
    "sha256",
    "sha384",
    "snp_certtable_parse",
    "snp_check_signature",
    "snp_coco_decode",
    "snp_parse",
    "snp_verify",
    "snp_verify_cached",
    "snp_verify_status",
    "spdm_parse",
    "spdm_verify",
    "spdm_verify_signature",
    "spdm_verify_status",
    "status_name",
    "tdx_parse",
    "tdx_verify",
    "tdx_verify_signatures",
    "tdx_verify_status",
]
