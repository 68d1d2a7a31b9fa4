/*
 * What the C tests feed the core, shared so that each test keeps only its checks:
 *  - random numbers, reproducible from the seed each test sets in rng_state (and prints);
 *  - inputs in heap blocks of exactly their length, so the sanitizers see any overread;
 *  - vector files ($KBS_VECTORS, read in place), their hex fields and NIST CAVP records;
 *  - what evidence tests ask of their inputs: zero padding, the key of a chain's leaf certificate;
 *  - libcrypto keys and signatures, and the scalars and field elements a range check must get right.
 * Everything is static inline: a test uses what it needs and the rest costs nothing.
 */
#ifndef KBS_TEST_VECTORS_H
#define KBS_TEST_VECTORS_H
#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED /* EC_KEY: the tests' oracle, as the core's libcrypto reference */
#endif
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ec_limbs.h"
#include "ec_vartime.h"

/* ---- random numbers: xorshift64* ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static inline uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1du;
}

static inline void rnd_bytes(uint8_t *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)rnd();
}

/* A value below m (n limbs), often an extreme one: 0, 1, m - 1, runs of ones or zeros, a power of two. */
static inline void rnd_below(uint64_t *a, const uint64_t *m, size_t n)
{
    for (;;) {
        unsigned kind = (unsigned)(rnd() % 8);
        for (size_t i = 0; i < n; i++) {
            switch (kind) {
            case 0: a[i] = m[i] - (i == 0 ? 1 + rnd() % 3 : 0); break;
            case 1: a[i] = i == 0 ? rnd() % 3 : 0; break;
            case 2: a[i] = (rnd() & 1) ? ~(uint64_t)0 : 0; break;
            case 3: a[i] = (uint64_t)1 << (rnd() % 64) >> (i == n - 1 ? 1 : 0); break;
            default: a[i] = rnd(); break;
            }
        }
        if (ec_cmp_n(a, m, n) < 0)
            return;
    }
}

/* ---- exact-size inputs and files ---- */

/* A copy in a block of exactly `len` bytes (malloc(0) for none): the sanitizer sees any overread. */
static inline uint8_t *exact_copy(const uint8_t *src, size_t len)
{
    uint8_t *p = malloc(len);
    if (len)
        memcpy(p, src, len);
    return p;
}

/* A whole file in a block of exactly its size, plus a NUL past the end when `text`; NULL if unreadable. */
static inline uint8_t *read_file_block(const char *path, size_t *len, int text)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    size_t n = size > 0 ? (size_t)size : 0;
    uint8_t *buf = malloc(text ? n + 1 : n ? n : 1); /* malloc(0) may be NULL */
    if (buf && n > 0 && fread(buf, 1, n, f) != n) {
        free(buf);
        buf = NULL;
    }
    if (buf && text)
        buf[n] = 0;
    fclose(f);
    *len = n;
    return buf;
}

static inline uint8_t *read_file(const char *path, size_t *len)
{
    return read_file_block(path, len, 0);
}

static inline char *read_text(const char *path)
{
    size_t len;
    return (char *)read_file_block(path, &len, 1);
}

/* The bytes of hex[0, hex_len); (size_t)-1 for an odd length, a bad digit or more than cap bytes. */
static inline size_t unhex(uint8_t *out, size_t cap, const char *hex, size_t hex_len)
{
    if (hex_len % 2 || hex_len / 2 > cap)
        return (size_t)-1;
    for (size_t i = 0; i < hex_len / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return (size_t)-1;
        out[i] = (uint8_t)v;
    }
    return hex_len / 2;
}

/* A big-endian hex integer right-aligned in `width` bytes (<= 80): odd digit counts (the CAVP files
 * have some) and leading zero bytes are fine; 0 if it does not fit. */
static inline int unhex_int(uint8_t *out, size_t width, const char *hex)
{
    uint8_t tmp[80];
    char padded[2 * sizeof tmp + 2] = "0";
    size_t len = strlen(hex);
    if (len % 2) {
        if (len + 2 > sizeof padded)
            return 0;
        memcpy(padded + 1, hex, len + 1);
        hex = padded;
        len++;
    }
    size_t n = unhex(tmp, sizeof tmp, hex, len), skip = 0;
    if (n == (size_t)-1)
        return 0;
    while (n - skip > width && tmp[skip] == 0)
        skip++;
    if (n - skip > width)
        return 0;
    memset(out, 0, width);
    memcpy(out + width - (n - skip), tmp + skip, n - skip);
    return 1;
}

/* ---- evidence: padding and certificate chains ---- */

static inline int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* The uncompressed point (0x04 || X || Y, point_len bytes) of the first certificate of a PEM chain, the
 * leaf: the last point_len bytes of its DER SubjectPublicKeyInfo, for an EC key whose curve has points
 * of that length.  1 if so, 0 if the chain has no certificate or its key is anything else. */
static inline int pem_leaf_point(const uint8_t *pem, size_t pem_len, uint8_t *point, size_t point_len)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
    X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    EVP_PKEY *key = cert ? X509_get0_pubkey(cert) : NULL;
    int ok = 0;
    if (key && EVP_PKEY_base_id(key) == EVP_PKEY_EC && 1 + 2 * (size_t)((EVP_PKEY_bits(key) + 7) / 8) == point_len) {
        uint8_t *der = NULL;
        int n = i2d_PUBKEY(key, &der);
        if (n > 0 && (size_t)n > point_len && der[(size_t)n - point_len] == 0x04) {
            memcpy(point, der + (size_t)n - point_len, point_len);
            ok = 1;
        }
        OPENSSL_free(der);
    }
    X509_free(cert);
    BIO_free(bio);
    ERR_clear_error();
    return ok;
}

/* ---- NIST CAVP .rsp files: the lines of one curve's sections ---- */

struct cavp {
    FILE *f;
    const char *curve; /* "P-256": sections "[P-256]" and "[P-256,SHA-...]" */
    char line[1024], section[64];
};

/* Open dir/nist_cavp/file; 0 (and a note) if it is not there. */
static inline int cavp_open(struct cavp *c, const char *dir, const char *file, const char *curve)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/nist_cavp/%s", dir, file);
    c->f = fopen(path, "r");
    c->curve = curve;
    c->section[0] = 0;
    if (c->f == NULL)
        printf("skipped CAVP: %s not found (set KBS_VECTORS)\n", path);
    return c->f != NULL;
}

/* The next line of one of the curve's sections into c->line, without its line end; 0 at the end
 * of the file, which is then closed. */
static inline int cavp_next(struct cavp *c)
{
    size_t n = strlen(c->curve);
    while (fgets(c->line, sizeof c->line, c->f)) {
        c->line[strcspn(c->line, "\r\n")] = 0;
        if (c->line[0] == '[')
            snprintf(c->section, sizeof c->section, "%.63s", c->line);
        else if (strncmp(c->section + 1, c->curve, n) == 0 && (c->section[1 + n] == ',' || c->section[1 + n] == ']'))
            return 1;
    }
    fclose(c->f);
    c->f = NULL;
    return 0;
}

/* The value of the line `name = value`, or NULL if the line is another field. */
static inline const char *cavp_field(const struct cavp *c, const char *name)
{
    size_t n = strlen(name);
    return strncmp(c->line, name, n) == 0 && strncmp(c->line + n, " = ", 3) == 0 ? c->line + n + 3 : NULL;
}

/* msg hashed with the function the section names ("[P-384,SHA-512]"); 0 if libcrypto has none. */
static inline int cavp_hash(const struct cavp *c, const uint8_t *msg, size_t msg_len, uint8_t hash[64], unsigned *len)
{
    char name[16];
    const char *at = c->section + 2 + strlen(c->curve);
    snprintf(name, sizeof name, "%.*s", (int)strcspn(at, "]"), at);
    for (char *p = name; *p; p++)
        if (*p == '-')
            memmove(p, p + 1, strlen(p));
    const EVP_MD *md = EVP_get_digestbyname(name);
    return md != NULL && EVP_Digest(msg, msg_len, hash, len, md, NULL) == 1;
}

/* ---- libcrypto keys and signatures ---- */

/* A new key on curve nid and its public point 0x04 || X || Y (point_len bytes); exits on failure. */
static inline EC_KEY *new_ec_key(int nid, uint8_t *point, size_t point_len)
{
    EC_KEY *k = EC_KEY_new_by_curve_name(nid);
    if (k == NULL || EC_KEY_generate_key(k) != 1 ||
        EC_POINT_point2oct(EC_KEY_get0_group(k), EC_KEY_get0_public_key(k), POINT_CONVERSION_UNCOMPRESSED, point,
                           point_len, NULL) != point_len) {
        fprintf(stderr, "libcrypto key generation failed\n");
        exit(2);
    }
    return k;
}

/* libcrypto's signature of a `size`-byte digest, as r and s of `size` bytes each; exits on failure. */
static inline void sign_digest(EC_KEY *key, const uint8_t *digest, size_t size, uint8_t *r, uint8_t *s)
{
    ECDSA_SIG *sig = ECDSA_do_sign(digest, (int)size, key);
    const BIGNUM *br, *bs;
    if (sig == NULL) {
        fprintf(stderr, "libcrypto sign failed\n");
        exit(2);
    }
    ECDSA_SIG_get0(sig, &br, &bs);
    BN_bn2binpad(br, r, (int)size);
    BN_bn2binpad(bs, s, (int)size);
    ECDSA_SIG_free(sig);
}

/* A scalar every range check must get right, as n big-endian limbs: 0, the order or next to it, the
 * prime, all ones, a power of two, a small value. */
static inline void edge_scalar(uint8_t *out, const uint64_t *order, const uint64_t *prime, size_t n)
{
    uint64_t v[EC_MAX_LIMBS];
    switch (rnd() % 8) {
    case 0: memset(v, 0, sizeof v); break;
    case 1: memcpy(v, order, 8 * n); break;
    case 2: memcpy(v, order, 8 * n); v[0] -= 1; break;
    case 3: memcpy(v, order, 8 * n); v[0] += 1; break;
    case 4: memcpy(v, prime, 8 * n); break;
    case 5: memset(v, 0xff, sizeof v); break;
    case 6: memset(v, 0, sizeof v); v[rnd() % n] = (uint64_t)1 << (rnd() % 64); break;
    default: memset(v, 0, sizeof v); v[0] = 1 + rnd() % 4; break;
    }
    ec_to_be_n(out, v, n);
}

#endif
