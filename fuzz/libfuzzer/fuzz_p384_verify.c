/*
 * Differential libFuzzer harness of the fast P-384 core against OpenSSL libcrypto.
 *
 * Entry points: kbs_p384_verify_digest, kbs_p384_verify_hash, kbs_p384_key_precompute,
 * kbs_p384_verify_digest_with_table, kbs_p384_verify_digest_libcrypto, kbs_p384_implementation.
 *
 * On every (key, hash, signature) the fast core's cold path, hash path and table path must give
 * the same status as the project's libcrypto wrapper, and accept exactly when libcrypto's EVP
 * verify (fuzz_common.h, a path that shares nothing with ecdsa_p384.c) accepts; otherwise abort.
 * The first byte picks how the rest is read:
 *   0 raw:      key, hash (0..64 bytes), r, s as given (off-curve keys, wrong lengths, ranges),
 *               or a valid key d*G with a random signature;
 *   1 signed:   a key and a nonce derived from the input, the hash signed by libcrypto, then one
 *               mutation (none and s -> n - s must verify; bit flips, other or negated keys,
 *               r + n, edge scalars, swapped r and s, e >= n, a longer hash);
 *   2 crafted:  valid signatures whose x(R) lies in [n, p) (the r + n comparison), signatures
 *               whose R is infinity, and ones whose ladder meets u1*G == u2*Q.
 */
#include "fuzz_common.h"

enum { MODE_RAW, MODE_SIGNED, MODE_CRAFTED, MODES };
enum expect { EXPECT_ANY, EXPECT_ACCEPT, EXPECT_REJECT };

static const struct kbs_p384_key_table never_precomputed; /* all zero: no magic */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *impl = kbs_p384_implementation();
    if (impl == NULL || (strcmp(impl, "mulx/adcx/adox asm") != 0 && strcmp(impl, "portable C (unsigned __int128)") != 0))
        fuzz_fail("kbs_p384_implementation: %s", impl ? impl : "NULL");
    fprintf(stderr, "fuzz_p384_verify: field multiply = %s\n", impl);
    return 0;
}

static void dump(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len, const uint8_t *r,
                 const uint8_t *s)
{
    fuzz_hex("key", point, point_len);
    fuzz_hex("hash", hash, hash_len);
    fuzz_hex("r", r, 48);
    fuzz_hex("s", s, 48);
}

static int is_key_error(int rc)
{
    return rc == KBS_ERR_KEY_LENGTH || rc == KBS_ERR_KEY_FORMAT || rc == KBS_ERR_KEY_NOT_ON_CURVE;
}

/* Every path on one input; abort on any disagreement. */
static void check(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len, const uint8_t r[48],
                  const uint8_t s[48], enum expect expect)
{
    /* The 48-byte digest that means the same e: right-aligned if shorter, cut if longer. */
    uint8_t digest[48] = {0};
    size_t take48 = hash_len < 48 ? hash_len : 48;
    if (take48)
        memcpy(digest + 48 - take48, hash, take48);

    int fast = kbs_p384_verify_hash(point, point_len, hash_len ? hash : NULL, hash_len, r, s);
    int oracle = openssl_verify(point, point_len, hash, hash_len, r, s);
    if ((fast == KBS_OK) != oracle) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("kbs_p384_verify_hash %d, OpenSSL EVP verify %s", fast, oracle ? "accepts" : "rejects");
    }
    if ((expect == EXPECT_ACCEPT && fast != KBS_OK) || (expect == EXPECT_REJECT && fast == KBS_OK)) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("kbs_p384_verify_hash %d, but this signature %s", fast,
                  expect == EXPECT_ACCEPT ? "is valid" : "must be refused");
    }
    int cold = kbs_p384_verify_digest(point, point_len, digest, r, s);
    int lib = kbs_p384_verify_digest_libcrypto(point, point_len, digest, r, s);
    if (cold != fast || lib != fast) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("statuses differ: verify_hash %d, verify_digest %d, verify_digest_libcrypto %d", fast, cold, lib);
    }

    struct kbs_p384_key_table *table = malloc(sizeof *table); /* exact block: ASan sees overreads */
    if (table == NULL)
        fuzz_fail("out of memory");
    int pre = kbs_p384_key_precompute(point, point_len, table);
    if (pre == KBS_OK) {
        int tab = kbs_p384_verify_digest_with_table(table, digest, r, s);
        if (tab != fast) {
            dump(point, point_len, hash, hash_len, r, s);
            fuzz_fail("verify_digest_with_table %d, verify_hash %d", tab, fast);
        }
    } else if (!is_key_error(pre) || pre != fast) {
        dump(point, point_len, hash, hash_len, r, s);
        fuzz_fail("kbs_p384_key_precompute %d, verify_hash %d", pre, fast);
    }
    free(table);
    if (kbs_p384_verify_digest_with_table(&never_precomputed, digest, r, s) != KBS_ERR_INTERNAL)
        fuzz_fail("a table never precomputed was used");
}

static void raw_case(struct reader *rd, BN_CTX *ctx)
{
    uint8_t flags = take_u8(rd), hash[64], r[48], s[48], key[98];
    size_t hash_len = take_u8(rd) % 65;
    static const size_t lengths[4] = {97, 97, 96, 98};
    size_t key_len = lengths[(flags >> 1) & 3];
    take(rd, key, 98);
    take(rd, hash, sizeof hash);
    take(rd, r, 48);
    take(rd, s, 48);
    if (flags & 1) { /* a valid key, so the signature checks run */
        BIGNUM *d = scalar_from(key + 1, ctx);
        public_key(d, key, ctx);
        BN_free(d);
    }
    check(key, key_len, hash, hash_len, r, s, EXPECT_ANY);
}

static void flip_bit(uint8_t *buf, size_t len, unsigned bit)
{
    if (len)
        buf[(bit / 8) % len] ^= (uint8_t)(1u << (bit % 8));
}

/* One of the values every range check must get right. */
static void edge_scalar(uint8_t out[48], unsigned which)
{
    const BIGNUM *n = EC_GROUP_get0_order(p384_group());
    BIGNUM *v = BN_new();
    if (v == NULL)
        fuzz_fail("BN_new");
    switch (which % 7) {
    case 0: BN_zero(v); break;
    case 1: BN_copy(v, n); break;
    case 2: BN_copy(v, n); BN_sub_word(v, 1); break;
    case 3: BN_copy(v, n); BN_add_word(v, 1); break;
    case 4: BN_one(v); break;
    case 5: BN_one(v); BN_lshift(v, v, 384); BN_sub_word(v, 1); break; /* 2^384 - 1 */
    default: BN_set_word(v, 2 + which / 7); break;
    }
    bn_to48(out, v);
    BN_free(v);
}

static void signed_case(struct reader *rd, BN_CTX *ctx)
{
    uint8_t dseed[48], kseed[48], other[48], hash[64], r[48], s[48], key[97];
    uint8_t flags = take_u8(rd), mutation = take_u8(rd);
    uint16_t arg = take_u16(rd);
    take(rd, dseed, 48);
    take(rd, kseed, 48);
    take(rd, hash, 64);
    take(rd, other, 48);
    size_t hash_len = (flags & 1) ? (size_t)(flags >> 1) % 65 : 48;
    const BIGNUM *n = EC_GROUP_get0_order(p384_group());

    if (mutation % 16 == 15) { /* e >= n: the hash is n + arg, reduced only inside ECDSA */
        BIGNUM *e = BN_dup(n);
        if (e == NULL || BN_add_word(e, arg) != 1)
            fuzz_fail("BN");
        bn_to48(hash, e);
        hash_len = 48;
        BN_free(e);
    }
    BIGNUM *d = scalar_from(dseed, ctx), *k = scalar_from(kseed, ctx);
    public_key(d, key, ctx);
    int valid = sign_with_nonce(d, k, hash, hash_len, r, s, ctx);
    BN_free(k);
    BN_free(d);
    if (!valid) /* r or s came out 0: nothing to verify */
        return;

    enum expect expect = EXPECT_ANY;
    switch (mutation % 16) {
    case 0: case 1: case 2: case 15:
        expect = EXPECT_ACCEPT;
        break;
    case 3: { /* (r, n - s) is the other valid signature */
        BIGNUM *bs = BN_bin2bn(s, 48, NULL);
        if (bs == NULL || BN_sub(bs, n, bs) != 1)
            fuzz_fail("BN");
        bn_to48(s, bs);
        BN_free(bs);
        expect = EXPECT_ACCEPT;
        break;
    }
    case 4: flip_bit(r, 48, arg); expect = EXPECT_REJECT; break;
    case 5: flip_bit(s, 48, arg); expect = EXPECT_REJECT; break;
    case 6:
        if (hash_len == 0)
            return;
        flip_bit(hash, hash_len < 48 ? hash_len : 48, arg); /* e +- 2^k: e mod n always changes */
        expect = EXPECT_REJECT;
        break;
    case 7: flip_bit(key + 1, 96, arg); expect = EXPECT_REJECT; break; /* almost surely off the curve */
    case 8: { /* another key */
        BIGNUM *d2 = scalar_from(other, ctx);
        public_key(d2, key, ctx);
        BN_free(d2);
        break;
    }
    case 9: { /* r + n, when it still fits 48 bytes: out of range */
        BIGNUM *br = BN_bin2bn(r, 48, NULL);
        if (br == NULL || BN_add(br, br, n) != 1)
            fuzz_fail("BN");
        if (BN_num_bytes(br) <= 48) {
            bn_to48(r, br);
            expect = EXPECT_REJECT;
        }
        BN_free(br);
        break;
    }
    case 10: edge_scalar(r, arg); break;
    case 11: edge_scalar(s, arg); break;
    case 12: { uint8_t t[48]; memcpy(t, r, 48); memcpy(r, s, 48); memcpy(s, t, 48); break; }
    case 13: { /* the negated key (x, p - y) */
        const EC_GROUP *g = p384_group();
        EC_POINT *q = EC_POINT_new(g);
        if (q == NULL || EC_POINT_oct2point(g, q, key, 97, ctx) != 1 || EC_POINT_invert(g, q, ctx) != 1)
            fuzz_fail("EC_POINT_invert");
        point_encode(q, key, ctx);
        EC_POINT_free(q);
        break;
    }
    case 14: /* a longer hash: bytes past the 48th must not matter */
        if (hash_len == 48) {
            hash_len = 48 + arg % 17;
            expect = EXPECT_ACCEPT;
        }
        break;
    default: break;
    }
    check(key, sizeof key, hash, hash_len, r, s, expect);
}

/*
 * Signatures built backwards from the point R the verifier will compute: with u1 = e/s and
 * u2 = r/s, choose R, then solve Q = (R - u1 G) / u2.
 */
static void crafted_case(struct reader *rd, BN_CTX *ctx)
{
    const EC_GROUP *g = p384_group();
    const BIGNUM *n = EC_GROUP_get0_order(g);
    uint8_t kind = take_u8(rd), t = take_u8(rd), sseed[48], hash[48], key[97], r[48], s[48];
    take(rd, sseed, 48);
    take(rd, hash, 48);
    BIGNUM *bs = scalar_from(sseed, ctx), *e = hash_scalar(hash, 48), *br = BN_new(), *x = BN_new(),
           *sinv = BN_new(), *u1 = BN_new(), *u2 = BN_new(), *tmp = BN_new();
    EC_POINT *pr = EC_POINT_new(g), *q = EC_POINT_new(g);
    if (br == NULL || x == NULL || sinv == NULL || u1 == NULL || u2 == NULL || tmp == NULL || pr == NULL || q == NULL ||
        BN_nnmod(e, e, n, ctx) != 1 || BN_mod_inverse(sinv, bs, n, ctx) == NULL || BN_mod_mul(u1, e, sinv, n, ctx) != 1)
        fuzz_fail("BN");
    enum expect expect = EXPECT_ACCEPT;
    int have = 0;
    switch (kind % 4) {
    case 0:
    case 1: /* x(R) = n + j for a small j: r = j, and kind 1 sends r = n + j itself (out of range) */
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
        /* Q = (R - u1 G) / u2 */
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
    case 2: /* R = u1 G + u2 Q = infinity: Q = -(e / r) G, with r from the input */
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
        point_encode(q, key, ctx);
        bn_to48(s, bs);
        if (BN_num_bytes(br) <= 48) {
            bn_to48(r, br);
            check(key, sizeof key, hash, 48, r, s, expect);
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader rd = {data, size};
    BN_CTX *ctx = BN_CTX_new();
    if (ctx == NULL)
        fuzz_fail("BN_CTX_new");
    switch (take_u8(&rd) % MODES) {
    case MODE_RAW: raw_case(&rd, ctx); break;
    case MODE_SIGNED: signed_case(&rd, ctx); break;
    default: crafted_case(&rd, ctx); break;
    }
    BN_CTX_free(ctx);
    return 0;
}
