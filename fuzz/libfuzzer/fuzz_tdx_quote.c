/*
 * libFuzzer harness of the TDX quote parser and its one-call verifier.
 *
 * Entry points: kbs_tdx_parse, kbs_tdx_verify, kbs_tdx_verify_with_tables.
 *
 * Every quote, in an exact-size heap block, goes to kbs_tdx_parse (both flag values) and to
 * kbs_tdx_verify, and each status must equal that of a model written here: a walk of
 * reference/tdx.md §1 in 64-bit arithmetic that names the first rule a quote breaks, then the three
 * cryptographic checks done by libcrypto alone (EVP SHA-256, keys through d2i_PUBKEY, signatures as
 * DER through EVP_PKEY_verify: nothing of ecdsa_libcrypto.c or tdx_quote.c), in the order the C core
 * promises (PCK key, QE report signature range and value, binding, attestation key, quote signature
 * range and value).  On success every offset and decoded integer must equal the model's.
 * kbs_tdx_verify_with_tables, given key tables built for the PCK key and for the quote's attestation
 * key (each when it is a valid point), must say exactly what kbs_tdx_verify says; given another key's
 * table for the attestation key, it must refuse with KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH once the
 * checks before the quote signature passed.
 * The first byte picks how the rest is read:
 *   0 raw:    the rest is the quote; the PCK key is a fixed valid point (signatures fail, the
 *             parser sees arbitrary bytes);
 *   1 keyed:  flags, a 65-byte PCK point, then the quote (the real quotes with their own PCK
 *             keys are the seeds: make_seeds.py);
 *   2 built:  a quote made well-formed and signed here from the input's choices (version, body
 *             type, QE auth data and chain sizes, padding, keys, nonces, contents), then one
 *             mutation: none, a bit flip anywhere or in the signed part, a truncation, appended
 *             bytes, a length or type field set, a non-zero upper binding half or an off-curve
 *             attestation key under a re-signed QE report, edge signature scalars, s -> n - s,
 *             another PCK key.
 */
#include "fuzz_common.h"

enum { MAX_AUTH = 300, MAX_CHAIN = 700, MAX_PADDING = 80 };

static uint16_t get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static void put_le16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static const uint8_t INTEL_VENDOR[16] = {0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9,
                                         0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07};

/* ---- the model ---- */

struct model {
    int status;
    uint64_t body_offset, body_size, body_type, signed_size, sig_len, sig_off, ak_off, cert_size, qe_off, qe_sig_off,
        auth_size, auth_off, inner_size, chain_off, end;
};

static struct model model_parse(const uint8_t *b, size_t len, unsigned flags)
{
    struct model m;
    memset(&m, 0, sizeof m);
    const uint64_t n = len;
#define FAIL(code)          \
    do {                    \
        m.status = (code);  \
        return m;           \
    } while (0)
    if (n < 48)
        FAIL(KBS_ERR_TDX_HEADER_TRUNCATED);
    uint16_t version = get_le16(b);
    if (version != 4 && version != 5)
        FAIL(KBS_ERR_TDX_VERSION);
    if (get_le16(b + 2) != 2)
        FAIL(KBS_ERR_TDX_ATT_KEY_TYPE);
    if (get_le32(b + 4) != 0x81)
        FAIL(KBS_ERR_TDX_TEE_TYPE);
    if (memcmp(b + 12, INTEL_VENDOR, 16) != 0)
        FAIL(KBS_ERR_TDX_QE_VENDOR);
    if (version == 4) {
        m.body_offset = 48, m.body_size = 584, m.body_type = 2;
    } else {
        if (n < 54)
            FAIL(KBS_ERR_TDX_BODY_TRUNCATED);
        m.body_type = get_le16(b + 48);
        m.body_size = get_le32(b + 50);
        if (m.body_type != 2 && m.body_type != 3)
            FAIL(KBS_ERR_TDX_BODY_TYPE);
        if (m.body_size != (m.body_type == 2 ? 584u : 648u))
            FAIL(KBS_ERR_TDX_BODY_SIZE);
        m.body_offset = 54;
    }
    m.signed_size = m.body_offset + m.body_size;
    if (n < m.signed_size)
        FAIL(KBS_ERR_TDX_BODY_TRUNCATED);
    if (n < m.signed_size + 4)
        FAIL(KBS_ERR_TDX_SIG_DATA_TRUNCATED);
    m.sig_len = get_le32(b + m.signed_size);
    m.end = m.signed_size + 4 + m.sig_len;
    if (n < m.end)
        FAIL(KBS_ERR_TDX_SIG_DATA_TRUNCATED);
    if (m.sig_len < 134)
        FAIL(KBS_ERR_TDX_SIG_DATA_SIZE);
    m.sig_off = m.signed_size + 4;
    m.ak_off = m.sig_off + 64;
    if (get_le16(b + m.ak_off + 64) != 6)
        FAIL(KBS_ERR_TDX_CERT_TYPE);
    m.cert_size = get_le32(b + m.ak_off + 66);
    uint64_t cert = m.ak_off + 70, cert_end = cert + m.cert_size;
    if (cert_end > m.end || m.cert_size < 384 + 64 + 2)
        FAIL(KBS_ERR_TDX_CERT_SIZE);
    m.qe_off = cert;
    m.qe_sig_off = cert + 384;
    m.auth_size = get_le16(b + cert + 448);
    m.auth_off = cert + 450;
    if (m.auth_off + m.auth_size > cert_end)
        FAIL(KBS_ERR_TDX_QE_AUTH_SIZE);
    uint64_t inner = m.auth_off + m.auth_size;
    if (inner + 6 > cert_end || get_le16(b + inner) != 5)
        FAIL(KBS_ERR_TDX_PCK_CERT_TYPE);
    m.inner_size = get_le32(b + inner + 2);
    m.chain_off = inner + 6;
    if (m.chain_off + m.inner_size != cert_end)
        FAIL(KBS_ERR_TDX_PCK_CERT_SIZE);
    if (cert_end != m.end)
        FAIL(KBS_ERR_TDX_SIG_DATA_SIZE);
    for (uint64_t i = m.end; i < n; i++)
        if (b[i] && !(flags & KBS_TDX_ALLOW_TRAILING_BYTES))
            FAIL(KBS_ERR_TDX_TRAILING_BYTES);
#undef FAIL
    m.status = KBS_OK;
    return m;
}

/* The verdict of the three checks, by libcrypto alone, on a quote the model parsed. */
static int model_verify(const uint8_t *b, const struct model *m, const uint8_t *pck, size_t pck_len)
{
    uint8_t digest[32], point[65], want[64] = {0};
    EVP_PKEY *pkey = evp_key(&FUZZ_P256, pck, pck_len);
    if (pkey == NULL)
        return KBS_ERR_TDX_PCK_KEY;
    EVP_PKEY_free(pkey);
    const uint8_t *qe = b + m->qe_off, *qe_sig = b + m->qe_sig_off;
    if (!in_range(&FUZZ_P256, qe_sig) || !in_range(&FUZZ_P256, qe_sig + 32))
        return KBS_ERR_TDX_QE_REPORT_SIG_RANGE;
    evp_sha256_2(qe, 384, NULL, 0, digest);
    if (!openssl_verify(&FUZZ_P256, pck, pck_len, digest, 32, qe_sig, qe_sig + 32))
        return KBS_ERR_TDX_QE_REPORT_SIG_INVALID;
    evp_sha256_2(b + m->ak_off, 64, b + m->auth_off, m->auth_size, want);
    if (memcmp(want, qe + 320, 64) != 0)
        return KBS_ERR_TDX_QE_BINDING;
    point[0] = 0x04;
    memcpy(point + 1, b + m->ak_off, 64);
    pkey = evp_key(&FUZZ_P256, point, 65);
    if (pkey == NULL)
        return KBS_ERR_TDX_ATT_KEY_INVALID;
    EVP_PKEY_free(pkey);
    const uint8_t *sig = b + m->sig_off;
    if (!in_range(&FUZZ_P256, sig) || !in_range(&FUZZ_P256, sig + 32))
        return KBS_ERR_TDX_QUOTE_SIG_RANGE;
    evp_sha256_2(b, m->signed_size, NULL, 0, digest);
    if (!openssl_verify(&FUZZ_P256, point, 65, digest, 32, sig, sig + 32))
        return KBS_ERR_TDX_QUOTE_SIG_INVALID;
    return KBS_OK;
}

#define SAME(field, value)                                                                                     \
    do {                                                                                                       \
        if ((uint64_t)q->field != (uint64_t)(value))                                                           \
            fuzz_fail("%s: " #field " is %llu, the model says %llu", what, (unsigned long long)q->field,        \
                      (unsigned long long)(value));                                                            \
    } while (0)

static void check_fields(const uint8_t *b, size_t len, const struct kbs_tdx_quote *q, const struct model *m,
                         const char *what)
{
    SAME(version, get_le16(b));
    SAME(att_key_type, 2);
    SAME(tee_type, 0x81);
    SAME(body_type, m->body_type);
    SAME(body_size, m->body_size);
    SAME(body_offset, m->body_offset);
    SAME(signed_size, m->signed_size);
    SAME(td_attributes, get_le64(b + m->body_offset + 120));
    SAME(xfam, get_le64(b + m->body_offset + 128));
    SAME(signature_data_len, m->sig_len);
    SAME(signature_offset, m->sig_off);
    SAME(attestation_key_offset, m->ak_off);
    SAME(cert_data_size, m->cert_size);
    SAME(qe_report_offset, m->qe_off);
    SAME(qe_misc_select, get_le32(b + m->qe_off + 16));
    SAME(qe_isv_prod_id, get_le16(b + m->qe_off + 256));
    SAME(qe_isv_svn, get_le16(b + m->qe_off + 258));
    SAME(qe_report_signature_offset, m->qe_sig_off);
    SAME(qe_auth_data_size, m->auth_size);
    SAME(qe_auth_data_offset, m->auth_off);
    SAME(pck_cert_data_size, m->inner_size);
    SAME(pck_chain_offset, m->chain_off);
    SAME(pck_chain_len, m->inner_size - (m->inner_size && b[m->end - 1] == 0));
    SAME(end, m->end);
    SAME(trailing_size, len - m->end);
    int zero = 1;
    for (size_t i = (size_t)m->end; i < len; i++)
        zero &= b[i] == 0;
    SAME(trailing_all_zero, zero);
}

/* A key table for the point, or NULL when the table builder refuses it (freed by the caller). */
static struct kbs_p256_key_table *table_of(const uint8_t *point, size_t point_len)
{
    struct kbs_p256_key_table *table = malloc(sizeof *table);
    if (table == NULL)
        fuzz_fail("out of memory");
    if (kbs_p256_key_precompute(point, point_len, table) != KBS_OK) {
        free(table);
        return NULL;
    }
    return table;
}

/* kbs_tdx_verify_with_tables against kbs_tdx_verify's status `rc` for the same quote. */
static void check_tables(const uint8_t *b, size_t len, unsigned flags, const uint8_t *pck, size_t pck_len, int rc,
                         const struct model *m, const char *what)
{
    struct kbs_tdx_quote q;
    uint8_t att[65] = {0x04};
    struct kbs_p256_key_table *pck_table = table_of(pck, pck_len), *att_table = NULL;
    if (m->status == KBS_OK) {
        memcpy(att + 1, b + m->ak_off, 64);
        att_table = table_of(att, 65);
    }
    int tabbed = kbs_tdx_verify_with_tables(b, len, flags & 1, pck, pck_len, pck_table, att_table, &q);
    if (tabbed != rc)
        fuzz_fail("%s: kbs_tdx_verify_with_tables %d, kbs_tdx_verify %d", what, tabbed, rc);
    if (pck_table != NULL && att_table != NULL && memcmp(pck, att, 65) != 0) {
        int late = rc == KBS_OK || rc == KBS_ERR_TDX_ATT_KEY_INVALID || rc == KBS_ERR_TDX_QUOTE_SIG_RANGE ||
                   rc == KBS_ERR_TDX_QUOTE_SIG_INVALID; /* the checks before the attestation key passed */
        int want = late ? KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH : rc;
        tabbed = kbs_tdx_verify_with_tables(b, len, flags & 1, pck, pck_len, pck_table, pck_table, &q);
        if (tabbed != want)
            fuzz_fail("%s: another key's table for the attestation key gives %d, want %d", what, tabbed, want);
    }
    free(att_table);
    free(pck_table);
}

/* Every status and field of one quote against the model; returns kbs_tdx_verify's status. */
static int check_quote(const uint8_t *b, size_t len, unsigned flags, const uint8_t *pck, size_t pck_len,
                       const char *what)
{
    struct kbs_tdx_quote q;
    for (unsigned f = 0; f < 2; f++) {
        struct model m = model_parse(b, len, f);
        int rc = kbs_tdx_parse(b, len, f, &q);
        if (rc != m.status) {
            fuzz_hex("quote", b, len < 2048 ? len : 2048);
            fuzz_fail("%s: kbs_tdx_parse(flags %u) %d, the model %d", what, f, rc, m.status);
        }
        if (rc == KBS_OK)
            check_fields(b, len, &q, &m, what);
    }
    struct model m = model_parse(b, len, flags & 1);
    int want = m.status == KBS_OK ? model_verify(b, &m, pck, pck_len) : m.status;
    int rc = kbs_tdx_verify(b, len, flags & 1, pck, pck_len, &q);
    if (rc != want) {
        fuzz_hex("quote", b, len < 2048 ? len : 2048);
        fuzz_hex("pck", pck, pck_len);
        fuzz_fail("%s: kbs_tdx_verify %d, the model and libcrypto say %d", what, rc, want);
    }
    if (m.status == KBS_OK)
        check_fields(b, len, &q, &m, what);
    check_tables(b, len, flags, pck, pck_len, rc, &m, what);
    return rc;
}

/* ---- building a signed quote ---- */

static void sign_into(const BIGNUM *d, const uint8_t nonce_seed[32], const uint8_t *msg, size_t len, uint8_t sig[64],
                      BN_CTX *ctx)
{
    uint8_t digest[32];
    evp_sha256_2(msg, len, NULL, 0, digest);
    BIGNUM *k = scalar_from(&FUZZ_P256, nonce_seed, ctx);
    if (!sign_with_nonce(&FUZZ_P256, d, k, digest, 32, sig, sig + 32, ctx))
        memset(sig, 0, 64); /* r or s came out 0: the quote will fail its range check, as it should */
    BN_free(k);
}

/* QE report binding + its signature, after the attestation key or auth data changed. */
static void rebind(uint8_t *b, const struct model *m, const BIGNUM *pck, const uint8_t nonce[32], int upper_byte,
                   BN_CTX *ctx)
{
    uint8_t *qe = b + m->qe_off;
    evp_sha256_2(b + m->ak_off, 64, b + m->auth_off, (size_t)m->auth_size, qe + 320);
    memset(qe + 352, 0, 32);
    if (upper_byte >= 0)
        qe[352 + upper_byte % 32] = (uint8_t)(1 + upper_byte % 255);
    sign_into(pck, nonce, qe, 384, b + m->qe_sig_off, ctx);
}

static void built_case(struct reader *rd, BN_CTX *ctx)
{
    uint8_t shape = take_u8(rd), mutation = take_u8(rd), dpck[32], datt[32], k1[32], k2[32], other[32];
    uint16_t arg = take_u16(rd), arg2 = take_u16(rd);
    size_t auth = take_u16(rd) % (MAX_AUTH + 1), chain = take_u16(rd) % (MAX_CHAIN + 1);
    size_t padding = take_u8(rd) % (MAX_PADDING + 1);
    take(rd, dpck, 32);
    take(rd, datt, 32);
    take(rd, k1, 32);
    take(rd, k2, 32);
    take(rd, other, 32);
    int version = (shape & 3) == 0 ? 4 : 5, body_type = (shape & 3) == 2 ? 3 : 2;
    size_t body_offset = version == 4 ? 48 : 54, body_size = body_type == 3 ? 648 : 584;
    size_t signed_size = body_offset + body_size, cert = 450 + auth + 6 + chain, sig_len = 134 + cert;
    size_t end = signed_size + 4 + sig_len, len = end + padding;

    uint8_t *b = malloc(len);
    if (b == NULL)
        fuzz_fail("out of memory");
    take(rd, b, len); /* contents from the input, zeros once it is used up; then the structure */
    memset(b + end, 0, padding);
    put_le16(b, (uint32_t)version);
    put_le16(b + 2, 2);
    put_le32(b + 4, 0x81);
    memcpy(b + 12, INTEL_VENDOR, 16);
    if (version == 5) {
        put_le16(b + 48, (uint32_t)body_type);
        put_le32(b + 50, (uint32_t)body_size);
    }
    put_le32(b + signed_size, (uint32_t)sig_len);
    size_t ak = signed_size + 4 + 64;
    put_le16(b + ak + 64, 6);
    put_le32(b + ak + 66, (uint32_t)cert);
    put_le16(b + ak + 70 + 448, (uint32_t)auth);
    put_le16(b + ak + 70 + 450 + auth, 5);
    put_le32(b + ak + 70 + 452 + auth, (uint32_t)chain);

    BIGNUM *pck = scalar_from(&FUZZ_P256, dpck, ctx), *att = scalar_from(&FUZZ_P256, datt, ctx);
    uint8_t pck_point[65], att_point[65];
    public_key(&FUZZ_P256, pck, pck_point, ctx);
    public_key(&FUZZ_P256, att, att_point, ctx);
    memcpy(b + ak, att_point + 1, 64);
    struct model m = model_parse(b, len, 0);
    if (m.status != KBS_OK)
        fuzz_fail("built quote does not parse in the model: %d", m.status);
    rebind(b, &m, pck, k1, -1, ctx);
    sign_into(att, k2, b, signed_size, b + m.sig_off, ctx);
    if (check_quote(b, len, 0, pck_point, 65, "built") != KBS_OK && in_range(&FUZZ_P256, b + m.sig_off))
        fuzz_fail("a well-formed quote signed here does not verify");

    unsigned flags = arg2 & 1;
    int expect_ok = 0;
    size_t new_len = len;
    switch (mutation % 12) {
    case 0: expect_ok = 1; break;
    case 1: b[arg % len] ^= (uint8_t)(1u << (arg2 % 8)); break;
    case 2: b[arg % signed_size] ^= (uint8_t)(1u << (arg2 % 8)); break; /* the signed part: never verifies */
    case 3: new_len = arg % len; break;
    case 4: { /* appended bytes: zeros are padding, anything else needs the flag */
        uint8_t *longer = realloc(b, len + 1 + arg % 64);
        if (longer == NULL)
            fuzz_fail("out of memory");
        b = longer;
        memset(b + len, (arg2 & 2) ? (int)(arg2 >> 8) : 0, 1 + arg % 64);
        new_len = len + 1 + arg % 64;
        break;
    }
    case 5: { /* a length or type field set to an input value (or nudged by one) */
        size_t fields[9] = {0, 2, 4, signed_size, ak + 64, ak + 66, (size_t)m.qe_sig_off + 64,
                            (size_t)m.chain_off - 6, (size_t)m.chain_off - 4};
        size_t at = fields[arg % 9];
        if (arg & 0x100)
            put_le32(b + at, get_le32(b + at) + ((arg & 0x200) ? 1u : 0xFFFFFFFFu));
        else if (at + 4 <= len)
            put_le32(b + at, arg2);
        break;
    }
    case 6: rebind(b, &m, pck, k1, arg, ctx); break; /* the upper half of report_data not zero */
    case 7: /* an attestation key off the curve, bound and signed by the QE as if it were fine */
        b[ak + 1 + arg % 63] ^= (uint8_t)(1u << (arg2 % 8));
        rebind(b, &m, pck, k1, -1, ctx);
        break;
    case 8: { /* edge scalars in either signature */
        size_t at = (arg & 1) ? (size_t)m.qe_sig_off : (size_t)m.sig_off;
        const BIGNUM *n = fuzz_order(&FUZZ_P256);
        BIGNUM *v = BN_new();
        if (v == NULL)
            fuzz_fail("BN_new");
        switch (arg2 % 5) {
        case 0: BN_zero(v); break;
        case 1: BN_copy(v, n); break;
        case 2: BN_copy(v, n); BN_add_word(v, arg2); break;
        case 3: BN_copy(v, n); BN_sub_word(v, 1); break;
        default: BN_set_word(v, arg2); break;
        }
        if (BN_num_bytes(v) <= 32)
            bn_put(&FUZZ_P256, b + at + ((arg & 2) ? 32 : 0), v);
        BN_free(v);
        break;
    }
    case 9: { /* (r, n - s): the other valid quote signature */
        BIGNUM *s = BN_bin2bn(b + m.sig_off + 32, 32, NULL);
        if (s == NULL || BN_sub(s, fuzz_order(&FUZZ_P256), s) != 1)
            fuzz_fail("BN");
        if (!BN_is_zero(s) && BN_cmp(s, fuzz_order(&FUZZ_P256)) < 0)
            bn_put(&FUZZ_P256, b + m.sig_off + 32, s);
        BN_free(s);
        expect_ok = 1;
        break;
    }
    case 10: { /* another PCK key */
        BIGNUM *d2 = scalar_from(&FUZZ_P256, other, ctx);
        public_key(&FUZZ_P256, d2, pck_point, ctx);
        BN_free(d2);
        break;
    }
    default: /* a byte of the chain: unsigned here, so it still verifies */
        if (chain) {
            b[m.chain_off + arg % chain] ^= (uint8_t)(1u << (arg2 % 8));
            expect_ok = 1;
        }
        break;
    }
    uint8_t *exact = fuzz_exact(b, new_len);
    int rc = check_quote(exact, new_len, flags, pck_point, 65, "built and mutated");
    if (expect_ok && rc != KBS_OK && in_range(&FUZZ_P256, b + m.sig_off) && in_range(&FUZZ_P256, b + m.sig_off + 32))
        fuzz_fail("mutation %d must keep the quote valid, got %d", mutation % 12, rc);
    if (mutation % 12 == 2 && rc == KBS_OK)
        fuzz_fail("a bit flip in the signed part at %u verified", arg % (unsigned)signed_size);
    free(exact);
    free(b);
    BN_free(att);
    BN_free(pck);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_evidence_input(&FUZZ_P256, check_quote, built_case, data, size);
    return 0;
}
