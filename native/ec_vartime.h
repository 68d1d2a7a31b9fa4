/*
 * Curve-independent pieces of the variable-time verify cores, for any limb count up to 6: the one
 * wNAF recoding and the one inversion both P-256 (n = 4) and P-384 (n = 6) use.
 * Numbers are little-endian 64-bit limbs.  Public data only: these branch on values.
 */
#ifndef KBS_EC_VARTIME_H
#define KBS_EC_VARTIME_H
#include <stddef.h>
#include <stdint.h>

enum { EC_MAX_LIMBS = 6 };

/*
 * The width-w NAF of k (n limbs, n <= EC_MAX_LIMBS, 2 <= w <= 8): digits[i] is 0 or odd with
 * |digits[i]| < 2^(w-1), sum digits[i] 2^i == k, and any w consecutive digits hold at most one
 * non-zero.  digits needs room for 64n + 1 entries, all of which are written; returns the
 * position of the top non-zero digit plus one (0 for k == 0).  ec_wnaf.c.
 */
size_t ec_wnaf(int8_t *digits, const uint64_t *k, size_t n, unsigned w);

/*
 * r = a^-1 mod m for an odd modulus m of n limbs (n <= EC_MAX_LIMBS) and a in [0, m).
 * Returns 1, or 0 with r = 0 when a has no inverse (a == 0, or gcd(a, m) > 1).  r may alias a.
 * Variable time (safegcd: Bernstein-Yang divsteps, 62 per matrix).  ec_modinv.c.
 */
int ec_modinv_vartime(uint64_t *r, const uint64_t *a, const uint64_t *m, size_t n);

#endif
