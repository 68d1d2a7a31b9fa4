/* Scalars mod n: u1 = e/s and u2 = r/s (the wNAF recoding is the shared ec_wnaf). */
#include "p384_internal.h"

static const uint64_t RR_N[6] = {0x2d319b2419b409a9u, 0xff3d81e5df1aa419u, 0xbc3e483afcb82947u,
                                 0xd40d49174aab1cc5u, 0x3fb05b7a28266895u, 0x0c84ee012b39bf21u};

void p384_scalar_inv_mont(uint64_t w_mont[6], const uint64_t s[6])
{
    uint64_t w[6];
    ec_modinv_vartime(w, s, p384_mod_n.m, 6);
    p384_mont_mul(w_mont, w, RR_N, &p384_mod_n);
}

void p384_scalar_batch_inv_mont(uint64_t (*w_mont)[6], const uint64_t (*s)[6], size_t count)
{
    /* Montgomery's trick in Montgomery form: prefix[i] = (s_0 ... s_i) * R. */
    uint64_t prefix[P384_BATCH_MAX][6], inv[6], sm[6];
    if (count == 0)
        return;
    if (count > P384_BATCH_MAX)
        count = P384_BATCH_MAX;
    p384_mont_mul(prefix[0], s[0], RR_N, &p384_mod_n);
    for (size_t i = 1; i < count; i++) {
        p384_mont_mul(sm, s[i], RR_N, &p384_mod_n);
        p384_mont_mul(prefix[i], prefix[i - 1], sm, &p384_mod_n);
    }
    /* (prod * R)^-1 as a plain inverse, then times R^2 twice: (prod)^-1 * R. */
    ec_modinv_vartime(inv, prefix[count - 1], p384_mod_n.m, 6);
    p384_mont_mul(inv, inv, RR_N, &p384_mod_n);
    p384_mont_mul(inv, inv, RR_N, &p384_mod_n);
    for (size_t i = count; i-- > 1;) {
        p384_mont_mul(w_mont[i], inv, prefix[i - 1], &p384_mod_n);
        p384_mont_mul(sm, s[i], RR_N, &p384_mod_n);
        p384_mont_mul(inv, inv, sm, &p384_mod_n);
    }
    for (int j = 0; j < 6; j++)
        w_mont[0][j] = inv[j];
}

void p384_scalars(uint64_t u1[6], uint64_t u2[6], const uint64_t e[6], const uint64_t r[6],
                  const uint64_t w_mont[6])
{
    /* mont(x, w * R) = x * w */
    p384_mont_mul(u1, e, w_mont, &p384_mod_n);
    p384_mont_mul(u2, r, w_mont, &p384_mod_n);
}
