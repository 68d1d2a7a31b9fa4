/*
 * Width-w NAF recoding (ec_vartime.h), right to left on a private copy of k: at the lowest set
 * bit, the w-bit window there is odd; take it as a signed digit d in (-2^(w-1), 2^(w-1)) and
 * subtract d * 2^bit.  That clears the window (for d < 0 it adds 2^(bit+w), a carry upwards),
 * so the next digit is at least w positions higher.  Zero runs are skipped a limb at a time.
 */
#include <string.h>

#include "ec_vartime.h"

/* The lowest set bit of v (limbs words) at or above `bit`, or 64 * limbs if there is none. */
static size_t next_one(const uint64_t *v, size_t limbs, size_t bit)
{
    for (size_t i = bit / 64; i < limbs; i++) {
        uint64_t word = v[i];
        if (i == bit / 64)
            word &= ~(uint64_t)0 << (bit % 64);
        if (word != 0)
            return 64 * i + (size_t)__builtin_ctzll(word);
    }
    return 64 * limbs;
}

/* Bits [bit, bit + w) of v, reading zeros past its end; w <= 8. */
static unsigned window_at(const uint64_t *v, size_t limbs, size_t bit, unsigned w)
{
    size_t i = bit / 64;
    unsigned shift = (unsigned)(bit % 64);
    uint64_t x = v[i] >> shift;
    if (shift + w > 64 && i + 1 < limbs)
        x |= v[i + 1] << (64 - shift);
    return (unsigned)(x & ((1u << w) - 1));
}

/* v = v with bits [bit, bit + w) cleared, plus 2^(bit+w) when `carry`. */
static void clear_window(uint64_t *v, size_t limbs, size_t bit, unsigned w, int carry)
{
    for (size_t b = bit; b < bit + w && b < 64 * limbs; b++)
        v[b / 64] &= ~((uint64_t)1 << (b % 64));
    uint64_t add = carry ? (uint64_t)1 << ((bit + w) % 64) : 0;
    for (size_t i = (bit + w) / 64; i < limbs && add != 0; i++) {
        v[i] += add;
        add = v[i] < add; /* wrapped: 1 into the next limb */
    }
}

size_t ec_wnaf(int8_t *digits, const uint64_t *k, size_t n, unsigned w)
{
    /* One spare limb: a carry out of a negative digit near the top lands there (at bit 64n at
     * most, since a window reaching past bit 64n - 1 holds k's top bits and is below 2^(w-1)). */
    uint64_t v[EC_MAX_LIMBS + 1] = {0};
    size_t limbs = n + 1, len = 0;
    memcpy(v, k, n * sizeof k[0]);
    memset(digits, 0, 64 * n + 1);
    for (size_t bit = next_one(v, limbs, 0); bit <= 64 * n; bit = next_one(v, limbs, bit + w)) {
        int d = (int)window_at(v, limbs, bit, w);
        if (d >= 1 << (w - 1))
            d -= 1 << w;
        digits[bit] = (int8_t)d;
        len = bit + 1;
        clear_window(v, limbs, bit, w, d < 0);
    }
    return len;
}
