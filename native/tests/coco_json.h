/*
 * A CoCo guest's SNP attestation message, written from a binary report the way
 * kbs/evidence/snp/coco.py's report_to_coco and the guest write it, with at most one edit:
 * shared by native/tests/test_snp_coco.c and fuzz/libfuzzer/fuzz_snp_coco.c, which hold
 * kbs_snp_coco_decode to what each edit must give.
 *
 * Members are numbered in the order they are written (from 0).  An edit of member n replaces
 * its value with a token, deletes it, writes it twice or puts an unknown member before it; the
 * builder notes whether the scanner type-checks the member (`typed`: a bad token must make it
 * bail), reads it (`read`: so must a duplicate), what its absence means (`absent`) and whether it
 * sits in an object that refuses unknown members (`strict`), so coco_edit_must_bail can say what
 * the edit must give.
 */
#ifndef KBS_TEST_COCO_JSON_H
#define KBS_TEST_COCO_JSON_H
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kbs_native.h"

enum coco_edit_action { EDIT_NONE, EDIT_REPLACE, EDIT_DELETE, EDIT_DUPLICATE, EDIT_UNKNOWN };
/* What a member's absence means: the Python path refuses it, reads the same message, or another one. */
enum coco_absent { ABSENT_OTHER = 0, ABSENT_REFUSED = 1, ABSENT_SAME = 2 };

/* Tokens no member the scanner reads may take (the Python path refuses each of them there). */
static const char *const COCO_BAD_TOKENS[] = {
    "true", "false", "\"x\"", "1.5", "-1", "1e2", "01", "18446744073709551616", "{}", "{\"OTHER\":\"x\"}",
    "[true]", "\"\\u0041\"", "-0", "[1]", "[0,0]",
};
enum { COCO_BAD_TOKEN_COUNT = sizeof COCO_BAD_TOKENS / sizeof COCO_BAD_TOKENS[0] };

/* JSON the scanner declines anywhere, even in a member nobody reads (`poison` puts it there): what
 * orjson refuses, and what it accepts but the scanner leaves to it (surrogates, non-ASCII, floats). */
static const char *const COCO_POISON[] = {
    "\"\\ud800\"", "\"\\udc00\"", "\"\\uDBFF\\uDFFF\"", "\"\\x\"", "\"\\u12\"", "\"\x01\"", "\"\xc3\xa9\"",
    "\"\x80\"", "-1", "1.0", "1e5", "1E5", "01", "00", "18446744073709551616", "[1,]", "[,1]", "{\"a\"}",
    "{\"a\":1,}", "{1:2}", "tru", "nul", "falsy", "'a'", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "\"abc", "[", "{", "",
};
enum { COCO_POISON_COUNT = sizeof COCO_POISON / sizeof COCO_POISON[0] };

struct coco_message {
    /* input */
    const uint8_t *report;       /* KBS_SNP_REPORT_SIZE bytes, normalised by coco_normalise */
    int turin;                   /* TCB layout (version 3+: must agree with cpuid_fam_id) */
    size_t ncerts;
    uint8_t cert_type[KBS_SNP_COCO_MAX_CERTS + 1]; /* one more than the scanner takes */
    const uint8_t *cert_der[KBS_SNP_COCO_MAX_CERTS + 1];
    size_t cert_len[KBS_SNP_COCO_MAX_CERTS + 1];
    unsigned style;              /* bits: 1 spaces, 2 omit optional nulls, 4 reverse report members,
                                    8 init-data, 16 additional evidence, 32 an ignored top member */
    int edit_at;                 /* member to edit, -1 for none */
    enum coco_edit_action action;
    const char *token;           /* for EDIT_REPLACE */
    const char *poison;          /* a value for an ignored top member that makes the scanner bail */
    const char *find;            /* a member name to look for (NULL: none) */
    int found_at;                /* the number of its first occurrence, -1 if not written */
    /* output */
    char *text;
    size_t len, cap;
    int members;                 /* written so far: the count once built */
    int edited_typed, edited_read, edited_absent, edited_strict, edit_applied;
    size_t runtime_offset, runtime_length, init_offset, init_length, additional_offset, additional_length;
    /* the writer's state */
    int depth;
    int first[16];
    int strict[16];
};

static void cj_put(struct coco_message *m, const char *s, size_t n)
{
    if (m->len + n + 1 > m->cap) {
        size_t cap = (m->len + n + 1) * 2;
        char *p = realloc(m->text, cap);
        if (p == NULL)
            abort();
        m->text = p;
        m->cap = cap;
    }
    memcpy(m->text + m->len, s, n);
    m->len += n;
    m->text[m->len] = 0;
}

__attribute__((format(printf, 2, 3))) static void cj_printf(struct coco_message *m, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        abort();
    cj_put(m, tmp, (size_t)n);
}

static void cj_space(struct coco_message *m)
{
    if (m->style & 1)
        cj_put(m, " \n\t ", 1 + m->len % 4);
}

static void cj_open(struct coco_message *m, int strict)
{
    cj_put(m, "{", 1);
    m->depth++;
    m->first[m->depth] = 1;
    m->strict[m->depth] = strict;
}

static void cj_close(struct coco_message *m)
{
    cj_space(m);
    cj_put(m, "}", 1);
    m->depth--;
}

static void cj_name(struct coco_message *m, const char *name)
{
    if (!m->first[m->depth])
        cj_put(m, ",", 1);
    m->first[m->depth] = 0;
    cj_space(m);
    cj_printf(m, "\"%s\"", name);
    cj_space(m);
    cj_put(m, ":", 1);
    cj_space(m);
}

/* Start member `name`: 1 when the caller writes its value and calls cj_end. */
struct cj_member {
    int edit;
    size_t value_start;
    const char *name;
};

static int cj_begin(struct coco_message *m, struct cj_member *mb, const char *name, int typed, int read,
                    enum coco_absent absent)
{
    int n = m->members++;
    if (m->find != NULL && m->found_at < 0 && strcmp(m->find, name) == 0)
        m->found_at = n;
    mb->edit = n == m->edit_at ? (int)m->action : EDIT_NONE;
    mb->name = name;
    if (mb->edit != EDIT_NONE) {
        m->edited_typed = typed;
        m->edited_read = read;
        m->edited_absent = absent;
        m->edited_strict = m->strict[m->depth];
        m->edit_applied = 1;
    }
    if (mb->edit == EDIT_DELETE)
        return 0;
    if (mb->edit == EDIT_UNKNOWN) {
        cj_name(m, "zz_unknown");
        cj_put(m, "0", 1);
    }
    cj_name(m, name);
    if (mb->edit == EDIT_REPLACE) {
        cj_put(m, m->token, strlen(m->token));
        return 0;
    }
    mb->value_start = m->len;
    return 1;
}

static void cj_end(struct coco_message *m, struct cj_member *mb)
{
    if (mb->edit != EDIT_DUPLICATE)
        return;
    size_t start = mb->value_start, n = m->len - start;
    char *copy = malloc(n + 1);
    if (copy == NULL)
        abort();
    memcpy(copy, m->text + start, n);
    cj_name(m, mb->name);
    cj_put(m, copy, n);
    free(copy);
}

static void cj_bytes(struct coco_message *m, const uint8_t *p, size_t n)
{
    cj_put(m, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            cj_put(m, ",", 1);
        cj_printf(m, "%u", p[i]);
    }
    cj_put(m, "]", 1);
}

static uint64_t cj_le(const uint8_t *p, unsigned size)
{
    uint64_t v = 0;
    for (unsigned i = size; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

/* A scalar member read by the scanner, required unless `optional`: its value is `text`. */
static void cj_scalar(struct coco_message *m, const char *name, int optional, const char *text)
{
    struct cj_member mb;
    int null = strcmp(text, "null") == 0;
    if (optional && null && (m->style & 2))
        return; /* serde's Option may be absent */
    if (cj_begin(m, &mb, name, 1, 1, !optional ? ABSENT_REFUSED : null ? ABSENT_SAME : ABSENT_OTHER)) {
        cj_put(m, text, strlen(text));
        cj_end(m, &mb);
    }
}

static void cj_uint(struct coco_message *m, const char *name, uint64_t v)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    cj_scalar(m, name, 0, tmp);
}

static void cj_byte_member(struct coco_message *m, const char *name, const uint8_t *p, size_t n)
{
    struct cj_member mb;
    if (cj_begin(m, &mb, name, 1, 1, ABSENT_REFUSED)) {
        cj_bytes(m, p, n);
        cj_end(m, &mb);
    }
}

static void cj_tcb(struct coco_message *m, const char *name, const uint8_t *t)
{
    struct cj_member mb;
    char tmp[8];
    if (!cj_begin(m, &mb, name, 1, 1, ABSENT_REFUSED))
        return;
    cj_open(m, 1);
    if (m->turin) {
        snprintf(tmp, sizeof tmp, "%u", t[0]);
        cj_scalar(m, "fmc", 0, tmp); /* required in the Turin layout */
    } else {
        cj_scalar(m, "fmc", 1, "null");
    }
    cj_uint(m, "bootloader", m->turin ? t[1] : t[0]);
    cj_uint(m, "tee", m->turin ? t[2] : t[1]);
    cj_uint(m, "snp", m->turin ? t[3] : t[6]);
    cj_uint(m, "microcode", t[7]);
    cj_close(m);
    cj_end(m, &mb);
}

static void cj_firmware(struct coco_message *m, const char *name, const uint8_t *f)
{
    struct cj_member mb;
    if (!cj_begin(m, &mb, name, 1, 1, ABSENT_REFUSED))
        return;
    cj_open(m, 1);
    cj_uint(m, "major", f[2]);
    cj_uint(m, "minor", f[1]);
    cj_uint(m, "build", f[0]);
    cj_close(m);
    cj_end(m, &mb);
}

static void cj_report_member(struct coco_message *m, int which)
{
    const uint8_t *r = m->report;
    unsigned version = (unsigned)cj_le(r, 4);
    char tmp[32];
    switch (which) {
    case 0: cj_uint(m, "version", version); break;
    case 1: cj_uint(m, "guest_svn", cj_le(r + 0x04, 4)); break;
    case 2: cj_uint(m, "policy", cj_le(r + 0x08, 8)); break;
    case 3: cj_byte_member(m, "family_id", r + 0x10, 16); break;
    case 4: cj_byte_member(m, "image_id", r + 0x20, 16); break;
    case 5: cj_uint(m, "vmpl", cj_le(r + 0x30, 4)); break;
    case 6: cj_uint(m, "sig_algo", cj_le(r + 0x34, 4)); break;
    case 7: cj_tcb(m, "current_tcb", r + 0x38); break;
    case 8: cj_uint(m, "plat_info", cj_le(r + 0x40, 8)); break;
    case 9: cj_uint(m, "key_info", cj_le(r + 0x48, 4)); break;
    case 10: cj_byte_member(m, "report_data", r + 0x50, 64); break;
    case 11: cj_byte_member(m, "measurement", r + 0x90, 48); break;
    case 12: cj_byte_member(m, "host_data", r + 0xC0, 32); break;
    case 13: cj_byte_member(m, "id_key_digest", r + 0xE0, 48); break;
    case 14: cj_byte_member(m, "author_key_digest", r + 0x110, 48); break;
    case 15: cj_byte_member(m, "report_id", r + 0x140, 32); break;
    case 16: cj_byte_member(m, "report_id_ma", r + 0x160, 32); break;
    case 17: cj_tcb(m, "reported_tcb", r + 0x180); break;
    case 18:
    case 19:
    case 20: {
        static const char *const names[3] = {"cpuid_fam_id", "cpuid_mod_id", "cpuid_step"};
        if (version >= 3) {
            snprintf(tmp, sizeof tmp, "%u", r[0x188 + which - 18]);
            cj_scalar(m, names[which - 18], 0, tmp);
        } else {
            cj_scalar(m, names[which - 18], 1, "null");
        }
        break;
    }
    case 21: cj_byte_member(m, "chip_id", r + 0x1A0, 64); break;
    case 22: cj_tcb(m, "committed_tcb", r + 0x1E0); break;
    case 23: cj_firmware(m, "current", r + 0x1E8); break;
    case 24: cj_firmware(m, "committed", r + 0x1EC); break;
    case 25: cj_tcb(m, "launch_tcb", r + 0x1F0); break;
    case 26:
    case 27: {
        const char *name = which == 26 ? "launch_mit_vector" : "current_mit_vector";
        if (version >= 5)
            snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)cj_le(r + (which == 26 ? 0x1F8 : 0x200), 8));
        else
            snprintf(tmp, sizeof tmp, "null");
        cj_scalar(m, name, 1, tmp); /* absent is zero from version 5, and null before */
        break;
    }
    default: {
        struct cj_member mb;
        if (!cj_begin(m, &mb, "signature", 1, 1, ABSENT_REFUSED))
            break;
        cj_open(m, 1);
        cj_byte_member(m, "r", r + 0x2A0, 72);
        cj_byte_member(m, "s", r + 0x2E8, 72);
        cj_close(m);
        cj_end(m, &mb);
        break;
    }
    }
}

static const char *const COCO_CERT_NAMES[6] = {"Empty", "ARK", "ASK", "VCEK", "VLEK", "CRL"};

/* A span member (read, but its value is the Python path's to check): records where the value is.  The
 * scanner wants runtime-data; the others may be absent. */
static void cj_span(struct coco_message *m, const char *name, const char *value, size_t *offset, size_t *length)
{
    struct cj_member mb;
    if (cj_begin(m, &mb, name, 0, 1, strcmp(name, "runtime-data") == 0 ? ABSENT_REFUSED : ABSENT_SAME)) {
        *offset = m->len;
        cj_put(m, value, strlen(value));
        *length = m->len - *offset;
        cj_end(m, &mb);
    }
}

/* Write the whole message into m->text (m->len bytes). */
static void coco_build(struct coco_message *m)
{
    struct cj_member top, pe, ar, cc;
    m->len = 0;
    m->members = 0;
    m->found_at = -1;
    m->depth = 0;
    m->edit_applied = m->edited_typed = m->edited_read = m->edited_absent = m->edited_strict = 0;
    m->runtime_offset = m->runtime_length = m->init_offset = m->init_length = 0;
    m->additional_offset = m->additional_length = 0;
    cj_put(m, "", 0);
    cj_space(m);
    cj_open(m, 0);
    if ((m->style & 32) || m->poison) {
        struct cj_member x;
        static const char ignored[] = "[1,{\"a\":null,\"b\":\"\\n\\u00e9\"},[[]],true,\"\\\"\"]";
        if (cj_begin(m, &x, "ignored", 0, 0, ABSENT_SAME)) {
            const char *value = m->poison ? m->poison : ignored;
            cj_put(m, value, strlen(value));
            cj_end(m, &x);
        }
    }
    if (m->style & 8)
        cj_span(m, "init-data", "{\"format\":\"toml\",\"body\":\"a = \\\"b\\\"\\n\"}", &m->init_offset,
                &m->init_length);
    cj_span(m, "runtime-data",
            "{\"nonce\":\"bm9uY2U\",\"tee-pubkey\":{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AQ\"},"
            "\"nonce\":\"twice\"}",
            &m->runtime_offset, &m->runtime_length);
    if (cj_begin(m, &top, "tee-evidence", 1, 1, ABSENT_REFUSED)) {
        cj_open(m, 0);
        if (cj_begin(m, &pe, "primary_evidence", 1, 1, ABSENT_REFUSED)) {
            cj_open(m, 1);
            if (cj_begin(m, &ar, "attestation_report", 1, 1, ABSENT_REFUSED)) {
                cj_open(m, 1);
                for (int i = 0; i < 29; i++)
                    cj_report_member(m, (m->style & 4) ? 28 - i : i);
                cj_close(m);
                cj_end(m, &ar);
            }
            if (m->ncerts || !(m->style & 2)) {
                if (cj_begin(m, &cc, "cert_chain", 1, 1, m->ncerts ? ABSENT_OTHER : ABSENT_SAME)) {
                    if (m->ncerts == 0) {
                        cj_put(m, "null", 4);
                    } else {
                        cj_put(m, "[", 1);
                        for (size_t i = 0; i < m->ncerts; i++) {
                            struct cj_member t, d;
                            if (i)
                                cj_put(m, ",", 1);
                            cj_open(m, 1);
                            if (cj_begin(m, &t, "cert_type", 1, 1, ABSENT_REFUSED)) {
                                cj_printf(m, "\"%s\"", COCO_CERT_NAMES[m->cert_type[i]]);
                                cj_end(m, &t);
                            }
                            if (cj_begin(m, &d, "data", 2, 1, ABSENT_REFUSED)) {
                                cj_bytes(m, m->cert_der[i], m->cert_len[i]);
                                cj_end(m, &d);
                            }
                            cj_close(m);
                        }
                        cj_put(m, "]", 1);
                    }
                    cj_end(m, &cc);
                }
            }
            cj_close(m);
            cj_end(m, &pe);
        }
        cj_span(m, "additional_evidence", (m->style & 16) ? "\"{\\\"nvgpu\\\":[{\\\"x\\\":1}]}\"" : "\"\"",
                &m->additional_offset, &m->additional_length);
        cj_close(m);
        cj_end(m, &top);
    }
    cj_close(m);
    cj_space(m);
}

/* What coco_build's edit must give: 1 when the scanner must bail, 0 when it must decode the message
 * as built (an edit the Python path ignores, or none), -1 when it depends (not checked). */
static int coco_edit_must_bail(const struct coco_message *m)
{
    if (m->poison && m->edit_applied && m->edit_at == 0) /* the poisoned member itself, written first */
        return m->action == EDIT_DELETE ? 0 : m->action == EDIT_REPLACE ? -1 : 1;
    if (m->poison)
        return 1;
    if (!m->edit_applied)
        return 0;
    switch (m->action) {
    case EDIT_REPLACE: /* a span's value: the scanner only checks it is JSON it takes anywhere; a
                          * certificate's data may be any array of bytes */
        return m->edited_typed == 1 ? 1 : -1;
    case EDIT_DUPLICATE:
        return m->edited_read ? 1 : 0;
    case EDIT_DELETE:
        return m->edited_absent == ABSENT_REFUSED ? 1 : m->edited_absent == ABSENT_SAME ? 0 : -1;
    case EDIT_UNKNOWN:
        return m->edited_strict ? 1 : 0;
    default:
        return 0;
    }
}

/* A report the builder writes exactly: bytes from `seed`, then made what the JSON form can carry
 * (version 2..5, reserved bytes zero, the TCBs' unused bytes zero for the layout). */
static void coco_normalise(uint8_t r[KBS_SNP_REPORT_SIZE], int *turin)
{
    unsigned version = 2 + r[0] % 4;
    memset(r, 0, 4);
    r[0] = (uint8_t)version;
    memset(r + 0x4C, 0, 4);
    if (version >= 3) {
        /* Milan 0x19, Genoa 0x19, Turin 0x1A, later families above */
        r[0x188] = (uint8_t)(*turin ? 0x1A + r[0x188] % 8 : r[0x188] % 0x1A);
        *turin = r[0x188] >= 0x1A;
    } else {
        memset(r + 0x188, 0, 3);
    }
    memset(r + 0x18B, 0, 0x1A0 - 0x18B);
    r[0x1EB] = r[0x1EF] = 0;
    if (version < 5)
        memset(r + 0x1F8, 0, 16);
    memset(r + 0x208, 0, 0x2A0 - 0x208);
    memset(r + 0x330, 0, KBS_SNP_REPORT_SIZE - 0x330);
    static const unsigned tcbs[4] = {0x38, 0x180, 0x1E0, 0x1F0};
    for (int i = 0; i < 4; i++) {
        uint8_t *t = r + tcbs[i];
        if (*turin)
            memset(t + 4, 0, 3);
        else
            memset(t + 2, 0, 4);
    }
}

#endif
