/*
 * Tests of the NVIDIA GPU report parser (kbs_spdm_parse) and its verifiers (kbs_spdm_verify,
 * kbs_spdm_verify_with_table), built and run under AddressSanitizer and UndefinedBehaviorSanitizer
 * (`make sanitize`).
 *
 * Every input lives in a heap block of exactly its length, so any read past the end is caught.
 * Real reports are read at run time from $KBS_VECTORS/gpu (default ../shared/vectors): the hex
 * text reports beside their PEM chains, and the reports inside the JSON bundles (base64 "evidence"
 * and "py/b64" strings, each with its own chain's "certificate" or "pem" strings).  Each genuine
 * report is verified with the key of the first certificate of its own chain, decoded here with
 * libcrypto; the one report whose signature NVIDIA broke on purpose must fail with the signature
 * status.  Nothing from the vectors is written here.  Synthetic reports, signed by keys made here,
 * cover the shapes real GPUs never send (one block, 254 blocks, every TLV type, each rule broken)
 * and keep the test meaningful without the vectors.  Random edits run KBS_NATIVE_FUZZ_ITERS times
 * in all (default 20000).
 */
#define _DEFAULT_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED
#include <ctype.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kbs_native.h"
#include "vectors.h"

static int is_parse_error(int rc)
{
    return rc >= KBS_ERR_SPDM_REQUEST_TRUNCATED && rc <= KBS_ERR_SPDM_PADDING;
}

/* ---- the real reports: hex text files and JSON bundles ---- */

struct real {
    char name[256];
    uint8_t *data;
    size_t len;
    uint8_t point[97];
    int genuine;
};

static struct real reals[64];
static int nreal;

static uint8_t *hex_decode(const char *text, size_t *len)
{
    size_t n = 0, cap = strlen(text) / 2 + 1;
    uint8_t *out = malloc(cap);
    int hi = -1;
    for (const char *c = text; *c; c++) {
        if (isspace((unsigned char)*c))
            continue;
        int v = isdigit((unsigned char)*c) ? *c - '0' : (tolower((unsigned char)*c) - 'a' + 10);
        if (v < 0 || v > 15) {
            free(out);
            return NULL;
        }
        if (hi < 0) {
            hi = v;
        } else {
            out[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    *len = n;
    return out;
}

static uint8_t *b64_decode(const char *text, size_t text_len, size_t *len)
{
    uint8_t *out = malloc(text_len / 4 * 3 + 3);
    int n = EVP_DecodeBlock(out, (const unsigned char *)text, (int)text_len);
    if (n < 0) {
        free(out);
        return NULL;
    }
    size_t pad = text_len >= 2 ? (text[text_len - 1] == '=') + (text[text_len - 2] == '=') : 0;
    *len = (size_t)n - pad;
    return out;
}

static void add_real(const char *name, uint8_t *data, size_t len, const uint8_t *pem, size_t pem_len, int genuine)
{
    struct real *r = &reals[nreal];
    if (nreal >= 64 || data == NULL || !pem_leaf_point(pem, pem_len, r->point, 97)) {
        CHECK(0, "%s: report or chain not readable", name);
        free(data);
        return;
    }
    snprintf(r->name, sizeof r->name, "%s", name);
    r->data = data;
    r->len = len;
    r->genuine = genuine;
    nreal++;
}

static void load_hex(const char *root, const char *report, const char *chain, int genuine)
{
    char path[1024];
    size_t len, pem_len;
    snprintf(path, sizeof path, "%s/gpu/%s", root, report);
    char *text = read_text(path);
    snprintf(path, sizeof path, "%s/gpu/%s", root, chain);
    uint8_t *pem = read_file(path, &pem_len);
    if (text && pem) {
        uint8_t *data = hex_decode(text, &len);
        add_real(report, data, len, pem, pem_len, genuine);
    }
    free(text);
    free(pem);
}

/*
 * The reports of a JSON bundle and their chains, by the keys their transports use: a report is the
 * value of "evidence" or "py/b64", a chain part the value of "certificate" or "pem".  In a bundle whose
 * first value is a report, each report's chain follows it (go-nvattest-tools MPT); otherwise its chain
 * comes before it, the leaf being the first chain part after the previous report.
 */
static void load_json(const char *root, const char *file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/gpu/%s", root, file);
    char *text = read_text(path);
    if (!text)
        return;
    enum { MAXV = 256 };
    struct { const char *p; size_t n; int report; } v[MAXV];
    int nv = 0;
    static const char *keys[] = {"\"evidence\"", "\"py/b64\"", "\"certificate\"", "\"pem\""};
    for (const char *c = text; *c && nv < MAXV; c++) {
        for (int k = 0; k < 4; k++) {
            size_t kl = strlen(keys[k]);
            if (strncmp(c, keys[k], kl) != 0)
                continue;
            const char *q = c + kl;
            while (*q == ' ' || *q == ':')
                q++;
            if (*q != '"')
                break;
            const char *end = strchr(q + 1, '"');
            if (!end)
                break;
            v[nv].p = q + 1;
            v[nv].n = (size_t)(end - q - 1);
            v[nv].report = k < 2;
            nv++;
            c = end;
            break;
        }
    }
    int report_first = nv > 0 && v[0].report, count = 0, chain = -1;
    for (int i = 0; i < nv; i++) {
        if (!v[i].report) {
            if (chain < 0)
                chain = i;
            continue;
        }
        int leaf = report_first ? (i + 1 < nv && !v[i + 1].report ? i + 1 : -1) : chain;
        chain = -1;
        char name[256];
        snprintf(name, sizeof name, "%s[%d]", file, count++);
        size_t data_len = 0, pem_len = 0;
        uint8_t *data = b64_decode(v[i].p, v[i].n, &data_len);
        uint8_t *pem = leaf >= 0 ? b64_decode(v[leaf].p, v[leaf].n, &pem_len) : NULL;
        if (pem == NULL) {
            CHECK(0, "%s: no chain", name);
            free(data);
            continue;
        }
        add_real(name, data, data_len, pem, pem_len, 1);
        free(pem);
    }
    free(text);
}

static void load_reals(const char *root)
{
    static const char *const S = "attestation-sdk/unit-tests/sample_attestation_data/gpu/";
    char r[256], c[256];
    load_hex(root, "nvtrust/hopperAttestationReport.txt", "nvtrust/hopperCertChain.txt", 1);
    load_hex(root, "attestation-sdk/unit-tests/hopperAttestationReport.txt",
             "attestation-sdk/unit-tests/hopperCertChain.txt", 1);
    static const char *const samples[][2] = {{"hopperAttestationReport.txt", "hopperCertChain.txt"},
                                             {"hopperAttestationReportExpired.txt", "hopperCertChainExpired.txt"},
                                             {"blackwellAttestationReport.txt", "blackwellCertChain.txt"}};
    for (size_t i = 0; i < 3; i++) {
        snprintf(r, sizeof r, "%s%s", S, samples[i][0]);
        snprintf(c, sizeof c, "%s%s", S, samples[i][1]);
        load_hex(root, r, c, 1);
    }
    load_hex(root, "trustee/hopper_coco_report1.txt", "trustee/hopper_coco_certs1.txt", 1);
    snprintf(r, sizeof r, "%shopperAttestationReportInvalidSignature.txt", S);
    snprintf(c, sizeof c, "%shopperCertChainExpired.txt", S);
    load_hex(root, r, c, 0);
    static const char *const bundles[] = {
        "attestation-sdk/common-test-data/hopper_evidence.json",
        "attestation-sdk/common-test-data/multi_gpu_hopper.json",
        "attestation-sdk/common-test-data/hopper_evidence_cert_hold.json",
        "attestation-sdk/unit-tests/evidence_hopper_590_12.json",
        "nvtrust/ppcie-verifier-sdk-cpp/gpu_evidence.json",
        "go-nvattest-tools/test_mpt_data.json",
        "go-nvattest-tools/test_ppcie_data.json",
    };
    for (size_t i = 0; i < sizeof bundles / sizeof bundles[0]; i++)
        load_json(root, bundles[i]);
}

/* ---- region map of a parsed report: what a one-bit flip of each byte must give ---- */

enum expect { EXACT, EITHER, ONE_OF3, ANY_PARSE_ERROR, NOT_OK };

struct region {
    size_t start, end;
    enum expect kind;
    int a, b, c;
};

static int region_allows(const struct region *r, int rc)
{
    switch (r->kind) {
    case EXACT: return rc == r->a;
    case EITHER: return rc == r->a || rc == r->b;
    case ONE_OF3: return rc == r->a || rc == r->b || rc == r->c;
    case ANY_PARSE_ERROR: return is_parse_error(rc);
    default: return rc != KBS_OK && (is_parse_error(rc) || rc == KBS_ERR_SPDM_SIG_INVALID);
    }
}

/* The region a byte is in (regions are disjoint and cover [0, end + trailing)). */
static struct region region_of(const struct kbs_spdm_report *q, size_t len, size_t i)
{
#define R(k, x, y, z) return (struct region){i, i + 1, (k), (x), (y), (z)}
    if (i < 4) {
        static const int first[4] = {KBS_ERR_SPDM_REQUEST_VERSION, KBS_ERR_SPDM_REQUEST_CODE,
                                     KBS_ERR_SPDM_REQUEST_ATTRIBUTES, KBS_ERR_SPDM_REQUEST_OPERATION};
        R(EXACT, first[i], 0, 0);
    }
    if (i < 36)
        R(EXACT, KBS_ERR_SPDM_SIG_INVALID, 0, 0); /* the requester nonce is signed */
    if (i == 36) /* slot 0 -> 1, 2, 4: a slot the response does not echo; 8 and up: no slot */
        R(EITHER, KBS_ERR_SPDM_REQUEST_SLOT, KBS_ERR_SPDM_RESPONSE_SLOT, 0);
    if (i < 41) {
        static const int header[4] = {KBS_ERR_SPDM_RESPONSE_VERSION, KBS_ERR_SPDM_RESPONSE_CODE,
                                      KBS_ERR_SPDM_RESPONSE_PARAM1, KBS_ERR_SPDM_RESPONSE_SLOT};
        R(EXACT, header[i - 37], 0, 0);
    }
    if (i == 41)
        R(ONE_OF3, KBS_ERR_SPDM_NO_BLOCKS, KBS_ERR_SPDM_BLOCK_COUNT, KBS_ERR_SPDM_RECORD_TRAILING);
    if (i < 45)
        R(ANY_PARSE_ERROR, 0, 0, 0);
    for (size_t n = 0; n < q->block_count; n++) {
        size_t at = q->blocks[n].value_offset - 7;
        if (i >= q->blocks[n].value_offset + q->blocks[n].value_size)
            continue;
        if (i == at) /* another index: out of range, used already, or a new one the signature did not cover */
            R(ONE_OF3, KBS_ERR_SPDM_BLOCK_INDEX, KBS_ERR_SPDM_BLOCK_DUPLICATE, KBS_ERR_SPDM_SIG_INVALID);
        if (i == at + 1)
            R(EXACT, KBS_ERR_SPDM_BLOCK_SPEC, 0, 0);
        if (i < at + 4) /* MeasurementSize: the block no longer holds its DMTF value */
            R(ANY_PARSE_ERROR, 0, 0, 0);
        if (i == at + 4) /* bit 7: a raw bit stream; bits 0-6: another kind of digest */
            R(EITHER, KBS_ERR_SPDM_BLOCK_VALUE_TYPE, KBS_ERR_SPDM_SIG_INVALID, 0);
        if (i < at + 7)
            R(EXACT, KBS_ERR_SPDM_BLOCK_VALUE_SIZE, 0, 0);
        R(EXACT, KBS_ERR_SPDM_SIG_INVALID, 0, 0);
    }
    if (i < q->opaque_offset - 2)
        R(EXACT, KBS_ERR_SPDM_SIG_INVALID, 0, 0); /* the responder nonce */
    if (i < q->opaque_offset)
        R(ANY_PARSE_ERROR, 0, 0, 0); /* OpaqueLength */
    for (size_t n = 0; n < q->opaque_count; n++) {
        size_t at = q->opaque[n].offset - 4;
        if (i >= q->opaque[n].offset + q->opaque[n].length)
            continue;
        if (i < at + 2) /* DataType: unknown, repeated, or another known type (signed) */
            R(ONE_OF3, KBS_ERR_SPDM_TLV_TYPE, KBS_ERR_SPDM_TLV_DUPLICATE, KBS_ERR_SPDM_SIG_INVALID);
        if (i < at + 4) /* DataSize: the TLVs after it are read from other bytes */
            R(NOT_OK, 0, 0, 0);
        R(EXACT, KBS_ERR_SPDM_SIG_INVALID, 0, 0);
    }
    if (i < q->end)
        R(EITHER, KBS_ERR_SPDM_SIG_INVALID, KBS_ERR_SPDM_SIG_RANGE, 0);
    (void)len;
    R(EXACT, KBS_ERR_SPDM_TRAILING_BYTES, 0, 0);
#undef R
}

/* ---- one report (real or synthetic), verified with its leaf point ---- */

static void test_report(const char *name, const uint8_t *report, size_t len, const uint8_t point[97],
                        const uint8_t other[97], int genuine, size_t stride, long iters)
{
    struct kbs_spdm_report *q = malloc(sizeof *q), *q2 = malloc(sizeof *q2);
    int rc = kbs_spdm_parse(report, len, 0, q);
    CHECK(rc == KBS_OK, "%s parses: %d", name, rc);
    if (rc != KBS_OK) {
        free(q);
        free(q2);
        return;
    }
    CHECK(q->block_count == q->number_of_blocks && q->number_of_blocks >= 1, "%s blocks", name);
    CHECK(q->record_offset == 45 && q->request_nonce_offset == 4, "%s fixed offsets", name);
    CHECK(q->responder_nonce_offset == 45 + (size_t)q->record_length, "%s responder nonce", name);
    CHECK(q->opaque_offset == q->responder_nonce_offset + 34, "%s opaque offset", name);
    CHECK(q->signed_size == q->signature_offset && q->signature_offset == q->opaque_offset + q->opaque_length,
          "%s signature offset", name);
    CHECK(q->end == q->signature_offset + 96 && q->trailing_size == len - q->end, "%s end", name);
    CHECK(all_zero(report + q->end, len - q->end), "%s padding is zero", name);
    size_t record = 0, opaque = 0;
    for (size_t n = 0; n < q->block_count; n++)
        record += 7 + q->blocks[n].value_size;
    for (size_t n = 0; n < q->opaque_count; n++)
        opaque += 4 + q->opaque[n].length;
    CHECK(record == q->record_length && opaque == q->opaque_length, "%s record and opaque sizes", name);

    rc = kbs_spdm_verify(report, len, 0, point, 97, q2);
    CHECK(rc == (genuine ? KBS_OK : KBS_ERR_SPDM_SIG_INVALID), "%s verifies with its leaf key: %d", name, rc);
    if (!genuine) {
        free(q);
        free(q2);
        return;
    }
    CHECK(memcmp(q, q2, sizeof *q) == 0, "%s verify fills the same struct as parse", name);
    struct kbs_p384_key_table *table = malloc(sizeof *table);
    CHECK(kbs_p384_key_precompute(point, 97, table) == KBS_OK, "%s key table", name);
    memset(q2, 0xAA, sizeof *q2);
    CHECK(kbs_spdm_verify_with_table(report, len, 0, table, q2) == KBS_OK && memcmp(q, q2, sizeof *q) == 0,
          "%s verifies with its key table", name);
    if (other && memcmp(other, point, 97) != 0)
        CHECK(kbs_spdm_verify(report, len, 0, other, 97, q2) == KBS_ERR_SPDM_SIG_INVALID, "%s with another key",
              name);
    uint8_t bad[97];
    memcpy(bad, point, 97);
    bad[60] ^= 1;
    CHECK(kbs_spdm_verify(report, len, 0, bad, 97, q2) == KBS_ERR_SPDM_KEY && q2->error_seen == 97,
          "%s off-curve key", name);
    CHECK(kbs_spdm_verify(report, len, 0, point, 96, q2) == KBS_ERR_SPDM_KEY, "%s short key", name);
    CHECK(kbs_spdm_verify(report, len, 0, NULL, 97, q2) == KBS_ERR_NULL_ARGUMENT, "%s NULL key", name);
    CHECK(kbs_spdm_verify_with_table(report, len, 0, NULL, q2) == KBS_ERR_NULL_ARGUMENT, "%s NULL table", name);
    CHECK(kbs_spdm_parse(NULL, len, 0, q2) == KBS_ERR_NULL_ARGUMENT, "%s NULL buffer", name);
    CHECK(kbs_spdm_parse(report, len, 0, NULL) == KBS_ERR_NULL_ARGUMENT, "%s NULL out", name);
    CHECK(kbs_spdm_parse(report, len, 2, q2) == KBS_ERR_SPDM_FLAGS && q2->error_seen == 2, "%s flags", name);
    CHECK(kbs_spdm_parse(report, len, KBS_SPDM_NO_PADDING, q2) ==
              (q->trailing_size ? KBS_ERR_SPDM_PADDING : KBS_OK), "%s without padding", name);
    struct kbs_p384_key_table *blank = calloc(1, sizeof *blank);
    CHECK(kbs_spdm_verify_with_table(report, len, 0, blank, q2) == KBS_ERR_INTERNAL, "%s a table never built", name);
    free(blank);

    /* Every cut: the status of the part the buffer ends in, reading nothing past the block. */
    for (size_t n = 0; n <= len; n++) {
        uint8_t *c = exact_copy(report, n);
        int want;
        if (n < 37)
            want = KBS_ERR_SPDM_REQUEST_TRUNCATED;
        else if (n < 45)
            want = KBS_ERR_SPDM_RESPONSE_TRUNCATED;
        else if (n < q->responder_nonce_offset)
            want = KBS_ERR_SPDM_RECORD_TRUNCATED;
        else if (n < q->opaque_offset - 2)
            want = KBS_ERR_SPDM_NONCE_TRUNCATED;
        else if (n < q->opaque_offset)
            want = KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED;
        else if (n < q->signature_offset)
            want = KBS_ERR_SPDM_OPAQUE_TRUNCATED;
        else if (n < q->end)
            want = KBS_ERR_SPDM_SIGNATURE_TRUNCATED;
        else
            want = KBS_OK;
        rc = kbs_spdm_parse(c, n, 0, q2);
        CHECK(rc == want, "%s cut to %zu gives %d, want %d", name, n, rc, want);
        if (n == q->end) /* the report without its padding still verifies */
            CHECK(kbs_spdm_verify(c, n, KBS_SPDM_NO_PADDING, point, 97, q2) == KBS_OK, "%s unpadded", name);
        free(c);
    }

    /* Zero padding of any length is accepted; one non-zero byte in it is not. */
    for (size_t extra = 1; extra <= 64; extra += 21) {
        uint8_t *longer = calloc(1, len + extra);
        memcpy(longer, report, len);
        CHECK(kbs_spdm_verify(longer, len + extra, 0, point, 97, q2) == KBS_OK &&
                  q2->trailing_size == q->trailing_size + extra, "%s + %zu zero bytes", name, extra);
        size_t at = len + (size_t)(rnd() % extra);
        longer[at] = (uint8_t)(1 + rnd() % 255);
        CHECK(kbs_spdm_parse(longer, len + extra, 0, q2) == KBS_ERR_SPDM_TRAILING_BYTES && q2->error_offset == at &&
                  q2->error_seen == longer[at], "%s + a non-zero byte", name);
        free(longer);
    }

    /* One bit of every `stride`-th byte (and of the whole header): the status of the part it hit. */
    uint8_t *copy = exact_copy(report, len);
    for (size_t i = 0; i < len; i += i < 64 ? 1 : stride) {
        uint8_t mask = (uint8_t)(1u << (rnd() % 8));
        copy[i] ^= mask;
        int got = kbs_spdm_verify(copy, len, 0, point, 97, q2);
        if (i % 7 == 0)
            CHECK(kbs_spdm_verify_with_table(copy, len, 0, table, q2) == got, "%s byte %zu: table disagrees", name, i);
        struct region where = region_of(q, len, i);
        CHECK(region_allows(&where, got), "%s byte %zu bit 0x%02x gives %d (kind %d)", name, i, mask, got,
              (int)where.kind);
        copy[i] ^= mask;
    }

    /* Random edits anywhere: a status, never a crash; accepted only if nothing but padding changed. */
    for (long it = 0; it < iters; it++) {
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++)
            copy[rnd() % len] = (uint8_t)rnd();
        int got = kbs_spdm_verify(copy, len, 0, point, 97, q2);
        if (it % 8 == 0)
            CHECK(kbs_spdm_verify_with_table(copy, len, 0, table, q2) == got, "%s edit %ld: table disagrees", name, it);
        CHECK(got == KBS_OK || is_parse_error(got) || got == KBS_ERR_SPDM_SIG_RANGE || got == KBS_ERR_SPDM_SIG_INVALID,
              "%s edit status %d", name, got);
        if (got == KBS_OK)
            CHECK(memcmp(copy, report, q->end) == 0 && all_zero(copy + q->end, len - q->end),
                  "%s an edited report was accepted", name);
        memcpy(copy, report, len);
    }
    free(copy);
    free(table);
    free(q);
    free(q2);
}

/* ---- synthetic reports, signed here ---- */

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n)
        memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put8(struct buf *b, unsigned v)
{
    uint8_t x = (uint8_t)v;
    put(b, &x, 1);
}

static void put16(struct buf *b, unsigned v)
{
    put8(b, v & 0xFF);
    put8(b, (v >> 8) & 0xFF);
}

struct block {
    unsigned index, spec, type;
    size_t value_len;
    int msize_delta, vsize_delta; /* added to the true MeasurementSize and DMTF value size */
};

struct tlv {
    unsigned type;
    size_t len;
    int size_delta;
};

struct shape {
    const struct block *blocks;
    size_t nblocks;
    const struct tlv *tlvs;
    size_t ntlvs;
    int count_delta;     /* added to NumberOfBlocks */
    long record_delta;   /* added to MeasurementRecordLength */
    long opaque_delta;   /* added to OpaqueLength */
    size_t padding;      /* zero bytes after the signature */
    uint8_t slot;
};

/* A report of this shape in a new exact-size block, signed by `key` over everything before the signature. */
static uint8_t *build(EC_KEY *key, const struct shape *s, size_t *len_out)
{
    struct buf b = {0}, rec = {0}, opq = {0};
    for (size_t i = 0; i < s->nblocks; i++) {
        const struct block *k = &s->blocks[i];
        put8(&rec, k->index);
        put8(&rec, k->spec);
        put16(&rec, (unsigned)((int)(3 + k->value_len) + k->msize_delta));
        put8(&rec, k->type);
        put16(&rec, (unsigned)((int)k->value_len + k->vsize_delta));
        for (size_t j = 0; j < k->value_len; j++)
            put8(&rec, (unsigned)(k->index * 31 + j));
    }
    for (size_t i = 0; i < s->ntlvs; i++) {
        put16(&opq, s->tlvs[i].type);
        put16(&opq, (unsigned)((int)s->tlvs[i].len + s->tlvs[i].size_delta));
        for (size_t j = 0; j < s->tlvs[i].len; j++)
            put8(&opq, (unsigned)(s->tlvs[i].type + j + 1));
    }
    static const uint8_t req[4] = {0x11, 0xE0, 0x01, 0xFF};
    put(&b, req, 4);
    for (unsigned i = 0; i < 32; i++)
        put8(&b, 0xA0 + i);
    put8(&b, s->slot);
    put8(&b, 0x11);
    put8(&b, 0x60);
    put8(&b, 0);
    put8(&b, s->slot);
    put8(&b, (unsigned)((int)s->nblocks + s->count_delta));
    unsigned long record_length = (unsigned long)((long)rec.n + s->record_delta);
    put8(&b, record_length & 0xFF);
    put8(&b, (record_length >> 8) & 0xFF);
    put8(&b, (record_length >> 16) & 0xFF);
    put(&b, rec.p, rec.n);
    for (unsigned i = 0; i < 32; i++)
        put8(&b, 0x50 + i);
    put16(&b, (unsigned)((long)opq.n + s->opaque_delta));
    put(&b, opq.p, opq.n);
    uint8_t digest[48], sig[96];
    CHECK(kbs_sha384(b.p, b.n, digest) == KBS_OK, "sha384");
    sign_digest(key, digest, 48, sig, sig + 48);
    put(&b, sig, 96);
    for (size_t i = 0; i < s->padding; i++)
        put8(&b, 0);
    uint8_t *exact = exact_copy(b.p, b.n);
    *len_out = b.n;
    free(b.p);
    free(rec.p);
    free(opq.p);
    return exact;
}

static struct block blocks_buf[300];

/* n DMTF SHA-384 blocks with indices first, first+1, ... (or descending from first). */
static const struct block *digest_blocks(size_t n, unsigned first, int descending)
{
    for (size_t i = 0; i < n; i++)
        blocks_buf[i] = (struct block){descending ? first - (unsigned)i : first + (unsigned)i, 1, 1, 48, 0, 0};
    return blocks_buf;
}

/* A Hopper-like set of TLVs: VBIOS, board, SKUs, project, driver, GPU info, counters, FWID, versions. */
static const struct tlv HOPPER_TLVS[] = {{6, 8, 0},  {14, 4, 0}, {15, 9, 0},   {16, 5, 0}, {17, 5, 0}, {18, 5, 0},
                                         {19, 2, 0}, {3, 10, 0}, {4, 8, 0},    {12, 256, 0}, {13, 4, 0},
                                         {11, 1, 0}, {20, 48, 0}, {21, 1, 0}, {34, 2, 0}, {36, 2, 0}};
#define NHOPPER (sizeof HOPPER_TLVS / sizeof HOPPER_TLVS[0])

static int status_of(EC_KEY *key, const uint8_t point[97], const struct shape *s)
{
    size_t len;
    uint8_t *b = build(key, s, &len);
    struct kbs_spdm_report *q = malloc(sizeof *q);
    int rc = kbs_spdm_verify(b, len, 0, point, 97, q);
    if (is_parse_error(rc))
        CHECK(kbs_spdm_parse(b, len, 0, q) == rc, "parse and verify disagree: %d", rc);
    free(q);
    free(b);
    return rc;
}

static void test_synthetic(long iters)
{
    uint8_t point[97], other_point[97];
    EC_KEY *key = new_ec_key(NID_secp384r1, point, 97), *other = new_ec_key(NID_secp384r1, other_point, 97);
    size_t len;
    struct kbs_spdm_report *q = malloc(sizeof *q);

    /* Shapes a real GPU never sends, each tested in full (cuts, padding, every bit, random edits). */
    struct shape shapes[4] = {
        {digest_blocks(64, 1, 0), 64, HOPPER_TLVS, NHOPPER, 0, 0, 0, 0, 0},
        {NULL, 1, NULL, 0, 0, 0, 0, 0, 3},    /* one block, no opaque data, slot 3 */
        {NULL, 254, NULL, 0, 0, 0, 0, 2, 0},  /* every index, descending */
        {NULL, 2, NULL, 0, 0, 0, 0, 0, 7},    /* every TLV type once, some empty; odd digest sizes */
    };
    static struct block one[1] = {{254, 1, 0x04, 48, 0, 0}};
    shapes[1].blocks = one;
    static struct block all[254];
    for (unsigned i = 0; i < 254; i++)
        all[i] = (struct block){254 - i, 1, 1, 48, 0, 0};
    shapes[2].blocks = all;
    static struct block odd[2] = {{1, 1, 0x7F, 0, 0, 0}, {2, 1, 0x02, 32, 0, 0}};
    shapes[3].blocks = odd;
    static struct tlv every[31];
    size_t ne = 0;
    for (unsigned t = 1; t <= 36; t++)
        if (t <= 26 || t >= 32)
            every[ne++] = (struct tlv){t, (t * 7) % 13, 0};
    shapes[3].tlvs = every;
    shapes[3].ntlvs = ne;
    for (size_t s = 0; s < 4; s++) {
        uint8_t *b = build(key, &shapes[s], &len);
        char name[64];
        snprintf(name, sizeof name, "synthetic shape %zu", s);
        test_report(name, b, len, point, other_point, 1, 1, s == 0 ? iters : iters / 8);
        CHECK(kbs_spdm_parse(b, len, 0, q) == KBS_OK && q->block_count == shapes[s].nblocks &&
                  q->opaque_count == shapes[s].ntlvs && q->trailing_size == shapes[s].padding &&
                  q->slot_id == shapes[s].slot, "%s fields", name);
        for (size_t i = 0; i < shapes[s].nblocks && q->block_count == shapes[s].nblocks; i++)
            CHECK(q->blocks[i].index == shapes[s].blocks[i].index && q->blocks[i].value_type == shapes[s].blocks[i].type &&
                      q->blocks[i].value_size == shapes[s].blocks[i].value_len && b[q->blocks[i].value_offset - 7] ==
                      shapes[s].blocks[i].index, "%s block %zu", name, i);
        for (size_t i = 0; i < shapes[s].ntlvs && q->opaque_count == shapes[s].ntlvs; i++)
            CHECK(q->opaque[i].type == shapes[s].tlvs[i].type && q->opaque[i].length == shapes[s].tlvs[i].len,
                  "%s TLV %zu", name, i);
        free(b);
    }

    /* Each rule broken alone: the exact status, and where the C core says it is. */
    struct block base[3] = {{1, 1, 1, 48, 0, 0}, {2, 1, 1, 48, 0, 0}, {3, 1, 1, 48, 0, 0}};
    struct tlv tl[3] = {{3, 10, 0}, {6, 8, 0}, {11, 1, 0}};
    struct {
        const char *what;
        struct block b[3];
        struct tlv t[3];
        size_t ntlvs;
        int count_delta;
        long record_delta, opaque_delta;
        int status;
        size_t error_offset;
    } cases[] = {
        {"index 0", {{0, 1, 1, 48, 0, 0}, base[1], base[2]}, {{0}}, 0, 0, 0, 0, KBS_ERR_SPDM_BLOCK_INDEX, 45},
        {"index 255", {base[0], {255, 1, 1, 48, 0, 0}, base[2]}, {{0}}, 0, 0, 0, 0, KBS_ERR_SPDM_BLOCK_INDEX, 100},
        {"duplicate index", {base[0], base[1], base[0]}, {{0}}, 0, 0, 0, 0, KBS_ERR_SPDM_BLOCK_DUPLICATE, 155},
        {"spec 2", {base[0], {2, 2, 1, 48, 0, 0}, base[2]}, {{0}}, 0, 0, 0, 0, KBS_ERR_SPDM_BLOCK_SPEC, 101},
        {"raw bit stream", {base[0], base[1], {3, 1, 0x81, 48, 0, 0}}, {{0}}, 0, 0, 0, 0, KBS_ERR_SPDM_BLOCK_VALUE_TYPE,
         159},
        {"value size - 1", {{1, 1, 1, 48, 0, -1}, base[1], base[2]}, {{0}}, 0, 0, 0, 0, KBS_ERR_SPDM_BLOCK_VALUE_SIZE, 50},
        {"measurement size + 1", {base[0], base[1], {3, 1, 1, 48, 1, 0}}, {{0}}, 0, 0, 0, 0,
         KBS_ERR_SPDM_BLOCK_TRUNCATED, 157},
        {"measurement size - 1", {{1, 1, 1, 48, -1, 0}, base[1], base[2]}, {{0}}, 0, 0, 0, 0,
         KBS_ERR_SPDM_BLOCK_VALUE_SIZE, 50},
        {"measurement size 2", {{1, 1, 1, 48, -49, 0}, base[1], base[2]}, {{0}}, 0, 0, 0, 0,
         KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE, 47},
        {"NumberOfBlocks + 1", {base[0], base[1], base[2]}, {{0}}, 0, 1, 0, 0, KBS_ERR_SPDM_BLOCK_COUNT, 210},
        {"NumberOfBlocks - 1", {base[0], base[1], base[2]}, {{0}}, 0, -1, 0, 0, KBS_ERR_SPDM_RECORD_TRAILING, 155},
        {"NumberOfBlocks 0", {base[0], base[1], base[2]}, {{0}}, 0, -3, 0, 0, KBS_ERR_SPDM_NO_BLOCKS, 41},
        {"record length + 1", {base[0], base[1], base[2]}, {{0}}, 0, 0, 1, 0, KBS_ERR_SPDM_RECORD_TRAILING, 210},
        {"record length - 1", {base[0], base[1], base[2]}, {{0}}, 0, 0, -1, 0, KBS_ERR_SPDM_BLOCK_TRUNCATED, 157},
        {"record length - 55", {base[0], base[1], base[2]}, {{0}}, 0, 0, -55, 0, KBS_ERR_SPDM_BLOCK_COUNT, 155},
        {"record length - 162", {base[0], base[1], base[2]}, {{0}}, 0, 0, -162, 0, KBS_ERR_SPDM_BLOCK_TRUNCATED, 45},
        {"record length huge", {base[0], base[1], base[2]}, {{0}}, 0, 0, 0xFFFFFF - 165, 0,
         KBS_ERR_SPDM_RECORD_TRUNCATED, 42},
        {"unknown TLV 27", {base[0], base[1], base[2]}, {tl[0], {27, 1, 0}, tl[2]}, 3, 0, 0, 0, KBS_ERR_SPDM_TLV_TYPE,
         210 + 34 + 14},
        {"TLV 255 (INVALID)", {base[0], base[1], base[2]}, {{255, 0, 0}}, 1, 0, 0, 0, KBS_ERR_SPDM_TLV_TYPE, 244},
        {"TLV 0", {base[0], base[1], base[2]}, {{0, 4, 0}}, 1, 0, 0, 0, KBS_ERR_SPDM_TLV_TYPE, 244},
        {"TLV repeated", {base[0], base[1], base[2]}, {tl[0], tl[1], {3, 10, 0}}, 3, 0, 0, 0,
         KBS_ERR_SPDM_TLV_DUPLICATE, 244 + 26},
        {"TLV overrunning", {base[0], base[1], base[2]}, {tl[0], tl[1], {11, 1, 1}}, 3, 0, 0, 0,
         KBS_ERR_SPDM_TLV_OVERRUN, 244 + 26 + 2},
        {"TLV overrunning far", {base[0], base[1], base[2]}, {{3, 10, 30000}}, 1, 0, 0, 0, KBS_ERR_SPDM_TLV_OVERRUN, 246},
        {"OpaqueLength - 1", {base[0], base[1], base[2]}, {tl[0], tl[1], tl[2]}, 3, 0, 0, -1,
         KBS_ERR_SPDM_TLV_OVERRUN, 244 + 26 + 2},
        {"OpaqueLength - 3", {base[0], base[1], base[2]}, {tl[0], tl[1], tl[2]}, 3, 0, 0, -3,
         KBS_ERR_SPDM_TLV_TRUNCATED, 244 + 26},
        {"OpaqueLength + 1", {base[0], base[1], base[2]}, {tl[0], tl[1], tl[2]}, 3, 0, 0, 1, KBS_ERR_SPDM_TLV_TRUNCATED,
         244 + 31}, /* the signature's first byte read as the start of a TLV */
        {"OpaqueLength + 97", {base[0], base[1], base[2]}, {tl[0], tl[1], tl[2]}, 3, 0, 0, 97,
         KBS_ERR_SPDM_OPAQUE_TRUNCATED, 242},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct shape s = {cases[c].b, 3, cases[c].t, cases[c].ntlvs, cases[c].count_delta, cases[c].record_delta,
                          cases[c].opaque_delta, 0, 0};
        uint8_t *b = build(key, &s, &len);
        int rc = kbs_spdm_verify(b, len, 0, point, 97, q);
        CHECK(rc == cases[c].status && q->error_offset == cases[c].error_offset, "%s: %d at %zu, want %d at %zu",
              cases[c].what, rc, q->error_offset, cases[c].status, cases[c].error_offset);
        free(b);
    }

    /* 255 blocks cannot all have indices 1-254. */
    struct shape s255 = {digest_blocks(255, 1, 0), 255, NULL, 0, 0, 0, 0, 0, 0};
    CHECK(status_of(key, point, &s255) == KBS_ERR_SPDM_BLOCK_INDEX, "255 blocks");
    struct shape sdup = {digest_blocks(255, 254, 1), 255, NULL, 0, 0, 0, 0, 0, 0};
    CHECK(status_of(key, point, &sdup) == KBS_ERR_SPDM_BLOCK_INDEX, "255 blocks descending (index 0)");
    /* Another signer, or a signature out of range. */
    struct shape good = {digest_blocks(3, 1, 0), 3, tl, 3, 0, 0, 0, 0, 0};
    CHECK(status_of(other, point, &good) == KBS_ERR_SPDM_SIG_INVALID, "another signer");
    uint8_t *b = build(key, &good, &len);
    CHECK(kbs_spdm_verify(b, len, 0, point, 97, q) == KBS_OK, "good synthetic");
    size_t sig = q->signature_offset;
    memset(b + sig, 0, 48);
    CHECK(kbs_spdm_verify(b, len, 0, point, 97, q) == KBS_ERR_SPDM_SIG_RANGE && q->error_offset == sig, "r = 0");
    memset(b + sig, 0xFF, 48);
    CHECK(kbs_spdm_verify(b, len, 0, point, 97, q) == KBS_ERR_SPDM_SIG_RANGE, "r > n");
    free(b);
    EC_KEY_free(key);
    EC_KEY_free(other);
    free(q);
    printf("test_spdm: %zu rules broken alone, 4 synthetic shapes\n", sizeof cases / sizeof cases[0]);
}

int main(void)
{
    const char *vectors = getenv("KBS_VECTORS");
    const char *iters_env = getenv("KBS_NATIVE_FUZZ_ITERS");
    long iters = iters_env ? atol(iters_env) : 20000;
    const char *root = vectors ? vectors : "../shared/vectors";
    rng_state = 0x2545F4914F6CDD1Du;

    load_reals(root);
    int genuine = 0;
    for (int i = 0; i < nreal; i++)
        genuine += reals[i].genuine;
    if (nreal == 0)
        fprintf(stderr, "note: no GPU reports under %s/gpu; real-report tests skipped\n", root);
    else
        CHECK(genuine == 41 && nreal == 42, "found %d genuine reports of %d, want 41 of 42", genuine, nreal);
    for (int i = 0; i < nreal; i++) {
        uint8_t *exact = exact_copy(reals[i].data, reals[i].len);
        const uint8_t *other = reals[(i + 1) % nreal].point;
        /* Every byte of the first report of each source and layout; the other GPUs of a bundle share it. */
        const char *bracket = strchr(reals[i].name, '[');
        int first = bracket == NULL || strcmp(bracket, "[0]") == 0 || (i > 0 && reals[i].len != reals[i - 1].len);
        size_t stride = first ? 1 : 11;
        test_report(reals[i].name, exact, reals[i].len, reals[i].point, other, reals[i].genuine, stride,
                    genuine ? iters / 2 / genuine : 0);
        free(exact);
    }
    for (int i = 0; i < nreal; i++)
        free(reals[i].data);

    test_synthetic(iters / 2);
    printf("test_spdm: %d real reports (%d genuine); %ld passed, %ld failed\n", nreal, genuine, passed, failed);
    return failed != 0;
}
