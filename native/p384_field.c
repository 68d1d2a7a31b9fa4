/* Arithmetic mod p = 2^384 - 2^128 - 2^96 + 2^32 - 1 on Montgomery-form elements. */
#include "p384_internal.h"

static const uint64_t RR_P[6] = {0xfffffffe00000001u, 0x0000000200000000u, 0xfffffffe00000000u,
                                 0x0000000200000000u, 0x0000000000000001u, 0};
static const uint64_t ONE[6] = {1, 0, 0, 0, 0, 0};
/* 2^(3*384) mod p: Montgomery multiplication by it turns (aR)^-1 into a^-1 * R. */
static const uint64_t RRR_P[6] = {0xfffffffc00000002u, 0x0000000300000002u, 0xfffffffcfffffffeu,
                                  0x0000000300000005u, 0xfffffffdfffffffdu, 0x0000000300000002u};

void p384_fe_mul(uint64_t r[6], const uint64_t a[6], const uint64_t b[6])
{
#ifdef P384_HAVE_ASM
    if (p384_have_adx()) {
        p384_fe_mul_adx(r, a, b);
        return;
    }
#endif
    p384_mont_mul_portable(r, a, b, &p384_mod_p);
}

void p384_fe_sqr(uint64_t r[6], const uint64_t a[6])
{
#ifdef P384_HAVE_ASM
    if (p384_have_adx()) {
        p384_fe_sqr_adx(r, a);
        return;
    }
#endif
    p384_mont_sqr_portable(r, a, &p384_mod_p);
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

void p384_fe_half(uint64_t r[6], const uint64_t a[6])
{
#ifdef P384_HAVE_ASM
    p384_fe_half_x86(r, a);
#else
    p384_mod_half(r, a, p384_mod_p.m);
#endif
}

void p384_fe_to_mont(uint64_t r[6], const uint64_t a[6])
{
    p384_fe_mul(r, a, RR_P);
}

void p384_fe_from_mont(uint64_t r[6], const uint64_t a[6])
{
    p384_fe_mul(r, a, ONE);
}

/* a^-1 * R from aR: the plain inverse of aR is a^-1 * R^-1, then times R^3 / R. */
void p384_fe_inv(uint64_t r[6], const uint64_t a[6])
{
    uint64_t t[6];
    ec_modinv_vartime(t, a, p384_mod_p.m, 6);
    p384_fe_mul(r, t, RRR_P);
}
