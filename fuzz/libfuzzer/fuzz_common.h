/*
 * Shared helpers of the libFuzzer harnesses (fuzz/libfuzzer/fuzz_*.c); no entry point of its own.
 *
 *  - a reader that splits the fuzzer's bytes into fields (zero-filled past the end), so the
 *    first bytes can pick a mode and the rest fill keys, digests and signatures;
 *  - P-384 through libcrypto as the oracle: a key derived from fuzzer bytes, a deterministic
 *    signature (nonce from fuzzer bytes, so a crash reproduces), and an independent verify
 *    through EVP (SubjectPublicKeyInfo + DER signature), never through the project's code;
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

/* ---- P-384 through libcrypto ---- */

static inline const EC_GROUP *p384_group(void)
{
    static EC_GROUP *group; /* harness state, set on first use and never changed */
    if (group == NULL && (group = EC_GROUP_new_by_curve_name(NID_secp384r1)) == NULL)
        fuzz_fail("libcrypto has no P-384");
    return group;
}

static inline void bn_to48(uint8_t out[48], const BIGNUM *v)
{
    if (BN_bn2binpad(v, out, 48) != 48)
        fuzz_fail("BN_bn2binpad");
}

/* v = bytes mod n, and 1 instead of 0: a valid private scalar or nonce. */
static inline BIGNUM *scalar_from(const uint8_t bytes[48], BN_CTX *ctx)
{
    BIGNUM *v = BN_bin2bn(bytes, 48, NULL);
    if (v == NULL || BN_nnmod(v, v, EC_GROUP_get0_order(p384_group()), ctx) != 1)
        fuzz_fail("BN scalar");
    if (BN_is_zero(v))
        BN_one(v);
    return v;
}

static inline void point_encode(const EC_POINT *pt, uint8_t out[97], BN_CTX *ctx)
{
    if (EC_POINT_point2oct(p384_group(), pt, POINT_CONVERSION_UNCOMPRESSED, out, 97, ctx) != 97)
        fuzz_fail("EC_POINT_point2oct");
}

/* The public key d*G of the private scalar d, as 0x04 || X || Y. */
static inline void public_key(const BIGNUM *d, uint8_t out[97], BN_CTX *ctx)
{
    EC_POINT *q = EC_POINT_new(p384_group());
    if (q == NULL || EC_POINT_mul(p384_group(), q, d, NULL, NULL, ctx) != 1)
        fuzz_fail("EC_POINT_mul");
    point_encode(q, out, ctx);
    EC_POINT_free(q);
}

/* e = the leftmost 384 bits of the hash as an integer (FIPS 186-5), not reduced. */
static inline BIGNUM *hash_scalar(const uint8_t *hash, size_t hash_len)
{
    BIGNUM *e = BN_bin2bn(hash_len ? hash : (const uint8_t *)"", (int)(hash_len < 48 ? hash_len : 48), NULL);
    if (e == NULL)
        fuzz_fail("BN_bin2bn");
    return e;
}

/*
 * ECDSA signature of the hash by d with nonce k (both already in [1, n)):
 * r = x(kG) mod n, s = k^-1 (e + r d) mod n.  Returns 0 when r or s is 0 (no signature).
 */
static inline int sign_with_nonce(const BIGNUM *d, const BIGNUM *k, const uint8_t *hash, size_t hash_len,
                                  uint8_t r_out[48], uint8_t s_out[48], BN_CTX *ctx)
{
    const EC_GROUP *g = p384_group();
    const BIGNUM *n = EC_GROUP_get0_order(g);
    EC_POINT *kg = EC_POINT_new(g);
    BIGNUM *x = BN_new(), *r = BN_new(), *s = BN_new(), *kinv = BN_new(), *e = hash_scalar(hash, hash_len);
    if (kg == NULL || x == NULL || r == NULL || s == NULL || kinv == NULL ||
        EC_POINT_mul(g, kg, k, NULL, NULL, ctx) != 1 ||
        EC_POINT_get_affine_coordinates(g, kg, x, NULL, ctx) != 1 || BN_nnmod(r, x, n, ctx) != 1 ||
        BN_mod_mul(s, r, d, n, ctx) != 1 || BN_mod_add(s, s, e, n, ctx) != 1 ||
        BN_mod_inverse(kinv, k, n, ctx) == NULL || BN_mod_mul(s, s, kinv, n, ctx) != 1)
        fuzz_fail("libcrypto signing arithmetic");
    int ok = !BN_is_zero(r) && !BN_is_zero(s);
    bn_to48(r_out, r);
    bn_to48(s_out, s);
    BN_free(e);
    BN_free(kinv);
    BN_free(s);
    BN_free(r);
    BN_free(x);
    EC_POINT_free(kg);
    return ok;
}

/*
 * libcrypto's own verdict, through a path that shares nothing with ecdsa_p384.c: the key as a
 * DER SubjectPublicKeyInfo (d2i_PUBKEY), the signature as DER (ECDSA-Sig-Value), EVP_PKEY_verify
 * on the raw hash.  1 accept, 0 reject (bad key, out-of-range scalar or wrong signature).
 */
static inline int openssl_verify(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len,
                                 const uint8_t r[48], const uint8_t s[48])
{
    static const uint8_t spki_prefix[23] = {0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
                                            0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00};
    uint8_t spki[23 + 97], der[128], *derp = der;
    int verdict = 0;
    if (point_len != 97)
        return 0;
    memcpy(spki, spki_prefix, sizeof spki_prefix);
    memcpy(spki + 23, point, 97);
    const uint8_t *in = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &in, sizeof spki);
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *br = BN_bin2bn(r, 48, NULL), *bs = BN_bin2bn(s, 48, NULL);
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
