/* test_st: the safetensors reader and writer.
 *
 * Opens both bundled models, round-trips stories260K through the writer in
 * F32, F16 and BF16, splits it into a two-shard model with an index, checks
 * the half conversions exhaustively, and feeds the reader one malformed file
 * per validation rule. Runs from the source root; scratch files go to a
 * mkdtemp directory under /tmp that is removed at the end. */
#include "st.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define M656K "tests/data/tinystories-656K"
#define M260K "tests/data/stories260K-hf"

static char tmpdir[64];

static const char *tpath(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", tmpdir, name);
    return buf;
}

static int write_file(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t k = n ? fwrite(buf, 1, n, f) : 0;
    return fclose(f) == 0 && k == n ? 0 : -1;
}

/* Reads a whole (small) file; tests may, the reader must not. */
static unsigned char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(len > 0 ? (size_t)len : 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Builds a safetensors file: length prefix, HEADER verbatim, then DLEN data
 * bytes (DATA, or zeros if NULL). */
static int write_st(const char *path, const char *header, const void *data, size_t dlen) {
    size_t hlen = strlen(header);
    unsigned char *buf = calloc(1, 8 + hlen + dlen);
    if (!buf)
        return -1;
    put_u64(buf, hlen);
    memcpy(buf + 8, header, hlen);
    if (data)
        memcpy(buf + 8 + hlen, data, dlen);
    int r = write_file(path, buf, 8 + hlen + dlen);
    free(buf);
    return r;
}

static int open_bytes(const void *bytes, size_t n, struct sv_err *err) {
    char p[128];
    struct st_model *m = NULL;
    tpath(p, sizeof p, "bad.safetensors");
    if (write_file(p, bytes, n) < 0)
        return 1;
    sv_err_clear(err);
    int r = st_open_file(&m, p, err);
    st_free(m);
    return r;
}

static int open_header(const char *header, size_t dlen, struct sv_err *err) {
    char p[128];
    struct st_model *m = NULL;
    tpath(p, sizeof p, "bad.safetensors");
    if (write_st(p, header, NULL, dlen) < 0)
        return 1;
    sv_err_clear(err);
    int r = st_open_file(&m, p, err);
    st_free(m);
    return r;
}

/* Every rejection must fail, say why, and name the file. */
#define EXPECT_BAD_RESULT(r, e, needle) do { \
    SV_CHECK((r) < 0); \
    SV_ASSERT_STR_CONTAINS((e).msg, needle); \
    SV_ASSERT_STR_CONTAINS((e).msg, "bad.safetensors"); } while (0)
#define EXPECT_BAD_HEADER(hdr, dlen, needle) do { struct sv_err e_; int r_ = open_header(hdr, dlen, &e_); \
    EXPECT_BAD_RESULT(r_, e_, needle); } while (0)
#define EXPECT_BAD_BYTES(buf, n, needle) do { struct sv_err e_; int r_ = open_bytes(buf, n, &e_); \
    EXPECT_BAD_RESULT(r_, e_, needle); } while (0)

/* ---- the bundled models ---- */

static void test_tinystories656k(void) {
    struct st_model *m = NULL;
    struct sv_err err = {0};
    int r = st_open(&m, M656K, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return;
    }
    SV_ASSERT_EQ(st_count(m), 20);
    SV_ASSERT_EQ(st_shard_count(m), 1);
    SV_ASSERT_STR_CONTAINS(st_shard_path(m, 0), "tinystories-656K/model.safetensors");
    SV_CHECK(st_shard_path(m, 1) == NULL);

    const struct st_tensor *head = st_find(m, "lm_head.weight");
    SV_CHECK(head != NULL);
    if (!head)
        goto out;
    SV_ASSERT_EQ(head->dtype, ST_F32);
    SV_ASSERT_EQ(head->ndim, 2);
    SV_ASSERT_EQ(head->shape[0], 2048);
    SV_ASSERT_EQ(head->shape[1], 128);
    SV_ASSERT_EQ(head->nelem, 2048 * 128);
    SV_ASSERT_EQ(head->nbytes, 2048 * 128 * 4);

    /* The tie: only lm_head.weight is stored; __metadata__ aliases the embedding. */
    const struct st_tensor *emb = st_find(m, "model.embed_tokens.weight");
    SV_CHECK(emb == head);
    SV_CHECK(st_find(m, "format") == NULL);  /* plain metadata is not an alias */
    SV_CHECK(st_find(m, "pt") == NULL);
    SV_CHECK(st_find(m, "model.layers.2.mlp.up_proj.weight") == NULL);

    const struct st_tensor *t = st_find(m, "model.layers.1.self_attn.k_proj.weight");
    SV_CHECK(t && t->ndim == 2 && t->shape[0] == 64 && t->shape[1] == 128);
    t = st_find(m, "model.norm.weight");
    SV_CHECK(t && t->ndim == 1 && t->shape[0] == 128 && t->dtype == ST_F32);
    t = st_find(m, "model.layers.0.mlp.down_proj.weight");
    SV_CHECK(t && t->shape[0] == 128 && t->shape[1] == 384);

    /* The table is sorted and every entry findable. */
    for (size_t i = 0; i < st_count(m); i++) {
        const struct st_tensor *g = st_get(m, i);
        SV_CHECK(st_find(m, g->name) == g);
        if (i)
            SV_CHECK(strcmp(st_get(m, i - 1)->name, g->name) < 0);
    }
    SV_CHECK(st_get(m, st_count(m)) == NULL);

    /* Reading through the alias gives the stored values (checked against python's struct). */
    float *buf = malloc(2048 * 128 * sizeof *buf);
    r = st_read_f32_shape(m, "model.embed_tokens.weight", 2048, 128, buf, &err);
    SV_ASSERT_EQ(r, 0);
    SV_ASSERT_NEAR_REL(buf[0], -0.68359375, 0);
    SV_ASSERT_NEAR_REL(buf[1], -0.02587890625, 0);
    SV_ASSERT_NEAR_REL(buf[2], 0.58984375, 0);
    float first = buf[2048 * 128 - 1];
    /* Release drops pages; reading again must still see the file's values. */
    st_release(m, "lm_head.weight");
    st_release(m, "model.embed_tokens.weight");
    st_release(m, "no.such.tensor");
    memset(buf, 0, 2048 * 128 * sizeof *buf);
    SV_ASSERT_EQ(st_read_f32(m, "lm_head.weight", buf, 2048 * 128, &err), 0);
    SV_CHECK(buf[2048 * 128 - 1] == first);
    SV_ASSERT_NEAR_REL(buf[0], -0.68359375, 0);

    /* Shape and count errors name the tensor and both shapes. */
    r = st_read_f32_shape(m, "lm_head.weight", 128, 2048, buf, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'lm_head.weight'");
    SV_ASSERT_STR_CONTAINS(err.msg, "shape [2048, 128], expected [128, 2048]");
    SV_ASSERT_STR_CONTAINS(err.msg, "model.safetensors");
    r = st_read_f32_shape(m, "model.norm.weight", 128, 1, buf, &err);
    SV_ASSERT_STR_CONTAINS(err.msg, "shape [128], expected [128, 1]");
    SV_ASSERT_EQ(st_read_f32_shape(m, "model.norm.weight", 128, -1, buf, &err), 0);
    r = st_read_f32(m, "lm_head.weight", buf, 100, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "caller expects 100 elements but shape [2048, 128] has 262144");
    r = st_read_f32(m, "no.such.tensor", buf, 1, &err);
    SV_ASSERT_EQ(r, -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'no.such.tensor' not found");
    free(buf);
out:
    st_free(m);
}

static void test_stories260k(void) {
    struct st_model *m = NULL;
    struct sv_err err = {0};
    int r = st_open(&m, M260K, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0)
        return;
    SV_ASSERT_EQ(st_count(m), 48);
    uint64_t total = 0;
    for (size_t i = 0; i < st_count(m); i++) {
        SV_ASSERT_EQ(st_get(m, i)->dtype, ST_F32);
        SV_ASSERT_EQ(st_get(m, i)->shard, 0);
        total += st_get(m, i)->nbytes;
    }
    /* Tensors tile the data section exactly: file 1176152 = 8 + 4944 header + data. */
    SV_ASSERT_EQ(total, 1176152 - 8 - 4944);
    const struct st_tensor *head = st_find(m, "lm_head.weight"), *emb = st_find(m, "model.embed_tokens.weight");
    SV_CHECK(head && emb && head != emb && head->data != emb->data);  /* untied */
    SV_CHECK(emb && emb->shape[0] == 512 && emb->shape[1] == 64);
    for (int l = 0; l < 5; l++) {
        char n[ST_MAX_NAME];
        snprintf(n, sizeof n, "model.layers.%d.self_attn.q_proj.weight", l);
        const struct st_tensor *t = st_find(m, n);
        SV_CHECK(t && t->shape[0] == 64 && t->shape[1] == 64);
        snprintf(n, sizeof n, "model.layers.%d.self_attn.k_proj.weight", l);
        t = st_find(m, n);
        SV_CHECK(t && t->shape[0] == 32 && t->shape[1] == 64);
        snprintf(n, sizeof n, "model.layers.%d.mlp.gate_proj.weight", l);
        t = st_find(m, n);
        SV_CHECK(t && t->shape[0] == 172 && t->shape[1] == 64);
        snprintf(n, sizeof n, "model.layers.%d.mlp.down_proj.weight", l);
        t = st_find(m, n);
        SV_CHECK(t && t->shape[0] == 64 && t->shape[1] == 172);
    }
    SV_CHECK(st_find(m, "model.layers.5.mlp.down_proj.weight") == NULL);
    float v[64];
    SV_ASSERT_EQ(st_read_f32_shape(m, "model.norm.weight", 64, -1, v, &err), 0);
    uint32_t bits;
    memcpy(&bits, &v[0], 4);
    SV_ASSERT_EQ(bits, 0x401d54efu);
    memcpy(&bits, &v[3], 4);
    SV_ASSERT_EQ(bits, 0x3f8dcd6fu);
    st_free(m);
}

/* ---- conversions ---- */

static uint32_t fbits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

static float bitsf(uint32_t x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static void test_f16(void) {
    SV_ASSERT_EQ(st_f32_to_f16(0.0f), 0x0000);
    SV_ASSERT_EQ(st_f32_to_f16(-0.0f), 0x8000);
    SV_ASSERT_EQ(st_f32_to_f16(1.0f), 0x3c00);
    SV_ASSERT_EQ(st_f32_to_f16(-2.0f), 0xc000);
    SV_ASSERT_EQ(st_f32_to_f16(INFINITY), 0x7c00);
    SV_ASSERT_EQ(st_f32_to_f16(-INFINITY), 0xfc00);
    SV_ASSERT_EQ(st_f32_to_f16(65504.0f), 0x7bff);          /* max */
    SV_ASSERT_EQ(st_f32_to_f16(65519.99f), 0x7bff);         /* below the halfway point */
    SV_ASSERT_EQ(st_f32_to_f16(65520.0f), 0x7c00);          /* tie, odd max: to even = inf */
    SV_ASSERT_EQ(st_f32_to_f16(1e10f), 0x7c00);
    SV_ASSERT_EQ(st_f32_to_f16(-1e10f), 0xfc00);
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(1, -14)), 0x0400);    /* smallest normal */
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(1023, -24)), 0x03ff); /* largest subnormal */
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(1, -24)), 0x0001);    /* smallest subnormal */
    SV_ASSERT_EQ(st_f32_to_f16(-ldexpf(1, -24)), 0x8001);
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(1, -25)), 0x0000);    /* tie: to even = 0 */
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(3, -26)), 0x0001);    /* 0.75 unit rounds up */
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(3, -25)), 0x0002);    /* 1.5 units: tie to even 2 */
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(5, -25)), 0x0002);    /* 2.5 units: tie to even 2 */
    SV_ASSERT_EQ(st_f32_to_f16(ldexpf(2047, -25)), 0x0400); /* 1023.5 units: up into the normals */
    SV_ASSERT_EQ(st_f32_to_f16(1e-30f), 0x0000);
    SV_ASSERT_EQ(st_f32_to_f16(bitsf(0x00000001)), 0x0000); /* f32 subnormal */
    SV_ASSERT_EQ(st_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00); /* tie, even stays */
    SV_ASSERT_EQ(st_f32_to_f16(1.0f + ldexpf(3, -11)), 0x3c02); /* tie, odd rounds up */
    SV_ASSERT_EQ(st_f32_to_f16(2047.5f), 0x6800);           /* tie between 2047 (odd) and 2048 */
    SV_ASSERT_EQ(st_f32_to_f16(2046.5f), 0x67fe);           /* tie between 2046 (even) and 2047 */
    uint16_t hn = st_f32_to_f16(NAN);
    SV_CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0);
    hn = st_f32_to_f16(bitsf(0x7f800001)); /* payload only in bits f16 drops */
    SV_CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0);
    hn = st_f32_to_f16(bitsf(0xff800001));
    SV_CHECK((hn & 0xfc00) == 0xfc00 && (hn & 0x3ff) != 0);

    SV_CHECK(st_f16_to_f32(0x0000) == 0.0f && !signbit(st_f16_to_f32(0x0000)));
    SV_CHECK(st_f16_to_f32(0x8000) == 0.0f && signbit(st_f16_to_f32(0x8000)));
    SV_CHECK(st_f16_to_f32(0x0001) == ldexpf(1, -24));
    SV_CHECK(st_f16_to_f32(0x03ff) == ldexpf(1023, -24));
    SV_CHECK(st_f16_to_f32(0x0400) == ldexpf(1, -14));
    SV_CHECK(st_f16_to_f32(0x7bff) == 65504.0f);
    SV_CHECK(st_f16_to_f32(0x3555) == 0.333251953125f);
    SV_CHECK(isinf(st_f16_to_f32(0x7c00)) && st_f16_to_f32(0x7c00) > 0);
    SV_CHECK(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
    SV_CHECK(isnan(st_f16_to_f32(0x7e00)) && isnan(st_f16_to_f32(0x7c01)) && isnan(st_f16_to_f32(0xfe00)));

    /* Every half survives f16 -> f32 -> f16 unchanged (NaNs stay NaN). */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_f16(f);
        int is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (is_nan ? !isnan(f) || (back & 0x7c00) != 0x7c00 || !(back & 0x3ff) || (back & 0x8000) != (h & 0x8000)
                   : back != h)
            bad++;
    }
    SV_ASSERT_EQ(bad, 0);

    /* Random finite floats in the half range: the result is a nearest half,
     * and ties (midpoints of adjacent halves) go to the even one. */
    bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t x = 0x33000000u + rng() % (0x477fe000u - 0x33000000u);
        float f = bitsf(x);
        uint16_t h = st_f32_to_f16(f);
        double y = st_f16_to_f32(h), lo = h ? st_f16_to_f32((uint16_t)(h - 1)) : -1e9,
               hi = st_f16_to_f32((uint16_t)(h + 1));
        double d = fabs(f - y);
        if (d > fabs(f - lo) || d > fabs(f - hi) || (d == fabs(f - lo) && (h & 1)) || (d == fabs(f - hi) && (h & 1)))
            bad++;
        if (st_f32_to_f16(-f) != (h | 0x8000))
            bad++;
        /* Exact midpoint between h and h+1. */
        uint16_t a = (uint16_t)(rng() % 0x7bff);
        float mid = (float)(((double)st_f16_to_f32(a) + st_f16_to_f32((uint16_t)(a + 1))) / 2);
        if (st_f32_to_f16(mid) != ((a & 1) ? a + 1 : a))
            bad++;
    }
    SV_ASSERT_EQ(bad, 0);
}

static void test_bf16(void) {
    SV_ASSERT_EQ(st_f32_to_bf16(0.0f), 0x0000);
    SV_ASSERT_EQ(st_f32_to_bf16(-0.0f), 0x8000);
    SV_ASSERT_EQ(st_f32_to_bf16(1.0f), 0x3f80);
    SV_ASSERT_EQ(st_f32_to_bf16(INFINITY), 0x7f80);
    SV_ASSERT_EQ(st_f32_to_bf16(-INFINITY), 0xff80);
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x7f7f0000)), 0x7f7f);   /* bf16 max */
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x7f7fffff)), 0x7f80);   /* FLT_MAX rounds past it: inf */
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x7f7f7fff)), 0x7f7f);
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x3f808000)), 0x3f80);   /* tie, even stays */
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x3f818000)), 0x3f82);   /* tie, odd rounds up */
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x3f808001)), 0x3f81);
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x00010000)), 0x0001);   /* subnormal kept */
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x00008000)), 0x0000);   /* subnormal tie to even 0 */
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x00018000)), 0x0002);
    SV_ASSERT_EQ(st_f32_to_bf16(bitsf(0x007fffff)), 0x0080);   /* largest subnormal rounds to min normal */
    uint16_t hn = st_f32_to_bf16(bitsf(0x7f800001));           /* payload only in dropped bits */
    SV_CHECK((hn & 0x7f80) == 0x7f80 && (hn & 0x7f) != 0);
    hn = st_f32_to_bf16(-NAN);
    SV_CHECK((hn & 0xff80) == 0xff80 && (hn & 0x7f) != 0);
    SV_CHECK(st_bf16_to_f32(0x3f80) == 1.0f);
    SV_CHECK(st_bf16_to_f32(0x0001) == bitsf(0x00010000));
    SV_CHECK(isinf(st_bf16_to_f32(0xff80)) && st_bf16_to_f32(0xff80) < 0);
    SV_CHECK(isnan(st_bf16_to_f32(0x7fc0)));
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        if (isnan(f) ? !isnan(st_bf16_to_f32(st_f32_to_bf16(f))) : st_f32_to_bf16(f) != h)
            bad++;
    }
    SV_ASSERT_EQ(bad, 0);
    bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t x = rng() & 0x7f7fffffu;
        uint16_t h = st_f32_to_bf16(bitsf(x));
        uint32_t low = x & 0xffff, t = x >> 16;
        uint16_t want = (uint16_t)(low > 0x8000 || (low == 0x8000 && (t & 1)) ? t + 1 : t);
        if (h != want)
            bad++;
    }
    SV_ASSERT_EQ(bad, 0);
}

/* ---- writer round trips ---- */

/* Writes every tensor of SRC to PATH as DTYPE, in SRC's order, with optional metadata. */
static int copy_model(const struct st_model *src, const char *path, enum st_dtype dtype, int with_meta,
                      struct sv_err *err) {
    struct st_writer *w = NULL;
    float *buf = NULL;
    int r;
    if ((r = st_writer_new(&w, path, err)) < 0)
        return r;
    if (with_meta && ((r = st_writer_meta(w, "format", "pt", err)) < 0 ||
                      (r = st_writer_meta(w, "model.embed_tokens.weight", "lm_head.weight", err)) < 0))
        goto fail;
    for (size_t i = 0; i < st_count(src); i++) {
        const struct st_tensor *t = st_get(src, i);
        if ((r = st_writer_declare(w, t->name, dtype, t->ndim, t->shape, err)) < 0)
            goto fail;
    }
    for (size_t i = 0; i < st_count(src); i++) {
        const struct st_tensor *t = st_get(src, i);
        if (!(buf = malloc(t->nelem * sizeof *buf))) {
            r = -ENOMEM;
            goto fail;
        }
        if ((r = st_read_f32(src, t->name, buf, t->nelem, err)) < 0 ||
            (r = st_writer_write_f32(w, t->name, buf, t->nelem, err)) < 0)
            goto fail;
        free(buf);
        buf = NULL;
    }
    return st_writer_finish(w, err);
fail:
    free(buf);
    st_writer_free(w);
    return r;
}

static void check_copy(const struct st_model *src, const char *path, enum st_dtype dtype) {
    struct st_model *m = NULL;
    struct sv_err err = {0};
    int r = st_open_file(&m, path, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return;
    }
    SV_ASSERT_EQ(st_count(m), st_count(src));
    double tol = dtype == ST_F16 ? ldexp(1, -11) : dtype == ST_BF16 ? ldexp(1, -8) : 0;
    long bad = 0, checked = 0;
    for (size_t i = 0; i < st_count(src) && i < st_count(m); i++) {
        const struct st_tensor *a = st_get(src, i), *b = st_get(m, i);
        SV_CHECK(strcmp(a->name, b->name) == 0);
        SV_ASSERT_EQ(b->dtype, dtype);
        SV_ASSERT_EQ(b->ndim, a->ndim);
        for (int d = 0; d < a->ndim; d++)
            SV_ASSERT_EQ(b->shape[d], a->shape[d]);
        float *x = malloc(a->nelem * sizeof *x), *y = malloc(a->nelem * sizeof *y);
        SV_ASSERT_EQ(st_read_f32(src, a->name, x, a->nelem, &err), 0);
        SV_ASSERT_EQ(st_read_f32(m, b->name, y, b->nelem, &err), 0);
        for (uint64_t k = 0; k < a->nelem; k++) {
            double ax = fabs(x[k]);
            checked++;
            if (dtype == ST_F32) {
                bad += fbits(x[k]) != fbits(y[k]);
            } else if (dtype == ST_F16 && ax < ldexp(1, -14)) {
                bad += fabs(x[k] - y[k]) > ldexp(1, -25);  /* subnormal: half a unit absolute */
            } else {
                bad += fabs(x[k] - y[k]) > tol * ax;
            }
        }
        free(x);
        free(y);
    }
    SV_ASSERT_EQ(bad, 0);
    SV_CHECK(checked == (1176152 - 8 - 4944) / 4);
    st_free(m);
}

static int files_equal(const char *a, const char *b) {
    size_t na, nb;
    unsigned char *x = read_file(a, &na), *y = read_file(b, &nb);
    int eq = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return eq;
}

static void test_round_trip(void) {
    struct st_model *src = NULL;
    struct sv_err err = {0};
    char p[128], q[128];
    SV_ASSERT_EQ(st_open(&src, M260K, &err), 0);
    if (!src)
        return;
    const enum st_dtype types[3] = {ST_F32, ST_F16, ST_BF16};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/copy-%s.safetensors", tmpdir, st_dtype_name(types[i]));
        int r = copy_model(src, p, types[i], 0, &err);
        SV_ASSERT_EQ(r, 0);
        if (r < 0) {
            fprintf(stderr, "%s\n", err.msg);
            continue;
        }
        check_copy(src, p, types[i]);
        /* Determinism: the same input again gives the same bytes. */
        snprintf(q, sizeof q, "%s/copy-%s-again.safetensors", tmpdir, st_dtype_name(types[i]));
        SV_ASSERT_EQ(copy_model(src, q, types[i], 0, &err), 0);
        SV_CHECK(files_equal(p, q));
        unlink(q);
    }

    /* An F32 copy of a file in sorted order has exactly the original data section. */
    size_t n0, n1;
    unsigned char *orig = read_file(M260K "/model.safetensors", &n0);
    unsigned char *copy = read_file(tpath(p, sizeof p, "copy-F32.safetensors"), &n1);
    SV_CHECK(orig && copy);
    if (orig && copy) {
        uint64_t h0 = 0, h1 = 0;
        for (int i = 7; i >= 0; i--) {
            h0 = (h0 << 8) | orig[i];
            h1 = (h1 << 8) | copy[i];
        }
        SV_ASSERT_EQ(h1 % 8, 0);  /* padded so data is 8-byte aligned */
        SV_ASSERT_EQ(n1 - 8 - h1, n0 - 8 - h0);
        SV_CHECK(n1 - 8 - h1 == n0 - 8 - h0 && memcmp(orig + 8 + h0, copy + 8 + h1, n0 - 8 - h0) == 0);
        SV_CHECK(copy[8 + h1 - 1] == ' ' || copy[8 + h1 - 1] == '}');
    }
    free(orig);
    free(copy);

    /* Metadata goes first; a written alias resolves on reading; determinism with metadata. */
    struct st_model *t656 = NULL;
    SV_ASSERT_EQ(st_open(&t656, M656K, &err), 0);
    tpath(p, sizeof p, "tied.safetensors");
    tpath(q, sizeof q, "tied-again.safetensors");
    SV_ASSERT_EQ(copy_model(t656, p, ST_BF16, 1, &err), 0);
    SV_ASSERT_EQ(copy_model(t656, q, ST_BF16, 1, &err), 0);
    SV_CHECK(files_equal(p, q));
    copy = read_file(p, &n1);
    const char *head = "{\"__metadata__\":{\"format\":\"pt\",\"model.embed_tokens.weight\":\"lm_head.weight\"},"
                       "\"lm_head.weight\":{\"dtype\":\"BF16\",\"shape\":[2048,128],\"data_offsets\":[0,524288]},";
    SV_CHECK(copy && n1 > 200 && memcmp(copy + 8, head, strlen(head)) == 0);
    free(copy);
    struct st_model *m = NULL;
    SV_ASSERT_EQ(st_open_file(&m, p, &err), 0);
    SV_ASSERT_EQ(st_count(m), 20);
    SV_CHECK(m && st_find(m, "model.embed_tokens.weight") == st_find(m, "lm_head.weight"));
    SV_CHECK(m && st_find(m, "lm_head.weight")->dtype == ST_BF16);
    /* tinystories-656K's weights happen to be exact bf16 values: the copy is lossless. */
    if (m) {
        float *x = malloc(2048 * 128 * sizeof *x), *y = malloc(2048 * 128 * sizeof *y);
        SV_ASSERT_EQ(st_read_f32_shape(t656, "lm_head.weight", 2048, 128, x, &err), 0);
        SV_ASSERT_EQ(st_read_f32_shape(m, "model.embed_tokens.weight", 2048, 128, y, &err), 0);
        SV_CHECK(memcmp(x, y, 2048 * 128 * sizeof *x) == 0);
        free(x);
        free(y);
    }
    st_free(m);
    st_free(t656);
    unlink(p);
    unlink(q);
    st_free(src);
}

/* Declaration order, scalars, empty tensors, raw writes, header layout. */
static void test_writer_layout(void) {
    struct st_writer *w = NULL;
    struct sv_err err = {0};
    char p[128];
    tpath(p, sizeof p, "layout.safetensors");
    SV_ASSERT_EQ(st_writer_new(&w, p, &err), 0);
    int64_t s1[1] = {3}, s0[2] = {0, 4}, s2[2] = {2, 2};
    SV_ASSERT_EQ(st_writer_declare(w, "z.first", ST_F32, 1, s1, &err), 0);
    SV_ASSERT_EQ(st_writer_declare(w, "a.scalar", ST_F16, 0, NULL, &err), 0);
    SV_ASSERT_EQ(st_writer_declare(w, "m.empty", ST_BF16, 2, s0, &err), 0);
    SV_ASSERT_EQ(st_writer_declare(w, "b.int", ST_I32, 2, s2, &err), 0);
    float v[3] = {1.5f, -2.25f, 1e-3f};
    int32_t iv[4] = {1, -2, 3, 1 << 30};
    SV_ASSERT_EQ(st_writer_write_f32(w, "z.first", v, 3, &err), 0);
    SV_ASSERT_EQ(st_writer_write_f32(w, "a.scalar", v + 1, 1, &err), 0);
    SV_ASSERT_EQ(st_writer_write_f32(w, "m.empty", NULL, 0, &err), 0);
    SV_ASSERT_EQ(st_writer_write_raw(w, "b.int", iv, sizeof iv, &err), 0);
    SV_ASSERT_EQ(st_writer_finish(w, &err), 0);
    char tmp[140];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    SV_CHECK(access(tmp, F_OK) != 0);  /* renamed away */

    size_t n;
    unsigned char *b = read_file(p, &n);
    SV_CHECK(b != NULL);
    if (!b)
        return;
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | b[i];
    SV_ASSERT_EQ(h % 8, 0);
    SV_ASSERT_EQ(n, 8 + h + 12 + 2 + 0 + 16);
    char *hdr = strndup((char *)b + 8, h);
    const char *want = "{\"z.first\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                       "\"a.scalar\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[12,14]},"
                       "\"m.empty\":{\"dtype\":\"BF16\",\"shape\":[0,4],\"data_offsets\":[14,14]},"
                       "\"b.int\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[14,30]}}";
    SV_CHECK(strncmp(hdr, want, strlen(want)) == 0);
    for (size_t i = strlen(want); i < h; i++)
        SV_CHECK(hdr[i] == ' ');
    free(hdr);
    free(b);

    struct st_model *m = NULL;
    SV_ASSERT_EQ(st_open_file(&m, p, &err), 0);
    if (!m)
        return;
    float out[3];
    SV_ASSERT_EQ(st_read_f32(m, "z.first", out, 3, &err), 0);
    SV_CHECK(memcmp(out, v, sizeof v) == 0);
    const struct st_tensor *t = st_find(m, "a.scalar");
    SV_CHECK(t && t->ndim == 0 && t->nelem == 1 && t->nbytes == 2);
    SV_ASSERT_EQ(st_read_f32(m, "a.scalar", out, 1, &err), 0);
    SV_CHECK(out[0] == -2.25f);
    t = st_find(m, "m.empty");
    SV_CHECK(t && t->nelem == 0 && t->nbytes == 0);
    SV_ASSERT_EQ(st_read_f32(m, "m.empty", out, 0, &err), 0);
    st_release(m, "m.empty");
    t = st_find(m, "b.int");
    SV_CHECK(t && t->dtype == ST_I32 && memcmp(t->data, iv, sizeof iv) == 0);
    int r = st_read_f32(m, "b.int", out, 4, &err);
    SV_ASSERT_EQ(r, -ENOTSUP);
    SV_ASSERT_STR_CONTAINS(err.msg, "dtype 'I32' not supported");
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'b.int'");
    st_free(m);
    unlink(p);
}

static void test_writer_errors(void) {
    struct st_writer *w = NULL;
    struct sv_err err = {0};
    char p[128], tmp[140];
    int64_t s[2] = {2, 3};
    float v[6] = {0};
    tpath(p, sizeof p, "werr.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", p);

    SV_ASSERT_EQ(st_writer_new(&w, p, &err), 0);
    SV_CHECK(access(tmp, F_OK) == 0);
    SV_ASSERT_EQ(st_writer_meta(w, "k", "v", &err), 0);
    SV_CHECK(st_writer_meta(w, "k", "w", &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "metadata key 'k' added twice");
    SV_ASSERT_EQ(st_writer_declare(w, "a", ST_F32, 2, s, &err), 0);
    SV_ASSERT_EQ(st_writer_declare(w, "b", ST_F16, 2, s, &err), 0);
    SV_ASSERT_EQ(st_writer_declare(w, "c", ST_BF16, 2, s, &err), 0);
    SV_CHECK(st_writer_meta(w, "late", "x", &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "after tensors were declared");
    SV_CHECK(st_writer_declare(w, "a", ST_F32, 2, s, &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'a': declared twice");
    SV_CHECK(st_writer_declare(w, "__metadata__", ST_F32, 2, s, &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "invalid name");
    int64_t neg[2] = {2, -1}, huge[3] = {INT64_MAX, INT64_MAX, 2};
    SV_CHECK(st_writer_declare(w, "neg", ST_F32, 2, neg, &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "negative dimension in shape [2, -1]");
    SV_CHECK(st_writer_declare(w, "huge", ST_F32, 3, huge, &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "overflows");
    SV_CHECK(st_writer_declare(w, "dims", ST_F32, ST_MAX_DIMS + 1, s, &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "9 dimensions");

    int r = st_writer_write_f32(w, "b", v, 6, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'b': written out of order, expected 'a' next");
    SV_ASSERT_STR_CONTAINS(err.msg, "werr.safetensors");
    r = st_writer_write_f32(w, "nope", v, 6, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'nope': not declared");
    r = st_writer_write_f32(w, "a", v, 5, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'a': 5 elements given, declared shape [2, 3] has 6");
    r = st_writer_write_raw(w, "a", v, 23, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'a': 23 bytes given, declared F32 tensor has 24");
    SV_ASSERT_EQ(st_writer_write_f32(w, "a", v, 6, &err), 0);
    r = st_writer_write_f32(w, "a", v, 6, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'a': already written");
    SV_CHECK(st_writer_declare(w, "d", ST_F32, 2, s, &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "declared after data writing started");
    SV_ASSERT_EQ(st_writer_write_f32(w, "b", v, 6, &err), 0);
    r = st_writer_finish(w, &err);  /* frees w */
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "tensor 'c': declared but not written (2 of 3 written)");
    SV_CHECK(access(p, F_OK) != 0 && access(tmp, F_OK) != 0);

    /* Abandoning removes the temp file; NULL is accepted. */
    SV_ASSERT_EQ(st_writer_new(&w, p, &err), 0);
    SV_ASSERT_EQ(st_writer_declare(w, "x", ST_I8, 2, s, &err), 0);
    r = st_writer_write_f32(w, "x", v, 6, &err);
    SV_ASSERT_EQ(r, -ENOTSUP);
    SV_ASSERT_STR_CONTAINS(err.msg, "cannot convert f32 to dtype 'I8'");
    st_writer_free(w);
    st_writer_free(NULL);
    SV_CHECK(access(tmp, F_OK) != 0);

    /* A rejected write leaves declarations open: nothing was written yet. */
    SV_ASSERT_EQ(st_writer_new(&w, p, &err), 0);
    SV_ASSERT_EQ(st_writer_declare(w, "a", ST_F32, 2, s, &err), 0);
    SV_CHECK(st_writer_write_f32(w, "a", v, 1, &err) < 0);
    SV_ASSERT_EQ(st_writer_declare(w, "b", ST_F32, 2, s, &err), 0);
    SV_CHECK(st_writer_declare(w, "bad\xff", ST_F32, 2, s, &err) < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "not valid UTF-8");
    st_writer_free(w);

    /* A full disk: PATH.tmp is a symlink to /dev/full, so write() fails with ENOSPC. */
    if (symlink("/dev/full", tmp) == 0) {
        SV_ASSERT_EQ(st_writer_new(&w, p, &err), 0);
        SV_ASSERT_EQ(st_writer_declare(w, "a", ST_F32, 2, s, &err), 0);
        r = st_writer_write_f32(w, "a", v, 6, &err);
        SV_ASSERT_EQ(r, -ENOSPC);
        SV_ASSERT_STR_CONTAINS(err.msg, "werr.safetensors.tmp': write failed: No space left on device");
        r = st_writer_finish(w, &err);
        SV_CHECK(r < 0);
        SV_CHECK(access(p, F_OK) != 0);
        unlink(tmp);
    }

    r = st_writer_new(&w, "/nonexistent-dir-st/x.safetensors", &err);
    SV_ASSERT_EQ(r, -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "file '/nonexistent-dir-st/x.safetensors.tmp': cannot create");

    /* A write error (here EFBIG from a file-size limit, standing in for
     * ENOSPC, which takes the same path) surfaces and names the file. */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    SV_ASSERT_EQ(st_writer_new(&w, p, &err), 0);
    int64_t big[1] = {100000};
    float *data = calloc(100000, sizeof *data);
    SV_ASSERT_EQ(st_writer_declare(w, "big", ST_F32, 1, big, &err), 0);
    SV_ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    r = st_writer_write_f32(w, "big", data, 100000, &err);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    SV_ASSERT_EQ(r, -EFBIG);
    SV_ASSERT_STR_CONTAINS(err.msg, "werr.safetensors.tmp': write failed");
    r = st_writer_finish(w, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "writer failed earlier");
    SV_CHECK(access(p, F_OK) != 0 && access(tmp, F_OK) != 0);
    free(data);
}

/* ---- sharded models ---- */

static int write_text(const char *path, const char *s) {
    return write_file(path, s, strlen(s));
}

/* Copies tensors [from, to) of SRC raw into PATH. */
static int write_shard(const struct st_model *src, const char *path, size_t from, size_t to, struct sv_err *err) {
    struct st_writer *w = NULL;
    int r;
    if ((r = st_writer_new(&w, path, err)) < 0)
        return r;
    for (size_t i = from; i < to; i++) {
        const struct st_tensor *t = st_get(src, i);
        if ((r = st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err)) < 0)
            goto fail;
    }
    for (size_t i = from; i < to; i++) {
        const struct st_tensor *t = st_get(src, i);
        if ((r = st_writer_write_raw(w, t->name, t->data, t->nbytes, err)) < 0)
            goto fail;
    }
    return st_writer_finish(w, err);
fail:
    st_writer_free(w);
    return r;
}

/* The index for the two-shard split; EDIT may rename one entry's shard or
 * drop or add one, to build the broken variants. */
static char *make_index(const struct st_model *src, size_t half, const char *edit_name, const char *edit_shard) {
    size_t cap = 16384, len = 0;
    char *s = malloc(cap);
    len += (size_t)snprintf(s + len, cap - len, "{\"metadata\":{\"total_size\":%d},\"weight_map\":{",
                            1176152 - 8 - 4944);
    int first = 1;
    for (size_t i = 0; i < st_count(src); i++) {
        const char *name = st_get(src, i)->name;
        const char *shard = i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
        if (edit_name && strcmp(name, edit_name) == 0) {
            if (!edit_shard)
                continue;  /* drop */
            shard = edit_shard;
        }
        len += (size_t)snprintf(s + len, cap - len, "%s\"%s\":\"%s\"", first ? "" : ",", name, shard);
        first = 0;
    }
    if (edit_name && !st_find(src, edit_name))
        len += (size_t)snprintf(s + len, cap - len, ",\"%s\":\"%s\"", edit_name, edit_shard);
    snprintf(s + len, cap - len, "}}\n");
    return s;
}

#define EXPECT_BAD_INDEX(src, half, name, shard, needle) do { \
    char *ix_ = make_index(src, half, name, shard); \
    write_text(ipath, ix_); free(ix_); \
    struct st_model *m_ = NULL; struct sv_err e_ = {0}; \
    int r_ = st_open(&m_, sdir, &e_); \
    SV_CHECK(r_ < 0 && m_ == NULL); \
    SV_ASSERT_STR_CONTAINS(e_.msg, needle); \
    st_free(m_); } while (0)

static void test_sharded(void) {
    struct st_model *src = NULL, *m = NULL;
    struct sv_err err = {0};
    char sdir[128], ipath[256], s1[256], s2[256], s3[256];
    SV_ASSERT_EQ(st_open(&src, M260K, &err), 0);
    if (!src)
        return;
    tpath(sdir, sizeof sdir, "sharded");
    mkdir(sdir, 0755);
    snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", sdir);
    snprintf(s1, sizeof s1, "%s/model-00001-of-00002.safetensors", sdir);
    snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", sdir);
    size_t half = st_count(src) / 2;
    SV_ASSERT_EQ(write_shard(src, s1, 0, half, &err), 0);
    SV_ASSERT_EQ(write_shard(src, s2, half, st_count(src), &err), 0);

    /* A directory with neither file yet. */
    int r = st_open(&m, sdir, &err);
    SV_ASSERT_EQ(r, -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "no model.safetensors or model.safetensors.index.json in");

    char *ix = make_index(src, half, NULL, NULL);
    write_text(ipath, ix);
    free(ix);
    r = st_open(&m, sdir, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0)
        fprintf(stderr, "%s\n", err.msg);
    if (m) {
        SV_ASSERT_EQ(st_count(m), st_count(src));
        SV_ASSERT_EQ(st_shard_count(m), 2);
        SV_ASSERT_STR_CONTAINS(st_shard_path(m, 0), "model-00001-of-00002.safetensors");
        SV_ASSERT_STR_CONTAINS(st_shard_path(m, 1), "model-00002-of-00002.safetensors");
        long bad = 0;
        for (size_t i = 0; i < st_count(src); i++) {
            const struct st_tensor *a = st_get(src, i), *b = st_find(m, a->name);
            if (!b || b->dtype != a->dtype || b->ndim != a->ndim || b->nbytes != a->nbytes ||
                memcmp(b->shape, a->shape, sizeof a->shape) != 0 || memcmp(a->data, b->data, a->nbytes) != 0 ||
                b->shard != (i < half ? 0 : 1)) {
                bad++;
                continue;
            }
            float *x = malloc(a->nelem * sizeof *x), *y = malloc(a->nelem * sizeof *y);
            if (st_read_f32(src, a->name, x, a->nelem, &err) < 0 || st_read_f32(m, a->name, y, a->nelem, &err) < 0 ||
                memcmp(x, y, a->nelem * sizeof *x) != 0)
                bad++;
            free(x);
            free(y);
        }
        SV_ASSERT_EQ(bad, 0);
    }
    st_free(m);
    m = NULL;

    const char *moved = st_get(src, 0)->name, *late = st_get(src, half)->name;
    EXPECT_BAD_INDEX(src, half, moved, "model-00003-of-00002.safetensors", "model-00003-of-00002.safetensors");
    EXPECT_BAD_INDEX(src, half, moved, "model-00003-of-00002.safetensors", "cannot open");
    EXPECT_BAD_INDEX(src, half, "model.fake.weight", "model-00001-of-00002.safetensors",
                     "tensor 'model.fake.weight': listed in weight_map but not found in shard "
                     "'model-00001-of-00002.safetensors'");
    EXPECT_BAD_INDEX(src, half, late, NULL, "not listed in weight_map");
    EXPECT_BAD_INDEX(src, half, late, NULL, late);
    EXPECT_BAD_INDEX(src, half, moved, "model-00002-of-00002.safetensors", "weight_map says shard");
    EXPECT_BAD_INDEX(src, half, moved, "../stories260K-hf/model.safetensors", "is not a plain file name");
    EXPECT_BAD_INDEX(src, half, moved, "..", "is not a plain file name");
    EXPECT_BAD_INDEX(src, half, moved, "", "is not a plain file name");

    write_text(ipath, "{\"weight_map\": [1]}");
    r = st_open(&m, sdir, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "no 'weight_map' object");
    write_text(ipath, "{\"weight_map\": {\"a\": \"x\", \"a\": \"y\"}}");
    r = st_open(&m, sdir, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "not valid JSON");
    SV_ASSERT_STR_CONTAINS(err.msg, "model.safetensors.index.json");

    /* The same tensor in two shards. */
    snprintf(s3, sizeof s3, "%s/model-00003-of-00003.safetensors", sdir);
    SV_ASSERT_EQ(write_shard(src, s3, half - 1, half + 1, &err), 0);
    ix = make_index(src, half, NULL, NULL);
    ix[strlen(ix) - 3] = '\0';  /* cut the closing "}}\n" to append one more shard */
    char *ix2 = malloc(strlen(ix) + 200);
    sprintf(ix2, "%s,\"zz.other\":\"model-00003-of-00003.safetensors\"}}", ix);
    write_text(ipath, ix2);
    free(ix);
    free(ix2);
    r = st_open(&m, sdir, &err);
    SV_CHECK(r < 0);
    SV_ASSERT_STR_CONTAINS(err.msg, "duplicate name, also in");
    SV_ASSERT_STR_CONTAINS(err.msg, st_get(src, half - 1)->name);

    unlink(s3);
    unlink(ipath);
    unlink(s1);
    unlink(s2);
    rmdir(sdir);
    st_free(src);
}

/* ---- malformed files ---- */

#define T_OK "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

static void test_malformed(void) {
    unsigned char b[64] = {0};
    char hdr[1024];

    /* Too short to hold the length. */
    EXPECT_BAD_BYTES(b, 0, "shorter than 8 bytes");
    EXPECT_BAD_BYTES("\x10\0\0\0\0", 5, "shorter than 8 bytes");
    /* Header lengths. */
    memset(b, 0, sizeof b);
    EXPECT_BAD_BYTES(b, 16, "header length is 0");
    put_u64(b, 200ull << 20);
    EXPECT_BAD_BYTES(b, 16, "header length 209715200 exceeds");
    put_u64(b, UINT64_MAX);
    EXPECT_BAD_BYTES(b, 16, "exceeds");
    put_u64(b, 9);
    EXPECT_BAD_BYTES(b, 16, "header length 9 runs past end of file (16 bytes)");
    /* JSON. */
    EXPECT_BAD_HEADER("{\"t\":", 0, "header is not valid JSON");
    EXPECT_BAD_HEADER("{} trailing", 0, "header is not valid JSON");
    EXPECT_BAD_BYTES("\x03\0\0\0\0\0\0\0{\0}", 11, "header is not valid JSON");
    EXPECT_BAD_HEADER("[1, 2]", 0, "header is not a JSON object");
    EXPECT_BAD_HEADER("\"str\"", 0, "header is not valid JSON");  /* jansson refuses non-container roots */
    /* Entries. */
    EXPECT_BAD_HEADER("{\"t\":[1]}", 0, "tensor 't': header entry is not an object");
    EXPECT_BAD_HEADER("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 't': missing 'dtype'");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "tensor 't': missing 'shape'");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "tensor 't': missing 'data_offsets'");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'dtype' is not a string");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "'shape' is not an array");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{}}}", 8,
                      "'data_offsets' is not an array");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
                      "shape element 0 is not an integer");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
                      "shape element 0 is not an integer");
    /* dtypes. */
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                      "tensor 't': unknown dtype 'Q4_K'");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype 'f32'");
    /* Shapes. */
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}}", 8,
                      "tensor 't': shape element 1 is negative (-1)");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 8,
                      "tensor 't': 9 dimensions, more than the 8 supported");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}}", 8,
                      "element count of shape [4294967296, 4294967296] overflows");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8,
                      "byte size of shape [4611686018427387904] F32 overflows");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", 8,
                      "header is not valid JSON");
    /* Offsets. */
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", 16,
                      "'data_offsets' is not two non-negative integers");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 16,
                      "'data_offsets' is not two non-negative integers");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 16,
                      "'data_offsets' is not two non-negative integers");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]}}", 16,
                      "'data_offsets' is not two non-negative integers");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 16,
                      "tensor 't': data_offsets end 0 before begin 8");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 12,
                      "tensor 't': data_offsets end 16 beyond the data section (12 bytes)");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", 16,
                      "tensor 't': data_offsets span 12 bytes, which does not match shape [2] F32 (8 bytes)");
    EXPECT_BAD_HEADER("{\"t\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
                      "does not match shape [2, 2] BF16 (8 bytes)");
    /* Overlaps, including an exact alias of bytes and one range inside another. */
    EXPECT_BAD_HEADER("{" T_OK ",\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                      "tensor 'u': bytes [4, 12) overlap tensor 't'");
    EXPECT_BAD_HEADER("{" T_OK ",\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "overlap");
    EXPECT_BAD_HEADER("{\"u\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[2,4]},"
                      "\"v\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[7,8]}," T_OK "}", 8, "overlap");
    /* Duplicate names (jansson would otherwise keep the last silently). */
    EXPECT_BAD_HEADER("{" T_OK "," T_OK "}", 8, "duplicate key 't' in header");
    EXPECT_BAD_HEADER("{\"model.layers.0.w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"model.layers.0.w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                      "duplicate key 'model.layers.0.w'");
    EXPECT_BAD_HEADER("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate key '__metadata__'");
    /* Names. */
    memset(hdr, 0, sizeof hdr);
    strcpy(hdr, "{\"");
    memset(hdr + 2, 'n', 300);
    strcat(hdr, "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}");
    EXPECT_BAD_HEADER(hdr, 8, "name longer than 255 bytes");
    memset(hdr, 0, sizeof hdr);
    strcpy(hdr, "{\"");
    memset(hdr + 2, 'n', 255);  /* the longest name allowed */
    strcat(hdr, "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}");
    {
        struct sv_err e = {0};
        SV_ASSERT_EQ(open_header(hdr, 8, &e), 0);
    }
    EXPECT_BAD_HEADER("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                      "NUL byte in object key");
    EXPECT_BAD_HEADER("{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "empty name");
    /* Metadata. */
    EXPECT_BAD_HEADER("{\"__metadata__\":5," T_OK "}", 8, "'__metadata__' is not a JSON object");
    EXPECT_BAD_HEADER("{\"__metadata__\":{\"format\":1}," T_OK "}", 8, "'__metadata__' entry 'format' is not a string");

    /* A directory is not a safetensors file. */
    {
        struct sv_err e = {0};
        struct st_model *m = NULL;
        SV_CHECK(st_open_file(&m, tmpdir, &e) < 0);
        SV_ASSERT_STR_CONTAINS(e.msg, "not a regular file");
        SV_CHECK(st_open_file(&m, "tests/data/none.safetensors", &e) == -ENOENT);
        SV_ASSERT_STR_CONTAINS(e.msg, "file 'tests/data/none.safetensors': cannot open");
    }
}

/* Every dtype name parses; only the float ones convert; odd header lengths
 * leave the data unaligned, which the reader must handle. */
static void test_dtypes_and_alignment(void) {
    static const char *names[ST_DTYPE_COUNT] = {"F32", "F16", "BF16", "F64", "I32",
                                                "I64", "I8",  "U8",   "BOOL", "I16"};
    static const size_t sizes[ST_DTYPE_COUNT] = {4, 2, 2, 8, 4, 8, 1, 1, 1, 2};
    char hdr[2048], p[128];
    size_t len = 0, off = 0;
    len += (size_t)snprintf(hdr + len, sizeof hdr - len, "{\"__metadata__\":{\"note\":\"x\",\"tie\":\"F64\"}");
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        enum st_dtype d;
        SV_ASSERT_EQ(st_dtype_parse(names[i], &d), 0);
        SV_ASSERT_EQ(d, i);
        SV_ASSERT_EQ(st_dtype_size(d), sizes[i]);
        SV_CHECK(strcmp(st_dtype_name(d), names[i]) == 0);
        len += (size_t)snprintf(hdr + len, sizeof hdr - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[3],"
                                "\"data_offsets\":[%zu,%zu]}", names[i], names[i], off, off + 3 * sizes[i]);
        off += 3 * sizes[i];
    }
    enum st_dtype d;
    SV_ASSERT_EQ(st_dtype_parse("F8_E4M3", &d), -EINVAL);
    SV_ASSERT_EQ(st_dtype_parse(NULL, &d), -EINVAL);
    SV_CHECK(strcmp(st_dtype_name(ST_DTYPE_COUNT), "?") == 0);
    SV_ASSERT_EQ(st_dtype_size(ST_DTYPE_COUNT), 0);
    while (len % 4 != 2)  /* 8 + len not a multiple of 4: the F32 data starts misaligned */
        hdr[len++] = ' ';
    snprintf(hdr + len, sizeof hdr - len, "}");

    unsigned char data[256] = {0};
    float f32[3] = {1.0f, -0.5f, 3.25f};
    memcpy(data, f32, sizeof f32);                              /* F32 at 0 */
    uint16_t h16[3] = {0x3c00, 0x0001, 0xfc00};                 /* F16 at 12: 1, 2^-24, -inf */
    memcpy(data + 12, h16, sizeof h16);
    uint16_t bf[3] = {0x3f80, 0xc000, 0x7fc0};                  /* BF16 at 18: 1, -2, nan */
    memcpy(data + 18, bf, sizeof bf);
    tpath(p, sizeof p, "dtypes.safetensors");
    SV_ASSERT_EQ(write_st(p, hdr, data, off), 0);

    struct st_model *m = NULL;
    struct sv_err err = {0};
    int r = st_open_file(&m, p, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return;
    }
    SV_ASSERT_EQ(st_count(m), ST_DTYPE_COUNT);
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        const struct st_tensor *t = st_find(m, names[i]);
        SV_CHECK(t && (int)t->dtype == i && t->nbytes == 3 * sizes[i]);
    }
    SV_CHECK(st_find(m, "tie") == st_find(m, "F64"));  /* metadata alias to an existing tensor */
    SV_CHECK(((uintptr_t)st_find(m, "F32")->data & 3) != 0);
    float out[3];
    SV_ASSERT_EQ(st_read_f32(m, "F32", out, 3, &err), 0);
    SV_CHECK(memcmp(out, f32, sizeof f32) == 0);
    SV_ASSERT_EQ(st_read_f32(m, "F16", out, 3, &err), 0);
    SV_CHECK(out[0] == 1.0f && out[1] == ldexpf(1, -24) && isinf(out[2]) && out[2] < 0);
    SV_ASSERT_EQ(st_read_f32(m, "BF16", out, 3, &err), 0);
    SV_CHECK(out[0] == 1.0f && out[1] == -2.0f && isnan(out[2]));
    const char *nonfloat[] = {"F64", "I32", "I64", "I8", "U8", "BOOL", "I16"};
    for (size_t i = 0; i < sizeof nonfloat / sizeof *nonfloat; i++) {
        char want[64];
        r = st_read_f32(m, nonfloat[i], out, 3, &err);
        SV_ASSERT_EQ(r, -ENOTSUP);
        snprintf(want, sizeof want, "tensor '%s': dtype '%s' not supported", nonfloat[i], nonfloat[i]);
        SV_ASSERT_STR_CONTAINS(err.msg, want);
        SV_ASSERT_STR_CONTAINS(err.msg, "dtypes.safetensors");
    }
    r = st_read_f32(m, "tie", out, 3, &err);
    SV_ASSERT_STR_CONTAINS(err.msg, "dtype 'F64' not supported");
    st_free(m);
    unlink(p);
}

/* Real files cut short: in the data section and inside the header. */
static void test_truncated(void) {
    size_t n;
    unsigned char *b = read_file(M260K "/model.safetensors", &n);
    SV_CHECK(b != NULL && n == 1176152);
    if (!b)
        return;
    EXPECT_BAD_BYTES(b, 8 + 4944 + 100000, "beyond the data section (100000 bytes); file truncated?");
    EXPECT_BAD_BYTES(b, n - 1, "tensor 'model.norm.weight': data_offsets end 1171200 beyond the data section");
    EXPECT_BAD_BYTES(b, 8 + 4944, "beyond the data section (0 bytes)");
    EXPECT_BAD_BYTES(b, 8 + 2000, "header length 4944 runs past end of file (2008 bytes); file truncated?");
    EXPECT_BAD_BYTES(b, 4, "shorter than 8 bytes");
    {
        struct sv_err e = {0};
        SV_ASSERT_EQ(open_bytes(b, n, &e), 0);  /* the untouched copy still opens */
    }
    free(b);
    b = read_file(M656K "/model.safetensors", &n);
    SV_CHECK(b != NULL);
    if (b)
        EXPECT_BAD_BYTES(b, n / 2, "file truncated?");
    free(b);
}

int main(void) {
    const char *src = getenv("SV_SRCDIR");
    if (src && chdir(src) != 0) {
        fprintf(stderr, "cannot chdir to %s\n", src);
        return 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_st.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_tinystories656k();
    test_stories260k();
    test_f16();
    test_bf16();
    test_round_trip();
    test_writer_layout();
    test_writer_errors();
    test_sharded();
    test_malformed();
    test_dtypes_and_alignment();
    test_truncated();

    char p[128];
    const char *left[] = {"bad.safetensors", "copy-F32.safetensors", "copy-F16.safetensors",
                          "copy-BF16.safetensors"};
    for (size_t i = 0; i < sizeof left / sizeof *left; i++)
        unlink(tpath(p, sizeof p, left[i]));
    /* Anything left over means a test leaked a file; report it rather than hide it. */
    DIR *d = opendir(tmpdir);
    struct dirent *de;
    int extra = 0;
    while (d && (de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            fprintf(stderr, "left over: %s/%s\n", tmpdir, de->d_name);
            extra++;
        }
    if (d)
        closedir(d);
    SV_ASSERT_EQ(extra, 0);
    SV_CHECK(rmdir(tmpdir) == 0);
    return sv_test_result("st");
}
