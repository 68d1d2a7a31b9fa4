/*
 * Montgomery multiplication for the two P-256 moduli, portable C.  It is the scalar
 * arithmetic mod n (a few calls per verification), and the field multiply where the x86-64
 * asm (p256_field_x86.c) cannot run: other CPUs, or x86-64 without BMI2.
 * native/tests/test_p256.c checks one against the other.
 */
#include "ec_limbs.h"
#include "p256_internal.h"

typedef unsigned __int128 u128;

const struct p256_modulus p256_mod_p = {{0xffffffffffffffffu, 0x00000000ffffffffu, 0, 0xffffffff00000001u}, 1};
const struct p256_modulus p256_mod_n = {
    {0xf3b9cac2fc632551u, 0xbce6faada7179e84u, 0xffffffffffffffffu, 0xffffffff00000000u}, 0xccd1c8aaee00bc4fu};

/*
 * Operand scanning: t = a * b as 8 limbs, then four reduction rounds, each adding the multiple
 * q * m (q = t[i] * n0) that clears limb i.  The carry out of limb i + 4 goes into limb i + 5
 * with the next round; the final value is below 2m, so one conditional subtraction ends it.
 */
void p256_mont_mul(uint64_t r[4], const uint64_t a[4], const uint64_t b[4], const struct p256_modulus *mod)
{
    uint64_t t[8] = {0}, top = 0;
    for (int i = 0; i < 4; i++) {
        u128 acc = 0;
        for (int j = 0; j < 4; j++) {
            acc += (u128)a[i] * b[j] + t[i + j];
            t[i + j] = (uint64_t)acc;
            acc >>= 64;
        }
        t[i + 4] = (uint64_t)acc;
    }
    for (int i = 0; i < 4; i++) {
        uint64_t q = t[i] * mod->n0;
        u128 acc = 0;
        for (int j = 0; j < 4; j++) {
            acc += (u128)q * mod->m[j] + t[i + j];
            t[i + j] = (uint64_t)acc;
            acc >>= 64;
        }
        acc += (u128)t[i + 4] + top;
        t[i + 4] = (uint64_t)acc;
        top = (uint64_t)(acc >> 64);
    }
    uint64_t d[4];
    unsigned char borrow = ec_sub_n(d, t + 4, mod->m, 4);
    int keep = top < borrow; /* top:t[4..7] < m */
    for (int i = 0; i < 4; i++)
        r[i] = keep ? t[i + 4] : d[i];
}
