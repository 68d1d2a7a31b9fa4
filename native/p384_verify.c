/*
 * ECDSA P-384 verification: the public entry points of the fast core.
 *
 * R = u1*G + u2*Q by one interleaved wNAF ladder over affine tables:
 *  - G: eight const tables of odd multiples of 2^(48j)*G (p384_tables.h), u1 split
 *    into eight 48-bit parts, so G costs additions only, never doublings of its own;
 *  - Q, cold: one table of odd multiples of Q built per call, u2 as one 384-bit wNAF;
 *  - Q, cached: eight tables for 2^(48j)*Q (struct kbs_p384_key_table, 24 KB), which
 *    cuts the ladder from 384 to 48 doublings.
 * Then x(R) mod n == r is checked without inverting Z: r*Z^2 == X, or (r+n)*Z^2 == X
 * when r + n < p.  Variable time throughout: every input is public.
 */
#include <string.h>

#include "kbs_native.h"
#include "p384_internal.h"
#include "p384_tables.h"

enum {
    COLD_Q_WINDOW = 6,
    KEY_WINDOW = 7,
    KEY_POINTS = 1 << (KEY_WINDOW - 2),
    PARTS = P384_SPLIT_PARTS,
    SPLIT_BITS = P384_SPLIT_BITS,
    TABLE_HEADER_WORDS = 8,
};
/* "kbsP384T": marks a table that kbs_p384_key_precompute filled in. */
#define TABLE_MAGIC 0x6b62735033383454u

_Static_assert(TABLE_HEADER_WORDS + PARTS * KEY_POINTS * 12 == KBS_P384_KEY_TABLE_WORDS,
               "key table layout must match the public size");
_Static_assert(P384_G_TABLE_POINTS == KEY_POINTS, "G and key tables share the window");
_Static_assert(PARTS * SPLIT_BITS == 384 && SPLIT_BITS < 64, "split parts fit one limb");
_Static_assert((int)PARTS <= (int)P384_ODD_MAX_PARTS && (int)KEY_POINTS <= (int)P384_ODD_MAX_COUNT &&
                   1 << (COLD_Q_WINDOW - 2) <= (int)P384_ODD_MAX_COUNT,
               "tables fit p384_odd_multiples_affine");

typedef uint64_t key_tables[PARTS][KEY_POINTS][12];

static const key_tables *table_points(const struct kbs_p384_key_table *t)
{
    return (const key_tables *)(const void *)(t->words + TABLE_HEADER_WORDS);
}

/* One scalar's digits (ec_wnaf of up to 6 limbs) and the odd multiples they index. */
struct stream {
    int8_t digits[64 * 6 + 1];
    size_t len;
    const uint64_t (*points)[12];
};

static void ladder(struct p384_jacobian *acc, const struct stream *st, size_t count)
{
    size_t top = 0;
    for (size_t k = 0; k < count; k++)
        top = st[k].len > top ? st[k].len : top;
    memset(acc, 0, sizeof *acc);
    for (size_t i = top; i-- > 0;) {
        p384_point_double(acc, acc);
        for (size_t k = 0; k < count; k++) {
            if (i >= st[k].len || st[k].digits[i] == 0)
                continue;
            int d = st[k].digits[i];
            p384_point_add_affine(acc, acc, st[k].points[(d < 0 ? -d : d) >> 1], d < 0);
        }
    }
}

/* Bits [SPLIT_BITS * j, SPLIT_BITS * (j + 1)) of k. */
static uint64_t split_part(const uint64_t k[6], unsigned j)
{
    unsigned bit = SPLIT_BITS * j, limb = bit / 64, shift = bit % 64;
    uint64_t v = k[limb] >> shift;
    if (shift && limb + 1 < 6)
        v |= k[limb + 1] << (64 - shift);
    return v & (((uint64_t)1 << SPLIT_BITS) - 1);
}

static void split_streams(struct stream st[PARTS], const uint64_t k[6], const key_tables *tables)
{
    for (unsigned j = 0; j < PARTS; j++) {
        uint64_t part = split_part(k, j);
        st[j].len = ec_wnaf(st[j].digits, &part, 1, KEY_WINDOW);
        st[j].points = (*tables)[j];
    }
}

static const key_tables *g_tables(void)
{
    return (const key_tables *)(const void *)P384_G_TABLE;
}

static int check_x(const struct p384_jacobian *acc, const uint64_t r[6])
{
    uint64_t z2[6], t[6], rn[6];
    if (ec_is_zero_n(acc->z, 6))
        return KBS_ERR_SIG_INVALID; /* never read infinity as x = 0 */
    p384_fe_sqr(z2, acc->z);
    p384_fe_to_mont(t, r);
    p384_fe_mul(t, t, z2);
    if (ec_cmp_n(t, acc->x, 6) == 0)
        return KBS_OK;
    /* x(R) in [n, p) reduces to r too; r + n < p cannot wrap. */
    if (ec_cmp_n(r, P384_P_MINUS_N, 6) < 0) {
        p384_mod_add(rn, r, P384_N, P384_P);
        p384_fe_to_mont(t, rn);
        p384_fe_mul(t, t, z2);
        if (ec_cmp_n(t, acc->x, 6) == 0)
            return KBS_OK;
    }
    return KBS_ERR_SIG_INVALID;
}

/* r and s as integers in [1, n-1], or KBS_ERR_SIG_RANGE. */
static int parse_sig(uint64_t r[6], uint64_t s[6], const uint8_t *rb, const uint8_t *sb)
{
    ec_from_be_n(r, rb, 6);
    ec_from_be_n(s, sb, 6);
    if (ec_is_zero_n(r, 6) || ec_is_zero_n(s, 6) || ec_cmp_n(r, P384_N, 6) >= 0 || ec_cmp_n(s, P384_N, 6) >= 0)
        return KBS_ERR_SIG_RANGE;
    return KBS_OK;
}

/* e = leftmost min(384, 8*len) bits of the hash, reduced mod n (FIPS 186-5 6.4.2). */
static void hash_to_scalar(uint64_t e[6], const uint8_t *hash, size_t hash_len)
{
    uint8_t buf[48] = {0};
    size_t take = hash_len < 48 ? hash_len : 48;
    if (take)
        memcpy(buf + 48 - take, hash, take);
    ec_from_be_n(e, buf, 6);
    if (ec_cmp_n(e, P384_N, 6) >= 0)
        p384_mod_add(e, e, (const uint64_t[6]){0}, P384_N); /* e < 2^384 < 2n: once is enough */
}

static int verify_cold(const struct p384_affine *q, const uint64_t e[6], const uint64_t r[6],
                       const uint64_t w_mont[6])
{
    uint64_t u1[6], u2[6], qtab[1 << (COLD_Q_WINDOW - 2)][12];
    struct stream st[PARTS + 1];
    struct p384_jacobian acc, qj;
    p384_scalars(u1, u2, e, r, w_mont);
    memcpy(qj.x, q->x, sizeof qj.x);
    memcpy(qj.y, q->y, sizeof qj.y);
    memcpy(qj.z, P384_ONE_MONT, sizeof qj.z);
    p384_odd_multiples_affine(qtab, &qj, 1, 1 << (COLD_Q_WINDOW - 2));
    split_streams(st, u1, g_tables());
    st[PARTS].len = ec_wnaf(st[PARTS].digits, u2, 6, COLD_Q_WINDOW);
    st[PARTS].points = (const uint64_t(*)[12])qtab;
    ladder(&acc, st, PARTS + 1);
    return check_x(&acc, r);
}

static int verify_table(const struct kbs_p384_key_table *table, const uint64_t e[6],
                        const uint64_t r[6], const uint64_t w_mont[6])
{
    uint64_t u1[6], u2[6];
    struct stream st[2 * PARTS];
    struct p384_jacobian acc;
    p384_scalars(u1, u2, e, r, w_mont);
    split_streams(st, u1, g_tables());
    split_streams(st + PARTS, u2, table_points(table));
    ladder(&acc, st, 2 * PARTS);
    return check_x(&acc, r);
}

int kbs_p384_verify_hash(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *hash, size_t hash_len,
                         const uint8_t *r, const uint8_t *s)
{
    struct p384_affine q;
    uint64_t e[6], rv[6], sv[6];
    if (pubkey == NULL || (hash == NULL && hash_len != 0) || r == NULL || s == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    int rc = p384_point_decode(&q, pubkey, pubkey_len);
    if (rc != KBS_OK)
        return rc;
    rc = parse_sig(rv, sv, r, s);
    if (rc != KBS_OK)
        return rc;
    hash_to_scalar(e, hash, hash_len);
    p384_scalar_inv_mont(sv, sv);
    return verify_cold(&q, e, rv, sv);
}

int kbs_p384_verify_digest(const uint8_t *pubkey, size_t pubkey_len, const uint8_t *digest,
                           const uint8_t *r, const uint8_t *s)
{
    if (digest == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    return kbs_p384_verify_hash(pubkey, pubkey_len, digest, 48, r, s);
}

int kbs_p384_key_precompute(const uint8_t *pubkey, size_t pubkey_len, struct kbs_p384_key_table *out)
{
    struct p384_affine q;
    struct p384_jacobian bases[PARTS];
    if (pubkey == NULL || out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    memset(out, 0, sizeof *out);
    int rc = p384_point_decode(&q, pubkey, pubkey_len);
    if (rc != KBS_OK)
        return rc;
    memcpy(bases[0].x, q.x, sizeof bases[0].x);
    memcpy(bases[0].y, q.y, sizeof bases[0].y);
    memcpy(bases[0].z, P384_ONE_MONT, sizeof bases[0].z);
    for (unsigned j = 1; j < PARTS; j++) {
        p384_point_double(&bases[j], &bases[j - 1]);
        for (unsigned i = 1; i < SPLIT_BITS; i++)
            p384_point_double(&bases[j], &bases[j]);
    }
    key_tables *tables = (key_tables *)(void *)(out->words + TABLE_HEADER_WORDS);
    p384_odd_multiples_affine((*tables)[0], bases, PARTS, KEY_POINTS); /* one inversion */
    out->words[0] = TABLE_MAGIC;
    return KBS_OK;
}

int kbs_p384_verify_digest_with_table(const struct kbs_p384_key_table *table, const uint8_t *digest,
                                      const uint8_t *r, const uint8_t *s)
{
    uint64_t e[6], rv[6], sv[6];
    if (table == NULL || digest == NULL || r == NULL || s == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    if (table->words[0] != TABLE_MAGIC)
        return KBS_ERR_INTERNAL; /* never precomputed: a caller bug, not a verdict */
    int rc = parse_sig(rv, sv, r, s);
    if (rc != KBS_OK)
        return rc;
    hash_to_scalar(e, digest, 48);
    p384_scalar_inv_mont(sv, sv);
    return verify_table(table, e, rv, sv);
}

/* One batch item after parsing: status != KBS_OK means it is already decided. */
struct batch_item {
    const struct kbs_p384_key_table *table;
    struct p384_affine q;
    uint64_t e[6], r[6];
    int status;
};

static void prepare_item(struct batch_item *it, uint64_t s[6], const uint8_t *digest, const uint8_t *sig,
                         const uint8_t *pubkey, const struct kbs_p384_key_table *table)
{
    it->table = table;
    if (table != NULL)
        it->status = table->words[0] == TABLE_MAGIC ? KBS_OK : KBS_ERR_INTERNAL;
    else if (pubkey != NULL)
        it->status = p384_point_decode(&it->q, pubkey, KBS_P384_POINT_SIZE);
    else
        it->status = KBS_ERR_NULL_ARGUMENT;
    if (it->status == KBS_OK)
        it->status = parse_sig(it->r, s, sig, sig + 48);
    hash_to_scalar(it->e, digest, 48);
}

int kbs_p384_verify_batch(size_t count, const uint8_t *digests, const uint8_t *sigs,
                          const uint8_t *pubkeys, const struct kbs_p384_key_table *const *tables,
                          int *results)
{
    if (count == 0)
        return KBS_OK;
    if (digests == NULL || sigs == NULL || results == NULL || (pubkeys == NULL && tables == NULL))
        return KBS_ERR_NULL_ARGUMENT;
    /* Chunks of P384_BATCH_MAX share one scalar inversion (Montgomery's trick). */
    struct batch_item items[P384_BATCH_MAX];
    uint64_t s[P384_BATCH_MAX][6], w[P384_BATCH_MAX][6];
    size_t index[P384_BATCH_MAX];
    for (size_t base = 0; base < count; base += P384_BATCH_MAX) {
        size_t n = count - base < P384_BATCH_MAX ? count - base : P384_BATCH_MAX, live = 0;
        for (size_t k = 0; k < n; k++) {
            size_t i = base + k;
            const uint8_t *point = pubkeys ? pubkeys + KBS_P384_POINT_SIZE * i : NULL;
            prepare_item(&items[k], s[live], digests + 48 * i, sigs + 96 * i, point,
                         tables ? tables[i] : NULL);
            if (items[k].status == KBS_OK)
                index[live++] = k;
        }
        p384_scalar_batch_inv_mont(w, (const uint64_t(*)[6])s, live);
        for (size_t j = 0; j < live; j++) {
            struct batch_item *it = &items[index[j]];
            it->status = it->table ? verify_table(it->table, it->e, it->r, w[j])
                                   : verify_cold(&it->q, it->e, it->r, w[j]);
        }
        for (size_t k = 0; k < n; k++)
            results[base + k] = items[k].status;
    }
    return KBS_OK;
}

const char *kbs_p384_implementation(void)
{
    return p384_have_adx() ? "mulx/adcx/adox asm" : "portable C (unsigned __int128)";
}
