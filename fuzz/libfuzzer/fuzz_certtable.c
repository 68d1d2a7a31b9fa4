/*
 * libFuzzer harness of the SEV-SNP extended-report certificate table parser.
 *
 * Entry point: kbs_snp_certtable_parse.
 *
 * The first byte sets max_entries (0..31; the entries array is a heap block of exactly that
 * many, NULL for 0, so a write past it is an ASan report); the second picks the mode:
 *   even: the rest is the table as it is (the seeds are real tables: the certificates of
 *         $KBS_VECTORS under AMD's GUIDs, from make_seeds.py);
 *   odd:  the rest describes up to 8 entries (GUID, blob length, a perturbation) and their
 *         blob bytes; the harness lays out header, terminator and blobs, then applies the
 *         perturbations (offset into the header, past the end, a length that wraps, a cut
 *         buffer, a missing terminator).  Unperturbed tables must parse to exactly what was laid.
 * Every result is compared with a plain model of the rules (reference/snp.md §4): the same
 * status, the same entries, count 0 on failure, and NULL arguments refused.
 */
#include "fuzz_common.h"

enum { ENTRY = 24, MAX_BUILD = 8 };

struct model_result {
    int status;
    size_t count;
};

/* The rules, written again: find the all-zero terminator, then bound every entry by it and by len. */
static struct model_result model(const uint8_t *buf, size_t len, size_t max_entries)
{
    struct model_result m = {KBS_OK, 0};
    if (len == 0)
        return m;
    size_t n = 0;
    for (;; n++) {
        if ((n + 1) * ENTRY > len) {
            m.status = KBS_ERR_CERTTABLE_UNTERMINATED;
            return m;
        }
        int zero = 1;
        for (size_t i = 0; i < ENTRY; i++)
            zero &= buf[n * ENTRY + i] == 0;
        if (zero)
            break;
    }
    if (n > max_entries) {
        m.status = KBS_ERR_CERTTABLE_TOO_MANY;
        return m;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t offset = get_le32(buf + i * ENTRY + 16), length = get_le32(buf + i * ENTRY + 20);
        if (offset < (n + 1) * ENTRY) {
            m.status = KBS_ERR_CERTTABLE_OFFSET;
            return m;
        }
        if (offset + length > len) {
            m.status = KBS_ERR_CERTTABLE_BOUNDS;
            return m;
        }
    }
    m.count = n;
    return m;
}

static void check(const uint8_t *buf, size_t len, size_t max_entries, int expect_ok, size_t expect_count)
{
    struct kbs_certtable_entry *entries = max_entries ? malloc(max_entries * sizeof *entries) : NULL;
    if (max_entries && entries == NULL)
        fuzz_fail("out of memory");
    size_t count = 12345;
    int rc = kbs_snp_certtable_parse(len ? buf : NULL, len, entries, max_entries, &count);
    struct model_result m = model(buf, len, max_entries);
    if (rc != m.status) {
        fuzz_hex("table", buf, len);
        fuzz_fail("kbs_snp_certtable_parse %d, model %d (max_entries %zu)", rc, m.status, max_entries);
    }
    if (rc != KBS_OK && count != 0)
        fuzz_fail("count %zu left after failure %d", count, rc);
    if (rc == KBS_OK) {
        if (count != m.count)
            fuzz_fail("count %zu, model %zu", count, m.count);
        for (size_t i = 0; i < count; i++) {
            const uint8_t *e = buf + i * ENTRY;
            if (memcmp(entries[i].guid, e, 16) != 0 || entries[i].offset != get_le32(e + 16) ||
                entries[i].length != get_le32(e + 20) || (size_t)entries[i].offset + entries[i].length > len)
                fuzz_fail("entry %zu decoded wrong", i);
        }
    }
    if (expect_ok && (rc != KBS_OK || count != expect_count)) {
        fuzz_hex("table", buf, len);
        fuzz_fail("a well-formed table of %zu entries gave status %d, count %zu", expect_count, rc, count);
    }
    size_t dummy;
    if (kbs_snp_certtable_parse(buf, len, entries, max_entries, NULL) != KBS_ERR_NULL_ARGUMENT ||
        (len && kbs_snp_certtable_parse(NULL, len, entries, max_entries, &dummy) != KBS_ERR_NULL_ARGUMENT) ||
        kbs_snp_certtable_parse(buf, len, NULL, 1, &dummy) != KBS_ERR_NULL_ARGUMENT)
        fuzz_fail("a NULL argument was not refused");
    free(entries);
}

/* Lay out a table from descriptors; returns its exact-size block in *out. */
static size_t build(struct reader *rd, uint8_t **out, size_t max_entries, int *expect_ok, size_t *expect_count)
{
    size_t k = take_u8(rd) % (MAX_BUILD + 1);
    uint8_t guid[MAX_BUILD][16], tweak[MAX_BUILD];
    size_t blob_len[MAX_BUILD], total = (k + 1) * ENTRY;
    for (size_t i = 0; i < k; i++) {
        take(rd, guid[i], 16);
        blob_len[i] = take_u16(rd) % 700;
        tweak[i] = take_u8(rd);
        total += blob_len[i];
    }
    uint8_t cut = take_u8(rd);
    uint8_t *b = calloc(total ? total : 1, 1);
    if (b == NULL)
        fuzz_fail("out of memory");
    size_t at = (k + 1) * ENTRY;
    int perturbed = 0;
    for (size_t i = 0; i < k; i++) {
        uint8_t *e = b + i * ENTRY;
        uint64_t offset = at, length = blob_len[i];
        switch (tweak[i] % 16) { /* 0..8: as laid */
        case 9: offset = tweak[i] % ((k + 1) * ENTRY); break;      /* into the header */
        case 10: length = total - offset + 1 + tweak[i] % 3; break; /* one past the end */
        case 11: offset = total + tweak[i] % 2; length = 0; break;  /* at or past the end */
        case 12: length = 0xFFFFFFFFu - tweak[i] % 4; break;        /* offset + length wraps u32 */
        case 13: offset = 0xFFFFFFFFu; break;
        case 14: offset = at - ENTRY; break;                         /* onto the terminator */
        default: break;
        }
        perturbed |= tweak[i] % 16 >= 9 && tweak[i] % 16 <= 14;
        memcpy(e, guid[i], 16);
        put_le32(e + 16, (uint32_t)offset);
        put_le32(e + 20, (uint32_t)length);
        if (offset == 0 && length == 0 && memcmp(guid[i], (const uint8_t[16]){0}, 16) == 0)
            e[0] = 1; /* not a terminator */
        take(rd, b + at, blob_len[i]);
        at += blob_len[i];
    }
    size_t len = total;
    if (cut % 8 == 7) { /* drop a tail: blobs or even the terminator go missing */
        len = total - (total ? (size_t)(cut / 8) % (total + 1) : 0);
        perturbed |= len != total;
    } else if (cut % 8 == 6 && k) { /* no terminator: the last entry's slot is filled */
        memset(b + k * ENTRY, 0xA5, ENTRY);
        perturbed = 1;
    }
    *expect_ok = !perturbed && k <= max_entries;
    *expect_count = k;
    uint8_t *exact = malloc(len ? len : 1);
    if (exact == NULL)
        fuzz_fail("out of memory");
    if (len)
        memcpy(exact, b, len);
    free(b);
    *out = exact;
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader rd = {data, size};
    size_t max_entries = take_u8(&rd) % 32;
    if (take_u8(&rd) % 2 == 0) {
        check(rd.p, rd.n, max_entries, 0, 0);
    } else {
        uint8_t *table;
        int expect_ok;
        size_t expect_count;
        size_t len = build(&rd, &table, max_entries, &expect_ok, &expect_count);
        check(table, len, max_entries, expect_ok, expect_count);
        free(table);
    }
    return 0;
}
