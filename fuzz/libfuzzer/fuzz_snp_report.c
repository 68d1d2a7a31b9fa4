/*
 * libFuzzer harness of the SEV-SNP report parser and the SHA-384 helper.
 *
 * Entry points: kbs_snp_parse, kbs_sha384.
 *
 *  1. The input as it is (any length, in libFuzzer's exact-size block, so any read past its
 *     end is an ASan report) goes to kbs_snp_parse; the status must be one a plain model of
 *     the README's rules allows (KBS_OK exactly when no rule fails, else the code of a failing
 *     rule), and on success every decoded field must equal the model's decoding.
 *  2. The same bytes, cut or zero-padded to 1184 and made well-formed (fuzz_common.h), then
 *     with the rules the last input byte selects broken again: the decoder runs on arbitrary
 *     field contents, and each check is hit alone and in combination.
 *  3. kbs_sha384 of the input against EVP's streaming SHA-384 fed in two parts, and its NULL
 *     arguments.
 * Seeds: every real report of $KBS_VECTORS plus synthetic ones (make_seeds.py).
 */
#include "fuzz_common.h"

enum { REPORT = KBS_SNP_REPORT_SIZE, MAX_FAILS = 16 };

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* The statuses a report may get: KBS_OK alone, or any rule that fails. */
struct verdict {
    int codes[MAX_FAILS];
    int count;
};

static void add(struct verdict *v, int code)
{
    v->codes[v->count++] = code;
}

static struct verdict model(const uint8_t *b, size_t len)
{
    struct verdict v = {{0}, 0};
    if (len != REPORT) {
        add(&v, KBS_ERR_SNP_LENGTH);
        return v;
    }
    uint32_t version = get_le32(b);
    if (version < 2 || version > 5) {
        add(&v, KBS_ERR_SNP_VERSION);
        return v;
    }
    uint64_t policy = get_le64(b + 0x08);
    uint32_t signer = get_le32(b + 0x48), key = (signer >> 2) & 7;
    if (get_le32(b + 0x34) != 1)
        add(&v, KBS_ERR_SNP_SIG_ALGO);
    if (!((policy >> 17) & 1))
        add(&v, KBS_ERR_SNP_POLICY_BIT17);
    if (policy >> 26)
        add(&v, KBS_ERR_SNP_POLICY_RESERVED);
    if (signer >> 5)
        add(&v, KBS_ERR_SNP_SIGNER_INFO_RESERVED);
    if (key >= 2 && key <= 6)
        add(&v, KBS_ERR_SNP_SIGNING_KEY_RESERVED);
    if (!all_zero(b + 0x4C, 4))
        add(&v, KBS_ERR_SNP_MBZ_04C);
    if (version == 2 ? !all_zero(b + 0x188, 0x18) : !all_zero(b + 0x18B, 0x15))
        add(&v, KBS_ERR_SNP_MBZ_188);
    if (b[0x1EB])
        add(&v, KBS_ERR_SNP_MBZ_1EB);
    if (b[0x1EF])
        add(&v, KBS_ERR_SNP_MBZ_1EF);
    if (version < 5 && !all_zero(b + 0x1F8, 0x10))
        add(&v, KBS_ERR_SNP_MBZ_1F8);
    if (!all_zero(b + 0x208, 0x98))
        add(&v, KBS_ERR_SNP_MBZ_208);
    if (!all_zero(b + 0x2D0, 24))
        add(&v, KBS_ERR_SNP_SIG_R_HIGH);
    if (!all_zero(b + 0x318, 24))
        add(&v, KBS_ERR_SNP_SIG_S_HIGH);
    if (!all_zero(b + 0x330, REPORT - 0x330))
        add(&v, KBS_ERR_SNP_MBZ_330);
    return v;
}

#define FIELD(name, off)                                                                                \
    do {                                                                                                \
        if (memcmp(r->name, b + (off), sizeof r->name) != 0)                                            \
            fuzz_fail("field " #name " not copied from 0x%x", (unsigned)(off));                         \
    } while (0)
#define NUMBER(name, value)                                                                             \
    do {                                                                                                \
        if (r->name != (value))                                                                         \
            fuzz_fail("field " #name " is 0x%llx, want 0x%llx", (unsigned long long)r->name,             \
                      (unsigned long long)(value));                                                     \
    } while (0)

/* Every field of a parsed report against the offsets of reference/snp.md §1. */
static void check_decode(const uint8_t *b, const struct kbs_snp_report *r)
{
    uint32_t version = get_le32(b);
    NUMBER(version, version);
    NUMBER(guest_svn, get_le32(b + 0x04));
    NUMBER(policy, get_le64(b + 0x08));
    FIELD(family_id, 0x10);
    FIELD(image_id, 0x20);
    NUMBER(vmpl, get_le32(b + 0x30));
    NUMBER(signature_algo, get_le32(b + 0x34));
    NUMBER(current_tcb, get_le64(b + 0x38));
    NUMBER(platform_info, get_le64(b + 0x40));
    NUMBER(signer_info, get_le32(b + 0x48));
    FIELD(report_data, 0x50);
    FIELD(measurement, 0x90);
    FIELD(host_data, 0xC0);
    FIELD(id_key_digest, 0xE0);
    FIELD(author_key_digest, 0x110);
    FIELD(report_id, 0x140);
    FIELD(report_id_ma, 0x160);
    NUMBER(reported_tcb, get_le64(b + 0x180));
    NUMBER(cpuid_fam_id, version >= 3 ? b[0x188] : 0);
    NUMBER(cpuid_mod_id, version >= 3 ? b[0x189] : 0);
    NUMBER(cpuid_step, version >= 3 ? b[0x18A] : 0);
    FIELD(chip_id, 0x1A0);
    NUMBER(committed_tcb, get_le64(b + 0x1E0));
    NUMBER(current_build, b[0x1E8]);
    NUMBER(current_minor, b[0x1E9]);
    NUMBER(current_major, b[0x1EA]);
    NUMBER(committed_build, b[0x1EC]);
    NUMBER(committed_minor, b[0x1ED]);
    NUMBER(committed_major, b[0x1EE]);
    NUMBER(launch_tcb, get_le64(b + 0x1F0));
    NUMBER(launch_mit_vector, version >= 5 ? get_le64(b + 0x1F8) : 0);
    NUMBER(current_mit_vector, version >= 5 ? get_le64(b + 0x200) : 0);
    for (int i = 0; i < 48; i++)
        if (r->signature_r[i] != b[0x2A0 + 47 - i] || r->signature_s[i] != b[0x2E8 + 47 - i])
            fuzz_fail("signature byte %d not reversed from the little-endian field", i);
}

static void check_parse(const uint8_t *b, size_t len, const char *what)
{
    struct kbs_snp_report out;
    int rc = kbs_snp_parse(b, len, &out);
    struct verdict v = model(b, len);
    int allowed = 0;
    for (int i = 0; i < v.count; i++)
        allowed |= v.codes[i] == rc;
    if (v.count == 0 ? rc != KBS_OK : !allowed) {
        fuzz_hex("report", b, len);
        fuzz_fail("%s: kbs_snp_parse %d, the model has %d failing rules (first %d)", what, rc, v.count,
                  v.count ? v.codes[0] : 0);
    }
    if (rc == KBS_OK)
        check_decode(b, &out);
    if (kbs_snp_parse(b, len, NULL) != KBS_ERR_NULL_ARGUMENT)
        fuzz_fail("a NULL out was not refused");
}

/* Break again the rules whose bit is set in `which`, in a well-formed report. */
static void break_rules(uint8_t *b, uint32_t which, uint8_t salt)
{
    uint8_t x = salt | 1; /* a nonzero byte */
    uint32_t version = get_le32(b);
    if (which & 1u << 0)
        put_le32(b + 0x34, salt == 1 ? 0 : salt);
    if (which & 1u << 1)
        b[0x0A] &= (uint8_t)~0x02; /* policy bit 17 */
    if (which & 1u << 2)
        b[0x08 + 3 + salt % 5] |= (uint8_t)(0x04 << (salt % 5 == 0 ? salt % 6 : 0)); /* bits 26..63 */
    if (which & 1u << 3)
        b[0x48 + salt % 4] |= salt % 4 ? x : 0x20; /* signer info bits 31:5 */
    if (which & 1u << 4)
        b[0x48] = (uint8_t)((b[0x48] & ~0x1C) | (2 + salt % 5) << 2); /* signing key 2..6 */
    if (which & 1u << 5)
        b[0x4C + salt % 4] = x;
    if (which & 1u << 6)
        b[(version == 2 ? 0x188 : 0x18B) + salt % (version == 2 ? 0x18 : 0x15)] = x;
    if (which & 1u << 7)
        b[0x1EB] = x;
    if (which & 1u << 8)
        b[0x1EF] = x;
    if (which & 1u << 9)
        b[0x1F8 + salt % 0x10] = x; /* reserved before v5, mitigation vectors from v5 */
    if (which & 1u << 10)
        b[0x208 + salt % 0x98] = x;
    if (which & 1u << 11)
        b[0x2D0 + salt % 24] = x;
    if (which & 1u << 12)
        b[0x318 + salt % 24] = x;
    if (which & 1u << 13)
        b[0x330 + salt % (REPORT - 0x330)] = x;
    if (which & 1u << 14)
        put_le32(b, salt % 2 ? 6u + salt : salt / 2u % 2); /* versions 0, 1 and > 5 */
}

static void check_sha384(const uint8_t *data, size_t size)
{
    uint8_t got[48], want[48];
    unsigned want_len = 0;
    size_t cut = size ? data[0] % (size + 1) : 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha384(), NULL) != 1 || EVP_DigestUpdate(md, data, cut) != 1 ||
        EVP_DigestUpdate(md, data + cut, size - cut) != 1 || EVP_DigestFinal_ex(md, want, &want_len) != 1 ||
        want_len != 48)
        fuzz_fail("EVP SHA-384");
    EVP_MD_CTX_free(md);
    if (kbs_sha384(size ? data : NULL, size, got) != KBS_OK || memcmp(got, want, 48) != 0)
        fuzz_fail("kbs_sha384 differs from EVP's SHA-384 (%zu bytes)", size);
    if (kbs_sha384(data, size, NULL) != KBS_ERR_NULL_ARGUMENT ||
        (size && kbs_sha384(NULL, size, got) != KBS_ERR_NULL_ARGUMENT))
        fuzz_fail("kbs_sha384 took a NULL argument");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_parse(data, size, "input as given");

    uint8_t *b = malloc(REPORT); /* exact block */
    if (b == NULL)
        fuzz_fail("out of memory");
    size_t have = size < REPORT ? size : REPORT;
    memcpy(b, data, have);
    memset(b + have, 0, REPORT - have);
    snp_make_wellformed(b, 1);
    uint8_t sel = size ? data[size - 1] : 0, salt = size > 1 ? data[size - 2] : 0;
    /* a quarter of the cases well-formed, the rest with one or several rules broken */
    uint32_t which = sel < 64 ? 0 : sel < 192 ? 1u << (sel % 15) : (uint32_t)sel * 0x9E3779B1u >> 17;
    break_rules(b, which, salt);
    check_parse(b, REPORT, "made well-formed, then rules broken");
    free(b);

    check_sha384(data, size);
    return 0;
}
