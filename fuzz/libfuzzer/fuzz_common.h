/*
 * Shared helpers of the libFuzzer harnesses (fuzz/libfuzzer/fuzz_*.c); no entry point of its own.
 *
 *  - a reader that splits the fuzzer's bytes into fields (zero-filled past the end), so the
 *    first bytes can pick a mode and the rest fill keys, digests and signatures;
 *  - ECDSA on P-256 or P-384 (struct fuzz_curve) through libcrypto as the oracle, by paths that
 *    share nothing with native/ecdsa_libcrypto.c: a key derived from fuzzer bytes, a deterministic
 *    signature (nonce from fuzzer bytes, so a crash reproduces) computed with BN arithmetic, and
 *    an independent verify through EVP (SubjectPublicKeyInfo + DER signature); SHA-256 through
 *    EVP's streaming interface;
 *  - the differential ECDSA harness's input modes (raw, signed and mutated, crafted), run against
 *    a harness's own check of its curve's entry points (fuzz_p256_verify.c, fuzz_p384_verify.c);
 *  - the signed-evidence harnesses' input modes (raw, keyed, built), run against a harness's own
 *    check and builder (fuzz_spdm_report.c, fuzz_tdx_quote.c);
 *  - an SNP report made well-formed, so signing it and verifying it must succeed.
 *
 * Every disagreement calls fuzz_fail(), which prints what differed and aborts: libFuzzer
 * then saves the input under its -artifact_prefix.
 */
#ifndef KBS_FUZZ_COMMON_H
#define KBS_FUZZ_COMMON_H
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kbs_native.h"

__attribute__((noreturn, format(printf, 1, 2))) static inline void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FUZZ DISAGREEMENT: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static inline void fuzz_hex(const char *label, const uint8_t *p, size_t n)
{
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%02x", p[i]);
    fputc('\n', stderr);
}

/* ---- splitting the input ---- */

struct reader {
    const uint8_t *p;
    size_t n;
};

/* The next len bytes of the input, zeros once it is used up. */
static inline void take(struct reader *rd, uint8_t *out, size_t len)
{
    size_t have = rd->n < len ? rd->n : len;
    if (have)
        memcpy(out, rd->p, have);
    memset(out + have, 0, len - have);
    rd->p += have;
    rd->n -= have;
}

static inline uint8_t take_u8(struct reader *rd)
{
    uint8_t v;
    take(rd, &v, 1);
    return v;
}

static inline uint16_t take_u16(struct reader *rd)
{
    uint8_t b[2];
    take(rd, b, 2);
    return (uint16_t)(b[0] | b[1] << 8);
}

/* ---- ECDSA through libcrypto, on P-256 or P-384 ---- */

enum { FUZZ_MAX_SCALAR = 48, FUZZ_MAX_POINT = 1 + 2 * FUZZ_MAX_SCALAR };

struct fuzz_curve {
    const char *name;
    int nid;
    size_t size;                /* bytes of r, s, a private scalar or nonce, and of a digest */
    size_t point;               /* 0x04 || X || Y: 1 + 2 * size */
    const uint8_t *spki_prefix; /* DER SubjectPublicKeyInfo up to the point */
    size_t spki_prefix_len;
};

static const uint8_t fuzz_spki_p256[26] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};
static const uint8_t fuzz_spki_p384[23] = {0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
                                           0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00};
static const struct fuzz_curve FUZZ_P256 = {"P-256", NID_X9_62_prime256v1, 32, 65, fuzz_spki_p256,
                                            sizeof fuzz_spki_p256};
static const struct fuzz_curve FUZZ_P384 = {"P-384", NID_secp384r1, 48, 97, fuzz_spki_p384, sizeof fuzz_spki_p384};

static inline const EC_GROUP *fuzz_group(const struct fuzz_curve *c)
{
    static EC_GROUP *p256, *p384; /* harness state, set on first use and never changed */
    EC_GROUP **group = c->nid == NID_secp384r1 ? &p384 : &p256;
    if (*group == NULL && (*group = EC_GROUP_new_by_curve_name(c->nid)) == NULL)
        fuzz_fail("libcrypto has no %s", c->name);
    return *group;
}

static inline const BIGNUM *fuzz_order(const struct fuzz_curve *c)
{
    return EC_GROUP_get0_order(fuzz_group(c));
}

/* v as c->size big-endian bytes; it must fit. */
static inline void bn_put(const struct fuzz_curve *c, uint8_t *out, const BIGNUM *v)
{
    if (BN_bn2binpad(v, out, (int)c->size) != (int)c->size)
        fuzz_fail("BN_bn2binpad");
}

/* v = bytes (c->size of them) mod n, and 1 instead of 0: a valid private scalar or nonce. */
static inline BIGNUM *scalar_from(const struct fuzz_curve *c, const uint8_t *bytes, BN_CTX *ctx)
{
    BIGNUM *v = BN_bin2bn(bytes, (int)c->size, NULL);
    if (v == NULL || BN_nnmod(v, v, fuzz_order(c), ctx) != 1)
        fuzz_fail("BN scalar");
    if (BN_is_zero(v))
        BN_one(v);
    return v;
}

static inline void point_encode(const struct fuzz_curve *c, const EC_POINT *pt, uint8_t *out, BN_CTX *ctx)
{
    if (EC_POINT_point2oct(fuzz_group(c), pt, POINT_CONVERSION_UNCOMPRESSED, out, c->point, ctx) != c->point)
        fuzz_fail("EC_POINT_point2oct");
}

/* The public key d*G of the private scalar d, as 0x04 || X || Y. */
static inline void public_key(const struct fuzz_curve *c, const BIGNUM *d, uint8_t *out, BN_CTX *ctx)
{
    EC_POINT *q = EC_POINT_new(fuzz_group(c));
    if (q == NULL || EC_POINT_mul(fuzz_group(c), q, d, NULL, NULL, ctx) != 1)
        fuzz_fail("EC_POINT_mul");
    point_encode(c, q, out, ctx);
    EC_POINT_free(q);
}

/* e = the leftmost 8 * c->size bits of the hash as an integer (FIPS 186-5), not reduced. */
static inline BIGNUM *hash_scalar(const struct fuzz_curve *c, const uint8_t *hash, size_t hash_len)
{
    BIGNUM *e = BN_bin2bn(hash_len ? hash : (const uint8_t *)"", (int)(hash_len < c->size ? hash_len : c->size), NULL);
    if (e == NULL)
        fuzz_fail("BN_bin2bn");
    return e;
}

/*
 * ECDSA signature of the hash by d with nonce k (both already in [1, n)):
 * r = x(kG) mod n, s = k^-1 (e + r d) mod n.  Returns 0 when r or s is 0 (no signature).
 */
static inline int sign_with_nonce(const struct fuzz_curve *c, const BIGNUM *d, const BIGNUM *k, const uint8_t *hash,
                                  size_t hash_len, uint8_t *r_out, uint8_t *s_out, BN_CTX *ctx)
{
    const EC_GROUP *g = fuzz_group(c);
    const BIGNUM *n = EC_GROUP_get0_order(g);
    EC_POINT *kg = EC_POINT_new(g);
    BIGNUM *x = BN_new(), *r = BN_new(), *s = BN_new(), *kinv = BN_new(), *e = hash_scalar(c, hash, hash_len);
    if (kg == NULL || x == NULL || r == NULL || s == NULL || kinv == NULL ||
        EC_POINT_mul(g, kg, k, NULL, NULL, ctx) != 1 ||
        EC_POINT_get_affine_coordinates(g, kg, x, NULL, ctx) != 1 || BN_nnmod(r, x, n, ctx) != 1 ||
        BN_mod_mul(s, r, d, n, ctx) != 1 || BN_mod_add(s, s, e, n, ctx) != 1 ||
        BN_mod_inverse(kinv, k, n, ctx) == NULL || BN_mod_mul(s, s, kinv, n, ctx) != 1)
        fuzz_fail("libcrypto signing arithmetic");
    int ok = !BN_is_zero(r) && !BN_is_zero(s);
    bn_put(c, r_out, r);
    bn_put(c, s_out, s);
    BN_free(e);
    BN_free(kinv);
    BN_free(s);
    BN_free(r);
    BN_free(x);
    EC_POINT_free(kg);
    return ok;
}

/* The key of a point as an EVP_PKEY through its DER SubjectPublicKeyInfo, or NULL. */
static inline EVP_PKEY *evp_key(const struct fuzz_curve *c, const uint8_t *point, size_t point_len)
{
    uint8_t spki[26 + FUZZ_MAX_POINT];
    if (point_len != c->point || point[0] != 0x04) /* the C core takes uncompressed points only */
        return NULL;
    memcpy(spki, c->spki_prefix, c->spki_prefix_len);
    memcpy(spki + c->spki_prefix_len, point, c->point);
    const uint8_t *in = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &in, (long)(c->spki_prefix_len + c->point));
    ERR_clear_error();
    return pkey;
}

/* Is the big-endian value (c->size bytes) in [1, n)? */
static inline int in_range(const struct fuzz_curve *c, const uint8_t *v)
{
    BIGNUM *b = BN_bin2bn(v, (int)c->size, NULL);
    if (b == NULL)
        fuzz_fail("BN_bin2bn");
    int ok = !BN_is_zero(b) && BN_cmp(b, fuzz_order(c)) < 0;
    BN_free(b);
    return ok;
}

/* libcrypto's verdict on (key, hash, r, s) through EVP_PKEY_verify on the raw hash, the signature
 * as DER (ECDSA-Sig-Value): 1 accept, 0 reject (bad key, out-of-range scalar or wrong signature). */
static inline int openssl_verify(const struct fuzz_curve *c, const uint8_t *point, size_t point_len,
                                 const uint8_t *hash, size_t hash_len, const uint8_t *r, const uint8_t *s)
{
    uint8_t der[128], *derp = der;
    int verdict = 0;
    EVP_PKEY *pkey = evp_key(c, point, point_len);
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *br = BN_bin2bn(r, (int)c->size, NULL), *bs = BN_bin2bn(s, (int)c->size, NULL);
    if (sig == NULL || br == NULL || bs == NULL || ECDSA_SIG_set0(sig, br, bs) != 1)
        fuzz_fail("ECDSA_SIG");
    int der_len = i2d_ECDSA_SIG(sig, &derp);
    if (der_len <= 0 || der_len > (int)sizeof der)
        fuzz_fail("i2d_ECDSA_SIG");
    if (pkey != NULL) {
        EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(pkey, NULL);
        uint8_t empty = 0;
        if (pctx == NULL || EVP_PKEY_verify_init(pctx) != 1)
            fuzz_fail("EVP_PKEY_verify_init");
        verdict = EVP_PKEY_verify(pctx, der, (size_t)der_len, hash_len ? hash : &empty, hash_len) == 1;
        EVP_PKEY_CTX_free(pctx);
    }
    EVP_PKEY_free(pkey);
    ECDSA_SIG_free(sig);
    ERR_clear_error();
    return verdict;
}

/* SHA-256 of up to two parts through EVP's streaming interface. */
static inline void evp_sha256_2(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len, uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(ctx, a, a_len) != 1 ||
        EVP_DigestUpdate(ctx, b, b_len) != 1 || EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != 32)
        fuzz_fail("EVP SHA-256");
    EVP_MD_CTX_free(ctx);
}

/* ---- the differential ECDSA harness: input modes, mutations and the shared verdict ----
 *
 * The first byte picks how the rest is read:
 *   0 raw:      key, hash (0..64 bytes), r, s as given (off-curve keys, wrong lengths, ranges),
 *               or a valid key d*G with a random signature;
 *   1 signed:   a key and a nonce derived from the input, the hash signed here, then one
 *               mutation (none and s -> n - s must verify; bit flips, other or negated keys,
 *               r + n, edge scalars, swapped r and s, e >= n, a longer hash);
 *   2 crafted:  valid signatures whose x(R) lies in [n, p) (the r + n comparison), signatures
 *               whose R is infinity, and ones whose ladder meets u1*G == u2*Q.
 * Each case goes to the harness's check() with every input in an exact-size heap block. */

enum expect { EXPECT_ANY, EXPECT_ACCEPT, EXPECT_REJECT };

typedef void (*fuzz_ecdsa_check)(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len,
                                 const uint8_t *r, const uint8_t *s, enum expect expect);

static inline void fuzz_ecdsa_dump(const struct fuzz_curve *c, const uint8_t *point, size_t point_len,
                                   const uint8_t *hash, size_t hash_len, const uint8_t *r, const uint8_t *s)
{
    fuzz_hex("key", point, point_len);
    fuzz_hex("hash", hash, hash_len);
    fuzz_hex("r", r, c->size);
    fuzz_hex("s", s, c->size);
}

/* The c->size-byte digest that means the same e as the hash: right-aligned if shorter, cut if longer. */
static inline void fuzz_digest_of(const struct fuzz_curve *c, uint8_t *digest, const uint8_t *hash, size_t hash_len)
{
    size_t have = hash_len < c->size ? hash_len : c->size;
    memset(digest, 0, c->size);
    if (have)
        memcpy(digest + c->size - have, hash, have);
}

static inline int fuzz_is_key_error(int rc)
{
    return rc == KBS_ERR_KEY_LENGTH || rc == KBS_ERR_KEY_FORMAT || rc == KBS_ERR_KEY_NOT_ON_CURVE;
}

/*
 * The status the harness's entry points agreed on, against libcrypto: accept exactly when EVP
 * verify accepts, a key error exactly when EVP cannot load the key, KBS_ERR_SIG_RANGE exactly when
 * r or s is outside [1, n) (for a valid key), and what the case itself must give.
 */
static inline void fuzz_ecdsa_verdict(const struct fuzz_curve *c, const uint8_t *point, size_t point_len,
                                      const uint8_t *hash, size_t hash_len, const uint8_t *r, const uint8_t *s,
                                      int status, enum expect expect)
{
    int oracle = openssl_verify(c, point, point_len, hash, hash_len, r, s);
    const char *what = NULL;
    EVP_PKEY *key = evp_key(c, point, point_len);
    int key_error = fuzz_is_key_error(status);
    if ((status == KBS_OK) != oracle)
        what = oracle ? "OpenSSL EVP verify accepts" : "OpenSSL EVP verify rejects";
    else if (key_error != (key == NULL))
        what = key ? "EVP loads the key" : "EVP refuses the key";
    else if (!key_error && (status == KBS_ERR_SIG_RANGE) != !(in_range(c, r) && in_range(c, s)))
        what = "it disagrees with the range of r and s";
    else if (expect == EXPECT_ACCEPT && status != KBS_OK)
        what = "this signature is valid";
    else if (expect == EXPECT_REJECT && status == KBS_OK)
        what = "this signature must be refused";
    EVP_PKEY_free(key);
    if (what != NULL) {
        fuzz_ecdsa_dump(c, point, point_len, hash, hash_len, r, s);
        fuzz_fail("%s: status %d, but %s", c->name, status, what);
    }
}

/* A copy in a heap block of exactly len bytes (malloc(0) for none): ASan sees any overread. */
static inline uint8_t *fuzz_exact(const uint8_t *p, size_t len)
{
    uint8_t *copy = malloc(len);
    if (copy == NULL && len)
        fuzz_fail("out of memory");
    if (len)
        memcpy(copy, p, len);
    return copy;
}

static inline void fuzz_ecdsa_run(const struct fuzz_curve *c, fuzz_ecdsa_check check, const uint8_t *point,
                                  size_t point_len, const uint8_t *hash, size_t hash_len, const uint8_t *r,
                                  const uint8_t *s, enum expect expect)
{
    uint8_t *p = fuzz_exact(point, point_len), *h = fuzz_exact(hash, hash_len), *rr = fuzz_exact(r, c->size),
            *ss = fuzz_exact(s, c->size);
    check(p, point_len, h, hash_len, rr, ss, expect);
    free(ss);
    free(rr);
    free(h);
    free(p);
}

static inline void flip_bit(uint8_t *buf, size_t len, unsigned bit)
{
    if (len)
        buf[(bit / 8) % len] ^= (uint8_t)(1u << (bit % 8));
}

/* One of the values every range check must get right. */
static inline void edge_scalar(const struct fuzz_curve *c, uint8_t *out, unsigned which)
{
    const BIGNUM *n = fuzz_order(c);
    BIGNUM *v = BN_new();
    if (v == NULL)
        fuzz_fail("BN_new");
    switch (which % 7) {
    case 0: BN_zero(v); break;
    case 1: BN_copy(v, n); break;
    case 2: BN_copy(v, n); BN_sub_word(v, 1); break;
    case 3: BN_copy(v, n); BN_add_word(v, 1); break;
    case 4: BN_one(v); break;
    case 5: BN_one(v); BN_lshift(v, v, 8 * (int)c->size); BN_sub_word(v, 1); break; /* 2^bits - 1 */
    default: BN_set_word(v, 2 + which / 7); break;
    }
    bn_put(c, out, v);
    BN_free(v);
}

static inline void fuzz_ecdsa_raw(const struct fuzz_curve *c, fuzz_ecdsa_check check, struct reader *rd, BN_CTX *ctx)
{
    uint8_t flags = take_u8(rd), hash[64], r[FUZZ_MAX_SCALAR], s[FUZZ_MAX_SCALAR], key[FUZZ_MAX_POINT + 1];
    size_t hash_len = take_u8(rd) % 65;
    const size_t lengths[4] = {c->point, c->point, c->point - 1, c->point + 1};
    size_t key_len = lengths[(flags >> 1) & 3];
    take(rd, key, c->point + 1);
    take(rd, hash, sizeof hash);
    take(rd, r, c->size);
    take(rd, s, c->size);
    if (flags & 1) { /* a valid key, so the signature checks run */
        BIGNUM *d = scalar_from(c, key + 1, ctx);
        public_key(c, d, key, ctx);
        BN_free(d);
    }
    fuzz_ecdsa_run(c, check, key, key_len, hash, hash_len, r, s, EXPECT_ANY);
}

static inline void fuzz_ecdsa_signed(const struct fuzz_curve *c, fuzz_ecdsa_check check, struct reader *rd,
                                     BN_CTX *ctx)
{
    uint8_t dseed[FUZZ_MAX_SCALAR], kseed[FUZZ_MAX_SCALAR], other[FUZZ_MAX_SCALAR], hash[64];
    uint8_t r[FUZZ_MAX_SCALAR], s[FUZZ_MAX_SCALAR], key[FUZZ_MAX_POINT];
    uint8_t flags = take_u8(rd), mutation = take_u8(rd);
    uint16_t arg = take_u16(rd);
    const size_t size = c->size;
    take(rd, dseed, size);
    take(rd, kseed, size);
    take(rd, hash, 64);
    take(rd, other, size);
    size_t hash_len = (flags & 1) ? (size_t)(flags >> 1) % 65 : size;
    const BIGNUM *n = fuzz_order(c);

    if (mutation % 16 == 15) { /* e >= n: the hash is n + arg, reduced only inside ECDSA */
        BIGNUM *e = BN_dup(n);
        if (e == NULL || BN_add_word(e, arg) != 1)
            fuzz_fail("BN");
        bn_put(c, hash, e);
        hash_len = size;
        BN_free(e);
    }
    BIGNUM *d = scalar_from(c, dseed, ctx), *k = scalar_from(c, kseed, ctx);
    public_key(c, d, key, ctx);
    int valid = sign_with_nonce(c, d, k, hash, hash_len, r, s, ctx);
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
        BIGNUM *bs = BN_bin2bn(s, (int)size, NULL);
        if (bs == NULL || BN_sub(bs, n, bs) != 1)
            fuzz_fail("BN");
        bn_put(c, s, bs);
        BN_free(bs);
        expect = EXPECT_ACCEPT;
        break;
    }
    case 4: flip_bit(r, size, arg); expect = EXPECT_REJECT; break;
    case 5: flip_bit(s, size, arg); expect = EXPECT_REJECT; break;
    case 6:
        if (hash_len == 0)
            return;
        flip_bit(hash, hash_len < size ? hash_len : size, arg); /* e +- 2^k: e mod n always changes */
        expect = EXPECT_REJECT;
        break;
    case 7: flip_bit(key + 1, 2 * size, arg); expect = EXPECT_REJECT; break; /* almost surely off the curve */
    case 8: { /* another key */
        BIGNUM *d2 = scalar_from(c, other, ctx);
        public_key(c, d2, key, ctx);
        BN_free(d2);
        break;
    }
    case 9: { /* r + n, when it still fits: out of range */
        BIGNUM *br = BN_bin2bn(r, (int)size, NULL);
        if (br == NULL || BN_add(br, br, n) != 1)
            fuzz_fail("BN");
        if ((size_t)BN_num_bytes(br) <= size) {
            bn_put(c, r, br);
            expect = EXPECT_REJECT;
        }
        BN_free(br);
        break;
    }
    case 10: edge_scalar(c, r, arg); break;
    case 11: edge_scalar(c, s, arg); break;
    case 12: { uint8_t t[FUZZ_MAX_SCALAR]; memcpy(t, r, size); memcpy(r, s, size); memcpy(s, t, size); break; }
    case 13: { /* the negated key (x, p - y) */
        const EC_GROUP *g = fuzz_group(c);
        EC_POINT *q = EC_POINT_new(g);
        if (q == NULL || EC_POINT_oct2point(g, q, key, c->point, ctx) != 1 || EC_POINT_invert(g, q, ctx) != 1)
            fuzz_fail("EC_POINT_invert");
        point_encode(c, q, key, ctx);
        EC_POINT_free(q);
        break;
    }
    case 14: /* a longer hash (up to 64 bytes): bytes past the size-th must not matter */
        if (hash_len == size) {
            hash_len = size + arg % (65 - size);
            expect = EXPECT_ACCEPT;
        }
        break;
    default: break;
    }
    fuzz_ecdsa_run(c, check, key, c->point, hash, hash_len, r, s, expect);
}

/*
 * Signatures built backwards from the point R the verifier will compute: with u1 = e/s and
 * u2 = r/s, choose R, then solve Q = (R - u1 G) / u2.
 */
static inline void fuzz_ecdsa_crafted(const struct fuzz_curve *c, fuzz_ecdsa_check check, struct reader *rd,
                                      BN_CTX *ctx)
{
    const EC_GROUP *g = fuzz_group(c);
    const BIGNUM *n = EC_GROUP_get0_order(g);
    uint8_t kind = take_u8(rd), t = take_u8(rd), sseed[FUZZ_MAX_SCALAR], hash[FUZZ_MAX_SCALAR];
    uint8_t key[FUZZ_MAX_POINT], r[FUZZ_MAX_SCALAR], s[FUZZ_MAX_SCALAR];
    take(rd, sseed, c->size);
    take(rd, hash, c->size);
    BIGNUM *bs = scalar_from(c, sseed, ctx), *e = hash_scalar(c, hash, c->size), *br = BN_new(), *x = BN_new(),
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
        point_encode(c, q, key, ctx);
        bn_put(c, s, bs);
        if ((size_t)BN_num_bytes(br) <= c->size) {
            bn_put(c, r, br);
            fuzz_ecdsa_run(c, check, key, c->point, hash, c->size, r, s, expect);
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

/* One libFuzzer input of the differential ECDSA harness of curve c. */
static inline void fuzz_ecdsa_input(const struct fuzz_curve *c, fuzz_ecdsa_check check, const uint8_t *data,
                                    size_t size)
{
    struct reader rd = {data, size};
    BN_CTX *ctx = BN_CTX_new();
    if (ctx == NULL)
        fuzz_fail("BN_CTX_new");
    switch (take_u8(&rd) % 3) {
    case 0: fuzz_ecdsa_raw(c, check, &rd, ctx); break;
    case 1: fuzz_ecdsa_signed(c, check, &rd, ctx); break;
    default: fuzz_ecdsa_crafted(c, check, &rd, ctx); break;
    }
    BN_CTX_free(ctx);
}

/* ---- signed evidence harnesses: input modes ----
 *
 * The first byte picks how the rest is read:
 *   0 raw:    the rest is the evidence; the key is a fixed valid point, the curve's generator
 *             (signatures fail, the parser sees arbitrary bytes);
 *   1 keyed:  a flags byte, a c->point-byte key (one byte shorter when the flags' top bit is set),
 *             then the evidence;
 *   2 built:  the rest goes to the harness's builder, which makes, signs, mutates and checks.
 * The evidence goes to the harness's check in an exact-size heap block. */

enum { FUZZ_MODE_RAW, FUZZ_MODE_KEYED, FUZZ_MODE_BUILT, FUZZ_MODES };

typedef int (*fuzz_evidence_check)(const uint8_t *b, size_t len, unsigned flags, const uint8_t *point,
                                   size_t point_len, const char *what);
typedef void (*fuzz_evidence_build)(struct reader *rd, BN_CTX *ctx);

/* One libFuzzer input of a signed-evidence harness whose keys are on curve c. */
static inline void fuzz_evidence_input(const struct fuzz_curve *c, fuzz_evidence_check check,
                                       fuzz_evidence_build build, const uint8_t *data, size_t size)
{
    if (size == 0)
        return;
    BN_CTX *ctx = BN_CTX_new();
    if (ctx == NULL)
        fuzz_fail("BN_CTX_new");
    switch (data[0] % FUZZ_MODES) {
    case FUZZ_MODE_RAW: {
        uint8_t generator[FUZZ_MAX_POINT];
        point_encode(c, EC_GROUP_get0_generator(fuzz_group(c)), generator, ctx);
        uint8_t *evidence = fuzz_exact(data + 1, size - 1);
        check(evidence, size - 1, 0, generator, c->point, "raw");
        free(evidence);
        break;
    }
    case FUZZ_MODE_KEYED: {
        size_t skip = 2 + c->point;
        if (size < skip)
            break;
        size_t point_len = c->point - (data[1] >> 7); /* sometimes a key one byte short */
        uint8_t *evidence = fuzz_exact(data + skip, size - skip);
        check(evidence, size - skip, data[1] & 1, data + 2, point_len, "keyed");
        free(evidence);
        break;
    }
    default: {
        struct reader rd = {data + 1, size - 1};
        build(&rd, ctx);
        break;
    }
    }
    BN_CTX_free(ctx);
}

/* ---- SEV-SNP reports ---- */

static inline void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

/*
 * Make any 1184 bytes a report the parser must accept, keeping the fuzzer's bytes in every
 * free field: version 2..5, algorithm 1, policy bit 17 set and bits 63:26 clear, signer info
 * bits 31:5 clear with a signing key that is 0, 1 (or 7, unsigned, if allow_unsigned), and every
 * must-be-zero range cleared (README "Design").
 */
static inline void snp_make_wellformed(uint8_t b[KBS_SNP_REPORT_SIZE], int allow_unsigned)
{
    uint32_t version = 2 + get_le32(b) % 4;
    put_le32(b, version);
    put_le32(b + 0x34, 1);
    uint64_t policy = (get_le64(b + 0x08) | (UINT64_C(1) << 17)) & ((UINT64_C(1) << 26) - 1);
    put_le32(b + 0x08, (uint32_t)policy);
    put_le32(b + 0x0C, (uint32_t)(policy >> 32));
    uint32_t signer = get_le32(b + 0x48) & 0x1F, key = (signer >> 2) & 7;
    if ((key >= 2 && key <= 6) || (key == 7 && !allow_unsigned))
        signer &= ~(uint32_t)(7 << 2);
    put_le32(b + 0x48, signer);
    memset(b + 0x4C, 0, 4);
    if (version == 2)
        memset(b + 0x188, 0, 0x1A0 - 0x188);
    else
        memset(b + 0x18B, 0, 0x1A0 - 0x18B);
    b[0x1EB] = 0;
    b[0x1EF] = 0;
    if (version < 5)
        memset(b + 0x1F8, 0, 0x208 - 0x1F8);
    memset(b + 0x208, 0, 0x2A0 - 0x208);
    memset(b + 0x2A0 + 48, 0, 24);
    memset(b + 0x2E8 + 48, 0, 24);
    memset(b + 0x330, 0, KBS_SNP_REPORT_SIZE - 0x330);
}

/* Write a 48-byte big-endian scalar as the report's 72-byte little-endian field. */
static inline void snp_put_scalar(uint8_t field[72], const uint8_t be[48])
{
    for (int i = 0; i < 48; i++)
        field[i] = be[47 - i];
    memset(field + 48, 0, 24);
}

#endif
