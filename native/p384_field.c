/* Arithmetic mod p = 2^384 - 2^128 - 2^96 + 2^32 - 1 on Montgomery-form elements. */
#include "p384_internal.h"

static const uint64_t RR_P[6] = {0xfffffffe00000001u, 0x0000000200000000u, 0xfffffffe00000000u,
                                 0x0000000200000000u, 0x0000000000000001u, 0};
static const uint64_t ONE[6] = {1, 0, 0, 0, 0, 0};

void p384_fe_mul(uint64_t r[6], const uint64_t a[6], const uint64_t b[6])
{
    p384_mont_mul(r, a, b, &p384_mod_p);
}

void p384_fe_sqr(uint64_t r[6], const uint64_t a[6])
{
    p384_mont_mul(r, a, a, &p384_mod_p);
}

void p384_fe_add(uint64_t r[6], const uint64_t a[6], const uint64_t b[6])
{
#ifdef P384_HAVE_ASM
    p384_fe_add_x86(r, a, b);
#else
    p384_mod_add(r, a, b, p384_mod_p.m);
#endif
}

void p384_fe_sub(uint64_t r[6], const uint64_t a[6], const uint64_t b[6])
{
#ifdef P384_HAVE_ASM
    p384_fe_sub_x86(r, a, b);
#else
    p384_mod_sub(r, a, b, p384_mod_p.m);
#endif
}

void p384_fe_to_mont(uint64_t r[6], const uint64_t a[6])
{
    p384_mont_mul(r, a, RR_P, &p384_mod_p);
}

void p384_fe_from_mont(uint64_t r[6], const uint64_t a[6])
{
    p384_mont_mul(r, a, ONE, &p384_mod_p);
}

/* (aR)^-1 * R: leave Montgomery form, invert, re-enter. */
void p384_fe_inv(uint64_t r[6], const uint64_t a[6])
{
    uint64_t t[6];
    p384_fe_from_mont(t, a);
    p384_mod_inv_vartime(t, t, &p384_mod_p);
    p384_fe_to_mont(r, t);
}
