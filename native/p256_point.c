/*
 * P-256 points: Jacobian doubling and mixed addition (a = -3), key decoding, and tables of odd
 * multiples.  The additions test for equal and opposite inputs (variable time is fine: all
 * inputs are public), so a ladder never feeds an exceptional case to the formulas.
 */
#include <string.h>

#include "kbs_native.h"
#include "ec_limbs.h"
#include "p256_internal.h"
#include "p256_tables.h"

static void copy4(uint64_t r[4], const uint64_t a[4])
{
    memcpy(r, a, 4 * sizeof a[0]);
}

/*
 * 2A, A finite, in 4M + 4S: with T = 2Y, U = T^2 = 4Y^2, S = X U = 4XY^2 and
 * M = 3(X - Z^2)(X + Z^2) (= 3X^2 + a Z^4 for a = -3):
 *   X' = M^2 - 2S,  Y' = M (S - X') - U^2 / 2  (U^2 / 2 = 8Y^4),  Z' = T Z.
 * A itself on the new Z (scaled by T) is (X T^2, Y T^3) = (S, U^2 / 2): written to
 * a_on_new_z (x then y) when not NULL, for the co-Z table walk.  r may alias a.
 */
static void double_finite(struct p256_jacobian *r, const struct p256_jacobian *a, uint64_t *a_on_new_z)
{
    uint64_t t[4], u[4], s[4], m[4], zz[4], w[4];
    p256_fe_add(t, a->y, a->y);
    p256_fe_sqr(u, t);
    p256_fe_mul(s, a->x, u);
    p256_fe_sqr(zz, a->z);
    p256_fe_add(w, a->x, zz);
    p256_fe_sub(m, a->x, zz);
    p256_fe_mul(m, m, w);
    p256_fe_add(w, m, m);
    p256_fe_add(m, w, m);
    p256_fe_mul(r->z, t, a->z); /* the last read of a */
    p256_fe_sqr(w, m);
    p256_fe_sub(w, w, s);
    p256_fe_sub(r->x, w, s);
    p256_fe_sub(w, s, r->x);
    p256_fe_mul(w, m, w);
    p256_fe_sqr(u, u);
    p256_fe_half(u, u);
    p256_fe_sub(r->y, w, u);
    if (a_on_new_z != NULL) {
        copy4(a_on_new_z, s);
        copy4(a_on_new_z + 4, u);
    }
}

void p256_point_double(struct p256_jacobian *r, const struct p256_jacobian *a)
{
    if (p256_fe_is_zero(a->z)) {
        memset(r, 0, sizeof *r);
        return;
    }
    double_finite(r, a, NULL);
}

/*
 * A + B for B = (x2, y2) affine, in 8M + 3S: U2 = x2 Z^2, S2 = y2 Z^3, H = U2 - X, R = S2 - Y,
 *   X' = R^2 - H^3 - 2 X H^2,  Y' = R (X H^2 - X') - Y H^3,  Z' = Z H.
 * H = 0 means equal x: A = B (R = 0, so double) or A = -B (the sum is infinity).
 */
void p256_point_add_affine(struct p256_jacobian *r, const struct p256_jacobian *a, const uint64_t xy[8],
                           int negate)
{
    uint64_t y2[4], zz[4], u2[4], s2[4], h[4], rr[4], hh[4], hhh[4], v[4], t[4];
    if (negate)
        p256_fe_neg(y2, xy + 4);
    else
        copy4(y2, xy + 4);
    if (p256_fe_is_zero(a->z)) {
        copy4(r->x, xy);
        copy4(r->y, y2);
        copy4(r->z, P256_ONE_MONT);
        return;
    }
    p256_fe_sqr(zz, a->z);
    p256_fe_mul(u2, xy, zz);
    p256_fe_mul(s2, y2, a->z);
    p256_fe_mul(s2, s2, zz);
    p256_fe_sub(h, u2, a->x);
    p256_fe_sub(rr, s2, a->y);
    if (p256_fe_is_zero(h)) {
        if (p256_fe_is_zero(rr))
            double_finite(r, a, NULL);
        else
            memset(r, 0, sizeof *r);
        return;
    }
    struct p256_jacobian out;
    p256_fe_sqr(hh, h);
    p256_fe_mul(hhh, hh, h);
    p256_fe_mul(v, a->x, hh);
    p256_fe_sqr(t, rr);
    p256_fe_sub(t, t, hhh);
    p256_fe_sub(t, t, v);
    p256_fe_sub(out.x, t, v);
    p256_fe_sub(t, v, out.x);
    p256_fe_mul(t, rr, t);
    p256_fe_mul(hhh, a->y, hhh);
    p256_fe_sub(out.y, t, hhh);
    p256_fe_mul(out.z, a->z, h);
    *r = out;
}

int p256_point_decode(struct p256_jacobian *q, const uint8_t *pubkey, size_t pubkey_len)
{
    uint64_t x[4], y[4], lhs[4], rhs[4], t[4];
    if (pubkey_len != KBS_P256_POINT_SIZE)
        return KBS_ERR_KEY_LENGTH;
    if (pubkey[0] != 0x04)
        return KBS_ERR_KEY_FORMAT;
    ec_from_be_n(x, pubkey + 1, 4);
    ec_from_be_n(y, pubkey + 33, 4);
    if (ec_cmp_n(x, P256_P, 4) >= 0 || ec_cmp_n(y, P256_P, 4) >= 0)
        return KBS_ERR_KEY_NOT_ON_CURVE;
    p256_fe_to_mont(q->x, x);
    p256_fe_to_mont(q->y, y);
    copy4(q->z, P256_ONE_MONT);
    /* y^2 == x^3 - 3x + b.  The cofactor is 1: every point of the curve is in the group, and
     * (0, 0) -- no encoding of infinity here -- is not on it (b != 0). */
    p256_fe_sqr(lhs, q->y);
    p256_fe_sqr(rhs, q->x);
    p256_fe_mul(rhs, rhs, q->x);
    p256_fe_add(t, q->x, q->x);
    p256_fe_add(t, t, q->x);
    p256_fe_sub(rhs, rhs, t);
    p256_fe_add(rhs, rhs, P256_B_MONT);
    return p256_fe_equal(lhs, rhs) ? KBS_OK : KBS_ERR_KEY_NOT_ON_CURVE;
}

/*
 * Co-Z addition with update (Meloni, 2007): D = (dx, dy) and T = (tx, ty) share one Z.  Writes
 * D + T to sum and D itself, rescaled, back to d, both on the new Z' = Z h, h = dx - tx (returned).
 * 4M + 2S.  D != +-T.
 */
static void zaddu(uint64_t sum[8], uint64_t d[8], const uint64_t t[8], uint64_t h[4])
{
    uint64_t c[4], w1[4], w2[4], a1[4], rr[4], x[4];
    p256_fe_sub(h, d, t);
    p256_fe_sqr(c, h);
    p256_fe_mul(w1, d, c);     /* dx h^2: D's new x */
    p256_fe_mul(w2, t, c);     /* tx h^2: T's new x */
    p256_fe_sub(x, w1, w2);    /* h^3 */
    p256_fe_mul(a1, d + 4, x); /* dy h^3: D's new y */
    p256_fe_sub(rr, d + 4, t + 4);
    p256_fe_sqr(x, rr);
    p256_fe_sub(x, x, w1);
    p256_fe_sub(sum, x, w2);
    p256_fe_sub(x, w1, sum);
    p256_fe_mul(x, rr, x);
    p256_fe_sub(sum + 4, x, a1);
    copy4(d, w1);
    copy4(d + 4, a1);
}

/*
 * Per base P: 2P by a doubling that also gives P on 2P's Z, then P_i = P_(i-1) + 2P by co-Z
 * additions, each moving 2P onto the new Z.  P_i's Z is Z_(i-1) h_i; every Z is kept and all are
 * inverted at once.  P_(i-1) = (2i - 1)P != +-2P as long as neither (2i + 1)P nor (2i - 3)P is
 * infinity, which holds for i < 32 in a group of prime order n.
 */
void p256_odd_multiples(uint64_t (*out)[8], const struct p256_jacobian *bases, size_t parts, size_t count)
{
    uint64_t z[P256_ODD_MAX_PARTS * P256_ODD_MAX_COUNT][4], twice_xy[8], h[4], zi2[4];
    _Static_assert(P256_ODD_MAX_PARTS * P256_ODD_MAX_COUNT <= P256_BATCH_INV_MAX, "one batch inversion");
    if (parts == 0 || count == 0 || parts > P256_ODD_MAX_PARTS || count > P256_ODD_MAX_COUNT)
        return;
    for (size_t j = 0; j < parts; j++) {
        uint64_t(*pt)[8] = out + j * count, (*zj)[4] = z + j * count;
        struct p256_jacobian twice;
        double_finite(&twice, &bases[j], pt[0]);
        copy4(zj[0], twice.z);
        copy4(twice_xy, twice.x);
        copy4(twice_xy + 4, twice.y);
        for (size_t i = 1; i < count; i++) {
            zaddu(pt[i], twice_xy, pt[i - 1], h);
            p256_fe_mul(zj[i], zj[i - 1], h);
        }
    }
    p256_fe_batch_inv(z, (const uint64_t(*)[4])z, parts * count);
    for (size_t k = 0; k < parts * count; k++) {
        p256_fe_sqr(zi2, z[k]);
        p256_fe_mul(out[k], out[k], zi2);
        p256_fe_mul(zi2, zi2, z[k]);
        p256_fe_mul(out[k] + 4, out[k] + 4, zi2);
    }
}
