/*
 * libFuzzer harness of the one-pass scanner of a CoCo guest's SNP attestation message.
 *
 * Entry points: kbs_snp_coco_decode.
 *
 * The first byte picks how the rest is read:
 *   0 raw:   the rest is the message, in an exact-size heap block (any read past it is an ASan
 *            report).  The status must be KBS_OK or KBS_SNP_COCO_NOT_FAST; on KBS_OK the spans
 *            and certificates must lie inside their buffers, each span must start and end a JSON
 *            value, and the report must be a fixed point: the message native/tests/coco_json.h
 *            writes from it (as report_to_coco would, with the same certificates) must decode to
 *            the same report and certificates.  The same body is then cut at an input-chosen
 *            length: a cut that removes more than whitespace must bail.
 *   1 built: a report made of the input's bytes (normalised as the JSON form carries them: any
 *            version 2..5, Milan/Genoa or Turin TCB layout), certificates of input-chosen types,
 *            sizes and contents, a style (whitespace, optional nulls, member order, init-data,
 *            additional evidence, an ignored member) and one edit of one member (a bad token, a
 *            deletion, a duplicate, an unknown member before it), sometimes with JSON the scanner
 *            must decline wherever it is (coco_json.h's poison: surrogates, non-ASCII, floats,
 *            bad literals, commas, depth) in a member no one reads: the scanner must give what
 *            coco_edit_must_bail says, the report, certificates and spans as built or a bail;
 *            then the message cut at an input-chosen length must bail.
 * Seeds: built messages of every version, layout, style and action, the real reports of
 * $KBS_VECTORS in mode 1 and trustee's e2e evidence as a raw message (make_seeds.py).
 */
#include "fuzz_common.h"

#include "tests/coco_json.h"

enum { REPORT = KBS_SNP_REPORT_SIZE, MAX_CERT = 600 };

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static int rest_is_ws(const uint8_t *p, size_t from, size_t len)
{
    for (size_t i = from; i < len; i++)
        if (!is_ws(p[i]))
            return 0;
    return 1;
}

/* A block of exactly `size` bytes (at least one), or the run stops. */
static uint8_t *block_of(size_t size)
{
    uint8_t *block = malloc(size ? size : 1);
    if (block == NULL)
        fuzz_fail("out of memory");
    return block;
}

/* Decode body[0, len) from an exact block; certificates into an exact block of len bytes, copied out. */
static int decode(const uint8_t *body, size_t len, struct kbs_snp_coco_message *out, uint8_t *certs_copy)
{
    uint8_t *block = block_of(len);
    uint8_t *certs = block_of(len);
    if (len)
        memcpy(block, body, len);
    int rc = kbs_snp_coco_decode(block, len, certs, len, out);
    if (rc != KBS_OK && rc != KBS_SNP_COCO_NOT_FAST)
        fuzz_fail("status %d is neither KBS_OK nor KBS_SNP_COCO_NOT_FAST", rc);
    if (rc == KBS_OK && certs_copy != NULL && len)
        memcpy(certs_copy, certs, len);
    free(certs);
    free(block);
    return rc;
}

/* A cut that removes more than whitespace bails. */
static void check_cut(const uint8_t *body, size_t len, size_t cut)
{
    struct kbs_snp_coco_message out;
    if (cut >= len)
        return;
    int rc = decode(body, cut, &out, NULL);
    if (rc == KBS_OK && !rest_is_ws(body, cut, len))
        fuzz_fail("decoded a message cut at %zu of %zu", cut, len);
}

static void check_span(const uint8_t *body, size_t len, size_t offset, size_t length, const char *what)
{
    if (length == 0) {
        if (offset != 0)
            fuzz_fail("%s absent at offset %zu", what, offset);
        return;
    }
    if (offset > len || length > len - offset)
        fuzz_fail("%s span %zu+%zu outside %zu bytes", what, offset, length, len);
    uint8_t first = body[offset], last = body[offset + length - 1];
    if (is_ws(first) || is_ws(last) || strchr("{[\"tfn0123456789", first) == NULL ||
        strchr("}]\"el0123456789", last) == NULL)
        fuzz_fail("%s span %zu+%zu is not one JSON value", what, offset, length);
}

/* KBS_OK's promises, and the report as a fixed point of writing and scanning. */
static void check_decoded(const uint8_t *body, size_t len, const struct kbs_snp_coco_message *out,
                          const uint8_t *certs)
{
    check_span(body, len, out->runtime_data_offset, out->runtime_data_length, "runtime-data");
    if (out->runtime_data_length == 0)
        fuzz_fail("decoded without runtime-data");
    check_span(body, len, out->init_data_offset, out->init_data_length, "init-data");
    check_span(body, len, out->additional_evidence_offset, out->additional_evidence_length, "additional_evidence");
    if (out->cert_count > KBS_SNP_COCO_MAX_CERTS)
        fuzz_fail("%zu certificates", out->cert_count);
    size_t used = 0;
    struct coco_message m = {0};
    for (size_t i = 0; i < out->cert_count; i++) {
        const struct kbs_snp_coco_cert *c = &out->certs[i];
        if (c->cert_type > KBS_SNP_COCO_CERT_CRL || c->offset != used || c->length > KBS_SNP_COCO_MAX_CERT_SIZE ||
            c->length > len - used)
            fuzz_fail("certificate %zu: type %u at %zu+%zu", i, c->cert_type, c->offset, c->length);
        used += c->length;
        m.cert_type[i] = c->cert_type;
        m.cert_der[i] = certs + c->offset;
        m.cert_len[i] = c->length;
    }
    uint32_t version = get_le32(out->report);
    if (version < 2 || version > 5)
        fuzz_fail("decoded a version %u report", version);
    m.report = out->report;
    m.ncerts = out->cert_count;
    /* The layout the report says (from version 3), else Milan's, which writes the same bytes when the
     * TCBs' Milan-reserved bytes are zero; a version 2 report with Turin-only bytes set needs Turin's. */
    int milan_fits = 1;
    static const unsigned tcbs[4] = {0x38, 0x180, 0x1E0, 0x1F0};
    for (int i = 0; i < 4; i++)
        for (int k = 2; k < 6; k++)
            milan_fits &= out->report[tcbs[i] + k] == 0;
    m.turin = version >= 3 ? out->report[0x188] >= 0x1A : !milan_fits;
    m.edit_at = -1;
    coco_build(&m);
    struct kbs_snp_coco_message again;
    uint8_t *certs_again = block_of(m.len);
    int rc = decode((const uint8_t *)m.text, m.len, &again, certs_again);
    if (rc != KBS_OK || memcmp(again.report, out->report, REPORT) != 0 || again.cert_count != out->cert_count)
        fuzz_fail("the decoded report, written again as JSON, decodes to something else (status %d)", rc);
    for (size_t i = 0; i < out->cert_count; i++)
        if (again.certs[i].cert_type != out->certs[i].cert_type || again.certs[i].length != out->certs[i].length ||
            memcmp(certs_again + again.certs[i].offset, certs + out->certs[i].offset, out->certs[i].length) != 0)
            fuzz_fail("certificate %zu differs once written again", i);
    free(certs_again);
    free(m.text);
}

static void raw_case(const uint8_t *data, size_t size)
{
    struct kbs_snp_coco_message out;
    uint8_t *certs = block_of(size);
    if (decode(data, size, &out, certs) == KBS_OK)
        check_decoded(data, size, &out, certs);
    free(certs);
    if (size)
        check_cut(data, size, data[size - 1] * 131u % size);
}

static void built_case(const uint8_t *data, size_t size)
{
    struct reader rd = {data, size};
    uint8_t report[REPORT];
    static uint8_t cert_bytes[KBS_SNP_COCO_MAX_CERTS + 1][MAX_CERT];
    struct coco_message m = {0};
    int turin = take_u8(&rd) & 1;
    m.style = take_u8(&rd) & 63u;
    size_t ncerts = take_u8(&rd) % 6;
    for (size_t i = 0; i < ncerts; i++) {
        m.cert_type[i] = take_u8(&rd) % 6;
        m.cert_len[i] = take_u16(&rd) % MAX_CERT;
        m.cert_der[i] = cert_bytes[i];
    }
    m.ncerts = ncerts;
    uint16_t at = take_u16(&rd);
    uint8_t action = take_u8(&rd), token = take_u8(&rd);
    uint16_t cut = take_u16(&rd);
    uint8_t poison = take_u8(&rd);
    take(&rd, report, REPORT);
    for (size_t i = 0; i < ncerts; i++)
        take(&rd, cert_bytes[i], m.cert_len[i]);
    coco_normalise(report, &turin);
    m.report = report;
    m.turin = turin;
    m.edit_at = -1;
    coco_build(&m);
    int members = m.members;
    /* a third of the cases unedited, the rest with one edit of one member */
    m.edit_at = action % 3 == 0 ? -1 : at % members;
    m.action = (enum coco_edit_action)(EDIT_REPLACE + action / 3 % 4);
    m.token = COCO_BAD_TOKENS[token % COCO_BAD_TOKEN_COUNT];
    m.poison = poison < 200 ? NULL : COCO_POISON[poison % COCO_POISON_COUNT];
    coco_build(&m);

    struct kbs_snp_coco_message out;
    uint8_t *certs = block_of(m.len);
    int rc = decode((const uint8_t *)m.text, m.len, &out, certs);
    int must = coco_edit_must_bail(&m);
    if (must == 1 && rc != KBS_SNP_COCO_NOT_FAST)
        fuzz_fail("edit %d of member %d (token %s) was decoded", (int)m.action, m.edit_at, m.token);
    if (must == 0) {
        if (rc != KBS_OK)
            fuzz_fail("message (edit %d of member %d) not decoded: %d", m.edit_at < 0 ? 0 : (int)m.action, m.edit_at,
                      rc);
        if (memcmp(out.report, report, REPORT) != 0)
            fuzz_fail("report differs from the one written");
        if (out.cert_count != ncerts)
            fuzz_fail("%zu certificates, %zu written", out.cert_count, ncerts);
        for (size_t i = 0; i < ncerts; i++)
            if (out.certs[i].cert_type != m.cert_type[i] || out.certs[i].length != m.cert_len[i] ||
                memcmp(certs + out.certs[i].offset, cert_bytes[i], m.cert_len[i]) != 0)
                fuzz_fail("certificate %zu differs from the one written", i);
        if (out.runtime_data_offset != m.runtime_offset || out.runtime_data_length != m.runtime_length ||
            out.init_data_offset != m.init_offset || out.init_data_length != m.init_length ||
            out.additional_evidence_offset != m.additional_offset ||
            out.additional_evidence_length != m.additional_length)
            fuzz_fail("spans differ from where the members were written");
    }
    if (rc == KBS_OK)
        check_decoded((const uint8_t *)m.text, m.len, &out, certs);
    free(certs);
    check_cut((const uint8_t *)m.text, m.len, cut % m.len);
    free(m.text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] % 2 == 0)
        raw_case(data + 1, size - 1);
    else
        built_case(data + 1, size - 1);
    return 0;
}
