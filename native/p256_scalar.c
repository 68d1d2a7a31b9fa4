/* Scalars mod n: the signature's r and s, the hash, and u1 = e/s, u2 = r/s. */
#include <string.h>

#include "ec_limbs.h"
#include "ec_vartime.h"
#include "p256_internal.h"
#include "p256_tables.h"

int p256_scalar_parse(uint64_t v[4], const uint8_t be[32])
{
    ec_from_be_n(v, be, 4);
    return !ec_is_zero_n(v, 4) && ec_cmp_n(v, P256_N, 4) < 0;
}

void p256_scalar_from_hash(uint64_t e[4], const uint8_t *hash, size_t hash_len)
{
    /* A shorter hash is the same integer right-aligned; a longer one is cut to its first 32 bytes. */
    uint8_t buf[32] = {0};
    size_t take = hash_len < 32 ? hash_len : 32;
    if (take)
        memcpy(buf + 32 - take, hash, take);
    ec_from_be_n(e, buf, 4);
    if (ec_cmp_n(e, P256_N, 4) >= 0) /* e < 2^256 < 2n: one subtraction reduces it */
        ec_sub_n(e, e, P256_N, 4);
}

void p256_scalar_u1_u2(uint64_t u1[4], uint64_t u2[4], const uint64_t e[4], const uint64_t r[4],
                       const uint64_t s[4])
{
    /* w = s^-1; w R = mont(w, R^2); then mont(x, w R) = x w for x = e and x = r. */
    uint64_t w[4];
    ec_modinv_vartime(w, s, P256_N, 4);
    p256_mont_mul(w, w, P256_RR_N, &p256_mod_n);
    p256_mont_mul(u1, e, w, &p256_mod_n);
    p256_mont_mul(u2, r, w, &p256_mod_n);
}
