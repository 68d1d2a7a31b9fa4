/*
 * Differential libFuzzer harness of the fast P-384 core against OpenSSL libcrypto.
 *
 * Entry points: kbs_p384_verify_digest, kbs_p384_verify_hash, kbs_p384_key_precompute,
 * kbs_p384_verify_digest_with_table, kbs_p384_verify_digest_libcrypto, kbs_p384_implementation.
 *
 * On every (key, hash, signature) the fast core's cold path, hash path and table path must give
 * the same status as the project's libcrypto wrapper, and that status must be libcrypto's EVP
 * verdict (fuzz_ecdsa_verdict in fuzz_common.h, a path that shares nothing with
 * ecdsa_libcrypto.c: accept, key error, r or s out of range); otherwise abort.  The inputs are
 * fuzz_common.h's three modes: raw, signed by libcrypto and then mutated (r + n, n - s, edge
 * scalars, bit flips, other or negated keys, e >= n, a longer hash), or built backwards so that
 * x(R) >= n, R = infinity or u1*G = u2*Q.
 */
#include "fuzz_common.h"

static const struct kbs_p384_key_table never_precomputed; /* all zero: no magic */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *impl = kbs_p384_implementation();
    if (impl == NULL || (strcmp(impl, "mulx/adcx/adox asm") != 0 && strcmp(impl, "portable C (unsigned __int128)") != 0))
        fuzz_fail("kbs_p384_implementation: %s", impl ? impl : "NULL");
    fprintf(stderr, "fuzz_p384_verify: field multiply = %s\n", impl);
    return 0;
}

/* Every path on one input; abort on any disagreement. */
static void check(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len, const uint8_t *r,
                  const uint8_t *s, enum expect expect)
{
    uint8_t digest[48];
    fuzz_digest_of(&FUZZ_P384, digest, hash, hash_len);
    int by_hash = kbs_p384_verify_hash(point, point_len, hash_len ? hash : NULL, hash_len, r, s);
    int by_digest = kbs_p384_verify_digest(point, point_len, digest, r, s);
    int by_lib = kbs_p384_verify_digest_libcrypto(point, point_len, digest, r, s);
    if (by_digest != by_hash || by_lib != by_hash) {
        fuzz_ecdsa_dump(&FUZZ_P384, point, point_len, hash, hash_len, r, s);
        fuzz_fail("statuses differ: verify_hash %d, verify_digest %d, verify_digest_libcrypto %d", by_hash,
                  by_digest, by_lib);
    }
    fuzz_ecdsa_verdict(&FUZZ_P384, point, point_len, hash, hash_len, r, s, by_hash, expect);

    struct kbs_p384_key_table *table = malloc(sizeof *table); /* exact block: ASan sees overreads */
    if (table == NULL)
        fuzz_fail("out of memory");
    int pre = kbs_p384_key_precompute(point, point_len, table);
    if (pre == KBS_OK) {
        int tab = kbs_p384_verify_digest_with_table(table, digest, r, s);
        if (tab != by_hash) {
            fuzz_ecdsa_dump(&FUZZ_P384, point, point_len, hash, hash_len, r, s);
            fuzz_fail("verify_digest_with_table %d, verify_hash %d", tab, by_hash);
        }
    } else if (!fuzz_is_key_error(pre) || pre != by_hash) {
        fuzz_ecdsa_dump(&FUZZ_P384, point, point_len, hash, hash_len, r, s);
        fuzz_fail("kbs_p384_key_precompute %d, verify_hash %d", pre, by_hash);
    }
    free(table);
    if (kbs_p384_verify_digest_with_table(&never_precomputed, digest, r, s) != KBS_ERR_INTERNAL)
        fuzz_fail("a table never precomputed was used");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_ecdsa_input(&FUZZ_P384, check, data, size);
    return 0;
}
