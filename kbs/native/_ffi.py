"""The loaded core (`kbs._native`: `ffi`, `lib`) and the one map from its status codes to exceptions.

`kbs_native.h` has one `enum kbs_status` for every concern, so its Python side is one table
here; each concern's module (snp, tdx, spdm, p384, p256, hashing) calls `raise_for` on what C returned.
"""

from __future__ import annotations

from kbs._native import ffi, lib
from kbs.errors import EvidenceError, KbsError, MalformedEvidence, SignatureInvalid

__all__ = ["MAX_CERTTABLE_ENTRIES", "NativeStatusError", "ffi", "lib", "raise_for", "status_name"]

# The most entries snp_certtable_parse lets the C parser return (its error message names it).
MAX_CERTTABLE_ENTRIES = 64

# status code -> (exception class, check label, operator-facing message)
_STATUS: dict[int, tuple[type[KbsError], str, str]] = {
    lib.KBS_ERR_NULL_ARGUMENT: (KbsError, "internal", "native core called without a buffer"),
    lib.KBS_ERR_INTERNAL: (KbsError, "internal", "native core failed internally"),
    lib.KBS_ERR_SNP_LENGTH: (MalformedEvidence, "report.length",
                             f"SNP report must be exactly {lib.KBS_SNP_REPORT_SIZE} bytes"),
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
                                     f"certificate table has more than {MAX_CERTTABLE_ENTRIES} entries"),
    # Intel TDX quotes (native/tdx_quote.c, reference/tdx.md §1)
    lib.KBS_ERR_TDX_HEADER_TRUNCATED: (MalformedEvidence, "quote.length",
                                       f"TDX quote is shorter than its {lib.KBS_TDX_HEADER_SIZE}-byte header"),
    lib.KBS_ERR_TDX_VERSION: (MalformedEvidence, "quote.version", "TDX quote version is not 4 or 5"),
    lib.KBS_ERR_TDX_ATT_KEY_TYPE: (MalformedEvidence, "quote.att_key_type",
                                   "TDX quote attestation key type is not 2 (ECDSA P-256)"),
    lib.KBS_ERR_TDX_TEE_TYPE: (MalformedEvidence, "quote.tee_type", "quote TEE type is not 0x81 (TDX)"),
    lib.KBS_ERR_TDX_QE_VENDOR: (MalformedEvidence, "quote.qe_vendor_id",
                                "TDX quote QE vendor id is not Intel's (939a7233f79c4ca9940a0db3957f0607)"),
    lib.KBS_ERR_TDX_BODY_TRUNCATED: (MalformedEvidence, "quote.length",
                                     "TDX quote ends inside its body (or v5 body descriptor)"),
    lib.KBS_ERR_TDX_BODY_TYPE: (MalformedEvidence, "quote.body_type",
                                "TDX quote v5 body type is not 2 (TD report 1.0) or 3 (TD report 1.5)"),
    lib.KBS_ERR_TDX_BODY_SIZE: (MalformedEvidence, "quote.body_size",
                                f"TDX quote v5 body size is not that of its type ({lib.KBS_TDX_BODY_TD10_SIZE} "
                                f"for type 2, {lib.KBS_TDX_BODY_TD15_SIZE} for type 3)"),
    lib.KBS_ERR_TDX_SIG_DATA_TRUNCATED: (MalformedEvidence, "quote.signature_data_length",
                                         "TDX quote signature data runs past the end of the quote"),
    lib.KBS_ERR_TDX_SIG_DATA_SIZE: (MalformedEvidence, "quote.signature_data_length",
                                    "TDX quote signature_data_len is not exactly the size of the signature "
                                    "data it holds"),
    lib.KBS_ERR_TDX_CERT_TYPE: (MalformedEvidence, "quote.cert_data_type",
                                "TDX quote certification data type is not 6 (QE report certification data)"),
    lib.KBS_ERR_TDX_CERT_SIZE: (MalformedEvidence, "quote.cert_data_size",
                                "TDX quote certification data (type 6) runs past the signature data, or is too "
                                "short for the QE report and its signature"),
    lib.KBS_ERR_TDX_QE_AUTH_SIZE: (MalformedEvidence, "quote.qe_auth_data",
                                   "TDX quote QE auth data size runs past its certification data"),
    lib.KBS_ERR_TDX_PCK_CERT_TYPE: (MalformedEvidence, "quote.pck_cert_type",
                                    "TDX quote inner certification data is missing or its type is not 5 "
                                    "(PCK certificate chain)"),
    lib.KBS_ERR_TDX_PCK_CERT_SIZE: (MalformedEvidence, "quote.pck_cert_size",
                                    "TDX quote PCK chain size (type 5) does not exactly fill the certification "
                                    "data (type 6) that holds it"),
    lib.KBS_ERR_TDX_TRAILING_BYTES: (MalformedEvidence, "quote.trailing_bytes",
                                     "TDX quote has non-zero bytes after its signature data (only zero padding "
                                     "is accepted)"),
    lib.KBS_ERR_TDX_PCK_KEY: (SignatureInvalid, "quote.qe_report_signature",
                              "PCK public key is not an uncompressed P-256 point on the curve (65 bytes, 0x04)"),
    lib.KBS_ERR_TDX_QE_REPORT_SIG_RANGE: (SignatureInvalid, "quote.qe_report_signature",
                                          "QE report signature r or s is zero or not below the group order"),
    lib.KBS_ERR_TDX_QE_REPORT_SIG_INVALID: (SignatureInvalid, "quote.qe_report_signature",
                                            "QE report signature does not verify with the PCK certificate's key"),
    lib.KBS_ERR_TDX_QE_BINDING: (EvidenceError, "quote.qe_binding",
                                 "QE report data is not SHA-256(attestation key || QE auth data) followed by "
                                 "32 zero bytes: the QE did not vouch for this attestation key"),
    lib.KBS_ERR_TDX_ATT_KEY_INVALID: (SignatureInvalid, "quote.signature",
                                      "TDX quote attestation key is not a point on P-256"),
    lib.KBS_ERR_TDX_QUOTE_SIG_RANGE: (SignatureInvalid, "quote.signature",
                                      "TDX quote signature r or s is zero or not below the group order"),
    lib.KBS_ERR_TDX_QUOTE_SIG_INVALID: (SignatureInvalid, "quote.signature",
                                        "TDX quote signature over header and body does not verify with its "
                                        "attestation key"),
    # A key table that is not the key's: the caller picked the wrong table (a bug, never a verdict).
    lib.KBS_ERR_TDX_PCK_TABLE_MISMATCH: (KbsError, "internal",
                                         "the P-256 key table passed for the PCK key was built for another key"),
    lib.KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH: (KbsError, "internal",
                                             "the P-256 key table passed for the attestation key was built for "
                                             "another key than the quote's"),
    # NVIDIA GPU evidence, SPDM 1.1 GET_MEASUREMENTS + MEASUREMENTS (native/spdm_report.c, reference/gpu.md
    # §1).  kbs.native.spdm appends where and what (offset, block or TLV, value seen and wanted).
    lib.KBS_ERR_SPDM_FLAGS: (KbsError, "internal", "kbs_spdm_parse called with unknown flag bits"),
    lib.KBS_ERR_SPDM_REQUEST_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                         "GPU report is shorter than the 37-byte SPDM GET_MEASUREMENTS request"),
    lib.KBS_ERR_SPDM_REQUEST_VERSION: (MalformedEvidence, "nvgpu.parse",
                                       "GPU report request SPDMVersion is not 0x11 (SPDM 1.1)"),
    lib.KBS_ERR_SPDM_REQUEST_CODE: (MalformedEvidence, "nvgpu.parse",
                                    "GPU report request code is not 0xE0 (GET_MEASUREMENTS)"),
    lib.KBS_ERR_SPDM_REQUEST_ATTRIBUTES: (MalformedEvidence, "nvgpu.parse",
                                          "GPU report request Param1 is not 0x01 (signature requested, reserved "
                                          "bits clear)"),
    lib.KBS_ERR_SPDM_REQUEST_OPERATION: (MalformedEvidence, "nvgpu.parse",
                                         "GPU report request Param2 is not 0xFF (all measurements)"),
    lib.KBS_ERR_SPDM_REQUEST_SLOT: (MalformedEvidence, "nvgpu.parse",
                                    "GPU report request SlotIDParam is not a certificate slot 0-7"),
    lib.KBS_ERR_SPDM_RESPONSE_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                          "GPU report ends inside the 8-byte MEASUREMENTS response header"),
    lib.KBS_ERR_SPDM_RESPONSE_VERSION: (MalformedEvidence, "nvgpu.parse",
                                        "GPU report response SPDMVersion is not 0x11 (SPDM 1.1)"),
    lib.KBS_ERR_SPDM_RESPONSE_CODE: (MalformedEvidence, "nvgpu.parse",
                                     "GPU report response code is not 0x60 (MEASUREMENTS)"),
    lib.KBS_ERR_SPDM_RESPONSE_PARAM1: (MalformedEvidence, "nvgpu.parse",
                                       "GPU report response Param1 (reserved) is not 0"),
    lib.KBS_ERR_SPDM_RESPONSE_SLOT: (MalformedEvidence, "nvgpu.parse",
                                     "GPU report response Param2 is not the slot the request named"),
    lib.KBS_ERR_SPDM_NO_BLOCKS: (MalformedEvidence, "nvgpu.parse", "GPU report has no measurement blocks"),
    lib.KBS_ERR_SPDM_RECORD_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                        "GPU report measurement record runs past the end of the report"),
    lib.KBS_ERR_SPDM_BLOCK_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                       "GPU report measurement block runs past the end of the measurement record"),
    lib.KBS_ERR_SPDM_BLOCK_INDEX: (MalformedEvidence, "nvgpu.parse",
                                   "GPU report measurement block index is outside 1-254"),
    lib.KBS_ERR_SPDM_BLOCK_DUPLICATE: (MalformedEvidence, "nvgpu.parse",
                                       "GPU report has two measurement blocks with the same index"),
    lib.KBS_ERR_SPDM_BLOCK_SPEC: (MalformedEvidence, "nvgpu.parse",
                                  "GPU report measurement block specification is not 0x01 (DMTF)"),
    lib.KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE: (MalformedEvidence, "nvgpu.parse",
                                              "GPU report measurement block is too short for its 3-byte DMTF "
                                              "header"),
    lib.KBS_ERR_SPDM_BLOCK_VALUE_TYPE: (MalformedEvidence, "nvgpu.parse",
                                        "GPU report measurement is a raw bit stream (DMTF value type bit 7), "
                                        "not a digest"),
    lib.KBS_ERR_SPDM_BLOCK_VALUE_SIZE: (MalformedEvidence, "nvgpu.parse",
                                        "GPU report DMTF measurement value size is not the block's "
                                        "MeasurementSize less its 3-byte header"),
    lib.KBS_ERR_SPDM_BLOCK_COUNT: (MalformedEvidence, "nvgpu.parse",
                                   "GPU report measurement record holds fewer blocks than NumberOfBlocks says"),
    lib.KBS_ERR_SPDM_RECORD_TRAILING: (MalformedEvidence, "nvgpu.parse",
                                       "GPU report measurement record has bytes after its NumberOfBlocks blocks"),
    lib.KBS_ERR_SPDM_NONCE_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                       "GPU report ends inside the 32-byte responder nonce"),
    lib.KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                               "GPU report ends inside the 2-byte OpaqueLength"),
    lib.KBS_ERR_SPDM_OPAQUE_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                        "GPU report opaque data runs past the end of the report"),
    lib.KBS_ERR_SPDM_TLV_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                     "GPU report opaque data ends inside a 4-byte TLV header"),
    lib.KBS_ERR_SPDM_TLV_OVERRUN: (MalformedEvidence, "nvgpu.parse",
                                   "GPU report opaque TLV runs past the end of the opaque data"),
    lib.KBS_ERR_SPDM_TLV_TYPE: (MalformedEvidence, "nvgpu.parse",
                                "GPU report opaque TLV type is not one a GPU or NVSwitch sends (1-26, 32-36)"),
    lib.KBS_ERR_SPDM_TLV_DUPLICATE: (MalformedEvidence, "nvgpu.parse",
                                     "GPU report opaque data has the same TLV type twice"),
    lib.KBS_ERR_SPDM_SIGNATURE_TRUNCATED: (MalformedEvidence, "nvgpu.parse",
                                           "GPU report ends inside its 96-byte signature"),
    lib.KBS_ERR_SPDM_TRAILING_BYTES: (MalformedEvidence, "nvgpu.parse",
                                      "GPU report has non-zero bytes after its signature (only zero padding is "
                                      "accepted)"),
    lib.KBS_ERR_SPDM_PADDING: (MalformedEvidence, "nvgpu.parse",
                               "GPU report has zero padding after its signature, and padding was refused"),
    lib.KBS_ERR_SPDM_KEY: (SignatureInvalid, "nvgpu.signature",
                           "GPU leaf certificate key is not an uncompressed P-384 point on the curve (97 bytes, "
                           "0x04)"),
    lib.KBS_ERR_SPDM_SIG_RANGE: (SignatureInvalid, "nvgpu.signature",
                                 "GPU report signature r or s is zero or not below the group order"),
    lib.KBS_ERR_SPDM_SIG_INVALID: (SignatureInvalid, "nvgpu.signature",
                                   "GPU report signature does not verify with the leaf certificate's key"),
}


class NativeStatusError(KbsError):
    """A status the Python side does not know: a bug, never a verdict on evidence."""


def raise_for(status: int, context: str = "", detail: str = "") -> None:
    """Raise the exception of a non-OK status: `context` goes before its message, `detail` (where and
    what, when the caller knows it) after it."""
    if status == lib.KBS_OK:
        return
    cls, check, message = _STATUS.get(
        status, (NativeStatusError, "internal", f"native core returned unknown status {status}"))
    raise cls(f"{context}{message}" + (f": {detail}" if detail else ""), check=check)


def status_name(status: int) -> str:
    """The C enum name of a status code (for tests and diagnostics)."""
    for name in dir(lib):
        if name.startswith("KBS_") and getattr(lib, name) == status and not name.endswith("_SIZE"):
            return name
    return str(status)

