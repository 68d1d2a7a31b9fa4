/*
 * Private interface of the P-256 verify core (p256_*.c); not part of the cffi API.
 *
 * Numbers are 4 little-endian 64-bit limbs.  Field elements mod p are in Montgomery form
 * (a * 2^256 mod p) and always fully reduced, so equality is limb equality and zero is all
 * limbs zero.  Everything here handles public data and runs in variable time.
 */
#ifndef KBS_P256_INTERNAL_H
#define KBS_P256_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#include "ec_limbs.h"

/* An odd 256-bit modulus and n0 = -m^-1 mod 2^64 (1 for p). */
struct p256_modulus {
    uint64_t m[4];
    uint64_t n0;
};

extern const struct p256_modulus p256_mod_p;
extern const struct p256_modulus p256_mod_n;

/* --- p256_mont.c: portable Montgomery multiply a*b/2^256 mod m; a, b < m, result < m --- */
void p256_mont_mul(uint64_t r[4], const uint64_t a[4], const uint64_t b[4], const struct p256_modulus *mod);

/* --- p256_field_x86.c: the same mod p in x86-64 asm with mulx (BMI2) --- */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(KBS_P256_PORTABLE_ONLY)
#define P256_HAVE_ASM 1
void p256_fe_mul_bmi2(uint64_t r[4], const uint64_t a[4], const uint64_t b[4]);
void p256_fe_sqr_bmi2(uint64_t r[4], const uint64_t a[4]);
/* Every x86-64 CPU since Haswell (2013) and Excavator (2015) has BMI2.  The compiler's runtime
 * filled in the CPU model at load time; reading it is a load and a test, and no state of ours. */
static inline int p256_have_bmi2(void)
{
    return __builtin_cpu_supports("bmi2");
}
#endif

/* --- arithmetic mod p on Montgomery-form elements; r may alias the inputs ---
 * The multiply, square, add and subtract are inline here: a doubling calls them 18 times, and
 * out-of-line calls to such short code cost about a fifth of a verification. */
static inline void p256_fe_mul(uint64_t r[4], const uint64_t a[4], const uint64_t b[4])
{
#ifdef P256_HAVE_ASM
    if (p256_have_bmi2()) {
        p256_fe_mul_bmi2(r, a, b);
        return;
    }
#endif
    p256_mont_mul(r, a, b, &p256_mod_p);
}

static inline void p256_fe_sqr(uint64_t r[4], const uint64_t a[4])
{
#ifdef P256_HAVE_ASM
    if (p256_have_bmi2()) {
        p256_fe_sqr_bmi2(r, a);
        return;
    }
#endif
    p256_mont_mul(r, a, a, &p256_mod_p);
}

/* r = *src, with the source chosen once (a choice per limb compiles to a branch per limb). */
static inline void p256_fe_copy(uint64_t r[4], const uint64_t *src)
{
    r[0] = src[0];
    r[1] = src[1];
    r[2] = src[2];
    r[3] = src[3];
}

/* a + b, less p unless that borrows more than the carry of a + b gave. */
static inline void p256_fe_add(uint64_t r[4], const uint64_t a[4], const uint64_t b[4])
{
    uint64_t sum[4], d[4];
    unsigned char carry = ec_add_n(sum, a, b, 4);
    unsigned char borrow = ec_sub_n(d, sum, p256_mod_p.m, 4);
    p256_fe_copy(r, borrow > carry ? sum : d);
}

static inline void p256_fe_sub(uint64_t r[4], const uint64_t a[4], const uint64_t b[4])
{
    uint64_t diff[4], d[4];
    unsigned char borrow = ec_sub_n(diff, a, b, 4);
    ec_add_n(d, diff, p256_mod_p.m, 4);
    p256_fe_copy(r, borrow ? d : diff);
}

static inline int p256_fe_is_zero(const uint64_t a[4])
{
    return ec_is_zero_n(a, 4);
}

static inline int p256_fe_equal(const uint64_t a[4], const uint64_t b[4])
{
    return ec_cmp_n(a, b, 4) == 0;
}

/* --- p256_field.c: the rest of the field --- */
void p256_fe_neg(uint64_t r[4], const uint64_t a[4]);
void p256_fe_half(uint64_t r[4], const uint64_t a[4]);
void p256_fe_to_mont(uint64_t r[4], const uint64_t a[4]);
void p256_fe_from_mont(uint64_t r[4], const uint64_t a[4]);
/* a^-1 for a != 0 (0 gives 0). */
void p256_fe_inv(uint64_t r[4], const uint64_t a[4]);
/* out[i] = in[i]^-1 for count nonzero elements, with one inversion; out may alias in. */
enum { P256_BATCH_INV_MAX = 256 };
void p256_fe_batch_inv(uint64_t (*out)[4], const uint64_t (*in)[4], size_t count);

/* --- p256_point.c: Jacobian points (x = X/Z^2, y = Y/Z^3), a = -3 --- */
struct p256_jacobian {
    uint64_t x[4], y[4], z[4]; /* z == 0 is the point at infinity */
};

void p256_point_double(struct p256_jacobian *r, const struct p256_jacobian *a);
/* r = a + (x, y) or a + (x, -y) for an affine point xy = x || y; r may alias a. */
void p256_point_add_affine(struct p256_jacobian *r, const struct p256_jacobian *a, const uint64_t xy[8],
                           int negate);
/* Decode and validate 0x04 || X || Y (X, Y < p, on the curve): q gets Montgomery x, y and z = 1.
 * Returns a kbs_status (KBS_ERR_KEY_*). */
int p256_point_decode(struct p256_jacobian *q, const uint8_t *pubkey, size_t pubkey_len);
/* out[j * count + i] = (2i + 1) * bases[j] as affine x || y, for j < parts, i < count, with one
 * field inversion for all; bases are finite points of the group. */
enum { P256_ODD_MAX_PARTS = 8, P256_ODD_MAX_COUNT = 32 };
void p256_odd_multiples(uint64_t (*out)[8], const struct p256_jacobian *bases, size_t parts, size_t count);

/* --- p256_scalar.c: scalars mod n --- */
/* v = the big-endian 32 bytes; 1 if v is in [1, n). */
int p256_scalar_parse(uint64_t v[4], const uint8_t be[32]);
/* e = the leftmost 256 bits of the hash, reduced mod n (FIPS 186-5 §6.4.2). */
void p256_scalar_from_hash(uint64_t e[4], const uint8_t *hash, size_t hash_len);
/* u1 = e/s, u2 = r/s mod n; e < n, r and s in [1, n). */
void p256_scalar_u1_u2(uint64_t u1[4], uint64_t u2[4], const uint64_t e[4], const uint64_t r[4],
                       const uint64_t s[4]);

#endif
