/* Arithmetic mod p = 2^256 - 2^224 + 2^192 + 2^96 - 1 on Montgomery-form elements. */
#include "ec_limbs.h"
#include "ec_vartime.h"
#include "p256_internal.h"
#include "p256_tables.h"

void p256_fe_neg(uint64_t r[4], const uint64_t a[4])
{
    static const uint64_t zero[4] = {0};
    p256_fe_sub(r, zero, a);
}

/* a/2: a itself if even, else (a + p)/2, whose 257th bit is the carry of a + p.  The choice is
 * a mask, not a branch: the parity is random, so a branch would be mispredicted half the time. */
void p256_fe_half(uint64_t r[4], const uint64_t a[4])
{
    uint64_t mask = 0 - (a[0] & 1), addend[4], t[4];
    for (int i = 0; i < 4; i++)
        addend[i] = P256_P[i] & mask;
    unsigned char top = ec_add_n(t, a, addend, 4);
    for (int i = 0; i < 3; i++)
        r[i] = t[i] >> 1 | t[i + 1] << 63;
    r[3] = t[3] >> 1 | (uint64_t)top << 63;
}

void p256_fe_to_mont(uint64_t r[4], const uint64_t a[4])
{
    p256_fe_mul(r, a, P256_RR_P);
}

void p256_fe_from_mont(uint64_t r[4], const uint64_t a[4])
{
    static const uint64_t one[4] = {1, 0, 0, 0};
    p256_fe_mul(r, a, one);
}

/* The plain inverse of aR is a^-1 R^-1; one Montgomery multiply by R^3 makes it a^-1 R. */
void p256_fe_inv(uint64_t r[4], const uint64_t a[4])
{
    uint64_t t[4];
    ec_modinv_vartime(t, a, P256_P, 4);
    p256_fe_mul(r, t, P256_RRR_P);
}

/* Montgomery's trick: prefix products, one inversion, then peel one factor at a time. */
void p256_fe_batch_inv(uint64_t (*out)[4], const uint64_t (*in)[4], size_t count)
{
    uint64_t prefix[P256_BATCH_INV_MAX][4], inv[4], t[4];
    if (count == 0 || count > P256_BATCH_INV_MAX)
        return;
    for (int k = 0; k < 4; k++)
        prefix[0][k] = in[0][k];
    for (size_t i = 1; i < count; i++)
        p256_fe_mul(prefix[i], prefix[i - 1], in[i]);
    p256_fe_inv(inv, prefix[count - 1]);
    for (size_t i = count; i-- > 1;) {
        p256_fe_mul(t, inv, prefix[i - 1]); /* 1 / in[i] */
        p256_fe_mul(inv, inv, in[i]);       /* 1 / (in[0] ... in[i-1]); read in[i] before out[i] */
        for (int k = 0; k < 4; k++)
            out[i][k] = t[k];
    }
    for (int k = 0; k < 4; k++)
        out[0][k] = inv[k];
}
