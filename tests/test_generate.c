/* test_generate: incremental decoding (daemon/engine/generate.c,
 * forward_layer_cached) against the full forward pass, and generation
 * against llama2.c run.c's own output.
 *
 *  1. Logits: for stories260K and a generated LLaMA (with Llama 3.1 RoPE
 *     scaling), Qwen2 (q/k/v biases) and Qwen3 (q_norm/k_norm, head_dim 32)
 *     model, 48 tokens fed to the cache (a 5-token prompt, then one at a
 *     time) give the logits forward_layer + forward_logits give for the whole
 *     sequence, to a relative Frobenius error of 1e-5 per position (float
 *     rounding: the sums run in other orders); the same with every linear
 *     stored as a factor pair (A = W, B = I), and through gen_feed against
 *     run.c's committed logits of stories260K.
 *  2. Generation: gen_run greedy on stories260K with an empty prompt equals
 *     run.c's greedy 256-token text (tests/data/reference/, with the trailing
 *     newline run.c prints), sampling at temperature 1, top-p 0.9, seed
 *     133742 equals run.c's sampled text, and the stop rules (EOS, length,
 *     context, text limit) and the streamed text behave as generate.h says.
 *
 * Usage: test_generate PATH/svdllm-genmodel (run from the source root). */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forward.h"
#include "generate.h"
#include "harness.h"
#include "model.h"

static char tmp[] = "/tmp/test_generate.XXXXXX";
static const char *genmodel;
static const char *const stories = "tests/data/stories260K-hf";

#define T_SEQ 48
#define TOL 1e-5

static char *read_all(const char *path, size_t *ret_len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = '\0';
        *ret_len = (size_t)n;
    }
    return b;
}

/* Largest relative Frobenius error over rows of got vs want, both (T, V). */
static double max_row_error(const float *got, const float *want, int T, int V) {
    double worst = 0;
    for (int t = 0; t < T; t++) {
        double num = 0, den = 0;
        for (int j = 0; j < V; j++) {
            double d = (double)got[(size_t)t * V + j] - want[(size_t)t * V + j];
            num += d * d;
            den += (double)want[(size_t)t * V + j] * want[(size_t)t * V + j];
        }
        double e = sqrt(num / (den > 0 ? den : 1));
        if (!(e <= worst))
            worst = e;   /* NaN propagates */
    }
    return worst;
}

/* Replaces a dense linear by the factor pair A = W (d_out, d_in), B = I (d_in, d_in). */
static void factor_identity(struct linear *lin) {
    size_t n = (size_t)lin->d_in;
    lin->a = lin->w;
    lin->w = NULL;
    lin->b = calloc(n * n, sizeof(float));
    for (size_t i = 0; i < n; i++)
        lin->b[i * n + i] = 1.0f;
    lin->rank = lin->d_in;
}

/* Logits of ids through the full pass and through the cache; returns the
 * largest per-position relative error (negative on failure). */
static double cached_vs_full(const char *dir, const int32_t *ids, int T, int factored) {
    struct sv_err err = {0};
    struct model *m = NULL;
    if (model_open(&m, dir, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    const struct config *c = &m->cfg;
    const int L = c->n_layers, V = c->vocab, d = c->hidden, kvw = c->n_kv_heads * c->head_dim;
    struct layer_w *lw = calloc((size_t)L, sizeof *lw);
    struct head_w head = {0};
    float *x = malloc((size_t)T * d * sizeof *x), *full = malloc((size_t)T * V * sizeof *full);
    float *inc = malloc((size_t)T * V * sizeof *inc), *xs = malloc((size_t)T * d * sizeof *xs);
    float *kc = malloc((size_t)L * T * kvw * sizeof *kc), *vc = malloc((size_t)L * T * kvw * sizeof *vc);
    double e = -1;
    int r = model_head_load(m, &head, &err);
    for (int l = 0; r == 0 && l < L; l++)
        r = model_layer_load(m, l, &lw[l], &err);
    if (r == 0)
        r = model_embed(m, ids, (size_t)T, x, &err);
    for (int l = 0; r == 0 && l < L; l++)
        r = forward_layer(c, &lw[l], x, 1, T, NULL, &err);
    if (r == 0)
        r = forward_logits(c, &head, x, (size_t)T, full, &err);
    for (int l = 0; factored && l < L; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            factor_identity(&lw[l].proj[p]);
    /* A 5-token prompt, then one token at a time, each through every layer. */
    for (int pos = 0; r == 0 && pos < T;) {
        int n = pos == 0 ? 5 : 1;
        if ((r = model_embed(m, ids + pos, (size_t)n, xs, &err)) < 0)
            break;
        for (int l = 0; r == 0 && l < L; l++)
            r = forward_layer_cached(c, &lw[l], xs, n, pos, kc + (size_t)l * T * kvw, vc + (size_t)l * T * kvw, T,
                                     &err);
        if (r == 0)
            r = forward_logits_small(c, &head, xs, (size_t)n, inc + (size_t)pos * V, &err);
        pos += n;
    }
    SV_ASSERT_EQ(r, 0);
    if (r < 0)
        fprintf(stderr, "%s: %s\n", dir, err.msg);
    else
        e = max_row_error(inc, full, T, V);
    /* Past the cache's end: refused, nothing written. */
    if (r == 0) {
        struct sv_err e2 = {0};
        SV_ASSERT_EQ(forward_layer_cached(c, &lw[0], xs, 1, T, kc, vc, T, &e2), -EINVAL);
        SV_ASSERT_STR_CONTAINS(e2.msg, "do not fit a cache");
    }
    for (int l = 0; l < L; l++)
        model_layer_free(&lw[l]);
    free(lw);
    model_head_free(&head);
    free(x);
    free(full);
    free(inc);
    free(xs);
    free(kc);
    free(vc);
    model_free(m);
    return e;
}

static void gen_family(const char *name, const char *args, char *dir, size_t n) {
    snprintf(dir, n, "%s/%s", tmp, name);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' --out '%s' %s", genmodel, dir, args);
    SV_ASSERT_EQ(system(cmd), 0);
}

/* Sets config.json members of a model directory (a JSON object's members). */
static void patch_config(const char *dir, const char *members) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = json_load_file(path, 0, NULL), *add = json_loads(members, 0, NULL);
    SV_CHECK(cfg && add);
    SV_ASSERT_EQ(json_object_update(cfg, add), 0);
    SV_ASSERT_EQ(json_dump_file(cfg, path, JSON_INDENT(2)), 0);
    json_decref(cfg);
    json_decref(add);
}

static void test_logits(void) {
    int32_t ids[T_SEQ];
    uint32_t s = 12345;
    char dir[512];
    size_t n;
    char *tokens = read_all("tests/data/reference/tinystories-valid-head.stories260K.tokens.i32", &n);
    SV_CHECK(tokens && n >= sizeof ids);
    memcpy(ids, tokens, sizeof ids);
    free(tokens);
    for (int factored = 0; factored < 2; factored++) {
        double e = cached_vs_full(stories, ids, T_SEQ, factored);
        printf("stories260K%s: cached vs full logits, max relative error %.3g\n", factored ? " (factored)" : "", e);
        SV_CHECK(e >= 0 && e <= TOL);
    }

#define COMMON "--hidden 64 --layers 2 --heads 4 --kv-heads 2 --ffn 160 --vocab 256 --max-pos 512"
    static const char *const fam[][2] = {
        {"llama3", "--family llama " COMMON " --seed 1"},
        {"qwen2", "--family qwen2 " COMMON " --tie-embeddings --seed 2"},
        {"qwen3", "--family qwen3 " COMMON " --head-dim 32 --seed 3"},
    };
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        gen_family(fam[f][0], fam[f][1], dir, sizeof dir);
        if (f == 0)   /* Llama 3.1's frequency bands, which change every angle here */
            patch_config(dir, "{\"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                              " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                              " \"original_max_position_embeddings\": 64}}");
        for (int i = 0; i < T_SEQ; i++) {
            s = s * 1103515245u + 12345u;
            ids[i] = (int32_t)((s >> 16) % 256);
        }
        for (int factored = 0; factored < 2; factored++) {
            double e = cached_vs_full(dir, ids, T_SEQ, factored);
            printf("%s%s: cached vs full logits, max relative error %.3g\n", fam[f][0], factored ? " (factored)" : "",
                   e);
            SV_CHECK(e >= 0 && e <= TOL);
        }
    }

    /* gen_feed, the public path, against run.c's logits of the first 64
     * reference tokens (reference-values.json: 64 x 512 floats). */
    float *ref = (float *)read_all("tests/data/reference/stories260K.logits.first64.f32", &n);
    tokens = read_all("tests/data/reference/tinystories-valid-head.stories260K.tokens.i32", &n);
    struct gen *g = NULL;
    struct sv_err err = {0};
    SV_ASSERT_EQ(gen_new(&g, stories, 64, &err), 0);
    float *got = malloc(64 * 512 * sizeof *got);
    if (g && ref && tokens && got) {
        const int32_t *tid = (const int32_t *)tokens;
        SV_ASSERT_EQ(gen_feed(g, tid, 10, 1, got, &err), 0);
        for (int pos = 10; pos < 64; pos++)
            SV_ASSERT_EQ(gen_feed(g, tid + pos, 1, 0, got + (size_t)pos * 512, &err), 0);
        SV_ASSERT_EQ(gen_pos(g), 64);
        double e = max_row_error(got, ref, 64, 512);
        printf("stories260K: gen_feed vs run.c's logits, max relative error %.3g\n", e);
        SV_CHECK(e <= TOL);
        SV_ASSERT_EQ(gen_feed(g, tid, 1, 0, got, &err), -ENOSPC);   /* the context of 64 is full */
        SV_ASSERT_STR_CONTAINS(err.msg, "do not fit the context of 64");
        gen_rewind(g);
        int32_t bad = 512;
        SV_ASSERT_EQ(gen_feed(g, &bad, 1, 0, got, &err), -EINVAL);
        SV_ASSERT_STR_CONTAINS(err.msg, "token id 512 is outside the vocabulary");
    }
    free(got);
    free(ref);
    free(tokens);
    gen_free(g);
}

struct sink {
    char buf[65536];
    size_t n;
    int calls;
};

static int sink_text(void *ctx, const char *text, size_t len) {
    struct sink *s = ctx;
    if (len > sizeof s->buf - s->n)
        return -ENOSPC;
    memcpy(s->buf + s->n, text, len);
    s->n += len;
    s->calls++;
    return 0;
}

/* gen_run's text plus run.c's final newline equals the reference file. */
static void expect_run_c(const char *ref_path, const char *prompt, int max_tokens, double temp, double top_p,
                         uint64_t seed) {
    size_t n = 0;
    char *want = read_all(ref_path, &n);
    SV_CHECK(want != NULL);
    struct gen_params p = {.prompt = prompt, .prompt_len = strlen(prompt), .add_bos = 1, .max_tokens = max_tokens,
                           .temperature = temp, .top_p = top_p, .seed = seed};
    struct gen_result res;
    struct sv_err err = {0};
    struct sink sk = {0};
    int r = gen_run(stories, &p, sink_text, &sk, NULL, NULL, &res, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0 || !want) {
        fprintf(stderr, "%s\n", err.msg);
        free(want);
        return;
    }
    int same = res.text_len + 1 == n && memcmp(res.text, want, res.text_len) == 0 && want[n - 1] == '\n';
    SV_CHECK(same);
    if (!same)
        fprintf(stderr, "%s: got\n%s\n", ref_path, res.text);
    SV_ASSERT_EQ(res.n_ids - res.n_prompt, (size_t)max_tokens);
    SV_ASSERT_EQ(res.finish, GEN_FINISH_LENGTH);
    SV_CHECK(sk.n == res.text_len && memcmp(sk.buf, res.text, sk.n) == 0);   /* streamed == final */
    SV_CHECK(sk.calls > 10);
    printf("%s: equal (%zu prompt + %zu new tokens, %.0f tokens/s)\n", ref_path, res.n_prompt,
           res.n_ids - res.n_prompt, res.tokens_per_s);
    gen_result_free(&res);
    free(want);
}

static void test_run_c(void) {
    expect_run_c("tests/data/reference/stories260K.run_c.greedy256.txt", "", 256, 0, 0.9, 1);
    expect_run_c("tests/data/reference/stories260K.run_c.greedy100.once_upon_a_time.txt", "Once upon a time", 96, 0,
                 0.9, 1);
    expect_run_c("tests/data/reference/stories260K.run_c.t1.0_p0.9_s133742.txt", "", 256, 1.0, 0.9, 133742);
}

static void test_stops(void) {
    struct sv_err err = {0};
    struct gen_result full, res;
    struct gen_params p = {.prompt = "", .add_bos = 1, .max_tokens = 600, .top_p = 0.9, .seed = 1};
    /* The context: stories260K holds 512 positions; the last one's logits
     * still give a token, so 512 new ids after BOS. */
    SV_ASSERT_EQ(gen_run(stories, &p, NULL, NULL, NULL, NULL, &full, &err), 0);
    SV_ASSERT_EQ(full.finish, GEN_FINISH_CONTEXT);
    SV_ASSERT_EQ(full.n_ids, 513);
    SV_ASSERT_EQ(full.n_prompt, 1);

    /* The text limit: the longest prefix of whole tokens within 100 bytes. */
    p.max_text_bytes = 100;
    SV_ASSERT_EQ(gen_run(stories, &p, NULL, NULL, NULL, NULL, &res, &err), 0);
    SV_ASSERT_EQ(res.finish, GEN_FINISH_TEXT_LIMIT);
    SV_CHECK(res.text_len <= 100 && res.text_len > 80);
    SV_CHECK(memcmp(res.text, full.text, res.text_len) == 0);
    gen_result_free(&res);
    p.max_text_bytes = 0;

    /* EOS: a copy of the model whose eos_token_id is the 20th generated
     * token stops at its first occurrence, the id kept, its text dropped. */
    char dir[512], cmd[1200];
    snprintf(dir, sizeof dir, "%s/stories-eos", tmp);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", stories, dir);
    SV_ASSERT_EQ(system(cmd), 0);
    int32_t eos = full.ids[20];
    size_t first = 1;
    while (full.ids[first] != eos)
        first++;
    char members[64];
    snprintf(members, sizeof members, "{\"eos_token_id\": %d}", (int)eos);
    patch_config(dir, members);
    SV_ASSERT_EQ(gen_run(dir, &p, NULL, NULL, NULL, NULL, &res, &err), 0);
    SV_ASSERT_EQ(res.finish, GEN_FINISH_EOS);
    SV_ASSERT_EQ(res.n_ids, first + 1);
    SV_ASSERT_EQ(res.ids[first], eos);
    SV_CHECK(memcmp(res.ids, full.ids, (first + 1) * sizeof *res.ids) == 0);
    gen_result_free(&res);
    gen_result_free(&full);

    /* Bad parameters: each refused with its name. */
    p.max_tokens = 0;
    SV_ASSERT_EQ(gen_run(stories, &p, NULL, NULL, NULL, NULL, &res, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "max_tokens 0");
    p.max_tokens = 4;
    p.add_bos = 0;
    SV_ASSERT_EQ(gen_run(stories, &p, NULL, NULL, NULL, NULL, &res, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "the prompt is empty");
    p.add_bos = 1;
    p.temperature = -1;
    SV_ASSERT_EQ(gen_run(stories, &p, NULL, NULL, NULL, NULL, &res, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "temperature -1");
    SV_ASSERT_EQ(gen_run("tests/data/no-such-model", &p, NULL, NULL, NULL, NULL, &res, &err), -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "no-such-model");
}

/* The sampler on hand-made logits. */
static void test_sampler(void) {
    struct gen_sampler s;
    struct sv_err err = {0};
    float l[4];
    SV_ASSERT_EQ(gen_sampler_init(&s, 4, 0, 0.9, 7, &err), 0);
    l[0] = 1, l[1] = 3, l[2] = 3, l[3] = 2;
    SV_ASSERT_EQ(gen_sample(&s, l), 1);   /* greedy: the first of equal maxima */
    gen_sampler_free(&s);
    /* One token holding almost all the mass is the whole nucleus at top-p 0.5. */
    SV_ASSERT_EQ(gen_sampler_init(&s, 4, 1.0, 0.5, 7, &err), 0);
    int hits = 0;
    for (int i = 0; i < 100; i++) {
        l[0] = 0, l[1] = 0, l[2] = 10, l[3] = 0;
        hits += gen_sample(&s, l) == 2;
    }
    SV_ASSERT_EQ(hits, 100);
    gen_sampler_free(&s);
    /* Without top-p, two equal tokens each come up about half the time, and
     * the same seed gives the same sequence. */
    int seq[2][200];
    for (int rep = 0; rep < 2; rep++) {
        SV_ASSERT_EQ(gen_sampler_init(&s, 4, 1.0, 0, 99, &err), 0);
        for (int i = 0; i < 200; i++) {
            l[0] = 5, l[1] = -20, l[2] = 5, l[3] = -20;
            seq[rep][i] = gen_sample(&s, l);
        }
        gen_sampler_free(&s);
    }
    int zeros = 0;
    for (int i = 0; i < 200; i++)
        zeros += seq[0][i] == 0;
    SV_CHECK(zeros > 70 && zeros < 130);
    SV_CHECK(memcmp(seq[0], seq[1], sizeof seq[0]) == 0);
    SV_ASSERT_EQ(gen_sampler_init(&s, 4, 1.0, 0.9, 0, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "seed 0");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_generate PATH-TO-svdllm-genmodel\n");
        return 2;
    }
    genmodel = argv[1];
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 2;
    }
    forward_threads_set(0);
    test_sampler();
    test_logits();
    test_run_c();
    test_stops();
    char cmd[64 + sizeof tmp];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp);
    return sv_test_result("generate");
}
