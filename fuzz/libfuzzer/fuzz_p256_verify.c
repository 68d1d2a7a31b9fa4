/*
 * Differential libFuzzer harness of the C core's P-256 verification against OpenSSL libcrypto.
 *
 * Entry points: kbs_p256_verify_digest, kbs_p256_verify_hash, kbs_p256_verify_digest_libcrypto,
 * kbs_p256_key_precompute, kbs_p256_verify_digest_with_table, kbs_p256_key_table_point, kbs_sha256.
 *
 * On every (key, hash, signature) the fast core's digest path, its any-length hash path, its key-table
 * path (the table built for the key, whenever the key is valid) and the libcrypto path must give the
 * same status, and accept exactly when libcrypto's EVP verify (fuzz_p256.h, a path that shares nothing
 * with native/) accepts; the status must be a key error exactly when EVP cannot load the key (and the
 * table builder must then refuse the key with that status), and KBS_ERR_SIG_RANGE exactly when r or s
 * is outside [1, n).  The first byte picks:
 *   0 raw:      key, hash (0..64 bytes), r, s as given, or a valid key d*G with a random signature;
 *   1 signed:   a key and nonce from the input, the hash signed here, then one mutation (none and
 *               s -> n - s must verify; bit flips, other or negated keys, r + n, edge scalars, swaps);
 *   2 crafted:  valid signatures whose x(R) lies in [n, p), R = infinity, u1*G == u2*Q.
 * And kbs_sha256 of the input against EVP's streaming SHA-256.
 */
#include "fuzz_p256.h"

enum { MODE_RAW, MODE_SIGNED, MODE_CRAFTED, MODES };
enum expect { EXPECT_ANY, EXPECT_ACCEPT, EXPECT_REJECT };

static void dump(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len, const uint8_t *r,
                 const uint8_t *s)
{
    fuzz_hex("key", point, point_len);
    fuzz_hex("hash", hash, hash_len);
    fuzz_hex("r", r, 32);
    fuzz_hex("s", s, 32);
}

/* The status through a key table for the key, or the builder's refusal of the key; the table must
 * name the key it was built for. */
static int table_status(const uint8_t *point, size_t point_len, const uint8_t digest[32], const uint8_t r[32],
                        const uint8_t s[32])
{
    struct kbs_p256_key_table *table = malloc(sizeof *table);
    uint8_t named[65];
    if (table == NULL)
        fuzz_fail("out of memory");
    int rc = kbs_p256_key_precompute(point, point_len, table);
    if (rc == KBS_OK) {
        if (kbs_p256_key_table_point(table, named) != KBS_OK || memcmp(named, point, 65) != 0)
            fuzz_fail("the key table does not name its key");
        rc = kbs_p256_verify_digest_with_table(table, digest, r, s);
    } else if (kbs_p256_verify_digest_with_table(table, digest, r, s) != KBS_ERR_INTERNAL) {
        fuzz_fail("a refused key left a usable table");
    }
    free(table);
    return rc;
}

static void check(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len, const uint8_t r[32],
                  const uint8_t s[32], enum expect expect)
{
    uint8_t digest[32] = {0};
    size_t take32 = hash_len < 32 ? hash_len : 32;
    if (take32)
        memcpy(digest + 32 - take32, hash, take32);

    int by_hash = kbs_p256_verify_hash(point, point_len, hash_len ? hash : NULL, hash_len, r, s);
    int by_digest = kbs_p256_verify_digest(point, point_len, digest, r, s);
    int by_lib = kbs_p256_verify_digest_libcrypto(point, point_len, digest, r, s);
    int oracle = p256_openssl_verify(point, point_len, hash, hash_len, r, s);
    int by_table = table_status(point, point_len, digest, r, s);
    if (by_hash != by_digest || by_lib != by_digest || by_table != by_digest) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("statuses differ: verify_hash %d, verify_digest %d, verify_digest_libcrypto %d, with_table %d",
                  by_hash, by_digest, by_lib, by_table);
    }
    if ((by_digest == KBS_OK) != oracle) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("kbs_p256_verify_digest %d, OpenSSL EVP verify %s", by_digest, oracle ? "accepts" : "rejects");
    }
    EVP_PKEY *key = p256_evp_key(point, point_len);
    int key_error = by_digest == KBS_ERR_KEY_LENGTH || by_digest == KBS_ERR_KEY_FORMAT ||
                    by_digest == KBS_ERR_KEY_NOT_ON_CURVE;
    if (key_error != (key == NULL)) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("status %d, but EVP %s the key", by_digest, key ? "loads" : "refuses");
    }
    EVP_PKEY_free(key);
    if (!key_error && (by_digest == KBS_ERR_SIG_RANGE) != !(p256_in_range(r) && p256_in_range(s))) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("status %d disagrees with the range of r and s", by_digest);
    }
    if ((expect == EXPECT_ACCEPT && by_digest != KBS_OK) || (expect == EXPECT_REJECT && by_digest == KBS_OK)) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("status %d, but this signature %s", by_digest, expect == EXPECT_ACCEPT ? "is valid" : "must fail");
    }
}

static void raw_case(struct reader *rd, BN_CTX *ctx)
{
    uint8_t flags = take_u8(rd), hash[64], r[32], s[32], key[66];
    size_t hash_len = take_u8(rd) % 65;
    static const size_t lengths[4] = {65, 65, 64, 66};
    size_t key_len = lengths[(flags >> 1) & 3];
    take(rd, key, sizeof key);
    take(rd, hash, sizeof hash);
    take(rd, r, 32);
    take(rd, s, 32);
    if (flags & 1) { /* a valid key, so the signature checks run */
        BIGNUM *d = p256_scalar_from(key + 1, ctx);
        p256_public_key(d, key, ctx);
        BN_free(d);
    }
    check(key, key_len, hash, hash_len, r, s, EXPECT_ANY);
}

static void flip_bit(uint8_t *buf, size_t len, unsigned bit)
{
    if (len)
        buf[(bit / 8) % len] ^= (uint8_t)(1u << (bit % 8));
}

static void edge_scalar(uint8_t out[32], unsigned which)
{
    const BIGNUM *n = EC_GROUP_get0_order(p256_group());
    BIGNUM *v = BN_new();
    if (v == NULL)
        fuzz_fail("BN_new");
    switch (which % 7) {
    case 0: BN_zero(v); break;
    case 1: BN_copy(v, n); break;
    case 2: BN_copy(v, n); BN_sub_word(v, 1); break;
    case 3: BN_copy(v, n); BN_add_word(v, 1); break;
    case 4: BN_one(v); break;
    case 5: BN_one(v); BN_lshift(v, v, 256); BN_sub_word(v, 1); break;
    default: BN_set_word(v, 2 + which / 7); break;
    }
    bn_to32(out, v);
    BN_free(v);
}

static void signed_case(struct reader *rd, BN_CTX *ctx)
{
    uint8_t dseed[32], kseed[32], other[32], hash[64], r[32], s[32], key[65];
    uint8_t flags = take_u8(rd), mutation = take_u8(rd);
    uint16_t arg = take_u16(rd);
    take(rd, dseed, 32);
    take(rd, kseed, 32);
    take(rd, hash, 64);
    take(rd, other, 32);
    size_t hash_len = (flags & 1) ? (size_t)(flags >> 1) % 65 : 32;
    const BIGNUM *n = EC_GROUP_get0_order(p256_group());

    BIGNUM *d = p256_scalar_from(dseed, ctx), *k = p256_scalar_from(kseed, ctx);
    p256_public_key(d, key, ctx);
    int valid = p256_sign_with_nonce(d, k, hash, hash_len, r, s, ctx);
    BN_free(k);
    BN_free(d);
    if (!valid)
        return;

    enum expect expect = EXPECT_ANY;
    switch (mutation % 15) {
    case 0: case 1: case 2: expect = EXPECT_ACCEPT; break;
    case 3: { /* (r, n - s) is the other valid signature */
        BIGNUM *bs = BN_bin2bn(s, 32, NULL);
        if (bs == NULL || BN_sub(bs, n, bs) != 1)
            fuzz_fail("BN");
        bn_to32(s, bs);
        BN_free(bs);
        expect = EXPECT_ACCEPT;
        break;
    }
    case 4: flip_bit(r, 32, arg); expect = EXPECT_REJECT; break;
    case 5: flip_bit(s, 32, arg); expect = EXPECT_REJECT; break;
    case 6:
        if (hash_len == 0)
            return;
        flip_bit(hash, hash_len < 32 ? hash_len : 32, arg);
        expect = EXPECT_REJECT;
        break;
    case 7: flip_bit(key + 1, 64, arg); expect = EXPECT_REJECT; break;
    case 8: { BIGNUM *d2 = p256_scalar_from(other, ctx); p256_public_key(d2, key, ctx); BN_free(d2); break; }
    case 9: { /* r + n, when it still fits 32 bytes: out of range */
        BIGNUM *br = BN_bin2bn(r, 32, NULL);
        if (br == NULL || BN_add(br, br, n) != 1)
            fuzz_fail("BN");
        if (BN_num_bytes(br) <= 32) {
            bn_to32(r, br);
            expect = EXPECT_REJECT;
        }
        BN_free(br);
        break;
    }
    case 10: edge_scalar(r, arg); break;
    case 11: edge_scalar(s, arg); break;
    case 12: { uint8_t t[32]; memcpy(t, r, 32); memcpy(r, s, 32); memcpy(s, t, 32); break; }
    case 13: { /* the negated key (x, p - y) */
        const EC_GROUP *g = p256_group();
        EC_POINT *q = EC_POINT_new(g);
        if (q == NULL || EC_POINT_oct2point(g, q, key, 65, ctx) != 1 || EC_POINT_invert(g, q, ctx) != 1)
            fuzz_fail("EC_POINT_invert");
        p256_point_encode(q, key, ctx);
        EC_POINT_free(q);
        break;
    }
    default: /* a longer hash: bytes past the 32nd must not matter */
        if (hash_len == 32) {
            hash_len = 32 + arg % 33;
            expect = EXPECT_ACCEPT;
        }
        break;
    }
    check(key, sizeof key, hash, hash_len, r, s, expect);
}

/* Signatures built backwards from R: with u1 = e/s and u2 = r/s, choose R and solve Q = (R - u1 G) / u2. */
static void crafted_case(struct reader *rd, BN_CTX *ctx)
{
    const EC_GROUP *g = p256_group();
    const BIGNUM *n = EC_GROUP_get0_order(g);
    uint8_t kind = take_u8(rd), t = take_u8(rd), sseed[32], hash[32], key[65], r[32], s[32];
    take(rd, sseed, 32);
    take(rd, hash, 32);
    BIGNUM *bs = p256_scalar_from(sseed, ctx), *e = p256_hash_scalar(hash, 32), *br = BN_new(), *x = BN_new(),
           *sinv = BN_new(), *u1 = BN_new(), *u2 = BN_new(), *tmp = BN_new();
    EC_POINT *pr = EC_POINT_new(g), *q = EC_POINT_new(g);
    if (br == NULL || x == NULL || sinv == NULL || u1 == NULL || u2 == NULL || tmp == NULL || pr == NULL || q == NULL ||
        BN_nnmod(e, e, n, ctx) != 1 || BN_mod_inverse(sinv, bs, n, ctx) == NULL || BN_mod_mul(u1, e, sinv, n, ctx) != 1)
        fuzz_fail("BN");
    enum expect expect = EXPECT_ACCEPT;
    int have = 0;
    switch (kind % 4) {
    case 0:
    case 1: /* x(R) = n + j: r = j; kind 1 sends r = n + j itself (out of range) */
        for (unsigned j = 1u + t; j < 1u + t + 64 && !have; j++) {
            if (BN_copy(x, n) == NULL || BN_add_word(x, j) != 1)
                fuzz_fail("BN");
            have = EC_POINT_set_compressed_coordinates(g, pr, x, (int)(j & 1), ctx) == 1;
            ERR_clear_error();
            if (have && BN_set_word(br, j) != 1)
                fuzz_fail("BN");
        }
        if (!have)
            break;
        if (BN_mod_mul(u2, br, sinv, n, ctx) != 1 || BN_mod_inverse(tmp, u2, n, ctx) == NULL ||
            EC_POINT_mul(g, q, u1, NULL, NULL, ctx) != 1 || EC_POINT_invert(g, q, ctx) != 1 ||
            EC_POINT_add(g, q, pr, q, ctx) != 1 || EC_POINT_mul(g, q, NULL, q, tmp, ctx) != 1)
            fuzz_fail("EC arithmetic");
        if (kind % 4 == 1) {
            if (BN_copy(br, x) == NULL)
                fuzz_fail("BN");
            expect = EXPECT_REJECT;
        }
        break;
    case 2: /* R = infinity: Q = -(e / r) G */
        if (BN_set_word(br, 1u + t) != 1 || BN_is_zero(e))
            break;
        if (BN_mod_inverse(tmp, br, n, ctx) == NULL || BN_mod_mul(tmp, tmp, e, n, ctx) != 1 ||
            EC_POINT_mul(g, q, tmp, NULL, NULL, ctx) != 1 || EC_POINT_invert(g, q, ctx) != 1)
            fuzz_fail("EC arithmetic");
        have = 1;
        expect = EXPECT_REJECT;
        break;
    default: /* u1 G == u2 Q: R = 2 u1 G, r = x(R) mod n, Q = (e / r) G */
        if (BN_is_zero(e) || BN_mod_add(tmp, u1, u1, n, ctx) != 1 || EC_POINT_mul(g, pr, tmp, NULL, NULL, ctx) != 1 ||
            EC_POINT_get_affine_coordinates(g, pr, x, NULL, ctx) != 1 || BN_nnmod(br, x, n, ctx) != 1 ||
            BN_is_zero(br))
            break;
        if (BN_mod_inverse(tmp, br, n, ctx) == NULL || BN_mod_mul(tmp, tmp, e, n, ctx) != 1 ||
            EC_POINT_mul(g, q, tmp, NULL, NULL, ctx) != 1)
            fuzz_fail("EC arithmetic");
        have = 1;
        break;
    }
    if (have && !EC_POINT_is_at_infinity(g, q)) {
        p256_point_encode(q, key, ctx);
        bn_to32(s, bs);
        if (BN_num_bytes(br) <= 32) {
            bn_to32(r, br);
            check(key, sizeof key, hash, 32, r, s, expect);
        }
    }
    ERR_clear_error();
    EC_POINT_free(q);
    EC_POINT_free(pr);
    BN_free(tmp);
    BN_free(u2);
    BN_free(u1);
    BN_free(sinv);
    BN_free(x);
    BN_free(br);
    BN_free(e);
    BN_free(bs);
}

static void check_sha256(const uint8_t *data, size_t size)
{
    uint8_t ours[32], theirs[32];
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (kbs_sha256(size ? data : NULL, size, ours) != KBS_OK)
        fuzz_fail("kbs_sha256 failed");
    evp_sha256_2(data, cut, data + cut, size - cut, theirs);
    if (memcmp(ours, theirs, 32) != 0)
        fuzz_fail("kbs_sha256 differs from EVP over %zu bytes", size);
    if (kbs_sha256(NULL, 1, ours) != KBS_ERR_NULL_ARGUMENT || kbs_sha256(data, size, NULL) != KBS_ERR_NULL_ARGUMENT)
        fuzz_fail("kbs_sha256 NULL arguments");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader rd = {data, size};
    BN_CTX *ctx = BN_CTX_new();
    if (ctx == NULL)
        fuzz_fail("BN_CTX_new");
    check_sha256(data, size);
    switch (take_u8(&rd) % MODES) {
    case MODE_RAW: raw_case(&rd, ctx); break;
    case MODE_SIGNED: signed_case(&rd, ctx); break;
    default: crafted_case(&rd, ctx); break;
    }
    BN_CTX_free(ctx);
    return 0;
}
