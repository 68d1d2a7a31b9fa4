/*
 * The fast P-384 core under ASan/UBSan (`make sanitize`), and its differential fuzzer.
 *
 *  1. field layer: asm multiply, add and sub against the portable C, on random and extreme
 *     inputs; the p-specific multiply and both squarings (asm and portable) against the
 *     generic multiply; halving; the inverse against a * a^-1 == 1 and against Fermat's
 *     a^(m-2); constants against p384_tables.h; the co-Z odd-multiple tables and a key table
 *     built for the key G against the generated G table;
 *  2. NIST CAVP SigVer P-384 records (all five hashes) from $KBS_VECTORS, if present;
 *  3. differential loop: kbs_p384_verify_digest, the table path, kbs_p384_verify_hash and
 *     kbs_p384_verify_batch against the libcrypto implementation on random keys,
 *     signatures, mutations and edge values.  Statuses must match exactly.
 *     KBS_P384_DIFF_ITERS sets the number of cases (default 300), KBS_P384_SEED the seed.
 *
 * Prints "N passed, M failed" and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kbs_native.h"
#include "p384_internal.h"
#include "p384_tables.h"
#include "vectors.h"

static void test_field(long iters)
{
    CHECK(memcmp(p384_mod_p.m, P384_P, 48) == 0 && p384_mod_p.n0 == P384_N0_P, "p constants");
    CHECK(memcmp(p384_mod_n.m, P384_N, 48) == 0 && p384_mod_n.n0 == P384_N0_N, "n constants");
    const struct p384_modulus *mods[2] = {&p384_mod_p, &p384_mod_n};
    long bad = 0;
    for (long i = 0; i < iters; i++) {
        const struct p384_modulus *mod = mods[i & 1];
        uint64_t a[6], b[6], x[6], y[6];
        rnd_below(a, mod->m, 6);
        rnd_below(b, mod->m, 6);
        p384_mont_mul_portable(x, a, b, mod);
        p384_mont_mul(y, a, b, mod);
        bad += memcmp(x, y, 48) != 0;
        p384_mod_add(x, a, b, mod->m);
        p384_mod_sub(y, x, b, mod->m);
        bad += memcmp(y, a, 48) != 0;
        if (mod == &p384_mod_p) {
            p384_fe_add(y, a, b);
            bad += memcmp(x, y, 48) != 0;
            p384_mod_sub(x, a, b, mod->m);
            p384_fe_sub(y, a, b);
            bad += memcmp(x, y, 48) != 0;
        }
        /* squaring: portable and (for p) asm, against the generic multiply */
        p384_mont_mul_portable(x, a, a, mod);
        p384_mont_sqr_portable(y, a, mod);
        bad += memcmp(x, y, 48) != 0;
        if (mod == &p384_mod_p) {
            p384_fe_sqr(y, a);
            bad += memcmp(x, y, 48) != 0;
            memcpy(y, a, 48);
            p384_fe_sqr(y, y); /* in place */
            bad += memcmp(x, y, 48) != 0;
            p384_mont_mul_portable(x, a, b, mod);
            p384_fe_mul(y, a, b);
            bad += memcmp(x, y, 48) != 0;
            memcpy(y, b, 48);
            p384_fe_mul(y, a, y);
            bad += memcmp(x, y, 48) != 0;
            p384_fe_half(y, a);
            p384_fe_add(x, y, y);
            bad += memcmp(x, a, 48) != 0;
            p384_mod_half(x, a, mod->m);
            bad += memcmp(x, y, 48) != 0;
        }
        if (!ec_is_zero_n(a, 6) && i % 16 < 2) {
            uint64_t one[6] = {1, 0, 0, 0, 0, 0}, rr[6];
            ec_modinv_vartime(x, a, mod->m, 6);
            /* mont(mont(a, a^-1), R^2) = a * a^-1 */
            p384_mont_mul(y, a, x, mod);
            p384_mont_mul(rr, y, mod == &p384_mod_p ? P384_RR_P : P384_RR_N, mod);
            bad += memcmp(rr, one, 48) != 0;
            if (mod == &p384_mod_p) { /* in Montgomery form: a * fe_inv(a) == R */
                p384_fe_inv(x, a);
                p384_fe_mul(y, a, x);
                bad += memcmp(y, P384_ONE_MONT, 48) != 0;
            }
        }
    }
    CHECK(bad == 0, "field layer: %ld mismatches in %ld rounds (%s)", bad, iters,
          kbs_p384_implementation());
}

/* a^(m-2) mod m by square-and-multiply in Montgomery form: the inverse by Fermat. */
static void fermat_inv(uint64_t r[6], const uint64_t a[6], const struct p384_modulus *mod)
{
    const uint64_t *rr = mod == &p384_mod_p ? P384_RR_P : P384_RR_N;
    uint64_t e[6], base[6], acc[6], one[6] = {1, 0, 0, 0, 0, 0};
    memcpy(e, mod->m, 48);
    e[0] -= 2; /* m is odd and > 2: no borrow */
    p384_mont_mul(base, a, rr, mod);
    p384_mont_mul(acc, one, rr, mod); /* R mod m */
    for (int bit = 383; bit >= 0; bit--) {
        p384_mont_mul(acc, acc, acc, mod);
        if (e[bit / 64] >> (bit % 64) & 1)
            p384_mont_mul(acc, acc, base, mod);
    }
    p384_mont_mul(r, acc, one, mod);
}

static void test_inverse(long iters)
{
    const struct p384_modulus *mods[2] = {&p384_mod_p, &p384_mod_n};
    long bad = 0;
    for (long i = 0; i < iters; i++) {
        const struct p384_modulus *mod = mods[i & 1];
        uint64_t a[6], x[6], y[6];
        switch (i % 10 / 2) {
        case 0: /* 1, 2, small */
            memset(a, 0, 48);
            a[0] = 1 + (uint64_t)(i / 10 % 5);
            break;
        case 1: /* a power of two */
            memset(a, 0, 48);
            a[rnd() % 6] = (uint64_t)1 << (rnd() % 64);
            if (ec_cmp_n(a, mod->m, 6) >= 0)
                a[5] >>= 1;
            break;
        default:
            do
                rnd_below(a, mod->m, 6);
            while (ec_is_zero_n(a, 6));
        }
        ec_modinv_vartime(x, a, mod->m, 6);
        fermat_inv(y, a, mod);
        bad += memcmp(x, y, 48) != 0;
    }
    uint64_t zero[6] = {0}, r[6] = {1};
    ec_modinv_vartime(r, zero, p384_mod_p.m, 6);
    CHECK(ec_is_zero_n(r, 6), "inverse of 0 is 0 (callers never ask)");
    CHECK(bad == 0, "inverse: %ld mismatches with Fermat in %ld cases", bad, iters);
}

/* Odd multiples by co-Z additions and one inversion: G's split tables must come out as the
 * generated ones, from affine bases and, through a key table for the key G, from Jacobian
 * bases made by doublings; and one part against plain Jacobian additions. */
static void test_tables(void)
{
    enum { PARTS = P384_SPLIT_PARTS, POINTS = P384_G_TABLE_POINTS };
    static uint64_t out[PARTS][POINTS][12];
    struct p384_jacobian bases[PARTS];
    for (int j = 0; j < PARTS; j++) {
        memcpy(bases[j].x, P384_G_TABLE[j][0], 48);
        memcpy(bases[j].y, P384_G_TABLE[j][0] + 6, 48);
        memcpy(bases[j].z, P384_ONE_MONT, 48);
    }
    p384_odd_multiples_affine(out[0], bases, PARTS, POINTS);
    CHECK(memcmp(out, P384_G_TABLE, sizeof out) == 0, "odd multiples of 2^(48j) G, 8 parts");
    p384_odd_multiples_affine(out[0], &bases[3], 1, 16);
    CHECK(memcmp(out[0], P384_G_TABLE[3], 16 * 96) == 0, "odd multiples of 2^144 G, one part");

    /* 2^48 G with a non-trivial Z, against additions of the generic formulas */
    struct p384_jacobian base = bases[0], twice, acc;
    for (int i = 0; i < 48; i++)
        p384_point_double(&base, &base);
    p384_odd_multiples_affine(out[0], &base, 1, POINTS);
    CHECK(memcmp(out[0], P384_G_TABLE[1], sizeof out[0]) == 0, "odd multiples of a Jacobian base");
    p384_point_double(&twice, &base);
    acc = base;
    long bad = 0;
    for (int i = 0; i < POINTS; i++) {
        uint64_t zi[6], zi2[6], t[6], x[6], y[6];
        p384_fe_inv(zi, acc.z);
        p384_fe_sqr(zi2, zi);
        p384_fe_mul(x, acc.x, zi2);
        p384_fe_mul(t, zi2, zi);
        p384_fe_mul(y, acc.y, t);
        bad += memcmp(x, out[0][i], 48) != 0 || memcmp(y, out[0][i] + 6, 48) != 0;
        p384_point_add(&acc, &acc, &twice);
    }
    CHECK(bad == 0, "co-Z odd multiples against Jacobian additions: %ld differ", bad);

    /* a key table for the public key G holds G's tables */
    uint8_t g[97] = {4};
    uint64_t gx[6], gy[6];
    p384_fe_from_mont(gx, P384_G_TABLE[0][0]);
    p384_fe_from_mont(gy, P384_G_TABLE[0][0] + 6);
    ec_to_be_n(g + 1, gx, 6);
    ec_to_be_n(g + 49, gy, 6);
    struct kbs_p384_key_table *kt = malloc(sizeof *kt);
    CHECK(kt != NULL && kbs_p384_key_precompute(g, sizeof g, kt) == KBS_OK, "key table for G");
    if (kt != NULL) {
        CHECK(memcmp(kt->words + KBS_P384_KEY_TABLE_WORDS - PARTS * POINTS * 12, P384_G_TABLE,
                     sizeof P384_G_TABLE) == 0, "key table for G == the G table");
        free(kt);
    }
}

/* Horner on 7 limbs mod 2^448: sum d_i 2^i must give k back, digits odd and in range. */
static int wnaf_ok(const uint64_t k[6], unsigned w)
{
    int8_t d[64 * 6 + 1];
    size_t len = ec_wnaf(d, k, 6, w);
    uint64_t acc[7] = {0};
    for (size_t i = len; i-- > 0;) {
        for (int j = 6; j > 0; j--)
            acc[j] = (acc[j] << 1) | (acc[j - 1] >> 63);
        acc[0] <<= 1;
        if (d[i] != 0 && ((d[i] & 1) == 0 || d[i] >= (1 << (w - 1)) || d[i] <= -(1 << (w - 1))))
            return 0;
        uint64_t add = (uint64_t)(int64_t)d[i], carry = 0;
        for (int j = 0; j < 7; j++) {
            uint64_t ext = j == 0 ? add : (d[i] < 0 ? ~(uint64_t)0 : 0);
            uint64_t sum = acc[j] + ext;
            uint64_t c1 = sum < acc[j];
            acc[j] = sum + carry;
            carry = c1 | (acc[j] < sum);
        }
    }
    return memcmp(acc, k, 48) == 0 && acc[6] == 0 && (len == 0 || d[len - 1] != 0);
}

static void test_wnaf(long iters)
{
    long bad = 0;
    for (long i = 0; i < iters; i++) {
        uint64_t k[6];
        rnd_below(k, P384_N, 6);
        if (i % 3 == 0) /* a 96-bit split part */
            k[2] &= 0xffffffffu, k[3] = k[4] = k[5] = 0;
        bad += !wnaf_ok(k, 2 + (unsigned)(i % 7));
    }
    CHECK(bad == 0, "wNAF: %ld bad recodings", bad);
}

static void test_cavp(const char *dir)
{
    struct cavp c;
    if (!cavp_open(&c, dir, "SigVer.rsp", "P-384"))
        return;
    uint8_t msg[256], key[97] = {4}, r[48], s[48];
    size_t msg_len = 0;
    int records = 0;
    while (cavp_next(&c)) {
        const char *v;
        if ((v = cavp_field(&c, "Msg")) != NULL)
            msg_len = unhex(msg, sizeof msg, v, strlen(v));
        else if ((v = cavp_field(&c, "Qx")) != NULL)
            CHECK(unhex_int(key + 1, 48, v), "Qx");
        else if ((v = cavp_field(&c, "Qy")) != NULL)
            CHECK(unhex_int(key + 49, 48, v), "Qy");
        else if ((v = cavp_field(&c, "R")) != NULL)
            CHECK(unhex_int(r, 48, v), "R");
        else if ((v = cavp_field(&c, "S")) != NULL)
            CHECK(unhex_int(s, 48, v), "S");
        else if ((v = cavp_field(&c, "Result")) != NULL) {
            uint8_t hash[64];
            unsigned hash_len = 0;
            CHECK(cavp_hash(&c, msg, msg_len, hash, &hash_len), "hash of %s", c.section);
            int got = kbs_p384_verify_hash(key, sizeof key, hash, hash_len, r, s);
            CHECK((got == KBS_OK) == (v[0] == 'P'), "CAVP %s record %d: status %d", c.section, records, got);
            records++;
        }
    }
    CHECK(records == 75, "CAVP P-384 SigVer records: %d", records);
}

/* --- the differential loop --- */

struct keypair {
    EC_KEY *key;
    uint8_t point[97];
    struct kbs_p384_key_table *table;
};

static void make_key(struct keypair *kp)
{
    kp->key = new_ec_key(NID_secp384r1, kp->point, 97);
    kp->table = malloc(sizeof *kp->table);
    if (kp->table == NULL || kbs_p384_key_precompute(kp->point, 97, kp->table) != KBS_OK) {
        fprintf(stderr, "precompute failed\n");
        exit(2);
    }
}

static void mutate(uint8_t point[97], uint8_t digest[48], uint8_t r[48], uint8_t s[48],
                   const struct keypair *other)
{
    switch (rnd() % 12) {
    case 0: r[47 - rnd() % 48] ^= (uint8_t)(1u << rnd() % 8); break;
    case 1: s[47 - rnd() % 48] ^= (uint8_t)(1u << rnd() % 8); break;
    case 2: digest[rnd() % 48] ^= (uint8_t)(1u << rnd() % 8); break;
    case 3: edge_scalar(r, P384_N, P384_P, 6); break;
    case 4: edge_scalar(s, P384_N, P384_P, 6); break;
    case 5: memcpy(point, other->point, 97); break;
    case 6: point[1 + rnd() % 96] ^= (uint8_t)(1u << rnd() % 8); break; /* off the curve */
    case 7: memset(point + 1, 0xff, 48); break;                           /* x >= p */
    case 8: edge_scalar(digest, P384_N, P384_P, 6); break;                                   /* e = 0, n, ... */
    case 9: { uint8_t t[48]; memcpy(t, r, 48); memcpy(r, s, 48); memcpy(s, t, 48); break; }
    default: break; /* valid as signed */
    }
}

/* Cold-key batches of up to 8 pending cases, checked against libcrypto's verdicts. */
enum { PENDING = 8 };
struct pending {
    uint8_t digests[PENDING * 48], sigs[PENDING * 96], points[PENDING * 97];
    int want[PENDING];
    size_t count;
};

static long flush_batch(struct pending *p)
{
    int got[PENDING];
    long bad = 0;
    if (p->count == 0)
        return 0;
    if (kbs_p384_verify_batch(p->count, p->digests, p->sigs, p->points, NULL, got) != KBS_OK)
        return (long)p->count;
    for (size_t i = 0; i < p->count; i++)
        bad += got[i] != p->want[i];
    p->count = 0;
    return bad;
}

static void test_differential(long iters, struct keypair *keys, int nkeys)
{
    long cases = 0, valid = 0, disagreements = 0, batch_bad = 0;
    static struct pending pend;
    for (long i = 0; i < iters; i++) {
        const struct keypair *kp = &keys[rnd() % (unsigned)nkeys];
        const struct keypair *other = &keys[rnd() % (unsigned)nkeys];
        uint8_t digest[48], r[48], s[48], point[97];
        rnd_bytes(digest, 48);
        if (rnd() % 4 == 0)
            memset(digest, (rnd() & 1) ? 0xff : 0, 1 + rnd() % 47); /* zero/one runs */
        memcpy(point, kp->point, 97);
        sign_digest(kp->key, digest, 48, r, s);
        if (rnd() % 3)
            mutate(point, digest, r, s, other);
        int want = kbs_p384_verify_digest_libcrypto(point, 97, digest, r, s);
        int got = kbs_p384_verify_digest(point, 97, digest, r, s);
        int ok = got == want;
        if (memcmp(point, kp->point, 97) == 0 || memcmp(point, other->point, 97) == 0) {
            const struct kbs_p384_key_table *t = memcmp(point, kp->point, 97) == 0 ? kp->table : other->table;
            int tab = kbs_p384_verify_digest_with_table(t, digest, r, s);
            int batch = -1;
            uint8_t sig[96];
            memcpy(sig, r, 48);
            memcpy(sig + 48, s, 48);
            kbs_p384_verify_batch(1, digest, sig, NULL, &t, &batch);
            ok = ok && tab == want && batch == want;
        }
        /* a longer hash: only its first 48 bytes may matter */
        uint8_t longer[64];
        memcpy(longer, digest, 48);
        rnd_bytes(longer + 48, 16);
        ok = ok && kbs_p384_verify_hash(point, 97, longer, 48 + rnd() % 17, r, s) == want;
        memcpy(pend.digests + 48 * pend.count, digest, 48);
        memcpy(pend.sigs + 96 * pend.count, r, 48);
        memcpy(pend.sigs + 96 * pend.count + 48, s, 48);
        memcpy(pend.points + 97 * pend.count, point, 97);
        pend.want[pend.count++] = want;
        if (pend.count == PENDING || rnd() % 5 == 0)
            batch_bad += flush_batch(&pend);
        cases++;
        valid += want == KBS_OK;
        if (!ok) {
            disagreements++;
            if (disagreements <= 5)
                fprintf(stderr, "disagreement at case %ld: libcrypto %d, fast %d\n", i, want, got);
        }
    }
    batch_bad += flush_batch(&pend);
    printf("differential: %ld cases (%ld valid), %ld disagreements with libcrypto, %ld in batches\n",
           cases, valid, disagreements, batch_bad);
    CHECK(disagreements == 0, "%ld disagreements", disagreements);
    CHECK(batch_bad == 0, "%ld batch disagreements", batch_bad);
}

int main(void)
{
    const char *iters_env = getenv("KBS_P384_DIFF_ITERS"), *seed_env = getenv("KBS_P384_SEED");
    const char *vectors = getenv("KBS_VECTORS");
    long iters = iters_env ? atol(iters_env) : 300;
    rng_state = seed_env ? strtoull(seed_env, NULL, 0) | 1 : 0x9e3779b97f4a7c15u;
    printf("p384: %s, seed 0x%016llx\n", kbs_p384_implementation(), (unsigned long long)rng_state);

    test_field(20000);
    test_inverse(2000);
    test_tables();
    test_wnaf(20000);
    test_cavp(vectors ? vectors : "../shared/vectors");

    enum { NKEYS = 4 };
    struct keypair keys[NKEYS];
    for (int i = 0; i < NKEYS; i++)
        make_key(&keys[i]);
    test_differential(iters, keys, NKEYS);
    for (int i = 0; i < NKEYS; i++) {
        EC_KEY_free(keys[i].key);
        free(keys[i].table);
    }

    printf("%ld passed, %ld failed\n", passed, failed);
    return failed != 0;
}
