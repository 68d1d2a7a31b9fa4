/*
 * P-256 helpers of the libFuzzer harnesses (fuzz_p256_verify.c, fuzz_tdx_quote.c); no entry point of
 * its own.  libcrypto is the oracle, reached by paths that share nothing with native/ecdsa_p256.c:
 *  - a key derived from fuzzer bytes and a deterministic signature (nonce from fuzzer bytes, so a
 *    crash reproduces), computed with BN arithmetic;
 *  - an independent verify through EVP: the key as a DER SubjectPublicKeyInfo (d2i_PUBKEY), the
 *    signature as DER (ECDSA-Sig-Value), EVP_PKEY_verify on the raw hash;
 *  - SHA-256 through EVP's streaming interface.
 */
#ifndef KBS_FUZZ_P256_H
#define KBS_FUZZ_P256_H
#include "fuzz_common.h"

static inline const EC_GROUP *p256_group(void)
{
    static EC_GROUP *group; /* harness state, set on first use and never changed */
    if (group == NULL && (group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1)) == NULL)
        fuzz_fail("libcrypto has no P-256");
    return group;
}

static inline void bn_to32(uint8_t out[32], const BIGNUM *v)
{
    if (BN_bn2binpad(v, out, 32) != 32)
        fuzz_fail("BN_bn2binpad");
}

/* v = bytes mod n, and 1 instead of 0: a valid private scalar or nonce. */
static inline BIGNUM *p256_scalar_from(const uint8_t bytes[32], BN_CTX *ctx)
{
    BIGNUM *v = BN_bin2bn(bytes, 32, NULL);
    if (v == NULL || BN_nnmod(v, v, EC_GROUP_get0_order(p256_group()), ctx) != 1)
        fuzz_fail("BN scalar");
    if (BN_is_zero(v))
        BN_one(v);
    return v;
}

static inline void p256_point_encode(const EC_POINT *pt, uint8_t out[65], BN_CTX *ctx)
{
    if (EC_POINT_point2oct(p256_group(), pt, POINT_CONVERSION_UNCOMPRESSED, out, 65, ctx) != 65)
        fuzz_fail("EC_POINT_point2oct");
}

/* The public key d*G as 0x04 || X || Y. */
static inline void p256_public_key(const BIGNUM *d, uint8_t out[65], BN_CTX *ctx)
{
    EC_POINT *q = EC_POINT_new(p256_group());
    if (q == NULL || EC_POINT_mul(p256_group(), q, d, NULL, NULL, ctx) != 1)
        fuzz_fail("EC_POINT_mul");
    p256_point_encode(q, out, ctx);
    EC_POINT_free(q);
}

/* e = the leftmost 256 bits of the hash as an integer (FIPS 186-5), not reduced. */
static inline BIGNUM *p256_hash_scalar(const uint8_t *hash, size_t hash_len)
{
    BIGNUM *e = BN_bin2bn(hash_len ? hash : (const uint8_t *)"", (int)(hash_len < 32 ? hash_len : 32), NULL);
    if (e == NULL)
        fuzz_fail("BN_bin2bn");
    return e;
}

/* r = x(kG) mod n, s = k^-1 (e + r d) mod n; returns 0 when r or s is 0 (no signature). */
static inline int p256_sign_with_nonce(const BIGNUM *d, const BIGNUM *k, const uint8_t *hash, size_t hash_len,
                                       uint8_t r_out[32], uint8_t s_out[32], BN_CTX *ctx)
{
    const EC_GROUP *g = p256_group();
    const BIGNUM *n = EC_GROUP_get0_order(g);
    EC_POINT *kg = EC_POINT_new(g);
    BIGNUM *x = BN_new(), *r = BN_new(), *s = BN_new(), *kinv = BN_new(), *e = p256_hash_scalar(hash, hash_len);
    if (kg == NULL || x == NULL || r == NULL || s == NULL || kinv == NULL ||
        EC_POINT_mul(g, kg, k, NULL, NULL, ctx) != 1 ||
        EC_POINT_get_affine_coordinates(g, kg, x, NULL, ctx) != 1 || BN_nnmod(r, x, n, ctx) != 1 ||
        BN_mod_mul(s, r, d, n, ctx) != 1 || BN_mod_add(s, s, e, n, ctx) != 1 ||
        BN_mod_inverse(kinv, k, n, ctx) == NULL || BN_mod_mul(s, s, kinv, n, ctx) != 1)
        fuzz_fail("libcrypto signing arithmetic");
    int ok = !BN_is_zero(r) && !BN_is_zero(s);
    bn_to32(r_out, r);
    bn_to32(s_out, s);
    BN_free(e);
    BN_free(kinv);
    BN_free(s);
    BN_free(r);
    BN_free(x);
    EC_POINT_free(kg);
    return ok;
}

/* The key of a 65-byte point as an EVP_PKEY through its DER SubjectPublicKeyInfo, or NULL. */
static inline EVP_PKEY *p256_evp_key(const uint8_t *point, size_t point_len)
{
    static const uint8_t spki_prefix[26] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                            0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                            0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};
    uint8_t spki[26 + 65];
    if (point_len != 65 || point[0] != 0x04) /* the C core takes uncompressed points only */
        return NULL;
    memcpy(spki, spki_prefix, sizeof spki_prefix);
    memcpy(spki + 26, point, 65);
    const uint8_t *in = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &in, sizeof spki);
    ERR_clear_error();
    return pkey;
}

/* Is the 32-byte big-endian value in [1, n)? */
static inline int p256_in_range(const uint8_t v[32])
{
    BIGNUM *b = BN_bin2bn(v, 32, NULL);
    if (b == NULL)
        fuzz_fail("BN_bin2bn");
    int ok = !BN_is_zero(b) && BN_cmp(b, EC_GROUP_get0_order(p256_group())) < 0;
    BN_free(b);
    return ok;
}

/* libcrypto's verdict on (key, hash, r, s): 1 accept, 0 reject (bad key, out-of-range scalar, wrong). */
static inline int p256_openssl_verify(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len,
                                      const uint8_t r[32], const uint8_t s[32])
{
    uint8_t der[80], *derp = der;
    int verdict = 0;
    EVP_PKEY *pkey = p256_evp_key(point, point_len);
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *br = BN_bin2bn(r, 32, NULL), *bs = BN_bin2bn(s, 32, NULL);
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

#endif
