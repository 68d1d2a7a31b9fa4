/*
 * libFuzzer harness of SNP report verification: parse, hash, ECDSA P-384.
 *
 * Entry points: kbs_snp_verify, kbs_snp_verify_with_table, kbs_p384_key_precompute
 * (and, as the expectation, kbs_snp_parse, kbs_sha384, kbs_p384_verify_digest_libcrypto).
 *
 * The first byte picks how the rest is read:
 *   0 given key: a flag byte (key length 97, 96 or 98), a 98-byte key field, then the report
 *     bytes as they are (any length).  The seeds pair each real report of $KBS_VECTORS with its
 *     VCEK's key, so the accept path runs on real data.  The status must be the parser's when
 *     parsing fails, KBS_ERR_SNP_UNSIGNED for an unsigned report, else exactly
 *     kbs_p384_verify_digest_libcrypto's on SHA-384 of bytes 0x000-0x29F, accepting exactly when
 *     OpenSSL's EVP verify accepts; the table path must agree, and `out` must be the parse.
 *   1 signed: a key and a nonce from the input, 1184 report bytes made well-formed and signed by
 *     libcrypto: both paths must accept; then one bit flipped anywhere in the report (or none):
 *     both must refuse, with the same status.
 */
#include "fuzz_common.h"

static const struct kbs_p384_key_table never_precomputed;

static void report_fail(const uint8_t *rep, size_t len, const char *fmt, int a, int b)
{
    fuzz_hex("report", rep, len);
    fprintf(stderr, fmt, a, b);
    fuzz_fail(" (see above)");
}

/* What kbs_snp_verify_with_table must say for a table that is not usable. */
static int verify_with_bad_table_expected(int parse, const struct kbs_snp_report *out)
{
    if (parse != KBS_OK)
        return parse;
    if (((out->signer_info >> 2) & 7) == 7)
        return KBS_ERR_SNP_UNSIGNED;
    return KBS_ERR_INTERNAL;
}

static void given_key(struct reader *rd)
{
    static const size_t lengths[4] = {97, 97, 96, 98};
    uint8_t flags = take_u8(rd), key[98];
    size_t key_len = lengths[flags & 3];
    take(rd, key, sizeof key);
    const uint8_t *rep = rd->p; /* the rest of the input, ending where libFuzzer's block ends */
    size_t len = rd->n;
    struct kbs_snp_report out, parsed;
    memset(&out, 0, sizeof out);
    memset(&parsed, 0, sizeof parsed);

    if (kbs_snp_verify(rep, len, NULL, 97, &out) != KBS_ERR_NULL_ARGUMENT ||
        kbs_snp_verify_with_table(rep, len, NULL, &out) != KBS_ERR_NULL_ARGUMENT)
        fuzz_fail("a NULL key or table was not refused");
    int rc = kbs_snp_verify(rep, len, key, key_len, &out);
    int parse = kbs_snp_parse(rep, len, &parsed);
    int want;
    if (parse != KBS_OK) {
        want = parse;
    } else if (((parsed.signer_info >> 2) & 7) == 7) {
        want = KBS_ERR_SNP_UNSIGNED;
    } else {
        uint8_t digest[48], ref[48];
        unsigned ref_len = 0;
        if (kbs_sha384(rep, KBS_SNP_SIGNED_SIZE, digest) != KBS_OK ||
            EVP_Digest(rep, KBS_SNP_SIGNED_SIZE, ref, &ref_len, EVP_sha384(), NULL) != 1 ||
            memcmp(digest, ref, 48) != 0)
            fuzz_fail("kbs_sha384 of the signed bytes differs from EVP_Digest");
        want = kbs_p384_verify_digest_libcrypto(key, key_len, digest, parsed.signature_r, parsed.signature_s);
        int oracle = openssl_verify(&FUZZ_P384, key, key_len, digest, 48, parsed.signature_r, parsed.signature_s);
        if ((rc == KBS_OK) != oracle)
            report_fail(rep, len, "kbs_snp_verify %d, OpenSSL EVP verify %d", rc, oracle);
    }
    if (rc != want)
        report_fail(rep, len, "kbs_snp_verify %d, expected %d", rc, want);
    if (parse == KBS_OK && memcmp(&out, &parsed, sizeof out) != 0)
        report_fail(rep, len, "kbs_snp_verify's out differs from kbs_snp_parse's (%d, %d)", rc, parse);

    struct kbs_p384_key_table *table = malloc(sizeof *table);
    if (table == NULL)
        fuzz_fail("out of memory");
    struct kbs_snp_report out2;
    if (kbs_p384_key_precompute(key, key_len, table) == KBS_OK) {
        int tab = kbs_snp_verify_with_table(rep, len, table, &out2);
        if (tab != rc)
            report_fail(rep, len, "kbs_snp_verify_with_table %d, kbs_snp_verify %d", tab, rc);
    } else {
        int tab = kbs_snp_verify_with_table(rep, len, &never_precomputed, &out2);
        int bad = verify_with_bad_table_expected(parse, &parsed);
        if (tab != bad)
            report_fail(rep, len, "kbs_snp_verify_with_table on an empty table %d, expected %d", tab, bad);
    }
    free(table);
}

static void signed_report(struct reader *rd, BN_CTX *ctx)
{
    uint8_t flags = take_u8(rd), dseed[48], kseed[48], key[97], r[48], s[48], digest[48];
    uint16_t flip = take_u16(rd);
    take(rd, dseed, 48);
    take(rd, kseed, 48);
    uint8_t *rep = malloc(KBS_SNP_REPORT_SIZE); /* exact block */
    if (rep == NULL)
        fuzz_fail("out of memory");
    take(rd, rep, KBS_SNP_REPORT_SIZE);
    snp_make_wellformed(rep, flags & 1);
    int unsigned_report = ((get_le32(rep + 0x48) >> 2) & 7) == 7;

    BIGNUM *d = scalar_from(&FUZZ_P384, dseed, ctx), *k = scalar_from(&FUZZ_P384, kseed, ctx);
    public_key(&FUZZ_P384, d, key, ctx);
    if (kbs_sha384(rep, KBS_SNP_SIGNED_SIZE, digest) != KBS_OK)
        fuzz_fail("kbs_sha384");
    int have_sig = sign_with_nonce(&FUZZ_P384, d, k, digest, 48, r, s, ctx);
    BN_free(k);
    BN_free(d);
    if (!have_sig) {
        free(rep);
        return;
    }
    snp_put_scalar(rep + 0x2A0, r);
    snp_put_scalar(rep + 0x2E8, s);

    struct kbs_p384_key_table *table = malloc(sizeof *table);
    struct kbs_snp_report out;
    if (table == NULL || kbs_p384_key_precompute(key, sizeof key, table) != KBS_OK)
        fuzz_fail("kbs_p384_key_precompute refused a valid key");
    int want = unsigned_report ? KBS_ERR_SNP_UNSIGNED : KBS_OK;
    int cold = kbs_snp_verify(rep, KBS_SNP_REPORT_SIZE, key, sizeof key, &out);
    if (cold != want)
        report_fail(rep, KBS_SNP_REPORT_SIZE, "kbs_snp_verify %d on a report signed here, expected %d", cold, want);
    if (memcmp(out.signature_r, r, 48) != 0 || memcmp(out.signature_s, s, 48) != 0)
        fuzz_fail("the parsed signature is not the one written");
    int tab = kbs_snp_verify_with_table(rep, KBS_SNP_REPORT_SIZE, table, &out);
    if (tab != want)
        report_fail(rep, KBS_SNP_REPORT_SIZE, "kbs_snp_verify_with_table %d on a report signed here, expected %d",
                    tab, want);

    unsigned bit = flip % (KBS_SNP_REPORT_SIZE * 8 + 512); /* past the end: no flip */
    if (bit < KBS_SNP_REPORT_SIZE * 8) {
        rep[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cold = kbs_snp_verify(rep, KBS_SNP_REPORT_SIZE, key, sizeof key, &out);
        tab = kbs_snp_verify_with_table(rep, KBS_SNP_REPORT_SIZE, table, &out);
        if (cold == KBS_OK || tab != cold)
            report_fail(rep, KBS_SNP_REPORT_SIZE, "after one flipped bit: kbs_snp_verify %d, with_table %d", cold,
                        tab);
    }
    free(table);
    free(rep);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader rd = {data, size};
    if (take_u8(&rd) % 2 == 0) {
        given_key(&rd);
    } else {
        BN_CTX *ctx = BN_CTX_new();
        if (ctx == NULL)
            fuzz_fail("BN_CTX_new");
        signed_report(&rd, ctx);
        BN_CTX_free(ctx);
    }
    return 0;
}
