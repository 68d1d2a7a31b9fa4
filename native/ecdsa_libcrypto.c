/*
 * ECDSA verification of a prehashed digest through the system libcrypto, P-256 and P-384.
 *
 * Kept under their own names as the reference implementation for differential tests and
 * benchmarks; kbs_p256_verify_digest and kbs_p384_verify_digest (p256_verify.c, p384_verify.c)
 * are the fast cores.  Every libcrypto object is created per call: no shared mutable state, safe
 * without the GIL.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include "kbs_native.h"

/* Range checks that OpenSSL would also do, done first so each gets its own code. */
static int scalar_in_range(const BIGNUM *v, const BIGNUM *order)
{
    return !BN_is_zero(v) && !BN_is_negative(v) && BN_cmp(v, order) < 0;
}

/* One curve: the point is 0x04 || X || Y (1 + 2 size bytes); r, s and the digest are size bytes. */
static int verify_digest(int nid, size_t size, const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                         const uint8_t *r, const uint8_t *s)
{
    if (pubkey == NULL || digest == NULL || r == NULL || s == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    if (pubkey_len != 1 + 2 * size)
        return KBS_ERR_KEY_LENGTH;
    if (pubkey[0] != 0x04)
        return KBS_ERR_KEY_FORMAT;

    int rc = KBS_ERR_INTERNAL;
    EC_KEY *key = EC_KEY_new_by_curve_name(nid);
    EC_POINT *point = NULL;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *br = BN_bin2bn(r, (int)size, NULL);
    BIGNUM *bs = BN_bin2bn(s, (int)size, NULL);
    if (key == NULL || sig == NULL || br == NULL || bs == NULL)
        goto done;

    const EC_GROUP *group = EC_KEY_get0_group(key);
    point = EC_POINT_new(group);
    if (point == NULL)
        goto done;
    if (EC_POINT_oct2point(group, point, pubkey, pubkey_len, NULL) != 1 ||
        EC_POINT_is_on_curve(group, point, NULL) != 1 || EC_KEY_set_public_key(key, point) != 1) {
        rc = KBS_ERR_KEY_NOT_ON_CURVE;
        goto done;
    }
    const BIGNUM *order = EC_GROUP_get0_order(group);
    if (!scalar_in_range(br, order) || !scalar_in_range(bs, order)) {
        rc = KBS_ERR_SIG_RANGE;
        goto done;
    }
    if (ECDSA_SIG_set0(sig, br, bs) != 1)
        goto done;
    br = bs = NULL; /* owned by sig now */
    int ok = ECDSA_do_verify(digest, (int)size, sig, key);
    rc = ok == 1 ? KBS_OK : KBS_ERR_SIG_INVALID;

done:
    ERR_clear_error(); /* libcrypto's per-thread error queue must not grow */
    BN_free(br);
    BN_free(bs);
    ECDSA_SIG_free(sig);
    EC_POINT_free(point);
    EC_KEY_free(key);
    return rc;
}

_Static_assert(KBS_P256_POINT_SIZE == 1 + 2 * KBS_P256_SCALAR_SIZE && KBS_P384_POINT_SIZE == 1 + 2 * 48,
               "points are 0x04 || X || Y");

int kbs_p256_verify_digest_libcrypto(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                                     const uint8_t *r, const uint8_t *s)
{
    return verify_digest(NID_X9_62_prime256v1, KBS_P256_SCALAR_SIZE, pubkey, pubkey_len, digest, r, s);
}

int kbs_p384_verify_digest_libcrypto(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                                     const uint8_t *r, const uint8_t *s)
{
    return verify_digest(NID_secp384r1, 48, pubkey, pubkey_len, digest, r, s);
}
