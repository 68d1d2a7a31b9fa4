/*
 * Intel TDX DCAP quote parser (v4 and v5) and its one-call verifier (reference/tdx.md §1).
 *
 * The quote is read by its lengths, front to back.  `pos` is always <= `len` (or <= the end of
 * the enclosing structure), and every read is preceded by a check that the bytes remain, written
 * as `size > limit - pos` so nothing can wrap.  Each stated size must be exactly what its
 * container holds: signature_data_len == 134 + the certification data size, and that size ==
 * 384 + 64 + 2 + the QE auth data size + 6 + the PCK chain size.  After the signature data only
 * zero bytes are accepted (zero padding of a fixed-size buffer), unless the caller asks otherwise.
 */
#include <openssl/evp.h>
#include <string.h>

#include "kbs_native.h"

enum {
    HEADER_SIZE = KBS_TDX_HEADER_SIZE,
    DESCRIPTOR_SIZE = 6, /* v5: u16 body type, u32 body size */
    QE_REPORT_SIZE = KBS_TDX_QE_REPORT_SIZE,
    SIG_SIZE = 64,       /* r || s */
    ATT_KEY_SIZE = 64,   /* x || y */

    /* header */
    OFF_VERSION = 0,
    OFF_ATT_KEY_TYPE = 2,
    OFF_TEE_TYPE = 4,
    OFF_QE_VENDOR = 12,
    QE_VENDOR_SIZE = 16,

    /* body, relative to its start (TD10 layout; TD15 appends tee_tcb_svn2 and mrservicetd) */
    BODY_TD_ATTRIBUTES = 120,
    BODY_XFAM = 128,

    /* QE report (SGX report body), relative to its start */
    QE_MISC_SELECT = 16,
    QE_ISV_PROD_ID = 256,
    QE_ISV_SVN = 258,
    QE_REPORT_DATA = 320,

    VERSION_4 = 4,
    VERSION_5 = 5,
    ATT_KEY_ECDSA_P256 = 2,
    TEE_TYPE_TDX = 0x81,
    BODY_TYPE_TD10 = 2,
    BODY_TYPE_TD15 = 3,
    CERT_TYPE_QE_REPORT = 6,
    CERT_TYPE_PCK_CHAIN = 5
};

/* Intel's QE vendor id; QVL refuses any other. */
static const uint8_t INTEL_QE_VENDOR[QE_VENDOR_SIZE] = {0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9,
                                                        0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07};

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* Do `need` bytes remain between pos and limit?  (pos <= limit always holds.) */
static int fits(size_t pos, size_t need, size_t limit)
{
    return need <= limit - pos;
}

static int parse_header_and_body(const uint8_t *b, size_t len, struct kbs_tdx_quote *q)
{
    if (len < HEADER_SIZE)
        return KBS_ERR_TDX_HEADER_TRUNCATED;
    q->version = le16(b + OFF_VERSION);
    q->att_key_type = le16(b + OFF_ATT_KEY_TYPE);
    q->tee_type = le32(b + OFF_TEE_TYPE);
    if (q->version != VERSION_4 && q->version != VERSION_5)
        return KBS_ERR_TDX_VERSION;
    if (q->att_key_type != ATT_KEY_ECDSA_P256)
        return KBS_ERR_TDX_ATT_KEY_TYPE;
    if (q->tee_type != TEE_TYPE_TDX)
        return KBS_ERR_TDX_TEE_TYPE;
    if (memcmp(b + OFF_QE_VENDOR, INTEL_QE_VENDOR, QE_VENDOR_SIZE) != 0)
        return KBS_ERR_TDX_QE_VENDOR;

    if (q->version == VERSION_4) {
        q->body_type = BODY_TYPE_TD10;
        q->body_size = KBS_TDX_BODY_TD10_SIZE;
        q->body_offset = HEADER_SIZE;
    } else {
        if (!fits(HEADER_SIZE, DESCRIPTOR_SIZE, len))
            return KBS_ERR_TDX_BODY_TRUNCATED;
        q->body_type = le16(b + HEADER_SIZE);
        q->body_size = le32(b + HEADER_SIZE + 2);
        /* 1 (SGX enclave report) and 4 (TD 1.5 "Ex") are refused: no TD report of a kind we know. */
        if (q->body_type != BODY_TYPE_TD10 && q->body_type != BODY_TYPE_TD15)
            return KBS_ERR_TDX_BODY_TYPE;
        uint32_t want = q->body_type == BODY_TYPE_TD10 ? KBS_TDX_BODY_TD10_SIZE : KBS_TDX_BODY_TD15_SIZE;
        if (q->body_size != want)
            return KBS_ERR_TDX_BODY_SIZE;
        q->body_offset = HEADER_SIZE + DESCRIPTOR_SIZE;
    }
    if (!fits(q->body_offset, q->body_size, len))
        return KBS_ERR_TDX_BODY_TRUNCATED;
    q->signed_size = q->body_offset + q->body_size;
    q->td_attributes = le64(b + q->body_offset + BODY_TD_ATTRIBUTES);
    q->xfam = le64(b + q->body_offset + BODY_XFAM);
    return KBS_OK;
}

/*
 * The certification data of type 6, buf[pos, limit): QE report, its signature, QE auth data,
 * and the inner certification data of type 5 which must fill the rest exactly.
 */
static int parse_qe_cert_data(const uint8_t *b, size_t pos, size_t limit, struct kbs_tdx_quote *q)
{
    if (!fits(pos, QE_REPORT_SIZE + SIG_SIZE + 2, limit))
        return KBS_ERR_TDX_CERT_SIZE;
    q->qe_report_offset = pos;
    q->qe_misc_select = le32(b + pos + QE_MISC_SELECT);
    q->qe_isv_prod_id = le16(b + pos + QE_ISV_PROD_ID);
    q->qe_isv_svn = le16(b + pos + QE_ISV_SVN);
    pos += QE_REPORT_SIZE;
    q->qe_report_signature_offset = pos;
    pos += SIG_SIZE;
    q->qe_auth_data_size = le16(b + pos);
    pos += 2;
    if (!fits(pos, q->qe_auth_data_size, limit))
        return KBS_ERR_TDX_QE_AUTH_SIZE;
    q->qe_auth_data_offset = pos;
    pos += q->qe_auth_data_size;

    if (!fits(pos, 6, limit))
        return KBS_ERR_TDX_PCK_CERT_TYPE; /* no room for the inner certification data's header */
    if (le16(b + pos) != CERT_TYPE_PCK_CHAIN)
        return KBS_ERR_TDX_PCK_CERT_TYPE;
    q->pck_cert_data_size = le32(b + pos + 2);
    pos += 6;
    if (q->pck_cert_data_size != limit - pos)
        return KBS_ERR_TDX_PCK_CERT_SIZE;
    q->pck_chain_offset = pos;
    q->pck_chain_len = q->pck_cert_data_size;
    if (q->pck_chain_len > 0 && b[pos + q->pck_chain_len - 1] == 0)
        q->pck_chain_len--; /* one trailing NUL, as 8 of the 10 real quotes carry */
    return KBS_OK;
}

static int parse_signature_data(const uint8_t *b, size_t len, struct kbs_tdx_quote *q)
{
    size_t pos = q->signed_size;
    if (!fits(pos, 4, len))
        return KBS_ERR_TDX_SIG_DATA_TRUNCATED;
    q->signature_data_len = le32(b + pos);
    pos += 4;
    if (!fits(pos, q->signature_data_len, len))
        return KBS_ERR_TDX_SIG_DATA_TRUNCATED;
    size_t end = pos + q->signature_data_len;

    /* signature, attestation key, certification data type and size */
    if (!fits(pos, SIG_SIZE + ATT_KEY_SIZE + 6, end))
        return KBS_ERR_TDX_SIG_DATA_SIZE;
    q->signature_offset = pos;
    pos += SIG_SIZE;
    q->attestation_key_offset = pos;
    pos += ATT_KEY_SIZE;
    if (le16(b + pos) != CERT_TYPE_QE_REPORT)
        return KBS_ERR_TDX_CERT_TYPE;
    q->cert_data_size = le32(b + pos + 2);
    pos += 6;
    if (!fits(pos, q->cert_data_size, end))
        return KBS_ERR_TDX_CERT_SIZE;
    /* Each container against its own contents first, then against its parent. */
    int rc = parse_qe_cert_data(b, pos, pos + q->cert_data_size, q);
    if (rc != KBS_OK)
        return rc;
    if (pos + q->cert_data_size != end)
        return KBS_ERR_TDX_SIG_DATA_SIZE; /* bytes in the signature data that nothing accounts for */
    q->end = end;
    return KBS_OK;
}

int kbs_tdx_parse(const uint8_t *buf, size_t len, unsigned int flags, struct kbs_tdx_quote *out)
{
    if (buf == NULL || out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    memset(out, 0, sizeof(*out));
    int rc = parse_header_and_body(buf, len, out);
    if (rc == KBS_OK)
        rc = parse_signature_data(buf, len, out);
    if (rc != KBS_OK)
        return rc;
    uint8_t acc = 0;
    for (size_t i = out->end; i < len; i++)
        acc |= buf[i];
    out->trailing_size = len - out->end;
    out->trailing_all_zero = acc == 0;
    if (acc != 0 && !(flags & KBS_TDX_ALLOW_TRAILING_BYTES))
        return KBS_ERR_TDX_TRAILING_BYTES;
    return KBS_OK;
}

/* SHA-256 of msg, then the signature r || s checked with the key's table if there is one, else
 * with the point. */
static int verify_p256(const uint8_t *point, size_t point_len, const struct kbs_p256_key_table *table,
                       const uint8_t *msg, size_t msg_len, const uint8_t *sig)
{
    uint8_t digest[32];
    int rc = kbs_sha256(msg, msg_len, digest);
    if (rc != KBS_OK)
        return rc;
    if (table != NULL)
        return kbs_p256_verify_digest_with_table(table, digest, sig, sig + 32);
    return kbs_p256_verify_digest(point, point_len, digest, sig, sig + 32);
}

/* Is `table` the table of exactly this 65-byte point?  (A table never built fails too.) */
static int table_holds(const struct kbs_p256_key_table *table, const uint8_t *point, size_t point_len)
{
    uint8_t built_for[KBS_P256_POINT_SIZE];
    return point_len == KBS_P256_POINT_SIZE && kbs_p256_key_table_point(table, built_for) == KBS_OK &&
           memcmp(built_for, point, KBS_P256_POINT_SIZE) == 0;
}

/* SHA-256(attestation key || QE auth data): two separate ranges of the quote, streamed. */
static int binding_hash(const uint8_t *b, const struct kbs_tdx_quote *q, uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int out_len = 0;
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, b + q->attestation_key_offset, ATT_KEY_SIZE) == 1 &&
             EVP_DigestUpdate(ctx, b + q->qe_auth_data_offset, q->qe_auth_data_size) == 1 &&
             EVP_DigestFinal_ex(ctx, out, &out_len) == 1 && out_len == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? KBS_OK : KBS_ERR_INTERNAL;
}

/* report_data == SHA-256(attestation key || QE auth data) || 32 zero bytes: all 64 bytes compared. */
static int check_qe_binding(const uint8_t *b, const struct kbs_tdx_quote *q)
{
    uint8_t want[64] = {0};
    int rc = binding_hash(b, q, want);
    if (rc != KBS_OK)
        return rc;
    uint8_t diff = 0;
    for (size_t i = 0; i < sizeof want; i++)
        diff |= (uint8_t)(want[i] ^ b[q->qe_report_offset + QE_REPORT_DATA + i]);
    return diff == 0 ? KBS_OK : KBS_ERR_TDX_QE_BINDING;
}

int kbs_tdx_verify_with_tables(const uint8_t *buf, size_t len, unsigned int flags, const uint8_t *pck_pubkey,
                               size_t pck_pubkey_len, const struct kbs_p256_key_table *pck_table,
                               const struct kbs_p256_key_table *att_key_table, struct kbs_tdx_quote *out)
{
    if (pck_pubkey == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    int rc = kbs_tdx_parse(buf, len, flags, out);
    if (rc != KBS_OK)
        return rc;

    /* 1. The QE report, signed by the PCK key the caller took from the (Intel-chained) PCK certificate. */
    if (pck_table != NULL && (pck_pubkey_len != KBS_P256_POINT_SIZE || pck_pubkey[0] != 0x04))
        return KBS_ERR_TDX_PCK_KEY; /* as the cold path would say */
    if (pck_table != NULL && !table_holds(pck_table, pck_pubkey, pck_pubkey_len))
        return KBS_ERR_TDX_PCK_TABLE_MISMATCH;
    rc = verify_p256(pck_pubkey, pck_pubkey_len, pck_table, buf + out->qe_report_offset, QE_REPORT_SIZE,
                     buf + out->qe_report_signature_offset);
    switch (rc) {
    case KBS_OK: break;
    case KBS_ERR_KEY_LENGTH:
    case KBS_ERR_KEY_FORMAT:
    case KBS_ERR_KEY_NOT_ON_CURVE: return KBS_ERR_TDX_PCK_KEY;
    case KBS_ERR_SIG_RANGE: return KBS_ERR_TDX_QE_REPORT_SIG_RANGE;
    case KBS_ERR_SIG_INVALID: return KBS_ERR_TDX_QE_REPORT_SIG_INVALID;
    default: return rc;
    }

    /* 2. The QE report vouches for the attestation key (and the QE auth data). */
    rc = check_qe_binding(buf, out);
    if (rc != KBS_OK)
        return rc;

    /* 3. The attestation key signed the header and body. */
    uint8_t point[KBS_P256_POINT_SIZE];
    point[0] = 0x04;
    memcpy(point + 1, buf + out->attestation_key_offset, ATT_KEY_SIZE);
    if (att_key_table != NULL && !table_holds(att_key_table, point, sizeof point))
        return KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH;
    rc = verify_p256(point, sizeof point, att_key_table, buf, out->signed_size, buf + out->signature_offset);
    switch (rc) {
    case KBS_OK: return KBS_OK;
    case KBS_ERR_KEY_LENGTH:
    case KBS_ERR_KEY_FORMAT:
    case KBS_ERR_KEY_NOT_ON_CURVE: return KBS_ERR_TDX_ATT_KEY_INVALID;
    case KBS_ERR_SIG_RANGE: return KBS_ERR_TDX_QUOTE_SIG_RANGE;
    case KBS_ERR_SIG_INVALID: return KBS_ERR_TDX_QUOTE_SIG_INVALID;
    default: return rc;
    }
}

int kbs_tdx_verify(const uint8_t *buf, size_t len, unsigned int flags, const uint8_t *pck_pubkey,
                   size_t pck_pubkey_len, struct kbs_tdx_quote *out)
{
    return kbs_tdx_verify_with_tables(buf, len, flags, pck_pubkey, pck_pubkey_len, NULL, NULL, out);
}
