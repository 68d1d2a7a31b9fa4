/*
 * The whole C API of the broker's native core.
 *
 * Rules (see README, "Design"): every function parses untrusted bytes with each
 * length checked before use, does no I/O, keeps no mutable global state, and
 * returns a kbs_status.
 *
 * native/build_ffi.py hands cffi's cdef the text between the two marker comments
 * BEGIN CDEF and END CDEF below, unchanged.  Keep that part to what cdef parses:
 * plain declarations, comments and `#define NAME <integer>` lines (no other
 * preprocessor lines, attributes or macros with expressions).
 */
#ifndef KBS_NATIVE_H
#define KBS_NATIVE_H
#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */

/* One code per distinct failure, so Python can name exactly what was wrong. */
enum kbs_status {
    KBS_OK = 0,
    KBS_ERR_NULL_ARGUMENT = 1,
    KBS_ERR_INTERNAL = 2,

    /* SEV-SNP attestation report (reference/snp.md §1-2) */
    KBS_ERR_SNP_LENGTH = 100,
    KBS_ERR_SNP_VERSION = 101,
    KBS_ERR_SNP_SIG_ALGO = 102,
    KBS_ERR_SNP_POLICY_BIT17 = 103,
    KBS_ERR_SNP_POLICY_RESERVED = 104,
    KBS_ERR_SNP_SIGNER_INFO_RESERVED = 105,
    KBS_ERR_SNP_SIGNING_KEY_RESERVED = 106,
    KBS_ERR_SNP_MBZ_04C = 107,
    KBS_ERR_SNP_MBZ_188 = 108,
    KBS_ERR_SNP_MBZ_1EB = 109,
    KBS_ERR_SNP_MBZ_1EF = 110,
    KBS_ERR_SNP_MBZ_1F8 = 111,
    KBS_ERR_SNP_MBZ_208 = 112,
    KBS_ERR_SNP_SIG_R_HIGH = 113,
    KBS_ERR_SNP_SIG_S_HIGH = 114,
    KBS_ERR_SNP_MBZ_330 = 115,
    KBS_ERR_SNP_UNSIGNED = 116,

    /* ECDSA verification */
    KBS_ERR_KEY_LENGTH = 200,
    KBS_ERR_KEY_FORMAT = 201,
    KBS_ERR_KEY_NOT_ON_CURVE = 202,
    KBS_ERR_SIG_RANGE = 203,
    KBS_ERR_SIG_INVALID = 204,

    /* SEV-SNP extended-report certificate table (reference/snp.md §4) */
    KBS_ERR_CERTTABLE_UNTERMINATED = 300,
    KBS_ERR_CERTTABLE_OFFSET = 301,
    KBS_ERR_CERTTABLE_BOUNDS = 302,
    KBS_ERR_CERTTABLE_TOO_MANY = 303,

    /* Intel TDX DCAP quote v4/v5 (reference/tdx.md §1), in the order the parser meets them */
    KBS_ERR_TDX_HEADER_TRUNCATED = 400,   /* shorter than the 48-byte header */
    KBS_ERR_TDX_VERSION = 401,            /* version is not 4 or 5 */
    KBS_ERR_TDX_ATT_KEY_TYPE = 402,       /* attestation key type is not 2 (ECDSA P-256) */
    KBS_ERR_TDX_TEE_TYPE = 403,           /* TEE type is not 0x81 (TDX) */
    KBS_ERR_TDX_QE_VENDOR = 404,          /* QE vendor id is not Intel's */
    KBS_ERR_TDX_BODY_TRUNCATED = 405,     /* the buffer ends inside the v5 body descriptor or the body */
    KBS_ERR_TDX_BODY_TYPE = 406,          /* v5 body type is not 2 (TD 1.0) or 3 (TD 1.5) */
    KBS_ERR_TDX_BODY_SIZE = 407,          /* v5 body size is not the size of its type */
    KBS_ERR_TDX_SIG_DATA_TRUNCATED = 408, /* no room for signature_data_len, or it runs past the buffer */
    KBS_ERR_TDX_SIG_DATA_SIZE = 409,      /* signature_data_len is not exactly what the signature data holds */
    KBS_ERR_TDX_CERT_TYPE = 410,          /* certification data type is not 6 (QE report) */
    KBS_ERR_TDX_CERT_SIZE = 411,          /* its size runs past the signature data or is not what it holds */
    KBS_ERR_TDX_QE_AUTH_SIZE = 412,       /* QE auth data size runs past the certification data */
    KBS_ERR_TDX_PCK_CERT_TYPE = 413,      /* inner certification data missing or its type is not 5 */
    KBS_ERR_TDX_PCK_CERT_SIZE = 414,      /* inner size is not exactly the rest of the outer data */
    KBS_ERR_TDX_TRAILING_BYTES = 415,     /* a non-zero byte after the signature data */
    KBS_ERR_TDX_PCK_KEY = 416,            /* the PCK key passed in is not an uncompressed P-256 point */
    KBS_ERR_TDX_QE_REPORT_SIG_RANGE = 417, /* QE report signature r or s is 0 or >= n */
    KBS_ERR_TDX_QE_REPORT_SIG_INVALID = 418, /* QE report signature does not verify with the PCK key */
    KBS_ERR_TDX_QE_BINDING = 419,         /* QE report_data != SHA-256(attestation key || QE auth data) || 0^32 */
    KBS_ERR_TDX_ATT_KEY_INVALID = 420,    /* the attestation key is not a point on P-256 */
    KBS_ERR_TDX_QUOTE_SIG_RANGE = 421,    /* quote signature r or s is 0 or >= n */
    KBS_ERR_TDX_QUOTE_SIG_INVALID = 422,  /* quote signature does not verify with the attestation key */
    KBS_ERR_TDX_PCK_TABLE_MISMATCH = 423, /* the PCK key table given is not the table of the PCK key given */
    KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH = 424, /* the key table given is not the quote's attestation key's */

    /* NVIDIA GPU evidence: SPDM 1.1 GET_MEASUREMENTS || MEASUREMENTS (reference/gpu.md §1), in the
     * order the parser meets them.  error_* of struct kbs_spdm_report say where and what. */
    KBS_ERR_SPDM_FLAGS = 500,                   /* flags has bits other than KBS_SPDM_NO_PADDING */
    KBS_ERR_SPDM_REQUEST_TRUNCATED = 501,       /* shorter than the 37-byte request */
    KBS_ERR_SPDM_REQUEST_VERSION = 502,         /* request SPDMVersion is not 0x11 */
    KBS_ERR_SPDM_REQUEST_CODE = 503,            /* request code is not 0xE0 (GET_MEASUREMENTS) */
    KBS_ERR_SPDM_REQUEST_ATTRIBUTES = 504,      /* request Param1 is not 0x01 (signature requested) */
    KBS_ERR_SPDM_REQUEST_OPERATION = 505,       /* request Param2 is not 0xFF (all measurements) */
    KBS_ERR_SPDM_REQUEST_SLOT = 506,            /* request SlotIDParam is not a slot 0-7 */
    KBS_ERR_SPDM_RESPONSE_TRUNCATED = 507,      /* the buffer ends inside the 8-byte response header */
    KBS_ERR_SPDM_RESPONSE_VERSION = 508,        /* response SPDMVersion is not 0x11 */
    KBS_ERR_SPDM_RESPONSE_CODE = 509,           /* response code is not 0x60 (MEASUREMENTS) */
    KBS_ERR_SPDM_RESPONSE_PARAM1 = 510,         /* response Param1 (reserved) is not 0 */
    KBS_ERR_SPDM_RESPONSE_SLOT = 511,           /* response Param2 is not the request's slot */
    KBS_ERR_SPDM_NO_BLOCKS = 512,               /* NumberOfBlocks is 0 */
    KBS_ERR_SPDM_RECORD_TRUNCATED = 513,        /* MeasurementRecordLength runs past the buffer */
    KBS_ERR_SPDM_BLOCK_TRUNCATED = 514,         /* a block's header or measurement runs past the record */
    KBS_ERR_SPDM_BLOCK_INDEX = 515,             /* a block index is outside 1-254 */
    KBS_ERR_SPDM_BLOCK_DUPLICATE = 516,         /* a block index is used twice */
    KBS_ERR_SPDM_BLOCK_SPEC = 517,              /* MeasurementSpecification is not 0x01 (DMTF) */
    KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE = 518,  /* MeasurementSize is below the 3-byte DMTF header */
    KBS_ERR_SPDM_BLOCK_VALUE_TYPE = 519,        /* DMTF value type has bit 7 set (raw bit stream, not a digest) */
    KBS_ERR_SPDM_BLOCK_VALUE_SIZE = 520,        /* DMTF value size is not MeasurementSize - 3 */
    KBS_ERR_SPDM_BLOCK_COUNT = 521,             /* the record ends before NumberOfBlocks blocks */
    KBS_ERR_SPDM_RECORD_TRAILING = 522,         /* bytes in the record after NumberOfBlocks blocks */
    KBS_ERR_SPDM_NONCE_TRUNCATED = 523,         /* the buffer ends inside the responder nonce */
    KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED = 524, /* the buffer ends inside OpaqueLength */
    KBS_ERR_SPDM_OPAQUE_TRUNCATED = 525,        /* OpaqueLength runs past the buffer */
    KBS_ERR_SPDM_TLV_TRUNCATED = 526,           /* 1-3 bytes left in the opaque data: no room for a TLV header */
    KBS_ERR_SPDM_TLV_OVERRUN = 527,             /* a TLV's DataSize runs past the opaque data */
    KBS_ERR_SPDM_TLV_TYPE = 528,                /* a TLV type is not one a GPU or NVSwitch sends */
    KBS_ERR_SPDM_TLV_DUPLICATE = 529,           /* a TLV type is used twice */
    KBS_ERR_SPDM_SIGNATURE_TRUNCATED = 530,     /* fewer than 96 bytes left for the signature */
    KBS_ERR_SPDM_TRAILING_BYTES = 531,          /* a non-zero byte after the signature */
    KBS_ERR_SPDM_PADDING = 532,                 /* zero bytes after the signature, with KBS_SPDM_NO_PADDING */
    KBS_ERR_SPDM_KEY = 533,                     /* the leaf key is not an uncompressed P-384 point on the curve */
    KBS_ERR_SPDM_SIG_RANGE = 534,               /* signature r or s is 0 or >= n */
    KBS_ERR_SPDM_SIG_INVALID = 535,             /* signature does not verify with the leaf key */

    /* Not an error: kbs_snp_coco_decode leaves this message to the Python path, which names any error */
    KBS_SNP_COCO_NOT_FAST = 600
};

#define KBS_SNP_REPORT_SIZE 1184
#define KBS_SNP_SIGNED_SIZE 672
#define KBS_P384_POINT_SIZE 97

/* Every field of an SNP report, decoded from little-endian; byte arrays copied verbatim. */
struct kbs_snp_report {
    uint32_t version;
    uint32_t guest_svn;
    uint64_t policy;
    uint8_t family_id[16];
    uint8_t image_id[16];
    uint32_t vmpl;
    uint32_t signature_algo;
    uint64_t current_tcb;
    uint64_t platform_info;
    uint32_t signer_info;
    uint8_t report_data[64];
    uint8_t measurement[48];
    uint8_t host_data[32];
    uint8_t id_key_digest[48];
    uint8_t author_key_digest[48];
    uint8_t report_id[32];
    uint8_t report_id_ma[32];
    uint64_t reported_tcb;
    uint8_t cpuid_fam_id;   /* v3+ only; zero on v2 */
    uint8_t cpuid_mod_id;
    uint8_t cpuid_step;
    uint8_t chip_id[64];
    uint64_t committed_tcb;
    uint8_t current_build;
    uint8_t current_minor;
    uint8_t current_major;
    uint8_t committed_build;
    uint8_t committed_minor;
    uint8_t committed_major;
    uint64_t launch_tcb;
    uint64_t launch_mit_vector;  /* v5+ only; zero before */
    uint64_t current_mit_vector;
    uint8_t signature_r[48];     /* big-endian, ready for ECDSA */
    uint8_t signature_s[48];
};

/* Parse and check the format of a report: exact length, version, algorithm, MBZ fields. */
int kbs_snp_parse(const uint8_t *buf, size_t len, struct kbs_snp_report *out);

/*
 * Parse, hash bytes 0x000-0x29F with SHA-384 and verify the ECDSA P-384 signature
 * against an uncompressed SEC1 public key (0x04 || X || Y, 97 bytes).  `out` is filled
 * whenever parsing succeeded, even if the signature then fails.
 */
int kbs_snp_verify(const uint8_t *buf, size_t len, const uint8_t *pubkey, size_t pubkey_len,
                   struct kbs_snp_report *out);

/* SHA-384 of a buffer. */
int kbs_sha384(const uint8_t *buf, size_t len, uint8_t *digest_out);

/*
 * ECDSA P-384 verification of a 48-byte digest; r and s are 48-byte big-endian integers,
 * pubkey is an uncompressed SEC1 point (97 bytes).
 */
int kbs_p384_verify_digest(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                           const uint8_t *r, const uint8_t *s);

/* One entry of an extended-report certificate table; the blob is buf[offset, offset+length). */
struct kbs_certtable_entry {
    uint8_t guid[16];
    uint32_t offset;
    uint32_t length;
};

/*
 * Parse a certificate table: 24-byte entries up to an all-zero terminator, each blob
 * inside the buffer and after the header.  An empty buffer is an empty table.
 */
int kbs_snp_certtable_parse(const uint8_t *buf, size_t len, struct kbs_certtable_entry *entries,
                            size_t max_entries, size_t *count_out);

/* ---- Fast ECDSA P-384 verification (native/p384_*.c; issue 5) ----
 * kbs_p384_verify_digest above is implemented by this core.  All inputs are public;
 * the code runs in variable time and keeps no mutable state. */

/* Precomputed multiples of one public key (24 KB); opaque, filled by kbs_p384_key_precompute. */
#define KBS_P384_KEY_TABLE_WORDS 3080
struct kbs_p384_key_table {
    uint64_t words[3080];
};

/* The libcrypto implementation, kept as a reference for differential tests and benchmarks. */
int kbs_p384_verify_digest_libcrypto(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                                     const uint8_t *r, const uint8_t *s);

/* Like kbs_p384_verify_digest for a hash of any length: e is its leftmost 384 bits. */
int kbs_p384_verify_hash(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *hash, size_t hash_len,
                         const uint8_t *r, const uint8_t *s);

/* Validate a public key and fill its table (costs about two cold verifications). */
int kbs_p384_key_precompute(const uint8_t *pubkey, size_t pubkey_len, struct kbs_p384_key_table *out);

/* kbs_p384_verify_digest for a key already turned into a table. */
int kbs_p384_verify_digest_with_table(const struct kbs_p384_key_table *table, const uint8_t *digest,
                                      const uint8_t *r, const uint8_t *s);

/*
 * Verify count items in one call: item i is digests[48i..], r||s at sigs[96i..], and the key
 * tables[i] if tables and tables[i] are non-NULL, else the point pubkeys[97i..].
 * results[i] gets item i's status; the return value is about the call itself.
 */
int kbs_p384_verify_batch(size_t count, const uint8_t *digests, const uint8_t *sigs,
                          const uint8_t *pubkeys, const struct kbs_p384_key_table *const *tables,
                          int *results);

/* kbs_snp_verify with the signing key already turned into a table (a VCEK seen before). */
int kbs_snp_verify_with_table(const uint8_t *buf, size_t len, const struct kbs_p384_key_table *table,
                              struct kbs_snp_report *out);

/* Which field multiply this CPU runs ("mulx/adcx/adox asm" or "portable C ..."). */
const char *kbs_p384_implementation(void);

/* ---- ECDSA P-256 (native/p256_*.c; issue 10) ----
 * kbs_p256_verify_digest is the one entry point every P-256 verification of evidence goes
 * through (kbs_tdx_verify included): a verify-only core, with per-key tables for keys that sign
 * again and again (a platform's PCK key and its QE's attestation key sign every quote).  The
 * libcrypto implementation stays as kbs_p256_verify_digest_libcrypto (native/ecdsa_libcrypto.c), the
 * differential reference.  All inputs are public; the core runs in variable time and keeps no
 * mutable state.  Statuses: KBS_ERR_KEY_* for the key, KBS_ERR_SIG_RANGE for r or s outside
 * [1, n), KBS_ERR_SIG_INVALID. */
#define KBS_P256_POINT_SIZE 65
#define KBS_P256_SCALAR_SIZE 32

/* Precomputed multiples of one public key (16.1 KB), with the key's 65 bytes; opaque, filled by
 * kbs_p256_key_precompute. */
#define KBS_P256_KEY_TABLE_WORDS 2064
struct kbs_p256_key_table {
    uint64_t words[2064];
};

/* ECDSA P-256 of a 32-byte digest; r and s 32-byte big-endian, pubkey 0x04 || X || Y (65 bytes). */
int kbs_p256_verify_digest(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                           const uint8_t *r, const uint8_t *s);

/* Like kbs_p256_verify_digest for a hash of any length: e is its leftmost 256 bits. */
int kbs_p256_verify_hash(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *hash, size_t hash_len,
                         const uint8_t *r, const uint8_t *s);

/* The libcrypto implementation, kept as the reference for differential tests and benchmarks. */
int kbs_p256_verify_digest_libcrypto(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                                     const uint8_t *r, const uint8_t *s);

/* Validate a public key (KBS_ERR_KEY_* as a verification would say) and fill its table; costs
 * about two cold verifications. */
int kbs_p256_key_precompute(const uint8_t *pubkey, size_t pubkey_len, struct kbs_p256_key_table *out);

/* kbs_p256_verify_digest for a key already turned into a table. */
int kbs_p256_verify_digest_with_table(const struct kbs_p256_key_table *table, const uint8_t *digest,
                                      const uint8_t *r, const uint8_t *s);

/* The 65-byte key a table was built from, into pubkey_out (KBS_ERR_INTERNAL if never built). */
int kbs_p256_key_table_point(const struct kbs_p256_key_table *table, uint8_t *pubkey_out);

/* SHA-256 of a buffer. */
int kbs_sha256(const uint8_t *buf, size_t len, uint8_t *digest_out);

/* ---- Intel TDX DCAP quotes v4 and v5 (native/tdx_quote.c; reference/tdx.md §1) ---- */
#define KBS_TDX_HEADER_SIZE 48
#define KBS_TDX_QE_REPORT_SIZE 384
#define KBS_TDX_BODY_TD10_SIZE 584
#define KBS_TDX_BODY_TD15_SIZE 648
/* kbs_tdx_parse flag: accept any bytes after the signature data (go-tdx-guest's ExtraBytes).
 * Without it only zero padding is accepted. */
#define KBS_TDX_ALLOW_TRAILING_BYTES 1

/*
 * A parsed quote: decoded integers, and offsets into the caller's buffer for everything else
 * (byte fields are buf[offset, offset + size); sizes fixed by the format are the constants
 * above or in reference/tdx.md).  Body fields are at body_offset + their TD10 offset.
 */
struct kbs_tdx_quote {
    uint16_t version;               /* 4 or 5 */
    uint16_t att_key_type;          /* 2 */
    uint32_t tee_type;              /* 0x81 */
    uint16_t body_type;             /* 2 (TD 1.0, also every v4) or 3 (TD 1.5) */
    uint32_t body_size;             /* 584 or 648 */
    uint64_t td_attributes;         /* body + 120, little-endian */
    uint64_t xfam;                  /* body + 128, little-endian */
    size_t body_offset;             /* 48 (v4) or 54 (v5: after the 6-byte body descriptor) */
    size_t signed_size;             /* body_offset + body_size: the quote signature covers buf[0, signed_size) */
    uint32_t signature_data_len;    /* the u32 at signed_size */
    size_t signature_offset;        /* quote signature r || s, 64 bytes big-endian */
    size_t attestation_key_offset;  /* raw x || y, 64 bytes big-endian */
    uint32_t cert_data_size;        /* outer certification data (type 6) */
    size_t qe_report_offset;        /* the QE's 384-byte SGX report body */
    uint32_t qe_misc_select;
    uint16_t qe_isv_prod_id;
    uint16_t qe_isv_svn;
    size_t qe_report_signature_offset; /* r || s, 64 bytes, by the PCK key */
    uint16_t qe_auth_data_size;
    size_t qe_auth_data_offset;
    uint32_t pck_cert_data_size;    /* inner certification data (type 5), as stated */
    size_t pck_chain_offset;
    size_t pck_chain_len;           /* pck_cert_data_size less one trailing NUL, if there is one */
    size_t end;                     /* first byte after the signature data */
    size_t trailing_size;           /* len - end */
    uint8_t trailing_all_zero;      /* 1 if every trailing byte is zero (always 1 without the flag) */
};

/*
 * Parse a quote by its lengths: header, body, signature data, certification data (type 6)
 * holding the QE report, its signature, the QE auth data and the PCK chain (type 5).  Every
 * stated size must be exactly what its container holds; after the signature data only zero
 * bytes are accepted unless flags has KBS_TDX_ALLOW_TRAILING_BYTES.  No cryptography.
 */
int kbs_tdx_parse(const uint8_t *buf, size_t len, unsigned int flags, struct kbs_tdx_quote *out);

/*
 * Parse, then check in the order trust flows: the QE report signature by the PCK key
 * (0x04 || X || Y, 65 bytes), the QE report binding (report_data == SHA-256(attestation key ||
 * QE auth data) || 32 zero bytes, all 64 bytes compared), and the quote signature by the
 * attestation key over buf[0, signed_size).  `out` is filled whenever parsing succeeded.
 */
int kbs_tdx_verify(const uint8_t *buf, size_t len, unsigned int flags, const uint8_t *pck_pubkey,
                   size_t pck_pubkey_len, struct kbs_tdx_quote *out);

/*
 * kbs_tdx_verify with either key already turned into a table (either may be NULL: that check
 * then runs cold).  pck_pubkey is still required, and pck_table must be its table
 * (KBS_ERR_TDX_PCK_TABLE_MISMATCH otherwise); att_key_table must be the table of the
 * attestation key this quote carries (KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH otherwise).  The
 * checks, their order and their statuses are kbs_tdx_verify's.
 */
int kbs_tdx_verify_with_tables(const uint8_t *buf, size_t len, unsigned int flags, const uint8_t *pck_pubkey,
                               size_t pck_pubkey_len, const struct kbs_p256_key_table *pck_table,
                               const struct kbs_p256_key_table *att_key_table, struct kbs_tdx_quote *out);

/* ---- NVIDIA GPU evidence: SPDM 1.1 GET_MEASUREMENTS request || MEASUREMENTS response
 * (native/spdm_report.c; reference/gpu.md §1) ----
 * All integers little-endian; the signature is ECDSA P-384 r || s (big-endian) by the device
 * chain's leaf key over SHA-384 of buf[0, signed_size).  The C core returns offsets into the
 * caller's buffer: byte fields are buf[offset, offset + size). */
#define KBS_SPDM_REQUEST_SIZE 37
#define KBS_SPDM_NONCE_SIZE 32
#define KBS_SPDM_SIGNATURE_SIZE 96
#define KBS_SPDM_MAX_BLOCKS 256
#define KBS_SPDM_MAX_OPAQUE 64
/* kbs_spdm_parse flag: refuse even zero bytes after the signature (nvat's rule).  Without it
 * zero padding is accepted and anything else after the signature is refused. */
#define KBS_SPDM_NO_PADDING 1

/* One DMTF measurement block: its value is buf[value_offset, value_offset + value_size). */
struct kbs_spdm_block {
    uint8_t index;      /* 1-254, unique in the report */
    uint8_t spec;       /* MeasurementSpecification, 0x01 (DMTF) */
    uint8_t value_type; /* DMTFSpecMeasurementValueType, bit 7 clear (a digest) */
    uint16_t value_size;
    size_t value_offset;
};

/* One NVIDIA opaque-data TLV: its data is buf[offset, offset + length). */
struct kbs_spdm_opaque {
    uint16_t type;
    uint16_t length;
    size_t offset;
};

struct kbs_spdm_report {
    uint8_t request_attributes;     /* request Param1: 0x01 */
    uint8_t request_operation;      /* request Param2: 0xFF */
    uint8_t slot_id;                /* request SlotIDParam: 0-7 */
    size_t request_nonce_offset;    /* 4: the caller's 32-byte nonce */
    uint8_t response_param1;        /* 0 */
    uint8_t response_param2;        /* = slot_id */
    uint8_t number_of_blocks;       /* 1-254 */
    uint32_t record_length;         /* uint24 MeasurementRecordLength */
    size_t record_offset;           /* 45 */
    size_t block_count;             /* = number_of_blocks once parsed */
    struct kbs_spdm_block blocks[256];
    size_t responder_nonce_offset;  /* 32 bytes generated by the GPU */
    uint16_t opaque_length;
    size_t opaque_offset;
    size_t opaque_count;
    struct kbs_spdm_opaque opaque[64];
    size_t signature_offset;        /* 96 bytes: r || s */
    size_t signed_size;             /* = signature_offset: the signature covers buf[0, signed_size) */
    size_t end;                     /* signature_offset + 96 */
    size_t trailing_size;           /* len - end: zero padding */
    /* On an error: the offset of the field that broke the rule, the block or TLV number it is in
     * (0-based), the value seen and the value (or limit) wanted.  See kbs/native/spdm.py. */
    size_t error_offset;
    size_t error_item;
    uint64_t error_seen;
    uint64_t error_wanted;
};

/*
 * Parse a report by its lengths: the request (0x11, 0xE0, Param1 0x01, Param2 0xFF, slot 0-7), the
 * response header (0x11, 0x60, Param1 0, Param2 = slot, NumberOfBlocks >= 1), exactly
 * NumberOfBlocks DMTF digest blocks filling the record (indices 1-254, each once), the responder
 * nonce, the opaque TLVs (known types only, each once, each inside OpaqueLength) and the 96-byte
 * signature; then zero padding only (none with KBS_SPDM_NO_PADDING).  No cryptography.
 */
int kbs_spdm_parse(const uint8_t *buf, size_t len, unsigned int flags, struct kbs_spdm_report *out);

/*
 * Parse, hash buf[0, signed_size) with SHA-384 and verify the signature with the leaf key
 * (0x04 || X || Y, 97 bytes): KBS_ERR_SPDM_KEY, _SIG_RANGE or _SIG_INVALID.  `out` is filled
 * whenever parsing succeeded, even if the signature then fails.
 */
int kbs_spdm_verify(const uint8_t *buf, size_t len, unsigned int flags, const uint8_t *leaf_pubkey,
                    size_t pubkey_len, struct kbs_spdm_report *out);

/* kbs_spdm_verify with the leaf key already turned into a table (a GPU signs every report it makes). */
int kbs_spdm_verify_with_table(const uint8_t *buf, size_t len, unsigned int flags,
                               const struct kbs_p384_key_table *table, struct kbs_spdm_report *out);

/* ---- A CoCo guest's SEV-SNP attestation message in one pass (native/snp_coco_json.c; issue 12) ----
 * The body of /attest (KBS protocol 0.4.0) whose primary evidence is sev's serde JSON of the
 * report, {"attestation_report": {...}, "cert_chain": [...] | null}, re-encoded into the binary
 * report as kbs/evidence/snp/coco.py does.  A fast path only: it accepts a strict subset of what
 * the Python path (orjson + kbs.jsondoc.check_shape + coco.report_from_coco) accepts, with the same
 * result, and returns KBS_SNP_COCO_NOT_FAST for everything else (any byte >= 0x80, an escaped UTF-16
 * surrogate, a number that is not a plain integer below 2^64, a duplicate member it reads, any
 * value report_from_coco refuses, ...).  It never says what is wrong: the Python path does.
 * The limits are kbs.jsondoc's and coco.py's (tests/test_snp_coco_fast.py holds them equal). */
#define KBS_SNP_COCO_MAX_DEPTH 32
#define KBS_SNP_COCO_MAX_NODES 100000
#define KBS_SNP_COCO_MAX_CERTS 16
#define KBS_SNP_COCO_MAX_CERT_SIZE 16384

/* cert_type, sev's CertType names (an {"OTHER": guid} entry is left to the Python path) */
#define KBS_SNP_COCO_CERT_EMPTY 0
#define KBS_SNP_COCO_CERT_ARK 1
#define KBS_SNP_COCO_CERT_ASK 2
#define KBS_SNP_COCO_CERT_VCEK 3
#define KBS_SNP_COCO_CERT_VLEK 4
#define KBS_SNP_COCO_CERT_CRL 5

/* One cert_chain entry: its DER is cert_buf[offset, offset + length). */
struct kbs_snp_coco_cert {
    uint8_t cert_type;
    size_t offset;
    size_t length;
};

/* The message, split: spans are body[offset, offset + length) of a member's JSON value, length 0
 * when the member is absent (a JSON value is never empty). */
struct kbs_snp_coco_message {
    uint8_t report[1184];               /* the binary report; format rules not checked (kbs_snp_parse) */
    size_t cert_count;                  /* 0 for a null or absent cert_chain */
    struct kbs_snp_coco_cert certs[16];
    size_t runtime_data_offset;         /* top-level "runtime-data" (always present) */
    size_t runtime_data_length;
    size_t init_data_offset;            /* top-level "init-data" */
    size_t init_data_length;
    size_t additional_evidence_offset;  /* tee-evidence "additional_evidence" */
    size_t additional_evidence_length;
};

/*
 * Validate the whole body as strict JSON (bounded depth and value count, as kbs.jsondoc) and decode
 * tee-evidence.primary_evidence: KBS_OK with `out` filled and the certificates' DER in cert_buf (a
 * buffer of len bytes always suffices), or KBS_SNP_COCO_NOT_FAST.  Reads nothing past body[len).
 */
int kbs_snp_coco_decode(const uint8_t *body, size_t len, uint8_t *cert_buf, size_t cert_buf_len,
                        struct kbs_snp_coco_message *out);

/* END CDEF */

#endif
