/*
 * Tests of the SNP report and certificate-table parsers, built and run under
 * AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).
 *
 * Every input lives in a heap block of exactly its length, so any read past the
 * end is caught.  Real reports come from $KBS_VECTORS/snp (default ../shared/vectors);
 * random mutations run KBS_NATIVE_FUZZ_ITERS times (default 20000).
 */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kbs_native.h"
#include "vectors.h"

/* The uncompressed P-384 point inside a DER certificate: BIT STRING 03 62 00 04 || X || Y. */
static int find_point(const uint8_t *der, size_t len, uint8_t point[97])
{
    for (size_t i = 0; i + 100 <= len; i++) {
        if (der[i] == 0x03 && der[i + 1] == 0x62 && der[i + 2] == 0x00 && der[i + 3] == 0x04) {
            memcpy(point, der + i + 3, 97);
            return 1;
        }
    }
    return 0;
}

static void test_report(const char *dir, const char *name, long iters)
{
    char path[4096];
    size_t len = 0, der_len = 0;
    snprintf(path, sizeof path, "%s/%s/report.bin", dir, name);
    uint8_t *report = read_file(path, &len);
    if (!report)
        return;
    struct kbs_snp_report out;
    CHECK(kbs_snp_parse(report, len, &out) == KBS_OK, "%s parses", name);
    CHECK(out.version >= 2 && out.version <= 5, "%s version %u", name, out.version);

    /* Every length but the right one is refused, reading nothing past the block. */
    for (size_t n = 0; n <= len + 8; n++) {
        uint8_t *copy = exact_copy(report, n < len ? n : len);
        if (n > len) {
            free(copy);
            copy = calloc(n, 1);
            memcpy(copy, report, len);
        }
        int rc = kbs_snp_parse(copy, n, &out);
        CHECK((n == len) == (rc == KBS_OK), "%s length %zu gives %d", name, n, rc);
        free(copy);
    }

    uint8_t point[97];
    int have_key = 0;
    const char *veks[] = {"vcek.der", "vlek.der"};
    for (size_t k = 0; k < 2 && !have_key; k++) {
        snprintf(path, sizeof path, "%s/%s/%s", dir, name, veks[k]);
        uint8_t *der = read_file(path, &der_len);
        if (der) {
            have_key = find_point(der, der_len, point);
            free(der);
        }
    }
    if (have_key) {
        CHECK(kbs_snp_verify(report, len, point, sizeof point, &out) == KBS_OK, "%s verifies", name);
        for (int i = 0; i < 64; i++) {
            uint8_t *copy = exact_copy(report, len);
            size_t bit = (size_t)(rnd() % (KBS_SNP_SIGNED_SIZE * 8));
            copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            CHECK(kbs_snp_verify(copy, len, point, sizeof point, &out) != KBS_OK, "%s bit %zu", name, bit);
            free(copy);
        }
        /* A wrong key: flip one coordinate bit (almost surely off the curve). */
        point[50] ^= 1;
        CHECK(kbs_snp_verify(report, len, point, sizeof point, &out) != KBS_OK, "%s wrong key", name);
        CHECK(kbs_snp_verify(report, len, point, 96, &out) == KBS_ERR_KEY_LENGTH, "%s short key", name);
    }

    /* Random byte edits anywhere: the parser returns a status and reads only its block. */
    for (long i = 0; i < iters; i++) {
        uint8_t *copy = exact_copy(report, len);
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++)
            copy[rnd() % len] = (uint8_t)rnd();
        int rc = kbs_snp_parse(copy, len, &out);
        CHECK(rc == KBS_OK || (rc >= 100 && rc < 200), "%s mutation status %d", name, rc);
        free(copy);
    }
    free(report);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_certtable(long iters)
{
    struct kbs_certtable_entry entries[8];
    size_t count = 99;
    CHECK(kbs_snp_certtable_parse(NULL, 0, entries, 8, &count) == KBS_OK && count == 0, "empty table");

    /* Two entries, terminator, two blobs. */
    uint8_t table[3 * 24 + 10];
    memset(table, 0, sizeof table);
    memset(table, 0x11, 16);
    put32(table + 16, 72);
    put32(table + 20, 4);
    memset(table + 24, 0x22, 16);
    put32(table + 40, 76);
    put32(table + 44, 6);
    uint8_t *t = exact_copy(table, sizeof table);
    CHECK(kbs_snp_certtable_parse(t, sizeof table, entries, 8, &count) == KBS_OK && count == 2,
          "valid table");
    CHECK(entries[1].offset == 76 && entries[1].length == 6, "second entry decoded");
    CHECK(kbs_snp_certtable_parse(t, sizeof table, entries, 1, &count) == KBS_ERR_CERTTABLE_TOO_MANY,
          "too many entries");
    for (size_t n = 1; n < sizeof table; n++) {
        uint8_t *cut = exact_copy(table, n);
        int rc = kbs_snp_certtable_parse(cut, n, entries, 8, &count);
        CHECK(rc != KBS_OK, "truncated table %zu accepted", n);
        free(cut);
    }
    put32(t + 16, 48); /* points into the header */
    CHECK(kbs_snp_certtable_parse(t, sizeof table, entries, 8, &count) == KBS_ERR_CERTTABLE_OFFSET,
          "offset into header");
    put32(t + 16, 72);
    put32(t + 20, 0xFFFFFFFFu); /* offset + length wraps in 32 bits */
    CHECK(kbs_snp_certtable_parse(t, sizeof table, entries, 8, &count) == KBS_ERR_CERTTABLE_BOUNDS,
          "length past end");
    free(t);

    for (long i = 0; i < iters; i++) {
        size_t n = (size_t)(rnd() % 200);
        uint8_t *r = malloc(n ? n : 1);
        for (size_t j = 0; j < n; j++)
            r[j] = (rnd() % 3 == 0) ? (uint8_t)rnd() : 0; /* zeros make terminators likely */
        int rc = kbs_snp_certtable_parse(r, n, entries, 8, &count);
        if (rc == KBS_OK)
            for (size_t e = 0; e < count; e++)
                CHECK((size_t)entries[e].offset + entries[e].length <= n, "entry inside buffer");
        free(r);
    }
}

static void test_p384_arguments(void)
{
    uint8_t key[97] = {0x04}, digest[48] = {0}, r[48] = {0}, s[48] = {0};
    CHECK(kbs_p384_verify_digest(key, 97, digest, r, s) != KBS_OK, "zero key and signature refused");
    CHECK(kbs_p384_verify_digest(NULL, 97, digest, r, s) == KBS_ERR_NULL_ARGUMENT, "null key");
    key[0] = 0x02;
    CHECK(kbs_p384_verify_digest(key, 97, digest, r, s) == KBS_ERR_KEY_FORMAT, "compressed prefix");
}

int main(void)
{
    const char *vectors = getenv("KBS_VECTORS");
    const char *iters_env = getenv("KBS_NATIVE_FUZZ_ITERS");
    long iters = iters_env ? atol(iters_env) : 20000;
    char dir[1024];
    rng_state = 0x9E3779B97F4A7C15u;
    snprintf(dir, sizeof dir, "%s/snp", vectors ? vectors : "../shared/vectors");

    DIR *d = opendir(dir);
    int reports = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            long before = passed;
            test_report(dir, e->d_name, iters / 10);
            reports += passed > before;
        }
        closedir(d);
    }
    if (reports == 0)
        fprintf(stderr, "note: no SNP vectors under %s; real-report tests skipped\n", dir);
    test_certtable(iters);
    test_p384_arguments();
    printf("test_snp: %d reports; %ld passed, %ld failed\n", reports, passed, failed);
    return failed != 0;
}
