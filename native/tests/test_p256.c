/*
 * The P-256 verify core under ASan/UBSan (`make sanitize`), with libcrypto's BIGNUM and EC code
 * as the independent oracle.
 *
 *  1. shared helpers: ec_wnaf recodings rebuild k, ec_modinv_vartime against BN_mod_inverse
 *     (mod p and n of P-256 and of P-384, the two curves' limb counts, and a 1-limb and a 3-limb
 *     prime for the path generic in the limb count);
 *  2. field layer: the asm multiply and square against the portable Montgomery multiply and
 *     against BN; add, sub, neg, half, the inverse and the batch inverse; the generated
 *     constants; the G table against libcrypto's multiples of G and against a key table for G;
 *  3. vectors from $KBS_VECTORS, cold and with a key table: Wycheproof ecdsa_secp256r1_sha256
 *     (P1363 and strict DER), the ECDH point-validation keys, NIST CAVP SigVer, SigGen and PKV;
 *  4. differential loop against kbs_p256_verify_digest_libcrypto on random keys, signatures,
 *     mutations and edge values; crafted signatures with x(R) in [n, p), R = infinity and
 *     u1 G == u2 Q.  Statuses must match exactly.  KBS_P256_DIFF_ITERS sets the number of
 *     random cases (default 400), KBS_P256_SEED the seed.
 *
 * Prints "N passed, M failed" and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ec_vartime.h"
#include "kbs_native.h"
#include "p256_internal.h"
#include "p256_tables.h"
#include "vectors.h"

static BIGNUM *bn_of(const uint64_t *a, size_t n)
{
    uint8_t be[8 * EC_MAX_LIMBS];
    ec_to_be_n(be, a, n);
    BIGNUM *v = BN_bin2bn(be, (int)(8 * n), NULL);
    if (v == NULL) {
        fprintf(stderr, "BN_bin2bn failed\n");
        exit(2);
    }
    return v;
}

static int bn_equals(const BIGNUM *v, const uint64_t *a, size_t n)
{
    BIGNUM *w = bn_of(a, n);
    int same = BN_cmp(v, w) == 0;
    BN_free(w);
    return same;
}

/* ---- 1. shared helpers ---- */

/* sum d_i 2^i == k, every digit odd and below 2^(w-1) in size, at most one non-zero in any w in a row. */
static int wnaf_ok(const uint64_t *k, size_t n, unsigned w)
{
    int8_t d[64 * EC_MAX_LIMBS + 1];
    size_t len = ec_wnaf(d, k, n, w);
    BIGNUM *acc = BN_new(), *want = bn_of(k, n);
    int ok = acc != NULL && (len == 0 || d[len - 1] != 0);
    size_t last = (size_t)-1;
    BN_zero(acc);
    for (size_t i = len; i-- > 0;) {
        BN_lshift1(acc, acc);
        if (d[i] == 0)
            continue;
        ok &= (d[i] & 1) && d[i] < (1 << (w - 1)) && d[i] > -(1 << (w - 1));
        ok &= last == (size_t)-1 || last - i >= w;
        last = i;
        if (d[i] > 0)
            BN_add_word(acc, (BN_ULONG)d[i]);
        else
            BN_sub_word(acc, (BN_ULONG)-d[i]);
    }
    for (size_t i = len; i < 64 * n + 1; i++)
        ok &= d[i] == 0;
    ok &= BN_cmp(acc, want) == 0;
    BN_free(acc);
    BN_free(want);
    return ok;
}

static void test_wnaf(long iters)
{
    static const uint64_t ones[6] = {~0ull, ~0ull, ~0ull, ~0ull, ~0ull, ~0ull};
    long bad = 0;
    for (long i = 0; i < iters; i++) {
        size_t n = (size_t[]){1, 4, 6}[i % 3];
        uint64_t k[6];
        rnd_below(k, ones, n);
        if (i % 7 == 0)
            memcpy(k, ones, sizeof k); /* all ones: the recoding carries out of the top */
        bad += !wnaf_ok(k, n, 2 + (unsigned)(i % 7));
    }
    uint64_t zero[4] = {0};
    int8_t d[257];
    CHECK(ec_wnaf(d, zero, 4, 5) == 0, "wNAF of 0 is empty");
    CHECK(bad == 0, "wNAF: %ld bad recodings of %ld", bad, iters);
}

static const uint64_t P384_P_WORDS[6] = {0x00000000ffffffffu, 0xffffffff00000000u, 0xfffffffffffffffeu,
                                         ~0ull, ~0ull, ~0ull};
static const uint64_t P384_N_WORDS[6] = {0xecec196accc52973u, 0x581a0db248b0a77au, 0xc7634d81f4372ddfu,
                                         ~0ull, ~0ull, ~0ull};

static void test_modinv(long iters)
{
    /* and 2^64 - 59, and P-192's p = 2^192 - 2^64 - 1: limb counts neither curve has */
    static const uint64_t p64[1] = {0xffffffffffffffc5u}, p192[3] = {~0ull, 0xfffffffffffffffeu, ~0ull};
    const uint64_t *moduli[6] = {P256_P, P256_N, P384_P_WORDS, P384_N_WORDS, p64, p192};
    const size_t sizes[6] = {4, 4, 6, 6, 1, 3};
    BN_CTX *ctx = BN_CTX_new();
    long bad = 0;
    for (long i = 0; i < iters; i++) {
        const uint64_t *m = moduli[i % 6];
        size_t n = sizes[i % 6];
        uint64_t a[6], r[6];
        do
            rnd_below(a, m, n);
        while (ec_is_zero_n(a, n));
        BIGNUM *bm = bn_of(m, n), *ba = bn_of(a, n), *want = BN_mod_inverse(NULL, ba, bm, ctx);
        int ok = ec_modinv_vartime(r, a, m, n);
        bad += !ok || want == NULL || !bn_equals(want, r, n);
        memcpy(r, a, sizeof r);
        ec_modinv_vartime(r, r, m, n); /* in place */
        bad += want == NULL || !bn_equals(want, r, n);
        BN_free(want);
        BN_free(ba);
        BN_free(bm);
    }
    uint64_t zero[4] = {0}, r[4] = {1, 1, 1, 1}, six[4] = {6, 0, 0, 0}, fifteen[4] = {15, 0, 0, 0};
    CHECK(ec_modinv_vartime(r, zero, P256_P, 4) == 0 && ec_is_zero_n(r, 4), "0 has no inverse");
    CHECK(ec_modinv_vartime(r, six, fifteen, 4) == 0 && ec_is_zero_n(r, 4), "gcd(6, 15) = 3: no inverse");
    CHECK(bad == 0, "modular inverse: %ld mismatches with BN_mod_inverse in %ld", bad, iters);
    BN_CTX_free(ctx);
}

/* ---- 2. field layer ---- */

static void test_constants(void)
{
    BN_CTX *ctx = BN_CTX_new();
    BIGNUM *p = bn_of(P256_P, 4), *n = bn_of(P256_N, 4), *r = BN_new(), *t = BN_new();
    const EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    BIGNUM *gp = BN_new(), *gb = BN_new();
    EC_GROUP_get_curve(g, gp, NULL, gb, ctx);
    CHECK(BN_cmp(gp, p) == 0 && BN_cmp(EC_GROUP_get0_order(g), n) == 0, "p and n are libcrypto's");
    CHECK(memcmp(p256_mod_p.m, P256_P, 32) == 0 && memcmp(p256_mod_n.m, P256_N, 32) == 0 &&
              p256_mod_p.n0 == 1 && p256_mod_n.n0 == P256_N0_N && P256_N[0] * P256_N0_N == ~(uint64_t)0,
          "moduli and n0 = -m^-1 mod 2^64");
    BN_zero(r);
    BN_set_bit(r, 256);
    BN_mod(t, r, p, ctx);
    CHECK(bn_equals(t, P256_ONE_MONT, 4), "ONE_MONT = 2^256 mod p");
    BN_mod_mul(t, t, t, p, ctx);
    CHECK(bn_equals(t, P256_RR_P, 4), "RR_P");
    uint64_t b_mont[4], b_plain[4];
    p256_fe_from_mont(b_plain, P256_B_MONT);
    p256_fe_to_mont(b_mont, b_plain);
    CHECK(memcmp(b_mont, P256_B_MONT, 32) == 0, "B_MONT round trip");
    EC_GROUP_get_curve(g, NULL, NULL, gb, ctx);
    CHECK(bn_equals(gb, b_plain, 4), "B_MONT is b in Montgomery form");
    BN_mod(t, r, n, ctx);
    BN_mod_mul(t, t, t, n, ctx);
    CHECK(bn_equals(t, P256_RR_N, 4), "RR_N");
    BN_mod(t, r, p, ctx);
    BN_mod_mul(t, t, r, p, ctx);
    BN_mod_mul(t, t, r, p, ctx);
    CHECK(bn_equals(t, P256_RRR_P, 4), "RRR_P");
    BN_sub(t, p, n);
    CHECK(bn_equals(t, P256_P_MINUS_N, 4), "P_MINUS_N");
    BN_free(gp);
    BN_free(gb);
    BN_free(p);
    BN_free(n);
    BN_free(r);
    BN_free(t);
    EC_GROUP_free((EC_GROUP *)g);
    BN_CTX_free(ctx);
}

static void test_field(long iters)
{
    BN_CTX *ctx = BN_CTX_new();
    BIGNUM *p = bn_of(P256_P, 4), *rinv = BN_new(), *t = BN_new();
    BN_zero(t);
    BN_set_bit(t, 256);
    BN_mod_inverse(rinv, t, p, ctx);
    long bad = 0, bn_bad = 0;
    for (long i = 0; i < iters; i++) {
        uint64_t a[4], b[4], x[4], y[4], z[4];
        rnd_below(a, P256_P, 4);
        rnd_below(b, P256_P, 4);
        p256_mont_mul(x, a, b, &p256_mod_p);
        p256_fe_mul(y, a, b);
        bad += memcmp(x, y, 32) != 0;
        memcpy(z, a, 32);
        p256_fe_mul(z, z, b); /* r aliasing a */
        bad += memcmp(x, z, 32) != 0;
        p256_mont_mul(x, a, a, &p256_mod_p);
        p256_fe_sqr(y, a);
        bad += memcmp(x, y, 32) != 0;
        p256_fe_add(x, a, b);
        p256_fe_sub(y, x, b);
        bad += memcmp(y, a, 32) != 0;
        p256_fe_neg(y, a);
        p256_fe_add(y, y, a);
        bad += !p256_fe_is_zero(y);
        p256_fe_half(y, a);
        p256_fe_add(y, y, y);
        bad += memcmp(y, a, 32) != 0;
        if (i % 8 == 0) { /* against BN: mont(a, b) == a b 2^-256, a + b, a - b */
            BIGNUM *ba = bn_of(a, 4), *bb = bn_of(b, 4), *w = BN_new();
            BN_mod_mul(w, ba, bb, p, ctx);
            BN_mod_mul(w, w, rinv, p, ctx);
            p256_fe_mul(x, a, b);
            bn_bad += !bn_equals(w, x, 4);
            BN_mod_add(w, ba, bb, p, ctx);
            p256_fe_add(x, a, b);
            bn_bad += !bn_equals(w, x, 4);
            BN_mod_sub(w, ba, bb, p, ctx);
            p256_fe_sub(x, a, b);
            bn_bad += !bn_equals(w, x, 4);
            BN_free(w);
            BN_free(bb);
            BN_free(ba);
        }
        if (i % 16 == 0 && !p256_fe_is_zero(a)) { /* in Montgomery form: a * a^-1 == R */
            p256_fe_inv(x, a);
            p256_fe_mul(y, a, x);
            bad += memcmp(y, P256_ONE_MONT, 32) != 0;
        }
        /* scalars: the portable multiply mod n against BN */
        if (i % 8 == 4) {
            BIGNUM *n = bn_of(P256_N, 4), *ba, *bb, *w = BN_new(), *nrinv = BN_new();
            rnd_below(a, P256_N, 4);
            rnd_below(b, P256_N, 4);
            ba = bn_of(a, 4);
            bb = bn_of(b, 4);
            BN_mod_inverse(nrinv, t, n, ctx);
            BN_mod_mul(w, ba, bb, n, ctx);
            BN_mod_mul(w, w, nrinv, n, ctx);
            p256_mont_mul(x, a, b, &p256_mod_n);
            bn_bad += !bn_equals(w, x, 4);
            BN_free(nrinv);
            BN_free(w);
            BN_free(bb);
            BN_free(ba);
            BN_free(n);
        }
    }
    /* batch inversion against single inversions */
    uint64_t in[40][4], out[40][4], one[4];
    for (int i = 0; i < 40; i++)
        do
            rnd_below(in[i], P256_P, 4);
        while (p256_fe_is_zero(in[i]));
    p256_fe_batch_inv(out, (const uint64_t(*)[4])in, 40);
    for (int i = 0; i < 40; i++) {
        p256_fe_inv(one, in[i]);
        bad += memcmp(one, out[i], 32) != 0;
    }
    p256_fe_batch_inv(in, (const uint64_t(*)[4])in, 40); /* in place */
    bad += memcmp(in, out, sizeof out) != 0;
    CHECK(bad == 0, "field layer: %ld mismatches in %ld rounds", bad, iters);
    CHECK(bn_bad == 0, "field layer against BN: %ld mismatches", bn_bad);
    BN_free(t);
    BN_free(rinv);
    BN_free(p);
    BN_CTX_free(ctx);
}

/* The G table against libcrypto's (2i + 1) 2^(32j) G, and a key table for the key G against it. */
static void test_tables(void)
{
    const EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    BN_CTX *ctx = BN_CTX_new();
    EC_POINT *pt = EC_POINT_new(g);
    BIGNUM *k = BN_new(), *x = BN_new(), *y = BN_new();
    long bad = 0;
    for (int j = 0; j < P256_SPLIT_PARTS; j++)
        for (int i = 0; i < P256_TABLE_POINTS; i++) {
            BN_set_word(k, (BN_ULONG)(2 * i + 1));
            BN_lshift(k, k, 32 * j);
            EC_POINT_mul(g, pt, k, NULL, NULL, ctx);
            EC_POINT_get_affine_coordinates(g, pt, x, y, ctx);
            uint64_t ax[4], ay[4];
            p256_fe_from_mont(ax, P256_G_TABLE[j][i]);
            p256_fe_from_mont(ay, P256_G_TABLE[j][i] + 4);
            bad += !bn_equals(x, ax, 4) || !bn_equals(y, ay, 4);
        }
    CHECK(bad == 0, "G table: %ld points differ from libcrypto's", bad);

    uint8_t gpoint[65];
    EC_POINT_point2oct(g, EC_GROUP_get0_generator(g), POINT_CONVERSION_UNCOMPRESSED, gpoint, 65, ctx);
    struct kbs_p256_key_table *t = malloc(sizeof *t);
    CHECK(t != NULL && kbs_p256_key_precompute(gpoint, 65, t) == KBS_OK, "key table for G");
    if (t != NULL) {
        CHECK(memcmp(t->words + KBS_P256_KEY_TABLE_WORDS - sizeof P256_G_TABLE / 8, P256_G_TABLE,
                     sizeof P256_G_TABLE) == 0,
              "the key table of G is the generated G table");
        uint8_t back[65];
        CHECK(kbs_p256_key_table_point(t, back) == KBS_OK && memcmp(back, gpoint, 65) == 0,
              "the table names its key");
        free(t);
    }

    /* odd multiples of a Jacobian base (Z != 1) against repeated mixed additions */
    struct p256_jacobian base, acc;
    uint64_t out[P256_ODD_MAX_COUNT][8], g_xy[8];
    memcpy(g_xy, P256_G_TABLE[0][0], 64);
    memset(&base, 0, sizeof base);
    p256_point_add_affine(&base, &base, g_xy, 0);
    for (int i = 0; i < 5; i++)
        p256_point_double(&base, &base); /* 32 G, with a Z of its own */
    p256_odd_multiples(out, &base, 1, P256_ODD_MAX_COUNT);
    bad = 0;
    acc = base;
    for (int i = 0; i < P256_ODD_MAX_COUNT; i++) {
        uint64_t zi[4], zi2[4], ax[4], ay[4];
        p256_fe_inv(zi, acc.z);
        p256_fe_sqr(zi2, zi);
        p256_fe_mul(ax, acc.x, zi2);
        p256_fe_mul(zi2, zi2, zi);
        p256_fe_mul(ay, acc.y, zi2);
        bad += memcmp(ax, out[i], 32) != 0 || memcmp(ay, out[i] + 4, 32) != 0;
        /* acc += 2 base as two mixed additions of out[0] (= base, affine) */
        p256_point_add_affine(&acc, &acc, out[0], 0);
        p256_point_add_affine(&acc, &acc, out[0], 0);
    }
    CHECK(bad == 0, "odd multiples against mixed additions: %ld differ", bad);
    /* the exceptional cases of the mixed addition: A + A doubles, A + (-A) is infinity */
    struct p256_jacobian twice, sum;
    memset(&sum, 0, sizeof sum);
    p256_point_add_affine(&sum, &sum, out[0], 0);
    twice = sum;
    p256_point_double(&twice, &twice);
    p256_point_add_affine(&sum, &sum, out[0], 0);
    CHECK(memcmp(&sum, &twice, sizeof sum) == 0, "A + A is 2A");
    p256_point_add_affine(&sum, &twice, out[1], 1);
    p256_point_add_affine(&sum, &sum, out[0], 0);
    CHECK(p256_fe_is_zero(sum.z), "2A - 3A + A is infinity");

    BN_free(k);
    BN_free(x);
    BN_free(y);
    EC_POINT_free(pt);
    BN_CTX_free(ctx);
    EC_GROUP_free((EC_GROUP *)g);
}

/* ---- 3. vectors ---- */

/* The string value of `"name": "..."` on this line, or NULL. */
static const char *json_value(const char *line, const char *name, size_t *len)
{
    char key[32];
    snprintf(key, sizeof key, "\"%s\": \"", name);
    const char *at = strstr(line, key);
    if (at == NULL)
        return NULL;
    at += strlen(key);
    const char *end = strchr(at, '"');
    *len = end ? (size_t)(end - at) : 0;
    return end ? at : NULL;
}

static int is_key_error(int rc)
{
    return rc == KBS_ERR_KEY_LENGTH || rc == KBS_ERR_KEY_FORMAT || rc == KBS_ERR_KEY_NOT_ON_CURVE;
}

/* Cold and table verdicts on one case; the status must agree with libcrypto's too. */
static int verify_both(const uint8_t *key, size_t key_len, const uint8_t *hash, size_t hash_len,
                       const uint8_t r[32], const uint8_t s[32], int *table_rc)
{
    uint8_t digest[32] = {0};
    size_t take = hash_len < 32 ? hash_len : 32;
    memcpy(digest + 32 - take, hash, take);
    int cold = kbs_p256_verify_hash(key, key_len, hash, hash_len, r, s);
    int lib = kbs_p256_verify_digest_libcrypto(key, key_len, digest, r, s);
    CHECK(cold == lib, "cold %d, libcrypto %d", cold, lib);
    struct kbs_p256_key_table *t = malloc(sizeof *t);
    int pre = kbs_p256_key_precompute(key, key_len, t);
    *table_rc = pre == KBS_OK ? kbs_p256_verify_digest_with_table(t, digest, r, s) : pre;
    CHECK(*table_rc == cold, "table %d, cold %d", *table_rc, cold);
    free(t);
    return cold;
}

/* Strict DER SEQUENCE { INTEGER r, INTEGER s } -> 32-byte r, s: 1 if both fit, 0 if they are
 * negative or too wide (-1 for an encoding fault).  Strict = libcrypto re-encodes it identically. */
static int der_rs(const uint8_t *der, size_t len, uint8_t r[32], uint8_t s[32])
{
    const uint8_t *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    int result = -1;
    if (sig != NULL && p == der + len) {
        uint8_t *again = NULL;
        int n = i2d_ECDSA_SIG(sig, &again);
        if (n == (int)len && memcmp(again, der, len) == 0) {
            const BIGNUM *br, *bs;
            ECDSA_SIG_get0(sig, &br, &bs);
            result = !BN_is_negative(br) && !BN_is_negative(bs) && BN_num_bytes(br) <= 32 &&
                     BN_num_bytes(bs) <= 32;
            if (result) {
                BN_bn2binpad(br, r, 32);
                BN_bn2binpad(bs, s, 32);
            }
        }
        OPENSSL_free(again);
    }
    ECDSA_SIG_free(sig);
    ERR_clear_error();
    return result;
}

static void test_wycheproof(const char *dir, const char *file, int der)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/wycheproof/%s", dir, file);
    char *text = read_text(path);
    if (text == NULL) {
        printf("skipped Wycheproof: %s not found (set KBS_VECTORS)\n", path);
        return;
    }
    uint8_t key[65] = {0}, msg[2048], sig[8192], digest[32]; /* sigs up to 4172 bytes (tcId 47) */
    size_t key_len = 0, msg_len = 0, sig_len = 0, len;
    int tests = 0, valid = 0, skipped = 0;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        const char *v;
        if ((v = json_value(line, "uncompressed", &len)) != NULL)
            key_len = unhex(key, sizeof key, v, len);
        else if ((v = json_value(line, "msg", &len)) != NULL)
            msg_len = unhex(msg, sizeof msg, v, len);
        else if ((v = json_value(line, "sig", &len)) != NULL)
            sig_len = unhex(sig, sizeof sig, v, len);
        else if ((v = json_value(line, "result", &len)) != NULL) {
            int want = strncmp(v, "valid", 5) == 0, table_rc;
            uint8_t r[32], s[32];
            tests++;
            valid += want;
            CHECK(key_len == 65 && msg_len != (size_t)-1 && sig_len != (size_t)-1, "%s test %d parses", file, tests);
            EVP_Digest(msg, msg_len, digest, NULL, EVP_sha256(), NULL);
            int usable;
            if (der) {
                usable = der_rs(sig, sig_len, r, s);
            } else {
                usable = sig_len == 64;
                memcpy(r, sig, 32);
                memcpy(s, sig + 32, 32);
            }
            if (usable != 1) { /* an encoding r || s cannot express: must be an invalid case */
                CHECK(!want, "%s test %d: a valid case with an unusable signature", file, tests);
                skipped++;
                continue;
            }
            int rc = verify_both(key, key_len, digest, 32, r, s, &table_rc);
            CHECK((rc == KBS_OK) == want, "%s test %d: status %d, want %s", file, tests, rc,
                  want ? "valid" : "invalid");
        }
    }
    free(text);
    printf("wycheproof %s: %d cases (%d valid, %d skipped for their encoding)\n", file, tests, valid, skipped);
    CHECK(tests == (der ? 484 : 262), "%s case count %d", file, tests);
}

/* Every uncompressed point of the ECDH point-validation file: a key error exactly when invalid. */
static void test_wycheproof_points(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/wycheproof/ecdh_secp256r1_ecpoint_test.json", dir);
    char *text = read_text(path);
    if (text == NULL)
        return;
    uint8_t point[200], zero[32] = {0}, one[32] = {0};
    size_t point_len = 0, len;
    int tests = 0;
    one[31] = 1;
    struct kbs_p256_key_table *t = malloc(sizeof *t);
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        const char *v;
        if ((v = json_value(line, "public", &len)) != NULL)
            point_len = unhex(point, sizeof point, v, len);
        else if ((v = json_value(line, "result", &len)) != NULL && point_len != (size_t)-1) {
            int good = strncmp(v, "valid", 5) == 0 && point_len == 65 && point[0] == 4;
            int rc = kbs_p256_verify_digest(point, point_len, zero, one, one);
            int pre = kbs_p256_key_precompute(point, point_len, t);
            int lib = kbs_p256_verify_digest_libcrypto(point, point_len, zero, one, one);
            CHECK((!is_key_error(rc)) == good && rc == lib && (pre == KBS_OK) == good && (good || pre == rc),
                  "ecpoint test %d: verify %d, precompute %d, libcrypto %d", tests, rc, pre, lib);
            tests++;
        }
    }
    free(t);
    free(text);
    CHECK(tests == 355, "ecpoint cases %d", tests);
}

static void test_cavp(const char *dir, const char *file, int want_records)
{
    struct cavp c;
    if (!cavp_open(&c, dir, file, "P-256"))
        return;
    uint8_t msg[256], key[65] = {4}, r[32], s[32], zero[32] = {0}, one[32] = {0};
    size_t msg_len = 0;
    int records = 0, fits = 1, pkv = strcmp(file, "PKV.rsp") == 0, siggen = strcmp(file, "SigGen.rsp") == 0;
    one[31] = 1;
    while (cavp_next(&c)) {
        const char *v, *result = cavp_field(&c, "Result");
        if ((v = cavp_field(&c, "Msg")) != NULL)
            msg_len = unhex(msg, sizeof msg, v, strlen(v));
        else if ((v = cavp_field(&c, "Qx")) != NULL)
            fits = unhex_int(key + 1, 32, v);
        else if ((v = cavp_field(&c, "Qy")) != NULL)
            fits &= unhex_int(key + 33, 32, v);
        else if ((v = cavp_field(&c, "R")) != NULL)
            CHECK(unhex_int(r, 32, v), "R");
        else if ((v = cavp_field(&c, "S")) != NULL)
            CHECK(unhex_int(s, 32, v), "S");
        /* A record ends at its Result line; SigGen's records (all valid) have none and end at S. */
        if (siggen ? cavp_field(&c, "S") != NULL : result != NULL) {
            int want = siggen || result[0] == 'P', table_rc;
            records++;
            if (pkv) { /* key validation only: out-of-range coordinates do not even fit 32 bytes */
                int rc = fits ? kbs_p256_verify_digest(key, 65, zero, one, one) : KBS_ERR_KEY_NOT_ON_CURVE;
                CHECK((!is_key_error(rc)) == want, "PKV record %d: status %d", records, rc);
                continue;
            }
            uint8_t hash[64];
            unsigned hash_len = 0;
            CHECK(cavp_hash(&c, msg, msg_len, hash, &hash_len), "hash of %s", c.section);
            int rc = verify_both(key, 65, hash, hash_len, r, s, &table_rc);
            CHECK((rc == KBS_OK) == want, "%s %s record %d: status %d", file, c.section, records, rc);
        }
    }
    CHECK(records == want_records, "%s P-256 records: %d", file, records);
}

/* ---- 4. differential loop against libcrypto ---- */

struct keypair {
    EC_KEY *key;
    uint8_t point[65];
    struct kbs_p256_key_table *table;
};

static const EC_GROUP *group(void)
{
    static EC_GROUP *g; /* test state, set once */
    if (g == NULL)
        g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    return g;
}

static void encode(const EC_POINT *pt, uint8_t out[65])
{
    if (EC_POINT_point2oct(group(), pt, POINT_CONVERSION_UNCOMPRESSED, out, 65, NULL) != 65) {
        fprintf(stderr, "point2oct failed\n");
        exit(2);
    }
}

static void make_key(struct keypair *kp)
{
    kp->key = new_ec_key(NID_X9_62_prime256v1, kp->point, 65);
    kp->table = malloc(sizeof *kp->table);
    if (kp->table == NULL || kbs_p256_key_precompute(kp->point, 65, kp->table) != KBS_OK) {
        fprintf(stderr, "precompute failed\n");
        exit(2);
    }
}

/* One mutation of a valid (key, digest, r, s); *key_len may change (encodings of other lengths). */
static void mutate(uint8_t point[66], size_t *key_len, uint8_t digest[32], uint8_t r[32], uint8_t s[32],
                   const struct keypair *other)
{
    switch (rnd() % 16) {
    case 0: r[31 - rnd() % 32] ^= (uint8_t)(1u << rnd() % 8); break;
    case 1: s[31 - rnd() % 32] ^= (uint8_t)(1u << rnd() % 8); break;
    case 2: digest[rnd() % 32] ^= (uint8_t)(1u << rnd() % 8); break;
    case 3: edge_scalar(r, P256_N, P256_P, 4); break;
    case 4: edge_scalar(s, P256_N, P256_P, 4); break;
    case 5: memcpy(point, other->point, 65); break;
    case 6: point[1 + rnd() % 64] ^= (uint8_t)(1u << rnd() % 8); break; /* off the curve */
    case 7: ec_to_be_n(point + 1, P256_P, 4); break;    /* x = p */
    case 8: memset(point + 33, 0xff, 32); break;        /* y >= p */
    case 9: edge_scalar(digest, P256_N, P256_P, 4); break;                 /* e = 0, n, ... */
    case 10: { uint8_t t[32]; memcpy(t, r, 32); memcpy(r, s, 32); memcpy(s, t, 32); break; }
    case 11: *key_len = 1; point[0] = 0; break;              /* the encoding of infinity */
    case 12: *key_len = 33; point[0] = 2 + (rnd() & 1); break; /* compressed: refused */
    case 13: memset(point, 0, 65); point[0] = 4; break;      /* (0, 0) */
    case 14: point[0] = (uint8_t[]){0, 2, 3, 6, 7}[rnd() % 5]; break;
    default: break; /* valid as signed */
    }
}

static long differential_case(const uint8_t *point, size_t key_len, const uint8_t digest[32], const uint8_t r[32],
                              const uint8_t s[32], int expect, const char *what)
{
    int want = kbs_p256_verify_digest_libcrypto(point, key_len, digest, r, s);
    int got = kbs_p256_verify_digest(point, key_len, digest, r, s);
    uint8_t longer[48];
    memcpy(longer, digest, 32);
    rnd_bytes(longer + 32, 16);
    int by_hash = kbs_p256_verify_hash(point, key_len, longer, 32 + rnd() % 17, r, s);
    int by_table = got;
    if (!is_key_error(want)) {
        struct kbs_p256_key_table *t = malloc(sizeof *t);
        int pre = kbs_p256_key_precompute(point, key_len, t);
        by_table = pre == KBS_OK ? kbs_p256_verify_digest_with_table(t, digest, r, s) : pre;
        free(t);
    }
    int ok = got == want && by_hash == want && by_table == want && (expect < 0 || (want == KBS_OK) == expect);
    if (!ok)
        fprintf(stderr, "%s: libcrypto %d, cold %d, hash %d, table %d, expected %d\n", what, want, got, by_hash,
                by_table, expect);
    return !ok;
}

static void test_differential(long iters, struct keypair *keys, int nkeys)
{
    long bad = 0, valid = 0;
    for (long i = 0; i < iters; i++) {
        const struct keypair *kp = &keys[rnd() % (unsigned)nkeys], *other = &keys[rnd() % (unsigned)nkeys];
        uint8_t digest[32], r[32], s[32], point[66];
        size_t key_len = 65;
        rnd_bytes(digest, 32);
        if (rnd() % 4 == 0)
            memset(digest, (rnd() & 1) ? 0xff : 0, 1 + rnd() % 31); /* runs of zeros or ones */
        memcpy(point, kp->point, 65);
        sign_digest(kp->key, digest, 32, r, s);
        int mutated = rnd() % 3 != 0;
        if (mutated)
            mutate(point, &key_len, digest, r, s, other);
        valid += kbs_p256_verify_digest_libcrypto(point, key_len, digest, r, s) == KBS_OK;
        bad += differential_case(point, key_len, digest, r, s, mutated ? -1 : 1, "random case");
        /* the same key's cached table must agree whatever the signature */
        if (key_len == 65 && memcmp(point, kp->point, 65) == 0) {
            int cold = kbs_p256_verify_digest(point, 65, digest, r, s);
            bad += kbs_p256_verify_digest_with_table(kp->table, digest, r, s) != cold;
        }
    }
    printf("differential: %ld random cases (%ld valid), %ld disagreements\n", iters, valid, bad);
    CHECK(bad == 0, "%ld disagreements with libcrypto", bad);
}

/* Signatures built from R: with u1 = e/s, u2 = r/s and R chosen, Q = (R - u1 G) / u2. */
static void test_crafted(long rounds)
{
    const EC_GROUP *g = group();
    const BIGNUM *n = EC_GROUP_get0_order(g);
    BN_CTX *ctx = BN_CTX_new();
    BIGNUM *x = BN_new(), *e = BN_new(), *bs = BN_new(), *br = BN_new(), *sinv = BN_new(), *u1 = BN_new(),
           *u2 = BN_new(), *t = BN_new();
    EC_POINT *pr = EC_POINT_new(g), *q = EC_POINT_new(g);
    long bad = 0, large_x = 0;
    for (long round = 0; round < rounds; round++) {
        uint8_t point[65], digest[32], r[32], s[32];
        rnd_bytes(digest, 32);
        BN_bin2bn(digest, 32, e);
        BN_nnmod(e, e, n, ctx);
        BN_rand_range(bs, n);
        if (BN_is_zero(bs) || BN_is_zero(e))
            continue;
        BN_mod_inverse(sinv, bs, n, ctx);
        BN_mod_mul(u1, e, sinv, n, ctx);
        BN_bn2binpad(bs, s, 32);

        /* x(R) = n + j, in [n, p): valid with r = j, out of range with r = n + j */
        for (unsigned j = 1 + (unsigned)(rnd() % 1000);; j++) {
            BN_copy(x, n);
            BN_add_word(x, j);
            if (EC_POINT_set_compressed_coordinates(g, pr, x, (int)(j & 1), ctx) == 1) {
                BN_set_word(br, j);
                break;
            }
            ERR_clear_error();
        }
        BN_mod_mul(u2, br, sinv, n, ctx);
        BN_mod_inverse(t, u2, n, ctx);
        EC_POINT_mul(g, q, NULL, EC_GROUP_get0_generator(g), u1, ctx);
        EC_POINT_invert(g, q, ctx);
        EC_POINT_add(g, q, pr, q, ctx);
        EC_POINT_mul(g, q, NULL, q, t, ctx);
        if (!EC_POINT_is_at_infinity(g, q)) {
            encode(q, point);
            BN_bn2binpad(br, r, 32);
            bad += differential_case(point, 65, digest, r, s, 1, "x(R) in [n, p), r = x - n");
            BN_bn2binpad(x, r, 32);
            bad += differential_case(point, 65, digest, r, s, 0, "x(R) in [n, p), r = x");
            large_x++;
        }

        /* R = infinity: Q = -(e / r) G for a small r */
        BN_set_word(br, 1 + rnd() % 1000);
        BN_mod_inverse(t, br, n, ctx);
        BN_mod_mul(t, t, e, n, ctx);
        EC_POINT_mul(g, q, t, NULL, NULL, ctx);
        EC_POINT_invert(g, q, ctx);
        encode(q, point);
        BN_bn2binpad(br, r, 32);
        bad += differential_case(point, 65, digest, r, s, 0, "u1 G + u2 Q = infinity");

        /* u1 G == u2 Q: R = 2 u1 G, r = x(R) mod n, Q = (e / r) G (the ladder meets a doubling) */
        BN_mod_add(t, u1, u1, n, ctx);
        EC_POINT_mul(g, pr, t, NULL, NULL, ctx);
        EC_POINT_get_affine_coordinates(g, pr, x, NULL, ctx);
        BN_nnmod(br, x, n, ctx);
        BN_mod_inverse(t, br, n, ctx);
        BN_mod_mul(t, t, e, n, ctx);
        EC_POINT_mul(g, q, t, NULL, NULL, ctx);
        encode(q, point);
        BN_bn2binpad(br, r, 32);
        bad += differential_case(point, 65, digest, r, s, 1, "u1 G == u2 Q");
        /* and Q = G, Q = -G: the key tables then hold the G table's points */
        encode(EC_GROUP_get0_generator(g), point);
        bad += differential_case(point, 65, digest, r, s, -1, "Q = G");
    }
    printf("crafted: %ld rounds (%ld with x(R) >= n), %ld disagreements\n", rounds, large_x, bad);
    CHECK(bad == 0 && large_x > 0, "crafted signatures: %ld disagreements", bad);
    EC_POINT_free(q);
    EC_POINT_free(pr);
    BN_free(t);
    BN_free(u2);
    BN_free(u1);
    BN_free(sinv);
    BN_free(br);
    BN_free(bs);
    BN_free(e);
    BN_free(x);
    BN_CTX_free(ctx);
}

static void test_api_edges(const struct keypair *kp)
{
    uint8_t digest[32] = {1}, r[32], s[32], back[65];
    sign_digest(kp->key, digest, 32, r, s);
    struct kbs_p256_key_table *blank = calloc(1, sizeof *blank);
    CHECK(kbs_p256_verify_digest_with_table(blank, digest, r, s) == KBS_ERR_INTERNAL, "a table never built");
    CHECK(kbs_p256_key_table_point(blank, back) == KBS_ERR_INTERNAL, "a table never built has no key");
    CHECK(kbs_p256_key_precompute(kp->point, 64, blank) == KBS_ERR_KEY_LENGTH, "short key refused");
    CHECK(kbs_p256_verify_digest_with_table(blank, digest, r, s) == KBS_ERR_INTERNAL, "a refused key leaves no table");
    CHECK(kbs_p256_verify_digest_with_table(NULL, digest, r, s) == KBS_ERR_NULL_ARGUMENT, "NULL table");
    CHECK(kbs_p256_verify_digest_with_table(kp->table, NULL, r, s) == KBS_ERR_NULL_ARGUMENT, "NULL digest");
    CHECK(kbs_p256_key_precompute(NULL, 65, blank) == KBS_ERR_NULL_ARGUMENT, "NULL key");
    CHECK(kbs_p256_key_precompute(kp->point, 65, NULL) == KBS_ERR_NULL_ARGUMENT, "NULL output");
    CHECK(kbs_p256_verify_digest(kp->point, 65, NULL, r, s) == KBS_ERR_NULL_ARGUMENT, "NULL digest (cold)");
    CHECK(kbs_p256_verify_hash(kp->point, 65, NULL, 0, r, s) == kbs_p256_verify_hash(kp->point, 65, digest, 0, r, s),
          "an empty hash is e = 0");
    CHECK(kbs_p256_key_table_point(kp->table, back) == KBS_OK && memcmp(back, kp->point, 65) == 0,
          "the table names its key");
    CHECK(kbs_p256_verify_digest_with_table(kp->table, digest, r, s) == KBS_OK, "table verifies");
    free(blank);
}

int main(void)
{
    const char *iters_env = getenv("KBS_P256_DIFF_ITERS"), *seed_env = getenv("KBS_P256_SEED");
    const char *vectors = getenv("KBS_VECTORS");
    const char *dir = vectors ? vectors : "../shared/vectors";
    long iters = iters_env ? atol(iters_env) : 400;
    rng_state = seed_env ? strtoull(seed_env, NULL, 0) | 1 : 0x2545f4914f6cdd1du;
    printf("p256: seed 0x%016llx\n", (unsigned long long)rng_state);

    test_wnaf(3000);
    test_modinv(2000);
    test_constants();
    test_field(20000);
    test_tables();
    test_wycheproof(dir, "ecdsa_secp256r1_sha256_p1363_test.json", 0);
    test_wycheproof(dir, "ecdsa_secp256r1_sha256_test.json", 1);
    test_wycheproof_points(dir);
    test_cavp(dir, "SigVer.rsp", 75);
    test_cavp(dir, "SigGen.rsp", 75);
    test_cavp(dir, "PKV.rsp", 12);

    enum { NKEYS = 4 };
    struct keypair keys[NKEYS];
    for (int i = 0; i < NKEYS; i++)
        make_key(&keys[i]);
    test_api_edges(&keys[0]);
    test_differential(iters, keys, NKEYS);
    test_crafted(iters / 20 + 4);
    for (int i = 0; i < NKEYS; i++) {
        EC_KEY_free(keys[i].key);
        free(keys[i].table);
    }
    printf("%ld passed, %ld failed\n", passed, failed);
    return failed != 0;
}
