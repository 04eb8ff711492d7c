/* The forward pass against independent references (shared/data/reference):
 * logits of the first 64 positions (rel. Frobenius error <= 1e-5), the five
 * reference perplexities to every printed digit, and the same model stored as
 * F16, BF16 and two shards. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forward.h"
#include "harness.h"
#include "model.h"
#include "ppl.h"
#include "st.h"

/* Reads n little-endian elements of size es from a reference file. */
static void *read_array(const char *path, size_t es, size_t n) {
    FILE *f = fopen(path, "rb");
    void *buf = malloc(n * es);
    SV_CHECK(f && buf);
    if (!f || !buf)
        exit(1);
    SV_ASSERT_EQ(fread(buf, es, n, f), n);
    fclose(f);
    return buf;
}

/* Runs the model on the first T reference ids; returns rel. Frobenius error of the logits. */
static double logits_error(const char *model_dir, const char *ids_path, const char *ref_path, int T) {
    struct model *m = NULL;
    struct sv_err err = {0};
    int r = model_open(&m, model_dir, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return INFINITY;
    }
    const struct config *c = &m->cfg;
    int32_t *ids = read_array(ids_path, sizeof(int32_t), (size_t)T);
    float *x = malloc((size_t)T * c->hidden * sizeof *x);
    float *logits = malloc((size_t)T * c->vocab * sizeof *logits);
    float *ref = read_array(ref_path, sizeof(float), (size_t)T * c->vocab);
    SV_ASSERT_EQ(model_embed(m, ids, (size_t)T, x, &err), 0);
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_w lw;
        SV_ASSERT_EQ(model_layer_load(m, l, &lw, &err), 0);
        SV_ASSERT_EQ(forward_layer(c, &lw, x, 1, T, NULL, &err), 0);
        model_layer_free(&lw);
    }
    struct head_w h;
    SV_ASSERT_EQ(model_head_load(m, &h, &err), 0);
    SV_ASSERT_EQ(forward_logits(c, &h, x, (size_t)T, logits, &err), 0);
    model_head_free(&h);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)T * c->vocab; i++) {
        double d = (double)logits[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    free(ids);
    free(x);
    free(logits);
    free(ref);
    model_free(m);
    return sqrt(num / den);
}

/* Checks ppl and mean NLL print identically to the reference's digits. */
static void check_ppl(const char *model, const char *text, int L, size_t tokens, size_t windows, const char *want_nll,
                      const char *want_ppl) {
    struct ppl_result res;
    struct sv_err err = {0};
    int r = ppl_eval(model, text, L, 0, NULL, NULL, &res, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "ppl_eval: %s\n", err.msg);
        return;
    }
    char nll[32], ppl[32];
    snprintf(nll, sizeof nll, "%.6f", res.mean_nll);
    snprintf(ppl, sizeof ppl, "%.4f", res.ppl);
    printf("%s L=%d: tokens %zu windows %zu mean_nll %s ppl %s (%.0f tok/s)\n", model, L, res.tokens, res.windows, nll,
           ppl, res.tokens_per_s);
    SV_ASSERT_EQ(res.tokens, tokens);
    SV_ASSERT_EQ(res.windows, windows);
    SV_ASSERT_EQ(res.predicted, windows * (size_t)(L - 1));
    SV_ASSERT_STR_CONTAINS(nll, want_nll);
    SV_ASSERT_STR_CONTAINS(ppl, want_ppl);
}

/* Copies a model directory's safetensors as dtype (one file) or as two F32 shards. */
static void write_variant(const char *src, const char *dst, enum st_dtype dtype, int shards) {
    char path[4096], cmd[8192];
    struct st_model *st = NULL;
    struct sv_err err = {0};
    SV_ASSERT_EQ(st_open(&st, src, &err), 0);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s/config.json' '%s/tokenizer.json' '%s/'", dst, src, src, dst);
    SV_ASSERT_EQ(system(cmd), 0);
    size_t n = st_count(st);
    int nfiles = shards ? 2 : 1;
    FILE *idx = NULL;
    if (shards) {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dst);
        idx = fopen(path, "w");
        fprintf(idx, "{\"metadata\": {}, \"weight_map\": {");
    }
    for (int f = 0; f < nfiles; f++) {
        struct st_writer *w = NULL;
        if (shards)
            snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dst, f + 1, nfiles);
        else
            snprintf(path, sizeof path, "%s/model.safetensors", dst);
        SV_ASSERT_EQ(st_writer_new(&w, path, &err), 0);
        size_t lo = shards ? f * n / 2 : 0, hi = shards ? (f + 1) * n / 2 : n;
        for (size_t i = lo; i < hi; i++) {
            const struct st_tensor *t = st_get(st, i);
            SV_ASSERT_EQ(st_writer_declare(w, t->name, dtype, t->ndim, t->shape, &err), 0);
            if (idx)
                fprintf(idx, "%s\"%s\": \"model-%05d-of-%05d.safetensors\"", i ? ", " : "", t->name, f + 1, nfiles);
        }
        for (size_t i = lo; i < hi; i++) {
            const struct st_tensor *t = st_get(st, i);
            float *buf = malloc(t->nelem * sizeof *buf);
            SV_ASSERT_EQ(st_read_f32(st, t->name, buf, t->nelem, &err), 0);
            SV_ASSERT_EQ(st_writer_write_f32(w, t->name, buf, t->nelem, &err), 0);
            free(buf);
        }
        SV_ASSERT_EQ(st_writer_finish(w, &err), 0);
    }
    if (idx) {
        fprintf(idx, "}}\n");
        fclose(idx);
    }
    st_free(st);
}

int main(void) {
    forward_threads_set(0);
    const char *s260 = "tests/data/stories260K-hf", *t656 = "tests/data/tinystories-656K";
    const char *tiny_text = "tests/data/text/tinystories-valid-head.txt";

    double e1 = logits_error(s260, "tests/data/reference/tinystories-valid-head.stories260K.tokens.i32",
                             "tests/data/reference/stories260K.logits.first64.f32", 64);
    double e2 = logits_error(t656, "tests/data/reference/tinystories-valid-head.tinystories656K.tokens.i32",
                             "tests/data/reference/tinystories656K.logits.first64.f32", 64);
    printf("logits rel. Frobenius error: stories260K %.3g, tinystories-656K %.3g (tolerance 1e-5)\n", e1, e2);
    SV_CHECK(e1 <= 1e-5);
    SV_CHECK(e2 <= 1e-5);

    /* reference-values.json, every printed digit. */
    check_ppl(s260, tiny_text, 512, 393019, 767, "1.619025", "5.0482");
    check_ppl(s260, tiny_text, 128, 393019, 3070, "1.679843", "5.3647");
    check_ppl(t656, tiny_text, 512, 193347, 377, "3.622936", "37.4473");
    check_ppl(t656, tiny_text, 128, 193347, 1510, "3.727339", "41.5683");
    check_ppl(s260, "tests/data/text/wikitext-2-raw-v1-test.joined.txt", 512, 815070, 1591, "4.806758", "122.3344");
    /* Pre-tokenized ids give the same numbers as the text. */
    check_ppl(s260, "tests/data/reference/tinystories-valid-head.stories260K.tokens.i32", 512, 393019, 767,
              "1.619025", "5.0482");

    /* F16 / BF16 / sharded copies. Tolerances: storage rounding of weights is
     * 2^-11 (f16) and 2^-8 (bf16) relative per element; through 5 layers the
     * logits move by at most ~10x that. F32 shards must be exact (1e-6, summation order only). */
    char tmpl[] = "/tmp/svdllm-test-model-XXXXXX";
    char *dir = mkdtemp(tmpl);
    SV_CHECK(dir != NULL);
    char d16[4096], dbf[4096], dsh[4096];
    snprintf(d16, sizeof d16, "%s/f16", dir);
    snprintf(dbf, sizeof dbf, "%s/bf16", dir);
    snprintf(dsh, sizeof dsh, "%s/shards", dir);
    write_variant(s260, d16, ST_F16, 0);
    write_variant(s260, dbf, ST_BF16, 0);
    write_variant(s260, dsh, ST_F32, 1);
    const char *ids = "tests/data/reference/tinystories-valid-head.stories260K.tokens.i32";
    const char *ref = "tests/data/reference/stories260K.logits.first64.f32";
    double ef16 = logits_error(d16, ids, ref, 64), ebf = logits_error(dbf, ids, ref, 64),
           esh = logits_error(dsh, ids, ref, 64);
    printf("stored as F16: %.3g (tol 5e-3), BF16: %.3g (tol 4e-2), 2 shards: %.3g (tol 1e-5)\n", ef16, ebf, esh);
    SV_CHECK(ef16 <= 5e-3);
    SV_CHECK(ebf <= 4e-2);
    SV_CHECK(esh <= 1e-5);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    SV_ASSERT_EQ(system(cmd), 0);
    return sv_test_result("model");
}
