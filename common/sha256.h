/* sha256: FIPS 180-4 SHA-256, for checkpoint checksums and job keys. */
#ifndef SHA256_H
#define SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "sv_err.h"

struct sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
void sha256_final(struct sha256 *s, uint8_t out[32]);
/* Lower-case hex of 32 bytes into out[65]. */
void sha256_hex(const uint8_t digest[32], char out[65]);
/* Hashes a whole file (streamed); fills hex[65]. */
int sha256_file(const char *path, char hex[65], uint64_t *ret_size, struct sv_err *err);

#endif
