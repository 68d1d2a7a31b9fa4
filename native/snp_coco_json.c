/*
 * A CoCo guest's SEV-SNP attestation message -> the binary report, its certificates and the spans
 * of the members Python reads itself, in one pass over the body (issue 12: orjson, check_shape and
 * report_from_coco cost ~200-250 us of Python per /attest).
 *
 * The Python path (kbs/evidence/composite.py, kbs/evidence/snp/coco.py) stays the reference and
 * the source of every error message.  This scanner accepts only what that path certainly accepts,
 * with the same bytes out, and returns KBS_SNP_COCO_NOT_FAST for anything else:
 *  - JSON: the whole body must be strict JSON of printable ASCII (no byte >= 0x80, no control
 *    character in strings, \u escapes only of non-surrogates), numbers plain non-negative integers
 *    below 2^64 (no sign, fraction, exponent or leading zero), containers at most
 *    KBS_SNP_COCO_MAX_DEPTH deep and at most KBS_SNP_COCO_MAX_NODES values in all (check_shape's
 *    rules, counting duplicate members too, so never less strict);
 *  - the objects it reads (the top level, tee-evidence, primary_evidence, attestation_report, TCBs,
 *    firmware versions, signature, cert_chain entries) have no escaped member names and no member
 *    it reads twice (orjson would keep the last one);
 *  - primary_evidence follows report_from_coco's rules exactly: members, types (no bool for an
 *    integer), ranges, array lengths, version 2..5, the TCB layout (CPUID family from version 3,
 *    else the TCBs' fmc), nullable CPUID (version >= 3) and mitigation vectors (version >= 5, null
 *    written as zero), and cert_type a sev name (OTHER is left to Python).
 * The report's format rules (policy, reserved bytes, ...) are not checked here: the caller runs
 * kbs_snp_parse on the result, as the Python path does.  Recursion is bounded by the depth limit.
 */
#include <string.h>

#include "kbs_native.h"

enum { NO = 0, YES = 1 };

struct scan {
    const uint8_t *p;
    size_t len;
    size_t pos;
    size_t nodes; /* values seen so far, check_shape's count */
};

static void skip_ws(struct scan *s)
{
    while (s->pos < s->len) {
        uint8_t c = s->p[s->pos];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t')
            return;
        s->pos++;
    }
}

/* After whitespace: the next byte is c, consumed. */
static int expect(struct scan *s, uint8_t c)
{
    skip_ws(s);
    if (s->pos >= s->len || s->p[s->pos] != c)
        return NO;
    s->pos++;
    return YES;
}

/* A value starts here: count it and return its first byte (-1 at the end or past the node limit). */
static int value_start(struct scan *s)
{
    skip_ws(s);
    if (s->pos >= s->len || ++s->nodes > KBS_SNP_COCO_MAX_NODES)
        return -1;
    return s->p[s->pos];
}

static int literal(struct scan *s, const char *text, size_t n)
{
    if (s->len - s->pos < n || memcmp(s->p + s->pos, text, n) != 0)
        return NO;
    s->pos += n;
    return YES;
}

static int hex_digit(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string at s->pos (its opening quote): its raw contents are p[*start, *end).  1 without escapes,
 * 2 with (valid) escapes, 0 to bail. */
static int string(struct scan *s, size_t *start, size_t *end)
{
    size_t i = s->pos + 1;
    int escaped = 0;
    *start = i;
    while (i < s->len) {
        uint8_t c = s->p[i];
        if (c == '"') {
            *end = i;
            s->pos = i + 1;
            return escaped ? 2 : 1;
        }
        if (c < 0x20 || c >= 0x80)
            return 0;
        if (c != '\\') {
            i++;
            continue;
        }
        escaped = 1;
        if (s->len - i < 2)
            return 0;
        uint8_t e = s->p[i + 1];
        if (e == 'u') {
            if (s->len - i < 6)
                return 0;
            int v = 0;
            for (size_t k = 2; k < 6; k++) {
                int h = hex_digit(s->p[i + k]);
                if (h < 0)
                    return 0;
                v = v << 4 | h;
            }
            if (v >= 0xD800 && v <= 0xDFFF) /* surrogates, paired or not: orjson's rules are Python's */
                return 0;
            i += 6;
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
            i += 2;
        } else {
            return 0;
        }
    }
    return 0;
}

/* A plain integer at s->pos (a digit), at most max; bails on a leading zero, a fraction or an
 * exponent.  Stops at 2^64 (orjson makes larger ones floats). */
static int uint_token(struct scan *s, uint64_t max, uint64_t *out)
{
    size_t i = s->pos;
    uint64_t v = (uint64_t)(s->p[i] - '0');
    i++;
    if (v == 0) {
        if (i < s->len && s->p[i] >= '0' && s->p[i] <= '9')
            return NO;
    } else {
        while (i < s->len && s->p[i] >= '0' && s->p[i] <= '9') {
            uint64_t d = (uint64_t)(s->p[i] - '0');
            if (v > (UINT64_MAX - d) / 10)
                return NO;
            v = v * 10 + d;
            i++;
        }
    }
    if (i < s->len && (s->p[i] == '.' || s->p[i] == 'e' || s->p[i] == 'E'))
        return NO;
    if (v > max)
        return NO;
    s->pos = i;
    *out = v;
    return YES;
}

/* Any JSON value at container depth `depth` (the top level is 1), validated and counted. */
static int skip_value(struct scan *s, unsigned depth)
{
    int c = value_start(s);
    size_t a, b;
    uint64_t v;
    switch (c) {
    case '{':
    case '[': {
        if (depth > KBS_SNP_COCO_MAX_DEPTH)
            return NO;
        uint8_t close = c == '{' ? '}' : ']';
        s->pos++;
        skip_ws(s);
        if (s->pos < s->len && s->p[s->pos] == close) {
            s->pos++;
            return YES;
        }
        for (;;) {
            if (c == '{') {
                skip_ws(s);
                if (s->pos >= s->len || s->p[s->pos] != '"' || !string(s, &a, &b) || !expect(s, ':'))
                    return NO;
            }
            if (!skip_value(s, depth + 1))
                return NO;
            skip_ws(s);
            if (s->pos >= s->len)
                return NO;
            uint8_t next = s->p[s->pos++];
            if (next == close)
                return YES;
            if (next != ',')
                return NO;
        }
    }
    case '"':
        return string(s, &a, &b) != 0;
    case 't':
        return literal(s, "true", 4);
    case 'f':
        return literal(s, "false", 5);
    case 'n':
        return literal(s, "null", 4);
    default:
        return c >= '0' && c <= '9' && uint_token(s, UINT64_MAX, &v);
    }
}

/* Any value, validated, and where it is: body[*offset, *offset + *length). */
static int span(struct scan *s, unsigned depth, size_t *offset, size_t *length)
{
    skip_ws(s);
    size_t start = s->pos;
    if (!skip_value(s, depth))
        return NO;
    *offset = start;
    *length = s->pos - start;
    return YES;
}

/* The '{' of an object this scanner reads, at container depth `depth`. */
static int object_open(struct scan *s, unsigned depth)
{
    if (value_start(s) != '{' || depth > KBS_SNP_COCO_MAX_DEPTH)
        return NO;
    s->pos++;
    return YES;
}

/* The next member of an object opened by object_open: 1 with its name (never escaped) and the
 * scanner at its value, 0 at the closing brace, -1 to bail.  *count is the members so far. */
static int object_next(struct scan *s, size_t *count, const uint8_t **name, size_t *name_len)
{
    skip_ws(s);
    if (s->pos >= s->len)
        return -1;
    if (s->p[s->pos] == '}') {
        s->pos++;
        return 0;
    }
    if (*count > 0) {
        if (s->p[s->pos] != ',')
            return -1;
        s->pos++;
        skip_ws(s);
        if (s->pos >= s->len)
            return -1;
    }
    size_t a, b;
    if (s->p[s->pos] != '"' || string(s, &a, &b) != 1 || !expect(s, ':'))
        return -1;
    *name = s->p + a;
    *name_len = b - a;
    (*count)++;
    return 1;
}

/* Which of n names a member name is, or -1.  The names are names[0] and each next one `stride`
 * bytes on: a plain array of names, or a table whose rows start with one. */
static int member_index(const uint8_t *name, size_t len, const char *const *names, size_t stride, int n)
{
    const char *row = (const char *)names;
    for (int i = 0; i < n; i++, row += stride) {
        const char *candidate = *(const char *const *)(const void *)row;
        if (len > 0 && (uint8_t)candidate[0] == name[0] && strlen(candidate) == len && memcmp(name, candidate, len) == 0)
            return i;
    }
    return -1;
}

/* Note member i as seen; NO when it was seen already (a duplicate orjson would have merged). */
static int first_time(uint32_t *seen, int i)
{
    if (*seen >> i & 1u)
        return NO;
    *seen |= 1u << i;
    return YES;
}

/* An object this scanner reads: its member names (as member_index takes them, at most 32), the
 * members it must have (bit i for name i), whether other members are skipped (validated: the
 * Python path ignores them) or declined, and what reads a member's value.  member() gets the
 * value's depth and the member's index, with the scanner at the value. */
struct object {
    const char *const *names;
    size_t stride;
    int count;
    uint32_t required;
    int skip_others;
    int (*member)(struct scan *s, unsigned depth, int index, void *ctx);
};

/* The names argument of struct object for a plain array of names. */
#define NAMES(array) (array), sizeof *(array), (int)(sizeof(array) / sizeof *(array))

/* An object o at container depth `depth`, each known member read once by o->member. */
static int members(struct scan *s, unsigned depth, const struct object *o, void *ctx)
{
    if (!object_open(s, depth))
        return NO;
    uint32_t seen = 0;
    size_t count = 0, len;
    const uint8_t *name;
    int r;
    while ((r = object_next(s, &count, &name, &len)) == 1) {
        int i = member_index(name, len, o->names, o->stride, o->count);
        int ok;
        if (i < 0)
            ok = o->skip_others && skip_value(s, depth + 1);
        else
            ok = first_time(&seen, i) && o->member(s, depth + 1, i, ctx);
        if (!ok)
            return NO;
    }
    return r == 0 && (seen & o->required) == o->required;
}

/* An integer 0..max: no bool, null, string or other number form. */
static int uint_value(struct scan *s, uint64_t max, uint64_t *out)
{
    int c = value_start(s);
    return c >= '0' && c <= '9' && uint_token(s, max, out);
}

/* An integer 0..max or null. */
static int nullable_uint(struct scan *s, uint64_t max, uint64_t *out, uint8_t *is_null)
{
    int c = value_start(s);
    if (c == 'n') {
        *is_null = 1;
        return literal(s, "null", 4);
    }
    *is_null = 0;
    return c >= '0' && c <= '9' && uint_token(s, max, out);
}

static int is_ws(uint8_t c)
{
    return c <= ' ' && (c == ' ' || c == '\n' || c == '\r' || c == '\t');
}

/* An array of integers 0..255 into out[0, cap): exactly cap of them if `exact`, else at most cap;
 * *got is how many.  The hot loop (most of a message is these arrays) works on locals: stores to
 * out (uint8_t, which aliases anything) would otherwise reload the scanner's state each element. */
static int byte_array(struct scan *s, unsigned depth, uint8_t *out, size_t cap, int exact, size_t *got)
{
    if (value_start(s) != '[' || depth > KBS_SNP_COCO_MAX_DEPTH)
        return NO;
    const uint8_t *p = s->p;
    size_t len = s->len, pos = s->pos + 1, nodes = s->nodes, n = 0;
    while (pos < len && is_ws(p[pos]))
        pos++;
    if (pos < len && p[pos] == ']') {
        pos++;
    } else {
        for (;;) {
            while (pos < len && is_ws(p[pos]))
                pos++;
            if (pos >= len || n >= cap || ++nodes > KBS_SNP_COCO_MAX_NODES)
                return NO;
            unsigned v = (unsigned)p[pos] - '0', d;
            if (v > 9)
                return NO;
            pos++;
            if (v == 0) {
                if (pos < len && (unsigned)p[pos] - '0' <= 9)
                    return NO; /* leading zero */
            } else {
                while (pos < len && (d = (unsigned)p[pos] - '0') <= 9) {
                    v = v * 10 + d;
                    if (v > 255)
                        return NO;
                    pos++;
                }
            }
            out[n++] = (uint8_t)v;
            while (pos < len && is_ws(p[pos])) /* then ',' or ']': a '.', 'e' or other byte bails here */
                pos++;
            if (pos >= len)
                return NO;
            uint8_t next = p[pos++];
            if (next == ']')
                break;
            if (next != ',')
                return NO;
        }
    }
    if (exact && n != cap)
        return NO;
    s->pos = pos;
    s->nodes = nodes;
    *got = n;
    return YES;
}

/* ---- attestation_report: coco._FIELDS ---- */

enum kind { UINT, BYTES, TCB, FIRMWARE, CPUID, MIT, SIGNATURE };

struct field {
    const char *name; /* first: members() looks the names up in this table */
    uint16_t offset;
    uint8_t kind;
    uint8_t size;
};

enum { F_VERSION = 0, F_CURRENT_TCB = 7, F_CPUID_FAM_ID = 18, NFIELDS = 29 };

static const struct field FIELDS[NFIELDS] = {
    {"version", 0x000, UINT, 4},
    {"guest_svn", 0x004, UINT, 4},
    {"policy", 0x008, UINT, 8},
    {"family_id", 0x010, BYTES, 16},
    {"image_id", 0x020, BYTES, 16},
    {"vmpl", 0x030, UINT, 4},
    {"sig_algo", 0x034, UINT, 4},
    {"current_tcb", 0x038, TCB, 8},
    {"plat_info", 0x040, UINT, 8},
    {"key_info", 0x048, UINT, 4},
    {"report_data", 0x050, BYTES, 64},
    {"measurement", 0x090, BYTES, 48},
    {"host_data", 0x0C0, BYTES, 32},
    {"id_key_digest", 0x0E0, BYTES, 48},
    {"author_key_digest", 0x110, BYTES, 48},
    {"report_id", 0x140, BYTES, 32},
    {"report_id_ma", 0x160, BYTES, 32},
    {"reported_tcb", 0x180, TCB, 8},
    {"cpuid_fam_id", 0x188, CPUID, 1},
    {"cpuid_mod_id", 0x189, CPUID, 1},
    {"cpuid_step", 0x18A, CPUID, 1},
    {"chip_id", 0x1A0, BYTES, 64},
    {"committed_tcb", 0x1E0, TCB, 8},
    {"current", 0x1E8, FIRMWARE, 3},
    {"committed", 0x1EC, FIRMWARE, 3},
    {"launch_tcb", 0x1F0, TCB, 8},
    {"launch_mit_vector", 0x1F8, MIT, 8},
    {"current_mit_vector", 0x200, MIT, 8},
    {"signature", 0x2A0, SIGNATURE, 144},
};

enum { TURIN_CPUID_FAMILY = 0x1A, SIG_PART = 72 };

static uint64_t max_of(unsigned size)
{
    return size >= 8 ? UINT64_MAX : ((uint64_t)1 << 8 * size) - 1;
}

struct tcb {
    uint8_t has_fmc; /* fmc set (not null or absent) */
    uint8_t part[5]; /* fmc, bootloader, tee, snp, microcode */
};

/* {"fmc": u8 | null (or absent), "bootloader", "tee", "snp", "microcode": u8} into a struct tcb */
static int tcb_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    struct tcb *t = ctx;
    uint64_t v = 0;
    uint8_t is_null = 0;
    (void)depth;
    if (i == 0 ? !nullable_uint(s, 0xFF, &v, &is_null) : !uint_value(s, 0xFF, &v))
        return NO;
    t->part[i] = (uint8_t)v;
    if (i == 0)
        t->has_fmc = !is_null;
    return YES;
}

static const char *const TCB_NAMES[] = {"fmc", "bootloader", "tee", "snp", "microcode"};
static const struct object TCB_OBJECT = {NAMES(TCB_NAMES), 0x1Eu, NO, tcb_member};

/* {"major", "minor", "build": u8} -> build, minor, major */
static int firmware_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    uint64_t v;
    (void)depth;
    if (!uint_value(s, 0xFF, &v))
        return NO;
    ((uint8_t *)ctx)[i] = (uint8_t)v;
    return YES;
}

static const char *const FIRMWARE_NAMES[] = {"build", "minor", "major"};
static const struct object FIRMWARE_OBJECT = {NAMES(FIRMWARE_NAMES), 7u, NO, firmware_member};

/* {"r", "s": 72 bytes each, little-endian} -> r || s */
static int signature_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    size_t got;
    return byte_array(s, depth, (uint8_t *)ctx + i * SIG_PART, SIG_PART, YES, &got);
}

static const char *const SIGNATURE_NAMES[] = {"r", "s"};
static const struct object SIGNATURE_OBJECT = {NAMES(SIGNATURE_NAMES), 3u, NO, signature_member};

static void put_le(uint8_t *out, uint64_t v, unsigned size)
{
    for (unsigned i = 0; i < size; i++)
        out[i] = (uint8_t)(v >> 8 * i);
}

/* An attestation_report's members as read, before the layout rules. */
struct report {
    uint8_t *out; /* the binary report: byte arrays, firmware versions and the signature go here */
    uint64_t value[NFIELDS];
    uint8_t null[NFIELDS]; /* a CPUID or mitigation vector null or absent (coco._nullable's None) */
    struct tcb tcbs[NFIELDS];
};

static int report_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    struct report *r = ctx;
    const struct field *f = &FIELDS[i];
    size_t got;
    switch (f->kind) {
    case UINT:
        return uint_value(s, max_of(f->size), &r->value[i]);
    case BYTES:
        return byte_array(s, depth, r->out + f->offset, f->size, YES, &got);
    case TCB:
        return members(s, depth, &TCB_OBJECT, &r->tcbs[i]);
    case FIRMWARE:
        return members(s, depth, &FIRMWARE_OBJECT, r->out + f->offset);
    case CPUID:
    case MIT:
        return nullable_uint(s, max_of(f->size), &r->value[i], &r->null[i]);
    default:
        return members(s, depth, &SIGNATURE_OBJECT, r->out + f->offset);
    }
}

/* coco._encode_report: every member known, each once, every non-Option one present. */
static int attestation_report(struct scan *s, unsigned depth, uint8_t report[KBS_SNP_REPORT_SIZE])
{
    _Static_assert(NFIELDS <= 32, "a report's members are bits of a uint32_t");
    struct report r;
    memset(&r, 0, sizeof r);
    memset(r.null, 1, sizeof r.null);
    r.out = report;
    uint32_t required = 0;
    for (int i = 0; i < NFIELDS; i++)
        if (FIELDS[i].kind != CPUID && FIELDS[i].kind != MIT)
            required |= 1u << i;
    const struct object object = {&FIELDS[0].name, sizeof FIELDS[0], NFIELDS, required, NO, report_member};
    if (!members(s, depth, &object, &r))
        return NO;
    uint64_t version = r.value[F_VERSION];
    if (version < 2 || version > 5)
        return NO; /* the C core names an unsupported version */

    /* coco._turin_layout: CPUID family from version 3, else current_tcb's fmc; every TCB agrees. */
    int turin;
    if (version >= 3) {
        if (r.null[F_CPUID_FAM_ID])
            return NO;
        turin = r.value[F_CPUID_FAM_ID] >= TURIN_CPUID_FAMILY;
    } else {
        turin = r.tcbs[F_CURRENT_TCB].has_fmc;
    }
    for (int i = 0; i < NFIELDS; i++) {
        const struct field *f = &FIELDS[i];
        uint8_t *at = report + f->offset;
        int present; /* coco._nullable: whether this version has the field */
        switch (f->kind) {
        case UINT:
            put_le(at, r.value[i], f->size);
            break;
        case TCB: {
            const uint8_t *t = r.tcbs[i].part;
            if (r.tcbs[i].has_fmc != turin)
                return NO;
            if (turin) { /* coco._tcb_bytes: fmc, bl, tee, snp, 0, 0, 0, ucode */
                memcpy(at, t, 4);
                at[7] = t[4];
            } else { /* bl, tee, 0, 0, 0, 0, snp, ucode */
                at[0] = t[1];
                at[1] = t[2];
                at[6] = t[3];
                at[7] = t[4];
            }
            break;
        }
        case CPUID:
        case MIT:
            present = f->kind == CPUID ? version >= 3 : version >= 5;
            if (!present) {
                if (!r.null[i])
                    return NO;
            } else if (r.null[i]) {
                if (f->kind == CPUID)
                    return NO; /* a missing mitigation vector is zero, a missing CPUID an error */
            } else {
                put_le(at, r.value[i], f->size);
            }
            break;
        default:
            break; /* written while scanning */
        }
    }
    return YES;
}

/* ---- cert_chain, and the objects around the report ---- */

struct certs {
    uint8_t *buf;
    size_t cap;
    size_t used;
};

/* What the objects from the top level down to a cert_chain entry write. */
struct decode {
    struct certs certs;
    struct kbs_snp_coco_message *out;
};

static int cert_type(struct scan *s, uint8_t *out)
{
    static const char *const names[] = {"Empty", "ARK", "ASK", "VCEK", "VLEK", "CRL"};
    size_t a, b;
    if (value_start(s) != '"' || string(s, &a, &b) != 1)
        return NO; /* {"OTHER": guid} and escaped names are the Python path's */
    int i = member_index(s->p + a, b - a, NAMES(names));
    if (i < 0)
        return NO;
    *out = (uint8_t)i;
    return YES;
}

/* {"cert_type": name, "data": [bytes]} into out->certs[out->cert_count], the entry being read */
static int cert_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    struct decode *d = ctx;
    struct certs *c = &d->certs;
    struct kbs_snp_coco_cert *cert = &d->out->certs[d->out->cert_count];
    if (i == 0)
        return cert_type(s, &cert->cert_type);
    size_t room = c->cap - c->used, got;
    uint8_t *dst = c->buf ? c->buf + c->used : NULL; /* NULL only with no room: never written */
    if (!byte_array(s, depth, dst, room < KBS_SNP_COCO_MAX_CERT_SIZE ? room : KBS_SNP_COCO_MAX_CERT_SIZE, NO, &got))
        return NO;
    cert->offset = c->used;
    cert->length = got;
    c->used += got;
    return YES;
}

static const char *const CERT_NAMES[] = {"cert_type", "data"};
static const struct object CERT_OBJECT = {NAMES(CERT_NAMES), 3u, NO, cert_member};

/* null or [entry, ...] with at most KBS_SNP_COCO_MAX_CERTS entries */
static int cert_chain(struct scan *s, unsigned depth, struct decode *d)
{
    struct kbs_snp_coco_message *out = d->out;
    int ch = value_start(s);
    if (ch == 'n')
        return literal(s, "null", 4);
    if (ch != '[' || depth > KBS_SNP_COCO_MAX_DEPTH)
        return NO;
    s->pos++;
    skip_ws(s);
    if (s->pos < s->len && s->p[s->pos] == ']') {
        s->pos++;
        return YES;
    }
    for (;;) {
        if (out->cert_count >= KBS_SNP_COCO_MAX_CERTS || !members(s, depth + 1, &CERT_OBJECT, d))
            return NO;
        out->cert_count++;
        skip_ws(s);
        if (s->pos >= s->len)
            return NO;
        uint8_t next = s->p[s->pos++];
        if (next == ']')
            return YES;
        if (next != ',')
            return NO;
    }
}

/* {"attestation_report": {...}, "cert_chain": [...] | null (or absent)}: coco.report_from_coco */
static int primary_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    struct decode *d = ctx;
    return i == 0 ? attestation_report(s, depth, d->out->report) : cert_chain(s, depth, d);
}

static const char *const PRIMARY_NAMES[] = {"attestation_report", "cert_chain"};
static const struct object PRIMARY_OBJECT = {NAMES(PRIMARY_NAMES), 1u, NO, primary_member};

/* tee-evidence: primary_evidence (decoded), additional_evidence (a span); other members are
 * ignored by the Python path (.get), so only validated here. */
static int tee_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    struct decode *d = ctx;
    if (i == 0)
        return members(s, depth, &PRIMARY_OBJECT, d);
    return span(s, depth, &d->out->additional_evidence_offset, &d->out->additional_evidence_length);
}

static const char *const TEE_NAMES[] = {"primary_evidence", "additional_evidence"};
static const struct object TEE_OBJECT = {NAMES(TEE_NAMES), 1u, YES, tee_member};

/* The top level: runtime-data (a span), init-data (a span, optional), tee-evidence; other members
 * validated and ignored. */
static int message_member(struct scan *s, unsigned depth, int i, void *ctx)
{
    struct decode *d = ctx;
    struct kbs_snp_coco_message *out = d->out;
    if (i == 0)
        return span(s, depth, &out->runtime_data_offset, &out->runtime_data_length);
    if (i == 1)
        return span(s, depth, &out->init_data_offset, &out->init_data_length);
    return members(s, depth, &TEE_OBJECT, d);
}

static const char *const MESSAGE_NAMES[] = {"runtime-data", "init-data", "tee-evidence"};
static const struct object MESSAGE_OBJECT = {NAMES(MESSAGE_NAMES), 5u, YES, message_member};

static int message(struct scan *s, struct decode *d)
{
    if (!members(s, 1, &MESSAGE_OBJECT, d))
        return NO;
    skip_ws(s);
    return s->pos == s->len; /* nothing but whitespace after the document */
}

int kbs_snp_coco_decode(const uint8_t *body, size_t len, uint8_t *cert_buf, size_t cert_buf_len,
                        struct kbs_snp_coco_message *out)
{
    if (out == NULL || (body == NULL && len != 0) || (cert_buf == NULL && cert_buf_len != 0))
        return KBS_ERR_NULL_ARGUMENT;
    memset(out, 0, sizeof *out);
    struct scan s = {body, len, 0, 0};
    struct decode d = {{cert_buf, cert_buf_len, 0}, out};
    if (len == 0 || !message(&s, &d)) {
        memset(out, 0, sizeof *out);
        return KBS_SNP_COCO_NOT_FAST;
    }
    return KBS_OK;
}
