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
    KBS_ERR_CERTTABLE_TOO_MANY = 303
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

/* END CDEF */

#endif
