/*
 * Tests of the TDX quote parser, kbs_tdx_verify (also with key tables: kbs_tdx_verify_with_tables) and
 * the P-256 entry points, built and run under AddressSanitizer and UndefinedBehaviorSanitizer
 * (`make sanitize`).
 *
 * Every input lives in a heap block of exactly its length, so any read past the end is caught.
 * Real quotes are read at run time from $KBS_VECTORS (default ../shared/vectors): every *.dat and
 * *.bin under tdx/, and trustee/evidence/tdx/tdx_quote_{4,5}.dat.  Each is verified with the PCK
 * key of its own PCK leaf certificate, which this test decodes from the quote with libcrypto:
 * nothing from the vectors is written here.  Synthetic quotes, signed by keys made here, cover
 * what real quotes cannot (every body type, odd sizes, a bad binding with a valid QE signature)
 * and keep the test meaningful without the vectors.  Random edits run KBS_NATIVE_FUZZ_ITERS
 * times in all (default 20000).
 */
#define _DEFAULT_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED
#include <dirent.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "kbs_native.h"
#include "vectors.h"

static int is_parse_error(int rc)
{
    return rc >= KBS_ERR_TDX_HEADER_TRUNCATED && rc <= KBS_ERR_TDX_TRAILING_BYTES;
}

/* ---- region map of a parsed quote: what a one-bit flip of each byte must give ---- */

enum expect { ANY_PARSE_ERROR, EXACT, EXACT_OR_RANGE, UNSIGNED_OK };

struct region {
    size_t start, end;
    enum expect kind;
    int status, alt; /* EXACT: status; EXACT_OR_RANGE: status or alt */
};

static size_t regions_of(const struct kbs_tdx_quote *q, size_t len, struct region *r)
{
    size_t n = 0;
#define REGION(a, b, k, s, t) (r[n++] = (struct region){(a), (b), (k), (s), (t)})
    REGION(0, 2, ANY_PARSE_ERROR, 0, 0);
    REGION(2, 4, EXACT, KBS_ERR_TDX_ATT_KEY_TYPE, 0);
    REGION(4, 8, EXACT, KBS_ERR_TDX_TEE_TYPE, 0);
    REGION(8, 12, EXACT, KBS_ERR_TDX_QUOTE_SIG_INVALID, 0);
    REGION(12, 28, EXACT, KBS_ERR_TDX_QE_VENDOR, 0);
    REGION(28, 48, EXACT, KBS_ERR_TDX_QUOTE_SIG_INVALID, 0);
    if (q->version == 5) {
        /* 3 -> 2 is a known type whose size then differs */
        REGION(48, 50, EXACT_OR_RANGE, KBS_ERR_TDX_BODY_TYPE, KBS_ERR_TDX_BODY_SIZE);
        REGION(50, 54, EXACT, KBS_ERR_TDX_BODY_SIZE, 0);
    }
    REGION(q->body_offset, q->signed_size, EXACT, KBS_ERR_TDX_QUOTE_SIG_INVALID, 0);
    REGION(q->signed_size, q->signed_size + 4, ANY_PARSE_ERROR, 0, 0);
    REGION(q->signature_offset, q->signature_offset + 64, EXACT_OR_RANGE, KBS_ERR_TDX_QUOTE_SIG_INVALID,
           KBS_ERR_TDX_QUOTE_SIG_RANGE);
    REGION(q->attestation_key_offset, q->attestation_key_offset + 64, EXACT, KBS_ERR_TDX_QE_BINDING, 0);
    REGION(q->attestation_key_offset + 64, q->attestation_key_offset + 66, EXACT, KBS_ERR_TDX_CERT_TYPE, 0);
    REGION(q->attestation_key_offset + 66, q->qe_report_offset, ANY_PARSE_ERROR, 0, 0);
    REGION(q->qe_report_offset, q->qe_report_offset + 384, EXACT, KBS_ERR_TDX_QE_REPORT_SIG_INVALID, 0);
    REGION(q->qe_report_signature_offset, q->qe_report_signature_offset + 64, EXACT_OR_RANGE,
           KBS_ERR_TDX_QE_REPORT_SIG_INVALID, KBS_ERR_TDX_QE_REPORT_SIG_RANGE);
    REGION(q->qe_auth_data_offset - 2, q->qe_auth_data_offset, ANY_PARSE_ERROR, 0, 0);
    REGION(q->qe_auth_data_offset, q->qe_auth_data_offset + q->qe_auth_data_size, EXACT, KBS_ERR_TDX_QE_BINDING,
           0);
    REGION(q->pck_chain_offset - 6, q->pck_chain_offset - 4, EXACT, KBS_ERR_TDX_PCK_CERT_TYPE, 0);
    REGION(q->pck_chain_offset - 4, q->pck_chain_offset, EXACT, KBS_ERR_TDX_PCK_CERT_SIZE, 0);
    REGION(q->pck_chain_offset, q->end, UNSIGNED_OK, 0, 0); /* the chain is judged by the trust layer */
    REGION(q->end, len, EXACT, KBS_ERR_TDX_TRAILING_BYTES, 0);
#undef REGION
    return n;
}

static int region_allows(const struct region *r, int rc)
{
    switch (r->kind) {
    case ANY_PARSE_ERROR: return is_parse_error(rc);
    case EXACT: return rc == r->status;
    case EXACT_OR_RANGE: return rc == r->status || rc == r->alt;
    default: return rc == KBS_OK;
    }
}

/* ---- one real (or synthetic) quote, verified with its PCK point ---- */

static void test_quote(const char *name, const uint8_t *quote, size_t len, const uint8_t pck[65],
                       const uint8_t other_pck[65], size_t stride, long iters)
{
    struct kbs_tdx_quote q, q2;
    int rc0 = kbs_tdx_parse(quote, len, 0, &q);
    int rc = kbs_tdx_parse(quote, len, KBS_TDX_ALLOW_TRAILING_BYTES, &q);
    CHECK(rc == KBS_OK, "%s parses (with trailing bytes allowed): %d", name, rc);
    if (rc != KBS_OK)
        return;
    int clean = all_zero(quote + q.end, len - q.end);
    CHECK(rc0 == (clean ? KBS_OK : KBS_ERR_TDX_TRAILING_BYTES), "%s default parse %d", name, rc0);
    CHECK(q.trailing_size == len - q.end && q.trailing_all_zero == clean, "%s trailing", name);
    CHECK(q.signed_size == (q.version == 4 ? 632u : 54u + q.body_size), "%s signed size %zu", name, q.signed_size);
    CHECK(q.end == q.signed_size + 4 + q.signature_data_len, "%s end", name);
    CHECK(q.cert_data_size == 384u + 64 + 2 + q.qe_auth_data_size + 6 + q.pck_cert_data_size, "%s sizes", name);
    CHECK(q.signature_data_len == 134u + q.cert_data_size, "%s signature data size", name);

    const unsigned flags = KBS_TDX_ALLOW_TRAILING_BYTES;
    rc = kbs_tdx_verify(quote, len, flags, pck, 65, &q2);
    CHECK(rc == KBS_OK, "%s verifies with its PCK key: %d", name, rc);
    CHECK(memcmp(&q, &q2, sizeof q) == 0, "%s verify fills the same struct as parse", name);
    if (other_pck && memcmp(other_pck, pck, 65) != 0)
        CHECK(kbs_tdx_verify(quote, len, flags, other_pck, 65, &q2) == KBS_ERR_TDX_QE_REPORT_SIG_INVALID,
              "%s with another PCK key", name);
    uint8_t bad[65];
    memcpy(bad, pck, 65);
    bad[40] ^= 1; /* almost surely off the curve */
    CHECK(kbs_tdx_verify(quote, len, flags, bad, 65, &q2) == KBS_ERR_TDX_PCK_KEY, "%s off-curve PCK", name);
    CHECK(kbs_tdx_verify(quote, len, flags, pck, 64, &q2) == KBS_ERR_TDX_PCK_KEY, "%s short PCK key", name);
    CHECK(kbs_tdx_verify(quote, len, flags, NULL, 65, &q2) == KBS_ERR_NULL_ARGUMENT, "%s NULL key", name);
    CHECK(kbs_tdx_parse(NULL, len, 0, &q2) == KBS_ERR_NULL_ARGUMENT, "%s NULL buffer", name);

    /* With key tables: the same verdict and struct; a table of another key is refused by name. */
    struct kbs_p256_key_table *pck_table = malloc(sizeof *pck_table), *att_table = malloc(sizeof *att_table);
    uint8_t att_point[65] = {0x04};
    memcpy(att_point + 1, quote + q.attestation_key_offset, 64);
    CHECK(kbs_p256_key_precompute(pck, 65, pck_table) == KBS_OK, "%s PCK key table", name);
    CHECK(kbs_p256_key_precompute(att_point, 65, att_table) == KBS_OK, "%s attestation key table", name);
    for (int mask = 0; mask < 4; mask++) {
        memset(&q2, 0xAA, sizeof q2);
        rc = kbs_tdx_verify_with_tables(quote, len, flags, pck, 65, (mask & 1) ? pck_table : NULL,
                                        (mask & 2) ? att_table : NULL, &q2);
        CHECK(rc == KBS_OK && memcmp(&q, &q2, sizeof q) == 0, "%s verifies with tables %d: %d", name, mask, rc);
    }
    CHECK(kbs_tdx_verify_with_tables(quote, len, flags, pck, 65, att_table, NULL, &q2) ==
              (memcmp(att_point, pck, 65) ? KBS_ERR_TDX_PCK_TABLE_MISMATCH : KBS_OK),
          "%s PCK table of another key", name);
    CHECK(kbs_tdx_verify_with_tables(quote, len, flags, pck, 65, NULL, pck_table, &q2) ==
              (memcmp(att_point, pck, 65) ? KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH : KBS_OK),
          "%s attestation key table of another key", name);
    CHECK(kbs_tdx_verify_with_tables(quote, len, flags, pck, 64, pck_table, att_table, &q2) == KBS_ERR_TDX_PCK_KEY,
          "%s short PCK key with a table", name);
    CHECK(kbs_tdx_verify_with_tables(quote, len, flags, NULL, 65, pck_table, att_table, &q2) ==
              KBS_ERR_NULL_ARGUMENT, "%s NULL PCK key with a table", name);
    if (other_pck && memcmp(other_pck, pck, 65) != 0)
        CHECK(kbs_tdx_verify_with_tables(quote, len, flags, other_pck, 65, pck_table, att_table, &q2) ==
                  KBS_ERR_TDX_PCK_TABLE_MISMATCH, "%s PCK table with another PCK key", name);
    struct kbs_p256_key_table *blank = calloc(1, sizeof *blank);
    CHECK(kbs_tdx_verify_with_tables(quote, len, flags, pck, 65, NULL, blank, &q2) ==
              KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH, "%s a table never built", name);
    free(blank);

    /* Every cut: the exact status of where the buffer ends, reading nothing past the block. */
    for (size_t n = 0; n <= len; n++) {
        uint8_t *cut = exact_copy(quote, n);
        int want;
        if (n < 48)
            want = KBS_ERR_TDX_HEADER_TRUNCATED;
        else if (n < q.signed_size)
            want = KBS_ERR_TDX_BODY_TRUNCATED;
        else if (n < q.end)
            want = KBS_ERR_TDX_SIG_DATA_TRUNCATED;
        else
            want = all_zero(quote + q.end, n - q.end) ? KBS_OK : KBS_ERR_TDX_TRAILING_BYTES;
        rc = kbs_tdx_parse(cut, n, 0, &q2);
        CHECK(rc == want, "%s cut to %zu gives %d, want %d", name, n, rc, want);
        if (n == q.end) /* the quote without its padding still verifies */
            CHECK(kbs_tdx_verify(cut, n, 0, pck, 65, &q2) == KBS_OK, "%s without trailing bytes", name);
        free(cut);
    }

    /* Zero padding of any length is accepted; one non-zero byte in it is not (unless allowed). */
    for (size_t extra = 1; extra <= 64; extra += 21) {
        uint8_t *longer = calloc(1, len + extra);
        memcpy(longer, quote, len);
        if (clean) {
            CHECK(kbs_tdx_parse(longer, len + extra, 0, &q2) == KBS_OK && q2.trailing_size == len - q.end + extra,
                  "%s + %zu zero bytes", name, extra);
            longer[len + (size_t)(rnd() % extra)] = (uint8_t)(1 + rnd() % 255);
            CHECK(kbs_tdx_parse(longer, len + extra, 0, &q2) == KBS_ERR_TDX_TRAILING_BYTES, "%s + a non-zero byte",
                  name);
            CHECK(kbs_tdx_verify(longer, len + extra, flags, pck, 65, &q2) == KBS_OK && !q2.trailing_all_zero,
                  "%s + a non-zero byte, allowed", name);
        }
        free(longer);
    }

    /* One bit of every `stride`-th byte up to the end of the signature data (and of 64 padding bytes). */
    struct region regions[32];
    size_t nreg = regions_of(&q, len, regions);
    size_t stop = q.end + 64 < len ? q.end + 64 : len;
    uint8_t *copy = exact_copy(quote, len);
    for (size_t i = 0; i < stop; i += stride) {
        if (i >= q.pck_chain_offset && i + 1 < q.end && (i - q.pck_chain_offset) % 97 != 0)
            continue; /* the chain is unsigned here: a sample of its bytes is enough */
        uint8_t mask = (uint8_t)(1u << (rnd() % 8));
        copy[i] ^= mask;
        int got = kbs_tdx_verify(copy, len, i >= q.end ? 0 : flags, pck, 65, &q2);
        if (i % 5 == 0) { /* the tables were built for the unflipped keys: same verdict, by binding first */
            int tabbed = kbs_tdx_verify_with_tables(copy, len, i >= q.end ? 0 : flags, pck, 65, pck_table, att_table,
                                                    &q2);
            CHECK(tabbed == got, "%s byte %zu: %d with tables, %d without", name, i, tabbed, got);
        }
        const struct region *where = NULL;
        for (size_t k = 0; k < nreg; k++)
            if (i >= regions[k].start && i < regions[k].end)
                where = &regions[k];
        CHECK(where != NULL, "%s byte %zu in no region", name, i);
        if (where)
            CHECK(region_allows(where, got), "%s byte %zu bit 0x%02x gives %d (region %zu..%zu)", name, i, mask, got,
                  where->start, where->end);
        copy[i] ^= mask;
    }

    /* Random edits anywhere: a status, never a crash; accepted only if nothing before the chain changed. */
    for (long it = 0; it < iters; it++) {
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++)
            copy[rnd() % len] = (uint8_t)rnd();
        unsigned edit_flags = (unsigned)(rnd() & 1);
        int got = kbs_tdx_verify(copy, len, edit_flags, pck, 65, &q2);
        if (it % 8 == 0)
            CHECK(kbs_tdx_verify_with_tables(copy, len, edit_flags, pck, 65, pck_table, att_table, &q2) == got,
                  "%s edit %ld: tables disagree", name, it);
        CHECK(got == KBS_OK || (got >= 400 && got <= KBS_ERR_TDX_QUOTE_SIG_INVALID), "%s edit status %d", name, got);
        if (got == KBS_OK) {
            CHECK(memcmp(copy, quote, q.pck_chain_offset) == 0, "%s an edit before the PCK chain was accepted", name);
            CHECK(edit_flags || all_zero(copy + q.end, len - q.end), "%s non-zero trailing bytes accepted", name);
        }
        memcpy(copy, quote, len);
    }
    free(copy);
    free(pck_table);
    free(att_table);
}

/* ---- synthetic quotes, signed here ---- */

struct keys {
    EC_KEY *pck, *att;
    uint8_t pck_point[65], att_point[65];
};

static void sign(EC_KEY *key, const uint8_t *msg, size_t len, uint8_t sig[64])
{
    uint8_t digest[32];
    CHECK(kbs_sha256(msg, len, digest) == KBS_OK, "sha256");
    sign_digest(key, digest, 32, sig, sig + 32);
}

static EC_KEY *new_key(uint8_t point[65])
{
    return new_ec_key(NID_X9_62_prime256v1, point, 65);
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

enum tweak { T_NONE, T_BINDING_HIGH, T_BINDING_LOW, T_ATT_OFF_CURVE, T_QUOTE_R_ZERO, T_QUOTE_S_N, T_QE_R_ZERO };

static const uint8_t P256_N[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
                                   0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
                                   0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

/*
 * A well-formed quote in a new exact-size block: version 4 (body type 2) or 5 with body type
 * 2 or 3, the given QE auth data and PEM sizes, `padding` zero bytes, signed by `k`; `tweak`
 * breaks one cryptographic rule while keeping every other signature valid.
 */
static uint8_t *build(const struct keys *k, int version, int body_type, size_t auth, size_t pem, size_t padding,
                      enum tweak tweak, size_t *len_out)
{
    size_t body_off = version == 4 ? 48 : 54, body = body_type == 3 ? 648 : 584, signed_size = body_off + body;
    size_t cert = 384 + 64 + 2 + auth + 6 + pem, sig_len = 134 + cert, len = signed_size + 4 + sig_len + padding;
    uint8_t *b = calloc(1, len);
    for (size_t i = 0; i < signed_size + 4 + sig_len; i++)
        b[i] = (uint8_t)(i * 7 + 3);
    put16(b, (uint32_t)version);
    put16(b + 2, 2);
    put32(b + 4, 0x81);
    static const uint8_t vendor[16] = {0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9,
                                       0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07};
    memcpy(b + 12, vendor, 16);
    if (version == 5) {
        put16(b + 48, (uint32_t)body_type);
        put32(b + 50, (uint32_t)body);
    }
    size_t p = signed_size;
    put32(b + p, (uint32_t)sig_len);
    size_t sig = p + 4, ak = sig + 64, qe = ak + 64 + 6, qe_sig = qe + 384, auth_off = qe_sig + 64 + 2;
    size_t inner = auth_off + auth;
    memcpy(b + ak, k->att_point + 1, 64);
    if (tweak == T_ATT_OFF_CURVE)
        b[ak + 63] ^= 1;
    put16(b + ak + 64, 6);
    put32(b + ak + 66, (uint32_t)cert);
    put16(b + qe_sig + 64, (uint32_t)auth);
    put16(b + inner, 5);
    put32(b + inner + 2, (uint32_t)pem);
    /* binding: SHA-256(attestation key || auth data) || zeros */
    uint8_t *msg = malloc(64 + auth);
    memcpy(msg, b + ak, 64);
    memcpy(msg + 64, b + auth_off, auth);
    CHECK(kbs_sha256(msg, 64 + auth, b + qe + 320) == KBS_OK, "sha256");
    free(msg);
    memset(b + qe + 352, 0, 32);
    if (tweak == T_BINDING_HIGH)
        b[qe + 383] = 1;
    if (tweak == T_BINDING_LOW)
        b[qe + 320] ^= 0x80;
    sign(k->pck, b + qe, 384, b + qe_sig);
    sign(k->att, b, signed_size, b + sig);
    if (tweak == T_QUOTE_R_ZERO)
        memset(b + sig, 0, 32);
    if (tweak == T_QUOTE_S_N)
        memcpy(b + sig + 32, P256_N, 32);
    if (tweak == T_QE_R_ZERO)
        memset(b + qe_sig, 0, 32);
    *len_out = len;
    return b;
}

static void test_synthetic(long iters)
{
    struct keys k;
    k.pck = new_key(k.pck_point);
    k.att = new_key(k.att_point);
    struct kbs_tdx_quote q;
    static const int shapes[][2] = {{4, 2}, {5, 2}, {5, 3}};
    static const size_t auths[] = {0, 1, 32, 300}, pems[] = {0, 1, 2, 50};
    int n = 0;
    for (size_t s = 0; s < 3; s++)
        for (size_t a = 0; a < 4; a++)
            for (size_t m = 0; m < 4; m++) {
                size_t len;
                uint8_t *b = build(&k, shapes[s][0], shapes[s][1], auths[a], pems[m], (a + m) % 3 * 5, T_NONE, &len);
                uint8_t *exact = exact_copy(b, len);
                char name[64];
                snprintf(name, sizeof name, "synthetic v%d type %d auth %zu pem %zu", shapes[s][0], shapes[s][1],
                         auths[a], pems[m]);
                int full = a == 2 && m == 3; /* one shape of each kind gets every byte flipped */
                test_quote(name, exact, len, k.pck_point, k.att_point, full ? 1 : 17, full ? iters / 3 : 0);
                CHECK(kbs_tdx_parse(exact, len, 0, &q) == KBS_OK && q.body_type == shapes[s][1] &&
                          q.qe_auth_data_size == auths[a] && q.pck_cert_data_size == pems[m],
                      "%s fields", name);
                /* one trailing NUL of the chain is not part of the PEM text */
                size_t want_chain = pems[m] && exact[q.pck_chain_offset + pems[m] - 1] == 0 ? pems[m] - 1 : pems[m];
                CHECK(q.pck_chain_len == want_chain, "%s chain length %zu", name, q.pck_chain_len);
                free(exact);
                free(b);
                n++;
            }

    /* Each cryptographic rule broken alone, every other signature valid. */
    static const struct {
        enum tweak tweak;
        int status;
        const char *what;
    } tweaks[] = {
        {T_BINDING_HIGH, KBS_ERR_TDX_QE_BINDING, "report_data[63] = 1: the upper 32 bytes are compared"},
        {T_BINDING_LOW, KBS_ERR_TDX_QE_BINDING, "report_data[0] changed"},
        {T_ATT_OFF_CURVE, KBS_ERR_TDX_ATT_KEY_INVALID, "attestation key off the curve, binding consistent"},
        {T_QUOTE_R_ZERO, KBS_ERR_TDX_QUOTE_SIG_RANGE, "quote signature r = 0"},
        {T_QUOTE_S_N, KBS_ERR_TDX_QUOTE_SIG_RANGE, "quote signature s = n"},
        {T_QE_R_ZERO, KBS_ERR_TDX_QE_REPORT_SIG_RANGE, "QE report signature r = 0"},
    };
    for (size_t t = 0; t < sizeof tweaks / sizeof tweaks[0]; t++) {
        size_t len;
        uint8_t *b = build(&k, 5, 3, 32, 10, 0, tweaks[t].tweak, &len);
        int rc = kbs_tdx_verify(b, len, 0, k.pck_point, 65, &q);
        CHECK(rc == tweaks[t].status, "%s: %d, want %d", tweaks[t].what, rc, tweaks[t].status);
        CHECK(kbs_tdx_parse(b, len, 0, &q) == KBS_OK, "%s still parses", tweaks[t].what);
        free(b);
    }

    /* Header and descriptor values the parser refuses. */
    size_t len;
    uint8_t *b = build(&k, 5, 3, 32, 10, 0, T_NONE, &len);
    static const struct {
        size_t off, width;
        uint32_t value;
        int status;
    } fields[] = {
        {0, 2, 3, KBS_ERR_TDX_VERSION},        {0, 2, 6, KBS_ERR_TDX_VERSION},
        {0, 2, 0x104, KBS_ERR_TDX_VERSION},    {2, 2, 3, KBS_ERR_TDX_ATT_KEY_TYPE},
        {4, 4, 0, KBS_ERR_TDX_TEE_TYPE},       {4, 4, 0x181, KBS_ERR_TDX_TEE_TYPE},
        {48, 2, 1, KBS_ERR_TDX_BODY_TYPE},     {48, 2, 4, KBS_ERR_TDX_BODY_TYPE},
        {48, 2, 0, KBS_ERR_TDX_BODY_TYPE},     {48, 2, 0x103, KBS_ERR_TDX_BODY_TYPE},
        {48, 2, 2, KBS_ERR_TDX_BODY_SIZE},     {50, 4, 584, KBS_ERR_TDX_BODY_SIZE},
        {50, 4, 0xFFFFFFFF, KBS_ERR_TDX_BODY_SIZE},
        {702, 4, 0xFFFFFFFF, KBS_ERR_TDX_SIG_DATA_TRUNCATED},
        {702 + 4 + 128, 2, 5, KBS_ERR_TDX_CERT_TYPE},
        {702 + 4 + 128 + 2, 4, 0xFFFFFFFF, KBS_ERR_TDX_CERT_SIZE},
        {702 + 4 + 128 + 2, 4, 0, KBS_ERR_TDX_CERT_SIZE},
        {702 + 4 + 128 + 6 + 448, 2, 0xFFFF, KBS_ERR_TDX_QE_AUTH_SIZE},
        {702 + 4 + 128 + 6 + 448, 2, 33, KBS_ERR_TDX_PCK_CERT_TYPE},
        {702 + 4 + 128 + 6 + 448, 2, 31, KBS_ERR_TDX_PCK_CERT_TYPE},
        {702 + 4 + 128 + 6 + 450 + 32, 2, 6, KBS_ERR_TDX_PCK_CERT_TYPE},
        {702 + 4 + 128 + 6 + 450 + 32 + 2, 4, 11, KBS_ERR_TDX_PCK_CERT_SIZE},
        {702 + 4 + 128 + 6 + 450 + 32 + 2, 4, 9, KBS_ERR_TDX_PCK_CERT_SIZE},
    };
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        uint8_t *c = exact_copy(b, len);
        for (size_t i = 0; i < fields[f].width; i++)
            c[fields[f].off + i] = (uint8_t)(fields[f].value >> (8 * i));
        int rc = kbs_tdx_parse(c, len, 0, &q);
        CHECK(rc == fields[f].status, "field at %zu = 0x%x gives %d, want %d", fields[f].off, fields[f].value, rc,
              fields[f].status);
        free(c);
    }
    free(b);

    /* signature_data_len one larger with a zero byte behind it: unaccounted bytes, not padding. */
    b = build(&k, 4, 2, 32, 10, 1, T_NONE, &len);
    put32(b + 632, (uint32_t)(len - 632 - 4));
    CHECK(kbs_tdx_parse(b, len, 0, &q) == KBS_ERR_TDX_SIG_DATA_SIZE, "signature data longer than its contents");
    free(b);
    /* the smallest cert data: QE auth data and chain both empty, and nothing more */
    b = build(&k, 4, 2, 0, 0, 0, T_NONE, &len);
    CHECK(len == 632 + 4 + 134 + 456 && kbs_tdx_verify(b, len, 0, k.pck_point, 65, &q) == KBS_OK, "minimal quote");
    free(b);

    printf("test_tdx: %d synthetic shapes\n", n);
    EC_KEY_free(k.pck);
    EC_KEY_free(k.att);
}

/* ---- the P-256 entry points ---- */

static void test_p256(void)
{
    uint8_t point[65], digest[32], hash[64], r[32], s[32], sig[64];
    EC_KEY *k = new_key(point);
    for (size_t i = 0; i < sizeof hash; i++)
        hash[i] = (uint8_t)(i * 13 + 1);
    memcpy(digest, hash, 32);
    sign_digest(k, digest, 32, r, s);
    memcpy(sig, r, 32);
    memcpy(sig + 32, s, 32);

    CHECK(kbs_p256_verify_digest(point, 65, digest, r, s) == KBS_OK, "p256 verifies");
    CHECK(kbs_p256_verify_digest_libcrypto(point, 65, digest, r, s) == KBS_OK, "p256 libcrypto verifies");
    for (size_t n = 32; n <= 64; n += 8)
        CHECK(kbs_p256_verify_hash(point, 65, hash, n, r, s) == KBS_OK, "p256 hash of %zu bytes uses 32", n);
    CHECK(kbs_p256_verify_hash(point, 65, hash, 31, r, s) == KBS_ERR_SIG_INVALID, "p256 31-byte hash");
    CHECK(kbs_p256_verify_hash(point, 65, NULL, 5, r, s) == KBS_ERR_NULL_ARGUMENT, "p256 NULL hash");
    uint8_t *exact = exact_copy(hash, 0);
    CHECK(kbs_p256_verify_hash(point, 65, exact, 0, r, s) == KBS_ERR_SIG_INVALID, "p256 empty hash");
    free(exact);
    digest[0] ^= 1;
    CHECK(kbs_p256_verify_digest(point, 65, digest, r, s) == KBS_ERR_SIG_INVALID, "p256 other digest");
    digest[0] ^= 1;
    CHECK(kbs_p256_verify_digest(point, 64, digest, r, s) == KBS_ERR_KEY_LENGTH, "p256 short key");
    CHECK(kbs_p256_verify_digest(NULL, 65, digest, r, s) == KBS_ERR_NULL_ARGUMENT, "p256 NULL key");
    point[0] = 0x02;
    CHECK(kbs_p256_verify_digest(point, 65, digest, r, s) == KBS_ERR_KEY_FORMAT, "p256 compressed prefix");
    point[0] = 0x04;
    point[64] ^= 1;
    CHECK(kbs_p256_verify_digest(point, 65, digest, r, s) == KBS_ERR_KEY_NOT_ON_CURVE, "p256 off curve");
    point[64] ^= 1;
    uint8_t zero[32] = {0};
    CHECK(kbs_p256_verify_digest(point, 65, digest, zero, s) == KBS_ERR_SIG_RANGE, "p256 r = 0");
    CHECK(kbs_p256_verify_digest(point, 65, digest, r, P256_N) == KBS_ERR_SIG_RANGE, "p256 s = n");

    uint8_t out[32];
    CHECK(kbs_sha256(NULL, 0, out) == KBS_OK, "sha256 of nothing");
    static const uint8_t empty_sha256[4] = {0xe3, 0xb0, 0xc4, 0x42};
    CHECK(memcmp(out, empty_sha256, 4) == 0, "sha256 of nothing is e3b0c442...");
    CHECK(kbs_sha256(NULL, 1, out) == KBS_ERR_NULL_ARGUMENT, "sha256 NULL");
    EC_KEY_free(k);
}

/* ---- the real quotes ---- */

struct found {
    char paths[64][1024];
    int count;
};

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void walk(const char *dir, struct found *f, int depth)
{
    DIR *d = opendir(dir);
    if (!d || depth > 3) {
        if (d)
            closedir(d);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL && f->count < 64) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            walk(path, f, depth + 1);
        else if (has_suffix(e->d_name, ".dat") || has_suffix(e->d_name, ".bin"))
            snprintf(f->paths[f->count++], sizeof f->paths[0], "%s", path);
    }
    closedir(d);
}

int main(void)
{
    const char *vectors = getenv("KBS_VECTORS");
    const char *iters_env = getenv("KBS_NATIVE_FUZZ_ITERS");
    long iters = iters_env ? atol(iters_env) : 20000;
    const char *root = vectors ? vectors : "../shared/vectors";
    char dir[1024];
    rng_state = 0xD1B54A32D192ED03u;

    static struct found f;
    snprintf(dir, sizeof dir, "%s/tdx", root);
    walk(dir, &f, 0);
    for (int i = 4; i <= 5; i++)
        snprintf(f.paths[f.count++], sizeof f.paths[0], "%s/trustee/evidence/tdx/tdx_quote_%d.dat", root, i);

    uint8_t *quotes[64] = {0}, points[64][65];
    size_t lens[64];
    int real = 0;
    for (int i = 0; i < f.count; i++) {
        quotes[i] = read_file(f.paths[i], &lens[i]);
        struct kbs_tdx_quote q;
        if (quotes[i] && kbs_tdx_parse(quotes[i], lens[i], KBS_TDX_ALLOW_TRAILING_BYTES, &q) == KBS_OK &&
            pem_leaf_point(quotes[i] + q.pck_chain_offset, q.pck_chain_len, points[i], 65)) {
            real++;
        } else {
            CHECK(quotes[i] == NULL, "%s: a quote file under tdx/ that does not parse", f.paths[i]);
            free(quotes[i]);
            quotes[i] = NULL;
        }
    }
    int previous = -1;
    for (int i = 0; i < f.count; i++) {
        if (!quotes[i])
            continue;
        uint8_t *exact = exact_copy(quotes[i], lens[i]);
        test_quote(f.paths[i], exact, lens[i], points[i], previous >= 0 ? points[previous] : NULL, 1,
                   real ? iters / 2 / real : 0);
        free(exact);
        previous = i;
    }
    if (real == 0)
        fprintf(stderr, "note: no TDX quotes under %s; real-quote tests skipped\n", root);
    for (int i = 0; i < f.count; i++)
        free(quotes[i]);

    test_synthetic(iters / 2);
    test_p256();
    printf("test_tdx: %d real quotes; %ld passed, %ld failed\n", real, passed, failed);
    return failed != 0;
}
