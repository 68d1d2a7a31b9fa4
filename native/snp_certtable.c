/*
 * SEV-SNP extended-report certificate table (reference/snp.md §4):
 *   entry := { guid[16]; u32 offset; u32 length }   (24 bytes, little-endian)
 *   table := entry_1 ... entry_n, an all-zero entry, then the blobs.
 * Offsets count from the start of the buffer; every blob must lie after the
 * header (terminator included) and inside the buffer.
 */
#include <string.h>

#include "kbs_native.h"

enum { ENTRY_SIZE = 24, GUID_SIZE = 16 };

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int entry_is_zero(const uint8_t *p)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < ENTRY_SIZE; i++)
        acc |= p[i];
    return acc == 0;
}

int kbs_snp_certtable_parse(const uint8_t *buf, size_t len, struct kbs_certtable_entry *entries,
                            size_t max_entries, size_t *count_out)
{
    if (count_out == NULL || (buf == NULL && len != 0) || (entries == NULL && max_entries != 0))
        return KBS_ERR_NULL_ARGUMENT;
    *count_out = 0;
    if (len == 0)
        return KBS_OK;

    /* Find the terminator first: the header size bounds every offset. */
    size_t n = 0;
    for (;;) {
        if (len < (n + 1) * ENTRY_SIZE) /* n <= len / 24, so no overflow */
            return KBS_ERR_CERTTABLE_UNTERMINATED;
        if (entry_is_zero(buf + n * ENTRY_SIZE))
            break;
        n++;
    }
    if (n > max_entries)
        return KBS_ERR_CERTTABLE_TOO_MANY;

    size_t header_size = (n + 1) * ENTRY_SIZE;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *e = buf + i * ENTRY_SIZE;
        uint32_t offset = le32(e + GUID_SIZE);
        uint32_t length = le32(e + GUID_SIZE + 4);
        if (offset < header_size)
            return KBS_ERR_CERTTABLE_OFFSET;
        /* offset <= len first, so len - offset cannot wrap. */
        if (offset > len || length > len - offset)
            return KBS_ERR_CERTTABLE_BOUNDS;
        memcpy(entries[i].guid, e, GUID_SIZE);
        entries[i].offset = offset;
        entries[i].length = length;
    }
    *count_out = n;
    return KBS_OK;
}
