/*
 * ECDSA P-256 verification: the public entry points of the fast core (kbs_native.h).
 *
 * R = u1 G + u2 Q by one interleaved wNAF ladder over affine tables of odd multiples:
 *  - G: u1 in eight 32-bit parts, part j against the const table of 2^(32j) G (p256_tables.h),
 *    so G costs additions only;
 *  - Q, cold: u2 as one 256-bit wNAF over a small table of Q built per call (256 doublings);
 *  - Q, from a key table (struct kbs_p256_key_table): u2 in eight parts like u1, which cuts
 *    the ladder to 32 doublings.
 * Then x(R) mod n == r is checked without inverting Z: r Z^2 == X, or (r + n) Z^2 == X when
 * r + n < p (x(R) in [n, p) also reduces to r).  Variable time: every input is public.
 */
#include <string.h>

#include "kbs_native.h"
#include "ec_limbs.h"
#include "ec_vartime.h"
#include "p256_internal.h"
#include "p256_tables.h"

enum {
    PARTS = P256_SPLIT_PARTS,
    PART_BITS = P256_SPLIT_BITS,
    POINTS = P256_TABLE_POINTS,
    COLD_WINDOW = 5, /* 4 or 6 measured no faster: fewer additions cost more table points */
    COLD_POINTS = 1 << (COLD_WINDOW - 2),
    HEADER_WORDS = 16, /* the magic word, then the key's 65 bytes */
    PART_DIGITS = 64 + 1,
    FULL_DIGITS = 256 + 1,
};
#define TABLE_MAGIC 0x543635325073626bu /* "kbsP256T" in memory order */

_Static_assert(HEADER_WORDS + PARTS * POINTS * 8 == KBS_P256_KEY_TABLE_WORDS, "key table size");
_Static_assert(8 + KBS_P256_POINT_SIZE <= HEADER_WORDS * 8, "the key fits the header");
_Static_assert(PARTS * PART_BITS == 256 && 64 % PART_BITS == 0, "parts tile the limbs");
_Static_assert((int)PARTS <= (int)P256_ODD_MAX_PARTS && (int)POINTS <= (int)P256_ODD_MAX_COUNT &&
                   COLD_POINTS <= POINTS,
               "tables fit p256_odd_multiples");
_Static_assert(P256_TABLE_WINDOW == 7 && POINTS == 1 << (P256_TABLE_WINDOW - 2), "G and keys share a window");

typedef uint64_t part_tables[PARTS][POINTS][8];

static const part_tables *key_points(const struct kbs_p256_key_table *t)
{
    return (const part_tables *)(const void *)(t->words + HEADER_WORDS);
}

static const uint8_t *key_bytes(const struct kbs_p256_key_table *t)
{
    return (const uint8_t *)(const void *)(t->words + 1);
}

/* The digits of one scalar (or part) and the odd multiples they index. */
struct stream {
    const int8_t *digits;
    size_t len;
    const uint64_t (*points)[8];
};

static void ladder(struct p256_jacobian *acc, const struct stream *st, size_t count)
{
    size_t top = 0;
    for (size_t k = 0; k < count; k++)
        top = st[k].len > top ? st[k].len : top;
    memset(acc, 0, sizeof *acc);
    for (size_t i = top; i-- > 0;) {
        p256_point_double(acc, acc);
        for (size_t k = 0; k < count; k++) {
            int d = i < st[k].len ? st[k].digits[i] : 0;
            if (d != 0)
                p256_point_add_affine(acc, acc, st[k].points[(d < 0 ? -d : d) >> 1], d < 0);
        }
    }
}

/* Streams for k's eight 32-bit parts against tables[j]; digits holds PARTS * PART_DIGITS. */
static void part_streams(struct stream *st, int8_t *digits, const uint64_t k[4], const part_tables *tables)
{
    for (unsigned j = 0; j < PARTS; j++) {
        uint64_t part = k[j * PART_BITS / 64] >> (j * PART_BITS % 64) & (((uint64_t)1 << PART_BITS) - 1);
        st[j].digits = digits + j * PART_DIGITS;
        st[j].len = ec_wnaf(digits + j * PART_DIGITS, &part, 1, P256_TABLE_WINDOW);
        st[j].points = (*tables)[j];
    }
}

static int x_matches(const struct p256_jacobian *acc, const uint64_t r[4])
{
    uint64_t zz[4], t[4], rn[4];
    if (p256_fe_is_zero(acc->z))
        return KBS_ERR_SIG_INVALID; /* never read infinity as x = 0 */
    p256_fe_sqr(zz, acc->z);
    p256_fe_to_mont(t, r);
    p256_fe_mul(t, t, zz);
    if (p256_fe_equal(t, acc->x))
        return KBS_OK;
    if (ec_cmp_n(r, P256_P_MINUS_N, 4) < 0) { /* then r + n < p: no wrap, a valid field element */
        ec_add_n(rn, r, P256_N, 4);
        p256_fe_to_mont(t, rn);
        p256_fe_mul(t, t, zz);
        if (p256_fe_equal(t, acc->x))
            return KBS_OK;
    }
    return KBS_ERR_SIG_INVALID;
}

/* The scalars of one signature: e, r, and u1, u2; or KBS_ERR_SIG_RANGE. */
struct scalars {
    uint64_t r[4], u1[4], u2[4];
};

static int scalars_of(struct scalars *sc, const uint8_t *hash, size_t hash_len, const uint8_t *r,
                      const uint8_t *s)
{
    uint64_t e[4], sv[4];
    if (!p256_scalar_parse(sc->r, r) || !p256_scalar_parse(sv, s))
        return KBS_ERR_SIG_RANGE;
    p256_scalar_from_hash(e, hash, hash_len);
    p256_scalar_u1_u2(sc->u1, sc->u2, e, sc->r, sv);
    return KBS_OK;
}

static int verify_cold(const struct p256_jacobian *q, const struct scalars *sc)
{
    uint64_t qtab[COLD_POINTS][8];
    int8_t digits[PARTS * PART_DIGITS + FULL_DIGITS];
    struct stream st[PARTS + 1];
    struct p256_jacobian acc;
    p256_odd_multiples(qtab, q, 1, COLD_POINTS);
    part_streams(st, digits, sc->u1, (const part_tables *)(const void *)P256_G_TABLE);
    st[PARTS].digits = digits + PARTS * PART_DIGITS;
    st[PARTS].len = ec_wnaf(digits + PARTS * PART_DIGITS, sc->u2, 4, COLD_WINDOW);
    st[PARTS].points = (const uint64_t(*)[8])qtab;
    ladder(&acc, st, PARTS + 1);
    return x_matches(&acc, sc->r);
}

static int verify_with_table(const struct kbs_p256_key_table *table, const struct scalars *sc)
{
    int8_t digits[2 * PARTS * PART_DIGITS];
    struct stream st[2 * PARTS];
    struct p256_jacobian acc;
    part_streams(st, digits, sc->u1, (const part_tables *)(const void *)P256_G_TABLE);
    part_streams(st + PARTS, digits + PARTS * PART_DIGITS, sc->u2, key_points(table));
    ladder(&acc, st, 2 * PARTS);
    return x_matches(&acc, sc->r);
}

int kbs_p256_verify_hash(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *hash, size_t hash_len,
                         const uint8_t *r, const uint8_t *s)
{
    struct p256_jacobian q;
    struct scalars sc;
    if (pubkey == NULL || (hash == NULL && hash_len != 0) || r == NULL || s == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    int rc = p256_point_decode(&q, pubkey, pubkey_len);
    if (rc == KBS_OK)
        rc = scalars_of(&sc, hash, hash_len, r, s);
    return rc == KBS_OK ? verify_cold(&q, &sc) : rc;
}

int kbs_p256_verify_digest(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                           const uint8_t *r, const uint8_t *s)
{
    if (digest == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    return kbs_p256_verify_hash(pubkey, pubkey_len, digest, KBS_P256_SCALAR_SIZE, r, s);
}

int kbs_p256_key_precompute(const uint8_t *pubkey, size_t pubkey_len, struct kbs_p256_key_table *out)
{
    struct p256_jacobian bases[PARTS];
    if (pubkey == NULL || out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    memset(out, 0, sizeof *out);
    int rc = p256_point_decode(&bases[0], pubkey, pubkey_len);
    if (rc != KBS_OK)
        return rc;
    for (unsigned j = 1; j < PARTS; j++) { /* bases[j] = 2^(32j) Q */
        p256_point_double(&bases[j], &bases[j - 1]);
        for (unsigned i = 1; i < PART_BITS; i++)
            p256_point_double(&bases[j], &bases[j]);
    }
    part_tables *points = (part_tables *)(void *)(out->words + HEADER_WORDS);
    p256_odd_multiples((*points)[0], bases, PARTS, POINTS);
    memcpy(out->words + 1, pubkey, KBS_P256_POINT_SIZE);
    out->words[0] = TABLE_MAGIC;
    return KBS_OK;
}

int kbs_p256_key_table_point(const struct kbs_p256_key_table *table, uint8_t *pubkey_out)
{
    if (table == NULL || pubkey_out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    if (table->words[0] != TABLE_MAGIC)
        return KBS_ERR_INTERNAL; /* never precomputed: a caller bug, not a verdict */
    memcpy(pubkey_out, key_bytes(table), KBS_P256_POINT_SIZE);
    return KBS_OK;
}

int kbs_p256_verify_digest_with_table(const struct kbs_p256_key_table *table, const uint8_t *digest,
                                      const uint8_t *r, const uint8_t *s)
{
    struct scalars sc;
    if (table == NULL || digest == NULL || r == NULL || s == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    if (table->words[0] != TABLE_MAGIC)
        return KBS_ERR_INTERNAL;
    int rc = scalars_of(&sc, digest, KBS_P256_SCALAR_SIZE, r, s);
    return rc == KBS_OK ? verify_with_table(table, &sc) : rc;
}
