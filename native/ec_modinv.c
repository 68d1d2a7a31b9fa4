/*
 * Variable-time modular inversion by Bernstein and Yang's safegcd ("Fast constant-time gcd
 * computation and modular inversion", 2019) in the variable-time form of libsecp256k1's modinv64
 * (see its doc/safegcd_implementation.md), for public inputs; one implementation for every limb
 * count (P-256's 4 and P-384's 6).
 *
 * Divsteps on f = m and g = a with eta = -delta, 62 at a time on the low limbs, each batch giving
 * a 2x2 matrix t (entries |u| + |v| <= 2^62) with [f', g'] = t [f, g] / 2^62 exactly; t is then
 * applied to the full f, g and to the cofactors d, e (d*a == f, e*a == g mod m), the latter made
 * divisible by 2^62 by adding a multiple of m.  When g reaches 0, f = +-gcd(a, m) and d*a == f.
 * Numbers are signed 62-bit limbs (64n/62 + 1 of them, two bits and more of headroom): limbs
 * below the top in [0, 2^62) after each update, the top one signed; d and e stay in (-2m, m).
 */
#include "ec_vartime.h"

typedef __int128 i128;
enum { S62_MAX = 64 * EC_MAX_LIMBS / 62 + 1 };
#define M62 (UINT64_MAX >> 2)

struct trans2x2 {
    int64_t u, v, q, r;
};

static inline size_t s62_len(size_t n)
{
    return 64 * n / 62 + 1;
}

static inline void to_s62(int64_t *out, const uint64_t *a, size_t n)
{
    for (size_t i = 0; i < s62_len(n); i++) {
        size_t bit = 62 * i, limb = bit / 64;
        unsigned shift = (unsigned)(bit % 64);
        uint64_t v = limb < n ? a[limb] >> shift : 0;
        if (shift > 2 && limb + 1 < n)
            v |= a[limb + 1] << (64 - shift);
        out[i] = (int64_t)(v & M62);
    }
}

/* a in [0, 2^64n) from normalised limbs.  Output limb i starts in limb 64i / 62 at bit 2i mod 62,
 * so two input limbs always cover its 64 bits. */
static inline void from_s62(uint64_t *out, const int64_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t bit = 64 * i, limb = bit / 62;
        unsigned shift = (unsigned)(bit % 62);
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

/* [d, e] = (t [d, e] + m [md, me]) / 2^62 on len limbs, md and me chosen for exact division and
 * to keep both in (-2m, m). */
static inline void update_de(int64_t *d, int64_t *e, const struct trans2x2 *t, const int64_t *m,
                             uint64_t m_inv62, size_t len)
{
    const int64_t u = t->u, v = t->v, q = t->q, r = t->r;
    int64_t sd = d[len - 1] >> 63, se = e[len - 1] >> 63; /* -1 if negative */
    int64_t md = (u & sd) + (v & se), me = (q & sd) + (r & se);
    i128 cd = (i128)u * d[0] + (i128)v * e[0], ce = (i128)q * d[0] + (i128)r * e[0];
    md -= (int64_t)((m_inv62 * (uint64_t)cd + (uint64_t)md) & M62);
    me -= (int64_t)((m_inv62 * (uint64_t)ce + (uint64_t)me) & M62);
    cd += (i128)m[0] * md;
    ce += (i128)m[0] * me;
    cd >>= 62; /* the low 62 bits are zero now */
    ce >>= 62;
#pragma GCC unroll 8 /* len is a constant once inlined: measured ~5% faster unrolled */
    for (size_t i = 1; i < len; i++) {
        cd += (i128)u * d[i] + (i128)v * e[i] + (i128)m[i] * md;
        ce += (i128)q * d[i] + (i128)r * e[i] + (i128)m[i] * me;
        d[i - 1] = (int64_t)((uint64_t)cd & M62);
        e[i - 1] = (int64_t)((uint64_t)ce & M62);
        cd >>= 62;
        ce >>= 62;
    }
    d[len - 1] = (int64_t)cd;
    e[len - 1] = (int64_t)ce;
}

/* [f, g] = t [f, g] / 2^62 on their low len limbs (the higher ones are sign only). */
static void update_fg_var(size_t len, int64_t *f, int64_t *g, const struct trans2x2 *t)
{
    const int64_t u = t->u, v = t->v, q = t->q, r = t->r;
    i128 cf = (i128)u * f[0] + (i128)v * g[0], cg = (i128)q * f[0] + (i128)r * g[0];
    cf >>= 62;
    cg >>= 62;
    for (size_t i = 1; i < len; i++) {
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

/* Carry-propagate so the limbs below the top are in [0, 2^62) and the top one holds the sign. */
static inline void s62_carry(int64_t *a, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        a[i + 1] += a[i] >> 62; /* arithmetic shift: floor division by 2^62 */
        a[i] = (int64_t)((uint64_t)a[i] & M62);
    }
}

static inline int s62_cmp(const int64_t *a, const int64_t *b, size_t len)
{
    for (size_t i = len; i-- > 0;)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return 0;
}

/* Is f (len normalised limbs) +1 or -1?  -1 is 2^62 - 1 in every limb below the top, and -1. */
static int s62_is_unit(const int64_t *f, size_t len)
{
    int plus = 1, minus = 1;
    for (size_t i = 0; i < len; i++) {
        plus &= f[i] == (i == 0);
        minus &= f[i] == (i + 1 == len ? -1 : (int64_t)M62);
    }
    return plus | minus;
}

/* Inlined per limb count below, so that the limb loops of d and e have constant bounds. */
static inline __attribute__((always_inline)) int modinv(uint64_t *r, const uint64_t *a, const uint64_t *m,
                                                        size_t n)
{
    const size_t limbs = s62_len(n);
    int64_t d[S62_MAX] = {0}, e[S62_MAX] = {1}, f[S62_MAX], g[S62_MAX], m62[S62_MAX];
    /* m^-1 mod 2^64 by Newton's iteration: odd m is its own inverse mod 8, each step doubles the bits. */
    uint64_t inv = m[0];
    for (int i = 0; i < 5; i++)
        inv *= 2 - m[0] * inv;
    const uint64_t m_inv62 = inv & M62;
    int64_t eta = -1; /* eta = -delta, delta = 1 */
    size_t len = limbs;
    to_s62(m62, m, n);
    to_s62(f, m, n);
    to_s62(g, a, n);
    for (;;) {
        struct trans2x2 t;
        eta = divsteps_62_var(eta, (uint64_t)f[0], (uint64_t)g[0], &t);
        update_de(d, e, &t, m62, m_inv62, limbs);
        update_fg_var(len, f, g, &t);
        if (g[0] == 0) {
            int64_t any = 0;
            for (size_t j = 1; j < len; j++)
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
    /* f = +-gcd(a, m): no inverse unless it is +-1 (a = 0 leaves f = m). */
    if (!s62_is_unit(f, len)) {
        for (size_t i = 0; i < n; i++)
            r[i] = 0;
        return 0;
    }
    /* d*a == f and d in (-2m, m): negate if f = -1, then bring into [0, m). */
    if (f[len - 1] < 0)
        for (size_t i = 0; i < limbs; i++)
            d[i] = -d[i];
    s62_carry(d, limbs);
    while (d[limbs - 1] < 0) {
        for (size_t i = 0; i < limbs; i++)
            d[i] += m62[i];
        s62_carry(d, limbs);
    }
    while (s62_cmp(d, m62, limbs) >= 0) {
        for (size_t i = 0; i < limbs; i++)
            d[i] -= m62[i];
        s62_carry(d, limbs);
    }
    from_s62(r, d, n);
    return 1;
}

int ec_modinv_vartime(uint64_t *r, const uint64_t *a, const uint64_t *m, size_t n)
{
    switch (n) {
    case 4:
        return modinv(r, a, m, 4);
    case 6:
        return modinv(r, a, m, 6);
    default:
        return modinv(r, a, m, n);
    }
}
