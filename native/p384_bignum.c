/* Plain 384-bit arithmetic: byte conversion, comparison, modular add/sub, inversion. */
#include "p384_internal.h"

void p384_from_be(uint64_t r[6], const uint8_t in[48])
{
    for (int i = 0; i < 6; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++)
            v = (v << 8) | in[(5 - i) * 8 + j];
        r[i] = v;
    }
}

void p384_to_be(uint8_t out[48], const uint64_t a[6])
{
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 8; j++)
            out[(5 - i) * 8 + j] = (uint8_t)(a[i] >> (56 - 8 * j));
}

int p384_cmp(const uint64_t a[6], const uint64_t b[6])
{
    for (int i = 5; i >= 0; i--)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return 0;
}

int p384_is_zero(const uint64_t a[6])
{
    return (a[0] | a[1] | a[2] | a[3] | a[4] | a[5]) == 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <x86intrin.h>
/* gcc compiles these intrinsics to adc/sbb chains; its __int128 chains are much slower. */
static inline unsigned char addc(unsigned char c, uint64_t a, uint64_t b, uint64_t *out)
{
    unsigned long long t;
    c = _addcarry_u64(c, a, b, &t);
    *out = t;
    return c;
}
static inline unsigned char subb(unsigned char c, uint64_t a, uint64_t b, uint64_t *out)
{
    unsigned long long t;
    c = _subborrow_u64(c, a, b, &t);
    *out = t;
    return c;
}
#else
typedef unsigned __int128 u128;
static unsigned char addc(unsigned char c, uint64_t a, uint64_t b, uint64_t *out)
{
    u128 v = (u128)a + b + c;
    *out = (uint64_t)v;
    return (unsigned char)(v >> 64);
}
static unsigned char subb(unsigned char c, uint64_t a, uint64_t b, uint64_t *out)
{
    u128 v = (u128)a - b - c;
    *out = (uint64_t)v;
    return (unsigned char)((v >> 64) & 1);
}
#endif

static uint64_t add_raw(uint64_t r[6], const uint64_t a[6], const uint64_t b[6])
{
    unsigned char c = 0;
    for (int i = 0; i < 6; i++)
        c = addc(c, a[i], b[i], &r[i]);
    return c;
}

static uint64_t sub_raw(uint64_t r[6], const uint64_t a[6], const uint64_t b[6])
{
    unsigned char c = 0;
    for (int i = 0; i < 6; i++)
        c = subb(c, a[i], b[i], &r[i]);
    return c;
}

void p384_mod_add(uint64_t r[6], const uint64_t a[6], const uint64_t b[6], const uint64_t m[6])
{
    uint64_t t[6];
    uint64_t carry = add_raw(t, a, b);
    if (carry || p384_cmp(t, m) >= 0)
        sub_raw(t, t, m);
    for (int i = 0; i < 6; i++)
        r[i] = t[i];
}

void p384_mod_sub(uint64_t r[6], const uint64_t a[6], const uint64_t b[6], const uint64_t m[6])
{
    if (sub_raw(r, a, b))
        add_raw(r, r, m);
}

/* a >>= k for 0 < k < 64. */
static void shr6(uint64_t a[6], unsigned k)
{
    for (int i = 0; i < 5; i++)
        a[i] = (a[i] >> k) | (a[i + 1] << (64 - k));
    a[5] >>= k;
}

/* a <<= k for 0 < k < 64 on 7 limbs (the values stay below 2^386). */
static void shl7(uint64_t a[7], unsigned k)
{
    for (int i = 6; i > 0; i--)
        a[i] = (a[i] << k) | (a[i - 1] >> (64 - k));
    a[0] <<= k;
}

static void add7(uint64_t r[7], const uint64_t a[7], const uint64_t b[7])
{
    unsigned char c = 0;
    for (int i = 0; i < 7; i++)
        c = addc(c, a[i], b[i], &r[i]);
}

/* Strip the trailing zeros of u (nonzero), shifting x left by as many; returns the count. */
static unsigned strip_twos(uint64_t u[6], uint64_t x[7])
{
    unsigned total = 0;
    while ((u[0] & 1) == 0) {
        unsigned k = u[0] ? (unsigned)__builtin_ctzll(u[0]) : 63;
        shr6(u, k);
        shl7(x, k);
        total += k;
    }
    return total;
}

/*
 * Kaliski's almost-inverse: a binary extended Euclid whose cofactors only ever double
 * and add (no halving mod m), giving a^-1 * 2^k for 384 <= k <= 768; Montgomery steps
 * then remove 2^k.  Invariant: m = u*s + v*r.  Variable time: public inputs only.
 */
void p384_mod_inv_vartime(uint64_t r[6], const uint64_t a[6], const struct p384_modulus *mod)
{
    uint64_t u[6], v[6], x1[7] = {0}, x2[7] = {1, 0, 0, 0, 0, 0, 0};
    unsigned k = 0;
    for (int i = 0; i < 6; i++) {
        u[i] = mod->m[i];
        v[i] = a[i];
        r[i] = 0;
    }
    if (p384_is_zero(v))
        return; /* no inverse; callers never ask */
    k += strip_twos(v, x1);
    for (;;) { /* u and v odd here */
        if (p384_cmp(u, v) > 0) {
            sub_raw(u, u, v);
            add7(x1, x1, x2);
            k += strip_twos(u, x2);
        } else {
            sub_raw(v, v, u);
            add7(x2, x1, x2);
            if (p384_is_zero(v)) {
                shl7(x1, 1);
                k++;
                break;
            }
            k += strip_twos(v, x1);
        }
    }
    /* x1 < 2m: reduce once, then a^-1 * 2^k = m - x1. */
    uint64_t t[6];
    for (int i = 0; i < 6; i++)
        t[i] = x1[i];
    if (x1[6] || p384_cmp(t, mod->m) >= 0)
        sub_raw(t, t, mod->m);
    sub_raw(t, mod->m, t);
    /* times 2^-384 per Montgomery step with 1, then 2^-k' via 2^(384-k') mod m */
    static const uint64_t one[6] = {1, 0, 0, 0, 0, 0};
    while (k > 384) {
        p384_mont_mul(t, t, one, mod);
        k -= 384;
    }
    uint64_t c[6] = {0};
    if (k == 0)
        sub_raw(c, c, mod->m); /* 2^384 mod m = 2^384 - m, as m > 2^383 */
    else
        c[(384 - k) / 64] = (uint64_t)1 << ((384 - k) % 64);
    p384_mont_mul(r, t, c, mod);
}
