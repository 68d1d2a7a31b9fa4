/*
 * Montgomery multiplication for 6-limb odd moduli (p and n of P-384).
 *
 * Two implementations: mulx/adcx/adox assembly (p384_mont_adx.c) chosen per call from
 * the CPU features libgcc detected at load time, and portable CIOS in C as fallback.
 * The choice reads no state of ours, so the core stays free of mutable globals.
 */
#include "p384_internal.h"

typedef unsigned __int128 u128;

const struct p384_modulus p384_mod_p = {
    {0x00000000ffffffffu, 0xffffffff00000000u, 0xfffffffffffffffeu, 0xffffffffffffffffu,
     0xffffffffffffffffu, 0xffffffffffffffffu},
    0x0000000100000001u};
const struct p384_modulus p384_mod_n = {
    {0xecec196accc52973u, 0x581a0db248b0a77au, 0xc7634d81f4372ddfu, 0xffffffffffffffffu,
     0xffffffffffffffffu, 0xffffffffffffffffu},
    0x6ed46089e88fdc45u};

/* native/tests/test_p384.c checks these against the generated p384_tables.h. */
_Static_assert(sizeof(struct p384_modulus) == 56, "asm reads n0 at offset 48");

void p384_mont_mul_portable(uint64_t r[6], const uint64_t a[6], const uint64_t b[6],
                            const struct p384_modulus *mod)
{
    uint64_t t[8] = {0};
    for (int i = 0; i < 6; i++) {
        u128 c = 0;
        for (int j = 0; j < 6; j++) {
            c += (u128)a[j] * b[i] + t[j];
            t[j] = (uint64_t)c;
            c >>= 64;
        }
        c += t[6];
        t[6] = (uint64_t)c;
        t[7] = (uint64_t)(c >> 64);

        uint64_t m = t[0] * mod->n0;
        c = ((u128)m * mod->m[0] + t[0]) >> 64;
        for (int j = 1; j < 6; j++) {
            c += (u128)m * mod->m[j] + t[j];
            t[j - 1] = (uint64_t)c;
            c >>= 64;
        }
        c += t[6];
        t[5] = (uint64_t)c;
        t[6] = t[7] + (uint64_t)(c >> 64);
    }
    /* t < 2m: subtract m once unless that borrows. */
    uint64_t d[6];
    u128 borrow = 0;
    for (int j = 0; j < 6; j++) {
        u128 v = (u128)t[j] - mod->m[j] - borrow;
        d[j] = (uint64_t)v;
        borrow = (v >> 64) & 1;
    }
    int keep = t[6] < borrow;
    for (int j = 0; j < 6; j++)
        r[j] = keep ? t[j] : d[j];
}

void p384_mont_sqr_portable(uint64_t r[6], const uint64_t a[6], const struct p384_modulus *mod)
{
    uint64_t t[12] = {0};
    u128 c;
    /* cross products a_i a_j (i < j) into t[1..10] */
    for (int i = 0; i < 5; i++) {
        c = 0;
        for (int j = i + 1; j < 6; j++) {
            c += (u128)a[i] * a[j] + t[i + j];
            t[i + j] = (uint64_t)c;
            c >>= 64;
        }
        t[i + 6] = (uint64_t)c;
    }
    /* double them and add the squares a_i^2 */
    uint64_t top = 0;
    for (int k = 1; k < 12; k++) {
        uint64_t v = t[k];
        t[k] = (v << 1) | top;
        top = v >> 63;
    }
    c = 0;
    for (int i = 0; i < 6; i++) {
        u128 sq = (u128)a[i] * a[i];
        c += (u128)t[2 * i] + (uint64_t)sq;
        t[2 * i] = (uint64_t)c;
        c >>= 64;
        c += (u128)t[2 * i + 1] + (uint64_t)(sq >> 64);
        t[2 * i + 1] = (uint64_t)c;
        c >>= 64;
    }
    /* Montgomery reduction: step i clears t[i] and adds its carry at t[i + 6]; the bit that
     * leaves t[i + 6] goes in at t[i + 7] with the next step's carry (extra). */
    uint64_t extra = 0;
    for (int i = 0; i < 6; i++) {
        uint64_t m = t[i] * mod->n0;
        c = 0;
        for (int j = 0; j < 6; j++) {
            c += (u128)m * mod->m[j] + t[i + j];
            t[i + j] = (uint64_t)c;
            c >>= 64;
        }
        c += (u128)t[i + 6] + extra;
        t[i + 6] = (uint64_t)c;
        extra = (uint64_t)(c >> 64);
    }
    /* extra:t[6..11] < 2m: subtract m once unless that borrows. */
    uint64_t d[6];
    u128 borrow = 0;
    for (int j = 0; j < 6; j++) {
        u128 v = (u128)t[j + 6] - mod->m[j] - borrow;
        d[j] = (uint64_t)v;
        borrow = (v >> 64) & 1;
    }
    int keep = extra < borrow;
    for (int j = 0; j < 6; j++)
        r[j] = keep ? t[j + 6] : d[j];
}

#if defined(P384_HAVE_ASM) && !defined(KBS_P384_PORTABLE_ONLY) && defined(__clang__)
/*
 * clang's __builtin_cpu_supports knows no "adx" (clang 14, the libFuzzer build), so ask
 * cpuid leaf 7 (EBX bit 8 BMI2, bit 19 ADX) once at load time, as libgcc fills the
 * __cpu_model that gcc's builtin reads: written before any call, read-only after.
 */
#include <cpuid.h>
static int clang_have_adx;
__attribute__((constructor)) static void clang_detect_adx(void)
{
    unsigned a, b, c, d;
    clang_have_adx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b >> 8 & 1) && (b >> 19 & 1);
}
#endif

/*
 * Build with -DKBS_P384_PORTABLE_ONLY to test or time the fallback on an ADX machine, and
 * with -DKBS_P384_FORCE_ADX to count the asm path's instructions under valgrind, whose
 * CPUID hides ADX (it runs the instructions).
 */
int p384_have_adx(void)
{
#if defined(P384_HAVE_ASM) && !defined(KBS_P384_PORTABLE_ONLY) && defined(KBS_P384_FORCE_ADX)
    return 1;
#elif defined(P384_HAVE_ASM) && !defined(KBS_P384_PORTABLE_ONLY) && defined(__clang__)
    return clang_have_adx;
#elif defined(P384_HAVE_ASM) && !defined(KBS_P384_PORTABLE_ONLY)
    return __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("adx");
#else
    return 0;
#endif
}

void p384_mont_mul(uint64_t r[6], const uint64_t a[6], const uint64_t b[6],
                   const struct p384_modulus *mod)
{
#ifdef P384_HAVE_ASM
    if (p384_have_adx()) {
        p384_mont_mul_adx(r, a, b, mod);
        return;
    }
#endif
    p384_mont_mul_portable(r, a, b, mod);
}
