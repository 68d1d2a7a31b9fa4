/*
 * NVIDIA GPU (and NVSwitch) attestation reports: the 37-byte SPDM 1.1 GET_MEASUREMENTS request
 * followed by the MEASUREMENTS response, one buffer (reference/gpu.md §1), and its one-call verifier.
 *
 * The report is read front to back by its own lengths.  `pos` never exceeds the end of the part
 * being read (the buffer, the measurement record, the opaque data), and every read is preceded by
 * a check written as `need > limit - pos`, so nothing can wrap.  The signature is located by
 * parsing, never as "the last 96 bytes": bytes after it are refused unless they are zero padding
 * (trustee/hopper_coco_report1.txt carries one 0x00), and with KBS_SPDM_NO_PADDING even those.
 * On a format error `out` says where (error_offset, error_item) and what (error_seen, error_wanted)
 * so the caller can name the field; the fields parsed before it stay filled.
 */
#include <string.h>

#include "kbs_native.h"

enum {
    REQUEST_SIZE = KBS_SPDM_REQUEST_SIZE,
    NONCE_SIZE = KBS_SPDM_NONCE_SIZE,
    SIGNATURE_SIZE = KBS_SPDM_SIGNATURE_SIZE,
    SCALAR_SIZE = 48,
    RESPONSE_HEADER_SIZE = 8, /* version, code, param1, param2, NumberOfBlocks, uint24 record length */
    BLOCK_HEADER_SIZE = 4,    /* index, MeasurementSpecification, uint16 MeasurementSize */
    DMTF_HEADER_SIZE = 3,     /* DMTFSpecMeasurementValueType, uint16 DMTFSpecMeasurementValueSize */
    TLV_HEADER_SIZE = 4,      /* uint16 DataType, uint16 DataSize */

    /* request (report offsets) */
    OFF_REQ_VERSION = 0,
    OFF_REQ_CODE = 1,
    OFF_REQ_ATTRIBUTES = 2,
    OFF_REQ_OPERATION = 3,
    OFF_REQ_NONCE = 4,
    OFF_REQ_SLOT = 36,
    /* response header (report offsets) */
    OFF_RSP_VERSION = REQUEST_SIZE,
    OFF_RSP_CODE = REQUEST_SIZE + 1,
    OFF_RSP_PARAM1 = REQUEST_SIZE + 2,
    OFF_RSP_PARAM2 = REQUEST_SIZE + 3,
    OFF_RSP_BLOCKS = REQUEST_SIZE + 4,
    OFF_RSP_RECORD_LENGTH = REQUEST_SIZE + 5,
    OFF_RECORD = REQUEST_SIZE + RESPONSE_HEADER_SIZE,

    SPDM_VERSION_11 = 0x11,
    CODE_GET_MEASUREMENTS = 0xE0,
    CODE_MEASUREMENTS = 0x60,
    ATTRIBUTES_SIGNATURE = 0x01, /* bit 0 "generate signature"; bits 7:1 reserved in SPDM 1.1 */
    OPERATION_ALL = 0xFF,
    MAX_SLOT = 7,                /* SlotIDParam: slot 0-7, bits 7:4 reserved */
    SPEC_DMTF = 0x01,
    VALUE_TYPE_RAW = 0x80,       /* bit 7: raw bit stream instead of a digest */
    INDEX_MIN = 1,
    INDEX_MAX = 254
};

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* Do `need` bytes remain between pos and limit?  (pos <= limit always holds.) */
static int fits(size_t pos, size_t need, size_t limit)
{
    return need <= limit - pos;
}

/* Record where and what, and return the status. */
static int fail(struct kbs_spdm_report *r, int status, size_t offset, size_t item, uint64_t seen, uint64_t wanted)
{
    r->error_offset = offset;
    r->error_item = item;
    r->error_seen = seen;
    r->error_wanted = wanted;
    return status;
}

/*
 * The opaque data types a GPU or NVSwitch may send: 1-25 and 32-36 of gpu.md §1.4 (the codes the
 * Python verifier, nvat and trustee share), and 26, SWITCH_GPU_PDIS (nvat's switch parser), which
 * every real LS10 switch report carries.  0, 27-31, 37 and up, and 255 (INVALID) are refused.
 */
static int known_opaque_type(uint16_t type)
{
    return (type >= 1 && type <= 26) || (type >= 32 && type <= 36);
}

static int parse_request(const uint8_t *b, size_t len, struct kbs_spdm_report *r)
{
    if (len < REQUEST_SIZE)
        return fail(r, KBS_ERR_SPDM_REQUEST_TRUNCATED, 0, 0, len, REQUEST_SIZE);
    if (b[OFF_REQ_VERSION] != SPDM_VERSION_11)
        return fail(r, KBS_ERR_SPDM_REQUEST_VERSION, OFF_REQ_VERSION, 0, b[OFF_REQ_VERSION], SPDM_VERSION_11);
    if (b[OFF_REQ_CODE] != CODE_GET_MEASUREMENTS)
        return fail(r, KBS_ERR_SPDM_REQUEST_CODE, OFF_REQ_CODE, 0, b[OFF_REQ_CODE], CODE_GET_MEASUREMENTS);
    r->request_attributes = b[OFF_REQ_ATTRIBUTES];
    if (r->request_attributes != ATTRIBUTES_SIGNATURE)
        return fail(r, KBS_ERR_SPDM_REQUEST_ATTRIBUTES, OFF_REQ_ATTRIBUTES, 0, r->request_attributes,
                    ATTRIBUTES_SIGNATURE);
    r->request_operation = b[OFF_REQ_OPERATION];
    if (r->request_operation != OPERATION_ALL)
        return fail(r, KBS_ERR_SPDM_REQUEST_OPERATION, OFF_REQ_OPERATION, 0, r->request_operation, OPERATION_ALL);
    r->request_nonce_offset = OFF_REQ_NONCE;
    r->slot_id = b[OFF_REQ_SLOT];
    if (r->slot_id > MAX_SLOT)
        return fail(r, KBS_ERR_SPDM_REQUEST_SLOT, OFF_REQ_SLOT, 0, r->slot_id, MAX_SLOT);
    return KBS_OK;
}

static int parse_response_header(const uint8_t *b, size_t len, struct kbs_spdm_report *r)
{
    if (!fits(REQUEST_SIZE, RESPONSE_HEADER_SIZE, len))
        return fail(r, KBS_ERR_SPDM_RESPONSE_TRUNCATED, REQUEST_SIZE, 0, len - REQUEST_SIZE, RESPONSE_HEADER_SIZE);
    if (b[OFF_RSP_VERSION] != SPDM_VERSION_11)
        return fail(r, KBS_ERR_SPDM_RESPONSE_VERSION, OFF_RSP_VERSION, 0, b[OFF_RSP_VERSION], SPDM_VERSION_11);
    if (b[OFF_RSP_CODE] != CODE_MEASUREMENTS)
        return fail(r, KBS_ERR_SPDM_RESPONSE_CODE, OFF_RSP_CODE, 0, b[OFF_RSP_CODE], CODE_MEASUREMENTS);
    r->response_param1 = b[OFF_RSP_PARAM1];
    if (r->response_param1 != 0) /* reserved: the request asked for measurements, not their count */
        return fail(r, KBS_ERR_SPDM_RESPONSE_PARAM1, OFF_RSP_PARAM1, 0, r->response_param1, 0);
    r->response_param2 = b[OFF_RSP_PARAM2];
    if (r->response_param2 != r->slot_id)
        return fail(r, KBS_ERR_SPDM_RESPONSE_SLOT, OFF_RSP_PARAM2, 0, r->response_param2, r->slot_id);
    r->number_of_blocks = b[OFF_RSP_BLOCKS];
    if (r->number_of_blocks == 0)
        return fail(r, KBS_ERR_SPDM_NO_BLOCKS, OFF_RSP_BLOCKS, 0, 0, 1);
    const uint8_t *l = b + OFF_RSP_RECORD_LENGTH;
    r->record_length = (uint32_t)l[0] | (uint32_t)l[1] << 8 | (uint32_t)l[2] << 16;
    r->record_offset = OFF_RECORD;
    if (!fits(OFF_RECORD, r->record_length, len))
        return fail(r, KBS_ERR_SPDM_RECORD_TRUNCATED, OFF_RSP_RECORD_LENGTH, 0, r->record_length, len - OFF_RECORD);
    return KBS_OK;
}

/* Exactly NumberOfBlocks DMTF blocks filling the record, each index 1-254 and used once. */
static int parse_record(const uint8_t *b, struct kbs_spdm_report *r)
{
    size_t pos = r->record_offset, end = r->record_offset + r->record_length;
    uint16_t first_use[256]; /* block number + 1 that used an index, 0 if none */
    memset(first_use, 0, sizeof first_use);
    for (size_t n = 0; n < r->number_of_blocks; n++) {
        if (pos == end)
            return fail(r, KBS_ERR_SPDM_BLOCK_COUNT, pos, n, n, r->number_of_blocks);
        if (!fits(pos, BLOCK_HEADER_SIZE, end))
            return fail(r, KBS_ERR_SPDM_BLOCK_TRUNCATED, pos, n, end - pos, BLOCK_HEADER_SIZE);
        uint8_t index = b[pos], spec = b[pos + 1];
        uint16_t size = le16(b + pos + 2);
        if (index < INDEX_MIN || index > INDEX_MAX)
            return fail(r, KBS_ERR_SPDM_BLOCK_INDEX, pos, n, index, INDEX_MAX);
        if (first_use[index] != 0)
            return fail(r, KBS_ERR_SPDM_BLOCK_DUPLICATE, pos, n, index, first_use[index] - 1);
        first_use[index] = (uint16_t)(n + 1);
        if (spec != SPEC_DMTF)
            return fail(r, KBS_ERR_SPDM_BLOCK_SPEC, pos + 1, n, spec, SPEC_DMTF);
        if (!fits(pos + BLOCK_HEADER_SIZE, size, end))
            return fail(r, KBS_ERR_SPDM_BLOCK_TRUNCATED, pos + 2, n, end - pos - BLOCK_HEADER_SIZE, size);
        if (size < DMTF_HEADER_SIZE)
            return fail(r, KBS_ERR_SPDM_BLOCK_MEASUREMENT_SIZE, pos + 2, n, size, DMTF_HEADER_SIZE);
        size_t dmtf = pos + BLOCK_HEADER_SIZE;
        uint8_t type = b[dmtf];
        uint16_t value_size = le16(b + dmtf + 1);
        if (type & VALUE_TYPE_RAW)
            return fail(r, KBS_ERR_SPDM_BLOCK_VALUE_TYPE, dmtf, n, type, type & ~VALUE_TYPE_RAW & 0xFF);
        if (value_size != size - DMTF_HEADER_SIZE)
            return fail(r, KBS_ERR_SPDM_BLOCK_VALUE_SIZE, dmtf + 1, n, value_size, size - DMTF_HEADER_SIZE);
        struct kbs_spdm_block *blk = &r->blocks[n];
        blk->index = index;
        blk->spec = spec;
        blk->value_type = type;
        blk->value_size = value_size;
        blk->value_offset = dmtf + DMTF_HEADER_SIZE;
        r->block_count = n + 1;
        pos = dmtf + size;
    }
    if (pos != end)
        return fail(r, KBS_ERR_SPDM_RECORD_TRAILING, pos, r->block_count, end - pos, 0);
    return KBS_OK;
}

/* The NVIDIA TLVs of buf[pos, end): known types only, each once, each inside the area. */
static int parse_opaque(const uint8_t *b, size_t pos, size_t end, struct kbs_spdm_report *r)
{
    uint16_t first_use[37]; /* item number + 1 that used a (known, so <= 36) type, 0 if none */
    memset(first_use, 0, sizeof first_use);
    for (size_t n = 0; pos < end; n++) {
        if (!fits(pos, TLV_HEADER_SIZE, end))
            return fail(r, KBS_ERR_SPDM_TLV_TRUNCATED, pos, n, end - pos, TLV_HEADER_SIZE);
        uint16_t type = le16(b + pos), size = le16(b + pos + 2);
        if (!known_opaque_type(type))
            return fail(r, KBS_ERR_SPDM_TLV_TYPE, pos, n, type, 0);
        if (first_use[type] != 0)
            return fail(r, KBS_ERR_SPDM_TLV_DUPLICATE, pos, n, type, first_use[type] - 1);
        first_use[type] = (uint16_t)(n + 1);
        if (!fits(pos + TLV_HEADER_SIZE, size, end))
            return fail(r, KBS_ERR_SPDM_TLV_OVERRUN, pos + 2, n, size, end - pos - TLV_HEADER_SIZE);
        /* Distinct known types number 31, under KBS_SPDM_MAX_OPAQUE: the array cannot fill up. */
        struct kbs_spdm_opaque *f = &r->opaque[n];
        f->type = type;
        f->length = size;
        f->offset = pos + TLV_HEADER_SIZE;
        r->opaque_count = n + 1;
        pos += TLV_HEADER_SIZE + (size_t)size;
    }
    return KBS_OK;
}

/* Responder nonce, opaque data and the signature, after the record. */
static int parse_tail(const uint8_t *b, size_t len, struct kbs_spdm_report *r)
{
    size_t pos = r->record_offset + r->record_length;
    if (!fits(pos, NONCE_SIZE, len))
        return fail(r, KBS_ERR_SPDM_NONCE_TRUNCATED, pos, 0, len - pos, NONCE_SIZE);
    r->responder_nonce_offset = pos;
    pos += NONCE_SIZE;
    if (!fits(pos, 2, len))
        return fail(r, KBS_ERR_SPDM_OPAQUE_LENGTH_TRUNCATED, pos, 0, len - pos, 2);
    r->opaque_length = le16(b + pos);
    if (!fits(pos + 2, r->opaque_length, len))
        return fail(r, KBS_ERR_SPDM_OPAQUE_TRUNCATED, pos, 0, r->opaque_length, len - pos - 2);
    pos += 2;
    r->opaque_offset = pos;
    int rc = parse_opaque(b, pos, pos + r->opaque_length, r);
    if (rc != KBS_OK)
        return rc;
    pos += r->opaque_length;
    if (!fits(pos, SIGNATURE_SIZE, len))
        return fail(r, KBS_ERR_SPDM_SIGNATURE_TRUNCATED, pos, 0, len - pos, SIGNATURE_SIZE);
    r->signature_offset = pos;
    r->signed_size = pos;
    r->end = pos + SIGNATURE_SIZE;
    r->trailing_size = len - r->end;
    return KBS_OK;
}

int kbs_spdm_parse(const uint8_t *buf, size_t len, unsigned int flags, struct kbs_spdm_report *out)
{
    if (buf == NULL || out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    memset(out, 0, sizeof(*out));
    if (flags & ~(unsigned int)KBS_SPDM_NO_PADDING)
        return fail(out, KBS_ERR_SPDM_FLAGS, 0, 0, flags, KBS_SPDM_NO_PADDING);
    int rc = parse_request(buf, len, out);
    if (rc == KBS_OK)
        rc = parse_response_header(buf, len, out);
    if (rc == KBS_OK)
        rc = parse_record(buf, out);
    if (rc == KBS_OK)
        rc = parse_tail(buf, len, out);
    if (rc != KBS_OK)
        return rc;
    for (size_t i = out->end; i < len; i++)
        if (buf[i] != 0)
            return fail(out, KBS_ERR_SPDM_TRAILING_BYTES, i, 0, buf[i], 0);
    if (out->trailing_size != 0 && (flags & KBS_SPDM_NO_PADDING))
        return fail(out, KBS_ERR_SPDM_PADDING, out->end, 0, out->trailing_size, 0);
    return KBS_OK;
}

/* The P-384 core's verdict in this format's words; range and validity point at the signature. */
static int signature_status(int rc, size_t pubkey_len, struct kbs_spdm_report *r)
{
    switch (rc) {
    case KBS_OK: return KBS_OK;
    case KBS_ERR_KEY_LENGTH:
    case KBS_ERR_KEY_FORMAT:
    case KBS_ERR_KEY_NOT_ON_CURVE:
        return fail(r, KBS_ERR_SPDM_KEY, 0, 0, pubkey_len, KBS_P384_POINT_SIZE);
    case KBS_ERR_SIG_RANGE: return fail(r, KBS_ERR_SPDM_SIG_RANGE, r->signature_offset, 0, 0, 0);
    case KBS_ERR_SIG_INVALID: return fail(r, KBS_ERR_SPDM_SIG_INVALID, r->signature_offset, 0, 0, 0);
    default: return rc;
    }
}

static int parse_and_digest(const uint8_t *buf, size_t len, unsigned int flags, struct kbs_spdm_report *out,
                            uint8_t digest[48])
{
    int rc = kbs_spdm_parse(buf, len, flags, out);
    if (rc != KBS_OK)
        return rc;
    return kbs_sha384(buf, out->signed_size, digest);
}

int kbs_spdm_verify(const uint8_t *buf, size_t len, unsigned int flags, const uint8_t *leaf_pubkey,
                    size_t pubkey_len, struct kbs_spdm_report *out)
{
    if (leaf_pubkey == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    uint8_t digest[48];
    int rc = parse_and_digest(buf, len, flags, out, digest);
    if (rc != KBS_OK)
        return rc;
    const uint8_t *sig = buf + out->signature_offset;
    rc = kbs_p384_verify_digest(leaf_pubkey, pubkey_len, digest, sig, sig + SCALAR_SIZE);
    return signature_status(rc, pubkey_len, out);
}

int kbs_spdm_verify_with_table(const uint8_t *buf, size_t len, unsigned int flags,
                               const struct kbs_p384_key_table *table, struct kbs_spdm_report *out)
{
    if (table == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    uint8_t digest[48];
    int rc = parse_and_digest(buf, len, flags, out, digest);
    if (rc != KBS_OK)
        return rc;
    const uint8_t *sig = buf + out->signature_offset;
    rc = kbs_p384_verify_digest_with_table(table, digest, sig, sig + SCALAR_SIZE);
    return signature_status(rc, KBS_P384_POINT_SIZE, out);
}
