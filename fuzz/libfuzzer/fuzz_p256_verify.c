/*
 * Differential libFuzzer harness of the C core's P-256 verification against OpenSSL libcrypto.
 *
 * Entry points: kbs_p256_verify_digest, kbs_p256_verify_hash, kbs_p256_verify_digest_libcrypto,
 * kbs_p256_key_precompute, kbs_p256_verify_digest_with_table, kbs_p256_key_table_point, kbs_sha256.
 *
 * On every (key, hash, signature) the fast core's digest path, its any-length hash path, its key-table
 * path (the table built for the key, whenever the key is valid) and the libcrypto path must give the
 * same status, and that status must be libcrypto's EVP verdict (fuzz_ecdsa_verdict in fuzz_common.h,
 * a path that shares nothing with native/): accept exactly when EVP verify accepts, a key error
 * exactly when EVP cannot load the key (the table builder must then refuse the key with that
 * status), KBS_ERR_SIG_RANGE exactly when r or s is outside [1, n).  The inputs are fuzz_common.h's
 * three modes: raw; signed here and then mutated (none and s -> n - s must verify; bit flips, other
 * or negated keys, r + n, edge scalars, swaps, e >= n, a longer hash); crafted so that x(R) lies in
 * [n, p), R = infinity or u1*G == u2*Q.  And kbs_sha256 of the input against EVP's streaming SHA-256.
 */
#include "fuzz_common.h"

/* The status through a key table for the key, or the builder's refusal of the key; the table must
 * name the key it was built for. */
static int table_status(const uint8_t *point, size_t point_len, const uint8_t digest[32], const uint8_t *r,
                        const uint8_t *s)
{
    struct kbs_p256_key_table *table = malloc(sizeof *table); /* exact block: ASan sees overreads */
    uint8_t named[65];
    if (table == NULL)
        fuzz_fail("out of memory");
    int rc = kbs_p256_key_precompute(point, point_len, table);
    if (rc == KBS_OK) {
        if (kbs_p256_key_table_point(table, named) != KBS_OK || memcmp(named, point, 65) != 0)
            fuzz_fail("the key table does not name its key");
        rc = kbs_p256_verify_digest_with_table(table, digest, r, s);
    } else if (kbs_p256_verify_digest_with_table(table, digest, r, s) != KBS_ERR_INTERNAL) {
        fuzz_fail("a refused key left a usable table");
    }
    free(table);
    return rc;
}

static void check(const uint8_t *point, size_t point_len, const uint8_t *hash, size_t hash_len, const uint8_t *r,
                  const uint8_t *s, enum expect expect)
{
    uint8_t digest[32];
    fuzz_digest_of(&FUZZ_P256, digest, hash, hash_len);
    int by_hash = kbs_p256_verify_hash(point, point_len, hash_len ? hash : NULL, hash_len, r, s);
    int by_digest = kbs_p256_verify_digest(point, point_len, digest, r, s);
    int by_lib = kbs_p256_verify_digest_libcrypto(point, point_len, digest, r, s);
    int by_table = table_status(point, point_len, digest, r, s);
    if (by_hash != by_digest || by_lib != by_digest || by_table != by_digest) {
        fuzz_ecdsa_dump(&FUZZ_P256, point, point_len, hash, hash_len, r, s);
        fuzz_fail("statuses differ: verify_hash %d, verify_digest %d, verify_digest_libcrypto %d, with_table %d",
                  by_hash, by_digest, by_lib, by_table);
    }
    fuzz_ecdsa_verdict(&FUZZ_P256, point, point_len, hash, hash_len, r, s, by_digest, expect);
}

static void check_sha256(const uint8_t *data, size_t size)
{
    uint8_t ours[32], theirs[32];
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (kbs_sha256(size ? data : NULL, size, ours) != KBS_OK)
        fuzz_fail("kbs_sha256 failed");
    evp_sha256_2(data, cut, data + cut, size - cut, theirs);
    if (memcmp(ours, theirs, 32) != 0)
        fuzz_fail("kbs_sha256 differs from EVP over %zu bytes", size);
    if (kbs_sha256(NULL, 1, ours) != KBS_ERR_NULL_ARGUMENT || kbs_sha256(data, size, NULL) != KBS_ERR_NULL_ARGUMENT)
        fuzz_fail("kbs_sha256 NULL arguments");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_sha256(data, size);
    fuzz_ecdsa_input(&FUZZ_P256, check, data, size);
    return 0;
}
