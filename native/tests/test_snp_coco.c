/*
 * Tests of kbs_snp_coco_decode, the one-pass scanner of a CoCo guest's SNP attestation message,
 * built and run under AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).
 *
 * Messages are written from normalised reports by coco_json.h (as report_to_coco writes them),
 * every version and TCB layout, with and without certificates, whitespace and optional members;
 * the scanner must give back the report, the certificates and the spans exactly.  Then every
 * member of one message per version gets every edit (bad tokens, deletion, duplication, an unknown
 * member before it) and each must give what coco_edit_must_bail says; every truncation and every
 * byte set to 0x80 or NUL must bail; and the limits (depth, values, certificates, certificate size,
 * integer ranges, versions, layouts) are tried at and past their edge.  Every input lives in a
 * heap block of exactly its length.  $KBS_VECTORS' trustee e2e evidence, if present, must decode.
 */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "coco_json.h"
#include "kbs_native.h"
#include "vectors.h"

/* Decode text[0, len) from an exact block, with a certificate buffer of exactly len bytes. */
static int decode(const char *text, size_t len, struct kbs_snp_coco_message *out, uint8_t *certs_copy)
{
    uint8_t *body = exact_copy((const uint8_t *)text, len);
    uint8_t *certs = malloc(len ? len : 1);
    int rc = kbs_snp_coco_decode(body, len, certs, len, out);
    if (rc == KBS_OK && certs_copy)
        memcpy(certs_copy, certs, len);
    free(certs);
    free(body);
    return rc;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)cj_le(p, 4);
}

static uint64_t get_le64(const uint8_t *p)
{
    return cj_le(p, 8);
}

static uint8_t cert_store[KBS_SNP_COCO_MAX_CERTS + 1][KBS_SNP_COCO_MAX_CERT_SIZE + 1];

static void set_certs(struct coco_message *m, size_t n, size_t size)
{
    m->ncerts = n;
    for (size_t i = 0; i < n; i++) {
        m->cert_type[i] = (uint8_t)(i % 6);
        m->cert_der[i] = cert_store[i];
        m->cert_len[i] = size ? size : (size_t)(rnd() % 700);
    }
}

/* The message as built decodes to its report, certificates and spans. */
static void check_exact(struct coco_message *m, const char *what)
{
    struct kbs_snp_coco_message out;
    uint8_t *certs = malloc(m->len ? m->len : 1);
    int rc = decode(m->text, m->len, &out, certs);
    CHECK(rc == KBS_OK, "%s: status %d, want OK", what, rc);
    if (rc == KBS_OK) {
        CHECK(memcmp(out.report, m->report, KBS_SNP_REPORT_SIZE) == 0, "%s: report differs", what);
        CHECK(out.cert_count == m->ncerts, "%s: %zu certificates, want %zu", what, out.cert_count, m->ncerts);
        for (size_t i = 0; i < out.cert_count && i < m->ncerts; i++) {
            const struct kbs_snp_coco_cert *c = &out.certs[i];
            CHECK(c->cert_type == m->cert_type[i] && c->length == m->cert_len[i] && c->offset <= m->len &&
                      c->length <= m->len - c->offset && memcmp(certs + c->offset, m->cert_der[i], c->length) == 0,
                  "%s: certificate %zu differs", what, i);
        }
        CHECK(out.runtime_data_offset == m->runtime_offset && out.runtime_data_length == m->runtime_length,
              "%s: runtime-data span %zu+%zu, want %zu+%zu", what, out.runtime_data_offset, out.runtime_data_length,
              m->runtime_offset, m->runtime_length);
        CHECK(out.init_data_offset == m->init_offset && out.init_data_length == m->init_length,
              "%s: init-data span", what);
        CHECK(out.additional_evidence_offset == m->additional_offset &&
                  out.additional_evidence_length == m->additional_length,
              "%s: additional_evidence span", what);
    }
    free(certs);
}

static void check_bails(const char *text, size_t len, const char *what)
{
    struct kbs_snp_coco_message out;
    int rc = decode(text, len, &out, NULL);
    CHECK(rc == KBS_SNP_COCO_NOT_FAST, "%s: status %d, want KBS_SNP_COCO_NOT_FAST", what, rc);
}

static void fresh_report(uint8_t report[KBS_SNP_REPORT_SIZE], unsigned version, int *turin)
{
    rnd_bytes(report, KBS_SNP_REPORT_SIZE);
    report[0] = (uint8_t)(version - 2);
    coco_normalise(report, turin);
}

/* A message around a fresh report of `version` (Turin layout when `layout` and the version allows it). */
static struct coco_message message_for(uint8_t *report, unsigned version, int layout, unsigned style)
{
    struct coco_message m = {0};
    int turin = layout;
    fresh_report(report, version, &turin);
    m.report = report;
    m.turin = turin;
    m.edit_at = -1;
    m.style = style;
    return m;
}

static void test_round_trips(void)
{
    uint8_t report[KBS_SNP_REPORT_SIZE];
    char what[96];
    for (unsigned version = 2; version <= 5; version++) {
        for (int layout = 0; layout < 2; layout++) {
            for (unsigned style = 0; style < 64; style++) {
                struct coco_message m = message_for(report, version, layout, style);
                set_certs(&m, style % 4 == 3 ? 3 : style % 4, 0);
                coco_build(&m);
                snprintf(what, sizeof what, "v%u %s style %u", version, m.turin ? "Turin" : "Milan", style);
                check_exact(&m, what);
                free(m.text);
            }
        }
    }
}

/* Every edit of every member of one message per version and layout. */
static void test_edits(void)
{
    uint8_t report[KBS_SNP_REPORT_SIZE];
    char what[160];
    long bailed = 0, decoded = 0;
    for (unsigned version = 2; version <= 5; version++) {
        for (int layout = 0; layout < 2; layout++) {
            /* some optional parts in, some out */
            struct coco_message m = message_for(report, version, layout, (version * 8u + (unsigned)layout * 3u) & 63u);
            set_certs(&m, 2, 40);
            coco_build(&m);
            int members = m.members;
            for (int at = 0; at < members; at++) {
                for (int action = EDIT_REPLACE; action <= EDIT_UNKNOWN; action++) {
                    int tokens = action == EDIT_REPLACE ? COCO_BAD_TOKEN_COUNT : 1;
                    for (int k = 0; k < tokens; k++) {
                        m.edit_at = at;
                        m.action = (enum coco_edit_action)action;
                        m.token = COCO_BAD_TOKENS[k];
                        coco_build(&m);
                        int must = coco_edit_must_bail(&m);
                        snprintf(what, sizeof what, "v%u layout %d member %d action %d token %s", version, layout,
                                 at, action, action == EDIT_REPLACE ? m.token : "-");
                        if (must == 1) {
                            check_bails(m.text, m.len, what);
                            bailed++;
                        } else if (must == 0) {
                            check_exact(&m, what);
                            decoded++;
                        } else {
                            struct kbs_snp_coco_message out;
                            int rc = decode(m.text, m.len, &out, NULL);
                            CHECK(rc == KBS_OK || rc == KBS_SNP_COCO_NOT_FAST, "%s: status %d", what, rc);
                        }
                    }
                }
            }
            free(m.text);
        }
    }
    CHECK(bailed > 1000 && decoded > 50, "edits: %ld bailed, %ld decoded", bailed, decoded);
}

/* JSON the scanner declines anywhere, in a member no one reads. */
static void test_poison(void)
{
    uint8_t report[KBS_SNP_REPORT_SIZE];
    char what[96];
    for (int i = 0; i < COCO_POISON_COUNT; i++) {
        struct coco_message m = message_for(report, 3, 0, 0);
        m.poison = COCO_POISON[i];
        coco_build(&m);
        snprintf(what, sizeof what, "poison %d (%s)", i, COCO_POISON[i]);
        check_bails(m.text, m.len, what);
        m.edit_at = 0; /* the poisoned member deleted: decodes */
        m.action = EDIT_DELETE;
        coco_build(&m);
        check_exact(&m, what);
        free(m.text);
    }
}

/* Every truncation bails (but where only whitespace was cut), every byte set to 0x80 or NUL bails. */
static void test_truncations_and_bytes(void)
{
    uint8_t report[KBS_SNP_REPORT_SIZE];
    for (unsigned style = 0; style < 2; style++) {
        struct coco_message m = message_for(report, 5, 0, 8 | 16 | 32 | style);
        set_certs(&m, 3, 100);
        coco_build(&m);
        for (size_t n = 0; n < m.len; n++) {
            struct kbs_snp_coco_message out;
            int rc = decode(m.text, n, &out, NULL);
            int only_ws = 1;
            for (size_t i = n; i < m.len; i++)
                only_ws &= m.text[i] == ' ' || m.text[i] == '\n' || m.text[i] == '\t';
            CHECK(rc == (only_ws && n > 0 ? KBS_OK : KBS_SNP_COCO_NOT_FAST), "cut at %zu of %zu: %d", n, m.len, rc);
        }
        char *copy = malloc(m.len);
        for (size_t i = 0; i < m.len; i++) {
            for (int v = 0; v < 2; v++) {
                memcpy(copy, m.text, m.len);
                copy[i] = v ? (char)0x80 : 0;
                struct kbs_snp_coco_message out;
                int rc = decode(copy, m.len, &out, NULL);
                CHECK(rc == KBS_SNP_COCO_NOT_FAST, "byte %zu set to %d: %d", i, v ? 0x80 : 0, rc);
            }
        }
        free(copy);
        free(m.text);
    }
}

/* A message with member `name`'s value replaced by token: bails, or decodes (report checked by caller). */
static int with_token(const uint8_t *report, int turin, unsigned style, const char *name, const char *token,
                      struct kbs_snp_coco_message *out)
{
    struct coco_message m = {0};
    m.report = report;
    m.turin = turin;
    m.style = style;
    m.edit_at = -1;
    m.find = name;
    coco_build(&m);
    CHECK(m.found_at >= 0, "no member %s", name);
    m.edit_at = m.found_at;
    m.action = EDIT_REPLACE;
    m.token = token;
    coco_build(&m);
    int rc = decode(m.text, m.len, out, NULL);
    free(m.text);
    return rc;
}

static void test_fields(void)
{
    uint8_t report[KBS_SNP_REPORT_SIZE];
    struct kbs_snp_coco_message out;
    int milan = 0, turin = 1;
    const int NF = KBS_SNP_COCO_NOT_FAST;

    fresh_report(report, 3, &milan);
    CHECK(with_token(report, 0, 0, "vmpl", "4294967295", &out) == KBS_OK && get_le32(out.report + 0x30) == 0xFFFFFFFFu,
          "vmpl 2^32-1");
    CHECK(with_token(report, 0, 0, "vmpl", "4294967296", &out) == NF, "vmpl 2^32");
    CHECK(with_token(report, 0, 0, "policy", "18446744073709551615", &out) == KBS_OK &&
              get_le64(out.report + 8) == UINT64_MAX, "policy 2^64-1");
    CHECK(with_token(report, 0, 0, "policy", "00", &out) == NF, "leading zero");
    CHECK(with_token(report, 0, 0, "policy", "0", &out) == KBS_OK && get_le64(out.report + 8) == 0, "zero");
    CHECK(with_token(report, 0, 0, "bootloader", "255", &out) == KBS_OK && out.report[0x38] == 255, "bl 255");
    CHECK(with_token(report, 0, 0, "bootloader", "256", &out) == NF, "bl 256");
    CHECK(with_token(report, 0, 0, "bootloader", "null", &out) == NF, "bl null");
    CHECK(with_token(report, 0, 0, "major", "256", &out) == NF, "firmware major 256");
    CHECK(with_token(report, 0, 0, "version", "1", &out) == NF, "version 1");
    CHECK(with_token(report, 0, 0, "version", "6", &out) == NF, "version 6");
    CHECK(with_token(report, 0, 0, "cpuid_step", "null", &out) == NF, "v3 cpuid null");
    CHECK(with_token(report, 0, 0, "launch_mit_vector", "1", &out) == NF, "v3 mitigation vector set");
    CHECK(with_token(report, 0, 0, "fmc", "1", &out) == NF, "Milan TCB with fmc");
    CHECK(with_token(report, 0, 0, "cpuid_fam_id", "26", &out) == NF, "Turin family, Milan TCBs");
    CHECK(with_token(report, 0, 0, "family_id", "[1,2]", &out) == NF, "short family_id");
    CHECK(with_token(report, 0, 0, "family_id", "[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]", &out) == NF, "long family_id");
    CHECK(with_token(report, 0, 0, "family_id", "[9 ,8, 7,6,5,4,3,2,1,0,1,2,3,4,5,255 ]", &out) == KBS_OK &&
              out.report[0x10] == 9 && out.report[0x1F] == 255, "family_id with spaces");
    CHECK(with_token(report, 0, 0, "family_id", "[9,8,7,6,5,4,3,2,1,0,1,2,3,4,5,25.0]", &out) == NF, "float");
    CHECK(with_token(report, 0, 0, "family_id", "[9,8,7,6,5,4,3,2,1,0,1,2,3,4,5,01]", &out) == NF, "leading zero");
    CHECK(with_token(report, 0, 0, "family_id", "[9,8,7,6,5,4,3,2,1,0,1,2,3,4,5,-1]", &out) == NF, "negative");
    CHECK(with_token(report, 0, 0, "family_id", "[9,8,7,6,5,4,3,2,1,0,1,2,3,4,5,1e1]", &out) == NF, "exponent");
    CHECK(with_token(report, 0, 0, "family_id", "[9,8,7,6,5,4,3,2,1,0,1,2,3,4,5,1,]", &out) == NF, "trailing comma");
    CHECK(with_token(report, 0, 0, "family_id", "[9,8,7,6,5,4,3,2,1,0,1,2,3,4,5 6]", &out) == NF, "no comma");
    CHECK(with_token(report, 0, 0, "r", "[]", &out) == NF, "empty r");
    CHECK(with_token(report, 0, 0, "cert_chain", "[]", &out) == KBS_OK && out.cert_count == 0, "empty chain");
    CHECK(with_token(report, 0, 0, "cert_chain", "[{\"cert_type\":\"VLEK\",\"data\":[]}]", &out) == KBS_OK &&
              out.cert_count == 1 && out.certs[0].cert_type == KBS_SNP_COCO_CERT_VLEK && out.certs[0].length == 0,
          "an empty certificate");
    CHECK(with_token(report, 0, 0, "cert_chain", "[{\"cert_type\":\"vcek\",\"data\":[]}]", &out) == NF, "vcek");
    CHECK(with_token(report, 0, 0, "cert_chain", "[{\"cert_type\":{\"OTHER\":\"63da758d-e664-4564-adc5-"
                                                  "f4b93be8accd\"},\"data\":[]}]", &out) == NF, "OTHER");
    CHECK(with_token(report, 0, 0, "cert_chain", "[{\"cert_type\":\"VCEK\",\"data\":[],\"cert_type\":\"ARK\"}]",
                     &out) == NF, "duplicate cert_type");

    fresh_report(report, 4, &milan);
    CHECK(with_token(report, 0, 0, "launch_mit_vector", "0", &out) == NF, "v4 mitigation vector 0");
    CHECK(with_token(report, 0, 0, "current_mit_vector", "null", &out) == KBS_OK, "v4 mitigation vector null");

    fresh_report(report, 2, &turin); /* v2: the layout follows fmc */
    CHECK(with_token(report, 1, 0, "cpuid_fam_id", "0", &out) == NF, "v2 cpuid set");
    CHECK(with_token(report, 1, 0, "fmc", "null", &out) == NF, "v2 Turin with one fmc null");
    fresh_report(report, 2, &milan);
    CHECK(with_token(report, 0, 0, "fmc", "3", &out) == NF, "v2 Milan current_tcb with fmc");

    turin = 1;
    fresh_report(report, 5, &turin);
    CHECK(with_token(report, 1, 0, "current_mit_vector", "null", &out) == KBS_OK &&
              get_le64(out.report + 0x200) == 0, "v5 null mitigation vector is zero");
    CHECK(with_token(report, 1, 0, "current_mit_vector", "18446744073709551615", &out) == KBS_OK &&
              get_le64(out.report + 0x200) == UINT64_MAX, "v5 mitigation vector 2^64-1");
    CHECK(with_token(report, 1, 0, "fmc", "null", &out) == NF, "Turin with fmc null");

    /* Names are never escaped in the objects the scanner reads; strings elsewhere may be. */
    CHECK(with_token(report, 1, 0, "guest_svn", "1,\"vers\\u0069on\":5", &out) == NF, "escaped duplicate name");
    CHECK(with_token(report, 1, 0, "runtime-data", "{\"nonce\":\"\\u00e9\\ud800\"}", &out) == NF, "surrogate");
    CHECK(with_token(report, 1, 0, "runtime-data", "{\"nonce\":\"\\u00e9\\t\\/\"}", &out) == KBS_OK, "escapes");
    CHECK(with_token(report, 1, 0, "runtime-data", "{\"nonce\":\"\\x\"}", &out) == NF, "bad escape");
    CHECK(with_token(report, 1, 0, "runtime-data", "{\"nonce\":\"\x7f\"}", &out) == KBS_OK, "DEL");
    CHECK(with_token(report, 1, 0, "runtime-data", "{\"nonce\":\"\x1f\"}", &out) == NF, "control character");
    CHECK(with_token(report, 1, 0, "runtime-data", "[-1]", &out) == NF, "negative number anywhere");
    CHECK(with_token(report, 1, 0, "runtime-data", "[1e5]", &out) == NF, "exponent anywhere");
    CHECK(with_token(report, 1, 0, "runtime-data", "[tru]", &out) == NF, "bad literal");
    CHECK(with_token(report, 1, 0, "runtime-data", "[1,]", &out) == NF, "trailing comma");
    CHECK(with_token(report, 1, 0, "runtime-data", "{\"a\":1,}", &out) == NF, "trailing comma in object");
    CHECK(with_token(report, 1, 0, "runtime-data", "{\"a\" 1}", &out) == NF, "no colon");
    CHECK(with_token(report, 1, 0, "runtime-data", "true", &out) == KBS_OK, "any value (Python checks it)");
}

/* Depth and value count: check_shape's limits (containers at most 32 deep, 100,000 values). */
static void test_limits(void)
{
    uint8_t report[KBS_SNP_REPORT_SIZE];
    struct kbs_snp_coco_message out;
    int milan = 0;
    fresh_report(report, 3, &milan);
    char nest[2 * 40 + 1];
    for (int depth = 30; depth <= 33; depth++) { /* runtime-data is at level 2: k arrays reach 1 + k */
        int k = depth - 1;
        memset(nest, '[', (size_t)k);
        memset(nest + k, ']', (size_t)k);
        nest[2 * k] = 0;
        int rc = with_token(report, 0, 0, "runtime-data", nest, &out);
        CHECK(rc == (depth <= KBS_SNP_COCO_MAX_DEPTH ? KBS_OK : KBS_SNP_COCO_NOT_FAST), "depth %d: %d", depth, rc);
    }
    size_t n = KBS_SNP_COCO_MAX_NODES;
    char *many = malloc(2 * n + 3);
    many[0] = '[';
    for (size_t i = 0; i < n; i++)
        memcpy(many + 1 + 2 * i, "0,", 2);
    many[2 * n] = ']';
    many[2 * n + 1] = 0;
    CHECK(with_token(report, 0, 0, "runtime-data", many, &out) == KBS_SNP_COCO_NOT_FAST, "too many values");
    many[2 * 1000] = ']';
    many[2 * 1000 + 1] = 0;
    CHECK(with_token(report, 0, 0, "runtime-data", many, &out) == KBS_OK, "1,000 values");
    free(many);

    struct coco_message m = {0};
    m.report = report;
    m.edit_at = -1;
    set_certs(&m, KBS_SNP_COCO_MAX_CERTS, 3);
    coco_build(&m);
    check_exact(&m, "16 certificates");
    m.ncerts = KBS_SNP_COCO_MAX_CERTS + 1;
    m.cert_der[KBS_SNP_COCO_MAX_CERTS] = cert_store[KBS_SNP_COCO_MAX_CERTS];
    m.cert_len[KBS_SNP_COCO_MAX_CERTS] = 1;
    m.cert_type[KBS_SNP_COCO_MAX_CERTS] = 1;
    coco_build(&m);
    check_bails(m.text, m.len, "17 certificates");
    set_certs(&m, 1, KBS_SNP_COCO_MAX_CERT_SIZE);
    coco_build(&m);
    check_exact(&m, "a certificate of the largest size");
    m.cert_len[0]++;
    coco_build(&m);
    check_bails(m.text, m.len, "a certificate one byte larger");

    /* a certificate buffer too small: bails, never writes past it */
    set_certs(&m, 2, 100);
    coco_build(&m);
    uint8_t *body = exact_copy((const uint8_t *)m.text, m.len);
    uint8_t *small = malloc(200);
    CHECK(kbs_snp_coco_decode(body, m.len, small, 150, &out) == KBS_SNP_COCO_NOT_FAST, "small cert buffer");
    CHECK(kbs_snp_coco_decode(body, m.len, small, 200, &out) == KBS_OK, "cert buffer just large enough");
    CHECK(kbs_snp_coco_decode(body, m.len, NULL, 0, &out) == KBS_SNP_COCO_NOT_FAST, "no cert buffer");
    CHECK(kbs_snp_coco_decode(body, m.len, small, 150, NULL) == KBS_ERR_NULL_ARGUMENT, "NULL out");
    CHECK(kbs_snp_coco_decode(NULL, 5, small, 150, &out) == KBS_ERR_NULL_ARGUMENT, "NULL body");
    CHECK(kbs_snp_coco_decode(body, 0, small, 150, &out) == KBS_SNP_COCO_NOT_FAST, "empty body");
    CHECK(kbs_snp_coco_decode(body, m.len, NULL, 5, &out) == KBS_ERR_NULL_ARGUMENT, "NULL cert buffer");
    free(small);
    free(body);
    free(m.text);
}

/* trustee's e2e evidence (sev's own serialisation) inside a message. */
static void test_vector(void)
{
    const char *vectors = getenv("KBS_VECTORS");
    char path[1024];
    snprintf(path, sizeof path, "%s/trustee/evidence/snp/e2e-snp-evidence.json",
             vectors ? vectors : "../shared/vectors");
    char *evidence = read_text(path);
    if (evidence == NULL) {
        fprintf(stderr, "note: %s not found; the real-evidence test is skipped\n", path);
        return;
    }
    const char *head = "{\"runtime-data\":{\"nonce\":\"n\",\"tee-pubkey\":{}},\"tee-evidence\":{\"primary_evidence\":";
    const char *tail = ",\"additional_evidence\":\"\"}}\n";
    size_t len = strlen(head) + strlen(evidence) + strlen(tail);
    char *text = malloc(len + 1);
    snprintf(text, len + 1, "%s%s%s", head, evidence, tail);
    struct kbs_snp_coco_message out;
    struct kbs_snp_report parsed;
    int rc = decode(text, len, &out, NULL);
    CHECK(rc == KBS_OK, "trustee e2e evidence: %d", rc);
    CHECK(kbs_snp_parse(out.report, KBS_SNP_REPORT_SIZE, &parsed) == KBS_OK && parsed.version == 3 &&
              parsed.cpuid_fam_id == 0x19, "the e2e report parses");
    CHECK(out.cert_count == 1 && out.certs[0].cert_type == KBS_SNP_COCO_CERT_VCEK && out.certs[0].length == 1347,
          "the e2e VCEK");
    free(text);
    free(evidence);
}

int main(void)
{
    const char *seed_env = getenv("KBS_NATIVE_SEED");
    rng_state = seed_env ? strtoull(seed_env, NULL, 0) | 1 : 0x5EED5EED5EED5EEDu;
    for (size_t i = 0; i <= KBS_SNP_COCO_MAX_CERTS; i++)
        rnd_bytes(cert_store[i], sizeof cert_store[i]);
    test_round_trips();
    test_edits();
    test_truncations_and_bytes();
    test_poison();
    test_fields();
    test_limits();
    test_vector();
    printf("test_snp_coco: %ld passed, %ld failed\n", passed, failed);
    return failed != 0;
}
