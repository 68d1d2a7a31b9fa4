/*
 * Variable-time modular inversion by Bernstein and Yang's divsteps ("Fast constant-time gcd
 * computation and modular inversion", 2019, §8 and appendix), for public inputs.
 *
 * State: f = m, g = a, and d, e with d*a == f, e*a == g (mod m).  Each round runs 62 divsteps
 * on the low 64 bits of f and g alone, which yields a 2x2 integer matrix T (entries bounded by
 * 2^62) with [f', g'] = T [f, g] / 2^62 exactly; the same T updates d and e, where the division
 * by 2^62 is made exact by adding k*m (k < 2^62).  When g reaches 0, f = +-gcd(a, m) and d*a == f.
 *
 * The long numbers use signed 62-bit limbs so that T's products fit __int128: limbs below the
 * top are in [0, 2^62), the top limb is signed.  d and e are kept in [0, m): each update gives
 * a value in (-m, 2m) (|u d + v e| < 2^62 m, and k m < 2^62 m), brought back with one +-m.
 */
#include "ec_vartime.h"

enum { L62_MAX = 64 * EC_MAX_LIMBS / 62 + 1 };
#define MASK62 (UINT64_MAX >> 2)

typedef __int128 i128;

struct matrix {
    int64_t u, v, q, r; /* [f', g'] = [[u, v], [q, r]] [f, g] / 2^62 */
};

/* Signed 62-bit limbs of an n-limb number: len = 64n/62 + 1 limbs (64n + 2 bits and more). */
static size_t l62_len(size_t n)
{
    return 64 * n / 62 + 1;
}

static void to_l62(int64_t *out, const uint64_t *a, size_t n)
{
    for (size_t i = 0; i < l62_len(n); i++) {
        size_t bit = 62 * i, limb = bit / 64;
        unsigned shift = (unsigned)(bit % 64);
        uint64_t v = limb < n ? a[limb] >> shift : 0;
        if (shift > 2 && limb + 1 < n)
            v |= a[limb + 1] << (64 - shift);
        out[i] = (int64_t)(v & MASK62);
    }
}

/* A value in [0, 2^(64n)) with normalised limbs back to 64-bit limbs. */
static void from_l62(uint64_t *out, const int64_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t bit = 64 * i, limb = bit / 62;
        unsigned shift = (unsigned)(bit % 62);
        out[i] = (uint64_t)a[limb] >> shift | (uint64_t)a[limb + 1] << (62 - shift);
    }
}

/* Carry so that limbs below the top are in [0, 2^62); the top limb takes the sign. */
static void normalise(int64_t *a, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        a[i + 1] += a[i] >> 62; /* arithmetic shift: floor division */
        a[i] = (int64_t)((uint64_t)a[i] & MASK62);
    }
}

static int l62_cmp(const int64_t *a, const int64_t *b, size_t len)
{
    for (size_t i = len; i-- > 0;)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return 0;
}

/*
 * 62 divsteps (delta form) on the low bits of f (odd) and g.  A run of z zero bits of g is z
 * steps at once (g /= 2^z, delta += z).  Then g is odd: if delta > 0, (f, g) = (g, (g - f)/2)
 * and delta = 1 - delta; else g = (g + f)/2 and delta += 1.  Instead of halving the matrix,
 * the rows of f are doubled: T is then exactly 2^62 times the product of the steps.
 * Unsigned arithmetic wraps as the two's complement the matrix entries are read as.
 */
static int64_t divsteps62(int64_t delta, uint64_t f, uint64_t g, struct matrix *t)
{
    uint64_t u = 1, v = 0, q = 0, r = 1, tmp;
    unsigned left = 62;
    for (;;) {
        unsigned zeros = (unsigned)__builtin_ctzll(g | (uint64_t)1 << left);
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        delta += zeros;
        left -= zeros;
        if (left == 0)
            break;
        if (delta > 0) {
            tmp = f, f = g, g -= tmp;
            tmp = u, u = q, q -= tmp;
            tmp = v, v = r, r -= tmp;
            delta = 1 - delta;
        } else {
            g += f;
            q += u;
            r += v;
            delta += 1;
        }
        g >>= 1;
        u <<= 1;
        v <<= 1;
        left--;
    }
    t->u = (int64_t)u;
    t->v = (int64_t)v;
    t->q = (int64_t)q;
    t->r = (int64_t)r;
    return delta;
}

/* [f, g] = T [f, g] / 2^62 (exact by construction). */
static void update_fg(int64_t *f, int64_t *g, const struct matrix *t, size_t len)
{
    i128 cf = (i128)t->u * f[0] + (i128)t->v * g[0];
    i128 cg = (i128)t->q * f[0] + (i128)t->r * g[0];
    cf >>= 62;
    cg >>= 62;
    for (size_t i = 1; i < len; i++) {
        cf += (i128)t->u * f[i] + (i128)t->v * g[i];
        cg += (i128)t->q * f[i] + (i128)t->r * g[i];
        f[i - 1] = (int64_t)((uint64_t)cf & MASK62);
        g[i - 1] = (int64_t)((uint64_t)cg & MASK62);
        cf >>= 62;
        cg >>= 62;
    }
    f[len - 1] = (int64_t)cf;
    g[len - 1] = (int64_t)cg;
}

/* x = (a*x_coef + b*y_coef + k*m) / 2^62 brought into [0, m); x, y in [0, m). */
static void update_one(int64_t *out, const int64_t *x, const int64_t *y, int64_t cx, int64_t cy,
                       const int64_t *m, uint64_t m_inv62, size_t len)
{
    i128 acc = (i128)cx * x[0] + (i128)cy * y[0];
    int64_t k = (int64_t)((0 - (uint64_t)acc * m_inv62) & MASK62); /* acc + k m == 0 mod 2^62 */
    acc = (acc + (i128)k * m[0]) >> 62;
    for (size_t i = 1; i < len; i++) {
        acc += (i128)cx * x[i] + (i128)cy * y[i] + (i128)k * m[i];
        out[i - 1] = (int64_t)((uint64_t)acc & MASK62);
        acc >>= 62;
    }
    out[len - 1] = (int64_t)acc;
    if (out[len - 1] < 0) {
        for (size_t i = 0; i < len; i++)
            out[i] += m[i];
        normalise(out, len);
    } else if (l62_cmp(out, m, len) >= 0) {
        for (size_t i = 0; i < len; i++)
            out[i] -= m[i];
        normalise(out, len);
    }
}

static int is_zero(const int64_t *a, size_t len)
{
    int64_t acc = 0;
    for (size_t i = 0; i < len; i++)
        acc |= a[i];
    return acc == 0;
}

int ec_modinv_vartime(uint64_t *r, const uint64_t *a, const uint64_t *m, size_t n)
{
    int64_t f[L62_MAX], g[L62_MAX], d[L62_MAX] = {0}, e[L62_MAX] = {1}, m62[L62_MAX], t[L62_MAX];
    size_t len = l62_len(n);
    /* m^-1 mod 2^64 by Newton's iteration: m is its own inverse mod 8, each step doubles the bits. */
    uint64_t inv = m[0];
    for (int i = 0; i < 5; i++)
        inv *= 2 - m[0] * inv;
    uint64_t m_inv62 = inv & MASK62;
    int64_t delta = 1;
    to_l62(m62, m, n);
    to_l62(f, m, n);
    to_l62(g, a, n);
    while (!is_zero(g, len)) {
        struct matrix tm;
        delta = divsteps62(delta, (uint64_t)f[0], (uint64_t)g[0], &tm);
        update_one(t, d, e, tm.u, tm.v, m62, m_inv62, len);
        update_one(e, d, e, tm.q, tm.r, m62, m_inv62, len);
        for (size_t i = 0; i < len; i++)
            d[i] = t[i];
        update_fg(f, g, &tm, len);
    }
    /* f = +-gcd: invertible only if it is +-1; for f = -1 the inverse is -d = m - d. */
    int64_t one[L62_MAX] = {1}, minus[L62_MAX];
    for (size_t i = 0; i < len; i++)
        minus[i] = -f[i];
    normalise(minus, len);
    int positive = l62_cmp(f, one, len) == 0, negative = l62_cmp(minus, one, len) == 0;
    if (!positive && !negative) {
        for (size_t i = 0; i < n; i++)
            r[i] = 0;
        return 0;
    }
    if (negative) {
        for (size_t i = 0; i < len; i++)
            d[i] = m62[i] - d[i];
        normalise(d, len);
    }
    from_l62(r, d, n);
    return 1;
}
