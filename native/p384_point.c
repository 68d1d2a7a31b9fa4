/*
 * P-384 points in Jacobian coordinates (x = X/Z^2, y = Y/Z^3), a = -3.
 * Additions detect equal and opposite inputs (variable time is fine: public data),
 * so wNAF ladders never feed an exceptional case to the formulas.
 */
#include <string.h>

#include "kbs_native.h"
#include "p384_internal.h"

static const uint64_t B_MONT[6] = {0x081188719d412dccu, 0xf729add87a4c32ecu, 0x77f2209b1920022eu,
                                   0xe3374bee94938ae2u, 0xb62b21f41f022094u, 0xcd08114b604fbff9u};
static const uint64_t ONE_MONT[6] = {0xffffffff00000001u, 0x00000000ffffffffu, 1, 0, 0, 0};

static void set_infinity(struct p384_jacobian *r)
{
    memset(r, 0, sizeof *r);
}

/*
 * dbl-2001-b with a = -3 (alpha = 3(X - Z^2)(X + Z^2)), computed from 2Y, as 4M + 4S and ten
 * additions instead of 3M + 5S and sixteen: with gamma' = (2Y)^2 = 4Y^2 and beta' = X gamma'
 * = 4XY^2,  X3 = alpha^2 - 2 beta',  Y3 = alpha (beta' - X3) - gamma'^2 / 2,  Z3 = 2Y * Z.
 * As a by-product, (beta', gamma'^2 / 2) = (X (2Y)^2, Y (2Y)^3) is the input point with Z3
 * as its Z (for co-Z additions), stored in a_x, a_y when they are not NULL.  r may alias a;
 * a is finite.
 */
static void double_core(struct p384_jacobian *r, const struct p384_jacobian *a, uint64_t a_x[6],
                        uint64_t a_y[6])
{
    uint64_t delta[6], gamma[6], beta[6], alpha[6], t1[6], t2[6];
    p384_fe_add(t2, a->y, a->y);
    p384_fe_sqr(gamma, t2);
    p384_fe_sqr(delta, a->z);
    p384_fe_mul(beta, a->x, gamma);
    p384_fe_sub(t1, a->x, delta);
    p384_fe_add(delta, a->x, delta);
    p384_fe_mul(r->z, t2, a->z); /* a->x, a->y and a->z are not read again */
    p384_fe_mul(t1, t1, delta);
    p384_fe_add(alpha, t1, t1);
    p384_fe_add(alpha, alpha, t1);
    p384_fe_sqr(t1, alpha);
    p384_fe_sub(t1, t1, beta);
    p384_fe_sub(r->x, t1, beta);
    p384_fe_sub(t1, beta, r->x);
    p384_fe_mul(t1, alpha, t1);
    p384_fe_sqr(gamma, gamma);
    p384_fe_half(gamma, gamma);
    p384_fe_sub(r->y, t1, gamma);
    if (a_x != NULL) {
        memcpy(a_x, beta, sizeof beta);
        memcpy(a_y, gamma, sizeof gamma);
    }
}

void p384_point_double(struct p384_jacobian *r, const struct p384_jacobian *a)
{
    if (ec_is_zero_n(a->z, 6)) {
        set_infinity(r);
        return;
    }
    double_core(r, a, NULL, NULL);
}

/*
 * Shared tail of both additions, given U1 = X1 Z2^2, U2, S1 = Y1 Z2^3, S2 and the
 * product of the Z inputs: H = U2 - U1, R = S2 - S1.  Returns 0 if H == 0 (caller decides
 * between doubling and infinity, depending on R).
 */
static int add_tail(struct p384_jacobian *r, const uint64_t u1[6], const uint64_t u2[6],
                    const uint64_t s1[6], const uint64_t s2[6], const uint64_t zz[6], int *same)
{
    uint64_t h[6], rr[6], hh[6], hhh[6], v[6], t[6];
    p384_fe_sub(h, u2, u1);
    p384_fe_sub(rr, s2, s1);
    if (ec_is_zero_n(h, 6)) {
        *same = ec_is_zero_n(rr, 6);
        return 0;
    }
    p384_fe_sqr(hh, h);
    p384_fe_mul(hhh, h, hh);
    p384_fe_mul(v, u1, hh);
    p384_fe_mul(r->z, zz, h);
    /* X3 = R^2 - H^3 - 2V */
    p384_fe_sqr(t, rr);
    p384_fe_sub(t, t, hhh);
    p384_fe_sub(t, t, v);
    p384_fe_sub(r->x, t, v);
    /* Y3 = R (V - X3) - S1 H^3 */
    p384_fe_sub(v, v, r->x);
    p384_fe_mul(v, rr, v);
    p384_fe_mul(t, s1, hhh);
    p384_fe_sub(r->y, v, t);
    return 1;
}

void p384_point_add(struct p384_jacobian *r, const struct p384_jacobian *a, const struct p384_jacobian *b)
{
    uint64_t z1z1[6], z2z2[6], u1[6], u2[6], s1[6], s2[6], zz[6];
    if (ec_is_zero_n(a->z, 6)) {
        *r = *b;
        return;
    }
    if (ec_is_zero_n(b->z, 6)) {
        *r = *a;
        return;
    }
    p384_fe_sqr(z1z1, a->z);
    p384_fe_sqr(z2z2, b->z);
    p384_fe_mul(u1, a->x, z2z2);
    p384_fe_mul(u2, b->x, z1z1);
    p384_fe_mul(s1, a->y, b->z);
    p384_fe_mul(s1, s1, z2z2);
    p384_fe_mul(s2, b->y, a->z);
    p384_fe_mul(s2, s2, z1z1);
    p384_fe_mul(zz, a->z, b->z);
    struct p384_jacobian out;
    int same = 0;
    if (add_tail(&out, u1, u2, s1, s2, zz, &same)) {
        *r = out;
        return;
    }
    if (same)
        p384_point_double(r, a);
    else
        set_infinity(r);
}

void p384_point_add_affine(struct p384_jacobian *r, const struct p384_jacobian *a, const uint64_t *b_xy,
                           int negate)
{
    uint64_t y2[6], z1z1[6], u2[6], s2[6];
    if (negate)
        p384_fe_sub(y2, (const uint64_t[6]){0}, b_xy + 6);
    else
        memcpy(y2, b_xy + 6, sizeof y2);
    if (ec_is_zero_n(a->z, 6)) {
        memcpy(r->x, b_xy, sizeof r->x);
        memcpy(r->y, y2, sizeof r->y);
        memcpy(r->z, ONE_MONT, sizeof r->z);
        return;
    }
    p384_fe_sqr(z1z1, a->z);
    p384_fe_mul(u2, b_xy, z1z1);
    p384_fe_mul(s2, y2, a->z);
    p384_fe_mul(s2, s2, z1z1);
    struct p384_jacobian out;
    int same = 0;
    if (add_tail(&out, a->x, u2, a->y, s2, a->z, &same)) {
        *r = out;
        return;
    }
    if (same)
        p384_point_double(r, a);
    else
        set_infinity(r);
}

int p384_point_decode(struct p384_affine *q, const uint8_t *pubkey, size_t pubkey_len)
{
    uint64_t x[6], y[6], lhs[6], rhs[6], t[6];
    if (pubkey_len != KBS_P384_POINT_SIZE)
        return KBS_ERR_KEY_LENGTH;
    if (pubkey[0] != 0x04)
        return KBS_ERR_KEY_FORMAT;
    ec_from_be_n(x, pubkey + 1, 6);
    ec_from_be_n(y, pubkey + 49, 6);
    if (ec_cmp_n(x, p384_mod_p.m, 6) >= 0 || ec_cmp_n(y, p384_mod_p.m, 6) >= 0)
        return KBS_ERR_KEY_NOT_ON_CURVE;
    p384_fe_to_mont(q->x, x);
    p384_fe_to_mont(q->y, y);
    /* y^2 == x^3 - 3x + b; the cofactor is 1, so on the curve means in the group. */
    p384_fe_sqr(lhs, q->y);
    p384_fe_sqr(rhs, q->x);
    p384_fe_mul(rhs, rhs, q->x);
    p384_fe_add(t, q->x, q->x);
    p384_fe_add(t, t, q->x);
    p384_fe_sub(rhs, rhs, t);
    p384_fe_add(rhs, rhs, B_MONT);
    if (ec_cmp_n(lhs, rhs, 6) != 0)
        return KBS_ERR_KEY_NOT_ON_CURVE;
    return KBS_OK;
}

/*
 * Co-Z addition with update (Meloni 2007), the table scheme of Longa and Miri (2008): for
 * T = (tx, ty) and D = (dx, dy) sharing one Z, writes T + D to (sx, sy) and D rescaled to
 * (dx, dy), both with Z * h, h = tx - dx (returned in h).  4M + 2S.  T != +-D.
 */
static void zaddu(uint64_t sx[6], uint64_t sy[6], const uint64_t tx[6], const uint64_t ty[6],
                  uint64_t dx[6], uint64_t dy[6], uint64_t h[6])
{
    uint64_t a[6], b[6], c[6], rr[6], t[6];
    p384_fe_sub(h, tx, dx);
    p384_fe_sqr(a, h);
    p384_fe_mul(b, dx, a);  /* dx h^2: D's new x */
    p384_fe_mul(c, tx, a);
    p384_fe_sub(rr, ty, dy);
    p384_fe_sub(t, c, b);   /* h^3 */
    p384_fe_mul(dy, dy, t); /* dy h^3: D's new y */
    memcpy(dx, b, sizeof b);
    p384_fe_sqr(t, rr);
    p384_fe_sub(t, t, b);
    p384_fe_sub(sx, t, c);  /* X3 = R^2 - B - C */
    p384_fe_sub(t, b, sx);
    p384_fe_mul(t, rr, t);
    p384_fe_sub(sy, t, dy); /* Y3 = R (B - X3) - E */
}

/*
 * For each part j: out[j * count + i] = (2i + 1) * bases[j] in affine form, for i < count.
 * One doubling gives 2P and P with 2P's Z; then co-Z additions, each T_i = T_(i-1) + 2P,
 * with Z_i = Z_(i-1) * h_i.  Only the last Z of each part is inverted (all parts at once, by
 * Montgomery's trick), and the ratios h_i walk the inverse back down the part.  The bases
 * are finite points of the prime-order group, so T_(i-1) = (2i - 1)P != +-2P (neither (2i + 1)P
 * nor (2i - 3)P is infinity for count < n / 2): co-Z additions meet no exceptional case.
 */
void p384_odd_multiples_affine(uint64_t (*out)[12], const struct p384_jacobian *bases, size_t parts,
                               size_t count)
{
    uint64_t ratio[P384_ODD_MAX_PARTS][P384_ODD_MAX_COUNT][6], zlast[P384_ODD_MAX_PARTS][6];
    uint64_t prefix[P384_ODD_MAX_PARTS][6], inv[6], zi[6], zi2[6], t[6];
    if (parts == 0 || count == 0)
        return;
    if (parts > P384_ODD_MAX_PARTS)
        parts = P384_ODD_MAX_PARTS;
    if (count > P384_ODD_MAX_COUNT)
        count = P384_ODD_MAX_COUNT;
    for (size_t j = 0; j < parts; j++) {
        uint64_t(*pt)[12] = out + j * count;
        struct p384_jacobian twice;
        double_core(&twice, &bases[j], pt[0], pt[0] + 6);
        memcpy(zlast[j], twice.z, sizeof zlast[j]);
        for (size_t i = 1; i < count; i++) {
            zaddu(pt[i], pt[i] + 6, pt[i - 1], pt[i - 1] + 6, twice.x, twice.y, ratio[j][i]);
            p384_fe_mul(zlast[j], zlast[j], ratio[j][i]);
        }
    }
    memcpy(prefix[0], zlast[0], sizeof prefix[0]);
    for (size_t j = 1; j < parts; j++)
        p384_fe_mul(prefix[j], prefix[j - 1], zlast[j]);
    p384_fe_inv(inv, prefix[parts - 1]);
    for (size_t j = parts; j-- > 0;) {
        if (j > 0) {
            p384_fe_mul(zi, inv, prefix[j - 1]); /* 1 / zlast[j] */
            p384_fe_mul(inv, inv, zlast[j]);
        } else {
            memcpy(zi, inv, sizeof zi);
        }
        uint64_t(*pt)[12] = out + j * count;
        for (size_t i = count; i-- > 0;) {
            p384_fe_sqr(zi2, zi);
            p384_fe_mul(pt[i], pt[i], zi2);
            p384_fe_mul(t, zi2, zi);
            p384_fe_mul(pt[i] + 6, pt[i] + 6, t);
            if (i > 0)
                p384_fe_mul(zi, zi, ratio[j][i]); /* 1 / Z_(i-1) */
        }
    }
}
