/*
 * libFuzzer harness of the batch and per-key-table P-384 entry points.
 *
 * Entry points: kbs_p384_verify_batch, kbs_p384_key_precompute, kbs_p384_verify_digest_with_table
 * (and kbs_p384_verify_digest as the per-item reference; fuzz_p384_verify holds that one to
 * libcrypto).
 *
 * Input: a count byte (0..8 items, or 56..71 so a batch crosses the 64-item chunk that shares
 * one inversion), a flag byte (pubkeys NULL, tables array NULL), two key seeds, and four
 * (digest, nonce) pairs that libcrypto signs, two with each key (a libcrypto signature costs
 * more than several verifications, so items share these, made on first use).  Then per item a descriptor byte and an argument byte:
 * the key as a cold point, a precomputed table, raw point bytes from the input or a table
 * never precomputed; the signature as one of the four (own key), one of them with a bit
 * flipped, one by the other key, or raw digest and r || s from the input.
 * results[i] must equal the single-item call's status on the same item, an unmutated
 * signature under its own key must verify, and the call's NULL checks must hold.
 */
#include "fuzz_common.h"

static const struct kbs_p384_key_table never_precomputed;

enum { KEY_COLD, KEY_TABLE, KEY_RAW, KEY_UNPREPARED };
enum { SIG_OWN, SIG_FLIPPED, SIG_OTHER_KEY, SIG_RAW };
enum { POOL = 4 };

/* Key j from its seed, derived on first use. */
static void need_key(BIGNUM *d[2], uint8_t keys[2][97], uint8_t seeds[2][48], int j, BN_CTX *ctx)
{
    if (d[j] == NULL) {
        d[j] = scalar_from(&FUZZ_P384, seeds[j], ctx);
        public_key(&FUZZ_P384, d[j], keys[j], ctx);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader rd = {data, size};
    uint8_t c = take_u8(&rd), flags = take_u8(&rd), seeds[2][48];
    size_t count = c < 200 ? c % 9u : 56u + c % 16u;
    int no_pubkeys = flags & 1, no_tables = (flags >> 1) & 1;
    take(&rd, seeds[0], 48);
    take(&rd, seeds[1], 48);

    if (kbs_p384_verify_batch(0, NULL, NULL, NULL, NULL, NULL) != KBS_OK)
        fuzz_fail("an empty batch was refused");
    if (count == 0)
        return 0;

    BN_CTX *ctx = BN_CTX_new();
    if (ctx == NULL)
        fuzz_fail("BN_CTX_new");
    /* libcrypto's scalar multiplications dominate the cost: keys and signatures are made on first use */
    uint8_t keys[2][97], pool_digest[POOL][48], pool_nonce[POOL][48], pool_sig[POOL][96];
    int pool_state[POOL] = {0}; /* 0 not signed yet, 1 signed, -1 r or s came out 0 */
    struct kbs_p384_key_table *tabs[2] = {NULL, NULL};
    BIGNUM *d[2] = {NULL, NULL};
    for (int j = 0; j < POOL; j++) { /* pair j is signed by key j % 2 */
        take(&rd, pool_digest[j], 48);
        take(&rd, pool_nonce[j], 48);
    }

    /* exact-size blocks: ASan sees any read past item count-1 */
    uint8_t *digests = malloc(48 * count), *sigs = malloc(96 * count), *pubkeys = malloc(97 * count);
    const struct kbs_p384_key_table **tables = malloc(count * sizeof *tables);
    int *results = malloc(count * sizeof *results), *want = malloc(count * sizeof *want);
    if (!digests || !sigs || !pubkeys || !tables || !results || !want)
        fuzz_fail("out of memory");

    for (size_t i = 0; i < count; i++) {
        uint8_t desc = take_u8(&rd), arg = take_u8(&rd);
        int key_kind = desc & 3, sig_kind = (desc >> 2) & 3, pair = (desc >> 4) & 3;
        int key = pair % 2; /* the item's key is the one that signed its pair */
        uint8_t *digest = digests + 48 * i, *sig = sigs + 96 * i, *point = pubkeys + 97 * i;
        int must_accept = 0;

        if (sig_kind != SIG_RAW && pool_state[pair] == 0) {
            need_key(d, keys, seeds, key, ctx);
            BIGNUM *k = scalar_from(&FUZZ_P384, pool_nonce[pair], ctx);
            pool_state[pair] = sign_with_nonce(&FUZZ_P384, d[key], k, pool_digest[pair], 48, pool_sig[pair],
                                               pool_sig[pair] + 48, ctx) ? 1 : -1;
            BN_free(k);
        }
        if (sig_kind == SIG_RAW || pool_state[pair] != 1) {
            take(&rd, digest, 48);
            take(&rd, sig, 96);
        } else {
            memcpy(digest, pool_digest[pair], 48);
            memcpy(sig, pool_sig[pair], 96);
            if (sig_kind == SIG_FLIPPED)
                sig[arg % 96] ^= (uint8_t)(1u << (desc >> 6 | (arg & 1) << 2));
            else if (sig_kind == SIG_OTHER_KEY)
                key ^= 1;
            else
                must_accept = 1;
        }

        need_key(d, keys, seeds, key, ctx);
        tables[i] = NULL;
        memcpy(point, keys[key], 97);
        if (key_kind == KEY_TABLE) {
            if (tabs[key] == NULL) {
                tabs[key] = malloc(sizeof *tabs[key]);
                if (tabs[key] == NULL || kbs_p384_key_precompute(keys[key], 97, tabs[key]) != KBS_OK)
                    fuzz_fail("kbs_p384_key_precompute refused a valid key");
            }
            tables[i] = tabs[key];
            memset(point, 0xEE, 97); /* the table, not this, must be used */
        } else if (key_kind == KEY_RAW) {
            take(&rd, point, 97);
            must_accept = 0;
        } else if (key_kind == KEY_UNPREPARED) {
            tables[i] = &never_precomputed;
        }

        /* The single-item answer for what the batch will see. */
        const struct kbs_p384_key_table *t = no_tables ? NULL : tables[i];
        if (t == &never_precomputed) {
            want[i] = KBS_ERR_INTERNAL;
            must_accept = 0;
        } else if (t != NULL) {
            want[i] = kbs_p384_verify_digest_with_table(t, digest, sig, sig + 48);
        } else if (no_pubkeys) {
            want[i] = KBS_ERR_NULL_ARGUMENT;
            must_accept = 0;
        } else {
            want[i] = kbs_p384_verify_digest(point, 97, digest, sig, sig + 48);
            if (key_kind == KEY_TABLE) /* the 0xEE filler is no point */
                must_accept = 0;
        }
        if (must_accept && want[i] != KBS_OK)
            fuzz_fail("item %zu: a valid signature got %d from the single-item call", i, want[i]);
        results[i] = -1;
    }

    int rc = kbs_p384_verify_batch(count, digests, sigs, no_pubkeys ? NULL : pubkeys, no_tables ? NULL : tables,
                                   results);
    if (no_pubkeys && no_tables) {
        if (rc != KBS_ERR_NULL_ARGUMENT)
            fuzz_fail("a batch without keys or tables gave %d", rc);
    } else {
        if (rc != KBS_OK)
            fuzz_fail("kbs_p384_verify_batch returned %d", rc);
        for (size_t i = 0; i < count; i++)
            if (results[i] != want[i])
                fuzz_fail("batch of %zu, item %zu: %d, single-item call %d", count, i, results[i], want[i]);
    }
    if (kbs_p384_verify_batch(count, NULL, sigs, pubkeys, NULL, results) != KBS_ERR_NULL_ARGUMENT ||
        kbs_p384_verify_batch(count, digests, NULL, pubkeys, NULL, results) != KBS_ERR_NULL_ARGUMENT ||
        kbs_p384_verify_batch(count, digests, sigs, pubkeys, NULL, NULL) != KBS_ERR_NULL_ARGUMENT)
        fuzz_fail("a NULL batch argument was not refused");

    free(want);
    free(results);
    free(tables);
    free(pubkeys);
    free(sigs);
    free(digests);
    for (int j = 0; j < 2; j++) {
        free(tabs[j]);
        BN_free(d[j]);
    }
    BN_CTX_free(ctx);
    return 0;
}
