/* test_sha256: the FIPS 180-4 / NIST example vectors, padding edges, the
 * streaming API fed in uneven pieces, and sha256_file on files this test
 * writes (one spanning several read chunks). */
#include "sha256.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static char tmpdir[] = "/tmp/test_sha256.XXXXXX";

static void digest_hex(const void *data, size_t n, char out[65]) {
    struct sha256 s;
    uint8_t d[32];
    sha256_init(&s);
    sha256_update(&s, data, n);
    sha256_final(&s, d);
    sha256_hex(d, out);
}

#define EXPECT_HEX(got, want) do { sv_test_checks++; if (strcmp((got), (want)) != 0) { sv_test_failures++; \
    fprintf(stderr, "%s:%d: digest %s, want %s\n", __FILE__, __LINE__, (got), (want)); } } while (0)

static void test_nist(void) {
    char hex[65];
    digest_hex("", 0, hex);
    EXPECT_HEX(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    digest_hex("abc", 3, hex);
    EXPECT_HEX(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    static const char m448[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    digest_hex(m448, strlen(m448), hex);
    EXPECT_HEX(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    static const char m896[] = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
                               "lmnopqrsmnopqrstnopqrstu";
    digest_hex(m896, strlen(m896), hex);
    EXPECT_HEX(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");

    /* One million 'a', fed in 1000-byte updates as the NIST example suggests. */
    char block[1000];
    memset(block, 'a', sizeof block);
    struct sha256 s;
    uint8_t d[32];
    sha256_init(&s);
    for (int i = 0; i < 1000; i++)
        sha256_update(&s, block, sizeof block);
    sha256_final(&s, d);
    sha256_hex(d, hex);
    EXPECT_HEX(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Lengths around the 55/56/64-byte padding boundaries. */
static void test_padding_edges(void) {
    static const struct {
        size_t n;
        const char *hex;
    } cases[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {57, "f13b2d724659eb3bf47f2dd6af1accc87b81f09f59f2b75e5c0bed6589dfe8c6"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
        {128, "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"},
    };
    char a[128], hex[65];
    memset(a, 'a', sizeof a);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        digest_hex(a, cases[i].n, hex);
        EXPECT_HEX(hex, cases[i].hex);
    }
}

/* Any split of a message into two or three updates gives the one-shot digest. */
static void test_streaming_splits(void) {
    uint8_t msg[200];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)(i * 131 + 7);
    char want[65], hex[65];
    digest_hex(msg, sizeof msg, want);
    int bad = 0;
    for (size_t i = 0; i <= sizeof msg; i++) {
        for (size_t j = i; j <= sizeof msg; j += 7) {
            struct sha256 s;
            uint8_t d[32];
            sha256_init(&s);
            sha256_update(&s, msg, i);
            sha256_update(&s, msg + i, j - i);
            sha256_update(&s, msg + j, sizeof msg - j);
            sha256_final(&s, d);
            sha256_hex(d, hex);
            bad += strcmp(hex, want) != 0;
        }
    }
    SV_ASSERT_EQ(bad, 0);
}

static void test_file(void) {
    char path[256], hex[65], want[65];
    struct sv_err err = {0};
    uint64_t size = 0;

    /* 3 MiB + 17 bytes of a pseudo-random pattern: several read chunks and a
     * partial last block. */
    size_t n = (3u << 20) + 17;
    uint8_t *data = malloc(n);
    SV_CHECK(data != NULL);
    if (!data)
        return;
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data[i] = (uint8_t)x;
    }
    snprintf(path, sizeof path, "%s/big.bin", tmpdir);
    FILE *f = fopen(path, "wb");
    SV_CHECK(f != NULL);
    if (f) {
        SV_ASSERT_EQ(fwrite(data, 1, n, f), n);
        fclose(f);
    }
    digest_hex(data, n, want);
    SV_ASSERT_EQ(sha256_file(path, hex, &size, &err), 0);
    EXPECT_HEX(hex, want);
    SV_ASSERT_EQ(size, n);
    free(data);

    snprintf(path, sizeof path, "%s/abc.txt", tmpdir);
    f = fopen(path, "wb");
    SV_CHECK(f != NULL);
    if (f) {
        fputs("abc", f);
        fclose(f);
    }
    SV_ASSERT_EQ(sha256_file(path, hex, NULL, &err), 0);  /* ret_size may be NULL */
    EXPECT_HEX(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    snprintf(path, sizeof path, "%s/empty", tmpdir);
    f = fopen(path, "wb");
    if (f)
        fclose(f);
    SV_ASSERT_EQ(sha256_file(path, hex, &size, &err), 0);
    EXPECT_HEX(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    SV_ASSERT_EQ(size, 0);

    snprintf(path, sizeof path, "%s/missing", tmpdir);
    SV_ASSERT_EQ(sha256_file(path, hex, &size, &err), -ENOENT);
    SV_ASSERT_EQ(err.code, -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, path);

    SV_ASSERT_EQ(sha256_file(tmpdir, hex, &size, &err), -EISDIR);  /* a directory reads as an error */
    SV_ASSERT_STR_CONTAINS(err.msg, tmpdir);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_nist();
    test_padding_edges();
    test_streaming_splits();
    test_file();

    char cmd[64 + sizeof tmpdir];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return sv_test_result("sha256");
}
