/* Modular add, subtract and halve on 384-bit numbers: the portable field path (x86-64 builds use
 * p384_field_x86.c instead) and the scalar side. */
#include "ec_limbs.h"
#include "p384_internal.h"

void p384_mod_add(uint64_t r[6], const uint64_t a[6], const uint64_t b[6], const uint64_t m[6])
{
    uint64_t t[6];
    unsigned char carry = ec_add_n(t, a, b, 6);
    if (carry || ec_cmp_n(t, m, 6) >= 0)
        ec_sub_n(t, t, m, 6);
    for (int i = 0; i < 6; i++)
        r[i] = t[i];
}

void p384_mod_sub(uint64_t r[6], const uint64_t a[6], const uint64_t b[6], const uint64_t m[6])
{
    if (ec_sub_n(r, a, b, 6))
        ec_add_n(r, r, m, 6);
}

void p384_mod_half(uint64_t r[6], const uint64_t a[6], const uint64_t m[6])
{
    uint64_t t[6], top = 0;
    if (a[0] & 1)
        top = ec_add_n(t, a, m, 6); /* a + m is even, < 2^385 */
    else
        for (int i = 0; i < 6; i++)
            t[i] = a[i];
    for (int i = 0; i < 5; i++)
        r[i] = (t[i] >> 1) | (t[i + 1] << 63);
    r[5] = (t[5] >> 1) | (top << 63);
}
