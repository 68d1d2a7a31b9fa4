/*
 * Multi-limb integer helpers shared by the verify cores (curve-independent: P-256 and P-384).  Numbers are arrays of `n` little-endian 64-bit limbs; everything is public
 * data, so these may branch on values.
 *
 * The carry primitives use the x86 intrinsics where they exist: gcc turns unsigned __int128
 * carry chains into slow code (reference/p384.md §1), but compiles these to adc/sbb, as long as
 * the loop is unrolled (gcc -O2 would keep it and save CF through setb in every round).
 */
#ifndef KBS_EC_LIMBS_H
#define KBS_EC_LIMBS_H
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <x86intrin.h>
static inline unsigned char ec_addc(unsigned char carry, uint64_t a, uint64_t b, uint64_t *out)
{
    unsigned long long t;
    carry = _addcarry_u64(carry, a, b, &t);
    *out = t;
    return carry;
}
static inline unsigned char ec_subb(unsigned char borrow, uint64_t a, uint64_t b, uint64_t *out)
{
    unsigned long long t;
    borrow = _subborrow_u64(borrow, a, b, &t);
    *out = t;
    return borrow;
}
#else
static inline unsigned char ec_addc(unsigned char carry, uint64_t a, uint64_t b, uint64_t *out)
{
    unsigned __int128 v = (unsigned __int128)a + b + carry;
    *out = (uint64_t)v;
    return (unsigned char)(v >> 64);
}
static inline unsigned char ec_subb(unsigned char borrow, uint64_t a, uint64_t b, uint64_t *out)
{
    unsigned __int128 v = (unsigned __int128)a - b - borrow;
    *out = (uint64_t)v;
    return (unsigned char)((v >> 64) & 1);
}
#endif

/* r = a + b; returns the carry out.  r may alias a or b. */
static inline unsigned char ec_add_n(uint64_t *r, const uint64_t *a, const uint64_t *b, size_t n)
{
    unsigned char c = 0;
#pragma GCC unroll 8
    for (size_t i = 0; i < n; i++)
        c = ec_addc(c, a[i], b[i], &r[i]);
    return c;
}

/* r = a - b; returns the borrow out.  r may alias a or b. */
static inline unsigned char ec_sub_n(uint64_t *r, const uint64_t *a, const uint64_t *b, size_t n)
{
    unsigned char c = 0;
#pragma GCC unroll 8
    for (size_t i = 0; i < n; i++)
        c = ec_subb(c, a[i], b[i], &r[i]);
    return c;
}

/* -1, 0 or 1 as a <, == or > b. */
static inline int ec_cmp_n(const uint64_t *a, const uint64_t *b, size_t n)
{
    for (size_t i = n; i-- > 0;)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return 0;
}

static inline int ec_is_zero_n(const uint64_t *a, size_t n)
{
    uint64_t acc = 0;
#pragma GCC unroll 8 /* the point formulas test Z and H with this: keep it a straight OR chain */
    for (size_t i = 0; i < n; i++)
        acc |= a[i];
    return acc == 0;
}

/* The big-endian bytes in[0, 8n) as limbs. */
static inline void ec_from_be_n(uint64_t *r, const uint8_t *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = in + 8 * (n - 1 - i);
        uint64_t v = 0;
        for (int j = 0; j < 8; j++)
            v = v << 8 | p[j];
        r[i] = v;
    }
}

static inline void ec_to_be_n(uint8_t *out, const uint64_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < 8; j++)
            out[8 * (n - 1 - i) + (size_t)j] = (uint8_t)(a[i] >> (56 - 8 * j));
}

#endif
