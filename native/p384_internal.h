/*
 * Private interface of the P-384 verify core (p384_*.c).  Not part of the cffi API.
 *
 * Numbers are 6 little-endian 64-bit limbs.  Field elements mod p live in Montgomery
 * form (a * 2^384 mod p) and are always fully reduced, so equality is limb equality.
 * Everything here handles public data only and runs in variable time.
 */
#ifndef KBS_P384_INTERNAL_H
#define KBS_P384_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#include "ec_limbs.h"
#include "ec_vartime.h"

typedef uint64_t p384_limbs[6];

/* An odd modulus m > 2^383 with n0 = -m^-1 mod 2^64; layout is read by the asm multiply. */
struct p384_modulus {
    uint64_t m[6];
    uint64_t n0;
};

extern const struct p384_modulus p384_mod_p;
extern const struct p384_modulus p384_mod_n;

/* --- p384_mont.c: Montgomery multiply a*b/2^384 mod m, inputs < m, output < m --- */
void p384_mont_mul(uint64_t r[6], const uint64_t a[6], const uint64_t b[6],
                   const struct p384_modulus *mod);
void p384_mont_mul_portable(uint64_t r[6], const uint64_t a[6], const uint64_t b[6],
                            const struct p384_modulus *mod);
/* a^2/2^384 mod m: the square's 21 limb products, then a separate Montgomery reduction. */
void p384_mont_sqr_portable(uint64_t r[6], const uint64_t a[6], const struct p384_modulus *mod);
/* Nonzero when the CPU has BMI2 and ADX, so p384_mont_mul, p384_fe_mul and p384_fe_sqr take
 * the asm path. */
int p384_have_adx(void);
#if defined(__x86_64__) && defined(__GNUC__)
#define P384_HAVE_ASM 1
void p384_mont_mul_adx(uint64_t r[6], const uint64_t a[6], const uint64_t b[6],
                       const struct p384_modulus *mod);
/* The same for mod p only, reducing with p's special form; and a dedicated squaring. */
void p384_fe_mul_adx(uint64_t r[6], const uint64_t a[6], const uint64_t b[6]);
void p384_fe_sqr_adx(uint64_t r[6], const uint64_t a[6]);
/* p384_field_x86.c: a +- b and a/2 mod p, plain x86-64. */
void p384_fe_add_x86(uint64_t r[6], const uint64_t a[6], const uint64_t b[6]);
void p384_fe_sub_x86(uint64_t r[6], const uint64_t a[6], const uint64_t b[6]);
void p384_fe_half_x86(uint64_t r[6], const uint64_t a[6]);
#endif

/* --- p384_bignum.c: plain modular helpers (byte conversion, comparison and the inversion are
 * the shared ec_limbs.h and ec_vartime.h, with n = 6) --- */
/* a + b mod m and a - b mod m, inputs < m. */
void p384_mod_add(uint64_t r[6], const uint64_t a[6], const uint64_t b[6], const uint64_t m[6]);
void p384_mod_sub(uint64_t r[6], const uint64_t a[6], const uint64_t b[6], const uint64_t m[6]);
/* a/2 mod m (odd m), a < m. */
void p384_mod_half(uint64_t r[6], const uint64_t a[6], const uint64_t m[6]);

/* --- p384_field.c: arithmetic mod p in Montgomery form --- */
void p384_fe_mul(uint64_t r[6], const uint64_t a[6], const uint64_t b[6]);
void p384_fe_sqr(uint64_t r[6], const uint64_t a[6]);
void p384_fe_add(uint64_t r[6], const uint64_t a[6], const uint64_t b[6]);
void p384_fe_sub(uint64_t r[6], const uint64_t a[6], const uint64_t b[6]);
void p384_fe_half(uint64_t r[6], const uint64_t a[6]);
void p384_fe_to_mont(uint64_t r[6], const uint64_t a[6]);
void p384_fe_from_mont(uint64_t r[6], const uint64_t a[6]);
void p384_fe_inv(uint64_t r[6], const uint64_t a[6]);

/* --- p384_point.c: curve points --- */
struct p384_affine {
    p384_limbs x, y;
};
struct p384_jacobian {
    p384_limbs x, y, z; /* z == 0 is the point at infinity */
};

void p384_point_double(struct p384_jacobian *r, const struct p384_jacobian *a);
void p384_point_add(struct p384_jacobian *r, const struct p384_jacobian *a, const struct p384_jacobian *b);
/* r = a + (x, sign ? -y : y) for an affine b. */
void p384_point_add_affine(struct p384_jacobian *r, const struct p384_jacobian *a, const uint64_t *b_xy,
                           int negate);
/* Decode and check 0x04||X||Y; fills q in Montgomery form.  Returns a kbs_status. */
int p384_point_decode(struct p384_affine *q, const uint8_t *pubkey, size_t pubkey_len);
/* out[j * count + i] = (2i+1) * bases[j] in affine form, for j < parts and i < count, with
 * one field inversion for all; bases finite (decoded points and their multiples). */
enum { P384_ODD_MAX_PARTS = 8, P384_ODD_MAX_COUNT = 32 };
void p384_odd_multiples_affine(uint64_t (*out)[12], const struct p384_jacobian *bases, size_t parts,
                               size_t count);

/* --- p384_scalar.c: scalars mod n --- */
enum { P384_BATCH_MAX = 64 };
/* w_mont = s^-1 * R mod n (Montgomery form) for s in [1, n). */
void p384_scalar_inv_mont(uint64_t w_mont[6], const uint64_t s[6]);
/* The same for count <= P384_BATCH_MAX values at the cost of one inversion. */
void p384_scalar_batch_inv_mont(uint64_t (*w_mont)[6], const uint64_t (*s)[6], size_t count);
/* u1 = e*w, u2 = r*w mod n, given w_mont from the above; e, r < n. */
void p384_scalars(uint64_t u1[6], uint64_t u2[6], const uint64_t e[6], const uint64_t r[6],
                  const uint64_t w_mont[6]);

#endif
