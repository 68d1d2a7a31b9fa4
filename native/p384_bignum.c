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

void p384_mod_half(uint64_t r[6], const uint64_t a[6], const uint64_t m[6])
{
    uint64_t t[6], top = 0;
    if (a[0] & 1)
        top = add_raw(t, a, m); /* a + m is even, < 2^385 */
    else
        for (int i = 0; i < 6; i++)
            t[i] = a[i];
    for (int i = 0; i < 5; i++)
        r[i] = (t[i] >> 1) | (t[i + 1] << 63);
    r[5] = (t[5] >> 1) | (top << 63);
}

/*
 * Modular inversion by Bernstein and Yang's safegcd ("Fast constant-time gcd computation
 * and modular inversion", 2019) in the variable-time form of libsecp256k1's modinv64 (see
 * its doc/safegcd_implementation.md): divsteps on f = m and g = a with eta = -delta, 62 at
 * a time on the low limbs, each batch giving a 2x2 matrix t (entries |u| + |v| <= 2^62) that
 * is then applied to the full f, g and to the cofactors d, e (with d*a == f, e*a == g mod
 * m), the latter made divisible by 2^62 by adding a multiple of m.  When g reaches 0,
 * f = +-gcd = +-1 and d = +-a^-1.  Numbers here are 7 signed 62-bit limbs (434 bits): limbs
 * 0..5 in [0, 2^62) after each update, the top one signed; d and e stay in (-2m, m).
 */
typedef __int128 i128;
enum { S62_LIMBS = 7 };
#define M62 (UINT64_MAX >> 2)

struct trans2x2 {
    int64_t u, v, q, r;
};

static void to_s62(int64_t out[S62_LIMBS], const uint64_t a[6])
{
    for (unsigned i = 0; i < S62_LIMBS; i++) {
        unsigned bit = 62 * i, limb = bit / 64, shift = bit % 64;
        uint64_t v = a[limb] >> shift;
        if (shift > 2 && limb + 1 < 6)
            v |= a[limb + 1] << (64 - shift);
        out[i] = (int64_t)(v & M62);
    }
}

/* a in [0, 2^384) from normalised limbs (0..5 in [0, 2^62), the top one >= 0).  Output limb
 * i starts in limb 64i / 62 at bit 2i (<= 10), so two input limbs always cover its 64 bits. */
static void from_s62(uint64_t out[6], const int64_t a[S62_LIMBS])
{
    for (unsigned i = 0; i < 6; i++) {
        unsigned bit = 64 * i, limb = bit / 62, shift = bit % 62;
        out[i] = (uint64_t)a[limb] >> shift | (uint64_t)a[limb + 1] << (62 - shift);
    }
}

/* 62 divsteps on the low bits of f (odd) and g, skipping runs of zeros of g at once and
 * cancelling up to 4 or 6 low bits of g per step when no swap is due.  Returns eta. */
static int64_t divsteps_62_var(int64_t eta, uint64_t f0, uint64_t g0, struct trans2x2 *t)
{
    uint64_t u = 1, v = 0, q = 0, r = 1, f = f0, g = g0, m, w, tmp;
    int i = 62, limit, zeros;
    for (;;) {
        zeros = __builtin_ctzll(g | (UINT64_MAX << i)); /* the sentinel stops at i */
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        eta -= zeros;
        i -= zeros;
        if (i == 0)
            break;
        /* f and g odd here; u*f0 + v*g0 == f << (62 - i), q*f0 + r*g0 == g << (62 - i) */
        if (eta < 0) { /* delta > 0: swap, (f, g) = (g, -f) */
            eta = -eta;
            tmp = f, f = g, g = -tmp;
            tmp = u, u = q, q = -tmp;
            tmp = v, v = r, r = -tmp;
            /* cancel up to 6 bits of g (no more than i, nor than eta + 1 before the next swap) */
            limit = (int)eta + 1 > i ? i : (int)eta + 1;
            m = (UINT64_MAX >> (64 - limit)) & 63u;
            w = (f * g * (f * f - 2)) & m; /* -g/f mod 2^6 */
        } else {
            limit = (int)eta + 1 > i ? i : (int)eta + 1;
            m = (UINT64_MAX >> (64 - limit)) & 15u;
            w = f + (((f + 1) & 4) << 1); /* f^-1 mod 16 */
            w = (-w * g) & m;
        }
        g += f * w;
        q += u * w;
        r += v * w;
    }
    t->u = (int64_t)u;
    t->v = (int64_t)v;
    t->q = (int64_t)q;
    t->r = (int64_t)r;
    return eta;
}

/* [d, e] = (t [d, e] + m [md, me]) / 2^62, md and me chosen for exact division and to keep
 * both in (-2m, m). */
static void update_de(int64_t d[S62_LIMBS], int64_t e[S62_LIMBS], const struct trans2x2 *t,
                      const int64_t m[S62_LIMBS], uint64_t m_inv62)
{
    const int64_t u = t->u, v = t->v, q = t->q, r = t->r;
    int64_t sd = d[S62_LIMBS - 1] >> 63, se = e[S62_LIMBS - 1] >> 63; /* -1 if negative */
    int64_t md = (u & sd) + (v & se), me = (q & sd) + (r & se);
    i128 cd = (i128)u * d[0] + (i128)v * e[0], ce = (i128)q * d[0] + (i128)r * e[0];
    md -= (int64_t)((m_inv62 * (uint64_t)cd + (uint64_t)md) & M62);
    me -= (int64_t)((m_inv62 * (uint64_t)ce + (uint64_t)me) & M62);
    cd += (i128)m[0] * md;
    ce += (i128)m[0] * me;
    cd >>= 62; /* the low 62 bits are zero now */
    ce >>= 62;
    for (int i = 1; i < S62_LIMBS; i++) {
        cd += (i128)u * d[i] + (i128)v * e[i] + (i128)m[i] * md;
        ce += (i128)q * d[i] + (i128)r * e[i] + (i128)m[i] * me;
        d[i - 1] = (int64_t)((uint64_t)cd & M62);
        e[i - 1] = (int64_t)((uint64_t)ce & M62);
        cd >>= 62;
        ce >>= 62;
    }
    d[S62_LIMBS - 1] = (int64_t)cd;
    e[S62_LIMBS - 1] = (int64_t)ce;
}

/* [f, g] = t [f, g] / 2^62 on their low len limbs (the higher ones are sign only). */
static void update_fg_var(int len, int64_t f[S62_LIMBS], int64_t g[S62_LIMBS], const struct trans2x2 *t)
{
    const int64_t u = t->u, v = t->v, q = t->q, r = t->r;
    i128 cf = (i128)u * f[0] + (i128)v * g[0], cg = (i128)q * f[0] + (i128)r * g[0];
    cf >>= 62;
    cg >>= 62;
    for (int i = 1; i < len; i++) {
        cf += (i128)u * f[i] + (i128)v * g[i];
        cg += (i128)q * f[i] + (i128)r * g[i];
        f[i - 1] = (int64_t)((uint64_t)cf & M62);
        g[i - 1] = (int64_t)((uint64_t)cg & M62);
        cf >>= 62;
        cg >>= 62;
    }
    f[len - 1] = (int64_t)cf;
    g[len - 1] = (int64_t)cg;
}

/* Carry-propagate so limbs 0..5 are in [0, 2^62) and the top one holds the sign. */
static void s62_carry(int64_t a[S62_LIMBS])
{
    for (int i = 0; i < S62_LIMBS - 1; i++) {
        a[i + 1] += a[i] >> 62; /* arithmetic shift: floor division by 2^62 */
        a[i] = (int64_t)((uint64_t)a[i] & M62);
    }
}

static int s62_cmp(const int64_t a[S62_LIMBS], const int64_t b[S62_LIMBS])
{
    for (int i = S62_LIMBS - 1; i >= 0; i--)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return 0;
}

/* a^-1 mod m (odd m), variable time; a must be in [1, m).  a = 0 gives 0. */
void p384_mod_inv_vartime(uint64_t r[6], const uint64_t a[6], const struct p384_modulus *mod)
{
    int64_t d[S62_LIMBS] = {0}, e[S62_LIMBS] = {1}, f[S62_LIMBS], g[S62_LIMBS], m[S62_LIMBS];
    uint64_t m_inv62 = (0 - mod->n0) & M62; /* n0 = -m^-1 mod 2^64 */
    int64_t eta = -1; /* eta = -delta, delta = 1 */
    int len = S62_LIMBS;
    to_s62(m, mod->m);
    to_s62(f, mod->m);
    to_s62(g, a);
    for (;;) {
        struct trans2x2 t;
        eta = divsteps_62_var(eta, (uint64_t)f[0], (uint64_t)g[0], &t);
        update_de(d, e, &t, m, m_inv62);
        update_fg_var(len, f, g, &t);
        if (g[0] == 0) {
            int64_t any = 0;
            for (int j = 1; j < len; j++)
                any |= g[j];
            if (any == 0)
                break;
        }
        /* Shorten f and g when both top limbs are only sign (0 or -1). */
        int64_t fn = f[len - 1], gn = g[len - 1];
        if (len > 1 && (fn ^ (fn >> 63)) == 0 && (gn ^ (gn >> 63)) == 0) {
            f[len - 2] = (int64_t)((uint64_t)f[len - 2] | (uint64_t)fn << 62);
            g[len - 2] = (int64_t)((uint64_t)g[len - 2] | (uint64_t)gn << 62);
            len--;
        }
    }
    /* f = +-1 (a = 0 gives f = m and d = 0); d in (-2m, m): negate if f < 0, then bring
     * into [0, m). */
    if (f[len - 1] < 0)
        for (int i = 0; i < S62_LIMBS; i++)
            d[i] = -d[i];
    s62_carry(d);
    while (d[S62_LIMBS - 1] < 0) {
        for (int i = 0; i < S62_LIMBS; i++)
            d[i] += m[i];
        s62_carry(d);
    }
    while (s62_cmp(d, m) >= 0) {
        for (int i = 0; i < S62_LIMBS; i++)
            d[i] -= m[i];
        s62_carry(d);
    }
    from_s62(r, d);
}
