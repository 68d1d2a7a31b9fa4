"""The one package that touches the compiled core (`kbs._native`).

It turns status codes into typed exceptions and C structs into frozen dataclasses;
nothing else in the package imports the extension.  Every call below runs in C with
the GIL released (cffi API mode), so verification scales with threads.

One module per C concern: `_ffi` (the loaded library and the status-code -> exception map),
`snp` (SEV-SNP reports and certificate tables), `p384` (ECDSA P-384: key tables, key cache,
batch), `hashing` (SHA-384).  Callers import from here: `from kbs import native`.
"""

from kbs.native._ffi import NativeStatusError, ffi, lib, status_name
from kbs.native.hashing import sha384
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
    snp_parse,
    snp_verify,
    snp_verify_cached,
    snp_verify_status,
)

__all__ = [
    "P384_POINT_SIZE",
    "P384_SCALAR_SIZE",
    "SNP_REPORT_SIZE",
    "SNP_SIGNED_SIZE",
    "CertTableEntry",
    "NativeStatusError",
    "P384BatchItem",
    "P384KeyCache",
    "P384KeyTable",
    "RawSnpReport",
    "ffi",
    "lib",
    "p384_implementation",
    "p384_verify_batch",
    "p384_verify_digest",
    "p384_verify_digest_libcrypto",
    "p384_verify_hash",
    "sha384",
    "snp_certtable_parse",
    "snp_parse",
    "snp_verify",
    "snp_verify_cached",
    "snp_verify_status",
    "status_name",
]
