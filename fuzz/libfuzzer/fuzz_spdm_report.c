/*
 * libFuzzer harness of the NVIDIA GPU report parser (SPDM 1.1 GET_MEASUREMENTS || MEASUREMENTS) and
 * its one-call verifiers.
 *
 * Entry points: kbs_spdm_parse, kbs_spdm_verify, kbs_spdm_verify_with_table.
 *
 * Every report, in an exact-size heap block, goes to kbs_spdm_parse (both flag values, and an unknown
 * flag bit) and to kbs_spdm_verify, and each status must equal that of a model written here: a walk of
 * reference/gpu.md §1 in 64-bit arithmetic that names the first rule a report breaks and where (the
 * error offset, block or TLV number, value seen and wanted), then the signature check by libcrypto alone
 * (EVP SHA-384, the key through d2i_PUBKEY, the signature as DER through EVP_PKEY_verify: nothing of
 * p384_*.c or spdm_report.c), in the order the C core promises (key, r and s range, validity).  On
 * success every offset, block and TLV must equal the model's.  kbs_spdm_verify_with_table, given the
 * key's table (when the key is a valid point), must say exactly what kbs_spdm_verify says and fill the
 * same struct.
 * The first byte picks how the rest is read:
 *   0 raw:    the rest is the report; the key is a fixed valid point (signatures fail, the parser sees
 *             arbitrary bytes);
 *   1 keyed:  flags, a 97-byte point, then the report (the seeds are the real reports with their own
 *             leaf keys: make_seeds.py);
 *   2 built:  a report made well-formed and signed here from the input's choices (number of blocks and
 *             their indices, value sizes and types, TLV types and sizes, slot, padding, key, nonce,
 *             contents), then one mutation: none, a bit flip, a cut, appended bytes, a count or length
 *             field set or nudged, a duplicate or out-of-range index, a TLV type changed, a raw bit-stream
 *             block (each of the last three re-signed, so only that rule is broken), edge signature
 *             scalars, s -> n - s, another key, NO_PADDING.
 */
#include "fuzz_common.h"

enum { MAX_BUILT_BLOCKS = 254, MAX_VALUE = 70, MAX_TLV = 80, MAX_PADDING = 24 };

static const struct fuzz_curve *const C = &FUZZ_P384;

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* ---- the model ---- */

struct model {
    int status;
    uint64_t err_off, err_item, err_seen, err_wanted;
    uint64_t slot, nblocks, record_len, nonce_off, opaque_len, opaque_off, sig_off, end;
    size_t blocks, tlvs;
    uint64_t b_index[256], b_type[256], b_size[256], b_off[256];
    uint64_t t_type[64], t_len[64], t_off[64];
};

static int known_type(uint64_t t)
{
    return (t >= 1 && t <= 26) || (t >= 32 && t <= 36); /* gpu.md §1.4, and 26 (NVSwitch GPU PDIs) */
}

#define FAIL(code, off, item, seen, wanted)                                                                   \
    do {                                                                                                       \
        m->status = (code);                                                                                    \
        m->err_off = (off), m->err_item = (item), m->err_seen = (seen), m->err_wanted = (wanted);              \
        return;                                                                                                \
    } while (0)

static void model_walk(const uint8_t *b, uint64_t n, unsigned flags, struct model *m)
{
    memset(m, 0, sizeof *m);
    if (flags > 1)
        FAIL(KBS_ERR_SPDM_FLAGS, 0, 0, flags, 1);
    if (n < 37)
        FAIL(KBS_ERR_SPDM_REQUEST_TRUNCATED, 0, 0, n, 37);
    if (b[0] != 0x11)
        FAIL(KBS_ERR_SPDM_REQUEST_VERSION, 0, 0, b[0], 0x11);
    if (b[1] != 0xE0)
        FAIL(KBS_ERR_SPDM_REQUEST_CODE, 1, 0, b[1], 0xE0);
    if (b[2] != 0x01)
        FAIL(KBS_ERR_SPDM_REQUEST_ATTRIBUTES, 2, 0, b[2], 0x01);
    if (b[3] != 0xFF)
        FAIL(KBS_ERR_SPDM_REQUEST_OPERATION, 3, 0, b[3], 0xFF);
    m->slot = b[36];
    if (m->slot > 7)
        FAIL(KBS_ERR_SPDM_REQUEST_SLOT, 36, 0, m->slot, 7);
    if (n < 45)
        FAIL(KBS_ERR_SPDM_RESPONSE_TRUNCATED, 37, 0, n - 37, 8);
    if (b[37] != 0x11)
        FAIL(KBS_ERR_SPDM_RESPONSE_VERSION, 37, 0, b[37], 0x11);
    if (b[38] != 0x60)
        FAIL(KBS_ERR_SPDM_RESPONSE_CODE, 38, 0, b[38], 0x60);
    if (b[39] != 0)
        FAIL(KBS_ERR_SPDM_RESPONSE_PARAM1, 39, 0, b[39], 0);
    if (b[40] != m->slot)
        FAIL(KBS_ERR_SPDM_RESPONSE_SLOT, 40, 0, b[40], m->slot);
    m->nblocks = b[41];
    if (m->nblocks == 0)
        FAIL(KBS_ERR_SPDM_NO_BLOCKS, 41, 0, 0, 1);
    m->record_len = (uint64_t)b[42] | (uint64_t)b[43] << 8 | (uint64_t)b[44] << 16;
    uint64_t rec_end = 45 + m->record_len;
    if (rec_end > n)
        FAIL(KBS_ERR_SPDM_RECORD_TRUNCATED, 42, 0, m->record_len, n - 45);

    uint64_t pos = 45, used_by[256] = {0};
    for (uint64_t i = 0; i < m->nblocks; i++) {
        if (pos == rec_end)
            FAIL(KBS_ERR_SPDM_BLOCK_COUNT, pos, i, i, m->nblocks);
        if (pos + 4 > rec_end)
            FAIL(KBS_ERR_SPDM_BLOCK_TRUNCATED, pos, i, rec_end - pos, 4);
        uint64_t index = b[pos], spec = b[pos + 1], size = le16(b + pos + 2);
        if (index == 0 || index == 255)
            FAIL(KBS_ERR_SPDM_BLOCK_INDEX, pos, i, index, 254);
        if (used_by[index])
            FAIL(KBS_ERR_SPDM_BLOCK_DUPLICATE, pos, i, index, used_by[index] - 1);
        used_by[index] = i + 1;
        if (spec != 1)
            FAIL(KBS_ERR_SPDM_BLOCK_SPEC, pos + 1, i, spec, 1);
        if (pos + 4 + size > rec_end)
            FAIL(KBS_ERR_SPDM_BLOCK_TRUNCATED, pos + 2, i, rec_end - pos - 4, size);
        if (size < 3)
            FAIL(KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE, pos + 2, i, size, 3);
        uint64_t type = b[pos + 4], vsize = le16(b + pos + 5);
        if (type >= 0x80)
            FAIL(KBS_ERR_SPDM_BLOCK_VALUE_TYPE, pos + 4, i, type, type - 0x80);
        if (vsize + 3 != size)
            FAIL(KBS_ERR_SPDM_BLOCK_VALUE_SIZE, pos + 5, i, vsize, size - 3);
        m->b_index[i] = index, m->b_type[i] = type, m->b_size[i] = vsize, m->b_off[i] = pos + 7;
        m->blocks = (size_t)i + 1;
        pos += 4 + size;
    }
    if (pos != rec_end)
        FAIL(KBS_ERR_SPDM_RECORD_TRAILING, pos, m->blocks, rec_end - pos, 0);

    m->nonce_off = rec_end;
    if (rec_end + 32 > n)
        FAIL(KBS_ERR_SPDM_NONCE_TRUNCATED, rec_end, 0, n - rec_end, 32);
    pos = rec_end + 32;
    if (pos + 2 > n)
        FAIL(KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED, pos, 0, n - pos, 2);
    m->opaque_len = le16(b + pos);
    if (pos + 2 + m->opaque_len > n)
        FAIL(KBS_ERR_SPDM_OPAQUE_TRUNCATED, pos, 0, m->opaque_len, n - pos - 2);
    m->opaque_off = pos + 2;
    uint64_t op_end = m->opaque_off + m->opaque_len, seen_types[37] = {0};
    pos = m->opaque_off;
    for (uint64_t i = 0; pos < op_end; i++) {
        if (op_end - pos < 4)
            FAIL(KBS_ERR_SPDM_TLV_TRUNCATED, pos, i, op_end - pos, 4);
        uint64_t type = le16(b + pos), len = le16(b + pos + 2);
        if (!known_type(type))
            FAIL(KBS_ERR_SPDM_TLV_TYPE, pos, i, type, 0);
        if (seen_types[type])
            FAIL(KBS_ERR_SPDM_TLV_DUPLICATE, pos, i, type, seen_types[type] - 1);
        seen_types[type] = i + 1;
        if (pos + 4 + len > op_end)
            FAIL(KBS_ERR_SPDM_TLV_OVERRUN, pos + 2, i, len, op_end - pos - 4);
        if (i >= 64)
            fuzz_fail("more than 64 distinct known TLV types");
        m->t_type[i] = type, m->t_len[i] = len, m->t_off[i] = pos + 4;
        m->tlvs = (size_t)i + 1;
        pos += 4 + len;
    }
    m->sig_off = op_end;
    if (op_end + 96 > n)
        FAIL(KBS_ERR_SPDM_SIGNATURE_TRUNCATED, op_end, 0, n - op_end, 96);
    m->end = op_end + 96;
    for (uint64_t i = m->end; i < n; i++)
        if (b[i])
            FAIL(KBS_ERR_SPDM_TRAILING_BYTES, i, 0, b[i], 0);
    if (n > m->end && (flags & 1))
        FAIL(KBS_ERR_SPDM_PADDING, m->end, 0, n - m->end, 0);
    m->status = KBS_OK;
}
#undef FAIL

/* The signature verdict by libcrypto alone, for a report the model parsed. */
static int model_verify(const uint8_t *b, const struct model *m, const uint8_t *point, size_t point_len)
{
    EVP_PKEY *pkey = evp_key(C, point, point_len);
    if (pkey == NULL)
        return KBS_ERR_SPDM_KEY;
    EVP_PKEY_free(pkey);
    const uint8_t *sig = b + m->sig_off;
    if (!in_range(C, sig) || !in_range(C, sig + 48))
        return KBS_ERR_SPDM_SIG_RANGE;
    uint8_t digest[48];
    unsigned int digest_len = 0;
    if (EVP_Digest(b, (size_t)m->sig_off, digest, &digest_len, EVP_sha384(), NULL) != 1 || digest_len != 48)
        fuzz_fail("EVP SHA-384");
    return openssl_verify(C, point, point_len, digest, 48, sig, sig + 48) ? KBS_OK : KBS_ERR_SPDM_SIG_INVALID;
}

#define SAME(field, value)                                                                                     \
    do {                                                                                                       \
        if ((uint64_t)(field) != (uint64_t)(value))                                                            \
            fuzz_fail("%s: " #field " is %llu, the model says %llu", what, (unsigned long long)(field),         \
                      (unsigned long long)(value));                                                            \
    } while (0)

static void check_fields(size_t len, const struct kbs_spdm_report *q, const struct model *m, const char *what)
{
    SAME(q->slot_id, m->slot);
    SAME(q->response_param2, m->slot);
    SAME(q->request_attributes, 1);
    SAME(q->request_operation, 0xFF);
    SAME(q->request_nonce_offset, 4);
    SAME(q->number_of_blocks, m->nblocks);
    SAME(q->record_length, m->record_len);
    SAME(q->record_offset, 45);
    SAME(q->block_count, m->blocks);
    for (size_t i = 0; i < m->blocks; i++) {
        SAME(q->blocks[i].index, m->b_index[i]);
        SAME(q->blocks[i].spec, 1);
        SAME(q->blocks[i].value_type, m->b_type[i]);
        SAME(q->blocks[i].value_size, m->b_size[i]);
        SAME(q->blocks[i].value_offset, m->b_off[i]);
    }
    SAME(q->responder_nonce_offset, m->nonce_off);
    SAME(q->opaque_length, m->opaque_len);
    SAME(q->opaque_offset, m->opaque_off);
    SAME(q->opaque_count, m->tlvs);
    for (size_t i = 0; i < m->tlvs; i++) {
        SAME(q->opaque[i].type, m->t_type[i]);
        SAME(q->opaque[i].length, m->t_len[i]);
        SAME(q->opaque[i].offset, m->t_off[i]);
    }
    SAME(q->signature_offset, m->sig_off);
    SAME(q->signed_size, m->sig_off);
    SAME(q->end, m->end);
    SAME(q->trailing_size, len - m->end);
}

static void check_error(const struct kbs_spdm_report *q, const struct model *m, const char *what)
{
    SAME(q->error_offset, m->err_off);
    SAME(q->error_item, m->err_item);
    SAME(q->error_seen, m->err_seen);
    SAME(q->error_wanted, m->err_wanted);
}

/* Every status and field of one report against the model; returns kbs_spdm_verify's status. */
static int check_report(const uint8_t *b, size_t len, unsigned flags, const uint8_t *point, size_t point_len,
                        const char *what)
{
    struct kbs_spdm_report *q = malloc(sizeof *q), *q2 = malloc(sizeof *q2);
    struct model *m = malloc(sizeof *m);
    if (q == NULL || q2 == NULL || m == NULL)
        fuzz_fail("out of memory");
    for (unsigned f = 0; f < 3; f++) {
        model_walk(b, len, f == 2 ? 6 : f, m);
        int rc = kbs_spdm_parse(b, len, f == 2 ? 6 : f, q);
        if (rc != m->status) {
            fuzz_hex("report", b, len < 4096 ? len : 4096);
            fuzz_fail("%s: kbs_spdm_parse(flags %u) %d, the model %d", what, f, rc, m->status);
        }
        if (rc == KBS_OK)
            check_fields(len, q, m, what);
        else
            check_error(q, m, what);
    }
    model_walk(b, len, flags & 1, m);
    int want = m->status == KBS_OK ? model_verify(b, m, point, point_len) : m->status;
    int rc = kbs_spdm_verify(b, len, flags & 1, point, point_len, q);
    if (rc != want) {
        fuzz_hex("report", b, len < 4096 ? len : 4096);
        fuzz_hex("key", point, point_len);
        fuzz_fail("%s: kbs_spdm_verify %d, the model and libcrypto say %d", what, rc, want);
    }
    if (m->status == KBS_OK)
        check_fields(len, q, m, what);
    else
        check_error(q, m, what);
    if (rc == KBS_ERR_SPDM_SIG_RANGE || rc == KBS_ERR_SPDM_SIG_INVALID)
        SAME(q->error_offset, m->sig_off);

    struct kbs_p384_key_table *table = malloc(sizeof *table);
    if (table == NULL)
        fuzz_fail("out of memory");
    if (kbs_p384_key_precompute(point, point_len, table) == KBS_OK) {
        memset(q2, 0x5A, sizeof *q2);
        int tabbed = kbs_spdm_verify_with_table(b, len, flags & 1, table, q2);
        if (tabbed != rc)
            fuzz_fail("%s: kbs_spdm_verify_with_table %d, kbs_spdm_verify %d", what, tabbed, rc);
        if (memcmp(q, q2, sizeof *q) != 0)
            fuzz_fail("%s: the table path filled another struct", what);
    } else if (rc != KBS_ERR_SPDM_KEY && m->status == KBS_OK) {
        fuzz_fail("%s: no table for the key, yet kbs_spdm_verify says %d", what, rc);
    }
    free(table);
    free(m);
    free(q2);
    free(q);
    return rc;
}

/* ---- building a signed report ---- */

struct built {
    uint8_t *b;
    size_t len, sig_off, nblocks, ntlvs, block_at[MAX_BUILT_BLOCKS], tlv_at[40], record_len_at, opaque_len_at;
};

static void sign_into(const BIGNUM *d, const uint8_t nonce_seed[48], uint8_t *b, size_t sig_off, BN_CTX *ctx)
{
    uint8_t digest[48];
    unsigned int digest_len = 0;
    if (EVP_Digest(b, sig_off, digest, &digest_len, EVP_sha384(), NULL) != 1)
        fuzz_fail("EVP SHA-384");
    BIGNUM *k = scalar_from(C, nonce_seed, ctx);
    if (!sign_with_nonce(C, d, k, digest, 48, b + sig_off, b + sig_off + 48, ctx))
        memset(b + sig_off, 0, 96); /* r or s came out 0: the range check must refuse it */
    BN_free(k);
}

static void build(struct reader *rd, struct built *o)
{
    uint8_t shape = take_u8(rd), ntlv_choice = take_u8(rd), slot = take_u8(rd) % 8;
    size_t nblocks = shape < 8 ? MAX_BUILT_BLOCKS - shape % 3 : 1 + shape % 70;
    size_t padding = take_u8(rd) % (MAX_PADDING + 1);
    uint8_t index_base = take_u8(rd), stride_choice = take_u8(rd);
    /* Distinct indices 1-254: i * stride + base mod 254, with a stride prime to 254 (odd, not 127). */
    unsigned stride = (unsigned)(stride_choice | 1) % 254;
    if (stride == 127 || stride == 0)
        stride = 1;
    size_t cap = 45 + nblocks * (7 + MAX_VALUE) + 34 + 40 * (4 + MAX_TLV) + 96 + MAX_PADDING;
    uint8_t *b = calloc(1, cap);
    if (b == NULL)
        fuzz_fail("out of memory");
    static const uint8_t req[4] = {0x11, 0xE0, 0x01, 0xFF};
    memcpy(b, req, 4);
    take(rd, b + 4, 32);
    b[36] = slot;
    b[37] = 0x11, b[38] = 0x60, b[39] = 0, b[40] = slot, b[41] = (uint8_t)nblocks;
    size_t pos = 45;
    for (size_t i = 0; i < nblocks; i++) {
        uint8_t sz = take_u8(rd), type = take_u8(rd) & 0x7F;
        size_t vlen = sz < 160 ? 48 : (size_t)sz % (MAX_VALUE + 1);
        o->block_at[i] = pos;
        b[pos] = (uint8_t)(1 + (index_base + i * stride) % 254);
        b[pos + 1] = 1;
        b[pos + 2] = (uint8_t)(vlen + 3), b[pos + 3] = 0;
        b[pos + 4] = type;
        b[pos + 5] = (uint8_t)vlen, b[pos + 6] = 0;
        take(rd, b + pos + 7, vlen);
        pos += 7 + vlen;
    }
    size_t record_len = pos - 45;
    b[42] = (uint8_t)record_len, b[43] = (uint8_t)(record_len >> 8), b[44] = (uint8_t)(record_len >> 16);
    take(rd, b + pos, 32);
    pos += 32;
    o->opaque_len_at = pos;
    pos += 2;
    size_t opaque_start = pos, ntlvs = ntlv_choice % 32;
    unsigned types[31], nt = 0;
    for (unsigned t = 1; t <= 36; t++)
        if (t <= 26 || t >= 32)
            types[nt++] = t;
    for (size_t i = 0; i < ntlvs; i++) { /* a random distinct subset, in random order */
        unsigned j = (unsigned)(i + take_u8(rd) % (nt - i));
        unsigned t = types[j];
        types[j] = types[i], types[i] = t;
        size_t tlen = take_u8(rd) % (MAX_TLV + 1);
        o->tlv_at[i] = pos;
        b[pos] = (uint8_t)t, b[pos + 1] = 0, b[pos + 2] = (uint8_t)tlen, b[pos + 3] = 0;
        take(rd, b + pos + 4, tlen);
        pos += 4 + tlen;
    }
    size_t opaque_len = pos - opaque_start;
    b[o->opaque_len_at] = (uint8_t)opaque_len, b[o->opaque_len_at + 1] = (uint8_t)(opaque_len >> 8);
    o->b = b;
    o->sig_off = pos;
    o->len = pos + 96 + padding;
    o->nblocks = nblocks;
    o->ntlvs = ntlvs;
    o->record_len_at = 42;
}

static void built_case(struct reader *rd, BN_CTX *ctx)
{
    uint8_t mutation = take_u8(rd), dkey[48], nonce[48], other[48];
    uint16_t arg = take_u16(rd), arg2 = take_u16(rd);
    take(rd, dkey, 48);
    take(rd, nonce, 48);
    take(rd, other, 48);
    struct built o;
    build(rd, &o);
    uint8_t *b = o.b;
    BIGNUM *d = scalar_from(C, dkey, ctx);
    uint8_t point[97];
    public_key(C, d, point, ctx);
    sign_into(d, nonce, b, o.sig_off, ctx);
    int signed_ok = in_range(C, b + o.sig_off) && in_range(C, b + o.sig_off + 48);
    int rc = check_report(b, o.len, 0, point, 97, "built");
    if (signed_ok && rc != KBS_OK)
        fuzz_fail("a well-formed report signed here does not verify: %d", rc);

    unsigned flags = 0;
    int expect = -1; /* a status the mutation must give, or -1 for "whatever the model says" */
    size_t new_len = o.len;
    switch (mutation % 13) {
    case 0: expect = signed_ok ? KBS_OK : KBS_ERR_SPDM_SIG_RANGE; break;
    case 1: /* a bit anywhere: the signed part, the signature or the padding changed */
        b[arg % o.len] ^= (uint8_t)(1u << (arg2 % 8));
        break;
    case 2: new_len = arg % (o.len + 1); break;
    case 3: { /* appended bytes: zeros are padding, anything else is refused */
        size_t extra = 1 + arg % 64;
        uint8_t *longer = realloc(b, o.len + extra);
        if (longer == NULL)
            fuzz_fail("out of memory");
        b = longer;
        memset(b + o.len, (arg2 & 1) ? (int)(1 + (arg2 >> 8) % 255) : 0, extra);
        new_len = o.len + extra;
        if (signed_ok)
            expect = (arg2 & 1) ? KBS_ERR_SPDM_TRAILING_BYTES : KBS_OK;
        break;
    }
    case 4: { /* a count or length field set to an input value, or nudged by one */
        size_t fields[6] = {41, 42, o.block_at[arg % o.nblocks] + 2, o.block_at[arg % o.nblocks] + 5,
                            o.opaque_len_at, o.ntlvs ? o.tlv_at[arg % o.ntlvs] + 2 : o.opaque_len_at};
        size_t at = fields[(arg >> 8) % 6];
        size_t width = at == 41 ? 1 : at == 42 ? 3 : 2;
        uint32_t v = 0;
        for (size_t i = 0; i < width; i++)
            v |= (uint32_t)b[at + i] << (8 * i);
        v = (arg2 & 0x8000) ? v + ((arg2 & 1) ? 1u : 0xFFFFFFFFu) : arg2;
        for (size_t i = 0; i < width; i++)
            b[at + i] = (uint8_t)(v >> (8 * i));
        break;
    }
    case 5: { /* an index used twice, or out of range; re-signed */
        size_t i = arg % o.nblocks, j = arg2 % o.nblocks;
        if (o.nblocks > 1 && i != j) {
            b[o.block_at[j]] = b[o.block_at[i]];
            expect = KBS_ERR_SPDM_BLOCK_DUPLICATE;
        } else {
            b[o.block_at[i]] = (arg2 & 1) ? 255 : 0;
            expect = KBS_ERR_SPDM_BLOCK_INDEX;
        }
        sign_into(d, nonce, b, o.sig_off, ctx);
        break;
    }
    case 6: /* a TLV type changed to a value next to the known ranges, or to any 16-bit value; re-signed */
        if (o.ntlvs) {
            static const uint16_t edges[10] = {0, 1, 25, 26, 27, 31, 32, 36, 37, 255};
            uint16_t type = (arg2 & 0x8000) ? arg2 : edges[arg2 % 10];
            size_t at = o.tlv_at[arg % o.ntlvs];
            b[at] = (uint8_t)type, b[at + 1] = (uint8_t)(type >> 8);
            sign_into(d, nonce, b, o.sig_off, ctx);
            if (!known_type(type))
                expect = KBS_ERR_SPDM_TLV_TYPE;
        }
        break;
    case 7: /* a raw bit stream instead of a digest; re-signed */
        b[o.block_at[arg % o.nblocks] + 4] |= 0x80;
        sign_into(d, nonce, b, o.sig_off, ctx);
        expect = KBS_ERR_SPDM_BLOCK_VALUE_TYPE;
        break;
    case 8: /* edge scalars in r or s */
        edge_scalar(C, b + o.sig_off + ((arg & 1) ? 48 : 0), arg2);
        break;
    case 9: { /* (r, n - s): the other valid signature */
        BIGNUM *s = BN_bin2bn(b + o.sig_off + 48, 48, NULL);
        if (s == NULL || BN_sub(s, fuzz_order(C), s) != 1)
            fuzz_fail("BN");
        if (signed_ok) {
            bn_put(C, b + o.sig_off + 48, s);
            expect = KBS_OK;
        }
        BN_free(s);
        break;
    }
    case 10: { /* another key */
        BIGNUM *d2 = scalar_from(C, other, ctx);
        public_key(C, d2, point, ctx);
        BN_free(d2);
        break;
    }
    case 11: /* nvat's rule: no padding at all */
        flags = KBS_SPDM_NO_PADDING;
        if (signed_ok)
            expect = o.len > o.sig_off + 96 ? KBS_ERR_SPDM_PADDING : KBS_OK;
        break;
    default: /* the slot changed in the request and the response alike; re-signed */
        b[36] = b[40] = (uint8_t)(arg2 % 9);
        sign_into(d, nonce, b, o.sig_off, ctx);
        if (arg2 % 9 == 8)
            expect = KBS_ERR_SPDM_REQUEST_SLOT;
        break;
    }
    uint8_t *exact = fuzz_exact(b, new_len);
    rc = check_report(exact, new_len, flags, point, 97, "built and mutated");
    if (expect >= 0 && rc != expect)
        fuzz_fail("mutation %d must give %d, got %d", mutation % 13, expect, rc);
    if (mutation % 13 == 1 && rc == KBS_OK)
        fuzz_fail("a bit flip at %u was accepted", arg % (unsigned)o.len);
    free(exact);
    free(b);
    BN_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_evidence_input(C, check_report, built_case, data, size);
    return 0;
}
