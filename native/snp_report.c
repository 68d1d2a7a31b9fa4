/*
 * SEV-SNP ATTESTATION_REPORT parser (reference/snp.md §1-2).
 *
 * The buffer must be exactly 1184 bytes; every offset below is a constant inside that
 * size, so once the length check passed no read can leave the buffer.
 */
#include <string.h>

#include "kbs_native.h"

enum {
    OFF_VERSION = 0x000,
    OFF_GUEST_SVN = 0x004,
    OFF_POLICY = 0x008,
    OFF_FAMILY_ID = 0x010,
    OFF_IMAGE_ID = 0x020,
    OFF_VMPL = 0x030,
    OFF_SIG_ALGO = 0x034,
    OFF_CURRENT_TCB = 0x038,
    OFF_PLATFORM_INFO = 0x040,
    OFF_SIGNER_INFO = 0x048,
    OFF_MBZ_04C = 0x04C,
    OFF_REPORT_DATA = 0x050,
    OFF_MEASUREMENT = 0x090,
    OFF_HOST_DATA = 0x0C0,
    OFF_ID_KEY_DIGEST = 0x0E0,
    OFF_AUTHOR_KEY_DIGEST = 0x110,
    OFF_REPORT_ID = 0x140,
    OFF_REPORT_ID_MA = 0x160,
    OFF_REPORTED_TCB = 0x180,
    OFF_CPUID_FAM = 0x188,
    OFF_CPUID_MOD = 0x189,
    OFF_CPUID_STEP = 0x18A,
    OFF_RSVD_18B = 0x18B,
    OFF_CHIP_ID = 0x1A0,
    OFF_COMMITTED_TCB = 0x1E0,
    OFF_CURRENT_BUILD = 0x1E8,
    OFF_MBZ_1EB = 0x1EB,
    OFF_COMMITTED_BUILD = 0x1EC,
    OFF_MBZ_1EF = 0x1EF,
    OFF_LAUNCH_TCB = 0x1F0,
    OFF_LAUNCH_MIT = 0x1F8,
    OFF_CURRENT_MIT = 0x200,
    OFF_RSVD_208 = 0x208,
    OFF_SIGNATURE = 0x2A0,
    OFF_SIG_S = 0x2E8,
    OFF_SIG_TAIL = 0x330
};

enum {
    ECDSA_FIELD_SIZE = 72, /* r and s are 72-byte little-endian fields */
    P384_SCALAR_SIZE = 48,
    SIG_ALGO_ECDSA_P384_SHA384 = 1,
    SIGNING_KEY_NONE = 7
};

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static int all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

/* Reverse a 72-byte little-endian field into a 48-byte big-endian scalar; the upper 24 bytes must be zero. */
static int scalar_from_le72(const uint8_t *field, uint8_t *out)
{
    if (!all_zero(field + P384_SCALAR_SIZE, ECDSA_FIELD_SIZE - P384_SCALAR_SIZE))
        return 0;
    for (size_t i = 0; i < P384_SCALAR_SIZE; i++)
        out[i] = field[P384_SCALAR_SIZE - 1 - i];
    return 1;
}

static int check_format(const uint8_t *b, uint32_t version)
{
    uint64_t policy = le64(b + OFF_POLICY);
    uint32_t signer = le32(b + OFF_SIGNER_INFO);
    uint32_t signing_key = (signer >> 2) & 7;

    if (le32(b + OFF_SIG_ALGO) != SIG_ALGO_ECDSA_P384_SHA384)
        return KBS_ERR_SNP_SIG_ALGO;
    if (!(policy & (UINT64_C(1) << 17)))
        return KBS_ERR_SNP_POLICY_BIT17;
    if (policy >> 26)
        return KBS_ERR_SNP_POLICY_RESERVED;
    if (signer >> 5)
        return KBS_ERR_SNP_SIGNER_INFO_RESERVED;
    if (signing_key >= 2 && signing_key <= 6)
        return KBS_ERR_SNP_SIGNING_KEY_RESERVED;
    if (!all_zero(b + OFF_MBZ_04C, 4))
        return KBS_ERR_SNP_MBZ_04C;
    /* v2 reserves 0x188-0x19F; v3+ uses the first three bytes for CPUID. */
    if (version == 2 ? !all_zero(b + OFF_CPUID_FAM, OFF_CHIP_ID - OFF_CPUID_FAM)
                     : !all_zero(b + OFF_RSVD_18B, OFF_CHIP_ID - OFF_RSVD_18B))
        return KBS_ERR_SNP_MBZ_188;
    if (b[OFF_MBZ_1EB] != 0)
        return KBS_ERR_SNP_MBZ_1EB;
    if (b[OFF_MBZ_1EF] != 0)
        return KBS_ERR_SNP_MBZ_1EF;
    /* The mitigation vectors exist from v5 on; before that the bytes are reserved. */
    if (version < 5 && !all_zero(b + OFF_LAUNCH_MIT, OFF_RSVD_208 - OFF_LAUNCH_MIT))
        return KBS_ERR_SNP_MBZ_1F8;
    if (!all_zero(b + OFF_RSVD_208, OFF_SIGNATURE - OFF_RSVD_208))
        return KBS_ERR_SNP_MBZ_208;
    if (!all_zero(b + OFF_SIGNATURE + P384_SCALAR_SIZE, ECDSA_FIELD_SIZE - P384_SCALAR_SIZE))
        return KBS_ERR_SNP_SIG_R_HIGH;
    if (!all_zero(b + OFF_SIG_S + P384_SCALAR_SIZE, ECDSA_FIELD_SIZE - P384_SCALAR_SIZE))
        return KBS_ERR_SNP_SIG_S_HIGH;
    if (!all_zero(b + OFF_SIG_TAIL, KBS_SNP_REPORT_SIZE - OFF_SIG_TAIL))
        return KBS_ERR_SNP_MBZ_330;
    return KBS_OK;
}

static void decode(const uint8_t *b, uint32_t version, struct kbs_snp_report *r)
{
    memset(r, 0, sizeof(*r));
    r->version = version;
    r->guest_svn = le32(b + OFF_GUEST_SVN);
    r->policy = le64(b + OFF_POLICY);
    memcpy(r->family_id, b + OFF_FAMILY_ID, sizeof(r->family_id));
    memcpy(r->image_id, b + OFF_IMAGE_ID, sizeof(r->image_id));
    r->vmpl = le32(b + OFF_VMPL);
    r->signature_algo = le32(b + OFF_SIG_ALGO);
    r->current_tcb = le64(b + OFF_CURRENT_TCB);
    r->platform_info = le64(b + OFF_PLATFORM_INFO);
    r->signer_info = le32(b + OFF_SIGNER_INFO);
    memcpy(r->report_data, b + OFF_REPORT_DATA, sizeof(r->report_data));
    memcpy(r->measurement, b + OFF_MEASUREMENT, sizeof(r->measurement));
    memcpy(r->host_data, b + OFF_HOST_DATA, sizeof(r->host_data));
    memcpy(r->id_key_digest, b + OFF_ID_KEY_DIGEST, sizeof(r->id_key_digest));
    memcpy(r->author_key_digest, b + OFF_AUTHOR_KEY_DIGEST, sizeof(r->author_key_digest));
    memcpy(r->report_id, b + OFF_REPORT_ID, sizeof(r->report_id));
    memcpy(r->report_id_ma, b + OFF_REPORT_ID_MA, sizeof(r->report_id_ma));
    r->reported_tcb = le64(b + OFF_REPORTED_TCB);
    if (version >= 3) {
        r->cpuid_fam_id = b[OFF_CPUID_FAM];
        r->cpuid_mod_id = b[OFF_CPUID_MOD];
        r->cpuid_step = b[OFF_CPUID_STEP];
    }
    memcpy(r->chip_id, b + OFF_CHIP_ID, sizeof(r->chip_id));
    r->committed_tcb = le64(b + OFF_COMMITTED_TCB);
    r->current_build = b[OFF_CURRENT_BUILD];
    r->current_minor = b[OFF_CURRENT_BUILD + 1];
    r->current_major = b[OFF_CURRENT_BUILD + 2];
    r->committed_build = b[OFF_COMMITTED_BUILD];
    r->committed_minor = b[OFF_COMMITTED_BUILD + 1];
    r->committed_major = b[OFF_COMMITTED_BUILD + 2];
    r->launch_tcb = le64(b + OFF_LAUNCH_TCB);
    if (version >= 5) {
        r->launch_mit_vector = le64(b + OFF_LAUNCH_MIT);
        r->current_mit_vector = le64(b + OFF_CURRENT_MIT);
    }
    /* check_format already required the upper bytes to be zero. */
    (void)scalar_from_le72(b + OFF_SIGNATURE, r->signature_r);
    (void)scalar_from_le72(b + OFF_SIG_S, r->signature_s);
}

int kbs_snp_parse(const uint8_t *buf, size_t len, struct kbs_snp_report *out)
{
    if (buf == NULL || out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    if (len != KBS_SNP_REPORT_SIZE)
        return KBS_ERR_SNP_LENGTH;
    uint32_t version = le32(buf + OFF_VERSION);
    /* 2, 3 (4 shares the v3 layout) and 5 are the layouts we know; newer ones fail closed. */
    if (version < 2 || version > 5)
        return KBS_ERR_SNP_VERSION;
    int rc = check_format(buf, version);
    if (rc != KBS_OK)
        return rc;
    decode(buf, version, out);
    return KBS_OK;
}

/* Parse, refuse an unsigned report, and hash the signed bytes: the part both verify calls share. */
static int parse_and_digest(const uint8_t *buf, size_t len, struct kbs_snp_report *out, uint8_t digest[48])
{
    int rc = kbs_snp_parse(buf, len, out);
    if (rc != KBS_OK)
        return rc;
    if (((out->signer_info >> 2) & 7) == SIGNING_KEY_NONE)
        return KBS_ERR_SNP_UNSIGNED;
    return kbs_sha384(buf, KBS_SNP_SIGNED_SIZE, digest);
}

int kbs_snp_verify(const uint8_t *buf, size_t len, const uint8_t *pubkey, size_t pubkey_len,
                   struct kbs_snp_report *out)
{
    if (pubkey == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    uint8_t digest[48];
    int rc = parse_and_digest(buf, len, out, digest);
    if (rc != KBS_OK)
        return rc;
    return kbs_p384_verify_digest(pubkey, pubkey_len, digest, out->signature_r, out->signature_s);
}

int kbs_snp_verify_with_table(const uint8_t *buf, size_t len, const struct kbs_p384_key_table *table,
                              struct kbs_snp_report *out)
{
    if (table == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    uint8_t digest[48];
    int rc = parse_and_digest(buf, len, out, digest);
    if (rc != KBS_OK)
        return rc;
    return kbs_p384_verify_digest_with_table(table, digest, out->signature_r, out->signature_s);
}
