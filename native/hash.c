/* SHA-384 and SHA-256 through libcrypto's one-shot digest (thread-safe, no shared state). */
#include <openssl/evp.h>

#include "kbs_native.h"

int kbs_sha384(const uint8_t *buf, size_t len, uint8_t *digest_out)
{
    if ((buf == NULL && len != 0) || digest_out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    unsigned int digest_len = 0;
    if (EVP_Digest(buf, len, digest_out, &digest_len, EVP_sha384(), NULL) != 1 || digest_len != 48)
        return KBS_ERR_INTERNAL;
    return KBS_OK;
}

int kbs_sha256(const uint8_t *buf, size_t len, uint8_t *digest_out)
{
    if ((buf == NULL && len != 0) || digest_out == NULL)
        return KBS_ERR_NULL_ARGUMENT;
    unsigned int digest_len = 0;
    if (EVP_Digest(buf, len, digest_out, &digest_len, EVP_sha256(), NULL) != 1 || digest_len != 32)
        return KBS_ERR_INTERNAL;
    return KBS_OK;
}
